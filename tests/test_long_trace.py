"""Long traces at full length: a trace of a few thousand tokens with a hundred spans, past a tiny
model's configured context, attributed exactly (issue #23 item 1; docs/performance.md, "Full-length
real traces").

- the default refuses a trace past the context and names every way out, ``overlong="extrapolate"``
  among them; with it the trace runs at full length (rotary models), counted and warned about;
- prefix-cached exact equals the full-prefix path per span there (the tolerance of
  tests/test_prefix_cache.py), positions past the context included;
- the work is linear in the number of spans: one forward over the trace for DoM, one for the
  prefix cache, then per span only its own window (counted at the decoder);
- learned position tables (GPT-2) cannot run past their context: refused, naming the table;
- rotary encodings whose frequencies switch with length (``longrope``, ``dynamic``) stay exact on
  both sides of the switch (one prefix cache per regime).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from lrm_interp.attribution import pipeline as P
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.data.traces import BehaviorSpan, ReasoningTrace
from lrm_interp.testing import byte_tokenizer, tiny_config, tiny_model

BEHS = ("backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge")
CONTEXT = 1024  # the tiny model's configured context; the trace is ~3x longer
N_CHARS, N_SPANS = 3000, 120


def long_trace(n_chars: int = N_CHARS, n_spans: int = N_SPANS, seed: int = 0) -> ReasoningTrace:
    """One R1-like trace of ``n_chars`` characters (the byte tokenizer: one token each, plus BOS)
    with ``n_spans`` non-overlapping spans of the four target behaviours spread over all of it."""
    rng = random.Random(seed)
    words = ["wait", "so", "the", "sum", "is", "maybe", "check", "again", "hence", "x", "=", "12", "+", "7"]
    text = ""
    while len(text) < n_chars:
        text += rng.choice(words) + (" " if rng.random() < 0.9 else "\n")
    text = text[:n_chars]
    gap = n_chars // n_spans
    spans = []
    for i in range(n_spans):
        a = i * gap + rng.randint(0, gap // 4)
        b = min(a + rng.randint(3, gap // 2), (i + 1) * gap)
        spans.append(BehaviorSpan(BEHS[i % len(BEHS)], a, b))
    return ReasoningTrace("long/0", "", text, tuple(spans), {"dataset": "synth"})


@pytest.fixture(scope="module")
def model():
    """A random-init tiny Llama built from a transformers ``LlamaConfig`` (rotary positions, SDPA
    attention as SmolLM2), its configured context shorter than the trace."""
    cfg = tiny_config("llama")
    cfg.max_position_embeddings = CONTEXT
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _stages(model, trace, **options):
    """``(plan, dom, atp stats)`` of ``attribute``'s stages on one trace."""
    cfg = AttributionConfig(**options)
    plan = P.plan_attribution(model, [trace], cfg, tokenizer=byte_tokenizer(), progress=False)
    dom = P.reduce_dom(plan, P.dom_stage(plan, progress=False))
    return plan, dom, P.atp_stage(plan, dom, progress=False)


def test_the_default_refuses_and_names_extrapolate(model):
    with pytest.raises(P.ContextLengthError) as e:
        P.plan_attribution(model, [long_trace()], AttributionConfig(), tokenizer=byte_tokenizer(), progress=False)
    msg = str(e.value)
    assert f"context of {CONTEXT} positions" in msg and f"long/0 ({N_CHARS + 1} tokens)" in msg
    assert "overlong='extrapolate'" in msg and "--overlong truncate|skip|extrapolate" in msg


def test_extrapolate_runs_the_whole_trace_and_counts_what_is_past_the_context(model):
    trace = long_trace()
    with pytest.warns(UserWarning, match=r"run at full length past it \(overlong='extrapolate'\)"):
        plan, dom, atp = _stages(model, trace, overlong="extrapolate")
    enc = plan.encoded[0]
    assert len(enc) == N_CHARS + 1 and not enc.truncated and len(enc.spans) == N_SPANS
    ov = plan.extra["overlong"]
    past = sum(1 for s in enc.spans if s.end > CONTEXT)
    assert ov["policy"] == "extrapolate" and ov["limit"] == CONTEXT and ov["n_extrapolated"] == 1
    assert ov["traces"] == {
        "long/0": {"tokens": N_CHARS + 1, "past_context": N_CHARS + 1 - CONTEXT, "spans_past_context": past}
    }
    assert ov["spans_past_context"] == past > N_SPANS // 2
    res = P.finish(plan, dom, atp, warn=False)
    assert res.provenance["counts"]["overlong_traces"] == {"truncated": 0, "skipped": 0, "extrapolated": 1}
    assert res.provenance["gradient_path"]["path"] == "prefix_cache"
    assert sum(res.provenance["counts"]["spans"].values()) == N_SPANS
    assert bool(torch.isfinite(res.scores).all()) and float(res.scores.abs().sum()) > 0


def test_cached_equals_full_prefix_on_a_long_trace_past_the_context(model):
    """Per span, positions past the configured context included: the tolerance of test_prefix_cache.py."""
    trace = long_trace(seed=1)
    with pytest.warns(UserWarning, match="overlong='extrapolate'"):
        plan_c, dom_c, cached = _stages(model, trace, overlong="extrapolate")
    with pytest.warns(UserWarning, match="overlong='extrapolate'"):
        plan_f, dom_f, full = _stages(model, trace, overlong="extrapolate", prefix_cache=False)
    for b in BEHS:
        for key in (f"dots/{b}", f"loss/{b}"):
            a, c = full[0][key], cached[0][key]
            assert a.shape[0] == N_SPANS // len(BEHS)
            scale = float(a.abs().max())
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5 * max(scale, 1e-12), msg=key)
    sc = P.finish(plan_c, dom_c, cached, warn=False)
    sf = P.finish(plan_f, dom_f, full, warn=False)
    assert sf.provenance["gradient_path"] == {"path": "full_prefix", "reason": "prefix_cache=False"}
    torch.testing.assert_close(sc.scores, sf.scores, rtol=1e-5, atol=1e-10)


