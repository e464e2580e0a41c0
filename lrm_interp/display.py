"""Rich display of results in Jupyter (``_repr_html_``) and in a terminal (``__repr__``).

Plain HTML with inline styles: a compact summary line, a table of the top sites and a small
layer × module-kind heatmap drawn as coloured table cells (no image, no JavaScript), so it
renders in Jupyter, VS Code, GitHub's notebook viewer and exported HTML alike. Every string
that comes from data (site names, behaviours, labels) is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import torch

from lrm_interp.checks import checked_arguments

CELL = "padding:1px 4px;border:1px solid #ddd;font-size:11px;text-align:right"


def esc(x: Any) -> str:
    """HTML-escaped ``str(x)``."""
    return html.escape(str(x), quote=True)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None) -> str:
    """A compact HTML table; cells are escaped, floats shown with 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td style="{CELL}">{"" if math.isnan(v) else f"{v:.4g}"}</td>'
        align = "right" if isinstance(v, int) else "left"
        return f'<td style="{CELL};text-align:{align}">{esc(v)}</td>'

    head = "".join(f'<th style="{CELL};background:#f3f3f3">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    cap = f'<caption style="text-align:left;font-size:11px;color:#555">{esc(caption)}</caption>' if caption else ""
    return f'<table style="border-collapse:collapse;margin:4px 0">{cap}<tr>{head}</tr>{body}</table>'


def _colour(v: float, lo: float, hi: float, diverging: bool) -> str:
    """Background colour of ``v`` on [lo, hi]: white → dark red (sequential) or blue ↔ red around 0."""
    if math.isnan(v):
        return "#eeeeee"
    if diverging:
        m = max(abs(lo), abs(hi)) or 1.0
        t = max(-1.0, min(1.0, v / m))
        r, g, b = (
            (255, int(255 * (1 - t)), int(255 * (1 - t))) if t >= 0 else (int(255 * (1 + t)), int(255 * (1 + t)), 255)
        )
    else:
        t = 0.0 if hi <= lo else max(0.0, min(1.0, (v - lo) / (hi - lo)))
        r, g, b = 255, int(255 - 200 * t), int(255 - 230 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


@checked_arguments
def html_heatmap(
    grid: torch.Tensor, layers: Sequence[int], kinds: Sequence[str], *, title: str = "", diverging: bool = False
) -> str:
    """A ``[n_layers, n_kinds]`` grid as a table of coloured cells (value in each cell's tooltip)."""
    g = grid.double()
    fin = g[torch.isfinite(g)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.numel() else (0.0, 1.0)
    head = "".join(f'<th style="{CELL};font-weight:normal">{esc(k)}</th>' for k in kinds)
    rows = []
    for i, layer in enumerate(layers):
        cells = "".join(
            f'<td title="{esc(f"layer {layer} {k}: {float(g[i, j]):.4g}")}" '
            f'style="{CELL};background:{_colour(float(g[i, j]), lo, hi, diverging)};min-width:14px"></td>'
            for j, k in enumerate(kinds)
        )
        rows.append(f'<tr><th style="{CELL};font-weight:normal">{esc(layer)}</th>{cells}</tr>')
    cap = f'<caption style="font-size:11px">{esc(title)}</caption>' if title else ""
    return (
        f'<table style="border-collapse:collapse;display:inline-table;margin:2px 8px 2px 0">{cap}'
        f'<tr><th style="{CELL}">layer</th>{head}</tr>{"".join(rows)}</table>'
    )


def box(title: str, *parts: str) -> str:
    """The parts under a bold title, in one block."""
    return (
        f'<div style="font-family:sans-serif"><div style="font-weight:bold;margin-bottom:2px">{esc(title)}</div>'
        + "".join(parts)
        + "</div>"
    )
