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

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from lrm_interp.model.sites import Site

GRANULARITIES = ("full", "rows", "cols", "elements")


def _typed(v: object) -> str:
    """How a ``TypeError`` shows the value it refused: its repr (cut at 60 characters) and type."""
    r = repr(v)
    return f"{r if len(r) <= 60 else r[:57] + '...'} ({type(v).__name__})"


def _site_name(site: object) -> str:
    """The site name ``site`` gives: a non-empty ``str`` or a :class:`Site`'s name; else
    ``TypeError`` / ``ValueError`` (``ProtectionMask(5, ...)`` became site ``"5"``)."""
    if isinstance(site, Site):
        return site.name
    if not isinstance(site, str):
        raise TypeError(f"ProtectionMask: site must be a site name (str) or a Site, got {_typed(site)}")
    if not site.strip():
        raise ValueError("ProtectionMask: site is '': give the site's module name (e.g. 'model.layers.0.mlp.up_proj')")
    return site


def _bool_mask(site: str, mask: object) -> torch.Tensor:
    """``mask`` as a bool ``[out, in]`` CPU tensor. A bool tensor is taken as it is; any other
    must hold only the values 0 and 1 (then converted): ``bool()`` made a NaN or a 2.0 "protected"
    without a word, so those are refused naming the first such entry."""
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"mask of {site} must be a bool [out, in] tensor (or nested lists of 0/1), got {_typed(mask)}"
            ) from None
    m = mask.detach()
    if m.dim() != 2:
        raise ValueError(f"mask of {site} must be [out, in], got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        bad = (~((m == 0) | (m == 1))).nonzero()
        if bad.numel():
            r, c = (int(x) for x in bad[0])
            raise ValueError(
                f"mask of {site} must be bool, or hold only 0 and 1, got {m[r, c].item()!r} at [{r}, {c}] "
                f"({bad.shape[0]} such entr{'y' if bad.shape[0] == 1 else 'ies'}: a NaN or a 2 says neither "
                "protected nor unprotected); pass a bool mask (mask > threshold) saying which weights are protected"
            )
        m = m != 0
    return m.cpu()


def _shape_arg(site: str, shape: object) -> tuple[int, int]:
    """``(out, in)``: two integers >= 1 (``(2.5, 3)`` was truncated to ``(2, 3)``); else
    ``ValueError`` (as a masks file's bad ``shape`` is reported, naming the file and site)."""
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 2
        or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in shape)
    ):
        raise ValueError(f"shape of {site} must be two integers (out, in), got {_typed(shape)}")
    out, inn = int(shape[0]), int(shape[1])
    if out < 1 or inn < 1:
        raise ValueError(f"shape of {site} must be two integers >= 1 (out, in), got {(out, inn)}")
    return out, inn


_IDS = {"rows": "row ids", "cols": "column ids", "elements": "flat element ids"}


def _index_arg(site: str, granularity: str, index: object) -> torch.Tensor:
    """``index`` as flat int64 ids: integers only (a float id was truncated, ``0.5`` → row 0) and
    no bool tensor (``[True, False]`` became the ids ``[1, 0]``: a mask, not a list of ids)."""
    if index is None:
        return torch.zeros(0, dtype=torch.long)
    try:
        t = index if isinstance(index, torch.Tensor) else torch.as_tensor(index)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"index of {site} must be {_IDS[granularity]} (integers), got {_typed(index)}") from None
    t = t.detach().flatten().cpu()
    if t.dtype == torch.bool:
        raise ValueError(
            f"index of {site} is a bool tensor: a mask, not {_IDS[granularity]}; pass its ids "
            f"(index.nonzero().flatten()), or an [out, in] mask as ProtectionMask(site, mask, {granularity!r})"
        )
    if t.is_complex():
        raise ValueError(f"index of {site} must hold {_IDS[granularity]} (integers), got a {t.dtype} tensor")
    if t.is_floating_point():
        bad = (~(torch.isfinite(t) & (t == t.round()))).nonzero().flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"index of {site} must hold {_IDS[granularity]} (integers), got {t[i].item()!r} at [{i}]")
    return t.long()


