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
merged weights) and the share of the delta's entries whose merged weight rounds to the same code
with and without the delta (the delta is invisible there). Measure the folders with the same
``bench run`` settings as the compression table::

    python benchmarks/reasoner_delta_rounding.py --out ~/.cache/lrm_interp/models
    lrm-interp bench run --model ~/.cache/lrm_interp/models/reasoner-qbase-rtn4-g128 \\
        ~/.cache/lrm_interp/models/reasoner-qbase-rtn4-g32 --tasks math logic knowledge \\
        --per-family 50 --toy-seed 1 --toy-people 64 --temperature 0 --max-new-tokens 480 \\
        --batch-size 25 --out ~/.cache/lrm_interp/bench/reasoner_qbase
    lrm-interp bench score --outputs ~/.cache/lrm_interp/bench/reasoner_qbase --tasks math logic \\
        knowledge --per-family 50 --toy-seed 1 --toy-people 64
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lrm_interp._io import atomic_write_text
from lrm_interp.compress.quant.grid import fit_params, quantize_with
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.model.reasoner import delta_sha256, merge_adapter, reasoner_asset_dir
from lrm_interp.model.sites import find_sites
from lrm_interp.model.smollm2 import load_smollm2


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder that receives one model folder per group size")
    ap.add_argument("--bits", type=int, default=4, help="RTN bits of the base weights (default 4)")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[128, 32], help="RTN group sizes (default 128 32)")
    ap.add_argument("--symmetric", action="store_true", help="symmetric grid (default asymmetric)")
    a = ap.parse_args()
    for g in a.group_sizes:
        name = f"reasoner-qbase-rtn{a.bits}{'sym' if a.symmetric else ''}-g{g}"
        stats = build(a.out / name, a.bits, g, a.symmetric)
        print(f"{name}: {json.dumps(stats)}")


if __name__ == "__main__":
    main()
