"""Annotate a whole set of model outputs: read them, run an annotator, account for everything.

- :func:`load_outputs`: the benchmark harness's outputs — a paper-layout folder
  (``outputs/<task>/<j>.txt``, prompts rebuilt from ``problems/`` when present; an
  ``annotated/`` folder is ignored) or a JSONL file of ``{"prompt", "response"}`` records
  (``id`` optional: ``line<n>`` by default; ``spans`` ignored).
- :func:`annotate_dataset`: runs an annotator over every trace (threads for LLM clients),
  takes the offsets of an annotator that labels the text's own sentences directly (rules,
  trained: :func:`~lrm_interp.data.annotators.base.sentence_segments`) or sends its markup
  through :func:`lrm_interp.data.paper_layout.annotate_trace` (LLMs), and returns an
  :class:`AnnotationRun`: the annotated dataset, the :class:`~lrm_interp.data.paper_layout.ParseReport`,
  and counts (traces annotated / from cache / failed, requests, retries, tokens, seconds).
- The per-trace cache (``cache_dir``): one JSON file per finished trace, keyed by the
  annotator's fingerprint and the thinking text, written atomically as soon as the trace is
  done — a killed or failed run, rerun with the same cache, skips what was finished.
  Cache files hold the markup and counts, never a URL or key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from lrm_interp._io import iter_jsonl, atomic_write_text
from lrm_interp.data.annotators.base import Annotator, SentenceLabeller, segments_report, sentence_segments, thinking_part
from lrm_interp.data.paper_layout import FileReport, ParseReport, annotate_trace
from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace, TraceFormatError

CACHE_FORMAT = "lrm_interp.annotation_cache/1"
#: Report note of a response without ``</think>`` (its whole text was annotated as thinking).
NO_THINK_END_NOTE = "no </think> in the response: the whole response was annotated as its thinking part"


def load_outputs(path: str | os.PathLike, *, progress: bool = False) -> ReasoningDataset:
    """Model outputs without annotation: a paper-layout folder or a JSONL of prompt/response records.

    Errors name the file and line (JSONL) or the folder.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / "outputs").is_dir():
            raise FileNotFoundError(f"{p}: no outputs/ folder (expected the paper layout outputs/<task>/<j>.txt "
                                    "or a JSONL file of prompt/response records)")
        from lrm_interp.data.paper_layout import load_paper_layout

        # load without annotations: point the loader at the outputs only
        ds = load_paper_layout(p, progress=progress)
        traces = [ReasoningTrace(t.id, t.prompt, t.response, (),
                                 {k: v for k, v in t.metadata.items()
                                  if k not in ("annotation_status", "annotation_file")})
                  for t in ds]
        return ReasoningDataset(traces, name=p.name)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file or folder")
    traces = []
    seen: set[str] = set()
    for lineno, where, d in iter_jsonl(p, TraceFormatError):
        resp = d.get("response", d.get("output", d.get("completion")))
        if not isinstance(resp, str):
            raise TraceFormatError(f"{where}: no string 'response' (or 'output' / 'completion') key; "
                                   f"keys: {sorted(d)}")
        tid = str(d.get("id", f"line{lineno}"))
        if tid in seen:
            raise TraceFormatError(f"{where}: duplicate id {tid!r}")
        seen.add(tid)
        meta = dict(d.get("metadata") or {})
        meta.update({k: v for k, v in d.items()
                     if k not in ("id", "prompt", "response", "output", "completion", "spans", "metadata")})
        traces.append(ReasoningTrace(tid, str(d.get("prompt") or ""), resp, (), meta))
    return ReasoningDataset(traces, name=p.stem)


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
        return {"annotator": self.annotator, "stats": self.stats, "failures": self.failures,
                **self.report.to_dict()}

    def save_report(self, path: str | os.PathLike) -> Path:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return Path(path)

    def summary(self) -> str:
        s = self.stats
        head = (f"{s.get('traces', 0)} traces: {s.get('annotated', 0)} annotated, {s.get('cached', 0)} from cache, "
                f"{s.get('failed', 0)} failed ({s.get('seconds', 0):.1f} s)")
        if s.get("requests"):
            head += (f"; {s['requests']} requests ({s.get('retries', 0)} retries), "
                     f"{s.get('prompt_tokens', 0)} prompt + {s.get('completion_tokens', 0)} completion tokens")
        if s.get("skipped_empty"):
            head += f"; {s['skipped_empty']} skipped (empty response)"
        if s.get("without_think_end"):
            head += f"; {s['without_think_end']} without </think> (whole response annotated)"
        lines = [head, self.report.summary()]
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


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable / half-written by another tool: annotate again
    if d.get("format") != CACHE_FORMAT or d.get("key") != key:
        return None
    if isinstance(d.get("markup"), str):
        return d
    segs = d.get("segments")
    if isinstance(segs, list) and all(isinstance(x, list) and len(x) == 3 and isinstance(x[0], str)
                                      and all(isinstance(v, int) for v in x[1:]) for x in segs):
        return d
    return None


