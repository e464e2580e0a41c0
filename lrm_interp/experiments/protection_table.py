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
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lrm_interp._io import atomic_save_figure, atomic_write_text, iter_jsonl
from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.experiments.protection import ExperimentSettings, ProtectionPlanner, RowPlan, check_only
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import model_provenance
from lrm_interp.toy.evaluate import evaluate
from lrm_interp.toy.tasks import model_world, problems

FORMAT = "lrm_interp.protection_experiment/1"
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


@dataclass(frozen=True)
class ProtectionTable:
    """The rows of one run with its settings and the model's provenance."""

    settings: ExperimentSettings
    rows: tuple[ResultRow, ...]
    model: dict[str, Any] = field(default_factory=dict)

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
        return "\n".join(lines) + "\n"

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

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv`` and ``bpw_accuracy.png`` into ``out``; their paths."""
        out = Path(out)
        paths = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "bpw_accuracy.png"}
        atomic_write_text(paths["markdown"], self.to_markdown())
        atomic_write_text(paths["csv"], self.to_dataframe().to_csv(index=False))
        fig = self.plot()
        atomic_save_figure(fig, paths["plot"], dpi=130)
        _plt_close(fig)
        return paths


def _plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _settings_json(s: ExperimentSettings, fingerprint: str, tokenizer_fingerprint: str | None) -> dict[str, Any]:
    d = asdict(s)
    d["random_seeds"] = list(s.random_seeds)
    return {
        "format": FORMAT,
        "settings": d,
        "weights_fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }


def _check_folder(out: Path, want: dict[str, Any]) -> list[ResultRow]:
    """The rows already measured in ``out`` (resume), or ``ValueError`` if it holds another run
    or is not an experiment folder (a file, or a non-empty folder without ``settings.json``: the
    table files written here would replace the user's own ``table.md`` / ``table.csv``)."""
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
        return []
    have = json.loads(sp.read_text())
    if isinstance(have.get("settings"), dict):  # written before the length limit was a setting
        have["settings"].setdefault("max_new_tokens", 480)
    if have != want:
        diff = sorted(
            k
            for k in set(have.get("settings", {})) | set(want["settings"])
            if have.get("settings", {}).get(k) != want["settings"].get(k)
        )
        if have.get("weights_fingerprint") != want["weights_fingerprint"]:
            diff.append("weights_fingerprint (another model)")
        if have.get("tokenizer_fingerprint") != want["tokenizer_fingerprint"]:
            diff.append("tokenizer_fingerprint (another tokenizer)")
        raise ValueError(
            f"{out} holds another experiment (differs in {', '.join(diff) or 'format'}); use a new --out folder"
        )
    rows = []
    rp = out / "rows.jsonl"
    if rp.exists():
        for _, _, d in iter_jsonl(rp):
            d["ci"] = tuple(d["ci"])
            rows.append(ResultRow(**d))
    return rows


def _measure(
    label: str, kind: str, model, tokenizer, held, bpw: float, modules: str, t0: float, max_new_tokens: int
) -> ResultRow:
    acc = evaluate(model, tokenizer, held, batch_size=150, max_new_tokens=max_new_tokens)
    fams = [f for f in acc if f != "mean"]
    correct = sum(round(acc[f] * sum(p.family == f for p in held)) for f in fams)
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
    )


def run_protection_experiment(
    out: str | Path,
    settings: ExperimentSettings | None = None,
    *,
    only: Sequence[str] | None = None,
    progress: bool = True,
    **kw: Any,
) -> ProtectionTable:
    """Run (or resume) the experiment into folder ``out`` and write its table (module docs).

    ``settings`` or keyword fields of :class:`~lrm_interp.experiments.protection.ExperimentSettings`.
    ``only``: measure just the rows whose label contains one of these strings (plus fp / none,
    which ``recovered`` needs; :meth:`~lrm_interp.experiments.protection.ProtectionPlanner.select`).
    Returns the :class:`ProtectionTable` of every row measured in ``out`` so far.
    """
    s = settings or ExperimentSettings(**kw)
    out = Path(out)
    check_only(s, only)  # an `only` that selects no row is refused before anything is loaded
    model, tok = load_model(s.model)
    model.eval()
    prov = model_provenance(model, tok)
    want = _settings_json(s, prov["weights_fingerprint"], (prov.get("tokenizer") or {}).get("fingerprint"))
    done = _check_folder(out, want)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", json.dumps(want, indent=1))
    rows = {r.label: r for r in done}
    held = problems(s.per_family, seed=s.problem_seed, world=model_world(model))

    def save_rows():
        atomic_write_text(out / "rows.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows.values()))

    plans: list[RowPlan] = ProtectionPlanner(model, tok, s, progress=progress).select(only)
    todo = [p for p in plans if p.label not in rows]
    with tqdm(
        total=len(plans), initial=len(plans) - len(todo), desc="protection rows", unit="row", disable=not progress
    ) as bar:
        for p in todo:
            t0 = time.time()
            q = model if p.kind == "fp" else copy.deepcopy(model)
            bpw, modules = p.quantize(q)
            rows[p.label] = _measure(p.label, p.kind, q, tok, held, bpw, modules, t0, s.max_new_tokens)
            del q
            save_rows()
            bar.set_postfix_str(f"{p.label}: {100 * rows[p.label].mean:.1f}%")
            bar.update(1)
    order = [p.label for p in plans] + [k for k in rows if k not in {p.label for p in plans}]
    table = ProtectionTable(s, tuple(rows[k] for k in order if k in rows), prov)
    table.save(out)
    return table


__all__ = [
    "FORMAT",
    "KINDS",
    "ResultRow",
    "ProtectionTable",
    "run_protection_experiment",
    # planned in lrm_interp.experiments.protection, re-exported for callers of this module
    "ExperimentSettings",
    "ProtectionPlanner",
    "RowPlan",
]
