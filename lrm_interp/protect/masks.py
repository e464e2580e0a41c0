"""Protection masks: which weights of each linear site stay in FP16 while the rest is quantized.

A :class:`ProtectionMask` describes one site (``[out, in]`` weight layout) at one of four
granularities and stores only what it needs: nothing (``full``), row ids (``rows``), column
ids (``cols``) or sorted flat element ids ``r·in + c`` (``elements``). ``.mask`` / ``.dense()``
materialise the bool ``[out, in]`` tensor on demand, one module at a time.

Policies (deterministic; ties go to the earlier site, then the smaller flat index):

- :func:`global_top`: the ``k = round(budget · N)`` most salient weights over all sites
  (``N`` = weights of all sites; ``round`` = nearest integer, halves to even — Python's
  ``round``). Streamed: only a candidate pool of ≤ 2k values lives in memory.
- :func:`per_module_top`: ``round(budget · n_m)`` weights in every module.
- :func:`modules_by_score`: whole modules, best score first (greedy, a module that does
  not fit is skipped and smaller ones may still fit), total ≤ ``budget · N``.
- :func:`final_mlp`: the paper's choice — every MLP linear of the last decoder layer.
- ``always`` / ``never`` regexes (:func:`build_masks`): ``always`` sites are protected whole
  and count against the budget; ``never`` sites get no protection (``never`` wins).
- ``granularity="rows"|"cols"`` for the top-k policies: whole rows / input columns ranked by
  summed saliency, greedily while the total stays ≤ ``round(budget · N)`` weights.

Index encodings (:data:`ENCODINGS`, :func:`encode_index`; costs in :func:`index_bits`):
``module`` 0 bits (whole module kept: no index, no low-bit codes), ``lines32`` 32 bits per
protected row/column (rows/cols granularity), ``bitmask`` ``8·ceil(out·in/8)`` bits,
``coo32`` 64 bits per weight (int32 row + int32 column), ``flat32`` 32 bits per weight
(int32 flat id), ``csr16`` 16 bits per weight + 32·(out+1) (int16 columns, int32 row
pointers; columns ≥ 32768 stored as their uint16 bit pattern; only when ``in ≤ 65536``), ``gaps`` LEB128 varints of the gaps between sorted
flat ids (8 bits per byte actually written). ``auto`` = the cheapest per module (default).

Bits per weight (:func:`bits_per_weight`): for a site that is not fully protected,
``bits`` per weight (protected slots keep their dense code slot) + per group an FP16 scale
and (asymmetric) an FP16 zero-point + per protected weight ``value_bits`` + its index bits;
a fully protected site costs ``value_bits`` per weight and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from lrm_interp.model.sites import Site
from lrm_interp._io import atomic_write_bytes

FORMAT = "lrm_interp.masks/2"
GRANULARITIES = ("full", "rows", "cols", "elements")
ENCODINGS = ("module", "lines32", "bitmask", "coo32", "flat32", "csr16", "gaps")


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

    def __init__(self, site: str, mask: torch.Tensor | None = None, granularity: str | None = None, *,
                 shape: tuple[int, int] | None = None, index: torch.Tensor | None = None):
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
    def full(cls, site: Site | str, shape: tuple[int, int] | None = None) -> "ProtectionMask":
        if isinstance(site, Site):
            return cls(site.name, shape=(site.out_features, site.in_features), granularity="full")
        return cls(site, shape=shape, granularity="full")

    @classmethod
    def from_rows(cls, site: str, shape: tuple[int, int], rows) -> "ProtectionMask":
        return cls(site, shape=shape, granularity="rows", index=rows)

    @classmethod
    def from_cols(cls, site: str, shape: tuple[int, int], cols) -> "ProtectionMask":
        return cls(site, shape=shape, granularity="cols", index=cols)

    @classmethod
    def from_indices(cls, site: str, shape: tuple[int, int], flat) -> "ProtectionMask":
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
        return int(self.index.numel()) * per

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
            return self.index
        return self.dense().flatten().nonzero().flatten()

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ProtectionMask) and (self.site, self.shape) == (other.site, other.shape)
                and torch.equal(self.flat_indices(), other.flat_indices()))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ProtectionMask({self.site!r}, shape={self.shape}, granularity={self.granularity!r}, "
                f"n_protected={self.n_protected})")


# ============================================================================ policies
def _n_total(saliency: Any, n_total: int | None, sites: Sequence[Site] | None) -> tuple[Any, int]:
    if n_total is not None:
        return saliency, int(n_total)
    sites = sites if sites is not None else getattr(saliency, "sites", None)
    if sites is not None:
        return saliency, sum(s.n_weights for s in sites)
    items = list(saliency)  # no way to know N up front: materialised (documented)
    return items, sum(t.numel() for _, t in items)


def _checked(site: Site, sal: torch.Tensor) -> torch.Tensor:
    v = sal.detach().float().cpu()
    if tuple(v.shape) != (site.out_features, site.in_features):
        raise ValueError(f"saliency of {site.name} has shape {tuple(v.shape)}, expected "
                         f"[{site.out_features}, {site.in_features}]")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"saliency of {site.name} has {int((~torch.isfinite(v)).sum())} non-finite values")
    return v


def _units(site: Site, v: torch.Tensor, granularity: str) -> tuple[torch.Tensor, int]:
    """Unit scores and weights per unit (elements: 1; rows: in; cols: out)."""
    if granularity == "elements":
        return v.flatten(), 1
    if granularity == "rows":
        return v.sum(1), site.in_features
    if granularity == "cols":
        return v.sum(0), site.out_features
    raise ValueError(f"granularity must be elements, rows or cols for top-k policies, got {granularity!r}")


def _mask_from_units(site: Site, idx: torch.Tensor, granularity: str) -> ProtectionMask:
    shape = (site.out_features, site.in_features)
    cls = ProtectionMask
    return {"elements": cls.from_indices, "rows": cls.from_rows, "cols": cls.from_cols}[granularity](
        site.name, shape, idx)


def global_top(saliency: Iterable[tuple[Site, torch.Tensor]], budget: float = 0.02, *, n_total: int | None = None,
               sites: Sequence[Site] | None = None, granularity: str = "elements",
               exclude: Iterable[str] = (), reserved: int = 0) -> dict[str, ProtectionMask]:
    """Exactly ``round(budget · N) − reserved`` most salient weights over all sites.

    Args:
        saliency: yields ``(site, [out, in] tensor)`` one module at a time (streamed).
        budget: fraction of ``N`` to protect. ``N`` is ``n_total``, else the weights of
            ``sites`` or of ``saliency.sites`` (a :class:`~lrm_interp.protect.saliency.SaliencyStream`),
            else the sum of the yielded sizes (the stream is then materialised first).
        granularity: ``elements`` (exact budget), ``rows`` or ``cols`` (greedy ≤ budget).
        exclude: site names that never get protection (their weights still count in N).
        reserved: weights already spent elsewhere (e.g. ``always`` modules).

    Memory: a candidate pool (values + global ids) of at most ``2k`` plus one module.
    """
    saliency, N = _n_total(saliency, n_total, sites)
    k = max(0, int(round(budget * N)) - int(reserved))
    exclude = set(exclude)
    seen: list[tuple[Site, int, int]] = []  # site, first global unit id, weights per unit
    pool_v, pool_i, pool_w = torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    thr: float | None = None
    off = 0
    for site, sal in saliency:
        v, per = _units(site, _checked(site, sal), granularity)
        seen.append((site, off, per))
        if site.name not in exclude and k > 0:
            keep = (v > thr) if thr is not None else torch.ones_like(v, dtype=torch.bool)
            ids = keep.nonzero().flatten()
            pool_v = torch.cat([pool_v, v[ids]])
            pool_i = torch.cat([pool_i, ids + off])
            pool_w = torch.cat([pool_w, torch.full((ids.numel(),), per, dtype=torch.long)])
            if granularity == "elements" and pool_v.numel() > 2 * k:
                pool_v, pool_i, pool_w, thr = _prune(pool_v, pool_i, pool_w, k)
        off += v.numel()
    if granularity == "elements":
        if pool_v.numel() > k:
            pool_v, pool_i, pool_w, _ = _prune(pool_v, pool_i, pool_w, k)
        chosen = pool_i
    else:  # greedy by score (ties: earlier unit), skip units that overflow the budget
        order = torch.sort(-pool_v, stable=True).indices
        take, used = [], 0
        for j in order.tolist():
            w = int(pool_w[j])
            if used + w <= k:
                take.append(j)
                used += w
        chosen = torch.sort(pool_i[torch.tensor(take, dtype=torch.long)]).values
    out = {}
    for site, start, per in seen:
        n_units = site.n_weights // per
        sel = chosen[(chosen >= start) & (chosen < start + n_units)] - start
        out[site.name] = _mask_from_units(site, sel, granularity)
    return out


def _prune(v: torch.Tensor, i: torch.Tensor, w: torch.Tensor, k: int):
    """Keep the k best of a pool ordered by global id: larger value first, then smaller id."""
    if k == 0:
        return v[:0], i[:0], w[:0], math.inf
    t = float(torch.topk(v, k).values[-1])  # k-th largest value
    gt = v > t
    eq = v == t
    need = k - int(gt.sum())
    keep = gt | (eq & (torch.cumsum(eq.long(), 0) <= need))
    return v[keep], i[keep], w[keep], t


def per_module_top(saliency: Iterable[tuple[Site, torch.Tensor]], budget: float = 0.02, *,
                   granularity: str = "elements", exclude: Iterable[str] = ()) -> dict[str, ProtectionMask]:
    """``round(budget · n_m)`` weights of every module (rows/cols: greedy ≤ that many weights)."""
    exclude = set(exclude)
    out = {}
    for site, sal in saliency:
        v, per = _units(site, _checked(site, sal), granularity)
        k = 0 if site.name in exclude else int(round(budget * site.n_weights)) // per
        idx = torch.sort(-v, stable=True).indices[:k]
        out[site.name] = _mask_from_units(site, idx, granularity)
    return out


def _scores_of(scores: Any, behavior: str | None = None) -> dict[str, float]:
    """A site → score mapping from a dict or an :class:`~lrm_interp.attribution.results.Attribution` (mean RI)."""
    if isinstance(scores, Mapping):
        return {k: float(v) for k, v in scores.items()}
    if hasattr(scores, "ri") and hasattr(scores, "site_names"):
        ri = scores.ri[scores.behaviors.index(behavior)] if behavior else scores.ri.mean(dim=0)
        return {n: float(x) for n, x in zip(scores.site_names, ri)}
    raise TypeError(f"scores must be a mapping site -> score or an Attribution, got {type(scores).__name__}")


def _split(sites: Sequence[Site], always: str | None, never: str | None) -> tuple[list[Site], list[Site], set[str]]:
    rx_a = re.compile(always) if always else None
    rx_n = re.compile(never) if never else None
    banned = {s.name for s in sites if rx_n and rx_n.search(s.name)}
    forced = [s for s in sites if rx_a and rx_a.search(s.name) and s.name not in banned]
    free = [s for s in sites if s.name not in banned and s not in forced]
    return forced, free, banned


def modules_by_score(sites: Sequence[Site], scores: Any, budget: float = 0.02, *, always: str | None = None,
                     never: str | None = None, behavior: str | None = None) -> dict[str, ProtectionMask]:
    """Whole modules in decreasing score while the protected total stays ≤ ``budget · N``.

    ``scores``: ``{site: score}`` or an Attribution (mean relative importance over
    behaviours, or of ``behavior``). ``always`` sites are taken first (even over budget).
    """
    sc = _scores_of(scores, behavior)
    n_total = sum(s.n_weights for s in sites)
    forced, free, _ = _split(sites, always, never)
    chosen = list(forced)
    used = sum(s.n_weights for s in forced)
    pos = {s.name: i for i, s in enumerate(sites)}
    for s in sorted(free, key=lambda s: (-sc.get(s.name, 0.0), pos[s.name])):
        if used + s.n_weights <= budget * n_total:
            chosen.append(s)
            used += s.n_weights
    chosen.sort(key=lambda s: pos[s.name])
    return {s.name: ProtectionMask.full(s) for s in chosen}


def final_mlp(sites: Sequence[Site]) -> dict[str, ProtectionMask]:
    """The paper's protection: every MLP linear (gate/up/down) of the last decoder layer."""
    layers = [s.layer for s in sites if s.layer is not None]
    if not layers:
        raise ValueError("final_mlp: no site belongs to a decoder layer")
    last = max(layers)
    out = {s.name: ProtectionMask.full(s) for s in sites if s.layer == last and s.block == "mlp"}
    if not out:
        raise ValueError(f"final_mlp: layer {last} has no MLP linear among the given sites")
    return out


