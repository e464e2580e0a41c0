"""Rule / LLM annotators and their agreement with gold annotations."""

from __future__ import annotations

import random

import pytest

from lrm_interp.data.annotate import LLMAnnotator, RuleAnnotator, annotate_response, annotation_agreement, thinking_part
from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace
from lrm_interp.toy.tasks import generate_dataset


def test_rule_annotator_labels_and_markup():
    text = (
        "Okay, I need to add 2 and 3. Recall that addition commutes. 2 + 3 = 5. Let me check: 5 - 3 = 2. "
        "Hmm, I'm not sure. Wait, that is wrong. So the sum is 5. Alternatively, count up."
    )
    m = RuleAnnotator().annotate(text)
    assert m == (
        '["initializing"]Okay, I need to add 2 and 3.["end-section"] '
        '["adding-knowledge"]Recall that addition commutes.["end-section"] '
        '["deduction"]2 + 3 = 5.["end-section"] ["example-testing"]Let me check: 5 - 3 = 2.["end-section"] '
        '["uncertainty-estimation"]Hmm, I\'m not sure.["end-section"] '
        '["backtracking"]Wait, that is wrong.["end-section"] ["deduction"]So the sum is 5.["end-section"] '
        '["backtracking"]Alternatively, count up.["end-section"]'
    )
    with pytest.raises(ValueError, match="not one of"):
        RuleAnnotator(rules=(("verification", "check"),))


def _naive_char_agreement(gold, pred):
    """Reference: per-character label sets compared position by position."""
    out = {}
    for g in gold:
        p = next(t for t in pred if t.id == g.id)
        for label in {s.behavior for s in g.spans} | {s.behavior for s in p.spans}:
            gm = [any(s.start <= i < s.end for s in g.spans_of(label)) for i in range(len(g.response))]
            pm = [any(s.start <= i < s.end for s in p.spans_of(label)) for i in range(len(g.response))]
            c = out.setdefault(label, [0, 0, 0])
            c[0] += sum(a and b for a, b in zip(gm, pm))
            c[1] += sum(pm)
            c[2] += sum(gm)
    return {k: (tp / max(np_, 1), tp / max(ng, 1)) for k, (tp, np_, ng) in out.items()}


def test_agreement_matches_naive_reference_on_random_spans():
    rng = random.Random(0)
    labels = ["deduction", "backtracking", "example-testing"]
    gold, pred = [], []
    for k in range(12):
        resp = "x" * 120

        def spans():
            out = []
            for _ in range(rng.randint(0, 5)):
                a = rng.randrange(120)
                out.append(BehaviorSpan(rng.choice(labels), a, min(120, a + rng.randint(1, 40))))
            return tuple(out)  # overlapping spans included on purpose

        gold.append(ReasoningTrace(f"t{k}", "", resp, spans()))
        pred.append(ReasoningTrace(f"t{k}", "", resp, spans()))
    fast = annotation_agreement(ReasoningDataset(gold), ReasoningDataset(pred))
    ref = _naive_char_agreement(gold, pred)
    assert set(fast) == set(ref)
    for k, (p, r) in ref.items():
        assert fast[k]["precision"] == pytest.approx(p) and fast[k]["recall"] == pytest.approx(r)


def test_span_level_agreement_hand_case():
    resp = "aaaa bbbb cccc dddd"
    g = ReasoningTrace(
        "a",
        "",
        resp,
        (BehaviorSpan("deduction", 0, 4), BehaviorSpan("deduction", 5, 9), BehaviorSpan("backtracking", 10, 19)),
    )
    p = ReasoningTrace("a", "", resp, (BehaviorSpan("deduction", 0, 9), BehaviorSpan("backtracking", 10, 14)))
    agr = annotation_agreement(ReasoningDataset([g]), ReasoningDataset([p]))
    # deduction: predicted [0,9) vs gold [0,4),[5,9): IoU 4/9 each < 0.5 → no span match; chars 8/9 precise
    assert agr["deduction"]["precision"] == pytest.approx(8 / 9) and agr["deduction"]["recall"] == 1.0
    assert agr["deduction"]["span_precision"] == 0.0 and agr["deduction"]["span_recall"] == 0.0
    # backtracking: [10,14) inside [10,19): IoU 4/9 → unmatched; precision 1, recall 4/9
    assert agr["backtracking"]["precision"] == 1.0 and agr["backtracking"]["recall"] == pytest.approx(4 / 9)
    assert (
        annotation_agreement(ReasoningDataset([g]), ReasoningDataset([p]), min_iou=0.4)["backtracking"]["span_recall"]
        == 1.0
    )
    with pytest.raises(ValueError, match="responses differ"):
        annotation_agreement(ReasoningDataset([g]), ReasoningDataset([ReasoningTrace("a", "", "zz")]))
    with pytest.raises(KeyError):
        annotation_agreement(ReasoningDataset([g]), ReasoningDataset([]))


