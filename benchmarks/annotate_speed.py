"""Annotation speed on real traces: seconds per trace vs trace length, side by side in one run.

Rows (each trace timed alone, in this process; run the script on a quiet machine):

- ``rules``: ``R1RuleAnnotator`` through :func:`annotate_response` — the offsets come from the
  annotator's own sentences (no alignment);
- ``rules via markup``: the same labels written as the paper's markup and placed by the
  aligner (:func:`annotate_trace`), the route every annotator took before (and the route an
  LLM's output still takes): the aligner's cost on a trace with one segment per sentence;
- ``rules via markup, aligner at REV`` (``--before REV``): the same, with ``data/align.py`` as it
  was at git revision ``REV`` (e.g. ``f2a09cd``, before the in-order sweep and the greedy shortcut);
- ``trained``: a ``LinearAnnotator`` (fitted on the other traces of the set, so it is a real one)
  through :func:`annotate_response`;
- ``annotation file``: parsing + aligning the trace's own annotation file (GPT-4o's, in the
  paper's layout).

Usage (the development split of the seed paper's released outputs)::

    python benchmarks/annotate_speed.py --data ../shared/data/r1_gpt4o_dev \\
        --out benchmarks/results/annotate_speed.json

prints a Markdown table (totals, the slowest trace, seconds per 10k characters by length
bucket) and writes every per-trace time to the JSON. Targets (issue 20): the whole set
annotated in ≤ 30 s, no trace over 2 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def old_align(rev: str):
    """``align_segments`` of ``lrm_interp/data/align.py`` at git revision ``rev`` (a throwaway module)."""
    import importlib.util
    import subprocess
    import tempfile

    if rev in _OLD:
        return _OLD[rev]
    src = subprocess.run(
        ["git", "show", f"{rev}:lrm_interp/data/align.py"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"align_{rev}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"align_{rev}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]  # a .py file always has a loader
    _OLD[rev] = mod.align_segments
    return mod.align_segments


_OLD: dict = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="paper-layout folder (outputs/ and annotated/)")
    ap.add_argument("--out", default=None, help="JSON file for the per-trace times")
    ap.add_argument("--skip-markup", action="store_true", help="leave out the 'rules via markup' rows")
    ap.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="add a 'rules via markup' row with data/align.py from this git revision (slow), e.g. f2a09cd",
    )
    a = ap.parse_args(argv)

    import torch

    from lrm_interp.data.annotators.base import annotate_response, markup, thinking_part
    from lrm_interp.data.annotators.r1 import R1RuleAnnotator
    from lrm_interp.data.annotators.trained import LinearAnnotator
    from lrm_interp.data.paper_layout import annotate_trace, load_paper_layout

    torch.set_num_threads(1)
    gold = load_paper_layout(a.data, progress=False)
    files = {t.id: Path(t.metadata["annotation_file"]) for t in gold if t.metadata.get("annotation_file")}
    rules = R1RuleAnnotator()
    half = [t for i, t in enumerate(gold) if i % 2 and t.spans]
    trained = LinearAnnotator.fit(half)  # a real fitted model; its speed does not depend on the fit
    before_key = f"rules via markup, aligner at {a.before}"
    rows = []
    for t in tqdm(list(gold), desc="traces"):
        think = thinking_part(t.response)
        r = {"id": t.id, "chars": len(t.response), "thinking_chars": len(think)}
        r["rules"] = _timed(lambda t=t: annotate_response(t.response, rules))
        if not a.skip_markup:
            mk = markup([(lab, s.text) for s, lab in rules.label_sentences(think)])
            r["rules via markup"] = _timed(lambda t=t, mk=mk: annotate_trace(t.response, mk))
            if a.before:
                import lrm_interp.data.paper_layout as pl

                current = pl.align_segments
                pl.align_segments = old_align(a.before)
                try:
                    r[before_key] = _timed(lambda t=t, mk=mk: annotate_trace(t.response, mk))
                finally:
                    pl.align_segments = current
        r["trained"] = _timed(lambda t=t: annotate_response(t.response, trained))
        if t.id in files:
            text = files[t.id].read_text(encoding="utf-8")
            r["annotation file"] = _timed(lambda t=t, text=text: annotate_trace(t, text, source=str(files[t.id])))
        rows.append(r)
    kinds = [
        k for k in ("rules", "rules via markup", before_key, "trained", "annotation file") if any(k in r for r in rows)
    ]
    buckets = [(0, 10_000), (10_000, 40_000), (40_000, 10**9)]
    lines = [
        f"{len(rows)} traces, {sum(r['chars'] for r in rows):,} characters; "
        f"{platform.processor() or platform.machine()}, 1 thread",
        "",
        "| route | total s | slowest trace s (chars) | s / 10k chars, < 10k | 10k–40k | > 40k |",
        "|---|---|---|---|---|---|",
    ]
    for k in kinds:
        have = [r for r in rows if k in r]
        slow = max(have, key=lambda r: r[k])
        per = []
        for lo, hi in buckets:
            b = [r for r in have if lo <= r["chars"] < hi]
            per.append(f"{1e4 * sum(r[k] for r in b) / max(sum(r['chars'] for r in b), 1):.4f}" if b else "–")
        lines.append(
            f"| {k} | {sum(r[k] for r in have):.2f} | {slow[k]:.2f} ({slow['chars']:,}) | " + " | ".join(per) + " |"
        )
    print("\n".join(lines))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(
            json.dumps(
                {
                    "data": str(a.data),
                    "python": sys.version.split()[0],
                    "machine": platform.machine(),
                    "table": lines,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
