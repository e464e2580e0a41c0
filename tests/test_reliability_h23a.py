"""Issue 22 hostile probe, annotation cache cases: a hand-edited cache entry was believed (H23-ACACHE), and
a cache entry whose span ran past the response was refused naming the trace, not the cache file
(H23-CACHEMSG). Every cache entry now carries a digest (``entry_sha256``); an entry that fails it, or
is otherwise corrupt, or was written without one (format ``lrm_interp.annotation_cache/1``) is stale:
the trace is re-annotated, the entry rewritten, and the run's summary counts and names it."""

from __future__ import annotations

import json
from pathlib import Path

from cli_run import run_cli as _rc

from lrm_interp.data.annotators.driver import CACHE_FORMAT, annotate_dataset, load_outputs
from lrm_interp.data.annotators.r1 import R1RuleAnnotator

RESPONSES = {
    "math/0": "Okay, so I need to compute 71 + 46 - 31. 71 + 46 = 117. 117 - 31 = 86. So the result is 86.\n"
    "</think>\nThe answer is 86.",
    "math/1": "Hmm, let me add 2 and 3. 2 + 3 = 5. Wait, let me check that again. Yes, 5 is right.\n"
    "</think>\nThe answer is 5.",
}


def _outputs(tmp_path: Path) -> Path:
    p = tmp_path / "outs.jsonl"
    p.write_text("".join(json.dumps({"id": k, "prompt": "Q", "response": v}) + "\n" for k, v in RESPONSES.items()))
    return p


def _entry(cache: Path, trace_id: str) -> Path:
    """The cache file of ``trace_id``."""
    (path,) = [p for p in cache.glob("*.json") if json.loads(p.read_text())["trace_id"] == trace_id]
    return path


def test_edited_cache_entry_is_reannotated_and_reported(tmp_path):
    """H23-ACACHE: a label edited in a cache entry's ``segments`` was used (``6 from cache``, the span
    counts changed). Now the entry fails its digest: the trace is re-annotated, the entry rewritten,
    and the summary counts the stale entry naming the cache file."""
    data, cache = _outputs(tmp_path), tmp_path / "C"
    first = annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    path = _entry(cache, "math/0")
    good = path.read_text()
    d = json.loads(good)
    assert d["format"] == CACHE_FORMAT == "lrm_interp.annotation_cache/2" and "entry_sha256" in d
    d["segments"][0][0] = "backtracking" if d["segments"][0][0] != "backtracking" else "deduction"
    path.write_text(json.dumps(d))
    again = annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    assert [t.spans for t in again.dataset] == [t.spans for t in first.dataset]  # the edit is not used
    assert again.stats["cached"] == 1 and again.stats["annotated"] == 1 and again.stats["cache_stale"] == 1
    assert path.read_text() == good  # rewritten with the annotator's own labels
    s = again.summary()
    assert f"1 cache entry in {cache} was stale or corrupt, re-annotated and rewritten" in s, s
    assert f"{path.name}: its contents do not match its digest (edited or corrupt)" in s, s
    # an entry written before digests existed (format /1): re-annotated and counted, never believed
    d = json.loads(good)
    del d["entry_sha256"]
    d["format"] = "lrm_interp.annotation_cache/1"
    d["segments"][0][0] = "backtracking" if d["segments"][0][0] != "backtracking" else "deduction"
    path.write_text(json.dumps(d))
    third = annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    assert [t.spans for t in third.dataset] == [t.spans for t in first.dataset]
    assert third.stats["cache_stale"] == 1 and path.read_text() == good
    assert "written without a digest (format lrm_interp.annotation_cache/1)" in third.summary()
    # a sound cache: nothing stale, nothing said
    fourth = annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    assert fourth.stats["cached"] == 2 and fourth.stats["cache_stale"] == 0 and "stale" not in fourth.summary()


def test_cache_entry_span_past_the_response_is_reported_against_the_cache_file(tmp_path, capsys):
    """H23-CACHEMSG: a cache entry whose span ran past the response stopped ``annotate`` with
    "trace 'math/0': span ... ends past the response", naming the trace (its input has no spans).
    Now the entry is stale: the trace is re-annotated, the run succeeds and names the cache file."""
    data, cache = _outputs(tmp_path), tmp_path / "C"
    base = ["annotate", "--data", data, "--annotator", "rules", "--cache", cache, "--quiet"]
    assert _rc([*base, "--out", tmp_path / "a.jsonl"]) == 0
    path = _entry(cache, "math/0")
    good = path.read_text()
    for corrupt, why in (
        ("span", "its contents do not match its digest"),
        ("digest kept", ",500) runs past the thinking text (91 chars)"),
        ("not json", "not readable JSON"),
    ):
        d = json.loads(good)
        d["segments"][-1][2] = 500
        if corrupt == "digest kept":  # the digest recomputed: the span check still catches it
            from lrm_interp.data.annotators.driver import _entry_digest

            d["entry_sha256"] = _entry_digest(d)
        path.write_text(json.dumps(d) if corrupt != "not json" else good[:40])
        capsys.readouterr()
        out = tmp_path / f"b_{corrupt.replace(' ', '_')}.jsonl"
        assert _rc([*base, "--out", out]) == 0
        o = capsys.readouterr().out
        assert f"1 cache entry in {cache} was stale or corrupt, re-annotated and rewritten" in o, o
        (line,) = [x for x in o.splitlines() if x.strip().startswith(f"{path}: ")]
        assert why in line, o
        assert out.read_text() == (tmp_path / "a.jsonl").read_text()  # the spans the annotator gives
        assert path.read_text() == good
