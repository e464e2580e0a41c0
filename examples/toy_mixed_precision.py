"""Module-level mixed precision on the shipped toy reasoner: bits per module allocated by
attribution importance, by Hessian trace, or by nothing (plain weight error), against uniform
b and b+1 bits, at matched bits per weight (every allocation row has exactly the budget or less).

usage: python examples/toy_mixed_precision.py [--per-family 30] [--bits 3] [--symmetric] [--method rtn|gptq]
    [--extra 0 0.25 0.5]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lrm_interp import (
    allocate_bits,
    attribute,
    bits_per_weight,
    build_masks,
    build_saliency,
    calibration_ids,
    find_sites,
    quantization_errors,
    quantize_allocation_,
    quantize_model_,
    uniform_allocation,
    wilson_interval,
)
from lrm_interp.compress.calibration import layer_hessians
from lrm_interp.protect.bit_allocation import hessian_sensitivity
from lrm_interp.toy import load_toy_model
from lrm_interp.toy.evaluate import evaluate
from lrm_interp.toy.tasks import FAMILIES, generate_dataset, problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=30, help="held-out problems per family (seed 2)")
    ap.add_argument("--bits", type=int, default=3, help="the uniform baseline's bits")
    ap.add_argument("--group-size", type=int, default=128, help="group size of every grid")
    ap.add_argument("--symmetric", action="store_true", help="symmetric grid (GPTQ's convention)")
    ap.add_argument(
        "--method",
        choices=["rtn", "gptq"],
        default="rtn",
        help="quantizer of every row (gptq: calibration on generated toy traces)",
    )
    ap.add_argument(
        "--extra",
        type=float,
        nargs="+",
        default=[0.0, 0.25, 0.5],
        help="budgets = uniform-b bits/weight + each of these",
    )
    a = ap.parse_args()
    t0 = time.time()
    model, tok = load_toy_model()
    sites = find_sites(model)
    held = problems(a.per_family, seed=2)
    attr_ds = generate_dataset(8, seed=99)
    ri = attribute(model, attr_ds, tokenizer=tok, progress=False).site_ri()
    calib = calibration_ids(tok, n_per_family=16, seed=77, separator="\n")  # [57, 256] byte ids of toy traces
    H = {}
    for _, hs in layer_hessians(model, sites, calib, sequential=False, progress=False):
        H.update(hs)
    choices = (2, 3, 4, 8, 16)
    kw = {"group_size": a.group_size, "symmetric": a.symmetric}
    rel = quantization_errors(model, sites, choices, relative=True, **kw)
    absolute = quantization_errors(model, sites, choices, **kw)
    sens = {"attribution": (ri, rel), "hessian": (hessian_sensitivity(H), absolute), "none": (None, absolute)}

    def line(name, bpw, counts, acc):
        k = round(acc["mean"] * len(held))
        lo, hi = wilson_interval(k, len(held))
        print(
            f"| {name} | {bpw:.3f} | {counts} | "
            + " | ".join(f"{100 * acc[f]:.0f}" for f in FAMILIES)
            + f" | {100 * acc['mean']:.1f} | {100 * lo:.1f}–{100 * hi:.1f} |",
            flush=True,
        )

    def row(name, alloc):
        q = copy.deepcopy(model)
        quantize_allocation_(q, alloc, method=a.method, calib=calib if a.method == "gptq" else None, progress=False)
        line(
            name,
            alloc.bpw,
            " ".join(f"{b}:{n}" for b, n in alloc.counts().items()),
            evaluate(q, tok, held, batch_size=150),
        )

    fp = evaluate(model, tok, held, batch_size=150)
    print(
        f"Toy reasoner, {a.method.upper()}, {a.per_family} held-out problems per family, group {a.group_size}, "
        f"{'symmetric' if a.symmetric else 'asymmetric'}; attribution RI from {len(attr_ds)} gold traces.\n"
    )
    print("| allocation | bits/weight | modules per bits | " + " | ".join(FAMILIES) + " | mean | 95% CI |")
    print("|---|---|---|" + "---|" * (len(FAMILIES) + 2))
    line("fp32", 32, "–", fp)
    base = uniform_allocation(sites, a.bits, **kw)
    row(f"uniform {a.bits}-bit", base)
    # per-weight protection at the same base grid: 2 % of the weights by magnitude kept in FP16
    masks = build_masks(sites, "global_top", 0.02, saliency=build_saliency("magnitude", model, sites, progress=False))
    q = copy.deepcopy(model)
    quantize_model_(
        q, bits=a.bits, masks=masks, method=a.method, calib=calib if a.method == "gptq" else None, progress=False, **kw
    )
    line(
        f"{a.bits}-bit + 2% magnitude in FP16 (per weight)",
        bits_per_weight(masks, sites, bits=a.bits, **kw)["bpw"],
        f"{a.bits}:{len(sites)}",
        evaluate(q, tok, held, batch_size=150),
    )
    for extra in a.extra:
        budget = base.bpw + extra
        for name, (s, err) in sens.items():
            row(f"{name} @ {budget:.3f}", allocate_bits(sites, err, s, budget, choices=choices, name=name, **kw))
    row(f"uniform {a.bits + 1}-bit", uniform_allocation(sites, a.bits + 1, **kw))
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
