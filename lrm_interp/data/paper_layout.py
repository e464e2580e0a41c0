"""Load the paper's on-disk layout: ``outputs/<dataset>/<j>.txt`` + ``annotated/<dataset>/<j>.txt``.

``outputs`` holds the model's response (the text after the prompt), ``annotated`` its
behaviour annotation in the markup of :mod:`lrm_interp.data.markup`. Prompts are rebuilt with
:mod:`lrm_interp.data.prompts` from problem dicts: the ``problems`` argument, or
``<root>/problems/<dataset>.jsonl`` (one problem per line, line j = trace j) or
``<root>/problems/<dataset>.json`` (a list, or a BBH-style ``{"examples": [...]}``).
Without them the prompt is ``""`` and the report says so for each trace.

Every file is accounted for in the :class:`ParseReport`: parsed / repaired / rejected
(with reason), annotation without output, output without annotation; every segment placed
or not (with reason). A trace whose annotation is rejected is kept with no spans: it still
belongs to D− of the difference of means. In a layout with annotations, an output without an
annotation file is left out, as an annotation without output is: nothing says it has no
behaviour, and scoring it as one (every token a negative) would be silent; the count is warned
about (:class:`UnannotatedTraceWarning`) and each file is in the report. A layout without any
annotation file (``bench run`` outputs, outputs to annotate) is read whole, every trace without
spans. ``keep_unannotated=True`` / ``False`` keeps / leaves them out in every case.

Nothing else is dropped or read twice without a word: files that are not
``outputs|annotated/<dataset>/<j>.txt`` (nested folders, other names) are not loaded but listed in
:attr:`ParseReport.ignored` with one :class:`IgnoredFileWarning` (:func:`stray_files`); an empty
response is kept, noted and counted (:class:`~lrm_interp.data.traces.EmptyResponseWarning`); one
dataset under two folder names (``FOLIO`` and ``folio``, or a byte copy) is refused, and so are two
files for one item (``01.txt`` beside ``1.txt``); a number spelt otherwise alone (``01.txt``) is not
loaded, but listed in :attr:`ParseReport.ignored` like the other files a layout does not hold.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lrm_interp._io import atomic_write_text, loads_strict, read_text_file, refuse_result_file
from lrm_interp.checks import checked_arguments, user_stacklevel
from lrm_interp.data.align import SegmentReport, align_segments
from lrm_interp.data.markup import ParsedAnnotation, parse_markup
from lrm_interp.data.prompts import build_prompt, canonical_dataset, gold_answer
from lrm_interp.data.traces import (
    BehaviorSpan,
    EmptyResponseWarning,
    ReasoningDataset,
    ReasoningTrace,
    ResponseTooLargeError,
    TraceFormatError,
    empty_response_note,
    response_limit,
)

_BAD_FILE = ("rejected", "missing annotation", "missing output")


def _typed(v: object) -> str:
    """How a ``TypeError`` shows the value it refused: its repr (cut at 60 characters) and type."""
    r = repr(v)
    return f"{r if len(r) <= 60 else r[:57] + '...'} ({type(v).__name__})"


def _path_arg(name: str, value: object, where: str) -> Path:
    """``value`` as a ``Path`` if it is a ``str`` or ``os.PathLike`` naming something (not ``""``);
    else ``TypeError`` / ``ValueError`` naming ``where`` and ``name`` (``Path(None)`` said only
    "expected str, bytes or os.PathLike object, not NoneType")."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{where}: {name} must be a path (str or os.PathLike), got {_typed(value)}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{where}: {name} is {value!r}: give a path")
    return Path(value)


