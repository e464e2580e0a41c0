"""Cases a sixth hostile probe run found (issue 22, "nothing lost, nothing silent"), H6-A8 / A9 / R4 ..
H6-Y7: a single-value option given twice (the last one won silently), ``annotate agree`` against a
gold without spans, a paper layout's byte-order mark, ``annotate train`` leaving traces out without a
word, flags ignored without ``--sensitivity attribution`` / ``--bits``, ``toy train --stop-at`` beyond
``--steps``, two task files for one task, a cache path that is a file (or empty), ``--data`` a FIFO,
an unwritable ``toy train --out`` found only after training, Ctrl-C while starting or inside a
finalizer, and the temporary files a killed writer left behind."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold
from test_cli import _walk  # one walk of the parser tree for every CLI test

from lrm_interp.cli.main import build_parser


def _layout_without_annotation(tmp_path: Path, gold: Path) -> Path:
    """A paper layout holding ``outputs/FOLIO/<j>.txt`` only (no ``annotated/``)."""
    d = tmp_path / "layout" / "outputs" / "FOLIO"
    d.mkdir(parents=True)
    for i, line in enumerate(gold.read_text().splitlines()):
        rec = json.loads(line)
        (d / f"{i}.txt").write_text(rec["prompt"] + rec["response"])
    return tmp_path / "layout"


# ------------------------------------------------------------------ H6-A8 / A9 / R4
PARSER = build_parser()
COMMANDS = {" ".join(path): p for path, p in _walk(PARSER) if path}
_CANDIDATES = ("1", "2", "3", "4", "0.5", "0.25", "a", "b", "cpu")


def _two_values(action: argparse.Action) -> tuple[list[str], list[str]] | None:
    """Two command-line values of ``action`` that parse to different values (``None``: none found)."""
    cands = [str(c) for c in action.choices] if action.choices else list(_CANDIDATES)
    ok = []
    for c in cands:
        try:
            v = action.type(c) if callable(action.type) else c
        except Exception:  # noqa: BLE001 - a value the type refuses
            continue
        if all(v != w for _, w in ok):
            ok.append((c, v))
        if len(ok) == 2:
            n = action.nargs if isinstance(action.nargs, int) else 1
            return [ok[0][0]] * n, [ok[1][0]] * n
    return None


def _single_value_options():
    for cmd, p in sorted(COMMANDS.items()):
        for a in p._actions:
            if not a.option_strings or isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if isinstance(a, (argparse._AppendAction, argparse._CountAction)) or a.nargs in ("+", "*"):
                continue  # meant to repeat
            yield cmd, p, a


def _usage_error(capsys, p: argparse.ArgumentParser, argv: list[str]) -> str:
    """The last stderr line of parsing ``argv`` with ``p`` ("" when it parsed: the required options
    are missing here, so any other usage error is about them)."""
    capsys.readouterr()
    try:
        ns = p.parse_args(argv)
    except SystemExit as e:
        assert e.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]
    assert "_lrm_interp_given_once" not in vars(ns)  # the bookkeeping never reaches the command
    return ""


def test_single_value_option_given_twice_is_refused_in_every_subcommand(capsys):
    """``attribute --out A --out B`` wrote B only, ``--data a --data b`` read b only, ``protect
    --budget 0.02 --budget 0.5`` used 50 %: argparse keeps the last value silently. Every option of
    every subcommand that takes one value (or a fixed number of them), given twice with two
    values, is now a usage error naming it; the same value twice is accepted."""
    walked, flags = 0, set()
    for cmd, p, a in _single_value_options():
        flag = a.option_strings[0]
        if a.nargs == 0:  # a flag: the same constant each time, accepted
            assert "given twice" not in _usage_error(capsys, p, [flag, flag]), (cmd, flag)
            continue
        values = _two_values(a)
        if values is None:  # e.g. --device: this machine may have a single device
            continue
        v1, v2 = values
        err = _usage_error(capsys, p, [flag, *v1, flag, *v2])
        assert f"argument {flag}: given twice ({flag} {' '.join(v1)}, then {flag} {' '.join(v2)})" in err, (
            cmd,
            flag,
            err,
        )
        assert "given twice" not in _usage_error(capsys, p, [flag, *v1, flag, *v1])  # the same value: harmless
        walked += 1
        flags.add(f"{cmd} {flag}")
    assert walked > 150, walked
    assert {"attribute --out", "attribute --data", "protect --budget", "quantize --bits", "bench run --out"} <= flags
    # two options storing to one destination (a deprecated alias, --early-stop / --no-early-stop),
    # given with two values: refused as well (or mutually exclusive: --symmetric / --asymmetric)
    pairs = 0
    for cmd, p in sorted(COMMANDS.items()):
        by_dest: dict[str, list[argparse.Action]] = {}
        for a in p._actions:
            if a.option_strings and not isinstance(a, argparse._HelpAction):
                by_dest.setdefault(a.dest, []).append(a)
        for a1, a2 in (acts[:2] for acts in by_dest.values() if len(acts) > 1):
            vals = [_two_values(x) if x.nargs != 0 else ([], []) for x in (a1, a2)]
            if None in vals:
                continue
            argv = [a1.option_strings[0], *vals[0][0], a2.option_strings[0], *vals[1][1]]
            err = _usage_error(capsys, p, argv)
            assert f"argument {a2.option_strings[0]}: given twice" in err or "not allowed with" in err, (cmd, err)
            pairs += 1
    assert pairs >= 10, pairs
    capsys.readouterr()
    with pytest.raises(SystemExit):
        COMMANDS["annotate"].parse_args(["--in", "x", "--data", "y"])
    err = capsys.readouterr().err
    assert "argument --data: given twice (--in x, then --data y)" in err
    # options meant to repeat still accumulate
    ns = PARSER.parse_args(["bench", "run", "--model", "toy", "--tasks", "math", "--tasks", "logic", "--out", "o"])
    assert ns.tasks == ["math", "logic"] and "_lrm_interp_given_once" not in vars(ns)
    ns = PARSER.parse_args(["annotate", "agree", "--gold", "g", "--downstream", "toy"] + ["--annotator", "rules"] * 2)
    assert ns.annotator == ["rules", "rules"]


def test_repeated_data_out_and_budget_are_refused_before_any_work(tmp_path, capsys):
    """The probe's three commands, end to end: exit 2, one line naming the flag, nothing written."""
    gold = _gold(tmp_path)
    out_a, out_b = tmp_path / "A", tmp_path / "B"
    for argv, flag in (
        (["attribute", "--model", "toy", "--data", gold, "--data", tmp_path / "big.jsonl", "--out", out_a], "--data"),
        (["attribute", "--model", "toy", "--data", gold, "--out", out_a, "--out", out_b], "--out"),
        (
            ["protect", "--scores", out_a, "--model", "toy", "--data", gold]
            + ["--budget", "0.02", "--budget", "0.5", "--out", tmp_path / "m.safetensors"],
            "--budget",
        ),
    ):
        capsys.readouterr()
        assert _rc([*argv, "--quiet"]) == 2
        err = _err_line(capsys)
        assert f"argument {flag}: given twice" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gold.jsonl"]


