"""Does the annotator matter downstream? Site scores with reference spans vs an annotator's spans.

Everything the library concludes is computed over behaviour spans, so an annotator is good enough
when the attribution it leads to is the one the reference labels lead to. For one model and one
set of reference traces (e.g. GPT-4o's labels on real R1-Distill responses) this experiment:

1. annotates the reference traces' responses with each annotator (its spans replace the reference
   spans; the text is the same) — or takes another annotation file of the same responses, or
   (``"trained-cv"``) refits the trained annotator's recipe on the reference with grouped k-fold
   cross-validation and annotates each trace with the fold model that did not see it;
2. attributes the model (:func:`lrm_interp.attribute`, exact mode with the prefix cache by
   default) once with the reference spans and once with each annotator's spans, on the same
   traces, cut to ``max_tokens`` (default: the model's context; the cut traces are counted);
3. reports, per behaviour, the Spearman correlation of the site scores with the reference's and
   the overlap of the top-``k`` sites (plus the character F1 of the spans, for context);
4. measures a **noise floor**: the traces with reference spans are split at random (seeded,
   stratified by dataset) into two halves; half A keeps the reference spans of its traces only,
   half B those of the others (every trace stays in both runs, so D− is the same) and the same
   two statistics are computed between the two. It says how far the scores move when the same
   labeller labels other traces, at half the data each: an annotator at or above it changes the
   scores no more than resampling the traces does. Several seeds give several splits (rows per
   seed and their mean); each split has its own two attributions, so a new seed reuses the rest.

:func:`annotation_downstream` returns an :class:`AnnotationDownstream` (frozen: settings, one
:class:`DownstreamRow` per source and behaviour, provenance; ``to_dataframe()``, ``to_markdown()``,
``save``/``load`` as JSON). With ``out_dir`` the run is resumable: each attribution lives in its
own folder (``reference/``, ``annotator-<name>/``, ``half-a/``, ``half-b/``: the attribution
result, ``scores.csv``, the spans used as ``traces.jsonl``, and ``variant.json``, the content key
it was computed for); a rerun loads every attribution whose key still matches and resumes the
others from their per-trace partials (a changed annotator recomputes its own folder only).
``settings.json`` refuses a folder of another run; ``result.json``, ``table.md`` and ``table.csv``
are written at the end. All writes are atomic. Command line: ``lrm-interp annotate agree --gold
REF --downstream MODEL``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lrm_interp import __version__
from lrm_interp._io import atomic_write_text, refuse_result_file
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.pipeline import attribute
from lrm_interp.attribution.results import Attribution
from lrm_interp.attribution.resume import read_json_object, trace_ids_fingerprint
from lrm_interp.attribution.stats import spearman
from lrm_interp.checks import check_int, check_seed, checked_arguments, shown_value, user_stacklevel
from lrm_interp.data.annotate import (
    ANNOTATOR_NAMES,
    DEFAULT_ANNOTATOR,
    annotate_dataset,
    annotation_agreement,
    build_annotator,
)
from lrm_interp.data.annotators.agreement import REGIONS
from lrm_interp.data.annotators.driver import annotator_fingerprint, describe_annotator
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.traces import TARGET_BEHAVIORS, BehaviorSpan, ReasoningDataset, ReasoningTrace
from lrm_interp.model.forward import context_limit
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import model_provenance
from lrm_interp.model.sites import resolve_sites

FORMAT = "lrm_interp.annotation_downstream/1"
#: the ``source`` of the noise-floor rows
NOISE_FLOOR = "noise floor"
#: what happens to traces longer than the cut: ``cut`` (attribute their first tokens) or ``skip``
LONG = ("cut", "skip")
#: the annotator name for the trained annotator cross-validated on the reference itself
CV_ANNOTATOR = "trained-cv"
#: folds of :data:`CV_ANNOTATOR` and the seed of their assignment
CV_FOLDS = 5
CV_SEED = 0
RESULT_FILE = "result.json"


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class DownstreamRow:
    """One behaviour of one source compared with the reference.

    ``spearman``: Spearman ρ of the site scores (``None`` when one side has no span of the
    behaviour: its scores are all 0). ``overlap``: sites among the top ``top_k`` of both
    (``None`` likewise; for the mean over the noise floor's seeds, a mean). ``ref_spans`` /
    ``spans``: spans of the behaviour that entered the attribution (after the cut) on the
    reference side (half A for the noise floor) and on this source's side (half B).
    ``char_f1``: character F1 of the source's spans against the reference over the whole
    responses (:func:`~lrm_interp.data.annotate.annotation_agreement`; ``None`` for the noise
    floor).
    """

    source: str
    behavior: str
    spearman: float | None
    overlap: float | None
    top_k: int
    ref_spans: int
    spans: int
    char_f1: float | None = None
    note: str = ""


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _ov(x: float | None, k: int) -> str:
    if x is None:
        return "–"
    return f"{int(x)}/{k}" if float(x).is_integer() else f"{x:.1f}/{k}"


@dataclass(frozen=True)
class AnnotationDownstream:
    """Result of :func:`annotation_downstream` (see the module docs).

    ``settings``: what was asked (model, annotators, top-k, cut, seed, behaviours, region,
    attribution settings). ``rows``: one :class:`DownstreamRow` per source (each annotator, then
    :data:`NOISE_FLOOR`) and behaviour. ``provenance``: model fingerprints, the reference
    (traces, ids and content fingerprints, span counts), each annotator (description,
    fingerprint, span counts, annotation stats), the two halves, the cut traces, seconds and
    resume state per attribution.
    """

    settings: dict[str, Any]
    rows: tuple[DownstreamRow, ...]
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r.source for r in self.rows))

    @property
    def behaviors(self) -> list[str]:
        return list(dict.fromkeys(r.behavior for r in self.rows))

    def row(self, source: str, behavior: str) -> DownstreamRow:
        for r in self.rows:
            if r.source == source and r.behavior == behavior:
                return r
        raise KeyError(f"no row ({source!r}, {behavior!r}); sources {self.sources}, behaviours {self.behaviors}")

    def to_dataframe(self):
        """One row per (source, behaviour): spearman, overlap, top_k, span counts, char F1, note."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])

    def to_markdown(self) -> str:
        """The per-behaviour table (one column pair per source), with a one-line header."""
        s, k = self.settings, self.settings.get("top_k", 10)
        cut = self.provenance.get("cut") or {}
        skipped = f", {cut['n_skipped']} longer ones left out" if cut.get("n_skipped") else ""
        head = (
            f"{s.get('model')}: {self.provenance.get('reference', {}).get('n_traces', '?')} traces of "
            f"{s.get('reference')}, cut at {cut.get('limit')} tokens ({cut.get('n_cut', 0)} cut{skipped}); "
            f"attribution {s.get('attribution', {}).get('mode')}; Spearman ρ of the site scores vs the "
            "reference spans / "
            f"top-{k} sites in common; noise floor: two halves of the reference spans (seeds "
            f"{', '.join(str(x) for x in s.get('seeds', []))})."
        )
        srcs = self.sources
        lines = [
            head,
            "",
            "| behaviour | " + " | ".join(f"{x} ρ | {x} top-{k}" for x in srcs) + " |",
            "|---|" + "---|---|" * len(srcs),
        ]
        for b in self.behaviors:
            cells = []
            for x in srcs:
                r = self.row(x, b)
                cells += [_fmt(r.spearman), _ov(r.overlap, k)]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        notes = [f"- {r.source}, {r.behavior}: {r.note}" for r in self.rows if r.note]
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def format(self) -> str:
        """A fixed-width table: one line per behaviour and source."""
        k = self.settings.get("top_k", 10)
        w = max([len(x) for x in self.sources] + [12])
        lines = [
            f"{'behaviour':24s} {'source':{w}s} {'Spearman':>8s} {'top-' + str(k):>7s} {'ref spans':>9s} "
            f"{'spans':>6s} {'char F1':>7s}"
        ]
        for b in self.behaviors:
            for x in self.sources:
                r = self.row(x, b)
                ov = _ov(r.overlap, k)
                lines.append(
                    f"{b:24s} {x:{w}s} {_fmt(r.spearman, '8.3f'):>8s} {ov:>7s} {r.ref_spans:9d} "
                    f"{r.spans:6d} {_fmt(r.char_f1, '7.3f'):>7s}" + (f"  ({r.note})" if r.note else "")
                )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"AnnotationDownstream({self.settings.get('model')}, sources {self.sources}, "
            f"{len(self.behaviors)} behaviours)"
        )

    def _repr_html_(self) -> str:
        from lrm_interp.display import box, html_table

        k = self.settings.get("top_k", 10)
        rows = [
            [
                r.behavior,
                r.source,
                _fmt(r.spearman, ".3f"),
                _ov(r.overlap, k),
                str(r.ref_spans),
                str(r.spans),
                _fmt(r.char_f1, ".3f"),
                r.note,
            ]
            for r in self.rows
        ]
        return box(
            repr(self),
            html_table(["behaviour", "source", "Spearman", f"top-{k}", "ref spans", "spans", "char F1", "note"], rows),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "provenance": self.provenance,
        }

    @checked_arguments
    def save(self, path: str | Path, *, own: str | None = None) -> Path:
        """Write the result as one JSON file (atomically); a folder gets ``result.json`` inside.
        A ``path`` that is a file of another command's finished
        result is refused first (:func:`lrm_interp._io.refuse_result_file`, H9-PYW); ``own``: the kind
        of result whose own file this is."""
        p = Path(path)
        if p.is_dir():
            p = p / RESULT_FILE
        refuse_result_file(p, own=own)
        atomic_write_text(p, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return p

    @classmethod
    @checked_arguments
    def load(cls, path: str | Path) -> AnnotationDownstream:
        p = Path(path)
        if p.is_dir():
            p = p / RESULT_FILE
        d = read_json_object(p, "give the result.json of an 'annotate agree --downstream' run")
        if d.get("format") != FORMAT:
            raise ValueError(
                f"{p}: not an annotation-downstream result (format {d.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(d["settings"], tuple(DownstreamRow(**r) for r in d["rows"]), d.get("provenance", {}))


# --------------------------------------------------------------------------- helpers
def _content_fingerprint(ds: Sequence[ReasoningTrace]) -> str:
    """One fingerprint of the traces' ids, texts and spans, in order."""
    h = hashlib.blake2b(digest_size=16)
    for t in ds:
        h.update(f"{t.id}\0{t.fingerprint()}\n".encode())
    return h.hexdigest()


def _covered(spans: Sequence[BehaviorSpan]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s in sorted(spans, key=lambda s: s.start):
        if out and s.start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s.end)
        elif s.end > s.start:
            out.append([s.start, s.end])
    return [(a, b) for a, b in out]


def clip_to_reference(pred: ReasoningTrace, ref: ReasoningTrace) -> ReasoningTrace:
    """``pred`` with its spans cut to the characters ``ref`` labels at all (``region="gold"``):
    text the reference left unlabelled is "not annotated", not "no behaviour"."""
    region = _covered(ref.spans)
    out = []
    for s in pred.spans:
        for a, b in region:
            lo, hi = max(s.start, a), min(s.end, b)
            if lo < hi:
                out.append(BehaviorSpan(s.behavior, lo, hi))
    return pred.with_spans(out)


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> int:
    """Sites among the ``k`` highest scores of both ``a`` and ``b`` (ties broken by site order)."""
    ta = set(torch.argsort(-torch.as_tensor(a, dtype=torch.float64), stable=True)[:k].tolist())
    tb = set(torch.argsort(-torch.as_tensor(b, dtype=torch.float64), stable=True)[:k].tolist())
    return len(ta & tb)


def split_halves(ds: Sequence[ReasoningTrace], behaviors: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """Two halves of the traces that hold a span of ``behaviors``: shuffled (``seed``) within each
    dataset (``metadata["dataset"]``, else the id's prefix before ``/``) and dealt alternately, so
    both halves get about as many traces of each dataset."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    for t in ds:
        if any(s.behavior in behaviors for s in t.spans):
            key = str(t.metadata.get("dataset") or (t.id.split("/", 1)[0] if "/" in t.id else ""))
            groups.setdefault(key, []).append(t.id)
    a: list[str] = []
    b: list[str] = []
    turn = 0
    for key in sorted(groups):
        ids = groups[key]
        rng.shuffle(ids)
        for tid in ids:
            (a if turn % 2 == 0 else b).append(tid)
            turn += 1
    return a, b


def _keep_spans(ds: ReasoningDataset, ids: set[str], name: str) -> ReasoningDataset:
    return ReasoningDataset([t if t.id in ids else t.with_spans(()) for t in ds], name=name)


def _slug(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)[:40]
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def _dataset_of(t: ReasoningTrace) -> str:
    return str(t.metadata.get("dataset") or (t.id.split("/", 1)[0] if "/" in t.id else ""))


def _by_datasets(ds: ReasoningDataset, datasets: Sequence[str] | None) -> ReasoningDataset:
    if not datasets:
        return ds
    want = {d.lower() for d in datasets}
    have = sorted({_dataset_of(t) for t in ds})
    unknown = sorted(want - {h.lower() for h in have})
    if unknown:
        raise ValueError(f"datasets {unknown} are not in the reference (it holds {have})")
    return ds.filter(lambda t: _dataset_of(t).lower() in want)


def _first_per_dataset(ds: ReasoningDataset, n: int | None) -> ReasoningDataset:
    if n is None:
        return ds
    seen: dict[str, int] = {}
    keep = []
    for t in ds:
        k = _dataset_of(t)
        seen[k] = seen.get(k, 0) + 1
        if seen[k] <= n:
            keep.append(t)
    return ReasoningDataset(keep, name=ds.name)


class _Source:
    """One annotator to compare: a name and how it gets its spans (an annotator, a dataset, or the
    trained annotator cross-validated on the reference: ``cv``)."""

    def __init__(self, name: str, annotator: Any = None, dataset: ReasoningDataset | None = None, cv: bool = False):
        self.name, self.annotator, self.dataset, self.cv = name, annotator, dataset, cv

    def describe(self) -> dict[str, Any]:
        if self.cv:
            return {
                "kind": "cross-validated",
                "folds": CV_FOLDS,
                "fit": _cv_fit_settings(self.annotator),
                "fallback": {
                    **describe_annotator(self.annotator),
                    "fingerprint": annotator_fingerprint(self.annotator),
                },
            }
        if self.annotator is not None:
            return {
                "kind": "annotator",
                **describe_annotator(self.annotator),
                "fingerprint": annotator_fingerprint(self.annotator),
            }
        return {"kind": "annotation", "name": getattr(self.dataset, "name", "")}


def _sources(annotators: Sequence[Any] | Mapping[str, Any]) -> list[_Source]:
    """Check and build every annotator before any model is loaded (unknown names raise here)."""
    items = list(annotators.items()) if isinstance(annotators, Mapping) else [(None, a) for a in annotators]
    if not items:
        raise ValueError("annotators must name at least one annotator")
    out: list[_Source] = []
    for name, a in items:
        if isinstance(a, str):
            if a == CV_ANNOTATOR:
                out.append(_Source(name or a, annotator=build_annotator("trained"), cv=True))
                continue
            if a == "llm":
                raise ValueError(
                    "annotator 'llm' needs an endpoint: annotate the reference outputs with "
                    "'lrm-interp annotate --annotator llm' and pass the file as an annotation"
                )
            ann = build_annotator(a)  # an unknown name raises ValueError naming it and the known ones
            out.append(_Source(name or a, annotator=ann))
        elif isinstance(a, (ReasoningDataset, list, tuple)) or hasattr(a, "__fspath__"):
            ds = load_dataset(a) if not isinstance(a, ReasoningDataset) else a
            out.append(_Source(name or str(getattr(a, "name", "") or a), dataset=ds))
        elif hasattr(a, "annotate") or hasattr(a, "label_sentences"):
            out.append(_Source(name or type(a).__name__, annotator=a))
        else:
            raise TypeError(
                f"annotator {a!r}: give a name ({', '.join(ANNOTATOR_NAMES)}), a trained annotator file, "
                "an annotator object or an annotated dataset"
            )
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"annotator names must be unique, got {dup} twice")
    reserved = sorted({NOISE_FLOOR, "reference", "half A", "half B"} & set(names))
    if reserved:
        raise ValueError(
            f"{reserved[0]!r} is a reserved name (the reference, the noise floor and its halves); "
            "name the annotator otherwise"
        )
    return out


def _cv_fit_settings(shipped: Any) -> dict[str, Any]:
    """The shipped annotator's fit settings (its recipe), for the cross-validated refits."""
    info = getattr(shipped, "info", {}) or {}
    return {k: info[k] for k in ("l2", "steps", "class_balance") if k in info}


def _cross_validated(
    src: _Source, ref: ReasoningDataset, full: ReasoningDataset, *, progress: bool
) -> tuple[ReasoningDataset, dict[str, Any]]:
    """Every trace annotated by a :class:`LinearAnnotator` fitted with the shipped recipe on the
    other folds of ``full`` (grouped by trace; traces without reference spans, which no fit uses,
    by the shipped annotator)."""
    from lrm_interp.data.annotate import cross_validate

    fit = _cv_fit_settings(src.annotator)
    cv = cross_validate(full, folds=CV_FOLDS, seed=CV_SEED, progress=progress, **fit)
    oof = {t.id: t for t in cv["predicted"]}
    rest = [t for t in ref if t.id not in oof]
    if rest:
        run = annotate_dataset(ReasoningDataset([t.with_spans(()) for t in rest]), src.annotator, progress=False)
        oof.update({t.id: t for t in run.dataset})
    ds = ReasoningDataset([t.with_spans(oof[t.id].spans) for t in ref], name=src.name)
    return ds, {"folds": CV_FOLDS, "fitted_on": cv["traces"], "by_shipped_annotator": [t.id for t in rest]}


def _spans_of(
    src: _Source, ref: ReasoningDataset, *, progress: bool, full: ReasoningDataset | None = None
) -> tuple[ReasoningDataset, dict[str, Any]]:
    """The reference traces with ``src``'s spans instead of the reference's (same ids, same text)."""
    if src.cv:
        return _cross_validated(src, ref, full if full is not None else ref, progress=progress)
    if src.dataset is not None:
        by_id = {t.id: t for t in src.dataset}
        missing = [t.id for t in ref if t.id not in by_id]
        if missing:
            raise ValueError(
                f"annotation {src.name}: {len(missing)} reference traces are missing (first: "
                f"{missing[0]!r}); annotate the same outputs as the reference"
            )
        for t in ref:
            if by_id[t.id].response != t.response:
                raise ValueError(f"trace {t.id!r}: the response differs between the reference and {src.name}")
        return ReasoningDataset([t.with_spans(by_id[t.id].spans) for t in ref], name=src.name), {}
    stripped = ReasoningDataset([t.with_spans(()) for t in ref], name=ref.name)
    run = annotate_dataset(stripped, src.annotator, progress=progress)
    if run.failures:
        tid, msg = next(iter(run.failures.items()))
        raise RuntimeError(
            f"annotator {src.name}: {len(run.failures)} of {len(ref)} traces failed (first: {tid}: {msg})"
        )
    by_id = {t.id: t for t in run.dataset}
    ds = ReasoningDataset([t.with_spans(by_id[t.id].spans) for t in ref], name=src.name)
    return ds, {k: v for k, v in run.stats.items() if isinstance(v, (int, float, str))}


class UnscoredTracesWarning(UserWarning):
    """An annotation given to :func:`annotation_downstream` holds traces that are not in the
    reference: not scored, counted (``provenance["annotators"][name]["not_in_reference"]``)."""


def unscored_note(n: int, first: str, what: str = "the annotation", reference: str = "the reference") -> str:
    """The one line that counts traces of an annotation not in the reference (as ``annotate agree``)."""
    return f"{n} trace{'s' * (n != 1)} of {what} not in {reference}, not scored (first: {first!r})"


def _not_in_reference(sources: Sequence[_Source], full: ReasoningDataset) -> dict[str, list[str]]:
    """``{annotation name: ids of its traces that are not in the reference}`` for the annotations
    given as datasets (before any selection: a trace of another ``datasets`` is in the reference),
    with one :class:`UnscoredTracesWarning` each."""
    import warnings

    ids = {t.id for t in full}
    out: dict[str, list[str]] = {}
    for s in sources:
        if s.dataset is None:
            continue
        extra = [t.id for t in s.dataset if t.id not in ids]
        if extra:
            out[s.name] = extra
            warnings.warn(
                f"annotation {s.name}: " + unscored_note(len(extra), extra[0]),
                UnscoredTracesWarning,
                stacklevel=user_stacklevel(),
            )
    return out


# --------------------------------------------------------------------------- the run
@checked_arguments
def annotation_downstream(
    model: Any,
    reference: Any,
    annotators: Sequence[Any] | Mapping[str, Any] = (DEFAULT_ANNOTATOR,),
    *,
    out_dir: str | Path | None = None,
    top_k: int = 10,
    max_tokens: int | None = None,
    seed: int | Sequence[int] = 0,
    behaviors: Sequence[str] | None = None,
    region: str = "all",
    datasets: Sequence[str] | None = None,
    long: str = "cut",
    per_dataset: int | None = None,
    max_traces: int | None = None,
    tokenizer: Any = None,
    model_name: str | None = None,
    progress: bool = True,
    **attribution_options: Any,
) -> AnnotationDownstream:
    """Site scores with the reference spans vs each annotator's spans, per behaviour (module docs).

    Args:
        model: an HF causal LM object, a local model folder or an alias (``"smollm2-135m"``).
        reference: the reference traces with spans (dataset, JSONL file, paper-layout folder),
            e.g. GPT-4o's labels in ``../shared/data/r1_gpt4o_dev``.
        annotators: names (``"trained"``, ``"rules"``, ``"keyword"``; ``"trained-cv"``: the shipped
            annotator's recipe refitted 5-fold on the reference itself, grouped by trace, each trace
            annotated by the fold that did not see it — the honest figure when the shipped annotator
            was fitted on these very traces, as on ``r1_gpt4o_dev``) or trained annotator files,
            annotator objects, or annotated datasets / files of the same responses; a mapping
            ``{name: any of these}`` names them.
        out_dir: state folder (resumable; see the module docs); ``None``: nothing is written.
        top_k: the top sites compared (default 10).
        max_tokens: cut every trace to its first ``max_tokens`` tokens (spans past the cut are
            dropped, on every side alike); default: the model's context. Cut traces are counted
            in ``provenance["cut"]``.
        seed: the random split of the noise floor; several seeds: one split each (rows per seed
            and their mean).
        behaviors: the behaviours compared (default: the four target behaviours); each must
            have reference spans.
        region: ``"all"``: the annotators' spans as they are; ``"gold"``: clipped to the
            characters the reference labels at all (text it left unlabelled is ignored).
        datasets: keep only the reference traces of these datasets (``metadata["dataset"]``,
            case-insensitive).
        long: traces longer than the cut (``max_tokens``, else the model's context): ``"cut"``
            (default: their first tokens are attributed) or ``"skip"`` (left out, listed in
            ``provenance["cut"]["skipped"]``).
        per_dataset: then keep the first N traces of each dataset (in the reference's order);
        max_traces: then only the first N traces.
        tokenizer: needed when ``model`` is an object without a tokenizer of its own.
        model_name: the model's name in the settings (default: ``model`` when it is a string,
            else its config's ``_name_or_path``).
        attribution_options: :class:`~lrm_interp.attribution.config.AttributionConfig` fields
            (default ``mode="exact"`` with the prefix cache, the library default).

    Traces of an annotation (a dataset or file) whose id is not in the reference are not scored:
    counted in ``provenance["annotators"][name]["not_in_reference"]`` with one
    :class:`UnscoredTracesWarning`; reference traces missing from an annotation are refused.

    Raises:
        ValueError: bad settings, an unknown annotator, a behaviour without reference spans, a
            state folder of another run — before the model is loaded or anything is written.
    """
    top_k = check_int("top_k", top_k, min=1)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    seeds = [check_seed("seed", x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seed must be one seed or a list of distinct seeds, got {seed!r}")
    max_traces = check_int("max_traces", max_traces, min=1, optional=True)
    per_dataset = check_int("per_dataset", per_dataset, min=1, optional=True)
    if long not in LONG:
        raise ValueError(f"long must be one of {LONG}, got {long!r}")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    behaviors = tuple(behaviors) if behaviors is not None else tuple(TARGET_BEHAVIORS)
    cfg = AttributionConfig(
        **{
            "mode": "exact",
            "overlong": "truncate",
            **attribution_options,
            "behaviors": behaviors,
            "max_tokens": max_tokens,
        }
    )
    if cfg.method != "attribution":
        raise ValueError("the downstream comparison scores attribution patching (method='attribution')")
    ref_path = None if isinstance(reference, (ReasoningDataset, list, tuple)) else str(reference)
    ref = load_dataset(reference) if not isinstance(reference, ReasoningDataset) else reference
    full = ref
    ref = _by_datasets(ref, datasets)
    if len(ref) == 0:
        raise ValueError("the reference has no traces" + (" in the datasets asked for" if datasets else ""))
    _check_spans(ref, behaviors, ref_path or ref.name, " of those datasets" if datasets else "")
    sources = _sources(annotators)
    not_in_reference = _not_in_reference(sources, full)  # counted and warned about, never dropped silently
    if model_name is None:
        model_name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
    settings = {
        "model": str(model_name),
        "reference": ref_path or ref.name,
        "annotators": [s.name for s in sources],
        "top_k": top_k,
        "max_tokens": max_tokens,
        "seeds": seeds,
        "behaviors": list(behaviors),
        "region": region,
        "datasets": list(datasets) if datasets else None,
        "long": long,
        "per_dataset": per_dataset,
        "max_traces": max_traces,
        "attribution": cfg.to_dict(),
    }
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None and (out / "settings.json").exists():
        _check_state(out, settings, ref)  # another run's folder is refused before the model loads

    model, tokenizer = load_model(model, tokenizer=tokenizer)
    model.eval()
    n_sites = len(resolve_sites(model, cfg.sites))
    if top_k > n_sites:
        raise ValueError(f"top_k {top_k} exceeds the model's {n_sites} sites")
    prov = model_provenance(model, tokenizer)
    state = {
        "format": FORMAT,
        "settings": settings,
        "weights_fingerprint": prov["weights_fingerprint"],
        "tokenizer_fingerprint": (prov.get("tokenizer") or {}).get("fingerprint"),
        "reference_ids": trace_ids_fingerprint([t.id for t in ref]),
    }
    if out is not None:
        _check_state(out, settings, ref, state)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "settings.json", json.dumps(state, indent=1, ensure_ascii=False))

    ref, cut = _cut_traces(ref, tokenizer, model, max_tokens, long)
    ref = _first_per_dataset(ref, per_dataset)
    if max_traces is not None:
        ref = ref[:max_traces]
    cut["traces"] = {tid: n for tid, n in cut["traces"].items() if tid in {t.id for t in ref}}
    cut["n_cut"] = len(cut["traces"])
    if len(ref) == 0:
        raise ValueError(f"no trace is left: every one is longer than {cut['limit']} tokens (long='skip')")
    _check_spans(ref, behaviors, ref_path or ref.name, f" in the {len(ref)} traces selected")
    lengths = cut.pop("lengths")
    cut["tokens_total"] = sum(lengths[t.id] for t in ref)
    cut["tokens_kept"] = sum(min(lengths[t.id], cut["limit"] or lengths[t.id]) for t in ref)
    variants: list[tuple[str, str, Any]] = [("reference", "reference", None)]
    variants += [(s.name, f"annotator-{_slug(s.name)}", s) for s in sources]
    halves = {x: split_halves(ref, behaviors, x) for x in seeds}
    for x, (half_a, half_b) in halves.items():
        if half_a and half_b:
            variants += [(f"half A s{x}", f"half-a-s{x}", set(half_a)), (f"half B s{x}", f"half-b-s{x}", set(half_b))]
    results: dict[str, Attribution] = {}
    datasets_used: dict[str, ReasoningDataset] = {}
    runs: dict[str, dict[str, Any]] = {}
    ann_info: dict[str, dict[str, Any]] = {}
    for label, folder, what in tqdm(variants, desc="attributions", unit="run", disable=not progress):
        t0 = time.time()
        if what is None:
            ds = ReasoningDataset(list(ref), name="reference")
        elif isinstance(what, _Source):
            ds, stats = _spans_of(what, ref, progress=progress, full=full)
            if region == "gold":
                ds = ReasoningDataset([clip_to_reference(p, r) for p, r in zip(ds, ref)], name=ds.name)
            ann_info[what.name] = {
                **what.describe(),
                "span_counts": ds.span_counts(),
                "annotation": stats,
                "folder": folder,
            }
            if what.name in not_in_reference:
                extra = not_in_reference[what.name]
                ann_info[what.name]["not_in_reference"] = {"n": len(extra), "first": extra[:5]}
        else:
            ds = _keep_spans(ref, what, folder)
        datasets_used[label] = ds
        res, run = _attribute_variant(
            model, tokenizer, ds, cfg, state, out / folder if out is not None else None, progress=progress
        )
        run["seconds"] = round(time.time() - t0, 1)
        results[label], runs[label] = res, run
        if progress:
            tqdm.write(f"{label}: {run['how']} in {run['seconds']:.0f} s")

    rows: list[DownstreamRow] = []
    ref_res = results["reference"]
    for s in sources:
        agr = annotation_agreement(ref, datasets_used[s.name], region=region)
        for b in behaviors:
            f1 = agr.get(b, {}).get("f1")
            rows.append(_compare(s.name, b, ref_res, results[s.name], top_k, None if f1 is None else float(f1)))
    rows += _noise_floor(results, behaviors, seeds, top_k)
    provenance = {
        "lrm_interp": __version__,
        "model": ref_res.provenance.get("model", prov),
        "gradient_path": ref_res.provenance.get("gradient_path"),
        "n_sites": n_sites,
        "reference": {
            "name": ref_path or ref.name,
            "n_traces": len(ref),
            "ids_fingerprint": trace_ids_fingerprint([t.id for t in ref]),
            "content_fingerprint": _content_fingerprint(ref),
            "span_counts": ref.span_counts(),
            "datasets": sorted({_dataset_of(t) for t in ref}),
        },
        "annotators": ann_info,
        "halves": {str(x): {"a": a, "b": b} for x, (a, b) in halves.items()},
        "cut": cut,
        "attributions": runs,
        "out_dir": str(out) if out is not None else None,
    }
    result = AnnotationDownstream(settings, tuple(rows), provenance)
    if out is not None:
        result.save(out / RESULT_FILE, own="annotate downstream")  # its own record (a rerun replaces it)
        atomic_write_text(out / "table.md", result.to_markdown())
        atomic_write_text(out / "table.csv", result.to_dataframe().to_csv(index=False))
    return result


def _check_state(
    out: Path, settings: dict[str, Any], ref: ReasoningDataset, state: dict[str, Any] | None = None
) -> None:
    """Refuse a state folder written by another run (other settings, model, tokenizer or traces)."""
    p = out / "settings.json"
    if not p.exists():
        if out.is_dir() and any(out.iterdir()):
            clash = [f for f in (RESULT_FILE, "reference", "table.md") if (out / f).exists()]
            if clash:
                raise ValueError(
                    f"{out} holds {', '.join(clash)} but no settings.json: not a folder this run can "
                    "resume; choose another out_dir"
                )
        return
    have = read_json_object(p, f"delete {out} or choose another out_dir")  # a readable object, naming p (H10-JSN)
    if have.get("format") != FORMAT:
        raise ValueError(
            f"{out} is not an annotation-downstream state folder ({p} has format "
            f"{have.get('format')!r}); choose another out_dir"
        )
    if not isinstance(have.get("settings"), dict):
        raise ValueError(
            f"{p}: settings is {shown_value(have.get('settings'))}, not an object of settings: the file was "
            f"edited or is corrupt; delete {out} or choose another out_dir"
        )
    # each seed of the noise floor has its own folders: another seed reuses everything else
    from lrm_interp.attribution.resume import settings_difference

    hs = {k: v for k, v in have.get("settings", {}).items() if k not in ("seed", "seeds")}
    ws = {k: v for k, v in settings.items() if k not in ("seed", "seeds")}
    diff = [settings_difference(hs, ws)] if hs != ws else []  # each with both values (H29-EXHINT)
    if have.get("reference_ids") != trace_ids_fingerprint([t.id for t in ref]):
        diff.append("reference traces")
    if state is not None:
        for k, what in (("weights_fingerprint", "model weights"), ("tokenizer_fingerprint", "tokenizer")):
            if have.get(k) != state.get(k):
                diff.append(what)
    if diff:
        raise ValueError(
            f"{out} holds another downstream run (differs in {', '.join(diff)}); choose another "
            "out_dir (--out) or delete it"
        )


def _check_spans(ref: ReasoningDataset, behaviors: Sequence[str], name: str, where: str) -> None:
    counts = ref.span_counts()
    if not any(counts.values()):
        raise ValueError(f"the reference {name!r} has no behaviour spans{where}")
    for b in behaviors:
        if not counts.get(b):
            raise ValueError(
                f"the reference {name!r} has no {b!r} spans{where} (labels there: {ref.behaviors()}): "
                "nothing to compare; choose behaviours it labels (--behaviors)"
            )


def _cut_traces(
    ref: ReasoningDataset, tokenizer: Any, model: Any, max_tokens: int | None, long: str
) -> tuple[ReasoningDataset, dict[str, Any]]:
    """Which traces the attribution cuts (longer than ``max_tokens`` or, without it, the context);
    with ``long="skip"`` they are left out instead. ``(traces kept, record)``."""
    limit, where = context_limit(model)
    if max_tokens is None or (limit is not None and max_tokens > limit):
        lim, by = limit, (f"the model's context ({where})" if limit is not None else "nothing")
    else:
        lim, by = max_tokens, "max_tokens"
    lengths = {t.id: len(tokenizer(t.text)["input_ids"]) for t in ref}
    over = {tid: n for tid, n in lengths.items() if lim is not None and n > lim}
    skipped: dict[str, int] = {}
    if long == "skip" and over:
        skipped, over = over, {}
        ref = ReasoningDataset([t for t in ref if t.id not in skipped], name=ref.name)
    return ref, {
        "limit": lim,
        "by": by,
        "long": long,
        "n_cut": len(over),
        "traces": over,
        "n_skipped": len(skipped),
        "skipped": skipped,
        "lengths": lengths,
    }


def _attribute_variant(
    model: Any,
    tokenizer: Any,
    ds: ReasoningDataset,
    cfg: AttributionConfig,
    state: dict[str, Any],
    folder: Path | None,
    *,
    progress: bool,
) -> tuple[Attribution, dict[str, Any]]:
    """One attribution: loaded from ``folder`` when its ``variant.json`` matches, else computed there
    (resuming from its per-trace partials)."""
    key = {
        "format": FORMAT,
        "attribution": cfg.to_dict(),
        "weights_fingerprint": state["weights_fingerprint"],
        "tokenizer_fingerprint": state["tokenizer_fingerprint"],
        "traces": _content_fingerprint(ds),
        "n_traces": len(ds),
    }
    if folder is not None and (folder / "variant.json").exists() and (folder / "attribution.json").exists():
        try:
            have = json.loads((folder / "variant.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            have = None
        if have == key:
            res = Attribution.load(folder)
            return res, {"how": "loaded", "folder": str(folder), "counts": res.provenance.get("counts")}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "variant.json").exists():
            (folder / "variant.json").unlink()  # stale until this attribution is finished
        # not this variant's (key differs or unrecorded): its finished attribution is stale too; without
        # it the run resumes from the partials (unchanged traces reused, edited ones recomputed, H21-ATTDATA)
        for name in ("attribution.json", "attribution.safetensors"):
            (folder / name).unlink(missing_ok=True)
        ds.save_jsonl(folder / "traces.jsonl")
    import warnings

    with warnings.catch_warnings():  # spans cut off by max_tokens are counted in provenance, not warned per run
        warnings.simplefilter("ignore")
        res = attribute(model, ds, config=cfg, tokenizer=tokenizer, out_dir=folder, progress=progress)
    if folder is not None:
        atomic_write_text(folder / "scores.csv", res.to_dataframe().to_csv(index=False))
        atomic_write_text(folder / "variant.json", json.dumps(key, indent=1))
    resumed = res.provenance.get("resume") or {}
    return res, {
        "how": "computed",
        "folder": str(folder) if folder is not None else None,
        "resume": resumed,
        "counts": res.provenance.get("counts"),
    }


def spearman_brown(rho: float, factor: float = 2.0) -> float:
    """Reliability of a measurement ``factor`` times as long, from the reliability ``rho`` of one.

    The noise floor correlates scores computed on two *halves* of the reference's traces; the
    annotators are compared on *all* of them. Spearman–Brown, ``factor·ρ / (1 + (factor − 1)·ρ)``,
    estimates what two independent full-size label sets would agree at (an approximation: the
    site scores are absolute values of sums over spans, not plain sums). ``rho`` in [-1, 1].
    """
    if not -1.0 <= rho <= 1.0 or factor <= 0:
        raise ValueError(f"spearman_brown needs rho in [-1, 1] and factor > 0, got rho={rho}, factor={factor}")
    den = 1.0 + (factor - 1.0) * rho
    return factor * rho / den if den > 0 else -1.0


def _noise_floor(
    results: dict[str, Attribution], behaviors: Sequence[str], seeds: Sequence[int], k: int
) -> list[DownstreamRow]:
    """The noise-floor rows: one per behaviour (one seed), or per seed and behaviour plus their mean."""
    per: dict[int, list[DownstreamRow]] = {}
    name = (lambda x: NOISE_FLOOR) if len(seeds) == 1 else (lambda x: f"{NOISE_FLOOR} s{x}")
    for x in seeds:
        a, b = results.get(f"half A s{x}"), results.get(f"half B s{x}")
        if a is None or b is None:
            per[x] = [
                DownstreamRow(name(x), beh, None, None, k, 0, 0, None, "fewer than 2 traces with spans: no split")
                for beh in behaviors
            ]
        else:
            per[x] = [_compare(name(x), beh, a, b, k, None, sides=("half A", "half B")) for beh in behaviors]
    if len(seeds) == 1:
        return [
            replace(r, note=f"full-size estimate (Spearman–Brown) ρ ≈ {spearman_brown(r.spearman):.2f}")
            if r.spearman is not None
            else r
            for r in per[seeds[0]]
        ]
    rows = []
    for i, beh in enumerate(behaviors):
        got = [per[x][i] for x in seeds if per[x][i].spearman is not None]
        rhos = [float(r.spearman) for r in got if r.spearman is not None]  # all of them (filtered above)
        rho = round(sum(rhos) / len(rhos), 6) if rhos else None
        ovs = [float(r.overlap) for r in got if r.overlap is not None]
        ov = round(sum(ovs) / len(ovs), 3) if ovs else None
        lo, hi = (min(rhos), max(rhos)) if rhos else (0.0, 0.0)
        spread = (
            f"mean of {len(got)} splits; ρ {lo:.2f}..{hi:.2f}; full-size estimate (Spearman–Brown) "
            f"ρ ≈ {spearman_brown(rho):.2f}"
            if got and rho is not None
            else "no split has spans of it on both sides"
        )
        rows.append(
            DownstreamRow(
                NOISE_FLOOR,
                beh,
                rho,
                ov,
                k,
                round(sum(r.ref_spans for r in got) / max(len(got), 1)),
                round(sum(r.spans for r in got) / max(len(got), 1)),
                None,
                spread,
            )
        )
    return rows + [r for x in seeds for r in per[x]]


def _compare(
    source: str,
    behavior: str,
    ref: Attribution,
    other: Attribution,
    k: int,
    char_f1: float | None,
    *,
    sides: tuple[str, str] = ("reference", "annotator"),
) -> DownstreamRow:
    if [s.name for s in ref.sites] != [s.name for s in other.sites]:
        raise ValueError(f"{source}: the two attributions score different sites")
    n_ref = int(((ref.provenance.get("counts") or {}).get("spans") or {}).get(behavior, 0))
    n = int(((other.provenance.get("counts") or {}).get("spans") or {}).get(behavior, 0))
    zero = torch.zeros(len(ref.sites), dtype=torch.float64)  # a behaviour left out of a result: no usable span
    a = ref.scores[ref.behaviors.index(behavior)] if behavior in ref.behaviors else zero
    b = other.scores[other.behaviors.index(behavior)] if behavior in other.behaviors else zero
    empty = [side for side, x in zip(sides, (a, b)) if not bool((x != 0).any())]
    if empty:
        return DownstreamRow(
            source,
            behavior,
            None,
            None,
            k,
            n_ref,
            n,
            char_f1,
            f"no scored {behavior} span on the {' and '.join(empty)} side",
        )
    rho = spearman(a, b)
    return DownstreamRow(
        source, behavior, None if math.isnan(rho) else round(rho, 6), top_overlap(a, b, k), k, n_ref, n, char_f1
    )


__all__ = [
    "annotation_downstream",
    "AnnotationDownstream",
    "DownstreamRow",
    "NOISE_FLOOR",
    "CV_ANNOTATOR",
    "FORMAT",
    "split_halves",
    "spearman_brown",
    "top_overlap",
    "clip_to_reference",
    "RESULT_FILE",
    "UnscoredTracesWarning",
]
