"""benchmarks/backend_speed.py without a model run: its flags, the environment each backend's
worker gets, the synthetic Temporal Sequences items (through the real loader), the agreement of
two rows and the Markdown table of a made-up result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import backend_speed as bs  # noqa: E402 - importable only after the sys.path line above


def test_flags_defaults_and_checks():
    a = bs.parse_args([])
    assert a.backends == ["hf", "vllm"] and a.batch_sizes == [1, 16] and a.items == 16
    assert a.threads == len(bs.allowed_cpus()) and a.vllm_bind == "threads" and a.task_data is None
    a = bs.parse_args(["--backends", "vllm", "--batch-sizes", "4", "--threads", "1", "--max-new-tokens", "8"])
    assert a.backends == ["vllm"] and a.batch_sizes == [4] and a.threads == 1 and a.max_new_tokens == 8
    for bad in (["--items", "0"], ["--batch-sizes", "1", "0"], ["--threads", "0"], ["--backends", "openai"]):
        with pytest.raises(SystemExit):
            bs.parse_args(bad)


def test_worker_env_gives_both_backends_the_same_threads():
    base = {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "7"}
    hf = bs.worker_env("hf", 1, "threads", base)
    assert hf["OMP_NUM_THREADS"] == "1" and hf["HF_HUB_OFFLINE"] == "1" and "VLLM_CPU_OMP_THREADS_BIND" not in hf
    first = bs.allowed_cpus()[0]
    assert bs.worker_env("vllm", 1, "threads", base)["VLLM_CPU_OMP_THREADS_BIND"] == str(first)
    # vLLM's own default, said explicitly (unset, the backend would bind every allowed core)
    assert bs.worker_env("vllm", 1, "auto", base)["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    with pytest.raises(SystemExit):
        bs.worker_env("vllm", len(bs.allowed_cpus()) + 1, "threads", base)
    assert bs.cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and bs.cpu_list([3]) == "3"


def test_synthetic_items_load_as_temporal(tmp_path):
    from lrm_interp import benchmarks

    ex = bs.synthetic_temporal(16, seed=0)
    assert ex == bs.synthetic_temporal(16, seed=0) and ex != bs.synthetic_temporal(16, seed=1)
    (tmp_path / "temporal.json").write_text(json.dumps({"examples": ex}))
    items = benchmarks.load("temporal", tmp_path)
    assert len(items) == 16 and len({it.prompt for it in items}) == 16
    for it, e in zip(items, ex):
        assert it.gold == e["target"][1] and it.prompt.endswith("<think>\n")
        # the answer is the one slot nobody saw them in: its interval is not a sighting
        answer = next(line for line in e["input"].splitlines() if line.startswith(e["target"]))
        interval = answer.split(") ", 1)[1]
        assert f"from {interval}." not in e["input"]


def _row(backend, batch, tps, texts):
    return {
        "backend": backend,
        "batch_size": batch,
        "items": len(texts),
        "load_s": 9.0,
        "start_s": 30.0 if backend == "vllm" else 0.5,
        "generation_s": 10.0,
        "new_tokens": int(tps * 10),
        "tokens_per_s": tps,
        "peak_rss_mb": 1500.0,
        "peak_rss_main_mb": 1000.0,
        "peak_rss_children_mb": 500.0,
        "at_limit": 1,
        "_items": [{"sha": t, "ids": [ord(c) for c in t]} for t in texts],
    }


def test_agreement_and_table():
    hf1, vl1 = (
        {**_row("hf", 1, 20.0, ["abcd", "wxyz"]), "process_wall_s": 55.0},
        _row("vllm", 1, 30.0, ["abcd", "wxQQ"]),
    )
    g = bs.agreement(hf1, vl1)
    assert g["a"] == "hf b1" and g["b"] == "vllm b1" and g["identical"] == 1 and g["n"] == 2
    assert g["mean_common_prefix_frac"] == pytest.approx(0.75) and g["first_difference_at_token"] == [None, 2]
    result = {
        "machine": {"cpus": 2},
        "settings": {"max_new_tokens": 128, "threads": 2},
        "items": {"n": 2, "source": "synthetic"},
        "runs": [
            hf1,
            vl1,
            _row("hf", 16, 50.0, ["a", "b"]),
            {**_row("vllm", 16, 0.0, ["a", "b"]), "tokens_per_s": None},
        ],
        "agreement": [g],
    }
    md = bs.render_table(result)
    lines = md.splitlines()
    assert lines[0] == "2 items (synthetic), greedy, 128 max new tokens, 2 threads (vLLM: threads), 2 cores"
    assert "| 1 | vllm | 39.0 (9.0 + 30.0) | 10.0 | – | 300 | 30.0 | 1.50 | 1500 (1000 + 500) | 1/2 |" in lines
    assert "| 1 | hf | 9.5 (9.0 + 0.5) | 10.0 | 55.0 | 200 | 20.0 | 1.00 | 1500 (1000 + 500) | 1/2 |" in lines
    assert any(x.startswith("| 16 | vllm |") and "| – | – |" in x for x in lines)  # no tokens/s: no ratio
    assert "| hf b1 vs vllm b1 | 1/2 | 75% |" in lines
    # 29.5 s more start-up, 1/20 - 1/30 s less per token: paid back after 1770 tokens
    assert "pays back after (new tokens, at these rates): batch 1: 1770; batch 16: –" in md
    assert bs.render_table({**result, "agreement": []}).count("\n") == md.count("\n") - 4
    vl1["vllm_omp_binding"] = {"core_ids": "0", "reserved_cpus": "1"}
    auto = {**result, "settings": {**result["settings"], "vllm_bind": "auto"}}
    assert "2 threads (vLLM: auto, cores [0] (reserved [1])), 2 cores" in bs.render_table(auto).splitlines()[0]


def test_break_even_cases():
    hf = {"load_s": 5.0, "start_s": 1.0, "tokens_per_s": 10.0}
    assert bs.break_even(hf, {"load_s": 5.0, "start_s": 0.5, "tokens_per_s": 20.0}) == "0 (vLLM starts no later)"
    assert bs.break_even(hf, {"load_s": 5.0, "start_s": 11.0, "tokens_per_s": 5.0}).startswith("never")
    assert bs.break_even(hf, {"load_s": 5.0, "start_s": 11.0, "tokens_per_s": 20.0}) == "200"
    assert bs.break_even(hf, {"load_s": 5.0, "start_s": 11.0, "tokens_per_s": None}) == "–"
