"""``attribute(method="patching")`` (issue 24 item 3): exact activation patching as the score.

Its scores equal an independent naive loop (full-prefix forward per (span, site), no cache, no
batching, the patch added with model/patching.py::add_to_outputs, aggregated here by hand on the
score scale); as ``patch_alpha`` → 0 they approach AtP's; bad values and options that do not apply
are refused before any work; resume works like the other methods."""

from __future__ import annotations

import math

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.resume import ResumeMismatchError
from lrm_interp.attribution.stats import spearman
from lrm_interp.data.tokens import encode_trace, target_positions
from lrm_interp.model.forward import span_losses
from lrm_interp.model.patching import add_to_outputs
from lrm_interp.testing import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def ds():
    """3 traces; trace 2 lacks example-testing (|D+| = 2 < 3); trace 0 has overlapping spans."""
    return synthetic_traces(3, seed=3, skip={2: {"example-testing"}}, overlap=True)


def _attr(model, ds, **kw):
    return lrm_interp.attribute(model, ds, tokenizer=byte_tokenizer(), progress=False, **kw)


def naive_scores(model, ds, res, alpha, *, score="paper", off_by_one=False, k_context=5):
    """``[n_behaviors, n_sites]`` I_real by hand: per scorable span, the full prefix ``ids[:end]``
    patched at one site at a time (α·û on the span's target positions), ΔL(s)/(α·|targets(s)|),
    then |Σ_s| / |D+| ("paper") or Σ_s |·| / #spans ("code")."""
    tok = byte_tokenizer()
    encoded = [encode_trace(tok, t, k_context=k_context) for t in ds]
    out = torch.zeros(len(res.behaviors), len(res.sites), dtype=torch.float64)
    for bi, b in enumerate(res.behaviors):
        per_span, traces = [], set()
        for e in encoded:
            for s in e.spans_of(b):
                if not s.scorable:
                    continue
                traces.add(e.trace_id)
                p0, p1 = target_positions(s, off_by_one=off_by_one)
                ids = e.input_ids[None, : s.end]
                mask = torch.zeros(1, s.end)
                mask[0, p0:p1] = 1
                a, z = s.targets
                row = []
                with torch.no_grad():
                    base = float(span_losses(model, ids, [s])[0])
                    for site in res.sites:
                        with add_to_outputs(model, {site.name: (res.vectors[b][site.name], mask)}, alpha=alpha):
                            dl = float(span_losses(model, ids, [s])[0]) - base
                        row.append(dl / (alpha * (z - a)))
                per_span.append(row)
        x = torch.tensor(per_span, dtype=torch.float64)
        out[bi] = x.sum(0).abs() / len(traces) if score == "paper" else x.abs().sum(0) / x.shape[0]
    return out


@pytest.mark.parametrize(
    "arch, alpha, opts",
    [
        ("llama", 1.0, {}),
        ("qwen3", 0.5, {"score": "code"}),
        ("llama", 2.0, {"prefix_cache": False, "off_by_one": True}),
    ],
)
def test_patching_scores_equal_naive_loop(ds, arch, alpha, opts):
    model = tiny_model(arch)
    res = _attr(model, ds, method="patching", patch_alpha=alpha, **opts)
    assert res.method == "patching"
    ref = naive_scores(
        model, ds, res, alpha, score=opts.get("score", "paper"), off_by_one=opts.get("off_by_one", False)
    )
    assert res.scores.shape == ref.shape and bool((ref > 0).all())
    torch.testing.assert_close(res.scores, ref, rtol=1e-5, atol=1e-6)
    # the steering vectors are DoM's, as for method="attribution"
    atp = _attr(model, ds, **{k: v for k, v in opts.items() if k != "prefix_cache"})
    for b in res.behaviors:
        for s in res.sites:
            torch.testing.assert_close(res.vectors[b][s.name], atp.vectors[b][s.name])
    prov = res.provenance
    assert prov["settings"]["method"] == "patching" and prov["settings"]["patch_alpha"] == alpha
    assert prov["patching_path"]["patch_alpha"] == alpha
    assert prov["patching_path"]["path"] == ("full_prefix" if opts.get("prefix_cache") is False else "prefix_cache")
    assert prov["gradient_path"] is None


