"""One read per trace (issue #23 item 3): ``attribute`` takes the DoM sums from the prefix-cache forward
and dots AtP's span-gradient sums with the steering vectors after the DoM reduction.

- the one-pass result equals the two-pass one (``dom_stage`` → ``reduce_dom`` → ``atp_stage``, kept
  for ``method="patching"``, ``mode="joint"``, ``score="code"``, ``compute_dtype`` and models without a
  prefix cache) to the tolerance of tests/test_atp.py, on several architectures, behaviours and traces,
  with ``off_by_one``, gradient checkpointing, other D− and rotary encodings that switch with length;
- the DoM statistics are those of the DoM stage's own forward;
- a run killed inside the one-pass stage resumes to the identical result, recomputing only the
  unfinished traces; the two-pass partials of an earlier run are not mistaken for complete ones;
- the two-pass settings are named in provenance (``passes``).
"""

from __future__ import annotations

import pytest
import torch
from synth import synthetic_traces
from test_long_trace import _rope_model, long_trace

import lrm_interp
from lrm_interp.attribution import pipeline as P
from lrm_interp.attribution.atp import atp_aggregate, dots_from_gradients, one_pass_trace_stats
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.dom import dom_trace_stats
from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.prefix_cache import same_rotations
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import byte_tokenizer, tiny_model

TOL = 1e-5  # tests/test_atp.py's tolerance (fast vs naive AtP)


def _two_pass(model, ds, tok, **options):
    """The previous path of ``attribute`` (a DoM forward, then the AtP stage's passes), run stage by stage."""
    plan = P.plan_attribution(model, ds, AttributionConfig(**options), tokenizer=tok, progress=False)
    dom = P.reduce_dom(plan, P.dom_stage(plan, progress=False))
    return P.finish(plan, dom, P.atp_stage(plan, dom, progress=False), warn=False)


def _close(a, b, what=""):
    torch.testing.assert_close(a, b, rtol=TOL, atol=TOL * max(float(b.abs().max()), 1e-12), msg=what)


@pytest.mark.parametrize(
    "arch, options",
    [
        ("llama", {}),
        ("qwen3", {"off_by_one": True}),
        ("qwen2", {"negatives": "response", "k_context": 2}),
        ("mistral", {"weighting": "token", "special_tokens": "include"}),
        ("llama", {"gradient_checkpointing": True}),
        ("gpt2", {}),
    ],
)
def test_one_pass_equals_two_passes(arch, options, tokenizer):
    model = tiny_model(arch, seed=0)
    ds = synthetic_traces(5, skip={1: {"example-testing"}, 3: {"backtracking", "adding-knowledge"}})
    one = lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False, **options)
    assert one.provenance["passes"]["passes"] == 1, one.provenance["passes"]
    two = _two_pass(model, ds, tokenizer, **options)
    assert one.behaviors == two.behaviors and len(one.behaviors) == 4
    _close(one.scores, two.scores, "scores")
    for b in one.behaviors:  # the DoM sums are the DoM forward's: same vectors
        for s in one.sites:
            _close(one.vectors[b][s.name], two.vectors[b][s.name], f"{b} {s.name}")
    assert one.provenance["counts"] == two.provenance["counts"]
    assert one.provenance["gradient_path"] == two.provenance["gradient_path"]


def test_dom_statistics_are_the_dom_forwards(tokenizer):
    """The capture on the cache forward sums what the DoM stage's own forward sums."""
    model = tiny_model("llama", seed=1)
    sites = find_sites(model)
    behs = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]
    for t in synthetic_traces(3):
        enc = encode_trace(tokenizer, t)
        ref = dom_trace_stats(model, enc, sites, behs)
        dom, grads = one_pass_trace_stats(model, enc, sites, behs)
        assert sorted(dom) == sorted(ref)
        for k in ref:
            _close(dom[k], ref[k], k)
        for b in behs:
            n = len([s for s in enc.spans_of(b) if s.scorable])
            assert int(grads[f"n_spans/{b}"]) == n and grads[f"loss/{b}"].shape == (n,)
            assert (f"grad/{b}/{sites[0].name}" in grads) == (n > 0)


def test_summed_dots_equal_the_per_span_dots(tokenizer):
    """û · Σ_s ḡ_s equals Σ_s (û · ḡ_s) of atp_trace_stats on every trace and behaviour; the code score
    (Σ_s |dot|) cannot come from the sums and says so."""
    from lrm_interp.attribution.atp import atp_trace_stats
    from lrm_interp.attribution.dom import compute_dom

    model = tiny_model("qwen3", seed=0)
    sites = find_sites(model)
    behs = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]
    encs = [encode_trace(tokenizer, t) for t in synthetic_traces(3)]
    dom = compute_dom(model, encs, sites, behs, progress=False)
    per_span, summed = [], []
    for e in encs:
        ref = atp_trace_stats(model, e, sites, behs, dom.vectors)
        _, g = one_pass_trace_stats(model, e, sites, behs)
        got = atp_trace_stats(model, e, sites, behs, dom.vectors, gradients=g)
        direct = dots_from_gradients(g, sites, behs, dom.vectors)
        assert sorted(direct) == sorted(got) and all(torch.equal(direct[k], got[k]) for k in got)
        for b in behs:
            _close(got[f"dotsum/{b}"][0], ref[f"dots/{b}"].sum(0), b)
            _close(got[f"loss/{b}"], ref[f"loss/{b}"], b)
        per_span.append(ref)
        summed.append(got)
    a, b = atp_aggregate(summed, sites, behs), atp_aggregate(per_span, sites, behs)
    _close(a.scores, b.scores)
    assert a.n_spans == b.n_spans and a.n_traces == b.n_traces and a.n_skipped == b.n_skipped
    with pytest.raises(ValueError, match="score='code' needs each span's dot"):
        atp_aggregate(summed, sites, behs, score="code")


