"""``lrm-interp study``: the quickstart's pipeline on any model and traces, as one resumable run.

attribute → protection masks and a mixed-precision allocation → compressed variants → accuracy
(benchmark tasks given) or KL (no tasks) with intervals → importance shift. This module computes
and saves; :mod:`lrm_interp.experiments.report` presents (text summary, ``report.html``).

Every variant is planned by :class:`~lrm_interp.experiments.protection.ProtectionPlanner` on one
RTN grid (``bits``, ``group_size``, ``symmetric``) — the rows of the protection experiment that
compare protection at **matched bits per weight**:

=================  ===================================================================
``fp``             the model itself
``uniform``        plain ``bits``-bit RTN: the reference, below the matched budget
``magnitude``      ``budget`` (2 %) of the weights kept in FP16, largest ``|W|``
``attribution``    ``budget`` of the weights kept in FP16, behaviour-span attribution ×
                   module relative importance (``attribution_ri``: the masks file)
``mixed``          bits per module (2/3/4/8/16) by attribution relative importance, under
                   the bits per weight of the ``magnitude`` row
                   (:func:`lrm_interp.protect.bit_allocation.allocate_bits`)
=================  ===================================================================

The three last spend the same extra bits per weight over ``uniform`` (the masks' index
encodings differ by a few thousandths; every row states its exact bits per weight).

Measured per row: with ``tasks`` (:mod:`lrm_interp.data.benchmarks`), greedy answers to
``per_task`` problems of each task graded by the task's grader, accuracy with a Wilson 95 %
interval (:func:`lrm_interp.evaluation.intervals.wilson_interval`) — generated in
:func:`generation_order` (full precision by prompt length, the compressed rows by the
full-precision answers' lengths), so each batch's sequences end about together: a third less
decoding on the toy (an item's answer does not depend on its batch, up to float rounding); without tasks,
KL(full precision ‖ variant) per response token on the traces
(:func:`lrm_interp.evaluation.divergence.divergence`, one trace at a time) with a percentile
bootstrap interval over traces (:func:`bootstrap_interval`).

The folder ``out``::

    study.json             settings, fingerprints (weights, tokenizer, traces), the rows so far
    outcomes.safetensors   per row: each item's outcome (correct 0/1, or KL and tokens per trace)
    attribution_<dtype>/   attribute() of the model (scores.csv, heatmap.png; resumes per trace)
    ranking.csv            sites ranked per behaviour
    masks.safetensors/json the attribution masks (``lrm_interp.protect.load_masks``)
    bits.json              the mixed-precision allocation (``BitAllocation.load``)
    attribution_rtn<b>/    attribute() of the uniform copy;  shift.csv, shift.png
    results.csv            :meth:`StudyResult.to_dataframe`
    traces.jsonl           the traces, when they were given in memory

``study.json`` and ``outcomes.safetensors`` are rewritten after every row: a killed run resumes
at the next row (attribution resumes per trace). A folder holding another study (other settings,
weights, tokenizer or traces) is refused before anything is loaded or written, unless
``overwrite=True``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from lrm_interp._io import (
    STUDY_FILES,
    atomic_write_text,
    path_argument,
    read_safetensors,
    refuse_file_as_folder,
    refuse_other_result_folder,
    shell_command,
    write_safetensors,
)
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.pipeline import SKIP_MEMORY_CHECK_ENV, attribute, attribution_sites
from lrm_interp.attribution.results import Attribution, ImportanceShift, comparability, compare
from lrm_interp.attribution.resume import result_identity_sha256
from lrm_interp.checks import check_fraction, check_int, check_seed, checked_arguments, env_flag, shown_value
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.data.benchmarks import find_task_file, get_task, load, task_names
from lrm_interp.data.benchmarks.items import BenchItem
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.toy_tasks import check_held_out_seed
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset, ReasoningTrace
from lrm_interp.evaluation.divergence import divergence
from lrm_interp.evaluation.generation import count_at_limit, generate_responses, length_limit_warning
from lrm_interp.evaluation.intervals import bootstrap_interval, wilson_interval
from lrm_interp.experiments.protection import ExperimentSettings, ProtectionPlanner, RowPlan
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import (
    check_not_quantized,
    model_provenance,
    model_record,
    quantized_folder_note,
    weights_record,
)
from lrm_interp.model.sites import Site
from lrm_interp.protect.bit_allocation import BitAllocation
from lrm_interp.protect.encoding import bits_per_weight, load_masks, save_masks
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.protect.registry import SALIENCIES

FORMAT = "lrm_interp.study/2"
#: the format of a ``study.json`` written before it recorded :data:`KEY_CHECKSUMS`: read and
#: resumed unchecked, and kept in this format by a resume (it vouches for no settings it could not
#: check); one of :data:`FORMAT` without them was stripped and is refused (H10-STK)
FORMAT_UNCHECKED = "lrm_interp.study/1"
STUDY_FILE, OUTCOMES_FILE = "study.json", "outcomes.safetensors"
#: the fewest bootstrap resamples of a study's 95% KL intervals: 40 puts one draw in each 2.5% tail
#: (``--resamples 1`` gave a single draw as a zero-width "interval" that excluded its value, H25-RESAMP1)
MIN_RESAMPLES = 40
#: the most: 10^5 resamples put a 95% interval's ends within ~0.1% of the bootstrap's; 10^8 or more
#: ended in an internal error (memory, ``quantile()`` input too large) after minutes (H26-RSHUGE)
MAX_RESAMPLES = 100_000
#: the format of ``outcomes.safetensors`` (unchanged since the first study format)
OUTCOMES_FORMAT = "lrm_interp.study/1.outcomes"
#: the row keys in table order (module docs)
ROW_KEYS = ("fp", "uniform", "magnitude", "attribution", "mixed")
#: the registered saliency of the ``attribution`` row and of the masks file
SALIENCY = "attribution_ri"
#: what a study writes into its folder besides the attribution folders (``overwrite`` replaces them);
#: defined once in :data:`lrm_interp._io.STUDY_FILES` (the output checks recognise a study by them)
OWN_FILES = STUDY_FILES
#: the files whose SHA-256 (of their bytes, as the study wrote them) ``study.json`` records, under
#: ``provenance.checksums``: a rerun rewrites every one of them from the stored data, but for
#: :data:`READ_BACK`
CHECKSUMMED = (
    "traces.jsonl",
    "ranking.csv",
    "masks.safetensors",
    "masks.json",
    "bits.json",
    "shift.csv",
    "shift.png",
    "results.csv",
)
#: the files a rerun reads back instead of rewriting (the masks and allocation the finished rows
#: were measured with): one changed since the study wrote it is refused, naming it (H8-ST1e: a
#: hand-edited bits.json stayed beside results measured with another allocation)
READ_BACK = ("bits.json", "masks.safetensors")


@checked_arguments
@dataclass(frozen=True)
class StudySettings:
    """What one study measures (checked against an existing ``study.json`` before any work).

    ``tasks``: benchmark task names (:func:`lrm_interp.data.benchmarks.task_names`); empty: KL on
    the traces instead of accuracy. ``per_task``: problems per task (toy tasks: generated with
    ``problem_seed``; file tasks: the first ``per_task`` records of ``task_data``).
    ``group_size``: ``None`` = per channel. ``budget``: fraction of the linear weights the
    per-weight rows keep in FP16. ``require_think``: an output without ``</think>`` counts as wrong
    (the benchmark harness's default). ``resamples`` (:data:`MIN_RESAMPLES` to :data:`MAX_RESAMPLES`) /
    ``seed``: the KL bootstrap.
    """

    tasks: tuple[str, ...] = ()
    task_data: str | None = None
    bits: int = 3
    group_size: int | None = 128
    symmetric: bool = False
    budget: float = 0.02
    per_task: int = 50
    problem_seed: int = 2
    max_new_tokens: int = 480
    batch_size: int = 32
    require_think: bool = True
    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", (self.tasks,))
        try:
            object.__setattr__(self, "tasks", tuple(task_names(list(self.tasks))) if self.tasks else ())
        except KeyError as e:  # an unknown task name: a bad value, like every other setting
            raise ValueError(e.args[0]) from None
        bits = check_bits(self.bits)
        if bits > 7:
            raise ValueError(
                f"bits must be in 2..7 for a study (the protection planner also plans b+1 bits), got {bits}"
            )
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "group_size", check_group_size(self.group_size))
        check_fraction("budget", self.budget, zero=False, one=False)
        # stored as plain ints (a NumPy integer is accepted by the shared rule, and study.json records them)
        for name, lo in (
            ("per_task", 1),
            ("problem_seed", 0),
            ("max_new_tokens", 1),
            ("batch_size", 1),
        ):
            object.__setattr__(self, name, check_int(name, getattr(self, name), min=lo))
        r = self.resamples
        if isinstance(r, int) and not isinstance(r, bool) and not MIN_RESAMPLES <= r <= MAX_RESAMPLES:
            # one draw gave a zero-width "interval" beside its value (H25-RESAMP1); 0 was refused as
            # below 1 (H26-RSMIN); 10^12 failed after minutes with an internal error (H26-RSHUGE)
            raise ValueError(
                f"resamples is {r}: a 95% percentile interval needs at least {MIN_RESAMPLES} bootstrap resamples "
                f"(one in each 2.5% tail), and more than {MAX_RESAMPLES:,} only costs memory; use resamples "
                f"(--resamples) from {MIN_RESAMPLES} to {MAX_RESAMPLES} (default 1000)"
            )
        object.__setattr__(self, "resamples", check_int("resamples", r, min=MIN_RESAMPLES))
        check_held_out_seed(self.problem_seed, "problem_seed")  # not a training seed of the toy models (H16-SEED)
        check_seed("seed", self.seed)
        if not isinstance(self.symmetric, bool) or not isinstance(self.require_think, bool):
            raise ValueError("symmetric and require_think must be True or False")
        if self.task_data is not None:
            object.__setattr__(self, "task_data", str(self.task_data))
        for t in self.tasks:
            if get_task(t).needs_data and self.task_data is None:
                raise ValueError(f"task {t!r} needs a data file or folder (task_data / --task-data)")

    @property
    def metric(self) -> str:
        """``"accuracy"`` (tasks given) or ``"kl"``."""
        return "accuracy" if self.tasks else "kl"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudySettings:
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: (tuple(v) if k == "tasks" else v) for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass(frozen=True)
class StudyRow:
    """One measured variant.

    ``key``: one of :data:`ROW_KEYS`; ``label``: the planner's row label; ``bpw``: exact bits per
    weight; ``modules``: ``"bits:count ..."``; ``metric``: ``"accuracy"`` (``value`` = correct / n
    over all problems, ``per_task`` accuracies) or ``"kl"`` (``value`` = nats per response token,
    token-weighted over the ``n`` traces); ``ci``: Wilson (accuracy) or bootstrap (KL) 95 %.
    """

    key: str
    label: str
    kind: str
    bpw: float
    modules: str
    metric: str
    value: float
    ci: tuple[float, float]
    n: int
    correct: int | None = None
    per_task: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyRow:
        return cls(**{**d, "ci": tuple(d["ci"])})


@dataclass(frozen=True)
class StudyResult:
    """Everything one study measured, with its provenance.

    ``rows``: :class:`StudyRow` in :data:`ROW_KEYS` order; ``outcomes``: per row key, the items'
    outcomes (``{"correct": [n] uint8, "chars": [n] int64}``: answer lengths; or ``{"kl": [n] float64,
    "tokens": [n] int64}``);
    ``attribution`` / ``attribution_compressed``: the model and its uniform copy; ``shift``:
    their importance shift; ``allocation``: the ``mixed`` row's bits; ``masks``: summary of the
    attribution masks file; ``files``: ``{name in out_dir: what it is}``; ``commands``: shell lines
    that reuse them; ``provenance``: model and tokenizer record, traces, items, what was resumed,
    seconds (in memory also ``key``, the study's key, and ``format``, the ``study.json`` format
    :meth:`save` writes: :data:`FORMAT_UNCHECKED` for a study resumed or loaded from a
    ``study.json`` without key checksums).
    """

    settings: StudySettings
    rows: tuple[StudyRow, ...]
    outcomes: dict[str, dict[str, torch.Tensor]]
    attribution: Attribution
    attribution_compressed: Attribution
    shift: ImportanceShift
    allocation: BitAllocation
    masks: dict[str, Any]
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)
    commands: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    @property
    def warnings(self) -> list[str]:
        """What makes the comparison mean nothing (full precision answers nothing, or its answers
        hit ``max_new_tokens``: :func:`lrm_interp.evaluation.generation.length_limit_warning`)."""
        return list(self.provenance.get("warnings") or [])

    def row(self, key: str) -> StudyRow:
        """The row of ``key`` (:data:`ROW_KEYS`) or of planner label ``key``."""
        for r in self.rows:
            if key in (r.key, r.label):
                return r
        raise KeyError(f"no row {key!r} (rows: {[r.key for r in self.rows]})")

    @property
    def higher_is_better(self) -> bool:
        return self.settings.metric == "accuracy"

    def recovered(self, r: StudyRow) -> float | None:
        """The fraction of the ``uniform`` row's loss a row recovers, the protection experiment's
        ``(v − v_uniform) / (v_fp − v_uniform)`` (accuracy; for KL ``v_fp`` = 0); ``None`` for
        the fp / uniform rows or when uniform lost nothing."""
        fp, none = self.row("fp").value, self.row("uniform").value
        lost = fp - none if self.higher_is_better else none - fp
        if r.key in ("fp", "uniform") or lost <= 0:
            return None
        return (r.value - none) / (fp - none)

    def separated(self, a: str, b: str) -> bool:
        """Whether the 95 % intervals of rows ``a`` and ``b`` do not overlap."""
        ra, rb = self.row(a), self.row(b)
        return ra.ci[0] > rb.ci[1] or rb.ci[0] > ra.ci[1]

    def to_dataframe(self):
        """One row per variant: key, label, kind, bpw, metric, value, ci_low, ci_high, n, correct,
        each task's accuracy, recovered, modules, seconds."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "key": r.key,
                    "label": r.label,
                    "kind": r.kind,
                    "bpw": r.bpw,
                    "metric": r.metric,
                    "value": r.value,
                    "ci_low": r.ci[0],
                    "ci_high": r.ci[1],
                    "n": r.n,
                    "correct": r.correct,
                    **r.per_task,
                    "recovered": self.recovered(r),
                    "modules": r.modules,
                    "seconds": r.seconds,
                }
                for r in self.rows
            ]
        )

    def __repr__(self) -> str:
        best = max(
            (r for r in self.rows if r.key != "fp"), key=lambda r: r.value if self.higher_is_better else -r.value
        )
        return (
            f"StudyResult({self.provenance.get('model', {}).get('name', '?')}, RTN {self.settings.bits}-bit, "
            f"{self.settings.metric} over {best.n} {'problems' if self.higher_is_better else 'traces'}; "
            f"best compressed: {best.label} {_fmt(best.value, self.settings.metric)} at {best.bpw:.3f} bpw)"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the rows with their intervals."""
        from lrm_interp.display import box, html_table

        m = self.settings.metric
        rows = [
            [
                r.label,
                f"{r.bpw:.3f}",
                _fmt(r.value, m),
                f"{_fmt(r.ci[0], m)} – {_fmt(r.ci[1], m)}",
                "" if (rec := self.recovered(r)) is None else f"{100 * rec:.0f}%",
            ]
            for r in self.rows
        ]
        return box(repr(self), html_table(["variant", "bits/weight", m, "95% CI", "recovered"], rows))

    # ------------------------------------------------------------------ files
    @checked_arguments
    def save(self, out: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """Write ``study.json``, ``outcomes.safetensors`` and ``results.csv`` into ``out``
        (default: :attr:`out_dir`); returns the folder.

        The check of ``lrm-interp study`` (:func:`check_study_folder`) first: a folder holding
        another study, or no ``study.json`` but files a study writes (a user's ``results.csv``),
        is refused with ``ValueError`` unless ``overwrite=True`` (they were replaced silently,
        H8-SS); this study's own folder, or a folder of this same study, is always fine."""
        out = Path(out if out is not None else self.out_dir)
        key = self.provenance.get("key")
        check_study_folder(
            out,
            self.settings,
            overwrite,
            key=key if isinstance(key, Mapping) else None,
            writes_traces=False,
            files=False,
            wording="api",
        )
        _write_outcomes(out, self.outcomes)
        table = self.to_dataframe().to_csv(index=False)
        atomic_write_text(out / "results.csv", table)
        prov = {k: v for k, v in self.provenance.items() if k not in ("key", "format")}
        prov["checksums"] = {**(prov.get("checksums") or {}), "results.csv": _sha256(table.encode("utf-8"))}
        # a study resumed or loaded from a study.json that recorded no checksums keeps its format (H10-STK)
        rows = [r.to_dict() for r in self.rows]
        doc = {
            **_doc_format(dict(key or {}), self.provenance.get("format") != FORMAT_UNCHECKED),
            **_rows_checksums(rows, self.masks),
            "rows": rows,
            "masks": self.masks,
            "files": self.files,
            "commands": list(self.commands),
            "provenance": prov,
            "complete": True,
        }
        doc[RECORD_CHECKSUM] = _record_sha256(doc)
        atomic_write_text(out / STUDY_FILE, json.dumps(doc, indent=1, ensure_ascii=False))
        return out

    @classmethod
    @checked_arguments
    def load(cls, out: str | Path) -> StudyResult:
        """Read a finished study folder (``ValueError`` for a study that did not finish).

        The checks of a resume first (``ValueError`` naming the file): settings, ``bits.json`` and
        ``masks.safetensors`` as the study wrote them, rows as their outcomes give and as the study wrote
        them (no row twice); then its two attribution folders must be the pair, and the results, the
        study made (``tensors_sha256`` recorded in ``study.json``, H22-SLOAD; an older study: unchecked)."""
        out = Path(path_argument(out, "out"))
        doc = _read_study(out)
        if not doc.get("complete"):
            raise ValueError(f"{out}: the study did not finish; run it again to resume")
        _refuse_edited_key(out, doc)  # its settings are what its rows were measured with (H9-STS)
        _refuse_changed_files(out, doc)  # the allocation it reads, the masks its rows used: as a resume (H22-SLOAD)
        outcomes = _read_outcomes(out)
        _refuse_forged_rows(out, doc, outcomes, complete=True)  # its rows are its outcomes' (H20-STEDIT)
        prov = dict(
            doc["provenance"],
            key={k: doc[k] for k in _KEY_FIELDS},
            format=FORMAT if key_checked(doc) else FORMAT_UNCHECKED,  # saved again in it (StudyResult.save)
        )
        names = prov["folders"]
        res, res_q = Attribution.load(out / names["original"]), Attribution.load(out / names["compressed"])
        problems, _ = comparability(res, res_q)
        if problems:  # one was replaced since the study finished: say so, not compare's remedy (H21-STLOADMSG)
            raise ValueError(
                f"{out}: its attribution folders {names['original']}/ and {names['compressed']}/ are not the pair "
                f"the study made ({'; '.join(problems)}): one was replaced since the study finished; restore it, "
                "or rerun the study with --overwrite (overwrite=True) to start it over"
            )
        _refuse_replaced_attributions(out, doc)  # a compatible pair, but not the study's (H22-SLOAD)
        return cls(
            StudySettings.from_dict(doc["settings"]),
            tuple(StudyRow.from_dict(r) for r in doc["rows"]),
            outcomes,
            res,
            res_q,
            compare(res, res_q),
            BitAllocation.load(out / "bits.json"),
            doc["masks"],
            str(out),
            doc["files"],
            tuple(doc["commands"]),
            prov,
        )


def _fmt(v: float, metric: str) -> str:
    return f"{100 * v:.1f}%" if metric == "accuracy" else f"{v:.4f}"


# --------------------------------------------------------------------------- intervals
# --------------------------------------------------------------------------- folder state
_KEY_FIELDS = ("settings", "weights_fingerprint", "tokenizer_fingerprint", "traces_fingerprint")


def _read_study(out: Path) -> dict[str, Any]:
    p = out / STUDY_FILE
    refuse_file_as_folder(out, "a study folder", STUDY_FILE)  # "S1/study.json: no study.json" (H27-SRLOADFILE)
    if not p.exists():
        raise FileNotFoundError(f"{out}: no {STUDY_FILE} (not a study folder)")
    if p.is_dir():  # "S/study.json: Is a directory" (H32-STFILE2)
        raise ValueError(f"{p} is a folder, not the study's record file; restore the file, or choose another folder")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not a study file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, FORMAT_UNCHECKED):
        doc = doc if isinstance(doc, dict) else {}
        raise ValueError(
            f"{p}: not a study file (format {doc.get('format')!r}, expected {FORMAT!r} or the older "
            f"{FORMAT_UNCHECKED!r})"
        )
    return doc


def _doc_format(key: Mapping[str, Any], checked: bool) -> dict[str, Any]:
    """The head of a ``study.json``: its format and key fields, with :data:`KEY_CHECKSUMS` of them
    (``checked``: :data:`FORMAT`), or without (a study of :data:`FORMAT_UNCHECKED` resumed: the
    checksums would vouch for settings nobody checked, H10-STK). The one place a study's format is
    chosen (:func:`_save_progress`, :meth:`StudyResult.save`)."""
    if not checked:
        return {"format": FORMAT_UNCHECKED, **key}
    return {"format": FORMAT, **key, **_key_checksum(key)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_checksum(out: Path, name: str, sums: dict[str, str]) -> None:
    """``sums[name]``: the SHA-256 of the file ``out/name`` the study just wrote."""
    sums[name] = _sha256((out / name).read_bytes())


def recorded_checksums(doc: Mapping[str, Any]) -> dict[str, str]:
    """``{file: SHA-256}`` a ``study.json`` (``doc``) records for the files of :data:`CHECKSUMMED`
    (empty for a study written before they were recorded: nothing can be checked then)."""
    prov = doc.get("provenance")
    sums = prov.get("checksums") if isinstance(prov, Mapping) else None
    if not isinstance(sums, Mapping):
        return {}
    return {k: v for k, v in sums.items() if k in CHECKSUMMED and isinstance(v, str)}


@checked_arguments
def changed_files(out: str | Path, doc: Mapping[str, Any], names: Sequence[str] = READ_BACK) -> list[str]:
    """The files of ``names`` in ``out`` that differ from the checksum ``study.json`` (``doc``)
    records for them: changed since the study wrote them. A file without a recorded checksum (an
    older study) or not there (deleted: a rerun writes it again) is not listed."""
    out = Path(out)
    sums = recorded_checksums(doc)
    changed = []
    for name in names:
        p = out / name
        if name in sums and p.is_file() and _sha256(p.read_bytes()) != sums[name]:
            changed.append(name)
    return changed


def _refuse_changed_files(out: Path, doc: Mapping[str, Any], names: Sequence[str] = READ_BACK) -> None:
    """``ValueError`` naming the first file of ``names`` changed since the study wrote it."""
    changed = changed_files(out, doc, names)
    if changed:
        raise ValueError(
            f"{out / changed[0]} was changed since the study wrote it (its SHA-256 is not the one "
            f"{STUDY_FILE} records): the study's rows were measured with the file it wrote; delete it to "
            "have it rewritten, or restore it"
        )


def row_value(metric: str, outcomes: Mapping[str, torch.Tensor]) -> float:
    """The ``value`` of a study row recomputed from its per-item ``outcomes`` (what :func:`_measure`
    stores in ``outcomes.safetensors``): ``correct.sum() / n`` for ``"accuracy"``; for ``"kl"`` the
    token-weighted mean ``(kl · tokens).sum() / tokens.sum()`` (0 when no token is counted: the
    full-precision row, the model against itself). ``KeyError`` for outcomes lacking a tensor."""
    if metric == "accuracy":
        correct = outcomes["correct"]
        return int(correct.sum()) / max(int(correct.numel()), 1)
    kl, tok = outcomes["kl"].double(), outcomes["tokens"]
    total = int(tok.sum())
    return 0.0 if total == 0 else float((kl * tok).sum() / total)


def _refuse_forged_rows(
    out: Path,
    doc: Mapping[str, Any],
    outcomes: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    complete: bool = False,
    flag_ow: str = "overwrite=True (--overwrite)",
) -> None:
    """``ValueError`` naming ``study.json``, the row and both numbers when a row's ``value`` is not
    what its per-item outcomes in ``outcomes.safetensors`` give (:func:`row_value`, relative
    tolerance 1e-9): a hand-edited value was accepted by a resume and by :meth:`StudyResult.load`,
    and ``results.csv``, ``report.html`` and the other rows' ``recovered`` were computed from it
    (H20-STEDIT; ``experiment protection`` refuses the same edit of its rows, E06). A row without
    outcomes is measured again by a resume; ``complete`` (a finished study being loaded): refused too.
    Refused as well: a row key twice (it was loaded twice, H22-SDUP) and a row or ``masks`` summary
    edited since the study wrote it (:func:`_refuse_edited_rows`, H22-SROWS)."""
    where = out / STUDY_FILE
    fix = f"the file was edited or is corrupt: restore it, or rerun with {flag_ow} to start the study over"
    rows = doc.get("rows")
    keys = {r.get("key") for r in rows if isinstance(r, Mapping)} if isinstance(rows, list) else set()
    seen: set[Any] = set()
    for r in rows if isinstance(rows, list) else []:  # a row twice was loaded twice (H22-SDUP)
        key = r.get("key") if isinstance(r, Mapping) else None
        if isinstance(key, str) and key in seen:
            raise ValueError(f"{where}: row {key!r} appears twice; {fix}")
        seen.add(key)
    gone = sorted(k for k in outcomes if k not in keys)
    if complete and gone:  # a row deleted from a finished study (H21-STRM): its outcomes are still there
        raise ValueError(f"{where}: rows {gone} have outcomes in {out / OUTCOMES_FILE} but no row; {fix}")
    for r in rows if isinstance(rows, list) else []:
        key = r.get("key") if isinstance(r, Mapping) else None
        if not isinstance(key, str) or key not in outcomes:
            if complete:
                raise ValueError(f"{where}: row {shown_value(key)} has no outcomes in {out / OUTCOMES_FILE}; {fix}")
            continue
        value, metric = r.get("value"), r.get("metric")
        try:
            want = row_value(str(metric), outcomes[key])
        except KeyError as e:
            raise ValueError(
                f"{where}: row {key!r} ({metric!r}) has no {e.args[0]!r} outcomes in {out / OUTCOMES_FILE}; {fix}"
            ) from None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isclose(float(value), want, rel_tol=1e-9, abs_tol=1e-12)):
            raise ValueError(_outcomes_disagree(out, doc, r, want, fix, flag_ow))
    _refuse_edited_rows(out, doc, fix)


def _outcomes_disagree(
    out: Path, doc: Mapping[str, Any], row: Mapping[str, Any], want: float, fix: str, flag_ow: str
) -> str:
    """The message of a row whose ``value`` is not ``want``, what its per-item outcomes give
    (:func:`_refuse_forged_rows`; ``fix``: its advice). The row's checksum (:data:`ROWS_CHECKSUMS`)
    tells which file changed: a row still as the study wrote it means ``outcomes.safetensors`` was
    replaced or edited, and deleting it has the rerun study measure the rows again (H26-OUTCOMESMSG:
    the message blamed ``study.json``); otherwise ``study.json``'s row was edited (or an older study
    records no checksum), as before."""
    key, value, metric = row.get("key"), row.get("value"), row.get("metric")
    sums = doc.get(ROWS_CHECKSUMS)
    if isinstance(sums, Mapping) and sums.get(key) == _canonical_sha256(row):
        outcomes = out / OUTCOMES_FILE
        return (
            f"{outcomes}: the per-item outcomes of row {key!r} give {metric} {want!r}, not the value "
            f"{shown_value(value)} {out / STUDY_FILE} recorded (that row is as the study wrote it): "
            f"{OUTCOMES_FILE} was replaced or edited since; restore it, delete it (the study measures its "
            f"rows again when rerun), or rerun with {flag_ow} to start the study over"
        )
    return (
        f"{out / STUDY_FILE}: row {key!r}: value {shown_value(value)} ≠ {want!r}, the {metric} its per-item "
        f"outcomes in {OUTCOMES_FILE} give; {fix}"
    )


#: top-level entries of ``study.json``: the SHA-256 of each row (``{row key: SHA-256}``) and of the
#: ``masks`` summary, as canonical JSON (:func:`_canonical_sha256`), as the study wrote them: a row's
#: ``bpw``, ``label`` or ``modules`` edited by hand was believed by a load and a resume (H22-SROWS). A
#: ``study.json`` written before them (no entry) is not checked
ROWS_CHECKSUMS, MASKS_CHECKSUM = "rows_sha256", "masks_sha256"


def _rows_checksums(rows: Sequence[Mapping[str, Any]], masks: Any = None) -> dict[str, Any]:
    """``{ROWS_CHECKSUMS: {row key: SHA-256}, MASKS_CHECKSUM: SHA-256}`` of the rows (``to_dict``) and
    masks summary (``None``: none yet, no entry) a study writes into ``study.json``
    (:func:`_save_progress`, :meth:`StudyResult.save`)."""
    sums: dict[str, Any] = {ROWS_CHECKSUMS: {str(r["key"]): _canonical_sha256(r) for r in rows}}
    if masks is not None:
        sums[MASKS_CHECKSUM] = _canonical_sha256(masks)
    return sums


def _refuse_edited_rows(out: Path, doc: Mapping[str, Any], fix: str) -> None:
    """``ValueError`` naming ``study.json`` and the row (or the ``masks`` summary) whose fields no
    longer match the checksum the study recorded when it wrote them (:data:`ROWS_CHECKSUMS`,
    :data:`MASKS_CHECKSUM`): edited since. Nothing is checked where nothing was recorded (an older
    study). ``fix``: the advice (:func:`_refuse_forged_rows`)."""
    where = out / STUDY_FILE
    sums, rows = doc.get(ROWS_CHECKSUMS), doc.get("rows")
    if sums is not None:
        if not isinstance(sums, Mapping):
            raise ValueError(f"{where}: {ROWS_CHECKSUMS} is {shown_value(sums)}, not a mapping; {fix}")
        for r in rows if isinstance(rows, list) else []:
            key = r.get("key") if isinstance(r, Mapping) else None
            if not isinstance(key, str) or sums.get(key) != _canonical_sha256(r):
                shown = repr(key) if isinstance(key, str) else shown_value(key)
                raise ValueError(
                    f"{where}: row {shown} was edited since the study wrote it (its fields are not "
                    f"the ones {ROWS_CHECKSUMS} records: bpw, label, modules, ...); {fix}"
                )
    masks_sum = doc.get(MASKS_CHECKSUM)
    if masks_sum is not None and masks_sum != _canonical_sha256(doc.get("masks")):
        raise ValueError(
            f"{where}: its masks summary was edited since the study wrote it (it is not the one "
            f"{MASKS_CHECKSUM} records); {fix}"
        )
    record_sum = doc.get(RECORD_CHECKSUM)
    if record_sum is not None and record_sum != _record_sha256(doc):
        raise ValueError(
            f"{where}: its {', '.join(RECORD_FIELDS)} were edited since the study wrote them (they are not "
            f"the ones {RECORD_CHECKSUM} records: the model, data and trace count it names, its reuse "
            f"commands); {fix}"
        )


#: top-level entry of ``study.json``: the SHA-256 of its :data:`RECORD_FIELDS` as canonical JSON, as
#: the study wrote them (:func:`_record_sha256`): an edited ``provenance`` (model name, data file,
#: trace count) or reuse command was returned by :meth:`StudyResult.load` (H23-SPROV). The settings,
#: rows and masks have checksums of their own; a ``study.json`` written before it is not checked
RECORD_CHECKSUM = "record_sha256"
RECORD_FIELDS = ("provenance", "commands", "files")


def _record_sha256(doc: Mapping[str, Any]) -> str:
    """:data:`RECORD_CHECKSUM` of a ``study.json`` (``doc``): its :data:`RECORD_FIELDS` (one not
    there, as in a study still running: ``None``)."""
    return _canonical_sha256({k: doc.get(k) for k in RECORD_FIELDS})


#: entry of ``study.json``'s ``provenance``: ``{attribution folder: tensors_sha256}``, what each
#: folder's ``attribution.json`` recorded when the study finished (H22-SLOAD); an older study has none
ATTRIBUTION_CHECKSUMS = "attribution_sha256"


@checked_arguments
def attribution_tensors_sha256(folder: str | Path) -> str | None:
    """The ``tensors_sha256`` (scores, steering vectors, labels) ``folder/attribution.json`` records
    (:meth:`~lrm_interp.attribution.results.Attribution.save`), or ``None`` (no such file, unreadable,
    none recorded). :meth:`~lrm_interp.attribution.results.Attribution.load` checks the tensors against it."""
    try:
        meta = json.loads((Path(folder) / "attribution.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sha = meta.get("tensors_sha256") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) else None


#: entry of ``study.json``'s ``provenance``: ``{attribution folder: identity}``
#: (:func:`~lrm_interp.attribution.resume.result_identity_sha256`: run key and traces by id and
#: content) of each folder when the study finished: a rerun of the study's own reuse command over
#: the traces reordered is the same result, its tensors moved by float order only (H23-REORDER)
ATTRIBUTION_IDENTITIES = "attribution_identity_sha256"


def _refuse_replaced_attributions(out: Path, doc: Mapping[str, Any], *, missing_ok: bool = False) -> None:
    """``ValueError`` naming the first attribution folder of a finished study whose result is not the
    one the study made (its ``tensors_sha256`` is not the one ``study.json`` records,
    :data:`ATTRIBUTION_CHECKSUMS`): a copy of the other folder put in its place gave a zero shift
    with a warning only (H22-SLOAD). Accepted: a result of the same identity
    (:data:`ATTRIBUTION_IDENTITIES`: the study's reuse command rerun over the traces in another
    order, H23-REORDER). A study without the record (older) is not checked. ``missing_ok`` (a rerun):
    a folder that is gone, or holds no ``attribution.json``, is computed again (H30-STRMATTR)."""
    prov = doc.get("provenance")
    sums = prov.get(ATTRIBUTION_CHECKSUMS) if isinstance(prov, Mapping) else None
    if not isinstance(sums, Mapping):
        return
    idents = prov.get(ATTRIBUTION_IDENTITIES) if isinstance(prov, Mapping) else None
    idents = idents if isinstance(idents, Mapping) else {}
    for name, sha in sums.items():
        if not isinstance(name, str) or attribution_tensors_sha256(out / name) == sha:
            continue
        if missing_ok and not (out / name / "attribution.json").exists():
            continue
        ident = idents.get(name)
        if ident is not None and result_identity_sha256(out / name) == ident:
            continue  # the same run on the same traces, recomputed (float summation order)
        raise ValueError(
            f"{out}: {name}/ is not the attribution the study made (tensors_sha256 differs, and it is not a "
            "rerun of the same attribute run on the same traces: other model, settings, sites or traces): one "
            "was replaced since the study finished; restore it, or rerun the study with --overwrite "
            "(overwrite=True) to start it over"
        )


#: top-level entry of ``study.json``: the SHA-256 of each of its key fields (:data:`_KEY_FIELDS`) as
#: the study wrote them (H9-STS); required in format :data:`FORMAT` (H10-STK); a ``study.json`` of
#: format :data:`FORMAT_UNCHECKED` without it (an older study) is not checked
KEY_CHECKSUMS = "key_checksums"


def _canonical_sha256(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces; tuples as lists): the same for
    what a study writes and for what a reader reads back from ``study.json``."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return _sha256(text.encode("utf-8"))


def _key_checksum(key: Mapping[str, Any]) -> dict[str, Any]:
    """``{KEY_CHECKSUMS: {field: SHA-256}}`` of the key fields ``key`` holds (empty when none)."""
    sums = {k: _canonical_sha256(key[k]) for k in _KEY_FIELDS if k in key}
    return {KEY_CHECKSUMS: sums} if sums else {}


def edited_key_fields(doc: Mapping[str, Any]) -> list[str]:
    """The key fields of a ``study.json`` (``doc``: ``settings``, the weights / tokenizer / traces
    fingerprints) that no longer match the checksum the study recorded when it wrote them: edited
    by hand since. A study of :data:`FORMAT` records a checksum of every one: a field without one
    (the checksums removed) counts as edited (H10-STK). Empty for a study of
    :data:`FORMAT_UNCHECKED`, written before the checksums (nothing can be checked)."""
    sums = doc.get(KEY_CHECKSUMS)
    if doc.get("format") == FORMAT_UNCHECKED and sums is None:
        return []
    if not isinstance(sums, Mapping):
        sums = {}
    return [k for k in _KEY_FIELDS if k not in sums or k not in doc or _canonical_sha256(doc[k]) != sums[k]]


def key_checked(doc: Mapping[str, Any]) -> bool:
    """Whether a ``study.json`` (``doc``, accepted by :func:`_refuse_edited_key`) records the
    checksums of its key fields, so that its settings were checked: ``False`` for a study of
    :data:`FORMAT_UNCHECKED` without them, which a resume keeps in that format (H10-STK)."""
    return isinstance(doc.get(KEY_CHECKSUMS), Mapping)


def _refuse_edited_key(out: Path, doc: Mapping[str, Any], flag_ow: str = "overwrite=True (--overwrite)") -> None:
    """``ValueError`` when ``study.json``'s settings (or fingerprints) were edited since the study
    wrote them: a rerun with the edited settings served the results measured with the old ones
    (a budget edited 0.02 → 0.05 and ``--budget 0.05``: the 0.02 study's results.csv and bits.json,
    exit 0, H9-STS)."""
    edited = edited_key_fields(doc)
    sums = doc.get(KEY_CHECKSUMS)
    if edited and not isinstance(sums, Mapping):  # stripped or damaged (H10-STK)
        what = f"has no {KEY_CHECKSUMS}" if sums is None else f"holds {KEY_CHECKSUMS} {shown_value(sums)}"
        raise ValueError(
            f"{out / STUDY_FILE} {what}, but a study of format {FORMAT} records the checksums of its settings "
            "and fingerprints: they were removed or damaged since the study wrote it, so its settings cannot be "
            f"checked against what its rows were measured with; delete the folder or rerun with {flag_ow} to "
            "start it over"
        )
    if edited:
        raise ValueError(
            f"{out / STUDY_FILE} was edited since the study wrote it ({', '.join(edited)}): its rows and files "
            f"were measured with the {', '.join(edited)} as the study wrote them, not the edited ones; delete the "
            "folder or rerun with "
            f"{flag_ow} to start it over"
        )


def _differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    hs, ws = have.get("settings", {}), want.get("settings", {})
    diff = [f"{k} {hs.get(k)!r} ≠ {ws.get(k)!r}" for k in sorted(set(hs) | set(ws)) if hs.get(k) != ws.get(k)]
    for k, what in (
        ("weights_fingerprint", "another model"),
        ("tokenizer_fingerprint", "another tokenizer"),
        ("traces_fingerprint", "other traces"),
    ):
        if k in want and have.get(k) != want[k]:
            diff.append(what)
    return diff


def _resume_hint(have: Mapping[str, Any], diff: Sequence[str], model_compared: bool = True) -> str:
    """``"rerun with the settings it records (batch_size 32) to resume it, or "``: where only settings
    differ (:func:`_differences`; same model, tokenizer and traces), the study resumes with its own
    settings; the refusal offered only ``--overwrite``, which measures everything again (H27-STBATCH).
    ``""`` otherwise. ``model_compared=False`` (checked before the model loads): the model it records
    is named with them (``--model toy``): followed, the hint was refused again for another model
    (H33-HINTPART)."""
    hs = have.get("settings")
    if not diff or not isinstance(hs, Mapping) or any(" ≠ " not in d for d in diff):
        return ""
    keys = [d.split(" ", 1)[0] for d in diff]
    shown = ", ".join(_study_flag(k, hs.get(k)) for k in keys)
    prov = have.get("provenance")
    ref = prov.get("model_ref") if isinstance(prov, Mapping) else None
    if not model_compared and isinstance(ref, str) and ref:
        shown += f", with its model: {shell_command(['--model', ref])}"
    return f"rerun with the settings it records ({shown}) to resume it, or "


def _study_flag(key: str, value: Any) -> str:
    """How ``lrm-interp study`` gives the setting ``key`` its ``value``: ``"--batch-size 32"``,
    ``"without --symmetric"``; the field and value (``"seed 0"``) where no flag sets it. The hint
    named only the Python field ("symmetric False", H28-STHINT)."""
    flag = f"--{key.replace('_', '-')}"
    if key == "symmetric":
        return flag if value else f"without {flag}"
    if key == "require_think":
        return "without --no-require-think" if value else "--no-require-think"
    if key in ("seed", "problem_seed") or value is None:
        return f"{key} {value!r}"
    if isinstance(value, (list, tuple)):
        return f"{flag} {' '.join(map(str, value))}" if value else f"without {flag}"
    return f"{flag} {value}"


#: what else a study (or the quickstart) may write into its folder: a folder without
#: ``study.json`` holding one of these is not written into unless ``overwrite`` (they are not a study's)
OTHER_OUTPUTS = ("traces.jsonl",)


def _foreign_outputs(out: Path, writes_traces: bool = True, also: Sequence[str] = ()) -> list[str]:
    """Names in ``out`` (a folder without ``study.json``) that a study would write or replace."""
    if not out.is_dir():
        return []
    names = (set(OWN_FILES) | set(OTHER_OUTPUTS) | set(also)) - (set() if writes_traces else {"traces.jsonl"})
    return sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in out.iterdir()
        if p.name in names or p.name.startswith("attribution_")
    )


def quantized_model_note(model: Any) -> str | None:
    """For a model folder that is already quantized (:func:`~lrm_interp.model.provenance.quantized_folder_note`):
    why a study of it is refused, else ``None``. A study of it labelled the quantized weights "full
    precision" and measured KL 0 to itself (H7-QM1)."""
    return quantized_folder_note(
        model,
        "a study quantizes its --model itself and compares it with that model as full precision, so this "
        "baseline is already quantized",
    )


@checked_arguments
def check_study_folder(
    out: str | Path,
    settings: StudySettings,
    overwrite: bool = False,
    *,
    key: Mapping[str, Any] | None = None,
    writes_traces: bool = True,
    also: Sequence[str] = (),
    files: bool = True,
    wording: str = "both",
    traces: Sequence[ReasoningTrace] | None = None,
    hint: Callable[[Mapping[str, Any], Sequence[str]], str] | None = None,
) -> None:
    """Refuse (``ValueError``), before anything is loaded or written, a folder ``out`` that a study
    of ``settings`` must not write into: a study with other settings (``key``: the full key, the
    settings and the weights / tokenizer / traces fingerprints, compared too once known), or a
    folder that is not a study's (no ``study.json``) but holds files a study would write
    (``results.csv``, ``report.html``, ``traces.jsonl``, ``attribution_*/``, ...), or (``files``)
    a study whose file a rerun reads back (``bits.json``, ``masks.safetensors``) was changed since
    the study wrote it (:func:`changed_files`). ``overwrite``:
    nothing is refused but a path that is not a folder. ``writes_traces=False``: the traces are
    read from a file (not written to ``out/traces.jsonl``), so a ``traces.jsonl`` there is kept.
    ``also``: more names the caller writes into ``out`` (the quickstart's ``tiny_model``).
    ``traces``: the traces the study is given, to tell the same traces in another order from other
    traces (H24-REORDSTUDY). ``wording``: how the advice names the options: ``"api"`` (``out``, ``overwrite=True``),
    ``"cli"`` (``--out``, ``--overwrite``) or ``"both"``; ``hint(study.json, differences)``: how to
    resume the recorded study with the caller's own options (default :func:`_resume_hint`, the
    flags of ``lrm-interp study``; the quickstart's names its own, H31-QSHINT). The one check of ``lrm-interp study``,
    :func:`run_study` and :meth:`StudyResult.save`. Refused even with ``overwrite``: a folder holding
    a finished result of another command (an attribution folder: the study files were mixed into
    it, H9-MIX). Refused unless ``overwrite``: a ``study.json`` whose settings (or fingerprints)
    were edited after the study wrote them (:func:`_refuse_edited_key`: its results were measured
    with the settings it recorded, H9-STS)."""
    out = Path(out)
    flag_out, flag_ow = _WORDING[wording]
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; choose another {flag_out}")
    # another command's result (an attribution folder): never, not even with overwrite (H9-MIX)
    refuse_other_result_folder(out, "study", flag_out)
    if overwrite:
        return
    if not (out / STUDY_FILE).exists():
        foreign = _foreign_outputs(out, writes_traces, also)
        if foreign:
            raise ValueError(
                f"{out} is not a study folder (no {STUDY_FILE}) but holds {', '.join(foreign)}, which a study "
                f"would replace; use another {flag_out} or {flag_ow} to replace them"
            )
        return
    have = _read_study(out)
    want: dict[str, Any] = dict(key) if key is not None else {"settings": settings.to_dict()}
    if traces is not None and "traces_fingerprint" not in want:  # before the model loads (H33-HINTPART)
        want["traces_fingerprint"] = _traces_fingerprint(traces)
    diff = _differences(have, want)
    got = have.get("provenance")
    prov: Mapping[str, Any] = got if isinstance(got, Mapping) else {}
    was = prov.get("traces")
    recorded = was.get("unordered_fingerprint") if isinstance(was, Mapping) else None
    if "other traces" in diff and traces is not None and recorded == _traces_fingerprint(traces, ordered=False):
        order = f"the order of {prov['data']}" if isinstance(prov.get("data"), str) else "the order the study used"
        diff[diff.index("other traces")] = (
            f"the same traces in another order: a study pairs its rows trace by trace, give them in {order}"
        )
    if diff:
        advice = hint(have, diff) if hint is not None else _resume_hint(have, diff, "weights_fingerprint" in want)
        raise ValueError(
            f"{out} holds another study (differs in {', '.join(diff)}); {advice}use another {flag_out} or {flag_ow} "
            "to start it over"
        )
    _refuse_edited_key(out, have, flag_ow)
    _refuse_wrong_kinds(out, have, flag_ow)  # before study.json is rewritten as unfinished (H32-STFILE2)
    if files:
        _refuse_changed_files(out, have)
        if (out / OUTCOMES_FILE).exists():  # the rows a rerun resumes (H20-STEDIT)
            _refuse_forged_rows(out, have, _read_outcomes(out), flag_ow=flag_ow)


#: ``wording`` of :func:`check_study_folder`: how its advice names the output folder and ``overwrite``
_WORDING = {
    "api": ("out folder", "overwrite=True"),
    "cli": ("--out", "--overwrite"),
    "both": ("out folder (--out)", "overwrite=True (--overwrite)"),
}


def study_key(model: torch.nn.Module, tokenizer: Any, settings: StudySettings, ds: Sequence[ReasoningTrace]) -> dict:
    """What a study folder must match to be resumed: the settings and the fingerprints of the
    weights, the tokenizer and the traces (stored in ``study.json``)."""
    prov = model_provenance(model, tokenizer)
    return _key(prov, settings, ds)


def _key(prov_model: Mapping[str, Any], s: StudySettings, ds: Sequence[ReasoningTrace]) -> dict[str, Any]:
    return {
        "settings": s.to_dict(),
        "weights_fingerprint": prov_model["weights_fingerprint"],
        "tokenizer_fingerprint": (prov_model.get("tokenizer") or {}).get("fingerprint"),
        "traces_fingerprint": _traces_fingerprint(ds),
    }


def _resume_state(out: Path, key: dict[str, Any], overwrite: bool) -> tuple[dict[str, StudyRow], dict]:
    """``(rows, outcomes)`` already measured in ``out`` for this key; ``ValueError`` for another study."""
    if not (out / STUDY_FILE).exists():
        return {}, {}
    have = _read_study(out)
    diff = _differences(have, key)
    if diff and not overwrite:
        raise ValueError(
            f"{out} holds another study (differs in {', '.join(diff)}); {_resume_hint(have, diff)}use another "
            "out folder (--out) or overwrite=True (--overwrite) to start it over"
        )
    if not overwrite:
        _refuse_edited_key(out, have)
        if have.get("complete"):  # before study.json is rewritten: a refused rerun left it unfinished (H29-STSWAP)
            _refuse_replaced_attributions(out, have, missing_ok=True)
    if overwrite:
        folders = _own_folders(out, have)  # every entry checked before anything is removed (links named, H26)
        _refuse_wrong_kinds(out, have)  # a folder where a study file was: neither removed nor written into
        _refuse_foreign_entries(folders)  # nor anything another command or the user put in them
        for p in folders:
            if p.is_dir():
                shutil.rmtree(p)
        for name in OWN_FILES:
            (out / name).unlink(missing_ok=True)
        return {}, {}
    outcomes = _read_outcomes(out) if (out / OUTCOMES_FILE).exists() else {}
    rows = {d["key"]: StudyRow.from_dict(d) for d in have.get("rows", []) if d["key"] in outcomes}
    return rows, {k: v for k, v in outcomes.items() if k in rows}


#: the folders a study writes into its folder (``attribution_<dtype>``, ``attribution_rtn<bits>``)
_OWN_FOLDER = re.compile(r"attribution_[A-Za-z0-9_]+")


def _refuse_foreign_entries(folders: Sequence[Path]) -> None:
    """``ValueError`` naming the first of ``folders`` (a study's attribution folders, about to be
    removed whole by ``overwrite``) that holds an entry an attribution run does not write
    (:data:`~lrm_interp._io.ATTRIBUTION_FILES`, its work folder ``partial/``, a writer's leftover
    temporary file): a bench run or a user's notes inside ``attribution_rtn3/`` were deleted
    without a word (H28-STOWNEST; ``quantize --overwrite`` refuses the same); so were a user's
    files inside ``partial/`` (:func:`~lrm_interp.attribution.resume.foreign_partials`, H29-STPARTIAL)."""
    from lrm_interp._io import ATTRIBUTION_FILES, ATTRIBUTION_WORK, temp_file_target
    from lrm_interp.attribution.resume import foreign_partials

    own = {*ATTRIBUTION_FILES, ATTRIBUTION_WORK}
    for p in folders:
        if not p.is_dir():
            continue
        foreign = sorted(
            e.name + ("/" if e.is_dir() else "")
            for e in p.iterdir()
            if e.name not in own and temp_file_target(e.name) is None
        )
        foreign += [f"{ATTRIBUTION_WORK}/{f}" for f in foreign_partials(p / ATTRIBUTION_WORK)]  # H29-STPARTIAL
        if foreign:
            shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
            raise ValueError(
                f"{p} holds files the study did not write ({shown}): overwrite=True (--overwrite) removes that "
                "folder whole and would delete them; move them out, or choose another out folder (--out)"
            )


def _finished_attributions(out: Path, have: Mapping[str, Any] | None) -> set[str]:
    """The attribution folders of a finished study (``have``: its ``study.json``) that hold the
    result it recorded (their ``tensors_sha256`` is the one :data:`ATTRIBUTION_CHECKSUMS` records): a
    rerun loads them. It attributed both again, and built and quantized a copy of the model for the
    second, only to write the same tensors (the whole attribution stage again). A folder that is gone or holds
    another result (a rerun of the same run over reordered traces, H23-REORDER) is attributed."""
    if have is None or have.get("complete") is not True:
        return set()
    prov = have.get("provenance")
    sums = prov.get(ATTRIBUTION_CHECKSUMS) if isinstance(prov, Mapping) else None
    if not isinstance(sums, Mapping):
        return set()
    return {
        name
        for name, sha in sums.items()
        if isinstance(name, str) and _OWN_FOLDER.fullmatch(name) and attribution_tensors_sha256(out / name) == sha
    }


def _refuse_wrong_kinds(out: Path, have: Mapping[str, Any], flag_ow: str | None = None) -> None:
    """``ValueError`` naming the first entry of the study in ``out`` (``have``: its ``study.json``)
    that is no longer the kind of entry the study wrote there: one of its files
    (:data:`OWN_FILES`, ``traces.jsonl`` when it wrote the traces) now a folder; one of its attribution folders (the
    folders and checksums ``study.json`` records) now a file, a link to the study itself (or a folder
    holding it: a rerun wrote its attribution into the study) or a link to nothing; inside one, a file of
    :data:`~lrm_interp._io.ATTRIBUTION_FILES` now a folder, or its work folder ``partial/`` a file. A
    rerun rewrote ``study.json`` as unfinished, then failed writing there, with the system's "Is a
    directory" / "File exists" (H31-STFILE, H32-STFILE2); refused now before anything is written.
    An entry that is gone is written again (H30-STRMATTR). ``flag_ow``: how the advice names
    ``overwrite``; ``None``: the study is being overwritten (which removes only what it wrote)."""
    from lrm_interp._io import ATTRIBUTION_FILES, ATTRIBUTION_WORK

    prov = have.get("provenance")
    prov = prov if isinstance(prov, Mapping) else {}
    names: list[Any] = []
    for key in ("folders", ATTRIBUTION_CHECKSUMS):
        entry = prov.get(key)
        names += list(entry.values() if key == "folders" else entry) if isinstance(entry, Mapping) else []
    sums = prov.get("checksums")
    traces = ("traces.jsonl",) if isinstance(sums, Mapping) and "traces.jsonl" in sums else ()  # written by it
    wrong: list[tuple[Path, str, str]] = []  # (entry, what it is now, what the study made there)
    for name in (*OWN_FILES, *traces):
        if (out / name).is_dir():
            wrong.append((out / name, "a folder", "the file"))
    root = out.resolve()
    for name in dict.fromkeys(n for n in names if isinstance(n, str) and _OWN_FOLDER.fullmatch(n)):
        p = out / name
        if p.is_symlink() and not p.exists():
            wrong.append((p, "a link to nothing", "the attribution folder"))
        elif p.is_symlink() and (p.resolve() == root or p.resolve() in root.parents):
            wrong.append((p, f"a link to {p.resolve()}, which holds the study", "the attribution folder"))
        elif p.exists() and not p.is_dir():
            wrong.append((p, "a file", "the attribution folder"))
        elif p.is_dir():  # a link to an attribution folder elsewhere is read (and written) through
            wrong += [(p / f, "a folder", "the file") for f in ATTRIBUTION_FILES if (p / f).is_dir()]
            work = p / ATTRIBUTION_WORK
            if work.is_symlink() and not work.exists():
                wrong.append((work, "a link to nothing", "the work folder"))
            elif work.exists() and not work.is_dir():
                wrong.append((work, "a file", "the work folder"))
    if wrong:
        p, now, made = wrong[0]
        more = f" ({len(wrong) - 1} more entries too)" if len(wrong) > 1 else ""
        fix = (
            f"restore it, or remove it to have the study write it again, or rerun with {flag_ow} to start the "
            "study over"
            if flag_ow is not None
            else "restore it, or remove it: starting the study over removes only what the study wrote"
        )
        raise ValueError(f"{p} is {now}, not {made} the study made there{more}; nothing was changed: {fix}")


def _own_folders(out: Path, have: Mapping[str, Any]) -> list[Path]:
    """The attribution folders ``study.json`` (``have``) records, each checked to be one a study
    writes: a plain name of :data:`_OWN_FOLDER` (no path separator, not ``.`` / ``..``) resolving
    to a child of ``out`` (a link out of the folder is not followed). ``ValueError`` naming the
    first other entry (a hand-edited or damaged ``study.json``: ``".."`` deleted the folder holding
    the study, H7-ST1), or the link where a rightly named entry is a link (it was refused as a
    wrongly named entry, H26-LINKMSG), before anything is removed."""
    folders = (have.get("provenance") or {}).get("folders") or {}
    if not isinstance(folders, Mapping):
        raise ValueError(f"{out / STUDY_FILE}: provenance.folders is not a mapping; not removing anything")
    root = out.resolve()
    paths = []
    for role, name in folders.items():
        bad = (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or "/" in name
            or "\\" in name
            or os.sep in name
            or (os.altsep is not None and os.altsep in name)
            or not _OWN_FOLDER.fullmatch(name)
        )
        p = out / name if isinstance(name, str) else out
        if not bad and (p.is_symlink() or p.resolve().parent != root):  # the name is right, the entry is not
            raise ValueError(
                f"{p} is a link to {os.path.realpath(p)}, not a folder this study wrote inside {out}; refusing "
                "to remove anything through it (--overwrite): remove the link yourself (the folder it points "
                "to is kept) or use another out folder"
            )
        if bad:
            raise ValueError(
                f"{out / STUDY_FILE}: provenance.folders[{role!r}] is {name!r}, not an attribution folder a study "
                f"writes (attribution_<dtype> or attribution_rtn<bits>, inside {out}); refusing to remove it "
                "(--overwrite); fix or delete that study.json, or use another out folder"
            )
        paths.append(p)
    return paths


def _write_outcomes(out: Path, outcomes: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    tensors = {f"{k}.{name}": t for k, d in outcomes.items() for name, t in d.items()}
    write_safetensors(out / OUTCOMES_FILE, tensors, {"format": OUTCOMES_FORMAT})


def _read_outcomes(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    tensors, _ = read_safetensors(out / OUTCOMES_FILE, (OUTCOMES_FORMAT,), "study outcomes file")
    res: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        k, what = name.split(".", 1)
        res.setdefault(k, {})[what] = t
    return res


def _save_progress(
    out: Path,
    key: dict[str, Any],
    rows: Mapping[str, StudyRow],
    outcomes: Mapping,
    prov: dict,
    checked: bool = True,
) -> None:
    """Outcomes first, then the rows that point at them (a row without outcomes is measured again).
    ``checked``: the key was checked (:func:`key_checked`), so ``study.json`` records its checksums."""
    _write_outcomes(out, outcomes)
    row_dicts = [r.to_dict() for r in rows.values()]
    doc = {
        **_doc_format(key, checked),
        **_rows_checksums(row_dicts),
        "rows": row_dicts,
        "provenance": prov,
        "complete": False,
    }
    doc[RECORD_CHECKSUM] = _record_sha256(doc)
    atomic_write_text(out / STUDY_FILE, json.dumps(doc, indent=1, ensure_ascii=False))


# --------------------------------------------------------------------------- measuring
def study_items(settings: StudySettings, model: torch.nn.Module | None = None) -> list[BenchItem]:
    """The problems of ``settings.tasks``, interleaved task by task (item 0 of every task, then
    item 1, ...: the order of :func:`lrm_interp.data.toy_tasks.problems` for the toy families).

    Toy tasks use the fact table ``model`` was trained on (its provenance's ``n_people``)."""
    people = (model_record(model).source or {}).get("n_people") if model is not None else None
    per = []
    for t in settings.tasks:
        if get_task(t).needs_data:
            per.append(load(t, settings.task_data, limit=settings.per_task))
        else:
            per.append(
                load(
                    t,
                    per_family=settings.per_task,
                    toy_seed=settings.problem_seed,
                    toy_people=None if people is None else int(people),
                )
            )
    return [items[i] for i in range(max(len(x) for x in per)) for items in per if i < len(items)]


@checked_arguments
def measure_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[BenchItem],
    settings: StudySettings,
    *,
    order: Sequence[int] | None = None,
    progress: bool = False,
    at_limit: list[int] | None = None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """``({task: accuracy}, correct [n] uint8, chars [n] int64)``: greedy answers
    (:func:`generate_responses`) graded by each item's task grader; ``chars``: each response's length.

    ``order``: the order the items are generated in (a permutation of ``range(n)``; the results
    are returned in item order). Batches of items whose answers are about as long finish
    together, so ordering by an earlier run's lengths saves the steps a batch spends on its
    longest answer (study rows: by the full-precision answers' lengths). ``at_limit``: a list the
    number of answers cut off by ``settings.max_new_tokens`` is appended to.
    """
    order = list(range(len(items))) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(len(items))):
        raise ValueError(f"order must be a permutation of range({len(items)})")
    generated = generate_responses(
        model,
        tokenizer,
        [items[i].prompt for i in order],
        max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size,
        progress=progress,
    )
    responses = [""] * len(items)
    for i, r in zip(order, generated):
        responses[i] = r
    if at_limit is not None:
        at_limit.append(count_at_limit(tokenizer, responses, settings.max_new_tokens))
    correct = [
        get_task(it.task).grader(it, r, require_think=settings.require_think).correct for it, r in zip(items, responses)
    ]
    per_task = {}
    for t in settings.tasks:
        hits = [c for it, c in zip(items, correct) if it.task == t]
        per_task[t] = sum(hits) / len(hits)
    return (
        per_task,
        torch.tensor(correct, dtype=torch.uint8),
        torch.tensor([len(r) for r in responses], dtype=torch.int64),
    )


def generation_order(items: Sequence[BenchItem], tokenizer: Any, answer_chars: torch.Tensor | None = None) -> list[int]:
    """The order to generate ``items`` in so that each batch's sequences end about together: by
    the length of earlier answers ``answer_chars`` ``[n]`` when known (the full-precision row's),
    else by prompt length in tokens (which also saves left padding)."""
    prompt = [len(tokenizer(it.prompt)["input_ids"]) for it in items]
    if answer_chars is None:
        return sorted(range(len(items)), key=lambda j: prompt[j])
    chars = [int(c) for c in answer_chars]
    return sorted(range(len(items)), key=lambda j: (chars[j], prompt[j]))


@checked_arguments
def measure_kl(
    reference: torch.nn.Module, model: torch.nn.Module, encoded: Sequence[Any], *, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kl [n] float64, tokens [n] int64)``: KL(reference ‖ model) per response token of each
    encoded trace (:func:`lrm_interp.evaluation.divergence.divergence` on that trace alone; a trace
    without response tokens gets 0 tokens)."""
    kl, tok = [], []
    for e in tqdm(encoded, desc="KL", unit="trace", disable=not progress, leave=False):
        try:
            d = divergence(reference, model, [e])
        except ValueError:  # no response token in this trace: it carries no weight
            kl.append(0.0)
            tok.append(0)
            continue
        kl.append(d.kl)
        tok.append(d.tokens)
    return torch.tensor(kl, dtype=torch.float64), torch.tensor(tok, dtype=torch.int64)


def _traces_fingerprint(ds: Sequence[ReasoningTrace], ordered: bool = True) -> str:
    """Fingerprint of the traces (ids and contents) in their order, or (``ordered=False``) of the
    set of them: recorded as ``provenance.traces.unordered_fingerprint`` so a resume given the same
    traces in another order can say so (H24-REORDSTUDY)."""
    lines = [f"{t.id}\0{t.fingerprint()}\n" for t in ds]
    h = hashlib.blake2b(digest_size=16)
    for line in lines if ordered else sorted(lines):
        h.update(line.encode())
    return h.hexdigest()


def _dtype_tag(model: torch.nn.Module) -> str:
    dt = next(model.parameters()).dtype
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dt, str(dt).replace("torch.", ""))


def _pick_rows(planner: ProtectionPlanner) -> dict[str, RowPlan]:
    """The planner's rows of :data:`ROW_KEYS` (by their labels)."""
    pct = f"{planner.settings.budget:.0%}"
    want = {
        "fp": "fp",
        "uniform": "none",
        "magnitude": f"{pct} {SALIENCIES['magnitude'].label}",
        "attribution": f"{pct} {SALIENCIES[SALIENCY].label}",
        "mixed": "mixed precision by attribution",
    }
    by_label = {r.label: r for r in planner.rows}
    missing = [lab for lab in want.values() if lab not in by_label]
    if missing:  # the planner renamed a row: fail loudly rather than measure another one
        raise RuntimeError(f"the protection planner has no row {missing[0]!r}")
    return {k: by_label[lab] for k, lab in want.items()}


# --------------------------------------------------------------------------- the run
def check_environment() -> None:
    """Refuse (``ValueError`` naming the variable) an environment variable a study reads that is
    neither yes nor no: ``$LRM_INTERP_SKIP_MEMORY_CHECK`` (:func:`lrm_interp.checks.env_flag`),
    read by every ``attribute()`` the study runs. Checked before the first write by ``study``,
    ``quickstart``, :func:`run_study` and :func:`lrm_interp.experiments.quickstart.quickstart_study`:
    it was refused only once ``study.json`` and the outcomes (and the quickstart's ``tiny_model/``)
    were written (H10-SMCL)."""
    env_flag(SKIP_MEMORY_CHECK_ENV)


def check_target_behaviors(ds: ReasoningDataset, data: Any = None) -> None:
    """Refuse (``ValueError``), before anything is written, traces in which no target behaviour
    (:data:`~lrm_interp.data.traces.TARGET_BEHAVIORS`) is annotated: a study attributes those
    behaviours' spans. It failed in the attribution, after ``study.json`` was written, advising a
    ``behaviors=[...]`` that neither ``study`` nor :func:`run_study` takes, and the partial folder then
    refused the corrected command (H20-BEHAV). ``data``: the traces' path (named), or ``None``."""
    present = ds.behaviors()
    if any(b in present for b in TARGET_BEHAVIORS):
        return
    what = f"data (--data) {data}" if isinstance(data, (str, Path)) else "data"
    traces = f"{len(ds)} trace{'s' if len(ds) != 1 else ''}"
    raise ValueError(
        f"{what}: no target behaviour ({', '.join(TARGET_BEHAVIORS)}) is annotated in the {traces} "
        f"(labels present: {', '.join(present) or 'none'}); a study attributes the spans of these behaviours: "
        "annotate the traces (lrm-interp annotate) or give traces that have such spans"
    )


def check_budget_weights(budget: float, sites: Sequence[Site]) -> None:
    """Refuse (``ValueError``) a ``budget`` that keeps none of the linear weights of ``sites`` (the
    attributed modules the masks are chosen among) in FP16: ``round(budget × N) = 0``. Checked once
    the model is loaded, before the attribution: it failed after the whole attribution, advising a
    ``budget=0`` that a study refuses (H20-SBUD)."""
    n = sum(x.n_weights for x in sites)
    if n > 0 and int(round(budget * n)) == 0:
        raise ValueError(
            f"budget (--budget) {budget:g} protects 0 of the {n} weights of the model's linear modules "
            f"(round({budget:g} × {n}) = 0); give a budget above {0.5 / n:.3g} ({1 / n:.3g} protects one weight)"
        )


@checked_arguments
def run_study(
    model: Any,
    data: Any,
    out: str | Path,
    settings: StudySettings | None = None,
    *,
    tokenizer: Any = None,
    model_ref: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **kw: Any,
) -> StudyResult:
    """Run (or resume) a study of ``model`` on the traces ``data`` into folder ``out`` (module docs).

    Args:
        model: an alias (``"toy"``), a local model folder, or a model object (with ``tokenizer``).
        data: annotated traces: a JSONL file, a paper-layout folder, or a list / dataset (then
            written to ``out/traces.jsonl``).
        settings: a :class:`StudySettings`, or its fields as keywords (``tasks=["math"], bits=3``).
        model_ref: how the printed commands name the model (default: ``model`` when it is a
            string, else the model's name).
        overwrite: start over in a folder that holds another study (its study files and
            attribution folders are removed first).

    Every setting, the traces and the task files are checked before the model is loaded; a folder
    holding another study is refused before anything is written.
    """
    t0 = time.time()
    check_environment()  # before the first write (H10-SMCL)
    note = quantized_model_note(model)
    if note is not None:
        raise ValueError(note)
    if settings is not None and kw:
        raise TypeError(f"give settings or keywords, not both (got {sorted(kw)})")
    if settings is not None and not isinstance(settings, StudySettings):
        # a dict of fields gave "AttributeError: 'dict' object has no attribute 'tasks'" (H27-RSDICT)
        raise TypeError(
            f"settings must be a StudySettings, got {type(settings).__name__}; give the fields as keywords "
            "(run_study(model, data, out, bits=3, ...)) or StudySettings(**fields)"
        )
    s = settings if settings is not None else StudySettings(**kw)
    out = Path(path_argument(out, "out"))  # out=5: a raw pathlib TypeError (H30)
    for t in s.tasks:
        if get_task(t).needs_data:
            # FileNotFoundError naming the folder, before any work (task_data: set, StudySettings checks it)
            find_task_file(t, cast(str, s.task_data))
    ds = load_dataset(data)
    if len(ds) == 0:
        raise ValueError(f"{data if isinstance(data, (str, Path)) else 'data'}: no traces")
    check_target_behaviors(ds, data)
    in_memory = not isinstance(data, (str, Path))
    if isinstance(model, (str, Path)):  # settings and traces, before the model loads (a model object: keyed below)
        check_study_folder(out, s, overwrite, writes_traces=in_memory, traces=ds)
    ref = model_ref or (str(model) if isinstance(model, (str, Path)) else None)
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    model.eval()
    # a model object quantized earlier (a notebook cell run before): its record says so (H12-QQ)
    check_not_quantized(model, "a study quantizes its model itself and compares it with that model as full precision")
    check_budget_weights(s.budget, attribution_sites(model, AttributionConfig().sites))  # before the attribution
    prov_model = model_provenance(model, tokenizer)
    key = _key(prov_model, s, ds)
    check_study_folder(out, s, overwrite, key=key, writes_traces=in_memory, traces=ds)  # before the first write
    # the checksums of the files an earlier run of this study wrote (verified above): kept for the
    # files this run does not rewrite, replaced for those it does (H8-ST1e)
    have = None if overwrite or not (out / STUDY_FILE).exists() else _read_study(out)
    sums = {} if have is None else recorded_checksums(have)
    # a study.json without key checksums (an older study) is resumed in its format, unchecked (H10-STK)
    checked = have is None or key_checked(have)
    rows, outcomes = _resume_state(out, key, overwrite)
    resumed = list(rows)
    # loaded before anything is rewritten: a folder whose payload was changed under its recorded
    # checksum is refused with study.json untouched (it was rewritten as unfinished first, H33-REUSEBAD)
    reused = {name: Attribution.load(out / name) for name in sorted(_finished_attributions(out, have))}
    out.mkdir(parents=True, exist_ok=True)
    ref = ref or prov_model["name"]
    if isinstance(data, (str, Path)):
        data_ref = str(data)
    else:
        data_ref = str(out / "traces.jsonl")
        ds.save_jsonl(data_ref, own="study")
        _record_checksum(out, "traces.jsonl", sums)
    tag = _dtype_tag(model)
    folders = {"original": f"attribution_{tag}", "compressed": f"attribution_rtn{s.bits}"}
    prov: dict[str, Any] = {
        "model": prov_model,
        "model_ref": ref,
        "data": data_ref,
        "folders": folders,
        "traces": {
            "n": len(ds),
            "span_counts": ds.span_counts(),
            "unordered_fingerprint": _traces_fingerprint(ds, ordered=False),
        },
        "checksums": sums,
    }
    _save_progress(out, key, rows, outcomes, prov, checked)

    # 1. which modules matter
    d_fp = out / folders["original"]
    got = reused.get(d_fp.name)
    res = got if got is not None else attribute(model, ds, tokenizer=tokenizer, out_dir=d_fp, progress=progress)
    res.write_tables(d_fp)  # this result's own tables (attribute() saved it there)
    ranking = res.to_dataframe().sort_values(["behavior", "rank"], kind="stable")
    atomic_write_text(out / "ranking.csv", ranking.to_csv(index=False))
    _record_checksum(out, "ranking.csv", sums)

    # 2. the rows' plans: masks and the mixed-precision allocation from the attribution
    planner = ProtectionPlanner(
        model,
        tokenizer,
        ExperimentSettings(
            model=ref, bits=s.bits, quantizer="rtn", group_size=s.group_size, symmetric=s.symmetric, budget=s.budget
        ),
        progress=progress,
    )
    planner.sites = list(res.sites)
    planner.attribution_dataset = ds
    planner.attribution = res
    plans = _pick_rows(planner)
    grid = {"group_size": s.group_size, "symmetric": s.symmetric}
    masks_info = _masks(out, planner, s, prov_model, need="attribution" not in rows, grid=grid, scores=str(d_fp))
    for name in ("masks.safetensors", "masks.json"):
        _record_checksum(out, name, sums)
    if "mixed" not in rows or not (out / "bits.json").exists():
        allocation = planner.allocation("attribution")
        allocation.save(out / "bits.json", own="study")
    else:  # the allocation the mixed row was measured with (unchanged: check_study_folder)
        allocation = BitAllocation.load(out / "bits.json")
    _record_checksum(out, "bits.json", sums)
    _save_progress(out, key, rows, outcomes, prov, checked)  # their checksums, at once

    # 3. the compressed variants, measured one row at a time (saved after each: resumable)
    items = study_items(s, model) if s.tasks else []
    encoded = planner.encoded if not s.tasks else []
    prov["items"] = [it.id for it in items] if s.tasks else [t.id for t in ds]
    fp_at_limit: int | None = None
    d_q = out / folders["compressed"]
    res_q = reused.get(d_q.name)  # then no uniform copy is built for it
    with tqdm(total=len(ROW_KEYS), initial=len(rows), desc="study rows", unit="row", disable=not progress) as bar:
        for k in ROW_KEYS:
            need_shift = k == "uniform" and res_q is None
            if k in rows and not need_shift:
                continue
            t1 = time.time()
            plan = plans[k]
            q = model if k == "fp" else copy.deepcopy(model)
            bpw, modules = plan.quantize(q)
            if k not in rows:
                order = generation_order(items, tokenizer, outcomes.get("fp", {}).get("chars")) if s.tasks else None
                cut: list[int] | None = [] if k == "fp" else None
                rows[k], outcomes[k] = _measure(
                    k,
                    plan,
                    q,
                    model,
                    tokenizer,
                    s,
                    items,
                    encoded,
                    bpw,
                    modules,
                    t1,
                    order=order,
                    progress=progress,
                    at_limit=cut,
                )
                if cut:
                    fp_at_limit = cut[0]
                _save_progress(out, key, rows, outcomes, prov, checked)
                bar.update(1)
                bar.set_postfix_str(f"{plan.label}: {_fmt(rows[k].value, s.metric)}")
            if k == "uniform":  # 4. the importance shift of the uniform copy
                res_q = attribute(q, ds, tokenizer=tokenizer, out_dir=d_q, progress=progress)
                res_q.write_tables(d_q)
            del q
    res_q = cast(Attribution, res_q)  # set: the "uniform" row always attributes its copy (need_shift)
    shift = compare(res, res_q)
    shift.write_tables(out, overwrite=True, own="study")  # the study's own shift files (its folder was checked)
    for name in ("shift.csv", "shift.png"):
        _record_checksum(out, name, sums)

    # the files in the folder only: an input elsewhere was listed under "wrote out/" (H16-STL)
    files = {
        **({"traces.jsonl": "the annotated traces"} if data_ref == str(out / "traces.jsonl") else {}),
        f"{d_fp.name}/": "attribution result (+ scores.csv, heatmap.png)",
        "ranking.csv": "sites ranked per behaviour",
        "masks.safetensors": f"the {s.budget:.0%} attribution protection masks",
        "masks.json": "their summary and bits per weight",
        "bits.json": "the mixed-precision allocation by attribution (bits per module)",
        f"{d_q.name}/": f"attribution of the uniform {s.bits}-bit copy",
        "shift.csv, shift.png": f"importance shift full precision -> {s.bits}-bit",
        "study.json, outcomes.safetensors": "the study (settings, rows, each item's outcome; resumes)",
        "results.csv": "the compared variants as a table",
    }
    prov.update(resumed=resumed, seconds=round(time.time() - t0, 1))
    prov[ATTRIBUTION_CHECKSUMS] = {d.name: attribution_tensors_sha256(d) for d in (d_fp, d_q)}
    prov[ATTRIBUTION_IDENTITIES] = {d.name: result_identity_sha256(d) for d in (d_fp, d_q)}
    fp = rows["fp"]
    warn = length_limit_warning(int(fp.correct or 0), fp.n, fp_at_limit, s.max_new_tokens) if s.tasks else None
    prov["warnings"] = [] if warn is None else [warn]
    result = StudyResult(
        s,
        tuple(rows[k] for k in ROW_KEYS),
        {k: outcomes[k] for k in ROW_KEYS},
        res,
        res_q,
        shift,
        allocation,
        masks_info,
        str(out),
        files,
        tuple(_commands(out, ref, data_ref, s, folders, allocation)),
        {**prov, "key": key, "format": FORMAT if checked else FORMAT_UNCHECKED},
    )
    result.save(out)
    return result


def _measure(
    k: str,
    plan: RowPlan,
    q: torch.nn.Module,
    model: torch.nn.Module,
    tokenizer: Any,
    s: StudySettings,
    items: Sequence[BenchItem],
    encoded: Sequence[Any],
    bpw: float,
    modules: str,
    t1: float,
    *,
    order: Sequence[int] | None,
    progress: bool,
    at_limit: list[int] | None = None,
) -> tuple[StudyRow, dict[str, torch.Tensor]]:
    if s.tasks:
        per_task, correct, chars = measure_accuracy(
            q, tokenizer, items, s, order=order, progress=progress, at_limit=at_limit
        )
        c, n = int(correct.sum()), int(correct.numel())
        return (
            StudyRow(
                k,
                plan.label,
                plan.kind,
                float(bpw),
                modules,
                "accuracy",
                c / n,
                wilson_interval(c, n),
                n,
                c,
                per_task,
                round(time.time() - t1, 1),
            ),
            {"correct": correct, "chars": chars},
        )
    if k == "fp":  # KL of the model to itself: 0, nothing to compute
        kl, tok = torch.zeros(len(encoded), dtype=torch.float64), torch.zeros(len(encoded), dtype=torch.int64)
        return (
            StudyRow(
                k,
                plan.label,
                plan.kind,
                float(bpw),
                modules,
                "kl",
                0.0,
                (0.0, 0.0),
                len(encoded),
                None,
                {},
                round(time.time() - t1, 1),
            ),
            {"kl": kl, "tokens": tok},
        )
    kl, tok = measure_kl(model, q, encoded, progress=progress)
    if int(tok.sum()) == 0:
        raise ValueError(f"no response tokens in the {len(encoded)} traces: KL cannot be measured (give --tasks)")
    ci = _kl_interval(k, plan, kl, tok, encoded, s)
    value = float((kl * tok).sum() / tok.sum())
    return (
        StudyRow(
            k,
            plan.label,
            plan.kind,
            float(bpw),
            modules,
            "kl",
            value,
            ci,
            int((tok > 0).sum()),
            None,
            {},
            round(time.time() - t1, 1),
        ),
        {"kl": kl, "tokens": tok},
    )


def _kl_interval(
    k: str, plan: RowPlan, kl: torch.Tensor, tok: torch.Tensor, encoded: Sequence[Any], s: StudySettings
) -> tuple[float, float]:
    """:func:`bootstrap_interval` of the per-trace KL of the study row ``k`` (weighted by tokens). A
    KL that is no finite number (NaN, inf: the compressed model's log-probabilities on that trace were
    not finite) made the interval fail with "values[i] is nan", naming neither the row nor the trace:
    ``ValueError`` naming both now, and any other failure of the interval names the row."""
    row = f"study row {k!r} ({plan.label})"
    bad = (~torch.isfinite(kl)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        tid = getattr(encoded[i], "trace_id", None) if i < len(encoded) else None
        trace = f"trace {tid!r}" if tid is not None else f"trace #{i}"
        more = f" ({len(bad)} of {len(kl)} traces)" if len(bad) > 1 else ""
        raise ValueError(
            f"{row}: the KL of {trace} is {float(kl[i])}{more}: the compressed model's log-probabilities on it "
            "are not finite numbers, so the row has no mean and no interval; check that variant (its weights, "
            "its dtype) on that trace"
        )
    try:
        return bootstrap_interval(kl, tok, resamples=s.resamples, seed=s.seed)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{row}: {e}") from e


def _masks(
    out: Path,
    planner: ProtectionPlanner,
    s: StudySettings,
    prov_model: dict,
    *,
    need: bool,
    grid: dict[str, Any],
    scores: str,
) -> dict[str, Any]:
    """The attribution masks file (computed by the planner, or read back when its row is done)
    and its summary."""
    sites = planner.sites
    path = out / "masks.safetensors"
    meta_want = {
        "policy": "global_top",
        "saliency": SALIENCY,
        "saliency_label": SALIENCIES[SALIENCY].label,
        "budget": s.budget,
        "bits": s.bits,
        "group_size": s.group_size,
        "symmetric": s.symmetric,
        "scores": scores,
    }
    masks: Mapping[str, ProtectionMask] | None = None
    if not need and path.exists():
        m, meta = load_masks(path)
        if {k: meta.get(k) for k in meta_want} == meta_want and (m.model or {}).get(
            "weights_fingerprint"
        ) == prov_model["weights_fingerprint"]:
            masks = m
    if masks is None:
        masks = planner.masks(SALIENCY)
    bpw_p = bits_per_weight(masks, sites, bits=s.bits, **grid)
    bpw_q = bits_per_weight({}, sites, bits=s.bits, **grid)
    meta = {**meta_want, "bits_per_weight": {k: v for k, v in bpw_p.items() if k != "encodings"}}
    n_prot = sum(m.n_protected for m in masks.values())
    save_masks(
        masks,
        path,
        metadata=meta,
        model=weights_record(planner.model, prov_model["weights_fingerprint"]),
        own="study",  # the study's own masks file (a study folder's files are refused to anyone else)
    )
    summary = {
        **meta,
        "protected_weights": n_prot,
        "weights": sum(x.n_weights for x in sites),
        "sites": {k: m.n_protected for k, m in masks.items() if m.n_protected},
        "load": "lrm_interp.protect.load_masks('masks.safetensors')",
    }
    atomic_write_text(out / "masks.json", json.dumps(summary, indent=2))
    return {
        "file": str(path),
        "protected_weights": n_prot,
        "protected_fraction": bpw_p["protected_fraction"],
        "bpw": bpw_p["bpw"],
        "bpw_uniform": bpw_q["bpw"],
        "saliency": SALIENCY,
        "saliency_label": SALIENCIES[SALIENCY].label,
        "budget": s.budget,
    }


#: the folder inside a study's folder that the printed commands write their files into: the study's
#: own files (``masks.safetensors``, ``bits.json``, ``shift.csv``) are never replaced by another
#: command (``lrm-interp`` refuses it, H8-OW1), so the commands reproduce them beside, for comparison
REUSE_DIR = "reuse"


def _commands(
    out: Path, ref: str, data: str, s: StudySettings, folders: Mapping[str, str], alloc: BitAllocation
) -> list[str]:
    """The ``lrm-interp`` commands that reproduce the study and each of its files, shell-quoted
    (``shlex.join``: a path with a space was split in two when pasted, H27-QUOTE)."""
    o = str(out)
    original, compressed = f"{o}/{folders['original']}", f"{o}/{folders['compressed']}"
    sym = ["--symmetric"] if s.symmetric else []
    grid = ["--bits", s.bits, "--group-size", s.group_size or 0, *sym]
    d = StudySettings()
    study: list[Any] = []
    if s.tasks:
        study += ["--tasks", *s.tasks, "--per-task", s.per_task]
    if s.task_data:
        study += ["--task-data", s.task_data]
    if s.group_size != d.group_size and s.group_size:
        study += ["--group-size", s.group_size]
    study += sym
    for flag, value, default in [
        ("--budget", s.budget, d.budget),
        ("--max-new-tokens", s.max_new_tokens, d.max_new_tokens),
        ("--batch-size", s.batch_size, d.batch_size),
    ]:
        if value != default:
            study += [flag, value]
    if not s.require_think:
        study.append("--no-require-think")
    if s.resamples != d.resamples and not s.tasks:
        study += ["--resamples", s.resamples]
    commands: list[list[Any]] = [
        ["study", "--model", ref, "--data", data, "--bits", s.bits, *study, "--out", o],
        ["attribute", "--model", ref, "--data", data, "--out", original],
        [
            "protect",
            "--scores",
            original,
            "--model",
            ref,
            "--data",
            data,
            "--saliency",
            SALIENCY,
            "--budget",
            s.budget,
            *grid,
            "--out",
            f"{o}/{REUSE_DIR}/masks.safetensors",
            "--overwrite",
        ],
        [
            "quantize",
            "--model",
            ref,
            *grid,
            "--masks",
            f"{o}/masks.safetensors",
            "--out",
            f"{o}/model_rtn{s.bits}_protected",
        ],
        [
            "bits",
            "--model",
            ref,
            "--scores",
            original,
            "--budget",
            repr(alloc.budget_bpw),
            "--group-size",
            s.group_size or 0,
            *sym,
            "--out",
            f"{o}/{REUSE_DIR}/bits.json",
            "--overwrite",
        ],
        ["compare", "--original", original, "--compressed", compressed, "--out", f"{o}/{REUSE_DIR}", "--overwrite"],
    ]
    return [shell_command(["lrm-interp", *c]) for c in commands]


#: the options of :func:`_commands` whose value is a path or model name, which may begin with ``-``
__all__ = [
    "FORMAT",
    "FORMAT_UNCHECKED",
    "KEY_CHECKSUMS",
    "check_environment",
    "key_checked",
    "ROW_KEYS",
    "SALIENCY",
    "StudySettings",
    "StudyRow",
    "StudyResult",
    "run_study",
    "study_items",
    "measure_accuracy",
    "measure_kl",
    "bootstrap_interval",
    "check_study_folder",
    "check_budget_weights",
    "check_target_behaviors",
    "row_value",
    "changed_files",
    "recorded_checksums",
    "quantized_model_note",
    "study_key",
    "generation_order",
]
