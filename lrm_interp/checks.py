"""Range checks of numeric settings, shared by the Python API and the command line.

One rule per kind of number, so a config dataclass (``__post_init__``), a library function and
an ``argparse`` option refuse the same values with the same words:

- :func:`check_int` / :func:`check_float` raise ``ValueError("NAME must be DESCRIPTION, got V")``
  (bools are never numbers here; NaN and ±inf are always refused: "no limit" is ``None``);
- :func:`check_bool` refuses anything but ``True`` / ``False`` (``"no"`` is truthy: it used to turn a
  setting on); :func:`path_argument` anything but a non-empty ``str`` / ``os.PathLike`` (``""`` was
  the current folder); :func:`checked_arguments` applies both, before the body runs, to every
  parameter of a function (or dataclass) annotated ``bool`` or as a path (H28-APITYPES, H31-APIOUT);
- :func:`refuse_string` refuses a string where a list is meant (iterated, ``'fp'`` is ``'f'``, ``'p'``);
- :func:`env_flag` reads a yes/no environment variable (``LRM_INTERP_SKIP_MEMORY_CHECK``) with one
  set of spellings, and refuses any other value naming the variable;
- :func:`int_arg` / :func:`float_arg` build ``argparse`` ``type=`` callables that parse a string
  and raise ``argparse.ArgumentTypeError("must be DESCRIPTION, got V")``, which argparse prints as
  one line ``argument --flag: must be ...`` and exits with status 2 — before any work.

A leaf module: it imports nothing from :mod:`lrm_interp`, so every stage may use it.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast, overload

_INF = float("inf")


def _describe(kind: str, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """``"an integer >= 1"``, ``"a number in (0, 1]"``, ``"a finite number > 0"``, ..."""
    what = "an integer" if kind == "int" else "a finite number"
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{what} {'<' if hi_open else '<='} {hi:g}"
    return what


def number_value(v: object, what: str) -> float:
    """``float(v)`` of a real number, else ``TypeError`` naming ``what`` and the value: a string or
    bytes (``'3'`` was read as 3.0, ``bytearray(b"99")`` as 99), a bool (Python's, numpy's ``bool_``
    or a torch bool tensor: True ranked as 1.0), a mapping or anything ``float()`` refuses. The one
    test of every user's score, error and sensitivity value (H33-MBSKEYS, H33-ALLOCNAN, H34-NPBOOL);
    finiteness and range are the caller's."""
    dtype = str(getattr(v, "dtype", ""))
    text = (str, bytes, bytearray, memoryview)  # b"99" was read as 99 (H35-BYTESNUM)
    if isinstance(v, (*text, bool, Mapping)) or type(v).__name__ == "bool_" or dtype in ("bool", "torch.bool"):
        raise TypeError(f"{what} must be a number, got {shown_value(v)}")
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a complex tensor (H35-NUMERR)
        raise TypeError(f"{what} must be a number, got {shown_value(v)}") from None


