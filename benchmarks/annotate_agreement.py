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

prints Markdown tables and writes the numbers as JSON. ``--study`` adds the study of GPT-4o's
example-testing labels behind docs/annotation.md ("Why example-testing stays near 0.2"; about
another minute on one core): where the label is, what the rules' cues say about it, structurally
identical lists labelled differently, identical sentences in two traces, and ceilings of the
trained annotator's features (fitted and scored on the same traces; cross-validated with GPT-4o's
label of the previous sentence given; ranking AUC; the best example-testing threshold chosen on
the held-out predictions themselves).
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
    ap.add_argument("--study", action="store_true", help="add the study of GPT-4o's example-testing labels")
    a = ap.parse_args(argv)

    import torch

    from lrm_interp.data.annotate import R1RuleAnnotator, RuleAnnotator
    from lrm_interp.data.annotators.agreement import REGIONS, annotation_agreement
    from lrm_interp.data.annotators.base import annotate_response, thinking_part
    from lrm_interp.data.annotators.segment import split_sentences
    from lrm_interp.data.annotators.trained import agreement_by_dataset, cross_validate, sentence_gold
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

    preds = {
        "keyword": labelled(RuleAnnotator()),
        "rules": labelled(R1RuleAnnotator()),
        "trained (CV)": cross_validate(gold, folds=a.folds)["predicted"],
        "sentence oracle": oracle(),
    }
    result: dict = {"traces": len(gold), "folds": a.folds, "regions": {}}
    lines = []
    for region in REGIONS:
        table: dict = {}
        for name, p in preds.items():
            table[name] = {
                "pooled": annotation_agreement(gold, p, region=region),
                **agreement_by_dataset(gold, p, region=region),
            }
        # None where the gold has no span of that behaviour in the group (F1 undefined)
        result["regions"][region] = {
            n: {
                g: {b: (d[b]["f1"] if d.get(b, {}).get("gold_spans") else None) for b in TARGET_BEHAVIORS}
                for g, d in t.items()
            }
            for n, t in table.items()
        }
        groups = list(next(iter(table.values())))
        lines += [
            "",
            f"### region: {region} — character F1 ({len(gold)} traces)",
            "",
            "| annotator | group | " + " | ".join(TARGET_BEHAVIORS) + " | mean |",
            "|---|---|" + "---|" * (len(TARGET_BEHAVIORS) + 1),
        ]
        for name in table:
            for g in groups:
                f = [result["regions"][region][name][g][b] for b in TARGET_BEHAVIORS]
                have = [x for x in f if x is not None]
                lines.append(
                    f"| {name} | {g} | "
                    + " | ".join("–" if x is None else f"{x:.2f}" for x in f)
                    + f" | {sum(have) / max(len(have), 1):.2f} |"
                )
    if a.study:
        result["study"], more = study(gold, folds=a.folds)
        lines += more
    print("\n".join(lines))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({**result, "table": lines}, indent=1))
    return 0


# --------------------------------------------------------------------------- the example-testing study
_TARGETS = ("backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge")


def _norm(text: str) -> str:
    """Lower case, every number 0, punctuation and white space collapsed."""
    import re

    return re.sub(r"[^\w]+", " ", re.sub(r"\d+(?:[.,]\d+)*", "0", text.lower())).strip()


def _opening(text: str) -> str:
    """The first two tokens, numbers as 0 ('n=1: ...' and 'n=7: ...' open alike)."""
    import re

    toks = re.findall(r"[a-z]+|\d+|\\[a-z]+|[^\sa-z\d]", text.lower())[:2]
    return " ".join("0" if t.isdigit() else t for t in toks)