def test_work_is_one_trace_forward_each_then_one_window_per_span(model):
    """Nothing grows with spans × length but the attention of each window to its cached prefix: the
    decoder runs once over the whole trace (DoM), once up to the last span (prefix cache), and then
    once per span over that span's window ``[start − 1, end)`` only."""
    calls: list[tuple[int, int]] = []  # (query tokens, cached tokens) of each decoder forward

    def count(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        calls.append((int(ids.shape[1]), int(cache.get_seq_length()) if cache is not None else 0))

    trace = long_trace(seed=2)
    handle = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with pytest.warns(UserWarning, match="overlong='extrapolate'"):
            plan, _, atp = _stages(model, trace, overlong="extrapolate")
    finally:
        handle.remove()
    enc = plan.encoded[0]
    spans = sorted(enc.spans, key=lambda s: (plan.behaviors.index(s.behavior), s.start))  # the stage's order
    # probes of the logits split and of the cache support run on a few tokens before the trace
    big = [c for c in calls if c[0] > 64]
    assert big == [(len(enc), 0), (max(s.end for s in enc.spans), 0)]  # DoM forward, prefix-cache forward
    windows = calls[calls.index(big[1]) + 1 :]
    assert windows == [(s.end - (s.start - 1), s.start - 1) for s in spans]
    assert sum(q for q, _ in windows) == sum(len(s) + 1 for s in spans) < len(enc)
    assert sum(int(atp[0][f"dots/{b}"].shape[0]) for b in BEHS) == N_SPANS


def test_learned_position_tables_cannot_extrapolate():
    gpt2 = tiny_model("gpt2", seed=0)
    gpt2.config.n_positions = 256
    short = long_trace(n_chars=600, n_spans=12)
    with pytest.raises(P.ContextLengthError, match=r"learned position table \(transformer\.wpe: 1024 rows\)"):
        P.plan_attribution(
            gpt2, [short], AttributionConfig(overlong="extrapolate"), tokenizer=byte_tokenizer(), progress=False
        )
    assert P.position_table(gpt2, 256) is not None and P.position_table(tiny_model("llama"), 1024) is None


def test_extrapolate_within_the_context_changes_nothing(model):
    short = long_trace(n_chars=600, n_spans=12, seed=3)
    a = P.finish(*_stages(model, short, overlong="extrapolate"), warn=False)
    b = P.finish(*_stages(model, short), warn=False)
    assert torch.equal(a.scores, b.scores)
    assert (
        a.provenance["overlong"]["n_extrapolated"] == 0
        and "extrapolated" not in a.provenance["counts"]["overlong_traces"]
    )


def _rope_model(kind: str):
    """A tiny random-init model whose rotary frequencies switch with the length of a forward at 128
    positions: Phi-3 with ``longrope`` (as Phi-3-128k) or Llama with ``dynamic`` scaling."""
    if kind == "longrope":
        cfg = tiny_config("phi3")
        half = cfg.hidden_size // cfg.num_attention_heads // 2
        cfg.rope_parameters = {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "original_max_position_embeddings": 128,
            "short_factor": [1.0] * half,
            "long_factor": [4.0] * half,
        }
        cfg.original_max_position_embeddings = 128
    else:
        cfg = tiny_config("llama")
        cfg.max_position_embeddings = 128
        cfg.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_length_dependent_rope_stays_exact_across_the_switch(kind):
    """A cache built over the whole trace would rotate the prefix with the long-range frequencies while
    a window ending inside the original range (and its full-prefix reference) uses the short ones
    (0.1–1.4 % off before the fix): one cache per regime keeps every span at the tolerance."""
    from lrm_interp.attribution.atp import atp_trace_stats
    from lrm_interp.attribution.dom import compute_dom
    from lrm_interp.data.tokens import encode_trace
    from lrm_interp.model.prefix_cache import cache_support, prefix_length, rope_switch, trace_caches
    from lrm_interp.model.sites import find_sites

    model = _rope_model(kind)
    assert rope_switch(model) == (kind, 128) and cache_support(model) == (True, "")
    enc = encode_trace(byte_tokenizer(), long_trace(n_chars=400, n_spans=16, seed=4))
    ends = [s.end for s in enc.spans]
    assert min(ends) < 128 < max(ends)  # spans on both sides of the switch
    caches = trace_caches(model, enc.input_ids[: max(ends)].unsqueeze(0), ends)
    assert sorted(caches.kv) == ([128, max(ends)] if kind == "longrope" else [127])
    assert prefix_length(None, 300, 388) == 388 and prefix_length(("dynamic", 128), 300, 388) is None
    sites = find_sites(model)
    dom = compute_dom(model, [enc], sites, list(BEHS), progress=False)
    full = atp_trace_stats(model, enc, sites, BEHS, dom.vectors, prefix_cache=False)
    cached = atp_trace_stats(model, enc, sites, BEHS, dom.vectors, prefix_cache=True)
    for b in BEHS:
        for key in (f"dots/{b}", f"loss/{b}"):
            a, c = full[key], cached[key]
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5 * max(float(a.abs().max()), 1e-12), msg=key)
