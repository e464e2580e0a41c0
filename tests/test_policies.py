"""Protection policies: exact budgets against brute force, ties, rows/cols, module policies, regexes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrm_interp.attribution.results import Attribution
from lrm_interp.model.sites import Site, find_sites, parse_site_name
from lrm_interp.protect.encoding import bits_per_weight
from lrm_interp.protect.policies import POLICIES, build_masks, final_mlp, global_top, modules_by_score, per_module_top
from lrm_interp.testing import tiny_model


def _site(name, out, inn):
    layer, block, kind = parse_site_name(name)
    return Site(name, layer, block, kind, inn, out, inn * out, inn * out, "Linear")


def _stream(sites, seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    for s in sites:
        v = torch.rand(s.out_features, s.in_features, generator=g)
        yield s, (torch.floor(v * levels) if levels else v)  # few levels: many ties


def brute_top(items, k):
    """Reference: sort all weights by (−saliency, global flat id), take the first k."""
    vals = torch.cat([t.flatten().double() for _, t in items])
    ids = np.lexsort((np.arange(vals.numel()), -vals.numpy()))[:k]
    sel = torch.zeros(vals.numel(), dtype=torch.bool)
    sel[torch.from_numpy(ids)] = True
    out, off = {}, 0
    for s, t in items:
        out[s.name] = sel[off : off + t.numel()].view(t.shape)
        off += t.numel()
    return out


@pytest.mark.parametrize("levels", [None, 3])
def test_global_top_equals_brute_force_with_exact_budget(levels):
    sites = [_site(f"model.layers.{i}.mlp.up_proj", 16 + i, 24) for i in range(6)]
    items = list(_stream(sites, levels=levels))
    n = sum(s.n_weights for s in sites)  # 2664
    for budget in (0.02, 0.3, 0.0, 1.0):
        k = round(budget * n)
        masks = global_top(iter(items), budget, sites=sites)  # small k: the candidate pool is pruned often
        assert sum(m.n_protected for m in masks.values()) == k
        ref = brute_top(items, k)
        for s in sites:
            assert torch.equal(masks[s.name].dense(), ref[s.name]), (budget, s.name)
    # N from a materialised list when the stream does not know its sites
    assert sum(m.n_protected for m in global_top(items, 0.05).values()) == round(0.05 * n)


def test_budget_rounding_is_round_half_to_even():
    sites = [_site("model.layers.0.mlp.up_proj", 10, 10)]  # N = 100
    items = list(_stream(sites))
    assert sum(m.n_protected for m in global_top(items, 0.025).values()) == 2  # round(2.5) = 2
    assert sum(m.n_protected for m in global_top(items, 0.035).values()) == 4  # round(3.5) = 4
    assert sum(m.n_protected for m in global_top(items, 0.026).values()) == 3


def test_ties_go_to_earlier_sites_and_indices():
    sites = [_site(f"model.layers.{i}.self_attn.q_proj", 8, 8) for i in range(3)]
    # k = 96 of 192; the last site's zeros keep the saliency from being constant (refused, H34)
    masks = global_top([(s, torch.ones(8, 8) * (s is not sites[2])) for s in sites], 0.5)
    assert masks[sites[0].name].n_protected == 64 and masks[sites[1].name].n_protected == 32
    assert masks[sites[1].name].dense().flatten()[:32].all()
    assert masks[sites[2].name].n_protected == 0


def test_per_module_rows_cols_and_bad_saliency():
    sites = [_site("model.layers.0.mlp.up_proj", 20, 30), _site("model.layers.0.mlp.down_proj", 30, 20)]
    items = list(_stream(sites, seed=1))
    pm = per_module_top(items, 0.05)
    assert [m.n_protected for m in pm.values()] == [30, 30]
    rows = global_top(items, 0.1, granularity="rows")  # 120 weights: greedy rows of 30 / 20
    tot = sum(m.n_protected for m in rows.values())
    assert tot <= 120 and tot >= 120 - 30
    for s, _t in items:
        m = rows[s.name]
        assert m.granularity == "rows"
        d = m.dense()
        assert torch.equal(d.all(1), d.any(1))  # whole rows
    cols = per_module_top(items, 0.1, granularity="cols")
    assert [m.n_protected for m in cols.values()] == [60, 60]  # 3 columns of 20, 2 of 30
    best_col = items[0][1].sum(0).argsort(descending=True)[:3].sort().values
    assert torch.equal(cols[sites[0].name].index, best_col)
    with pytest.raises(ValueError, match="non-finite"):
        global_top([(sites[0], torch.full((20, 30), float("nan")))], 0.1)
    with pytest.raises(ValueError, match="shape"):
        global_top([(sites[0], torch.ones(30, 20))], 0.1)


def test_module_policies_and_regexes():
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    n = sum(s.n_weights for s in sites)
    fm = build_masks(sites, "final_mlp")
    assert list(fm) == [f"model.layers.1.mlp.{k}_proj" for k in ("gate", "up", "down")]
    assert all(m.granularity == "full" and m.index is None for m in fm.values())
    scores = {s.name: float(i) for i, s in enumerate(sites)}
    mb = modules_by_score(sites, scores, 0.25, never=r"down_proj")
    assert sum(s.n_weights for s in sites if s.name in mb) <= 0.25 * n
    # budget 18432: up (8192), gate (8192), o (4096) does not fit, v (2048) does, k no longer
    assert list(mb) == ["model.layers.1.self_attn.v_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    forced = modules_by_score(sites, scores, 0.0, always=r"layers\.0\.self_attn\.q_proj")
    assert list(forced) == ["model.layers.0.self_attn.q_proj"]
    # always-modules count against a global budget; never-modules receive nothing
    sal = [
        (s, torch.rand(s.out_features, s.in_features, generator=torch.Generator().manual_seed(i)))
        for i, s in enumerate(sites)
    ]
    gm = build_masks(
        sites, "global_top", 0.1, saliency=sal, always=r"layers\.0\.self_attn\.k_proj", never=r"layers\.1\."
    )
    assert sum(m.n_protected for m in gm.values()) == round(0.1 * n)
    assert gm["model.layers.0.self_attn.k_proj"].is_full
    assert not any(s.name in gm for s in sites if s.layer == 1)


def test_final_mlp_other_families():
    assert sorted(final_mlp(find_sites(tiny_model("gpt2", seed=0)))) == [
        "transformer.h.1.mlp.c_fc",
        "transformer.h.1.mlp.c_proj",
    ]
    assert sorted(final_mlp(find_sites(tiny_model("phi3", seed=0)))) == [
        "model.layers.1.mlp.down_proj",
        "model.layers.1.mlp.gate_up_proj",
    ]


def test_paper_final_mlp_budget_for_llama8b_shapes():
    """Llama-3.1-8B linears (32 layers): final MLP = 2.52 % of linear weights (2.19 % of all
    8.03 B parameters incl. embeddings, the paper's figure); 3-bit g128 with it in FP16."""
    shapes = {
        "self_attn.q_proj": (4096, 4096),
        "self_attn.k_proj": (1024, 4096),
        "self_attn.v_proj": (1024, 4096),
        "self_attn.o_proj": (4096, 4096),
        "mlp.gate_proj": (14336, 4096),
        "mlp.up_proj": (14336, 4096),
        "mlp.down_proj": (4096, 14336),
    }
    sites = [_site(f"model.layers.{i}.{k}", *v) for i in range(32) for k, v in shapes.items()]
    n = sum(s.n_weights for s in sites)
    fm = final_mlp(sites)
    f = 3 * 14336 * 4096 / n
    assert f == pytest.approx(0.02524, abs=1e-5)
    assert 3 * 14336 * 4096 / (n + 2 * 128256 * 4096 + 65 * 4096) == pytest.approx(0.0219, abs=1e-4)
    b = bits_per_weight(fm, sites, bits=3, group_size=128)
    assert b["bpw"] == pytest.approx((1 - f) * 3.25 + 16 * f) and 3.57 < b["bpw"] < 3.58


def test_module_scores_come_from_the_attribution_result():
    """modules_by_score on an Attribution ranks by its mean RI (or one behaviour's), the same
    numbers as Attribution.site_ri — the single module-importance implementation."""
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    scores = torch.rand(2, len(sites), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attr = Attribution(("backtracking", "deduction"), tuple(sites), scores, "attribution")
    for beh in (None, "deduction"):
        by_attr = modules_by_score(sites, attr, 0.3, behavior=beh)
        by_dict = modules_by_score(sites, attr.site_ri(beh), 0.3)
        assert list(by_attr) == list(by_dict) and by_attr
    ri = (scores / scores.sum(1, keepdim=True)).mean(0)  # mean RI by hand
    used, expect = 0, []
    for j in sorted(range(len(sites)), key=lambda j: -float(ri[j])):  # greedy reference
        if used + sites[j].n_weights <= 0.3 * 73728:
            expect.append(sites[j].name)
            used += sites[j].n_weights
    assert sorted(modules_by_score(sites, attr, 0.3)) == sorted(expect)
    assert list(modules_by_score(sites, attr, 0.3, behavior="deduction")) != list(
        modules_by_score(sites, attr, 0.3, behavior="backtracking")
    )  # the behaviour's own RI is used
    with pytest.raises(TypeError, match="mapping site -> score or an Attribution"):
        modules_by_score(sites, [1.0, 2.0], 0.3)


def test_build_masks_checks_policy_and_budget():
    sites = find_sites(tiny_model("llama", seed=0))
    assert POLICIES == ("global_top", "per_module_top", "modules_by_score", "final_mlp")
    with pytest.raises(ValueError, match=r"budget .* \[0, 1\], got 1.5"):
        build_masks(sites, "final_mlp", 1.5)
    with pytest.raises(ValueError, match="unknown policy 'top'"):
        build_masks(sites, "top", 0.02, saliency=[])
    with pytest.raises(ValueError, match="needs a saliency stream"):
        build_masks(sites, "per_module_top", 0.02)
    with pytest.raises(ValueError, match="needs scores"):
        build_masks(sites, "modules_by_score", 0.02)
