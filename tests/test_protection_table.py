"""The resumable protection experiment on the shipped toy reasoner (tiny settings)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.experiments import protection_table as pt
from lrm_interp.experiments.protection import ExperimentSettings, ProtectionPlanner
from lrm_interp.model.sites import find_sites
from lrm_interp.protect.encoding import bits_per_weight
from lrm_interp.protect.policies import global_top
from lrm_interp.protect.saliency import magnitude
from lrm_interp.toy import load_toy_model

SMALL = dict(model="toy", per_family=1, attribution_traces=1, random_seeds=(0,), symmetric=True)


def test_rows_files_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    table = pt.run_protection_experiment(out, only=["magnitude", "by none", "plain"], progress=False, **SMALL)
    assert [r.label for r in table.rows] == ["fp", "none", "2% magnitude", "mixed precision by none", "plain 4-bit"]
    model, _ = load_toy_model()
    sites = find_sites(model)
    mag_bpw = bits_per_weight(global_top(magnitude(model, sites), 0.02), sites, bits=3, group_size=128, symmetric=True)[
        "bpw"
    ]
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
    with pytest.raises(ValueError, match="differs in max_new_tokens"):
        pt.run_protection_experiment(out, progress=False, **{**SMALL, "max_new_tokens": 100})
    settings = json.loads((out / "settings.json").read_text())
    assert settings["format"] == pt.FORMAT and len(settings["weights_fingerprint"]) == 32
    assert settings["settings"]["max_new_tokens"] == 480
    del settings["settings"]["max_new_tokens"]  # a folder written before the limit was a setting: 480
    (out / "settings.json").write_text(json.dumps(settings))
    assert pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL).rows[:2] == table.rows[:2]
    settings["tokenizer_fingerprint"] = "0" * 32  # the folder of a run with another tokenizer
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL)


def test_plan_lists_every_row_once():
    model, tok = load_toy_model()
    rtn = [p.label for p in ProtectionPlanner(model, tok, ExperimentSettings(**SMALL)).rows]
    gptq = [
        p.label
        for p in ProtectionPlanner(
            model, tok, ExperimentSettings(**{**SMALL, "quantizer": "gptq", "random_seeds": (0, 1, 2)})
        ).rows
    ]
    assert len(set(rtn)) == len(rtn) and len(set(gptq)) == len(gptq)
    assert "2% attribution × GPTQ error (behaviour spans)" in gptq and not any("GPTQ error (beh" in x for x in rtn)
    assert sum("random (seed" in x for x in gptq) == 3 and any(x.startswith("behaviour-guided GPTQ") for x in gptq)
    assert rtn[:2] == ["fp", "none"] and rtn[-1] == "plain 4-bit"
    with pytest.raises(ValueError, match="quantizer"):
        pt.ExperimentSettings(quantizer="awq")
    assert pt.ExperimentSettings is ExperimentSettings and ExperimentSettings().symmetric is False  # one default
    assert ProtectionPlanner(model, tok).settings == ExperimentSettings()


def test_planner_is_lazy_caches_and_shares_across_quantizers(monkeypatch):
    from lrm_interp.experiments import protection as prot

    model, tok = load_toy_model()
    planner = ProtectionPlanner(model, tok, ExperimentSettings(**SMALL), progress=False)
    assert [r.label for r in planner.select(["magnitude", "by none"])] == [
        "fp",
        "none",
        "2% magnitude",
        "mixed precision by none",
    ]
    assert "ProtectionPlanner(toy, RTN 3-bit, symmetric" in repr(planner)
    assert not {"calib", "attribution", "encoded"} & set(vars(planner))  # nothing computed by planning
    calls = []
    real = prot.build_saliency
    monkeypatch.setattr(
        prot, "build_saliency", lambda name, *a, **k: calls.append((name, sorted(k))) or real(name, *a, **k)
    )
    mag = planner.masks("magnitude")
    assert planner.masks("magnitude") is mag and len(calls) == 1  # once per planner
    assert not {"calib", "attribution", "encoded"} & set(calls[0][1])  # magnitude needs none of the inputs
    assert not {"calib", "attribution", "encoded"} & set(vars(planner))
    gptq = planner.with_quantizer("gptq")
    assert gptq.settings.quantizer == "gptq" and gptq.masks("magnitude") is mag and len(calls) == 1
    assert "2% attribution × GPTQ error (behaviour spans)" in [r.label for r in gptq.rows]
    ids = planner.calib
    assert planner.with_quantizer("gptq").calib is ids  # inputs computed so far are shared
    planner.calib = ids[:1]  # an input of your own: assign before the rows run
    assert planner.calib.shape[0] == 1


def test_cli_refuses_another_runs_folder(tmp_path, capsys):
    from lrm_interp.cli.main import main

    out = tmp_path / "x"
    out.mkdir()
    (out / "rows.jsonl").write_text("{}\n")
    assert main(["experiment", "protection", "--per-family", "1", "--out", str(out), "--quiet"]) == 2
    assert "rows.jsonl without settings.json" in capsys.readouterr().err


def test_cli_grid_flags_and_a_folder_of_the_other_grid(tmp_path, capsys):
    """--symmetric / --asymmetric: one default (asymmetric) recorded in settings.json; a folder of
    the other grid is refused with the flag that resumes it."""
    from lrm_interp.cli.main import main

    out = tmp_path / "sym"
    base = [
        "experiment",
        "protection",
        "--per-family",
        "1",
        "--only",
        "fp",  # fp and none only (a text matching no row is refused)
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(base + ["--symmetric"]) == 0
    assert json.loads((out / "settings.json").read_text())["settings"]["symmetric"] is True
    capsys.readouterr()
    assert main(base) == 2  # the default grid is asymmetric: another experiment
    err = capsys.readouterr().err
    assert "differs in symmetric" in err and "add --symmetric to resume it" in err
    assert main(base + ["--symmetric"]) == 0  # resumes
    assert [json.loads(x)["label"] for x in (out / "rows.jsonl").read_text().splitlines()] == ["fp", "none"]
    asym = tmp_path / "asym"
    assert main(base[:-1] + [str(asym), "--asymmetric"]) == 0
    assert json.loads((asym / "settings.json").read_text())["settings"]["symmetric"] is False
    assert main(base[:-1] + [str(asym)]) == 0  # the default is the same run


def test_length_limit_reaches_every_row(tmp_path, monkeypatch):
    """--max-new-tokens is the greedy answers' limit in every measured row (fp, none, the rest)."""
    from lrm_interp.cli.main import main

    seen = []
    real = pt.evaluate_quietly

    def spy(*a, **k):
        seen.append(k["max_new_tokens"])
        return real(*a, **k)

    monkeypatch.setattr(pt, "evaluate_quietly", spy)
    out = tmp_path / "short"
    args = ["experiment", "protection", "--per-family", "1"]
    assert main(args + ["--max-new-tokens", "7", "--only", "plain", "--quiet", "--out", str(out)]) == 0
    assert seen == [7, 7, 7]  # fp, none, plain 4-bit
    assert json.loads((out / "settings.json").read_text())["settings"]["max_new_tokens"] == 7
