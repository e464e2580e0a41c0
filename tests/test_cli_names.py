"""One name per concept on the command line, old spellings kept as deprecated aliases; the toy
stage is a library (its command-line options live in ``lrm_interp/cli/toy.py``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lrm_interp
from lrm_interp.cli.main import build_parser, main

PKG = Path(lrm_interp.__file__).resolve().parent


@pytest.mark.parametrize(
    "cmd", [["bench", "run", "--model", "toy", "--out", "o"], ["bench", "score", "--outputs", "o"]]
)
def test_bench_per_family_and_its_deprecated_alias(cmd, capsys):
    """``bench run|score --per-family`` is the name of ``toy eval|traces``; ``--toy-n`` still works
    for one release, with a note naming the new flag."""
    parser = build_parser()
    a = parser.parse_args(cmd + ["--tasks", "math"])
    assert a.per_family == 30 and not hasattr(a, "toy_n")
    assert parser.parse_args(cmd + ["--tasks", "math", "--per-family", "4"]).per_family == 4
    assert capsys.readouterr().err == ""
    assert parser.parse_args(cmd + ["--tasks", "math", "--toy-n", "3"]).per_family == 3
    assert capsys.readouterr().err.strip() == "lrm-interp: note: --toy-n is deprecated; use --per-family (same meaning)"
    with pytest.raises(SystemExit) as e:  # the new flag's range check, naming the old spelling
        parser.parse_args(cmd + ["--tasks", "math", "--toy-n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --toy-n: must be an integer >= 1, got 0" in err and "deprecated" not in err


def test_bench_per_family_sets_the_toy_problems(capsys):
    from lrm_interp.cli.bench import _tasks_and_items

    for flag in ("--per-family", "--toy-n"):
        a = build_parser().parse_args(["bench", "score", "--outputs", "o", "--tasks", "math", "logic", flag, "2"])
        items = _tasks_and_items(a)
        assert {t: len(v) for t, v in items.items()} == {"math": 2, "logic": 2}


def test_bench_help_shows_the_new_name(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "run", "--help"])
    out = capsys.readouterr().out
    assert "--per-family N" in out and "deprecated spelling of --per-family" in out


def test_the_toy_stage_takes_no_argparse_namespace():
    """``lrm_interp/toy/`` has library functions (keywords, ``DistillConfig``); the flags, their
    checks and the commands are ``lrm_interp/cli/toy.py``'s."""
    for path in sorted((PKG / "toy").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "argparse" not in imported, f"{path.name} imports argparse"
    import lrm_interp.cli.toy as cli_toy

    assert callable(cli_toy.add_train_args) and callable(cli_toy.add_distill_args)


def test_old_module_entry_point_names_the_command(tmp_path):
    """``python -m lrm_interp.toy.train`` (the old entry point) trains nothing: it prints the
    ``lrm-interp toy train`` command with the same options and exits non-zero."""
    r = subprocess.run(
        [sys.executable, "-m", "lrm_interp.toy.train", "--out", str(tmp_path / "my toy"), "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().endswith(f"lrm-interp toy train --out '{tmp_path / 'my toy'}' --steps 5")
    assert not (tmp_path / "my toy").exists()
