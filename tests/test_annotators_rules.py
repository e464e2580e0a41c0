"""The R1 rule annotator: every documented rule on a sentence it must fire on and a near miss it
must not fire on; the agreement on the hand-labelled R1-style set (tests/data/r1_style)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrm_interp.cli.main import main
from lrm_interp.data.annotate import (
    RULE_TABLE,
    R1RuleAnnotator,
    RuleAnnotator,
    annotate_response,
    annotation_agreement,
    thinking_part,
)
from lrm_interp.data.paper_layout import load_paper_layout
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset

R1_STYLE = Path(__file__).resolve().parent / "data" / "r1_style"

# (rule, label, text whose last sentence the rule must label, near miss whose last sentence it must not)
PRE = "We compute the sum step by step. So the sum is 12.\n\n"
CASES = [
    (
        "restating",
        "initializing",
        "Okay, let me read this. The premises: every cat is a mammal.",
        PRE + "The premises say nothing about dogs, so it is open.",
    ),
    ("retraction", "backtracking", PRE + "Hmm, no, that's wrong, the sum is 14.", PRE + "That's right, the sum is 12."),
    (
        "hedged retraction",
        "uncertainty-estimation",
        PRE + "Maybe I miscounted the terms.",
        PRE + "I miscounted the terms.",
    ),
    (
        "switch approach",
        "backtracking",
        PRE + "Let me try a different approach: pair the terms.",
        PRE + "Let me try to pair the terms.",
    ),
    (
        "check (another way)",
        "example-testing",
        PRE + "As a check, I can compute it another way: 5 + 7 = 12.",
        PRE + "I can compute it another way: pair the terms.",
    ),
    ("bare hmm", "uncertainty-estimation", PRE + "Hmm.", PRE + "Hmm, so the sum is 12."),
    (
        "wait + question",
        "uncertainty-estimation",
        PRE + "Wait, is that the full list?",
        PRE + "Wait, the list has 5 terms, not 4.",
    ),
    (
        "wait + check",
        "example-testing",
        PRE + "Wait, let me verify with n = 3: 3 + 9 = 12.",
        PRE + "Wait, 3 + 9 is 12, not 11.",
    ),
    (
        "hmm + fact",
        "adding-knowledge",
        "Okay, the question asks about the river.\n\nThe city is Paris. Hmm, the Seine flows through Paris.",
        PRE + "Hmm, the sum flows from the terms.",
    ),
    (
        "wait + re-derivation",
        "backtracking",
        PRE + "Wait, 7 times 8 is 56, not 54.",
        PRE + "Wait, is 7 times 8 really 56?",
    ),
    ("bare wait", "backtracking", PRE + "Wait, hold that thought.", PRE + "Wait, I'm not sure."),
    ("oh + correction", "backtracking", PRE + "Oh, I see: the last term is 9, not 8.", PRE + "Oh, nice."),
    (
        "hmm without derivation",
        "uncertainty-estimation",
        PRE + "Hmm, that seems like a lot of work.",
        PRE + "Hmm, then 3 + 9 = 12.",
    ),
    ("hedge", "uncertainty-estimation", PRE + "I'm not sure the last term belongs.", PRE + "The last term belongs."),
    (
        "check",
        "example-testing",
        PRE + "Let me double-check by adding again: 3 + 4 + 5 = 12.",
        PRE + "Let me add the terms again.",
    ),
    (
        "instance",
        "example-testing",
        PRE + "For example, if n = 2, then the sum is 5.",
        PRE + "If n is even, then the sum is even.",
    ),
    (
        "recall",
        "adding-knowledge",
        PRE + "I recall that the sum of the first n odd numbers is n squared.",
        PRE + "I computed that the sum of the first n odd numbers is 16.",
    ),
    (
        "named result",
        "adding-knowledge",
        PRE + "Vieta's formulas relate the roots to the coefficients.",
        PRE + "So by Vieta, the sum of the roots is 5.",
    ),
    ("general law", "adding-knowledge", PRE + "A prime greater than 2 is always odd.", PRE + "This prime is odd."),
    (
        "option check",
        "example-testing",
        "Okay, the options are listed.\n\nThe gap is 2pm to 4pm.\n(B) 9am to 10am: he was at the shop, so no.",
        "Okay, the options are listed.\n\nThe gap is 2pm to 4pm.\nThe shop was open from 9am to 10am.",
    ),
    (
        "weak hedge",
        "uncertainty-estimation",
        PRE + "Perhaps the problem intends something else.",
        PRE + "Perhaps I should try induction.",
    ),
    (
        "make sure without a value",
        "uncertainty-estimation",
        PRE + "Let me make sure I read the question right.",
        PRE + "Let me make sure: 5 + 7 = 12.",
    ),
    (
        "self question",
        "uncertainty-estimation",
        PRE + "Is it the smaller root or the larger one?",
        PRE + "What is 5 + 7?",
    ),
    (
        "short reply",
        "example-testing",
        PRE + "Let me verify: 5 + 7 = 12. Correct.",
        PRE + "Let me verify: 5 + 7 = 12. So that settles the count of terms for good.",
    ),
    (
        "check continues",
        "example-testing",
        PRE + "Let me test n = 2. Then 2 + 2 = 4, which matches.",
        PRE + "Let me test n = 2.\n\nThen 2 + 2 = 4.",
    ),
    (
        "opening",
        "initializing",
        "Alright, so the task is to count the pairs.",
        PRE + "Alright, so the task is to count the pairs.",
    ),
    (
        "restating / plan",
        "initializing",
        "Okay, the problem gives a triangle. First, I'll find its area.",
        PRE + "First, I'll find its area.",
    ),
    (
        "fact statement",
        "adding-knowledge",
        "Okay, the question asks where he was born.\n\nLeonardo was born in Vinci, near Florence.",
        "Okay, the question asks where he was born.\n\nSo the answer is Vinci, near Florence.",
    ),
    (
        "default",
        "deduction",
        PRE + "Adding the last term gives 15.",
        PRE + "Wait, adding the last term gives 15, not 14.",
    ),
    (
        "bare opener + next",
        "uncertainty-estimation",
        PRE + "Hmm, wait. Did I skip the first term?",
        PRE + "Hmm, wait. The first term is 3, not 2.",
    ),
]


def _last(text: str, rule: str):
    out = R1RuleAnnotator().explain(text)
    return out[-2] if rule == "bare opener + next" else out[-1]


@pytest.mark.parametrize("rule,label,pos,neg", CASES, ids=[c[0] for c in CASES])
def test_rule_positive_and_negative(rule, label, pos, neg):
    _, got, why = _last(pos, rule)
    assert got == label and why.endswith(rule.split(" + ")[-1]) and why.split(" + ")[0] == rule.split(" + ")[0], (
        rule,
        got,
        why,
    )
    _, got2, why2 = _last(neg, rule)
    assert why2 != why, (rule, "near miss also matched", why2)
    if rule == "opening":
        assert got2 != label


def _rule_key(why: str) -> str:
    if " + " in why and why != "bare opener + next":
        head, tail = why.split(" + ", 1)
        return (
            "<opener> + question"
            if tail == "question"
            else "wait + re-derivation"
            if tail == "re-derivation"
            else "<opener> + fact"
            if tail == "fact"
            else "oh + correction"
            if tail == "correction"
            else "<opener> + <cue rule>"
        )
    if why.startswith("bare ") and why not in ("bare hmm",):
        return "bare wait"
    return why


def test_every_rule_that_fires_is_documented(gold):
    names = {n for n, _, _ in RULE_TABLE}
    assert all(doc for _, _, doc in RULE_TABLE)
    fired = {_rule_key(w) for t in gold for _, _, w in R1RuleAnnotator().explain(thinking_part(t.response))}
    assert fired <= names, fired - names
    assert len(fired) >= 20  # the gold set exercises most rules


@pytest.fixture(scope="module")
def gold():
    return load_paper_layout(R1_STYLE, progress=False)


def test_gold_set_is_complete_and_up_to_date(gold):
    assert subprocess.run([sys.executable, str(R1_STYLE / "build.py"), "--check"]).returncode == 0
    c = gold.report.counts()
    assert len(gold) >= 30 and c["segments"] >= 500 and c["segments_placed"] == c["segments"]
    assert c["files_without_prompt"] == 0
    split = json.loads((R1_STYLE / "split.json").read_text())
    assert sorted(split["dev"] + split["heldout"]) == sorted(t.id for t in gold)


def _agreement(gold, annotator, ids=None):
    g = gold.filter(lambda t: ids is None or t.id in ids)
    pred = ReasoningDataset([t.with_spans(annotate_response(t.response, annotator)[0]) for t in g])
    return annotation_agreement(g, pred)


def test_r1_rules_agreement_on_the_gold_set(gold):
    """The done-when of issue #11: character-level F1 >= 0.6 per target behaviour (docs/annotation.md)."""
    split = json.loads((R1_STYLE / "split.json").read_text())
    for ids in (None, set(split["heldout"])):
        agr = _agreement(gold, R1RuleAnnotator(), ids)
        for label in TARGET_BEHAVIORS:
            assert agr[label]["f1"] >= 0.6, (label, agr[label])
    old = _agreement(gold, RuleAnnotator())
    new = _agreement(gold, R1RuleAnnotator())
    assert sum(new[b]["f1"] for b in TARGET_BEHAVIORS) > sum(old[b]["f1"] for b in TARGET_BEHAVIORS) + 0.8


