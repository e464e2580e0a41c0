"""Site discovery: exactly the linear modules of each fixture model, with the right shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lrm_interp.model.sites import find_sites, get_module, parse_site_name, resolve_sites
from lrm_interp.testing import TINY_ARCHS, tiny_model


def _naive_linears(model):
    """Reference: isinstance-based scan (the library itself uses duck typing)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = (
                m.in_features,
                m.out_features,
                m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
            )
        elif isinstance(m, Conv1D):
            out[name] = (m.weight.shape[0], m.weight.shape[1], m.weight.numel() + m.bias.numel())
    return out


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_finds_exactly_the_linear_modules(arch):
    model = tiny_model(arch)
    ref = _naive_linears(model)
    sites = find_sites(model, include_lm_head=True)
    assert {s.name: (s.in_features, s.out_features, s.n_params) for s in sites} == ref
    # Without lm_head: every decoder linear, and nothing else.
    inner = find_sites(model)
    n_layers = model.config.num_hidden_layers
    per_layer = {"llama": 7, "qwen2": 7, "qwen3": 7, "mistral": 7, "phi3": 4, "gpt2": 4}[arch]
    assert len(inner) == n_layers * per_layer
    assert all(s.layer is not None and 0 <= s.layer < n_layers for s in inner)
    # Shapes agree with a real forward through each module.
    for s in inner:
        m = get_module(model, s.name)
        y = m(torch.randn(3, s.in_features))
        assert y.shape == (3, s.out_features)


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("llama", {"q", "k", "v", "o", "gate", "up", "down"}),
        ("qwen3", {"q", "k", "v", "o", "gate", "up", "down"}),
        ("phi3", {"qkv", "o", "gate_up", "down"}),
        ("gpt2", {"qkv", "o", "up", "down"}),
    ],
)
def test_kinds_and_blocks(arch, expected):
    sites = find_sites(tiny_model(arch))
    assert {s.kind for s in sites} == expected
    for s in sites:
        assert s.block == ("attn" if s.kind in {"q", "k", "v", "o", "qkv"} else "mlp")


def test_parse_names():
    assert parse_site_name("model.layers.12.mlp.up_proj") == (12, "mlp", "up")
    assert parse_site_name("model.layers.3.self_attn.k_proj") == (3, "attn", "k")
    assert parse_site_name("transformer.h.5.mlp.c_proj") == (5, "mlp", "down")
    assert parse_site_name("transformer.h.5.attn.c_proj") == (5, "attn", "o")
    assert parse_site_name("model.layers.0.mlp.gate_up_proj") == (0, "mlp", "gate_up")
    assert parse_site_name("lm_head") == (None, "other", "lm_head")


def test_gqa_shapes_read_from_model():
    model = tiny_model("llama", hidden=96, heads=6, kv_heads=3, intermediate=80, layers=3)
    by = {s.name: s for s in find_sites(model)}
    assert by["model.layers.2.self_attn.k_proj"].out_features == 48
    assert by["model.layers.2.mlp.down_proj"].in_features == 80
    assert len(by) == 21


def test_filters_and_resolve():
    model = tiny_model("llama")
    assert [s.name for s in find_sites(model, kinds={"up"})] == [
        "model.layers.0.mlp.up_proj",
        "model.layers.1.mlp.up_proj",
    ]
    assert len(find_sites(model, layers=[1])) == 7
    assert len(resolve_sites(model, r"mlp\.(gate|up)_proj")) == 4
    with pytest.raises(KeyError, match="not a linear module"):
        resolve_sites(model, ["model.layers.9.mlp.up_proj"])
    with pytest.raises(ValueError, match="matches the pattern"):
        resolve_sites(model, "nothing_like_this")


class _PackedLinear(nn.Module):
    """Not an nn.Linear: int8 codes in a `qweight` buffer plus per-row scales."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = lin.in_features, lin.out_features
        scale = lin.weight.abs().amax(dim=1, keepdim=True) / 127
        self.register_buffer("qweight", torch.round(lin.weight / scale).to(torch.int8))
        self.register_buffer("scales", scale)

    def forward(self, x):
        return x @ (self.qweight.float() * self.scales).T


def test_duck_typed_quantized_layer_found():
    model = tiny_model("llama")
    names = [s.name for s in find_sites(model)]
    for n in names:
        parent, leaf = n.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, _PackedLinear(model.get_submodule(n)))
    q_sites = find_sites(model)
    assert [s.name for s in q_sites] == names
    assert all(s.module_type == "_PackedLinear" for s in q_sites)
