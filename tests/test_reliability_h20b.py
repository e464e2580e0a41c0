"""Issue 22 ("nothing lost, nothing silent"): the twentieth hostile probe's findings H20-QSTR,
H20-QSROUND and H20-FEDIT.

H20-QSTR: rerunning the same ``quickstart`` into its folder regenerated a hand-edited
``traces.jsonl`` (the file its report offers as ``--data``) with no word; now refused, naming the file
and ``--overwrite`` (:func:`lrm_interp.experiments.quickstart.check_quickstart_traces`).

H20-QSROUND: ``quickstart --traces 2`` wrote 3 traces and ``--eval 4`` scored 3 problems (rounded to
whole per-family counts with no word); both are now refused unless a multiple of 3 (``--eval``: or 0),
in the library (:func:`lrm_interp.experiments.quickstart.check_per_family`), so the Python API and
the command line share the rule.

H20-FEDIT: ``FaithfulnessResult.load`` accepted an edited ``faithfulness.json`` (``top_k`` 3 with an
overlap of 10, a spearman its own arrays contradict); the rows are now checked against the stored
``atp`` / ``real`` arrays (:meth:`FaithfulnessResult.check_rows`)."""

from __future__ import annotations

import json

import pytest
from cli_run import err_line, run_cli
from synth import synthetic_traces

from lrm_interp.attribution.faithfulness import FaithfulnessResult, atp_faithfulness
from lrm_interp.experiments.quickstart import (
    quickstart_settings,
    quickstart_study,
    quickstart_traces,
    run_quickstart,
)
from lrm_interp.experiments.study import StudyResult
from lrm_interp.testing import byte_tokenizer, tiny_model


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_quickstart_rerun_refuses_to_replace_an_edited_traces_file(tmp_path, capsys):
    out = tmp_path / "qs"
    quickstart_study(out, n_traces=3, tiny=True, n_eval=0, progress=False)
    tr = out / "traces.jsonl"
    original = tr.read_bytes()
    rows = [json.loads(line) for line in original.decode().splitlines()]
    rows[0]["spans"] = rows[0]["spans"][:-1]  # the user drops a span by hand
    tr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"traces\.jsonl is not the traces file the quickstart wrote there") as e:
        quickstart_study(out, n_traces=3, tiny=True, n_eval=0, progress=False)
    assert "--overwrite" in str(e.value) and str(tr) in str(e.value)
    capsys.readouterr()  # the first run's bars
    assert run_cli(["quickstart", "--out", out, "--tiny", "--traces", 3, "--eval", 0, "--quiet"]) == 2
    assert "--overwrite" in err_line(capsys)
    assert _snapshot(out) == before  # the edit is kept, nothing else rewritten
    tr.write_bytes(original)  # an unedited file: the rerun resumes, as before
    assert quickstart_study(out, n_traces=3, tiny=True, n_eval=0, progress=False).rows == StudyResult.load(out).rows
    assert tr.read_bytes() == original


def test_quickstart_refuses_counts_that_are_not_whole_per_family(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"n_traces \(--traces\) must be a multiple of 3 .*got 2; use 3$"):
        quickstart_traces(2)
    with pytest.raises(ValueError, match=r"n_eval \(--eval\) must be 0 or a multiple of 3 .*got 4; use 3 or 6$"):
        quickstart_settings(n_eval=4)
    with pytest.raises(ValueError, match=r"n_traces \(--traces\) must be a multiple of 3"):
        quickstart_study(tmp_path / "api", n_traces=4, tiny=True, n_eval=0, progress=False)
    with pytest.raises(ValueError, match=r"n_eval \(--eval\) must be 0 or a multiple of 3"):
        run_quickstart(tmp_path / "api", n_traces=3, n_eval=4, progress=False)
    assert capsys.readouterr().out == ""  # refused before the header
    assert run_cli(["quickstart", "--out", tmp_path / "QX", "--traces", 2, "--eval", 3, "--quiet"]) == 2
    assert "--traces) must be a multiple of 3" in err_line(capsys)
    assert run_cli(["quickstart", "--out", tmp_path / "QX2", "--traces", 3, "--eval", 4, "--quiet"]) == 2
    assert "--eval) must be 0 or a multiple of 3" in err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    assert len(quickstart_traces(6)) == 6 and quickstart_settings(n_eval=6).per_task == 2  # valid values as before


def test_faithfulness_load_refuses_rows_its_arrays_contradict(tmp_path):
    res = atp_faithfulness(
        tiny_model("llama"), synthetic_traces(2), tokenizer=byte_tokenizer(), alphas=(0.1,), top_k=3, progress=False
    )
    good = res.save(tmp_path / "F")
    assert FaithfulnessResult.load(good).rows == res.rows  # a consistent file still loads
    doc = json.loads((good / "faithfulness.json").read_text())
    for i, (edit, fragment) in enumerate(
        [
            (lambda d: d["rows"][0].update(top_k_overlap=10), "has top_k_overlap 10, outside [0, 3] for top_k 3"),
            (lambda d: d["rows"][0].update(spearman=-0.5), "has spearman -0.5, but its atp / real arrays give"),
            (lambda d: d["rows"][0].update(top_k_overlap=0), "has top_k_overlap 0, but its atp / real arrays give"),
            # a row removed or twice (H21-FEDIT2)
            (lambda d: d["rows"].pop(0), "its rows are not one per alpha × behaviour (missing [(0.1, "),
            (
                lambda d: d["rows"].append(dict(d["rows"][0])),
                "its rows are not one per alpha × behaviour (missing [], twice",
            ),
            # the fields from per-span values: bounded by the arrays, and the record's digest (H21-FEDIT2, H22-FSITES)
            (lambda d: d["rows"][0].update(n_traces=d["rows"][0]["n_spans"] + 1), "(|D+| ≤ spans)"),
            (lambda d: d["rows"][0].update(unresolved_sites=5), "has unresolved_sites 5, but its real scores are 0"),
            (lambda d: d["rows"][0].update(signed_spearman=2.0), "has signed_spearman 2, outside [-1, 1]"),
            (lambda d: d["rows"][0].update(signed_spearman=0.1), "its record is not the one it was saved with"),
            (lambda d: d["rows"][0].update(n_spans=d["rows"][0]["n_spans"] + 1), "record_sha256 differs"),
        ]
    ):
        bad = tmp_path / f"E{i}"
        bad.mkdir()
        d = json.loads(json.dumps(doc))
        edit(d)
        text = json.dumps(d)
        (bad / "faithfulness.json").write_text(text)
        with pytest.raises(ValueError, match="edited or corrupt") as e:
            FaithfulnessResult.load(bad)
        assert str(bad / "faithfulness.json") in str(e.value) and fragment in str(e.value)
        assert any(w in str(e.value) for w in ("row alpha=0.1", "its rows", "its record"))
        assert (bad / "faithfulness.json").read_text() == text  # nothing changed
    assert doc["record_sha256"] and FaithfulnessResult.from_dict(doc).rows == res.rows
