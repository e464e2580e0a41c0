"""`lrm-interp quickstart` (the README's main job) through the installed console script."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest


def _cli() -> list[str]:
    exe = shutil.which("lrm-interp")
    return [exe] if exe else [sys.executable, "-m", "lrm_interp.cli"]


@pytest.mark.slow
def test_quickstart_on_shipped_model(tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run(_cli() + ["quickstart", "--out", str(out), "--traces", "6", "--eval", "15", "--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shipped toy reasoning model" in r.stdout and "TINY" not in r.stdout
    for f in ["traces.jsonl", "shift.csv", "shift.png", "attribution_fp32/scores.csv", "attribution_fp32/heatmap.png",
              "attribution_rtn3/scores.csv"]:
        assert (out / f).stat().st_size > 0, f
    df = pd.read_csv(out / "attribution_fp32" / "scores.csv")
    assert df["site"].nunique() == 28
    assert df.groupby("behavior")["ri"].sum().sub(1).abs().max() < 1e-4  # RI sums to 1 per behaviour
    line = next(l_ for l_ in r.stdout.splitlines() if l_.startswith("accuracy on 15 held-out"))
    fp, q = line.split("fp32: ")[1].split("; rtn3: ")
    assert "mean 100%" in fp or "mean 93%" in fp  # the shipped model solves (almost) everything
    assert float(q.split("mean ")[1].rstrip("%")) < 100.0  # 3-bit group-128 RTN costs accuracy


def test_quickstart_tiny_says_so(tmp_path):
    from lrm_interp.experiments.quickstart import run_quickstart

    s = run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, progress=False)
    assert s["tiny"] and s["sites"] == 14 and s["accuracy"] == {}
    assert (tmp_path / "qs" / "shift.csv").exists()
