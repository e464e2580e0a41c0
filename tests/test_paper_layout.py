"""Paper-layout loader on the fixture files: accounting, exact spans, prompts, JSONL round trip."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from lrm_interp.data.paper_layout import ParseReport, UnannotatedTraceWarning, load_paper_layout
from lrm_interp.data.prompts import build_prompt, canonical_dataset, gold_answer
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset

FOLIO_LABELS = [
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


@pytest.fixture(scope="module")
def layout(paper_layout_dir):
    return load_paper_layout(paper_layout_dir, progress=False)


def test_every_fixture_annotation_file_accounted_for(layout, paper_layout_dir):
    cases = json.loads((paper_layout_dir / "CASES.json").read_text())
    files = {(f.dataset, f.index): f for f in layout.report.files}
    n_ann = len(list((paper_layout_dir / "annotated").glob("*/*.txt")))
    assert len(files) == len(cases) == n_ann == 8
    expected = {"clean": "parsed", "refusal instead of annotation": "rejected"}
    for c in cases:
        f = files[(c["dataset"], str(c["index"]))]
        assert f.status == expected.get(c["case"], "repaired"), (c, f.status)
    c = layout.report.counts()
    assert c["files"] == {"parsed": 1, "repaired": 6, "rejected": 1}
    assert files[("FOLIO", "1")].repairs == ("code fence",)
    assert files[("FOLIO", "2")].repairs == ("numbered label",)
    assert files[("FOLIO", "3")].repairs == ("numeric tag",)
    assert files[("FOLIO", "4")].repairs == ("implicit end",)
    assert files[("FOLIO", "5")].repairs == ("implicit end",)
    assert files[("AIME_2024", "0")].repairs == ("alias",)
    refusal = files[("temporal_sequences", "0")]
    assert refusal.reason.startswith("no annotation markup found") and "I'm sorry" in refusal.reason
    assert layout["temporal_sequences/0"].spans == ()  # kept: it belongs to D-
    # 6 FOLIO x 9 + AIME 7 segments; only the invented label is not placed
    assert c["segments"] == 61 and c["segments_placed"] == 60
    assert c["segments_by_status"] == {"placed": 60, "not placed": 1}
    assert c["not_placed_by_reason"] == {"unknown label": 1}
    assert len(layout) == 8 and [t.id for t in layout][:2] == ["AIME_2024/0", "FOLIO/0"]


def _known_segments_present(layout):
    """Segments with a known label whose (whitespace-normalised) text is in the response."""
    out = []
    for f in layout.report.files:
        t = layout[f.trace_id] if f.status not in ("missing output",) else None
        norm = " ".join(t.response.split()) if t else ""
        for s in f.segments:
            if s.label is not None and " ".join(s.text.split()) in norm:
                out.append(s)
    return out


def test_at_least_95_percent_of_present_segments_placed(layout):
    present = _known_segments_present(layout)
    assert len(present) == 60
    assert sum(s.placed for s in present) / len(present) >= 0.95


def test_folio_spans_equal_first_index_of_each_segment(layout):
    ref = layout["FOLIO/0"]
    assert [s.behavior for s in ref.spans] == FOLIO_LABELS
    for s in ref.spans:  # each FOLIO sentence is unique in its response
        assert ref.span_text(s) != "" and ref.response.index(ref.span_text(s)) == s.start
    ann = [s for s in layout.report.file("FOLIO/0").segments]
    for s, rep in zip(ref.spans, ann):
        assert (s.start, s.end) == (ref.response.index(rep.text), ref.response.index(rep.text) + len(rep.text))
    for j in range(1, 6):  # every deviation gives the same spans as the clean file
        assert layout[f"FOLIO/{j}"].spans == ref.spans, j
        assert layout[f"FOLIO/{j}"].response == ref.response


def test_aime_aliases_collapsed_newlines_and_repeated_sentence(layout):
    t = layout["AIME_2024/0"]
    r = t.response
    assert [s.behavior for s in t.spans] == [
        "initializing",
        "example-testing",
        "deduction",
        "backtracking",
        "uncertainty-estimation",
        "example-testing",
    ]
    reps = layout.report.file("AIME_2024/0").segments
    assert [x.raw_label for x in reps] == [
        "Initializing",
        "example-testing",
        "deuction",
        "backtracking",
        "certainty-estimation",
        "Example-testing",
        "verification",
    ]
    for s, rep in zip(t.spans[:5], reps[:5]):
        assert (s.start, s.end) == (r.index(rep.text), r.index(rep.text) + len(rep.text))
    long = t.spans[5]
    a = r.index("Let me check 2 through 10")
    b = r.index("which is consistent.") + len("which is consistent.")
    assert (long.start, long.end) == (a, b)
    assert "\n\n" in t.span_text(long)  # spans the blank line the annotator collapsed
    assert t.span_text(long).count("So the smallest n is 11.") == 1
    # the invented label: located at the LAST "So the smallest n is 11.", reported not placed
    v = reps[6]
    assert v.label is None and v.status == "not placed" and v.reason.startswith("unknown label 'verification'")
    last = r.rindex("So the smallest n is 11.")
    assert last > b and (v.start, v.end) == (last, last + len("So the smallest n is 11."))
    assert all(s.end <= r.index("</think>") for s in t.spans)


def test_extended_alias_table_places_invented_label_at_right_occurrence(paper_layout_dir):
    ds = load_paper_layout(
        paper_layout_dir, datasets=["aime"], aliases={"verification": "example-testing"}, progress=False
    )
    t = ds["AIME_2024/0"]
    last = t.response.rindex("So the smallest n is 11.")
    assert (t.spans[-1].behavior, t.spans[-1].start) == ("example-testing", last)
    assert ds.report.counts()["segments_placed"] == 7


def test_labels_filter(paper_layout_dir):
    ds = load_paper_layout(paper_layout_dir, datasets=["FOLIO"], labels=TARGET_BEHAVIORS, progress=False)
    assert set(ds.span_counts()) == {"adding-knowledge", "uncertainty-estimation", "example-testing", "backtracking"}
    assert ds.report.counts()["not_placed_by_reason"] == {"not selected": 6 * 5}


def test_prompt_never_receives_spans(paper_layout_dir):
    # a prompt containing sentences of the response: spans stay on the response
    problem = {
        "premises": "All glims are blue. Toma is a glim.",
        "conclusion": "So Toma is blue.",
        "label": "Uncertain",
    }
    ds = load_paper_layout(paper_layout_dir, datasets=["folio"], problems={"FOLIO": [problem] * 6}, progress=False)
    plain = load_paper_layout(paper_layout_dir, datasets=["FOLIO"], progress=False)
    for t, u in zip(ds, plain):
        assert t.prompt == build_prompt("FOLIO", problem) and "All glims are blue." in t.prompt
        assert t.spans == u.spans and t.metadata["gold_answer"] == "Uncertain"
        for s in t.spans:
            a, b = t.abs_span(s)
            assert a >= len(t.prompt) and t.text[a:b] == t.span_text(s)


def test_problems_file_under_root_and_missing_prompt_reported(paper_layout_dir, tmp_path):
    root = tmp_path / "layout"
    shutil.copytree(paper_layout_dir, root)
    (root / "problems").mkdir()
    (root / "problems" / "AIME_2024.jsonl").write_text(
        json.dumps({"Problem": "Find the smallest n with n^2 ending in 21.", "Answer": 11}) + "\n"
    )
    (root / "problems" / "temporal_sequences.json").write_text(
        json.dumps({"examples": [{"input": "Today, Ann woke up at 5am.", "target": "(B)"}]})
    )
    ds = load_paper_layout(root, progress=False)
    aime = ds["AIME_2024/0"]
    assert aime.prompt == "Find the smallest n with n^2 ending in 21.\n<think>\n"
    assert aime.metadata["gold_answer"] == 11 and aime.metadata["index"] == 0
    assert aime.metadata["dataset"] == "AIME_2024"
    assert ds["temporal_sequences/0"].metadata["gold_answer"] == "(B)"
    assert ds["temporal_sequences/0"].prompt.endswith("Today, Ann woke up at 5am.\n<think>\n")
    for j in range(6):  # no FOLIO problems: prompt "" and the report says so per trace
        assert ds[f"FOLIO/{j}"].prompt == ""
        assert any(n.startswith("no problem data") for n in ds.report.file(f"FOLIO/{j}").notes)
    assert ds.report.counts()["files_without_prompt"] == 6
    # more traces than problems: reported per trace
    ds2 = load_paper_layout(
        root, datasets=["FOLIO"], problems={"folio": [{"premises": "P.", "conclusion": "C."}]}, progress=False
    )
    assert ds2["FOLIO/0"].prompt != "" and ds2["FOLIO/1"].prompt == ""
    assert any("no problem #1" in n for n in ds2.report.file("FOLIO/1").notes)
    # a bad problems file names file and line
    (root / "problems" / "FOLIO.jsonl").write_text('{"premises": "x", "conclusion": "y"}\n{oops\n')
    with pytest.raises(Exception, match=r"FOLIO.jsonl:2"):
        load_paper_layout(root, datasets=["FOLIO"], progress=False)


def test_missing_files_reported(tmp_path):
    for d in ("outputs/X", "annotated/X"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "outputs/X/0.txt").write_text("Hello there.")
    (tmp_path / "annotated/X/1.txt").write_text('["deduction"]Hi["end-section"]')
    (tmp_path / "outputs/X/2.txt").write_text("Hi. Bye.")
    (tmp_path / "annotated/X/2.txt").write_text('["deduction"]Bye.["end-section"]')
    with pytest.warns(UnannotatedTraceWarning, match=r"1 output without an annotation file left out.*X/0"):
        ds = load_paper_layout(tmp_path, progress=False)
    st = {f.index: f.status for f in ds.report.files}
    assert st == {"0": "missing annotation", "1": "missing output", "2": "parsed"}
    # an output without annotation is left out (never scored as all-negative), as one without output is
    assert [t.id for t in ds] == ["X/2"] and "not loaded" in (ds.report.file("X/0").reason or "")
    kept = load_paper_layout(tmp_path, progress=False, keep_unannotated=True)
    assert [t.id for t in kept] == ["X/0", "X/2"] and kept["X/0"].spans == ()
    assert (ds["X/2"].spans[0].start, ds["X/2"].spans[0].end) == (4, 8)
    assert "X/1: missing output" in ds.report.summary()
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        load_paper_layout(tmp_path, datasets=["FOLIO"], progress=False)
    with pytest.raises(FileNotFoundError, match="paper layout expected"):
        load_paper_layout(tmp_path / "outputs", progress=False)


def test_report_is_json_able_and_summarised(layout, tmp_path):
    rep = layout.report
    assert isinstance(rep, ParseReport)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["counts"]["segments"] == 61 and len(d["files"]) == 8
    seg = d["files"][0]["segments"][5]
    assert seg["raw_label"] == "Example-testing" and seg["label"] == "example-testing" and seg["status"] == "placed"
    s = rep.summary()
    assert s.splitlines()[0] == "8 files: 1 parsed, 1 rejected, 6 repaired"
    assert "61 segments, 60 placed" in s and "[verification]: unknown label" in s
    assert "temporal_sequences/0: rejected" in s
    p = rep.save_json(tmp_path / "report.json")
    assert json.loads(p.read_text())["counts"] == json.loads(json.dumps(rep.counts()))


def test_jsonl_round_trip_preserves_spans(layout, tmp_path):
    p = layout.save_jsonl(tmp_path / "layout.jsonl")
    back = ReasoningDataset.load_jsonl(p)
    assert [t.id for t in back] == [t.id for t in layout]
    assert [t.spans for t in back] == [t.spans for t in layout]
    assert [t.metadata for t in back] == [t.metadata for t in layout]
    assert sum(len(t.spans) for t in back) == 60
    t = back["AIME_2024/0"]
    assert re.sub(r"\s+", " ", t.span_text(t.spans[5])).startswith("Let me check 2 through 10 quickly: 4, 9")


def test_prompt_builders_and_registry():
    assert build_prompt("AIME_2024", {"problem": "Find n."}) == "Find n.\n<think>\n"
    assert build_prompt("aime", {"Problem": "Find n."}) == "Find n.\n<think>\n"
    assert build_prompt("FOLIO", {"premises": "A.\nB.", "conclusion": "C."}) == (
        "Use logical deductions to determine whether the provided conclusion is true, false, or uncertain "
        "based on premise. Consider all relevant information to reach a logical conclusion.\n\n*******\n"
        "Premise: A.\nB.\n*******\n\n*******\nConclusion: C.\n*******<think>\n"
    )
    assert build_prompt("folio", {"premises": ["A.", "B."], "conclusion": "C."}) == build_prompt(
        "FOLIO", {"premises": "A.\nB.", "conclusion": "C."}
    )
    assert build_prompt("temporal_sequences", {"input": "Q?"}) == (
        "Use the timeline provided and answer step by step. Finally give the index (the letter) of the "
        "actual correct answer.\nQ?\n<think>\n"
    )
    assert build_prompt("MuSiQue100", {"question": "Who?"}) == (
        "Who? Final answer of this question should be in as fewer number of words as possible.\n<think>\n"
    )
    assert [canonical_dataset(n) for n in ("AIME_2024", "Temporal_Sequences", "musique", "folio", "gsm8k")] == [
        "aime",
        "temporal",
        "musique",
        "folio",
        None,
    ]
    with pytest.raises(KeyError, match="no prompt builder"):
        build_prompt("gsm8k", {})
    with pytest.raises(KeyError, match="premises"):
        build_prompt("FOLIO", {"conclusion": "C."})
    assert gold_answer("FOLIO", {"label": "True"}) == "True"
    assert gold_answer("AIME_2024", {"Answer": 204}) == 204
    assert gold_answer("MuSiQue", {"question": "?"}) is None
