"""Behaviour-span weight saliency (``lrm-interp protect --saliency attribution``) per ``span_grads`` route,
side by side: seconds, peak memory, and the error of each approximation against the exact saliency.

Every method runs in its own process, so peak memory (``ru_maxrss``, model included) is honest, and
all rows of one invocation run back to back on the same machine: compare them as ratios.

Model: SmolLM2-135M-Instruct (fp32, CPU; ``lrm_interp.model.loading.load_model("smollm2-135m")``).
Traces: real R1-Distill-Llama-8B FOLIO responses with GPT-4o's behaviour spans
(``../shared/data/r1_gpt4o_dev``, paper layout), the paper's four target behaviours. Saliency:
``|G| ⊙ |W − RTN(W)|`` (``protect.saliency.attribution``, 3-bit, group 128, asymmetric: the
``protect`` defaults), ``G = Σ_s |∂L(s)/∂W|``.

Methods (``--methods``; docs/protection.md, "Span gradients"):

- ``full``: exact, one full-prefix forward+backward per span (``prefix_cache=False``: the cost
  before this option, the paper's);
- ``exact``: exact, one chunked forward per trace whose KV cache keeps its graph, one backward per
  span (the default);
- ``trace``: approximate, ``|Σ_s g_s|`` per trace and behaviour (one forward per trace, one
  backward per behaviour);
- ``window``: approximate, each span's window forward+backward against the constant cached prefix.

Error figures, each approximation against the exact saliency (``exact``, else ``full``): Spearman
ρ of the per-weight saliency (average ranks for ties) on a seeded sample of 4M weights (the same
for every method; the sampling error of ρ is ~1e-4), relative L2 over all weights
``‖S − S_exact‖ / ‖S_exact‖``, and the overlap ``|M ∩ M_exact| / |M_exact|`` of the protected sets at
``--budget`` chosen as ``protect`` does (``global_top``) and per module (``per_module_top``: what
``attribution_ri`` keeps inside a module). ``exact`` against ``full``: the maximum relative
difference (fp32 rounding).

Usage (the real run, on a quiet CPU)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/saliency_speed.py \\
        --traces FOLIO/0 FOLIO/1 FOLIO/2 FOLIO/3 FOLIO/4 FOLIO/5 \\
        --methods full exact trace window --out benchmarks/results/saliency_speed.json

prints a Markdown table and writes the JSON. ``--max-tokens N`` cuts every trace at ``N`` tokens
(spans past the cut dropped) for a quick check. The worker mode (``--worker``) is what each
subprocess runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("full", "exact", "trace", "window")
#: method -> (span_grads, prefix_cache) of protect.saliency.attribution
ROUTES = {"full": ("exact", False), "exact": ("exact", True), "trace": ("trace", True), "window": ("window", True)}
#: weights the Spearman ρ is computed on (a seeded uniform sample; all of them when fewer)
SPEARMAN_SAMPLE = 4_000_000
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "r1_gpt4o_dev"


def load_traces(data: Path, ids: list[str], tok, max_tokens: int | None):
    """The encoded traces ``ids`` of the paper-layout folder ``data`` (cut at ``max_tokens``)."""
    import warnings

    from lrm_interp.data.paper_layout import load_paper_layout
    from lrm_interp.data.tokens import encode_trace

    datasets = sorted({i.split("/")[0] for i in ids})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the parse report is not this benchmark's subject
        ds = load_paper_layout(data, datasets=datasets, progress=False)
    by_id = {t.id: t for t in ds}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"no trace {missing} in {data}")
    return [encode_trace(tok, by_id[i], max_tokens=max_tokens) for i in ids]


def worker(method: str, data: str, trace_ids: list[str], max_tokens: int | None, budget: float, out: str) -> dict:
    """One row: the saliency stream of ``method`` over the traces, timed; saliency and masks saved to ``out``."""
    import torch

    from lrm_interp.data.traces import TARGET_BEHAVIORS
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect import saliency as S
    from lrm_interp.protect.policies import build_masks

    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m")
    sites = find_sites(model)
    enc = load_traces(Path(data), trace_ids, tok, max_tokens)
    behaviors = [b for b in TARGET_BEHAVIORS if any(sp.behavior == b for e in enc for sp in e.spans)]
    span_grads, prefix_cache = ROUTES[method]
    route, reason = S.gradient_route(model, span_grads, prefix_cache=prefix_cache)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # warm-up (lazy imports, cache and head probes, allocator): the first trace cut at 96 tokens, two sites
    warm = load_traces(Path(data), trace_ids[:1], tok, 96)
    if S.scorable_spans(warm, behaviors):
        dict(S.attribution(model, sites[:2], warm, behaviors, span_grads=span_grads, prefix_cache=prefix_cache))
    n = sum(s.n_weights for s in sites)
    flat = torch.empty(n)
    t0 = time.perf_counter()
    stream = S.attribution(
        model, sites, enc, behaviors, span_grads=span_grads, prefix_cache=prefix_cache, progress=False
    )
    i = 0
    for s, sal in stream:
        flat[i : i + s.n_weights] = sal.reshape(-1)
        i += s.n_weights
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def views():
        j = 0
        for s in sites:
            yield s, flat[j : j + s.n_weights].view(s.out_features, s.in_features)
            j += s.n_weights

    masks = {}
    for policy in ("global_top", "per_module_top"):
        ms = build_masks(sites, policy, budget, saliency=views())
        masks[policy] = torch.cat(
            [
                ms[s.name].dense().reshape(-1) if s.name in ms else torch.zeros(s.n_weights, dtype=torch.bool)
                for s in sites
            ]
        )
    torch.save({"saliency": flat, "masks": masks}, out)
    return {
        "method": method,
        "span_grads": span_grads,
        "prefix_cache": prefix_cache,
        "route": route,
        "route_reason": reason,
        "traces": trace_ids,
        "tokens": [len(e) for e in enc],
        "spans": len(S.scorable_spans(enc, behaviors)),
        "behaviors": behaviors,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rss_after_load_mb": rss_loaded,
        "threads": torch.get_num_threads(),
        "weights": n,
    }


def _ranks(x):
    """Average ranks (ties share the mean of their positions), float64."""
    import torch

    v, idx = torch.sort(x)
    _, inv, counts = torch.unique_consecutive(v, return_inverse=True, return_counts=True)
    del v
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    r = torch.empty(x.numel(), dtype=torch.float64)
    r[idx] = avg[inv]
    return r


def errors(ref_path: str, path: str) -> dict:
    """The error figures of one method's saliency against the reference's (module docs)."""
    import torch

    ref, got = torch.load(ref_path), torch.load(path)
    a, b = ref["saliency"].double(), got["saliency"].double()
    out = {
        "rel_l2": float((b - a).norm() / a.norm()),
        "max_rel_diff": float((b - a).abs().max() / a.abs().max()),
    }
    del a, b
    # Spearman on a seeded sample of weights (the same for every method): ranks of 100M+ values are slow
    n = ref["saliency"].numel()
    pick = (
        torch.randperm(n, generator=torch.Generator().manual_seed(0))[:SPEARMAN_SAMPLE] if n > SPEARMAN_SAMPLE else None
    )
    ra = _ranks(ref["saliency"] if pick is None else ref["saliency"][pick])
    ra -= ra.mean()
    rb = _ranks(got["saliency"] if pick is None else got["saliency"][pick])
    rb -= rb.mean()
    out["spearman_sample"] = int(ra.numel())
    out["spearman"] = float((ra * rb).sum() / (ra.norm() * rb.norm()))
    del ra, rb
    for policy, m in ref["masks"].items():
        mm = got["masks"][policy]
        out[f"overlap_{policy}"] = float((m & mm).sum()) / max(int(m.sum()), 1)
    return out


def _run(args: list[str]) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="paper-layout folder (default: ../shared/data/r1_gpt4o_dev)")
    ap.add_argument(
        "--traces", nargs="+", default=[f"FOLIO/{j}" for j in range(6)], help="trace ids (default FOLIO/0..5)"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    ap.add_argument("--max-tokens", type=int, default=None, help="cut every trace at this many tokens")
    ap.add_argument("--budget", type=float, default=0.02, help="mask budget of the overlap figures")
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        row = worker(a.worker[0], a.data, a.traces, a.max_tokens, a.budget, a.worker[1])
        print(json.dumps(row))
        return 0
    common = ["--data", a.data, "--budget", str(a.budget), "--traces", *a.traces]
    if a.max_tokens is not None:
        common += ["--max-tokens", str(a.max_tokens)]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="saliency_speed_") as tmp:
        files = {m: str(Path(tmp) / f"{m}.pt") for m in a.methods}
        for m in a.methods:
            rows[m] = r = _run(["--worker", m, files[m], *common])
            print(
                f"{m:7s} {r['route']:14s} {sum(r['tokens']):6d} tokens {r['spans']:4d} spans "
                f"{r['seconds']:9.2f} s  peak {r['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
        ref = "exact" if "exact" in rows else "full" if "full" in rows else None
        for m in a.methods:
            if ref is not None and m != ref:
                rows[m]["vs"] = ref
                rows[m]["errors"] = errors(files[ref], files[m])
    base = rows.get("full")
    print(
        f"\n| method | route | time (s) | peak RSS (MB) | speed-up vs full | Spearman ρ | rel. L2 "
        f"| top-{100 * a.budget:g}% overlap (global) | (per module) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        sp = f"{base['seconds'] / r['seconds']:.1f}×" if base else "–"
        r["speedup_vs_full"] = base["seconds"] / r["seconds"] if base else None
        e = r.get("errors")
        if e is None:
            cells = "– | – | – | –"
        elif m == "exact" or (m == "full" and ref == "exact"):
            cells = (
                f"exact (max rel. diff {e['max_rel_diff']:.1e}) | {e['rel_l2']:.1e} "
                f"| {e['overlap_global_top']:.4f} | {e['overlap_per_module_top']:.4f}"
            )
        else:
            cells = (
                f"{e['spearman']:.4f} | {e['rel_l2']:.3f} | {e['overlap_global_top']:.4f} "
                f"| {e['overlap_per_module_top']:.4f}"
            )
        print(f"| {m} | {r['route']} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {sp} | {cells} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(list(rows.values()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
