"""Capture engine vs a naive full-activation computation.

Naive reference: plain forward hooks store every site output and input; gradients come from
``torch.autograd.grad(loss, stored_outputs)``; sums are taken afterwards in float64 with
explicit masks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lrm_interp.model.capture import Capture, FullCapture, MaskedSum, Reducer, pad_weights
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.testing import QuantLinearStub, quantize_stub_, tiny_model

TOL = dict(rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- helpers
def _loss(logits, ids, attn=None, reduce="mean"):
    """Next-token cross-entropy where source and target are real tokens; ``reduce="sum"`` makes
    the sequences of a batch independent."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    m = torch.ones_like(lp) if attn is None else (attn[:, 1:] * attn[:, :-1]).float()
    tot = -(lp * m).sum()
    return tot / m.sum() if reduce == "mean" else tot


def _naive(model, ids, attn=None, reduce="mean", **kw):
    """``sites, outputs, inputs, grads``: every site tensor ``[b, s, d]`` from plain hooks."""
    sites = [s.name for s in find_sites(model)]
    outs, ins, hs = {}, {}, []
    for n in sites:

        def h(m, a, o, n=n):
            outs[n] = o
            ins[n] = a[0].detach().clone()

        hs.append(get_module(model, n).register_forward_hook(h))
    hs.append(model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True)))
    try:
        logits = model(input_ids=ids, attention_mask=attn, **kw).logits
        grads = torch.autograd.grad(_loss(logits, ids, attn, reduce), [outs[n] for n in sites])
    finally:
        for h in hs:
            h.remove()
    return sites, {n: outs[n].detach().clone() for n in sites}, ins, dict(zip(sites, grads))


def _wsum(w, t):
    """Explicit float64 weighted sum ``[g, d]`` of ``t [b, s, d]`` under ``w [g, b, s]``."""
    return torch.einsum("gbs,bsd->gd", w.double(), t.double())


def _weights(b, s, g=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(g, b, s, generator=gen) > 0.5).float() * torch.rand(g, b, s, generator=gen)


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _three(w):
    return MaskedSum("output", w), MaskedSum("input", w), MaskedSum("grad", w)


def _check_three(reds, sites, outs, ins, grads, w, **tol):
    ro, ri, rg = reds
    for n in sites:
        for red, ref in ((ro, outs[n]), (ri, ins[n]), (rg, grads[n])):
            assert red.sums[n].dtype == torch.float32
            torch.testing.assert_close(red.sums[n].double(), _wsum(w, ref), **(tol or TOL))
            torch.testing.assert_close(red.counts[n], w.sum((1, 2)))


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- exactness
def test_sums_equal_naive_outputs_inputs_grads(llama_like):
    model = _frozen(llama_like)
    ids = torch.randint(0, 256, (2, 11))
    w = _weights(2, 11)
    sites, outs, ins, grads = _naive(model, ids)
    reds = _three(w)
    with Capture(model, None, reds) as cap:
        _loss(model(input_ids=ids).logits, ids).backward()
    assert cap.passes == 1 and cap.fired == len(sites) and not cap.repeats
    assert all(p.grad is None for p in model.parameters())
    _check_three(reds, sites, outs, ins, grads, w)
    n = sites[0]
    torch.testing.assert_close(reds[0].mean(n), reds[0].sums[n] / w.sum((1, 2))[:, None])
    assert reds[0].mean(n).shape == (3, outs[n].shape[-1])
    assert set(reds[2].result()) == set(sites)


def test_every_arch_equals_naive(any_tiny_model):
    """Fused qkv / gate_up (phi3) and GPT-2 Conv1D sites, all three stages."""
    model = _frozen(any_tiny_model)
    ids = torch.randint(0, 256, (2, 7))
    w = _weights(2, 7, g=2, seed=1)
    sites, outs, ins, grads = _naive(model, ids)
    reds = _three(w)
    full = FullCapture("output")
    with Capture(model, None, [*reds, full]) as cap:
        _loss(model(input_ids=ids).logits, ids).backward()
    assert [s.name for s in cap.sites] == sites and len(sites) >= 8
    _check_three(reds, sites, outs, ins, grads, w)
    for s in cap.sites:
        (t,) = full.tensors[s.name]
        assert t.shape == (2, 7, s.out_features)
        torch.testing.assert_close(t, outs[s.name], rtol=0, atol=0)


