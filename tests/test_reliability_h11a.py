"""Leftovers of the tenth hostile probe run (issue 22, "nothing lost, nothing silent"), part A: two
``quantize`` / ``faithfulness`` / ``study --overwrite`` runs into one ``--out`` (H11-QCC, H11-CST),
``bits --gptqmodel`` / ``--llmcompressor`` replacing a bits allocation (H11-GQB), an empty path
(H11-EMP), ``--out nd/..`` (H11-DD) and a hard-linked empty file at a lock's name (H11-LHL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> Path:
    """One gold-annotated toy trace per family."""
    return toy_gold(tmp_path_factory.mktemp("h11a"), n=1)


def _nested(monkeypatch, module, name: str, inner: list[object], seen: dict) -> None:
    """Patch ``module.name`` so that, while the outer run is inside it (past its checks, holding what
    it holds), a second CLI run ``inner`` starts in this process: its exit status and stderr go to
    ``seen``; then the real function runs."""
    real = getattr(module, name)

    def racing(*args, **kw):
        import contextlib
        import io

        if "rc" in seen:  # the inner run itself (it got this far: no lock held it back)
            return real(*args, **kw)
        seen["rc"] = None
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            seen["rc"] = _rc(inner)
        seen["err"] = err.getvalue().strip()
        return real(*args, **kw)

    monkeypatch.setattr(module, name, racing)


# ------------------------------------------------------------------ H11-QCC / H11-CST
def test_quantize_overwrite_is_refused_while_another_run_replaces_that_out(tmp_path, monkeypatch, capsys):
    """Two ``quantize --overwrite`` into one existing ``--out``: both printed "wrote" and the first
    result was lost (H11-QCC). The second is refused at once, naming the first's pid; the first's
    result is the one kept."""
    import os

    import lrm_interp.compress.quant as quant

    out = tmp_path / "QQ"
    assert _rc(["quantize", "--model", "toy", "--bits", 2, "--out", out, "--quiet"]) == 0
    seen: dict = {}
    inner = ["quantize", "--model", "toy", "--bits", 4, "--out", out, "--overwrite", "--quiet"]
    _nested(monkeypatch, quant, "quantize_model_", inner, seen)
    capsys.readouterr()
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", out, "--overwrite", "--quiet"]) == 0
    assert seen["rc"] == 2, seen
    assert (
        f"--out {out} is in use by another 'lrm-interp quantize' run (pid {os.getpid()}): two runs into one folder "
        "would replace each other's result" in seen["err"]
    )
    assert json.loads((out / "lrm_interp_quantization.json").read_text())["bits"] == 3
    assert not (tmp_path / ".QQ.lrm_interp.lock").exists()  # removed when the run ended


def test_faithfulness_overwrite_is_refused_while_another_run_replaces_that_out(gold, tmp_path, monkeypatch, capsys):
    """``faithfulness --overwrite`` likewise (H11-QCC): the run that finds the folder held is refused."""
    import lrm_interp.attribution.faithfulness as faith

    out = tmp_path / "FF"
    base = ["faithfulness", "--model", "toy", "--data", gold, "--max-spans", 1, "--quiet", "--out", out]
    assert _rc([*base, "--alpha", 1]) == 0
    seen: dict = {}
    _nested(monkeypatch, faith, "atp_faithfulness", [*base, "--alpha", 2, "--overwrite"], seen)
    capsys.readouterr()
    assert _rc([*base, "--alpha", 0.5, "--overwrite"]) == 0
    assert seen["rc"] == 2, seen
    assert f"--out {out} is in use by another 'lrm-interp faithfulness' run" in seen["err"]
    assert json.loads((out / "faithfulness.json").read_text())["alphas"] == [0.5]


def test_study_overwrite_is_refused_while_another_study_runs_into_that_out(gold, tmp_path, monkeypatch, capsys):
    """Two ``study --overwrite`` into one folder: the second wrote its masks and allocation over the
    first's, then failed (H11-CST). It is refused before it writes anything; the first study's files are
    its own."""
    import lrm_interp.experiments.study as study

    out = tmp_path / "S"
    base = ["study", "--model", "toy", "--data", gold, "--bits", 3, "--quiet", "--out", out]
    seen: dict = {}
    _nested(monkeypatch, study, "run_study", [*base, "--budget", 0.1, "--overwrite"], seen)
    capsys.readouterr()
    assert _rc([*base, "--budget", 0.05]) == 0
    assert seen["rc"] == 2, seen
    assert f"--out {out} is in use by another 'lrm-interp study' run" in seen["err"]
    assert json.loads((out / "masks.json").read_text())["budget"] == 0.05
    assert not (tmp_path / ".S.lrm_interp.lock").exists()


# ------------------------------------------------------------------ H11-GQB
@pytest.mark.parametrize("flag", ["--gptqmodel", "--llmcompressor"])
def test_bits_toolchain_config_never_replaces_a_bits_allocation(flag, tmp_path, capsys):
    """``bits --gptqmodel F --overwrite`` (or ``--llmcompressor F``) replaced the bits allocation at ``F``
    with a toolchain config (H11-GQB): refused before any write, naming the flag; ``F`` is kept byte
    for byte and the run's ``--out`` is not written."""
    keep = tmp_path / "b.json"
    bits = ["bits", "--model", "toy", "--sensitivity", "none", "--quiet"]
    assert _rc([*bits, "--budget", 4, "--out", keep]) == 0
    before = keep.read_bytes()
    capsys.readouterr()
    out = tmp_path / "b35.json"
    assert _rc([*bits, "--budget", 3.5, "--out", out, flag, keep, "--overwrite"]) == 2
    line = _err_line(capsys)
    assert (
        f"{flag} {keep} holds a bits allocation (lrm_interp.bits/2), a result of 'lrm-interp bits': {flag} writes "
        "a file of another kind, and --overwrite does not replace a result with it" in line
    )
    assert keep.read_bytes() == before and not out.exists()
    # its own kind of file (an earlier config) is still replaced with --overwrite
    cfg = tmp_path / "c.json"
    cfg.write_text("{}")
    assert _rc([*bits, "--budget", 3.5, "--out", out, flag, cfg, "--overwrite"]) == 0
    assert cfg.read_text() != "{}"