def apply_regexes(masks: Mapping[str, ProtectionMask], sites: Sequence[Site], *, always: str | None = None,
                  never: str | None = None) -> dict[str, ProtectionMask]:
    """Force whole sites in (``always``) or out (``never``; it wins) of existing ``masks``."""
    forced, _, banned = _split(sites, always, never)
    out = {k: v for k, v in masks.items() if k not in banned}
    for s in forced:
        out[s.name] = ProtectionMask.full(s)
    return out


POLICIES = ("global_top", "per_module_top", "modules_by_score", "final_mlp")


def build_masks(sites: Sequence[Site], policy: str = "global_top", budget: float = 0.02, *,
                saliency: Iterable[tuple[Site, torch.Tensor]] | None = None, scores: Any = None,
                always: str | None = None, never: str | None = None, granularity: str = "elements",
                behavior: str | None = None) -> dict[str, ProtectionMask]:
    """One entry point for every policy (see the module docs).

    ``global_top``/``per_module_top`` need ``saliency`` (a stream over ``sites``);
    ``modules_by_score`` needs ``scores``; ``final_mlp`` needs nothing. For ``global_top``
    the ``always`` modules count against the budget, so the total is exactly
    ``max(round(budget · N), n_always)``.
    """
    sites = list(sites)
    forced, _, banned = _split(sites, always, never)
    if policy == "final_mlp":
        return apply_regexes(final_mlp(sites), sites, always=always, never=never)
    if policy == "modules_by_score":
        if scores is None:
            raise ValueError("policy 'modules_by_score' needs scores (a dict site -> score or an Attribution)")
        return modules_by_score(sites, scores, budget, always=always, never=never, behavior=behavior)
    if policy not in ("global_top", "per_module_top"):
        raise ValueError(f"unknown policy {policy!r} (one of {POLICIES})")
    if saliency is None:
        raise ValueError(f"policy {policy!r} needs a saliency stream (lrm_interp.protect.saliency)")
    skip = banned | {s.name for s in forced}
    if policy == "global_top":
        masks = global_top(saliency, budget, sites=sites, granularity=granularity, exclude=skip,
                           reserved=sum(s.n_weights for s in forced))
    else:
        masks = per_module_top(saliency, budget, granularity=granularity, exclude=skip)
    return apply_regexes(masks, sites, always=always, never=never)