def _names_arg(name: str, value: object, where: str, *, what: str) -> list[str] | None:
    """A list of names from ``None`` (kept), one string (one name, as ``StudySettings(tasks='math')``
    reads it: iterating it would give its letters), or an iterable of non-empty strings.
    ``TypeError`` for another type or a non-string entry (named ``name[i]``), ``ValueError`` for an
    empty string or an empty list ("selects no ...; leave it None for all")."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (bytes, bytearray, Mapping)) or not isinstance(items, Iterable):
        raise TypeError(f"{where}: {name} must be a {what} name or a list of them, got {_typed(value)}")
    out: list[str] = []
    for i, x in enumerate(items):
        at = name if isinstance(value, str) else f"{name}[{i}]"
        if not isinstance(x, str):
            raise TypeError(f"{where}: {at} must be a {what} name (str), got {_typed(x)}")
        if not x.strip():
            raise ValueError(f"{where}: {at} is {x!r}: an empty {what} name names nothing")
        out.append(x)
    if not out:
        raise ValueError(f"{where}: {name}={value!r} selects no {what}; leave it None for all")
    return out


class UnannotatedTraceWarning(UserWarning):
    """A paper layout holds outputs without an annotation file; they were left out (counted)."""


class IgnoredFileWarning(UserWarning):
    """A paper layout holds files that are not ``outputs|annotated/<dataset>/<j>.txt`` (nested
    folders, files beside the dataset folders, other extensions): not loaded, counted and named
    (:attr:`ParseReport.ignored`)."""


#: the note a :class:`FileReport` carries for an empty (or whitespace-only) output file
EMPTY_RESPONSE_NOTE = "empty response (kept without spans: nothing to attribute)"


@dataclass(frozen=True)
class FileReport:
    """One annotation file (or one unmatched output/annotation file).

    ``status``: ``parsed`` | ``repaired`` | ``rejected`` | ``missing annotation`` |
    ``missing output``; ``reason`` for the last three; ``repairs`` applied; ``notes``
    (prompt missing, unlabelled text, unknown labels...); one report per segment.
    """

    dataset: str
    index: str
    annotation: str | None
    output: str | None
    status: str
    reason: str | None = None
    repairs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    segments: tuple[SegmentReport, ...] = ()

    @property
    def trace_id(self) -> str:
        return f"{self.dataset}/{self.index}" if self.dataset else self.index

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.status for s in self.segments))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["segments"] = [s.to_dict() for s in self.segments]
        return d


@dataclass(frozen=True)
class ParseReport:
    """Accounting of every annotation file and segment (JSON-able via :meth:`to_dict`)."""

    files: tuple[FileReport, ...] = ()
    #: files of the layout that are not ``<folder>/<dataset>/<j>.txt`` (not loaded), as paths
    ignored: tuple[str, ...] = ()

    def segments(self) -> list[SegmentReport]:
        return [s for f in self.files for s in f.segments]

    def counts(self) -> dict:
        """File statuses, segment statuses, and not-placed reasons by kind."""
        segs = self.segments()
        kinds = Counter(_reason_kind(s.reason) for s in segs if not s.placed)
        return {
            "files": dict(Counter(f.status for f in self.files)),
            "files_without_prompt": sum(
                any(n.startswith("no problem") or n.startswith("prompt not built") for n in f.notes) for f in self.files
            ),
            "files_ignored": len(self.ignored),
            "empty_responses": sum(EMPTY_RESPONSE_NOTE in f.notes for f in self.files),
            "segments": len(segs),
            "segments_placed": sum(s.placed for s in segs),
            "segments_by_status": dict(Counter(s.status for s in segs)),
            "not_placed_by_reason": dict(kinds),
            "repairs": dict(Counter(r for f in self.files for r in f.repairs)),
        }

    def not_placed(self) -> list[SegmentReport]:
        return [s for s in self.segments() if not s.placed]

    def file(self, trace_id: str) -> FileReport:
        for f in self.files:
            if f.trace_id == trace_id:
                return f
        raise KeyError(trace_id)

    def summary(self, max_lines: int = 30) -> str:
        """Counts, then the problem files and segments (at most ``max_lines`` of them)."""
        c = self.counts()
        lines = [
            f"{len(self.files)} files: " + ", ".join(f"{v} {k}" for k, v in sorted(c["files"].items())),
            f"{c['segments']} segments, {c['segments_placed']} placed ("
            + ", ".join(f"{v} {k}" for k, v in sorted(c["segments_by_status"].items()))
            + ")",
        ]
        if c["not_placed_by_reason"]:
            lines.append("not placed: " + ", ".join(f"{v} {k}" for k, v in sorted(c["not_placed_by_reason"].items())))
        if c["repairs"]:
            lines.append("repairs (files): " + ", ".join(f"{v} {k}" for k, v in sorted(c["repairs"].items())))
        if c["files_without_prompt"]:
            lines.append(f"{c['files_without_prompt']} traces without a prompt (no problem data)")
        if c["empty_responses"]:
            empty = [f.trace_id for f in self.files if EMPTY_RESPONSE_NOTE in f.notes]
            lines.append(f"{len(empty)} empty response{'s' * (len(empty) != 1)} (kept without spans): {_listed(empty)}")
        if self.ignored:
            lines.append(
                f"{len(self.ignored)} files not loaded (not outputs|annotated/<dataset>/<j>.txt): "
                f"{_listed(list(self.ignored))}"
            )
        detail = [f"  {f.trace_id}: {f.status}: {f.reason}" for f in self.files if f.status in _BAD_FILE]
        detail += [
            f"  {s.source} segment {s.index} (line {s.line}) [{s.raw_label}]: {s.reason}" for s in self.not_placed()
        ]
        lines += detail[:max_lines]
        if len(detail) > max_lines:
            lines.append(f"  ... {len(detail) - max_lines} more (see to_dict())")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"counts": self.counts(), "files": [f.to_dict() for f in self.files], "ignored": list(self.ignored)}

    @checked_arguments
    def save_json(self, path: str | os.PathLike, *, replace: bool = True, own: str | None = None) -> Path:
        """The report as JSON, atomically; ``replace=False``: an existing ``path`` is never replaced.
        Whatever ``replace`` says, a ``path`` that is one of the files of a finished result of an
        ``lrm-interp`` command (``A/attribution.json``), or lies inside one, is refused first
        (:class:`~lrm_interp._io.OtherResultError` naming it, H9-PYW); ``own``: the kind of result
        whose own file this is (a library writer writing into its own result folder)."""
        path = _path_arg("path", path, "ParseReport.save_json")
        refuse_result_file(path, own=own)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False), replace=replace)
        return Path(path)


def _listed(names: Sequence[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _reason_kind(reason: str | None) -> str:
    r = reason or ""
    for kind in ("unknown label", "not selected", "empty segment text", "overlaps", "not found"):
        if kind in r:
            return kind
    return r or "unspecified"


@checked_arguments
def annotate_trace(
    trace_or_response: ReasoningTrace | str,
    markup_text: str,
    *,
    source: str = "",
    aliases: dict[str, str] | None = None,
    labels: Collection[str] | None = None,
    keep_unknown: bool = False,
    trace_id: str | None = None,
) -> tuple[ReasoningTrace, FileReport]:
    """Parse ``markup_text`` and place its segments on the trace's response.

    ``trace_or_response``: a :class:`ReasoningTrace` (its spans are replaced; only its
    ``response`` is searched, never its prompt) or a response string (→ a trace with an empty
    prompt, id ``trace_id`` or ``source``). Returns the trace with spans and the file's report.
    Anything else (``None``, bytes, a number: it was turned into its ``str()``) and a
    ``markup_text`` that is no string raise ``TypeError``.
    """
    where = "annotate_trace"
    if not isinstance(trace_or_response, (ReasoningTrace, str)):
        raise TypeError(
            f"{where}: trace_or_response must be a ReasoningTrace or a response string, got {_typed(trace_or_response)}"
        )
    if not isinstance(markup_text, str):
        raise TypeError(f"{where}: markup_text must be the annotation text (str), got {_typed(markup_text)}")
    for arg, v in (("source", source), ("trace_id", trace_id)):
        if v is not None and not isinstance(v, str):
            raise TypeError(f"{where}: {arg} must be a string, got {_typed(v)}")
    if isinstance(trace_or_response, ReasoningTrace):
        trace = trace_or_response
    else:
        trace = ReasoningTrace(trace_id or source or "trace", "", trace_or_response)
    parsed: ParsedAnnotation = parse_markup(markup_text, source=source, aliases=aliases)
    spans: list[BehaviorSpan] = []
    reps: list[SegmentReport] = []
    if parsed.status != "rejected":
        spans, reps = align_segments(
            trace.response, parsed.segments, source=source, labels=labels, keep_unknown=keep_unknown
        )
    ds = str(trace.metadata.get("dataset", ""))
    index = str(trace.metadata.get("index", trace.id))
    report = FileReport(
        ds, index, source or None, None, parsed.status, parsed.reason, parsed.repairs, parsed.notes, tuple(reps)
    )
    meta = {**trace.metadata, "annotation_status": parsed.status}
    return ReasoningTrace(trace.id, trace.prompt, trace.response, tuple(spans), meta), report


def canonical_index(stem: str) -> int | None:
    """The item number ``stem`` names as a paper layout writes it (``"12"``: ASCII digits, no
    leading zero), else ``None`` (``"012"``, ``"１２"``, ``"notes"``); ``TypeError`` for a non-string."""
    if not isinstance(stem, str):
        raise TypeError(f"canonical_index: stem must be a file name's stem (str), got {_typed(stem)}")
    if stem.isascii() and stem.isdigit() and str(int(stem)) == stem:
        return int(stem)
    return None


def _numeric_alias(stem: str) -> int | None | bool:
    """``False`` when ``stem`` is canonical or not a number; else the item number another spelling
    of it names (``"01"`` → 1; ``None`` for digits ``int`` cannot read, ``"²"``)."""
    if not stem.isdigit() or canonical_index(stem) is not None:
        return False
    try:
        return int(stem)
    except ValueError:
        return None


def _index_key(stem: str):
    j = canonical_index(stem)
    return (0, j, "") if j is not None else (1, 0, stem)


def _read_problems(path: Path) -> list:
    """The problems of ``path`` (JSONL: line j = problem j; JSON: a list or ``{"examples": [...]}``),
    read strictly (:func:`~lrm_interp._io.loads_strict`: a key twice, NaN, lone surrogates refused)."""
    if path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(read_text_file(path).splitlines(), 1):
            if line.strip():
                items.append(loads_strict(line, f"{path}:{n}", TraceFormatError))
        return items
    data = loads_strict(read_text_file(path), str(path), TraceFormatError)
    if isinstance(data, dict):
        for k in ("examples", "data", "problems"):
            if isinstance(data.get(k), list):
                return data[k]
    if not isinstance(data, list):
        raise TraceFormatError(f"{path}: expected a list of problems or {{'examples': [...]}}")
    return data


def _same_dataset(a: str, b: str) -> bool:
    if a.strip().lower() == b.strip().lower():
        return True
    ca, cb = canonical_dataset(a), canonical_dataset(b)
    return ca is not None and ca == cb


def _find_problems(root: Path, dataset: str, problems: Mapping[str, Sequence[Mapping]] | None):
    if problems is not None:
        for k, v in problems.items():
            if _same_dataset(k, dataset):
                return list(v), f"problems[{k!r}]"
        return None, "the problems argument"
    for ext in (".jsonl", ".json"):
        p = root / "problems" / f"{dataset}{ext}"
        if p.exists():
            return _read_problems(p), str(p)
    return None, f"{root / 'problems'}/{dataset}.jsonl"


@checked_arguments
def check_layout_files(
    root: str | os.PathLike, *, max_response_chars: int | None = None, folders: Sequence[str] = ("outputs", "annotated")
) -> int:
    """Check the ``*.txt`` files under ``root/<folder>/<dataset>/`` before a paper-layout folder is
    parsed: each must be valid UTF-8 (else :class:`TraceFormatError` naming ``file:line`` and the
    byte) and at most the size limit in characters (else :class:`ResponseTooLargeError` naming the
    file, its size and the limit). Files no larger in bytes than the limit are only decoded.
    Returns how many files were checked."""
    root = _path_arg("root", root, "check_layout_files")
    limit = response_limit(max_response_chars)
    if isinstance(folders, str):  # one folder, not its letters
        folders = (folders,)
    n = 0
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for p in sorted(base.glob("*/*.txt")):
            if not p.is_file():
                continue
            n += 1
            raw = p.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw.count(b"\n", 0, e.start) + 1
                raise TraceFormatError(
                    f"{p}:{line}: invalid UTF-8 at byte {e.start} of the file "
                    f"({raw[max(0, e.start - 10) : e.start + 10]!r})"
                ) from e
            if len(raw) > limit and len(text) > limit:
                raise ResponseTooLargeError(
                    f"{p}: {len(text):,} characters exceeds the limit of {limit:,} characters (raise it with "
                    "max_response_chars=N or $LRM_INTERP_MAX_RESPONSE_CHARS=N if it is meant to be this long)"
                )
    return n


def _dataset_key(name: str) -> str:
    """One key per dataset, whatever its folder's spelling (``AIME_2024`` / ``aime``, ``FOLIO`` / ``folio``)."""
    return canonical_dataset(name) or name.strip().lower()


