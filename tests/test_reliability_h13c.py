"""Leftovers of the twelfth hostile probe run (issue 22, "nothing lost, nothing silent"), part C.

- H13-BSO: ``bench score --outputs B --out B`` wrote its tables into the ``bench run`` folder ``B``,
  which then was a "bench score result": every later ``bench run --out B`` (a resume) was refused
  for good. ``bench score`` (and ``BenchScores.write_tables``) refuse such a folder now, and a run
  folder already holding score tables is refused with the files to move away.
- H13-AGS: ``annotate agree --gold F --pred F`` printed a table of 1.000 with exit 0: the same file is
  refused, a byte-identical one warned about.
- H13-OVM: ``faithfulness`` / ``quantize --out A`` (A another command's result) advised ``--overwrite``,
  then refused the rerun with it for another reason: said at once now, naming what A is.
- H13-ADM: a user's folder that is no LoRA delta (``--init-adapter Q3``) was answered "The shipped
  reasoner delta is absent from this install"; said only for the shipped delta's folder now.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc

BENCH = ["--tasks", "math", "--per-family", 1]


def _snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` (relative path) with its sha256."""
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """``bench run --model toy --tasks math --per-family 1 --out B``."""
    out = tmp_path_factory.mktemp("h13c") / "B"
    assert _rc(["bench", "run", "--model", "toy", *BENCH, "--max-new-tokens", 8, "--out", out, "--quiet"]) == 0
    return out


# --------------------------------------------------------------------------- H13-BSO
@pytest.mark.parametrize("which", ["run folder", "run folder as outputs/..", "parent of one run"])
def test_bench_score_into_the_bench_run_folder_is_refused(bench_run, capsys, which):
    """``bench score --out B`` (B holding the run folder ``toy``) is refused before anything is
    written, naming the folder, why, and ``B_scores`` / ``B/scores`` instead."""
    outputs = {"run folder": bench_run, "run folder as outputs/..": bench_run, "parent of one run": bench_run / "toy"}[
        which
    ]
    out = bench_run if which != "run folder as outputs/.." else bench_run / "toy" / ".."
    before = _snapshot(bench_run)
    capsys.readouterr()
    assert _rc(["bench", "score", "--outputs", outputs, *BENCH, "--no-plots", "--out", out, "--quiet"]) == 2
    err = _err_line(capsys)
    assert f"--out {out} holds the bench run folders toy" in err
    assert "no later 'bench run --out" in err and f"{out}_scores" in err
    assert _snapshot(bench_run) == before
    # the run can still be resumed
    argv = ["bench", "run", "--model", "toy", *BENCH, "--max-new-tokens", 8, "--out", bench_run, "--quiet"]
    assert _rc(argv) == 0


def test_bench_score_into_its_outputs_folder_is_refused(tmp_path, capsys):
    """``--out`` naming the ``--outputs`` folder of another generator's layout (``X/outputs/<task>``)
    is refused: the tables would lie among the outputs they score."""
    x = tmp_path / "X"
    (x / "outputs" / "math").mkdir(parents=True)
    (x / "outputs" / "math" / "0.txt").write_text("The answer is 3.\n")
    before = _snapshot(x)
    assert _rc(["bench", "score", "--outputs", x, *BENCH, "--no-plots", "--out", x, "--quiet"]) == 2
    err = _err_line(capsys)
    assert f"--out {x} is the --outputs folder" in err and f"{x}_scores" in err
    assert _snapshot(x) == before


def test_write_tables_into_a_bench_run_folder_is_refused(bench_run):
    """The Python API: ``BenchScores.write_tables(B)`` refuses the folder holding run folders, before
    anything is written."""
    from lrm_interp.data.benchmarks import load
    from lrm_interp.evaluation.bench_score import score_outputs

    before = _snapshot(bench_run)
    scores = score_outputs(bench_run, {"math": load("math", per_family=1)}, progress=False)
    with pytest.raises(ValueError, match="holds the bench run folders toy"):
        scores.write_tables(bench_run, plots=False)
    assert _snapshot(bench_run) == before