# ============================================================================ encodings
def _varint_encode(x: np.ndarray) -> np.ndarray:
    """LEB128 bytes (uint8) of non-negative integers ``x``."""
    x = x.astype(np.uint64)
    nb = np.ones(x.shape, dtype=np.int64)
    for k in range(1, 10):
        nb += x >= np.uint64(1 << (7 * k))
    maxb = int(nb.max()) if x.size else 0
    cols = [((x >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | np.where(nb > k + 1, 0x80, 0).astype(np.uint8)
            for k in range(maxb)]
    if not cols:
        return np.zeros(0, dtype=np.uint8)
    grid = np.stack(cols, 1)
    return grid[np.arange(maxb)[None, :] < nb[:, None]]


def _varint_decode(b: np.ndarray) -> np.ndarray:
    b = b.astype(np.uint64)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (b & np.uint64(0x80)) == 0
    gid = np.concatenate([[0], np.cumsum(last)[:-1]])
    start = np.concatenate([[0], np.nonzero(last)[0][:-1] + 1])
    pos = np.arange(b.size) - start[gid]
    vals = np.zeros(int(last.sum()), dtype=np.uint64)
    np.add.at(vals, gid, (b & np.uint64(0x7F)) << (np.uint64(7) * pos.astype(np.uint64)))
    return vals.astype(np.int64)


def _available(pm: ProtectionMask) -> list[str]:
    out, inn = pm.shape
    if pm.granularity == "full":
        return ["module"]
    encs = ["bitmask", "coo32", "csr16", "gaps"]
    if out * inn < 2 ** 31:
        encs.append("flat32")
    if inn > 65536:
        encs.remove("csr16")
    if pm.granularity in ("rows", "cols"):
        encs.append("lines32")
    return encs


def index_bits(mask: ProtectionMask | torch.Tensor, encoding: str = "auto") -> tuple[int, str]:
    """Bits to store the positions of the protected weights: ``(bits, encoding)``.

    Equals ``8 ×`` the bytes of :func:`encode_index`'s tensors (checked in tests).
    """
    pm = mask if isinstance(mask, ProtectionMask) else ProtectionMask("_", mask)
    n = pm.n_protected
    if n == 0:
        return 0, "none"
    if pm.is_full:
        pm = ProtectionMask.full(pm.site, pm.shape)
    out, inn = pm.shape
    avail = _available(pm)
    if encoding != "auto" and encoding not in avail:
        raise ValueError(f"encoding {encoding!r} is not available for {pm!r} (available: {avail})")
    costs = {}
    for e in avail if encoding == "auto" else [encoding]:
        if e == "module":
            costs[e] = 0
        elif e == "lines32":
            costs[e] = 32 * int(pm.index.numel())
        elif e == "bitmask":
            costs[e] = 8 * math.ceil(out * inn / 8)
        elif e == "coo32":
            costs[e] = 64 * n
        elif e == "flat32":
            costs[e] = 32 * n
        elif e == "csr16":
            costs[e] = 16 * n + 32 * (out + 1)
        elif e == "gaps":
            costs[e] = 8 * int(_varint_encode(_gaps(pm.flat_indices())).size)
    enc = min(costs, key=lambda e: (costs[e], ENCODINGS.index(e)))
    return costs[enc], enc


def _gaps(flat: torch.Tensor) -> np.ndarray:
    f = flat.numpy().astype(np.int64)
    return np.diff(f, prepend=0) if f.size else f  # first gap = first id; later gaps ≥ 1


def encode_index(pm: ProtectionMask, encoding: str = "auto") -> tuple[str, dict[str, torch.Tensor]]:
    """Encode the protected positions: ``(encoding, {part: tensor})`` (see module docs)."""
    if encoding == "auto":
        encoding = index_bits(pm)[1] if pm.n_protected else ("module" if pm.granularity == "full" else "flat32")
    out, inn = pm.shape
    if encoding == "module":
        if not pm.is_full:
            raise ValueError(f"encoding 'module' needs a fully protected site, got {pm!r}")
        return encoding, {}
    if encoding == "none":
        encoding = "flat32"
    if encoding == "lines32":
        return encoding, {"lines": pm.index.to(torch.int32)}
    flat = pm.flat_indices()
    if encoding == "bitmask":
        bits = np.packbits(pm.dense().flatten().numpy().astype(np.uint8))
        return encoding, {"bits": torch.from_numpy(bits.copy())}
    if encoding == "coo32":
        return encoding, {"rows": (flat // inn).to(torch.int32), "cols": (flat % inn).to(torch.int32)}
    if encoding == "flat32":
        return encoding, {"flat": flat.to(torch.int32)}
    if encoding == "csr16":
        counts = torch.bincount(flat // inn, minlength=out)
        rowptr = torch.zeros(out + 1, dtype=torch.int32)
        rowptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
        cols = (flat % inn).to(torch.int32)
        cols = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16)  # uint16 stored as int16
        return encoding, {"rowptr": rowptr, "cols": cols}
    if encoding == "gaps":
        return encoding, {"varint": torch.from_numpy(_varint_encode(_gaps(flat)).copy())}
    raise ValueError(f"unknown encoding {encoding!r} (one of {ENCODINGS})")


def decode_index(site: str, shape: tuple[int, int], granularity: str, encoding: str,
                 parts: Mapping[str, torch.Tensor]) -> ProtectionMask:
    """Inverse of :func:`encode_index`."""
    out, inn = shape
    if encoding == "module":
        return ProtectionMask.full(site, shape)
    if encoding == "lines32":
        return ProtectionMask(site, shape=shape, granularity=granularity, index=parts["lines"].long())
    if encoding == "bitmask":
        bits = np.unpackbits(parts["bits"].numpy(), count=out * inn).astype(bool)
        flat = torch.from_numpy(np.nonzero(bits)[0].astype(np.int64))
    elif encoding == "coo32":
        flat = parts["rows"].long() * inn + parts["cols"].long()
    elif encoding == "flat32":
        flat = parts["flat"].long()
    elif encoding == "csr16":
        rowptr, cols = parts["rowptr"].long(), parts["cols"].long() % 65536
        if rowptr.numel() != out + 1 or int(rowptr[-1]) != cols.numel():
            raise ValueError(f"corrupt CSR index for site {site}")
        flat = torch.repeat_interleave(torch.arange(out), rowptr[1:] - rowptr[:-1]) * inn + cols
    elif encoding == "gaps":
        flat = torch.from_numpy(np.cumsum(_varint_decode(parts["varint"].numpy())))
    else:
        raise ValueError(f"unknown encoding {encoding!r} for site {site}")
    pm = ProtectionMask.from_indices(site, shape, flat)
    if granularity in ("rows", "cols", "full"):
        pm = ProtectionMask(site, pm.dense(), granularity)
    return pm


# ============================================================================ bits
def bits_per_weight(masks: Mapping[str, ProtectionMask], sites: Sequence[Site], *, bits: int,
                    group_size: int | None = 128, encoding: str = "auto", value_bits: int = 16,
                    symmetric: bool = False, param_bits: int = 16) -> dict:
    """Average storage bits per weight over ``sites`` with FP16-kept weights (module docs).

    Returns per-weight contributions ``code_bits``, ``scale_bits``, ``value_bits``,
    ``index_bits`` (summing to ``bpw``), ``base_bits`` (= ``bits``), ``protected_fraction``,
    ``full_fraction`` (whole modules kept) and ``encodings`` ``{site: encoding}``.
    """
    n_total = sum(s.n_weights for s in sites)
    if n_total == 0:
        raise ValueError("bits_per_weight: no weights in the given sites")
    unknown = set(masks) - {s.name for s in sites}
    if unknown:
        raise KeyError(f"bits_per_weight: masks name sites outside `sites`: {sorted(unknown)[:5]}")
    per_group = param_bits * (1 if symmetric else 2)
    code = scale = val = idx = 0
    n_prot = n_full = 0
    encs: dict[str, str] = {}
    for s in sites:
        m = masks.get(s.name)
        if m is not None and m.shape != (s.out_features, s.in_features):
            raise ValueError(f"mask of {s.name} has shape {m.shape}, site is [{s.out_features}, {s.in_features}]")
        if m is not None and m.is_full:
            val += value_bits * s.n_weights
            n_prot += s.n_weights
            n_full += s.n_weights
            encs[s.name] = "module"
            continue
        groups = s.out_features * (1 if group_size is None else -(-s.in_features // group_size))
        code += bits * s.n_weights
        scale += per_group * groups
        if m is not None and m.n_protected:
            n_prot += m.n_protected
            val += value_bits * m.n_protected
            b, e = index_bits(m, encoding)
            idx += b
            encs[s.name] = e
    return {"bpw": (code + scale + val + idx) / n_total, "base_bits": bits, "code_bits": code / n_total,
            "scale_bits": scale / n_total, "value_bits": val / n_total, "index_bits": idx / n_total,
            "protected_fraction": n_prot / n_total, "full_fraction": n_full / n_total, "encodings": encs}


# ============================================================================ I/O
def save_masks(masks: Mapping[str, ProtectionMask], path: str | Path, *, metadata: dict | None = None,
               encoding: str = "auto") -> Path:
    """Write masks to one safetensors file (atomic; no pickle).

    Tensors ``<site>::<part>`` per the site's index encoding; JSON metadata ``format``,
    ``sites`` = ``{site: {"shape", "granularity", "encoding"}}`` (insertion order kept) and
    ``extra`` = ``metadata``.
    """
    from safetensors.torch import save

    tensors, info = {}, {}
    for name, m in masks.items():
        enc, parts = encode_index(m, encoding if m.n_protected else "auto")
        for part, t in parts.items():
            tensors[f"{name}::{part}"] = t.contiguous()
        info[name] = {"shape": list(m.shape), "granularity": m.granularity, "encoding": enc}
    meta = {"format": FORMAT, "sites": json.dumps(info), "extra": json.dumps(metadata or {})}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def load_masks(path: str | Path) -> tuple[dict[str, ProtectionMask], dict]:
    """Read masks written by :func:`save_masks` (also format ``lrm_interp.masks/1``): ``(masks, extra)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file {path} does not exist")
    try:
        f = safe_open(str(path), "pt")
    except Exception as e:  # noqa: BLE001 - name the file in the error
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    with f:
        meta = f.metadata() or {}
        fmt = meta.get("format")
        if fmt not in (FORMAT, "lrm_interp.masks/1"):
            raise ValueError(f"{path}: not an lrm_interp mask file (format {fmt!r})")
        info = json.loads(meta["sites"])
        keys = set(f.keys())
        out = {}
        for name, d in info.items():
            shape = tuple(d["shape"])
            if fmt == "lrm_interp.masks/1":
                enc, parts = "csr16", {"rowptr": f.get_tensor(f"{name}.rowptr"), "cols": f.get_tensor(f"{name}.cols")}
            else:
                enc = d["encoding"]
                parts = {k.split("::", 1)[1]: f.get_tensor(k) for k in keys if k.startswith(f"{name}::")}
            try:
                out[name] = decode_index(name, shape, d["granularity"], enc, parts)
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}: site {name}: {e}") from e
    return out, json.loads(meta.get("extra", "{}"))


def iter_dense(masks: Mapping[str, ProtectionMask]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(site, bool [out, in])`` one module at a time."""
    for k, m in masks.items():
        yield k, m.dense()
