"""Annotate a whole set of model outputs: read them, run an annotator, account for everything.

- :func:`load_outputs`: the benchmark harness's outputs — a paper-layout folder
  (``outputs/<task>/<j>.txt``, prompts rebuilt from ``problems/`` when present; an
  ``annotated/`` folder is ignored) or a JSONL file of ``{"prompt", "response"}`` records
  (``id`` optional: ``line<n>`` by default; ``spans`` ignored).
  Responses over the size limit (:func:`~lrm_interp.data.traces.response_limit`, 2M characters
  by default) and files that are not UTF-8 are refused up front, naming the file (and line).
- :func:`annotate_dataset`: runs an annotator over every trace (threads for LLM clients),
  takes the offsets of an annotator that labels the text's own sentences directly (rules,
  trained: :func:`~lrm_interp.data.annotators.base.sentence_segments`) or sends its markup
  through :func:`lrm_interp.data.paper_layout.annotate_trace` (LLMs), and returns an
  :class:`AnnotationRun`: the annotated dataset, the :class:`~lrm_interp.data.paper_layout.ParseReport`,
  and counts (traces annotated / from cache / failed, requests, retries, tokens, seconds).
  A trace whose annotator raises is recorded as failed and the run goes on — except when the
  endpoint is gone (:class:`~lrm_interp.endpoint.EndpointUnreachable`): then the run stops and
  re-raises it, the partial run attached (``error.run``), instead of failing every remaining
  trace in turn.
- The per-trace cache (``cache_dir``): one JSON file per finished trace, keyed by the
  annotator's fingerprint and the thinking text, written atomically as soon as the trace is
  done — a killed or failed run, rerun with the same cache, skips what was finished.
  Cache files hold the markup and counts, never a URL or key. Each entry carries a digest over
  its payload (``entry_sha256``, :func:`_entry_digest`); an entry that fails it, is not readable,
  is another entry's copy, holds a span past the thinking text, or was written without a digest
  (format ``lrm_interp.annotation_cache/1``) is stale: the trace is annotated again, the entry
  rewritten, and the run counts and names it (``stats["cache_stale"]``, :meth:`AnnotationRun.summary`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lrm_interp._io import (
    ANNOTATION_CACHE_KIND,
    atomic_write_text,
    iter_jsonl,
    lone_surrogate,
    refuse_other_result_folder,
    refuse_result_file,
)
from lrm_interp.checks import checked_arguments, shown_value
from lrm_interp.data.annotators.base import (
    Annotator,
    SentenceLabeller,
    segments_report,
    sentence_segments,
    thinking_part,
)
from lrm_interp.data.loading import check_layout_files
from lrm_interp.data.paper_layout import FileReport, ParseReport, annotate_trace
from lrm_interp.data.traces import (
    MAX_RESPONSE_ENV,
    ReasoningDataset,
    ReasoningTrace,
    TraceFormatError,
    check_response_size,
    response_limit,
)
from lrm_interp.endpoint import EndpointUnreachable

#: /2: every entry carries ``entry_sha256`` (:func:`_entry_digest`); a /1 entry (no digest) is stale
CACHE_FORMAT = "lrm_interp.annotation_cache/2"
#: the cache entries of earlier versions: written without a digest, annotated again (the cache only saves work)
OLD_CACHE_FORMATS = ("lrm_interp.annotation_cache/1",)
#: the kind of the per-trace cache folder for the result checks (``_io.finished_result`` knows it by
#: its entries): every other result folder (and the shipped assets, an attribution's ``partial/``) is
#: refused as ``cache_dir``, and every other writer refuses a cache folder (H27-CACHEIN)
ANNOTATION_CACHE = ANNOTATION_CACHE_KIND
#: Report note of a response without ``</think>`` (its whole text was annotated as thinking).
NO_THINK_END_NOTE = "no </think> in the response: the whole response was annotated as its thinking part"


@checked_arguments
def load_outputs(
    path: str | os.PathLike, *, progress: bool = False, max_response_chars: int | None = None
) -> ReasoningDataset:
    """Model outputs without annotation: a paper-layout folder or a JSONL of prompt/response records.

    Errors name the file and line (JSONL) or the folder. A response (or prompt) longer than
    ``max_response_chars`` (default :func:`~lrm_interp.data.traces.response_limit`: 2M characters,
    or ``$LRM_INTERP_MAX_RESPONSE_CHARS``) raises
    :class:`~lrm_interp.data.traces.ResponseTooLargeError` naming the file (and line) and both
    sizes, before anything is annotated; so does a file that is not valid UTF-8, and (as
    :class:`~lrm_interp.data.traces.TraceFormatError`) a JSONL record whose strings hold a lone
    surrogate (:func:`unencodable_text`).
    """
    limit = response_limit(max_response_chars)
    p = Path(path)
    if p.is_dir():
        if not (p / "outputs").is_dir():
            raise FileNotFoundError(
                f"{p}: no outputs/ folder (expected the paper layout outputs/<task>/<j>.txt "
                "or a JSONL file of prompt/response records)"
            )
        from lrm_interp.data.paper_layout import load_paper_layout

        check_layout_files(p, max_response_chars=limit)
        # load without annotations: point the loader at the outputs only
        ds = load_paper_layout(p, progress=progress, keep_unannotated=True)
        traces = [
            ReasoningTrace(
                t.id,
                t.prompt,
                t.response,
                (),
                {k: v for k, v in t.metadata.items() if k not in ("annotation_status", "annotation_file")},
            )
            for t in ds
        ]
        return ReasoningDataset(traces, name=p.name).check_sizes(limit)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or folder")
    traces = []
    seen: set[str] = set()
    for lineno, where, d in iter_jsonl(p, TraceFormatError):
        resp = d.get("response", d.get("output", d.get("completion")))
        if not isinstance(resp, str):
            raise TraceFormatError(f"{where}: no string 'response' (or 'output' / 'completion') key; keys: {sorted(d)}")
        prompt = d.get("prompt")
        check_response_size(where, resp, prompt if isinstance(prompt, str) else "", limit=limit)
        bad = unencodable_text(d)
        if bad:
            raise TraceFormatError(f"{where}: {bad}")
        tid = str(d.get("id", f"line{lineno}"))
        if tid in seen:
            raise TraceFormatError(f"{where}: duplicate id {tid!r}")
        seen.add(tid)
        meta = dict(d.get("metadata") or {})
        meta.update(
            {
                k: v
                for k, v in d.items()
                if k not in ("id", "prompt", "response", "output", "completion", "spans", "metadata")
            }
        )
        traces.append(ReasoningTrace(tid, str(d.get("prompt") or ""), resp, (), meta))
    return ReasoningDataset(traces, name=p.stem)


#: why a decoded JSON value cannot be written back as UTF-8 (a lone surrogate escape), or ``None``:
#: :func:`lrm_interp._io.lone_surrogate` (kept under this name for the driver's callers)
unencodable_text = lone_surrogate


@dataclass
class AnnotationRun:
    """Result of :func:`annotate_dataset`. ``stats``: counts and timing; ``failures``:
    ``{trace id: error message}`` (those traces are kept without spans, status ``failed``)."""

    dataset: ReasoningDataset
    report: ParseReport
    stats: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    annotator: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able: annotator (no secrets), stats, failures, the parse report."""
        return {"annotator": self.annotator, "stats": self.stats, "failures": self.failures, **self.report.to_dict()}

    @checked_arguments
    def save_report(self, path: str | os.PathLike, *, own: str | None = None) -> Path:
        """The run's report as JSON (atomic write). A ``path`` that is a file of another command's finished
        result is refused first (:func:`lrm_interp._io.refuse_result_file`, H9-PYW); ``own``: the kind
        of result whose own file this is."""
        refuse_result_file(path, own=own)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return Path(path)

    def summary(self) -> str:
        s = self.stats
        head = (
            f"{s.get('traces', 0)} traces: {s.get('annotated', 0)} annotated, {s.get('cached', 0)} from cache, "
            f"{s.get('failed', 0)} failed ({s.get('seconds', 0):.1f} s)"
        )
        if s.get("requests"):
            head += (
                f"; {s['requests']} requests ({s.get('retries', 0)} retries), "
                f"{s.get('prompt_tokens', 0)} prompt + {s.get('completion_tokens', 0)} completion tokens"
            )
        if s.get("skipped_empty"):
            head += f"; {s['skipped_empty']} skipped (empty response)"
        if s.get("skipped_too_large"):
            head += f"; {s['skipped_too_large']} skipped (response over the size limit)"
        if s.get("without_think_end"):
            head += f"; {s['without_think_end']} without </think> (whole response annotated)"
        if s.get("stopped"):
            head += f"; the run stopped ({s['stopped']})"
        lines = [head, self.report.summary()]
        if s.get("cache_stale"):
            n, files = s["cache_stale"], s.get("cache_stale_files") or {}
            lines.append(
                f"  {n} cache {'entry' if n == 1 else 'entries'} in {s.get('cache_dir', '--cache')} "
                f"{'was' if n == 1 else 'were'} stale or corrupt, re-annotated and rewritten:"
            )
            lines += [f"    {p}: {why}" for p, why in list(files.items())[:10]]
            if len(files) > 10:
                lines.append(f"    ... and {len(files) - 10} more (the report's stats list them all)")
        lines += [f"  {tid}: annotator failed: {msg}" for tid, msg in list(self.failures.items())[:10]]
        return "\n".join(lines)


