"""The package's import graph: no cycles (function-level imports included) and no private name
imported across modules; the public API stays importable from the top level."""
from __future__ import annotations

import ast
from pathlib import Path

import lrm_interp

PKG = Path(lrm_interp.__file__).resolve().parent


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


def test_no_private_name_imported_across_modules():
    _, private = import_graph()
    assert private == []


def test_public_api_names():
    import lrm_interp.testing as T

    for name in ("attribute", "load_dataset", "load_model", "encode_trace", "find_sites", "Capture",
                 "ReasoningTrace", "BehaviorSpan", "ReasoningDataset", "load_paper_layout", "compare",
                 "Attribution", "ImportanceShift", "BEHAVIORS", "TARGET_BEHAVIORS", "AttributionConfig"):
        assert getattr(lrm_interp, name) is not None, name
        assert name in dir(lrm_interp)
    assert callable(T.tiny_model) and callable(T.byte_tokenizer) and callable(T.quantize_stub_)
