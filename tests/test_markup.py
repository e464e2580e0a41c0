"""Markup parser: every deviation of real annotation files, on small inline strings."""

from __future__ import annotations

import json

import pytest

from lrm_interp.data.markup import LABEL_ALIASES, canonical_label, parse_markup
from lrm_interp.data.traces import BEHAVIORS

CLEAN = (
    '["initializing"]Okay, start.["end-section"]\n\n["deduction"]So x = 2.["end-section"] '
    '["backtracking"]Wait, no.["end-section"]'
)


def labels(p):
    return [s.label for s in p.segments]


def texts(p):
    return [s.text for s in p.segments]


def test_clean_file_parses_without_repairs():
    p = parse_markup(CLEAN, source="c.txt")
    assert p.status == "parsed" and p.repairs == () and p.reason is None and p.notes == ()
    assert labels(p) == ["initializing", "deduction", "backtracking"]
    assert texts(p) == ["Okay, start.", "So x = 2.", "Wait, no."]
    assert [s.line for s in p.segments] == [1, 3, 3]
    assert [s.index for s in p.segments] == [0, 1, 2]
    json.dumps(p.to_dict())  # JSON-able


@pytest.mark.parametrize("fence", ["```", "```plaintext", "```markdown", "```text"])
def test_code_fence_removed(fence):
    p = parse_markup(f"{fence}\n{CLEAN}\n```\n")
    assert p.status == "repaired" and p.repairs == ("code fence",)
    assert texts(p) == texts(parse_markup(CLEAN)) and labels(p) == labels(parse_markup(CLEAN))
    assert [s.line for s in p.segments] == [2, 4, 4]  # fence lines are blanked, not deleted


def test_code_fence_with_preamble_reports_unlabelled_text():
    p = parse_markup(f"Here is the annotation:\n```\n{CLEAN}\n```")
    assert "code fence" in p.repairs and "unlabelled text" in p.repairs
    assert any("Here is the annotation" in n for n in p.notes)
    assert texts(p)[-1] == "Wait, no."  # the closing fence is not glued to the last segment


def test_numbered_labels():
    p = parse_markup(
        '["0. initializing"]A.["end-section"]["1. deduction"]B.["end-section"]["5) backtracking"]C.["end-section"]'
    )
    assert labels(p) == ["initializing", "deduction", "backtracking"]
    assert p.repairs == ("numbered label",)
    assert all(s.repairs == ("numbered label",) for s in p.segments)
    assert [s.raw_label for s in p.segments] == ["0. initializing", "1. deduction", "5) backtracking"]


def test_bare_numeric_tags_follow_venhoff_numbering():
    body = "".join(f'[{k}]text {k}.["end-section"] ' for k in range(6))
    p = parse_markup(body)
    assert labels(p) == list(BEHAVIORS)
    assert labels(p) == [
        "initializing",
        "deduction",
        "adding-knowledge",
        "example-testing",
        "uncertainty-estimation",
        "backtracking",
    ]
    assert p.repairs == ("numeric tag",) and texts(p) == [f"text {k}." for k in range(6)]
    # out of range: kept, unknown
    q = parse_markup("[1]a [7]b")
    assert labels(q) == ["deduction", None] and q.segments[1].raw_label == "7"


def test_numeric_tags_agree_with_numbered_label_fixture(paper_layout_dir):
    numbered = parse_markup((paper_layout_dir / "annotated/FOLIO/2.txt").read_text())
    bare = parse_markup((paper_layout_dir / "annotated/FOLIO/3.txt").read_text())
    assert labels(numbered) == labels(bare) and texts(numbered) == texts(bare)
    for s in numbered.segments:  # "k. name": k is the index of name in BEHAVIORS
        k, name = s.raw_label.split(". ")
        assert BEHAVIORS[int(k)] == name == s.label


def test_bare_numbers_are_text_in_files_with_quoted_labels():
    p = parse_markup('["deduction"]So a[2] = 5 and [3] more.["end-section"]')
    assert p.status == "parsed" and texts(p) == ["So a[2] = 5 and [3] more."]


def test_missing_end_markers():
    p = parse_markup('["initializing"]A b.\n\n["deduction"]C d. ["backtracking"]E f.\n')
    assert texts(p) == ["A b.", "C d.", "E f."]
    assert labels(p) == ["initializing", "deduction", "backtracking"]
    assert p.repairs == ("implicit end",) and all("implicit end" in s.repairs for s in p.segments)
    assert any(n.startswith("no end markers") for n in p.notes)


