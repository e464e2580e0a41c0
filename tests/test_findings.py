"""The paper's claims as tables (lrm_interp.experiments.findings): known answers on constructed
scores, and the importance-shift study on the shipped toy model (tiny settings)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from lrm_interp.evaluation.output_stats import short_long_split
from lrm_interp.experiments import findings as fd


def _rows(model, task, scores, words=None):
    words = words or [10] * len(scores)
    return [
        {"model": model, "task": task, "index": i, "sample": 0, "score": float(s), "words": w}
        for i, (s, w) in enumerate(zip(scores, words))
    ]


def _frame():
    rows = []
    for t in ("knowledge", "math", "logic"):
        rows += _rows("fp", t, [1] * 20)
    rows += _rows("q", "knowledge", [1] * 10 + [0] * 10)  # knowledge drops 50 points
    rows += _rows("q", "math", [1] * 20)
    rows += _rows("q", "logic", [1] * 18 + [0] * 2)  # logic drops 10
    rows += _rows("partial", "knowledge", [1] * 19)  # one item missing
    rows += _rows("partial", "math", [1] * 20) + _rows("partial", "logic", [1] * 20)
    return pd.DataFrame(rows)


def test_knowledge_vs_reasoning_known_drops_and_incomplete_models():
    df = fd.knowledge_vs_reasoning(_frame(), "fp", resamples=500)
    assert df.attrs["incomplete"] == ["partial"]  # never compared on a subset of items
    math_row = df[(df.model == "q") & (df.reasoning == "math")].iloc[0]
    logic_row = df[(df.model == "q") & (df.reasoning == "logic")].iloc[0]
    assert math_row.drop_knowledge == pytest.approx(50.0) and math_row.drop_reasoning == pytest.approx(0.0)
    assert math_row["diff"] == pytest.approx(50.0) and logic_row["diff"] == pytest.approx(40.0)
    # the math drop is 0 on every resample: the interval is the knowledge drop's bootstrap
    # interval, 50 ± about 2·sqrt(.25/20) = ±22 points
    assert 20 < math_row.ci95_low < 50 < math_row.ci95_high < 80
    assert math_row.verdict == logic_row.verdict == "knowledge more fragile"
    reverse = _frame().replace({"task": {"knowledge": "logic", "logic": "knowledge"}})
    r = fd.knowledge_vs_reasoning(reverse, "fp", resamples=500)
    assert r[(r.model == "q") & (r.reasoning == "logic")].iloc[0].verdict == "reasoning more fragile"
    with pytest.raises(ValueError, match="no outputs for 'knowledge'"):
        fd.knowledge_vs_reasoning(_frame()[lambda d: d.task != "knowledge"], "fp")


def test_short_vs_long_matches_the_split_and_the_sign_test():
    words = list(range(1, 21))
    rows = _rows("m", "math", [1] * 10 + [0] * 10, words)  # the short half right, the long half wrong
    rows += _rows("m", "logic", [1] * 20, words)  # no spread
    df = fd.short_vs_long(pd.DataFrame(rows), resamples=300).set_index("task")
    sp = short_long_split(words, [1] * 10 + [0] * 10, 0.3)
    assert df.loc["math", "short"] == pytest.approx(100 * sp.short_score) == 100.0
    assert df.loc["math", "long"] == pytest.approx(100 * sp.long_score) == 0.0
    assert df.loc["math", "len_ratio"] == pytest.approx(sp.ratio)
    assert df.loc["math", "verdict"] == "shorter higher" and df.loc["math", "ci95_low"] > 0
    assert df.loc["logic", "verdict"] == "no spread"
    assert df.attrs["sign"] == {"positive": 1, "negative": 0, "zero": 0, "p": 1.0}
    s = fd.sign_test([3, 1, 2, 5, 0.5, 0])
    assert (s["positive"], s["negative"], s["zero"]) == (5, 0, 1) and s["p"] == pytest.approx(2 / 32)
    assert fd.sign_test([1, -1])["p"] == 1.0


def test_short_vs_long_counts_a_copied_cell_once_and_keeps_intervals_when_models_are_added():
    words = list(range(1, 21))
    right_short = [1] * 10 + [0] * 10
    rows = _rows("a", "math", right_short, words) + _rows("b", "math", right_short, words)  # b copies a
    rows += _rows("c", "math", right_short[::-1], words)  # the long half right
    df = fd.short_vs_long(pd.DataFrame(rows), resamples=300).set_index("model")
    assert df.loc["b", "same_as"] == "a" and df.loc["a", "same_as"] == "" and df.loc["c", "same_as"] == ""
    assert df.attrs["sign"]["positive"] == 1 and df.attrs["sign"]["negative"] == 1  # b not counted again
    # a row's bootstrap stream is its own: adding a model leaves the others' intervals unchanged
    more = fd.short_vs_long(pd.DataFrame(rows + _rows("0first", "math", [1, 0] * 10, words)), resamples=300)
    more = more.set_index("model")
    for m in ("a", "b", "c"):
        assert (more.loc[m, "ci95_low"], more.loc[m, "ci95_high"]) == (df.loc[m, "ci95_low"], df.loc[m, "ci95_high"])


def test_settings_are_checked():
    with pytest.raises(ValueError, match="bogus"):
        fd.ShiftSettings(variants=("bogus:3",))
    with pytest.raises(ValueError, match="'none' is always measured"):
        fd.ShiftSettings(variants=("none",))
    with pytest.raises(ValueError, match="the same compression twice"):
        fd.ShiftSettings(variants=("rtn:3", "rtn:3"))
    with pytest.raises(ValueError, match="per_family"):
        fd.ShiftSettings(per_family=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift") / "run"
    return fd.run_shift_study(out, model="toy", per_family=6, variants=("rtn:3",), progress=False)


def test_shift_study_files_halves_and_resume(study, monkeypatch):
    out = study.out
    assert set(study.results) == {("fp", "A"), ("fp", "B"), ("rtn3", "A"), ("rtn3", "B")}
    traces = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 18
    from lrm_interp.data.loading import load_dataset

    halves = fd._halves(list(load_dataset(out / "traces.jsonl")))
    ids = {h: {t.id for t in ts} for h, ts in halves.items()}
    assert not ids["A"] & ids["B"] and len(ids["A"]) + len(ids["B"]) == 18  # disjoint, all traces
    for h in fd.HALVES:  # alternate problems of each family: 3 of each family's 6 per half
        assert sorted(t.metadata["dataset"] for t in halves[h]) == ["knowledge"] * 3 + ["logic"] * 3 + ["math"] * 3
        assert study.results[("fp", h)].provenance["dataset"]["n_traces"] == 9
    # the fp result is the toy model's, the compressed one records its quantization
    assert (
        study.results[("rtn3", "A")].provenance["model"]["weights_fingerprint"]
        != (study.results[("fp", "A")].provenance["model"]["weights_fingerprint"])
    )

    def fail(*a, **k):
        raise AssertionError("a finished attribution was computed again")

    import lrm_interp.attribution.pipeline as pipeline

    monkeypatch.setattr(pipeline, "attribute", fail)
    again = fd.run_shift_study(out, model="toy", per_family=6, variants=("rtn:3",), progress=False)
    assert torch.equal(again.results[("rtn3", "B")].scores, study.results[("rtn3", "B")].scores)
    with pytest.raises(ValueError, match="differs in per_family"):
        fd.run_shift_study(out, model="toy", per_family=5, variants=("rtn:3",), progress=False)


def test_rank_and_shift_tables_match_the_attributions(study):
    ranks = fd.site_rank_table(study)
    for _, r in ranks.iterrows():
        a = study.results[("fp", r.half)]
        b = a.behaviors.index(r.behavior)
        j = a.site_names.index("model.layers.3.mlp.up_proj")  # the toy's final layer is 3
        assert r.site == a.site_names[j] and r["rank"] == int(a.ranks[b, j])
        assert r.ri == pytest.approx(float(a.ri[b, j]))
        assert r.best_final_layer_rank == min(int(a.ranks[b, i]) for i, n in enumerate(a.site_names) if ".3." in n)
    summ = fd.shift_summary(study)
    assert set(summ.variant) == {"rtn3"}
    for _, r in summ.iterrows():
        fp, q = study.results[("fp", r.half)], study.results[("rtn3", r.half)]
        names = fp.site_names
        delta = q.ri[q.behaviors.index(r.behavior)] - fp.ri[fp.behaviors.index(r.behavior)]
        final = [i for i, n in enumerate(names) if n.startswith("model.layers.3.")]
        assert r.final_layer_delta == pytest.approx(float(delta[final].sum()), abs=1e-12)
        gate = [i for i, n in enumerate(names) if n.endswith("gate_proj") and 1 <= int(n.split(".")[2]) <= 2]
        assert r.mid_gate_delta == pytest.approx(float(delta[gate].sum()), abs=1e-12)
        dec = (-delta).clamp_min(0)
        assert r.final_layer_share_of_decrease == pytest.approx(float(dec[final].sum() / dec.sum()))
        assert sum(r[f"delta_{k}"] for k in ("q", "k", "v", "o", "gate", "up", "down")) == pytest.approx(0, abs=1e-9)
    mean = study.mean_shift("rtn3")
    a, b = study.shift("rtn3", "A"), study.shift("rtn3", "B")
    beh = mean.behaviors[0]
    expect = (a.delta[a.behaviors.index(beh)] + b.delta[b.behaviors.index(beh)]) / 2
    assert torch.allclose(mean.delta[0], expect)
    assert not math.isnan(float(mean.delta.sum()))