def test_a_run_folder_holding_old_score_tables_names_the_files_to_move(tmp_path, capsys):
    """A run folder an older ``bench score --out B`` filled: ``bench run --out B`` is refused (the
    score is another command's result) with the score's files listed and what to do; once they are
    moved away the run resumes."""
    b = tmp_path / "B"
    run = ["bench", "run", "--model", "toy", *BENCH, "--max-new-tokens", 8, "--out", b, "--quiet"]
    assert _rc(run) == 0
    # what an older bench score left there (written into b/scores, then moved up, as it used to be)
    assert _rc(["bench", "score", "--outputs", b, *BENCH, "--no-plots", "--quiet"]) == 0
    for p in (b / "scores").iterdir():
        p.rename(b / p.name)
    (b / "scores").rmdir()
    before = _snapshot(b)
    capsys.readouterr()
    assert _rc(run) == 2
    err = _err_line(capsys)
    assert f"--out {b} holds the tables of a bench score (accuracy.csv, collapse_points.csv, score_files.json" in err
    assert "beside its runs (toy)" in err and "move those files into another folder" in err
    assert f"{b}_scores" in err and "not even with --overwrite" in err
    assert _snapshot(b) == before
    assert _rc([*run, "--overwrite"]) == 2
    moved = tmp_path / "B_scores"
    moved.mkdir()
    for name in ("accuracy.csv", "collapse_points.csv", "score_files.json", "scores.csv", "summary.csv", "tables.md"):
        (b / name).rename(moved / name)
    assert _rc(run) == 0


# --------------------------------------------------------------------------- H13-AGS
@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> Path:
    """``toy traces --gold --per-family 1`` in its own folder."""
    from cli_run import toy_gold

    return toy_gold(tmp_path_factory.mktemp("h13c_gold"))