def test_labels_sharing_one_end_marker():
    p = parse_markup(
        '["deduction"]So x. ["uncertainty-estimation"]Hmm, not sure.["end-section"] '
        '["backtracking"]Wait.["end-section"]'
    )
    assert texts(p) == ["So x.", "Hmm, not sure.", "Wait."]
    assert [s.repairs for s in p.segments] == [("implicit end",), (), ()]
    assert any("shared end marker" in n for n in p.notes)


def test_two_labels_on_one_text_gives_an_empty_reported_segment():
    p = parse_markup('["deduction"]["backtracking"]Wait.["end-section"]')
    assert texts(p) == ["", "Wait."]
    assert any("empty segment [deduction]" in n for n in p.notes)


@pytest.mark.parametrize(
    "refusal",
    [
        "I'm sorry, the reasoning chain provided is quite long and I cannot annotate it fully.",
        "",
        "   \n",
        "Sure! Here is [some] text with brackets [a, b].",
    ],
)
def test_refusal_rejected_with_reason(refusal):
    p = parse_markup(refusal, source="r.txt")
    assert p.status == "rejected" and p.segments == ()
    assert p.reason.startswith("no annotation markup found")
    assert " ".join(refusal.split())[:40] in p.reason


def test_only_end_markers_rejected():
    p = parse_markup('text ["end-section"] more ["end-section"]')
    assert p.status == "rejected" and "only end markers" in p.reason


@pytest.mark.parametrize(
    "raw,canon",
    [
        ("deuction", "deduction"),
        ("intializing", "initializing"),
        ("Example-testing", "example-testing"),
        ("certainty-estimation", "uncertainty-estimation"),
        ("DEDUCTION", "deduction"),
        ("Back-Tracking", "backtracking"),
        ("exampe-testing", "example-testing"),
        ("addition-knowledge", "adding-knowledge"),
        ("  Deuction ", "deduction"),
    ],
)
def test_alias_table(raw, canon):
    assert canonical_label(raw) == (canon, ["alias"])
    p = parse_markup(f'["{raw}"]Some text.["end-section"]')
    assert labels(p) == [canon] and p.repairs == ("alias",) and p.segments[0].raw_label == raw


def test_alias_table_targets_are_behaviors():
    assert set(LABEL_ALIASES.values()) <= set(BEHAVIORS)
    assert all(k == k.lower().strip() for k in LABEL_ALIASES)


def test_invented_labels_not_mapped_unless_asked():
    p = parse_markup('["verification"]So n = 11.["end-section"]["clarification"]I mean 11.["end-section"]')
    assert labels(p) == [None, None] and p.status == "parsed"
    assert p.unknown_labels() == ["verification", "clarification"]
    assert any("unknown label 'verification'" in n for n in p.notes)
    q = parse_markup('["verification"]So n = 11.["end-section"]', aliases={"Verification": "example-testing"})
    assert labels(q) == ["example-testing"] and q.repairs == ("alias",)
    assert canonical_label("verification") == (None, [])
    assert canonical_label("1. verification") == (None, ["numbered label"])
    with pytest.raises(ValueError, match="must be one of"):
        parse_markup("x", aliases={"verification": "checking"})


def test_unquoted_known_label_accepted_unknown_word_is_text():
    p = parse_markup('["uncertainty-estimation"] Hmm, odd. [backtracking] Let me redo [note] it. ["end-section"]')
    assert labels(p) == ["uncertainty-estimation", "backtracking"]
    assert texts(p) == ["Hmm, odd.", "Let me redo [note] it."]
    assert "unquoted label" in p.segments[1].repairs and "implicit end" in p.segments[0].repairs


def test_quote_variants():
    p = parse_markup("['deduction']A.['end-section'] [“backtracking”]B.[“end-section”]")
    assert labels(p) == ["deduction", "backtracking"] and texts(p) == ["A.", "B."]


def test_stray_end_marker_and_unlabelled_text():
    p = parse_markup('["end-section"]stray ["deduction"]x["end-section"] trailing words')
    assert "stray end marker" in p.repairs and "unlabelled text" in p.repairs
    assert texts(p) == ["x"]
    assert any("'stray'" in n for n in p.notes) and any("'trailing words'" in n for n in p.notes)


def test_separator_lines_not_glued_to_segments():
    p = parse_markup('["deduction"]A.\n\n---\n\n["backtracking"]B.\n***')
    assert texts(p) == ["A.", "B."]
    q = parse_markup('["deduction"]A.["end-section"]\n\n---\n\n["backtracking"]B.["end-section"]')
    assert q.status == "parsed"  # a bare separator between segments is not unlabelled text


def test_crlf_and_multiline_segment_text_kept_verbatim():
    p = parse_markup('["deduction"]line one\r\nline two["end-section"]')
    assert texts(p) == ["line one\nline two"]
