"""Difference of means: fast path (lrm_interp.attribution.dom) vs the naive reference and hand arithmetic."""

from __future__ import annotations

import pytest
import torch
from reference_impl import naive_dom
from safetensors.torch import load, save
from synth import synthetic_traces

from lrm_interp.attribution.dom import compute_dom, dom_aggregate, dom_trace_stats, negative_mask
from lrm_interp.data.tokens import encode_trace
from lrm_interp.data.traces import BehaviorSpan, ReasoningTrace
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.testing import byte_tokenizer, tiny_model

BEHS = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]


@pytest.fixture(scope="module")
def encoded():
    """4 traces; trace 2 lacks example-testing; trace 0 has overlapping spans."""
    tok = byte_tokenizer()
    ds = synthetic_traces(4, seed=3, skip={2: {"example-testing"}}, overlap=True)
    return [encode_trace(tok, t, k_context=5) for t in ds]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_dom_equals_naive(arch, encoded):
    model = tiny_model(arch)
    sites = find_sites(model)
    names = [s.name for s in sites]
    for negatives in ("all", "response", "thinking"):
        stats = [dom_trace_stats(model, e, sites, BEHS, negatives=negatives) for e in encoded]
        for weighting in ("trace", "token"):
            res = dom_aggregate(stats, sites, BEHS, weighting=weighting)
            u, uhat, mean_all = naive_dom(model, encoded, names, BEHS, negatives=negatives, weighting=weighting)
            for b in BEHS:
                for n in names:
                    torch.testing.assert_close(res.raw[b][n].double(), u[b][n], rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(res.vectors[b][n].double(), uhat[b][n], rtol=1e-5, atol=1e-6)
            for n in names:
                torch.testing.assert_close(res.mean_all[n].double(), mean_all[n], rtol=1e-5, atol=1e-6)
    assert res.n_traces == {"backtracking": 4, "uncertainty-estimation": 4, "example-testing": 3, "adding-knowledge": 4}
    assert res.n_tokens["example-testing"] == sum(
        len({t for s in e.spans_of("example-testing") for t in range(s.ctx_start, s.end)}) for e in encoded
    )


def _disjoint_traces():
    """Behaviours on disjoint text, with different lengths and positions in each trace."""
    tok = byte_tokenizer()
    out = []
    for i, parts in enumerate(
        [
            [
                ("backtracking", "Wait, that is wrong."),
                ("adding-knowledge", "Recall that 7 is prime."),
                ("uncertainty-estimation", "Hmm, maybe not."),
            ],
            [("uncertainty-estimation", "I am not sure about this step at all."), ("backtracking", "Actually no.")],
            [("adding-knowledge", "We know sums commute."), ("example-testing", "Test: 2 + 3 = 5.")],
        ]
    ):
        resp, spans = "", []
        for b, text in parts:
            spans.append(BehaviorSpan(b, len(resp), len(resp) + len(text)))
            resp += text + " So on. "
        resp += "</think> Done."
        out.append(
            encode_trace(tok, ReasoningTrace(f"d/{i}", f"Q{i}: add.\n<think>\n", resp, tuple(spans)), k_context=2)
        )
    return out


def test_behaviours_have_their_own_accumulators():
    """Regression for the released code's shared accumulator ([t]*4 then +=: all behaviours equal)."""
    model = tiny_model("llama")
    sites = find_sites(model)
    names = [s.name for s in sites]
    enc = _disjoint_traces()
    stats = [dom_trace_stats(model, e, sites, BEHS) for e in enc]
    res = dom_aggregate(stats, sites, BEHS)
    u, uhat, _ = naive_dom(model, enc, names, BEHS)
    for n in names:
        for b in BEHS:
            torch.testing.assert_close(res.vectors[b][n].double(), uhat[b][n], rtol=1e-5, atol=1e-6)
        for i in range(len(BEHS)):
            for j in range(i + 1, len(BEHS)):
                a, c = res.raw[BEHS[i]][n], res.raw[BEHS[j]][n]
                assert (a - c).norm() > 1e-3 * a.norm()
    # per-trace sums: each behaviour's sum is the sum over its own tokens only
    assert float(stats[1]["pos_count/example-testing"]) == 0
    assert torch.count_nonzero(stats[1]["pos_sum/example-testing/" + names[0]]) == 0
    assert res.n_traces == {"backtracking": 2, "uncertainty-estimation": 2, "example-testing": 1, "adding-knowledge": 2}


def test_overlapping_spans_counted_once(encoded):
    model = tiny_model("llama")
    sites = find_sites(model)[:2]
    e = encoded[0]
    spans = e.spans_of("uncertainty-estimation")
    toks = sorted({t for s in spans for t in range(s.ctx_start, s.end)})
    assert len(toks) < sum(s.end - s.ctx_start for s in spans)  # they do overlap
    st = dom_trace_stats(model, e, sites, ["uncertainty-estimation"])
    assert int(st["pos_count/uncertainty-estimation"]) == len(toks)
    acts = {}
    h = get_module(model, sites[0].name).register_forward_hook(lambda m, a, o: acts.setdefault("x", o.detach()))
    with torch.no_grad():
        model(input_ids=e.input_ids[None])
    h.remove()
    torch.testing.assert_close(
        st[f"pos_sum/uncertainty-estimation/{sites[0].name}"], acts["x"][0, toks].sum(0), rtol=1e-5, atol=1e-5
    )


def test_negative_masks_and_think_end(encoded):
    e = encoded[1]
    tok = byte_tokenizer()
    assert tok.decode(e.input_ids[e.think_end : e.think_end + 8]) == "</think>"
    assert tok.decode(e.input_ids[e.response_start - 8 : e.response_start]) == "<think>\n"
    m_all, m_resp, m_think = (negative_mask(e, k) for k in ("all", "response", "thinking"))
    assert m_all[0] == 0 and m_all[1:].all()  # BOS excluded
    assert m_resp.sum() == len(e) - e.response_start and m_resp[e.response_start] == 1
    assert m_think.sum() == e.think_end - e.response_start and m_think[e.think_end] == 0
    model = tiny_model("llama")
    sites = find_sites(model)[:1]
    st = {k: dom_trace_stats(model, e, sites, BEHS, negatives=k) for k in ("all", "response", "thinking")}
    assert [int(st[k]["neg_count"]) for k in st] == [
        len(e) - 1,
        len(e) - e.response_start,
        e.think_end - e.response_start,
    ]
    # the positive sums do not depend on the choice of negatives
    n = sites[0].name
    torch.testing.assert_close(st["all"][f"pos_sum/backtracking/{n}"], st["thinking"][f"pos_sum/backtracking/{n}"])
    with pytest.raises(ValueError, match="negatives"):
        dom_trace_stats(model, e, sites, BEHS, negatives="prompt")


def _stat(pos: dict[str, tuple[list[float], float]], neg: tuple[list[float], float]) -> dict[str, torch.Tensor]:
    st = {"neg_count": torch.tensor([neg[1]]), "neg_sum/s": torch.tensor(neg[0])}
    for b, (v, c) in pos.items():
        st[f"pos_sum/{b}/s"], st[f"pos_count/{b}"] = torch.tensor(v), torch.tensor([c])
    return st


def test_aggregate_by_hand():
    """Trace vs token weighting, ā_all, rescaling and an absent behaviour, computed by hand."""
    from lrm_interp.model.sites import Site

    site = Site("s", 0, "mlp", "up", 2, 2, 4, 4, "Linear")
    stats = [
        _stat({"a": ([2.0, 0.0], 1.0), "b": ([0.0, 0.0], 0.0), "z": ([0.0, 0.0], 0.0)}, ([4.0, 2.0], 2.0)),
        _stat({"a": ([3.0, 3.0], 3.0), "b": ([0.0, 8.0], 2.0), "z": ([0.0, 0.0], 0.0)}, ([6.0, 6.0], 6.0)),
    ]
    tr = dom_aggregate(stats, [site], ["a", "b", "z"], weighting="trace")
    # D+ means: a: ([2,0] + [1,1]) / 2 = [1.5, .5]; D− trace means: ([2,1] + [1,1]) / 2 = [1.5, 1]
    torch.testing.assert_close(tr.raw["a"]["s"], torch.tensor([0.0, -0.5]))
    torch.testing.assert_close(tr.raw["b"]["s"], torch.tensor([-1.5, 3.0]))
    all_mean = torch.tensor([10.0, 8.0]) / 8
    torch.testing.assert_close(tr.mean_all["s"], all_mean)
    torch.testing.assert_close(tr.vectors["a"]["s"], torch.tensor([0.0, -1.0]) * all_mean.norm())
    tk = dom_aggregate(stats, [site], ["a", "b", "z"], weighting="token")
    torch.testing.assert_close(tk.raw["a"]["s"], torch.tensor([5.0, 3.0]) / 4 - all_mean)
    assert tr.n_traces == {"a": 2, "b": 1, "z": 0} and tr.n_tokens == {"a": 4, "b": 2, "z": 0}
    assert torch.count_nonzero(tr.vectors["z"]["s"]) == 0
    with pytest.raises(ValueError, match="weighting"):
        dom_aggregate(stats, [site], ["a"], weighting="span")


def test_stats_are_safetensors_serialisable_and_additive(encoded):
    model = tiny_model("qwen2")
    sites = find_sites(model)
    stats = [dom_trace_stats(model, e, sites, BEHS) for e in encoded]
    for st in stats:
        assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in st.values())
    back = [load(save(st)) for st in stats]
    a = dom_aggregate(stats, sites, BEHS)
    b = dom_aggregate(back, sites, BEHS)
    direct = compute_dom(model, encoded, sites, BEHS, progress=False)
    for beh in BEHS:
        for s in sites:
            assert torch.equal(a.vectors[beh][s.name], b.vectors[beh][s.name])
            assert torch.equal(a.vectors[beh][s.name], direct.vectors[beh][s.name])
            # û has the norm of the site's overall mean activation
            torch.testing.assert_close(a.vectors[beh][s.name].norm(), a.mean_all[s.name].norm())


