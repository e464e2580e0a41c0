"""Shared helpers of the CLI reliability tests: run ``lrm-interp`` in-process, read its one-line
error, make a small gold trace file."""

from __future__ import annotations

from pathlib import Path

from lrm_interp.cli.main import main


def run_cli(argv) -> int:
    """``lrm-interp`` with ``argv`` (any values, turned into strings) in this process; its exit status."""
    try:
        return main([str(x) for x in argv])
    except SystemExit as e:
        return int(e.code or 0)


def err_line(capsys) -> str:
    """The command's stderr, which must be one line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def toy_gold(tmp_path: Path, name: str = "gold.jsonl", n: int = 1, seed: int | None = None) -> Path:
    """``toy traces --gold``: ``n`` gold-annotated toy traces per family in ``tmp_path / name``."""
    out = tmp_path / name
    extra = [] if seed is None else ["--seed", seed]
    assert run_cli(["toy", "traces", "--gold", "--per-family", n, *extra, "--out", out]) == 0
    return out