def annotate_dataset(traces: ReasoningDataset | Sequence[ReasoningTrace], annotator: Annotator, *, workers: int = 1,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> AnnotationRun:
    """Annotate every trace's thinking part with ``annotator`` and place the markup on its response.

    Args:
        traces: the outputs (:func:`load_outputs`); existing spans are replaced.
        annotator: any :class:`~lrm_interp.data.annotators.base.Annotator`.
        workers: traces annotated at the same time (threads; for LLM endpoints).
        cache_dir: per-trace cache folder (created); finished traces are skipped on a rerun.
        progress: a tqdm bar over traces.

    A trace whose annotation raises is kept without spans (metadata ``annotation_status``:
    ``failed``) and listed in ``failures``; the others are unaffected.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    name = getattr(traces, "name", "")
    traces = list(traces)
    fp = annotator_fingerprint(annotator)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    usage0 = _usage_of(annotator)
    t0 = time.monotonic()

    direct = isinstance(annotator, SentenceLabeller)
    # id -> (markup text or [(label, start, end), ...], error, cached, chunks)
    results: dict[str, tuple[Any, str | None, bool, int]] = {}

    def work(t: ReasoningTrace) -> tuple[str, Any, str | None, bool, int]:
        thinking = thinking_part(t.response)
        key = _cache_key(fp, thinking)
        path = cache / f"{key}.json" if cache is not None else None
        if path is not None and path.exists():
            d = _read_cache(path, key)
            if d is not None:
                payload = d["markup"] if isinstance(d.get("markup"), str) else [tuple(x) for x in d["segments"]]
                return t.id, payload, None, True, int(d.get("chunks", 1))
        try:
            if direct:
                payload, n_chunks = sentence_segments(t.response, annotator), 1  # type: ignore[arg-type]
            elif hasattr(annotator, "annotate_chunks"):
                parts = annotator.annotate_chunks(thinking)
                payload = "\n".join(m.strip() for m in parts)
                n_chunks = len(parts)
            else:
                payload, n_chunks = annotator.annotate(thinking), 1
        except Exception as e:  # noqa: BLE001 - recorded per trace, the run goes on
            return t.id, None, f"{type(e).__name__}: {' '.join(str(e).split())}", False, 0
        if path is not None:
            body = {"markup": payload} if isinstance(payload, str) else {"segments": [list(x) for x in payload]}
            atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "key": key, "trace_id": t.id,
                                                "annotator": fp, "chunks": n_chunks, **body}, ensure_ascii=False))
        return t.id, payload, None, False, n_chunks

    bar = tqdm(total=len(traces), desc="annotate traces", disable=not progress)
    try:
        if workers == 1:
            for t in traces:
                tid, *rest = work(t)
                results[tid] = tuple(rest)  # type: ignore[assignment]
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                futs = [ex.submit(work, t) for t in traces]
                for fut in as_completed(futs):
                    tid, *rest = fut.result()
                    results[tid] = tuple(rest)  # type: ignore[assignment]
                    bar.update()
    finally:
        bar.close()

    out, files, failures = [], [], {}
    skipped: dict[str, str] = {}
    no_close: list[str] = []
    n_cached = n_chunks_total = 0
    for t in traces:
        text, err, cached, n_chunks = results[t.id]
        n_cached += cached
        n_chunks_total += n_chunks
        ds_name = str(t.metadata.get("dataset", ""))
        index = str(t.metadata.get("index", t.id))
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
            trace = ReasoningTrace(t.id, t.prompt, t.response, tuple(spans), {**t.metadata, "annotation_status": "parsed"})
        if "</think>" not in t.response:
            no_close.append(t.id)
            rep = replace(rep, notes=tuple(rep.notes) + (NO_THINK_END_NOTE,))
        out.append(trace)
        files.append(FileReport(ds_name, index, rep.annotation, t.id, rep.status, rep.reason, rep.repairs, rep.notes,
                                rep.segments))
    stats: dict[str, Any] = {"traces": len(traces),
                             "annotated": len(traces) - n_cached - len(failures) - len(skipped),
                             "cached": n_cached, "failed": len(failures), "skipped_empty": len(skipped),
                             "without_think_end": len(no_close), "chunks": n_chunks_total,
                             "seconds": round(time.monotonic() - t0, 3), "workers": workers}
    usage1 = _usage_of(annotator)
    if usage0 is not None and usage1 is not None:
        stats.update({k: usage1[k] - usage0[k] for k in usage1})
    report = ParseReport(tuple(files))
    ds = ReasoningDataset(out, name=name, report=report)
    return AnnotationRun(ds, report, stats, failures, describe_annotator(annotator))


__all__ = ["load_outputs", "annotate_dataset", "AnnotationRun", "describe_annotator", "annotator_fingerprint",
           "CACHE_FORMAT"]
