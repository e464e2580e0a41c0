"""Our capture equals TransformerLens 4's bridge hooks and nnsight's saved values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lrm_interp.model.capture import Capture, FullCapture, MaskedSum
from lrm_interp.model.interop import (
    boot_bridge,
    from_tl_cache,
    nnsight_grads,
    nnsight_outputs,
    tl_hook_name,
    tl_hook_names,
)
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import tiny_model


def _ids(b=2, s=9, seed=0):
    return torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(seed))


def _ours(model, ids, stage="output"):
    full = FullCapture(stage)
    with torch.no_grad(), Capture(model, None, [full]):
        model(ids)
    return {k: v[0] for k, v in full.tensors.items()}


def _loss_fn(labels):
    return lambda logits: F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def test_tl_hook_names():
    assert tl_hook_name("model.layers.3.mlp.up_proj") == "blocks.3.mlp.in.hook_out"
    assert tl_hook_name("model.layers.3.mlp.down_proj", "input") == "blocks.3.mlp.out.hook_in"
    assert tl_hook_name("model.layers.0.self_attn.q_proj") == "blocks.0.attn.q.hook_out"
    assert tl_hook_name("model.layers.1.self_attn.o_proj", "input") == "blocks.1.attn.o.hook_in"
    assert tl_hook_name("transformer.h.2.mlp.c_fc") == "blocks.2.mlp.in.hook_out"
    assert tl_hook_name("transformer.h.2.attn.c_proj") == "blocks.2.attn.o.hook_out"
    assert tl_hook_names("model.layers.0.mlp.gate_up_proj") == (
        "blocks.0.mlp.gate.hook_out",
        "blocks.0.mlp.in.hook_out",
    )
    with pytest.raises(KeyError, match="fused"):
        tl_hook_name("model.layers.0.self_attn.qkv_proj")
    with pytest.raises(KeyError, match="lm_head"):
        tl_hook_name("lm_head")
    with pytest.raises(ValueError, match="stage"):
        tl_hook_names("model.layers.0.mlp.up_proj", "grad")


@pytest.mark.parametrize("arch", ["llama", "qwen3", "phi3"])
def test_capture_equals_transformerlens_bridge_exactly(arch, tokenizer):
    model = tiny_model(arch)
    ids = _ids()
    with torch.no_grad():
        ref_logits = model(ids).logits
    outs, ins = _ours(model, ids, "output"), _ours(model, ids, "input")
    sites = find_sites(model)  # before booting: the bridge wraps (renames) the HF submodules
    bridge = boot_bridge(model, tokenizer)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids)
    assert torch.equal(logits, ref_logits)
    for s in sites:
        assert torch.equal(from_tl_cache(cache, s.name), outs[s.name]), s.name
        assert torch.equal(from_tl_cache(cache, s.name, "input"), ins[s.name]), s.name
    if arch == "llama":  # q/k/v hooks are per head: [b, s, heads, d_head]
        q = cache[tl_hook_name("model.layers.1.self_attn.q_proj")]
        c = model.config
        assert q.shape == (2, 9, c.num_attention_heads, c.hidden_size // c.num_attention_heads)
        assert torch.equal(q.reshape(2, 9, -1), outs["model.layers.1.self_attn.q_proj"])
        assert torch.equal(
            cache[tl_hook_name("model.layers.0.mlp.down_proj", "input")], ins["model.layers.0.mlp.down_proj"]
        )


def test_gpt2_bridge_matches_up_to_rounding(tokenizer):
    # The bridge splits GPT-2's fused c_attn Conv1D into three linears: same values up to float rounding.
    model = tiny_model("gpt2")
    ids = _ids(seed=2)
    outs = _ours(model, ids)
    sites = find_sites(model)
    bridge = boot_bridge(model, tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    for s in sites:
        torch.testing.assert_close(from_tl_cache(cache, s.name), outs[s.name], rtol=1e-5, atol=1e-6)


def test_boot_bridge_copy_leaves_model_untouched(tokenizer):
    model = tiny_model("llama")
    names = [n for n, _ in model.named_modules()]
    before = _ours(model, _ids())
    bridge = boot_bridge(model, tokenizer, copy=True)
    assert [n for n, _ in model.named_modules()] == names
    after = _ours(model, _ids())
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(bridge(_ids()), model(_ids()).logits)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_nnsight_outputs_and_inputs_equal_ours(arch, tokenizer):
    model = tiny_model(arch)
    ids = _ids(seed=1)
    names = [s.name for s in find_sites(model)]
    theirs_out = nnsight_outputs(model, tokenizer, ids, names)
    theirs_in = nnsight_outputs(model, tokenizer, ids, names[:4] + names[-1:], stage="input")
    ours_out, ours_in = _ours(model, ids), _ours(model, ids, "input")  # also: nnsight left no hooks behind
    for n in names:
        assert torch.equal(theirs_out[n], ours_out[n]), n
    for n in theirs_in:
        assert torch.equal(theirs_in[n], ours_in[n]), n
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_nnsight_gradients_equal_capture_grad_reducers(tokenizer):
    model = tiny_model("llama")
    for p in model.parameters():
        p.requires_grad_(False)  # frozen weights: gradients must still reach the site outputs
    ids, labels = _ids(seed=4), _ids(seed=5)
    loss_fn = _loss_fn(labels)
    names = [s.name for s in find_sites(model)]
    w = torch.rand(3, *ids.shape, generator=torch.Generator().manual_seed(6))  # [g, b, s]
    full, msum = FullCapture("grad"), MaskedSum("grad", w)
    with Capture(model, None, [full, msum]):
        loss_fn(model(ids).logits).backward()
    # naive reference: keep every output and differentiate with autograd.grad
    kept, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: kept.__setitem__(n, o)))
    emb = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.requires_grad_(True))
    try:
        ref = dict(zip(names, torch.autograd.grad(loss_fn(model(ids).logits), [kept[n] for n in names])))
    finally:
        emb.remove()
        for h in handles:
            h.remove()
    theirs = nnsight_grads(model, tokenizer, ids, names[::-1], loss_fn)  # any order accepted
    for n in names:
        assert ref[n].abs().max() > 0, n
        assert torch.equal(theirs[n], full.tensors[n][0]), n
        assert torch.equal(theirs[n], ref[n]), n
        torch.testing.assert_close(msum.sums[n], torch.einsum("gbs,bsd->gd", w, theirs[n]), rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())


def test_bridge_tokenizer_folder_is_removed_with_the_bridge(tokenizer):
    import gc
    import os

    bridge = boot_bridge(tiny_model("llama"), tokenizer)
    d = bridge.lrm_interp_tokenizer_dir
    assert os.path.isdir(d)
    del bridge
    gc.collect()
    assert not os.path.exists(d)  # no lrm_interp_tok_* folder left in the temp directory
