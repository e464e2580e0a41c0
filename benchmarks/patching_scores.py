"""Cost and agreement of ``method="patching"`` (exact activation patching) against AtP, side by side.

Runs :func:`lrm_interp.attribute` on one model and one trace set, in one process and in this order:
``method="attribution"`` (AtP, the default), then ``method="patching"`` at each ``--alphas`` value
(α = 1: the full-size steering patch the scores describe). Each run is timed (wall clock, the whole
``attribute`` call: tokenization, DoM, the scoring stage); the model is loaded once before. Per
behaviour it reports the Spearman ρ and the top-10 overlap between the AtP ranking and each patching
ranking, and writes ``patching_scores.md`` (table, wall times, ratio, threads, exact command) under
``--out-dir`` (default ``benchmarks/results``).

Traces: ``--toy-gold N`` (the toy generator's gold-annotated traces, N per family, seed
``--trace-seed``, on the fact table the model learned; for ``smollm2-135m-reasoner``) or ``--data PATH``.

Usage (one thread, as measured in docs/method.md)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 timeout 3000 python benchmarks/patching_scores.py \\
        --model smollm2-135m-reasoner --toy-gold 8 --alphas 1 0.1
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch


def _md(a, argv, what, runs, base, load_s) -> str:
    from lrm_interp.attribution.faithfulness import top_k_overlap
    from lrm_interp.attribution.stats import spearman

    prov = base.provenance
    counts = prov["counts"]
    t0 = runs[0][1]
    lines = [
        f'# `method="patching"` vs `method="attribution"` (AtP): `{a.model}` ({prov["model"]["name"]})',
        "",
        f"Traces: {what}; {counts['traces']} traces; {prov['n_sites']} sites; score `{prov['settings']['score']}`, "
        f"AtP mode `{prov['settings']['mode']}` (gradient path `{(prov.get('gradient_path') or {}).get('path')}`); "
        f"{torch.get_num_threads()} thread(s) (`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}`); "
        f"model loaded once before the runs ({load_s:.1f} s, not counted); weights fingerprint "
        f"`{prov['model']['weights_fingerprint']}`.",
        "",
        "Spans per behaviour (scored by both methods): "
        + ", ".join(f"{b} {n}" for b, n in counts["spans"].items())
        + "; traces per behaviour (|D+|): "
        + ", ".join(f"{b} {n}" for b, n in counts["traces_with_behavior"].items())
        + ".",
        "",
        "## Wall time (whole `attribute()` call: tokenization, DoM, the scoring stage)",
        "",
        "| run | wall (s) | × AtP | scoring path |",
        "|---|---|---|---|",
    ]
    for label, wall, res in runs:
        path = res.provenance.get("patching_path") or res.provenance.get("gradient_path") or {}
        lines.append(f"| {label} | {wall:.1f} | {wall / t0:.2f} | `{path.get('path')}` |")
    k = 10
    lines += [
        "",
        f"## Agreement of the rankings (per behaviour, over the {prov['n_sites']} sites)",
        "",
        "| patching α | behaviour | Spearman ρ(I_atp, I_patch) | top-10 overlap | spans | traces |",
        "|---|---|---|---|---|---|",
    ]
    for _label, _, res in runs[1:]:
        alpha = res.provenance["settings"]["patch_alpha"]
        for b in res.behaviors:
            x, y = base.scores[base.behaviors.index(b)], res.scores[res.behaviors.index(b)]
            lines.append(
                f"| {alpha:g} | {b} | {spearman(x, y):.3f} | {top_k_overlap(x, y, k)}/{min(k, x.numel())} | "
                f"{counts['spans'][b]} | {counts['traces_with_behavior'][b]} |"
            )
    cmd = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/patching_scores.py " + shlex.join(argv)
    lines += ["", "Command:", "", "```bash", cmd, "```", ""]
    if a.note:
        lines += [a.note, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model alias or folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL traces or a paper-layout folder")
    src.add_argument("--toy-gold", type=int, metavar="N", help="N gold toy traces per family (on the model's world)")
    p.add_argument("--trace-seed", type=int, default=4242, help="seed of --toy-gold (held out: < 10 000)")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0], help="patch_alpha of the patching runs")
    p.add_argument("--max-tokens", type=int, default=None, help="truncate traces to this many tokens")
    p.add_argument("--out-dir", default="benchmarks/results", help="where patching_scores.md goes")
    p.add_argument("--note", default="", help="a sentence appended to the table (e.g. the CPU was shared)")
    a = p.parse_args(argv)

    import lrm_interp
    from lrm_interp import load_model
    from lrm_interp._io import atomic_write_text

    t0 = time.time()
    model, tok = load_model(a.model)
    model.eval()
    load_s = time.time() - t0
    if a.toy_gold is not None:
        from lrm_interp.toy.tasks import generate_dataset, model_world

        data = generate_dataset(a.toy_gold, seed=a.trace_seed, world=model_world(model))
        what = f"{len(data)} gold toy traces ({a.toy_gold} per family, seed {a.trace_seed}, the model's world)"
    else:
        data = a.data
        what = f"`{a.data}`"
    opts = {"max_tokens": a.max_tokens, "overlong": "truncate"}
    runs = []
    for label, kw in [("attribution (AtP)", {"method": "attribution"})] + [
        (f"patching α={al:g}", {"method": "patching", "patch_alpha": al}) for al in a.alphas
    ]:
        t = time.time()
        res = lrm_interp.attribute(model, data, tokenizer=tok, progress=False, **opts, **kw)
        runs.append((label, time.time() - t, res))
        print(f"{label}: {runs[-1][1]:.1f} s", flush=True)
        if len(runs) > 1:  # write after each patching run: a killed run keeps what it measured
            md = _md(a, argv, what, runs, runs[0][2], load_s)
            atomic_write_text(Path(a.out_dir) / "patching_scores.md", md, replace=True)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
