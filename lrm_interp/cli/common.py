"""Conventions shared by every ``lrm-interp`` subcommand.

Parsers
    Build each subcommand with :func:`add_command` (``description`` + an epilog that begins
    with ``example:`` and shows real command lines, raw-formatted) and give every flag a
    ``help=``; :class:`HelpFormatter` appends ``(default: X)`` itself, so help texts do not
    repeat defaults. :class:`Parser` reports a usage error as one line, and refuses an option
    that takes one value given twice with two values (:class:`SingleValue`; list options
    accumulate instead, :class:`Accumulate`).

Inputs
    Check every input path before anything heavy runs (:func:`require_path`,
    :func:`require_model`), so a typo fails in milliseconds, naming the flag and the path.
    Wrap reads whose exceptions do not name the file in :func:`reading`.

Numbers
    Give every numeric option a range-checking ``type=`` (:func:`positive_int`,
    :func:`nonneg_int`, :func:`positive_float`, :func:`nonneg_float`, :func:`fraction`,
    :func:`bits_int`, :func:`seed_int`, or :func:`lrm_interp.checks.int_arg` /
    :func:`~lrm_interp.checks.float_arg` for other bounds): NaN, inf and out-of-range values are
    refused by argparse, one line naming the flag, exit status 2, before anything is loaded or
    written. Say in the help when 0 (or -1) has a meaning ("0: never").

Progress
    ``--quiet`` silences every progress bar, the libraries' included (:func:`quiet_progress`,
    applied by :func:`lrm_interp.cli.main.main` around any command run with ``--quiet``).

Errors
    A command raises; :func:`lrm_interp.cli.main.main` prints one line
    ``lrm-interp <cmd>: error: <message>`` (:func:`describe_error`) and returns 2 for bad
    input, 1 for an internal error. ``LRM_INTERP_DEBUG=1`` re-raises for the traceback.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import json
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lrm_interp.checks import (
    bits_int,
    env_flag,
    finite_float,
    float_arg,
    fraction,
    int_arg,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    seed_int,
)

PROG = "lrm-interp"
DEBUG_ENV = "LRM_INTERP_DEBUG"


def held_out_seed(s: str) -> int:
    """argparse type of the seed of *held-out* toy problems (``toy eval --seed``, ``bench --toy-seed``):
    a seed (:func:`~lrm_interp.checks.seed_int`) below the toy models' training seeds
    (:data:`~lrm_interp.data.toy_tasks.TRAIN_SEED_BASE`); ``toy eval --seed 10000`` scored 60 of 150
    training prompts as held-out without a word (H16-SEED)."""
    from lrm_interp.data.toy_tasks import TRAIN_SEED_BASE

    v = seed_int(s)
    if v >= TRAIN_SEED_BASE:
        raise argparse.ArgumentTypeError(
            f"must be a held-out seed, an integer in [0, {TRAIN_SEED_BASE - 1}] (the toy models' training draws "
            f"problems from seeds >= {TRAIN_SEED_BASE}: these would be training data scored as held-out), got {s}"
        )
    return v


held_out_seed.bounds = ("int", 0, 9_999, False, False)  # type: ignore[attr-defined]  # as checks.int_arg
_WIDTH = 88


class CliError(Exception):
    """Bad input found by the command line; the message (one line) names the flag, file or value."""


# --------------------------------------------------------------------------- parsers
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Raw description/epilog (examples keep their layout); ``(default: X)`` appended to help
    of options whose default is not ``None``/``False`` and that are not required."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or re.search(r"\bdefault\b", text)
            or action.required
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or isinstance(action, argparse._HelpAction)
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one line naming the option and where to get help,
    and where a single-value option given twice with two values is refused (:class:`SingleValue`):
    plain argparse keeps the last one silently (``--out A --out B`` wrote only ``B``, ``--data a
    --data b`` read only ``b``). Subparsers made by ``add_subparsers`` are ``Parser`` s too."""

    def error(self, message: str) -> typing.NoReturn:  # argparse API
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")

    def parse_known_args(self, args=None, namespace=None):  # argparse API
        for action in self._actions:  # every option of this parser, its argument groups' included
            single_value(action)
        ns, rest = super().parse_known_args(args, namespace)
        self._last_raw = None
        if _GIVEN in vars(ns):  # the bookkeeping never reaches the command (nor a parent parser)
            delattr(ns, _GIVEN)
        return ns, rest

    def _get_values(self, action, arg_strings):  # argparse API: one occurrence's strings -> its value
        self._last_raw = (action, list(arg_strings))  # shown as typed by a refused repeat (SingleValue)
        refuse_empty_path(action, arg_strings)
        return super()._get_values(action, arg_strings)


#: the metavars of path options (a file, a folder, or a model folder or alias): :func:`refuse_empty_path`
_PATH_METAVAR = re.compile(r"DIR|FILE|PATH|OUTPUTS|ALIAS|MODEL|PYTHON")


def is_path_option(action: argparse.Action) -> bool:
    """Whether ``action`` takes a path (its metavar names one: ``FILE``, ``DIR``, ``PATH``, ``DIR|ALIAS``,
    ...; or it is ``--model``)."""
    return bool(action.option_strings) and (
        "--model" in action.option_strings or bool(_PATH_METAVAR.search(str(action.metavar or "")))
    )


def refuse_empty_path(action: argparse.Action, values: Sequence[str]) -> None:
    """``argparse.ArgumentError`` (a one-line usage error, exit 2) when a path option is given an empty
    (or blank) value: ``--out ''`` (an unset shell variable) wrote into the current folder, ``--report ''``
    fell back to its default, ``--data ''`` read ``.``, ``--out ''`` of others said "error: --out" and
    nothing else (H11-EMP / H11-EMPe). Every path option of every command, in this one place (the
    :class:`Parser`)."""
    if not is_path_option(action):
        return
    for v in values:
        if isinstance(v, str) and not v.strip():
            flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
            what = "empty" if v == "" else "blank (only spaces)"
            raise argparse.ArgumentError(None, f"{flag} is {what}: give a path (an unset shell variable?)")


#: namespace attribute holding, while one parser parses, ``{dest: (option as given, value)}``
_GIVEN = "_lrm_interp_given_once"