@checked_arguments
def stray_files(root: str | os.PathLike, datasets: Collection[str] | None = None) -> list[str]:
    """Files under ``root/outputs`` and ``root/annotated`` that a paper layout does not hold:
    anything but ``<folder>/<dataset>/<j>.txt`` (a nested folder's files, files beside the dataset
    folders, other extensions). ``datasets``: only these dataset folders' files (the others are not
    loaded on purpose; one string is one dataset). Sorted paths; :func:`load_paper_layout` reports
    them, never drops them silently."""
    root = _path_arg("root", root, "stray_files")
    if isinstance(datasets, str):  # "math" is one folder (a substring test would keep "m", "at", ...)
        datasets = (datasets,)
    out: list[str] = []
    for folder in ("outputs", "annotated"):
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(base)
            dirnames.sort()
            if rel.parts and datasets is not None and rel.parts[0] not in datasets:
                dirnames[:] = []
                continue
            for fn in sorted(filenames):
                loaded = len(rel.parts) == 1 and fn.endswith(".txt") and (Path(dirpath) / fn).is_file()
                if loaded and _numeric_alias(fn[: -len(".txt")]) is False:
                    continue  # <folder>/<dataset>/<j>.txt: loaded (01.txt is not <j>.txt: reported)
                out.append(str(Path(dirpath) / fn))
    return out


