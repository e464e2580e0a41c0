"""The prepared GPU script (benchmarks/gpu/run.sh, docs/gpu.md) runs end to end on the CPU in its
--dry-run mode, so it still works the day a GPU is lent; its GPU-only pieces (time boxes, the
targets, the Markdown of GPU rows, the lrm-interp commands it runs) are checked without one."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
import run_gpu  # noqa: E402 - importable only after the sys.path line above


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    env = dict(
        os.environ, PYTHON=sys.executable, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")
    )
    env.pop("OUT", None)
    t = time.monotonic()
    r = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, json.loads((out / "gpu_results.json").read_text()), r.stdout, time.monotonic() - t


def test_dry_run_reports_every_part(dry_run):
    out, res, stdout, seconds = dry_run
    assert res["dry_run"] is True and res.get("finished")
    assert seconds < res["budget_s"] + 30
    for key in "abcdef":
        part = res["parts"][key]
        assert part["status"] in {"ok", "skipped", "failed", "timeout", "error", "partial"}, (key, part)
        if part["status"] == "skipped":
            assert part["reason"], key
            assert any(s["part"] == key and s["reason"] for s in res["skipped"]), key
            assert f"part {key} skipped:" in stdout  # printed as well as recorded
    assert res["parts"]["a"]["status"] == "ok" and res["parts"]["a"]["summary"]
    for key in "cef":  # need CUDA / two devices / vLLM: skipped in the dry run, with the reason
        assert res["parts"][key]["status"] == "skipped" and "dry run" in res["parts"][key]["reason"]
    # their code paths still ran on the CPU
    assert res["parts"]["c"]["smoke"]["status"] == "ok" and res["parts"]["c"]["smoke"]["equal"]
    smoke_e = res["parts"]["e"]["smoke"]
    assert smoke_e["status"] == "ok" and smoke_e["scores_finite"] and smoke_e["quantized_sites"] == smoke_e["sites"] > 0
    if run_gpu.ADAPTER.exists():
        assert res["parts"]["d"]["status"] == "skipped" and "present" in res["parts"]["d"]["reason"]
    assert [t["met"] for t in res["targets"]] == [None, None]  # a dry run meets no target
    md = (out / "gpu_results.md").read_text()
    assert "DRY RUN" in md and "## b. Attribution cost" in md and "## Skipped" in md
    assert (out / "gpu_logs.txt").stat().st_size > 0 and (out / "pytest_gpu.txt").exists()


def test_dry_run_attribution_rows(dry_run):
    _, res, _, _ = dry_run
    b = res["parts"]["b"]
    assert b["status"] == "ok" and b["shape"]["num_hidden_layers"] == 2
    rows = {(r["length"], r["method"]): r for r in b["rows"]}
    first, last = min(b["lengths"]), max(b["lengths"])
    for L in b["lengths"]:
        c = rows[(L, "cached")]
        assert c["status"] == "ok" and math.isfinite(c["seconds"]) and c["seconds"] > 0, c
        assert c["spans"] >= 1 and c["dots_finite"] and c["gradient_path"] == "prefix_cache"
        assert c["flops"] > 0 and "dots" not in c
    for m in run_gpu.METHODS:  # every method at the first length, agreeing with full-prefix exact
        r = rows[(first, m)]
        assert r["status"] == "ok" and math.isfinite(r["seconds"]), r
        if m in ("cached", "paper"):  # exact too (bf16 rounding apart); joint differs by design
            assert r["max_rel_diff_vs_full"] < 0.05
    for m in run_gpu.SLOW:  # the slow methods are kept to the first length, with the reason
        assert rows[(last, m)]["status"] == "skipped" and "first length" in rows[(last, m)]["reason"]


def test_lrm_interp_commands_parse(tmp_path, monkeypatch):
    """Parts d and f run `lrm-interp` commands only on a GPU: their flags must still exist.
    (``--device cuda`` is checked against this machine while parsing: a GPU is faked here.)"""
    import torch

    from lrm_interp.cli.main import build_parser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    p = build_parser()
    for cmd in (
        run_gpu.distill_command(tmp_path / "d", 60),
        run_gpu.vllm_command(tmp_path / "v", sys.executable, tmp_path / "v.log"),
        run_gpu.score_command(tmp_path / "v"),
    ):
        p.parse_args(cmd)  # an unknown flag exits (SystemExit)


def test_worker_time_box_and_errors(tmp_path):
    ns = argparse.Namespace(
        dry_run=True,
        out=str(tmp_path / "out"),
        work=str(tmp_path / "work"),
        budget=60.0,
        reuse_worker=True,
        keep_work=False,
    )
    run = run_gpu.Run(ns)
    t = time.monotonic()
    r = run.job("t", "sleep", {"seconds": 60}, 2.0)
    assert r["timed_out"] and r["json"] is None and time.monotonic() - t < 20
    r = run.job("t", "sleep", {"raise": "boom"}, 20.0)  # a job's exception is a reply; the worker goes on
    assert r["json"]["status"] == "error" and "boom" in r["json"]["reason"]
    r = run.job("t", "sleep", {"seconds": 0}, 20.0)
    assert r["json"] == {"status": "ok", "slept": 0.0}
    run.shared.close()
    assert "worker shared" in run.log.read_text()


def test_gpu_rows_targets_and_markdown():
    """What only a GPU run produces: targets met / not met, the FLOP and memory columns."""
    assert run_gpu.peak_bf16("NVIDIA H100 80GB HBM3") == 989.4e12
    assert run_gpu.peak_bf16("NVIDIA H200") == 989.4e12 and run_gpu.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert run_gpu.peak_bf16("Tesla T4") is None
    order = run_gpu.grid([2048, 8192, 32768], list(run_gpu.METHODS))
    assert order[:3] == [(2048, "cached"), (2048, "paper"), (32768, "cached")]
    assert {m for L, m in order if L > 2048} == {"cached", "joint"} and len(order) == 8

    def row(L, m, **kw):
        return {"length": L, "method": m, "status": "ok", "spans": L // 45, **kw}

    rows = [
        row(2048, "paper", seconds=30.0),
        row(2048, "full", seconds=20.0),
        row(2048, "joint", seconds=1.5, max_rel_diff_vs_full=0.3),
        row(
            2048,
            "cached",
            seconds=2.0,
            gradient_path="prefix_cache",
            peak_over_weights_gib=3.1,
            tflops_per_s=210.0,
            flop_utilisation=0.21,
            max_rel_diff_vs_full=0.01,
        ),
        row(32768, "joint", status="OOM", reason="CUDA out of memory"),
        row(32768, "cached", seconds=80.0, gradient_path="prefix_cache", peak_over_weights_gib=18.5, cache_forced=True),
    ]
    res = {
        "dry_run": False,
        "started": "2026-12-06T00:00:00+00:00",
        "budget_s": 450,
        "command": "x",
        "probe": {
            "devices": [
                {"name": "NVIDIA H100 80GB HBM3", "total_gib": 79.1, "free_gib": 78.5, "peak_bf16_tflops": 989.4}
            ],
            "packages": {},
        },
        "parts": {"b": {"status": "ok", "rows": rows, "model": "m", "dtype": "bf16", "device": "cuda:0"}},
        "skipped": [],
    }
    t = run_gpu.targets(res)
    assert [x["met"] for x in t] == [True, True]
    assert "18.50 GiB" in t[0]["measured"] and "15.0×" in t[1]["measured"]
    rows[-1]["peak_over_weights_gib"] = 21.0
    rows[0].update(seconds=10.0)
    assert [x["met"] for x in run_gpu.targets(res)] == [False, False]
    rows[-1].update(status="timeout", reason="over the row limit")
    res["targets"] = run_gpu.targets(res)
    assert res["targets"][0]["met"] is False
    md = run_gpu.render_markdown(res)
    assert "| 2,048 | 45 | cached | ok | 2.00 | 3.10 | – | 210 | 21.0% | 1.0e-02 |" in md
    assert "| 32,768 | 728 | joint | OOM |" in md and "**no**" in md


def test_script_is_one_command():
    sh = (REPO / "benchmarks" / "gpu" / "run.sh").read_text()
    assert sh.startswith("#!/usr/bin/env bash") and "run_gpu.py" in sh
    assert shutil.which("bash")
