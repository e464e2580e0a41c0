"""Exports of protection masks to quantization toolchains (as data) and the library's own files."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import yaml

from lrm_interp.protect import exports
from lrm_interp.protect.masks import ProtectionMask, final_mlp, global_top
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.protect.saliency import magnitude
from lrm_interp.model.sites import find_sites, get_module
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
        '        - "model.layers.1.mlp.down_proj"\n')
    text = exports.llmcompressor_recipe(masks)
    assert text == expected
    d = exports.llmcompressor_recipe_dict(masks)
    assert yaml.safe_load(text) == d == {"quant_stage": {"quant_modifiers": {"GPTQModifier": {
        "targets": ["Linear"], "scheme": "W4A16", "ignore": ["lm_head"] + FINAL}}}}
    w3 = exports.llmcompressor_recipe(masks, scheme="W3A16", modifier="QuantizationModifier")
    assert "    QuantizationModifier:\n" in w3 and "      scheme: W3A16\n" in w3


def test_gptqmodel_dynamic_and_transformers(llama_masks):
    model, sites, masks = llama_masks
    dyn = exports.gptqmodel_dynamic(masks)
    assert dyn == {r"-:^model\.layers\.1\.mlp\.gate_proj$": {}, r"-:^model\.layers\.1\.mlp\.up_proj$": {},
                   r"-:^model\.layers\.1\.mlp\.down_proj$": {}}
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
        from lrm_interp.protect.masks import save_masks

        exports.apply_sidecar_(q2, save_masks(el, tmp_path / "masks.safetensors"))


def test_quantized_copy_roundtrip(llama_masks, tmp_path):
    model, sites, _ = llama_masks
    masks = global_top(magnitude(model, sites), 0.02)
    q = copy.deepcopy(model)
    rep = quantize_model_(q, bits=3, group_size=32, masks=masks, progress=False, keep_tensors=True)
    p = exports.save_quantized(rep.tensors, tmp_path / "q.safetensors", metadata={"bits": 3})
    back, meta = exports.load_quantized(p)
    assert meta == {"bits": 3} and list(back) == [s.name for s in sites]
    for s in sites:
        assert torch.equal(back[s.name].dequantize(), get_module(q, s.name).weight)
        assert back[s.name].codes.dtype == torch.uint8 and back[s.name].bits == 3


def test_module_masks_from_rows_are_not_modules():
    m = {"a": ProtectionMask.from_rows("a", (4, 4), [0, 1, 2, 3]), "b": ProtectionMask.from_rows("b", (4, 4), [0])}
    assert exports.full_modules(m, warn=False) == ["a"]  # all rows = the whole module