def test_quantized_stub_sites_and_sums():
    model = tiny_model("llama")
    names = [s.name for s in find_sites(model)]
    ref = {n: get_module(model, n).weight.detach().clone() for n in names}
    quantize_stub_(model)
    _frozen(model)
    sites = find_sites(model)
    assert [s.name for s in sites] == names
    assert {s.module_type for s in sites} == {"QuantLinearStub"}
    assert not any(isinstance(get_module(model, n), nn.Linear) for n in names)
    assert isinstance(model.lm_head, nn.Linear)  # outside the decoder layers: untouched
    stub = get_module(model, names[0])
    assert isinstance(stub, QuantLinearStub) and stub.qweight.dtype == torch.int8
    deq = stub.qweight.float() * stub.scales.float()
    assert 0 < float((deq - ref[names[0]]).abs().max()) <= float(stub.scales.max()) / 2 + 1e-7
    x = torch.randn(3, stub.in_features)
    torch.testing.assert_close(stub(x), x @ deq.T)

    ids = torch.randint(0, 256, (2, 7))
    w = _weights(2, 7, g=2)
    _, outs, ins, grads = _naive(model, ids)
    reds = _three(w)
    with Capture(model, None, reds):
        _loss(model(ids).logits, ids).backward()
    _check_three(reds, names, outs, ins, grads, w)
    assert all(float(v.abs().sum()) > 0 for v in reds[2].sums.values())


# ----------------------------------------------------------------------------- checkpointing
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("hf_input_hook", [True, False])
def test_gradient_checkpointing_idempotent(reentrant, hf_input_hook):
    model = _frozen(tiny_model("llama", layers=3))
    ids1, ids2 = torch.randint(0, 256, (2, 9)), torch.randint(0, 256, (2, 9))
    w = _weights(2, 9, g=2)
    sites, o1, i1, g1 = _naive(model, ids1)
    _, o2, i2, g2 = _naive(model, ids2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if not hf_input_hook:  # HF adds its own require-grad hook; without it ours must do the job
        model.disable_input_require_grads()
    model.train()  # HF checkpoints only in training mode (dropout is 0 in the tiny config)
    base_hooks = _n_hooks(model)
    reds = _three(w)
    with Capture(model, None, reds) as cap:
        _loss(model(input_ids=ids1).logits, ids1).backward()
        fired_one = cap.fired
        _loss(model(input_ids=ids2).logits, ids2).backward()
    assert _n_hooks(model) == base_hooks
    # forward hooks really re-fired during recompute (torch's non-reentrant checkpoint stops
    # recomputing after the last saved tensor, so down_proj may not re-fire there)
    assert fired_one > len(sites)
    if reentrant:
        assert fired_one == 2 * len(sites)
    assert cap.passes == 2 and not cap.repeats
    both = {k: {n: torch.cat([a[n], b[n]]) for n in sites} for k, a, b in (("o", o1, o2), ("i", i1, i2), ("g", g1, g2))}
    w2 = torch.cat([w, w], dim=1)  # two passes == one batch of both
    _check_three(reds, sites, both["o"], both["i"], both["g"], w2)


# ----------------------------------------------------------------------------- padding
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_equals_one_by_one(tokenizer, side):
    model = _frozen(tiny_model("llama"))
    texts = ["Wait, let me check.", "So the answer is 11 and that is final.", "Hmm."]
    tokenizer.padding_side = side
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    attn = enc["attention_mask"]
    lens = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert sorted(set(lens)) == sorted(lens) and attn.sum(1).tolist() == lens
    pos = (attn.cumsum(1) - 1).clamp_min(0)
    batch = _three(pad_weights(attn))
    assert batch[0].weights.shape == (1, 3, max(lens))
    with Capture(model, None, batch):
        out = model(input_ids=enc["input_ids"], attention_mask=attn, position_ids=pos)
        _loss(out.logits, enc["input_ids"], attn, reduce="sum").backward()
    single = _three(None)
    with Capture(model, None, single) as cap:
        for t in texts:
            e = tokenizer(t, return_tensors="pt")
            for r in single:
                r.weights = pad_weights(e["attention_mask"])
            _loss(model(**e).logits, e["input_ids"], reduce="sum").backward()
    assert cap.passes == 3
    for n in batch[0].sums:
        for rb, rs in zip(batch, single):
            torch.testing.assert_close(rb.sums[n], rs.sums[n], rtol=1e-5, atol=5e-5)
            assert float(rb.counts[n]) == float(rs.counts[n]) == sum(lens)


def test_nonfinite_values_at_pads_never_count():
    """A site emitting NaN/inf at pad positions: weights 0 there must exclude them entirely."""
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (2, 6))
    attn = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    w = pad_weights(attn, _weights(2, 6, g=2))
    site = "model.layers.1.mlp.down_proj"
    clean = MaskedSum("output", w)
    with Capture(model, [site], [clean]):
        model(ids, attention_mask=attn)

    def poison(m, a, o):
        o = o.clone()
        o[0, 4] = float("nan")
        o[0, 5] = float("inf")
        return o

    h = get_module(model, site).register_forward_hook(poison)  # runs before the capture's hook
    dirty, sq = MaskedSum("output", w), MaskedSum("output", w, square=True)
    try:
        with Capture(model, [site], [dirty, sq]):
            model(ids, attention_mask=attn)
    finally:
        h.remove()
    assert torch.isfinite(dirty.sums[site]).all()
    torch.testing.assert_close(dirty.sums[site], clean.sums[site], rtol=0, atol=0)
    assert torch.isfinite(sq.sums[site]).all() and float(sq.sums[site].min()) >= 0