def test_rule_annotator_agreement_with_generator_gold():
    gold = generate_dataset(40, seed=5)
    pred = ReasoningDataset([t.with_spans(annotate_response(t.response, RuleAnnotator())[0]) for t in gold])
    agr = annotation_agreement(gold, pred)
    print({k: {m: round(v, 3) for m, v in d.items()} for k, d in agr.items()})
    assert len(agr) == 6
    for label, d in agr.items():  # the generators use the cue phrases the rules look for
        assert d["f1"] >= 0.95 and d["span_recall"] >= 0.95, label
    # a annotator that labels everything "deduction" must score far lower on the target behaviours
    flat = RuleAnnotator(rules=())
    pred2 = ReasoningDataset([t.with_spans(annotate_response(t.response, flat)[0]) for t in gold])
    agr2 = annotation_agreement(gold, pred2)
    assert agr2["deduction"]["precision"] < 0.7 and "backtracking" not in agr2 or agr2["backtracking"]["recall"] == 0


def test_llm_annotator_interface():
    seen = {}

    def fake(prompt: str) -> str:
        seen["prompt"] = prompt
        return '["initializing"]Okay, I need to add.["end-section"] ["backtracking"]Wait, no.["end-section"]'

    resp = "Okay, I need to add. Wait, no.\n</think>\nThe answer is 1."
    assert thinking_part(resp) == "Okay, I need to add. Wait, no."
    spans, rep = annotate_response(resp, LLMAnnotator(fake))
    assert "Okay, I need to add. Wait, no." in seen["prompt"] and "</think>" not in seen["prompt"]
    for label in (
        "initializing",
        "deduction",
        "adding-knowledge",
        "example-testing",
        "uncertainty-estimation",
        "backtracking",
        '["end-section"]',
    ):
        assert label in seen["prompt"]
    assert [(s.behavior, s.start, s.end) for s in spans] == [("initializing", 0, 20), ("backtracking", 21, 30)]
    assert rep["placed"] == 2 and rep["segments"] == 2
    spans, rep = annotate_response(resp, LLMAnnotator(lambda p: "I cannot help with that."))
    assert spans == [] and rep["placed"] == 0


def test_build_annotator_names_and_files(tmp_path):
    from lrm_interp.data.annotate import ANNOTATOR_NAMES, LinearAnnotator, R1RuleAnnotator, build_annotator, markup

    assert set(ANNOTATOR_NAMES) == {"trained", "rules", "keyword", "llm"}
    shipped = build_annotator("trained")
    assert isinstance(shipped, LinearAnnotator)
    # fitted on the real development split, with its grouped cross-validation recorded
    assert shipped.info["traces"] == 58 and shipped.info["cross_validation"]["region"] == "gold"
    assert shipped.info["class_balance"] == 0.5 and shipped.info["l2"] == 0.01
    assert isinstance(build_annotator("rules"), R1RuleAnnotator)
    assert isinstance(build_annotator("keyword"), RuleAnnotator)
    llm = build_annotator("llm", model="m", base_url="http://127.0.0.1:9/v1", max_chunk_chars=100)
    assert isinstance(llm, LLMAnnotator) and llm.max_chunk_chars == 100 and llm.describe()["prompt"] == "venhoff"
    with pytest.raises(ValueError, match="not one of"):
        build_annotator("gpt-4o")
    gold = generate_dataset(2, seed=1)
    path = LinearAnnotator.fit(gold, dim=1 << 10, steps=20).save(tmp_path / "a.safetensors")
    assert isinstance(build_annotator(str(path)), LinearAnnotator)
    assert (
        markup([("deduction", "So x."), ("backtracking", "Wait.")])
        == '["deduction"]So x.["end-section"] ["backtracking"]Wait.["end-section"]'
    )


