"""Attribution patching: fast path vs naive reference, finite differences, real activation
patching on a trained model, joint vs exact, memory-discipline plumbing, patching primitive."""

from __future__ import annotations

import types

import pytest
import torch
from reference_impl import naive_atp_dots, naive_scores
from synth import synthetic_traces

from lrm_interp.attribution.atp import atp_aggregate, atp_trace_stats, compute_atp
from lrm_interp.attribution.dom import compute_dom
from lrm_interp.attribution.results import relative_importance
from lrm_interp.attribution.stats import spearman
from lrm_interp.data.tokens import encode_trace, target_positions
from lrm_interp.data.traces import TARGET_BEHAVIORS
from lrm_interp.model.forward import logits_at, logits_path, span_losses
from lrm_interp.model.patching import add_to_outputs
from lrm_interp.model.sites import Site, find_sites, get_module
from lrm_interp.testing import byte_tokenizer, tiny_model

BEHS = ["backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge"]


@pytest.fixture(scope="module")
def encoded():
    """4 traces; trace 2 lacks example-testing; trace 0 has overlapping spans."""
    ds = synthetic_traces(4, seed=3, skip={2: {"example-testing"}}, overlap=True)
    return [encode_trace(byte_tokenizer(), t, k_context=5) for t in ds]


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- vs naive
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_atp_equals_naive(arch, encoded):
    model = tiny_model(arch)
    sites = find_sites(model)
    names = [s.name for s in sites]
    vecs = compute_dom(model, encoded, sites, BEHS, progress=False).vectors
    ref_model = tiny_model(arch)
    for mode in ("exact", "joint"):
        for off in (False, True):
            stats = [atp_trace_stats(model, e, sites, BEHS, vecs, mode=mode, off_by_one=off) for e in encoded]
            dots = naive_atp_dots(ref_model, encoded, names, BEHS, vecs, mode=mode, off_by_one=off)
            for b in BEHS:  # per-span dots
                fast = torch.cat([st[f"dots/{b}"] for st in stats])
                exp = torch.tensor([[d[n] for n in names] for d in dots[b][0]], dtype=torch.float64)
                torch.testing.assert_close(fast, exp, rtol=1e-5, atol=1e-8)
            for score in ("paper", "code"):
                res = atp_aggregate(stats, sites, BEHS, score=score)
                ref = naive_scores(dots, names, score=score)
                for i, b in enumerate(BEHS):
                    exp = torch.tensor([ref[b][n] for n in names], dtype=torch.float64)
                    torch.testing.assert_close(res.scores[i], exp, rtol=1e-5, atol=1e-9)
                    assert res.scores[i].min() > 0
    assert res.n_traces == {"backtracking": 4, "uncertainty-estimation": 4, "example-testing": 3, "adding-knowledge": 4}
    assert res.n_spans["uncertainty-estimation"] == 5 and res.n_skipped == {b: 0 for b in BEHS}
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert _hooks_left(model) == 0


def test_paper_and_code_scores_and_ri_by_hand():
    sites = [Site(f"s{i}", 0, "mlp", "up", 2, 2, 4, 4, "Linear") for i in range(2)]
    stats = [
        {"dots/x": torch.tensor([[1.0, -2.0], [-3.0, 1.0]], dtype=torch.float64)},
        {"dots/x": torch.tensor([[0.5, 4.0]], dtype=torch.float64)},
        {"dots/x": torch.zeros(0, 2, dtype=torch.float64), "skipped/x": torch.tensor([2.0])},
    ]
    p = atp_aggregate(stats, sites, ["x", "y"], score="paper")
    assert p.scores[0].tolist() == [pytest.approx(1.5 / 2), pytest.approx(3 / 2)]
    assert p.scores[1].tolist() == [0.0, 0.0]
    c = atp_aggregate(stats, sites, ["x"], score="code")
    assert c.scores[0].tolist() == [pytest.approx(4.5 / 3), pytest.approx(7 / 3)]
    assert p.n_traces == {"x": 2, "y": 0} and p.n_spans == {"x": 3, "y": 0} and p.n_skipped == {"x": 2, "y": 0}
    ri = relative_importance(p.scores)
    assert ri[0].tolist() == [pytest.approx(1.5 / 4.5), pytest.approx(3 / 4.5)] and ri[1].tolist() == [0, 0]
    torch.testing.assert_close(relative_importance(c.scores).sum(-1), torch.ones(1, dtype=torch.float64))


