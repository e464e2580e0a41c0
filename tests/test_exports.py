"""Exports of protection masks to quantization toolchains (as data) and the FP16 sidecar."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from lrm_interp.compress.quant import quantize_model_
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect import exports
from lrm_interp.protect.encoding import mask_tensors, save_masks
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.protect.policies import final_mlp, global_top
from lrm_interp.protect.saliency import magnitude
from lrm_interp.testing import tiny_model

FINAL = ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]


@pytest.fixture
def llama_masks():
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    return model, sites, final_mlp(sites)


def test_llmcompressor_exact_strings(llama_masks):
    _, _, masks = llama_masks
    assert exports.llmcompressor_ignore(masks) == ["lm_head"] + FINAL
    assert exports.llmcompressor_ignore(masks, keep_lm_head=False) == FINAL
    expected = (
        "quant_stage:\n"
        "  quant_modifiers:\n"
        "    GPTQModifier:\n"
        '      targets: ["Linear"]\n'
        "      scheme: W4A16\n"
        "      ignore:\n"
        '        - "lm_head"\n'
        '        - "model.layers.1.mlp.gate_proj"\n'
        '        - "model.layers.1.mlp.up_proj"\n'
        '        - "model.layers.1.mlp.down_proj"\n'
    )
    text = exports.llmcompressor_recipe(masks)
    assert text == expected
    d = exports.llmcompressor_recipe_dict(masks)
    assert (
        yaml.safe_load(text)
        == d
        == {
            "quant_stage": {
                "quant_modifiers": {
                    "GPTQModifier": {"targets": ["Linear"], "scheme": "W4A16", "ignore": ["lm_head"] + FINAL}
                }
            }
        }
    )
    w3 = exports.llmcompressor_recipe(masks, scheme="W3A16", modifier="QuantizationModifier")
    assert "    QuantizationModifier:\n" in w3 and "      scheme: W3A16\n" in w3


def test_gptqmodel_dynamic_and_transformers(llama_masks):
    model, sites, masks = llama_masks
    dyn = exports.gptqmodel_dynamic(masks)
    assert dyn == {
        r"-:^model\.layers\.1\.mlp\.gate_proj$": {},
        r"-:^model\.layers\.1\.mlp\.up_proj$": {},
        r"-:^model\.layers\.1\.mlp\.down_proj$": {},
    }
    names = [n for n, _ in model.named_modules()]
    for key in dyn:  # each regex matches exactly its own module (GPTQModel strips the "-:" prefix)
        rx = re.compile(key[2:])
        assert sum(bool(rx.match(n)) for n in names) == 1
    assert exports.modules_to_not_convert(masks) == ["lm_head"] + FINAL
    # transformers matches entries as substrings of module paths: each hits only its own linear
    for entry in FINAL:
        assert [n for n in names if entry in n] == [entry]


def test_partial_masks_are_reported_not_silently_dropped(llama_masks):
    model, sites, masks = llama_masks
    mixed = dict(masks)
    mixed.update(global_top(magnitude(model, sites[:2]), 0.02))
    with pytest.warns(UserWarning, match="2 sites with partial masks"):
        assert exports.llmcompressor_ignore(mixed) == ["lm_head"] + FINAL
    assert exports.partial_modules(mixed) == [s.name for s in sites[:2]]
    assert exports.full_modules({}, warn=True) == []


def test_sidecar_restores_protected_values(llama_masks, tmp_path):
    model, sites, masks = llama_masks
    el = global_top(magnitude(model, sites), 0.02)
    el.update(masks)
    p = exports.save_sidecar(model, el, tmp_path / "side.safetensors")
    q = copy.deepcopy(model)
    quantize_model_(q, bits=2, group_size=32, progress=False)
    n = exports.apply_sidecar_(q, p)
    assert n == sum(m.n_protected for m in el.values())
    for k, m in el.items():
        d = m.dense()
        w0, w1 = get_module(model, k).weight, get_module(q, k).weight
        assert torch.equal(w1[d], w0[d].half().float())
        if (~d).any():
            assert not torch.equal(w1[~d], w0[~d])
    exact = exports.save_sidecar(model, el, tmp_path / "exact.safetensors", value_dtype=torch.float32)
    q2 = copy.deepcopy(model)
    quantize_model_(q2, bits=2, group_size=32, progress=False)
    exports.apply_sidecar_(q2, exact)
    for k, m in el.items():
        assert torch.equal(get_module(q2, k).weight[m.dense()], get_module(model, k).weight[m.dense()])
    with pytest.raises(ValueError, match="not an lrm_interp sidecar"):
        exports.apply_sidecar_(q2, save_masks(el, tmp_path / "masks.safetensors"))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        exports.apply_sidecar_(q2, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("encoding", ["auto", "csr16", "bitmask", "gaps"])
def test_sidecar_v2_is_the_mask_encoding_plus_values(tmp_path, encoding):
    """The sidecar stores the masks' own index tensors (same `::` keys as the masks file) plus
    the values in sorted flat-id order; it round-trips the exact protected values (float32),
    also for row/column masks and Conv1D ([in, out]) weights."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    for arch in ("llama", "gpt2"):
        model = tiny_model(arch, seed=1)
        sites = find_sites(model)
        masks = global_top(magnitude(model, sites[:3]), 0.05)
        s3, s4 = sites[3], sites[4]
        masks[s3.name] = ProtectionMask.from_rows(s3.name, (s3.out_features, s3.in_features), [0, 7])
        masks[s4.name] = ProtectionMask.from_cols(s4.name, (s4.out_features, s4.in_features), [2])
        masks[sites[5].name] = ProtectionMask.full(sites[5])
        p = exports.save_sidecar(
            model, masks, tmp_path / f"{arch}.safetensors", value_dtype=torch.float32, encoding=encoding
        )
        with safe_open(str(p), "pt") as f:
            assert f.metadata()["format"] == "lrm_interp.sidecar/2"
        stored = load_file(p)
        index, _ = mask_tensors(masks, encoding=encoding)
        assert set(stored) == set(index) | {f"{k}::values" for k in masks}
        assert all(torch.equal(stored[k], t) for k, t in index.items())
        for k, m in masks.items():  # values in sorted flat-id order of the [out, in] layout
            W = weight_matrix(get_module(model, k))
            assert torch.equal(stored[f"{k}::values"], W.flatten()[m.flat_indices()])
        q = copy.deepcopy(model)
        quantize_model_(q, bits=2, group_size=16, progress=False)
        assert exports.apply_sidecar_(q, p) == sum(m.n_protected for m in masks.values())
        for k, m in masks.items():
            w0, w1 = weight_matrix(get_module(model, k)), weight_matrix(get_module(q, k))
            d = m.dense()
            assert torch.equal(w1[d], w0[d])
            if (~d).any():
                assert not torch.equal(w1[~d], w0[~d])


def test_module_masks_from_rows_are_not_modules():
    m = {"a": ProtectionMask.from_rows("a", (4, 4), [0, 1, 2, 3]), "b": ProtectionMask.from_rows("b", (4, 4), [0])}
    assert exports.full_modules(m, warn=False) == ["a"]  # all rows = the whole module
