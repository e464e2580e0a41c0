"""GPTQ-based saliencies (TaCQ as published, behaviour-span × GPTQ error) against plain references."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.quant import gptq_quantize
from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.protect import saliency as sal
from lrm_interp.protect.gptq_aware import GPTQDeltas, attribution_gptq, response_loss, tacq
from lrm_interp.testing import tiny_model


def _setup(tokenizer):
    from synth import synthetic_traces

    model = tiny_model("llama", seed=0)
    enc = [encode_trace(tokenizer, t) for t in synthetic_traces(2)]
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(2))
    return model, enc, ids


def test_gptq_deltas_equal_gptq_with_the_sites_own_hessian(tokenizer):
    model, _, ids = _setup(tokenizer)
    sites = find_sites(model)
    q = GPTQDeltas(model, sites, ids, bits=3, group_size=16, symmetric=True, progress=False)
    for s in sites:
        W = get_module(model, s.name).weight.data
        H, _ = collect_hessians(model, [s], ids, progress=False)
        torch.testing.assert_close(
            q(s, W), gptq_quantize(W, H[s.name], 3, group_size=16, symmetric=True), rtol=0, atol=1e-6
        )
        assert len(q._H) <= 6  # one decoder layer's sites at most (7 per layer, the asked one popped)


def test_response_loss_is_mean_ce_of_response_tokens(tokenizer):
    model, enc, _ = _setup(tokenizer)
    e = enc[0]
    logits = model(input_ids=e.input_ids[None]).logits[0]
    r = e.response_start
    ref = F.cross_entropy(logits[r - 1 : -1], e.input_ids[r:])
    torch.testing.assert_close(response_loss(model, e), ref, rtol=1e-5, atol=1e-6)


def test_tacq_and_attribution_gptq_equal_their_formulas(tokenizer):
    model, enc, ids = _setup(tokenizer)
    sites = find_sites(model)[:4]
    flags = [p.requires_grad for p in model.parameters()]
    got = dict(tacq(model, sites, enc, ids, bits=2, group_size=16, progress=False))
    got_b = dict(attribution_gptq(model, sites, enc, ["backtracking"], ids, bits=2, group_size=16, progress=False))
    assert [p.requires_grad for p in model.parameters()] == flags
    G = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    for e in enc:  # reference: one plain backward per trace
        model.zero_grad()
        r = e.response_start
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(model(input_ids=e.input_ids[None]).logits[0][r - 1 : -1], e.input_ids[r:]).backward()
        for s in sites:
            G[s.name] += get_module(model, s.name).weight.grad.abs()
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
        p.grad = None
    Gb = sal.behaviour_weight_grads(model, enc, sites, ["backtracking"], progress=False)
    for s in sites:
        W = get_module(model, s.name).weight.data
        H, _ = collect_hessians(model, [s], ids, progress=False)
        dW = (W - gptq_quantize(W, H[s.name], 2, group_size=16)).abs()
        torch.testing.assert_close(got[s], G[s.name] * dW * W.abs(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(got_b[s], Gb[s.name] * dW, rtol=1e-5, atol=1e-9)
        rtn_based = dict(sal.attribution(model, [s], enc, ["backtracking"], bits=2, group_size=16, progress=False))[s]
        assert not torch.allclose(rtn_based, got_b[s])  # GPTQ's error is not RTN's


def test_scale_task_is_the_scale_aware_formula_on_response_gradients(tokenizer):
    """The control row of ``attribution_scale``: the same per-weight formula, G from every response
    token (one plain backward per trace) — and not the behaviour spans' G."""
    from lrm_interp.protect.registry import build_saliency
    from lrm_interp.protect.scale_aware import scale_aware_saliency

    model, enc, _ = _setup(tokenizer)
    sites = find_sites(model)[:3]
    got = dict(build_saliency("scale_task", model, sites, encoded=enc, bits=3, group_size=16, progress=False))
    spans = dict(
        build_saliency(
            "attribution_scale",
            model,
            sites,
            encoded=enc,
            behaviors=["backtracking"],
            bits=3,
            group_size=16,
            progress=False,
        )
    )
    G = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    for e in enc:
        model.zero_grad()
        r = e.response_start
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(model(input_ids=e.input_ids[None]).logits[0][r - 1 : -1], e.input_ids[r:]).backward()
        for s in sites:
            G[s.name] += get_module(model, s.name).weight.grad.abs()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for s in sites:
        W = get_module(model, s.name).weight.data
        ref = scale_aware_saliency(W, G[s.name], 3, group_size=16, symmetric=False)
        torch.testing.assert_close(got[s], ref, rtol=1e-4, atol=1e-9)
        assert not torch.allclose(spans[s], got[s])  # behaviour spans give another G
