"""Cases of the 23rd hostile probe (issue 22, "nothing lost, nothing silent") in ``bench run`` /
``bench score``: H23-GENMETA (an edited ``generations.jsonl`` record, its token count and finish
reason, reached the bench tables), H23-PROBMSG (an edited gold in ``problems/<task>.jsonl`` was
advised to "grade with the task options the run used"), H23-BRMSG (a resume refusal printed the
settings diff ``{}`` for a run.json whose settings were edited; the refusal of another model's
weights in a run folder gave no way forward)."""

from __future__ import annotations

import json
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
    """Answers every toy math item right, each output hitting the 16-token limit."""

    name = "right"

    def __init__(self, items: dict) -> None:
        self.gold = {it.prompt: it.gold for its in items.values() for it in its}

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc=""):
        out = []
        for i, p in enumerate(prompts):
            gens = [Generation(f"Let me add.</think>\nThe answer is {self.gold[p]}.", 16, "length")]
            out.append(gens)
            if on_result is not None:
                on_result(i, gens)
        return out


ST = GenerationSettings(max_new_tokens=16, temperature=0, batch_size=1)


def _run(run: Path, **kw) -> Path:
    items = _items()
    run_benchmark(_Right(items), items, run, settings=kw.pop("settings", ST), progress=False, **kw)
    return run


def _rewrite(path: Path, edit) -> None:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    edit(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


# ------------------------------------------------------------------ H23-GENMETA
def test_edited_generation_record_is_refused_by_score_and_resume(tmp_path, capsys):
    run = _run(tmp_path / "run")
    gen = run / "generations.jsonl"
    assert all(len(json.loads(x)["record_sha256"]) == 64 for x in gen.read_text().splitlines())

    def edit(recs):
        recs[0]["samples"][0].update(n_tokens=10, finish_reason="stop")  # hit the limit: now it did not

    _rewrite(gen, edit)
    before = folder_files(tmp_path)
    msg = f"{gen}:1: the generation record of math/0 was edited or is corrupt (it does not match its record_sha256)"
    with pytest.raises(ValueError, match="restore it, or delete that line and rerun 'bench run'") as e:
        score_outputs(run, _items(), progress=False)
    assert msg in str(e.value)
    argv = ["bench", "score", "--outputs", run, "--tasks", "math", "--per-family", "2", "--toy-seed", "2"]
    assert run_cli([*argv, "--quiet", "--no-plots"]) == 2
    assert msg in err_line(capsys)
    with pytest.raises(ValueError) as e:  # the resume reads the same records: refused before any write
        _run(run)
    assert msg in str(e.value)
    assert folder_files(tmp_path) == before
    # a record of an older run (no digest) loads as before: the documented limit of the check
    _rewrite(gen, lambda recs: [r.pop("record_sha256") for r in recs])
    sc = score_outputs(run, _items(), progress=False)
    assert sc.to_dataframe()["n_tokens"].tolist() == [10, 16]


# ------------------------------------------------------------------ H23-PROBMSG
def test_edited_problems_line_is_named_edited_not_a_task_option(tmp_path):
    run = _run(tmp_path / "run")
    prob, gen = run / "problems" / "math.jsonl", run / "generations.jsonl"

    def edit(recs):
        recs[0]["answer"] = str(int(recs[0]["answer"]) + 30)

    _rewrite(prob, edit)
    before = folder_files(tmp_path)
    with pytest.raises(ValueError) as e:
        score_outputs(run, _items(), progress=False)
    assert str(e.value) == (
        f"{prob}:1 was edited or is corrupt (it does not match the problem the run recorded, {gen}:1): restore "
        "it, or rerun 'bench run' with the same options and --out, which writes the run's problems again"
    )
    assert folder_files(tmp_path) == before
    # records of an older run (no problem hash, the same prompt): both possible causes are named
    _rewrite(gen, lambda recs: [(r.pop("problem_sha"), r.pop("record_sha256")) for r in recs])
    with pytest.raises(ValueError, match=r"math\.jsonl:1 differs from the problem .* though the run recorded this "):
        score_outputs(run, _items(), progress=False)
    # the advice works: the same bench run writes the problems again, and they grade
    _run(run)
    assert score_outputs(run, _items(), progress=False).summary().iloc[0]["pass@1"] == 100.0


# ------------------------------------------------------------------ H23-BRMSG
def test_resume_names_run_json_settings_edited_against_their_key(tmp_path):
    run = _run(tmp_path / "run")
    new = GenerationSettings(max_new_tokens=30, temperature=0, batch_size=1)
    meta = json.loads((run / "run.json").read_text())
    meta["settings"]["max_new_tokens"] = 30  # now equal to the new settings; settings_key is the old one
    (run / "run.json").write_text(json.dumps(meta, indent=2))
    before = folder_files(tmp_path)
    with pytest.raises(ValueError) as e:
        _run(run, settings=new)
    assert str(e.value) == (
        f"{run / 'run.json'}: its settings do not match its settings_key {meta['settings_key']!r} (run.json was "
        "edited or is corrupt), so the settings its outputs were generated with are unknown; restore it, or use "
        "another --out"
    )
    assert folder_files(tmp_path) == before
    # an unedited run.json with other settings: the diff, as before
    run2 = _run(tmp_path / "run2")
    with pytest.raises(ValueError, match=r"other settings \{'max_new_tokens': \(16, 30\)\}"):
        _run(run2, settings=new)


def test_other_weights_in_a_run_folder_refusal_says_how_to_go_on(tmp_path):
    run = _run(tmp_path / "M3", model_info={"weights_fingerprint": "aaa"})
    before = folder_files(tmp_path)
    with pytest.raises(ValueError) as e:
        _run(run, model_info={"weights_fingerprint": "bbb"})
    assert "this folder holds outputs of another model (weights fingerprint aaa != bbb" in str(e.value)
    assert str(e.value).endswith(
        "give models from folders with distinct names (rename or link one), or use another --out"
    )
    assert folder_files(tmp_path) == before
