"""Compression specs: a spec string → a :class:`CompressionSpec` → an in-memory compressed copy.

=====================  ===================================================================
spec                   what is applied to a deep copy (all linear sites of the decoder layers)
=====================  ===================================================================
``none``               nothing (the original)
``rtn:B`` / ``gptq:B``  fake quantization to B bits (:func:`lrm_interp.compress.quant.quantize_model_`),
                       asymmetric grid (the library's default); ``rtn:B:sym`` the symmetric grid
``magnitude:S``        unstructured magnitude pruning at sparsity S (``0.5`` or ``50%``)
``sparsegpt:S``        SparseGPT at sparsity S; ``sparsegpt:2:4`` the 2:4 pattern
``wanda:S``            Wanda at sparsity S; ``wanda:2:4``
=====================  ===================================================================

Method names come from the compression driver's registry (:func:`lrm_interp.compress.driver.get_method`):
quantizers take ``:BITS``, pruners ``:SPARSITY`` or, where they support it, ``:N:M``. GPTQ,
SparseGPT and Wanda (the calibrated methods) share calibration ids
(:func:`lrm_interp.compress.calibration.calibration_ids`).
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch

from lrm_interp.checks import check_bool, check_float, checked_arguments, shown_value
from lrm_interp.compress.calibration import calibration_shape, check_calibration_context
from lrm_interp.compress.common import parse_pattern
from lrm_interp.compress.driver import get_method, method_names
from lrm_interp.compress.prune.apply import prune_model_
from lrm_interp.compress.quant.apply import quantize_model_
from lrm_interp.compress.quant.grid import check_bits

METHODS = ("none",) + method_names()


@checked_arguments
@dataclass(frozen=True)
class CompressionSpec:
    """``method`` with ``bits`` (quantizers) or ``sparsity`` / ``pattern`` (pruners).

    Checked when made (H9-CS: ``CompressionSpec("rtn", bits=3, sparsity=0.5)`` ran plain RTN and
    recorded the sparsity; ``symmetric="no"``, a truthy string, quantized symmetrically): ``method``
    one of :data:`METHODS` (the registry now); a quantizer needs ``bits`` (an ``int`` in 2..8) and
    takes ``symmetric`` (``True`` / ``False``), a pruner needs ``sparsity`` (a number in [0, 1)) or
    ``pattern`` (``"N:M"``, for a pruner that supports it; ``sparsity`` is then ``N / M``), and
    ``"none"`` takes nothing. A field given for another kind of method is refused naming it.
    """

    method: str = "none"
    bits: int | None = None
    sparsity: float | None = None
    pattern: str | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        names = ("none",) + method_names()  # the registry now (METHODS: as at import)
        if not isinstance(self.method, str) or self.method not in names:
            raise ValueError(f"method must be one of {', '.join(names)}, got {shown_value(self.method)}")
        check_bool("symmetric", self.symmetric)
        given = [f for f in ("bits", "sparsity", "pattern") if getattr(self, f) is not None]
        given += ["symmetric"] if self.symmetric else []
        if self.method == "none":
            if given:
                it = "it" if len(given) == 1 else "them"
                raise ValueError(f"method 'none' (the original model) takes no {', '.join(given)}: leave {it} out")
            return
        m = get_method(self.method)
        if m.kind == "quantization":
            wrong: list[str] = [f for f in ("sparsity", "pattern") if f in given]
            if wrong:
                raise ValueError(
                    f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to the quantizer "
                    f"{self.method!r} (a pruner's): leave {'it' if len(wrong) == 1 else 'them'} out"
                )
            if self.bits is None:
                raise ValueError(f"the quantizer {self.method!r} needs bits (2..8)")
            if not isinstance(self.bits, numbers.Integral) or isinstance(self.bits, bool):
                raise ValueError(f"bits must be an integer in 2..8, got {shown_value(self.bits)}")
            object.__setattr__(self, "bits", check_bits(self.bits))
            return
        wrong = [f for f in ("bits", "symmetric") if f in given]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to the pruner "
                f"{self.method!r} (a quantizer's): leave {'it' if len(wrong) == 1 else 'them'} out"
            )
        if self.pattern is not None:
            if not m.nm:
                raise ValueError(f"pattern: {m.label} is unstructured only; give sparsity instead")
            if not isinstance(self.pattern, str) or self.pattern.count(":") != 1:
                raise ValueError(f"pattern must be 'N:M' like '2:4', got {shown_value(self.pattern)}")
            n, k = parse_pattern(self.pattern)
            if self.sparsity is not None and (
                not isinstance(self.sparsity, numbers.Real)
                or isinstance(self.sparsity, bool)
                or abs(float(self.sparsity) - n / k) > 1e-12
            ):
                raise ValueError(
                    f"sparsity {shown_value(self.sparsity)} disagrees with pattern {self.pattern!r} "
                    f"(N:M prunes {n} of every {k}: sparsity {n / k:g}); give one of the two"
                )
            object.__setattr__(self, "pattern", f"{n}:{k}")
            object.__setattr__(self, "sparsity", n / k)
            return
        if self.sparsity is None:
            raise ValueError(f"the pruner {self.method!r} needs sparsity (in [0, 1)) or pattern ('N:M')")
        object.__setattr__(self, "sparsity", check_float("sparsity", self.sparsity, min=0.0, max=1.0, max_open=True))

    @property
    def tag(self) -> str:
        """Folder-name suffix: ``rtn3``, ``sparsegpt50``, ``wanda2of4``; ``""`` for none."""
        if self.method == "none":
            return ""
        if self.bits is not None:
            return f"{self.method}{self.bits}" + ("sym" if self.symmetric else "")
        if self.pattern:
            return self.method + self.pattern.replace(":", "of")
        return f"{self.method}{round(100 * float(self.sparsity or 0), 2):g}"

    @property
    def needs_calibration(self) -> bool:
        return self.method != "none" and get_method(self.method).calibrated

    def to_dict(self) -> dict:
        return asdict(self)


def parse_compression(spec: str) -> CompressionSpec:
    """A :class:`CompressionSpec` from ``"rtn:3"``, ``"rtn:3:sym"``, ``"sparsegpt:0.5"``, ``"wanda:2:4"``..."""
    parts = [p.strip() for p in str(spec).strip().lower().split(":")]
    name, args = parts[0], parts[1:]
    names = ("none",) + method_names()  # the registry now (METHODS: as at import)
    if name not in names:
        raise ValueError(f"compression {spec!r}: method must be one of {', '.join(names)}")
    if name == "none":
        if args:
            raise ValueError(f"compression {spec!r}: 'none' takes no argument")
        return CompressionSpec()
    method = get_method(name)
    if method.kind == "quantization":
        grid = args[1] if len(args) == 2 else "asym"
        if not 1 <= len(args) <= 2 or not args[0].isdigit() or grid not in ("sym", "asym"):
            raise ValueError(f"compression {spec!r}: write {name}:BITS or {name}:BITS:sym, e.g. {name}:3")
        return CompressionSpec(name, bits=check_bits(int(args[0])), symmetric=grid == "sym")
    if len(args) == 2:
        pat = f"{args[0]}:{args[1]}"
        n, m = parse_pattern(pat)
        if not method.nm:
            raise ValueError(f"compression {spec!r}: {method.label} is unstructured only")
        return CompressionSpec(name, sparsity=n / m, pattern=pat)
    if len(args) != 1:
        raise ValueError(f"compression {spec!r}: write {name}:SPARSITY (0.5 or 50%) or {name}:N:M")
    try:
        s = float(args[0][:-1]) / 100 if args[0].endswith("%") else float(args[0])
    except ValueError as e:
        raise ValueError(f"compression {spec!r}: sparsity {args[0]!r} is not a number") from e
    if not 0.0 <= s < 1.0:
        raise ValueError(f"compression {spec!r}: sparsity must be in [0, 1) (or 0%..99%)")
    return CompressionSpec(name, sparsity=s)


@checked_arguments
def apply_compression(
    model: torch.nn.Module,
    spec: CompressionSpec | str,
    *,
    group_size: int | None = 128,
    calib: Any = None,
    progress: bool = True,
) -> tuple[torch.nn.Module, dict]:
    """``(compressed deep copy, report dict)``; ``spec.method == "none"`` returns ``model`` itself.

    ``spec``: a :class:`CompressionSpec`, or its string as the CLI's ``--compress`` takes it
    (``"rtn:3"``, ``"wanda:50%"``), read by :func:`parse_compression`; anything else is refused
    with ``TypeError`` naming what was given (H14-ACS).

    A calibrated method's report records the calibration's shape, ``"calibration": {"rows",
    "length"}`` (tokens per row; a callable ``calib``: not recorded). Rows longer than the model's
    context are refused before the copy is made
    (:func:`~lrm_interp.compress.calibration.check_calibration_context`)."""
    if isinstance(spec, str):
        spec = parse_compression(spec)
    elif not isinstance(spec, CompressionSpec):
        raise TypeError(
            f"spec must be a CompressionSpec or its string (e.g. 'rtn:3', read by parse_compression), "
            f"got {shown_value(spec)}"
        )
    if spec.method == "none":
        return model, {"method": "none"}
    if spec.needs_calibration and calib is None:
        raise ValueError(f"{spec.method} needs calibration data")
    method = get_method(spec.method)
    calib = calib if method.calibrated else None
    extra: dict[str, Any] = {}
    if calib is not None:
        check_calibration_context(model, calib)
        shape = calibration_shape(calib)
        if shape is not None:
            extra["calibration"] = {"rows": shape[0], "length": shape[1]}
    m = copy.deepcopy(model)
    if method.kind == "quantization":
        rep = quantize_model_(
            m,
            bits=cast(int, spec.bits),  # a quantization spec has bits
            group_size=group_size,
            method=spec.method,
            calib=calib,
            symmetric=spec.symmetric,
            progress=progress,
        )
        return m, {**spec.to_dict(), "group_size": group_size, "n_weights": rep.n_weights, **extra}
    prep = prune_model_(m, spec.method, spec.sparsity, pattern=spec.pattern, calib=calib, progress=progress)
    return m, {**spec.to_dict(), "achieved": prep.achieved, **extra}


__all__ = ["CompressionSpec", "parse_compression", "apply_compression", "METHODS"]
