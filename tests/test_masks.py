"""Protection masks: policies with exact budgets, index encodings, bits per weight, save/load."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrm_interp.protect.masks import (ENCODINGS, ProtectionMask, bits_per_weight, build_masks, decode_index, encode_index,
                              final_mlp, global_top, index_bits, load_masks, modules_by_score, per_module_top,
                              save_masks)
from lrm_interp.model.sites import Site, find_sites, parse_site_name
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
        out[s.name] = sel[off:off + t.numel()].view(t.shape)
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
    masks = global_top([(s, torch.ones(8, 8)) for s in sites], 0.5)  # k = 96 of 192
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
    for s, t in items:
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
    sal = [(s, torch.rand(s.out_features, s.in_features, generator=torch.Generator().manual_seed(i)))
           for i, s in enumerate(sites)]
    gm = build_masks(sites, "global_top", 0.1, saliency=sal, always=r"layers\.0\.self_attn\.k_proj",
                     never=r"layers\.1\.")
    assert sum(m.n_protected for m in gm.values()) == round(0.1 * n)
    assert gm["model.layers.0.self_attn.k_proj"].is_full
    assert not any(s.name in gm for s in sites if s.layer == 1)


def test_final_mlp_other_families():
    assert sorted(final_mlp(find_sites(tiny_model("gpt2", seed=0)))) == ["transformer.h.1.mlp.c_fc",
                                                                         "transformer.h.1.mlp.c_proj"]
    assert sorted(final_mlp(find_sites(tiny_model("phi3", seed=0)))) == ["model.layers.1.mlp.down_proj",
                                                                         "model.layers.1.mlp.gate_up_proj"]


def _random_mask(out, inn, p, seed):
    return torch.rand(out, inn, generator=torch.Generator().manual_seed(seed)) < p


def test_encodings_roundtrip_and_cost_equals_bytes():
    pms = [ProtectionMask("a", _random_mask(37, 50, 0.03, 0)),
           ProtectionMask.from_rows("b", (12, 9), [0, 5, 11]),
           ProtectionMask.from_cols("c", (12, 9), [2]),
           ProtectionMask("d", _random_mask(5, 40000, 0.01, 1))]  # columns ≥ 32768 in csr16
    for pm in pms:
        for enc in ENCODINGS:
            try:
                bits, e = index_bits(pm, enc)
            except ValueError:
                assert enc in ("module", "lines32")
                continue
            name, parts = encode_index(pm, enc)
            assert 8 * sum(t.numel() * t.element_size() for t in parts.values()) == bits, (pm, enc)
            back = decode_index(pm.site, pm.shape, pm.granularity, name, parts)
            assert back == pm and back.granularity == pm.granularity
    full = ProtectionMask.full("e", (4, 4))
    assert index_bits(full) == (0, "module") and encode_index(full) == ("module", {})


def test_index_costs_by_hand_and_at_two_percent():
    m = torch.zeros(128, 64, dtype=torch.bool)
    m[0, :10] = True
    assert index_bits(m, "csr16") == (16 * 10 + 32 * 129, "csr16")
    assert index_bits(m, "coo32") == (64 * 10, "coo32")
    assert index_bits(m, "flat32") == (32 * 10, "flat32")
    assert index_bits(m, "bitmask") == (128 * 64, "bitmask")
    assert index_bits(m, "gaps") == (8 * 10, "gaps")  # ids 0..9: ten one-byte varints
    assert index_bits(m) == (80, "gaps")
    # 2% of a 1024×4096 module: bits per weight of the module per encoding (method notes §6)
    big = ProtectionMask("x", _random_mask(1024, 4096, 0.02, 2))
    f = big.n_protected / big.n_weights
    per = {e: index_bits(big, e)[0] / big.n_weights for e in ("bitmask", "coo32", "flat32", "csr16", "gaps")}
    assert per["bitmask"] == 1.0
    assert per["coo32"] == pytest.approx(64 * f) and 1.25 < per["coo32"] < 1.31
    assert per["csr16"] == pytest.approx(16 * f + 32 * 1025 / big.n_weights) and 0.32 < per["csr16"] < 0.34
    assert 0.16 <= per["gaps"] <= 0.18  # mean gap 50 < 128: almost all gaps take one byte
    assert index_bits(big)[1] == "gaps"


def test_bits_per_weight_by_hand():
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    n = sum(s.n_weights for s in sites)
    assert n == 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192) == 73728
    assert bits_per_weight({}, sites, bits=3, group_size=32)["bpw"] == 3 + 32 / 32
    assert bits_per_weight({}, sites, bits=3, group_size=32, symmetric=True)["bpw"] == 3 + 16 / 32
    assert bits_per_weight({}, sites, bits=4, group_size=None)["bpw"] == pytest.approx(
        4 + 32 * sum(s.out_features for s in sites) / n)
    m = torch.zeros(128, 64, dtype=torch.bool)
    m[0, :10] = True
    one = {"model.layers.0.mlp.up_proj": ProtectionMask("model.layers.0.mlp.up_proj", m)}
    b = bits_per_weight(one, sites, bits=3, group_size=32, encoding="csr16")
    assert b["bpw"] == pytest.approx(4 + (16 * 10 + 16 * 10 + 32 * 129) / n)
    assert b["encodings"] == {"model.layers.0.mlp.up_proj": "csr16"}
    assert bits_per_weight(one, sites, bits=3, group_size=32)["bpw"] == pytest.approx(4 + (160 + 80) / n)
    # a whole module kept in FP16 costs exactly 16 bits per weight: no codes, scales or index
    fm = final_mlp(sites)
    f = 3 * 8192 / n
    b = bits_per_weight(fm, sites, bits=3, group_size=32)
    assert b["bpw"] == pytest.approx((1 - f) * (3 + 1) + 16 * f)
    assert b["full_fraction"] == pytest.approx(f) and b["index_bits"] == 0


def test_paper_final_mlp_budget_for_llama8b_shapes():
    """Llama-3.1-8B linears (32 layers): final MLP = 2.52 % of linear weights (2.19 % of all
    8.03 B parameters incl. embeddings, the paper's figure); 3-bit g128 with it in FP16."""
    shapes = {"self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (1024, 4096), "self_attn.v_proj": (1024, 4096),
              "self_attn.o_proj": (4096, 4096), "mlp.gate_proj": (14336, 4096), "mlp.up_proj": (14336, 4096),
              "mlp.down_proj": (4096, 14336)}
    sites = [_site(f"model.layers.{i}.{k}", *v) for i in range(32) for k, v in shapes.items()]
    n = sum(s.n_weights for s in sites)
    fm = final_mlp(sites)
    f = 3 * 14336 * 4096 / n
    assert f == pytest.approx(0.02524, abs=1e-5)
    assert 3 * 14336 * 4096 / (n + 2 * 128256 * 4096 + 65 * 4096) == pytest.approx(0.0219, abs=1e-4)
    b = bits_per_weight(fm, sites, bits=3, group_size=128)
    assert b["bpw"] == pytest.approx((1 - f) * 3.25 + 16 * f) and 3.57 < b["bpw"] < 3.58


def test_mask_constructor_checks():
    with pytest.raises(ValueError, match="union of whole rows"):
        ProtectionMask("a", torch.eye(3, dtype=torch.bool), "rows")
    with pytest.raises(ValueError, match="out of range"):
        ProtectionMask.from_indices("a", (2, 2), [4])
    r = ProtectionMask("a", torch.tensor([[True, True], [False, False]]), "rows")
    assert r.granularity == "rows" and r.index.tolist() == [0] and r.n_protected == 2


def test_save_load_roundtrip(tmp_path):
    masks = {"model.layers.0.self_attn.q_proj": ProtectionMask("model.layers.0.self_attn.q_proj",
                                                               _random_mask(64, 64, 0.02, 3)),
             "model.layers.0.mlp.up_proj": ProtectionMask.from_rows("model.layers.0.mlp.up_proj", (128, 64), [3, 9]),
             "model.layers.0.mlp.down_proj": ProtectionMask.from_cols("model.layers.0.mlp.down_proj", (64, 128), [0]),
             "model.layers.1.mlp.up_proj": ProtectionMask.full("model.layers.1.mlp.up_proj", (128, 64)),
             "model.layers.1.mlp.down_proj": ProtectionMask.from_indices("model.layers.1.mlp.down_proj", (64, 128), [])}
    for enc in ("auto", "bitmask", "csr16", "coo32", "gaps"):
        p = save_masks(masks, tmp_path / f"m_{enc}.safetensors", metadata={"budget": 0.02, "enc": enc},
                       encoding=enc)
        back, meta = load_masks(p)
        assert meta == {"budget": 0.02, "enc": enc}
        assert list(back) == list(masks)
        for k, m in masks.items():
            assert back[k] == m and back[k].granularity == m.granularity
    raw = (tmp_path / "m_auto.safetensors").read_bytes()
    assert b"pickle" not in raw and raw[8:9] == b"{"  # safetensors: 8-byte length + JSON header
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_masks(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path / "missing.safetensors")
    assert math.isclose(sum(m.n_protected for m in back.values()),
                        sum(m.n_protected for m in masks.values()))
