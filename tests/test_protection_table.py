"""The resumable protection experiment on the shipped toy reasoner (tiny settings)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.experiments import protection_table as pt
from lrm_interp.model.sites import find_sites
from lrm_interp.protect.encoding import bits_per_weight
from lrm_interp.protect.policies import global_top
from lrm_interp.protect.saliency import magnitude
from lrm_interp.toy import load_toy_model

SMALL = dict(model="toy", per_family=1, attribution_traces=1, random_seeds=(0,))


def test_rows_files_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    table = pt.run_protection_experiment(out, only=["magnitude", "by none", "plain"], progress=False, **SMALL)
    assert [r.label for r in table.rows] == ["fp", "none", "2% magnitude", "mixed precision by none", "plain 4-bit"]
    model, _ = load_toy_model()
    sites = find_sites(model)
    mag_bpw = bits_per_weight(global_top(magnitude(model, sites), 0.02), sites, bits=3, group_size=128,
                              symmetric=True)["bpw"]
    r = table.row("2% magnitude")
    assert r.bpw == pytest.approx(mag_bpw) and r.n == 3 and r.mean == r.correct / 3
    assert r.ci == pytest.approx(wilson_interval(r.correct, 3))
    assert table.row("mixed precision by none").bpw <= mag_bpw + 1e-9
    assert table.row("none").bpw == pytest.approx(3.125) and table.row("plain 4-bit").bpw == pytest.approx(4.125)
    fp, none = table.row("fp").mean, table.row("none").mean
    if fp > none:
        assert table.recovered(r) == pytest.approx((r.mean - none) / (fp - none))
    assert table.recovered(table.row("none")) is None
    md = (out / "table.md").read_text()
    assert "| 2% magnitude | per-weight | " in md and "95% CI" in md
    df = pd.read_csv(out / "table.csv")
    assert list(df["label"]) == [x.label for x in table.rows] and {"math", "logic", "knowledge", "ci_low"} <= set(df)
    assert (out / "bpw_accuracy.png").stat().st_size > 5000
    assert len((out / "rows.jsonl").read_text().splitlines()) == 5

    def fail(*a, **k):
        raise AssertionError("a finished row was measured again")
    monkeypatch.setattr(pt, "_measure", fail)  # resume: nothing left to measure
    again = pt.run_protection_experiment(out, only=["magnitude", "by none", "plain"], progress=False, **SMALL)
    assert again.rows == table.rows
    with pytest.raises(ValueError, match="differs in per_family"):
        pt.run_protection_experiment(out, progress=False, **{**SMALL, "per_family": 2})
    settings = json.loads((out / "settings.json").read_text())
    assert settings["format"] == pt.FORMAT and len(settings["weights_fingerprint"]) == 32
    settings["tokenizer_fingerprint"] = "0" * 32  # the folder of a run with another tokenizer
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL)


def test_plan_lists_every_row_once():
    model, tok = load_toy_model()
    rtn = [p.label for p in pt.plan_rows(model, tok, pt.ExperimentSettings(**SMALL))]
    gptq = [p.label for p in pt.plan_rows(model, tok, pt.ExperimentSettings(**{**SMALL, "quantizer": "gptq",
                                                                              "random_seeds": (0, 1, 2)}))]
    assert len(set(rtn)) == len(rtn) and len(set(gptq)) == len(gptq)
    assert "2% attribution × GPTQ error (behaviour spans)" in gptq and not any("GPTQ error (beh" in x for x in rtn)
    assert sum("random (seed" in x for x in gptq) == 3 and any(x.startswith("behaviour-guided GPTQ") for x in gptq)
    assert rtn[0] == "none" and rtn[-1] == "plain 4-bit"
    with pytest.raises(ValueError, match="quantizer"):
        pt.ExperimentSettings(quantizer="awq")


def test_cli_refuses_another_runs_folder(tmp_path, capsys):
    from lrm_interp.cli.main import main

    out = tmp_path / "x"
    out.mkdir()
    (out / "rows.jsonl").write_text("{}\n")
    assert main(["experiment", "protection", "--per-family", "1", "--out", str(out), "--quiet"]) == 2
    assert "rows.jsonl without settings.json" in capsys.readouterr().err