@pytest.mark.parametrize("spelling", ["same", "./", "absolute", "symlink", "hard link"])
def test_annotate_agree_refuses_gold_as_pred(gold, capsys, monkeypatch, spelling):
    """``annotate agree --pred`` naming the ``--gold`` file, however spelled, is refused in one line;
    it printed a table of 1.000 with exit 0."""
    monkeypatch.chdir(gold.parent)
    pred = {
        "same": gold.name,
        "./": f"./{gold.name}",
        "absolute": str(gold),
        "symlink": "link.jsonl",
        "hard link": "hard.jsonl",
    }[spelling]
    if spelling == "symlink" and not Path(pred).is_symlink():
        Path(pred).symlink_to(gold.name)
    if spelling == "hard link" and not Path(pred).exists():
        Path(pred).hardlink_to(gold)
    capsys.readouterr()
    assert _rc(["annotate", "agree", "--gold", gold.name, "--pred", pred]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == (
        f"lrm-interp annotate agree: error: --pred {pred} is the --gold file ({gold.name}): the annotation would "
        "be scored against itself, agreement 1 by construction; give the annotation to score as --pred"
    )


def test_annotate_agree_warns_for_byte_identical_files(gold, tmp_path, capsys):
    """A byte-identical copy as ``--pred`` is scored (it may be meant), with a one-line warning."""
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(gold.read_bytes())
    capsys.readouterr()
    assert _rc(["annotate", "agree", "--gold", gold, "--pred", copy]) == 0
    out, err = capsys.readouterr()
    assert "1.000" in out
    assert err.strip() == (
        f"lrm-interp annotate agree: warning: --gold {gold} and --pred {copy} are byte-identical files: agreement "
        "is 1 by construction; check that --pred is the annotation you meant to score"
    )


def test_annotate_agree_different_annotations_print_no_warning(gold, tmp_path, capsys):
    """An annotation that differs from the gold one (the rule annotator's) gets no warning."""
    pred = tmp_path / "rules.jsonl"
    assert _rc(["annotate", "--data", gold, "--annotator", "rules", "--out", pred, "--quiet"]) == 0
    capsys.readouterr()
    assert _rc(["annotate", "agree", "--gold", gold, "--pred", pred]) == 0
    assert "warning" not in capsys.readouterr().err


# --------------------------------------------------------------------------- H13-OVM
@pytest.fixture(scope="module")
def attribution(tmp_path_factory, gold) -> Path:
    """``attribute --model toy --data gold.jsonl --out A``."""
    out = tmp_path_factory.mktemp("h13c_attr") / "A"
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", out, "--quiet"]) == 0
    return out


@pytest.mark.parametrize("command", ["faithfulness", "quantize"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_out_of_another_command_is_refused_at_once_without_overwrite_advice(
    attribution, gold, capsys, command, overwrite
):
    """An attribution folder as ``--out``: the first refusal says what it is and that ``--overwrite``
    does not apply (it advised ``--overwrite``, and the rerun with it was refused for another reason)."""
    argv = {
        "faithfulness": ["faithfulness", "--model", "toy", "--data", gold],
        "quantize": ["quantize", "--model", "toy", "--bits", 3],
    }[command]
    marker = {"faithfulness": "faithfulness.json", "quantize": "lrm_interp_quantization.json"}[command]
    before = _snapshot(attribution)
    capsys.readouterr()
    assert _rc([*argv, "--out", attribution, "--quiet", *(["--overwrite"] if overwrite else [])]) == 2
    err = _err_line(capsys)
    assert err == (
        f"lrm-interp {command}: error: --out {attribution} is an earlier attribution result (another command's "
        f"result; no {marker}): it is never written into, not even with --overwrite; choose another folder"
    )
    assert _snapshot(attribution) == before


def test_check_out_dir_says_at_once_when_overwrite_cannot_apply(tmp_path):
    """``_io.check_out_dir``: a folder of the user's files is "not an earlier result" with or without
    ``overwrite``; an earlier result of the writer still gets the advice to pass ``--overwrite``."""
    from lrm_interp._io import QUANTIZE_RECORD, check_out_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "x.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ValueError) as e:
            check_out_dir(mine, overwrite=overwrite)
        assert str(e.value) == (
            f"--out {mine} is not an earlier result (no {QUANTIZE_RECORD}) and not empty: --overwrite replaces "
            "only those; choose another folder"
        )
    earlier = tmp_path / "Q"
    earlier.mkdir()
    (earlier / QUANTIZE_RECORD).write_text("{}")
    with pytest.raises(ValueError, match="exists and is not empty; pass --overwrite to replace it"):
        check_out_dir(earlier, overwrite=False)
    assert check_out_dir(earlier, overwrite=True) == earlier.resolve()


# --------------------------------------------------------------------------- H13-ADM
def test_a_users_folder_that_is_no_delta_is_not_called_a_broken_install(tmp_path, monkeypatch, capsys):
    """``toy distill --init-adapter Q3`` (a typo): one line saying Q3 is no LoRA delta and what one
    holds, without "the shipped reasoner delta is absent"; nothing written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Q3").mkdir()
    capsys.readouterr()
    assert _rc(["toy", "distill", "--out", "D1", "--init-adapter", "Q3", "--steps", 1, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "lrm-interp toy distill: error: Q3 is not a LoRA delta (missing adapter_config.json, "
        "adapter_model.safetensors): a delta folder holds adapter_config.json and adapter_model.safetensors, as "
        "RUN/adapter of `lrm-interp toy distill --out RUN` does; give such a folder"
    )
    assert not (tmp_path / "D1").exists()


def test_check_adapter_names_the_missing_shipped_delta_only_for_its_folder(tmp_path, monkeypatch):
    """``check_adapter``: the shipped-delta sentence for the shipped delta's folder (however spelled),
    not for another folder."""
    from lrm_interp.model import reasoner

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as e:
        reasoner.check_adapter(mine)
    assert "missing adapter_model.safetensors" in str(e.value) and "shipped" not in str(e.value)
    shipped = tmp_path / "assets" / "smollm2_reasoner"
    shipped.mkdir(parents=True)
    monkeypatch.setattr(reasoner, "reasoner_asset_dir", lambda: shipped)
    with pytest.raises(FileNotFoundError, match="The shipped reasoner delta is absent from this install"):
        reasoner.check_adapter(tmp_path / "assets" / ".." / "assets" / "smollm2_reasoner")