@pytest.mark.parametrize("kind", ["longrope", "dynamic"])
def test_rotary_switch_stays_exact(kind):
    """The whole-trace forward's cache serves only the windows whose cache it equals
    (:func:`same_rotations`); the others get their own forward, as in the two-pass path."""
    model = _rope_model(kind)
    trace = long_trace(n_chars=400, n_spans=16, seed=4)
    tok = byte_tokenizer()
    one = lrm_interp.attribute(model, [trace], tokenizer=tok, progress=False, overlong="extrapolate")
    assert one.provenance["passes"]["passes"] == 1
    two = _two_pass(model, [trace], tok, overlong="extrapolate")
    _close(one.scores, two.scores)


def test_same_rotations():
    assert same_rotations(None, 10, 5000)
    assert same_rotations(("longrope", 128), 100, 128) and not same_rotations(("longrope", 128), 100, 129)
    assert same_rotations(("longrope", 128), 300, 400) and same_rotations(("longrope", 128), 200, 200)
    assert same_rotations(("dynamic", 128), 100, 127) and not same_rotations(("dynamic", 128), 127, 128)
    assert not same_rotations(("dynamic", 128), 300, 400) and same_rotations(("dynamic", 128), 300, 300)


@pytest.mark.parametrize(
    "options, reason",
    [
        ({"score": "code"}, "score='code'"),
        ({"mode": "joint"}, "mode='joint'"),
        ({"prefix_cache": False}, "no prefix cache"),
        ({"compute_dtype": "bf16"}, "compute_dtype"),
        ({"method": "patching"}, "method='patching'"),
    ],
)
def test_settings_that_keep_two_passes(options, reason, tokenizer):
    """Where the sums do not suffice (or no cache forward exists) the two-pass path runs, unchanged."""
    model = tiny_model("llama", seed=0)
    ds = synthetic_traces(3)
    res = lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False, **options)
    assert res.provenance["passes"]["passes"] == 2 and reason in res.provenance["passes"]["reason"]
    if options.get("method") != "patching":
        assert torch.equal(res.scores, _two_pass(model, ds, tokenizer, **options).scores)


def test_kill_inside_the_one_pass_stage_resumes_identically(tokenizer, tmp_path, monkeypatch):
    model = tiny_model("llama", seed=0)
    ds = synthetic_traces(5)
    full = lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False)
    real = P.one_pass_trace_stats
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(P, "one_pass_trace_stats", dying)
    with pytest.raises(KeyboardInterrupt):
        lrm_interp.attribute(model, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    for stage in ("dom", "grad"):
        assert len(list((tmp_path / "partial" / stage).glob("*.safetensors"))) == 2
    assert not (tmp_path / "partial" / "atp").exists()
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(P, "one_pass_trace_stats", counting)
    resumed = lrm_interp.attribute(model, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    assert counted["n"] == 3  # only the unfinished traces
    assert torch.equal(resumed.scores, full.scores)
    r = resumed.provenance["resume"]
    assert r["dom"] == r["grad"] == {"computed": 3, "reused": 2, "stale": 0}
    assert r["atp"] == {"computed": 5, "reused": 0, "stale": 0}
    again = lrm_interp.attribute(model, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    assert counted["n"] == 3 and torch.equal(again.scores, full.scores)
    assert again.provenance["resume"]["atp"] == {"computed": 0, "reused": 5, "stale": 0}


def test_dom_partials_alone_are_not_complete(tokenizer, tmp_path):
    """A folder holding only DoM partials (the DoM stage of a two-pass run killed before the AtP stage)
    is finished by the one-pass stage, which needs the gradients too: the result equals a fresh run."""
    model = tiny_model("llama", seed=0)
    ds = synthetic_traces(3)
    plan = P.plan_attribution(model, ds, AttributionConfig(), tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    P.dom_stage(plan, progress=False)
    res = lrm_interp.attribute(model, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    assert res.provenance["resume"]["grad"]["computed"] == 3
    assert torch.equal(res.scores, lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False).scores)


def test_the_cache_forward_keeps_only_what_the_windows_need():
    """``trace_cache(keep=)`` runs over the whole trace (the DoM sums need every token) but holds only
    the first ``keep`` positions, equal to a forward over just those (causal attention)."""
    from lrm_interp.model.prefix_cache import trace_cache

    model = tiny_model("llama", seed=0)
    ids = (torch.arange(40) * 7 + 3).remainder(200).unsqueeze(0)
    kept = trace_cache(model, ids, keep=25)
    short = trace_cache(model, ids[:, :25])
    assert all(k.shape[-2] == 25 and v.shape[-2] == 25 for k, v in kept)
    for (k, v), (k2, v2) in zip(kept, short):
        _close(k, k2)
        _close(v, v2)
    assert all(k.shape[-2] == 40 for k, _ in trace_cache(model, ids))