# ------------------------------------------------------------------ H6-N6
def test_annotate_agree_refuses_a_gold_without_any_span(tmp_path, capsys):
    """``annotate agree --gold`` a paper layout without ``annotated/`` printed an all-zero table, exit 0."""
    gold = _gold(tmp_path)
    layout = _layout_without_annotation(tmp_path, gold)
    capsys.readouterr()
    assert _rc(["annotate", "agree", "--gold", layout, "--pred", gold]) == 2
    err = _err_line(capsys)
    assert f"--gold {layout} has no annotation (0 spans in 3 traces)" in err
    # a gold with spans is scored as before (against a copy: --pred naming the --gold file is refused, H13-AGS)
    copy = tmp_path / "pred_copy.jsonl"
    copy.write_bytes(gold.read_bytes())
    assert _rc(["annotate", "agree", "--gold", gold, "--pred", copy, "--json"]) == 0


# ------------------------------------------------------------------ H6-U12
def test_paper_layout_text_drops_a_byte_order_mark_as_the_jsonl_reader_does(tmp_path):
    """A layout's ``.txt`` starting with a UTF-8 BOM kept U+FEFF as the response's first character
    (the JSONL reader drops it: the two readers disagreed)."""
    from lrm_interp._io import read_text_file, strip_bom
    from lrm_interp.data.annotate import load_outputs
    from lrm_interp.data.traces import ReasoningDataset

    text = "Compute 1+1.\n<think>\nOkay.\n</think>\nThe answer is 2."
    d = tmp_path / "PL" / "outputs" / "FOLIO"
    d.mkdir(parents=True)
    (d / "0.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    ds = load_outputs(tmp_path / "PL", progress=False)
    assert ds[0].response == text
    jl = tmp_path / "t.jsonl"
    jl.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "FOLIO/0", "prompt": "", "response": text}).encode() + b"\n")
    assert ReasoningDataset.load_jsonl(jl)[0].response == ds[0].response
    assert read_text_file(d / "0.txt") == text and strip_bom(b"\xef\xbb\xbfx") == b"x" and strip_bom(b"x") == b"x"


