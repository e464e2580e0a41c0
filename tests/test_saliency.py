"""Per-weight saliency: formulas against hand-written references, streaming, behaviour gradients."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from lrm_interp.attribution.results import Attribution
from lrm_interp.compress.quant import rtn_quantize
from lrm_interp.data.tokens import encode_trace
from lrm_interp.experiments.protection import comparison_masks, comparison_sources
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect import registry as reg
from lrm_interp.protect import saliency as sal
from lrm_interp.protect.gptq_aware import attribution_gptq, tacq
from lrm_interp.protect.policies import global_top
from lrm_interp.protect.scale_aware import scale_aware_saliency
from lrm_interp.testing import tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(2))
    return model, ids


def _inputs(model, sites, ids):
    """Reference: site inputs [tokens, in] from plain forward pre-hooks."""
    xs, hs = {}, []
    for s in sites:

        def pre(mod, args, name=s.name):
            xs[name] = args[0].reshape(-1, args[0].shape[-1]).float()

        hs.append(get_module(model, s.name).register_forward_pre_hook(pre))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hs:
        h.remove()
    return xs


def test_magnitude_random_activation_hessian(setup):
    model, ids = setup
    sites = find_sites(model)[:4] + find_sites(model)[-1:]
    xs = _inputs(model, sites, ids)
    mag = dict(sal.magnitude(model, sites))
    act = dict(sal.activation(model, sites, ids, batch_size=2))
    hes = dict(sal.hessian(model, sites, ids, bits=3, group_size=32))
    for s in sites:
        W = get_module(model, s.name).weight.data
        x = xs[s.name]
        assert torch.equal(mag[s], W.abs())
        torch.testing.assert_close(act[s], W.abs() * x.pow(2).mean(0).sqrt()[None], rtol=1e-5, atol=1e-7)
        H_diag = torch.diag(2 * x.T @ x / x.shape[0])
        dW = W - rtn_quantize(W, 3, group_size=32)
        torch.testing.assert_close(hes[s], dW.pow(2) * H_diag[None], rtol=1e-5, atol=1e-9)
    r1 = dict(sal.random_saliency(model, sites, seed=3))
    r2 = dict(sal.random_saliency(model, sites[2:], seed=3))  # a site's noise does not depend on the others
    r3 = dict(sal.random_saliency(model, sites, seed=4))
    assert torch.equal(r1[sites[3]], r2[sites[3]]) and not torch.equal(r1[sites[3]], r3[sites[3]])


def test_streams_know_their_sites_and_policies_hold_one_module(setup):
    model, _ = setup
    sites = find_sites(model)
    stream = sal.magnitude(model, sites)
    assert stream.sites == sites and stream.n_weights == 73728 and len(stream) == len(sites)
    alive = []

    def tracked():
        for s, t in stream:
            gc.collect()
            assert sum(r() is not None for r in alive) <= 1  # the previous module was released
            alive.append(weakref.ref(t))
            yield s, t

    masks = global_top(tracked(), 0.02, sites=sites)
    assert sum(m.n_protected for m in masks.values()) == round(0.02 * 73728)
    assert list(masks) == [s.name for s in sites]


def test_activation_excludes_padding(setup):
    model, ids = setup
    sites = find_sites(model)[:1]
    short = ids[:, :25]
    padded = {
        "input_ids": torch.cat([short, torch.full((3, 15), 258)], 1),
        "attention_mask": torch.cat([torch.ones(3, 25), torch.zeros(3, 15)], 1).long(),
    }
    a = sal.input_sq_means(model, sites, padded)[sites[0].name]
    b = sal.input_sq_means(model, sites, short)[sites[0].name]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _traces(tokenizer):
    from synth import synthetic_traces

    return [encode_trace(tokenizer, t) for t in synthetic_traces(2)]


def test_behaviour_gradients_equal_plain_autograd(tokenizer):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    enc = _traces(tokenizer)
    flags = [p.requires_grad for p in model.parameters()]
    G = sal.behaviour_weight_grads(model, enc, sites, ["backtracking"])
    Gs = sal.behaviour_weight_grads(model, enc, sites, ["backtracking"], reduce="signed")
    assert [p.requires_grad for p in model.parameters()] == flags
    ref = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    ref_s = {s.name: torch.zeros(s.out_features, s.in_features) for s in sites}
    n = 0
    for e in enc:
        for sp in e.spans_of("backtracking"):
            model.zero_grad()
            logits = model(input_ids=e.input_ids[None, : sp.end]).logits[0]
            F.cross_entropy(logits[sp.start - 1 : sp.end - 1], e.input_ids[sp.start : sp.end]).backward()
            n += 1
            for s in sites:
                g = get_module(model, s.name).weight.grad
                ref[s.name] += g.abs()
                ref_s[s.name] += g
    assert n >= 2
    for s in sites:
        torch.testing.assert_close(G[s.name], ref[s.name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(Gs[s.name], ref_s[s.name], rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(G[s.name], Gs[s.name].abs()) for s in sites)  # cancellation across spans


def test_attribution_saliency_chunks_importance_and_loss_fn(tokenizer):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    enc = _traces(tokenizer)
    G = sal.behaviour_weight_grads(model, enc, sites, ["backtracking"])
    full = dict(sal.attribution(model, sites, enc, ["backtracking"], bits=3, group_size=32))
    chunked = dict(
        sal.attribution(model, sites, enc, ["backtracking"], bits=3, group_size=32, site_chunk=7)
    )  # two gradient passes of 7 sites
    for s in sites:
        W = get_module(model, s.name).weight.data
        expect = G[s.name] * (W - rtn_quantize(W, 3, group_size=32)).abs()
        torch.testing.assert_close(full[s], expect)
        torch.testing.assert_close(chunked[s], expect)
    # module importance from an Attribution: per-module mean = its mean RI over behaviours
    scores = torch.rand(2, len(sites), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = Attribution(("backtracking", "deduction"), tuple(sites), scores, "attribution")
    ri = attr.site_ri()  # mean RI over behaviours (attribution.results.site_scores)
    weighted = dict(
        sal.attribution(model, sites[:3], enc, ["backtracking"], bits=3, group_size=32, module_importance=attr)
    )
    for s in sites[:3]:
        assert float(weighted[s].mean()) == pytest.approx(ri[s.name], rel=1e-4)
    # a custom loss over batches: next-token loss on plain ids
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))

    def lm_loss(m, batch):
        logits = m(input_ids=batch[None]).logits[0, :-1]
        return F.cross_entropy(logits, batch[1:])

    custom = dict(sal.attribution(model, sites[:2], loss_fn=lm_loss, batches=list(ids), bits=3, group_size=32))
    Gc = sal.weight_grads(model, sites[:2], lm_loss, list(ids))
    W0 = get_module(model, sites[0].name).weight.data
    torch.testing.assert_close(custom[sites[0]], Gc[sites[0].name] * (W0 - rtn_quantize(W0, 3, group_size=32)).abs())
    with pytest.raises(ValueError, match="no span"):
        sal.behaviour_weight_grads(model, enc, sites, ["no-such-behaviour"])


def test_conv1d_gradients_in_out_in_layout():
    model = tiny_model("gpt2", seed=0)
    sites = find_sites(model)
    ids = torch.randint(0, 256, (12,), generator=torch.Generator().manual_seed(6))

    def loss(m, b):
        return F.cross_entropy(m(input_ids=b[None]).logits[0, :-1], b[1:])

    G = sal.weight_grads(model, sites, loss, [ids])
    model.zero_grad()
    loss(model, ids).backward()
    for s in sites:
        mod = get_module(model, s.name)
        assert G[s.name].shape == weight_matrix(mod).shape == (s.out_features, s.in_features)
        torch.testing.assert_close(G[s.name], mod.weight.grad.T.abs(), rtol=1e-4, atol=1e-7)


def test_comparison_sources_are_the_single_saliencies(setup, tokenizer):
    from lrm_interp.toy.tasks import generate_dataset

    model, ids = setup
    sites = find_sites(model)[:3]
    enc = [encode_trace(tokenizer, t) for t in generate_dataset(1, seed=5)]
    beh = ["adding-knowledge", "deduction"]
    imp = {s.name: float(i + 1) for i, s in enumerate(sites)}
    src = comparison_sources(model, sites, enc, beh, ids, bits=3, group_size=32, module_importance=imp, seed=7)
    assert list(src) == [
        "attribution (behaviour-span TaCQ × module RI)",
        "attribution (behaviour-span TaCQ)",
        "attribution, scale-aware (behaviour spans, group re-fit)",
        "scale-aware, response gradients (group re-fit; control)",
        "attribution × GPTQ error (behaviour spans)",
        "TaCQ (response gradients × GPTQ error × |W|)",
        "magnitude",
        "activation (AWQ-style)",
        "hessian (SpQR-style)",
        "random",
    ]
    ref = {
        "magnitude": sal.magnitude(model, sites),
        "random": sal.random_saliency(model, sites, seed=7),
        "hessian (SpQR-style)": sal.hessian(model, sites, ids, bits=3, group_size=32),
        "attribution (behaviour-span TaCQ)": sal.attribution(model, sites, enc, beh, bits=3, group_size=32),
    }
    for name, stream in ref.items():
        got = dict(src[name]())
        for s_, v in stream:
            torch.testing.assert_close(got[s_], v, rtol=1e-6, atol=0)
    ri = dict(src["attribution (behaviour-span TaCQ × module RI)"]())
    for s_ in sites:  # each module's saliency rescaled to mean = its importance
        assert float(ri[s_].mean()) == pytest.approx(imp[s_.name], rel=1e-5)
    assert "attribution (behaviour-span TaCQ × module RI)" not in comparison_sources(
        model, sites, enc, beh, ids, bits=3
    )
    rows = comparison_masks({"magnitude": src["magnitude"]}, find_sites(model), 0.05)
    assert list(rows) == ["none", "5% magnitude", "final-layer MLP (paper)"] and rows["none"] == {}
    mag = global_top(sal.magnitude(model, sites), 0.05)  # the source streams over `sites` only
    assert {k: m.flat_indices().tolist() for k, m in rows["5% magnitude"].items()} == {
        k: m.flat_indices().tolist() for k, m in mag.items()
    }
    assert sum(m.n_protected for m in rows["5% magnitude"].values()) == round(0.05 * sum(s_.n_weights for s_ in sites))
    assert sorted(rows["final-layer MLP (paper)"]) == [f"model.layers.1.mlp.{k}_proj" for k in ("down", "gate", "up")]


def test_registry_builds_every_source_like_its_function(setup, tokenizer):
    from lrm_interp.toy.tasks import generate_dataset

    model, ids = setup
    sites = find_sites(model)[:3]
    enc = [encode_trace(tokenizer, t) for t in generate_dataset(1, seed=5)]
    beh = ["adding-knowledge", "deduction"]
    imp = {s.name: float(i + 1) for i, s in enumerate(sites)}
    assert list(reg.SALIENCIES) == [
        "attribution_ri",
        "attribution",
        "attribution_scale",
        "scale_task",
        "attribution_gptq",
        "tacq",
        "magnitude",
        "activation",
        "hessian",
        "random",
    ]
    kw = dict(
        encoded=enc,
        behaviors=beh,
        calib=ids,
        bits=2,
        group_size=16,
        symmetric=True,
        seed=3,
        module_importance=imp,
        progress=False,
    )
    ref = {
        "attribution_ri": sal.attribution(
            model, sites, enc, beh, bits=2, group_size=16, symmetric=True, module_importance=imp
        ),
        "attribution": sal.attribution(model, sites, enc, beh, bits=2, group_size=16, symmetric=True),
        "magnitude": sal.magnitude(model, sites),
        "activation": sal.activation(model, sites, ids),
        "hessian": sal.hessian(model, sites, ids, bits=2, group_size=16, symmetric=True),
        "random": sal.random_saliency(model, sites, seed=3),
        "attribution_gptq": attribution_gptq(model, sites, enc, beh, ids, bits=2, group_size=16, symmetric=True),
        "tacq": tacq(model, sites, enc, ids, bits=2, group_size=16, symmetric=True),
    }
    G = sal.behaviour_weight_grads(model, enc, sites, beh)
    ref["attribution_scale"] = [
        (s_, scale_aware_saliency(get_module(model, s_.name).weight.data, G[s_.name], 2, group_size=16, symmetric=True))
        for s_ in sites
    ]
    from lrm_interp.protect.gptq_aware import response_loss

    GT = sal.weight_grads(model, sites, response_loss, list(enc), progress=False)
    ref["scale_task"] = [
        (
            s_,
            scale_aware_saliency(get_module(model, s_.name).weight.data, GT[s_.name], 2, group_size=16, symmetric=True),
        )
        for s_ in sites
    ]
    assert set(ref) == set(reg.SALIENCIES)
    for name, stream in ref.items():
        built = reg.build_saliency(name, model, sites, **kw)
        assert isinstance(built, sal.SaliencyStream) and built.sites == sites
        got = dict(built)
        for s_, v in stream:
            torch.testing.assert_close(got[s_], v, rtol=1e-6, atol=0)
    assert reg.SALIENCIES["activation"].needs == ("calib",) and reg.SALIENCIES["magnitude"].needs == ()
    with pytest.raises(ValueError, match="'attribution_ri' needs module_importance"):
        reg.build_saliency("attribution_ri", model, sites, encoded=enc, behaviors=beh)
    with pytest.raises(ValueError, match="'hessian' needs calib"):
        reg.build_saliency("hessian", model, sites)
    with pytest.raises(ValueError, match="'tacq' needs calib"):
        reg.build_saliency("tacq", model, sites, encoded=enc)
    with pytest.raises(KeyError, match="unknown saliency 'awq'"):
        reg.build_saliency("awq", model, sites)


def test_attribution_progress_bar_counts_span_backward_passes(tokenizer, capsys):
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)[:2]
    enc = _traces(tokenizer)
    n = len(sal.scorable_spans(enc, ["backtracking"]))
    dict(sal.attribution(model, sites, enc, ["backtracking"], bits=3, group_size=32, site_chunk=1))
    err = capsys.readouterr().err
    assert f"0/{n} " in err and "span gradients, sites 2-2" in err  # one bar per pass, one step per span
    dict(sal.attribution(model, sites, enc, ["backtracking"], bits=3, group_size=32, progress=False))
    assert "span gradients" not in capsys.readouterr().err
