"""Cases of the 24th hostile probe (issue 22, "nothing lost, nothing silent") in ``bench run`` /
``bench score``: H24-SCOREDEF (the default ``<outputs>/scores`` was refreshed over the tables of
another outputs folder written there with ``--out``), H24-MIXREC (``bench score`` graded a
``generations.jsonl`` record generated with other settings than the run's; the resume refused it
without a fix), H24-RJFP (an edited ``run.json`` model block was blamed on "another model") and
H24-BRTEXT (a resume counted an edited output text as finished)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line, folder_files, run_cli

from lrm_interp.evaluation.backends import Backend, GenerationSettings
from lrm_interp.evaluation.bench_run import run_benchmark
from lrm_interp.evaluation.bench_score import score_outputs
from lrm_interp.evaluation.generation import Generation


def _items(seed: int = 2, n: int = 2) -> dict:
    from lrm_interp.data.benchmarks import load

    return {"math": load("math", None, per_family=n, toy_seed=seed)}


class _Right(Backend):
    """Answers every toy math item right, each output ``n_tokens`` long (the limit: finish "length")."""

    name = "right"

    def __init__(self, items: dict, n_tokens: int = 16) -> None:
        self.gold = {it.prompt: it.gold for its in items.values() for it in its}
        self.n_tokens = n_tokens
        self.calls = 0

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc=""):
        out = []
        for i, p in enumerate(prompts):
            self.calls += 1
            gens = [Generation(f"Let me add.</think>\nThe answer is {self.gold[p]}.", self.n_tokens, "length")]
            out.append(gens)
            if on_result is not None:
                on_result(i, gens)
        return out


def _settings(n: int = 16) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=n, temperature=0, batch_size=1)


def _run(run: Path, n: int = 16, **kw) -> tuple[Path, _Right]:
    items = _items()
    backend = _Right(items, n)
    run_benchmark(backend, items, run, settings=_settings(n), progress=False, **kw)
    return run, backend


SCORE = ["bench", "score", "--tasks", "math", "--per-family", "2", "--toy-seed", "2", "--quiet", "--no-plots"]


# ------------------------------------------------------------------ H24-SCOREDEF
def test_default_scores_folder_holding_another_outputs_scores_is_not_refreshed(tmp_path, capsys):
    b1, b2 = tmp_path / "B1", tmp_path / "B2"
    _run(b1 / "toy", 16)
    _run(b2 / "toy", 12)
    assert run_cli([*SCORE, "--outputs", b2, "--out", b1 / "scores"]) == 0
    rec = json.loads((b1 / "scores" / "score_files.json").read_text())
    assert rec["outputs"] == str(b2.resolve()) and rec["outputs_fingerprint"]
    capsys.readouterr()
    before = folder_files(tmp_path)
    assert run_cli([*SCORE, "--outputs", b1]) == 2
    line = err_line(capsys)
    assert (
        f"--out {b1 / 'scores'} (the default) holds the scores of --outputs {b2.resolve()}, not of {b1.resolve()}"
        in line
    ), line
    assert "pass --overwrite to replace them, or give another --out" in line, line
    assert folder_files(tmp_path) == before
    # the refresh it is meant for still works: the same outputs again, and a copy of them
    assert run_cli([*SCORE, "--outputs", b1, "--overwrite"]) == 0
    _run(b1 / "toy", 16)  # a resume (nothing to do): the same outputs
    assert run_cli([*SCORE, "--outputs", b1]) == 0
    shutil.copytree(b1, tmp_path / "B3")
    assert run_cli([*SCORE, "--outputs", tmp_path / "B3"]) == 0
    # an older record without the outputs: refreshed as before
    rec = json.loads((b1 / "scores" / "score_files.json").read_text())
    (b1 / "scores" / "score_files.json").write_text(json.dumps({"format": rec["format"], "files": rec["files"]}))
    assert run_cli([*SCORE, "--outputs", b2, "--out", b1 / "scores", "--overwrite"]) == 0
    rec = json.loads((b1 / "scores" / "score_files.json").read_text())
    (b1 / "scores" / "score_files.json").write_text(json.dumps({"format": rec["format"], "files": rec["files"]}))
    assert run_cli([*SCORE, "--outputs", b1]) == 0


# ------------------------------------------------------------------ H24-MIXREC
def test_record_with_other_settings_than_the_run_is_refused_with_its_line_and_fix(tmp_path, capsys):
    a, _ = _run(tmp_path / "A" / "toy", 16)
    b, _ = _run(tmp_path / "B" / "toy", 12)
    gen = a / "generations.jsonl"
    lines = gen.read_text().splitlines(keepends=True)
    lines[0] = (b / "generations.jsonl").read_text().splitlines(keepends=True)[0]
    gen.write_text("".join(lines))
    shutil.copy(b / "outputs" / "math" / "0.txt", a / "outputs" / "math" / "0.txt")
    before = folder_files(tmp_path)
    fix = (
        "delete that line (and its output files) and rerun 'bench run' with the same options and --out, which "
        "generates it again, or use another --out"
    )
    msg = f"{gen}:1: record math/0 was generated with other settings than {a / 'run.json'} records"
    with pytest.raises(ValueError) as e:
        score_outputs(a, _items(), progress=False)
    assert msg in str(e.value) and str(e.value).endswith(fix), str(e.value)
    assert run_cli([*SCORE, "--outputs", a.parent]) == 2
    assert msg in err_line(capsys)
    with pytest.raises(ValueError) as e:  # the resume: the same refusal, now with the fix
        _run(a, 16)
    assert msg in str(e.value) and str(e.value).endswith(fix), str(e.value)
    assert folder_files(tmp_path) == before
    # the advice works: the line deleted, the same run generates the item again, and it grades
    gen.write_text("".join(lines[1:]))
    _, backend = _run(a, 16)
    assert backend.calls == 1
    assert score_outputs(a, _items(), progress=False).to_dataframe()["n_tokens"].tolist() == [16, 16]


# ------------------------------------------------------------------ H24-RJFP
def test_edited_run_json_model_block_is_named_edited(tmp_path, capsys):
    run, _ = _run(tmp_path / "B" / "toy", 16, model_info={"weights_fingerprint": "a" * 32})
    meta = json.loads((run / "run.json").read_text())
    assert len(meta["record_sha256"]) == 64
    meta["model"]["weights_fingerprint"] = "0" * 32
    (run / "run.json").write_text(json.dumps(meta, indent=1))
    before = folder_files(tmp_path)
    msg = (
        f"{run / 'run.json'}: run.json was edited or is corrupt (it does not match its record_sha256): restore "
        "it, or use another --out"
    )
    with pytest.raises(ValueError) as e:
        _run(run, 16, model_info={"weights_fingerprint": "a" * 32})
    assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        score_outputs(run, _items(), progress=False)
    assert msg in str(e.value)
    assert run_cli([*SCORE, "--outputs", run.parent]) == 2
    assert msg in err_line(capsys)
    assert folder_files(tmp_path) == before
    # an unedited run.json of another model: the refusal as before; an older run.json (no digest) loads as before
    meta["model"]["weights_fingerprint"] = "a" * 32
    meta.pop("record_sha256")
    (run / "run.json").write_text(json.dumps(meta, indent=1))
    with pytest.raises(ValueError, match="holds outputs of another model"):
        _run(run, 16, model_info={"weights_fingerprint": "b" * 32})
    _run(run, 16, model_info={"weights_fingerprint": "a" * 32})
    assert len(json.loads((run / "run.json").read_text())["record_sha256"]) == 64  # rewritten with it


# ------------------------------------------------------------------ H24-BRTEXT
def test_resume_refuses_an_edited_output_and_its_advice_regenerates_it(tmp_path):
    run, _ = _run(tmp_path / "B" / "toy", 16)
    txt = run / "outputs" / "math" / "0.txt"
    txt.write_text("edited")
    before = folder_files(tmp_path)
    with pytest.raises(ValueError) as e:
        _run(run, 16)
    assert str(e.value).startswith("1 of the 2 finished outputs differ from the text recorded for them in ")
    assert f"swapped or edited ({txt})" in str(e.value)
    assert "restore them, or delete the changed ones and run the same 'bench run --out' again" in str(e.value)
    assert folder_files(tmp_path) == before
    txt.unlink()  # the advice: the line stays, the output is generated again
    _, backend = _run(run, 16)
    assert backend.calls == 1 and txt.read_text().startswith("Let me add.")
    assert score_outputs(run, _items(), progress=False).summary().iloc[0]["pass@1"] == 100.0
