"""The tables of docs/findings.md, each from one command (lrm_interp.experiments.findings).

    # claims 1, 2: from a `lrm-interp bench score` folder (its scores.csv)
    python benchmarks/findings.py claims --scores SCORE_DIR/scores.csv \
        --reference smollm2-135m-reasoner --out benchmarks/results/findings
    # claims 3, 4: attribute the reasoner and its compressed variants on its own traces
    # (resumable folder), then write the tables and heatmaps
    python benchmarks/findings.py shift --run ~/.cache/lrm_interp/findings/shift \
        --out benchmarks/results/findings

Writes CSV and markdown tables (and PNG heatmaps for the shift) into --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lrm_interp._io import atomic_write_text
from lrm_interp.experiments import findings as fd


def _md(df: pd.DataFrame, digits: int = 1) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in r]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def claims(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = pd.read_csv(a.scores)
    kr = fd.knowledge_vs_reasoning(scores, a.reference, resamples=a.resamples)
    sl = fd.short_vs_long(scores, resamples=a.resamples)
    atomic_write_text(out / "knowledge_vs_reasoning.csv", kr.to_csv(index=False))
    atomic_write_text(out / "short_vs_long.csv", sl.to_csv(index=False))
    show = ["model", "reasoning", "drop_knowledge", "drop_reasoning", "diff", "ci95_low", "ci95_high", "verdict"]
    text = "## Knowledge vs reasoning: accuracy drops (points) against " + a.reference + "\n\n" + _md(kr[show])
    if kr.attrs["incomplete"]:
        text += f"\nLeft out (outputs missing for some items): {', '.join(kr.attrs['incomplete'])}\n"
    sign = sl.attrs["sign"]
    text += (
        "\n## Shortest vs longest 30 % of outputs (score points)\n\n"
        + _md(
            sl[["model", "task", "accuracy", "short", "long", "len_ratio", "diff", "ci95_low", "ci95_high", "verdict"]]
        )
        + f"\nSign test over model × task with a spread: {sign['positive']} shorter higher, "
        f"{sign['negative']} longer higher, {sign['zero']} equal; two-sided p = {sign['p']:.3g}\n"
    )
    atomic_write_text(out / "claims_1_2.md", text)
    print(text)


def shift(a: argparse.Namespace) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = fd.ShiftSettings(model=a.model, per_family=a.per_family, variants=tuple(a.variants))
    study = fd.run_shift_study(a.run, s, progress=not a.quiet)
    ranks = fd.site_rank_table(study)
    summ = fd.shift_summary(study)
    atomic_write_text(out / "site_ranks.csv", ranks.to_csv(index=False))
    atomic_write_text(out / "shift_summary.csv", summ.to_csv(index=False))
    for v in study.variants:
        if v != "fp":
            sh = study.mean_shift(v)
            atomic_write_text(out / f"shift_{v}.csv", sh.to_dataframe().to_csv(index=False))
            fig = sh.heatmap("signed")
            fig.savefig(out / f"shift_{v}.png", dpi=90, bbox_inches="tight")
    fig = study.results[("fp", "A")].heatmap()
    fig.savefig(out / "ri_fp_A.png", dpi=90, bbox_inches="tight")
    cols = ["variant", "half", "behavior", "final_layer_delta", "mid_gate_delta"]
    cols += ["final_layer_share_of_decrease", "final_layer_site_share"]
    cols += ["mid_gate_share_of_decrease", "mid_gate_site_share", "delta_gate", "delta_up"]
    text = (
        "## Claim 3: rank of the final layer's up_proj per behaviour (1 = most important)\n\n"
        + _md(ranks.drop(columns=["site"]), 3)
        + "\n## Claim 4: RI change (compressed − fp) of the final layer and mid-layer gate_proj\n\n"
        + _md(summ[cols], 3)
    )
    atomic_write_text(out / "claims_3_4.md", text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("claims", help="claims 1 and 2 from a bench score scores.csv")
    c.add_argument("--scores", required=True, help="scores.csv written by lrm-interp bench score")
    c.add_argument("--reference", required=True, help="the uncompressed model's name in scores.csv")
    c.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    c.add_argument("--out", required=True, help="folder for the tables")
    c.set_defaults(fn=claims)
    s = sub.add_parser("shift", help="claims 3 and 4: attribution study (resumable) and its tables")
    s.add_argument("--run", required=True, help="resumable study folder (attributions, traces)")
    s.add_argument("--model", default="smollm2-135m-reasoner", help="model alias or folder")
    s.add_argument("--per-family", type=int, default=20, help="problems per toy family")
    s.add_argument(
        "--variants",
        nargs="+",
        default=["gptq:3", "rtn:3", "sparsegpt:0.5", "magnitude:0.5"],
        help="compression specs",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--out", required=True, help="folder for the tables and heatmaps")
    s.set_defaults(fn=shift)
    a = p.parse_args(argv)
    a.fn(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
