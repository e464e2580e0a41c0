"""Commands never destroy what is not theirs: a study folder is checked whole before its first
write, ``--out`` is checked as the writer will write it (a literal ``~``), and outputs that are
not regular files (FIFOs, links into ``/proc``) are refused (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_run import run_cli as _rc

from lrm_interp import _io
from lrm_interp.experiments.quickstart import quickstart_study, quickstart_traces


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def traces_file(tmp_path) -> Path:
    p = tmp_path / "t.jsonl"
    quickstart_traces(6).save_jsonl(p)
    return p


# ------------------------------------------------------------------ F2 / F3: study folders
def test_quickstart_refuses_a_folder_holding_files_a_study_writes(tmp_path, traces_file, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "traces.jsonl").write_bytes(traces_file.read_bytes())
    (proj / "report.html").write_text("notes")
    before = _snapshot(proj)
    rc = _rc(["quickstart", "--out", proj, "--tiny", "--traces", 6, "--eval", 0, "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not a study folder" in err and "report.html" in err and "traces.jsonl" in err
    assert _snapshot(proj) == before
    assert sorted(p.name for p in proj.iterdir()) == ["report.html", "traces.jsonl"]  # no tiny_model/


def test_study_refuses_a_folder_holding_files_a_study_writes(tmp_path, traces_file, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "results.csv").write_text("mine")
    rc = _rc(["study", "--model", "toy", "--data", traces_file, "--out", proj, "--bits", 3, "--quiet"])
    assert rc == 2
    assert "not a study folder" in capsys.readouterr().err
    assert (proj / "results.csv").read_text() == "mine" and len(list(proj.iterdir())) == 1


def test_quickstart_with_other_traces_writes_nothing_before_refusing(tmp_path):
    q = tmp_path / "Q"
    quickstart_study(q, n_traces=6, tiny=True, n_eval=0, progress=False)
    before = _snapshot(q)
    with pytest.raises(ValueError, match="other traces"):
        quickstart_study(q, n_traces=12, tiny=True, n_eval=0, progress=False)
    assert _snapshot(q) == before  # tiny_model/, traces.jsonl, study.json: untouched


# ------------------------------------------------------------------ F11: a literal ~
def test_a_literal_tilde_out_is_checked_where_it_is_written(tmp_path, traces_file, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~ expands elsewhere, where nothing exists
    (tmp_path / "~").mkdir()
    (tmp_path / "~" / "x.jsonl").write_text("x")
    assert _rc(["parse", "--data", traces_file, "--out", "~/x.jsonl"]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "~" / "x.jsonl").read_text() == "x"
    assert not (tmp_path / "home").exists()


# ------------------------------------------------------------------ F15: not regular files
def test_overwrite_never_replaces_a_fifo(tmp_path, traces_file, capsys):
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    assert _rc(["parse", "--data", traces_file, "--out", fifo, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "named pipe" in err[0]
    assert fifo.is_fifo()
    with pytest.raises(OSError, match="not a regular file"):
        _io.atomic_write_text(fifo, "x")
    assert fifo.is_fifo()


def test_a_link_to_proc_fd_is_refused_without_overwrite_too(tmp_path, traces_file, capsys):
    link = tmp_path / "link"
    link.symlink_to("/proc/self/fd/1")
    for extra in ([], ["--overwrite"]):
        assert _rc(["parse", "--data", traces_file, "--out", link, *extra]) == 2
        assert "not a regular file" in capsys.readouterr().err
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


# ------------------------------------------------------------------ F6: --overwrite onto a user's folder
def test_quantize_overwrite_replaces_only_an_earlier_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("keep me")
    argv = ["quantize", "--model", "toy", "--bits", 3, "--quiet", "--overwrite"]
    assert _rc([*argv, "--out", "."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path) in err[0] and "not an earlier result" in err[0]
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert _rc([*argv, "--out", "q"]) == 0 and (tmp_path / "q" / _io.QUANTIZE_RECORD).is_file()
    assert _rc([*argv, "--out", "q"]) == 0  # an earlier result: replaced
    (tmp_path / "empty").mkdir()
    assert _rc([*argv, "--out", "empty"]) == 0


# ------------------------------------------------------------------ F12: created while it ran
def test_quantize_never_replaces_what_appeared_at_out_while_it_ran(tmp_path, monkeypatch, capsys):
    from lrm_interp.cli import protect

    out = tmp_path / "QQ"
    real = protect._write_quantized

    def and_meanwhile(*args, **kw):  # another run (or the user) fills --out meanwhile
        real(*args, **kw)
        out.mkdir()
        (out / "other.txt").write_text("the other run's")

    monkeypatch.setattr(protect, "_write_quantized", and_meanwhile)
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--quiet", "--out", out]) != 0
    assert str(out) in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["other.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["QQ"]  # no temp folder left


def test_publishing_without_replace_keeps_a_file_created_meanwhile(tmp_path):
    out = tmp_path / "d"
    tmp = _io.make_temp_dir(out)
    out.write_text("appeared")
    with pytest.raises(FileExistsError, match="not replaced"):
        _io.publish_dir(tmp, out)
    assert out.read_text() == "appeared"
    tmp.rmdir()  # the caller's to remove (quantize does)
    f = tmp_path / "f.json"
    f.write_text("theirs")
    with pytest.raises(FileExistsError, match=str(f)):
        _io.atomic_write_text(f, "mine", replace=False)
    assert f.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.json"]
    _io.atomic_write_text(tmp_path / "g.json", "new", replace=False)
    assert (tmp_path / "g.json").read_text() == "new"
