"""Bit allocation (module-level mixed precision): bits per module under an exact bits-per-weight
budget. Formerly ``protect/mixed.py`` (that path still imports, deprecated).

Deployment toolchains (GPTQModel ``dynamic``, llm-compressor ``config_groups``) quantize whole
modules at one bit width each, so this is the form of protection they load. A module ``m`` at
``b`` bits costs :func:`~lrm_interp.protect.encoding.quantized_site_bits` (codes + group
scales/zeros; 16 bits = kept in FP16, no scales). Its expected loss increase is modelled as

    ΔL_m(b) = s_m · e_m(b)

with ``e_m(b)`` its RTN reconstruction error at ``b`` bits (:func:`quantization_errors`:
``‖Q_b(W) − W‖²_F``, optionally relative to ``‖W‖²_F``) and ``s_m`` a sensitivity:

- ``attribution`` — the module's attribution importance (relative importance of
  :class:`~lrm_interp.attribution.results.Attribution`), with relative errors (the scores
  measure the module output's effect, whatever the weight norm);
- ``hessian`` — ``tr(H_m)/in``, the mean squared input (HAWQ-v2-style: ``E‖ΔW x‖² ≈
  tr(H)/in · ‖ΔW‖²`` for isotropic error), with absolute errors;
- ``none`` — 1 for every module, absolute errors (minimise total weight error).

:func:`allocate_bits` starts every module at the lowest choice and greedily applies the
upgrade with the largest ``ΔL`` saved per extra bit that still fits, until none fits: the
result never exceeds the budget. :func:`uniform_allocation` is the plain baseline.

An allocation records the model it was computed for (:attr:`BitAllocation.model`, ``{"name",
"weights_fingerprint"}`` as masks do: :func:`quantization_errors` measures the errors on that
model and :func:`allocate_bits` records it), and :func:`quantize_allocation_` refuses, before any
weight changes, an allocation of another model and one that leaves linear sites of the model out
(``partial=True`` quantizes only the sites it names). Files: ``lrm_interp.bits/2`` JSON
(:meth:`BitAllocation.save` / :meth:`BitAllocation.load`); ``lrm_interp.bits/1`` files, written
before the model was recorded, load and apply with a warning (a ``"model"`` entry such a file holds
is checked all the same). ``bpw`` must be what the bits cost (:func:`check_bpw`)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lrm_interp._io import (
    OtherResultError,
    atomic_write_text,
    file_result,
    loads_strict,
    path_argument,
    refuse_result_file,
    strip_bom,
)
from lrm_interp.checks import (
    FlagError,
    check_bool,
    check_float,
    check_int,
    checked_arguments,
    number_value,
    shown_value,
    user_stacklevel,
)
from lrm_interp.compress.quant.grid import MAX_BITS, MIN_BITS, check_bits, check_group_size
from lrm_interp.model.provenance import (
    check_not_quantized,
    check_same_weights,
    model_name,
    recorded_weights,
    weights_record,
)
from lrm_interp.model.sites import Site, find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect.encoding import check_site_list, quantized_site_bits

KEPT = 16  # "bits" of a module kept in FP16
#: the format :meth:`BitAllocation.save` writes: it records the model (``"model"``, maybe ``null``)
FORMAT = "lrm_interp.bits/2"
#: the format of files written before the allocation recorded its model (read, unchecked)
FORMAT_V1 = "lrm_interp.bits/1"
#: the entries every allocation file holds (``"provenance"`` is optional)
_FILE_KEYS = ("bits", "bpw", "budget_bpw", "sensitivity", "group_size", "symmetric")
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class AllocationBits(Mapping[str, int]):
    """The read-only ``{site: bits}`` of a :class:`BitAllocation`: its ``bpw`` is computed from them,
    so an item assignment (``alloc.bits[name] = 16``) left ``bpw`` stale, and :meth:`BitAllocation.save`
    wrote the old figure (H13-BPM). Assigning or deleting raises ``TypeError`` naming
    :func:`with_bits`, which builds the edited allocation with its ``bpw`` recomputed. Compares
    equal to a ``dict`` of the same items; ``dict(alloc.bits)`` is a plain, editable copy."""

    __slots__ = ("_bits",)

    def __init__(self, bits: Mapping[str, int]) -> None:
        self._bits = dict(bits)

    def __getitem__(self, site: str) -> int:
        return self._bits[site]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __setitem__(self, site: str, bits: int) -> None:
        raise TypeError(_READ_ONLY)

    def __delitem__(self, site: str) -> None:
        raise TypeError(_READ_ONLY)

    def __repr__(self) -> str:
        return repr(self._bits)

    def __reduce__(self) -> tuple:
        return (AllocationBits, (self._bits,))


#: the message of an assignment to :attr:`BitAllocation.bits` (:class:`AllocationBits`)
_READ_ONLY = (
    "BitAllocation.bits is read-only: its bpw is computed from it; build a new allocation, e.g. "
    "with_bits(alloc, model_or_sites, {site: bits}) (lrm_interp.protect.bit_allocation.with_bits), which "
    "recomputes bpw with allocation_bpw"
)


@checked_arguments
@dataclass(frozen=True)
class BitAllocation:
    """Bits of every quantized module (16 = kept in FP16) and what they cost.

    Every field is checked at construction (``ValueError`` naming the field, and the site of a
    bad bit width; :meth:`load` prefixes the file): that is what :meth:`load` relies on.

    Attributes:
        bits: ``{site: bits}`` in site order, each an ``int`` 2..8 or 16 (not a bool, ``3.7`` or
            ``"3"``); at least one site. Read-only once built (:class:`AllocationBits`: ``bpw`` is
            computed from it); :func:`with_bits` builds an edited allocation.
        bpw: achieved average storage bits per weight over the sites (finite, > 0, within what its
            bits can give; :func:`check_bpw` checks it exactly against a model's sites).
        budget_bpw: the budget it was allocated under (``None`` for uniform).
        sensitivity: what drove it (``"attribution"``, ``"hessian"``, ``"none"``, ``"uniform"``).
        group_size, symmetric: the grid the costs assume.
        model: ``{"name", "weights_fingerprint"}`` of the model it was computed for
            (:func:`lrm_interp.model.provenance.weights_record`); ``None``: unknown (an older file,
            or built without one). :func:`quantize_allocation_` refuses another model's.
        source: the file it was read from (named in errors), ``None`` when built in memory.
        bits_digest: set by the library's constructors (:func:`allocate_bits`,
            :func:`uniform_allocation`, :func:`with_bits`, :meth:`load`): the digest of the bits and
            grid its ``bpw`` was computed for (:func:`_bits_digest`). ``dataclasses.replace`` copies
            it, so a copy with other bits (or grid) but the old ``bpw`` is refused (``ValueError``
            naming :func:`with_bits`; H14-BPR). ``None`` (built by hand): not checked.
    """

    bits: Mapping[str, int]
    bpw: float
    budget_bpw: float | None
    sensitivity: str
    group_size: int | None = 128
    symmetric: bool = False
    provenance: dict = field(default_factory=dict)
    model: dict | None = None
    source: str | None = field(default=None, compare=False, repr=False)
    bits_digest: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            checked = _checked_fields(self)
            _check_digest(self.bits_digest, checked)
        except ValueError as e:
            raise ValueError(f"{self.source or 'BitAllocation'}: {e}") from None
        for k, v in checked.items():
            object.__setattr__(self, k, v)

    @property
    def label(self) -> str:
        """How errors name the allocation: ``"bit allocation <file>"``, or ``"the bit allocation"``."""
        return f"bit allocation {self.source}" if self.source else "the bit allocation"

    def counts(self) -> dict[int, int]:
        """Modules per bit width."""
        out: dict[int, int] = {}
        for b in self.bits.values():
            out[b] = out.get(b, 0) + 1
        return dict(sorted(out.items()))

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}×{b}" for b, n in self.counts().items())
        budget = "" if self.budget_bpw is None else f" (budget {self.budget_bpw:.3f})"
        return f"BitAllocation({self.sensitivity}, {self.bpw:.4f} bits/weight{budget}; modules at bits: {counts})"

    def _repr_html_(self) -> str:
        """Jupyter: modules per bit width and the bits of every module."""
        from lrm_interp.display import box, html_table

        return box(repr(self), html_table(["site", "bits"], [[k, v] for k, v in self.bits.items()]))

    def to_dataframe(self):
        """One row per site: ``site``, ``bits``."""
        import pandas as pd

        return pd.DataFrame({"site": list(self.bits), "bits": list(self.bits.values())})

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "bits": dict(self.bits),
            "bpw": self.bpw,
            "budget_bpw": self.budget_bpw,
            "sensitivity": self.sensitivity,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
            "provenance": self.provenance,
            "model": self.model,
            # what its bpw was computed from: load refuses a file whose bits / bpw / grid were edited (H15-X-BEF)
            "bits_digest": _bits_digest(self.__dict__),
        }

    @checked_arguments
    def save(self, path: str | Path, *, own: str | None = None, replace: bool = True) -> Path:
        """JSON file (atomic write). A ``path`` that is one of the files of a finished result of an
        ``lrm-interp`` command (``SC/bits.json`` of a study, ``A/attribution.json``), or lies inside
        one, is refused first (:class:`~lrm_interp._io.OtherResultError` naming it; it was replaced
        without a word, H9-PYW); ``own``: the kind of result whose own file this is (the study
        writing its ``bits.json`` passes ``"study"``).

        An existing file is replaced only when it is a bits allocation (an earlier one, written by
        lrm_interp) or empty: any other file (a traces JSONL, masks, a user's ``notes.json``) is
        refused before anything is written (:class:`~lrm_interp._io.OtherResultError` naming it; a
        mistyped path replaced the traces without a word, H15-BST), unless ``own`` (the library's
        writer of that result's own file). ``replace=False``: an existing
        ``path`` is never replaced (``FileExistsError`` naming it, as ``save_masks`` /
        ``save_jsonl``)."""
        refuse_result_file(path, own=own)
        replace = check_bool("replace", replace)
        if own is None:  # the library's own writer (a study) replaces the file of its own result's slot
            _refuse_other_file(Path(path))
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1), replace=replace)
        return Path(path)

    @classmethod
    @checked_arguments
    def load(cls, path: str | os.PathLike) -> BitAllocation:
        """The allocation in the JSON file ``path`` (:data:`FORMAT`, or :data:`FORMAT_V1` written
        before the model was recorded: ``model`` is then ``None``, unless the file holds a ``"model"``
        entry anyway, which is then read and checked like any other: it used to be dropped, so
        another model's allocation marked ``/1`` was applied with a warning saying it recorded none).

        Read with the strict JSON reader (:func:`~lrm_interp._io.loads_strict`: a key twice,
        ``NaN`` refused) and checked in full (the fields' checks of the class); a file of format
        :data:`FORMAT` must hold its ``"model"`` entry (every writer of that format writes it: one
        without was edited). Errors are one line naming the file (and the site): ``ValueError``;
        a missing file, a folder or an unreadable file: ``FileNotFoundError`` /
        ``IsADirectoryError`` / ``OSError``."""
        p = Path(path_argument(path, "bit allocation file"))  # "" was the current folder (H12-EMPY)
        d = _read_json_object(p, "bit allocation file")
        fmt = d.get("format")
        if fmt not in (FORMAT, FORMAT_V1):
            raise ValueError(f"{p}: not a bit allocation file (format {fmt!r}, expected {FORMAT!r})")
        missing = [k for k in _FILE_KEYS if k not in d]
        if missing:
            raise ValueError(f"{p}: the bit allocation file has no {missing[0]!r} entry (written by hand, or cut?)")
        if fmt == FORMAT and "model" not in d:
            raise ValueError(
                f"{p}: the bit allocation file (format {FORMAT!r}) has no 'model' entry: every lrm_interp "
                "writing this format records the model it was computed for, so it was removed and the file "
                "cannot be checked against a model; compute it again (lrm-interp bits --model ...)"
            )
        try:  # checked_arguments checks the flags before __post_init__, which names the file: named here
            alloc = cls(
                d["bits"],
                d["bpw"],
                d["budget_bpw"],
                d["sensitivity"],
                d["group_size"],
                d["symmetric"],
                d.get("provenance", {}),
                d.get("model"),  # checked when present, whatever the format (a /1 file's was dropped, H11-B1M)
                source=str(p),
            )
        except FlagError as e:
            raise FlagError(f"{p}: {e}") from None
        _check_file_digest(p, d, alloc)
        return _stamped(alloc)


def _read_json_object(path: Path, what: str) -> dict:
    """The JSON object in the file ``path`` (a UTF-8 byte-order mark dropped, the strict reader),
    else one line naming ``path`` and ``what`` it should be: ``FileNotFoundError``,
    ``IsADirectoryError``, ``OSError`` (unreadable), ``ValueError`` (binary, empty, invalid JSON,
    not an object)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} is a folder; give the {what} itself (a .json file)") from None
    except OSError as e:
        raise OSError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    try:
        text = strip_bom(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path}: not a {what} (not UTF-8 text: a binary file?; expected JSON of format {FORMAT!r})"
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: not a {what} (the file is empty; expected JSON of format {FORMAT!r})")
    d = loads_strict(text, str(path))
    if not isinstance(d, dict):
        kind = _JSON_TYPES.get(type(d), "null" if d is None else type(d).__name__)
        raise ValueError(f"{path}: not a {what} (a JSON {kind}, expected an object of format {FORMAT!r})")
    return d


def _refuse_other_file(path: Path) -> None:
    """:class:`~lrm_interp._io.OtherResultError` when ``path`` (a link followed) is a non-empty
    regular file that holds no single-file result of lrm_interp (:func:`~lrm_interp._io.file_result`):
    the rule of :meth:`BitAllocation.save` (H15-BST). A result of another kind (masks) is refused by
    :func:`~lrm_interp._io.atomic_write_bytes` (H10-SFR); an empty file holds nothing to lose (the
    command line publishes through one)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
    except OSError:
        return  # unreadable: the write itself says why
    if file_result(path) is not None:  # a result of lrm_interp: another kind's is refused by the writer (H10-SFR)
        return
    raise OtherResultError(
        f"{path} exists and is not a bits allocation (a user's notes, a file of another tool, ...): BitAllocation.save "
        "replaces only a bits allocation file (an earlier one written by lrm_interp), never another file; "
        "choose another path"
    )


def _check_file_digest(path: Path, d: Mapping[str, Any], alloc: BitAllocation) -> None:
    """``ValueError`` naming ``path`` when the file records a ``bits_digest`` (:meth:`BitAllocation.to_dict`)
    that its bits, ``bpw`` and grid no longer give (:func:`_bits_digest`): the file was edited by hand,
    and its ``bpw`` is stale (H15-X-BEF). A file without one (written before it was recorded) loads as
    before."""
    if "bits_digest" not in d:
        return
    digest = d["bits_digest"]
    if not isinstance(digest, str):
        raise ValueError(f"{path}: bits_digest must be a string, got {shown_value(digest)}")
    if digest != _bits_digest(alloc.__dict__):
        raise ValueError(
            f"{path}: the bit allocation file was edited: its bits, bpw or grid no longer match the digest it "
            f"was written with (bits_digest), so its bpw {alloc.bpw} may not be what its bits cost; edit an "
            "allocation with with_bits(alloc, model, {site: bits}) and save it, or compute it again (lrm-interp bits)"
        )


def _site_bits(site: object, b: object) -> tuple[str, int]:
    """``(site, bits)`` if ``site`` is a name and ``b`` an ``int`` 2..8 or :data:`KEPT`, else ``ValueError``."""
    if not isinstance(site, str) or not site:
        raise ValueError(f"bits: a key must be a site name (str), got {shown_value(site)}")
    try:  # the shared integer rule: a NumPy integer too (H11-NPI)
        n = check_int("bits", b)
    except ValueError:
        n = None
    if n is None or not (MIN_BITS <= n <= MAX_BITS or n == KEPT):
        raise ValueError(
            f"bits of site {site} must be an integer {MIN_BITS}..{MAX_BITS} or {KEPT} (kept in FP16), "
            f"got {shown_value(b)}"
        )
    return site, n


def _model_entry(model: Any) -> dict[str, str] | None:
    """``{"name", "weights_fingerprint"}`` of ``model`` for :attr:`BitAllocation.model`: computed for
    a module (:func:`~lrm_interp.model.provenance.weights_record`), checked for a mapping (a
    non-empty ``weights_fingerprint`` string; ``name`` a string if given), ``None`` as is; anything
    else: ``ValueError``."""
    if model is None:
        return None
    if isinstance(model, torch.nn.Module):
        return weights_record(model)
    if not isinstance(model, Mapping):
        raise ValueError(
            f"model must be a model, a mapping {{'name', 'weights_fingerprint'}} or None, got {shown_value(model)}"
        )
    fp, name = model.get("weights_fingerprint"), model.get("name", "")
    if not isinstance(fp, str) or not fp:
        raise ValueError(f"model must record a weights_fingerprint (a non-empty string), got {shown_value(fp)}")
    if not isinstance(name, str):
        raise ValueError(f"model: name must be a string, got {shown_value(name)}")
    return {"name": name, "weights_fingerprint": fp}


def _checked_fields(a: BitAllocation) -> dict[str, Any]:
    """The fields of ``a`` checked and normalised (``ValueError`` naming the field: the one rule of
    :class:`BitAllocation` and :meth:`BitAllocation.load`)."""
    if not isinstance(a.bits, Mapping):
        raise ValueError(f"bits must be a mapping {{site: bits}}, got {shown_value(a.bits)}")
    bits = dict(_site_bits(k, v) for k, v in a.bits.items())
    if not bits:
        raise ValueError("bits names no site")
    if not isinstance(a.sensitivity, str) or not a.sensitivity:
        raise ValueError(f"sensitivity must be a name (str), got {shown_value(a.sensitivity)}")
    if not isinstance(a.provenance, Mapping):
        raise ValueError(f"provenance must be a mapping, got {shown_value(a.provenance)}")
    if a.source is not None and not isinstance(a.source, (str, os.PathLike)):
        raise ValueError(f"source must be the file's path or None, got {shown_value(a.source)}")
    return {
        "bits": AllocationBits(bits),
        "bpw": _check_bpw_range(check_float("bpw", a.bpw, min=0.0, min_open=True), bits),
        "budget_bpw": check_float("budget_bpw", a.budget_bpw, min=0.0, min_open=True, optional=True),
        "group_size": check_int("group_size", a.group_size, min=1, optional=True),
        "symmetric": check_bool("symmetric", a.symmetric),
        "provenance": dict(a.provenance),
        "model": _model_entry(a.model),
        "source": None if a.source is None else str(a.source),
    }


def _bits_digest(fields: Mapping[str, Any]) -> str:
    """BLAKE2b-64 hex digest of what an allocation's ``bpw`` is computed from and says: its bits
    (sorted by site), ``bpw``, ``group_size`` and ``symmetric`` (``fields``: checked fields, as
    :func:`_checked_fields` returns them or an allocation's)."""
    key = [sorted(dict(fields["bits"]).items()), repr(float(fields["bpw"])), fields["group_size"], fields["symmetric"]]
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=8).hexdigest()


def _check_digest(digest: Any, fields: Mapping[str, Any]) -> None:
    """``ValueError`` when an allocation stamped with ``digest`` (:func:`_stamped`) now holds other bits
    or grid than its ``bpw`` was computed for (``dataclasses.replace(alloc, bits=...)``; H14-BPR)."""
    if digest is None:
        return
    if not isinstance(digest, str):
        raise ValueError(f"bits_digest must be a string or None, got {shown_value(digest)}")
    if digest != _bits_digest(fields):
        raise ValueError(
            f"bpw {fields['bpw']} was computed for other bits or another grid (dataclasses.replace(alloc, "
            "bits=...)?): use with_bits(alloc, model, bits), which recomputes it"
        )


def _stamped(alloc: BitAllocation) -> BitAllocation:
    """``alloc`` stamped with the digest of the bits its ``bpw`` was computed for (:func:`_bits_digest`):
    what the library's constructors return."""
    object.__setattr__(alloc, "bits_digest", _bits_digest(alloc.__dict__))
    return alloc


#: most scale/zero bits one weight can carry (a 16-bit scale and zero-point for a group of one weight)
_MAX_PARAM_BITS_PER_WEIGHT = 32


def _check_bpw_range(bpw: float, bits: Mapping[str, int]) -> float:
    """``bpw`` if the bits per weight ``bits`` can give (without the sites' shapes: at least the
    lowest width, at most the highest plus its scales), else ``ValueError``: an allocation whose
    modules are all at 16 bits said 4.0 bits/weight and was applied as such (H11-BPW). The exact
    check, with the sites, is :func:`check_bpw`."""
    lo = min(bits.values())
    hi = max(b if b == KEPT else b + _MAX_PARAM_BITS_PER_WEIGHT for b in bits.values())
    if not lo - 1e-9 <= bpw <= hi + 1e-9:
        given = f"exactly {lo}" if lo == hi else f"between {lo} and {hi}"
        raise ValueError(
            f"bpw {bpw} contradicts bits: its sites at {', '.join(map(str, sorted(set(bits.values()))))} bits "
            f"give {given} bits/weight (edited?); compute the allocation again (lrm-interp bits)"
        )
    return bpw


def check_bpw(alloc: BitAllocation, model: torch.nn.Module) -> None:
    """``ValueError`` naming the allocation when its ``bpw`` is not what its bits cost on ``model``'s
    sites (:func:`allocation_bpw` with its grid): the stated figure used to be trusted (H11-BPW)."""
    sites = [s for s in find_sites(model, include_lm_head=True) if s.name in alloc.bits]
    actual = allocation_bpw(alloc.bits, sites, group_size=alloc.group_size, symmetric=alloc.symmetric)
    if not math.isclose(actual, alloc.bpw, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(
            f"{alloc.label}: bpw {alloc.bpw} but its bits give {actual:.4f} bits/weight on {model_name(model)} "
            "(edited?); compute the allocation again (lrm-interp bits --model ...)"
        )


class SiteErrors(dict):
    """``{site: {bits: error}}`` of :func:`quantization_errors`, plus ``model``: the ``{"name",
    "weights_fingerprint"}`` of the model whose weights they were measured on (a plain ``dict``
    otherwise). :func:`allocate_bits` records it in the allocation it computes. ``grid``:
    ``{"group_size", "symmetric", "relative"}`` they were measured with (``None``: unknown, not
    compared); :func:`allocate_bits` refuses an allocation on another grid (H15-EGR)."""

    def __init__(self, errors: Mapping[str, Mapping[int, float]] | None = None, *, model: Any = None, grid: Any = None):
        super().__init__(errors or {})
        self.model = _model_entry(model)
        self.grid = None if grid is None else dict(grid)


def check_choices(choices: Sequence[int]) -> list[int]:
    """The sorted distinct bit widths of ``choices`` if each is 2..8 or 16 (:data:`KEPT`), else ``ValueError``."""
    if isinstance(choices, (str, bytes, Mapping)) or not isinstance(choices, Iterable):  # a raw error (H28-APITYPES)
        raise TypeError(
            f"choices must be a list of bit widths (2..8 or {KEPT}, e.g. [2, 3, 4]), got {shown_value(choices)}"
        )
    out = set()
    for b in choices:
        try:
            out.add(KEPT if not isinstance(b, bool) and b == KEPT else check_bits(b))
        except ValueError:
            raise ValueError(f"choices: bit widths must be 2..8 or {KEPT}, got {b!r}") from None
    if not out:
        raise ValueError("choices must name at least one bit width (2..8 or 16)")
    return sorted(out)


@checked_arguments
def site_cost(site: Site, bits: int, *, group_size: int | None = 128, symmetric: bool = False) -> int:
    """Storage bits of ``site`` at ``bits`` (``16``: the FP16 weights, nothing else)."""
    if bits == KEPT:
        return KEPT * site.n_weights
    code, params = quantized_site_bits(site, bits, group_size=group_size, symmetric=symmetric)
    return code + params


@checked_arguments
def allocation_bpw(
    bits: Mapping[str, int], sites: Sequence[Site], *, group_size: int | None = 128, symmetric: bool = False
) -> float:
    """Average storage bits per weight of an allocation over ``sites``."""
    n = sum(s.n_weights for s in sites)
    return sum(site_cost(s, bits[s.name], group_size=group_size, symmetric=symmetric) for s in sites) / n


@checked_arguments
@torch.no_grad()
def quantization_errors(
    model: torch.nn.Module,
    sites: Sequence[Site],
    choices: Sequence[int],
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    relative: bool = False,
    fingerprint: str | None = None,
    requantize: bool = False,
) -> SiteErrors:
    """``{site: {bits: ‖RTN_bits(W) − W‖²_F}}`` (divided by ``‖W‖²_F`` when ``relative``); 0 at 16 bits.

    A :class:`SiteErrors` that records ``model`` (its weights fingerprint: ``fingerprint`` if
    already computed), which :func:`allocate_bits` records in the allocation. A parameter that
    is NaN / inf raises :class:`~lrm_interp.model.provenance.NonFiniteError` naming it.

    A model already quantized (its record holds a quantization step, or it was loaded with
    ``from_pretrained`` from a quantized folder) is refused first
    (:func:`~lrm_interp.model.provenance.check_not_quantized`,
    :class:`~lrm_interp.model.provenance.AlreadyQuantizedError`): its errors at its own grid are
    near 0, and an allocation built on them is applied to the original model (H14-QEQ);
    ``requantize=True`` measures it all the same (errors of a second grid on the first)."""
    from lrm_interp.compress.quant.rtn import rtn_quantize

    sites = check_site_list(
        sites, "quantization_errors"
    )  # quantization_errors(model, sites, 3): raw errors (H28-APITYPES)
    choices = check_choices(choices)
    if not check_bool("requantize", requantize):
        check_not_quantized(
            model,
            "its quantization errors would be measured on a grid already applied (near 0 at its own bits), and "
            "an allocation built on them is meant for the full-precision weights; measure the original model, "
            "or pass requantize=True to measure the quantized one on purpose",
        )

    out = SiteErrors(
        model=weights_record(model, fingerprint),
        grid={"group_size": group_size, "symmetric": symmetric, "relative": relative},
    )
    for s in sites:
        W = weight_matrix(get_module(model, s.name)).float()
        norm = float(W.pow(2).sum()) if relative else 1.0
        out[s.name] = {
            b: 0.0
            if b == KEPT
            else float((rtn_quantize(W, b, group_size=group_size, symmetric=symmetric) - W).pow(2).sum())
            / max(norm, 1e-30)
            for b in choices
        }
    return out


def hessian_sensitivity(hessians: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{site: tr(H)/in}`` from GPTQ-style input Hessians ``H = E[x xᵀ]`` ``[in, in]``."""
    return {k: float(torch.diagonal(H).mean()) for k, H in hessians.items()}


@checked_arguments
def allocate_bits(
    sites: Sequence[Site],
    errors: Mapping[str, Mapping[int, float]],
    sensitivity: Mapping[str, float] | Any | None,
    budget_bpw: float,
    *,
    choices: Sequence[int] = (2, 3, 4, 8, 16),
    group_size: int | None = 128,
    symmetric: bool = False,
    name: str = "none",
    model: Any = None,
) -> BitAllocation:
    """Greedy bit allocation minimising ``Σ_m s_m · e_m(b_m)`` with average bits ≤ ``budget_bpw``.

    Args:
        errors: ``{site: {bits: error}}`` for every choice (:func:`quantization_errors`, which
            records the model and the grid they were measured on: errors of another grid than
            ``group_size`` / ``symmetric`` are refused).
        sensitivity: ``{site: s_m}`` for every site (``None``: 1 everywhere), or an
            :class:`~lrm_interp.attribution.results.Attribution` (its mean relative importance,
            :func:`~lrm_interp.protect.policies.module_scores`, as ``lrm-interp bits --scores``;
            refused when it records another model than ``errors``). Negative values are an error,
            and so is a sensitivity that is 0 for every site (nothing to allocate by), one that
            lacks sites (they were priced at 0, so put at the lowest bits) and one whose values are
            ``{bits: error}`` mappings (errors and sensitivity swapped).
        budget_bpw: average storage bits per weight allowed (codes, scales, FP16 modules).
        name: recorded as :attr:`BitAllocation.sensitivity`.
        model: the model the allocation is for (a module, or its ``{"name",
            "weights_fingerprint"}``), recorded as :attr:`BitAllocation.model`; default: the one
            ``errors`` records (:class:`SiteErrors`), else none.

    Raises:
        TypeError: ``sites`` not a list of Site (a pattern string), ``errors`` / ``sensitivity``
            of the wrong shape (swapped).
        ValueError: ``sites`` empty, budget below the all-lowest allocation, a site without errors
            for a choice, a sensitivity that is negative, not finite, 0 everywhere or lacks sites;
            ``model`` another model than the one ``errors`` were measured on; errors measured on
            another grid.
    """
    sites = check_site_list(sites, "allocate_bits")  # 'mlp', [] failed deep inside (H15-MSS/FSZ)
    check_float("budget_bpw", budget_bpw, min=0.0, min_open=True)
    _check_errors_shape(errors, sites)
    record = _errors_model(errors, model)
    choices = check_choices(choices)
    group_size = check_group_size(group_size)
    symmetric = check_bool("symmetric", symmetric)
    _check_errors_grid(errors, group_size, symmetric)
    n_total = sum(s.n_weights for s in sites)
    sens = {s.name: 1.0 for s in sites} if sensitivity is None else _sensitivities(sensitivity, sites, record)
    bad = [k for k, v in sens.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"allocate_bits: sensitivities must be finite and >= 0, got {sens[bad[0]]} for {bad[0]}")
    if sensitivity is not None and sites and not any(sens[s.name] > 0 for s in sites):
        # every module's error weighs 0: any allocation would do, one drawn from no information (H8-NAN2)
        raise ValueError(
            f"allocate_bits: every sensitivity of the {len(sites)} sites is 0: nothing to allocate by "
            "(sensitivity=None weighs every module equally)"
        )
    for s in sites:
        missing = [b for b in choices if b not in errors.get(s.name, {})]
        if missing:
            raise ValueError(f"allocate_bits: no error of {s.name} at {missing} bits")
    # as floats (checked numbers): a Decimal error failed in the arithmetic below (H35-NUMERR)
    errors = {s.name: {b: float(errors[s.name][b]) for b in choices} for s in sites}
    _refuse_flat_errors(errors, [s for s in sites if sens[s.name] > 0], choices)
    # the greedy compares sensitivity x error falls: scaled to the largest sensitivity, equal ones of
    # 1e-320 (gains underflowed to 0) or 1e308 (overflowed) allocate as sensitivity=None does (H35-ALLOCSCALE)
    top = max(sens.values(), default=0.0)
    weight = {k: (v / top if top > 0 else v) for k, v in sens.items()}
    cost = {s.name: {b: site_cost(s, b, group_size=group_size, symmetric=symmetric) for b in choices} for s in sites}
    level = {s.name: 0 for s in sites}
    used = sum(cost[s.name][choices[0]] for s in sites)
    budget = budget_bpw * n_total
    if used > budget + 1e-9:
        raise ValueError(
            f"budget {budget_bpw} bpw is below the cheapest allocation ({used / n_total:.4f} bpw at "
            f"{choices[0]} bits everywhere)"
        )
    while True:
        best, best_ratio = None, -math.inf
        for s in sites:
            i = level[s.name]
            if i + 1 >= len(choices):
                continue
            b0, b1 = choices[i], choices[i + 1]
            extra = cost[s.name][b1] - cost[s.name][b0]
            if used + extra > budget + 1e-9:
                continue
            gain = weight[s.name] * (errors[s.name][b0] - errors[s.name][b1])
            ratio = gain / extra
            if ratio < 0:  # more bits, more error: an upgrade that worsens the objective (H34-ALLOCZERO)
                continue
            if ratio > best_ratio:
                best, best_ratio = s.name, ratio
        if best is None:
            break
        i = level[best]
        used += cost[best][choices[i + 1]] - cost[best][choices[i]]
        level[best] = i + 1
    bits = {s.name: choices[level[s.name]] for s in sites}
    return _stamped(
        BitAllocation(
            bits,
            used / n_total,
            float(budget_bpw),
            name,
            group_size,
            symmetric,
            {"choices": choices, "objective": sum(sens[k] * errors[k][b] for k, b in bits.items())},
            record,
        )
    )


def _refuse_flat_errors(
    errors: Mapping[str, Mapping[int, float]], sites: Sequence[Site], choices: Sequence[int]
) -> None:
    """``ValueError`` when no site of ``sites`` (those of a sensitivity above 0) has an error that
    falls from one bit width of ``choices`` to the next: every allocation is as good as another (a
    model of zero or constant weights quantizes exactly at every width), and one was drawn from no
    information, "21 at 2, 2 at 4, 1 at 8, 4 at 16 bits" (H34-ALLOCZERO; all-zero sensitivities are
    refused the same way, H8-NAN2)."""
    for s in sites:
        e = [errors[s.name][b] for b in choices]
        if any(a > b for a, b in zip(e, e[1:])):
            return
    raise ValueError(
        f"allocate_bits: no site's error falls with more bits (the {len(sites)} sites' errors at {list(choices)} bits "
        "are equal, or grow): nothing to allocate by (a model of zero or constant weights quantizes exactly at every "
        "width; check the model, or measure the errors again with quantization_errors)"
    )


def _check_errors_shape(errors: Any, sites: Sequence[Site]) -> None:
    """``TypeError`` unless ``errors`` maps sites to ``{bits: error}`` mappings (:func:`allocate_bits`):
    a number there is a sensitivity (the two swapped failed with "float() argument must be ... not
    'dict'", H15-ASW2)."""
    swap = "errors and sensitivity swapped? the order is allocate_bits(sites, errors, sensitivity, budget_bpw)"
    if not isinstance(errors, Mapping):
        raise TypeError(
            f"allocate_bits: errors must map site -> {{bits: error}} (quantization_errors(model, sites, choices)), "
            f"got {type(errors).__name__}{'; ' + swap if hasattr(errors, 'site_ri') else ''}"
        )
    for s in sites:
        e = errors.get(s.name)
        if e is not None and not isinstance(e, Mapping):
            raise TypeError(
                f"allocate_bits: errors must map site -> {{bits: error}} (quantization_errors), but its value for "
                f"{s.name} is {shown_value(e)}: {swap}"
            )
        for b, v in (e or {}).items():  # NaN at 3 bits sent the site to 2 bits, -1 to 4 (H33-ALLOCNAN)
            x = number_value(v, f"allocate_bits: errors[{s.name!r}][{b!r}]")
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(
                    f"allocate_bits: errors[{s.name!r}][{b!r}] is {x}: a quantization error is finite and >= 0 "
                    "(measure them with quantization_errors(model, sites, choices))"
                )


def _sensitivities(sensitivity: Any, sites: Sequence[Site], record: dict[str, str] | None) -> dict[str, float]:
    """``{site: s_m}`` of every site from the ``sensitivity`` given to :func:`allocate_bits`: a mapping
    ``{site: number}`` or an Attribution (its mean relative importance, :func:`module_scores`; one of
    another model than the errors' ``record`` is refused, H15-AXS). ``TypeError``: another kind, or
    ``{bits: error}`` values (errors and sensitivity swapped, H15-ASW2); ``ValueError``: a site it has
    no value for (it was priced at 0, so put at the lowest bits, H15-ASM)."""
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.protect.policies import module_scores

    if isinstance(sensitivity, Attribution):  # as `lrm-interp bits --scores` takes it (H15-ARD)
        got = recorded_weights(sensitivity)
        if got and record and got["weights_fingerprint"] != record["weights_fingerprint"]:
            raise ValueError(
                "allocate_bits: the sensitivity (an Attribution) was computed on another model "
                f"({got.get('name') or '?'}, weights fingerprint {got['weights_fingerprint']}) than the errors "
                f"({record.get('name') or '?'}, {record['weights_fingerprint']}): scores of one model rank another "
                "model's modules wrongly; attribute the model the errors were measured on"
            )
        given: Mapping[str, Any] = module_scores(sensitivity, purpose="allocate")
    elif isinstance(sensitivity, Mapping):
        given = sensitivity
    else:
        raise TypeError(
            f"allocate_bits: sensitivity must map site -> number (e.g. res.site_ri()), be an Attribution or None, "
            f"got {type(sensitivity).__name__}"
        )
    missing = [s.name for s in sites if s.name not in given]
    if missing:
        raise ValueError(
            f"allocate_bits: sensitivity has no value for {len(missing)} of {len(sites)} sites (e.g. "
            f"{', '.join(missing[:3])}): they would weigh 0 and stay at the lowest bits; give a sensitivity of "
            "every site (attribute(...) over all sites), or allocate only the sites it scores"
        )
    out: dict[str, float] = {}
    for s in sites:
        v = given[s.name]
        if isinstance(v, Mapping):
            raise TypeError(
                f"allocate_bits: sensitivity must map site -> number, but its value for {s.name} is a mapping "
                "({bits: error}?): errors and sensitivity swapped? the order is allocate_bits(sites, errors, "
                "sensitivity, budget_bpw)"
            )
        # '3', True, numpy / torch bools were read as numbers (H34-NPBOOL)
        out[s.name] = number_value(v, f"allocate_bits: the sensitivity of {s.name}")
    return out


def _check_errors_grid(errors: Any, group_size: int | None, symmetric: bool) -> None:
    """``ValueError`` when ``errors`` record the grid they were measured on (:class:`SiteErrors`) and it is
    not the allocation's ``group_size`` / ``symmetric``: the errors of one grid priced the bits of another
    (H15-EGR). Errors that record no grid (a plain ``dict``) are not compared."""
    grid = getattr(errors, "grid", None)
    if not isinstance(grid, Mapping):
        return
    have = (grid.get("group_size"), grid.get("symmetric"))
    if have != (group_size, symmetric):
        raise ValueError(
            f"allocate_bits: the errors were measured on another grid (group_size={have[0]}, symmetric={have[1]}) "
            f"than the allocation's (group_size={group_size}, symmetric={symmetric}): measure them on its grid, "
            f"quantization_errors(model, sites, choices, group_size={group_size}, symmetric={symmetric})"
        )


def _errors_model(errors: Mapping[str, Any], model: Any) -> dict[str, str] | None:
    """The model record of an allocation computed from ``errors`` for ``model`` (:func:`allocate_bits`)."""
    measured = getattr(errors, "model", None)
    if model is None:
        return _model_entry(measured)
    record = _model_entry(model)
    if measured and record and measured["weights_fingerprint"] != record["weights_fingerprint"]:
        raise ValueError(
            f"allocate_bits: the errors were measured on another model ({measured.get('name') or '?'}, weights "
            f"fingerprint {measured['weights_fingerprint']}) than model ({record.get('name') or '?'}, "
            f"{record['weights_fingerprint']}): measure them on this model (quantization_errors(model, ...))"
        )
    return record


def with_bits(
    alloc: BitAllocation, model_or_sites: torch.nn.Module | Sequence[Site], bits: Mapping[str, int]
) -> BitAllocation:
    """A copy of ``alloc`` with the sites of ``bits`` at their new bit widths (``16``: kept in FP16)
    and its ``bpw`` recomputed (:func:`allocation_bpw` on its grid): the way to edit an allocation,
    whose :attr:`~BitAllocation.bits` are read-only (H13-BPM).

    ``model_or_sites``: the model (its sites, :func:`~lrm_interp.model.sites.find_sites` with the
    ``lm_head``; refused when ``alloc`` records another model's weights) or the sites themselves;
    they must hold every site of ``alloc``. The copy keeps the budget, sensitivity, grid and model
    of ``alloc``; its provenance records the edit (``"edited"``: ``{site: bits}``) and drops the
    ``"objective"`` (that of the old bits). ``ValueError``: a site ``alloc`` does not name, a bad
    bit width, sites lacking one of ``alloc``'s."""
    if not isinstance(alloc, BitAllocation):
        raise TypeError(f"alloc must be a BitAllocation, got {shown_value(alloc)}")
    if not isinstance(bits, Mapping):
        raise ValueError(f"bits must be a mapping {{site: bits}}, got {shown_value(bits)}")
    unknown = [k for k in bits if k not in alloc.bits]
    if unknown:
        raise ValueError(f"with_bits: {alloc.label} names no site {unknown[0]!r}; give sites it allocates")
    changes = dict(_site_bits(k, v) for k, v in bits.items())
    if isinstance(model_or_sites, torch.nn.Module):
        if alloc.model is not None:
            check_same_weights(alloc, model_or_sites, what=alloc.label, hint="give the model it was computed for")
        sites: Sequence[Site] = find_sites(model_or_sites, include_lm_head=True)
    else:
        sites = list(model_or_sites)
    new = dict(alloc.bits, **changes)
    chosen = [s for s in sites if s.name in new]
    missing = [k for k in new if k not in {s.name for s in chosen}]
    if missing:
        raise ValueError(
            f"with_bits: the sites given lack {len(missing)} site(s) of {alloc.label} (first: {missing[0]}): "
            "give the model it was computed for, or its sites"
        )
    provenance = {k: v for k, v in alloc.provenance.items() if k != "objective"}
    provenance["edited"] = {**dict(alloc.provenance.get("edited") or {}), **changes}
    return _stamped(
        BitAllocation(
            new,
            allocation_bpw(new, chosen, group_size=alloc.group_size, symmetric=alloc.symmetric),
            alloc.budget_bpw,
            alloc.sensitivity,
            alloc.group_size,
            alloc.symmetric,
            provenance,
            alloc.model,
        )
    )


@checked_arguments
def uniform_allocation(
    sites: Sequence[Site], bits: int, *, group_size: int | None = 128, symmetric: bool = False, model: Any = None
) -> BitAllocation:
    """Every module at ``bits`` (the baseline of the same bit width everywhere); ``model``: the
    model it is for (a module or its record, :attr:`BitAllocation.model`), ``None``: unrecorded.
    ``sites``: a non-empty list of Site; ``bits``: 2..8 or 16 (``"3"`` was read as 3, H15-USS);
    ``group_size``: positive or ``None`` (per channel; :func:`~lrm_interp.compress.quant.grid.check_group_size`:
    0 was a ``ZeroDivisionError``, -4 a refusal of the bpw it gave, H27-BPWNEG)."""
    sites = check_site_list(sites, "uniform_allocation")  # 'mlp', [] failed deep inside (H15-USS/FSZ)
    group_size = check_group_size(group_size)
    try:
        n = KEPT if not isinstance(bits, bool) and bits == KEPT else check_bits(bits)
    except ValueError:
        raise ValueError(
            f"uniform_allocation: bits must be an integer {MIN_BITS}..{MAX_BITS} or {KEPT} (kept in FP16), "
            f"got {shown_value(bits)}"
        ) from None
    b = {s.name: n for s in sites}
    return _stamped(
        BitAllocation(
            b,
            allocation_bpw(b, sites, group_size=group_size, symmetric=symmetric),
            None,
            "uniform",
            group_size,
            symmetric,
            model=model,
        )
    )


@checked_arguments
def quantize_allocation_(
    model: torch.nn.Module,
    alloc: BitAllocation,
    *,
    method: str = "rtn",
    calib=None,
    progress: bool = True,
    partial: bool = False,
    requantize: bool = False,
    **gptq_kw,
) -> list:
    """Quantize each module of ``model`` in place at its allocated bits (16: left as is), with
    :func:`lrm_interp.compress.quant.quantize_model_`, one call per bit width; returns the reports.

    Refused before any weight changes (:func:`check_allocation`): an allocation of another model
    (:class:`~lrm_interp.model.provenance.WeightsMismatchError` naming the allocation's file and
    both models), one naming sites ``model`` lacks, and one that leaves linear sites of ``model``
    (:func:`~lrm_interp.model.sites.find_sites`) out, which would stay in full precision while
    the allocation's bits per weight count only its own sites; ``partial=True`` asks for that
    (only the sites it names are quantized). An allocation read from a file that records no model
    (``lrm_interp.bits/1``) is applied with a warning. A model already quantized (its record holds a
    quantization step) is refused unless ``requantize`` (as :func:`~lrm_interp.compress.quant.quantize_model_`)."""
    from lrm_interp.compress.quant import quantize_model_

    check_allocation(model, alloc, partial=partial)
    if not requantize:
        check_not_quantized(
            model,
            "an allocation's bits are meant for the full-precision weights; start from the original model, or "
            "pass requantize=True to stack them on purpose",
        )
    reports: list = []
    by_bits: dict[int, list[str]] = {}
    for k, b in alloc.bits.items():
        by_bits.setdefault(b, []).append(k)
    for b, names in sorted(by_bits.items()):
        if b == KEPT:
            continue
        reports.append(
            quantize_model_(
                model,
                bits=b,
                group_size=alloc.group_size,
                symmetric=alloc.symmetric,
                method=method,
                sites=names,
                calib=calib,
                progress=progress,
                requantize=requantize or bool(reports),  # after this allocation's own earlier widths (other sites)
                **gptq_kw,
            )
        )
    return reports


@checked_arguments
def check_allocation(model: torch.nn.Module, alloc: BitAllocation, *, partial: bool = False) -> None:
    """Refuse to apply ``alloc`` to ``model`` (:func:`quantize_allocation_`'s checks): another model's
    weights fingerprint, sites ``model`` lacks (``ValueError``), a ``bpw`` its bits do not give
    (:func:`check_bpw`, unless ``partial``), linear sites of ``model`` it leaves out unless
    ``partial`` (``ValueError`` naming how many and the first). No model record on an allocation
    read from a file: a warning (it cannot be checked)."""
    if not isinstance(alloc, BitAllocation):
        raise TypeError(f"alloc must be a BitAllocation, got {shown_value(alloc)}")
    check_bool("partial", partial)
    label, name = alloc.label, model_name(model)
    redo = f"compute the allocation for this model (lrm-interp bits --model ..., or allocate_bits on {name})"
    if alloc.model is not None:
        check_same_weights(alloc, model, what=label, hint=f"its bits weigh another model's modules; {redo}")
    elif alloc.source is not None:
        warnings.warn(
            f"{alloc.source}: the bit allocation records no model (a {FORMAT_V1!r} file of an older lrm_interp, "
            f"or one saved without a model): it cannot be checked against {name}, the model it is applied to; "
            "compute it again (lrm-interp bits) to record it",
            stacklevel=user_stacklevel(),
        )
    everything = {s.name for s in find_sites(model, include_lm_head=True)}
    unknown = [k for k in alloc.bits if k not in everything]
    if unknown:
        raise ValueError(
            f"{label} names {len(unknown)} site(s) that {name} has no linear module for (first: {unknown[0]}): "
            f"an allocation of another model?; {redo}"
        )
    sites = find_sites(model)
    missing = [s.name for s in sites if s.name not in alloc.bits]
    if missing and not partial:
        raise ValueError(
            f"{label} leaves {len(missing)} of the {len(sites)} linear sites of {name} out (first: {missing[0]}): "
            f"they would stay in full precision while its {alloc.bpw:.4f} bits/weight count only the sites it "
            f"names; pass partial=True to quantize only those, or {redo}"
        )
    if not partial:  # partial=True: the caller's own subset, applied as named (its bpw is not used)
        check_bpw(alloc, model)


__all__ = [
    "BitAllocation",
    "allocate_bits",
    "uniform_allocation",
    "quantization_errors",
    "hessian_sensitivity",
    "site_cost",
    "allocation_bpw",
    "quantize_allocation_",
    "check_allocation",
    "check_choices",
    "with_bits",
    "AllocationBits",
    "SiteErrors",
    "KEPT",
    "FORMAT",
]
