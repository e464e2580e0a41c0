"""Agreement of the offline annotators with GPT-4o's labels on real R1-Distill responses.

Per target behaviour and per dataset, character-level F1 of

- ``keyword`` (``RuleAnnotator``) and ``rules`` (``R1RuleAnnotator``): nothing fitted;
- ``trained (CV)``: ``LinearAnnotator`` with the shipped settings, k-fold cross-validated
  grouped by trace (every trace labelled by a model that never saw it);
- ``sentence oracle``: every sentence of lrm_interp's segmenter takes the gold label covering
  most of it — the ceiling of any annotator that labels these sentences;

on two regions: ``gold`` (only the characters GPT-4o labelled; it leaves the tails of long
traces unlabelled) and ``all`` (every character). Usage::

    python benchmarks/annotate_agreement.py --data ../shared/data/r1_gpt4o_dev \\
        --out benchmarks/results/annotate_agreement.json

prints Markdown tables and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="paper-layout folder with GPT-4o's annotated/ files")
    ap.add_argument("--folds", type=int, default=5, help="cross-validation folds (grouped by trace)")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    a = ap.parse_args(argv)

    import torch

    from lrm_interp.data.annotate import R1RuleAnnotator, RuleAnnotator
    from lrm_interp.data.annotators.agreement import REGIONS, annotation_agreement
    from lrm_interp.data.annotators.base import annotate_response, thinking_part
    from lrm_interp.data.annotators.segment import split_sentences
    from lrm_interp.data.annotators.trained import sentence_gold, agreement_by_dataset, cross_validate
    from lrm_interp.data.paper_layout import load_paper_layout
    from lrm_interp.data.traces import BEHAVIORS, TARGET_BEHAVIORS, BehaviorSpan, ReasoningDataset

    torch.set_num_threads(1)
    gold = ReasoningDataset([t for t in load_paper_layout(a.data, progress=False) if t.spans])

    def labelled(annotator) -> ReasoningDataset:
        return ReasoningDataset([t.with_spans(annotate_response(t.response, annotator)[0]) for t in gold])

    def oracle() -> ReasoningDataset:
        out = []
        for t in gold:
            spans = []
            for s in split_sentences(thinking_part(t.response)):
                y = sentence_gold(t, s, BEHAVIORS)
                if y is not None:
                    spans.append(BehaviorSpan(BEHAVIORS[y], s.start, s.end))
            out.append(t.with_spans(spans))
        return ReasoningDataset(out)

    preds = {"keyword": labelled(RuleAnnotator()), "rules": labelled(R1RuleAnnotator()),
             "trained (CV)": cross_validate(gold, folds=a.folds)["predicted"], "sentence oracle": oracle()}
    result: dict = {"traces": len(gold), "folds": a.folds, "regions": {}}
    lines = []
    for region in REGIONS:
        table: dict = {}
        for name, p in preds.items():
            table[name] = {"pooled": annotation_agreement(gold, p, region=region),
                           **agreement_by_dataset(gold, p, region=region)}
        # None where the gold has no span of that behaviour in the group (F1 undefined)
        result["regions"][region] = {n: {g: {b: (d[b]["f1"] if d.get(b, {}).get("gold_spans") else None)
                                             for b in TARGET_BEHAVIORS}
                                         for g, d in t.items()} for n, t in table.items()}
        groups = list(next(iter(table.values())))
        lines += ["", f"### region: {region} — character F1 ({len(gold)} traces)", "",
                  "| annotator | group | " + " | ".join(TARGET_BEHAVIORS) + " | mean |",
                  "|---|---|" + "---|" * (len(TARGET_BEHAVIORS) + 1)]
        for name in table:
            for g in groups:
                f = [result["regions"][region][name][g][b] for b in TARGET_BEHAVIORS]
                have = [x for x in f if x is not None]
                lines.append(f"| {name} | {g} | " + " | ".join("–" if x is None else f"{x:.2f}" for x in f)
                             + f" | {sum(have) / max(len(have), 1):.2f} |")
    print("\n".join(lines))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({**result, "table": lines}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
