"""Mask-aware RTN: loop reference, protected weights bit-exact, scale fit without them, codes."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.compress.quant import (
    QuantizedTensor,
    check_bits,
    gptq_quantize,
    gptq_quantize_tensor,
    quantize_model_,
    rtn_quantize,
    rtn_quantize_tensor,
)
from lrm_interp.model.provenance import model_record
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.testing import tiny_model


def naive_rtn(W, bits, group_size, mask=None, symmetric=False):
    """Reference: python loops over rows and groups (float32 scalar arithmetic, like the fast path)."""
    f = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731 - shorthand for the literals below
    out = W.double().clone()
    maxq = 2**bits - 1
    g = W.shape[1] if group_size is None else group_size
    for r in range(W.shape[0]):
        for g0 in range(0, W.shape[1], g):
            cols = range(g0, min(g0 + g, W.shape[1]))
            vals = [float(W[r, c]) for c in cols if mask is None or not mask[r, c]]
            lo, hi = min(vals + [0.0]), max(vals + [0.0])
            if symmetric:
                scale = 2 * f(max(hi, -lo)) / maxq
                zero = f((maxq + 1) / 2)
            else:
                scale = (f(hi) - f(lo)) / maxq
                zero = torch.round(-f(lo) / scale) if scale > 0 else f(0.0)
            scale = scale if scale > 0 else f(1.0)
            for c in cols:
                if mask is not None and mask[r, c]:
                    continue
                q = torch.clamp(torch.round(W[r, c] / scale) + zero, 0, maxq)
                out[r, c] = float((q - zero) * scale)
    return out


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [16, None])
def test_rtn_matches_loop_reference_and_keeps_protected_exact(symmetric, group_size):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 40, generator=g)  # 40 = 2.5 groups of 16: a ragged last group
    mask = torch.rand(5, 40, generator=g) < 0.15
    for bits in (2, 3, 4, 8):
        fast = rtn_quantize(W, bits, group_size=group_size, symmetric=symmetric, mask=mask)
        ref = naive_rtn(W, bits, group_size, mask, symmetric)
        torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-6)
        assert torch.equal(fast[mask], W[mask])
        n_levels = len(torch.unique(fast[0, :16][~mask[0, :16]]))
        assert n_levels <= 2**bits
        assert not torch.equal(fast[~mask], W[~mask])


def test_scale_fit_ignores_protected_outlier():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(4, 32, generator=g)
    W[1, 5] = 100.0
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[1, 5] = True
    prot = rtn_quantize(W, 3, group_size=None, mask=mask)
    assert prot[1, 5] == 100.0
    # the other weights of row 1 quantized alone, with the outlier's column removed
    alone = rtn_quantize(torch.cat([W[:, :5], W[:, 6:]], 1), 3, group_size=None)
    assert torch.equal(prot[1, torch.arange(32) != 5], alone[1])
    # without protection the outlier stretches the grid: the others lose far more
    plain = rtn_quantize(W, 3, group_size=None)
    keep = torch.arange(32) != 5
    e_plain = (plain[1, keep] - W[1, keep]).abs().mean()
    e_prot = (prot[1, keep] - W[1, keep]).abs().mean()
    assert e_plain > 3 * e_prot


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_kept_and_protected_bit_exact(dtype):
    W = torch.randn(8, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    mask = torch.zeros(8, 64, dtype=torch.bool)
    mask[:, 3] = True
    mask[2, 40:] = True  # a whole group protected: its fit is empty, nothing changes
    q = rtn_quantize(W, 4, group_size=32, mask=mask)
    assert q.dtype == dtype
    assert torch.equal(
        q[mask].view(torch.int16 if dtype != torch.float32 else torch.int32),
        W[mask].view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


def test_quantized_tensor_codes_and_storage():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(6, 48, generator=g)
    mask = torch.rand(6, 48, generator=g) < 0.05
    qt = rtn_quantize_tensor(W, 3, group_size=16, mask=mask)
    assert isinstance(qt, QuantizedTensor)
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) <= 7
    assert qt.scale.shape == (6, 3) and qt.shape == (6, 48)
    assert torch.equal(qt.dequantize(), rtn_quantize(W, 3, group_size=16, mask=mask))
    n_p = int(mask.sum())
    assert qt.protected.numel() == n_p and qt.values.dtype == torch.float32
    fp16 = rtn_quantize_tensor(W, 3, group_size=16, mask=mask, value_dtype=torch.float16)
    # 3 bits per code + 2×16 bits per group (18 groups) + (16 value + 32 index) per kept weight
    assert fp16.storage_bits() == 3 * 288 + 32 * 18 + 48 * n_p
    assert torch.equal(fp16.dequantize()[mask], W[mask].half().float())
    half = rtn_quantize_tensor(W.half(), 3, group_size=16, mask=mask, scale_dtype=torch.float16)
    assert half.values.dtype == torch.float16 and half.dequantize().dtype == torch.float16
    assert torch.equal(half.dequantize()[mask], W.half()[mask])


def test_bad_arguments():
    W = torch.randn(4, 8)
    with pytest.raises(ValueError, match="bits"):
        rtn_quantize(W, 1)
    with pytest.raises(ValueError, match="shape"):
        rtn_quantize(W, 3, mask=torch.zeros(8, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="group_size must be positive"):
        rtn_quantize(W, 3, group_size=0)


def test_one_bits_check_everywhere():
    """check_bits is the single 2..8 check: every quantizer entry point raises its message."""
    W, H = torch.randn(4, 8), torch.eye(8)
    model = tiny_model("llama", seed=0)
    assert [check_bits(b) for b in (2, 8, 3.0)] == [2, 8, 3]
    calls = [
        lambda b: check_bits(b),
        lambda b: rtn_quantize(W, b),
        lambda b: rtn_quantize_tensor(W, b),
        lambda b: gptq_quantize(W, H, b),
        lambda b: gptq_quantize_tensor(W, H, b),
        lambda b: quantize_model_(model, bits=b, progress=False),
        lambda b: quantize_model_(
            model, bits=b, method="gptq", calib=torch.zeros(1, 4, dtype=torch.long), progress=False
        ),
    ]
    for bad in (1, 9):
        for call in calls:
            with pytest.raises(ValueError, match=f"bits must be in 2..8, got {bad}"):
                call(bad)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_quantize_model_rtn_masks_and_conv1d_layout(arch):
    model = tiny_model(arch, seed=0)
    sites = find_sites(model)
    masks = {}
    for s in sites:
        m = torch.zeros(s.out_features, s.in_features, dtype=torch.bool)
        m[0, :3] = True  # in the [out, in] layout, also for GPT-2 Conv1D ([in, out] storage)
        masks[s.name] = m
    q = copy.deepcopy(model)
    rep = quantize_model_(q, bits=3, group_size=32, masks=masks, progress=False, keep_tensors=True)
    assert rep.n_sites == len(sites) and rep.n_protected == 3 * len(sites)
    assert rep.n_weights == sum(s.n_weights for s in sites)
    for s in sites:
        w0 = weight_matrix(get_module(model, s.name))
        w1 = weight_matrix(get_module(q, s.name))
        assert torch.equal(w1[masks[s.name]], w0[masks[s.name]])
        assert torch.equal(w1, rtn_quantize(w0, 3, group_size=32, mask=masks[s.name]))
        assert torch.equal(rep.tensors[s.name].dequantize(), w1)
    for s in sites[:2] + sites[-1:]:  # the model-level loop against the python loop reference
        w0, w1 = (weight_matrix(get_module(m, s.name)) for m in (model, q))
        torch.testing.assert_close(w1.double(), naive_rtn(w0, 3, 32, masks[s.name]), rtol=1e-5, atol=1e-6)
    assert model_record(q).last("quantization")["bits"] == 3
    with pytest.raises(KeyError, match="not quantized"):
        quantize_model_(copy.deepcopy(model), bits=3, masks={"nope": masks[sites[0].name]}, progress=False)


@pytest.mark.gpu
def test_rtn_gpu_equals_cpu():
    W = torch.randn(64, 256, generator=torch.Generator().manual_seed(4))
    mask = torch.rand(64, 256, generator=torch.Generator().manual_seed(5)) < 0.02
    cpu = rtn_quantize(W, 3, group_size=128, mask=mask)
    gpu = rtn_quantize(W.cuda(), 3, group_size=128, mask=mask.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-6)
    assert torch.equal(gpu[mask], W[mask])


def test_quantize_sites_is_one_lazy_per_site_loop():
    """The loop behind quantize_model_: [out, in] weights (Conv1D too), dense masks, Hessians
    popped per site, groups pulled only after the previous group was written back."""
    from lrm_interp.compress.quant.apply import quantize_sites_
    from lrm_interp.protect.masks import ProtectionMask

    model = tiny_model("gpt2", seed=0)
    sites = find_sites(model)
    orig = copy.deepcopy(model)
    pm = ProtectionMask.from_rows(sites[0].name, (sites[0].out_features, sites[0].in_features), [1])
    seen, pulled = [], []

    def groups():
        for L in (0, 1):
            grp = [s for s in sites if s.layer == L]
            if L == 1:  # layer 0 is already quantized when layer 1 is requested
                pulled.append(
                    all(
                        not torch.equal(
                            weight_matrix(get_module(model, s.name)), weight_matrix(get_module(orig, s.name))
                        )
                        for s in sites
                        if s.layer == 0
                    )
                )
            yield grp, {s.name: torch.eye(s.in_features) for s in grp}

    def quantize(W, m, H):
        seen.append((tuple(W.shape), None if m is None else int(m.sum()), tuple(H.shape)))
        return rtn_quantize_tensor(W, 4, group_size=16, mask=m)

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    tensors, bar = {}, Bar()
    n_w, n_p = quantize_sites_(
        model, groups(), quantize, masks={sites[0].name: pm}, on_tensor=tensors.__setitem__, bar=bar
    )
    assert pulled == [True] and bar.n == len(sites) == len(seen) and list(tensors) == [s.name for s in sites]
    assert seen[0] == (
        (sites[0].out_features, sites[0].in_features),
        sites[0].in_features,
        (sites[0].in_features, sites[0].in_features),
    )
    assert n_w == sum(s.n_weights for s in sites) and n_p == pm.n_protected
    for s in sites:
        w0, w1 = weight_matrix(get_module(orig, s.name)), weight_matrix(get_module(model, s.name))
        m = pm.dense() if s.name == sites[0].name else None
        assert torch.equal(w1, rtn_quantize(w0, 4, group_size=16, mask=m))