#: options meant to be given several times (their values accumulate or count)
_REPEATABLE: tuple[type[argparse.Action], ...] = (
    argparse._AppendAction,
    argparse._AppendConstAction,
    argparse._CountAction,
    argparse._HelpAction,
    argparse._VersionAction,
    argparse._SubParsersAction,
)


class SingleValue:
    """Mixed into every single-value option of a :class:`Parser` (:func:`single_value`): the second
    occurrence of an option (or of another option storing to the same destination, such as a
    deprecated alias, ``--in`` for ``--data``) with another value is a usage error naming both; the
    same value twice is harmless and accepted. Options whose values accumulate (``action="append"``,
    :class:`Accumulate`, ``nargs="+"`` / ``"*"``) and counters are left alone."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = vars(namespace).setdefault(_GIVEN, {})
        action: Any = self  # a mixin of an argparse.Action
        dest = action.dest
        # the value this occurrence stores, found before the action runs (a refused deprecated alias
        # prints no note: the refusal is one line)
        if isinstance(self, argparse.BooleanOptionalAction):
            new = not (option_string or "").startswith("--no-")
        else:
            new = action.const if action.nargs == 0 else values
        shown = option_string or dest
        if action.nargs != 0:  # an option taking a value: show it as typed
            raw = getattr(parser, "_last_raw", None)
            if raw is not None and raw[0] is self and raw[1]:
                shown += " " + " ".join(raw[1])
            else:
                shown += " " + (" ".join(map(str, values)) if isinstance(values, list) else str(values))
        if dest in given:
            first, old = given[dest]
            try:
                same = bool(old == new)
            except Exception:  # noqa: BLE001 - values without a plain == (compared by identity then)
                same = old is new
            if not same:
                raise argparse.ArgumentError(
                    action,
                    f"given twice ({first}, then {shown}): a single-value option takes one value (the last "
                    "one would win silently); give it once",
                )
        else:
            given[dest] = (shown, new)
        super().__call__(parser, namespace, values, option_string)


_SINGLE_VALUE_CLASSES: dict[type, type] = {}


def single_value(action: argparse.Action) -> bool:
    """Make ``action`` a :class:`SingleValue` option when it is one (an option, not a positional,
    that stores one value or a fixed number of them: ``store``, ``store_const``/``true``/``false``,
    ``nargs=None|"?"|N``, custom actions like a deprecated alias); ``False`` for options meant to
    repeat. Idempotent; the parser calls it for each of its options before parsing."""
    if isinstance(action, SingleValue):
        return True
    if (
        not action.option_strings
        or isinstance(action, (*_REPEATABLE, Accumulate))
        or action.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE, argparse.REMAINDER, argparse.PARSER)
    ):
        return False
    cls = type(action)
    if cls not in _SINGLE_VALUE_CLASSES:
        _SINGLE_VALUE_CLASSES[cls] = type(f"SingleValue{cls.__name__}", (SingleValue, cls), {})
    action.__class__ = _SINGLE_VALUE_CLASSES[cls]
    return True


class Accumulate(argparse.Action):
    """``nargs="+"`` whose repeated occurrences accumulate: ``--tasks math --tasks logic`` is
    ``--tasks math logic`` (plain ``nargs="+"`` keeps only the last occurrence, silently). The first
    occurrence replaces the default; it never extends it (``action="extend"`` would: ``--compress
    rtn:3`` would give ``["none", "rtn:3"]``). Every ``nargs="+"`` option of ``lrm-interp`` uses it
    (``tests/test_reliability_silent.py`` walks the parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str, nargs: Any = "+", **kw: Any) -> None:
        if nargs != "+":
            raise ValueError(f"Accumulate is for nargs='+' options, got nargs={nargs!r} for {dest}")
        super().__init__(option_strings, dest, nargs=nargs, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        have = getattr(namespace, self.dest, None)
        # argparse put the default object itself there: the first occurrence replaces it
        items = [] if have is None or have is self.default else list(have)
        items.extend(values)
        setattr(namespace, self.dest, items)


def format_examples(examples: str | Sequence[str]) -> str:
    """``example:`` followed by the command lines, indented (``#`` lines are comments)."""
    lines = [examples] if isinstance(examples, str) else list(examples)
    return "example:\n" + "\n".join(f"  {ln}" for ln in lines)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    examples: str | Sequence[str],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subparser with ``help`` (one line, in the parent's list), a ``description`` (default:
    ``help``) and an ``example:`` epilog. Every command line in ``examples`` should run as is."""
    description = description or help[:1].upper() + help[1:]
    return sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width=_WIDTH),
        epilog=format_examples(examples),
        formatter_class=HelpFormatter,
    )


# --------------------------------------------------------------------------- dataclass -> flags
def _cli_type(hint: Any) -> tuple[Any, bool]:
    """(scalar type, is_sequence) for a dataclass field annotation; ``str`` wins in a union."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if str in args:
            return str, False
        return _cli_type(args[0]) if args else (str, False)
    if origin in (tuple, list, collections.abc.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return (args[0] if args else str), True
    return hint, False


def add_dataclass_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    metavars: dict[str, str] | None = None,
    notes: dict[str, str] | None = None,
) -> list[str]:
    """One flag per field of the dataclass ``cls`` (``field_name`` → ``--field-name``).

    Help from ``metadata["help"]``, choices from ``metadata["choices"]``, ``nargs`` from
    ``metadata["nargs"]``; ``bool`` fields become ``store_true`` (``store_false`` as
    ``--no-name`` when the default is ``True``); the type comes from the annotation (a union
    containing ``str``, like a regex-or-list field, is a string on the command line).
    ``metavars`` / ``notes``: per field, a metavar / a sentence appended to the help (say what
    the command line accepts where it differs from the Python API).
    Returns the field names (the destinations) in order.
    """
    hints = typing.get_type_hints(cls)
    metavars, notes = metavars or {}, notes or {}
    names = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        if "help" not in md:
            raise TypeError(f"{cls.__name__}.{f.name} has no metadata['help'] for its command-line flag")
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # every config field has a default or a default_factory
        text = str(md["help"]) + (f"; {notes[f.name]}" if f.name in notes else "")
        kw: dict[str, Any] = {"dest": f.name, "default": default, "help": text.replace("%", "%%")}
        scalar, is_seq = _cli_type(hints[f.name])
        if scalar is bool:
            if default is True:
                flag = "--no-" + f.name.replace("_", "-")
                kw["action"] = "store_false"
            else:
                kw["action"] = "store_true"
        else:
            kw["type"] = scalar if scalar in (int, str) else finite_float if scalar is float else str
            if "choices" in md:
                kw["choices"] = tuple(md["choices"])
            if "nargs" in md:
                kw["nargs"] = md["nargs"]
            elif is_seq:
                kw["nargs"] = "+"
            if kw.get("nargs") == "+":  # repeated occurrences accumulate, never silently keep the last
                kw["action"] = Accumulate
            if f.name in metavars:
                kw["metavar"] = metavars[f.name]
            elif "choices" not in md and kw["type"] in (int, finite_float):
                kw["metavar"] = "N" if kw["type"] is int else "X"
        parser.add_argument(flag, **kw)
        names.append(f.name)
    return names


def dataclass_from_args(cls: type, args: argparse.Namespace):
    """Build ``cls`` from the destinations :func:`add_dataclass_args` added; a ``ValueError``
    of its validation becomes a :class:`CliError` whose leading field name is the flag."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    try:
        return cls(**{n: getattr(args, n) for n in fields})
    except ValueError as e:
        msg = one_line(e)
        head = re.match(r"\w+", msg)
        if head and head.group(0) in fields:
            name = head.group(0)
            # a True-by-default bool is typed as its --no- form (add_dataclass_args)
            no = fields[name].default is True and getattr(args, name, True) is False
            msg = ("--no-" if no else "--") + name.replace("_", "-") + msg[head.end() :]
        raise CliError(msg) from e


# --------------------------------------------------------------------------- inputs
def require_path(path: str | os.PathLike, flag: str, *, kind: str = "any") -> Path:
    """``path`` as a ``Path``; :class:`CliError` naming ``flag`` and the path unless it exists
    (``kind``: ``"file"``, ``"dir"`` or ``"any"``) and is a regular file or a folder (a named pipe,
    a device such as ``/dev/stdin``: refused, saying what it is)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CliError(f"{flag} {p}: no such {_KINDS[kind]}")
    what = _not_regular(p)
    if what is not None:  # a FIFO, /dev/stdin: "does not exist" was said of it (H6-P17)
        raise CliError(f"{flag} {p}: is {what}, not a regular file; give a file (or a folder)")
    if kind == "file" and not p.is_file():
        raise CliError(f"{flag} {p}: not a file")
    if kind == "dir" and not p.is_dir():
        raise CliError(f"{flag} {p}: not a directory")
    return p


_KINDS = {"any": "file or directory", "file": "file", "dir": "directory"}


def refuse_ambiguous_model(name: str, flag: str) -> None:
    """:class:`CliError` naming ``flag`` when ``name`` is an alias and a model folder here both
    (``--model toy`` beside a checkpoint folder ``./toy``): every alias alike, before any work."""
    from lrm_interp.model.loading import alias_folder_clash, ambiguous_model_message

    clash = alias_folder_clash(name)
    if clash is not None:
        raise CliError(f"{flag} {ambiguous_model_message(name, clash)}")


def _check_model_cache(name: str, flag: str) -> None:
    """:class:`CliError` naming ``flag`` and ``$LRM_INTERP_CACHE`` when the alias ``name`` (every alias
    but ``toy`` is converted into, or loaded from, the cache) would be cached under a file: before any
    work, not at the conversion (H6-P11 / V1)."""
    if name.lower() == "toy":
        return
    from lrm_interp._io import cache_root

    try:
        cache_root()
    except ValueError as e:
        raise CliError(f"{flag} {name} is cached under {e}") from None


def require_model(name: str, flag: str = "--model") -> str:
    """``name`` unless it is neither a known alias nor a Hugging Face model folder, or both
    (an alias and a model folder of that name in the current directory: ambiguous)."""
    from lrm_interp.model.loading import model_aliases

    aliases = model_aliases()
    if name.lower() in aliases:
        refuse_ambiguous_model(name, flag)
        _check_model_cache(name, flag)
        return name
    p = Path(name).expanduser()
    if not p.is_dir():
        raise CliError(f"{flag} {name}: no such model directory, and not an alias ({', '.join(aliases)})")
    if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
        raise CliError(
            f"{flag} {p}: no config.json (a Hugging Face model) or adapter_config.json (a distilled "
            "reasoner's delta, `toy distill`'s RUN/adapter) there"
        )
    return name


def refuse_quantized_model(name: str, why: str, flag: str = "--model") -> None:
    """Refuse, before it loads, a model folder that is already quantized (a ``quantize`` result, or a
    checkpoint whose provenance record holds a quantization step) where the command quantizes its
    ``flag`` itself or labels it full precision: ``CliError`` "<flag> <folder> is a quantized copy
    ... (<file>: method, bits, ...); <why>; give the original model (<source>)"
    (:func:`lrm_interp.model.provenance.quantized_folder_note`; H7-QM1 for ``study``, H12-QQ)."""
    from lrm_interp.model.provenance import quantized_folder_note

    src = model_input(name, flag)
    note = quantized_folder_note(src if src is not None else name, why)
    if note is not None:
        raise CliError(f"{flag} {note}")


def model_input(name: str | None, flag: str = "--model") -> str | os.PathLike | None:
    """The folder ``--model name`` reads (for :func:`check_paths`): the toy alias's shipped folder,
    ``None`` for another alias (not a path), else ``name``; an alias that is also a model folder
    here is refused (:func:`require_model`), naming ``flag``."""
    if name is None:
        return None
    from lrm_interp.model.loading import model_aliases

    if name.lower() in model_aliases():
        refuse_ambiguous_model(name, flag)
        _check_model_cache(name, flag)
        if name.lower() == "toy":
            from lrm_interp.toy import toy_model_dir

            return toy_model_dir()
        return None
    return name


def _forms(path: str | os.PathLike) -> list[Path]:
    """Every file ``path`` may name, resolved: the literal path (``open()`` does not expand a
    ``~``; the shell already expanded an unquoted one) and, when it starts with ``~``, the
    expanded one (some commands expand it). :func:`check_paths` checks them all, so its verdict
    cannot disagree with whichever the writer uses."""
    forms = [Path(path).resolve()]
    expanded = Path(path).expanduser().resolve()
    return forms if expanded == forms[0] else [*forms, expanded]


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _not_regular(p: Path) -> str | None:
    """What an existing ``p`` is when it is neither a regular file, nor a folder, nor a link to
    one of them (``None`` otherwise, or when it does not exist)."""
    import stat

    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        return "a dangling symbolic link" if p.is_symlink() else None
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def _special_output(p: Path) -> str | None:
    """Like :func:`_not_regular` for an output path as given (not resolved): a link into
    ``/proc`` or ``/dev`` (``/proc/self/fd/1``: the terminal) counts as special too."""
    what = _not_regular(p)
    hop, seen = p, 0
    while what is None and hop.is_symlink() and seen < 40:  # every hop of a chain of links
        hop, seen = Path(os.path.normpath(hop.parent / os.readlink(hop))), seen + 1
        if str(hop).startswith(("/proc/", "/dev/", "/sys/")):
            return f"a link to {hop}"
    return what


def refuse_alias_named_out(out: str | os.PathLike, flag: str = "--out") -> None:
    """:class:`CliError` for a model folder output named like a model alias in the current folder
    (``quantize --out toy``: every ``--model toy`` there refused as ambiguous since, H30-ALIASOUT;
    :func:`lrm_interp.model.loading.refuse_alias_named_folder`)."""
    from lrm_interp.model.loading import refuse_alias_named_folder

    try:
        refuse_alias_named_folder(out, flag)
    except ValueError as e:
        raise CliError(str(e)) from None


def refuse_other_results(flag: str, path: str | os.PathLike, own: str | None = None) -> None:
    """:class:`CliError` naming ``flag`` when writing ``path`` would change a finished result of
    another command (:func:`lrm_interp._io.finished_result`), ``--overwrite`` or not:

    - ``path`` is or lies inside the work folder ``A/partial`` of an attribution run (its partials:
      a result written there was deleted when ``A`` was replaced, H8-PT);
    - ``path`` is one of the files or folders of the finished result nearest above it, or lies
      inside one (``A/scores.csv``, ``SC/bits.json``, ``BR/toy/generations.jsonl``: H8-OW1;
      ``TM/config.json`` of a ``toy train`` model, ``D/adapter/...`` of a ``toy distill`` run:
      H9-TM); a new name beside a result's own files (``A/masks.safetensors``) is free;
    - with ``own`` (the kind of result the command writes into its folder output): ``path`` is an
      existing result folder of another kind (``bench score --out A``). A result of the kind
      ``own`` is the command's own: its own checks decide (``attribute --out A`` resumes).

    The rule is :func:`lrm_interp._io.result_conflict`'s, the Python writers' too."""
    from lrm_interp._io import refuse_attribution_work_folder, result_conflict

    try:
        refuse_attribution_work_folder(path, flag)
    except ValueError as e:
        raise CliError(str(e)) from None
    for q in _forms(path):
        c = result_conflict(q, own)
        if c is None:
            continue
        if c.entry is None:
            raise CliError(
                f"{flag} {path} {c}, another command's result: it is never written into, not even with "
                "--overwrite; choose another folder"
            )
        raise CliError(f"{flag} {path} {c}; --overwrite does not replace another command's result; choose another path")
    if own is not None and own not in ("bench run", "bench score"):
        _refuse_bench_runs_folder(flag, path)


def _refuse_bench_runs_folder(flag: str, path: str | os.PathLike) -> None:
    """:class:`CliError` when the folder ``path`` holds the model run folders of a ``bench run --out``
    (it is none of them: those are results of their own): another command's folder result written
    there (``attribute --out BR``, ``compare --out BR``) made ``bench score --outputs BR`` and the
    resume of ``bench run --out BR`` refuse the folder as that command's result (H17-BRO). ``bench
    score`` has its own rule (``refuse_scores_into_runs``). A subfolder counts when it is a finished
    ``bench run`` result (its ``run.json`` of the bench format: an attribution's ``partial/run.json``
    is none)."""
    from lrm_interp._io import finished_result

    p = Path(path)
    try:
        subs = sorted(q for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
    except OSError:
        return
    runs = [q for q in subs if (r := finished_result(q)) is not None and r.kind == "bench run"]
    if runs:
        names = ", ".join(r.name for r in runs)
        raise CliError(
            f"{flag} {path} holds the bench run folders {names} (a 'bench run --out' folder): another command's "
            "result written there would make it that result, which no later 'bench run' or 'bench score' reads; "
            "choose another folder"
        )


def check_paths(
    outputs: dict[str, str | os.PathLike | None],
    inputs: dict[str, str | os.PathLike | None] | None = None,
    *,
    overwrite: bool | None = None,
    replaced_whole: bool = False,
    files: bool = False,
    dirs: bool = False,
    own: str | None = None,
    command: str | None = None,
    writers: Mapping[str, str] | None = None,
) -> None:
    """Refuse, before any work, outputs that would destroy another output or an input.

    :class:`CliError` naming both flags when two ``outputs`` (``{flag: path}``, ``None`` skipped)
    name the same file (after ``..`` and symbolic links; a leading ``~`` is checked both as
    written and expanded, :func:`_forms`), or when an output is an existing input file, or is,
    or lies inside, an existing input folder. Inputs that do not exist (model aliases like
    ``toy``) are ignored. An existing output that is not a regular file or folder (a FIFO, a
    device, a socket, a link into ``/proc`` or ``/dev``) is refused even with ``--overwrite``.

    ``overwrite``: when given (a command with an ``--overwrite`` flag), an output that already
    exists is refused unless it is true (an existing result is replaced only when the user says
    so; :func:`add_overwrite_flag`). ``replaced_whole``: the outputs are folders replaced as a
    whole, so an input lying inside one (``quantize --out D --masks D/masks.safetensors``) is
    refused too, even with ``--overwrite``. ``files``: the outputs are files, so an existing folder
    there is refused even with ``--overwrite`` (up front: the writer would fail only after the work).
    A file output spelled as a folder (``--out newdir/``: a file ``newdir`` was written, R28) is
    refused too (:func:`lrm_interp._io.refuse_folder_spelling`).
    ``dirs``: the outputs are folders, so an existing file there is refused (the same way).
    ``command`` / ``writers``: who writes each file output (:func:`flag_writer`, as
    :func:`file_outputs`): without ``--overwrite``, an existing single-file result that writer
    replaces is met with "pass --overwrite"; one it does not, with who does (H10-SFR).

    Always refused, naming the flag: an output under an existing file (``--out results.csv/x``:
    nothing can be written there, :func:`lrm_interp._io.file_on_the_way`), an output that is,
    contains or lies inside the folder of a model alias or a shipped asset (:func:`refuse_alias_folder`:
    ``--out lrm_interp/assets/toy_reasoner/config.json`` replaced the model behind ``--model toy``,
    H9-TT), and an output that would
    change another command's finished result (:func:`refuse_other_results`: inside an attribution
    run's ``partial/``, one of the files of a result, or, for a command whose folder output is a
    result of kind ``own``, a result folder of another kind; without ``own`` only the first two are
    checked)."""
    from lrm_interp._io import file_on_the_way

    given = [(f, p) for f, p in outputs.items() if p is not None and str(p) != ""]
    for fo, po in given:
        blocked = file_on_the_way(po)
        if blocked is not None:
            raise CliError(
                f"{fo} {po}: {blocked} is a file, not a folder, so nothing can be written under it; "
                f"give {fo} a path outside it"
            )
    for fo, po in given:  # the shipped models and the model cache: never, whatever --overwrite says (H9-TT)
        try:
            refuse_alias_folder(po, fo)
        except ValueError as e:
            raise CliError(str(e)) from None
    if files:
        from lrm_interp._io import refuse_folder_spelling

        for fo, po in given:
            try:  # "--out newdir/" wrote a file named newdir (R28)
                refuse_folder_spelling(po, fo)
            except ValueError as e:
                raise CliError(str(e)) from None
            for q in dict.fromkeys([Path(po), Path(po).expanduser()]):
                if q.is_dir():
                    raise CliError(
                        f"{fo} {po}: a folder; {fo} names a file to write (a folder is never replaced by "
                        "one, even with --overwrite); give a file path, e.g. inside that folder"
                    )
    for fo, po in given:
        for q in dict.fromkeys([Path(po), Path(po).expanduser()]):
            what = _special_output(q)
            if what is not None:
                raise CliError(
                    f"{fo} {po}: {q} is {what}, not a regular file: refusing to replace it; choose another path"
                )
    if dirs:
        for fo, po in given:
            for q in dict.fromkeys([Path(po), Path(po).expanduser()]):
                if (q.exists() or q.is_symlink()) and not q.is_dir():
                    raise CliError(
                        f"{fo} {po}: a file; {fo} names a folder to write the results into (a file is never "
                        "replaced by one); choose a folder path"
                    )
    outs = [(f, p, r) for f, p in given for r in _forms(p)]
    for i, (fa, pa, ra) in enumerate(outs):
        for fb, pb, rb in outs[:i]:
            if (fa, pa) != (fb, pb) and _same(ra, rb):
                raise CliError(f"{fb} {pb} and {fa} {pa} name the same file: give each output its own path")
    for fi, pi in (inputs or {}).items():
        if pi is None or str(pi) == "":
            continue
        for ri in _forms(pi):
            if not ri.exists():
                continue
            for fo, po, ro in outs:
                if _same(ro, ri):
                    raise CliError(
                        f"{fo} {po} is the input {fi} {pi}: writing it would destroy the input; "
                        "choose another output path"
                    )
                if ri.is_dir() and (ri in ro.parents or any(_same(par, ri) for par in ro.parents if par.exists())):
                    raise CliError(
                        f"{fo} {po} lies inside the input folder {fi} {pi}: writing it would change the "
                        "input; choose an output path outside it"
                    )
                if replaced_whole and (ro in ri.parents or any(_same(par, ro) for par in ri.parents if ro.exists())):
                    raise CliError(
                        f"{fo} {po} contains the input {fi} {pi}: replacing {fo} would destroy the input; "
                        "choose another output path (or move the input out of it)"
                    )
    for fo, po in given:  # after the inputs' checks (they name both flags), before --overwrite's
        refuse_other_results(fo, po, own)
    if overwrite is False:
        for fo, po, ro in outs:
            if ro.exists() or ro.is_symlink():
                what = "folder" if ro.is_dir() else "file"
                shown = f"{po}" if ro == Path(po).resolve() else f"{po} ({ro})"
                held = None if ro.is_dir() else _file_result(ro)
                writer = flag_writer(fo, command, writers)
                if held is not None and (writer is None or writer not in held.commands):
                    # "pass --overwrite" sent a bits run on to a refusal (masks are protect's)
                    by = writers_text(held) or "its own writer"
                    raise CliError(
                        f"{fo} {shown}: the file exists and holds {held.what}, which only {by} replaces "
                        "(with --overwrite); choose another path"
                    )
                raise CliError(
                    f"{fo} {shown}: the {what} exists; pass --overwrite to replace it, or choose another path"
                )


def _file_result(path: Path) -> Any:
    """:func:`lrm_interp._io.file_result` imported on use (``lrm-interp --help`` loads no torch)."""
    from lrm_interp._io import file_result

    return file_result(path)


def created_meanwhile(flag: str, out: str | os.PathLike) -> CliError:
    """The refusal of a run whose new output ``out`` was made by another run while it ran (the words
    of ``lrm-interp compare`` / ``bench score``'s, ``cli/bench.py``, for every writer)."""
    return CliError(
        f"{flag} {out} was created by another run while this one ran: its result is kept and this one is "
        f"not written; choose another {flag} (or run this again with --overwrite to replace it)"
    )


class FileOutputs:
    """The single-file outputs of one command run, as :func:`file_outputs` found them when the
    command started; :meth:`write` publishes each."""

    def __init__(self, paths: dict[str, Path], existed: dict[str, bool]) -> None:
        self.paths, self._existed = paths, existed

    def existed(self, flag: str) -> bool:
        """Whether the output of ``flag`` existed when the command started (it is then replaced)."""
        return self._existed[flag]

    def write(self, flag: str, save: collections.abc.Callable[[Path], object]) -> Path:
        """Write the output of ``flag`` with ``save(path)`` (any writer taking a path: ``save_jsonl``,
        ``BitAllocation.save``, ``LinearAnnotator.save``, ...) to a temporary file beside it and
        publish it (:func:`lrm_interp._io.staged_file`): over the file that was there when the
        command started (it was checked with ``--overwrite``, and is held by :func:`file_outputs`'s
        lock), or, for a new output, never over one that appeared while the command ran: that one
        (another run's result) is kept and this run is refused naming the flag."""
        from lrm_interp._io import staged_file

        path = self.paths[flag]
        try:
            with staged_file(path, replace=self._existed[flag]) as tmp:
                save(tmp)
        except FileExistsError as e:
            if not self._existed[flag] and e.filename is not None and Path(e.filename) == path:
                raise created_meanwhile(flag, path) from None
            raise
        return path


@contextlib.contextmanager
def file_outputs(
    outputs: dict[str, str | os.PathLike | None], command: str, *, writers: Mapping[str, str] | None = None
) -> Iterator[FileOutputs]:
    """The one way a command publishes its single-file outputs (``{flag: path}``, ``None`` skipped;
    checked first by :func:`check_paths`): two runs into one new ``--out`` both printed "wrote" and
    one result was lost (``bits``, ``parse``, ``annotate train``, H9-CC2).

    Notes, when the body starts, which outputs exist. A new one is published by
    :meth:`FileOutputs.write` without ever replacing what appeared there meanwhile (the later of two
    runs: "--out X was created by another run while this one ran: its result is kept …", exit 2).
    An existing one (replaced with ``--overwrite``) is held for the whole body by an exclusive lock
    beside it (:func:`lrm_interp._io.exclusive_lock` on ``.NAME.lrm_interp.lock``, naming
    ``command``): a second live run replacing the same file is refused at once, naming the first
    one's pid. Refused before anything is written: an existing output holding a single-file result
    another command writes (:func:`refuse_other_file_result`: ``bits --out <masks> --overwrite``,
    H10-SFR), and a lock path holding anything but a lock of this library (a user's file named
    ``.NAME.lrm_interp.lock``, a link there: left as it is, H10-LCK). ``writers``: the writer each flag
    is (:data:`lrm_interp._io.FILE_RESULT_FORMATS`' commands); ``--out`` is ``command``, another flag
    ``"<command> <flag>"`` unless named here (:func:`flag_writer`; ``bits --gptqmodel``: a GPTQModel
    config, never over a bits allocation, H11-GQB, nor over traces, H17-TRO)."""
    from lrm_interp._io import file_lock_path

    paths = {f: Path(p) for f, p in outputs.items() if p is not None and str(p) != ""}
    existed = {f: p.exists() or p.is_symlink() for f, p in paths.items()}
    for f, p in paths.items():
        if existed[f]:
            refuse_other_file_result(f, p, flag_writer(f, command, writers))
    with contextlib.ExitStack() as stack:
        for f, p in paths.items():
            if existed[f]:
                stack.enter_context(hold_lock(f, p, file_lock_path(p), command))
        yield FileOutputs(paths, existed)


@contextlib.contextmanager
def hold_lock(flag: str, out: str | os.PathLike, lock: Path, command: str, *, folder: bool = False) -> Iterator[None]:
    """Hold :func:`lrm_interp._io.exclusive_lock` on ``lock`` (naming ``command``) for the output ``out``
    of ``flag`` while the body runs; each way it cannot be held is one :class:`CliError` naming the flag:
    another live run holds it (its command and pid), something that is not a lock of this library lies
    at its name (left as it is, H10-LCK), or nothing can be written there. ``folder``: ``out`` is a
    folder (the words say "one folder"). The one wording of every output lock (:func:`file_outputs`,
    :func:`folder_output_lock`, ``compare`` / ``bench score``'s :func:`~lrm_interp.cli.bench.folder_lock`)."""
    from lrm_interp._io import ForeignLockFileError, LockHeldError, exclusive_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(lock, command))
        except ForeignLockFileError as e:
            raise CliError(
                f"{flag} {out}: its lock file {e.lock} is {e.why}, not a lock lrm_interp wrote: it is never "
                f"emptied or removed; move it away (or choose another {flag})"
            ) from None
        except LockHeldError as e:
            who = f"'{PROG} {e.what}' " if e.what else ""
            into = "into one folder" if folder else "writing one file"
            raise CliError(
                f"{flag} {out} is in use by another {who}run (pid {e.pid}): two runs {into} would "
                f"replace each other's result; wait for it to end or choose another {flag}"
            ) from None
        except OSError as e:
            where = "there" if folder else "beside it"
            raise CliError(
                f"{flag} {out}: cannot write {where} ({e.strerror or e}); choose a folder this user can write"
            ) from None
        yield


def folder_output_lock(
    flag: str, out: str | os.PathLike, command: str, *, new: bool = False
) -> contextlib.AbstractContextManager:
    """The lock of a folder output replaced whole or in part (``quantize``, ``faithfulness``, ``study``
    with ``--overwrite``), held from the run's first check of an existing ``out`` to its last write:
    :func:`hold_lock` on ``.NAME.lrm_interp.lock`` *beside* the folder (the folder itself is swapped for
    the new one, a lock inside would go with it), ``out`` resolved first so every spelling of one
    folder takes one lock. Two ``--overwrite`` runs into one ``--out`` both printed "wrote" and the
    first result was lost (H11-QCC, H11-CST): the later one is refused at once, naming the first's
    pid. A new ``out`` needs none when it is published whole, never over what appeared meanwhile
    (``quantize``, ``faithfulness``): a null context when ``out`` does not exist, unless ``new`` (a
    writer that fills its folder file by file, ``study``): then it is locked too when its parent
    folder exists (a missing parent: the writer makes it, unlocked)."""
    from lrm_interp._io import file_lock_path

    p = Path(out).expanduser()
    if not (p.exists() or p.is_symlink()) and not (new and p.resolve().parent.is_dir()):
        return contextlib.nullcontext()
    r = p.resolve()
    if r.name == "":  # the root folder: nothing is ever written there (refused by the checks)
        return contextlib.nullcontext()
    return hold_lock(flag, out, file_lock_path(r), command, folder=True)


def flag_writer(flag: str, command: str | None, writers: Mapping[str, str] | None = None) -> str | None:
    """The writer (:data:`lrm_interp._io.FILE_RESULT_FORMATS`' commands) of the file output ``flag``
    of ``command``: ``writers[flag]`` when given, ``command`` for ``--out``, else ``"<command>
    <flag>"`` (``bits --gptqmodel``, ``parse --report``, ``annotate --report``: the flag's own kind of
    file, H22-REPORT; a flag label with a note, ``"--report (default OUT.report.json)"``, counts by its
    first word); ``None`` without a command."""
    if writers and flag in writers:
        return writers[flag]
    if command is None:
        return None
    return command if flag == "--out" else f"{command} {flag.split()[0]}"


def refuse_other_file_result(flag: str, path: str | os.PathLike, writer: str | None) -> None:
    """:class:`CliError` naming ``flag`` when the existing file ``path`` holds a single-file result
    that ``writer`` (a command, or a flag's own writer: ``"bits --gptqmodel"``, ``"parse --report"``;
    ``None``: no command named) does not write
    (:func:`lrm_interp._io.file_result_conflict`: masks replaced by ``bits --out m.safetensors
    --overwrite``, a bits allocation by ``parse``, H10-SFR; a GPTQModel config over a bits allocation,
    H11-GQB; masks or a GPTQModel config over traces, H17-TRO): ``--overwrite`` replaces a writer's own
    kind of file only."""
    from lrm_interp._io import FILE_RESULT_FORMATS, file_result_conflict

    writes = [family for family, (_, cmds) in FILE_RESULT_FORMATS.items() if writer is not None and writer in cmds]
    held = file_result_conflict(path, writes)
    if held is not None and flag != "--out":  # a flag of its own (a toolchain config, a report)
        raise CliError(
            f"{flag} {path} holds {held.what}{written_by(held, ', ')}: {flag} writes a file of another kind, "
            f"and --overwrite does not replace a result with it; choose another {flag}"
        )
    if held is not None:
        raise CliError(
            f"{flag} {path} holds {held.what}{written_by(held, ', ')}: --overwrite does not replace another "
            f"command's result; choose another {flag}"
        )


def written_by(held: Any, lead: str = "") -> str:
    """Who writes the single-file result ``held`` (:class:`lrm_interp._io.FileResult`), for messages:
    ``lead`` + ``"a result of 'lrm-interp protect'"``, ``"written by 'lrm-interp toy traces', 'lrm-interp
    parse' or 'lrm-interp annotate'"``; ``""`` when only the Python API writes it."""
    if not held.commands:
        return ""
    return f"{lead}{'a result of' if len(held.commands) == 1 else 'written by'} {writers_text(held)}"


def writers_text(held: Any) -> str:
    """The commands that write ``held`` (:class:`lrm_interp._io.FileResult`), quoted and joined:
    ``"'lrm-interp toy traces', 'lrm-interp parse' or 'lrm-interp annotate'"``; ``""``: none."""
    names = [f"'{PROG} {c}'" for c in held.commands]
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def add_overwrite_flag(p: argparse.ArgumentParser, what: str = "--out") -> None:
    """``--overwrite``: replace an existing ``what`` (refused without it, :func:`check_paths`)."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} when already there (refused otherwise: an earlier result is never replaced silently)",
    )


def device_arg(text: str) -> str:
    """``--device``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), checked
    by argparse before anything loads. ``--device gpu`` (not a device) or ``--device cuda`` without a
    CUDA device used to fail as an "internal error" after the model was loaded."""
    name = str(text).strip()
    if name == "cpu":  # the default: no torch import while parsing
        return name
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device on this machine (torch sees none); use cpu")
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {n} CUDA device{'s' * (n != 1)} (cuda:0 .. cuda:{n - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no MPS device on this machine; use cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: device type {dev.type!r} is not supported (cpu, cuda, mps)")
    return name


def group_size_arg(g: int) -> int | None:
    """``--group-size``: positive, or 0 for per channel (``None``)."""
    if g < 0:
        raise CliError(f"--group-size must be positive (or 0 = per channel), got {g}")
    return None if g == 0 else g


def require_attribution_dir(path: str | os.PathLike, flag: str) -> Path:
    """An existing attribution result folder (``attribution.json`` + ``attribution.safetensors``)."""
    from lrm_interp._io import finished_result

    p = require_path(path, flag, kind="dir")
    for f in ("attribution.json", "attribution.safetensors"):
        if not (p / f).is_file():
            if p.name == "partial" and (p.parent / "attribution.json").is_file():  # H25-PARTIALSCORES
                raise CliError(
                    f"{flag} {p}: not an attribution result folder; it is the work folder partial/ of the attribution "
                    f"result {p.parent}: give that folder ({flag} {p.parent})"
                )
            other = finished_result(p)
            inner = _study_attributions(p) if other is not None and other.kind == "study" else []
            if inner:  # a study folder: point at its attribution results, not at a new run (H24-SCORESSTUDY)
                raise CliError(
                    f"{flag} {p}: {f} is missing, not an attribution result folder; it is {other}, whose attribution "
                    f"results are {' and '.join(f'{n} ({w})' if w else n for n, w in inner)}: give one as {flag} "
                    f"(e.g. {flag} {p / inner[0][0]})"
                )
            # another command's result (a bench run folder, ...) is never written into: no advice to (H17-COA)
            where = f"--out {p}" if other is None and not any(p.iterdir()) else "--out <a new folder>"
            what = f"; it is {other}" if other is not None else ""
            raise CliError(
                f"{flag} {p}: {f} is missing, not an attribution result folder{what} "
                f"(write one with 'lrm-interp attribute {where} ...')"
            )
    return p


def _study_attributions(folder: Path) -> list[tuple[str, str]]:
    """``[(name, what it is)]`` of the attribution result folders inside the study folder ``folder``
    (``("attribution_fp32", "the original model")``), the original first, as ``study.json`` records
    them (``provenance.folders``; else the ``attribution_*/`` folders holding ``attribution.json``,
    ``what`` empty)."""
    try:
        doc = json.loads((folder / "study.json").read_text(encoding="utf-8"))
        folders = doc["provenance"]["folders"]
        named = [(folders["original"], "the original model"), (folders["compressed"], "its uniform compressed copy")]
    except (OSError, ValueError, KeyError, TypeError):
        named = [(d.name, "") for d in sorted(folder.glob("attribution_*"))]
    return [(n, what) for n, what in named if isinstance(n, str) and (folder / n / "attribution.json").is_file()]


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No progress bar inside: transformers' own (``logging.tqdm``: "Loading weights", "Writing
    model shards"), huggingface_hub's, and every other ``tqdm`` bar (e.g. transformers' GGUF
    conversion, which calls ``tqdm`` directly) — each bar is created with ``disable=True``.
    Restores everything on exit; nests."""
    import tqdm.std
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    orig = tqdm.std.tqdm.__init__

    def silent_init(self, *args, **kw):
        kw["disable"] = True
        orig(self, *args, **kw)

    tqdm.std.tqdm.__init__ = silent_init
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = orig
        if was:
            hf_logging.enable_progress_bar()


