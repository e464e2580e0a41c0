"""Markup parser, aligner and paper-layout loader against every fixture deviation."""

from __future__ import annotations

import json

import pytest

from lrm_interp.data.align import align_segments, normalise
from lrm_interp.data.markup import canonical_label, parse_markup
from lrm_interp.data.paper_layout import load_paper_layout
from lrm_interp.data.prompts import build_prompt
from lrm_interp.data.traces import ReasoningDataset


@pytest.fixture(scope="module")
def layout(paper_layout_dir):
    return load_paper_layout(paper_layout_dir)


def test_every_fixture_file_accounted_for(layout, paper_layout_dir):
    cases = json.loads((paper_layout_dir / "CASES.json").read_text())
    files = {(f.dataset, f.index): f for f in layout.report.files}
    assert len(files) == len(cases) == 8
    expected = {"clean": "parsed", "refusal instead of annotation": "rejected"}
    for c in cases:
        f = files[(c["dataset"], str(c["index"]))]
        assert f.status == expected.get(c["case"], "repaired"), (c, f.status)
    assert files[("FOLIO", "1")].repairs == ("code fence",)
    assert files[("FOLIO", "2")].repairs == ("numbered label",)
    assert files[("FOLIO", "3")].repairs == ("numeric tag",)
    assert files[("FOLIO", "4")].repairs == ("implicit end",)
    assert "implicit end" in files[("FOLIO", "5")].repairs
    assert "no annotation markup" in files[("temporal_sequences", "0")].reason
    # the rejected trace is kept (it belongs to D-) with no spans
    assert layout["temporal_sequences/0"].spans == ()
    c = layout.report.counts()
    assert c["segments"] == 61 and c["segments_placed"] == 60


def test_folio_variants_give_identical_spans(layout):
    ref = layout["FOLIO/0"]
    assert len(ref.spans) == 9
    for s in ref.spans:  # every known segment at its (unique) occurrence in the response
        assert ref.response.index(ref.span_text(s)) == s.start
    for j in range(1, 6):
        assert layout[f"FOLIO/{j}"].spans == ref.spans, j
    labels = [s.behavior for s in ref.spans]
    assert labels == [
        "initializing",
        "adding-knowledge",
        "deduction",
        "uncertainty-estimation",
        "example-testing",
        "deduction",
        "backtracking",
        "deduction",
        "deduction",
    ]


def test_aime_aliases_collapsed_newlines_and_repeats(layout):
    t = layout["AIME_2024/0"]
    by = [(s.behavior, t.span_text(s)) for s in t.spans]
    assert [b for b, _ in by] == [
        "initializing",
        "example-testing",
        "deduction",
        "backtracking",
        "uncertainty-estimation",
        "example-testing",
    ]
    long_seg = by[5][1]
    assert long_seg.startswith("Let me check 2 through 10") and long_seg.endswith("which is consistent.")
    assert "\n\n" in long_seg  # spans the blank line the annotator collapsed
    # the invented label is aligned to the LAST "So the smallest n is 11." (after the long segment)
    rep = [s for f in layout.report.files for s in f.segments if s.raw_label == "verification"][0]
    assert rep.label is None and rep.status == "not placed"
    last = t.response.rindex("So the smallest n is 11.")
    assert (rep.start, rep.end) == (last, last + len("So the smallest n is 11."))


def test_repeated_sentence_goes_to_the_right_occurrence():
    resp = "A. Check it. B. Check it. C."
    parsed = parse_markup(
        '["deduction"]A.["end-section"]["example-testing"]Check it.["end-section"]'
        '["deduction"]B.["end-section"]["example-testing"]Check it.["end-section"]'
    )
    spans, reps = align_segments(resp, parsed.segments)
    checks = [s for s in spans if s.behavior == "example-testing"]
    assert [(s.start, s.end) for s in checks] == [(3, 12), (16, 25)]


def test_never_placed_in_prompt():
    from lrm_interp.data.paper_layout import load_paper_layout  # noqa: F401  (API import check)

    prompt_sentence = "Let me check."
    resp = "Start. " + prompt_sentence
    parsed = parse_markup('["example-testing"]Let me check.["end-section"]')
    spans, _ = align_segments(resp, parsed.segments)
    assert spans[0].start == 7  # offsets are into the response; the prompt is never searched