def test_sentence_annotators_place_their_own_offsets_exactly_as_the_aligner_would():
    """Rules, keyword rules and a trained annotator emit offsets directly; the spans equal
    what their markup gives through the parser and aligner (the route they took before), on
    text with repeated sentences, LaTeX and irregular white space."""
    from lrm_interp.data.annotate import LinearAnnotator, R1RuleAnnotator, markup
    from lrm_interp.data.annotators.base import DIRECT_NOTE, segments_report, sentence_segments
    from lrm_interp.data.paper_layout import annotate_trace

    loop = "Wait, is 12 right?  Hmm.\n\nLet me check: \\(3 \\cdot 4 = 12\\).   Wait, is 12 right? " * 20
    resp = "Okay, so I need to find x.\n" + loop + "So x = 12.\n</think>\nThe answer is 12."
    trained = LinearAnnotator.fit(generate_dataset(3, seed=2), dim=1 << 10, steps=20)
    for ann in (R1RuleAnnotator(), RuleAnnotator(), trained):
        spans, rep = annotate_response(resp, ann, source="t")
        via_markup, frep = annotate_trace(
            resp, markup([(lab, s.text) for s, lab in ann.label_sentences(resp.split("</think>")[0].rstrip())])
        )
        assert spans == list(via_markup.spans) and len(spans) > 60
        assert rep["status"] == "parsed" and rep["placed"] == rep["segments"] == len(spans)
    segs = sentence_segments(resp, R1RuleAnnotator())
    assert all(resp[a:b].strip() == resp[a:b] and b <= resp.index("</think>") for _, a, b in segs)
    spans, frep = segments_report(resp, segs + [("not-a-label", 0, 5)], source="t")
    assert len(spans) == len(segs) and frep.segments[-1].status == "not placed"
    assert "unknown label" in frep.segments[-1].reason and DIRECT_NOTE in frep.notes


def test_agreement_region_gold_scores_only_what_the_gold_labels():
    from lrm_interp.data.annotators.agreement import annotation_agreement
    from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace

    resp = "a" * 100
    gold = ReasoningDataset(
        [ReasoningTrace("t", "", resp, (BehaviorSpan("backtracking", 0, 20), BehaviorSpan("deduction", 20, 40)))]
    )
    # the prediction labels the whole text; the gold annotator stopped at 40 characters
    pred = ReasoningDataset(
        [ReasoningTrace("t", "", resp, (BehaviorSpan("backtracking", 0, 30), BehaviorSpan("deduction", 30, 100)))]
    )
    everywhere = annotation_agreement(gold, pred)
    inside = annotation_agreement(gold, pred, region="gold")
    assert everywhere["deduction"]["precision"] == pytest.approx(10 / 70)
    assert inside["deduction"]["precision"] == pytest.approx(1.0) and inside["deduction"]["recall"] == pytest.approx(
        0.5
    )
    assert inside["backtracking"]["precision"] == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match="region"):
        annotation_agreement(gold, pred, region="middle")


def test_bad_responses_are_counted_never_dropped(tmp_path, capsys):
    """Empty response: kept without spans and counted as skipped; no </think>: annotated whole,
    counted and noted; a 1 MB response: annotated (offsets direct, no alignment); invalid UTF-8:
    one line naming the file and line."""
    import json

    from lrm_interp.cli.main import main

    recs = [
        {"id": "empty", "prompt": "p", "response": ""},
        {"id": "open", "prompt": "p", "response": "Okay, so I need x. Wait, that is wrong. So x = 2."},
        {
            "id": "big",
            "prompt": "p",
            "response": "Wait, let me check 12 + 3 = 15. Hmm, not sure. " * 22000 + "</think> The answer is 1.",
        },
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out.jsonl"
    assert main(["annotate", "--annotator", "rules", "--data", str(src), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "1 skipped (empty response)" in text and "1 without </think>" in text
    got = {json.loads(ln)["id"]: json.loads(ln) for ln in out.read_text().splitlines()}
    assert set(got) == {"empty", "open", "big"} and got["empty"]["spans"] == []
    assert len(got["big"]["spans"]) == 44000 and len(recs[2]["response"]) > 1_000_000
    rep = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert rep["stats"]["skipped_empty"] == 1 and rep["stats"]["without_think_end"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "prompt": "p", "response": "ok \xff"}\n')
    assert main(["annotate", "--data", str(bad), "--out", str(tmp_path / "b.jsonl"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "UTF-8" in err and not (tmp_path / "b.jsonl").exists()
