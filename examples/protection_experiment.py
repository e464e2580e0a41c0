"""The matched-bits protection experiment on the shipped toy reasoning model, from the planner.

For each bit width and quantizer (RTN, GPTQ), every row of
:class:`lrm_interp.experiments.protection.ProtectionPlanner` — no protection; 2 % of weights kept
in FP16 by each saliency; the paper's final-layer MLP; module-level mixed precision; under GPTQ
behaviour-guided Hessians; plain (b+1)-bit — quantizes a copy of the model, and its accuracy per
task family on held-out problems is measured here. Every row states its exact bits per weight.
"recovered" = (acc − acc_unprotected) / (acc_fp32 − acc_unprotected).

``lrm-interp experiment protection`` runs one (bits, quantizer) of this, resumable, with Wilson
intervals, table.md / table.csv / plot (docs/protection.md); this script shows the planner as a
library piece: the GPTQ planner shares the RTN planner's attribution and masks.

usage: python examples/protection_experiment.py [--per-family 50] [--bits 3 2] [--group-size 128]
       [--symmetric | --asymmetric] [--only TEXT ...] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrm_interp import ExperimentSettings, ProtectionPlanner, atomic_write_text
from lrm_interp.toy import load_toy_model
from lrm_interp.toy.evaluate import evaluate
from lrm_interp.toy.tasks import FAMILIES, model_world, problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=50)
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 2])
    ap.add_argument("--group-size", type=int, default=128, help="0 = per channel")
    ap.add_argument("--budget", type=float, default=0.02)
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument(
        "--symmetric",
        dest="symmetric",
        action="store_true",
        default=False,
        help="symmetric grid (no zero-point), all rows; default: asymmetric",
    )
    grid.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_false",
        default=False,
        help="min-max grid with a zero-point (the default)",
    )
    ap.add_argument("--methods", nargs="+", default=["rtn", "gptq"])
    ap.add_argument("--only", nargs="+", default=None, help="rows whose label contains one of these (+ fp, none)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t0 = time.time()
    model, tok = load_toy_model()
    held = problems(a.per_family, seed=2, world=model_world(model))
    fp = evaluate(model, tok, held, batch_size=150)
    lines = [
        f"Toy reasoner, {a.per_family} held-out problems per family, group size {a.group_size or 'per channel'}, "
        f"{'symmetric' if a.symmetric else 'asymmetric'} grid, budget {a.budget:.0%}; "
        "attribution from 8 gold-annotated traces per family.",
        "",
        "| quantizer | protection | bits/weight | " + " | ".join(FAMILIES) + " | mean | recovered |",
        "|---|---|---|" + "---|" * (len(FAMILIES) + 2),
        "| fp32 | – | 32 | " + " | ".join(f"{100 * fp[f]:.0f}" for f in FAMILIES) + f" | {100 * fp['mean']:.1f} | |",
    ]
    print("\n".join(lines), flush=True)
    for bits in a.bits:
        planner = ProtectionPlanner(
            model,
            tok,
            ExperimentSettings(
                bits=bits,
                quantizer=a.methods[0],
                per_family=a.per_family,
                group_size=a.group_size or None,
                symmetric=a.symmetric,
                budget=a.budget,
            ),
            progress=False,
        )
        for method in a.methods:
            planner = planner.with_quantizer(method)  # shares the attribution and masks computed so far
            base = None
            for row in planner.select(a.only):
                if row.kind == "fp":
                    continue
                q = copy.deepcopy(model)
                bpw, _ = row.quantize(q)
                acc = evaluate(q, tok, held, batch_size=150)
                del q
                if row.kind == "none":
                    base = acc["mean"]
                gap = fp["mean"] - base
                rec = "" if row.kind == "none" or gap <= 0 else f"{100 * (acc['mean'] - base) / gap:.0f}%"
                line = (
                    f"| {method.upper()} {bits}-bit | {row.label} | {bpw:.3f} | "
                    + " | ".join(f"{100 * acc[f]:.0f}" for f in FAMILIES)
                    + f" | {100 * acc['mean']:.1f} | {rec} |"
                )
                lines.append(line)
                print(line, flush=True)
    lines += [
        "",
        f"({time.time() - t0:.0f} s on this machine; `python examples/protection_experiment.py "
        f"--per-family {a.per_family} --bits {' '.join(map(str, a.bits))} --group-size {a.group_size} "
        f"--{'symmetric' if a.symmetric else 'asymmetric'}`)",
    ]
    if a.out:
        atomic_write_text(a.out, "\n".join(lines) + "\n")  # temp file + rename: never a half-written table


if __name__ == "__main__":
    main()
