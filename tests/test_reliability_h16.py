"""Issue 22 ("nothing lost, nothing silent"): the fifteenth hostile probe (H16-…), bad inputs against
every subcommand on new cases.

``compare --out X`` wrote its shift into an unrelated attribution result X, where the next writer
(``parse --out X/shift.csv --overwrite``) replaced it without a word; ``toy eval --seed 10000`` and
``bench run --toy-seed 10000`` scored the toy model's own training problems as held-out; a ``bench
run`` resumed with another ``--toy-seed`` was refused without naming it; ``bench score --outputs``
of an attribution folder took its ``partial/`` for a model run; ``study`` listed its input file
among the files it wrote."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cli_run import err_line, run_cli, toy_gold

from lrm_interp.data.toy_tasks import TRAIN_SEED_BASE, problems


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def two_results(tmp_path_factory):
    """Two finished attribution results of the toy model on one gold trace per family."""
    tmp = tmp_path_factory.mktemp("h16")
    gold = toy_gold(tmp)
    a, x = tmp / "A", tmp / "X"
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--k-context", 1, "--out", x, "--quiet"]) == 0
    return gold, a, x


# ------------------------------------------------------------------ H16-CMPA
def test_compare_into_another_commands_result_folder_is_refused(two_results, tmp_path, capsys):
    gold, a, x = two_results
    before = _tree(x)
    capsys.readouterr()
    rc = run_cli(["compare", "--original", a, "--compressed", a, "--out", x])
    assert rc == 2
    line = err_line(capsys)
    assert f"--out {x} is the attribution result" in line and "never written into" in line, line
    assert _tree(x) == before and not (x / "shift.csv").exists()
    # a folder of its own (new, or its own earlier result with --overwrite) is still written
    c = tmp_path / "C"
    assert run_cli(["compare", "--original", a, "--compressed", x, "--out", c, "--allow-mismatch"]) == 0
    assert (c / "shift.csv").is_file()
    assert run_cli(["compare", "--original", a, "--compressed", x, "--out", c, "--allow-mismatch", "--overwrite"]) == 0


# ------------------------------------------------------------------ H16-SEED
@pytest.mark.parametrize(
    "argv",
    [
        ["toy", "eval", "--seed", TRAIN_SEED_BASE, "--per-family", 1],
        ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--toy-seed", TRAIN_SEED_BASE],
        ["bench", "score", "--outputs", ".", "--tasks", "math", "--toy-seed", 12345],
    ],
    ids=["toy-eval", "bench-run", "bench-score"],
)
def test_a_training_seed_is_no_held_out_seed(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[1] == "run":
        argv = [*argv, "--out", tmp_path / "BR"]
    capsys.readouterr()
    assert run_cli(argv) == 2
    line = err_line(capsys)
    assert "must be a held-out seed, an integer in [0, 9999]" in line and "training data scored as held-out" in line
    assert list(tmp_path.iterdir()) == []


def test_problems_refuse_a_training_seed_unless_not_held_out():
    from lrm_interp.experiments.protection import ExperimentSettings
    from lrm_interp.experiments.study import StudySettings

    with pytest.raises(ValueError, match=r"^seed 10000 is a training seed of the toy models"):
        problems(1, TRAIN_SEED_BASE)
    assert len(problems(1, TRAIN_SEED_BASE - 1)) == 3
    assert len(problems(1, TRAIN_SEED_BASE, held_out=False)) == 3  # traces to attribute: any seed
    for cls in (ExperimentSettings, StudySettings):
        with pytest.raises(ValueError, match=r"^problem_seed 10000 is a training seed"):
            cls(problem_seed=TRAIN_SEED_BASE)


# ------------------------------------------------------------------ H16-BSR
def test_bench_run_resumed_with_another_toy_seed_names_the_recorded_problems(tmp_path, capsys):
    base = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--temperature", 0]
    base += ["--max-new-tokens", 20, "--out", tmp_path / "BR", "--quiet"]
    assert run_cli([*base, "--toy-seed", 5]) == 0
    before = _tree(tmp_path / "BR")
    capsys.readouterr()
    assert run_cli([*base, "--toy-seed", 6]) == 2
    line = err_line(capsys)
    assert "was generated from another prompt" in line
    assert "(run.json records the problems of 'lrm_interp.data.toy_tasks math/5/0', given now: " in line, line
    assert "--toy-seed" in line and _tree(tmp_path / "BR") == before


# ------------------------------------------------------------------ H16-BSA
def test_bench_score_of_an_attribution_folder_says_it_is_no_outputs(two_results, tmp_path, capsys):
    _, a, _ = two_results
    capsys.readouterr()
    assert run_cli(["bench", "score", "--outputs", a, "--tasks", "math", "--out", tmp_path / "S"]) == 2
    line = err_line(capsys)
    assert line.endswith(
        f"--outputs {a} is the attribution result {a}, not model outputs: give the folder of "
        "'lrm-interp bench run --out' (or of another generator, in the paper's layout)"
    ), line
    assert not (tmp_path / "S").exists()


# ------------------------------------------------------------------ H16-STL
def test_study_lists_only_the_files_in_its_folder(tmp_path, capsys):
    gold = toy_gold(tmp_path)
    out = tmp_path / "ST"
    capsys.readouterr()
    assert (
        run_cli(["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", out, "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out
    listing = printed.split(f"wrote {out}/", 1)[1].split("reuse them:", 1)[0]
    assert "annotated traces" not in listing and str(gold) not in listing
    assert "ranking.csv" in listing and "bits.json" in listing


# ------------------------------------------------------------------ H17-BRO / H17-COA (the sixteenth probe)
def test_folder_results_are_never_written_into_a_bench_run_out_folder(two_results, tmp_path, capsys):
    """``attribute --out BR`` / ``compare --out BR`` (BR the ``--out`` of ``bench run``, holding its
    model run folders) wrote there with exit 0; ``bench score --outputs BR`` and the resume of
    ``bench run --out BR`` then refused BR as "the attribution result"."""
    gold, a, _ = two_results
    br = tmp_path / "BR"
    run = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--temperature", 0]
    run += ["--max-new-tokens", 20, "--out", br, "--quiet"]
    assert run_cli(run) == 0
    before = _tree(br)
    for argv in (
        ["attribute", "--model", "toy", "--data", gold, "--out", br, "--quiet"],
        ["compare", "--original", a, "--compressed", a, "--out", br],
    ):
        capsys.readouterr()
        assert run_cli(argv) == 2, argv
        line = err_line(capsys)
        assert f"--out {br} holds the bench run folders toy (a 'bench run --out' folder)" in line, line
    assert _tree(br) == before
    assert run_cli(run) == 0  # the run still resumes
    # the advice for a folder that is no attribution never points into another result
    capsys.readouterr()
    assert run_cli(["compare", "--original", a, "--compressed", br / "toy", "--out", tmp_path / "C"]) == 2
    line = err_line(capsys)
    assert "not an attribution result folder; it is the bench run result" in line, line
    assert "'lrm-interp attribute --out <a new folder> ...'" in line


def test_an_interrupted_attribution_still_resumes_into_its_folder(two_results, tmp_path):
    """The rule above reads finished bench runs only: an attribution's ``partial/run.json`` is none."""
    gold, _, _ = two_results
    out = tmp_path / "AP"
    (out / "partial").mkdir(parents=True)
    (out / "partial" / "run.json").write_text("{}")
    from lrm_interp.cli.common import _refuse_bench_runs_folder

    _refuse_bench_runs_folder("--out", out)  # no refusal