def test_off_by_one_window(encoded):
    """The code's window [start, end) includes the last input position (zero gradient in exact
    mode), so its dot is (n-1)/n times the mean over [start, end-1)."""
    model = tiny_model("llama")
    sites = find_sites(model)
    vecs = compute_dom(model, encoded, sites, ["backtracking"], progress=False).vectors
    e = encoded[1]
    s = e.spans_of("backtracking")[0]
    assert target_positions(s) == (s.start - 1, s.end - 1)
    assert target_positions(s, off_by_one=True) == (s.start, s.end)
    names = [x.name for x in sites]
    off = atp_trace_stats(model, e, sites, ["backtracking"], vecs, off_by_one=True)["dots/backtracking"][0]
    # naive gradients over [start, end-1): the off-by-one sum without its zero last term
    import torch.nn.functional as F
    from reference_impl import _forward_store

    for p in model.parameters():
        p.requires_grad_(False)
    logits, outs = _forward_store(model, e.input_ids[None, : s.end], names)
    loss = F.cross_entropy(logits[0, s.start - 1 : s.end - 1], e.input_ids[s.start : s.end])
    grads = torch.autograd.grad(loss, [outs[n] for n in names])
    assert all(float(g[0, s.end - 1].abs().max()) == 0.0 for g in grads)
    n = len(s)
    exp = torch.tensor(
        [
            float(vecs["backtracking"][nm].double() @ g[0, s.start : s.end - 1].double().sum(0)) / n
            for nm, g in zip(names, grads)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(off, exp, rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------- finite differences
def _exact_float64(model):
    """float64 model whose RMSNorm and attention stay in float64 (HF upcasts those to float32,
    which would put ~1e-7 rounding noise into finite differences)."""
    model = model.double()

    def rms(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.forward = types.MethodType(rms, m)
    model.set_attn_implementation("sdpa")
    return model


@pytest.mark.parametrize("mode", ["exact", "joint"])
def test_finite_differences(mode, encoded):
    """(L(a + ε·û on s's window) − L(a − ε·û)) / 2ε == Σ_t û·∂L/∂a_t == |window| · (AtP dot),
    with L = L(s) in exact mode and Σ_{s'} L(s') over the behaviour's spans in joint mode."""
    model = _exact_float64(tiny_model("llama"))
    sites = find_sites(model)
    b = "uncertainty-estimation"
    vecs = {
        k: {n: v.double() for n, v in d.items()}
        for k, d in compute_dom(model, encoded, sites, [b], progress=False).vectors.items()
    }
    e = encoded[0]  # two overlapping spans of b
    spans = e.spans_of(b)
    st = atp_trace_stats(model, e, sites, [b], vecs, mode=mode)
    eps = 1e-3
    L = max(s.end for s in spans)
    for k, s in enumerate(spans):
        p0, p1 = target_positions(s)
        ids = e.input_ids[None, : s.end] if mode == "exact" else e.input_ids[None, :L]
        scored = [s] if mode == "exact" else spans
        mask = torch.zeros(1, ids.shape[1], dtype=torch.float64)
        mask[0, p0:p1] = 1
        for j, site in enumerate(sites):
            with torch.no_grad():
                v = vecs[b][site.name]
                with add_to_outputs(model, {site.name: (v, mask)}, alpha=eps):
                    lp = span_losses(model, ids, scored).sum()
                with add_to_outputs(model, {site.name: (v, mask)}, alpha=-eps):
                    lm = span_losses(model, ids, scored).sum()
            fd = float((lp - lm) / (2 * eps))
            assert fd == pytest.approx(float(st[f"dots/{b}"][k, j]) * (p1 - p0), rel=1e-4, abs=1e-10)


# ----------------------------------------------------------------------------- trained model
def trained_reasoner():
    """``(source, model, encoded traces)`` with trained weights: the shipped toy reasoner
    (``"toy"``) when present, else (``"tiny"``) a tiny llama trained here for 150 AdamW steps on
    synthetic traces (fixed seed)."""
    try:
        from lrm_interp.toy import load_toy_model
        from lrm_interp.toy.tasks import generate_dataset

        model, tok = load_toy_model()
        ds = generate_dataset(4, seed=321)
        return "toy", model, [encode_trace(tok, t) for t in ds]
    except (ImportError, FileNotFoundError):
        pass
    torch.manual_seed(0)
    tok = byte_tokenizer()
    model = tiny_model("llama", seed=0).train()
    texts = [t.text for t in synthetic_traces(32, seed=11)]
    batch = tok(texts, return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(texts), (8,), generator=g)
        ids, att = batch["input_ids"][idx], batch["attention_mask"][idx]
        loss = model(input_ids=ids, attention_mask=att, labels=ids.masked_fill(att == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return "tiny", model, [encode_trace(tok, t) for t in synthetic_traces(6, seed=3)]


@pytest.fixture(scope="module")
def trained():
    return trained_reasoner()


def atp_vs_patching(model, encoded, behavior: str, vectors, *, alpha: float = 1.0):
    """Per site: AtP estimate α·Σ_spans û·Σ_t ∂L(s)/∂a_t vs real ΔL = Σ_spans L(s | a + α·û on the
    span's target positions) − L(s). Returns two ``[n_sites]`` float64 tensors."""
    sites = find_sites(model)
    est = torch.zeros(len(sites), dtype=torch.float64)
    real = torch.zeros(len(sites), dtype=torch.float64)
    for e in encoded:
        spans = e.spans_of(behavior)
        if not spans:
            continue
        st = atp_trace_stats(model, e, sites, [behavior], vectors)
        for k, s in enumerate(spans):
            p0, p1 = target_positions(s)
            est += alpha * (p1 - p0) * st[f"dots/{behavior}"][k]
            ids = e.input_ids[None, : s.end]
            mask = torch.zeros(1, s.end)
            mask[0, p0:p1] = 1
            with torch.no_grad():
                base = float(span_losses(model, ids, [s])[0])
                assert base == pytest.approx(float(st[f"loss/{behavior}"][k]), rel=1e-5)
                for j, site in enumerate(sites):
                    with add_to_outputs(model, {site.name: (vectors[behavior][site.name], mask)}, alpha=alpha):
                        real[j] += float(span_losses(model, ids, [s])[0]) - base
    return est, real


# Spearman floors per (model, alpha), set below measured values. Measured on the shipped toy
# reasoner (28 sites, 12 traces of seed 321): backtracking 0.195 / 0.981, adding-knowledge
# 0.837 / 0.995 at alpha 1 / 0.1; fallback tiny llama, 14 sites: 0.23 / 0.886 and 0.525 / 0.974.
# At alpha=1 (a full û patch, |û| = |ā_all|) the effect is far from linear, so only the
# alpha=0.1 agreement is asserted; the alpha=1 figure is printed and reported in docs/method.md.
FLOORS = {"toy": {1.0: -1.0, 0.1: 0.9}, "tiny": {1.0: -1.0, 0.1: 0.8}}


@pytest.mark.parametrize("behavior", ["backtracking", "adding-knowledge"])
def test_atp_matches_real_activation_patching(trained, behavior):
    source, model, enc = trained
    sites = find_sites(model)
    vecs = compute_dom(model, enc, sites, [behavior], progress=False).vectors
    for alpha, floor in FLOORS[source].items():
        est, real = atp_vs_patching(model, enc, behavior, vecs, alpha=alpha)
        rho = spearman(est, real)
        print(
            f"\n{source} {behavior}: AtP vs real patching (alpha={alpha}), spearman over {len(sites)} sites = {rho:.3f}"
        )
        assert rho > floor


def test_joint_vs_exact_ranking(trained):
    _, model, enc = trained
    sites = find_sites(model)
    behs = [b for b in TARGET_BEHAVIORS if any(e.spans_of(b) for e in enc)]
    vecs = compute_dom(model, enc, sites, behs, progress=False).vectors
    ex = compute_atp(model, enc, sites, behs, vecs, mode="exact", progress=False).scores
    jo = compute_atp(model, enc, sites, behs, vecs, mode="joint", progress=False).scores
    rhos = [spearman(ex[i], jo[i]) for i in range(len(behs))]
    print("\njoint vs exact site-ranking spearman:", dict(zip(behs, [round(r, 3) for r in rhos])))
    assert min(rhos) > 0.8


# ----------------------------------------------------------------------------- plumbing
def test_gradient_checkpointing_recomputes_and_matches(encoded):
    model = tiny_model("llama")
    sites = find_sites(model)
    vecs = compute_dom(model, encoded[:2], sites, BEHS, progress=False).vectors
    base = [atp_trace_stats(model, e, sites, BEHS, vecs) for e in encoded[:2]]
    fired = []
    h = get_module(model, sites[0].name).register_forward_hook(lambda m, a, o: fired.append(1))
    gc = [atp_trace_stats(model, e, sites, BEHS, vecs, gradient_checkpointing=True) for e in encoded[:2]]
    h.remove()
    n_passes = sum(len(e.spans_of(b)) for e in encoded[:2] for b in BEHS)
    assert len(fired) >= 2 * n_passes  # every layer forward ran again in the backward
    for a, b in zip(base, gc):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-9)
    assert not model.training and not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert not any(m.training for m in model.modules()) and _hooks_left(model) == 0


def test_bf16_autocast_close_to_fp32(encoded):
    model = tiny_model("llama")
    sites = find_sites(model)
    vecs = compute_dom(model, encoded, sites, BEHS, progress=False).vectors
    a = compute_atp(model, encoded, sites, BEHS, vecs, progress=False).scores
    b = compute_atp(model, encoded, sites, BEHS, vecs, compute_dtype=torch.bfloat16, progress=False).scores
    assert b.dtype == torch.float64
    assert spearman(a.flatten(), b.flatten()) > 0.9
    assert not torch.equal(a, b)  # autocast really ran


def test_logits_only_at_targets_and_fallback(encoded):
    """The head sees only the target positions; a model whose logits the split cannot
    reproduce falls back to full logits and still matches the naive reference."""
    model = tiny_model("llama")
    assert logits_path(model) == "split"
    e = encoded[0]
    ids = e.input_ids[None, :50]
    pos = torch.tensor([3, 10, 48])
    shapes = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        got = logits_at(model, ids, pos)
        full = model(input_ids=ids).logits[0, pos]
    h.remove()
    assert shapes[0] == (3, 259)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)

    class Scaled(type(model)):
        def forward(self, *args, **kwargs):  # post-processes logits: the split would be wrong
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5
            return out

    model = tiny_model("llama")
    model.__class__ = Scaled
    assert logits_path(model) == "full"
    sites = find_sites(model)[:3]
    names = [s.name for s in sites]
    vecs = compute_dom(model, encoded[:2], sites, ["backtracking"], progress=False).vectors
    st = [atp_trace_stats(model, x, sites, ["backtracking"], vecs) for x in encoded[:2]]
    ref = naive_atp_dots(model, encoded[:2], names, ["backtracking"], vecs)
    exp = torch.tensor([[d[n] for n in names] for d in ref["backtracking"][0]], dtype=torch.float64)
    torch.testing.assert_close(torch.cat([x["dots/backtracking"] for x in st]), exp, rtol=1e-5, atol=1e-9)


def test_user_flags_restored_and_hooks_removed_on_error(encoded):
    model = tiny_model("llama")
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    sites = find_sites(model)
    vecs = compute_dom(model, encoded[:1], sites, ["backtracking"], progress=False).vectors
    bad = {"backtracking": {k: v[:-1] for k, v in vecs["backtracking"].items()}}  # wrong size
    with pytest.raises(RuntimeError):
        atp_trace_stats(model, encoded[0], sites, ["backtracking"], bad)
    assert [p.requires_grad for p in model.parameters()] == flags and _hooks_left(model) == 0
    with pytest.raises(KeyError, match="no steering vectors"):
        atp_trace_stats(model, encoded[0], sites, ["backtracking", "adding-knowledge"], vecs)
    with pytest.raises(ValueError, match="mode"):
        atp_trace_stats(model, encoded[0], sites, ["backtracking"], vecs, mode="approx")


# ----------------------------------------------------------------------------- patching primitive
def test_add_to_outputs_positions_and_cleanup():
    model = tiny_model("qwen2")
    site = "model.layers.1.mlp.up_proj"
    mod = get_module(model, site)
    v = torch.randn(mod.out_features)
    ids = torch.randint(0, 256, (2, 7))

    def out_with(additions=None, alpha=1.0):
        """The site's output as the next module sees it (observer registered after the patch)."""
        seen = []
        with torch.no_grad(), add_to_outputs(model, additions or {}, alpha=alpha):
            h = mod.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
            try:
                model(input_ids=ids)
            finally:
                h.remove()
        return seen[0]

    base = out_with()
    mask = torch.zeros(2, 7)
    mask[0, 2] = mask[1, 5] = 1
    d = out_with({site: (v, mask)}, alpha=2.0) - base
    torch.testing.assert_close(d[0, 2], 2 * v)
    torch.testing.assert_close(d[1, 5], 2 * v)
    assert d.abs().sum() == pytest.approx(float(4 * v.abs().sum()), rel=1e-5)
    sliced = out_with({site: (v, slice(3, 5))}) - base
    torch.testing.assert_close(sliced[:, 3:5], v.expand(2, 2, -1))
    assert sliced[:, :3].abs().max() == 0 and sliced[:, 5:].abs().max() == 0
    torch.testing.assert_close(out_with({site: (v, None)}, alpha=-1.0) - base, -v.expand(2, 7, -1))
    torch.testing.assert_close(
        out_with({site: (v, [0, 6])}) - base,
        (mask * 0).unsqueeze(-1)
        + torch.stack([v if t in (0, 6) else torch.zeros_like(v) for t in range(7)]).expand(2, 7, -1),
    )
    assert _hooks_left(model) == 0

    with pytest.raises(ZeroDivisionError):
        with add_to_outputs(model, {site: (v, None)}):
            _ = 1 / 0
    assert _hooks_left(model) == 0
    with pytest.raises(ValueError, match="sequence length"):
        with torch.no_grad(), add_to_outputs(model, {site: (v, torch.ones(5))}):
            model(input_ids=ids)
    assert _hooks_left(model) == 0
    with pytest.raises(ValueError, match="1-D"):
        with add_to_outputs(model, {site: (v[None], None)}):
            pass
