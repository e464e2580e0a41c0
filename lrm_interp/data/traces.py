"""Reasoning traces with behaviour spans, and datasets of them (JSONL on disk).

JSONL schema (one trace per line; see docs/data_format.md)::

    {"id": "FOLIO/3",                      # unique string
     "prompt": "...<think>\\n",            # text fed before the response (may be "")
     "response": "Okay, so ...</think>...",# the model's output
     "spans": [{"behavior": "backtracking", "start": 120, "end": 188}, ...],
     "metadata": {"dataset": "FOLIO", "gold_answer": "Uncertain", "correct": true, ...}}

Span offsets are character offsets into ``response`` (``start`` inclusive, ``end``
exclusive); ``trace.text == prompt + response`` and ``trace.abs_span(s)`` gives offsets
into it. Unknown keys are kept in ``metadata``; nothing is dropped silently, and a key that is
a near miss of a field ("Spans", "span", "Prompt") is refused with "did you mean" (it would
silently become metadata), even beside the field itself (``"spans": []`` with ``"Spans": [...]``);
a span object holds ``behavior`` / ``start`` / ``end`` only, any other key ("Start", "behaviour",
"label") is refused, near misses with "did you mean". Nothing is coerced either: offsets must be JSON integers, labels
strings; a label that is a near miss of one of :data:`BEHAVIORS` ("backtraking") is refused with
"did you mean", other labels are kept as custom behaviours and named in one
:class:`CustomBehaviorWarning`; a span given twice (same label and range: it would count twice)
is refused; a file without any trace is refused. ``"spans": null`` is refused (a missing key means
no spans). The JSON itself is read strictly (:func:`lrm_interp._io.loads_strict`): a key given twice
in one record, ``NaN`` / ``Infinity`` and lone surrogate escapes (``"\\ud800"``) are refused naming
``file:line``; :meth:`ReasoningDataset.save_jsonl` refuses to write NaN or infinities (trace metadata
included) rather than write a file no JSON reader accepts.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lrm_interp._io import atomic_write_text, iter_jsonl, refuse_result_file
from lrm_interp.checks import checked_arguments, user_stacklevel

# Venhoff et al.'s six behaviour labels (order = their numbering 0..5).
BEHAVIORS: tuple[str, ...] = (
    "initializing",
    "deduction",
    "adding-knowledge",
    "example-testing",
    "uncertainty-estimation",
    "backtracking",
)
# The four behaviours the paper attributes.
TARGET_BEHAVIORS: tuple[str, ...] = (
    "backtracking",
    "uncertainty-estimation",
    "example-testing",
    "adding-knowledge",
)


class TraceFormatError(ValueError):
    """A trace file or record is malformed; the message names the file/line/trace."""


class ResponseTooLargeError(TraceFormatError):
    """A response (or prompt) is longer than the size limit (:func:`response_limit`)."""


class CustomBehaviorWarning(UserWarning):
    """A trace file holds behaviour labels outside :data:`BEHAVIORS` (kept as custom behaviours)."""


class EmptyResponseWarning(UserWarning):
    """Traces with an empty (or whitespace-only) response were loaded: kept, without response text
    or spans (their prompt tokens still count as negatives), counted and named in one warning."""


@checked_arguments
def empty_response_note(source: str | os.PathLike, where: list[str]) -> str:
    """The one line :class:`EmptyResponseWarning` says: the count and the first places (``where``:
    ``file:line (id)`` or trace ids)."""
    n = len(where)
    return (
        f"{source}: {n} trace{'s' * (n != 1)} with an empty response (nothing to attribute or annotate; "
        f"kept, without spans): {', '.join(where[:5])}" + (f" and {n - 5} more" if n > 5 else "")
    )


#: How close (``difflib`` ratio, after lower-casing and ``_`` / space → ``-``) an unknown label
#: must be to a known behaviour to be refused as its misspelling ("backtraking" 0.96, "deductions"
#: 0.95, "backtrack" 0.86); custom behaviours ("verification" 0.57, "induction" 0.78) stay allowed.
LABEL_TYPO_CUTOFF = 0.8


def _normal_label(label: str) -> str:
    return "-".join(label.strip().lower().replace("_", " ").split())


def check_behavior_label(label: object, where: str = "") -> str:
    """``label`` if it may name a behaviour: a non-empty string that is one of :data:`BEHAVIORS`,
    or a custom label not close to one of them. A near miss of a known behaviour ("backtraking",
    "Backtracking", "adding_knowledge") raises :class:`TraceFormatError` with "did you mean": a
    misspelling would otherwise silently become a new behaviour with a handful of spans."""
    import difflib

    loc = f"{where}: " if where else ""
    if not isinstance(label, str) or not label.strip():
        raise TraceFormatError(f"{loc}field 'behavior' must be a non-empty string, got {label!r}")
    if label in BEHAVIORS:
        return label
    close = difflib.get_close_matches(_normal_label(label), BEHAVIORS, n=1, cutoff=LABEL_TYPO_CUTOFF)
    if close:
        raise TraceFormatError(
            f"{loc}field 'behavior' {label!r} is not a known behaviour; did you mean "
            f"{close[0]!r}? (known: {', '.join(BEHAVIORS)}; a custom label must not be a "
            "near miss of one of them)"
        )
    return label


#: The fields of a trace record; any other key of a JSONL record is kept in ``metadata``.
TRACE_KEYS: tuple[str, ...] = ("id", "prompt", "response", "spans", "metadata")


#: The fields of a span object; any other key in a span is refused (it would be dropped).
SPAN_KEYS: tuple[str, ...] = ("behavior", "start", "end")


def _near_key(key: str) -> str | None:
    """The field of :data:`TRACE_KEYS` that ``key`` is a near miss of ("Spans", "span", "spnas",
    "Prompt", "responce": the cutoff of :data:`LABEL_TYPO_CUTOFF`, after lower-casing), or ``None``."""
    import difflib

    if key in TRACE_KEYS:
        return key
    close = difflib.get_close_matches(key.strip().lower(), TRACE_KEYS, n=1, cutoff=LABEL_TYPO_CUTOFF)
    return close[0] if close else None


def _json_int(value: object, where: str) -> int:
    """``value`` if it is a JSON integer (``bool`` is not), else :class:`TraceFormatError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = (
            json.dumps(value, ensure_ascii=False)
            if isinstance(value, (bool, float, str, type(None)))
            else type(value).__name__
        )
        raise TraceFormatError(f"{where} must be a JSON integer (a character offset), got {shown}")
    return value


#: Default largest response (and prompt) accepted when traces are loaded, in characters. Real
#: R1 traces reach about 110k characters (~30k tokens); 2M leaves a wide margin while refusing
#: multi-megabyte inputs up front instead of running out of memory deep inside annotation or
#: tokenization.
MAX_RESPONSE_CHARS = 2_000_000
#: Environment variable that overrides :data:`MAX_RESPONSE_CHARS` (a positive integer).
MAX_RESPONSE_ENV = "LRM_INTERP_MAX_RESPONSE_CHARS"


def response_limit(max_response_chars: int | None = None) -> int:
    """The size limit in characters: ``max_response_chars`` when given, else
    ``$LRM_INTERP_MAX_RESPONSE_CHARS``, else :data:`MAX_RESPONSE_CHARS`. A limit that is not a
    positive integer raises ``ValueError`` naming where it came from."""
    v: object
    if max_response_chars is not None:
        v, src = max_response_chars, "max_response_chars"
    elif os.environ.get(MAX_RESPONSE_ENV, "").strip():
        raw, src = os.environ[MAX_RESPONSE_ENV].strip(), f"${MAX_RESPONSE_ENV}"
        try:
            v = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(
                f"{src} must be a positive integer (characters), got {os.environ[MAX_RESPONSE_ENV]!r}"
            ) from None
    else:
        return MAX_RESPONSE_CHARS
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{src} must be a positive integer (characters), got {v!r}")
    return v


def check_response_size(where: str, response: str, prompt: str = "", *, limit: int | None = None) -> None:
    """Raise :class:`ResponseTooLargeError` (message starting with ``where``) when ``response`` or
    ``prompt`` is longer than ``limit`` characters (default :func:`response_limit`)."""
    limit = response_limit() if limit is None else limit
    for what, text in (("response", response), ("prompt", prompt)):
        if len(text) > limit:
            raise ResponseTooLargeError(
                f"{where}: {what} of {len(text):,} characters exceeds the limit of {limit:,} characters "
                f"(raise it with max_response_chars=N or ${MAX_RESPONSE_ENV}=N if it is meant to be this long)"
            )


@dataclass(frozen=True)
class BehaviorSpan:
    """One annotated behaviour segment: ``response[start:end]``."""

    behavior: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not isinstance(self.behavior, str):
            raise TypeError(f"span behavior must be a str label, got {type(self.behavior).__name__} {self.behavior!r}")
        for name in ("start", "end"):  # 20.5 was accepted here and refused by the loader (H7-API8)
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(
                    f"span {self.behavior!r}: {name} must be an int character offset, got {v!r} ({type(v).__name__})"
                )
            object.__setattr__(self, name, int(v))
        if not (0 <= self.start <= self.end):
            raise ValueError(f"bad span [{self.start}, {self.end}) for {self.behavior!r}")

    def to_dict(self) -> dict:
        return {"behavior": self.behavior, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class ReasoningTrace:
    """A prompt + response of a reasoning model, with behaviour spans on the response."""

    id: str
    prompt: str
    response: str
    spans: tuple[BehaviorSpan, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the types, up front: response=None / id=5 failed later, far away (H7-API8b)
        if not isinstance(self.id, str):
            raise TypeError(f"trace id must be a str, got {type(self.id).__name__} {self.id!r}")
        for name in ("prompt", "response"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"trace {self.id!r}: {name} must be a str, got {type(v).__name__}")
        if isinstance(self.spans, (str, bytes, Mapping)):
            raise TypeError(
                f"trace {self.id!r}: spans must be a sequence of BehaviorSpan, got {type(self.spans).__name__}"
            )
        object.__setattr__(self, "spans", tuple(self.spans))
        for k, sp in enumerate(self.spans):
            if not isinstance(sp, BehaviorSpan):
                raise TypeError(f"trace {self.id!r}: spans[{k}] must be a BehaviorSpan, got {type(sp).__name__}")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"trace {self.id!r}: metadata must be a dict, got {type(self.metadata).__name__}")
        first: dict[BehaviorSpan, int] = {}
        for k, s in enumerate(self.spans):
            if s.end > len(self.response):
                raise TraceFormatError(
                    f"trace {self.id!r}: span {s.behavior} [{s.start},{s.end}) ends past the "
                    f"response ({len(self.response)} chars)"
                )
            if s in first:  # the same label and range twice would count twice in every statistic
                raise TraceFormatError(
                    f"trace {self.id!r}: span #{k} {s.behavior} [{s.start},{s.end}) duplicates span "
                    f"#{first[s]} (same label and character range); remove the duplicate"
                )
            first[s] = k

    @property
    def text(self) -> str:
        """The full model input: ``prompt + response``."""
        return self.prompt + self.response

    def abs_span(self, span: BehaviorSpan) -> tuple[int, int]:
        """Character offsets of ``span`` inside :attr:`text`."""
        return len(self.prompt) + span.start, len(self.prompt) + span.end

    def spans_of(self, behavior: str) -> list[BehaviorSpan]:
        return [s for s in self.spans if s.behavior == behavior]

    def span_text(self, span: BehaviorSpan) -> str:
        return self.response[span.start : span.end]

    @property
    def dataset(self) -> str | None:
        return self.metadata.get("dataset")

    def with_spans(self, spans: Iterable[BehaviorSpan]) -> ReasoningTrace:
        return replace(self, spans=tuple(spans))

    def fingerprint(self) -> str:
        """BLAKE2b-128 of what the numbers depend on: prompt, response and spans (not metadata)."""
        payload = json.dumps([self.prompt, self.response, [s.to_dict() for s in self.spans]], ensure_ascii=False)
        return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "response": self.response,
            "spans": [s.to_dict() for s in self.spans],
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "") -> ReasoningTrace:
        """A trace from its JSON object, every field's type checked (nothing coerced): ``id`` a
        string (or integer), ``response`` a string, ``prompt`` a string or null, ``spans`` a list
        of objects (a missing key: no spans; ``null`` refused) with a string ``behavior`` (not a
        near miss of a known behaviour, :func:`check_behavior_label`) and JSON-integer ``start`` /
        ``end`` (``1.5``, ``true``, ``"3"`` refused; the same span twice refused), ``metadata`` an
        object; any other key goes to ``metadata`` unless it is a near miss of a field (``"Spans"``:
        "did you mean", also beside ``"spans"``); a span with any other key is refused. Errors are
        :class:`TraceFormatError` starting with ``where``
        (``file:line``) and naming the field."""
        loc = f"{where}: " if where else ""
        for key in TRACE_KEYS:  # "Spans", "span", "Prompt" would otherwise become metadata: refused
            near = [k for k in d if isinstance(k, str) and k != key and _near_key(k) == key]
            if near:
                beside = (
                    f" (beside {key!r}: two keys for one field, and {near[0]!r} would silently become metadata)"
                    if key in d
                    else ""
                )
                raise TraceFormatError(
                    f"{loc}key {near[0]!r} is not a trace field; did you mean {key!r}?{beside} (fields: "
                    f"{', '.join(TRACE_KEYS)}; other keys are kept as metadata and must not be a near "
                    "miss of a field)"
                )
        for key in ("id", "response"):
            if key not in d:
                raise TraceFormatError(f"{loc}missing required key {key!r}")
        if not isinstance(d["response"], str):
            raise TraceFormatError(f"{loc}'response' must be a string, got {type(d['response']).__name__}")
        tid = d["id"]
        if isinstance(tid, bool) or not isinstance(tid, (str, int)):
            raise TraceFormatError(f"{loc}'id' must be a string, got {tid!r} ({type(tid).__name__})")
        prompt = d.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise TraceFormatError(f"{loc}'prompt' must be a string, got {type(prompt).__name__}")
        raw_spans = d.get("spans", [])  # a missing key: no spans (docs/data_format.md); null is refused
        if raw_spans is None:
            raise TraceFormatError(
                f"{loc}'spans' is null; give a list of span objects ([] for a trace without spans, or leave "
                "the key out): null may mean 'not annotated' as well as 'no behaviour'"
            )
        if not isinstance(raw_spans, list):
            raise TraceFormatError(f"{loc}'spans' must be a list of span objects, got {type(raw_spans).__name__}")
        spans = []
        for k, s in enumerate(raw_spans):
            if not isinstance(s, dict):
                raise TraceFormatError(f"{loc}span #{k} must be an object with behavior/start/end, got {s!r}")
            unknown = [f for f in s if f not in SPAN_KEYS]
            if unknown:  # "Start", "behaviour", "label" beside the fields: never dropped silently
                import difflib

                f = unknown[0]
                close = difflib.get_close_matches(str(f).strip().lower(), SPAN_KEYS, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TraceFormatError(
                    f"{loc}span #{k} has the key {f!r}, which is not a span field{hint} (fields: "
                    f"{', '.join(SPAN_KEYS)}; a span holds nothing else, so it would be dropped silently): {s!r}"
                )
            missing = [f for f in SPAN_KEYS if f not in s]
            if missing:
                raise TraceFormatError(f"{loc}span #{k} is malformed (missing field {missing[0]!r}): {s!r}")
            label = check_behavior_label(s["behavior"], f"{loc}span #{k}")
            start = _json_int(s["start"], f"{loc}span #{k} field 'start'")
            end = _json_int(s["end"], f"{loc}span #{k} field 'end'")
            try:
                spans.append(BehaviorSpan(label, start, end))
            except ValueError as e:
                raise TraceFormatError(f"{loc}span #{k} is malformed ({e}): {s!r}") from e
        meta_in = d.get("metadata")
        if meta_in is not None and not isinstance(meta_in, dict):
            raise TraceFormatError(f"{loc}'metadata' must be an object, got {type(meta_in).__name__}")
        meta = dict(meta_in or {})
        extra = {k: v for k, v in d.items() if k not in TRACE_KEYS}
        meta.update(extra)
        try:
            return cls(id=str(tid), prompt=prompt or "", response=d["response"], spans=tuple(spans), metadata=meta)
        except TraceFormatError as e:
            raise TraceFormatError(f"{loc}{e}") from e


class ReasoningDataset(Sequence[ReasoningTrace]):
    """An ordered collection of :class:`ReasoningTrace` with unique ids.

    ``report`` optionally carries the parse report of the annotation files it came from.
    """

    def __init__(self, traces: Iterable[ReasoningTrace], *, name: str = "", report: Any = None):
        self.traces: list[ReasoningTrace] = list(traces)
        self.name = name
        self.report = report
        seen: set[str] = set()
        for t in self.traces:
            if t.id in seen:
                raise TraceFormatError(f"duplicate trace id {t.id!r} in dataset {name!r}")
            seen.add(t.id)

    def __len__(self) -> int:
        return len(self.traces)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ReasoningDataset(self.traces[i], name=self.name, report=self.report)
        if isinstance(i, str):
            for t in self.traces:
                if t.id == i:
                    return t
            raise KeyError(i)
        return self.traces[i]

    def __iter__(self) -> Iterator[ReasoningTrace]:
        return iter(self.traces)

    def __repr__(self) -> str:
        return f"ReasoningDataset(name={self.name!r}, traces={len(self)}, spans={self.span_counts()})"

    def behaviors(self) -> list[str]:
        """Behaviour labels present, in canonical order, unknown labels last (sorted)."""
        present = {s.behavior for t in self.traces for s in t.spans}
        known = [b for b in BEHAVIORS if b in present]
        return known + sorted(present - set(BEHAVIORS))

    def custom_behaviors(self) -> dict[str, int]:
        """Spans per label that is not one of :data:`BEHAVIORS` (custom behaviours), sorted by label."""
        counts = self.span_counts()
        return {b: counts[b] for b in sorted(counts) if b not in BEHAVIORS}

    @checked_arguments
    def custom_behavior_summary(self, source: str | os.PathLike | None = None) -> str | None:
        """One line naming every custom label and its span count, or ``None`` when there is none."""
        custom = self.custom_behaviors()
        if not custom:
            return None
        n = sum(custom.values())
        head = f"{source}: " if source is not None else ""
        return (
            f"{head}{n} span{'s' * (n != 1)} with {len(custom)} label{'s' * (len(custom) != 1)} that are not "
            f"known behaviours, kept as custom behaviours: "
            + ", ".join(f"{b!r} ({c})" for b, c in custom.items())
            + f" (known: {', '.join(BEHAVIORS)})"
        )

    def span_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.traces:
            for s in t.spans:
                counts[s.behavior] = counts.get(s.behavior, 0) + 1
        return counts

    def filter(self, fn) -> ReasoningDataset:
        return ReasoningDataset([t for t in self.traces if fn(t)], name=self.name, report=self.report)

    # ---------------------------------------------------------------- JSONL I/O
    @checked_arguments
    def save_jsonl(self, path: str | os.PathLike, *, replace: bool = True, own: str | None = None) -> Path:
        """Write one JSON object per trace, atomically (temp file + rename); a NaN or infinity in a
        trace (its metadata) raises :class:`TraceFormatError` naming the trace (it is not JSON; the
        loaders refuse it too), before anything is written. ``replace=False``: an
        existing ``path`` is never replaced (``FileExistsError`` naming it, also for a file created
        there while this ran). Whatever ``replace`` says, a ``path`` that is one of the files of a
        finished result of an ``lrm-interp`` command (``A/scores.csv``), or lies inside one, is
        refused first (:class:`~lrm_interp._io.OtherResultError` naming it, H9-PYW); ``own``: the kind
        of result whose own file this is (the library's writers: a study writing its ``traces.jsonl``)."""
        refuse_result_file(path, own=own)
        path = Path(path)
        lines = []
        for t in self.traces:
            try:  # NaN / inf would be written as bare NaN / Infinity: not JSON, refused by every reader
                lines.append(json.dumps(t.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
            except ValueError as e:
                raise TraceFormatError(
                    f"trace {t.id!r}: cannot be written as JSON ({e}; NaN and infinities are not JSON numbers: "
                    "use null or a finite number in its metadata)"
                ) from None
        atomic_write_text(path, "".join(lines), replace=replace)
        return path

    @classmethod
    @checked_arguments
    def load_jsonl(
        cls, path: str | os.PathLike, *, name: str | None = None, max_response_chars: int | None = None
    ) -> ReasoningDataset:
        """Load a JSONL file; a malformed line (invalid UTF-8 or JSON, missing keys, a field of
        the wrong type, bad spans, a misspelt behaviour label: :meth:`ReasoningTrace.from_dict`)
        raises :class:`TraceFormatError` naming ``file:line``, and so does a duplicate id; a
        file without any trace raises :class:`TraceFormatError` naming the file. A response or
        prompt longer than ``max_response_chars`` (default :func:`response_limit`: 2M
        characters) raises :class:`ResponseTooLargeError` naming ``file:line`` and both sizes.
        Custom behaviour labels (not in :data:`BEHAVIORS`, not close to one) are kept and named
        with their span counts in one :class:`CustomBehaviorWarning`; traces with an empty response
        are kept and counted in one :class:`EmptyResponseWarning`."""
        import warnings

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"trace file {path} does not exist")
        limit = response_limit(max_response_chars)
        traces = []
        first_line: dict[str, str] = {}
        for _, where, d in iter_jsonl(path, TraceFormatError):
            resp, prompt = d.get("response"), d.get("prompt")
            check_response_size(
                where, resp if isinstance(resp, str) else "", prompt if isinstance(prompt, str) else "", limit=limit
            )
            t = ReasoningTrace.from_dict(d, where=where)
            if t.id in first_line:
                raise TraceFormatError(f"{where}: duplicate trace id {t.id!r} (first at {first_line[t.id]})")
            first_line[t.id] = where
            traces.append(t)
        if not traces:
            raise TraceFormatError(f"{path}: no traces (the file is empty or holds only blank lines)")
        empty = [f"{first_line[t.id]} ({t.id!r})" for t in traces if not t.response.strip()]
        if empty:  # counted, never loaded without a word
            warnings.warn(empty_response_note(path, empty), EmptyResponseWarning, stacklevel=user_stacklevel())
        ds = cls(traces, name=name if name is not None else path.stem)
        note = ds.custom_behavior_summary(path)
        if note is not None:
            warnings.warn(note, CustomBehaviorWarning, stacklevel=user_stacklevel())
        return ds

    def check_sizes(self, max_response_chars: int | None = None) -> ReasoningDataset:
        """``self`` after checking every trace's response and prompt against the size limit
        (:class:`ResponseTooLargeError` naming the trace)."""
        limit = response_limit(max_response_chars)
        for t in self.traces:
            check_response_size(f"trace {t.id!r}", t.response, t.prompt, limit=limit)
        return self
