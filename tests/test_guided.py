"""Loss-guided GPTQ Hessians against a token-by-token reference; the model-level hessians= path."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.compress.quant.guided import gradient_weighted_hessians, guided_transform, mix_hessians
from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.protect.saliency import scorable_spans, span_loss
from lrm_interp.testing import tiny_model


def _setup(tokenizer):
    from synth import synthetic_traces

    model = tiny_model("llama", seed=0)
    enc = [encode_trace(tokenizer, t) for t in synthetic_traces(2)]
    return model, scorable_spans(enc, ["backtracking", "uncertainty-estimation"])


def test_gradient_weighted_hessians_equal_token_loop(tokenizer):
    model, items = _setup(tokenizer)
    sites = find_sites(model)[::3]
    flags = [p.requires_grad for p in model.parameters()]
    got = gradient_weighted_hessians(model, sites, span_loss, items, progress=False)
    assert [p.requires_grad for p in model.parameters()] == flags
    ref = {s.name: torch.zeros(s.in_features, s.in_features, dtype=torch.float64) for s in sites}
    tot = {s.name: 0.0 for s in sites}
    for item in items:
        xs, ys, hs = {}, {}, []
        for s in sites:

            def fn(mod, args, out, name=s.name, xs=xs, ys=ys):
                xs[name] = args[0][0].detach().double()
                out.retain_grad()
                ys[name] = out

            hs.append(get_module(model, s.name).register_forward_hook(fn))
        for p in model.parameters():
            p.requires_grad_(True)
        model.zero_grad()
        span_loss(model, item).backward()
        for h in hs:
            h.remove()
        for s in sites:
            g = ys[s.name].grad[0].double()
            for t in range(g.shape[0]):  # one outer product per token
                w = float(g[t].pow(2).sum())
                ref[s.name] += w * torch.outer(xs[s.name][t], xs[s.name][t])
                tot[s.name] += w
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
        p.grad = None
    for s in sites:
        torch.testing.assert_close(got[s.name].double(), 2 * ref[s.name] / tot[s.name], rtol=1e-4, atol=1e-7)


def test_mix_and_quantize_with_given_hessians(tokenizer):
    model, items = _setup(tokenizer)
    sites = find_sites(model)
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(2))
    Hc, _ = collect_hessians(model, sites, ids, progress=False)
    Hg = gradient_weighted_hessians(model, sites, span_loss, items, progress=False)
    plain = copy.deepcopy(model)
    quantize_model_(plain, bits=3, group_size=16, method="gptq", calib=ids, progress=False)
    given = copy.deepcopy(model)  # mix = 0: the calibration Hessian, rescaled: same GPTQ result
    quantize_model_(
        given,
        bits=3,
        group_size=16,
        method="gptq",
        calib=ids,
        hessian_transform=guided_transform(Hg, 0.0),
        progress=False,
    )
    guided = copy.deepcopy(model)
    quantize_model_(
        guided,
        bits=3,
        group_size=16,
        method="gptq",
        calib=ids,
        hessian_transform=guided_transform(Hg, 0.7),
        progress=False,
    )
    from lrm_interp.model.provenance import model_record

    assert model_record(guided).last("quantization")["hessian_transform"].startswith("guided_transform")
    assert "hessian_transform" not in model_record(plain).last("quantization")
    for s in sites:
        a, b, c = (get_module(m, s.name).weight.data for m in (plain, given, guided))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert any(not torch.allclose(get_module(plain, s.name).weight, get_module(guided, s.name).weight) for s in sites)
    m = mix_hessians(Hc, Hg, 0.25)[sites[0].name]
    torch.testing.assert_close(guided_transform(Hg, 0.25)(sites[0].name, Hc[sites[0].name]), m)
    assert float(torch.diag(m).mean()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="mix must be"):
        mix_hessians(Hc, Hg, 1.5)
    with pytest.raises(KeyError, match="no guided Hessian for site"):
        quantize_model_(
            copy.deepcopy(model),
            bits=3,
            method="gptq",
            calib=ids,
            hessian_transform=guided_transform({sites[0].name: Hg[sites[0].name]}),
            progress=False,
        )
    with pytest.raises(ValueError, match="needs method='gptq'"):
        quantize_model_(
            copy.deepcopy(model), bits=3, method="rtn", hessian_transform=guided_transform(Hg), progress=False
        )