def shown_value(v: object) -> str:
    """How an error shows the value it refused: the value for a number (``got 0.5``), the repr and
    type for anything else (``got '0.02' (str)``: a number given as a string looks like one)."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        return repr(v)
    return f"{v!r} ({type(v).__name__})"


class FlagError(ValueError, TypeError):
    """A flag given a value that is not ``True`` / ``False``: a ``ValueError`` (what :func:`check_bool`
    always raised) and a ``TypeError`` (its type is wrong), so callers catching either see it."""


def check_bool(name: str, v: object) -> bool:
    """``v`` if it is ``True`` or ``False``; else :class:`FlagError` naming ``name`` (``"no"``, ``1`` or
    ``None`` are not: a string is truthy, so ``symmetric="no"`` used to mean symmetric, H9-CS)."""
    if not isinstance(v, bool):
        raise FlagError(f"{name} must be True or False, got {shown_value(v)}")
    return v


def _numpy_bool(v: object) -> bool:
    """``v`` is a NumPy bool (``numpy.bool_``; ``numpy.bool`` in NumPy 2), without importing NumPy."""
    t = type(v)
    return t.__module__ == "numpy" and t.__name__ in ("bool_", "bool")


#: modules whose frames stand between a function of the package and its caller (decorators)
_WRAPPER_MODULES = ("contextlib", "functools", "torch.utils._contextlib")


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` in the function calling this one that points at the
    first frame outside the package: the user's line. Frames of the package (its callers inside
    the package, and :func:`checked_arguments`' wrapper) and of decorators' modules (``torch.no_grad``,
    ``contextlib``) are skipped; a fixed ``stacklevel=3`` pointed into the package whenever a
    wrapper or another path added a frame."""
    import sys

    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module == "lrm_interp" or module.startswith("lrm_interp.") or module in _WRAPPER_MODULES):
            return level
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class EmptyPathError(ValueError, TypeError):
    """A path argument that is empty or blank (:func:`path_argument`); a ``ValueError`` and, as the
    older checks raised for ``""``, a ``TypeError``."""