def _check_one_file_per_item(root: Path, names: Sequence[str]) -> None:
    """Refuse two files for one item in one dataset folder (``01.txt`` beside ``1.txt``): both
    would be read as item 1 (``TraceFormatError`` naming both files). A number spelt otherwise
    without its canonical file is not loaded but reported (:func:`stray_files`)."""
    for folder in ("outputs", "annotated"):
        for n in names:
            d = root / folder / n
            if not d.is_dir():
                continue
            for q in sorted(d.glob("*.txt")):
                j = _numeric_alias(q.stem)
                if j is not False and j is not None and (d / f"{j}.txt").is_file():
                    raise TraceFormatError(
                        f"{q} and {d / f'{j}.txt'} are two files for one item ({n} #{j}): it would be loaded "
                        f"twice; keep one, named {j}.txt"
                    )


def _check_one_folder_per_dataset(root: Path, names: Sequence[str]) -> None:
    """Refuse a dataset under two folder names (``FOLIO`` and ``folio``, ``AIME_2024`` and ``aime``,
    or a folder whose outputs, at least two and all distinct, are byte copies of another's under the
    same numbers): its traces would be loaded twice, under two ids each (``TraceFormatError``
    naming both folders)."""
    import hashlib

    for folder in ("outputs", "annotated"):
        base = root / folder
        present = [n for n in names if (base / n).is_dir()]
        by_key: dict[str, str] = {}
        for n in present:
            first = by_key.setdefault(_dataset_key(n), n)
            if first != n:
                raise TraceFormatError(
                    f"{base / first} and {base / n} are the same dataset ({_dataset_key(n)}): its traces would "
                    "be loaded twice, under two ids each; keep one folder"
                )
        if folder != "outputs":
            continue
        seen: dict[frozenset, str] = {}
        for n in present:
            sig = frozenset(
                (q.stem, hashlib.sha256(q.read_bytes()).hexdigest())
                for q in (base / n).glob("*.txt")
                if q.is_file() and q.stat().st_size
            )
            if len(sig) < 2 or len({h for _, h in sig}) < len(sig):
                # a copy of a real dataset has distinct outputs; a collapsed model may write one text
                # for every item of two tasks, which is no copy
                continue
            if sig in seen:
                raise TraceFormatError(
                    f"{base / n} is a copy of {base / seen[sig]} (the same {len(sig)} non-empty output files, "
                    "byte for byte): its traces would be loaded twice, under two ids each; keep one folder"
                )
            seen[sig] = n


