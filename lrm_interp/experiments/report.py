"""Presentation of a study (:mod:`lrm_interp.experiments.study`, the quickstart's compute): the text
summary printed by ``lrm-interp study`` / ``quickstart`` and the self-contained ``report.html``.

The report's sections: the compressed variants at matched bits per weight with their 95 %
intervals, what the intervals allow to conclude (:func:`verdict`, computed from the rows) and the
bits-per-weight plot; the top modules per behaviour; the largest importance decreases; the
attribution heatmap and the importance-shift plot (PNG files embedded as ``data:`` URIs, so the
page needs nothing beside it); the masks file and the allocation; every file written and the
commands that reuse them. No JavaScript, no external resources.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

from lrm_interp._io import atomic_save_figure, atomic_write_text
from lrm_interp.attribution.results import Attribution, ImportanceShift
from lrm_interp.checks import checked_arguments
from lrm_interp.display import esc, html_table
from lrm_interp.experiments.study import StudyResult, StudyRow

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}"
    "h1{font-size:22px}h2{font-size:17px;margin-top:26px;border-bottom:1px solid #ddd}"
    "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:8px;overflow-x:auto;"
    "font-size:12px}code{font-size:12px}"
)


@checked_arguments
def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (``ValueError`` naming a file that is not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- the comparison, as text
def row_label(result: StudyResult, r: StudyRow) -> str:
    """A row's display label: ``3-bit + 2% magnitude`` rather than the planner's label."""
    s = result.settings
    grid = f"group {s.group_size}" if s.group_size else "per channel"
    dtype = result.provenance.get("folders", {}).get("original", "attribution_fp").replace("attribution_", "")
    return {
        "fp": f"full precision ({dtype})",
        "uniform": f"{s.bits}-bit RTN, {grid} (uniform)",
        "magnitude": f"{s.bits}-bit + {s.budget:.0%} magnitude",
        "attribution": f"{s.bits}-bit + {s.budget:.0%} attribution",
        "mixed": "mixed precision by attribution",
    }.get(r.key, r.label)


def _value(v: float, metric: str) -> str:
    return f"{100 * v:.1f}%" if metric == "accuracy" else f"{v:.4f}"


def _ci(r: StudyRow) -> str:
    return (
        f"[{100 * r.ci[0]:.1f}, {100 * r.ci[1]:.1f}]" if r.metric == "accuracy" else f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]"
    )


def comparison_caption(result: StudyResult) -> str:
    """What the comparison table measures (one line)."""
    s, r = result.settings, result.row("uniform")
    if s.metric == "accuracy":
        per = f"{s.per_task} per task" if len(s.tasks) > 1 else s.tasks[0]
        return (
            f"held-out accuracy at matched bits per weight ({r.n} problems: {per}, greedy decoding, "
            "95% Wilson intervals)"
        )
    return (
        f"KL(full precision ‖ variant) per response token at matched bits per weight ({r.n} traces, nats; "
        "95% bootstrap intervals over traces)"
    )


def comparison_table(result: StudyResult) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of the comparison: bits per weight, each task, the overall value, its
    interval and the recovered fraction of the uniform row's loss."""
    s = result.settings
    tasks = list(s.tasks) if s.metric == "accuracy" else []
    head = ["variant", "bits/weight", *tasks, "all" if tasks else "KL", "95% CI", "recovered"]
    rows = []
    for r in result.rows:
        rec = result.recovered(r)
        rows.append(
            [
                row_label(result, r),
                f"{r.bpw:.3f}",
                *[f"{100 * r.per_task[t]:.1f}%" for t in tasks],
                _value(r.value, r.metric),
                _ci(r),
                "" if rec is None else f"{100 * rec:.0f}%",
            ]
        )
    return head, rows


def verdict(result: StudyResult) -> list[str]:
    """What the rows show, sentence by sentence, computed from the numbers: the matched budget,
    each protected row against uniform and against magnitude (beyond the 95 % intervals or not),
    and the best compressed row."""
    s, m = result.settings, result.settings.metric
    better = (lambda a, b: a > b) if result.higher_is_better else (lambda a, b: a < b)
    uni, mag = result.row("uniform"), result.row("magnitude")
    matched = [result.row(k) for k in ("magnitude", "attribution", "mixed")]
    out = [
        f"matched budget: {min(r.bpw for r in matched):.3f}–{max(r.bpw for r in matched):.3f} bits per weight "
        f"({s.budget:.0%} magnitude sets it; uniform {s.bits}-bit: {uni.bpw:.3f})."
    ]
    for r in matched:
        words = []
        for other in [uni] if r.key == "magnitude" else [uni, mag]:
            rel = "above" if better(r.value, other.value) else ("equal to" if r.value == other.value else "below")
            if m == "kl":
                rel = {"above": "lower KL than", "below": "higher KL than"}.get(rel, rel)
            sep = "beyond the 95% intervals" if result.separated(r.key, other.key) else "intervals overlap"
            words.append(f"{rel} {row_label(result, other)} ({sep})")
        out.append(f"{row_label(result, r)}: {_value(r.value, m)} {_ci(r)}, " + "; ".join(words) + ".")
    if result.warnings:  # an all-zero table has no best row (H7-E1)
        return out + [f"no verdict: {w}." for w in result.warnings]
    top = max(r.value if result.higher_is_better else -r.value for r in matched)
    best = [r for r in matched if (r.value if result.higher_is_better else -r.value) == top]
    rec = result.recovered(best[0])
    out.append(
        f"best at matched bits: {' and '.join(row_label(result, r) for r in best)}"
        + (" (tied)" if len(best) > 1 else "")
        + ("" if rec is None else f", recovering {100 * rec:.0f}% of what uniform {s.bits}-bit loses")
        + "."
    )
    return out


