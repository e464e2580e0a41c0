"""Walk the public Python API (the tests of every flag and every path parameter): each public
function, method and class ``__init__`` once, and a call of one of them with chosen arguments."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

import lrm_interp


def public_callables() -> Iterator[tuple[str, Callable[..., Any], Any]]:
    """Every public function, method and class ``__init__`` of the package, once: the names of
    ``lrm_interp.__all__`` and every name without a leading ``_`` that a module defines (the
    command line's modules aside: argparse checks their flags): (qualified name, callable, owner
    class or ``None``)."""
    seen: set[tuple[str, str]] = set()
    modules = [lrm_interp]
    for info in pkgutil.walk_packages(lrm_interp.__path__, "lrm_interp."):
        if ".cli" not in info.name and not info.name.endswith(("__main__", "vllm_worker")):
            modules.append(importlib.import_module(info.name))
    for module in modules:
        if module is lrm_interp:
            named = [(name, getattr(lrm_interp, name)) for name in lrm_interp.__all__]
        else:
            named = [(n, o) for n, o in vars(module).items() if getattr(o, "__module__", None) == module.__name__]
        for name, obj in named:
            if name.startswith("_"):
                continue
            if inspect.isfunction(obj):
                items: list[tuple[Any, Any]] = [(obj, None)]
            elif inspect.isclass(obj) and obj.__module__.startswith("lrm_interp"):
                items = []
                for member_name, member in vars(obj).items():
                    if member_name.startswith("_") and member_name != "__init__":
                        continue
                    fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                    if inspect.isfunction(fn):
                        items.append((fn, obj))
            else:
                continue
            for fn, owner in items:
                key = (fn.__module__, fn.__qualname__)
                if key not in seen and fn.__module__.startswith("lrm_interp"):
                    seen.add(key)
                    yield f"{fn.__module__}.{fn.__qualname__}", fn, owner


def call_with_bad(fn: Callable[..., Any], owner: Any, name: str, bad: Any) -> Callable[[], Any]:
    """A call of ``fn`` with its parameter ``name`` set to ``bad`` and every other required one to a
    good flag (``True``), a good path (``"x"``) or ``None`` (the checks run before the body reads them)."""
    from lrm_interp.checks import flag_parameters, path_parameters

    flags, paths = flag_parameters(fn), path_parameters(fn)
    kwargs: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == name:
            kwargs[p.name] = bad
        elif p.default is inspect.Parameter.empty:
            kwargs[p.name] = True if p.name in flags else "x" if p.name in paths else None
    return call_with(fn, owner, kwargs)


def call_with(fn: Callable[..., Any], owner: Any, kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A call of ``fn`` (a function, method, classmethod, staticmethod or ``__init__`` of ``owner``)
    with ``kwargs``; ``self`` is ``None`` (the arguments are checked before the body reads it)."""
    if fn.__name__ == "__init__":
        return lambda: owner(**kwargs)
    if owner is not None and isinstance(inspect.getattr_static(owner, fn.__name__), classmethod):
        return lambda: getattr(owner, fn.__name__)(**kwargs)
    if owner is not None and not isinstance(inspect.getattr_static(owner, fn.__name__), staticmethod):
        return lambda: getattr(owner, fn.__name__)(None, **kwargs)
    if owner is not None:
        return lambda: getattr(owner, fn.__name__)(**kwargs)
    return lambda: getattr(importlib.import_module(fn.__module__), fn.__name__)(**kwargs)