def _txt_files(d: Path) -> list[Path]:
    """The ``<j>.txt`` files of a dataset folder a layout loads (numbers spelt canonically, or
    names that are no number at all)."""
    if not d.is_dir():
        return []
    return [p for p in d.glob("*.txt") if _numeric_alias(p.stem) is False]


@checked_arguments
def load_paper_layout(
    root: str | os.PathLike,
    *,
    datasets: Sequence[str] | None = None,
    problems: Mapping[str, Sequence[Mapping]] | None = None,
    labels: Collection[str] | None = None,
    aliases: dict[str, str] | None = None,
    keep_unknown: bool = False,
    progress: bool = True,
    max_response_chars: int | None = None,
    keep_unannotated: bool | None = None,
) -> ReasoningDataset:
    """Load traces with their behaviour spans; ``dataset.report`` is a :class:`ParseReport`.

    Args:
        root: folder with ``outputs/`` and ``annotated/`` (and optionally ``problems/``).
        datasets: dataset folder names to load (case-insensitive, aliases accepted); all if None.
            One string is one name (``datasets="math"``); an empty list is refused (it selects
            no dataset), and so is a name that is no string.
        problems: ``{dataset: [problem dict, ...]}`` indexed by trace number; overrides
            ``problems/`` files. Keys per dataset: see :mod:`lrm_interp.data.prompts`.
        labels: canonical behaviours to turn into spans (default: all known); the others are
            reported ``not placed`` (``not selected``). One string is one behaviour; an empty
            list is refused.
        aliases: extra label aliases (``{"verification": "example-testing"}``).
        keep_unknown: emit spans for unknown labels too (under the raw label).
        progress: tqdm bar over files.
        max_response_chars: the largest file accepted, in characters (default
            :func:`~lrm_interp.data.traces.response_limit`); every file is checked
            (:func:`check_layout_files`: UTF-8 and size) before any is parsed.
        keep_unannotated: keep outputs without an annotation file, without spans (``True``: to
            annotate them, or as text), or leave them out (``False``) with one
            :class:`UnannotatedTraceWarning` counting them (status ``missing annotation`` in the
            report): an unannotated trace is not a trace without behaviours. Default (``None``):
            left out when the layout holds any annotation file, kept when it holds none (an
            outputs-only layout, whose traces all lack spans).

    Trace ids are ``"<dataset>/<j>"``; metadata: ``dataset``, ``index`` (int when numeric),
    ``gold_answer`` (if the problem has one), ``annotation_status``, file paths.
    """
    where = "load_paper_layout"
    root = _path_arg("root", root, where)
    datasets = _names_arg("datasets", datasets, where, what="dataset")
    if labels is not None:
        labels = _names_arg("labels", labels, where, what="behaviour")
    if problems is not None and not isinstance(problems, Mapping):
        raise TypeError(
            f"{where}: problems must be a mapping {{dataset: [problem, ...]}} or None, got {_typed(problems)}"
        )
    if aliases is not None and not isinstance(aliases, Mapping):
        raise TypeError(f"{where}: aliases must be a mapping {{label: behaviour}} or None, got {_typed(aliases)}")
    for arg, v in (("keep_unknown", keep_unknown), ("progress", progress), ("keep_unannotated", keep_unannotated)):
        if not isinstance(v, bool) and not (arg == "keep_unannotated" and v is None):
            either = "True, False or None" if arg == "keep_unannotated" else "True or False"
            raise TypeError(f"{where}: {arg} must be {either}, got {_typed(v)}")
    out_dir, ann_dir = root / "outputs", root / "annotated"
    if not out_dir.is_dir() and not ann_dir.is_dir():
        raise FileNotFoundError(f"{root} has neither outputs/ nor annotated/ (paper layout expected)")
    limit = response_limit(max_response_chars)
    check_layout_files(root, max_response_chars=limit)
    names = sorted({p.name for d in (out_dir, ann_dir) if d.is_dir() for p in d.iterdir() if p.is_dir()})
    if datasets is not None:
        missing = [d for d in datasets if not any(_same_dataset(d, n) for n in names)]
        if missing:
            raise FileNotFoundError(f"{root}: no dataset folder for {missing}; found {names}")
        names = [n for n in names if any(_same_dataset(d, n) for d in datasets)]
    _check_one_folder_per_dataset(root, names)
    _check_one_file_per_item(root, names)
    ignored = stray_files(root, names)
    jobs = []
    for ds_name in names:
        # "01.txt" is no <j>.txt: not loaded, in `ignored` (beside "1.txt" it was refused above)
        outs = {p.stem: p for p in _txt_files(out_dir / ds_name)}
        anns = {p.stem: p for p in _txt_files(ann_dir / ds_name)}
        probs, prob_src = _find_problems(root, ds_name, problems)
        for stem in sorted(set(outs) | set(anns), key=_index_key):
            jobs.append((ds_name, stem, outs.get(stem), anns.get(stem), probs, prob_src))

    traces: list[ReasoningTrace] = []
    files: list[FileReport] = []
    unannotated: list[str] = []
    if keep_unannotated is None:  # an outputs-only layout is read whole; a partly annotated one is not
        keep_unannotated = not any(job[3] is not None for job in jobs)
    for ds_name, stem, o, a, probs, prob_src in tqdm(jobs, desc="annotation files", disable=not progress):
        if o is None:
            files.append(
                FileReport(
                    ds_name,
                    stem,
                    str(a),
                    None,
                    "missing output",
                    f"no outputs/{ds_name}/{stem}.txt for this annotation: not loaded",
                )
            )
            continue
        response = read_text_file(o)  # without a BOM, as the JSONL reader (H6-U12)
        notes: list[str] = []
        prompt = ""
        j = canonical_index(stem)
        meta: dict = {"dataset": ds_name, "index": stem if j is None else j, "output_file": str(o)}
        if probs is None:
            notes.append(f"no problem data ({prob_src} not found): prompt left empty")
        elif j is None or j >= len(probs):
            notes.append(f"no problem #{stem} in {prob_src} ({len(probs)} problems): prompt left empty")
        else:
            prob = probs[j]
            try:
                prompt = build_prompt(ds_name, prob)
            except KeyError as e:
                notes.append(f"prompt not built: {e.args[0]}")
            g = gold_answer(ds_name, prob)
            if g is not None:
                meta["gold_answer"] = g
            if "answer_aliases" in prob:
                meta["answer_aliases"] = prob["answer_aliases"]
        if not response.strip() and (a is not None or keep_unannotated):
            notes.append(EMPTY_RESPONSE_NOTE)  # kept: counted in the report and one warning
        trace = ReasoningTrace(f"{ds_name}/{stem}", prompt, response, (), meta)
        if a is None:
            files.append(
                FileReport(
                    ds_name,
                    stem,
                    None,
                    str(o),
                    "missing annotation",
                    f"no annotated/{ds_name}/{stem}.txt: "
                    + ("trace kept without spans" if keep_unannotated else "not loaded (unannotated)"),
                    notes=tuple(notes),
                )
            )
            if keep_unannotated:
                traces.append(trace)
            else:
                unannotated.append(trace.id)
            continue
        trace, rep = annotate_trace(
            trace,
            read_text_file(a),
            source=str(a),
            aliases=aliases,
            labels=labels,
            keep_unknown=keep_unknown,
        )
        trace.metadata["annotation_file"] = str(a)
        files.append(
            FileReport(
                ds_name,
                stem,
                str(a),
                str(o),
                rep.status,
                rep.reason,
                rep.repairs,
                tuple(notes) + rep.notes,
                rep.segments,
            )
        )
        traces.append(trace)
    if unannotated:
        import warnings

        n = len(unannotated)
        warnings.warn(
            f"{root}: {n} output{'s' * (n != 1)} without an annotation file left out (an unannotated trace "
            f"is not scored as one without behaviours): {', '.join(unannotated[:5])}"
            + (f" and {n - 5} more" if n > 5 else "")
            + "; annotate them into annotated/<dataset>/<j>.txt, or load with keep_unannotated=True",
            UnannotatedTraceWarning,
            stacklevel=user_stacklevel(),
        )
    import warnings

    kept_empty = [t.id for t in traces if not t.response.strip()]
    if kept_empty:
        warnings.warn(empty_response_note(root, kept_empty), EmptyResponseWarning, stacklevel=user_stacklevel())
    if ignored:
        n = len(ignored)
        warnings.warn(
            f"{root}: {n} file{'s' * (n != 1)} not loaded: a paper layout holds outputs/<dataset>/<j>.txt and "
            f"annotated/<dataset>/<j>.txt only (nested folders, other names, numbers with a leading zero are not "
            f"read): {_listed(ignored)}; move or rename them there to load them",
            IgnoredFileWarning,
            stacklevel=user_stacklevel(),
        )
    report = ParseReport(tuple(files), ignored=tuple(ignored))
    return ReasoningDataset(traces, name=root.name, report=report).check_sizes(limit)