def test_dom_forward_never_builds_full_logits(encoded):
    """The DoM pass runs the base model only: lm_head is not called when it is not a site."""
    model = tiny_model("llama")
    calls = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append(tuple(o.shape)))
    try:
        dom_trace_stats(model, encoded[0], find_sites(model), BEHS)
    finally:
        h.remove()
    assert all(s[1] < 8 for s in calls)  # at most the 6-token probe of the head split
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("special_tokens", ["exclude", "include"])
def test_special_tokens_in_negatives_equal_naive(special_tokens):
    """A tokenizer with <think> as a special token: D− and the overall mean leave out BOS and the
    mid-text <think> by default; "include" (the released code's convention) keeps them."""
    tok = byte_tokenizer(extra_special=("<think>",))
    ds = synthetic_traces(3, seed=5)
    enc = [encode_trace(tok, t, k_context=2) for t in ds]
    think = tok.convert_tokens_to_ids("<think>")
    assert all(think in e.input_ids.tolist() and e.special == (0, e.input_ids.tolist().index(think)) for e in enc)
    model = tiny_model("llama", vocab_size=len(tok))
    sites = find_sites(model)
    names = [s.name for s in sites]
    stats = [dom_trace_stats(model, e, sites, BEHS, special_tokens=special_tokens) for e in enc]
    res = dom_aggregate(stats, sites, BEHS)
    naive_dom.special_ids = tok.all_special_ids
    try:
        u, uhat, mean_all = naive_dom(model, enc, names, BEHS, special_tokens=special_tokens)
    finally:
        del naive_dom.special_ids
    for n in names:
        torch.testing.assert_close(res.mean_all[n].double(), mean_all[n], rtol=1e-5, atol=1e-6)
        for b in BEHS:
            torch.testing.assert_close(res.vectors[b][n].double(), uhat[b][n], rtol=1e-5, atol=1e-6)
    m = negative_mask(enc[0], "all", special_tokens)
    assert float(m[0]) == (special_tokens == "include") and float(m[enc[0].special[1]]) == (special_tokens == "include")
    assert int(m.sum()) == len(enc[0]) - (0 if special_tokens == "include" else 2)
