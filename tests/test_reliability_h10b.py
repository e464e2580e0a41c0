"""Cases a ninth hostile probe run found (issue 22, "nothing lost, nothing silent"), part B: a
``study.json`` whose ``key_checksums`` were removed (H10-STK) and experiment rows whose
``measured_with`` was removed (H10-EXK) served the old results under edited settings; JSON records
that are no object gave "internal error (AttributeError ...)" and an unreadable experiment
``settings.json`` a message naming no file (H10-JSN); ``study`` / ``quickstart`` refused a bad
``$LRM_INTERP_SKIP_MEMORY_CHECK`` only after writing (H10-SMCL)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold

import lrm_interp as li
from lrm_interp.experiments import protection_table as pt
from lrm_interp.experiments import study as st

#: where the long-running protection experiments of this machine keep their folders (read, never written)
EXP_CACHE = Path.home() / ".cache" / "lrm_interp" / "exp"


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every entry under ``d``: its bytes (files) or ``None`` (folders)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def _copy(results: dict[str, Path], name: str, dst: Path) -> Path:
    shutil.copytree(results[name], dst)
    return dst


def _study_argv(gold: Path, out: Path, *extra) -> list:
    return ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, *extra, "--out", out, "--quiet"]


def _exp_argv(out: Path, tokens: int) -> list:
    return [
        "experiment",
        "protection",
        "--model",
        "toy",
        "--bits",
        3,
        "--per-family",
        1,
        "--only",
        "magnitude",
        "--max-new-tokens",
        tokens,
        "--out",
        out,
        "--quiet",
    ]


def _rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _write_rows(p: Path, rows: list[dict]) -> None:
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """A gold trace file, an attribution ``A``, a study ``SC`` and a protection experiment ``EX``
    (toy model, 60-token answers) of it."""
    d = tmp_path_factory.mktemp("h10b")
    gold = _gold(d, n=2)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / "A", "--quiet"]) == 0
    assert _rc(_study_argv(gold, d / "SC")) == 0
    assert _rc(_exp_argv(d / "EX", 60)) == 0
    return {"dir": d, "gold": gold, "A": d / "A", "SC": d / "SC", "EX": d / "EX"}


# ------------------------------------------------------------------ H10-STK
def test_a_study_json_stripped_of_its_key_checksums_is_refused(results, tmp_path, capsys):
    """``key_checksums`` removed and the budget edited 0.02 → 0.05: the rerun with ``--budget 0.05``
    exited 0 serving the 0.02 study's results.csv and bits.json, and wrote checksums over the edit."""
    doc = json.loads((results["SC"] / "study.json").read_text())
    assert doc["format"] == st.FORMAT == "lrm_interp.study/2" and st.KEY_CHECKSUMS in doc
    sc = _copy(results, "SC", tmp_path / "SC2")
    doc["settings"]["budget"] = 0.05
    del doc[st.KEY_CHECKSUMS]
    (sc / "study.json").write_text(json.dumps(doc))
    before = _tree(sc)
    capsys.readouterr()
    assert _rc(_study_argv(results["gold"], sc, "--budget", 0.05)) == 2
    line = _err_line(capsys)
    assert f"{sc / 'study.json'} has no key_checksums, but a study of format lrm_interp.study/2 records" in line, line
    assert "they were removed or damaged since the study wrote it" in line, line
    assert "delete the folder or rerun with --overwrite to start it over" in line, line
    assert _tree(sc) == before
    # the Python API: refused by the load, the resume and the save into it
    with pytest.raises(ValueError, match="has no key_checksums"):
        st.StudyResult.load(sc)
    with pytest.raises(ValueError, match="has no key_checksums"):
        st.run_study("toy", results["gold"], sc, budget=0.05, resamples=40, progress=False)
    # the budget unedited, the checksums removed: refused as well (nothing can vouch for the key)
    doc = json.loads((results["SC"] / "study.json").read_text())
    del doc[st.KEY_CHECKSUMS]["settings"]
    (sc / "study.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"was edited since the study wrote it \(settings\)"):
        st.StudyResult.load(sc)
    doc[st.KEY_CHECKSUMS] = 5
    (sc / "study.json").write_text(json.dumps(doc))
    with pytest.raises(
        ValueError, match=r"study.json holds key_checksums 5, but a study of format lrm_interp.study/2 records"
    ):
        st.StudyResult.load(sc)
    assert _tree(sc) == {**before, "study.json": (sc / "study.json").read_bytes()}


def test_a_study_of_the_older_format_resumes_unchecked_and_keeps_its_format(results, tmp_path, capsys):
    """A ``study.json`` of format ``lrm_interp.study/1`` without checksums (written before them)
    loads and resumes as before, but a resume keeps it in that format: writing checksums would
    vouch for settings nobody checked. One of format /1 that holds them (written by the version
    that added them) is checked, and a resume writes it in the new format."""
    sc = _copy(results, "SC", tmp_path / "SC1")
    doc = json.loads((results["SC"] / "study.json").read_text())
    old = {k: v for k, v in doc.items() if k != st.KEY_CHECKSUMS}
    old["format"] = st.FORMAT_UNCHECKED
    (sc / "study.json").write_text(json.dumps(old))
    loaded = st.StudyResult.load(sc)
    assert loaded.provenance["format"] == st.FORMAT_UNCHECKED
    capsys.readouterr()
    assert _rc(_study_argv(results["gold"], sc)) == 0
    again = json.loads((sc / "study.json").read_text())
    assert again["format"] == st.FORMAT_UNCHECKED and st.KEY_CHECKSUMS not in again
    assert again["rows"] == doc["rows"] and "format" not in again["provenance"]
    assert (sc / "results.csv").read_bytes() == (results["SC"] / "results.csv").read_bytes()
    # saved elsewhere, the loaded study keeps its format too
    saved = loaded.save(tmp_path / "copy")
    doc2 = json.loads((saved / "study.json").read_text())
    assert doc2["format"] == st.FORMAT_UNCHECKED and st.KEY_CHECKSUMS not in doc2
    # format /1 with checksums (the H9 version): checked, and written again as /2 with them
    sc = _copy(results, "SC", tmp_path / "SCh")
    (sc / "study.json").write_text(json.dumps({**doc, "format": st.FORMAT_UNCHECKED}))
    edited = json.loads(json.dumps({**doc, "format": st.FORMAT_UNCHECKED}))
    edited["settings"]["budget"] = 0.05
    sce = _copy(results, "SC", tmp_path / "SCe")
    (sce / "study.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"edited since the study wrote it \(settings\)"):
        st.StudyResult.load(sce)
    assert _rc(_study_argv(results["gold"], sc)) == 0
    again = json.loads((sc / "study.json").read_text())
    assert again["format"] == st.FORMAT and again[st.KEY_CHECKSUMS] == doc[st.KEY_CHECKSUMS]


# ------------------------------------------------------------------ H10-EXK
def test_experiment_rows_stripped_of_their_record_are_refused(results, tmp_path, capsys):
    """Rows whose ``measured_with`` was removed, plus ``settings.json`` edited (max_new_tokens 60 →
    20), resumed with ``--max-new-tokens 20``: exit 0 with the 60-token rows as the table."""
    settings = json.loads((results["EX"] / "settings.json").read_text())
    assert settings["format"] == pt.FORMAT == "lrm_interp.protection_experiment/2"
    ex = _copy(results, "EX", tmp_path / "EX")
    settings["settings"]["max_new_tokens"] = 20
    (ex / "settings.json").write_text(json.dumps(settings, indent=1))
    rows = _rows(ex / "rows.jsonl")
    _write_rows(ex / "rows.jsonl", [{k: v for k, v in r.items() if k != pt.MEASURED_WITH} for r in rows])
    before = _tree(ex)
    capsys.readouterr()
    assert _rc(_exp_argv(ex, 20)) == 2
    line = _err_line(capsys)
    assert f"{ex / 'rows.jsonl'}:1: row 'fp' records no measured_with, but {ex / 'settings.json'} (format " in line
    assert "says every row records what it was measured with: the record was removed" in line, line
    assert "delete that line (the row is re-measured) or use a new --out folder" in line, line
    assert _tree(ex) == before
    # one row stripped, the settings unedited: that row is named
    (ex / "settings.json").write_bytes((results["EX"] / "settings.json").read_bytes())
    _write_rows(ex / "rows.jsonl", [*rows[:2], {k: v for k, v in rows[2].items() if k != pt.MEASURED_WITH}])
    with pytest.raises(ValueError, match=r"rows.jsonl:3: row '2% magnitude' records no measured_with"):
        pt.run_protection_experiment(
            ex, only=["magnitude"], progress=False, per_family=1, max_new_tokens=60, symmetric=False
        )


def test_an_older_experiment_folder_resumes_and_keeps_its_format(results, tmp_path, capsys, monkeypatch):
    """A folder of format ``/1`` (rows without a record, as the long-running folders of an older
    version hold) still resumes, unchecked, and keeps its format; once every row records what it
    was measured with, the folder is written in the new format."""
    ex = _copy(results, "EX", tmp_path / "EX1")
    settings = json.loads((ex / "settings.json").read_text())
    (ex / "settings.json").write_text(json.dumps({**settings, "format": pt.FORMAT_UNCHECKED}, indent=1))
    rows = _rows(ex / "rows.jsonl")
    legacy = [{k: v for k, v in r.items() if k != pt.MEASURED_WITH} for r in rows]
    _write_rows(ex / "rows.jsonl", legacy)
    capsys.readouterr()
    assert _rc(_exp_argv(ex, 60)) == 0
    assert "| 2% magnitude |" in capsys.readouterr().out
    assert json.loads((ex / "settings.json").read_text())["format"] == pt.FORMAT_UNCHECKED
    assert _rows(ex / "rows.jsonl") == legacy
    # every row recorded (the folder of a later version, or all rows redone): the new format
    _write_rows(ex / "rows.jsonl", rows)
    assert _rc(_exp_argv(ex, 60)) == 0
    assert json.loads((ex / "settings.json").read_text()) == settings
    # an unknown format: another experiment, before the model loads
    (ex / "settings.json").write_text(json.dumps({**settings, "format": "lrm_interp.protection_experiment/9"}))
    monkeypatch.setattr(pt, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    capsys.readouterr()
    assert _rc(_exp_argv(ex, 60)) == 2
    line = _err_line(capsys)
    assert "holds another experiment (differs in format 'lrm_interp.protection_experiment/9')" in line, line


@pytest.mark.skipif(not (EXP_CACHE / "reasoner_gptq3_asym").is_dir(), reason="no long-running experiment folder")
def test_the_long_running_experiment_folders_still_load(tmp_path):
    """The folders of the long-running experiments (format /1, rows without a record): every row is
    read back, and the folder is to be kept in its format. Read from a copy; the cache is not written."""
    for name in ("reasoner_gptq3_asym", "reasoner_rtn3_asym"):
        src = EXP_CACHE / name
        if not (src / "settings.json").is_file():
            continue
        d = tmp_path / name
        shutil.copytree(src, d)
        have = json.loads((d / "settings.json").read_text())
        assert have["format"] == pt.FORMAT_UNCHECKED
        want = {**have, "format": pt.FORMAT}
        n = 3 * have["settings"]["per_family"]
        records: dict = {}
        rows, fmt = pt._check_folder(d, want, n, records)
        assert len(rows) == len(_rows(d / "rows.jsonl")) > 0 and fmt == pt.FORMAT_UNCHECKED
        assert _tree(d) == _tree(src)


# ------------------------------------------------------------------ H10-JSN
def test_records_that_are_no_json_object_are_refused_naming_the_file(results, tmp_path, capsys, monkeypatch):
    """``[1]`` as an experiment's ``settings.json`` or an attribution's ``partial/run.json``: "internal
    error (AttributeError ...)" after the model loaded; invalid JSON there: a message naming no file."""
    import lrm_interp.cli.main as cli_main

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pt, "load_model", no_model)
    head = '{"format": "lrm_interp.protection_experiment/2", "settings": '
    cases = [
        ("[1]", "expected a JSON object, got an array"),
        (head + '{"model": "to', "invalid JSON (Unterminated string"),
        (head + "5}", "settings is 5, not an object"),
        ("\ufeff" + head + "[]}", "settings is [] (list), not an object"),
        ('{"format": "x", "format": "y"}', "key 'format' appears twice in one object"),
    ]
    for i, (text, msg) in enumerate(cases):
        d = tmp_path / f"UX{i}"
        d.mkdir()
        (d / "settings.json").write_text(text, encoding="utf-8")
        before = _tree(d)
        capsys.readouterr()
        assert _rc(_exp_argv(d, 60)) == 2
        line = _err_line(capsys)
        assert line.startswith(f"lrm-interp experiment protection: error: {d / 'settings.json'}: {msg}"), line
        assert "internal error" not in line and line.endswith("restore it or use a new --out folder"), line
        assert _tree(d) == before
    # not UTF-8
    (tmp_path / "UX0" / "settings.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=r"UX0/settings.json: not UTF-8 text"):
        pt.run_protection_experiment(tmp_path / "UX0", progress=False)
    # a byte-order mark before a valid settings.json: read (an editor's BOM is no character)
    ex = _copy(results, "EX", tmp_path / "EXb")
    (ex / "settings.json").write_bytes(b"\xef\xbb\xbf" + (ex / "settings.json").read_bytes())
    monkeypatch.undo()
    assert _rc(_exp_argv(ex, 60)) == 0

    # partial/run.json of an attribution: refused before the model loads, naming the file
    aj = tmp_path / "AJ"
    shutil.copytree(results["A"], aj)
    (aj / "attribution.json").unlink()
    for text, msg in (("[1]", "expected a JSON object, got an array"), ('{"config": ', "invalid JSON")):
        (aj / "partial" / "run.json").write_text(text)
        before = _tree(aj)
        monkeypatch.setattr(cli_main, "load_model_quietly", no_model)
        capsys.readouterr()
        assert _rc(["attribute", "--model", "toy", "--data", results["gold"], "--out", aj, "--quiet"]) == 2
        line = _err_line(capsys)
        assert f"{aj / 'partial' / 'run.json'}: {msg}" in line and "internal error" not in line, line
        assert line.endswith(f"delete {aj / 'partial'} or choose another out_dir (--out)"), line
        assert _tree(aj) == before
        monkeypatch.undo()
        with pytest.raises(ValueError, match=r"partial/run.json: "):
            li.attribute("toy", li.load_dataset(results["gold"]), out_dir=aj, progress=False)
        assert _tree(aj) == before


def test_a_downstream_settings_json_that_is_no_object_is_refused(tmp_path, monkeypatch):
    """``[1]`` as the state ``settings.json`` of ``annotate agree --downstream``: "internal error
    (AttributeError: 'list' object has no attribute 'get')"."""
    from synth import synthetic_traces

    import lrm_interp.experiments.annotation_downstream as dsmod

    monkeypatch.setattr(dsmod, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    state = tmp_path / "state"
    state.mkdir()
    for text, msg in (
        ("[1]", "expected a JSON object, got an array"),
        ("\ufeff[1]", "expected a JSON object, got an array"),
        ('{"format": "x', "invalid JSON"),
        (json.dumps({"format": dsmod.FORMAT, "settings": [1]}), r"settings is \[1\] \(list\), not an object"),
    ):
        (state / "settings.json").write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=rf"state/settings.json: {msg}.*(delete|choose another out_dir)"):
            dsmod.annotation_downstream("toy", synthetic_traces(2), ["keyword"], out_dir=state, progress=False)
    (state / "result.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"state/result.json: expected a JSON object, got an array"):
        dsmod.AnnotationDownstream.load(state)


# ------------------------------------------------------------------ H10-SMCL
def test_study_and_quickstart_refuse_a_bad_skip_memory_check_before_writing(results, tmp_path, capsys, monkeypatch):
    """``LRM_INTERP_SKIP_MEMORY_CHECK=maybe``: refused only after study.json and the outcomes (and
    the quickstart's trained tiny model) were written."""
    from lrm_interp.experiments.quickstart import quickstart_study, run_quickstart

    monkeypatch.setenv("LRM_INTERP_SKIP_MEMORY_CHECK", "maybe")
    want = "$LRM_INTERP_SKIP_MEMORY_CHECK='maybe' is neither yes nor no"
    for argv, out in (
        (_study_argv(results["gold"], tmp_path / "SCM"), tmp_path / "SCM"),
        (["quickstart", "--tiny", "--traces", 3, "--eval", 3, "--out", tmp_path / "QSM", "--quiet"], tmp_path / "QSM"),
    ):
        capsys.readouterr()
        assert _rc(argv) == 2
        cap = capsys.readouterr()
        line = cap.err.strip()
        assert "\n" not in line and want in line and "internal error" not in line, line
        assert not cap.out and not out.exists()
    with pytest.raises(ValueError, match=r"LRM_INTERP_SKIP_MEMORY_CHECK='maybe' is neither yes nor no"):
        st.run_study("toy", results["gold"], tmp_path / "SCP", resamples=40, progress=False)
    with pytest.raises(ValueError, match="neither yes nor no"):
        quickstart_study(tmp_path / "QSP", tiny=True, n_traces=3, n_eval=0, progress=False)
    with pytest.raises(ValueError, match="neither yes nor no"):
        run_quickstart(tmp_path / "QSR", tiny=True, n_traces=3, n_eval=0, progress=False)
    assert not capsys.readouterr().out
    assert not any((tmp_path / n).exists() for n in ("SCP", "QSP", "QSR"))
    # an existing study: nothing written into it either
    sc = _copy(results, "SC", tmp_path / "SCx")
    before = _tree(sc)
    assert _rc(_study_argv(results["gold"], sc)) == 2
    assert _tree(sc) == before
