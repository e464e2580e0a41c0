"""SparseGPT against its slow reference, its sparsity patterns, protection, and its point:
lower reconstruction error than magnitude pruning at the same sparsity; the model-level driver."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.prune import prune_model_
from lrm_interp.compress.prune.sparsegpt import sparsegpt_prune, sparsegpt_prune_reference
from lrm_interp.model.provenance import model_record
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.testing import tiny_model


def _problem(out=12, inn=32, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, inn, generator=g) @ torch.randn(inn, inn, generator=g) * 0.3  # correlated inputs
    X[:, 3] = 0  # a dead input
    W = torch.randn(out, inn, generator=g)
    return W, X, 2 * X.T @ X / n


@pytest.mark.parametrize(
    "kw", [dict(sparsity=0.5, blocksize=8), dict(sparsity=0.3, blocksize=32), dict(prunen=2, prunem=4, blocksize=8)]
)
def test_matches_slow_reference(kw):
    W, X, H = _problem()
    fast = sparsegpt_prune(W, H, **kw)
    ref = sparsegpt_prune_reference(W, H, **kw)
    assert torch.equal(fast == 0, ref == 0)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    assert bool((fast[:, 3] == 0).all())  # dead inputs are zeroed


def test_result_does_not_depend_on_blocksize_for_nm():
    W, X, H = _problem()
    a = sparsegpt_prune(W, H, prunen=2, prunem=4, blocksize=4)
    b = sparsegpt_prune(W, H, prunen=2, prunem=4, blocksize=16)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_patterns_counts_and_error_below_magnitude():
    W, X, H = _problem(out=16, inn=64, n=400, seed=1)
    sp = sparsegpt_prune(W, H, 0.5, blocksize=16)
    assert int((sp == 0).sum()) == W.numel() // 2  # round(0.5 * free) per block, blocks even
    nm = sparsegpt_prune(W, H, prunen=2, prunem=4)
    assert bool(((nm.view(16, 16, 4) == 0).sum(-1) == 2).all())  # exactly 2 of every 4
    mag = W.clone()
    mag.view(-1)[W.abs().flatten().argsort()[: W.numel() // 2]] = 0
    err = lambda V: float(((W - V) @ X.T).pow(2).sum())  # noqa: E731 - layer output error
    assert err(sp) < 0.7 * err(mag)


def test_protected_weights_kept_and_outside_budget():
    W, X, H = _problem()
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[0] = True
    mask[:, 5] = True
    out = sparsegpt_prune(W, H, 0.5, blocksize=8, mask=mask)
    assert torch.equal(out[mask], W[mask])
    free = int((~mask).sum()) - int((~mask[:, 3]).sum())  # dead column 3 is zeroed anyway
    assert int((out[~mask] == 0).sum()) >= free // 2
    ref = sparsegpt_prune_reference(W, H, 0.5, blocksize=8, mask=mask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_driver_prunes_every_site_sequentially_and_records_it():
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, 256, (4, 32))
    rep = prune_model_(model, "sparsegpt", 0.5, calib=ids, progress=False, blocksize=16)
    assert rep.n_sites == len(find_sites(model)) and rep.achieved == pytest.approx(0.5, abs=0.01)
    for s in find_sites(model):
        w = get_module(model, s.name).weight
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02), s.name
    step = model_record(model).last("pruning")
    assert step["method"] == "sparsegpt" and step["pattern"] == "unstructured"
    # the driver's first site equals the kernel on Hessians of the unpruned model (layer 0 sees raw inputs)
    fresh = tiny_model("llama", seed=0)
    s0 = find_sites(fresh)[0]
    H, _ = collect_hessians(fresh, [s0], ids, progress=False)
    expect = sparsegpt_prune(get_module(fresh, s0.name).weight, H[s0.name], 0.5, blocksize=16)
    torch.testing.assert_close(get_module(model, s0.name).weight, expect)
    rep = prune_model_(tiny_model("llama", seed=0), "sparsegpt", pattern="2:4", calib=ids, progress=False)
    assert rep.pattern == "2:4" and rep.achieved == pytest.approx(0.5, abs=1e-6)


def test_driver_rejects_bad_options():
    model = tiny_model("llama", seed=0)
    with pytest.raises(ValueError, match="needs calibration data"):
        prune_model_(model, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        prune_model_(model, "obs", 0.5)
    with pytest.raises(ValueError, match="N:M"):
        prune_model_(model, "wanda", pattern="4:2", calib=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unstructured only"):
        prune_model_(model, "magnitude", pattern="2:4")


def test_non_contiguous_weight_gpt2_layout():
    """A Conv1D weight is read as a transposed view; the unstructured mask used to fail on it."""
    W, X, H = _problem()
    Wt = W.T.contiguous().T  # same values, column-major strides
    assert not Wt.is_contiguous()
    torch.testing.assert_close(sparsegpt_prune(Wt, H, 0.5, blocksize=8), sparsegpt_prune(W, H, 0.5, blocksize=8))
    rep = prune_model_(
        tiny_model("gpt2", seed=0), "sparsegpt", 0.5, calib=torch.randint(0, 256, (2, 16)), progress=False
    )
    assert rep.achieved == pytest.approx(0.5, abs=0.01)