def load_model_quietly(name: str, **kw):
    """:func:`lrm_interp.model.loading.load_model` without any progress bar (transformers'
    "Loading weights", the GGUF conversion of SmolLM2): they would interleave with the command's
    own output and error lines."""
    from lrm_interp.model.loading import load_model

    with quiet_progress():
        return load_model(name, **kw)


def _first_bad_utf8(path: Path) -> str | None:
    """``file:line`` of the first line that is not valid UTF-8 in a file or in a folder's files."""
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else []
    for fp in files:
        try:
            with open(fp, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        return f"{fp}:{lineno}: invalid UTF-8 at byte {e.start} of the line"
        except OSError:
            continue
    return None


def _safetensor_error() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError

        return (SafetensorError,)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return ()


@contextlib.contextmanager
def reading(
    path: str | os.PathLike,
    what: str = "input",
    *,
    json_file: str | os.PathLike | None = None,
    safetensors_file: str | os.PathLike | None = None,
) -> Iterator[None]:
    """Re-raise decode errors from inside as :class:`CliError` naming ``what`` and the file
    (JSON, UTF-8 and safetensors errors name no file themselves). ``json_file`` /
    ``safetensors_file``: the file to name for that kind of error (default: ``path``)."""
    p = Path(path)
    try:
        yield
    except json.JSONDecodeError as e:
        raise CliError(f"{what} {json_file or p}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise CliError(f"{what} {_first_bad_utf8(p) or p}: not valid UTF-8 ({e.reason})") from e
    except _safetensor_error() as e:
        raise CliError(f"{what} {safetensors_file or p}: unreadable safetensors file ({one_line(e)})") from e


# --------------------------------------------------------------------------- errors
def one_line(msg: object) -> str:
    """``msg`` on a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(msg).split())


_USER_ERRORS: tuple[type[BaseException], ...] = (
    CliError,
    ValueError,
    KeyError,
    OSError,
    re.error,
    ImportError,
    LookupError,
)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit code): 2 for bad input, 1 for an internal error."""
    if isinstance(exc, re.error):
        pat = exc.pattern.decode() if isinstance(exc.pattern, bytes) else exc.pattern
        msg = f"invalid regular expression {pat!r}: {exc.msg}" + (
            f" at position {exc.pos}" if exc.pos is not None else ""
        )
    elif isinstance(exc, json.JSONDecodeError):
        msg = f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    elif isinstance(exc, UnicodeDecodeError):
        msg = f"input is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    elif isinstance(exc, KeyError) and exc.args:
        msg = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    elif _safetensor_error() and isinstance(exc, _safetensor_error()):
        msg = f"unreadable safetensors file ({exc})"
    else:
        msg = str(exc)
    msg = one_line(msg) or type(exc).__name__
    if isinstance(exc, _USER_ERRORS + _safetensor_error()):
        return msg, 2
    return f"internal error ({type(exc).__name__}: {msg}); set {DEBUG_ENV}=1 for the traceback", 1


def debug_enabled() -> bool:
    """Whether ``$LRM_INTERP_DEBUG`` asks for tracebacks: the yes/no values every flag variable takes
    (:func:`lrm_interp.checks.env_flag`: 1 / true / yes / on; ``off`` and ``maybe`` used to count as
    yes, anything but ``""``, ``0``, ``false``, ``no`` did). Read inside the error handler, so it never
    raises: a value that is neither yes nor no counts as no (the one-line error is printed)."""
    try:
        return env_flag(DEBUG_ENV)
    except ValueError:
        return False


def report_error(prog: str, exc: BaseException) -> int:
    """Print ``<prog>: error: <message>`` to stderr; return the exit code."""
    msg, code = describe_error(exc)
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return code


def load_attribution(path: str, flag: str):
    """:meth:`Attribution.load` after checking the folder; decode errors name the file."""
    from lrm_interp.attribution.results import Attribution

    d = require_attribution_dir(path, flag)
    with reading(d, flag, json_file=d / "attribution.json", safetensors_file=d / "attribution.safetensors"):
        return Attribution.load(d)


def alias_folders() -> dict[str, Path]:
    """The folders of the model aliases and the shipped assets (:func:`lrm_interp._io.alias_folders`,
    where the rule lives: the Python writers apply it too, H10-ASP); imported on use, so that
    ``lrm-interp --help`` loads no torch."""
    from lrm_interp._io import alias_folders as folders

    return folders()


def refuse_alias_folder(out: str | os.PathLike, what: str = "--out") -> None:
    """``ValueError`` when ``out`` is, contains or lies inside the folder of a model alias or a shipped
    asset, whatever ``--overwrite`` says (:func:`lrm_interp._io.refuse_alias_folder`, the one rule)."""
    from lrm_interp._io import refuse_alias_folder as refuse

    refuse(out, what)


__all__ = [
    "refuse_quantized_model",
    "alias_folders",
    "refuse_alias_folder",
    "Accumulate",
    "SingleValue",
    "single_value",
    "quiet_progress",
    "positive_int",
    "nonneg_int",
    "positive_float",
    "nonneg_float",
    "finite_float",
    "fraction",
    "bits_int",
    "held_out_seed",
    "seed_int",
    "int_arg",
    "float_arg",
    "load_attribution",
    "CliError",
    "HelpFormatter",
    "Parser",
    "add_command",
    "format_examples",
    "add_dataclass_args",
    "dataclass_from_args",
    "require_path",
    "require_model",
    "load_model_quietly",
    "require_attribution_dir",
    "reading",
    "one_line",
    "describe_error",
    "report_error",
    "debug_enabled",
    "group_size_arg",
    "device_arg",
    "check_paths",
    "refuse_empty_path",
    "is_path_option",
    "refuse_other_results",
    "refuse_other_file_result",
    "flag_writer",
    "written_by",
    "file_outputs",
    "hold_lock",
    "folder_output_lock",
    "FileOutputs",
    "created_meanwhile",
    "add_overwrite_flag",
    "model_input",
    "refuse_ambiguous_model",
    "PROG",
    "DEBUG_ENV",
]
