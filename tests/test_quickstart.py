"""`lrm-interp quickstart` (the README's main job) through the installed console script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest


def _cli() -> list[str]:
    exe = shutil.which("lrm-interp")
    return [exe] if exe else [sys.executable, "-m", "lrm_interp.cli.main"]


@pytest.mark.slow
def test_quickstart_on_shipped_model(tmp_path):
    out = tmp_path / "qs"
    r = subprocess.run(_cli() + ["quickstart", "--out", str(out), "--traces", "6", "--eval", "15", "--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shipped toy reasoning model" in r.stdout and "TINY" not in r.stdout
    for f in ["traces.jsonl", "shift.csv", "shift.png", "attribution_fp32/scores.csv", "attribution_fp32/heatmap.png",
              "attribution_rtn3/scores.csv", "ranking.csv", "masks.safetensors", "masks.json"]:
        assert (out / f).stat().st_size > 0, f
    df = pd.read_csv(out / "attribution_fp32" / "scores.csv")
    assert df["site"].nunique() == 28
    assert df.groupby("behavior")["ri"].sum().sub(1).abs().max() < 1e-4  # RI sums to 1 per behaviour
    rk = pd.read_csv(out / "ranking.csv")
    assert (rk.groupby("behavior")["rank"].apply(lambda r: list(r) == list(range(1, 29)))).all()
    # the masks file loads and holds exactly 2% of the 28 sites' weights; its summary agrees
    from lrm_interp.protect import load_masks

    masks, meta = load_masks(out / "masks.safetensors")
    n_w = int(df.drop_duplicates("site")["n_params"].sum())  # no biases in this model: params == weights
    n_p = sum(m.n_protected for m in masks.values())
    assert n_p == round(0.02 * n_w) and meta["budget"] == 0.02
    summary = json.loads((out / "masks.json").read_text())
    assert summary["protected_weights"] == n_p and abs(summary["bits_per_weight"]["bpw"] - meta["bits_per_weight"]["bpw"]) < 1e-12
    lines = r.stdout.splitlines()
    i = next(k for k, l_ in enumerate(lines) if l_.startswith("held-out accuracy (15 problems"))
    fp, q, qp = (lines[i + 2], lines[i + 3], lines[i + 4])
    assert fp.startswith("full precision") and q.startswith("3-bit RTN, group 128") and qp.startswith("3-bit RTN + 2%")
    mean = lambda l_: float(l_.split()[-2].rstrip("%"))  # noqa: E731
    bpw = lambda l_: float(l_.split()[-1])  # noqa: E731
    assert mean(fp) >= 93.0 and mean(q) < 100.0  # 3-bit group-128 RTN costs accuracy
    assert bpw(q) == pytest.approx(3.25) and bpw(qp) == pytest.approx(summary["bits_per_weight"]["bpw"], abs=5e-4)
    assert "reuse them:" in r.stdout and "lrm-interp quantize --model toy" in r.stdout


def test_quickstart_tiny_says_so(tmp_path):
    from lrm_interp.experiments.quickstart import run_quickstart

    s = run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, progress=False)
    assert s["tiny"] and s["sites"] == 14 and s["accuracy"] == {}
    for f in ("shift.csv", "ranking.csv", "masks.safetensors", "masks.json", "tiny-attribution_fp32/heatmap.png"):
        assert (tmp_path / "qs" / f).exists(), f
    # the printed reuse commands run: protect from the written result with the saved tiny model
    from lrm_interp.cli.main import main

    cmd = next(c for c in s["commands"] if c.startswith("lrm-interp protect"))
    argv = cmd.split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again.safetensors")
    assert main(argv + ["--quiet"]) == 0
    from lrm_interp.protect import load_masks

    a, _ = load_masks(tmp_path / "qs" / "masks.safetensors")
    b, _ = load_masks(tmp_path / "again.safetensors")
    assert a == b  # the CLI reproduces the quickstart's masks exactly
