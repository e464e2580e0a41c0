"""Records from the public benchmark file formats: JSON (a list, or a dict holding the list
under ``examples`` / ``data`` / ``problems`` / ``rows``), JSONL and CSV.

Each record comes with its location (``file:line`` for JSONL and CSV, ``file: record k`` for
JSON) so that every schema error names the file and the record.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lrm_interp._io import iter_jsonl
from lrm_interp.checks import checked_arguments
from lrm_interp.data.benchmarks.items import BenchmarkFormatError

SUFFIXES = (".json", ".jsonl", ".csv")
LIST_KEYS = ("examples", "data", "problems", "rows", "questions")


@checked_arguments
def read_records(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """``[(location, record dict), ...]`` of a JSON, JSONL or CSV file (chosen by suffix)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such benchmark file")
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise BenchmarkFormatError(f"{p}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    if suffix == ".jsonl":
        return [(where, rec) for _, where, rec in iter_jsonl(p, BenchmarkFormatError)]
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    if suffix == ".csv":
        return list(_csv(p, text))
    return _json(p, text)


def _csv(p: Path, text: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames:
        raise BenchmarkFormatError(f"{p}: empty CSV file (no header row)")
    for row in reader:
        if None in row:
            raise BenchmarkFormatError(f"{p}:{reader.line_num}: more fields than the header's {len(reader.fieldnames)}")
        if not any((v or "").strip() for v in row.values()):
            continue
        yield f"{p}:{reader.line_num}", dict(row)


def _json(p: Path, text: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{p}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if isinstance(data, dict):
        lists = [k for k in LIST_KEYS if isinstance(data.get(k), list)]
        if not lists:
            raise BenchmarkFormatError(
                f"{p}: a JSON object needs its records under one of {list(LIST_KEYS)}; it has keys {sorted(data)[:10]}"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise BenchmarkFormatError(f"{p}: expected a list of records, got {type(data).__name__}")
    out = []
    for k, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise BenchmarkFormatError(f"{p}: record {k}: expected an object, got {type(rec).__name__}")
        out.append((f"{p}: record {k}", rec))
    return out


@checked_arguments
def field_value(loc: str, rec: dict, *keys: str, required: bool = True) -> object:
    """The value of the first of ``keys`` present (not ``None``, not empty) in ``rec``."""
    for k in keys:
        v = rec.get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    if required:
        blank = next((k for k in keys if isinstance(rec.get(k), str)), None)
        if blank is not None:  # present but empty: was reported as missing while listed (H7-W1)
            raise BenchmarkFormatError(f"{loc}: field {blank!r} is empty ({rec[blank]!r})")
        raise BenchmarkFormatError(
            f"{loc}: missing field {' / '.join(repr(k) for k in keys)} (record has {sorted(rec)[:12]})"
        )
    return None


@checked_arguments
def text_value(loc: str, rec: dict, *keys: str, numbers: bool = False) -> str:
    """The first of ``keys`` present in ``rec`` (:func:`field_value`) as text: it must be a string
    (with ``numbers``, an integer or a finite number is accepted and written out); a list, an object
    or a boolean raises :class:`BenchmarkFormatError` naming the file, record and field, instead of
    reaching a prompt or a gold answer as a Python repr."""
    v = field_value(loc, rec, *keys)
    if isinstance(v, str):
        return v
    if numbers and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    name = next(k for k in keys if rec.get(k) is not None)
    want = "a string or a number" if numbers else "a string"
    raise BenchmarkFormatError(f"{loc}: field {name!r} must be {want}, got {type(v).__name__} {_short(v)}")


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."
