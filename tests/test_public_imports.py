"""Examples and notebooks are user code: they import only public names of the package.

No private name (``from lrm_interp.x import _y``, ``import lrm_interp._io``, ``lrm_interp._io.f``,
``"lrm_interp._io"``) in ``examples/*.py`` or in the code cells of ``notebooks/build_notebooks.py``
(the source of every notebook), and a name the public API exports (``lrm_interp.__all__``) is
taken from ``lrm_interp`` itself, not from the module that defines it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

import lrm_interp

ROOT = Path(__file__).resolve().parents[1]

#: Deep imports of a name the root exports that are known and left to their owner, as
#: ``{"notebooks/NAME.ipynb": {name, ...}}``: fix them there and delete them here (an entry that
#: is fixed is simply ignored).
KNOWN_DEEP: dict[str, set[str]] = {"notebooks/quickstart.ipynb": {"quantize_model_"}}

_PRIVATE_STRING = re.compile(r"\blrm_interp(?:\.\w+)*\._(?!_)\w*")


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` of an attribute chain on a name, else ``None``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _code(source: str) -> str:
    """A notebook cell without its IPython magics and shell lines (``%matplotlib inline``)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def private_refs(source: str) -> list[str]:
    """Every reference of ``source`` to a private name or module of the package."""
    out = []
    for node in ast.walk(ast.parse(_code(source))):
        if isinstance(node, ast.Import):
            out += [
                a.name
                for a in node.names
                if a.name.split(".")[0] == "lrm_interp" and any(map(_private, a.name.split(".")))
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "lrm_interp":
            if any(map(_private, node.module.split("."))):
                out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute):  # every link of a chain: a.b._c.d gives a.b._c and a.b._c.d
            name = _dotted(node)
            if name and name.split(".")[0] == "lrm_interp" and any(map(_private, name.split("."))):
                out.append(name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out += _PRIVATE_STRING.findall(node.value)
    return sorted(set(out))


def deep_public_imports(source: str) -> list[str]:
    """``module.name`` of every ``from lrm_interp.<module> import name`` whose name the root exports."""
    out = []
    for node in ast.walk(ast.parse(_code(source))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lrm_interp."):
            out += [f"{node.module}.{a.name}" for a in node.names if a.name in lrm_interp.__all__]
    return out


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "notebooks" / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def user_sources() -> list[tuple[str, str]]:
    """``(where, source)`` of every example script and every notebook's code cells."""
    out = [(f"examples/{p.name}", p.read_text(encoding="utf-8")) for p in sorted((ROOT / "examples").glob("*.py"))]
    pytest.importorskip("nbformat")
    for name, cells in _builder().NOTEBOOKS.items():
        out.append((f"notebooks/{name}", "\n".join(_code(src) for kind, src in cells if kind == "code")))
    return out


def test_the_checks_see_every_form():
    src = (
        "%matplotlib inline\n"
        "import lrm_interp._io\n"
        "import lrm_interp.protect.masks\n"
        "from lrm_interp._io import atomic_write_text\n"
        "from lrm_interp.protect.saliency import _stream, magnitude\n"
        "from lrm_interp import __version__, _LAZY\n"
        "lrm_interp.attribution._private.f()\n"
        "m = importlib.import_module('lrm_interp._io')\n"
        "from lrm_interp.compress.quant import quantize_model_\n"
        "from lrm_interp import build_masks\n"
    )
    assert private_refs(src) == [
        "lrm_interp._LAZY",
        "lrm_interp._io",
        "lrm_interp.attribution._private",
        "lrm_interp.attribution._private.f",
        "lrm_interp.protect.saliency._stream",
    ]
    assert sorted(deep_public_imports(src)) == [
        "lrm_interp._io.atomic_write_text",
        "lrm_interp.compress.quant.quantize_model_",
    ]
    assert private_refs("from lrm_interp.toy.tasks import problems\nlrm_interp.attribute(m, ds)\n") == []


def test_examples_and_notebooks_import_no_private_name():
    sources = user_sources()
    assert len([w for w, _ in sources if w.startswith("examples/")]) >= 4
    assert {f"notebooks/{n}" for n in ("quickstart.ipynb", "protection.ipynb", "benchmark.ipynb")} <= dict(
        sources
    ).keys()
    bad = {where: refs for where, src in sources if (refs := private_refs(src))}
    assert not bad, f"private names of lrm_interp in user code (export a public name instead): {bad}"


def test_examples_and_notebooks_take_public_names_from_the_root():
    bad = {}
    for where, src in user_sources():
        deep = [d for d in deep_public_imports(src) if d.rsplit(".", 1)[1] not in KNOWN_DEEP.get(where, set())]
        if deep:
            bad[where] = deep
    assert not bad, f"import these from lrm_interp (the public API exports them): {bad}"