def test_small_alpha_approaches_atp(ds):
    """As α → 0, I_real → I_atp (float64, so the small differences are not rounding)."""
    model = tiny_model("llama", dtype=torch.float64)
    atp = _attr(model, ds)
    near = _attr(model, ds, method="patching", patch_alpha=0.01)
    full = _attr(model, ds, method="patching", patch_alpha=1.0)
    assert near.behaviors == atp.behaviors
    for i, b in enumerate(atp.behaviors):
        assert spearman(atp.scores[i], near.scores[i]) > 0.95, b
        # and closer to AtP than the full-size patch is (in L1 over the sites)
        assert (near.scores[i] - atp.scores[i]).abs().sum() < (full.scores[i] - atp.scores[i]).abs().sum(), b
    torch.testing.assert_close(near.scores, atp.scores, rtol=0.1, atol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_alpha_is_refused_before_any_work(tmp_path, ds, bad):
    with pytest.raises(ValueError, match="patch_alpha must be"):
        AttributionConfig(method="patching", patch_alpha=bad)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="patch_alpha must be"):
        _attr(tiny_model("llama"), ds, method="patching", patch_alpha=bad, out_dir=out)
    assert not out.exists()


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"method": "patching", "mode": "joint"}, "mode and gradient_checkpointing"),
        ({"method": "patching", "gradient_checkpointing": True}, "mode and gradient_checkpointing"),
        ({"method": "attribution", "patch_alpha": 0.5}, "patch_alpha applies to method='patching' only"),
        ({"method": "dom", "patch_alpha": 0.5}, "patch_alpha applies to method='patching' only"),
    ],
)
def test_options_that_do_not_apply_are_refused(tmp_path, ds, opts, match):
    with pytest.raises(ValueError, match=match):
        AttributionConfig(**opts)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        _attr(tiny_model("llama"), ds, out_dir=out, **opts)
    assert not out.exists()


def test_resume_reuses_partials_and_refuses_another_alpha(tmp_path, ds):
    model = tiny_model("llama")
    first = _attr(model, ds, method="patching", out_dir=tmp_path / "r")
    assert (tmp_path / "r" / "partial" / "patching").is_dir()
    assert first.provenance["resume"]["patching"] == {"computed": 3, "reused": 0, "stale": 0}
    again = _attr(model, ds, method="patching", out_dir=tmp_path / "r")
    assert again.provenance["resume"]["patching"] == {"computed": 0, "reused": 3, "stale": 0}
    assert torch.equal(first.scores, again.scores)
    loaded = lrm_interp.Attribution.load(tmp_path / "r")
    assert loaded.method == "patching" and torch.equal(loaded.scores, first.scores)
    with pytest.raises(ResumeMismatchError, match="patch_alpha"):
        _attr(model, ds, method="patching", patch_alpha=0.5, out_dir=tmp_path / "r")
    with pytest.raises(ResumeMismatchError, match="method"):
        _attr(model, ds, out_dir=tmp_path / "r")


def test_unscorable_spans_are_counted_like_attribution():
    """A one-token span at position 0 has no predictable token: left out of the patching scores,
    counted and warned about exactly as for AtP (tests/test_resume.py's case)."""
    import warnings

    from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace

    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = None  # no BOS: a span on the first character sits at position 0
    bad = ReasoningTrace(
        "first-char",
        "",
        "Wait, x. Hmm, maybe.",
        (BehaviorSpan("backtracking", 0, 1), BehaviorSpan("backtracking", 6, 8)),
    )
    data = ReasoningDataset([bad, *synthetic_traces(2)])
    model = tiny_model("llama")
    got = {}
    for method in ("patching", "attribution"):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got[method] = lrm_interp.attribute(model, data, tokenizer=tok, progress=False, method=method)
        what = "activation" if method == "patching" else "attribution"
        assert any(f"cannot be scored by {what} patching" in str(x.message) for x in w)
    res, atp = got["patching"], got["attribution"]
    assert res.provenance["counts"]["unscorable_spans"]["backtracking"] == 1
    assert res.provenance["skipped_spans"] == atp.provenance["skipped_spans"]
    assert float(res.scores[res.behaviors.index("backtracking")].sum()) > 0  # the other spans still score


