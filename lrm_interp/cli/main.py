"""``lrm-interp`` command line. Each subcommand mirrors a Python function:

=================  ===============================================
``quickstart``     :func:`lrm_interp.experiments.quickstart.run_quickstart`
``attribute``      :func:`lrm_interp.attribute`
``parse``          :func:`lrm_interp.load_paper_layout` / :func:`lrm_interp.load_dataset`
``compare``        :func:`lrm_interp.compare`
``protect``        :func:`lrm_interp.protect.masks.build_masks`
``quantize``       :func:`lrm_interp.compress.quant.quantize_model_`
``toy``            :mod:`lrm_interp.toy` (train / eval)
=================  ===============================================
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


def _dtype(name: str | None):
    import torch

    if name is None:
        return None
    if name not in _DTYPES:
        raise SystemExit(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
    return getattr(torch, _DTYPES[name])


def cmd_attribute(a: argparse.Namespace) -> int:
    from lrm_interp import attribute

    res = attribute(a.model, a.data, behaviors=a.behaviors, sites=a.sites, method=a.method,
                    k_context=a.k_context, negatives=a.negatives, weighting=a.weighting, mode=a.mode,
                    score=a.score, off_by_one=a.off_by_one, max_tokens=a.max_tokens,
                    gradient_checkpointing=a.gradient_checkpointing, compute_dtype=_dtype(a.compute_dtype),
                    out_dir=a.out, progress=not a.quiet)
    out = Path(a.out)
    res.write_tables(out)
    print(f"wrote {out}/attribution.json, attribution.safetensors, scores.csv, heatmap.png")
    for beh in res.behaviors:
        top = res.top(3, beh)
        print(f"  {beh:24s} " + ", ".join(f"{s} ({ri:.3f})" for _, s, ri in top))
    if res.provenance.get("skipped_spans"):
        print(f"  skipped spans: {len(res.provenance['skipped_spans'])} (see attribution.json)")
    return 0


def cmd_parse(a: argparse.Namespace) -> int:
    from lrm_interp.data.loading import load_dataset
    from lrm_interp._io import atomic_write_text

    ds = load_dataset(a.data)
    ds.save_jsonl(a.out)
    print(f"wrote {len(ds)} traces, spans per behaviour {ds.span_counts()} to {a.out}")
    rep = getattr(ds, "report", None)
    if rep is not None:
        print(rep.summary())
        if a.report:
            atomic_write_text(a.report, json.dumps(rep.to_dict(), indent=2))
            print(f"wrote the parse report to {a.report}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from lrm_interp.attribution.results import Attribution, compare
    from lrm_interp._io import atomic_write_text

    shift = compare(Attribution.load(a.original), Attribution.load(a.compressed))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    shift.write_tables(out, view=a.view)
    print(f"wrote {out}/shift.csv and shift.png")
    return 0


def cmd_quickstart(a: argparse.Namespace) -> int:
    from lrm_interp.experiments.quickstart import run_quickstart

    run_quickstart(out_dir=a.out, n_traces=a.traces, tiny=a.tiny, bits=a.bits, group_size=a.group_size,
                   n_eval=a.eval, progress=not a.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrm-interp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quickstart", help="run the whole pipeline offline on the shipped model")
    q.add_argument("--out", default="lrm_interp_quickstart")
    q.add_argument("--traces", type=int, default=24, help="traces to generate (default 24)")
    q.add_argument("--tiny", action="store_true", help="use a tiny random model (plumbing check)")
    q.add_argument("--bits", type=int, default=3, help="RTN bits of the compressed copy (default 3)")
    q.add_argument("--group-size", type=int, default=128, help="RTN group size (default 128)")
    q.add_argument("--eval", type=int, default=30, help="held-out problems to score (default 30; 0 = skip)")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=cmd_quickstart)

    at = sub.add_parser("attribute", help="score linear sites per reasoning behaviour")
    at.add_argument("--model", required=True, help="local HF model dir or 'smollm2-135m' or 'toy'")
    at.add_argument("--data", required=True, help="JSONL file or paper-layout directory")
    at.add_argument("--out", required=True, help="output directory (also used to resume)")
    at.add_argument("--behaviors", nargs="+", default=None)
    at.add_argument("--sites", default=None, help="regex selecting site names")
    at.add_argument("--method", choices=["attribution", "dom"], default="attribution")
    at.add_argument("--mode", choices=["exact", "joint"], default="exact")
    at.add_argument("--score", choices=["paper", "code"], default="paper")
    at.add_argument("--negatives", choices=["all", "response", "thinking"], default="all")
    at.add_argument("--weighting", choices=["trace", "token"], default="trace")
    at.add_argument("--k-context", type=int, default=5)
    at.add_argument("--off-by-one", action="store_true", help="the released code's gradient window")
    at.add_argument("--max-tokens", type=int, default=None)
    at.add_argument("--gradient-checkpointing", action="store_true")
    at.add_argument("--compute-dtype", default=None, help="fp32 | bf16 | fp16 autocast")
    at.add_argument("--quiet", action="store_true")
    at.set_defaults(fn=cmd_attribute)

    pa = sub.add_parser("parse", help="paper layout / JSONL -> validated JSONL + parse report")
    pa.add_argument("--data", required=True)
    pa.add_argument("--out", required=True, help="output JSONL")
    pa.add_argument("--report", default=None, help="write the parse report as JSON here")
    pa.set_defaults(fn=cmd_parse)

    c = sub.add_parser("compare", help="importance shift between two attribution results")
    c.add_argument("--original", required=True)
    c.add_argument("--compressed", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--view", choices=["decreases", "signed"], default="decreases")
    c.set_defaults(fn=cmd_compare)

    _add_optional_commands(sub)
    return p


def _add_optional_commands(sub) -> None:
    """Subcommands defined in their own modules (protect / quantize / toy)."""
    from lrm_interp.cli import protect as cli_protect
    from lrm_interp.cli import toy as cli_toy

    cli_protect.register(sub)
    cli_toy.register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"lrm-interp {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
