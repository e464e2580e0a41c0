"""Accuracy of the shipped toy reasoning model per task family under quantization and pruning.

usage: python examples/toy_compression_table.py [--per-family 100] [--group-size 32] [--seed 2]
Prints a markdown table (the one in docs/toy_model.md).
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrm_interp import prune_model_, quantize_model_
from lrm_interp.toy import load_toy_model
from lrm_interp.toy.evaluate import evaluate
from lrm_interp.toy.tasks import FAMILIES, problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-family", type=int, default=100)
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=50)
    a = ap.parse_args()
    model, tok = load_toy_model()
    held = problems(a.per_family, seed=a.seed)
    rows = [("full precision (fp32)", model)]
    grids = [
        (4, a.group_size, False),
        (3, a.group_size, False),
        (3, 64, False),
        (3, 128, False),
        (3, None, False),
        (2, a.group_size, False),
        (4, 128, True),
        (3, 128, True),
        (3, None, True),
    ]
    for bits, g, sym in grids:  # asymmetric (min-max, zero-point) and symmetric (GPTQ's convention) grids
        q = copy.deepcopy(model)
        quantize_model_(q, bits=bits, group_size=g, symmetric=sym, progress=False)
        rows.append((f"RTN {bits}-bit, " + (f"group {g}" if g else "per channel") + (", symmetric" if sym else ""), q))
    for sp in (0.3, 0.5, 0.7):
        p = copy.deepcopy(model)
        prune_model_(p, "magnitude", sp, progress=False)
        rows.append((f"magnitude pruning {int(sp * 100)}%", p))
    print(f"| model ({a.per_family} held-out problems per family) | " + " | ".join(FAMILIES) + " | mean |")
    print("|---|" + "---|" * (len(FAMILIES) + 1))
    for name, m in rows:
        acc = evaluate(m, tok, held, batch_size=a.batch_size)
        print(
            f"| {name} | " + " | ".join(f"{100 * acc[f]:.0f}" for f in FAMILIES) + f" | {100 * acc['mean']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