# ----------------------------------------------------------------------------- hook hygiene
class _Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_hooks_removed_on_exception_and_user_hooks_kept(tiny_llama):
    model = tiny_llama
    user_calls = []
    h1 = model.model.layers[0].mlp.up_proj.register_forward_hook(lambda *a: user_calls.append("up"))
    h2 = model.register_forward_pre_hook(lambda *a: user_calls.append("root"))
    before = _n_hooks(model)
    mlp = model.model.layers[1].mlp
    act = mlp.act_fn
    mlp.act_fn = _Boom()  # raises mid-forward, after several sites already fired
    red, rg = MaskedSum("output", torch.ones(1, 5)), MaskedSum("grad", torch.ones(1, 5))
    cap = Capture(model, None, [red, rg])
    with pytest.raises(RuntimeError, match="boom"):
        with cap:
            assert _n_hooks(model) > before
            model(torch.randint(0, 256, (1, 5)))
    assert not cap.active and _n_hooks(model) == before == 2
    assert "model.layers.0.mlp.up_proj" in red.sums  # it did run until the raise
    mlp.act_fn = act
    snapshot = {k: v.clone() for k, v in red.sums.items()}
    user_calls.clear()
    model(torch.randint(0, 256, (1, 5)))
    assert user_calls == ["root", "up"]  # the user's hooks still fire
    assert red.sums.keys() == snapshot.keys() and all(torch.equal(red.sums[k], snapshot[k]) for k in snapshot)
    # an error raised by a reducer (bad weight shape) also removes everything
    with pytest.raises(ValueError, match="weights are"):
        with Capture(model, None, [MaskedSum("output", torch.ones(1, 3))]):
            model(torch.randint(0, 256, (1, 5)))
    assert _n_hooks(model) == 2
    h1.remove()
    h2.remove()


def test_bad_arguments(tiny_llama):
    with pytest.raises(ValueError, match="stage"):
        MaskedSum("nope")
    with pytest.raises(ValueError, match=r"\[g, b, s\]"):
        MaskedSum("output", torch.ones(4))
    with pytest.raises(KeyError, match="not a linear module"):
        Capture(tiny_llama, ["model.layers.0.mlp.nope_proj"], [])
    red = MaskedSum("output")
    with pytest.raises(RuntimeError, match="not set"):
        with Capture(tiny_llama, None, [red]):
            tiny_llama(torch.randint(0, 256, (1, 5)))
    cap = Capture(tiny_llama, None, [])
    with cap:
        with pytest.raises(RuntimeError, match="already active"):
            cap.__enter__()
    assert _n_hooks(tiny_llama) == 0