def path_argument(value: object, what: str) -> str | os.PathLike:
    """``value`` when it is a path naming something: a ``str`` or ``os.PathLike`` that is not empty
    or blank. ``""`` (an unset environment variable, ``os.environ.get("TRACES", "")``) used to be
    read as ``Path("")`` = the current folder: ``load_dataset("")`` loaded the folder's only
    ``.jsonl``, ``compare("", "")`` compared the current folder with itself (H12-EMPY; the command
    line's rule is :func:`lrm_interp.cli.common.refuse_empty_path`, H11-EMP). Raises
    :class:`EmptyPathError` naming ``what``, or ``TypeError`` for a value that is not a path."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(value).__name__} {value!r:.60}")
    text = os.fspath(value)
    if isinstance(text, str) and not text.strip():
        kind = "empty" if text == "" else "blank (only spaces)"
        raise EmptyPathError(f"{what} is {kind} ({text!r}): give a path (an unset environment variable?)")
    return value


_F = TypeVar("_F", bound=Callable[..., Any])
#: the annotations :func:`checked_arguments` reads as a flag: required, or ``None`` allowed
_FLAG = ("bool",)
_OPTIONAL_FLAG = ("bool|None", "None|bool", "Optional[bool]")
#: the annotations it reads as a path (``str | os.PathLike`` and its spellings); ``| None`` allows ``None``
_PATH = ("str|os.PathLike", "os.PathLike|str", "str|Path", "Path|str", "Path", "os.PathLike", "str|os.PathLike[str]")


def _annotated(fn: Callable[..., Any], required: tuple[str, ...]) -> dict[str, tuple[int | None, bool]]:
    """The parameters of ``fn`` whose annotation is one of ``required``, or one of them ``| None``:
    name -> (position among the positional parameters or ``None`` for a keyword-only one, whether
    ``None`` is allowed). Reads the annotations as written (``from __future__ import annotations``
    keeps them strings)."""
    found: dict[str, tuple[int | None, bool]] = {}
    positional = 0
    for p in inspect.signature(fn).parameters.values():
        a = p.annotation
        text = "bool" if a is bool else a.replace(" ", "") if isinstance(a, str) else None
        position = positional if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) else None
        if position is not None:
            positional += 1
        if text is None:
            continue
        bare = text.removeprefix("Optional[").removesuffix("]") if text.startswith("Optional[") else text
        bare = bare.removesuffix("|None").removeprefix("None|")
        if bare in required:
            found[p.name] = (position, bare != text)
    return found


def flag_parameters(fn: Callable[..., Any]) -> dict[str, tuple[int | None, bool]]:
    """The parameters of ``fn`` annotated ``bool`` (or ``bool | None``): name -> (position among the
    positional parameters or ``None`` for a keyword-only one, whether ``None`` is allowed)."""
    return _annotated(fn, _FLAG)


def path_parameters(fn: Callable[..., Any]) -> dict[str, tuple[int | None, bool]]:
    """The parameters of ``fn`` annotated as a path (``str | os.PathLike``, ``str | Path``,
    ``Path``…, or one of them ``| None``), as :func:`flag_parameters` lists the flags."""
    return _annotated(fn, _PATH)


def own_path_checks(*names: str) -> Callable[[_F], _F]:
    """Decorator (below :func:`checked_arguments`): the body checks the path parameters ``names``
    itself, with a message that says more than :func:`path_argument` (``score_outputs(items,
    'bench_a')``: "outputs and items are swapped"), so :func:`checked_arguments` leaves them alone."""

    def mark(fn: _F) -> _F:
        fn.__own_path_checks__ = names  # type: ignore[attr-defined]
        return fn

    return mark


def checked_arguments(obj: _F) -> _F:
    """Decorator: before the body runs, every parameter of the function (or of a class's
    ``__init__``: a dataclass) annotated ``bool`` is checked with :func:`check_bool`, so
    ``relative="no"`` (truthy) is refused instead of turning the setting on (H28-APITYPES), and
    every parameter annotated as a path with :func:`path_argument`, so ``out=5`` is refused naming it
    instead of a raw pathlib error, and ``out=""`` instead of writing into the current folder
    (H31-APIOUT). ``| None`` allows ``None`` too. A NumPy bool (``df.col.any()``) is passed on as the
    Python bool it is. The message names the function::

        quantization_errors: relative must be True or False, got 'no' (str)
        run_protection_experiment: out must be a path (str or os.PathLike), got int 5

    A path parameter the body checks itself is left to it (:func:`own_path_checks`). The wrapper
    keeps the signature and docstring (``functools.wraps``); the parameters it checks are listed in
    ``__checked_arguments__`` (the tests walk every public callable with them)."""
    if isinstance(obj, type):
        obj.__init__ = checked_arguments(obj.__init__)  # type: ignore[misc]
        return obj
    flags = flag_parameters(obj)
    own = getattr(obj, "__own_path_checks__", ())
    paths = {k: v for k, v in path_parameters(obj).items() if k not in own}
    if not flags and not paths:
        return obj
    owner = obj.__qualname__.removesuffix(".__init__")

    def given(args: tuple[Any, ...], kwargs: dict[str, Any], name: str, position: int | None) -> tuple[bool, Any]:
        if name in kwargs:
            return True, kwargs[name]
        if position is not None and position < len(args):
            return True, args[position]
        return False, None

    @functools.wraps(obj)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, (position, optional) in flags.items():
            found, v = given(args, kwargs, name, position)
            if not found or isinstance(v, bool) or (optional and v is None):
                continue
            if _numpy_bool(v):  # df.col.any(): passed on as the bool it is (JSON cannot write a numpy bool)
                if name in kwargs:
                    kwargs[name] = bool(v)
                else:
                    args = (*args[:position], bool(v), *args[position + 1 :])  # type: ignore[operator]
                continue
            allowed = "True, False or None" if optional else "True or False"
            raise FlagError(f"{owner}: {name} must be {allowed}, got {v!r} ({type(v).__name__})")
        for name, (position, optional) in paths.items():
            found, v = given(args, kwargs, name, position)
            if found and not (optional and v is None):
                try:
                    path_argument(v, name)
                except EmptyPathError as e:
                    raise EmptyPathError(f"{owner}: {e}") from None
                except TypeError as e:
                    raise TypeError(f"{owner}: {e}") from None
        return obj(*args, **kwargs)

    wrapper.__checked_arguments__ = (*flags, *paths)  # type: ignore[attr-defined]
    return cast(_F, wrapper)


def _int_ok(v: object, lo: int | None, hi: int | None) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        return False
    n = int(v)  # the same value: an Integral converts exactly
    return (lo is None or n >= lo) and (hi is None or n <= hi)


def _float_ok(v: object, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    x = float(v)
    if not math.isfinite(x):
        return False
    if lo is not None and (x <= lo if lo_open else x < lo):
        return False
    if hi is not None and (x >= hi if hi_open else x > hi):
        return False
    return True


@overload
def check_int(
    name: str, v: object, *, min: int | None = None, max: int | None = None, optional: Literal[False] = False
) -> int: ...
@overload
def check_int(
    name: str, v: object, *, min: int | None = None, max: int | None = None, optional: bool
) -> int | None: ...
@checked_arguments
def check_int(
    name: str, v: object, *, min: int | None = None, max: int | None = None, optional: bool = False
) -> int | None:
    """``v`` if it is an ``int`` (not a bool) within ``[min, max]`` (``None`` too when
    ``optional``); else ``ValueError`` naming ``name``."""
    if optional and v is None:
        return None
    if not _int_ok(v, min, max):
        what = _describe("int", min, max, False, False)
        raise ValueError(f"{name} must be {'None or ' if optional else ''}{what}, got {shown_value(v)}")
    return int(cast(numbers.Integral, v))  # checked by _int_ok


@overload
def check_float(
    name: str,
    v: object,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: Literal[False] = False,
) -> float: ...
@overload
def check_float(
    name: str,
    v: object,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: bool,
) -> float | None: ...
@checked_arguments
def check_float(
    name: str,
    v: object,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    optional: bool = False,
) -> float | None:
    """``float(v)`` if it is a finite real within the bounds (``min_open``/``max_open``:
    exclusive; ``None`` too when ``optional``); NaN and ±inf are refused. Else ``ValueError``."""
    if optional and v is None:
        return None
    if not _float_ok(v, min, max, min_open, max_open):
        raise ValueError(
            f"{name} must be {'None or ' if optional else ''}"
            f"{_describe('float', min, max, min_open, max_open)}, got {shown_value(v)}"
        )
    return float(cast(numbers.Real, v))  # checked by _float_ok


@checked_arguments
def check_fraction(name: str, v: object, *, zero: bool = True, one: bool = True) -> float:
    """A finite fraction in ``[0, 1]`` (``zero=False``: 0 excluded; ``one=False``: 1 excluded)."""
    return check_float(name, v, min=0.0, max=1.0, min_open=not zero, max_open=not one)


def refuse_string(name: str, v: object, what: str, fix: str | None = None) -> None:
    """``TypeError`` when ``v`` is a string (or bytes) where ``what`` (e.g. ``"a list of site
    names"``) is meant: iterated, ``'fp'`` would be its characters ``'f'``, ``'p'`` and the call
    would go on without a word (H14-ONS, H15). The message names ``name`` and the fix (``fix``,
    default ``name=['v']``)::

        sites must be a list of site names, got the string 'X': write sites=['X']
        (a string would be read character by character)
    """
    if isinstance(v, (str, bytes)):
        if not v.strip():  # '' is an unset variable, not a one-element list (H32-FINDHINT)
            raise TypeError(f"{name} must be {what}, got the empty string {v!r} (an unset environment variable?)")
        fix = fix if fix is not None else f"{name}=[{v!r}]"
        raise TypeError(
            f"{name} must be {what}, got the string {v!r}: write {fix} (a string would be read character by character)"
        )


#: the spellings :func:`env_flag` reads as on, and as off (case and surrounding blanks ignored; an
#: empty or unset variable is off)
ENV_TRUE = ("1", "true", "yes", "on")
ENV_FALSE = ("0", "false", "no", "off")


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """The yes/no environment variable ``name`` (of ``environ``, default ``os.environ``):
    ``True`` for 1 / true / yes / on, ``False`` for 0 / false / no / off, empty or unset (any case,
    blanks around ignored). Any other value raises ``ValueError`` naming the variable and the
    accepted values: ``LRM_INTERP_SKIP_MEMORY_CHECK=false`` used to turn the check *off* (only ``""``
    and ``"0"`` counted as no, H9-SMC), and a typo must not decide either way."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return False
    v = raw.strip().lower()
    if v in ENV_TRUE:
        return True
    if v in ENV_FALSE or not v:
        return False
    raise ValueError(
        f"${name}={raw!r} is neither yes nor no: set it to {', '.join(ENV_TRUE)} for yes, to "
        f"{', '.join(ENV_FALSE)} or empty for no, or unset it"
    )


# --------------------------------------------------------------------------- argparse types
def int_arg(min: int | None = None, max: int | None = None, *, name: str | None = None) -> Callable[[str], int]:
    """An ``argparse`` ``type=``: an integer within ``[min, max]``, else a one-line usage error."""
    desc = _describe("int", min, max, False, False)

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {desc}, got {s!r}") from None
        if not _int_ok(v, min, max):
            raise argparse.ArgumentTypeError(f"must be {desc}, got {s}")
        return v

    parse.__name__ = name or "int"
    parse.bounds = ("int", min, max, False, False)  # type: ignore[attr-defined]  # a function attribute: marks a checked type
    return parse


@checked_arguments
def float_arg(
    min: float | None = None,
    max: float | None = None,
    *,
    min_open: bool = False,
    max_open: bool = False,
    name: str | None = None,
) -> Callable[[str], float]:
    """An ``argparse`` ``type=``: a finite number within the bounds, else a one-line usage error."""
    desc = _describe("float", min, max, min_open, max_open)

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {desc}, got {s!r}") from None
        if not _float_ok(v, min, max, min_open, max_open):
            raise argparse.ArgumentTypeError(f"must be {desc}, got {s}")
        return v

    parse.__name__ = name or "float"
    parse.bounds = ("float", min, max, min_open, max_open)  # type: ignore[attr-defined]  # as in int_arg
    return parse


#: the usual argparse types (see :mod:`lrm_interp.cli.common`)
positive_int = int_arg(1, name="positive_int")
nonneg_int = int_arg(0, name="nonneg_int")
positive_float = float_arg(0.0, min_open=True, name="positive_float")
nonneg_float = float_arg(0.0, name="nonneg_float")
finite_float = float_arg(name="finite_float")
fraction = float_arg(0.0, 1.0, name="fraction")
#: quantization code widths (compress/quant/grid.py: MIN_BITS..MAX_BITS)
bits_int = int_arg(2, 8, name="bits")
#: the largest seed: ``torch.Generator.manual_seed`` and ``random.Random`` take any integer, but
#: torch reduces it mod 2**64 (two seeds would give one stream, H7-TS4); 2**63 - 1 fits every RNG
SEED_MAX = 2**63 - 1
_SEED_DESC = "an integer >= 0 (at most 2**63 - 1)"


def check_seed(name: str, v: object) -> int:
    """A seed: an ``int`` (not a bool) in ``[0, SEED_MAX]``, else ``ValueError`` naming ``name``."""
    if not _int_ok(v, 0, SEED_MAX):
        raise ValueError(f"{name} must be {_SEED_DESC}, got {shown_value(v)}")
    return int(cast(numbers.Integral, v))


def _seed_arg(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {_SEED_DESC}, got {s!r}") from None
    if not _int_ok(v, 0, SEED_MAX):
        raise argparse.ArgumentTypeError(f"must be {_SEED_DESC}, got {s}")
    return v


_seed_arg.__name__ = "seed"
_seed_arg.bounds = ("int", 0, SEED_MAX, False, False)  # type: ignore[attr-defined]  # as in int_arg
#: seeds: an integer in [0, SEED_MAX] (an argparse type)
seed_int = _seed_arg


__all__ = [
    "check_int",
    "check_float",
    "check_fraction",
    "check_bool",
    "env_flag",
    "ENV_TRUE",
    "ENV_FALSE",
    "int_arg",
    "float_arg",
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "finite_float",
    "fraction",
    "bits_int",
    "seed_int",
    "SEED_MAX",
    "check_seed",
    "shown_value",
]
