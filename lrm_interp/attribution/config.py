"""One frozen, validated :class:`AttributionConfig`: every option of ``attribute()``.

It is validated in full when it is built, before any model is loaded or any file is written,
so a typo fails in milliseconds. ``settings.json`` of a result folder, the ``settings`` of a
result's provenance, the resume key and the flags and choices of ``lrm-interp attribute`` are
all derived from its fields (:func:`dataclasses.fields` with ``metadata["help"]`` and
``metadata["choices"]``): nothing is copied by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lrm_interp._io import DTYPE_CHOICES, dtype_to_str, str_to_dtype
from lrm_interp.checks import check_float, check_int, checked_arguments, shown_value
from lrm_interp.model.sites import refuse_empty_pattern, repeated_site_names

METHODS = ("attribution", "dom", "patching")
#: methods whose score needs a span's predictable tokens (its loss L(s)): unscorable spans are left out
SPAN_LOSS_METHODS = ("attribution", "patching")
MODES = ("exact", "joint")
SCORES = ("paper", "code")
NEGATIVES = ("all", "response", "thinking")
WEIGHTINGS = ("trace", "token")
SPECIAL_TOKENS = ("exclude", "include")
OVERLONG = ("error", "truncate", "skip", "extrapolate")


_F32 = torch.finfo(torch.float32)


def check_patch_alpha(name: str, value: object) -> float:
    """A patch scale α as a float: finite and within float32's normal range ``[1.2e-38, 3.4e38]``.

    The patch α·û reaches the forward through a float32 mask holding α
    (:func:`lrm_interp.attribution.atp.patching_effects`): an α above float32's largest value
    overflows it, one below its smallest normal is flushed towards 0 (H11-FAL / H11-ALPHA). An α
    in range whose patch is still below the model's resolution is refused after measuring
    (:func:`lrm_interp.attribution.atp.check_resolved`). ``ValueError`` (``"<name> must …"``) otherwise.
    """
    a = check_float(name, value, min=0.0, min_open=True)
    if a > _F32.max:
        raise ValueError(
            f"{name} must be at most {_F32.max:.3g} (float32's largest value: the patch is applied through a "
            f"float32 mask), got {a:g}; give a smaller value"
        )
    if a < _F32.tiny:
        raise ValueError(
            f"{name} must be at least {_F32.tiny:.3g} (float32's smallest normal value: a smaller patch vanishes "
            f"in the float32 mask), got {a:g}; give a larger value"
        )
    return a


def _opt(default: Any, help: str, choices: Sequence[str] | None = None, **extra: Any):
    md = {"help": help, **extra}
    if choices is not None:
        md["choices"] = tuple(choices)
    return field(default=default, metadata=md)


@checked_arguments
@dataclass(frozen=True)
class AttributionConfig:
    """All settings of an attribution run (see docs/method.md for each formula).

    Build it with keywords (``AttributionConfig(mode="joint")``), from a dict
    (:meth:`from_dict`), or let :func:`lrm_interp.attribute` build it from its keywords.
    Invalid values raise ``ValueError`` naming the field and the accepted values.
    """

    behaviors: tuple[str, ...] | None = _opt(
        None, "behaviour labels to score (default: the paper's four target behaviours present in the data)", nargs="+"
    )
    sites: str | tuple[str, ...] | None = _opt(
        None,
        "linear sites: a regex over module names, or a list of names (default: every linear module "
        "in the decoder layers)",
    )
    method: str = _opt(
        "attribution",
        "attribution = attribution patching (paper Eq. 2, first-order; fast); patching = exact "
        "activation patching on the same score scale: the measured span-loss change of adding "
        "patch_alpha * u at each site (one forward of the span window per site and span; "
        "exact where AtP is a first-order estimate, about 18x slower: docs/method.md); dom = size of the mean shift "
        "||u|| / ||mean activation|| only",
        METHODS,
    )
    mode: str = _opt(
        "exact",
        "AtP gradients: exact = one backward per span; joint = one backward per trace "
        "and behaviour (approximate, faster)",
        MODES,
    )
    score: str = _opt(
        "paper",
        "paper = |sum over spans of u.grad| / |D+| (Eq. 2); code = the released code's "
        "sum of |u.grad| / number of spans",
        SCORES,
    )
    patch_alpha: float = _opt(
        1.0,
        "method=patching: scale alpha > 0 of the patch a + alpha * u (1 = the full-size steering "
        "vector the scores describe; small alpha approaches the AtP score)",
    )
    k_context: int = _opt(5, "tokens before each span added to its DoM window (paper's code: 5; Venhoff: 1)")
    negatives: str = _opt(
        "all",
        "tokens forming D-: all (every content token), response, or thinking (response up to </think>)",
        NEGATIVES,
    )
    weighting: str = _opt("trace", "trace = mean of per-trace means (paper); token = pooled token means", WEIGHTINGS)
    special_tokens: str = _opt(
        "exclude",
        "special tokens (BOS, <think> if special, ...) in D- and the overall "
        "mean: exclude (default) or include (the released code's convention)",
        SPECIAL_TOKENS,
    )
    off_by_one: bool = _opt(
        False,
        "reproduce the released code's gradient window [start, end) instead of the "
        "positions predicting the span [start-1, end-1)",
    )
    max_tokens: int | None = _opt(None, "truncate traces to this many tokens; spans cut off are counted and reported")
    overlong: str = _opt(
        "error",
        "traces longer than the model's context (its config's max_position_embeddings, "
        "or n_positions for GPT-2): error = refuse the run, naming them (default); "
        "truncate = cut them at the context (spans cut off are counted); skip = leave "
        "them out (counted); extrapolate = run them at full length past the context "
        "(rotary position encodings only, refused for learned position tables; positions "
        "past the context are outside what the model was trained on: warned, and counted "
        "per trace with the spans past it). Counts in provenance['overlong']",
        OVERLONG,
    )
    prefix_cache: bool = _opt(
        True,
        "exact mode: one no-grad forward per trace caches the keys/values and each span "
        "runs forward+backward over its own window only (exact); off = the full "
        "prefix per span. Models that cannot (sliding-window, hybrid caches) use the "
        "full prefix, and provenance says why",
    )
    gradient_checkpointing: bool = _opt(
        False, "recompute activations in the AtP backward (less memory, about 1.3x the time)"
    )
    compute_dtype: str | None = _opt(
        None, "autocast dtype for forward/backward (losses and sums stay fp32)", DTYPE_CHOICES
    )

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        for f in dataclasses.fields(self):
            ch = f.metadata.get("choices")
            v = getattr(self, f.name)
            if ch and v is not None and f.name != "compute_dtype" and v not in ch:
                raise ValueError(f"{f.name} must be one of {ch}, got {v!r}")
        if self.behaviors is not None:
            b = (self.behaviors,) if isinstance(self.behaviors, str) else tuple(str(x) for x in self.behaviors)
            if not b:
                raise ValueError("behaviors must name at least one behaviour (or be None for the default)")
            if len(set(b)) != len(b):
                raise ValueError(f"behaviors has duplicates: {list(b)}")
            from lrm_interp.data.traces import check_behavior_label

            for x in b:  # a near miss of a known behaviour ("uncertainty_estimation") would match no span
                check_behavior_label(x, where="behaviors")
            set_("behaviors", b)
        if self.sites is not None and not isinstance(self.sites, str):
            # sites=5: "'int' object is not iterable" (H28-APITYPES)
            if isinstance(self.sites, (Mapping, bytes)) or not isinstance(self.sites, Iterable):
                raise ValueError(
                    "sites must be a regex string, a non-empty list of site names, or None, "
                    f"got {shown_value(self.sites)}"
                )
            names = tuple(getattr(s, "name", s) for s in self.sites)
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError("sites must be a regex string, a non-empty list of site names, or None")
            dup = repeated_site_names(names)
            if dup:  # each scored twice: wrong relative importances, and a result its loader refuses (H30-DUPSITES)
                raise ValueError(f"sites names a site more than once: {dup}; give each site once")
            set_("sites", names)
        elif isinstance(self.sites, str):
            import re

            refuse_empty_pattern(self.sites)  # an empty regex matches every module (H7-API6)
            try:
                re.compile(self.sites)
            except re.error as e:
                raise ValueError(f"sites regex {self.sites!r} is invalid: {e}") from None
        for name in ("off_by_one", "gradient_checkpointing", "prefix_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        # the shared rule (any Integral but a bool: a NumPy integer from a sweep too), stored as a
        # plain int (it was refused by an ``isinstance(v, int)`` check whose message named it an
        # integer, H11-NPI)
        set_("k_context", check_int("k_context", self.k_context, min=0))
        set_("max_tokens", check_int("max_tokens", self.max_tokens, min=2, optional=True))
        try:
            set_("compute_dtype", dtype_to_str(str_to_dtype(self.compute_dtype)))
        except ValueError as e:
            raise ValueError(f"compute_dtype: {e}") from None
        if self.compute_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"compute_dtype must be one of {DTYPE_CHOICES} or None, got {self.compute_dtype!r}")
        set_("patch_alpha", check_patch_alpha("patch_alpha", self.patch_alpha))
        if self.method == "dom":
            # prefix_cache too: DoM runs one forward per trace, with no span window to cache; recorded in
            # the run key, a value that changed nothing refused the resume without it (H8-AF5)
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            unused = [
                n
                for n in ("mode", "score", "off_by_one", "gradient_checkpointing", "prefix_cache")
                if getattr(self, n) != defaults[n]
            ]
            if unused:
                one = len(unused) == 1
                raise ValueError(
                    f"{' and '.join(unused)} {'does' if one else 'do'} not apply to method='dom' (a mean shift, no "
                    f"span loss); leave {'it' if one else 'them'} at {'its default' if one else 'their defaults'} "
                    f"({', '.join(f'{n}={defaults[n]!r}' for n in unused)}) with method='dom'"
                )
        if self.method == "patching" and (self.mode != "exact" or self.gradient_checkpointing):
            raise ValueError(
                "mode and gradient_checkpointing choose how AtP computes gradients: method='patching' "
                "takes no gradient (exact forwards only); leave them at their defaults (mode='exact')"
            )
        if self.method != "patching" and self.patch_alpha != 1.0:
            raise ValueError(
                f"patch_alpha applies to method='patching' only (got method={self.method!r}); leave it at 1.0"
            )

    # ------------------------------------------------------------------ views
    @property
    def torch_compute_dtype(self) -> torch.dtype | None:
        return str_to_dtype(self.compute_dtype)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field (lists for tuples)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttributionConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError`` naming them."""
        unknown = set(d) - set(cls.field_names())
        if unknown:
            raise TypeError(f"unknown attribution option(s) {sorted(unknown)}; known: {cls.field_names()}")
        return cls(**d)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self, **changes: Any) -> AttributionConfig:
        """A copy with ``changes`` applied (validated again)."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise TypeError(f"unknown attribution option(s) {sorted(unknown)}; known: {self.field_names()}")
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """BLAKE2b-128 of :meth:`to_dict` (part of the resume key)."""
        return hashlib.blake2b(json.dumps(self.to_dict(), sort_keys=True).encode(), digest_size=16).hexdigest()


__all__ = [
    "AttributionConfig",
    "METHODS",
    "SPAN_LOSS_METHODS",
    "MODES",
    "SCORES",
    "NEGATIVES",
    "WEIGHTINGS",
    "SPECIAL_TOKENS",
    "OVERLONG",
]