# ----------------------------------------------------------------------------- dtypes, devices
def test_bf16_accumulates_in_fp32():
    m32 = _frozen(tiny_model("llama"))
    m16 = _frozen(tiny_model("llama", dtype=torch.bfloat16))
    ids = torch.randint(0, 256, (2, 24))
    w = torch.ones(1, 2, 24)
    r32, r16 = (MaskedSum("output", w), MaskedSum("grad", w)), (MaskedSum("output", w), MaskedSum("grad", w))
    for m, reds in ((m32, r32), (m16, r16)):
        with Capture(m, None, reds):
            _loss(m(ids).logits, ids).backward()
    sites, outs16, _, grads16 = _naive(m16, ids)
    for n in sites:
        for a, b, ref in ((r32[0], r16[0], outs16[n]), (r32[1], r16[1], grads16[n])):
            assert b.sums[n].dtype == torch.float32 and ref.dtype == torch.bfloat16
            # exact float32 accumulation of the bf16 tensors (a bf16 accumulator is off by ~1e-2)
            torch.testing.assert_close(b.sums[n].double(), _wsum(w, ref), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
            # and close to the fp32 model within bf16 tolerance
            scale = float(a.sums[n].abs().max())
            torch.testing.assert_close(b.sums[n], a.sums[n], rtol=0.05, atol=0.05 * scale)


def test_accelerate_cpu_offload_same_sums():
    from accelerate import cpu_offload

    ids = torch.randint(0, 256, (2, 8))
    w = _weights(2, 8)
    sites, outs, ins, grads = _naive(_frozen(tiny_model("llama")), ids)
    model = _frozen(tiny_model("llama"))
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert model.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    assert any(hasattr(m, "_hf_hook") for m in model.modules())
    reds = _three(w)
    with Capture(model, None, reds):
        _loss(model(ids).logits, ids).backward()
    _check_three(reds, sites, outs, ins, grads, w)


def test_accelerate_device_map_with_disk_offload(tmp_path):
    from accelerate import dispatch_model

    ids = torch.randint(0, 256, (2, 8))
    w = _weights(2, 8)
    sites, outs, ins, grads = _naive(_frozen(tiny_model("llama")), ids)
    model = _frozen(tiny_model("llama"))
    device_map = {
        "model.embed_tokens": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path), main_device="cpu")
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    reds = _three(w)
    with Capture(model, None, reds):
        _loss(model(ids).logits, ids).backward()
    _check_three(reds, sites, outs, ins, grads, w)
    assert {v.device.type for v in reds[0].result().values()} == {"cpu"}


# ----------------------------------------------------------------------------- call styles
def test_inputs_embeds_and_direct_base_model_calls():
    model = _frozen(tiny_model("qwen2"))
    ids = torch.randint(0, 256, (1, 7))
    w = _weights(1, 7, g=2)
    sites, outs, _, grads = _naive(model, ids)
    emb = model.get_input_embeddings()(ids)
    assert not emb.requires_grad
    ro, rg = MaskedSum("output", w), MaskedSum("grad", w)
    with Capture(model, None, [ro, rg]):
        _loss(model(inputs_embeds=emb).logits, ids).backward()
    for n in sites:  # frozen model fed inputs_embeds: the capture still gets every gradient
        torch.testing.assert_close(rg.sums[n].double(), _wsum(w, grads[n]), **TOL)
    # the decoder called directly (not through the root), twice: two passes, sums doubled
    r2 = MaskedSum("output", w)
    with torch.no_grad(), Capture(model, None, [r2]) as cap:
        model.model(ids)
        model.model(ids)
    assert cap.passes == 2
    for n in sites:
        torch.testing.assert_close(r2.sums[n].double(), 2 * _wsum(w, outs[n]), **TOL)


class _KwargBlock(nn.Module):
    """Calls one linear by keyword and another twice (a shared module)."""

    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(4, 6)
        self.down_proj = nn.Linear(6, 6)

    def forward(self, x):
        h = self.up_proj(input=x)
        return self.down_proj(self.down_proj(h))


def test_keyword_inputs_and_repeated_calls_are_reported():
    torch.manual_seed(0)
    block = _KwargBlock()
    x = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.ones(1, 2, 3)
    ri, ro, rg = MaskedSum("input", w), MaskedSum("output", w), MaskedSum("grad", w)
    with pytest.warns(UserWarning, match="down_proj"):
        with Capture(block, None, [ri, ro, rg]) as cap:
            (block(x) ** 2).sum().backward()
    assert cap.repeats == {"down_proj": 1}
    torch.testing.assert_close(ri.sums["up_proj"][0], x.detach().sum((0, 1)))
    # a module called twice in one pass: only its first call is reduced, grads included
    h = block.up_proj(x)
    first = block.down_proj(h)
    out = block.down_proj(first)
    (g_first,) = torch.autograd.grad((out**2).sum(), [first])
    torch.testing.assert_close(ro.sums["down_proj"][0], first.detach().sum((0, 1)))
    torch.testing.assert_close(rg.sums["down_proj"][0], g_first.sum((0, 1)))


class _Count(Reducer):
    stages = frozenset({"output", "grad"})

    def __init__(self):
        self.calls = {"output": 0, "grad": 0}

    def on_output(self, site, t):
        assert not t.requires_grad
        self.calls["output"] += 1

    def on_grad(self, site, t):
        self.calls["grad"] += 1


def test_custom_reducer_receives_each_site_once(tiny_llama):
    model = _frozen(tiny_llama)
    ids = torch.randint(0, 256, (1, 5))
    r = _Count()
    with Capture(model, "mlp", [r]) as cap:
        model(ids).logits.sum().backward()
    assert len(cap.sites) == 6 and all(s.block == "mlp" for s in cap.sites)
    assert r.calls == {"output": 6, "grad": 6}
