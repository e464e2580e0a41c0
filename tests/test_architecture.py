"""The package's import graph: imports only go forward along the stages of the data path
(:data:`STAGES`, written once here and drawn in docs/architecture.md), no cycles, no private name
imported across modules; every entry point resolves; the public API stays importable from the
top level.

An *import* is every ``import`` / ``from ... import`` statement, at module level or inside a
function, and every string that names a module of the package (``"lrm_interp.x.y"``,
``"lrm_interp.x.y:attr"``: a loader string, ``importlib.import_module(...)``, ``python -m``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lrm_interp

PKG = Path(lrm_interp.__file__).resolve().parent
ROOT = PKG.parent

#: The stages, lowest floor first. A module may import modules of its own floor and of lower
#: floors, never of a later one. Each entry names top-level modules / subpackages of
#: ``lrm_interp``; every module of the package must be on exactly one floor.
STAGES: tuple[tuple[str, ...], ...] = (
    ("checks", "_io", "endpoint", "display"),  # leaves: import no other floor (endpoint uses checks)
    ("data",),  # traces, tokens, markup, annotators, benchmark tasks, the toy task generators
    ("model", "testing"),  # loading (alias registry), sites, forward, capture; tiny test models
    ("attribution",),
    ("compress",),  # calibration, quant/, prune/: takes masks duck-typed, never imports protect
    ("protect",),  # saliencies and masks: scores weights with compress's own grid and GPTQ
    ("evaluation",),
    ("toy",),  # the shipped toy model: training, distillation, evaluation
    ("experiments",),
    ("cli",),
    # facades on top: the lazy public API (``lrm_interp/__init__.py``), the
    # ``lrm_interp.benchmarks`` re-export and ``python -m lrm_interp`` (``__main__``: the CLI) may
    # import any stage; no stage imports them (the root's own ``__version__`` aside: the root runs
    # first anyway, see module_refs)
    ("lrm_interp", "benchmarks", "__main__"),
)


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """``({module: {imported lrm_interp modules}}, [private imports across modules])``.

    Every import statement counts, at module level or inside functions. Importing
    ``lrm_interp.a.b`` from outside package ``lrm_interp.a`` also runs ``lrm_interp.a``'s
    ``__init__``, so that edge is added as well.
    """
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, node, is_pkg)
                if src:
                    targets = [(src, [a.name for a in node.names])]
            for src, names in targets:
                if not (src == "lrm_interp" or src.startswith("lrm_interp.")):
                    continue
                found = []
                for n in names:
                    if f"{src}.{n}" in mods:
                        found.append(f"{src}.{n}")
                    elif n.startswith("_") and not n.startswith("__") and src != mod:
                        private.append(f"{mod} imports {src}.{n}")
                found.append(src)
                for t in found:
                    parts = t.split(".")
                    for k in range(2, len(parts) + 1):  # parent package __init__s that run first
                        parent = ".".join(parts[:k])
                        if parent in mods and parent != mod and not mod.startswith(parent + "."):
                            graph[mod].add(parent)
    return graph, private


_MODULE_STRING = re.compile(r"lrm_interp(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_][\w.]*)?")


def _string_target(value: str, mods: dict[str, Path]) -> str | None:
    """The package module a string names (``"lrm_interp.a.b"``, ``"lrm_interp.a.b:attr"``,
    ``"lrm_interp.a.b.attr"``), or ``None`` (a file format tag, an entry-point group name...)."""
    if not _MODULE_STRING.fullmatch(value):
        return None
    name = value.partition(":")[0]
    parts = name.split(".")
    for k in range(len(parts), 1, -1):  # the longest prefix that is a module, never bare ``lrm_interp``
        if ".".join(parts[:k]) in mods:
            return ".".join(parts[:k])
    return None


def module_refs(
    mod: str,
    source: str,
    mods: dict[str, Path],
    *,
    is_pkg: bool = False,
    filename: str = "<src>",
    lazy: dict[str, str] | None = None,
) -> list[tuple[str, int, str]]:
    """``[(imported module, line, how)]`` of one module's source: ``how`` is ``"import"`` (any
    import statement, at module level or in a function) or ``"string"`` (a string naming a
    module). Importing ``pkg.sub.mod`` also counts ``pkg.sub`` (its ``__init__`` runs first).

    The root package ``lrm_interp`` itself is never counted: it runs before any of its modules
    and imports nothing when it runs. A public name taken from it (``from lrm_interp import
    attribute``) counts as an import of the module that defines it (``lazy``: the root's
    ``_LAZY`` table); ``__version__`` is the root's own."""
    lazy = lazy or {}
    out: list[tuple[str, int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        found: list[tuple[str, str]] = []
        if isinstance(node, ast.Import):
            found = [(a.name, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(mod, node, is_pkg)
            if src:
                found = [(src, "import")] + [
                    (f"{src}.{a.name}", "import") for a in node.names if f"{src}.{a.name}" in mods
                ]
                if src == "lrm_interp":
                    found += [(lazy[a.name], "import") for a in node.names if a.name in lazy]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            t = _string_target(node.value, mods)
            if t:
                found = [(t, "string")]
        for t, how in found:
            parts = t.split(".")
            for k in range(2, len(parts) + 1):
                parent = ".".join(parts[:k])
                if parent in mods and parent != mod and not mod.startswith(parent + "."):
                    out.append((parent, node.lineno, how))
    return out


def stage_of(mod: str) -> int:
    """The floor (index into :data:`STAGES`) of a module of the package."""
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    for i, floor in enumerate(STAGES):
        if key in floor:
            return i
    raise KeyError(f"{mod} is on no floor of STAGES: add {key!r} to STAGES (and to docs/architecture.md)")


def backward_refs(refs: dict[str, list[tuple[str, int, str]]]) -> list[tuple[str, int, str, str]]:
    """``[(module, line, imported module, how)]`` for every reference to a later floor."""
    return sorted({(m, line, t, how) for m, lst in refs.items() for t, line, how in lst if stage_of(t) > stage_of(m)})


def direction_violations(refs: dict[str, list[tuple[str, int, str]]]) -> list[str]:
    """:func:`backward_refs` as readable lines naming both floors."""

    def floor(m: str) -> str:
        return "/".join(STAGES[stage_of(m)])

    return [f"{m}:{line} ({floor(m)}) -> {t} ({floor(t)}) by {how}" for m, line, t, how in backward_refs(refs)]


def package_refs() -> dict[str, list[tuple[str, int, str]]]:
    mods = _modules()
    return {
        m: module_refs(
            m,
            p.read_text(encoding="utf-8"),
            mods,
            is_pkg=p.name == "__init__.py",
            filename=str(p),
            lazy=lrm_interp._LAZY,
        )
        for m, p in mods.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph, _ = import_graph()
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_is_on_one_floor():
    keys = [k for floor in STAGES for k in floor]
    assert len(keys) == len(set(keys)), "a name is on two floors of STAGES"
    for m in _modules():
        stage_of(m)  # raises for a module on no floor


def test_imports_only_go_forward_along_the_stages():
    assert direction_violations(package_refs()) == []


def test_direction_check_sees_every_kind_of_import():
    mods = {
        m: Path()
        for m in (
            "lrm_interp",
            "lrm_interp.data",
            "lrm_interp.data.traces",
            "lrm_interp.model",
            "lrm_interp.model.loading",
            "lrm_interp.toy",
            "lrm_interp.toy.tasks",
        )
    }
    src = (
        "import importlib\n"
        "from lrm_interp.data.traces import ReasoningTrace\n"  # backwards: fine
        "from ..toy import tasks\n"  # relative, module level
        "def f():\n"
        "    from lrm_interp.toy.tasks import problems\n"  # function level
        "    return importlib.import_module('lrm_interp.toy')\n"  # by string
        "ALIASES = {'toy': 'lrm_interp.toy:load_toy_alias'}\n"  # a loader string
        "GROUP = 'lrm_interp.models'\n"  # names no module: not a reference
        "FORMAT = 'lrm_interp.masks/2'\n"  # a format tag: not a reference
    )
    refs = {"lrm_interp.model.loading": module_refs("lrm_interp.model.loading", src, mods)}
    got = {(line, t, how) for _, line, t, how in backward_refs(refs)}
    assert got == {
        (3, "lrm_interp.toy", "import"),
        (3, "lrm_interp.toy.tasks", "import"),
        (5, "lrm_interp.toy", "import"),
        (5, "lrm_interp.toy.tasks", "import"),
        (6, "lrm_interp.toy", "string"),
        (7, "lrm_interp.toy", "string"),
    }
    assert (
        direction_violations(refs)[0] == "lrm_interp.model.loading:3 (model/testing) -> lrm_interp.toy (toy) by import"
    )
    # the same import from a later floor, or within one floor, is fine
    assert backward_refs({"lrm_interp.toy.tasks": module_refs("lrm_interp.toy.tasks", src, mods)}) == []
    # a public name of the root counts as its defining module; the root's own names do not count
    facade = "from lrm_interp import __version__\ndef g():\n    from lrm_interp import load_toy\n"
    refs = {
        "lrm_interp.data.traces": module_refs(
            "lrm_interp.data.traces", facade, mods, lazy={"load_toy": "lrm_interp.toy.tasks"}
        )
    }
    assert {(line, t) for _, line, t, _ in backward_refs(refs)} == {(3, "lrm_interp.toy.tasks"), (3, "lrm_interp.toy")}
    assert _string_target("lrm_interp.toy.tasks.generate_dataset", mods) == "lrm_interp.toy.tasks"
    assert _string_target("lrm_interp", mods) is None and _string_target("see lrm_interp.toy", mods) is None


def stage_order_line() -> str:
    """The stage order as docs/architecture.md writes it (checked against :data:`STAGES`)."""
    return " → ".join(" ".join(f"`{k}`" for k in floor) for floor in STAGES)


def test_docs_state_the_same_stage_order():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert stage_order_line() in doc, f"docs/architecture.md must state the stage order: {stage_order_line()}"


def test_entry_points_resolve_and_are_installed():
    """Every entry point in pyproject.toml names a module of the package and a top-level
    function of it; the installed metadata declares them (else: ``pip install -e .`` again)."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    mods = _modules()
    from importlib.metadata import entry_points

    for group, table in groups.items():
        installed = {(ep.name, ep.value) for ep in entry_points(group=group)}
        for name, value in table.items():
            mod, _, attr = value.partition(":")
            assert mod in mods, f"[{group}] {name} = {value!r}: no module {mod}"
            tree = ast.parse(mods[mod].read_text(encoding="utf-8"))
            defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert attr in defined, f"[{group}] {name} = {value!r}: {mod} defines no {attr}"
            assert (name, value) in installed, f"[{group}] {name} is not installed: run pip install -e ."
    assert "lrm_interp.models" in groups and "toy" in groups["lrm_interp.models"]


def test_no_private_name_imported_across_modules():
    _, private = import_graph()
    assert private == []


def test_public_api_names():
    import lrm_interp.testing as T

    for name in (
        "attribute",
        "load_dataset",
        "load_model",
        "encode_trace",
        "find_sites",
        "Capture",
        "ReasoningTrace",
        "BehaviorSpan",
        "ReasoningDataset",
        "load_paper_layout",
        "compare",
        "Attribution",
        "ImportanceShift",
        "BEHAVIORS",
        "TARGET_BEHAVIORS",
        "AttributionConfig",
    ):
        assert getattr(lrm_interp, name) is not None, name
        assert name in dir(lrm_interp)
    assert callable(T.tiny_model) and callable(T.byte_tokenizer) and callable(T.quantize_stub_)
