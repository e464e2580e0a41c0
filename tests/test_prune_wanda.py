"""Wanda against a row-by-row reference; its norms from the shared Hessians; the driver."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.compress.calibration import collect_hessians
from lrm_interp.compress.prune import prune_model_
from lrm_interp.compress.prune.wanda import input_norms_from_hessian, wanda_prune, wanda_prune_reference
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.testing import tiny_model


def _wx(seed=0, out=10, inn=24, n=50):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inn, generator=g), torch.randn(n, inn, generator=g) * torch.linspace(0.1, 3, inn)


@pytest.mark.parametrize(
    "kw", [dict(sparsity=0.5), dict(sparsity=0.3), dict(prunen=2, prunem=4), dict(prunen=1, prunem=3)]
)
def test_matches_reference(kw):
    W, X = _wx()
    norms = X.norm(dim=0)
    assert torch.equal(wanda_prune(W, norms, **kw), wanda_prune_reference(W, norms, **kw))


def test_hessian_diagonal_gives_wanda_ranking():
    W, X = _wx(1)
    H = 2 * X.T @ X / X.shape[0]
    a = wanda_prune(W, X.norm(dim=0), 0.5)
    b = wanda_prune(W, input_norms_from_hessian(H), 0.5)
    assert torch.equal(a, b)
    assert int((a == 0).sum(1).unique().numel()) == 1 and int((a[0] == 0).sum()) == 12  # per-row budget
    # activation-aware: not the magnitude mask
    mag = W.abs() <= W.abs().kthvalue(12, dim=1, keepdim=True).values
    assert not torch.equal(a == 0, mag)


def test_protection():
    W, X = _wx(2)
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[:, :4] = True
    out = wanda_prune(W, X.norm(dim=0), 0.5, mask=mask)
    assert torch.equal(out[mask], W[mask]) and int((out[0] == 0).sum()) == 10  # floor(0.5 * 20 free)
    assert torch.equal(out, wanda_prune_reference(W, X.norm(dim=0), 0.5, mask=mask))


def test_driver_first_site_and_nm():
    ids = torch.randint(0, 256, (4, 32))
    model = tiny_model("llama", seed=0)
    rep = prune_model_(model, "wanda", 0.3, calib=ids, progress=False)
    assert rep.method == "wanda" and rep.achieved == pytest.approx(0.3, abs=0.02)
    fresh = tiny_model("llama", seed=0)
    s0 = find_sites(fresh)[0]
    H, _ = collect_hessians(fresh, [s0], ids, progress=False)
    w0 = get_module(fresh, s0.name).weight
    assert torch.equal(get_module(model, s0.name).weight, wanda_prune(w0, input_norms_from_hessian(H[s0.name]), 0.3))
    rep = prune_model_(tiny_model("llama", seed=0), "wanda", pattern="2:4", calib=ids, progress=False)
    assert rep.achieved == pytest.approx(0.5)