def test_cli_annotate_and_agree(tmp_path, capsys):
    out = tmp_path / "r1.jsonl"
    assert main(["annotate", "--annotator", "rules", "--data", str(R1_STYLE), "--out", str(out), "--quiet"]) == 0
    rep = json.loads((tmp_path / "r1.jsonl.report.json").read_text())
    assert rep["stats"]["traces"] == 44 and rep["annotator"] == {"name": "r1-rules"}
    assert rep["counts"]["segments_placed"] == rep["counts"]["segments"]
    capsys.readouterr()
    assert main(["annotate", "agree", "--gold", str(R1_STYLE), "--pred", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[0].lstrip("*"): ln.split() for ln in text.splitlines()[2:]}
    for label in TARGET_BEHAVIORS:
        assert float(rows[label][3]) >= 0.6  # char F1 column
    assert main(["annotate", "agree", "--gold", str(R1_STYLE), "--pred", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backtracking"]["f1"] >= 0.6
    # the default annotator is the shipped one fitted on real GPT-4o labels
    default = tmp_path / "default.jsonl"
    assert main(["annotate", "--data", str(R1_STYLE), "--out", str(default), "--quiet"]) == 0
    rep = json.loads((tmp_path / "default.jsonl.report.json").read_text())
    assert rep["annotator"]["name"] == "linear" and rep["annotator"]["traces"] == 58


def test_cli_errors_name_the_input(tmp_path, capsys):
    assert main(["annotate", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "ok"}\n{"prompt": "p"}\n')
    assert main(["annotate", "--data", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "response" in err and len(err.strip().splitlines()) == 1
    assert main(["annotate", "--annotator", "gpt", "--data", str(R1_STYLE), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--annotator gpt" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_text(  # one span: a gold without any is refused (H6-N6)
        '{"id": "AIME_2024/0", "prompt": "", "response": "different", '
        '"spans": [{"behavior": "deduction", "start": 0, "end": 9}]}\n'
    )
    copy = tmp_path / "copy.jsonl"  # the same file as --gold and --pred is refused (H13-AGS): a copy
    copy.write_bytes(other.read_bytes())
    assert main(["annotate", "agree", "--gold", str(other), "--pred", str(copy)]) == 0
    assert main(["annotate", "agree", "--gold", str(R1_STYLE), "--pred", str(other)]) == 2
    assert "missing" in capsys.readouterr().err


def test_docs_list_every_rule():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "annotation.md").read_text()
    for name, label, _ in RULE_TABLE:
        assert f"`{name}` | {label} |" in doc, name
