"""ProtectionMask, index encodings, bits per weight and the masks file."""

from __future__ import annotations

import math

import pytest
import torch

from lrm_interp.model.sites import find_sites
from lrm_interp.protect.encoding import (
    ENCODINGS,
    bits_per_weight,
    decode_index,
    encode_index,
    index_bits,
    load_masks,
    mask_tensors,
    masks_from_tensors,
    save_masks,
)
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.protect.policies import final_mlp
from lrm_interp.testing import tiny_model


def _random_mask(out, inn, p, seed):
    return torch.rand(out, inn, generator=torch.Generator().manual_seed(seed)) < p


def test_encodings_roundtrip_and_cost_equals_bytes():
    pms = [
        ProtectionMask("a", _random_mask(37, 50, 0.03, 0)),
        ProtectionMask.from_rows("b", (12, 9), [0, 5, 11]),
        ProtectionMask.from_cols("c", (12, 9), [2]),
        ProtectionMask("d", _random_mask(5, 40000, 0.01, 1)),
    ]  # columns ≥ 32768 in csr16
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
        4 + 32 * sum(s.out_features for s in sites) / n
    )
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


def test_mask_constructor_checks():
    with pytest.raises(ValueError, match="union of whole rows"):
        ProtectionMask("a", torch.eye(3, dtype=torch.bool), "rows")
    with pytest.raises(ValueError, match="out of range"):
        ProtectionMask.from_indices("a", (2, 2), [4])
    r = ProtectionMask("a", torch.tensor([[True, True], [False, False]]), "rows")
    assert r.granularity == "rows" and r.index.tolist() == [0] and r.n_protected == 2


def test_save_load_roundtrip(tmp_path):
    masks = {
        "model.layers.0.self_attn.q_proj": ProtectionMask(
            "model.layers.0.self_attn.q_proj", _random_mask(64, 64, 0.02, 3)
        ),
        "model.layers.0.mlp.up_proj": ProtectionMask.from_rows("model.layers.0.mlp.up_proj", (128, 64), [3, 9]),
        "model.layers.0.mlp.down_proj": ProtectionMask.from_cols("model.layers.0.mlp.down_proj", (64, 128), [0]),
        "model.layers.1.mlp.up_proj": ProtectionMask.full("model.layers.1.mlp.up_proj", (128, 64)),
        "model.layers.1.mlp.down_proj": ProtectionMask.from_indices("model.layers.1.mlp.down_proj", (64, 128), []),
    }
    for enc in ("auto", "bitmask", "csr16", "coo32", "gaps"):
        p = save_masks(masks, tmp_path / f"m_{enc}.safetensors", metadata={"budget": 0.02, "enc": enc}, encoding=enc)
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
    assert math.isclose(sum(m.n_protected for m in back.values()), sum(m.n_protected for m in masks.values()))


def test_mask_tensors_are_the_file_and_v1_files_still_load(tmp_path):
    from safetensors.torch import load_file, save_file

    masks = {
        "a.q": ProtectionMask("a.q", _random_mask(20, 30, 0.05, 7)),
        "a.r": ProtectionMask.from_rows("a.r", (60, 40), [1, 4]),
        "a.f": ProtectionMask.full("a.f", (3, 3)),
    }
    tensors, info = mask_tensors(masks, encoding="auto")
    assert all(k.count("::") == 1 and k.split("::")[0] in masks for k in tensors)
    assert info["a.r"] == {"shape": [60, 40], "granularity": "rows", "encoding": "lines32"}
    assert info["a.f"]["encoding"] == "module" and not any(k.startswith("a.f::") for k in tensors)
    extra = dict(tensors, **{"a.q::values": torch.zeros(3)})  # foreign parts under a prefix are ignored
    back = masks_from_tensors(extra, info)
    assert list(back) == list(masks) and all(back[k] == m for k, m in masks.items())
    p = save_masks(masks, tmp_path / "m.safetensors")
    on_disk = load_file(p)
    assert set(on_disk) == set(tensors) and all(torch.equal(on_disk[k], t) for k, t in tensors.items())
    with pytest.raises(ValueError, match="src: site a.q"):
        masks_from_tensors({}, {"a.q": info["a.q"]}, source="src")
    # format lrm_interp.masks/1: CSR under "<site>.rowptr" / "<site>.cols"
    import json

    m = masks["a.q"]
    _, parts = encode_index(m, "csr16")
    save_file(
        {"a.q.rowptr": parts["rowptr"], "a.q.cols": parts["cols"]},
        str(tmp_path / "v1.safetensors"),
        metadata={
            "format": "lrm_interp.masks/1",
            "extra": json.dumps({"b": 1}),
            "sites": json.dumps({"a.q": {"shape": [20, 30], "granularity": "elements"}}),
        },
    )
    v1, extra = load_masks(tmp_path / "v1.safetensors")
    assert v1["a.q"] == m and extra == {"b": 1}
