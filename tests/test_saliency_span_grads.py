"""Behaviour-span weight gradients by route (``span_grads``): the exact routes against a per-span
full-prefix reference written here, each approximation against its documented relation, and the
``--span-grads`` flag of ``lrm-interp protect`` down to the API."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from synth import synthetic_traces

from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.protect import saliency as sal
from lrm_interp.testing import tiny_model

BEHAVIORS = ["backtracking", "deduction", "uncertainty-estimation"]


@pytest.fixture(scope="module")
def enc():
    from lrm_interp.testing import byte_tokenizer

    tok = byte_tokenizer()
    return [encode_trace(tok, t) for t in synthetic_traces(2)]


def _per_span(model, enc, sites, behaviors):
    """Reference: ``{site: [n_spans, out, in]}`` per-span gradients, one plain full-prefix
    forward+backward per span (whole-vocabulary logits, ``.grad``)."""
    out: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        for e in enc:
            for sp in e.spans:
                if sp.behavior not in behaviors or not sp.scorable:
                    continue
                model.zero_grad()
                logits = model(input_ids=e.input_ids[None, : sp.end], use_cache=False).logits[0]
                a, b = sp.targets
                F.cross_entropy(logits[a - 1 : b - 1], e.input_ids[a:b]).backward()
                for s in sites:
                    g = get_module(model, s.name).weight.grad
                    out[s.name].append(
                        g.T.clone() if type(get_module(model, s.name)).__name__ == "Conv1D" else g.clone()
                    )
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.zero_grad()
    return {k: torch.stack(v) for k, v in out.items()}


def _close(got, ref, rtol=1e-4):
    for k, r in ref.items():
        torch.testing.assert_close(got[k], r, rtol=rtol, atol=1e-6 * float(r.abs().max()) + 1e-9, msg=k)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exact_routes_equal_the_per_span_reference(arch, enc):
    model = tiny_model(arch, seed=0)
    sites = find_sites(model)
    ref = _per_span(model, enc, sites, BEHAVIORS)
    assert next(iter(ref.values())).shape[0] >= 4
    flags = [p.requires_grad for p in model.parameters()]
    assert sal.gradient_route(model) == ("full_prefix", sal._FULL_BY_DEFAULT)  # measured faster on CPU
    assert sal.gradient_route(model, prefix_cache=True) == ("shared_forward", "")
    assert sal.gradient_route(model, reduce="signed") == ("one_backward", "")
    assert sal.gradient_route(model, prefix_cache=False) == ("full_prefix", "prefix_cache=False")
    # abs: the shared chunked forward and the full prefix per span both give Σ_s |g_s|
    for pc in (True, False):
        _close(
            sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, prefix_cache=pc, progress=False),
            {k: v.abs().sum(0) for k, v in ref.items()},
        )
    # signed: ONE backward per trace of Σ_s L(s) equals Σ_s g_s (causal attention: each span's loss in the
    # trace's forward is its loss given its prefix)
    signed = sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, reduce="signed", progress=False)
    _close(signed, {k: v.sum(0) for k, v in ref.items()})
    _close(
        sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, reduce="signed", prefix_cache=False, progress=False),
        {k: v.sum(0) for k, v in ref.items()},
    )
    assert [p.requires_grad for p in model.parameters()] == flags


def test_shared_forward_chunks_end_at_span_ends(enc, monkeypatch):
    """Chunks end at span ends, are long enough and few; any chunking (spans straddling chunks,
    chunks without a span position) gives the per-span reference."""
    assert sal._chunk_ends([300, 40, 200, 250]) == [200, 300]  # ≥ 128 tokens each, the last at the end
    assert sal._chunk_ends([5000]) == [5000]
    ends = list(range(20, 4001, 20))
    cuts = sal._chunk_ends(ends)
    assert set(cuts) <= set(ends) and cuts[-1] == 4000 and len(cuts) <= 17
    assert all(b - a >= 4000 // 16 for a, b in zip([0, *cuts[:-2]], cuts[:-1]))
    model = tiny_model("qwen3", seed=0)
    sites = find_sites(model)
    ref = {k: v.abs().sum(0) for k, v in _per_span(model, enc, sites, BEHAVIORS).items()}
    monkeypatch.setattr(sal, "_chunk_ends", lambda ends: [*range(7, max(ends), 7), max(ends)])
    _close(sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, prefix_cache=True, progress=False), ref)


def test_trace_is_the_abs_of_per_trace_behaviour_sums(enc):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    ref = _per_span(model, enc, sites, BEHAVIORS)
    # group the reference's spans by (trace, behaviour), in _per_span's order
    keys = [(e.trace_id, sp.behavior) for e in enc for sp in e.spans if sp.behavior in BEHAVIORS and sp.scorable]
    groups = {k: [i for i, kk in enumerate(keys) if kk == k] for k in dict.fromkeys(keys)}
    expect = {n: sum(v[idx].sum(0).abs() for idx in groups.values()) for n, v in ref.items()}
    got = sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads="trace", progress=False)
    _close(got, expect)
    exact = {n: v.abs().sum(0) for n, v in ref.items()}
    assert all(bool((got[n] <= exact[n] * (1 + 1e-4) + 1e-7).all()) for n in exact)  # triangle inequality
    assert any(not torch.allclose(got[n], exact[n], rtol=1e-3) for n in exact)  # and not equal: spans cancel
    # one span per (trace, behaviour): the trace route is exact
    one = ["backtracking"]
    assert all(len(v) == 1 for v in ([sp for sp in e.spans if sp.behavior == "backtracking"] for e in enc))
    _close(
        sal.behaviour_weight_grads(model, enc, sites, one, span_grads="trace", progress=False),
        sal.behaviour_weight_grads(model, enc, sites, one, prefix_cache=False, progress=False),
    )


def _last_layer_window_exact(sites):
    """The sites whose weights reach a span's loss only at the window's own positions: the last
    decoder layer except its key/value projections (fused qkv included), and the LM head."""
    last = max(s.layer for s in sites if s.layer is not None)
    return [s for s in sites if (s.layer == last and s.kind not in ("k", "v", "qkv")) or s.kind == "lm_head"]


@pytest.mark.parametrize("arch", ["llama", "phi3", "gpt2"])
def test_window_is_exact_where_the_prefix_has_no_path(arch, enc):
    model = tiny_model(arch, seed=0)
    sites = find_sites(model)
    ref = _per_span(model, enc, sites, BEHAVIORS)
    exact = {n: v.abs().sum(0) for n, v in ref.items()}
    win = sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads="window", progress=False)
    same = _last_layer_window_exact(sites)
    assert len(same) >= 3
    _close({s.name: win[s.name] for s in same}, {s.name: exact[s.name] for s in same})
    # everywhere else the prefix's keys/values matter: window leaves their contribution out
    others = [s for s in sites if s not in same]
    assert all(
        not torch.allclose(win[s.name], exact[s.name], rtol=1e-3) for s in others if s.layer is not None and s.layer < 1
    )


def test_window_equals_exact_for_a_span_at_the_start(tokenizer):
    """A span whose window starts at position 0 has no prefix: window = exact for every site."""
    from dataclasses import replace

    from lrm_interp.data.tokens import TokenSpan

    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    e = encode_trace(tokenizer, synthetic_traces(1)[0])
    first = TokenSpan("backtracking", 1, 30, 1, 0, 0, 0)
    e0 = replace(e, spans=(first,))
    ref = _per_span(model, [e0], sites, ["backtracking"])
    win = sal.behaviour_weight_grads(model, [e0], sites, ["backtracking"], span_grads="window", progress=False)
    _close(win, {k: v.abs().sum(0) for k, v in ref.items()})


def test_attribution_passes_span_grads_and_refuses_unknown(enc):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)[:3]
    for mode in sal.SPAN_GRADS:
        G = sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads=mode, progress=False)
        got = dict(
            sal.attribution(model, sites, enc, BEHAVIORS, bits=3, group_size=32, span_grads=mode, progress=False)
        )
        for s in sites:
            W = get_module(model, s.name).weight.data
            from lrm_interp.compress.quant import rtn_quantize

            torch.testing.assert_close(got[s], G[s.name] * (W - rtn_quantize(W, 3, group_size=32)).abs())
    with pytest.raises(ValueError, match="span_grads must be one of"):
        sal.attribution(model, sites, enc, BEHAVIORS, span_grads="fast")
    with pytest.raises(ValueError, match="needs the prefix cache"):
        sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads="window", prefix_cache=False)


def test_window_falls_back_to_exact_with_a_warning(enc, monkeypatch):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)[-3:]
    monkeypatch.setattr(sal, "cache_support", lambda m: (False, "probe failed"))
    assert sal.gradient_route(model, "window") == ("full_prefix", "probe failed")
    assert sal.gradient_route(model, prefix_cache=True) == ("full_prefix", "probe failed")
    with pytest.warns(UserWarning, match="probe failed"):
        G = sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads="window", progress=False)
    _close(G, sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, prefix_cache=False, progress=False))


def test_progress_counts_one_step_per_backward(enc, capsys):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)[:2]
    n_spans = len(sal.scorable_spans(enc, BEHAVIORS))
    n_pairs = len({(e.trace_id, sp.behavior) for e, sp in sal.scorable_spans(enc, BEHAVIORS)})
    for mode, reduce, n in (
        ("exact", "abs", n_spans),
        ("window", "abs", n_spans),
        ("trace", "abs", n_pairs),
        ("exact", "signed", len(enc)),
    ):
        sal.behaviour_weight_grads(model, enc, sites, BEHAVIORS, span_grads=mode, reduce=reduce)
        assert f"0/{n} " in capsys.readouterr().err, mode


def test_cli_span_grads_reaches_the_api(tmp_path, monkeypatch, capsys):
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.cli.main import build_parser, main
    from lrm_interp.protect import registry
    from lrm_interp.protect.encoding import load_masks
    from lrm_interp.toy import load_toy_model

    p = build_parser()
    base = ["protect", "--scores", "s", "--out", "m.safetensors"]
    assert p.parse_args(base).span_grads == "exact"
    assert p.parse_args(base + ["--span-grads", "window"]).span_grads == "window"
    with pytest.raises(SystemExit):
        p.parse_args(base + ["--span-grads", "fast"])
    assert "--span-grads" in p._subparsers._group_actions[0].choices["protect"].format_help()

    model, _ = load_toy_model()
    sites = tuple(find_sites(model))
    Attribution(("backtracking",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution").save(
        tmp_path / "a"
    )
    data = synthetic_traces(2).save_jsonl(tmp_path / "t.jsonl")
    seen = []
    real = sal.behaviour_weight_grads

    def spy(*args, **kw):
        seen.append((kw.get("span_grads"), kw.get("prefix_cache")))
        return real(*args, **kw)

    monkeypatch.setattr(sal, "behaviour_weight_grads", spy)
    argv = [
        "protect",
        "--scores",
        str(tmp_path / "a"),
        "--model",
        "toy",
        "--data",
        str(data),
        "--quiet",
        "--saliency",
        "attribution",
        "--span-grads",
        "trace",
        "--out",
        str(tmp_path / "m.safetensors"),
    ]
    assert main(argv) == 0
    assert seen and all(s == ("trace", None) for s in seen)
    _, meta = load_masks(tmp_path / "m.safetensors")
    assert meta["span_grads"] == "trace"
    # a saliency without span gradients refuses a non-default --span-grads, naming both
    capsys.readouterr()
    bad = [*argv[:-1], str(tmp_path / "m2.safetensors")]
    bad[bad.index("attribution")] = "magnitude"
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "--span-grads trace" in err and "magnitude" in err
    assert inspect.signature(registry.build_saliency).parameters["span_grads"].default == "exact"
