"""Is attribution patching faithful on a pretrained model? AtP scores vs real activation patching.

Runs :func:`lrm_interp.attribution.faithfulness.atp_faithfulness` on one model and one trace set
and writes, under ``--out-dir`` (default ``benchmarks/results``):

- ``atp_faithfulness_<name>/`` — the result folder (``faithfulness.json`` with provenance,
  ``faithfulness.csv`` one row per (α, behaviour), ``sites.csv`` I_atp and I_real per site);
- ``atp_faithfulness_<name>.md`` — the table (Spearman, top-10 overlap, signed Spearman, relative
  L1, median I_atp / I_real, spans), span counts, wall time, and the exact command.

Traces: ``--data PATH`` (JSONL or a paper-layout folder such as ``../shared/data/r1_gpt4o_dev``) or
``--toy-gold N`` (the toy task generator's gold-annotated traces, N per family, seed ``--trace-seed``,
on the fact table the model learned: ``model_world``; for ``smollm2-135m-reasoner``).

Usage (one thread, as measured in docs/method.md)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 timeout 3000 python benchmarks/atp_faithfulness.py \\
        --model smollm2-135m-reasoner --toy-gold 30 --max-spans 12 --name reasoner
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 timeout 3000 python benchmarks/atp_faithfulness.py \\
        --model smollm2-135m --data ../shared/data/r1_gpt4o_dev --max-tokens 2048 --max-spans 5 --name smollm2_r1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch


def _table(res) -> str:
    k = res.top_k
    lines = [
        f"| α | behaviour | Spearman ρ(I_atp, I_real) | top-{k} overlap | signed ρ | rel. L1 "
        "| median I_atp/I_real | spans | traces |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        lines.append(
            f"| {r.alpha:g} | {r.behavior} | {r.spearman:.3f} | {r.top_k_overlap}/{k} | {r.signed_spearman:.3f} | "
            f"{r.rel_l1:.3f} | {r.median_ratio:.3f} | {r.n_spans} | {r.n_traces} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model alias or folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="JSONL traces or a paper-layout folder")
    src.add_argument("--toy-gold", type=int, metavar="N", help="N gold toy traces per family (on the model's world)")
    p.add_argument("--trace-seed", type=int, default=4242, help="seed of --toy-gold (held out: < 10 000)")
    p.add_argument("--name", required=True, help="result name: atp_faithfulness_<name>")
    p.add_argument("--out-dir", default="benchmarks/results", help="where the results go")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 1.0], help="patch scales")
    p.add_argument("--max-spans", type=int, default=None, help="spans per behaviour (seeded sample)")
    p.add_argument("--max-tokens", type=int, default=None, help="truncate traces to this many tokens")
    p.add_argument("--behaviors", nargs="+", default=None, help="behaviours (default: the target ones present)")
    p.add_argument("--batch-size", type=int, default=32, help="(alpha, site) rows per patched forward")
    p.add_argument("--seed", type=int, default=0, help="seed of the span sample")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier result of this name")
    a = p.parse_args(argv)

    from lrm_interp import load_model
    from lrm_interp.attribution.faithfulness import atp_faithfulness

    t0 = time.time()
    model, tok = load_model(a.model)
    model.eval()
    if a.toy_gold is not None:
        from lrm_interp.toy.tasks import generate_dataset, model_world

        data = generate_dataset(a.toy_gold, seed=a.trace_seed, world=model_world(model))
        what = f"{len(data)} gold toy traces ({a.toy_gold} per family, seed {a.trace_seed}, the model's world)"
    else:
        data = a.data
        what = f"`{a.data}`"
    res = atp_faithfulness(
        model,
        data,
        tokenizer=tok,
        alphas=tuple(a.alphas),
        max_spans=a.max_spans,
        seed=a.seed,
        batch_size=a.batch_size,
        max_tokens=a.max_tokens,
        behaviors=a.behaviors,
        overlong="truncate",
    )
    wall = time.time() - t0
    res.provenance["wall_s"] = round(wall, 1)
    res.provenance["threads"] = torch.get_num_threads()
    out = Path(a.out_dir)
    folder = res.save(out / f"atp_faithfulness_{a.name}", overwrite=a.overwrite)
    prov = res.provenance
    cmd = "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/atp_faithfulness.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    spans = "; ".join(
        f"{b}: {c['used']} used of {c['usable']} usable ({c['labelled']} labelled, {c['dropped']} dropped by "
        f"tokenization/truncation, {c['left_out_by_max_spans']} left out by --max-spans)"
        for b, c in prov["spans"].items()
    )
    md = "\n".join(
        [
            f"# AtP vs real activation patching: `{a.model}` ({prov['model']['name']})",
            "",
            f"Traces: {what}; {prov['n_traces']} traces, {prov['n_traces_patched']} patched; "
            f"max tokens per trace {a.max_tokens}; {prov['n_sites']} sites; score `{prov['settings']['score']}`, "
            f"mode `{prov['settings']['mode']}`; patching path `{prov['patching_path']['path']}`; "
            f"{prov['threads']} thread(s), {wall / 60:.1f} min wall; weights fingerprint "
            f"`{prov['model']['weights_fingerprint']}`.",
            "",
            f"Spans per behaviour: {spans}.",
            "",
            _table(res),
            "",
            "Command:",
            "",
            "```bash",
            cmd,
            "```",
            "",
            f"Result folder: `{folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder}`.",
            "",
        ]
    )
    from lrm_interp._io import atomic_write_text

    atomic_write_text(out / f"atp_faithfulness_{a.name}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
