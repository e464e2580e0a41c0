"""The documentation site builds with mkdocs in strict mode (every link and API reference resolves)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_strict(tmp_path):
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for page in (
        "index.html",
        "getting_started/index.html",
        "concepts/index.html",
        "howto/own_model/index.html",
        "api/protect/index.html",
        "protection/index.html",
        "architecture/index.html",
    ):
        assert (site / page).stat().st_size > 1000, page
    api = (site / "api" / "protect" / "index.html").read_text()
    assert "scale_aware_saliency" in api and "build_saliency" in api  # mkdocstrings rendered the docstrings
    start = (site / "getting_started" / "index.html").read_text()
    assert "lrm-interp quickstart" in start and "heatmap.png" in start and "masks.safetensors" in start
