"""AtP vs real activation patching (lrm_interp.attribution.faithfulness): the fast cached, batched
patching equals the naive uncached loop of tests/test_atp.py::atp_vs_patching; the comparison
numbers equal an independent computation (ranks + Pearson, written in the test); bad inputs are
refused with clear errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from synth import synthetic_traces

from lrm_interp.attribution.dom import compute_dom
from lrm_interp.attribution.faithfulness import (
    FaithfulnessResult,
    PatchingEffects,
    atp_faithfulness,
    check_alphas,
    compare_scores,
    patching_effects,
    select_spans,
    top_k_overlap,
)
from lrm_interp.data.tokens import encode_trace, target_positions
from lrm_interp.model.forward import span_losses
from lrm_interp.model.patching import add_to_outputs
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import byte_tokenizer, tiny_model

BEHS = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]
ALPHAS = (0.1, 1.0)


@pytest.fixture(scope="module")
def encoded():
    """3 traces; trace 2 lacks example-testing; trace 0 has overlapping spans."""
    ds = synthetic_traces(3, seed=3, skip={2: {"example-testing"}}, overlap=True)
    return [encode_trace(byte_tokenizer(), t, k_context=5) for t in ds]


def naive_effects(model, encoded, sites, behavior, vectors, alpha, *, off_by_one=False):
    """``[n_spans, n_sites]`` ΔL(s, m, α): the loop of tests/test_atp.py::atp_vs_patching, per span
    (full prefix ``ids[:end]``, one site at a time, no cache, no batching)."""
    rows = []
    for e in encoded:
        for s in e.spans_of(behavior):
            if not s.scorable:
                continue
            p0, p1 = target_positions(s, off_by_one=off_by_one)
            ids = e.input_ids[None, : s.end]
            mask = torch.zeros(1, s.end)
            mask[0, p0:p1] = 1
            row = []
            with torch.no_grad():
                base = float(span_losses(model, ids, [s])[0])
                for site in sites:
                    with add_to_outputs(model, {site.name: (vectors[behavior][site.name], mask)}, alpha=alpha):
                        row.append(float(span_losses(model, ids, [s])[0]) - base)
            rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_patching_effects_equal_naive_loop(arch, encoded):
    model = tiny_model(arch)
    sites = find_sites(model)
    vecs = compute_dom(model, encoded, sites, BEHS, progress=False).vectors
    refs: dict[tuple, torch.Tensor] = {}
    for prefix_cache, off in ((True, False), (False, False), (True, True)):
        eff = patching_effects(
            model,
            encoded,
            sites,
            BEHS,
            vecs,
            alphas=ALPHAS,
            prefix_cache=prefix_cache,
            off_by_one=off,
            batch_size=5,  # 2 alphas x 14 sites = 28 rows: 6 batches, the last one partial
            progress=False,
        )
        assert eff.path == ("prefix_cache" if prefix_cache else "full_prefix")
        for b in BEHS:
            for ai, alpha in enumerate(ALPHAS):
                key = (b, alpha, off)
                if key not in refs:  # the naive loop once per (behaviour, alpha, window)
                    refs[key] = naive_effects(model, encoded, sites, b, vecs, alpha, off_by_one=off)
                ref = refs[key]
                torch.testing.assert_close(eff.effects[b][ai], ref, rtol=1e-5, atol=1e-5)  # float32 losses ~5
            assert eff.n_targets[b].tolist() == [s.targets[1] - s.targets[0] for e in encoded for s in e.spans_of(b)]
    assert eff.n_traces("example-testing") == 2 and eff.n_traces("backtracking") == 3
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def _spearman(a, b) -> float:
    import numpy as np
    import pandas as pd

    # Pearson of average ranks (ties shared), written out here: scipy is not a dependency
    ra, rb = (pd.Series(x.numpy()).rank(method="average").to_numpy() for x in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_compare_scores_against_independent_computation():
    g = torch.Generator().manual_seed(0)
    n_spans, n_sites = 5, 30
    eff = torch.randn(2, n_spans, n_sites, generator=g, dtype=torch.float64)
    dots = torch.randn(n_spans, n_sites, generator=g, dtype=torch.float64)
    n_t = torch.tensor([3, 1, 4, 2, 5])
    spans = (("a", 0), ("a", 1), ("b", 0), ("c", 2), ("c", 3))  # 3 traces
    pe = PatchingEffects(
        ("x",),
        tuple(f"s{j}" for j in range(n_sites)),
        (0.1, 1.0),
        {"x": eff},
        {"x": torch.zeros(5)},
        {"x": n_t},
        {"x": spans},
    )
    for score in ("paper", "code"):
        rows, atp, real = compare_scores(pe, {"x": dots}, score=score, top_k=10)
        if score == "paper":
            exp_atp = dots.sum(0).abs() / 3
        else:
            exp_atp = dots.abs().sum(0) / 5
        torch.testing.assert_close(atp[0], exp_atp)
        for ai, alpha in enumerate((0.1, 1.0)):
            per = eff[ai] / (alpha * n_t.double()[:, None])
            exp_real = per.sum(0).abs() / 3 if score == "paper" else per.abs().sum(0) / 5
            torch.testing.assert_close(real[ai, 0], exp_real)
            r = rows[ai]
            assert (r.alpha, r.behavior, r.n_spans, r.n_traces) == (alpha, "x", 5, 3)
            assert r.spearman == pytest.approx(_spearman(exp_atp, exp_real), abs=1e-12)
            top_a = set(sorted(range(n_sites), key=lambda j: -float(exp_atp[j]))[:10])
            top_r = set(sorted(range(n_sites), key=lambda j: -float(exp_real[j]))[:10])
            assert r.top_k_overlap == len(top_a & top_r)
            signed_est = alpha * (n_t.double()[:, None] * dots).sum(0)
            assert r.signed_spearman == pytest.approx(_spearman(signed_est, eff[ai].sum(0)), abs=1e-12)
            assert r.rel_l1 == pytest.approx(float((exp_atp - exp_real).abs().sum() / exp_real.sum()))
            assert r.median_ratio == pytest.approx(float((exp_atp / exp_real).median()))
    assert top_k_overlap(torch.arange(5.0), torch.arange(5.0), 10) == 5  # k capped at the sites


def test_atp_faithfulness_end_to_end(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), byte_tokenizer()
    ds = synthetic_traces(4, seed=5)
    res = atp_faithfulness(
        model, ds, tokenizer=tok, alphas=(1e-2, 1.0), behaviors=["backtracking", "adding-knowledge"], progress=False
    )
    assert res.behaviors == ("backtracking", "adding-knowledge") and len(res.rows) == 4
    assert res.provenance["patching_path"]["path"] == "prefix_cache"
    assert res.provenance["max_base_loss_gap"] < 1e-5  # AtP's unpatched losses = the patching pass's
    sp = res.provenance["spans"]["backtracking"]
    assert sp["usable"] == sp["used"] == sp["labelled"] == 4 and sp["left_out_by_max_spans"] == 0
    # small patch: real patching is linear, so I_real -> I_atp (same scale: dot vs dL / (alpha |targets|))
    small = res.row("backtracking", 1e-2)
    # measured: spearman 0.9945, rel_l1 0.025, top-10 10/10, median ratio 1.003 (float32 losses)
    assert small.spearman > 0.98 and small.rel_l1 < 0.05 and small.top_k_overlap >= 9
    assert small.median_ratio == pytest.approx(1.0, abs=0.02)
    df = res.to_dataframe()
    assert list(df.columns[:4]) == ["alpha", "behavior", "spearman", "top10_overlap"] and len(df) == 4
    assert len(res.sites_dataframe()) == 2 * len(find_sites(model))
    out = res.save(tmp_path / "f")
    assert sorted(p.name for p in out.iterdir()) == ["faithfulness.csv", "faithfulness.json", "sites.csv"]
    back = FaithfulnessResult.load(out)
    assert (
        back.rows == res.rows
        and torch.equal(back.real, res.real)
        and back.provenance["spans"] == res.provenance["spans"]
    )
    with pytest.raises(ValueError, match="--overwrite"):
        res.save(out)
    res.save(out, overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not an earlier result"):
        res.save(tmp_path / "other", overwrite=True)
    assert json.loads((out / "faithfulness.json").read_text())["format"] == "lrm_interp.faithfulness/1"
    # published together: a save failing after its first file leaves the earlier result as it was
    # (faithfulness.csv used to be replaced already) and makes no new folder
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = dataclasses.replace(res, provenance={**res.provenance, "seed": 99})  # rows: checked on load

    def fail(self):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(FaithfulnessResult, "sites_dataframe", fail)
    with pytest.raises(RuntimeError, match="disk gone"):
        broken.save(out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(RuntimeError, match="disk gone"):
        broken.save(tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "other"]
    monkeypatch.undo()
    broken.save(out, overwrite=True)
    assert FaithfulnessResult.load(out).provenance["seed"] == 99 and sorted(p.name for p in out.iterdir()) == sorted(
        before
    )


def test_span_cap_is_counted_and_seeded():
    enc = [encode_trace(byte_tokenizer(), t) for t in synthetic_traces(6, seed=1)]
    sel, counts = select_spans(enc, ["backtracking", "deduction"], 3, seed=7)
    assert counts["backtracking"] == {"usable": 6, "used": 3, "left_out_by_max_spans": 3}
    assert sum(len(e.spans_of("backtracking")) for e in sel) == 3
    assert not any(e.spans_of("initializing") for e in sel)  # other behaviours' spans are not patched
    again, _ = select_spans(enc, ["backtracking", "deduction"], 3, seed=7)
    assert [[s.index for s in e.spans] for e in again] == [[s.index for s in e.spans] for e in sel]
    _, all_ = select_spans(enc, ["backtracking"], None)
    assert all_["backtracking"]["left_out_by_max_spans"] == 0


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf])
def test_bad_alpha_refused(alpha):
    with pytest.raises(ValueError, match="alpha must be"):
        check_alphas([0.1, alpha])
    with pytest.raises(ValueError, match="alpha must be"):
        atp_faithfulness(tiny_model("llama"), synthetic_traces(2), tokenizer=byte_tokenizer(), alphas=alpha)


def test_bad_inputs_refused():
    model, tok, ds = (
        tiny_model("llama"),
        byte_tokenizer(),
        synthetic_traces(2, seed=0, skip={0: {"backtracking"}, 1: {"backtracking"}}),
    )
    with pytest.raises(ValueError, match=r"no requested behaviour has a usable span: backtracking"):
        atp_faithfulness(model, ds, tokenizer=tok, behaviors=["backtracking"], progress=False)
    with pytest.raises(ValueError, match=r"\['backtracking'\] ha(s|ve) no usable span"):
        atp_faithfulness(model, ds, tokenizer=tok, behaviors=["deduction", "backtracking"], progress=False)
    with pytest.raises(ValueError, match="method must be 'attribution'"):
        atp_faithfulness(model, ds, tokenizer=tok, method="dom", progress=False)
    with pytest.raises(ValueError, match="max_spans"):
        atp_faithfulness(model, ds, tokenizer=tok, max_spans=0, progress=False)
    with pytest.raises(ValueError, match="duplicates"):
        check_alphas([1.0, 1.0])
    with pytest.raises(ValueError, match="at least one"):
        check_alphas([])


def test_cli_writes_refuses_and_overwrites(tmp_path, capsys):
    from lrm_interp.cli.main import main

    data = synthetic_traces(3, seed=2).save_jsonl(tmp_path / "t.jsonl")
    argv = ["faithfulness", "--model", "toy", "--data", str(data), "--out", str(tmp_path / "f"), "--quiet"]
    argv += ["--behaviors", "backtracking", "adding-knowledge", "--max-spans", "2", "--alpha", "0.1", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "spearman" in out and "left out by --max-spans: {'backtracking': 1, 'adding-knowledge': 1}" in out
    res = FaithfulnessResult.load(tmp_path / "f")
    assert res.provenance["spans"]["backtracking"]["used"] == 2 and len(res.rows) == 4
    assert main(argv) == 2  # an existing result is not replaced without --overwrite
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and err[0].startswith("lrm-interp faithfulness")
    assert main(argv + ["--overwrite"]) == 0
    with pytest.raises(SystemExit):
        main(argv[:-2] + ["--alpha", "0"])


def test_sites_the_patch_did_not_resolve_are_counted_and_warned(tmp_path, capsys):
    """A small alpha on the toy reasoner leaves some sites' real effects exactly 0 on every span of
    a behaviour (below float32's resolution): the row counts them, the result warns (API: a
    UnresolvedSitesWarning; CLI: one warning line each), and the count survives save / load.
    Before, the row's spearman rested on the other sites with no word."""
    from lrm_interp.attribution.faithfulness import UnresolvedSitesWarning, unresolved_sites
    from lrm_interp.cli.main import main
    from lrm_interp.data.toy_tasks import generate_dataset
    from lrm_interp.model.loading import load_model

    ds = generate_dataset(2, seed=3)  # 'lrm-interp toy traces --gold --per-family 2' draws seed 3
    model, tok = load_model("toy")
    with pytest.warns(UnresolvedSitesWarning) as got:
        res = atp_faithfulness(model, ds, tokenizer=tok, alphas=(1e-2, 1.0), progress=False)
    n = len(res.site_names)
    for bi, b in enumerate(res.behaviors):
        for ai, a in enumerate(res.alphas):
            r = res.row(b, a)
            if r.n_spans == 1:  # one span: a site is unresolved iff its aggregated real score is exactly 0
                assert r.unresolved_sites == int(res.real[ai, bi].eq(0).sum())
    assert all(res.row(b, 1.0).unresolved_sites == 0 for b in res.behaviors)  # the full patch resolves every site
    bad = [r for r in res.rows if r.unresolved_sites]
    assert bad and all(r.alpha == 1e-2 and 0 < r.unresolved_sites < n for r in bad)
    assert len(got) == len(bad) == len(res.warnings)
    assert f"at {bad[0].unresolved_sites} of {n} sites" in res.warnings[0] and "larger alpha" in res.warnings[0]
    assert "sites unresolved" in repr(res)
    back = FaithfulnessResult.load(res.save(tmp_path / "f"))
    assert back.rows == res.rows and back.warnings == res.warnings
    old = res.to_dict()  # a result saved before the count (and the record's digest): unknown, no warning
    del old["record_sha256"]
    for r in old["rows"]:
        del r["unresolved_sites"]
    assert (
        FaithfulnessResult.from_dict(old).warnings == []
        and FaithfulnessResult.from_dict(old).rows[0].unresolved_sites is None
    )
    assert unresolved_sites(torch.tensor([[0.0, 1e-9, 0.0], [0.0, 0.0, 2e-9]])) == 1
    assert unresolved_sites(torch.zeros(0, 3)) == 0
    data = ds.save_jsonl(tmp_path / "t.jsonl")
    capsys.readouterr()  # the loading bars above
    argv = ["faithfulness", "--model", "toy", "--data", str(data), "--alpha", "0.01", "1", "--out", str(tmp_path / "g")]
    assert main(argv + ["--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(bad) and all(e.startswith("lrm-interp faithfulness: warning: alpha=0.01 ") for e in err)


def test_small_patches_measured_in_16_bits_are_warned(tmp_path):
    """H13-BFF: faithfulness with a bfloat16 compute dtype at alpha < 1 measured mostly rounding (the
    toy reasoner's alpha=0.1 Spearman fell from ~0.95 to ~0.7) with no word. The result warns now
    (from provenance['patching_dtype'], so also after load); float32, or alpha = 1 alone, does not."""
    from lrm_interp.attribution.atp import low_precision_note, patching_dtype
    from lrm_interp.attribution.faithfulness import UnresolvedSitesWarning

    model, tok = tiny_model("llama"), byte_tokenizer()
    ds = synthetic_traces(2, seed=5)
    kw = dict(tokenizer=tok, behaviors=["backtracking"], progress=False)
    with pytest.warns(UnresolvedSitesWarning, match=r"ran in bfloat16: .*small patches \(alpha 0.1\)"):
        res = atp_faithfulness(model, ds, alphas=(0.1, 1.0), compute_dtype="bf16", **kw)
    assert res.provenance["patching_dtype"] == "bfloat16" and "bfloat16 rounding" in res.warnings[0]
    assert FaithfulnessResult.load(res.save(tmp_path / "f")).warnings == res.warnings
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnresolvedSitesWarning)
        one = atp_faithfulness(model, ds, alphas=(1.0,), compute_dtype="bf16", **kw)  # alpha 1: no note
        f32 = atp_faithfulness(model, ds, alphas=(0.1,), **kw)
    assert one.warnings == [] and f32.provenance["patching_dtype"] == "float32" and f32.warnings == []
    # the rule itself: the model's own dtype counts when no compute dtype is given
    assert patching_dtype(tiny_model("llama").to(torch.float16), None) == torch.float16
    assert patching_dtype(tiny_model("llama"), torch.bfloat16) == torch.bfloat16
    assert low_precision_note(torch.float32, [0.1]) is None and low_precision_note("float16", [0.5, 1.0]) is not None
