"""Mask-aware GPTQ: loop reference, protected weights, output error vs RTN, model-level runs."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.quant import gptq_quantize, gptq_quantize_tensor, quantize_model_, rtn_quantize
from lrm_interp.model.capture import Capture, Reducer
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import set_weight_matrix, weight_matrix
from lrm_interp.testing import tiny_model


def naive_gptq(W, H, bits, group_size, mask, symmetric=False, percdamp=0.01):
    """Reference GPTQ in float64 with plain loops: no lazy batching, every update applied at once."""
    out, inn = W.shape
    W0 = W.double()
    Wc = W0.clone()
    H = H.double().clone()
    dead = torch.diag(H) == 0
    for j in range(inn):
        if dead[j]:
            H[j, j] = 1.0
            for r in range(out):
                if not mask[r, j]:
                    Wc[r, j] = 0.0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(inn, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    maxq = 2**bits - 1
    g = inn if group_size is None else group_size
    Q = torch.zeros_like(Wc)
    scale = torch.ones(out)
    zero = torch.zeros(out)
    for c in range(inn):
        if c % g == 0:  # fit each row's group on its current, unprotected weights
            for r in range(out):
                vals = [float(Wc[r, j]) for j in range(c, min(c + g, inn)) if not mask[r, j]]
                lo, hi = min(vals + [0.0]), max(vals + [0.0])
                if symmetric:  # float32 like the fast path: the largest negative weight sits on a tie
                    s = float(2 * torch.tensor(max(hi, -lo), dtype=torch.float32) / maxq)
                    z = (maxq + 1) / 2
                else:
                    s = (hi - lo) / maxq
                    z = round(-lo / s) if s > 0 else 0.0
                scale[r], zero[r] = (s if s > 0 else 1.0), z
        for r in range(out):
            if mask[r, c]:
                Q[r, c] = W0[r, c]
                continue
            ratio = torch.tensor(float(Wc[r, c]), dtype=torch.float32) / scale[r]
            q = min(max(float(torch.round(ratio)) + float(zero[r]), 0), maxq)
            Q[r, c] = (q - float(zero[r])) * float(scale[r])
            e = (float(Wc[r, c]) - float(Q[r, c])) / float(U[c, c])
            for j in range(c + 1, inn):
                if not mask[r, j]:  # protected weights never receive an update
                    Wc[r, j] -= e * float(U[c, j])
    return Q


@pytest.fixture(scope="module")
def calib():
    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(2))
    return model, ids


@pytest.mark.parametrize(
    "blocksize,group_size,symmetric", [(8, 16, False), (5, 16, False), (128, None, True), (16, 8, True)]
)
def test_fast_gptq_equals_loop_reference(calib, blocksize, group_size, symmetric):
    model, ids = calib
    site = find_sites(model)[0]  # layer 0 q_proj [64, 64]
    H = collect_hessians(model, [site], ids)[0][site.name]
    H[7, :] = H[:, 7] = 0.0  # a dead input
    W = get_module(model, site.name).weight.data[:12]
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.08
    fast = gptq_quantize(W, H, 3, group_size=group_size, symmetric=symmetric, mask=mask, blocksize=blocksize)
    ref = naive_gptq(W, H, 3, group_size, mask, symmetric)
    torch.testing.assert_close(fast.double(), ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast[mask], W[mask])
    assert fast[~mask[:, 7], 7].abs().sum() == 0  # unprotected weights of a dead input are zeroed


def test_protected_weights_exact_and_unprotected_on_grid(calib):
    model, ids = calib
    site = find_sites(model)[5]  # layer 0 up_proj [128, 64]
    H = collect_hessians(model, [site], ids)[0][site.name]
    W = get_module(model, site.name).weight.data
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[:, 10] = True  # a whole protected input column
    mask[3, 40:48] = True
    qt = gptq_quantize_tensor(W, H, 3, group_size=16, mask=mask, blocksize=32)
    deq = qt.dequantize()
    assert torch.equal(deq[mask], W[mask])
    assert torch.equal(deq, gptq_quantize(W, H, 3, group_size=16, mask=mask, blocksize=32))
    grid = (qt.codes.float() - qt.zero.repeat_interleave(16, 1)) * qt.scale.repeat_interleave(16, 1)
    torch.testing.assert_close(deq[~mask], grid[~mask])
    assert int(qt.codes.max()) <= 7
    # the protected column gets no update: its value is the original, and the error of the
    # other weights is still compensated (output error below RTN's)
    err = lambda Wq: float(torch.trace((W - Wq) @ H @ (W - Wq).T))  # noqa: E731 - ∝ the layer output error
    assert err(deq) < err(rtn_quantize(W, 3, group_size=16, mask=mask))


class _Inputs(Reducer):
    stages = frozenset({"input"})

    def __init__(self):
        self.x = {}

    def on_input(self, site, t):
        self.x[site] = t.reshape(-1, t.shape[-1]).float()


def test_gptq_reduces_layer_output_error_vs_rtn(calib):
    model, ids = calib
    sites = find_sites(model)
    Hs, n = collect_hessians(model, sites, ids)
    red = _Inputs()
    with torch.no_grad(), Capture(model, sites, [red]):
        model(input_ids=ids)
    for s in sites:
        W = get_module(model, s.name).weight.data
        X = red.x[s.name]  # [tokens, in]
        torch.testing.assert_close(Hs[s.name], 2 * X.T @ X / X.shape[0], rtol=1e-4, atol=1e-5)
        e_g = torch.linalg.norm(X @ W.T - X @ gptq_quantize(W, Hs[s.name], 3, group_size=32).T)
        e_r = torch.linalg.norm(X @ W.T - X @ rtn_quantize(W, 3, group_size=32).T)
        assert e_g < 0.9 * e_r, s.name


def test_quantize_model_gptq_sequential(calib):
    model, ids = calib
    sites = find_sites(model)
    masks = {
        s.name: torch.rand(s.out_features, s.in_features, generator=torch.Generator().manual_seed(i)) < 0.03
        for i, s in enumerate(sites)
    }
    seq, one = copy.deepcopy(model), copy.deepcopy(model)
    rep = quantize_model_(
        seq, bits=3, group_size=32, method="gptq", masks=masks, calib=ids, progress=False, keep_tensors=True
    )
    quantize_model_(one, bits=3, group_size=32, method="gptq", masks=masks, calib=ids, progress=False, sequential=False)
    assert rep.n_protected == sum(int(m.sum()) for m in masks.values())
    for s in sites:
        w0, ws, wo = (weight_matrix(get_module(m, s.name)) for m in (model, seq, one))
        m = masks[s.name]
        assert torch.equal(ws[m], w0[m]) and torch.equal(wo[m], w0[m])
        assert torch.equal(rep.tensors[s.name].dequantize(), ws)
        if s.layer == 0:  # same Hessians: nothing before layer 0 is quantized
            assert torch.equal(ws, wo)
        else:  # layer 1 sees the quantized layer 0 in sequential mode
            assert not torch.equal(ws, wo)
    with pytest.raises(ValueError, match="calibration"):
        quantize_model_(copy.deepcopy(model), bits=3, method="gptq", progress=False)


def _site_inputs(model, sites, ids):
    red = _Inputs()
    with torch.no_grad(), Capture(model, sites, [red]):
        model(input_ids=ids)
    return red.x


@pytest.mark.parametrize("sequential", [True, False])
def test_quantize_model_gptq_equals_a_layer_by_layer_reference(calib, sequential):
    """The model-level driver against a reference written out by hand: per decoder layer,
    capture the inputs of the model as quantized so far (or of the original model,
    sequential=False), H = 2·XᵀX/n, gptq_quantize each site, write it back."""
    model, ids = calib
    sites = find_sites(model)
    masks = {
        s.name: torch.rand(s.out_features, s.in_features, generator=torch.Generator().manual_seed(9 + i)) < 0.05
        for i, s in enumerate(sites)
    }
    q = copy.deepcopy(model)
    rep = quantize_model_(
        q,
        bits=3,
        group_size=16,
        method="gptq",
        masks=masks,
        calib=ids,
        progress=False,
        sequential=sequential,
        blocksize=32,
        keep_tensors=True,
    )
    ref = copy.deepcopy(model)
    layers = [[s for s in sites if s.layer == L] for L in (0, 1)] if sequential else [sites]
    for grp in layers:
        X = _site_inputs(ref, grp, ids)
        for s in grp:
            W = weight_matrix(get_module(ref, s.name))
            H = 2 * (X[s.name].T @ X[s.name]) / X[s.name].shape[0]
            set_weight_matrix(
                get_module(ref, s.name), gptq_quantize(W, H, 3, group_size=16, mask=masks[s.name], blocksize=32)
            )
    for s in sites:
        w_q, w_ref = weight_matrix(get_module(q, s.name)), weight_matrix(get_module(ref, s.name))
        assert torch.equal(w_q, w_ref), s.name
        assert torch.equal(rep.tensors[s.name].dequantize(), w_q)
    assert list(rep.tensors) == [s.name for grp in layers for s in grp]


def test_gptq_conv1d_model():
    model = tiny_model("gpt2", seed=0)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(4))
    sites = find_sites(model)
    q = copy.deepcopy(model)
    masks = {s.name: torch.zeros(s.out_features, s.in_features, dtype=torch.bool) for s in sites}
    for m in masks.values():
        m[1, :4] = True
    quantize_model_(q, bits=4, group_size=16, method="gptq", masks=masks, calib=ids, progress=False)
    for s in sites:
        w0, w1 = weight_matrix(get_module(model, s.name)), weight_matrix(get_module(q, s.name))
        assert torch.equal(w1[masks[s.name]], w0[masks[s.name]])
        assert len(torch.unique(w1[5, :16])) <= 16


@pytest.mark.gpu
def test_gptq_gpu_equals_cpu():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(512, 256, generator=g)
    H = 2 * X.T @ X / 512
    W = torch.randn(128, 256, generator=g)
    mask = torch.rand(128, 256, generator=g) < 0.02
    cpu = gptq_quantize(W, H, 3, group_size=128, mask=mask)
    gpu = gptq_quantize(W.cuda(), H.cuda(), 3, group_size=128, mask=mask.cuda()).cpu()
    assert torch.equal(gpu[mask], W[mask])
    assert (gpu != cpu).float().mean() < 0.01  # rare one-step rounding flips from float differences
