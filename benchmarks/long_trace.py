"""Full-length real traces: ``attribute`` (exact, prefix cache) on SmolLM2-135M over long AIME responses.

Trace: by default the longest AIME response of the development split
(``../shared/data/r1_gpt4o_dev/``: real R1-Distill-Llama-8B responses with GPT-4o's behaviour
spans, paper layout), at token prefixes (``--lengths 4096 8192 16384``) and at full length
(``full``). ``--traces`` names other traces (``AIME_2024/6``: the long response with the most
spans). Every row runs in its own process, one after the other, so peak memory
(``ru_maxrss``, model included) is honest; a watchdog thread ends a row whose resident memory
passes ``--max-rss-gb``.

Each row is the package's own path — ``plan_attribution`` → ``dom_stage`` → ``reduce_dom`` →
``atp_stage`` → ``finish``, i.e. ``lrm_interp.attribute`` with its defaults (``method="attribution"``,
``mode="exact"``, ``prefix_cache=True``, the paper's four target behaviours) — timed stage by
stage; the prefix-cache forward inside the AtP stage is timed on its own by wrapping
``trace_cache``. A prefix is ``max_tokens=N`` (the spans cut off are dropped and counted); traces
past SmolLM2's context (8,192 positions) run with ``overlong="extrapolate"`` (rotary positions
past the trained context, counted in the result's provenance).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/long_trace.py --lengths 4096 8192 16384 full \\
        --out benchmarks/results/long_trace.json

prints a Markdown table (tokens, spans, seconds per stage, peak RSS) and the growth exponents,
and writes the rows as JSON (``--append`` merges into an existing file, replacing rows of the
same trace and length). ``--worker`` is what each subprocess runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "r1_gpt4o_dev"
OUT = Path(__file__).resolve().parent / "results" / "long_trace.json"


def _rss_mb() -> float:
    """Resident memory of this process now (MB), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _watchdog(limit_mb: float) -> None:
    """End the process (exit 3) as soon as its resident memory passes ``limit_mb``."""

    def watch() -> None:
        while True:
            rss = _rss_mb()
            if rss > limit_mb:
                sys.stderr.write(f"resident memory {rss:.0f} MB passed --max-rss-gb ({limit_mb:.0f} MB): stopped\n")
                sys.stderr.flush()
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def pick_trace(data: Path, trace: str) -> Any:
    """The trace ``trace`` of the paper-layout folder ``data``; ``"longest"``: the longest AIME response."""
    import warnings

    from lrm_interp.data.paper_layout import load_paper_layout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the parse report of the 60 files is not this benchmark's subject
        ds = load_paper_layout(data, progress=False)
    if trace == "longest":
        aime = [t for t in ds if t.id.startswith("AIME")]
        return max(aime, key=lambda t: len(t.response))
    for t in ds:
        if t.id == trace:
            return t
    raise SystemExit(f"no trace {trace!r} in {data}")


