"""The protection mask of one linear site: which weights stay in FP16 while the rest is quantized.

A :class:`ProtectionMask` describes one site (``[out, in]`` weight layout) at one of four
granularities (:data:`GRANULARITIES`) and stores only what it needs: nothing (``full``), row
ids (``rows``), column ids (``cols``) or sorted flat element ids ``r·in + c`` (``elements``).
``.mask`` / ``.dense()`` materialise the bool ``[out, in]`` tensor on demand, one module at a time.

A set of masks (``{site: ProtectionMask}``) built by :func:`~lrm_interp.protect.policies.build_masks`
or read by :func:`~lrm_interp.protect.encoding.load_masks` is a :class:`MaskSet`: a dict that also
records the model it was computed for (name and weights fingerprint) and the file it came from,
so whatever applies it (the compression driver) can refuse another model's masks.

Related modules: :mod:`lrm_interp.protect.policies` (which weights to protect under a budget),
:mod:`lrm_interp.protect.encoding` (index encodings, bits per weight, the masks file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from lrm_interp.model.sites import Site

GRANULARITIES = ("full", "rows", "cols", "elements")


@dataclass(frozen=True, init=False, eq=False)
class ProtectionMask:
    """Protected weights of one site (weight layout ``[out, in]``).

    ``ProtectionMask(site, mask)`` builds an element mask from a bool ``[out, in]`` tensor;
    use :meth:`full`, :meth:`from_rows`, :meth:`from_cols`, :meth:`from_indices` for the
    compact forms. ``index``: ``None`` (full), row ids, column ids, or sorted flat ids (int64).
    """

    site: str
    shape: tuple[int, int]
    granularity: str
    index: torch.Tensor | None

    def __init__(
        self,
        site: str,
        mask: torch.Tensor | None = None,
        granularity: str | None = None,
        *,
        shape: tuple[int, int] | None = None,
        index: torch.Tensor | None = None,
    ):
        if mask is not None:
            m = torch.as_tensor(mask).to(torch.bool).cpu()
            if m.dim() != 2:
                raise ValueError(f"mask of {site} must be [out, in], got shape {tuple(m.shape)}")
            shape = (int(m.shape[0]), int(m.shape[1]))
            granularity = granularity or "elements"
            if granularity == "full":
                if not bool(m.all()):
                    raise ValueError(f"mask of {site} has granularity 'full' but is not all True")
                index = None
            elif granularity == "rows":
                index = m.all(1).nonzero().flatten()
            elif granularity == "cols":
                index = m.all(0).nonzero().flatten()
            else:
                index = m.flatten().nonzero().flatten()
        if shape is None or granularity is None:
            raise ValueError("ProtectionMask needs a dense mask, or shape + granularity (+ index)")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r} (one of {GRANULARITIES})")
        if granularity != "full":
            index = torch.as_tensor(index if index is not None else [], dtype=torch.long).flatten().cpu()
            index = torch.unique(index)  # sorted, no duplicates
            lim = {"rows": shape[0], "cols": shape[1], "elements": shape[0] * shape[1]}[granularity]
            if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= lim):
                raise ValueError(f"index of {site} out of range for {granularity} of shape {shape}")
        else:
            index = None
        object.__setattr__(self, "site", str(site))
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))
        object.__setattr__(self, "granularity", granularity)
        object.__setattr__(self, "index", index)
        if mask is not None and not torch.equal(self.dense(), m):
            raise ValueError(f"mask of {site} is not a union of whole {granularity}")

    # ------------------------------------------------------------ constructors
    @classmethod
    def full(cls, site: Site | str, shape: tuple[int, int] | None = None) -> ProtectionMask:
        """Every weight of ``site`` (its shape from the :class:`Site`, else ``shape = (out, in)``)."""
        if isinstance(site, Site):
            return cls(site.name, shape=(site.out_features, site.in_features), granularity="full")
        return cls(site, shape=shape, granularity="full")

    @classmethod
    def from_rows(cls, site: str, shape: tuple[int, int], rows) -> ProtectionMask:
        """Whole output rows ``rows`` (ids in ``0 .. out−1``) of an ``(out, in)`` weight."""
        return cls(site, shape=shape, granularity="rows", index=rows)

    @classmethod
    def from_cols(cls, site: str, shape: tuple[int, int], cols) -> ProtectionMask:
        """Whole input columns ``cols`` (ids in ``0 .. in−1``) of an ``(out, in)`` weight."""
        return cls(site, shape=shape, granularity="cols", index=cols)

    @classmethod
    def from_indices(cls, site: str, shape: tuple[int, int], flat) -> ProtectionMask:
        """Single weights by flat id ``r·in + c`` (sorted and deduplicated)."""
        return cls(site, shape=shape, granularity="elements", index=flat)

    # ------------------------------------------------------------ views
    @property
    def n_weights(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def n_protected(self) -> int:
        if self.granularity == "full":
            return self.n_weights
        per = {"rows": self.shape[1], "cols": self.shape[0], "elements": 1}[self.granularity]
        return int(cast(torch.Tensor, self.index).numel()) * per  # not "full": an index

    @property
    def is_full(self) -> bool:
        return self.n_protected == self.n_weights and self.n_weights > 0

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``[out, in]`` mask (``True`` = protected)."""
        out, inn = self.shape
        if self.granularity == "full":
            return torch.ones(out, inn, dtype=torch.bool, device=device)
        m = torch.zeros(out, inn, dtype=torch.bool)
        if self.granularity == "rows":
            m[self.index] = True
        elif self.granularity == "cols":
            m[:, self.index] = True
        else:
            m.view(-1)[self.index] = True
        return m.to(device) if device is not None else m

    @property
    def mask(self) -> torch.Tensor:
        return self.dense()

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat ids ``r·in + c`` of the protected weights (int64)."""
        if self.granularity == "elements":
            return cast(torch.Tensor, self.index)  # not "full": an index
        return self.dense().flatten().nonzero().flatten()

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ProtectionMask)
            and (self.site, self.shape) == (other.site, other.shape)
            and torch.equal(self.flat_indices(), other.flat_indices())
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable on purpose: holds a tensor index

    def __repr__(self) -> str:
        return (
            f"ProtectionMask({self.site!r}, shape={self.shape}, granularity={self.granularity!r}, "
            f"n_protected={self.n_protected})"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the counts and where the protected weights sit (share of each eighth of the rows
        and of the columns, as coloured cells)."""
        from lrm_interp.display import box, html_heatmap, html_table

        out, inn = self.shape
        m = self.dense().float()
        rows = torch.stack([c.mean() for c in m.chunk(min(8, out), 0)]).reshape(-1, 1)
        cols = torch.stack([c.mean() for c in m.chunk(min(8, inn), 1)]).reshape(1, -1)
        frac = self.n_protected / max(self.n_weights, 1)
        table = html_table(
            ["site", "shape", "granularity", "protected", "share"],
            [[self.site, f"{out} × {inn}", self.granularity, self.n_protected, f"{100 * frac:.2f}%"]],
        )
        return box(
            "ProtectionMask",
            table,
            html_heatmap(rows, list(range(rows.shape[0])), ["share"], title="by row block"),
            html_heatmap(cols, [0], [str(i) for i in range(cols.shape[1])], title="by column block"),
        )


class MaskSet(dict):
    """``{site: ProtectionMask}`` plus what it was computed for (a plain ``dict`` otherwise).

    Attributes:
        model: ``{"name", "weights_fingerprint"}`` of the model whose weights or scores chose
            the masks (:func:`lrm_interp.model.provenance.weights_record`); ``None``: unknown.
            The compression driver refuses to apply the set to a model with another fingerprint
            (``dict(masks)`` drops the record, and with it the check).
        source: the masks file it was read from (named in errors), ``None`` when built in memory.
    """

    def __init__(
        self,
        masks: Mapping[str, ProtectionMask] | None = None,
        *,
        model: Mapping[str, Any] | None = None,
        source: str | None = None,
    ):
        super().__init__(masks or {})
        self.model = dict(model) if model else None
        self.source = source