# ------------------------------------------------------------------ H6-N9
def test_annotate_train_counts_the_traces_it_leaves_out(tmp_path, capsys):
    """``annotate train`` on 3 annotated and 3 unannotated traces said "fitted on 3 traces" only."""
    from lrm_interp.data.annotate import LinearAnnotator

    gold = _gold(tmp_path, n=2)
    recs = [json.loads(x) for x in gold.read_text().splitlines()]
    for r in recs[3:]:
        r["spans"] = []
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "tr.safetensors"
    capsys.readouterr()
    assert _rc(["annotate", "train", "--data", half, "--out", out, "--folds", "0", "--steps", "2", "--quiet"]) == 0
    cap = capsys.readouterr()
    assert (
        f"3 of 6 traces have no spans: left out (not annotated, nothing to learn from; first: {recs[3]['id']!r})"
        in (cap.err)
    )
    assert "3 traces without spans left out" in cap.out
    assert LinearAnnotator.load(out).info["left_out_without_spans"] == 3


# ------------------------------------------------------------------ H6-B9 / T4 / T2
def test_flags_that_would_be_ignored_are_refused(tmp_path, capsys, monkeypatch):
    """``bits --sensitivity none --behavior X`` ignored --behavior (--calib is refused there);
    ``toy eval --group-size 32`` without --bits printed full-precision accuracy; ``toy train --steps 5
    --stop-at 50`` ran 5 steps and recorded stop_at 50."""
    import lrm_interp.toy.train as toy_train
    from lrm_interp.toy.train import check_train_settings

    calls = []
    monkeypatch.setattr(toy_train, "train_toy_model", lambda out, **kw: calls.append(kw))
    out = tmp_path / "b.json"
    capsys.readouterr()
    argv = ["bits", "--model", "toy", "--budget", "3.5", "--sensitivity", "none", "--behavior", "backtracking"]
    assert _rc([*argv, "--out", out, "--quiet"]) == 2
    assert "--behavior is used by --sensitivity attribution only" in _err_line(capsys) and not out.exists()
    assert _rc(["toy", "eval", "--per-family", "2", "--group-size", "32", "--quiet"]) == 2
    assert "--group-size is used with --bits only" in _err_line(capsys)
    t = tmp_path / "TM2"
    assert _rc(["toy", "train", "--out", t, "--steps", "5", "--stop-at", "50", "--device", "cpu"]) == 2
    assert "--stop-at 50 is beyond --steps 5" in _err_line(capsys) and not t.exists() and not calls
    with pytest.raises(ValueError, match=r"stop_at must be at most steps \(5\)"):
        check_train_settings(steps=5, stop_at=50)
    # the default stop (the recipe's 1274) applies when --steps reaches it, else all --steps run
    assert _rc(["toy", "train", "--out", t, "--steps", "5", "--device", "cpu"]) == 0
    assert _rc(["toy", "train", "--out", tmp_path / "T3", "--device", "cpu"]) == 0
    assert _rc(["toy", "train", "--out", tmp_path / "T4", "--steps", "5", "--stop-at", "5", "--device", "cpu"]) == 0
    assert [c["stop_at"] for c in calls] == [None, 1274, 5]


