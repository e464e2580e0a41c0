"""Matplotlib figures (each function returns a ``Figure``; nothing is shown or saved)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lrm_interp.checks import checked_arguments


def pyplot():
    """``matplotlib.pyplot``, switched to the headless Agg backend outside notebooks."""
    import matplotlib

    if matplotlib.get_backend().lower() not in {"agg", "module://matplotlib_inline.backend_inline"}:
        try:
            import IPython  # noqa: F401  (notebooks keep their backend)
        except ImportError:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@checked_arguments
def grid_heatmaps(
    grids: Sequence[tuple[torch.Tensor, list[int], list[str]]],
    titles: Sequence[str],
    *,
    title: str = "",
    cbar_label: str = "",
    diverging: bool = False,
    cmap: str | None = None,
    max_cols: int = 4,
    panel_size: tuple[float, float] = (3.2, 4.0),
):
    """One layer × module-kind heatmap per panel.

    Args:
        grids: ``(matrix [n_layers, n_kinds], layer indices, kind names)`` per panel.
        titles: a title per panel (usually the behaviour).
        diverging: centre the colour scale at 0 (signed shifts).
    """
    plt = pyplot()
    n = len(grids)
    cols = min(n, max_cols) or 1
    rows = math.ceil(n / cols) or 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size[0] * cols + 1.0, panel_size[1] * rows), squeeze=False, constrained_layout=True
    )
    vals = torch.cat([g.flatten() for g, _, _ in grids]) if grids else torch.zeros(1)
    vals = vals[~torch.isnan(vals)]
    if diverging:
        m = float(vals.abs().max()) if vals.numel() else 1.0
        vmin, vmax, cmap = -m, m, cmap or "RdBu_r"
    else:
        vmin = float(vals.min()) if vals.numel() else 0.0
        vmax = float(vals.max()) if vals.numel() else 1.0
        cmap = cmap or "viridis"
    im = None
    for i, ((g, layers, kinds), t) in enumerate(zip(grids, titles)):
        ax = axes[i // cols][i % cols]
        im = ax.imshow(
            g.numpy(), aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest"
        )
        ax.set_title(t, fontsize=10)
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, fontsize=8)
        step = max(1, len(layers) // 12)
        ax.set_yticks(range(0, len(layers), step), [str(x) for x in layers[::step]], fontsize=8)
        ax.set_xlabel("module")
        if i % cols == 0:
            ax.set_ylabel("layer")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=cbar_label)
    if title:
        fig.suptitle(title)
    return fig
