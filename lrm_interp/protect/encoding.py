"""How protection masks are stored and what they cost: index encodings, bits per weight and
the masks file.

Index encodings (:data:`ENCODINGS`, :func:`encode_index` / :func:`decode_index`; costs in
:func:`index_bits`): ``module`` 0 bits (whole module kept: no index, no low-bit codes),
``lines32`` 32 bits per protected row/column (rows/cols granularity), ``bitmask``
``8·ceil(out·in/8)`` bits, ``coo32`` 64 bits per weight (int32 row + int32 column),
``flat32`` 32 bits per weight (int32 flat id), ``csr16`` 16 bits per weight + 32·(out+1)
(int16 columns, int32 row pointers; columns ≥ 32768 stored as their uint16 bit pattern; only
when ``in ≤ 65536``), ``gaps`` LEB128 varints of the gaps between sorted flat ids (8 bits per
byte actually written). ``auto`` = the cheapest per module (default).

Bits per weight (:func:`bits_per_weight`): for a site that is not fully protected,
``bits`` per weight (protected slots keep their dense code slot) + per group an FP16 scale
and (asymmetric) an FP16 zero-point + per protected weight ``value_bits`` + its index bits;
a fully protected site costs ``value_bits`` per weight and nothing else.

Tensors of a set of masks (:func:`mask_tensors` / :func:`masks_from_tensors`, shared by the
masks file and the FP16 sidecar of :mod:`lrm_interp.protect.exports`): per site its index
encoding's parts as ``<site>::<part>`` tensors, plus ``{site: {"shape", "granularity",
"encoding"}}``. The masks file (:func:`save_masks`, format ``lrm_interp.masks/2``;
:func:`load_masks` also reads ``/1``) is these tensors in one safetensors file with JSON
metadata ``format``, ``sites`` (insertion order kept), ``extra`` and ``model`` (name and
weights fingerprint of the model the masks were computed for; absent in older files).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from lrm_interp._io import CHECKSUM_KEY, ChecksumError, read_safetensors, refuse_result_file, write_safetensors
from lrm_interp.checks import check_bool, check_int, checked_arguments, refuse_string, shown_value, user_stacklevel
from lrm_interp.compress.quant.apply import (  # the grid rule lives with the quantizer that warns (H14-MGP)
    GRID_FREE_SALIENCIES as GRID_FREE_SALIENCIES,
)
from lrm_interp.compress.quant.apply import GRID_KEYS, masks_argument, recorded_grid
from lrm_interp.compress.quant.apply import grid_mismatch as grid_mismatch
from lrm_interp.compress.quant.apply import masks_grid as masks_grid
from lrm_interp.compress.quant.grid import check_bits, check_group_size
from lrm_interp.model.sites import Site, empty_pattern_problem, repeated_site_names
from lrm_interp.protect.masks import MaskSet, ProtectionMask

FORMAT = "lrm_interp.masks/2"
ENCODINGS = ("module", "lines32", "bitmask", "coo32", "flat32", "csr16", "gaps")
SEP = "::"  # tensor name = f"{site}{SEP}{part}"


def _varint_encode(x: np.ndarray) -> np.ndarray:
    """LEB128 bytes (uint8) of non-negative integers ``x``."""
    x = x.astype(np.uint64)
    nb = np.ones(x.shape, dtype=np.int64)
    for k in range(1, 10):
        nb += x >= np.uint64(1 << (7 * k))
    maxb = int(nb.max()) if x.size else 0
    cols = [
        ((x >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | np.where(nb > k + 1, 0x80, 0).astype(np.uint8)
        for k in range(maxb)
    ]
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
    if out * inn < 2**31:
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
            costs[e] = 32 * int(cast(torch.Tensor, pm.index).numel())  # rows / cols: an index
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
        return encoding, {"lines": cast(torch.Tensor, pm.index).to(torch.int32)}  # rows / cols: an index
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


def decode_index(
    site: str, shape: tuple[int, int], granularity: str, encoding: str, parts: Mapping[str, torch.Tensor]
) -> ProtectionMask:
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


@checked_arguments
def check_site_list(sites: Any, what: str, *, empty: bool = False) -> list[Site]:
    """``sites`` as a list of :class:`~lrm_interp.model.sites.Site` (what
    :func:`~lrm_interp.model.sites.find_sites` returns), else one line naming ``what`` (the function)
    and the fix, before any work (H15-MSS/USS/FSZ): a string (a pattern such as ``'mlp'``: these
    functions have no model to resolve it; ``find_sites(model, pattern='mlp')`` does) or anything
    that is not a sequence of Sites is a ``TypeError`` (it failed deep inside with "'str' object has
    no attribute 'name'"); an empty list is a ``ValueError`` "sites is empty" unless ``empty``
    (it ended in a ``ZeroDivisionError``), and so is a site given twice (H32-SALSITES)."""
    refuse_string(
        "sites",
        sites,
        "a list of Site (find_sites(model))",
        # not the pattern that selects everything: pasted, it gave every site (H33-FINDEMPTY)
        (
            f"sites=find_sites(model, pattern={sites!r})"
            if empty_pattern_problem(sites) is None
            else f"sites=find_sites(model, pattern=...) with a pattern naming what it selects ({sites!r} matches "
            "every module)"
        )
        if isinstance(sites, str)
        else "sites=find_sites(model)",  # bytes: not sites=[b'x'], a list of no Site
    )
    if isinstance(sites, Mapping) or not isinstance(sites, Iterable):
        raise TypeError(f"{what}: sites must be a list of Site (find_sites(model)), got {shown_value(sites)}")
    out = list(sites)
    for i, s in enumerate(out):
        if not isinstance(s, Site):
            raise TypeError(f"{what}: sites[{i}] must be a Site (find_sites(model) gives them), got {shown_value(s)}")
    if not out and not empty:
        raise ValueError(f"{what}: sites is empty: give the sites to use (find_sites(model), non-empty)")
    dup = repeated_site_names([x.name for x in out])
    if dup:  # counted twice: a saliency twice, a share of the budget twice (H32-SALSITES)
        raise ValueError(f"{what}: sites names a site more than once: {dup}; give each site once")
    return out


@checked_arguments
def quantized_site_bits(
    site: Site, bits: int, *, group_size: int | None = 128, symmetric: bool = False, param_bits: int = 16
) -> tuple[int, int]:
    """Storage of one site quantized to ``bits``: ``(code bits, scale/zero bits)`` — ``bits`` per
    weight, and per group (``group_size`` inputs of one row; ``None``: one per row) a
    ``param_bits`` scale plus, asymmetric, a ``param_bits`` zero-point. ``group_size`` must be
    positive or ``None`` (:func:`~lrm_interp.compress.quant.grid.check_group_size`; the CLI's
    ``--group-size 0`` is ``None``): -4 and 2.5 gave a cost, 0 a ``ZeroDivisionError`` (H27-BPWNEG)."""
    group_size = check_group_size(group_size)
    groups = site.out_features * (1 if group_size is None else -(-site.in_features // group_size))
    return bits * site.n_weights, param_bits * (1 if symmetric else 2) * groups


def _check_bits_of(name: str, v: object, what: str) -> int:
    """``v`` if it is an integer >= 1 (``what``: what it counts), else ``ValueError`` naming
    :func:`bits_per_weight`, ``name`` and ``what``."""
    try:
        return check_int(name, v, min=1)
    except ValueError:
        raise ValueError(f"bits_per_weight: {name} ({what}) must be an integer >= 1, got {shown_value(v)}") from None


@checked_arguments
def bits_per_weight(
    masks: Mapping[str, ProtectionMask] | tuple[Mapping[str, ProtectionMask], Mapping[str, Any]],
    sites: Sequence[Site],
    *,
    bits: int,
    group_size: int | None = 128,
    encoding: str = "auto",
    value_bits: int = 16,
    symmetric: bool = False,
    param_bits: int = 16,
) -> dict:
    """Average storage bits per weight over ``sites`` with FP16-kept weights (module docs).

    Returns per-weight contributions ``code_bits``, ``scale_bits``, ``value_bits``,
    ``index_bits`` (summing to ``bpw``), ``base_bits`` (= ``bits``), ``protected_fraction``,
    ``full_fraction`` (whole modules kept) and ``encodings`` ``{site: encoding}``.

    ``masks``: ``{site name: mask}`` or the ``(masks, extra)`` pair :func:`load_masks` returns (taken
    apart as ``quantize_model_`` does; it failed with "unhashable type: 'MaskSet'", H27-BPWZERO).
    Checked before any work: ``bits`` (2..8), ``group_size`` (positive or ``None``),
    ``value_bits`` and ``param_bits`` (integers >= 1; ``value_bits=0`` gave a cost, H27-BPWNEG).
    """
    masks = masks_argument(masks) or {}  # the pair load_masks returns, as quantize_model_ takes it
    sites = check_site_list(sites, "bits_per_weight", empty=True)
    bits = check_bits(bits)  # "3" failed deep inside with "unsupported operand type(s)" (H15-BPS)
    group_size = check_group_size(group_size)  # -4 / 2.5 gave a cost, 0 a ZeroDivisionError (H27-BPWNEG)
    value_bits = _check_bits_of("value_bits", value_bits, "the bits of each kept weight, 16 = FP16")
    param_bits = _check_bits_of("param_bits", param_bits, "the bits of each group scale / zero-point, 16 = FP16")
    symmetric = check_bool("symmetric", symmetric)  # "no" is truthy: it priced a symmetric grid (H28-BPWSYM)
    n_total = sum(s.n_weights for s in sites)
    if n_total == 0:
        raise ValueError("bits_per_weight: no weights in the given sites")
    src = getattr(masks, "source", None) or "masks"
    unknown = set(masks) - {s.name for s in sites}
    if unknown:
        raise KeyError(f"bits_per_weight: {src} name sites outside `sites`: {sorted(unknown)[:5]}")
    code = scale = val = idx = 0
    n_prot = n_full = 0
    encs: dict[str, str] = {}
    for s in sites:
        m = masks.get(s.name)
        if m is not None and m.shape != (s.out_features, s.in_features):
            raise ValueError(
                f"{src}: the mask of site {s.name} has shape {list(m.shape)} but the site's weight is "
                f"[{s.out_features}, {s.in_features}] (masks of another model?)"
            )
        if m is not None and m.is_full:
            val += value_bits * s.n_weights
            n_prot += s.n_weights
            n_full += s.n_weights
            encs[s.name] = "module"
            continue
        c, g = quantized_site_bits(s, bits, group_size=group_size, symmetric=symmetric, param_bits=param_bits)
        code += c
        scale += g
        if m is not None and m.n_protected:
            n_prot += m.n_protected
            val += value_bits * m.n_protected
            b, e = index_bits(m, encoding)
            idx += b
            encs[s.name] = e
    return {
        "bpw": (code + scale + val + idx) / n_total,
        "base_bits": bits,
        "code_bits": code / n_total,
        "scale_bits": scale / n_total,
        "value_bits": val / n_total,
        "index_bits": idx / n_total,
        "protected_fraction": n_prot / n_total,
        "full_fraction": n_full / n_total,
        "encodings": encs,
    }


# ---------------------------------------------------------------------------- tensors and file
def mask_tensors(
    masks: Mapping[str, ProtectionMask], *, encoding: str = "auto"
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``({"<site>::<part>": tensor}, {site: {"shape": [out, in], "granularity", "encoding"}})``.

    Each site's index is encoded with ``encoding`` (``auto`` = cheapest; a site without
    protected weights always gets ``auto``). Site order is kept in the info dict.
    """
    tensors, info = {}, {}
    for name, m in masks.items():
        if isinstance(m, ProtectionMask) and m.site != name:  # saved under the key, read back renamed (H9-PM)
            raise ValueError(f"masks[{name!r}] is the mask of site {m.site!r}: key each mask by its own site name")
        enc, parts = encode_index(m, encoding if m.n_protected else "auto")
        for part, t in parts.items():
            tensors[f"{name}{SEP}{part}"] = t.contiguous()
        info[name] = {"shape": list(m.shape), "granularity": m.granularity, "encoding": enc}
    return tensors, info


def masks_from_tensors(
    tensors: Mapping[str, torch.Tensor], info: Mapping[str, dict], *, source: str = "masks"
) -> dict[str, ProtectionMask]:
    """Inverse of :func:`mask_tensors`: ``{site: ProtectionMask}`` in the order of ``info``.

    Tensors of other kinds under a site's prefix (e.g. the sidecar's ``<site>::values``) are
    ignored. Errors are ``ValueError`` naming ``source`` and the site.
    """
    by_site: dict[str, dict[str, torch.Tensor]] = {}
    for k, t in tensors.items():
        site, sep, part = k.rpartition(SEP)
        if sep:
            by_site.setdefault(site, {})[part] = t
    out = {}
    for name, d in info.items():
        try:
            out[name] = decode_index(name, tuple(d["shape"]), d["granularity"], d["encoding"], by_site.get(name, {}))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{source}: site {name}: {e}") from e
    return out


def _with_grid(metadata: Mapping[str, Any] | None, grid: Any) -> dict[str, Any] | None:
    """``metadata`` with the entries of ``grid`` (:data:`GRID_KEYS`) added, for :func:`save_masks`;
    ``metadata`` as is without a grid. ``ValueError`` naming the entry for a grid without
    ``bits``, with another key, or that disagrees with ``metadata``."""
    if grid is None:
        return None if metadata is None else dict(metadata)
    if not isinstance(grid, Mapping) or "bits" not in grid:
        raise ValueError(
            "grid must be a mapping with 'bits' (and 'group_size', 'symmetric', 'saliency'), e.g. "
            f"grid=dict(bits=3, group_size=128, symmetric=True), got {grid!r}"
        )
    other = [k for k in grid if k not in GRID_KEYS]
    if other:
        raise ValueError(f"grid: unknown entries {other} (a grid records {', '.join(GRID_KEYS)})")
    meta = dict(metadata or {})
    clash = [k for k in grid if k in meta and meta[k] != grid[k]]
    if clash:
        raise ValueError(
            f"grid and metadata disagree on {', '.join(f'{k} ({grid[k]!r} vs {meta[k]!r})' for k in clash)}: "
            "give the grid the masks were chosen on once"
        )
    return {**meta, **{k: grid[k] for k in GRID_KEYS if k in grid}}


@checked_arguments
def save_masks(
    masks: Mapping[str, ProtectionMask],
    path: str | Path,
    *,
    metadata: dict | None = None,
    encoding: str = "auto",
    model: Mapping[str, str] | torch.nn.Module | None = None,
    replace: bool = True,
    own: str | None = None,
    grid: Mapping[str, Any] | None = None,
) -> Path:
    """Write masks to one safetensors file (format in the module docs; atomic; no pickle).

    ``grid``: ``{"bits", "group_size", "symmetric"}`` (and ``"saliency"``, the saliency's name)
    of the quantization grid the masks were chosen on (default: ``masks.grid``, which a
    :class:`~lrm_interp.protect.masks.MaskSet` read by :func:`load_masks` carries), stored in
    the metadata as ``lrm-interp protect`` stores it, so ``quantize --masks`` and
    ``quantize_model_`` warn when the masks are applied on another grid
    (:func:`grid_mismatch`, H14-MGP). Without it the file records no grid and nothing is
    compared. ``ValueError`` when ``grid`` lacks ``bits``, holds other keys, or disagrees with
    ``metadata``.

    ``replace=False``: an existing ``path`` is never replaced (``FileExistsError`` naming it, also
    for a file created there while this ran); ``lrm-interp protect`` passes its ``--overwrite``.
    Whatever ``replace`` says, a ``path`` that is one of the files of a finished result of an
    ``lrm-interp`` command (``A/attribution.safetensors``, ``SC/masks.safetensors``), or lies inside
    one, is refused first (:class:`~lrm_interp._io.OtherResultError` naming it, H9-PYW); ``own``:
    the kind of result whose own file this is (the library's writers: a study writing its masks).

    ``model``: ``{"name", "weights_fingerprint"}`` of the model the masks were computed for, or
    the model itself (its :func:`~lrm_interp.model.provenance.weights_record`; anything else is a
    ``TypeError``) (default: ``masks.model`` of a :class:`~lrm_interp.protect.masks.MaskSet`, as
    :func:`~lrm_interp.protect.policies.build_masks` returns), stored as the ``model`` metadata
    entry and checked when the masks are applied to a model.
    """
    if (
        isinstance(masks, tuple) and len(masks) == 2 and isinstance(masks[0], Mapping) and isinstance(masks[1], Mapping)
    ):  # what load_masks returns, (masks, extra): a round trip saves both (H7-API10)
        masks, extra = masks
        metadata = dict(extra) if metadata is None else metadata
    if not isinstance(masks, Mapping):
        raise TypeError(
            f"masks must be a {{site name: mask}} mapping (a MaskSet: load_masks(path)[0], or build_masks(...)), "
            f"got {type(masks).__name__}"
        )
    metadata = _with_grid(metadata, grid if grid is not None else getattr(masks, "grid", None))
    rec = model if model is not None else getattr(masks, "model", None)
    if isinstance(rec, torch.nn.Module):  # the model itself, as allocate_bits(model=...) takes: its record (H15-SMM)
        from lrm_interp.model.provenance import weights_record

        rec = weights_record(rec)
    elif rec is not None and not isinstance(rec, Mapping):
        raise TypeError(
            f"save_masks: model must be the model the masks are for (an nn.Module) or its record "
            f"{{'name', 'weights_fingerprint'}} (weights_record(model)), got {type(rec).__name__}"
        )
    refuse_result_file(path, own=own)  # before any work: never a file of another command's result
    tensors, info = mask_tensors(masks, encoding=encoding)
    meta = {"format": FORMAT, "sites": json.dumps(info), "extra": json.dumps(metadata or {})}
    if rec:
        meta["model"] = json.dumps({k: rec[k] for k in ("name", "weights_fingerprint") if k in rec})
    return write_safetensors(path, tensors, meta, replace=replace)


@checked_arguments
def load_masks(path: str | Path) -> tuple[MaskSet, dict]:
    """Read masks written by :func:`save_masks` (also format ``lrm_interp.masks/1``): ``(masks, extra)``.

    ``masks`` is a :class:`~lrm_interp.protect.masks.MaskSet` with the model the file records
    (``masks.model``), ``masks.source = str(path)`` and ``masks.grid``, the grid the file records
    (:func:`recorded_grid`; ``None`` for a file that records none); a file that records no model (written
    before lrm_interp recorded one) loads with a one-line warning: it cannot be checked against
    the model it is applied to.
    """
    tensors, meta = read_safetensors(path, (FORMAT, "lrm_interp.masks/1"), "mask file")
    if "model" in meta and CHECKSUM_KEY not in meta:  # the model record came after checksums: removed
        raise ChecksumError(
            f"{path}: the masks file records its model but has no {CHECKSUM_KEY}: every lrm_interp that "
            "records the model also writes the checksum, so it was removed and the payload cannot be "
            "trusted; do not use it: write it again"
        )
    fmt, info = meta["format"], json.loads(meta["sites"])
    if fmt == "lrm_interp.masks/1":  # CSR as "<site>.rowptr" / "<site>.cols"
        info = {n: dict(d, encoding="csr16") for n, d in info.items()}
        tensors = {SEP.join(k.rsplit(".", 1)): t for k, t in tensors.items()}
    try:
        model = json.loads(meta["model"]) if "model" in meta else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the 'model' metadata entry is not JSON ({e})") from None
    if not (isinstance(model, dict) and model.get("weights_fingerprint")):
        model = None
        warnings.warn(
            f"{path}: the masks file records no model weights fingerprint (written by an older lrm_interp, "
            "or saved without one): it cannot be checked against the model it is applied to",
            stacklevel=user_stacklevel(),
        )
    extra = json.loads(meta.get("extra", "{}"))
    # the grid the file records rides with the set: quantize_model_ and save_masks read it (H14-MGP)
    masks = MaskSet(
        masks_from_tensors(tensors, info, source=str(path)), model=model, source=str(path), grid=recorded_grid(extra)
    )
    return masks, extra