def study_summary(result: StudyResult) -> list[str]:
    """The lines ``lrm-interp study`` and ``quickstart`` print after the run (files and commands last)."""
    s, mk, alloc = result.settings, result.masks, result.allocation
    grid = f"group {s.group_size}" if s.group_size else "per channel"
    lines = [
        f"protection: {mk['protected_weights']} weights ({100 * mk['protected_fraction']:.2f}%) kept in full "
        f"precision, chosen by {mk['saliency_label']}; {s.bits}-bit {grid}: {mk['bpw_uniform']:.3f} -> "
        f"{mk['bpw']:.3f} bits/weight",
        "mixed precision by attribution: modules at "
        + ", ".join(f"{b} bits: {n}" for b, n in alloc.counts().items())
        + f"; {alloc.bpw:.3f} bits/weight (budget {alloc.budget_bpw:.3f}, the {s.budget:.0%} magnitude row's)",
        "",
    ]
    head, rows = comparison_table(result)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines.append(comparison_caption(result))
    for r in [head, *rows]:
        cells = "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        lines.append(f"  {cells}".rstrip())
    lines += [""] + verdict(result)
    res, res_q, shift = result.attribution, result.attribution_compressed, result.shift
    lines += ["", "most important modules per behaviour (relative importance, full precision):"]
    for b in res.behaviors:
        top = ", ".join(f"{x.replace('model.layers.', 'L')} {ri:.3f}" for _, x, ri in res.top(3, b))
        lines.append(f"  {b:24s} {top}")
    lines += ["", f"after uniform {s.bits}-bit RTN ({grid}) the largest importance decreases:"]
    for i, b in enumerate(shift.behaviors):
        j = int(shift.decreases[i].argmax())
        bo, bq = res.behaviors.index(b), res_q.behaviors.index(b)
        lines.append(f"  {b:24s} {shift.sites[j].name}: RI {float(res.ri[bo, j]):.3f} -> {float(res_q.ri[bq, j]):.3f}")
    return lines


def files_and_commands(result: StudyResult, extra_files: Mapping[str, str] | None = None) -> list[str]:
    """The files written (with ``extra_files``) and the commands that reuse them, as printed lines."""
    files = {**result.files, **(extra_files or {})}
    lines = [
        f"wrote {result.out_dir}/ in {result.provenance.get('seconds', 0)} s"
        + (f" (resumed: {', '.join(result.provenance['resumed'])})" if result.provenance.get("resumed") else "")
        + ":"
    ]
    lines += [f"  {f:34s} {what}" for f, what in files.items()]
    lines += ["", "reuse them:"] + [f"  {c}" for c in result.commands]
    lines.append("  python: lrm_interp.experiments.study.StudyResult.load(...), lrm_interp.protect.load_masks(...)")
    return lines


