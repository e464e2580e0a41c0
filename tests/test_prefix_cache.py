"""Prefix-cached exact attribution equals the full-prefix path (per-span dots and scores), on every
fixture architecture, with gradient checkpointing, under bf16 autocast, and with off_by_one; models
that cannot use it fall back to the full prefix and say why."""

from __future__ import annotations

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.atp import atp_trace_stats, window_start
from lrm_interp.attribution.dom import compute_dom
from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.prefix_cache import cache_support, trace_cache, window_cache
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import TINY_ARCHS, byte_tokenizer, tiny_model

BEHS = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]


def _setup(arch, n=3, seed=0):
    tok = byte_tokenizer()
    model = tiny_model(arch, seed=seed)
    enc = [encode_trace(tok, t) for t in synthetic_traces(n, seed=seed)]
    sites = find_sites(model)
    dom = compute_dom(model, enc, sites, BEHS, progress=False)
    return model, enc, sites, dom


def _assert_same(a, b, rtol=1e-5):
    for k in a:
        if k.startswith(("dots/", "loss/")):
            scale = float(a[k].abs().max()) if a[k].numel() else 0.0
            torch.testing.assert_close(b[k], a[k], rtol=rtol, atol=rtol * max(scale, 1e-12), msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_cached_equals_full_prefix_every_arch(arch):
    model, enc, sites, dom = _setup(arch)
    assert cache_support(model) == (True, "")
    for e in enc:
        full = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=False)
        cached = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=True)
        assert sum(full[f"dots/{b}"].shape[0] for b in BEHS) >= 4
        _assert_same(full, cached)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_cached_equals_full_prefix_with_checkpointing_and_off_by_one(arch):
    model, enc, sites, dom = _setup(arch, n=2, seed=1)
    assert cache_support(model, gradient_checkpointing=True) == (True, "")  # the cached path really runs
    for e in enc:
        ref = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=False)
        ck = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=True, gradient_checkpointing=True)
        _assert_same(ref, ck)
        ref1 = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=False, off_by_one=True)
        ob1 = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=True, off_by_one=True)
        _assert_same(ref1, ob1)
        assert not torch.allclose(ref1["dots/backtracking"], ref["dots/backtracking"])  # the variant differs


def test_cached_bf16_autocast_close_to_full_prefix():
    model, enc, sites, dom = _setup("llama", n=2, seed=2)
    for e in enc:
        full = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=False, compute_dtype=torch.bfloat16)
        cached = atp_trace_stats(model, e, sites, BEHS, dom.vectors, prefix_cache=True, compute_dtype=torch.bfloat16)
        for b in BEHS:
            a, c = full[f"dots/{b}"], cached[f"dots/{b}"]
            if a.numel():  # bf16 rounding differs between a long and a short forward: stated tolerance 5e-2 rel
                assert float((a - c).norm() / a.norm().clamp_min(1e-30)) < 5e-2, b


def test_window_cache_is_read_only_and_truncated():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (1, 30))
    kv = trace_cache(model, ids)
    before = [k.clone() for k, _ in kv]
    c = window_cache(kv, 11)
    assert c.get_seq_length() == 11
    with torch.no_grad():
        full = model(input_ids=ids).logits
        w = model(input_ids=ids[:, 11:20], cache=c, use_cache=True).logits
        w2 = model(input_ids=ids[:, 11:20], cache=c, use_cache=True).logits  # same cache again
    torch.testing.assert_close(w, full[:, 11:20], rtol=1e-5, atol=1e-5)
    assert torch.equal(w, w2) and c.get_seq_length() == 11
    assert all(torch.equal(k, b) for (k, _), b in zip(kv, before)) and kv[0][0].shape[2] == 30


def test_window_start_is_the_position_predicting_the_first_token():
    from lrm_interp.data.tokens import TokenSpan

    assert window_start(TokenSpan("b", 10, 14, 5, 0, 4, 0)) == 9
    assert window_start(TokenSpan("b", 0, 3, 0, 0, 3, 0)) == 0


def test_sliding_window_model_falls_back_and_says_why(tokenizer):
    from transformers import AutoModelForCausalLM

    from lrm_interp.testing import tiny_config

    cfg = tiny_config("mistral")
    cfg.sliding_window = 16
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    ok, why = cache_support(model)
    assert not ok and "sliding-window" in why
    ds = synthetic_traces(2)
    res = lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False)
    assert res.provenance["gradient_path"] == {"path": "full_prefix", "reason": why}
    ref = lrm_interp.attribute(model, ds, tokenizer=tokenizer, prefix_cache=False, progress=False)
    assert torch.equal(res.scores, ref.scores)


def test_pipeline_records_the_path_and_scores_match(tokenizer, tiny_llama):
    ds = synthetic_traces(3)
    a = lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, progress=False)
    b = lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, prefix_cache=False, progress=False)
    assert a.provenance["gradient_path"]["path"] == "prefix_cache"
    assert b.provenance["gradient_path"] == {"path": "full_prefix", "reason": "prefix_cache=False"}
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-10)
