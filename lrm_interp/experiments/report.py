"""The quickstart's self-contained ``report.html``: one file to open in a browser or send on.

Sections: accuracy of full precision / compressed / compressed + protection with bits per
weight; the top modules per behaviour; the attribution heatmap and the importance-shift plot
(PNG files embedded as ``data:`` URIs, so the page needs nothing beside it); the masks file;
every file written and the commands that reuse them. No JavaScript, no external resources.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Mapping, Sequence

from lrm_interp._io import atomic_write_text
from lrm_interp.attribution.results import Attribution, ImportanceShift
from lrm_interp.display import esc, html_table

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}"
         "h1{font-size:22px}h2{font-size:17px;margin-top:26px;border-bottom:1px solid #ddd}"
         "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:8px;overflow-x:auto;"
         "font-size:12px}code{font-size:12px}")


def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` of a PNG file (``ValueError`` naming a file that is not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def write_report(path: str | Path, *, title: str, accuracy: Mapping[str, Mapping[str, float]],
                 bits_per_weight: Mapping[str, float], n_problems: int, attribution: Attribution,
                 shift: ImportanceShift | None, images: Mapping[str, str | Path], masks_file: str,
                 masks_summary: str, files: Mapping[str, str], commands: Sequence[str], k: int = 5) -> Path:
    """Write the report (module docs) atomically; returns its path.

    ``accuracy``: ``{row label: {family: acc, "mean": acc}}`` (may be empty: the section then says
    accuracy was not measured); ``bits_per_weight``: ``{row label: bpw}``; ``images``:
    ``{caption: PNG path}``; ``files``: ``{file: what it is}``; ``commands``: shell lines.
    """
    parts = [f"<h1>{esc(title)}</h1>"]
    parts.append("<h2>Accuracy and bits per weight</h2>")
    if accuracy:
        fams = [f for f in next(iter(accuracy.values())) if f != "mean"]
        rows = [[label, f"{bits_per_weight.get(label, float('nan')):.3f}"]
                + [f"{100 * acc[f]:.1f}" for f in fams] + [f"{100 * acc['mean']:.1f}"] for label, acc in accuracy.items()]
        parts.append(html_table(["model", "bits/weight", *fams, "mean"], rows,
                                caption=f"held-out accuracy (%), {n_problems} problems"))
    else:
        parts.append("<p>Accuracy was not measured in this run (a plumbing check on a random model).</p>")
    parts.append("<h2>Top modules per behaviour</h2>")
    rows = [[b] + [f"{s} ({ri:.3f})" for _, s, ri in attribution.top(k, b)] for b in attribution.behaviors]
    parts.append(html_table(["behaviour"] + [f"#{i + 1}" for i in range(min(k, len(attribution.sites)))], rows,
                            caption="relative importance (each behaviour's row of all sites sums to 1)"))
    if shift is not None:
        rows = [[b] + [f"{s} (−{d:.3f})" for _, s, d in shift.largest_decreases(3, b)] for b in shift.behaviors]
        parts.append(html_table(["behaviour", "#1", "#2", "#3"], rows,
                                caption="largest importance decreases after compression"))
    for caption, img in images.items():
        parts.append(f"<h2>{esc(caption)}</h2><img alt=\"{esc(caption)}\" src=\"{png_data_uri(img)}\">")
    parts.append("<h2>Protection masks</h2>")
    parts.append(f"<p><code>{esc(masks_file)}</code>: {esc(masks_summary)}. Load with "
                 "<code>lrm_interp.protect.load_masks(path)</code>; export with "
                 "<code>lrm_interp.protect.exports</code> (llm-compressor, GPTQModel, transformers).</p>")
    parts.append("<h2>Files</h2>")
    parts.append(html_table(["file", "what it is"], [[f, w] for f, w in files.items()]))
    parts.append("<h2>Reuse them</h2><pre>" + esc("\n".join(commands)) + "</pre>")
    doc = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
           f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    atomic_write_text(path, doc)
    return Path(path)