def _weighted_auc(pairs: list[tuple[float, bool, int]]) -> float | None:
    """Probability that a random positive character scores above a random negative one."""
    pairs = sorted(pairs, key=lambda x: x[0])
    pos = sum(w for _, y, w in pairs if y)
    neg = sum(w for _, y, w in pairs if not y)
    if not pos or not neg:
        return None
    acc = below = 0.0
    k = 0
    while k < len(pairs):  # ties count one half
        j = k
        while j < len(pairs) and pairs[j][0] == pairs[k][0]:
            j += 1
        p = sum(w for _, y, w in pairs[k:j] if y)
        n = sum(w for _, y, w in pairs[k:j] if not y)
        acc += p * (below + n / 2)
        below += n
        k = j
    return acc / (pos * neg)


def study(gold, *, folds: int = 5, seed: int = 0) -> tuple[dict, list[str]]:
    """The example-testing study (module docstring): numbers and Markdown lines."""
    import collections
    import random

    import torch

    from lrm_interp.data.annotators.agreement import annotation_agreement
    from lrm_interp.data.annotators.base import thinking_part
    from lrm_interp.data.annotators.r1 import R1RuleAnnotator
    from lrm_interp.data.annotators.trained import (
        agreement_by_dataset,
        fit_rows,
        hash_features,
        sentence_features,
        sentence_gold,
    )
    from lrm_interp.data.traces import BEHAVIORS, BehaviorSpan, ReasoningDataset

    ET = BEHAVIORS.index("example-testing")
    traces = list(gold)
    names = sorted({str(t.metadata.get("dataset", "")) for t in traces})
    rows = []  # per trace: sentences, rule (label, name), gold label index or None
    for t in traces:
        ex = R1RuleAnnotator().explain(thinking_part(t.response))
        sents = [s for s, _, _ in ex]
        rows.append(
            {
                "trace": t,
                "ds": str(t.metadata.get("dataset", "")),
                "sents": sents,
                "rule": [(lab, why) for _, lab, why in ex],
                "y": [sentence_gold(t, s, BEHAVIORS) for s in sents],
            }
        )
    out: dict = {}
    lines = ["", "### Study: GPT-4o's example-testing labels", ""]

    # 1. where the label is
    et_chars = {n: 0 for n in names}
    et_spans = dict(et_chars)
    labelled = dict(et_chars)
    for t in traces:
        n = str(t.metadata.get("dataset", ""))
        for sp in t.spans:
            labelled[n] += sp.end - sp.start
            if sp.behavior == "example-testing":
                et_chars[n] += sp.end - sp.start
                et_spans[n] += 1
    total = max(sum(et_chars.values()), 1)
    out["where"] = {
        n: {
            "spans": et_spans[n],
            "chars": et_chars[n],
            "share_of_all_et_chars": et_chars[n] / total,
            "share_of_labelled_chars": et_chars[n] / max(labelled[n], 1),
        }
        for n in names
    }
    lines += [
        "| dataset | example-testing spans | characters | share of all example-testing characters "
        "| share of the dataset's labelled characters |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {d['spans']} | {d['chars']:,} | {d['share_of_all_et_chars']:.0%} | "
        f"{d['share_of_labelled_chars']:.1%} |"
        for n, d in out["where"].items()
    ]

    # 2. the rules' cues against GPT-4o
    cue = {}
    for n in names:
        rule_et = [
            y
            for r in rows
            if r["ds"] == n
            for (lab, _), y in zip(r["rule"], r["y"])
            if y is not None and lab == "example-testing"
        ]
        gold_et = [why for r in rows if r["ds"] == n for (_, why), y in zip(r["rule"], r["y"]) if y == ET]
        cue[n] = {
            "rules_say_et": len(rule_et),
            "of_which_gpt4o_et": sum(y == ET for y in rule_et),
            "gpt4o_et_sentences": len(gold_et),
            "of_which_no_rule_cue": sum(w == "default" for w in gold_et),
        }
    out["cues"] = cue
    lines += [
        "",
        "| dataset | sentences the rules call example-testing | GPT-4o agrees | GPT-4o's example-testing "
        "sentences | with no cue of any rule (rules: default) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {d['rules_say_et']} | {d['of_which_gpt4o_et']} | {d['gpt4o_et_sentences']} | "
        f"{d['of_which_no_rule_cue']} |"
        for n, d in cue.items()
    ]

    # 3. parallel numeric lists: >= 3 consecutive labelled sentences with the same opening and a number
    runs: dict = {n: collections.Counter() for n in names}
    pure = total_runs = 0
    for r in rows:
        S, Y = r["sents"], r["y"]
        k = 0
        while k < len(S):
            j = k
            while j + 1 < len(S) and _opening(S[j + 1].text) == _opening(S[k].text):
                j += 1
            if j - k >= 2 and all(y is not None for y in Y[k : j + 1]) and any(c.isdigit() for c in S[k].text[:12]):
                labs = collections.Counter(BEHAVIORS[y] for y in Y[k : j + 1])
                runs[r["ds"]][labs.most_common(1)[0][0]] += 1
                total_runs += 1
                pure += len(labs) == 1
            k = j + 1
    out["numeric_lists"] = {
        "by_majority_label": {n: dict(c) for n, c in runs.items()},
        "runs": total_runs,
        "one_label_only": pure,
    }
    lines += [
        "",
        f"Parallel numeric lists (≥ 3 consecutive sentences opening alike, with a number; {total_runs} "
        f"lists, {pure} of them one label throughout), by GPT-4o's label:",
        "",
        "| dataset | " + " | ".join(BEHAVIORS) + " |",
        "|---|" + "---|" * len(BEHAVIORS),
    ]
    lines += [f"| {n} | " + " | ".join(str(runs[n].get(b, 0)) for b in BEHAVIORS) + " |" for n in names]

    # 4. identical sentences (numbers as 0, >= 12 characters) labelled in two places
    groups = collections.defaultdict(list)
    for r in rows:
        for s, y in zip(r["sents"], r["y"]):
            if y is not None and len(s.text) >= 12:
                groups[_norm(s.text)].append((r["trace"].id, y))
    same: dict = {}
    for scope in ("across traces", "within a trace"):
        d = {}
        for b in _TARGETS + ("deduction",):
            L = BEHAVIORS.index(b)
            both = one = 0
            for m in groups.values():
                for i in range(len(m)):
                    for j in range(i + 1, len(m)):
                        if (m[i][0] == m[j][0]) == (scope == "across traces"):
                            continue
                        x, y = m[i][1] == L, m[j][1] == L
                        both += x and y
                        one += x != y
            d[b] = {"both": both, "one": one, "dice": 2 * both / max(2 * both + one, 1)}
        same[scope] = d
    out["identical_sentences"] = same
    lines += [
        "",
        "Identical sentences (numbers as 0) labelled twice: pairs where both carry the label, where "
        "one does, and their agreement (Dice = F1 of one labelling against the other):",
        "",
        "| pairs | " + " | ".join(_TARGETS) + " | deduction |",
        "|---|" + "---|" * (len(_TARGETS) + 1),
    ]
    for scope, d in same.items():
        lines.append(
            f"| {scope} | " + " | ".join(f"{v['dice']:.2f} ({v['both']} / {v['one']})" for v in d.values()) + " |"
        )

    # 5. ceilings of the trained annotator's features
    dim = 1 << 14
    base = [[hash_features(f, dim) for f in sentence_features(r["sents"], r["rule"])] for r in rows]
    prev = [
        [
            hash_features(f + [f"gold_prev:{r['y'][k - 1] if k else None}"], dim)
            for k, f in enumerate(sentence_features(r["sents"], r["rule"]))
        ]
        for r in rows
    ]

    def fit_on(idx, feats):
        X = [x for i in idx for x, y in zip(feats[i], rows[i]["y"]) if y is not None]
        Y = [y for i in idx for y in rows[i]["y"] if y is not None]
        w, b, _ = fit_rows(X, Y, len(BEHAVIORS), dim=dim)
        return w, b

    @torch.no_grad()
    def logits(w, b, X):
        if not X:
            return torch.zeros(0, len(BEHAVIORS))
        flat = torch.tensor([i for x in X for i in x], dtype=torch.long)
        off = torch.tensor([0] + [len(x) for x in X[:-1]], dtype=torch.long).cumsum(0)
        return torch.nn.functional.embedding_bag(flat, w, off, mode="sum") + b

    def cv(feats):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)  # the folds of cross_validate
        scores = [None] * len(rows)
        for k in range(folds):
            test = [i for n, i in enumerate(order) if n % folds == k]
            w, b = fit_on([i for n, i in enumerate(order) if n % folds != k], feats)
            for i in test:
                scores[i] = logits(w, b, feats[i])
        return scores

    def score(labels_per_trace) -> dict:
        pred = ReasoningDataset(
            [
                r["trace"].with_spans([BehaviorSpan(BEHAVIORS[b], s.start, s.end) for s, b in zip(r["sents"], lab)])
                for r, lab in zip(rows, labels_per_trace)
            ]
        )
        g = ReasoningDataset(traces)
        res = {"pooled": annotation_agreement(g, pred, region="gold"), **agreement_by_dataset(g, pred, region="gold")}
        return {
            grp: {b: (d[b]["f1"] if d.get(b, {}).get("gold_spans") else None) for b in _TARGETS}
            for grp, d in res.items()
        }

    w, b = fit_on(range(len(rows)), base)
    ceil = {"in-sample (fitted on the traces it labels)": score([logits(w, b, x).argmax(-1).tolist() for x in base])}
    cv_scores = cv(base)
    ceil["cross-validated (the shipped settings)"] = score([s.argmax(-1).tolist() for s in cv_scores])
    ceil["cross-validated, GPT-4o's label of the previous sentence given"] = score(
        [s.argmax(-1).tolist() for s in cv(prev)]
    )
    best = (None, -1.0)
    for off in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
        shifted = [
            (s + torch.nn.functional.one_hot(torch.tensor(ET), len(BEHAVIORS)) * off).argmax(-1).tolist()
            for s in cv_scores
        ]
        f = score(shifted)
        if (f["pooled"]["example-testing"] or 0) > best[1]:
            best = ((off, f), f["pooled"]["example-testing"] or 0)
    ceil[f"cross-validated, example-testing logit +{best[0][0]} (chosen on these predictions)"] = best[0][1]
    auc = {}
    for n in names:
        pairs = [
            (float(p), y == ET, s.end - s.start)
            for r, sc in zip(rows, cv_scores)
            if r["ds"] == n
            for s, y, p in zip(r["sents"], r["y"], sc.softmax(-1)[:, ET].tolist())
            if y is not None
        ]
        auc[n] = _weighted_auc(pairs)
    out["ceilings"] = ceil
    out["example_testing_auc"] = auc
    lines += [
        "",
        "Ceilings of the trained annotator's features (character F1 where GPT-4o labelled; "
        "example-testing pooled and per dataset, the other three pooled):",
        "",
        "| fit | BT / UE / AK pooled | example-testing pooled | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for name, r in ceil.items():
        p = r["pooled"]
        lines.append(
            f"| {name} | {p['backtracking']:.2f} / {p['uncertainty-estimation']:.2f} / "
            f"{p['adding-knowledge']:.2f} | {p['example-testing']:.2f} | "
            + " | ".join("–" if r[n]["example-testing"] is None else f"{r[n]['example-testing']:.2f}" for n in names)
            + " |"
        )
    lines += [
        "",
        "Ranking AUC of the cross-validated example-testing probability (per character, 0.5 = chance): "
        + ", ".join(f"{n} {v:.2f}" for n, v in auc.items() if v is not None),
    ]
    return out, lines


if __name__ == "__main__":
    raise SystemExit(main())