def worker(data: Path, trace_id: str, length: str, model_name: str) -> dict:
    """One row: ``attribute`` stage by stage on one trace cut at ``length`` tokens (``"full"``: uncut)."""
    import torch

    import lrm_interp.attribution.atp as atp_mod
    import lrm_interp.model.prefix_cache as pc_mod
    from lrm_interp.attribution import pipeline as P
    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.model.loading import load_model

    model, tok = load_model(model_name)
    trace = pick_trace(data, trace_id)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cache_s = [0.0]
    real_cache = pc_mod.trace_cache

    def timed_cache(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_cache(*a, **k)
        finally:
            cache_s[0] += time.perf_counter() - t0

    pc_mod.trace_cache = timed_cache  # the AtP stage's no-grad forward(s), timed apart from its windows
    if hasattr(atp_mod, "trace_cache"):  # an older atp.py that imported it by name
        atp_mod.trace_cache = timed_cache
    cfg = AttributionConfig(max_tokens=None if length == "full" else int(length), overlong="extrapolate")
    t0 = time.perf_counter()
    plan = P.plan_attribution(model, [trace], cfg, tokenizer=tok, progress=False, warn=False)
    t1 = time.perf_counter()
    dom = P.reduce_dom(plan, P.dom_stage(plan, progress=False))
    t2 = time.perf_counter()
    rss_dom = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cache_s[0] = 0.0  # the probes of the plan are not the AtP stage's
    atp = P.atp_stage(plan, dom, progress=True)
    t3 = time.perf_counter()
    res = P.finish(plan, dom, atp, warn=False)
    t4 = time.perf_counter()
    enc = plan.encoded[0]
    ov = plan.extra["overlong"]
    scored = sum(int(st.shape[0]) for k, st in atp[0].items() if k.startswith("dots/"))
    return {
        "trace": trace.id,
        "length": length,
        "characters": len(trace.text),
        "tokens": len(enc),
        "tokens_full": enc.full_length,
        "context": ov["limit"],
        "spans_labelled": len(trace.spans),
        "spans_kept": len(enc.spans),
        "spans_scored": scored,
        "spans_past_context": int(ov.get("spans_past_context", 0)),
        "last_scored_span_end": max((s.end for s in enc.spans if s.behavior in plan.behaviors), default=0),
        "behaviors": list(plan.behaviors),
        "seconds": t4 - t0,
        "plan_s": t1 - t0,
        "dom_s": t2 - t1,
        "atp_s": t3 - t2,
        "atp_cache_forward_s": cache_s[0],
        "atp_windows_s": t3 - t2 - cache_s[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_after_dom_mb": rss_dom,
        "rss_after_load_mb": rss_loaded,
        "gradient_path": res.provenance["gradient_path"]["path"],
        "scores_sum": float(res.scores.sum()),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def _run(data: Path, trace: str, length: str, model: str, max_rss_gb: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, __file__, "--worker", str(data), trace, length, model, str(max_rss_gb)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: the progress bar, live
    if r.returncode != 0:
        raise RuntimeError(f"{trace} at {length} tokens failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def slope(rows: list[dict], key: str = "seconds") -> float | None:
    """Least-squares slope of log(``key``) vs log(tokens) over ``rows`` (``None`` under 2 points)."""
    pts = [(math.log(r["tokens"]), math.log(r[key])) for r in rows if r[key] > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def table(rows: list[dict]) -> str:
    """The Markdown table of ``rows`` (sorted by trace, then tokens) and the growth exponents."""
    rows = sorted(rows, key=lambda r: (r["trace"], r["tokens"]))
    out = [
        "| trace | tokens | spans scored (kept / labelled) | spans past context | DoM forward (s) "
        "| AtP cache forward (s) | AtP windows (s) | total (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        full = " (full)" if r["length"] == "full" else ""
        out.append(
            f"| {r['trace']} | {r['tokens']:,}{full} | {r['spans_scored']} ({r['spans_kept']} / {r['spans_labelled']}) "
            f"| {r['spans_past_context']} | {r['dom_s']:.1f} | {r['atp_cache_forward_s']:.1f} "
            f"| {r['atp_windows_s']:.1f} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} |"
        )
    out.append("")
    out.append("Growth exponent (log-log slope vs tokens, over this trace's rows):")
    for tid in sorted({r["trace"] for r in rows}):
        mine = [r for r in rows if r["trace"] == tid]
        parts = []
        for key, name in (
            ("seconds", "total"),
            ("dom_s", "DoM forward"),
            ("atp_cache_forward_s", "AtP cache forward"),
            ("atp_windows_s", "AtP windows"),
        ):
            s = slope(mine, key)
            parts.append(f"{name} {'–' if s is None else f'{s:.2f}'}")
        out.append(
            f"- {tid} ({min(r['tokens'] for r in mine):,}–{max(r['tokens'] for r in mine):,}): " + ", ".join(parts)
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="paper-layout folder of the traces")
    ap.add_argument(
        "--traces", nargs="+", default=["longest"], help="trace ids, or 'longest' (the longest AIME response)"
    )
    ap.add_argument(
        "--lengths", nargs="+", default=["4096", "8192", "16384", "full"], help="token prefixes, or 'full' (uncut)"
    )
    ap.add_argument("--model", default="smollm2-135m", help="model alias or folder")
    ap.add_argument("--max-rss-gb", type=float, default=18.0, help="end a row whose resident memory passes this")
    ap.add_argument("--out", type=Path, default=OUT, help="write the rows as JSON here")
    ap.add_argument(
        "--append", action="store_true", help="merge into --out (rows of the same trace and length replaced)"
    )
    ap.add_argument("--table-only", action="store_true", help="print the table of --out and run nothing")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        data, trace, length, model, gb = a.worker
        _watchdog(float(gb) * 1024)
        print(json.dumps(worker(Path(data), trace, length, model)))
        return 0
    old = json.loads(a.out.read_text()) if (a.append or a.table_only) and a.out.exists() else []
    if a.table_only:
        print(table(old))
        return 0
    from lrm_interp import atomic_write_text

    for length in a.lengths:
        if length != "full" and not length.isdigit():
            raise SystemExit(f"--lengths: {length!r} is neither a number of tokens nor 'full'")
    rows: list[dict] = []
    for tr in a.traces:
        for length in a.lengths:
            r = _run(a.data, tr, length, a.model, a.max_rss_gb)
            rows.append(r)
            print(
                f"{r['trace']} {r['tokens']:6d} tokens {r['spans_scored']:4d} spans  {r['seconds']:8.1f} s  "
                f"peak {r['peak_rss_mb']:7.0f} MB",
                flush=True,
            )
            merged = [o for o in old if (o["trace"], o["length"]) not in {(x["trace"], x["length"]) for x in rows}]
            a.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                a.out, json.dumps(merged + rows, indent=1) + "\n"
            )  # after every row: a long run keeps its rows
    merged = [o for o in old if (o["trace"], o["length"]) not in {(x["trace"], x["length"]) for x in rows}]
    print()
    print(table(merged + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
