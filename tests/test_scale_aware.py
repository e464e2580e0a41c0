"""Scale-aware saliency against a brute-force reference that re-quantizes the whole group per step."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.compress.quant import rtn_quantize
from lrm_interp.protect.scale_aware import decreasing_isotonic, scale_aware_saliency


def _pav_decreasing(b: list[float]) -> list[float]:
    """Pool-adjacent-violators for a non-increasing least-squares fit (the textbook loop)."""
    blocks = []  # [sum, count]
    for v in b:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(c)]


def test_isotonic_equals_pool_adjacent_violators():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(200, 5, generator=g, dtype=torch.float64)
    b[:20] = b[:20].sort(-1).values  # increasing rows: everything pooled
    got = decreasing_isotonic(b)
    for r in range(b.shape[0]):
        assert got[r].tolist() == pytest.approx(_pav_decreasing(b[r].tolist()), abs=1e-12)
    assert (got[:, 1:] <= got[:, :-1] + 1e-12).all()


def _reference(W, G, bits, g, symmetric, chain):
    """Group by group: plain |G|·|W − RTN(W)|, then a greedy chain of grid-fixing weights with every
    cost from rtn_quantize of the group with a mask, isotonic-fitted gains written on the chain."""
    out, inn = W.shape
    base = G.abs() * (W - rtn_quantize(W, bits, group_size=g, symmetric=symmetric)).abs()
    sal = base.clone()
    for r in range(out):
        for c0 in range(0, inn, g):
            w, a = W[r : r + 1, c0 : c0 + g], G[r : r + 1, c0 : c0 + g].abs()

            def cost(prot, w=w, a=a):
                q = rtn_quantize(w, bits, group_size=None, symmetric=symmetric, mask=prot)
                return float((a * (w - q).abs() * ~prot).sum())

            prot = torch.zeros_like(w, dtype=torch.bool)
            c, gains, picks = cost(prot), [], []
            for _ in range(min(chain, w.shape[1])):
                free = [j for j in range(w.shape[1]) if not prot[0, j]]
                if symmetric:
                    cands = [max(free, key=lambda j: (abs(float(w[0, j])), -j))]
                else:
                    cands = [
                        max(free, key=lambda j: (float(w[0, j]), -j)),
                        min(free, key=lambda j: (float(w[0, j]), j)),
                    ]
                best = None
                for j in cands:
                    t = prot.clone()
                    t[0, j] = True
                    cj = cost(t)
                    if best is None or cj < best[0]:
                        best = (cj, j)
                gains.append(c - best[0])
                picks.append(best[1])
                prot[0, best[1]] = True
                c = best[0]
            for j, v in zip(picks, _pav_decreasing(gains)):
                sal[r, c0 + j] = v
    return sal


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,g,chain", [(3, 8, 3), (2, 7, 2), (4, 16, 5)])
def test_scale_aware_equals_brute_force(symmetric, bits, g, chain):
    gen = torch.Generator().manual_seed(bits * 10 + g)
    W = torch.randn(4, 20, generator=gen) * torch.rand(4, 20, generator=gen).pow(3) * 3  # heavy-tailed, ragged groups
    G = torch.randn(4, 20, generator=gen)
    got = scale_aware_saliency(W, G, bits, group_size=g, symmetric=symmetric, chain=chain)
    torch.testing.assert_close(got, _reference(W, G, bits, g, symmetric, chain), rtol=1e-5, atol=1e-6)


def test_outlier_gain_counts_the_whole_groups_finer_grid():
    W = torch.full((1, 16), 0.1)
    W[0, ::2] = -0.07
    W[0, 5] = 4.0  # the outlier fixes the symmetric scale; the other 15 then round to 0
    G = torch.ones(1, 16)
    plain = (W - rtn_quantize(W, 3, group_size=16, symmetric=True)).abs()
    sal = scale_aware_saliency(W, G, 3, group_size=16, symmetric=True, chain=1)
    refit = rtn_quantize(W, 3, group_size=16, symmetric=True, mask=torch.arange(16)[None] == 5)
    gain = float(plain.sum() - (W - refit).abs().sum())
    assert float(sal[0, 5]) == pytest.approx(gain, rel=1e-5)
    assert gain > 2 * float(plain[0, 5])  # most of the gain is the other 15 weights' finer grid
    assert int(sal.argmax()) == 5
    assert torch.equal(scale_aware_saliency(W, G, 3, group_size=16, symmetric=True, chain=0), plain * G)


def test_per_channel_and_errors():
    W = torch.randn(3, 10, generator=torch.Generator().manual_seed(1))
    G = torch.rand(3, 10)
    torch.testing.assert_close(
        scale_aware_saliency(W, G, 3, group_size=None), _reference(W, G, 3, 10, False, 4), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="gradient shape"):
        scale_aware_saliency(W, G[:2], 3)
    with pytest.raises(ValueError, match="bits must be in"):
        scale_aware_saliency(W, G, 9)