# --------------------------------------------------------------------------- report.html
@checked_arguments
def write_report(
    path: str | Path,
    *,
    title: str,
    comparison: tuple[Sequence[str], Sequence[Sequence[str]]] | None,
    comparison_caption: str = "",
    notes: Sequence[str] = (),
    attribution: Attribution,
    shift: ImportanceShift | None,
    images: Mapping[str, str | Path],
    masks_file: str,
    masks_summary: str,
    files: Mapping[str, str],
    commands: Sequence[str],
    k: int = 5,
) -> Path:
    """Write the report (module docs) atomically; returns its path.

    ``comparison``: ``(headers, rows)`` of the compressed variants (``None`` or no rows: the
    section says nothing was measured); ``notes``: sentences shown under it; ``images``:
    ``{caption: PNG path}``; ``files``: ``{file: what it is}``; ``commands``: shell lines.
    """
    parts = [f"<h1>{esc(title)}</h1>"]
    parts.append("<h2>Compression at matched bits per weight</h2>")
    if comparison is not None and comparison[1]:
        parts.append(html_table(list(comparison[0]), [list(r) for r in comparison[1]], caption=comparison_caption))
        parts += [f"<p>{esc(n)}</p>" for n in notes]
    else:
        parts.append("<p>Nothing was measured in this run.</p>")
    parts.append("<h2>Top modules per behaviour</h2>")
    rows = [[b] + [f"{s} ({ri:.3f})" for _, s, ri in attribution.top(k, b)] for b in attribution.behaviors]
    parts.append(
        html_table(
            ["behaviour"] + [f"#{i + 1}" for i in range(min(k, len(attribution.sites)))],
            rows,
            caption="relative importance (each behaviour's row of all sites sums to 1)",
        )
    )
    if shift is not None:
        rows = [[b] + [f"{s} (−{d:.3f})" for _, s, d in shift.largest_decreases(3, b)] for b in shift.behaviors]
        parts.append(
            html_table(["behaviour", "#1", "#2", "#3"], rows, caption="largest importance decreases after compression")
        )
    for caption, img in images.items():
        parts.append(f'<h2>{esc(caption)}</h2><img alt="{esc(caption)}" src="{png_data_uri(img)}">')
    parts.append("<h2>Protection masks</h2>")
    parts.append(
        f"<p><code>{esc(masks_file)}</code>: {esc(masks_summary)}. Load with "
        "<code>lrm_interp.protect.load_masks(path)</code>; export with "
        "<code>lrm_interp.protect.exports</code> (llm-compressor, GPTQModel, transformers).</p>"
    )
    parts.append("<h2>Files</h2>")
    parts.append(html_table(["file", "what it is"], [[f, w] for f, w in files.items()]))
    parts.append("<h2>Reuse them</h2><pre>" + esc("\n".join(commands)) + "</pre>")
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    atomic_write_text(path, doc)
    return Path(path)


@checked_arguments
def bpw_plot(result: StudyResult, path: str | Path) -> Path | None:
    """Accuracy vs bits per weight with the Wilson intervals, drawn by the protection experiment's
    :meth:`~lrm_interp.experiments.protection_table.ProtectionTable.plot`; ``None`` for KL studies."""
    if result.settings.metric != "accuracy":
        return None
    import matplotlib.pyplot as plt

    from lrm_interp.experiments.protection_table import ExperimentSettings, ProtectionTable, ResultRow

    s = result.settings
    rows = tuple(
        ResultRow(
            "fp" if r.key == "fp" else row_label(result, r),
            r.kind,
            r.bpw,
            dict(r.per_task),
            r.value,
            r.n,
            int(r.correct or 0),
            r.ci,
            r.modules,
            r.seconds,
        )
        for r in result.rows
    )
    table = ProtectionTable(
        ExperimentSettings(
            model=str(result.provenance.get("model_ref", "model")),
            bits=s.bits,
            group_size=s.group_size,
            symmetric=s.symmetric,
            budget=s.budget,
        ),
        rows,
    )
    fig = table.plot()
    try:
        return atomic_save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


@checked_arguments
def write_study_report(
    result: StudyResult,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """``report.html`` of a study (default: in its folder): every section of the module docs."""
    out = Path(result.out_dir)
    path = Path(path) if path is not None else out / "report.html"
    s, mk = result.settings, result.masks
    images: dict[str, Path] = {}
    plot = bpw_plot(result, out / "bpw_accuracy.png")
    if plot is not None:
        images["Accuracy against bits per weight (95% Wilson intervals)"] = plot
    images["Which modules matter: attribution heatmap (full precision)"] = (
        out / result.provenance["folders"]["original"] / "heatmap.png"
    )
    images[f"What uniform {s.bits}-bit RTN does: importance decreases"] = out / "shift.png"
    files = {
        **result.files,
        **({"bpw_accuracy.png": "accuracy against bits per weight"} if plot else {}),
        **(extra_files or {}),
        "report.html": "all of the above on one page",
    }
    counts = ", ".join(f"{n} modules at {b} bits" for b, n in result.allocation.counts().items())
    grid = f"group {s.group_size}" if s.group_size else "per channel"
    return write_report(
        path,
        title=title or f"lrm_interp study — {result.provenance.get('model_ref', 'model')}",
        comparison=comparison_table(result),
        comparison_caption=comparison_caption(result),
        notes=verdict(result) + [f"mixed precision by attribution (bits.json): {counts}."],
        attribution=result.attribution,
        shift=result.shift,
        images=images,
        masks_file=mk["file"],
        masks_summary=(
            f"{mk['protected_weights']} weights ({100 * mk['protected_fraction']:.2f}%) kept in full "
            f"precision, chosen by {mk['saliency_label']}; {s.bits}-bit {grid}: {mk['bpw_uniform']:.3f} -> "
            f"{mk['bpw']:.3f} bits/weight"
        ),
        files=files,
        commands=list(result.commands),
    )


__all__ = [
    "png_data_uri",
    "row_label",
    "comparison_caption",
    "comparison_table",
    "verdict",
    "study_summary",
    "files_and_commands",
    "write_report",
    "bpw_plot",
    "write_study_report",
]