@dataclass(frozen=True, init=False, eq=False)
class ProtectionMask:
    """Protected weights of one site (weight layout ``[out, in]``).

    ``ProtectionMask(site, mask)`` builds an element mask from a bool ``[out, in]`` tensor;
    use :meth:`full`, :meth:`from_rows`, :meth:`from_cols`, :meth:`from_indices` for the
    compact forms. ``index``: ``None`` (full), row ids, column ids, or sorted flat ids (int64).

    Nothing is coerced without a word: ``site`` is a non-empty string (or a :class:`Site`); a
    mask that is not bool must hold only 0 and 1 (a NaN or a 2.0 is refused, naming its
    position); ``shape`` is two integers >= 1; ids are integers (a bool tensor, a float id or a NaN
    is refused) in range; a mask and an index together, or an index with ``full``, are refused.
    """

    site: str
    shape: tuple[int, int]
    granularity: str
    index: torch.Tensor | None

    def __init__(
        self,
        site: str | Site,
        mask: torch.Tensor | None = None,
        granularity: str | None = None,
        *,
        shape: tuple[int, int] | None = None,
        index: torch.Tensor | None = None,
    ):
        site = _site_name(site)
        if granularity is not None and granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r} (one of {GRANULARITIES})")
        if mask is not None:
            m = _bool_mask(site, mask)
            if shape is not None and _shape_arg(site, shape) != tuple(m.shape):
                raise ValueError(f"shape of {site} is {tuple(shape)} but its mask is {tuple(m.shape)}: give one")
            if index is not None:
                raise ValueError(f"ProtectionMask of {site}: give a dense mask or an index, not both")
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
        shape = _shape_arg(site, shape)
        if granularity != "full":
            index = _index_arg(site, granularity, index) if mask is None else index
            index = torch.unique(cast(torch.Tensor, index))  # sorted, no duplicates
            lim = {"rows": shape[0], "cols": shape[1], "elements": shape[0] * shape[1]}[granularity]
            if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= lim):
                raise ValueError(f"index of {site} out of range for {granularity} of shape {shape}")
        else:
            if mask is None and index is not None:
                raise ValueError(
                    f"ProtectionMask of {site}: granularity 'full' takes no index (every weight), got {_typed(index)}"
                )
            index = None
        object.__setattr__(self, "site", site)
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

    Every entry is checked, when built and when set (``ms[k] = m``, ``update``, ``setdefault``,
    ``|=``): the value is a :class:`ProtectionMask` and its key is that mask's own site name
    (``MaskSet({"a": ProtectionMask("b", ...)})`` was saved and reloaded as site ``a``, the mask's
    own site dropped); else ``TypeError`` / ``ValueError`` naming the key and the site.

    Attributes:
        model: ``{"name", "weights_fingerprint"}`` of the model whose weights or scores chose
            the masks (:func:`lrm_interp.model.provenance.weights_record`); ``None``: unknown.
            The compression driver refuses to apply the set to a model with another fingerprint
            (``dict(masks)`` drops the record, and with it the check).
        source: the masks file it was read from (named in errors), ``None`` when built in memory.
        grid: the quantization grid the masks were chosen on as the file records it
            (``{"bits", "group_size", "symmetric", ...}``: ``save_masks(grid=)``), ``None``: unknown.
            ``quantize_model_`` warns when it applies them on another grid (H14-MGP).
    """

    def __init__(
        self,
        masks: Mapping[str, ProtectionMask] | None = None,
        *,
        model: Mapping[str, Any] | None = None,
        source: str | None = None,
        grid: Mapping[str, Any] | None = None,
    ):
        if masks is None:
            masks = {}
        if not isinstance(masks, Mapping):
            raise TypeError(f"MaskSet: masks must be a mapping {{site name: ProtectionMask}}, got {_typed(masks)}")
        if model is not None and not isinstance(model, Mapping):
            raise TypeError(
                f"MaskSet: model must be a mapping {{'name', 'weights_fingerprint'}} or None, got {_typed(model)}"
            )
        if source is not None and not isinstance(source, str):
            raise TypeError(f"MaskSet: source must be the masks file's path (str) or None, got {_typed(source)}")
        if grid is not None and not isinstance(grid, Mapping):
            raise TypeError(f"MaskSet: grid must be a mapping {{'bits', ...}} or None, got {_typed(grid)}")
        super().__init__(self._checked(masks.items()))
        self.model = dict(model) if model else None
        self.source = source
        self.grid = dict(grid) if grid else None

    @staticmethod
    def _entry(key: object, mask: object) -> tuple[str, ProtectionMask]:
        if not isinstance(key, str):
            raise TypeError(f"MaskSet: a key must be a site name (str), got {_typed(key)}")
        if not isinstance(mask, ProtectionMask):
            raise TypeError(f"MaskSet: the entry {key!r} must be a ProtectionMask, got {_typed(mask)}")
        if mask.site != key:
            raise ValueError(
                f"MaskSet: the entry {key!r} holds the mask of site {mask.site!r}: a key must be its mask's "
                f"site name (it would be saved as site {key!r}); key it by {mask.site!r}, or build the mask for {key!r}"
            )
        return key, mask

    @classmethod
    def _checked(cls, items: Iterable[tuple[object, object]]) -> list[tuple[str, ProtectionMask]]:
        return [cls._entry(k, m) for k, m in items]

    def __setitem__(self, key: str, mask: ProtectionMask) -> None:
        super().__setitem__(*self._entry(key, mask))

    def update(self, *args: Any, **kw: Any) -> None:
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        other: Any = args[0] if args else {}
        items = other.items() if isinstance(other, Mapping) else other
        super().update(self._checked([*items, *kw.items()]))

    def setdefault(self, key: str, default: ProtectionMask | None = None) -> ProtectionMask:
        if key in self:
            return self[key]
        self[key] = default  # type: ignore[assignment]  # checked: None is refused
        return self[key]

    def __ior__(self, other: Any) -> MaskSet:  # type: ignore[misc]  # dict's |= (checked); | stays dict's
        self.update(other)
        return self
