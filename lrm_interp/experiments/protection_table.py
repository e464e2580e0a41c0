"""The matched-bits protection experiment as one resumable run: ``lrm-interp experiment protection``.

For one model that solves the toy tasks (the shipped toy reasoner, the distilled SmolLM2 reasoner),
every row planned by :class:`~lrm_interp.experiments.protection.ProtectionPlanner` (none, per-weight
by each saliency, the paper's final-layer MLP, module-level mixed precision, behaviour-guided GPTQ,
plain ``b+1``-bit; the table is in :mod:`lrm_interp.experiments.protection`) quantizes a fresh copy of
the model and is measured here: accuracy on held-out problems (greedy answers,
:func:`lrm_interp.toy.evaluate.evaluate`).

Every row states its exact bits per weight, accuracy per family, the Wilson 95 % interval of the
mean over all problems, and ``recovered = (acc − acc_none) / (acc_fp − acc_none)``.
The run writes to ``out``: ``settings.json`` (what was asked and the model's and tokenizer's
fingerprints; the traces and problems are generated from seeds in the settings),
``rows.jsonl`` (rewritten atomically after every row: an interrupted run resumes at the next
row; a folder holding another run's settings is refused), and at the end ``table.md``,
``table.csv`` and ``bpw_accuracy.png``.

Each row of ``rows.jsonl`` records what it was measured with (:data:`MEASURED_WITH`: the settings
and the model's and tokenizer's fingerprints, as in ``settings.json``). A resume never serves a
row measured with anything else than the folder's settings: after a hand edit of
``settings.json`` (its length limit 300 → 20, say) the rows measured at 300 tokens were shown as
the 20-token table (H9-EXS); such a row is now refused naming it and the setting.

``settings.json`` says whether its rows must carry that record: format :data:`FORMAT`
(``lrm_interp.protection_experiment/2``) does, and a row without one is refused naming its line
(a stripped record and an edited ``settings.json`` served the old rows, H10-EXK). A folder of
format :data:`FORMAT_UNCHECKED` (``/1``, written before rows recorded it) still resumes: its rows
without a record are accepted unchecked, and the folder keeps that format (a resume does not
vouch for rows it could not check) until every row in it carries a record.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lrm_interp._io import atomic_save_figure, atomic_write_text, iter_jsonl
from lrm_interp.attribution.resume import read_json_object
from lrm_interp.checks import checked_arguments, shown_value
from lrm_interp.evaluation.generation import count_at_limit, length_limit_warning
from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.evaluation.paired import PairedComparison, compare_outcomes
from lrm_interp.experiments.protection import ExperimentSettings, ProtectionPlanner, RowPlan, check_only
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import check_not_quantized, model_provenance, quantized_folder_note
from lrm_interp.toy.evaluate import evaluate_quietly, score_responses
from lrm_interp.toy.tasks import model_world, problems

FORMAT = "lrm_interp.protection_experiment/2"
#: the format of ``settings.json`` before every row had to record :data:`MEASURED_WITH` (module docs):
#: read, and kept by a resume while a row in the folder lacks the record
FORMAT_UNCHECKED = "lrm_interp.protection_experiment/1"
#: the key of a ``rows.jsonl`` line that records what its row was measured with: ``{"settings":
#: ..., "weights_fingerprint": ..., "tokenizer_fingerprint": ...}`` (``settings.json`` without its format)
MEASURED_WITH = "measured_with"
#: the key of the full-precision row's :data:`MEASURED_WITH` record holding how many of its answers hit
#: ``max_new_tokens`` (:func:`~lrm_interp.evaluation.generation.count_at_limit`), kept for a resume
AT_LIMIT = "at_limit"
#: the key beside :data:`AT_LIMIT` holding :func:`at_limit_digest` of the count and its row (H21-EPATL)
AT_LIMIT_DIGEST = "at_limit_sha256"
#: the key of every row's :data:`MEASURED_WITH` record holding :func:`row_digest` of the row as written
#: (H22-EROWS): a hand-edited field of a resumed row (its bits per weight, a consistent forgery of its
#: answers) is refused; a row without it (written before the digest) is checked as before
ROW_DIGEST = "row_sha256"
KINDS = ("fp", "none", "per-weight", "module", "mixed", "guided", "plain")


@dataclass(frozen=True)
class ResultRow:
    """One measured row: ``accuracy`` per family and ``mean`` in [0, 1] over ``n`` problems
    (``correct`` of them right), ``ci`` Wilson 95 %, ``bpw`` exact bits per weight."""

    label: str
    kind: str
    bpw: float
    accuracy: dict[str, float]
    mean: float
    n: int
    correct: int
    ci: tuple[float, float]
    modules: str = ""
    seconds: float = 0.0
    outcomes: str = ""

    def __post_init__(self) -> None:
        if self.outcomes and (len(self.outcomes) != self.n or set(self.outcomes) - {"0", "1"}):
            raise ValueError(f"row {self.label!r}: outcomes must be {self.n} characters '0'/'1'")

    @property
    def hits(self) -> list[int]:
        """Per held-out problem (the run's order): 1 if answered correctly; ``[]`` for rows
        measured before per-problem outcomes were recorded."""
        return [int(c) for c in self.outcomes]


def is_attribution_guided(r: ResultRow) -> bool:
    """Rows whose protection is chosen by behaviour attribution (per-weight, mixed precision,
    behaviour-guided GPTQ): the rows the paper's claim is about."""
    return "attribution" in r.label or r.kind == "guided"


@dataclass(frozen=True)
class ProtectionTable:
    """The rows of one run with its settings and the model's provenance."""

    settings: ExperimentSettings
    rows: tuple[ResultRow, ...]
    model: dict[str, Any] = field(default_factory=dict)
    #: what makes the table mean nothing (:func:`lrm_interp.evaluation.generation.length_limit_warning`:
    #: full precision answers nothing, or its answers hit the length limit); shown in ``table.md``
    #: instead of the paired comparisons
    warnings: tuple[str, ...] = ()

    def row(self, label: str) -> ResultRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no row {label!r} (rows: {[r.label for r in self.rows]})")

    def recovered(self, r: ResultRow) -> float | None:
        """``(acc − acc_none) / (acc_fp − acc_none)``; ``None`` for the fp/none rows or no loss."""
        fp, none = self.row("fp").mean, self.row("none").mean
        if r.kind in ("fp", "none") or fp <= none:
            return None
        return (r.mean - none) / (fp - none)

    def paired(self, a: str, b: str) -> PairedComparison:
        """Row ``a`` vs row ``b`` on the same problems (:func:`~lrm_interp.evaluation.paired.compare_outcomes`):
        accuracy difference with its paired 95 % interval and the exact McNemar p-value.
        ``ValueError`` if a row was measured before per-problem outcomes were recorded."""
        ra, rb = self.row(a), self.row(b)
        for r in (ra, rb):
            if not r.outcomes:
                raise ValueError(
                    f"row {r.label!r} has no per-problem outcomes (measured by an older version); "
                    f"re-measure it with --redo {r.label!r}"
                )
        return compare_outcomes(ra.hits, rb.hits, names=(a, b))

    def comparisons(self) -> list[PairedComparison]:
        """The best attribution-guided row (highest mean, among rows with per-problem outcomes
        below ``b+1`` bits) paired against every other row with outcomes that is not
        attribution-guided (fp, none, each saliency baseline); ``[]`` if there is none."""
        have = [r for r in self.rows if r.outcomes]
        guided = [r for r in have if is_attribution_guided(r) and r.kind != "plain"]
        if not guided:
            return []
        best = max(guided, key=lambda r: r.mean)
        return [self.paired(best.label, r.label) for r in have if not is_attribution_guided(r)]

    def __repr__(self) -> str:
        s = self.settings
        measured = [r for r in self.rows if r.kind not in ("fp", "plain")]
        best = max(measured, key=lambda r: r.mean, default=None)
        tail = (
            "" if best is None else f"; best below b+1 bits: {best.label} {100 * best.mean:.1f}% at {best.bpw:.3f} bpw"
        )
        return f"ProtectionTable({s.model}, {s.quantizer.upper()} {s.bits}-bit, {len(self.rows)} rows{tail})"

    def _repr_html_(self) -> str:
        """Jupyter: the table (accuracy %, Wilson 95 % interval, recovered)."""
        from lrm_interp.display import box, html_table

        fams = list(self.rows[0].accuracy) if self.rows else []
        rows = []
        for r in self.rows:
            rec = self.recovered(r)
            rows.append(
                [r.label, r.kind, f"{r.bpw:.3f}"]
                + [f"{100 * r.accuracy[f]:.0f}" for f in fams]
                + [
                    f"{100 * r.mean:.1f}",
                    f"{100 * r.ci[0]:.1f}–{100 * r.ci[1]:.1f}",
                    "" if rec is None else f"{100 * rec:.0f}%",
                ]
            )
        return box(
            repr(self), html_table(["protection", "kind", "bits/weight", *fams, "mean", "95% CI", "recovered"], rows)
        )

    def to_dataframe(self):
        """One row per measured row: label, kind, bpw, each family, mean, CI, recovered."""
        import pandas as pd

        fams = list(self.rows[0].accuracy) if self.rows else []
        return pd.DataFrame(
            [
                {
                    "label": r.label,
                    "kind": r.kind,
                    "bpw": r.bpw,
                    **{f: r.accuracy[f] for f in fams},
                    "mean": r.mean,
                    "ci_low": r.ci[0],
                    "ci_high": r.ci[1],
                    "n": r.n,
                    "recovered": self.recovered(r),
                    "modules": r.modules,
                }
                for r in self.rows
            ]
        )

    def to_markdown(self) -> str:
        """The table in docs/protection.md's layout (percentages)."""
        s = self.settings
        fams = list(self.rows[0].accuracy) if self.rows else []
        head = (
            f"{s.model}, {s.quantizer.upper()} {s.bits}-bit, group {s.group_size or 'per channel'}, "
            f"{'symmetric' if s.symmetric else 'asymmetric'}; {s.per_family} held-out problems per family; "
            f"budget {s.budget:.0%}; attribution from {s.attribution_traces} gold traces per family."
        )
        lines = [
            head,
            "",
            "| protection | kind | bits/weight | " + " | ".join(fams) + " | mean | 95% CI | recovered |",
            "|---|---|---|" + "---|" * (len(fams) + 3),
        ]
        if self.warnings:
            lines[1:1] = ["", *(f"**Warning: {w}.**" for w in self.warnings)]
        for r in self.rows:
            rec = self.recovered(r)
            label = r.label.replace("|", "\\|")  # a pipe in a label would split the Markdown cell
            lines.append(
                f"| {label} | {r.kind} | {r.bpw:.3f} | "
                + " | ".join(f"{100 * r.accuracy[f]:.0f}" for f in fams)
                + f" | {100 * r.mean:.1f} | {100 * r.ci[0]:.1f}–{100 * r.ci[1]:.1f} | "
                + ("" if rec is None else f"{100 * rec:.0f}%")
                + " |"
            )
        return "\n".join(lines) + "\n" + ("" if self.warnings else self._paired_markdown())

    def _paired_markdown(self) -> str:
        comps = self.comparisons()
        if not comps:
            return ""
        best = comps[0].a.replace("|", "\\|")
        lines = [
            "",
            f"Paired on the same {comps[0].n} problems: **{best}** against each other row "
            "(difference in points, paired bootstrap 95 % interval, problems only it / only the other "
            "solved, exact McNemar p; *beyond* = the interval excludes 0 and p < 0.05).",
            "",
            "| against | difference | paired 95% CI | only it | only the other | p | beyond |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in comps:
            other = c.b.replace("|", "\\|")
            lines.append(
                f"| {other} | {100 * c.diff:+.1f} | {100 * c.ci[0]:+.1f} to {100 * c.ci[1]:+.1f} "
                f"| {c.a_only} | {c.b_only} | {c.p:.2g} | {'yes' if c.beyond_interval else 'no'} |"
            )
        missing = [r.label for r in self.rows if not r.outcomes]
        if missing:
            lines += [
                "",
                "Not paired (measured before per-problem outcomes were recorded): " + "; ".join(missing) + ".",
            ]
        return "\n".join(lines) + "\n"

    def comparisons_dataframe(self):
        """:meth:`comparisons` as a DataFrame: a, b, n, diff, ci_low, ci_high, a_only, b_only, p, beyond."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "a": c.a,
                    "b": c.b,
                    "n": c.n,
                    "diff": c.diff,
                    "ci_low": c.ci[0],
                    "ci_high": c.ci[1],
                    "a_only": c.a_only,
                    "b_only": c.b_only,
                    "p": c.p,
                    "beyond": c.beyond_interval,
                }
                for c in self.comparisons()
            ],
            columns=["a", "b", "n", "diff", "ci_low", "ci_high", "a_only", "b_only", "p", "beyond"],
        )

    def plot(self):
        """bpw (x) vs mean accuracy (y) with the Wilson intervals, one marker per kind; a ``Figure``."""
        from lrm_interp.attribution.plots import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        markers = {"none": "s", "per-weight": "o", "module": "^", "mixed": "D", "guided": "P", "plain": "s"}
        for kind, mk in markers.items():
            rs = [r for r in self.rows if r.kind == kind]
            if not rs:
                continue
            ax.errorbar(
                [r.bpw for r in rs],
                [100 * r.mean for r in rs],
                yerr=[
                    [max(0.0, 100 * (r.mean - r.ci[0])) for r in rs],
                    [max(0.0, 100 * (r.ci[1] - r.mean)) for r in rs],
                ],
                fmt=mk,
                capsize=3,
                label=kind,
                alpha=0.85,
            )
            for i, r in enumerate(rs):  # staggered offsets: rows at the same bpw would overprint
                ax.annotate(
                    r.label,
                    (r.bpw, 100 * r.mean),
                    fontsize=6,
                    xytext=(4, (-7, 2, 11)[i % 3]),
                    textcoords="offset points",
                )
        fp = self.row("fp")
        ax.axhline(100 * fp.mean, color="grey", ls="--", lw=1, label="full precision")
        s = self.settings
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{s.model}: {s.quantizer.upper()} {s.bits}-bit, matched bits per weight", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig

    @checked_arguments
    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv``, ``paired.csv`` and ``bpw_accuracy.png`` into ``out``;
        their paths."""
        out = Path(out)
        paths = {
            "markdown": out / "table.md",
            "csv": out / "table.csv",
            "paired": out / "paired.csv",
            "plot": out / "bpw_accuracy.png",
        }
        atomic_write_text(paths["markdown"], self.to_markdown())
        atomic_write_text(paths["csv"], self.to_dataframe().to_csv(index=False))
        atomic_write_text(paths["paired"], self.comparisons_dataframe().to_csv(index=False))
        fig = self.plot()
        atomic_save_figure(fig, paths["plot"], dpi=130)
        _plt_close(fig)
        return paths


def _plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _settings_json(s: ExperimentSettings, fingerprint: str | None, tokenizer_fingerprint: str | None) -> dict[str, Any]:
    d = asdict(s)
    d["random_seeds"] = list(s.random_seeds)
    return {
        "format": FORMAT,
        "settings": d,
        "weights_fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }


def at_limit_digest(row: ResultRow, at_limit: Any) -> str:
    """SHA-256 binding a full-precision row's count of answers cut by ``max_new_tokens`` to that row
    (label, ``n``, ``correct``, per-problem outcomes): the count cannot be recomputed on a resume (the
    answers are not stored), so a hand-edited one is told by this digest (H21-EPATL)."""
    doc = [row.label, row.n, row.correct, row.outcomes, at_limit]
    return hashlib.sha256(json.dumps(doc).encode("utf-8")).hexdigest()


def row_digest(row: ResultRow) -> str:
    """SHA-256 of a row's fields (:class:`ResultRow`, as ``rows.jsonl`` holds them) in canonical JSON
    (sorted keys), kept in its :data:`MEASURED_WITH` record as :data:`ROW_DIGEST` when it is measured:
    a resume refuses a row whose fields no longer match it (H22-EROWS: an edited ``bpw`` 3.742 → 3.3,
    or a "none" row forged to 3 of 3 right with its mean, interval and accuracy to match, reached
    ``table.md``)."""
    return hashlib.sha256(json.dumps(asdict(row), sort_keys=True).encode("utf-8")).hexdigest()


def _check_row_digest(rec: dict[str, Any], row: ResultRow, where: str) -> None:
    """Refuse (``ValueError`` naming ``where`` and the row) a row whose recorded :data:`ROW_DIGEST`
    is not :func:`row_digest` of its fields: one was edited after it was measured (H22-EROWS). A
    record without the digest (a row of an older run) is accepted, as before."""
    if ROW_DIGEST in rec and rec[ROW_DIGEST] != row_digest(row):
        raise ValueError(
            f"{where}: row {row.label!r}: its fields are not the ones it was measured with "
            f"({MEASURED_WITH}.{ROW_DIGEST} does not match them); the file was edited or is corrupt: "
            "delete that line (the row is re-measured) or use a new --out folder"
        )


def _record_at_limit(rec: dict[str, Any], row: ResultRow, at_limit: int) -> None:
    rec[AT_LIMIT] = at_limit
    rec[AT_LIMIT_DIGEST] = at_limit_digest(row, at_limit)


def _check_at_limit(rec: dict[str, Any], row: ResultRow, where: str) -> None:
    """Refuse (``ValueError`` naming ``where`` and the row) a recorded :data:`AT_LIMIT` that is no
    count of the row's answers or that its :data:`AT_LIMIT_DIGEST` does not vouch for: an edited
    ``3`` → ``0`` printed "0 of 3 answers hit --max-new-tokens 5" (H21-EPATL). A count without a
    digest (written before the digest) is left unknown by :func:`_recorded_at_limit`."""
    if AT_LIMIT not in rec:
        return
    v = rec[AT_LIMIT]
    count = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= row.n
    digest = rec.get(AT_LIMIT_DIGEST)
    if not count or (digest is not None and digest != at_limit_digest(row, v)):
        raise ValueError(
            f"{where}: row {row.label!r}: {MEASURED_WITH}.{AT_LIMIT} {shown_value(v)} is not the count of its "
            f"{row.n} answers that hit the length limit it was recorded with"
            + ("" if count else f" (a count is 0 to {row.n})")
            + "; the file was edited or is corrupt: delete that line (the row is re-measured) or use a new --out folder"
        )


def _recorded_at_limit(rec: Any, row: ResultRow) -> int | None:
    """The number of full-precision answers cut by ``max_new_tokens`` that the row's
    :data:`MEASURED_WITH` record keeps (:data:`AT_LIMIT`, vouched for by :data:`AT_LIMIT_DIGEST`:
    :func:`_check_at_limit` refused any other), or ``None``: a row of an older run, or a count
    without its digest. A resume of a finished run rewrote ``table.md`` without the count ("3 of 3
    answers hit --max-new-tokens 40" became a question, H20-EPWARN)."""
    if not isinstance(rec, dict) or rec.get(AT_LIMIT_DIGEST) is None:
        return None
    v = rec.get(AT_LIMIT)
    return v if rec[AT_LIMIT_DIGEST] == at_limit_digest(row, v) else None


def _measured_with(want: dict[str, Any]) -> dict[str, Any]:
    """What a row measured now is measured with (:data:`MEASURED_WITH`): ``want`` (the run's
    ``settings.json``) without its format, as JSON reads it back."""
    return json.loads(json.dumps({k: v for k, v in want.items() if k != "format"}))


def _check_measured_with(rec: Any, label: str, where: str, want: dict[str, Any]) -> None:
    """Refuse (``ValueError`` naming ``where``, the row and what differs) a row whose recorded
    :data:`MEASURED_WITH` is not the folder's ``settings.json`` (``want``, which the folder check
    found equal to this run's): ``settings.json`` was edited by hand after the row was measured
    (H9-EXS). A setting the record lacks (one added to :class:`ExperimentSettings` after the row
    was written) counts as its default."""
    if not (isinstance(rec, dict) and isinstance(rec.get("settings"), dict)):
        raise ValueError(
            f"{where}: row {label!r}: {MEASURED_WITH} is not a record of settings ({shown_value(rec)}); "
            "the file was edited or is corrupt: delete that line (the row is re-measured) or use a new --out folder"
        )
    now = _measured_with(want)
    defaults = json.loads(json.dumps(asdict(ExperimentSettings())))
    was = {**defaults, **{k: v for k, v in rec["settings"].items() if k in now["settings"]}}
    extra = sorted(set(rec["settings"]) - set(now["settings"]))
    fields = sorted(k for k in now["settings"] if was.get(k) != now["settings"][k])
    then = [f"{k} {json.dumps(was.get(k))}" for k in fields] + [f"{k} {json.dumps(rec['settings'][k])}" for k in extra]
    says = [f"{k} {json.dumps(now['settings'][k])}" for k in fields] + [f"no {k}" for k in extra]
    for k, what in (("weights_fingerprint", "model weights"), ("tokenizer_fingerprint", "tokenizer")):
        if rec.get(k) != now.get(k):
            then.append(f"{what} {str(rec.get(k))[:12]}")
            says.append(f"{what} {str(now.get(k))[:12]}")
    if then:
        raise ValueError(
            f"{where}: row {label!r} was measured with {', '.join(then)} but settings.json says "
            f"{', '.join(says)}: settings.json was edited after the row was measured; restore it, delete "
            "that line (the row is re-measured) or use a new --out folder"
        )


def _check_row(d: Any, where: str, n: int, families: Sequence[str] | None = None) -> ResultRow:
    """One line of ``rows.jsonl`` as a :class:`ResultRow`, or ``ValueError`` naming ``where``
    (file:line) if it is not what :func:`_measure` writes: a hand-edited or corrupt row would
    otherwise print a table whose mean, interval and bits disagree with each other.
    ``families``: the family of each of the run's ``n`` problems, in its order; given, a row with
    per-problem outcomes must state as accuracy per family the share of its outcomes right in
    that family (H22-EROWS: ``math`` 100 % beside outcomes ``000`` reached ``table.md``)."""
    fix = "the file was edited or is corrupt: delete that line (the row is re-measured) or use a new --out folder"
    try:
        d = dict(d)
        d["ci"] = tuple(d["ci"])
        r = ResultRow(**d)
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"{where}: not a protection row ({e}); {fix}") from None
    bad = []
    if r.n != n:
        bad.append(f"n = {r.n}, but this run holds {n} problems")
    if not (isinstance(r.n, int) and not isinstance(r.n, bool) and r.n >= 1):
        bad.append(f"n = {r.n!r} is not a count of problems")
    elif not (isinstance(r.correct, int) and not isinstance(r.correct, bool) and 0 <= r.correct <= r.n):
        bad.append(f"correct = {r.correct!r} outside 0..{r.n}")
    elif not (isinstance(r.mean, (int, float)) and abs(r.mean - r.correct / max(r.n, 1)) <= 1e-9):
        bad.append(f"mean {r.mean!r} ≠ correct / n = {r.correct}/{r.n}")
    elif len(r.ci) != 2 or max(abs(x - y) for x, y in zip(r.ci, wilson_interval(r.correct, r.n))) > 1e-9:
        bad.append(f"ci {list(r.ci)} is not the Wilson interval of {r.correct}/{r.n}")
    if r.outcomes and r.outcomes.count("1") != r.correct:
        bad.append(f"outcomes hold {r.outcomes.count('1')} correct answers, correct = {r.correct}")
    if not (isinstance(r.bpw, (int, float)) and math.isfinite(r.bpw) and 0 < r.bpw <= 32):
        bad.append(f"bits per weight {r.bpw!r} outside (0, 32]")
    if r.kind not in KINDS:
        bad.append(f"kind {r.kind!r} not one of {', '.join(KINDS)}")
    accs = list(r.accuracy.values()) if isinstance(r.accuracy, dict) else [None]
    if not all(isinstance(a, (int, float)) and 0 <= a <= 1 for a in accs):
        bad.append(f"accuracy {r.accuracy!r} not in [0, 1] per family")
    elif families is not None and r.outcomes and len(families) == len(r.outcomes):
        bad += _family_mismatches(r, families)
    if bad:
        raise ValueError(f"{where}: row {r.label!r}: {'; '.join(bad)}; {fix}")
    return r


def _family_mismatches(r: ResultRow, families: Sequence[str]) -> list[str]:
    """What in ``r.accuracy`` is not the share of ``r.outcomes`` right per family (``families``: the
    family of each outcome), in words; ``[]`` when all agree (as :func:`_measure` writes them)."""
    per: dict[str, list[int]] = {}
    for f, c in zip(families, r.outcomes):
        per.setdefault(f, []).append(int(c))
    if set(r.accuracy) != set(per):
        return [f"accuracy has families {sorted(r.accuracy)}, but the run's problems are of {sorted(per)}"]
    return [
        f"accuracy {f} {r.accuracy[f]!r} ≠ {sum(h)}/{len(h)} of its outcomes in {f}"
        for f, h in per.items()
        if abs(r.accuracy[f] - sum(h) / len(h)) > 1e-9
    ]


#: what to do about a ``settings.json`` that cannot be read as an experiment's settings
_SETTINGS_FIX = "the file was edited or is corrupt: restore it or use a new --out folder"


def _read_settings(out: Path) -> dict[str, Any] | None:
    """The folder's ``settings.json`` (``None``: a new folder), before anything is loaded, or
    ``ValueError`` naming the file: not a JSON object, or ``settings`` not an object (``[1]`` and
    ``{"settings": 5}`` gave "internal error (AttributeError ...)" after the model loaded, invalid
    JSON a message naming no file, H10-JSN); a folder this run must not write into (a file, a
    non-empty folder without ``settings.json``: the table files would replace the user's own
    ``table.md`` / ``table.csv``; ``rows.jsonl`` without ``settings.json``). A folder written
    before the length limit was a setting reads it as 480, its value then."""
    sp = out / "settings.json"
    if not sp.exists():
        if (out / "rows.jsonl").exists():
            raise ValueError(f"{out}: rows.jsonl without settings.json — not a folder this run can resume")
        if out.exists() or out.is_symlink():
            if not out.is_dir():
                raise ValueError(f"{out} exists and is not a folder; use a new --out folder")
            if any(out.iterdir()):
                shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
                raise ValueError(
                    f"{out} is not empty and not an experiment folder (no settings.json; holds {shown}); "
                    "use a new --out folder"
                )
        return None
    have = read_json_object(sp, _SETTINGS_FIX)
    if not isinstance(have.get("settings"), dict):
        raise ValueError(f"{sp}: settings is {shown_value(have.get('settings'))}, not an object; {_SETTINGS_FIX}")
    have["settings"].setdefault("max_new_tokens", 480)  # written before the length limit was a setting
    return have


def _differences(
    have: dict[str, Any], want: dict[str, Any], *, fingerprints: bool = True, settings: bool = True
) -> list[str]:
    """What the folder's settings (``have``) and this run's (``want``) differ in, in words: each
    setting, and (``fingerprints``) the model's weights and tokenizer; and ``format`` for a format
    this version does not read (:data:`FORMAT`, :data:`FORMAT_UNCHECKED`). ``settings=False``:
    all but the settings (what no rerun with other flags can resolve)."""
    from lrm_interp.attribution.resume import settings_difference

    hs, ws = have.get("settings", {}), want["settings"]
    diff = [settings_difference(hs, ws)] if settings and hs != ws else []  # both values (H29-EXHINT)
    if fingerprints:
        if have.get("weights_fingerprint") != want["weights_fingerprint"]:
            diff.append("weights_fingerprint (another model)")
        if have.get("tokenizer_fingerprint") != want["tokenizer_fingerprint"]:
            diff.append("tokenizer_fingerprint (another tokenizer)")
    if have.get("format") not in (FORMAT, FORMAT_UNCHECKED):
        diff.append(f"format {have.get('format')!r}")
    return diff


def _refuse_other_experiment(out: Path, diff: list[str], settings_only: bool) -> None:
    """``ValueError`` for a folder holding another experiment (``diff``: what differs; where only
    settings differ (``settings_only``), the settings that resume it are named)."""
    if diff:
        hint = f"rerun with the settings recorded in {out / 'settings.json'} to resume it, or " if settings_only else ""
        raise ValueError(f"{out} holds another experiment (differs in {', '.join(diff)}); {hint}use a new --out folder")


def _check_folder(
    out: Path,
    want: dict[str, Any],
    n: int,
    records: dict[str, Any] | None = None,
    families: Sequence[str] | None = None,
) -> tuple[list[ResultRow], str]:
    """``(rows, format)``: the rows already measured in ``out`` (resume; each checked by
    :func:`_check_row` against the run's ``n`` problems, and by :func:`_check_measured_with` against
    ``want`` where it records what it was measured with), and the format ``settings.json`` is to
    be written in (:data:`FORMAT`, or :data:`FORMAT_UNCHECKED` for an older folder holding a row
    without a record). ``ValueError`` if it holds another run or is not an experiment folder
    (:func:`_read_settings`), or for a row without a record in a folder of :data:`FORMAT` (the
    record was removed, H10-EXK). ``records``: filled with each row's :data:`MEASURED_WITH`
    record, by label (rows of older runs have none). ``families``: the family of each problem, in
    the run's order, to check each row's accuracy per family against its outcomes (:func:`_check_row`);
    a row whose record holds :data:`ROW_DIGEST` must match it (:func:`_check_row_digest`, H22-EROWS)."""
    have = _read_settings(out)
    if have is None:
        return [], FORMAT
    _refuse_other_experiment(out, _differences(have, want), not _differences(have, want, settings=False))
    checked = have.get("format") == FORMAT  # its rows must each record what they were measured with
    rows: list[ResultRow] = []
    unrecorded = 0
    rp = out / "rows.jsonl"
    if rp.exists():
        try:
            for _, where, d in iter_jsonl(rp):  # where: "<rows.jsonl>:<line>"
                rec = d.pop(MEASURED_WITH, None) if isinstance(d, dict) else None
                r = _check_row(d, where, n, families)
                if any(r.label == o.label for o in rows):
                    raise ValueError(f"{where}: row {r.label!r} appears twice; delete one of the two lines")
                if rec is not None:
                    _check_measured_with(rec, r.label, where, want)
                    _check_at_limit(rec, r, where)
                    _check_row_digest(rec, r, where)
                    if records is not None:
                        records[r.label] = rec
                elif checked:  # a stripped record: the row cannot be told from one of other settings
                    raise ValueError(
                        f"{where}: row {r.label!r} records no {MEASURED_WITH}, but {out / 'settings.json'} "
                        f"(format {FORMAT}) says every row records what it was measured with: the record "
                        "was removed, so the row may be of other settings; delete that line (the row is "
                        "re-measured) or use a new --out folder"
                    )
                else:  # a row of an older run (format FORMAT_UNCHECKED): accepted unchecked, as before
                    unrecorded += 1
                rows.append(r)
        except ValueError as e:
            if "delete" in str(e):
                raise
            raise ValueError(f"{e}; delete that line (the row is re-measured) or use a new --out folder") from None
    return rows, FORMAT if checked or not unrecorded else FORMAT_UNCHECKED


def _measure(
    label: str,
    kind: str,
    model,
    tokenizer,
    held,
    bpw: float,
    modules: str,
    t0: float,
    max_new_tokens: int,
    at_limit: list[int] | None = None,
) -> ResultRow:
    """One row measured; ``at_limit``: a list the number of answers cut by ``max_new_tokens`` is appended to."""
    acc, responses = evaluate_quietly(  # the answers at the limit are counted here (at_limit, H7-E1)
        model, tokenizer, held, batch_size=150, max_new_tokens=max_new_tokens, return_responses=True
    )
    if at_limit is not None:
        at_limit.append(count_at_limit(tokenizer, responses, max_new_tokens))
    fams = [f for f in acc if f != "mean"]
    hits = score_responses(held, responses)
    correct = sum(hits)
    lo, hi = wilson_interval(correct, len(held))
    return ResultRow(
        label,
        kind,
        float(bpw),
        {f: float(acc[f]) for f in fams},
        correct / len(held),
        len(held),
        correct,
        (lo, hi),
        modules,
        round(time.time() - t0, 1),
        "".join("1" if h else "0" for h in hits),
    )


#: why the experiment refuses a model that is already quantized (H12-EXQ)
EXPERIMENT_REQUANTIZED = (
    "the experiment's fp row is its model, labelled full precision, and every other row quantizes that model "
    "again, so the gap protection should close would be measured between two quantized models"
)


@checked_arguments
def run_protection_experiment(
    out: str | Path,
    settings: ExperimentSettings | None = None,
    *,
    only: Sequence[str] | None = None,
    redo: Sequence[str] | None = None,
    progress: bool = True,
    **kw: Any,
) -> ProtectionTable:
    """Run (or resume) the experiment into folder ``out`` and write its table (module docs).

    ``settings`` or keyword fields of :class:`~lrm_interp.experiments.protection.ExperimentSettings`.
    ``only``: measure just the rows whose label contains one of these strings (plus fp / none,
    which ``recovered`` needs; :meth:`~lrm_interp.experiments.protection.ProtectionPlanner.select`).
    ``redo``: re-measure the selected rows whose label contains one of these although ``out``
    already holds them (e.g. rows measured before per-problem outcomes were recorded, which the
    paired comparisons need); each text must match a row (as for ``only``).
    Both are lists: a string (``only='fp'``) is refused with ``TypeError`` (write ``only=['fp']``).
    Returns the :class:`ProtectionTable` of every row measured in ``out`` so far.
    """
    s = settings or ExperimentSettings(**kw)
    out = Path(out)
    check_only(s, only)  # an `only` that selects no row (or a string, H14-ONS) is refused before anything is loaded
    check_only(s, redo, "redo")
    note = quantized_folder_note(s.model, EXPERIMENT_REQUANTIZED)
    if note is not None:  # before the model loads (H12-EXQ)
        raise ValueError(note)
    have = _read_settings(out)  # an unreadable settings.json or another run's settings: before the model loads
    if have is not None:
        want = _settings_json(s, None, None)
        _refuse_other_experiment(
            out,
            _differences(have, want, fingerprints=False),
            not _differences(have, want, fingerprints=False, settings=False),
        )
    model, tok = load_model(s.model)
    model.eval()
    check_not_quantized(model, EXPERIMENT_REQUANTIZED)
    prov = model_provenance(model, tok)
    want = _settings_json(s, prov["weights_fingerprint"], (prov.get("tokenizer") or {}).get("fingerprint"))
    held = problems(s.per_family, seed=s.problem_seed, world=model_world(model))
    records: dict[str, Any] = {}  # label -> what the row was measured with (none for rows of older runs)
    done, fmt = _check_folder(out, want, len(held), records, [p.family for p in held])
    out.mkdir(parents=True, exist_ok=True)
    # an older folder keeps its format while a row there lacks a record: it is not vouched for (H10-EXK)
    atomic_write_text(out / "settings.json", json.dumps({**want, "format": fmt}, indent=1))
    rows = {r.label: r for r in done}

    def line(r: ResultRow) -> str:
        d = asdict(r)
        if r.label in records:
            d[MEASURED_WITH] = records[r.label]
        return json.dumps(d) + "\n"

    def save_rows():
        atomic_write_text(out / "rows.jsonl", "".join(line(r) for r in rows.values()))

    plans: list[RowPlan] = ProtectionPlanner(model, tok, s, progress=progress).select(only)
    unselected = [t for t in redo or () if not any(t in p.label for p in plans)]
    if unselected:
        raise ValueError(f"redo: {', '.join(map(repr, unselected))} matches no row selected by only={list(only or [])}")
    todo = [p for p in plans if p.label not in rows or any(t in p.label for t in redo or ())]
    fp_at_limit: int | None = None
    with tqdm(
        total=len(plans), initial=len(plans) - len(todo), desc="protection rows", unit="row", disable=not progress
    ) as bar:
        for p in todo:
            t0 = time.time()
            q = model if p.kind == "fp" else copy.deepcopy(model)
            bpw, modules = p.quantize(q)
            cut: list[int] | None = [] if p.kind == "fp" else None
            rows[p.label] = _measure(p.label, p.kind, q, tok, held, bpw, modules, t0, s.max_new_tokens, cut)
            records[p.label] = {**_measured_with(want), ROW_DIGEST: row_digest(rows[p.label])}
            if cut:
                fp_at_limit = cut[0]
                _record_at_limit(records[p.label], rows[p.label], fp_at_limit)
            del q
            save_rows()
            bar.set_postfix_str(f"{p.label}: {100 * rows[p.label].mean:.1f}%")
            bar.update(1)
    order = [p.label for p in plans] + [k for k in rows if k not in {p.label for p in plans}]
    fp = next((r for r in rows.values() if r.kind == "fp"), None)
    if fp is not None and fp_at_limit is None:  # measured before: the count its record keeps (H20-EPWARN)
        fp_at_limit = _recorded_at_limit(records.get(fp.label), fp)
    warn = None if fp is None else length_limit_warning(fp.correct, fp.n, fp_at_limit, s.max_new_tokens)
    table = ProtectionTable(s, tuple(rows[k] for k in order if k in rows), prov, () if warn is None else (warn,))
    table.save(out)
    return table


__all__ = [
    "FORMAT",
    "FORMAT_UNCHECKED",
    "KINDS",
    "MEASURED_WITH",
    "ROW_DIGEST",
    "ResultRow",
    "ProtectionTable",
    "is_attribution_guided",
    "run_protection_experiment",
    # planned in lrm_interp.experiments.protection, re-exported for callers of this module
    "ExperimentSettings",
    "ProtectionPlanner",
    "RowPlan",
]