def test_long_segment_placed():
    sent = " ".join(f"step {i} adds {i} to the running total, which is fine." for i in range(12))
    assert len(sent) > 300
    resp = "Intro.\n\n" + sent.replace(", which", ",\nwhich") + "\n\nDone."
    parsed = parse_markup(f'["deduction"]{sent}["end-section"]')
    spans, reps = align_segments(resp, parsed.segments)
    assert reps[0].status == "placed"
    assert " ".join(resp[spans[0].start : spans[0].end].split()) == sent


def test_fuzzy_and_not_found():
    resp = "We know that the capital of Zorbia is Quell, founded long ago by the river people of the north."
    seg_text = "We know that the capital of Zorbia is Quell, founded long ago by the river folk of the north."
    parsed = parse_markup(f'["adding-knowledge"]{seg_text}["end-section"]["deduction"]Nowhere here.')
    spans, reps = align_segments(resp, parsed.segments)
    assert reps[0].status == "placed fuzzy" and (spans[0].start, spans[0].end) == (0, len(resp))
    assert reps[1].status == "not placed" and "not found" in reps[1].reason


def test_labels():
    assert canonical_label("deuction") == ("deduction", ["alias"])
    assert canonical_label("Example-testing") == ("example-testing", ["alias"])
    assert canonical_label("3. example-testing") == ("example-testing", ["numbered label"])
    assert canonical_label("5") == ("backtracking", ["numeric tag"])
    assert canonical_label("verification") == (None, [])
    assert canonical_label("verification", {"verification": "example-testing"}) == ("example-testing", ["alias"])
    assert canonical_label("9") == (None, [])


def test_parse_edge_cases():
    p = parse_markup('["end-section"]stray ["deduction"]x["end-section"] trailing words')
    assert "stray end marker" in p.repairs and "unlabelled text" in p.repairs
    assert [s.text for s in p.segments] == ["x"]
    empty = parse_markup('["deduction"]["end-section"]')
    _, reps = align_segments("abc", empty.segments)
    assert reps[0].reason == "empty segment text"


def test_normalise_map():
    n, idx = normalise("a \n\n b\tc")
    assert n == "a b c" and idx == [0, 1, 5, 6, 7]


def test_prompts_and_problems(paper_layout_dir, tmp_path):
    assert build_prompt("AIME_2024", {"problem": "Find n."}) == "Find n.\n<think>\n"
    assert build_prompt("temporal_sequences", {"input": "Q"}).endswith("Q\n<think>\n")
    assert "as fewer number of words" in build_prompt("musique", {"question": "Who?"})
    with pytest.raises(KeyError, match="no prompt builder"):
        build_prompt("gsm8k", {})
    ds = load_paper_layout(
        paper_layout_dir,
        datasets=["FOLIO"],
        problems={
            "folio": [
                {
                    "premises": ["All glims are blue.", "Toma is a glim."],
                    "conclusion": "Toma is red.",
                    "label": "Uncertain",
                }
            ]
        },
    )
    t0 = ds["FOLIO/0"]
    assert (
        t0.prompt.endswith("Conclusion: Toma is red.\n*******<think>\n") and t0.metadata["gold_answer"] == "Uncertain"
    )
    assert ds["FOLIO/1"].prompt == ""
    assert any("no problem #1" in n for n in ds.report.files[1].notes)
    # spans stay on the response after the prompt is added
    assert t0.text[t0.abs_span(t0.spans[0])[0] :].startswith("Okay, so I need")


def test_jsonl_roundtrip(layout, tmp_path):
    p = layout.save_jsonl(tmp_path / "l.jsonl")
    back = ReasoningDataset.load_jsonl(p)
    assert [t.spans for t in back] == [t.spans for t in layout]
    assert [t.metadata for t in back] == [t.metadata for t in layout]


def test_missing_files_reported(tmp_path):
    (tmp_path / "outputs" / "X").mkdir(parents=True)
    (tmp_path / "annotated" / "X").mkdir(parents=True)
    (tmp_path / "outputs" / "X" / "0.txt").write_text("Hello there.")
    (tmp_path / "annotated" / "X" / "1.txt").write_text('["deduction"]Hi["end-section"]')
    ds = load_paper_layout(tmp_path, keep_unannotated=True)
    st = {f.index: f.status for f in ds.report.files}
    assert st == {"0": "missing annotation", "1": "missing output"}
    assert len(ds) == 1 and ds[0].spans == ()
