"""The notebooks run top to bottom (executed with nbclient, as a user would in Jupyter) and show what
each is for: images, rich HTML results, the numbers named in their text."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"

#: notebook -> (at least this many PNG outputs, HTML results that must render, texts that must appear)
EXPECT = {
    "quickstart.ipynb": (2, ["Attribution"], ["model.layers.", "backtracking"]),
    # "compressed: rtn 3": the shift's compressed side is the 3-bit copy (the notebook once discarded
    # apply_compression's copy and compared the model with itself, H13-NBC)
    "compressed.ipynb": (2, ["ImportanceShift"], ["rtn:3", "magnitude:0.5", "adding-knowledge", "compressed: rtn 3"]),
    "protection.ipynb": (
        1,
        ["ProtectionTable(", "BitAllocation("],
        ["weights kept", "re:^model", "quant_stage", "+:^model"],
    ),
    "pretrained.ipynb": (1, ["Attribution"], ["Divergence(", "model.layers.29."]),
    "benchmark.ipynb": (0, ["BenchScores("], ["pass@1", "collapse_starts_at", "rtn3"]),
    "findings.ipynb": (1, [], ["knowledge more fragile", "'positive'", "final_layer_delta", "adding-knowledge"]),
}


def _run(name: str, tmp_path: Path) -> list[dict]:
    nb = nbformat.read(NB_DIR / name, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name}: outputs must be stripped in git"
    )
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


@pytest.mark.parametrize("name", [n for n in EXPECT if n != "pretrained.ipynb"])
def test_notebook_executes(name, tmp_path):
    _check(name, _run(name, tmp_path))


@pytest.mark.slow
def test_pretrained_notebook_executes(tmp_path):
    _check("pretrained.ipynb", _run("pretrained.ipynb", tmp_path))


def _check(name: str, outputs: list[dict]) -> None:
    n_png, html, texts = EXPECT[name]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= n_png
    rich = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    for h in html:
        assert h in rich, f"{name}: no rendered {h}"
    text = rich + "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    for t in texts:
        assert t in text, f"{name}: {t!r} not in the outputs"


def test_builder_matches_the_committed_notebooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert sorted(mod.NOTEBOOKS) == sorted(EXPECT) == sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    for name, cells in mod.NOTEBOOKS.items():
        nb = nbformat.read(NB_DIR / name, as_version=4)
        assert [c.source for c in nb.cells] == [src for _, src in cells], f"{name}: rerun notebooks/build_notebooks.py"