# ------------------------------------------------------------------ H6-H9
def test_two_files_for_one_task_are_refused_naming_both(tmp_path, capsys):
    """``bench run --task-data td`` with ``td/aime.jsonl`` and ``td/aime.csv`` read the JSONL and
    ignored the CSV silently."""
    from lrm_interp.data.benchmarks import find_task_file
    from lrm_interp.data.benchmarks.items import BenchmarkFormatError

    td = tmp_path / "td"
    td.mkdir()
    (td / "aime.jsonl").write_text('{"problem":"What is 2+3?","answer":5}\n')
    assert find_task_file("aime", td) == td / "aime.jsonl"
    (td / "aime.csv").write_text("problem,answer\nWhat is 1+1?,2\n")
    with pytest.raises(BenchmarkFormatError, match=r"2 files for task 'aime' \(aime\.jsonl, aime\.csv\): ambiguous"):
        find_task_file("aime", td)
    assert find_task_file("aime", td / "aime.csv") == td / "aime.csv"  # the file itself: no question
    out = tmp_path / "BT"
    capsys.readouterr()
    argv = ["bench", "run", "--model", "toy", "--tasks", "aime", "--task-data", td, "--max-new-tokens", "30"]
    assert _rc([*argv, "--out", out, "--quiet"]) == 2
    err = _err_line(capsys)
    assert "aime.jsonl, aime.csv" in err and "ambiguous" in err and not out.exists()


