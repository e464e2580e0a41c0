"""Bad input to ``lrm-interp annotate`` (issue 20): an empty response, a response without
``</think>``, a 1 MB response and input that is not valid UTF-8 / Unicode each end in a counted
skip or one clear line naming the file and line -- never a traceback, never a silent drop.

The default (shipped, trained) annotator is used throughout unless a test says otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lrm_interp.cli.main import main
from lrm_interp.data.annotators.driver import NO_THINK_END_NOTE, annotate_dataset, load_outputs, unencodable_text
from lrm_interp.data.annotators.r1 import R1RuleAnnotator
from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace, TraceFormatError


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _annotate(src: Path, out: Path, *extra: str) -> int:
    return main(["annotate", "--data", str(src), "--out", str(out), "--quiet", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_empty_responses_are_kept_and_counted(tmp_path, capsys):
    """'' / white space only / an empty thinking part ('</think>answer'): each kept in --out
    without spans, status rejected with the reason, and counted in the summary and the report."""
    src = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "empty", "prompt": "p", "response": ""},
            {"id": "blank", "prompt": "p", "response": "  \n\n\t "},
            {"id": "no-thinking", "prompt": "p", "response": "</think>The answer is 3."},
            {"id": "ok", "prompt": "p", "response": "Okay, so I need x. Wait, that is wrong.</think>x = 2"},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert _annotate(src, out) == 0
    text = capsys.readouterr().out
    assert "3 skipped (empty response)" in text and "1 annotated" in text
    got = {json.loads(ln)["id"]: json.loads(ln) for ln in out.read_text().splitlines()}
    assert list(got) == ["empty", "blank", "no-thinking", "ok"]  # order kept, nothing dropped
    for tid in ("empty", "blank", "no-thinking"):
        assert got[tid]["spans"] == [] and got[tid]["metadata"]["annotation_status"] == "rejected"
    assert got["ok"]["spans"]
    rep = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert rep["stats"]["skipped_empty"] == 3 and rep["stats"]["traces"] == 4 and rep["stats"]["annotated"] == 1
    rejected = [f for f in rep["files"] if f["status"] == "rejected"]
    assert len(rejected) == 3 and all("empty response" in f["reason"] for f in rejected)


def test_a_response_without_think_end_is_annotated_whole_and_counted(tmp_path, capsys):
    resp = "Okay, so I need to find x. Let me check: 2 + 2 = 4. Wait, that is wrong. So x = 5."
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": "open", "prompt": "p", "response": resp}])
    out = tmp_path / "out.jsonl"
    assert _annotate(src, out) == 0
    assert "1 without </think> (whole response annotated)" in capsys.readouterr().out
    spans = json.loads(out.read_text())["spans"]
    assert spans and max(s["end"] for s in spans) == len(resp)  # the whole text, up to its last character
    rep = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert rep["stats"]["without_think_end"] == 1
    assert NO_THINK_END_NOTE in rep["files"][0]["notes"]


@pytest.mark.parametrize("kind", ["sentences", "one sentence"])
def test_a_one_megabyte_response_is_annotated_by_the_default_annotator(tmp_path, capsys, kind):
    """1 MB of R1-style sentences (44,000 of them), or 1 MB with no sentence boundary at all:
    annotated like any other response, offsets placed directly (no alignment), in seconds."""
    think = (
        "Wait, let me check 12 + 3 = 15. Hmm, not sure. " * 22000 if kind == "sentences" else "a " * 500_000
    ).rstrip()
    resp = think + "</think> The answer is 1."
    assert len(resp) > 1_000_000
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": "big", "prompt": "p", "response": resp}])
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    assert _annotate(src, out) == 0
    assert time.monotonic() - t0 < 120  # ~6 s on one core; a quadratic step would take hours
    capsys.readouterr()
    spans = json.loads(out.read_text())["spans"]
    assert len(spans) == (44000 if kind == "sentences" else 1)
    assert spans[0]["start"] == 0 and spans[-1]["end"] == len(think)
    rep = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert rep["stats"]["annotated"] == 1 and rep["files"][0]["status"] == "parsed"


def test_a_response_over_the_size_limit_is_refused_or_counted(tmp_path, capsys, monkeypatch):
    """Reading: one line naming file:line and both sizes. Python API given traces directly:
    kept without spans and counted (``skipped_too_large``)."""
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "p", "response": "Okay. " * 50}])
    monkeypatch.setenv("LRM_INTERP_MAX_RESPONSE_CHARS", "100")
    assert _annotate(src, tmp_path / "out.jsonl") == 2
    line = _one_error_line(capsys)
    assert "in.jsonl:1" in line and "300" in line and "100" in line
    assert not (tmp_path / "out.jsonl").exists()
    monkeypatch.delenv("LRM_INTERP_MAX_RESPONSE_CHARS")
    traces = ReasoningDataset([ReasoningTrace("a", "p", "Okay. " * 50), ReasoningTrace("b", "p", "Okay. Wait, no.")])
    run = annotate_dataset(traces, R1RuleAnnotator(), progress=False, max_response_chars=100)
    assert run.stats["skipped_too_large"] == 1 and run.stats["annotated"] == 1
    assert [t.id for t in run.dataset] == ["a", "b"] and not run.dataset[0].spans
    assert run.dataset[0].metadata["annotation_status"] == "rejected"


def test_invalid_utf8_ends_with_one_line_naming_file_line_and_byte(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"id": "a", "prompt": "p", "response": "fine"}\n{"id": "b", "prompt": "p", "response": "ok \xff\xfe"}\n'
    )
    assert _annotate(bad, tmp_path / "out.jsonl") == 2
    line = _one_error_line(capsys)
    assert "bad.jsonl:2" in line and "invalid UTF-8 at byte" in line
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.report.json").exists()
    # the paper layout: outputs/<task>/<j>.txt
    root = tmp_path / "layout"
    (root / "outputs" / "FOLIO").mkdir(parents=True)
    (root / "outputs" / "FOLIO" / "0.txt").write_text("Okay, so x.</think>x", encoding="utf-8")
    (root / "outputs" / "FOLIO" / "1.txt").write_bytes(b"Okay.\nSo \xc3( x.")
    assert _annotate(root, tmp_path / "out2.jsonl") == 2
    line = _one_error_line(capsys)
    assert "FOLIO/1.txt:2" in line and "invalid UTF-8" in line
    assert not (tmp_path / "out2.jsonl").exists()


def test_a_lone_surrogate_escape_ends_with_one_line_naming_file_line_and_field(tmp_path, capsys):
    r"""Valid UTF-8, valid JSON, but "\ud800" decodes to a string that is not valid Unicode: it used
    to fail at the very end, writing --out, with "'utf-8' codec can't encode character" and no file
    named. Now refused while reading, naming the file, the line and the field."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"id": "a", "prompt": "p", "response": "Okay. Wait, no."}\n'
        b'{"id": "b", "prompt": "p", "response": "Okay \\ud800 so x. Wait, no."}\n'
    )
    assert _annotate(src, tmp_path / "out.jsonl") == 2
    line = _one_error_line(capsys)
    assert "in.jsonl:2" in line and "'response'" in line and "surrogate" in line and "character 5" in line
    assert not (tmp_path / "out.jsonl").exists()
    src.write_bytes(b'{"id": "a", "prompt": "p", "response": "ok", "metadata": {"tags": ["x", "\\udc00"]}}\n')
    with pytest.raises(TraceFormatError, match=r"in.jsonl:1: 'metadata.tags\[1\]' holds a lone surrogate"):
        load_outputs(src)
    # a surrogate pair is a valid character (U+1F600), not an error
    src.write_bytes(b'{"id": "a", "prompt": "p", "response": "Okay \\ud83d\\ude00. Wait, no."}\n')
    assert load_outputs(src)[0].response == "Okay \N{GRINNING FACE}. Wait, no."
    assert unencodable_text({"id": "x", "response": "fine", "n": 3}) is None
