"""Lint, format and type check (configured in pyproject.toml, also a step of .ci/run): ``ruff
check .``, ``ruff format --check .`` and ``mypy`` (the package) exit 0, so ``python -m pytest``
catches a regression. Skipped only where the tool is not installed (the ``test`` extra pins both)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKS = {
    "ruff check": ("ruff", ["check", "."]),
    "ruff format": ("ruff", ["format", "--check", "."]),
    "mypy": ("mypy", []),  # files, overrides and strictness: [tool.mypy] in pyproject.toml
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_tool_is_clean(name):
    module, args = CHECKS[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]' installs it)")
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