def describe_annotator(annotator: Annotator) -> dict[str, Any]:
    """What results may record about an annotator (its ``describe()``, else its class name)."""
    if hasattr(annotator, "describe"):
        return dict(annotator.describe())
    return {"name": type(annotator).__name__}


def annotator_fingerprint(annotator: Annotator) -> str:
    """Cache key part for the annotator: its ``fingerprint()`` when it has one, else its description."""
    if hasattr(annotator, "fingerprint"):
        return str(annotator.fingerprint())
    payload = json.dumps(describe_annotator(annotator), sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=12).hexdigest()


def _cache_key(fp: str, thinking: str) -> str:
    return hashlib.blake2b((fp + "\0" + thinking).encode("utf-8"), digest_size=16).hexdigest()


def _usage_of(annotator: Annotator) -> dict[str, int] | None:
    client = getattr(annotator, "complete", None)
    usage = getattr(client, "usage", None)
    return usage.snapshot() if usage is not None and hasattr(usage, "snapshot") else None


def _entry_digest(entry: dict) -> str:
    """SHA-256 of a cache entry's payload: every field but ``entry_sha256`` itself (format, key,
    trace id, annotator, chunks, markup or segments), as canonical JSON."""
    body = {k: v for k, v in entry.items() if k != "entry_sha256"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _read_cache(path: Path, key: str, thinking: str) -> tuple[dict | None, str | None]:
    """The cache entry at ``path`` for ``key`` and why it is not used: ``(entry, None)`` when sound,
    ``(None, reason)`` when stale or corrupt (the trace is annotated again and the entry rewritten).

    An entry is sound when it is readable JSON of this :data:`CACHE_FORMAT`, its ``key`` is this
    file's, its ``entry_sha256`` matches its payload, and it holds markup or ``(label, start, end)``
    segments inside the thinking text ``thinking`` (no segment twice)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable / half-written by another tool
        return None, f"not readable JSON ({type(e).__name__})"
    if not isinstance(d, dict):
        return None, f"not a JSON object (a {type(d).__name__})"
    fmt = d.get("format")
    if fmt in OLD_CACHE_FORMATS:
        return None, f"written without a digest (format {fmt})"
    if fmt != CACHE_FORMAT:
        return None, f"format {shown_value(fmt)}, not {CACHE_FORMAT}"
    if d.get("key") != key:
        return None, f"its key {shown_value(d.get('key'))} is not this file's (copied from another entry?)"
    if d.get("entry_sha256") != _entry_digest(d):
        return None, "its contents do not match its digest (edited or corrupt)"
    chunks = d.get("chunks", 1)
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        return None, f"chunks {shown_value(chunks)} is not a positive integer"
    if isinstance(d.get("markup"), str):
        return d, None
    segs = d.get("segments")
    if not isinstance(segs, list) or not all(
        isinstance(x, list)
        and len(x) == 3
        and isinstance(x[0], str)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in x[1:])
        for x in segs
    ):
        return None, "no markup and no list of [label, start, end] segments"
    seen: set[tuple[str, int, int]] = set()
    for label, a, b in segs:
        if not 0 <= a <= b <= len(thinking):
            return None, f"span {label} [{a},{b}) runs past the thinking text ({len(thinking)} chars)"
        if (label, a, b) in seen:
            return None, f"span {label} [{a},{b}) is listed twice"
        seen.add((label, a, b))
    return d, None


def _refuse_entries_not_files(cache: Path, fp: str, traces: Sequence[ReasoningTrace]) -> None:
    """``ValueError`` naming the cache folder and the entry, before any trace is annotated, when a
    trace's cache entry ``cache/<key>.json`` is there but is not a file (a folder, a link to one):
    annotate writes that file, so the run failed after its work with "a folder: never replaced by a
    file; choose a file path", a path the user never chose (H24-CACHEDIR)."""
    for t in traces:
        path = cache / f"{_cache_key(fp, thinking_part(t.response))}.json"
        if (path.exists() or path.is_symlink()) and not (path.is_file() and not path.is_symlink()):
            what = "a folder" if path.is_dir() else "a link" if path.is_symlink() else "not a regular file"
            raise ValueError(
                f"cache_dir (--cache) {cache}: the cache entry of trace {t.id!r}, {path}, is {what}, not a file "
                "annotate wrote: remove it, or use another cache folder"
            )


@checked_arguments
def annotate_dataset(
    traces: ReasoningDataset | Sequence[ReasoningTrace],
    annotator: Annotator,
    *,
    workers: int = 1,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_response_chars: int | None = None,
) -> AnnotationRun:
    """Annotate every trace's thinking part with ``annotator`` and place the markup on its response.

    Args:
        traces: the outputs (:func:`load_outputs`); existing spans are replaced.
        annotator: any :class:`~lrm_interp.data.annotators.base.Annotator`.
        workers: traces annotated at the same time (threads; for LLM endpoints).
        cache_dir: per-trace cache folder (created); finished traces are skipped on a rerun. A stale
            or corrupt entry (:func:`_read_cache`: edited, unreadable, no digest) is annotated again
            and rewritten, counted in ``stats["cache_stale"]`` (``stats["cache_stale_files"]``:
            ``{cache file: why}``) and named by :meth:`AnnotationRun.summary`.
        progress: a tqdm bar over traces.
        max_response_chars: the largest response annotated, in characters (default
            :func:`~lrm_interp.data.traces.response_limit`: 2M, or ``$LRM_INTERP_MAX_RESPONSE_CHARS``).
            A longer one is not annotated: kept without spans (status ``rejected``, the reason
            names both sizes), counted in ``stats["skipped_too_large"]``.

    An empty response is kept without spans and counted (``skipped_empty``); a response without
    ``</think>`` is annotated whole and counted (``without_think_end``). A trace whose annotation
    raises is kept without spans (metadata ``annotation_status``: ``failed``) and listed in
    ``failures``; the others are unaffected.

    Raises:
        EndpointUnreachable: the annotator's endpoint went away (its client gave it up, see
            :class:`lrm_interp.endpoint.EndpointClient`). The run stops at once: no further trace
            is started, traces not yet started are cancelled. The exception's ``run`` attribute is
            the partial :class:`AnnotationRun` (finished traces annotated, and in the cache; the
            others failed without spans, ``stats["stopped"]`` the reason); rerun with the same
            cache once the endpoint is up.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {shown_value(workers)}")
    limit = response_limit(max_response_chars)
    name = getattr(traces, "name", "")
    traces = list(traces)
    too_large = {
        t.id: f"response of {len(t.response):,} characters exceeds the limit of {limit:,} characters "
        f"(max_response_chars / ${MAX_RESPONSE_ENV}): not annotated"
        for t in traces
        if len(t.response) > limit
    }
    fp = annotator_fingerprint(annotator)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:  # never into another command's result, the shipped assets or a partial/ (H10-R27)
        refuse_other_result_folder(cache, ANNOTATION_CACHE, "cache_dir")
        cache.mkdir(parents=True, exist_ok=True)
        _refuse_entries_not_files(cache, fp, [t for t in traces if t.id not in too_large])
    usage0 = _usage_of(annotator)
    t0 = time.monotonic()

    direct = isinstance(annotator, SentenceLabeller)
    # id -> (markup text or [(label, start, end), ...], error, cached, chunks)
    results: dict[str, tuple[Any, str | None, bool, int]] = {}

    gone = threading.Event()  # set by the first EndpointUnreachable: no trace starts a request after it
    stale: dict[str, str] = {}  # cache file -> why it was not used (the trace is annotated again)
    stale_lock = threading.Lock()

    def work(t: ReasoningTrace) -> tuple[str, Any, str | None, bool, int]:
        if t.id in too_large:
            return t.id, None, None, False, 0
        thinking = thinking_part(t.response)
        key = _cache_key(fp, thinking)
        path = cache / f"{key}.json" if cache is not None else None
        if path is not None and path.exists():
            d, why = _read_cache(path, key, thinking)
            if d is not None:
                payload = d["markup"] if isinstance(d.get("markup"), str) else [tuple(x) for x in d["segments"]]
                return t.id, payload, None, True, int(d.get("chunks", 1))
            with stale_lock:  # annotated again below, the entry rewritten; counted once per file
                stale.setdefault(str(path), str(why))
        if gone.is_set():  # another worker found the endpoint gone: this trace is not started
            raise CancelledError()
        try:
            if direct:
                payload, n_chunks = sentence_segments(t.response, annotator), 1  # type: ignore[arg-type]  # direct: a SentenceLabeller (isinstance above)
            elif hasattr(annotator, "annotate_chunks"):
                parts = annotator.annotate_chunks(thinking)
                payload = "\n".join(m.strip() for m in parts)
                n_chunks = len(parts)
            else:
                payload, n_chunks = annotator.annotate(thinking), 1
        except EndpointUnreachable:
            gone.set()
            raise  # the endpoint is gone: every later trace would fail the same way, the run stops
        except Exception as e:  # noqa: BLE001 - recorded per trace, the run goes on
            return t.id, None, f"{type(e).__name__}: {' '.join(str(e).split())}", False, 0
        if path is not None:
            body = {"markup": payload} if isinstance(payload, str) else {"segments": [list(x) for x in payload]}
            entry = {"format": CACHE_FORMAT, "key": key, "trace_id": t.id, "annotator": fp, "chunks": n_chunks, **body}
            entry["entry_sha256"] = _entry_digest(entry)
            atomic_write_text(path, json.dumps(entry, ensure_ascii=False))
        return t.id, payload, None, False, n_chunks

    stop: EndpointUnreachable | None = None
    bar = tqdm(total=len(traces), desc="annotate traces", disable=not progress)
    try:
        if workers == 1:
            for t in traces:
                try:
                    tid, *rest = work(t)
                except EndpointUnreachable as e:
                    stop = e
                    break
                results[tid] = tuple(rest)
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                futs = [ex.submit(work, t) for t in traces]
                for fut in as_completed(futs):
                    try:
                        tid, *rest = fut.result()
                    except CancelledError:
                        continue
                    except EndpointUnreachable as e:
                        if stop is None:  # cancel what has not started; running traces fail at once
                            stop = e
                            for f in futs:
                                f.cancel()
                        continue
                    results[tid] = tuple(rest)
                    bar.update()
    finally:
        bar.close()
    stopped = f"{type(stop).__name__}: {' '.join(str(stop).split())}" if stop is not None else None

    out, files, failures = [], [], {}
    skipped: dict[str, str] = {}
    no_close: list[str] = []
    n_cached = n_chunks_total = 0
    for t in traces:
        # a trace without a result: the run stopped (endpoint unreachable) before it was annotated
        text, err, cached, n_chunks = results.get(t.id, (None, None if t.id in too_large else stopped, False, 0))
        n_cached += cached
        n_chunks_total += n_chunks
        ds_name = str(t.metadata.get("dataset", ""))
        index = str(t.metadata.get("index", t.id))
        if t.id in too_large:
            skipped[t.id] = too_large[t.id]
            out.append(ReasoningTrace(t.id, t.prompt, t.response, (), {**t.metadata, "annotation_status": "rejected"}))
            files.append(FileReport(ds_name, index, None, t.id, "rejected", skipped[t.id]))
            continue
        if err is not None:
            failures[t.id] = err
            out.append(ReasoningTrace(t.id, t.prompt, t.response, (), {**t.metadata, "annotation_status": "failed"}))
            files.append(FileReport(ds_name, index, None, t.id, "rejected", f"annotator failed: {err}"))
            continue
        if not thinking_part(t.response).strip():
            skipped[t.id] = "empty response (no thinking text to annotate)"
            out.append(ReasoningTrace(t.id, t.prompt, t.response, (), {**t.metadata, "annotation_status": "rejected"}))
            files.append(FileReport(ds_name, index, None, t.id, "rejected", skipped[t.id]))
            continue
        if isinstance(text, str):
            trace, rep = annotate_trace(t, text, source=t.id)
        else:
            spans, rep = segments_report(t.response, text, source=t.id, dataset=ds_name, index=index)
            trace = ReasoningTrace(
                t.id, t.prompt, t.response, tuple(spans), {**t.metadata, "annotation_status": "parsed"}
            )
        if "</think>" not in t.response:
            no_close.append(t.id)
            rep = replace(rep, notes=tuple(rep.notes) + (NO_THINK_END_NOTE,))
        out.append(trace)
        files.append(
            FileReport(
                ds_name, index, rep.annotation, t.id, rep.status, rep.reason, rep.repairs, rep.notes, rep.segments
            )
        )
    stats: dict[str, Any] = {
        "traces": len(traces),
        "annotated": len(traces) - n_cached - len(failures) - len(skipped),
        "cached": n_cached,
        "failed": len(failures),
        "skipped_empty": len(skipped) - len(too_large),
        "skipped_too_large": len(too_large),
        "without_think_end": len(no_close),
        "chunks": n_chunks_total,
        "seconds": round(time.monotonic() - t0, 3),
        "workers": workers,
    }
    if cache is not None:  # stale / corrupt entries: annotated again and rewritten, never silently
        stats["cache_dir"] = str(cache)
        stats["cache_stale"] = len(stale)
        if stale:
            stats["cache_stale_files"] = dict(sorted(stale.items()))
    if stopped is not None:
        stats["stopped"] = stopped
    usage1 = _usage_of(annotator)
    if usage0 is not None and usage1 is not None:
        stats.update({k: usage1[k] - usage0[k] for k in usage1})
    report = ParseReport(tuple(files))
    ds = ReasoningDataset(out, name=name, report=report)
    run = AnnotationRun(ds, report, stats, failures, describe_annotator(annotator))
    if stop is not None:
        stop.run = run  # type: ignore[attr-defined]  # what was annotated before the endpoint went away
        raise stop
    return run


__all__ = [
    "load_outputs",
    "annotate_dataset",
    "AnnotationRun",
    "describe_annotator",
    "annotator_fingerprint",
    "unencodable_text",
    "CACHE_FORMAT",
]
