"""Is the reasoner's 4-bit loss the rounding of its distilled delta? Build the test models.

The shipped reasoner is SmolLM2-135M (``W``) plus a LoRA delta (``Δ = α/r · B A``) merged:
``W + Δ``. RTN 4-bit of the merged weights loses 15 points of math at group 128 and 9 at group
32 while logic and the fact table come back whole at group 32 (docs/reasoner.md). Hypothesis: the
delta that carries the arithmetic is small next to a 4-bit step, so rounding ``W + Δ`` erases it.
Test: quantize ``W`` alone and add ``Δ`` in full precision afterwards, ``Q(W) + Δ``: if math comes
back to full precision's, the loss was the delta's rounding.

This script writes one model folder per group size (``Q(W) + Δ``, safetensors + tokenizer +
``delta_rounding.json``) and prints, per group size, the median over the 210 decoder linears of
``rms(Δ) / rms(Q(W+Δ) − (W+Δ))`` (how large the delta is against the rounding error of the
merged weights) and the share of the weights whose code on the merged weights' grid is the same
with and without the delta (the delta is invisible there). ``--evaluate`` then measures the
reasoner, ``Q(W+Δ)`` (what ``bench run --compress rtn:B`` measures) and ``Q(W) + Δ`` per group size
on the compression table's problems (50 per family, toy seed 1, the reasoner's 64-person fact
table, greedy, 480 new tokens) and prints a Markdown table with 95 % Wilson intervals::

    OMP_NUM_THREADS=1 python benchmarks/reasoner_delta_rounding.py --out ~/.cache/lrm_interp/models \\
        --evaluate --json benchmarks/results/reasoner_delta_rounding.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from lrm_interp._io import atomic_write_text
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.compress.quant.grid import fit_params, quantize_with
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import model_record, record_source
from lrm_interp.model.reasoner import delta_sha256, merge_adapter, reasoner_asset_dir
from lrm_interp.model.sites import find_sites
from lrm_interp.model.smollm2 import load_smollm2
from lrm_interp.toy.evaluate import evaluate, score_responses
from lrm_interp.toy.tasks import model_world, problems


def build(out: Path, bits: int, group_size: int, symmetric: bool) -> dict:
    """Write ``Q(W) + Δ`` to ``out`` and return the delta-vs-rounding statistics."""
    base, tok = load_smollm2(dtype=torch.float32)
    ref, _ = load_smollm2(dtype=torch.float32)
    merged = merge_adapter(ref, reasoner_asset_dir())  # W + Δ, as the shipped reasoner
    sites = find_sites(base)
    ratios, invisible = [], []
    with torch.no_grad():
        for s in tqdm(sites, desc=f"Q(W) + Δ, group {group_size}", unit="site"):
            w = base.get_submodule(s.name).weight
            wm = merged.get_submodule(s.name).weight
            delta = wm - w
            err = rtn_quantize(wm, bits, group_size=group_size, symmetric=symmetric) - wm
            ratios.append(float(delta.pow(2).mean().sqrt() / err.pow(2).mean().sqrt().clamp_min(1e-30)))
            p = fit_params(wm, bits, group_size=group_size, symmetric=symmetric)
            same = quantize_with(wm, p) == quantize_with(w, p)  # the merged grid, with and without Δ
            invisible.append(float(same.float().mean()))
            w.copy_(rtn_quantize(w, bits, group_size=group_size, symmetric=symmetric) + delta)
    base.save_pretrained(out)
    tok.save_pretrained(out)
    stats = {
        "model": "Q(W) + Δ: SmolLM2-135M base RTN-quantized, the reasoner's delta added in fp32",
        "bits": bits,
        "group_size": group_size,
        "symmetric": symmetric,
        "delta_sha256": delta_sha256(reasoner_asset_dir()),
        "sites": len(sites),
        "median_rms_delta_over_rms_rounding_error": statistics.median(ratios),
        "median_share_of_weights_whose_code_ignores_the_delta": statistics.median(invisible),
    }
    atomic_write_text(out / "delta_rounding.json", json.dumps(stats, indent=1))
    return stats


def measure(model, tokenizer, per_family: int, seed: int) -> dict:
    """Accuracy per family and mean (%, Wilson 95 %) on the compression table's problems."""
    held = problems(per_family, seed=seed, world=model_world(model))
    _, responses = evaluate(model, tokenizer, held, batch_size=25, max_new_tokens=480, return_responses=True)
    hits = score_responses(held, responses)
    row = {}
    for fam in dict.fromkeys(p.family for p in held):
        k = sum(h for p, h in zip(held, hits) if p.family == fam)
        n = sum(p.family == fam for p in held)
        row[fam] = (100 * k / n, *(100 * x for x in wilson_interval(k, n)))
    row["mean"] = (100 * sum(hits) / len(hits), *(100 * x for x in wilson_interval(sum(hits), len(hits))))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder that receives one model folder per group size")
    ap.add_argument("--bits", type=int, default=4, help="RTN bits of the base weights (default 4)")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[128, 32], help="RTN group sizes (default 128 32)")
    ap.add_argument("--symmetric", action="store_true", help="symmetric grid (default asymmetric)")
    ap.add_argument("--evaluate", action="store_true", help="measure the models (minutes each on one core)")
    ap.add_argument("--per-family", type=int, default=50, help="problems per family with --evaluate (default 50)")
    ap.add_argument("--seed", type=int, default=1, help="problem seed with --evaluate (default 1, the table's)")
    ap.add_argument("--json", type=Path, help="write the statistics and the measured rows here")
    a = ap.parse_args()
    grid = "symmetric" if a.symmetric else "asymmetric"
    result: dict = {"stats": {}, "rows": {}}
    for g in a.group_sizes:
        name = f"reasoner-qbase-rtn{a.bits}{'sym' if a.symmetric else ''}-g{g}"
        result["stats"][name] = stats = build(a.out / name, a.bits, g, a.symmetric)
        print(f"{name}: {json.dumps(stats)}")
    if a.evaluate:
        reasoner, tok = load_model("smollm2-135m-reasoner")
        source = model_record(reasoner).source  # the fact table it learned (n_people) goes with Q(W) + Δ
        variants = [("reasoner (W + Δ)", lambda: reasoner)]
        for g in a.group_sizes:
            name = f"reasoner-qbase-rtn{a.bits}{'sym' if a.symmetric else ''}-g{g}"

            def merged_q(g=g):
                m = copy.deepcopy(reasoner)
                quantize_model_(m, bits=a.bits, group_size=g, symmetric=a.symmetric, progress=False)
                return m

            def base_q(name=name):
                m = AutoModelForCausalLM.from_pretrained(a.out / name, dtype=torch.float32).eval()
                record_source(m, {**(source or {}), "note": "base RTN-quantized, delta added in fp32"})
                return m

            variants += [
                (f"Q(W + Δ): RTN {a.bits}-bit {grid}, group {g}", merged_q),
                (f"Q(W) + Δ: RTN {a.bits}-bit {grid}, group {g}", base_q),
            ]
        lines = ["| model | math | logic | knowledge | mean |", "|---|---|---|---|---|"]
        for label, make in tqdm(variants, desc="evaluate", unit="model"):
            row = result["rows"][label] = measure(make(), tok, a.per_family, a.seed)
            cells = [f"{v:.0f} [{lo:.0f}–{hi:.0f}]" for v, lo, hi in (row[f] for f in ("math", "logic", "knowledge"))]
            m, lo, hi = row["mean"]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {m:.1f} [{lo:.0f}–{hi:.0f}] |")
            print(lines[-1], flush=True)
        print("\n".join(lines))
    if a.json:
        atomic_write_text(a.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
