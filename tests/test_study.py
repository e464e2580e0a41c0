"""`lrm-interp study` / :func:`lrm_interp.experiments.study.run_study` on tiny random models: the rows
are the planner's at matched bits per weight, the intervals are the library's, the folder resumes
and refuses another study, and the command line mirrors the API."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from lrm_interp.compress.quant import quantize_model_
from lrm_interp.data.tokens import encode_trace
from lrm_interp.evaluation.divergence import divergence
from lrm_interp.evaluation.intervals import bootstrap_interval, wilson_interval
from lrm_interp.experiments.study import ROW_KEYS, StudyResult, StudySettings, run_study, study_items
from lrm_interp.model.sites import find_sites
from lrm_interp.protect.bit_allocation import BitAllocation
from lrm_interp.protect.encoding import bits_per_weight, load_masks
from lrm_interp.testing import byte_tokenizer, tiny_model
from lrm_interp.toy.tasks import generate_dataset, problems


@pytest.fixture(scope="module")
def traces():
    return generate_dataset(1, seed=4242)  # 3 toy traces (one per family) with gold spans


@pytest.fixture(scope="module")
def kl_study(tmp_path_factory, traces):
    out = tmp_path_factory.mktemp("study") / "kl"
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    return model, tok, run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, progress=False)


def test_settings_refuse_bad_values():
    for kw, needle in [
        ({"bits": 8}, "bits must be in 2..7"),
        ({"bits": 9}, "bits must be in 2..8"),
        ({"budget": 0.0}, "budget"),
        ({"per_task": 0}, "per_task"),
        ({"tasks": ["nope"]}, "nope"),
        ({"tasks": ["aime"]}, "needs a data file"),
        ({"group_size": 0}, "group_size"),
        ({"resamples": 0}, "resamples"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=needle):
            StudySettings(**kw)
    s = StudySettings(tasks="MATH")
    assert s.tasks == ("math",) and s.metric == "accuracy" and StudySettings().metric == "kl"
    assert StudySettings.from_dict(s.to_dict()) == s


def test_bootstrap_interval():
    assert bootstrap_interval([0.5] * 7) == (0.5, 0.5)
    v, w = [0.1, 0.4, 0.2, 0.9, 0.3], [10, 1, 5, 2, 8]
    lo, hi = bootstrap_interval(v, w, resamples=2000, seed=3)
    point = sum(a * b for a, b in zip(v, w)) / sum(w)
    assert lo <= point <= hi and min(v) <= lo < hi <= max(v)
    assert bootstrap_interval(v, w, resamples=2000, seed=3) == (lo, hi)  # seeded
    for bad in ([], [[1.0]]):
        with pytest.raises(ValueError, match="bootstrap_interval"):
            bootstrap_interval(bad)


def test_rows_are_the_planners_at_matched_bits(kl_study, traces):
    model, tok, r = kl_study
    assert [x.key for x in r.rows] == list(ROW_KEYS) and r.settings.metric == "kl"
    sites = find_sites(model)
    mag, att, mix = r.row("magnitude"), r.row("attribution"), r.row("mixed")
    assert r.row("uniform").bpw == pytest.approx(bits_per_weight({}, sites, bits=3, group_size=128)["bpw"])
    # the allocation's budget is the magnitude row's bits per weight; it never exceeds it
    assert r.allocation.budget_bpw == pytest.approx(mag.bpw) and mix.bpw == pytest.approx(r.allocation.bpw)
    assert mix.bpw <= mag.bpw
    masks, meta = load_masks(r.out_dir + "/masks.safetensors")
    assert sum(m.n_protected for m in masks.values()) == round(0.02 * sum(s.n_weights for s in sites))
    assert att.bpw == pytest.approx(meta["bits_per_weight"]["bpw"]) == pytest.approx(r.masks["bpw"])
    assert BitAllocation.load(r.out_dir + "/bits.json").bits == r.allocation.bits
    # the uniform row's KL is the library's divergence over all traces (token-weighted), its
    # interval a bootstrap over traces that contains it; full precision is 0
    q = copy.deepcopy(model)
    quantize_model_(q, bits=3, group_size=128, progress=False)
    enc = [encode_trace(tok, t) for t in traces]
    assert r.row("uniform").value == pytest.approx(divergence(model, q, enc).kl, rel=1e-9)
    for x in r.rows[1:]:
        assert x.ci[0] <= x.value <= x.ci[1] and x.n == len(traces)
        assert x.ci == bootstrap_interval(r.outcomes[x.key]["kl"], r.outcomes[x.key]["tokens"])
    assert r.row("fp").value == 0.0 and r.recovered(r.row("fp")) is None
    loss = r.row("uniform").value
    assert r.recovered(mix) == pytest.approx((loss - mix.value) / loss)
    df = r.to_dataframe()
    assert list(df["key"]) == list(ROW_KEYS) and {"bpw", "value", "ci_low", "ci_high", "recovered"} <= set(df.columns)
    assert "StudyResult(" in repr(r) and "<table" in r._repr_html_()


def test_saved_result_loads_and_resumes(kl_study, traces, tmp_path):
    model, tok, r = kl_study
    back = StudyResult.load(r.out_dir)
    assert back.rows == r.rows and back.settings == r.settings and back.commands == r.commands
    assert all(torch.equal(back.outcomes[k][n], r.outcomes[k][n]) for k in r.outcomes for n in r.outcomes[k])
    assert torch.equal(back.shift.delta, r.shift.delta)
    again = run_study(model, traces, r.out_dir, tokenizer=tok, model_ref="tiny", bits=3, progress=False)
    assert again.provenance["resumed"] == list(ROW_KEYS) and again.rows == r.rows
    # a run killed after two rows: the next one measures only the rest, with the same numbers
    out = tmp_path / "killed"
    full = run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, progress=False)
    study = out / "study.json"
    doc = json.loads(study.read_text())
    doc["rows"], doc["complete"] = doc["rows"][:2], False
    study.write_text(json.dumps(doc))
    resumed = run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, progress=False)
    assert resumed.provenance["resumed"] == ["fp", "uniform"]
    assert [(x.key, x.bpw, x.value, x.ci) for x in resumed.rows] == [(x.key, x.bpw, x.value, x.ci) for x in full.rows]


def test_another_study_is_refused_before_any_write(kl_study, traces):
    model, tok, r = kl_study
    before = {p.name: p.stat().st_mtime_ns for p in Path(r.out_dir).iterdir()}
    with pytest.raises(ValueError, match=r"holds another study \(differs in bits 3 ≠ 4\)"):
        run_study(model, traces, r.out_dir, tokenizer=tok, bits=4, progress=False)
    other = tiny_model("llama", seed=1)
    with pytest.raises(ValueError, match="another model"):
        run_study(other, traces, r.out_dir, tokenizer=tok, bits=3, progress=False)
    with pytest.raises(ValueError, match="other traces"):
        run_study(model, traces[:2], r.out_dir, tokenizer=tok, bits=3, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in Path(r.out_dir).iterdir()}
    assert after == before


def test_overwrite_starts_over(traces, tmp_path):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    out = tmp_path / "s"
    run_study(model, traces, out, tokenizer=tok, bits=3, progress=False)
    r4 = run_study(model, traces, out, tokenizer=tok, bits=4, overwrite=True, progress=False)
    assert r4.settings.bits == 4 and r4.provenance["resumed"] == []
    assert not (out / "attribution_rtn3").exists() and (out / "attribution_rtn4").is_dir()


def test_items_interleave_tasks_like_the_toy_problems():
    s = StudySettings(tasks=("math", "logic", "knowledge"), per_task=4, problem_seed=2)
    items = study_items(s)
    held = problems(4, seed=2)
    assert [(i.task, i.prompt, i.gold) for i in items] == [(p.family, p.prompt, p.answer) for p in held]


def test_generation_order():
    from lrm_interp.experiments.study import generation_order

    items = study_items(StudySettings(tasks=("math", "logic", "knowledge"), per_task=3))
    tok = byte_tokenizer()
    by_prompt = generation_order(items, tok)
    assert sorted(by_prompt) == list(range(9))
    lens = [len(tok(items[j].prompt)["input_ids"]) for j in by_prompt]
    assert lens == sorted(lens)
    chars = torch.tensor([5, 1, 4, 1, 3, 9, 2, 6, 5])
    by_answer = generation_order(items, tok, chars)
    assert [int(chars[j]) for j in by_answer] == sorted(chars.tolist())


def test_accuracy_rows_use_wilson(traces, tmp_path):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    r = run_study(
        model,
        traces,
        tmp_path / "acc",
        tokenizer=tok,
        tasks=["math", "logic"],
        per_task=2,
        max_new_tokens=4,
        progress=False,
    )
    for x in r.rows:
        c = int(r.outcomes[x.key]["correct"].sum())
        assert x.metric == "accuracy" and x.n == 4 and x.correct == c and x.value == c / 4
        assert x.ci == wilson_interval(c, 4) and set(x.per_task) == {"math", "logic"}
    assert r.provenance["items"] == [i.id for i in study_items(r.settings)]
    assert "--tasks math logic --per-task 2" in r.commands[0] and "--max-new-tokens 4" in r.commands[0]


def test_cli_study_mirrors_the_api(traces, tmp_path, capsys):
    from lrm_interp.cli.main import main

    model_dir = tmp_path / "m"
    tiny_model("llama", seed=0).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    data = traces.save_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert (
        main(["study", "--model", str(model_dir), "--data", str(data), "--bits", "3", "--out", str(out), "--quiet"])
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"report: {out / 'report.html'} (self-contained HTML: open it in a browser)"
    r = StudyResult.load(out)
    assert r.settings == StudySettings(bits=3) and r.provenance["model_ref"] == str(model_dir)
    # the first printed command reruns it: everything resumes
    cmd = r.commands[0].split()[1:]
    assert main(cmd + ["--quiet"]) == 0
    assert "resumed: fp, uniform, magnitude, attribution, mixed" in capsys.readouterr().out
    for argv, needle in [
        (["--tasks", "nope"], "--tasks: unknown benchmark task 'nope'"),
        (["--tasks", "aime"], "--task-data"),
        (["--bits", "4"], "holds another study"),
    ]:
        base = ["study", "--model", str(model_dir), "--data", str(data), "--bits", "3", "--out", str(out)]
        if "--bits" in argv:
            base = base[:-4] + base[-2:]
        assert main(base + argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lrm-interp study: error") and needle in err[0], err