# ------------------------------------------------------------------ H6-P11 / V1 / V4
def test_cache_paths_that_are_files_or_empty(tmp_path, capsys, monkeypatch):
    """``annotate --cache FILE`` and ``$LRM_INTERP_CACHE`` naming a file gave a bare "File exists";
    ``LRM_INTERP_CACHE=`` (set, empty) cached a model in the current folder."""
    from lrm_interp._io import cache_root
    from lrm_interp.model.smollm2 import smollm2_cache_dir

    gold = _gold(tmp_path)
    mine = tmp_path / "my.json"
    mine.write_text('{"mine": 1}')
    capsys.readouterr()
    assert _rc(["annotate", "--data", gold, "--out", tmp_path / "a.jsonl", "--cache", mine, "--quiet"]) == 2
    err = _err_line(capsys)
    assert f"--cache {mine}: a file" in err and "folder" in err
    assert mine.read_text() == '{"mine": 1}' and not (tmp_path / "a.jsonl").exists()
    # $LRM_INTERP_CACHE: a file, or a path under one: refused naming the variable, before any work
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for bad in (mine, mine / "sub"):
        monkeypatch.setenv("LRM_INTERP_CACHE", str(bad))
        with pytest.raises(ValueError, match=r"\$LRM_INTERP_CACHE .*a file, not a folder"):
            cache_root()
        argv = ["attribute", "--model", "smollm2-135m", "--data", gold, "--out", tmp_path / "A", "--quiet"]
        assert _rc(argv) == 2
        err = _err_line(capsys)
        assert "--model smollm2-135m is cached under $LRM_INTERP_CACHE" in err and "a file, not a folder" in err
        assert not (tmp_path / "A").exists()
    # set but empty (or blank): the default, never the current folder
    for empty in ("", "  "):
        monkeypatch.setenv("LRM_INTERP_CACHE", empty)
        assert cache_root() == tmp_path / "home" / ".cache" / "lrm_interp"
        assert smollm2_cache_dir() == tmp_path / "home" / ".cache" / "lrm_interp" / "smollm2-135m"
    monkeypatch.setenv("LRM_INTERP_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"


# ------------------------------------------------------------------ H6-P17
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_data_a_fifo_is_said_to_be_no_regular_file(tmp_path, capsys):
    """``--data ff`` (a FIFO) or ``/dev/stdin`` said "does not exist"."""
    ff = tmp_path / "ff"
    os.mkfifo(ff)
    capsys.readouterr()
    assert _rc(["parse", "--data", ff, "--out", tmp_path / "o.jsonl"]) == 2
    assert f"--data {ff}: is a named pipe (FIFO), not a regular file" in _err_line(capsys)
    assert _rc(["annotate", "agree", "--gold", ff, "--pred", ff]) == 2
    assert f"--gold {ff}: is a named pipe (FIFO), not a regular file" in _err_line(capsys)


# ------------------------------------------------------------------ H6-P13
def _unwritable_folder(d: Path):
    """Make ``d`` unwritable for this user (0555, or ``chattr +i`` for root); the undo, or ``None``."""
    import shutil
    import subprocess

    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        return lambda: d.chmod(0o755)
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", str(d)], check=True)
    return None


def test_toy_train_checks_that_out_can_be_written_before_training(tmp_path, capsys, monkeypatch):
    """``toy train --out imm/T`` in a folder that cannot be written trained to the end, then failed."""
    import lrm_interp.toy.train as toy_train

    imm = tmp_path / "imm"
    undo = _unwritable_folder(imm)
    try:
        try:
            (imm / "probe").mkdir()
        except OSError:
            pass
        else:
            pytest.skip("cannot make a folder unwritable here")
        monkeypatch.setattr(toy_train, "train_toy_model", lambda *a, **k: pytest.fail("trained before the check"))
        capsys.readouterr()
        assert _rc(["toy", "train", "--out", imm / "T", "--steps", "5", "--stop-at", "5", "--device", "cpu"]) == 2
        err = _err_line(capsys)
        assert f"--out {imm / 'T'}: cannot write in {imm}" in err
        assert _rc(["toy", "train", "--out", imm / "a" / "b", "--steps", "5", "--device", "cpu"]) == 2
        assert f"cannot write in {imm}" in _err_line(capsys)
    finally:
        if undo is not None:
            undo()


# ------------------------------------------------------------------ H6-Y6 / Y7
@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test, the previous one restored after it: a suite started
    in the background (``nohup pytest ... &``) inherits an ignored SIGINT, and these tests skipped."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_starting_is_one_line(tmp_path, capsys, monkeypatch, python_sigint):
    """Ctrl-C in the first second (the imports of ``build_parser``) printed a 38-line traceback; one
    that a library turned into another error (transformers' lazy import: "Could not import module
    'LlamaConfig'") was reported as that error."""
    import lrm_interp.cli.main as cli_main

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    capsys.readouterr()
    assert _rc(["study"]) == 130
    assert _err_line(capsys) == "lrm-interp: interrupted before the command started; nothing was done"

    def converted():
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during an import ...
        except KeyboardInterrupt as e:  # ... that the library reports as another error
            raise RuntimeError("Could not import module 'LlamaConfig'") from e

    monkeypatch.setattr(cli_main, "build_parser", converted)
    assert _rc(["study"]) == 130
    assert "interrupted" in _err_line(capsys)
    monkeypatch.setattr(cli_main, "build_parser", build_parser)

    def command(a):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as e:
            raise RuntimeError("Could not import module 'LlamaConfig'") from e

    monkeypatch.setattr(cli_main, "cmd_parse", command)
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 130
    assert _err_line(capsys).startswith("lrm-interp parse: interrupted")
    # the handler and the hook are put back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook is not None and "Interrupts" not in repr(sys.unraisablehook)


def test_ctrl_c_inside_a_finalizer_is_not_lost(tmp_path, capsys, monkeypatch, python_sigint):
    """A Ctrl-C landing in a ``__del__`` (regex's ``Group.__del__``) was printed as "Exception ignored
    in ..." and dropped: the study ran on to its end."""
    import lrm_interp.cli.main as cli_main

    ran = []

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the signal arrives while a finalizer runs

    def command(a):
        x = Finalized()
        del x  # the KeyboardInterrupt is raised in __del__, where Python drops it
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the rest of the command: must not run to its end
            sum(range(100))
        ran.append("to the end")
        return 0

    monkeypatch.setattr(cli_main, "cmd_parse", command)
    capsys.readouterr()
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 130
    assert not ran
    assert _err_line(capsys).startswith("lrm-interp parse: interrupted")


# ------------------------------------------------------------------ leftover temporary files (H5-A2)
def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """After a ``kill -9`` during an atomic write, ``.<name>.<random>.tmp`` stayed beside the file
    forever (a resume neither used nor removed it)."""
    from lrm_interp._io import STALE_TEMP_SECONDS, atomic_write_text

    old = time.time() - STALE_TEMP_SECONDS - 60
    stale = tmp_path / ".x.json.ab12cd34.tmp"
    fresh = tmp_path / ".x.json.zz99yy88.tmp"  # a concurrent writer's: kept
    other = tmp_path / ".y.json.ab12cd34.tmp"  # another file's: left to that file's next write
    mine = tmp_path / ".notes.tmp"  # not our naming pattern: never touched
    for p in (stale, fresh, other, mine):
        p.write_text("partial")
    for p in (stale, other, mine):
        os.utime(p, (old, old))
    atomic_write_text(tmp_path / "x.json", "{}")
    assert not stale.exists() and fresh.exists() and other.exists() and mine.exists()
    atomic_write_text(tmp_path / "y.json", "{}")
    assert not other.exists() and mine.exists()
    assert (tmp_path / "x.json").read_text() == "{}"