# ------------------------------------------------------------------ H11-EMP / H11-EMPe
def _path_options() -> list[tuple[list[str], str]]:
    """``(command words, flag)`` of every path option of every ``lrm-interp`` command."""
    import argparse

    from lrm_interp.cli.common import is_path_option
    from lrm_interp.cli.main import build_parser

    found: list[tuple[list[str], str]] = []

    def walk(p: argparse.ArgumentParser, words: list[str]) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, [*words, name])
            elif is_path_option(a):
                found.append((words, a.option_strings[-1]))

    walk(build_parser(), [])
    return found


def test_every_path_option_refuses_an_empty_value(capsys):
    """``''`` (an unset shell variable) for any path option was taken as the current folder, replaced by
    the option's default, or gave "error: --out" with nothing after it (H11-EMP / H11-EMPe): refused by
    the parser, one line naming the flag, exit 2. Blank values likewise."""
    from lrm_interp.cli.main import main

    options = _path_options()
    flags = {f for _, f in options}
    assert {"--out", "--report", "--data", "--model", "--gptqmodel", "--scores", "--calib"} <= flags
    for words, flag in options:
        for value, what in (("", "empty"), ("  ", "blank (only spaces)")):
            with pytest.raises(SystemExit) as e:
                main([*words, flag, value])
            assert e.value.code == 2
            line = _err_line(capsys)
            assert f"error: {flag} is {what}: give a path (an unset shell variable?)" in line, (words, line)


def test_empty_out_writes_nothing_in_the_current_folder(gold, tmp_path, monkeypatch, capsys):
    """The probe's cases: ``compare --out ''`` wrote ``./shift.csv``, ``quantize --out ''`` swapped the
    current folder itself, ``annotate --report ''`` wrote the default report, ``attribute --out ''`` was an
    "internal error", ``parse --data ''`` read ``.``: each is refused, and the current folder stays empty."""
    here = tmp_path / "E"
    here.mkdir()
    monkeypatch.chdir(here)
    capsys.readouterr()
    for argv in (
        ["quantize", "--model", "toy", "--bits", 3, "--out", "", "--quiet"],
        ["annotate", "--data", gold, "--annotator", "rules", "--out", "a.jsonl", "--report", "", "--quiet"],
        ["attribute", "--model", "toy", "--data", gold, "--out", ""],
        ["parse", "--data", "", "--out", "x.jsonl"],
        ["bits", "--model", "toy", "--budget", 4, "--sensitivity", "none", "--out", ""],
    ):
        assert _rc(argv) == 2
        assert "is empty: give a path" in _err_line(capsys)
    assert list(here.iterdir()) == []


# ------------------------------------------------------------------ H11-DD
@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_file_output_ending_in_dotdot_is_refused_as_a_folder_spelling(extra, gold, tmp_path, monkeypatch, capsys):
    """``parse --out nd/..`` (``nd`` absent) said "the folder exists; pass --overwrite", and with
    ``--overwrite`` made the folder ``nd``, then said the output "was created by another run" (H11-DD):
    refused before any write as a folder spelling, like ``nd/.``."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert _rc(["parse", "--data", gold, "--out", "nd/..", *extra]) == 2
    assert (
        "--out nd/..: ends with '..', which names a folder, but --out names a file to write; give a file path"
        in _err_line(capsys)
    )
    assert not (tmp_path / "nd").exists()


# ------------------------------------------------------------------ H11-LHL
def test_empty_hard_linked_file_at_a_lock_name_is_never_written_into(gold, tmp_path, monkeypatch, capsys):
    """An empty user's file with a second name ``.o.jsonl.lrm_interp.lock`` got the lock text written
    into it (H11-LHL): refused like a symbolic link there, both names left as they were."""
    monkeypatch.chdir(tmp_path)
    assert _rc(["parse", "--data", gold, "--out", "o.jsonl"]) == 0
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"")
    lock = tmp_path / ".o.jsonl.lrm_interp.lock"
    lock.hardlink_to(notes)
    before = (tmp_path / "o.jsonl").read_bytes()
    capsys.readouterr()
    assert _rc(["parse", "--data", gold, "--out", "o.jsonl", "--overwrite"]) == 2
    assert (
        f"--out o.jsonl: its lock file {Path('.o.jsonl.lrm_interp.lock')} is a hard link to another file (2 names), "
        "not a lock lrm_interp wrote" in _err_line(capsys)
    )
    assert notes.read_bytes() == b"" and lock.exists() and (tmp_path / "o.jsonl").read_bytes() == before