def test_cli_has_the_method_and_its_alpha():
    from lrm_interp.cli.common import dataclass_from_args
    from lrm_interp.cli.main import build_parser

    p = build_parser()
    args = p.parse_args(["attribute", "--model", "toy", "--data", "x", "--out", "y", "--method", "patching"])
    cfg = dataclass_from_args(AttributionConfig, args)
    assert cfg.method == "patching" and cfg.patch_alpha == 1.0
    args = p.parse_args(
        ["attribute", "--model", "toy", "--data", "x", "--out", "y", "--method", "patching", "--patch-alpha", "0.1"]
    )
    assert dataclass_from_args(AttributionConfig, args).patch_alpha == 0.1
    sub = next(a for a in p._actions if getattr(a, "choices", None) and "attribute" in a.choices).choices["attribute"]
    acts = {a.dest: a for a in sub._actions}
    assert "patching" in acts["method"].choices and "patching" in acts["method"].help
    assert "alpha" in acts["patch_alpha"].help


def test_sites_a_small_patch_did_not_resolve_are_counted_and_warned(tmp_path):
    """patch_alpha 0.01 on the toy reasoner: the one uncertainty-estimation span's patch changes the
    loss at only some sites; the others score exactly 0 (ties whose ranks say nothing). Counted in
    provenance['counts']['unresolved_sites'] (= the all-zero score columns here: one span) and
    warned; with patch_alpha 1 none is. Also on resume (the counts come from the partials)."""
    import warnings

    from lrm_interp.data.toy_tasks import generate_dataset
    from lrm_interp.model.loading import load_model

    model, tok = load_model("toy")
    toy = generate_dataset(2, seed=3)
    got = {}
    for alpha in (0.01, 1.0):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            got[alpha] = lrm_interp.attribute(
                model,
                toy,
                tokenizer=tok,
                progress=False,
                method="patching",
                patch_alpha=alpha,
                out_dir=tmp_path / f"a{alpha}",
            )
        msgs = [str(x.message) for x in w if "changed no span loss" in str(x.message)]
        counts = got[alpha].provenance["counts"]["unresolved_sites"]
        ue = got[alpha].behaviors.index("uncertainty-estimation")
        assert got[alpha].provenance["counts"]["spans"]["uncertainty-estimation"] == 1
        assert counts["uncertainty-estimation"] == int(got[alpha].scores[ue].eq(0).sum())
        if alpha == 1.0:
            assert msgs == [] and set(counts.values()) == {0}
        else:
            n = counts["uncertainty-estimation"]
            assert 0 < n < len(got[alpha].sites) and len(msgs) == 1 and f"'uncertainty-estimation': {n}" in msgs[0]
    again = lrm_interp.attribute(
        model, toy, tokenizer=tok, progress=False, method="patching", patch_alpha=0.01, out_dir=tmp_path / "a0.01"
    )
    assert again.provenance["resume"]["patching"]["reused"] == len(toy)
    assert again.provenance["counts"]["unresolved_sites"] == got[0.01].provenance["counts"]["unresolved_sites"]
    assert (
        lrm_interp.Attribution.load(tmp_path / "a0.01").provenance["counts"]["unresolved_sites"][
            "uncertainty-estimation"
        ]
        > 0
    )
    assert (
        "unresolved_sites" not in _attr(tiny_model("llama"), synthetic_traces(2)).provenance["counts"]
    )  # AtP: no such count


def test_a_small_patch_in_16_bits_is_warned(ds):
    """H13-BFF for method='patching': patch_alpha < 1 in bfloat16 warns (and patching_path records
    the dtype); patch_alpha 1 does not."""
    import warnings

    model = tiny_model("llama")
    with pytest.warns(UserWarning, match=r"ran in bfloat16: .*\(patch_alpha 0.5\).*rank rounding"):
        res = _attr(model, ds, method="patching", patch_alpha=0.5, compute_dtype="bf16")
    assert res.provenance["patching_path"]["dtype"] == "bfloat16"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _attr(model, ds, method="patching", compute_dtype="bf16")
    assert not [x for x in w if "rounding" in str(x.message)]
