"""The matched-bits protection experiment's plan: what one run measures (:class:`ExperimentSettings`)
and every row with how it quantizes a copy of the model (:class:`ProtectionPlanner`).

For one model, one quantizer (RTN or GPTQ) and one bit width ``b`` on one grid:

================  =====================================================================
``fp``            the model itself
``none``          plain ``b``-bit
``per-weight``    ``budget`` (2 %) of the linear weights kept in FP16, chosen by each
                  saliency of :data:`lrm_interp.protect.registry.SALIENCIES` (random: one row
                  per seed; ``attribution_gptq`` only under GPTQ)
``module``        the paper's final-layer MLP in FP16
``mixed``         bits per module (2/3/4/8/16) allocated by attribution RI, Hessian trace or
                  nothing, under the bits per weight of the ``magnitude`` row
                  (:func:`lrm_interp.protect.bit_allocation.allocate_bits`)
``guided``        GPTQ only: behaviour-guided Hessians (:mod:`lrm_interp.compress.quant.guided`),
                  without and with the scale-aware attribution 2 %
``plain``         plain ``b+1``-bit
================  =====================================================================

The planner says *what* each row does; measuring is the caller's: ``lrm-interp experiment
protection`` (:func:`lrm_interp.experiments.protection_table.run_protection_experiment`: accuracy,
resumable folder, table), ``examples/protection_experiment.py`` (toy model, accuracy) and
``examples/protection_smollm2.py`` (SmolLM2, KL / span NLL). docs/protection.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import torch
from tqdm.auto import tqdm

from lrm_interp.attribution.pipeline import attribute
from lrm_interp.attribution.results import Attribution
from lrm_interp.checks import check_bool, check_fraction, check_int, checked_arguments, refuse_string, shown_value
from lrm_interp.compress.calibration import CalibData, calibration_ids, layer_hessians
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.compress.quant.guided import gradient_weighted_hessians, guided_transform
from lrm_interp.data.tokens import EncodedTrace, encode_trace
from lrm_interp.data.toy_tasks import check_held_out_seed
from lrm_interp.data.traces import ReasoningTrace
from lrm_interp.model.sites import Site, find_sites
from lrm_interp.protect.bit_allocation import (
    BitAllocation,
    allocate_bits,
    hessian_sensitivity,
    quantization_errors,
    quantize_allocation_,
)
from lrm_interp.protect.encoding import bits_per_weight
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.protect.policies import final_mlp, global_top
from lrm_interp.protect.registry import SALIENCIES, build_saliency
from lrm_interp.protect.saliency import SaliencyStream, scorable_spans, span_loss
from lrm_interp.toy.tasks import generate_dataset, model_world

FINAL_MLP_ROW = "final-layer MLP (paper)"
#: the bit widths a module may get in the ``mixed`` rows (16 = FP16)
MIXED_CHOICES = (2, 3, 4, 8, 16)
#: what weighs each module's error in the ``mixed`` rows, in row order
MIXED_SENSITIVITIES = ("attribution", "hessian", "none")


@checked_arguments
@dataclass(frozen=True)
class ExperimentSettings:
    """What one run measures (all of it is checked against an existing ``settings.json``).

    ``symmetric``: the grid of every row — ``False`` (the default, as everywhere in the package
    and the command line): min-max with a zero-point per group; ``True``: symmetric, no
    zero-point (GPTQModel's ``sym=True``).
    ``max_new_tokens``: the greedy answer's length limit (a broken row that loops costs this many
    decoding steps per batch; about twice the full-precision model's longest answer is enough).
    """

    model: str = "toy"
    bits: int = 3
    quantizer: str = "rtn"
    per_family: int = 50
    group_size: int | None = 128
    symmetric: bool = False
    budget: float = 0.02
    attribution_traces: int = 8
    random_seeds: tuple[int, ...] = (0, 1, 2)
    guided_mix: float = 0.5
    problem_seed: int = 2
    max_new_tokens: int = 480

    def __post_init__(self) -> None:
        # every field is checked for its type as well as its range (H9-CS: symmetric="no", a truthy
        # string, meant a symmetric grid; model=5 was accepted): settings.json records what is here
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"model must be a model folder or alias (a non-empty string), got {shown_value(self.model)}"
            )
        if not isinstance(self.quantizer, str) or self.quantizer not in ("rtn", "gptq"):
            raise ValueError(f"quantizer must be 'rtn' or 'gptq', got {self.quantizer!r}")
        # integers by the shared rule (a NumPy integer too: bits=np.int64(3) was refused as "must be in
        # 2..7", H11-NPI), stored as plain ints so settings.json can record them
        try:
            object.__setattr__(self, "bits", check_int("bits", self.bits, min=2, max=7))
        except ValueError:
            raise ValueError(f"bits must be in 2..7 (b+1 is a row), got {shown_value(self.bits)}") from None
        for name, lo in (("per_family", 1), ("attribution_traces", 1), ("problem_seed", 0), ("max_new_tokens", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), min=lo))
        check_held_out_seed(self.problem_seed, "problem_seed")  # not a training seed of the toy models (H16-SEED)
        # None: per channel; 128.0 is refused
        object.__setattr__(self, "group_size", check_int("group_size", self.group_size, min=1, optional=True))
        check_bool("symmetric", self.symmetric)
        if isinstance(self.budget, bool) or not (
            isinstance(self.budget, (int, float)) and math.isfinite(self.budget) and 0.0 < self.budget < 1.0
        ):
            raise ValueError(f"budget must be a fraction in (0, 1), got {shown_value(self.budget)}")
        if isinstance(self.random_seeds, (str, bytes)) or not isinstance(self.random_seeds, Sequence):
            raise ValueError(f"random_seeds must be a tuple of seeds, got {shown_value(self.random_seeds)}")
        object.__setattr__(self, "random_seeds", tuple(self.random_seeds))
        if not self.random_seeds:
            raise ValueError("random_seeds must name at least one seed")
        object.__setattr__(self, "random_seeds", tuple(check_int("random_seeds", x, min=0) for x in self.random_seeds))
        dup = next((x for i, x in enumerate(self.random_seeds) if x in self.random_seeds[:i]), None)
        if dup is not None:  # the same control row twice in the table (H7-E4)
            raise ValueError(f"random_seeds: seed {dup} given twice (each seed is one control row); give it once")
        check_fraction("guided_mix", self.guided_mix)


@dataclass(frozen=True)
class RowPlan:
    """A row to measure: ``quantize(model_copy)`` quantizes in place and returns ``(bpw, modules)``
    (``modules``: ``"bits:count ..."`` over the sites). ``uses``: the fields of
    :data:`ROW_SETTINGS` the row reads (every row reads the others, e.g. ``bits``)."""

    label: str
    kind: str
    quantize: Callable[[torch.nn.Module], tuple[float, str]]
    uses: frozenset[str] = frozenset()


#: the planner attribute that feeds each input a registered saliency ``needs`` (SaliencyInputs field)
_INPUTS = {"encoded": "encoded", "behaviors": "behaviors", "calib": "calib", "module_importance": "attribution"}
#: the :class:`ExperimentSettings` fields only some rows read (:attr:`RowPlan.uses`); the other
#: fields (model, bits, quantizer, grid, problems, length limit) shape every row
ROW_SETTINGS = ("budget", "attribution_traces", "random_seeds", "guided_mix")
#: the saliency inputs made from the attribution traces (``settings.attribution_traces``)
_FROM_TRACES = frozenset({"encoded", "behaviors", "module_importance"})


def _saliency_uses(name: str) -> frozenset[str]:
    """The :data:`ROW_SETTINGS` a 2 % row of saliency ``name`` reads: the budget, the attribution
    traces if its inputs come from them, the seeds for ``random``."""
    uses = {"budget"}
    if _FROM_TRACES & set(SALIENCIES[name].needs):
        uses.add("attribution_traces")
    if name == "random":
        uses.add("random_seeds")
    return frozenset(uses)


class ProtectionPlanner:
    """Every row of one protection experiment (module docs) on ``model`` / ``tokenizer`` under
    ``settings`` (default: :class:`ExperimentSettings`'s defaults), lazily.

    Nothing is computed until a row's ``quantize`` (or an input) is asked for, and then once:
    the inputs are cached properties (:attr:`sites`, :attr:`calib`, :attr:`attribution_dataset`,
    :attr:`attribution`, :attr:`encoded`, :attr:`behaviors`, :attr:`guided_hessians`) and
    :meth:`masks` keeps each saliency's mask. A resumed run computes only what its remaining
    rows need. To supply an input of your own, assign it before the rows run (e.g.
    ``planner.calib = ids``, ``planner.attribution = attribute(model, ds, mode="joint")``).

    >>> planner = ProtectionPlanner(model, tok, ExperimentSettings(bits=3, quantizer="rtn"))
    >>> for row in planner.select(["magnitude", "plain"]):
    ...     q = copy.deepcopy(model); bpw, modules = row.quantize(q)   # then measure q
    """

    #: the inputs :meth:`with_quantizer` shares (none of them depends on the quantizer)
    SHARED = ("sites", "calib", "attribution_dataset", "attribution", "encoded", "behaviors", "guided_hessians")

    @checked_arguments
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: ExperimentSettings | None = None,
        *,
        progress: bool = True,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings if settings is not None else ExperimentSettings()
        self.progress = progress
        self._masks: dict[tuple[str, int], dict[str, ProtectionMask]] = {}

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"ProtectionPlanner({s.model}, {s.quantizer.upper()} {s.bits}-bit, "
            f"{'symmetric' if s.symmetric else 'asymmetric'}, {len(self.rows)} rows)"
        )

    # ------------------------------------------------------------------ inputs
    @property
    def grid(self) -> dict[str, Any]:
        """``group_size`` / ``symmetric`` of every row, as keywords."""
        return {"group_size": self.settings.group_size, "symmetric": self.settings.symmetric}

    @property
    def gptq(self) -> bool:
        return self.settings.quantizer == "gptq"

    @cached_property
    def sites(self) -> list[Site]:
        """Every linear site of the model (:func:`~lrm_interp.model.sites.find_sites`)."""
        return find_sites(self.model)

    @cached_property
    def calib(self) -> CalibData:
        """Calibration ids of GPTQ, the activation / Hessian saliencies and the Hessian ``mixed``
        row: 16 generated toy traces per family (seed 77), joined and cut into rows of 256."""
        return calibration_ids(self.tokenizer, n_per_family=16, seed=77, separator="\n")

    @cached_property
    def attribution_dataset(self) -> Sequence[ReasoningTrace]:
        """``settings.attribution_traces`` gold-annotated toy traces per family (seed 99, the
        model's own fact table): the behaviour gradients and module importance come from them."""
        return generate_dataset(self.settings.attribution_traces, seed=99, world=model_world(self.model))

    @cached_property
    def attribution(self) -> Attribution:
        """:func:`~lrm_interp.attribution.pipeline.attribute` on :attr:`attribution_dataset`
        (module importance of ``attribution_ri`` and the ``mixed`` attribution row)."""
        return attribute(self.model, self.attribution_dataset, tokenizer=self.tokenizer, progress=False)

    @cached_property
    def encoded(self) -> list[EncodedTrace]:
        """:attr:`attribution_dataset` encoded with the tokenizer."""
        return [encode_trace(self.tokenizer, t) for t in self.attribution_dataset]

    @cached_property
    def behaviors(self) -> list[str]:
        """The behaviours whose spans give the gradients: those of :attr:`attribution`."""
        return list(self.attribution.behaviors)

    @cached_property
    def guided_hessians(self) -> dict[str, torch.Tensor]:
        """Behaviour-gradient Hessians of every site
        (:func:`~lrm_interp.compress.quant.guided.gradient_weighted_hessians` over the behaviour spans
        of :attr:`encoded`)."""
        return gradient_weighted_hessians(
            self.model, self.sites, span_loss, scorable_spans(self.encoded, self.behaviors), progress=self.progress
        )

    # ------------------------------------------------------------------ building blocks
    def saliency(self, name: str, seed: int = 0) -> SaliencyStream:
        """Registered saliency ``name`` on the settings' grid, fed only the inputs it needs."""
        s = self.settings
        inputs = {k: getattr(self, attr) for k, attr in _INPUTS.items() if k in SALIENCIES[name].needs}
        return build_saliency(
            name, self.model, self.sites, bits=s.bits, seed=seed, progress=self.progress, **self.grid, **inputs
        )

    def masks(self, name: str, seed: int = 0) -> dict[str, ProtectionMask]:
        """:func:`~lrm_interp.protect.policies.global_top` of :meth:`saliency` at the budget, once per planner."""
        if (name, seed) not in self._masks:
            self._masks[(name, seed)] = global_top(self.saliency(name, seed), self.settings.budget)
        return self._masks[(name, seed)]

    def quantize(
        self,
        q: torch.nn.Module,
        masks: Mapping[str, ProtectionMask] | None = None,
        *,
        bits: int | None = None,
        hessian_transform: Callable | None = None,
    ) -> float:
        """Quantize ``q`` in place with the settings' quantizer and grid at ``bits`` (default: the
        settings'), keeping ``masks``; its exact bits per weight."""
        s, masks = self.settings, masks or {}
        bits = s.bits if bits is None else bits
        extra: dict[str, Any] = {"hessian_transform": hessian_transform} if hessian_transform else {}
        quantize_model_(
            q,
            bits=bits,
            method=s.quantizer,
            masks=masks,
            calib=self.calib if self.gptq else None,
            progress=False,
            **self.grid,
            **extra,
        )
        return bits_per_weight(masks, self.sites, bits=bits, **self.grid)["bpw"]

    def allocation(self, sensitivity: str) -> BitAllocation:
        """The ``mixed`` row's bits per module (:data:`MIXED_CHOICES`) weighted by ``sensitivity``
        (:data:`MIXED_SENSITIVITIES`), under the bits per weight of the ``magnitude`` masks."""
        budget = bits_per_weight(self.masks("magnitude"), self.sites, bits=self.settings.bits, **self.grid)["bpw"]
        if sensitivity == "attribution":
            weights = self.attribution.site_ri()
            err = quantization_errors(self.model, self.sites, MIXED_CHOICES, relative=True, **self.grid)
        elif sensitivity == "hessian":
            H: dict[str, torch.Tensor] = {}
            for _, hs in layer_hessians(self.model, self.sites, self.calib, sequential=False, progress=False):
                H.update(hs)
            weights, err = (
                hessian_sensitivity(H),
                quantization_errors(self.model, self.sites, MIXED_CHOICES, **self.grid),
            )
        elif sensitivity == "none":
            weights, err = None, quantization_errors(self.model, self.sites, MIXED_CHOICES, **self.grid)
        else:
            raise ValueError(f"sensitivity must be one of {MIXED_SENSITIVITIES}, got {sensitivity!r}")
        return allocate_bits(self.sites, err, weights, budget, choices=MIXED_CHOICES, name=sensitivity, **self.grid)

    # ------------------------------------------------------------------ the rows' quantizers
    def _full_precision(self, q: torch.nn.Module) -> tuple[float, str]:
        return (32.0 if next(self.model.parameters()).dtype == torch.float32 else 16.0), "–"

    def _uniform(self, q: torch.nn.Module, bits: int | None = None) -> tuple[float, str]:
        bits = self.settings.bits if bits is None else bits
        return self.quantize(q, bits=bits), f"{bits}:{len(self.sites)}"

    def _per_weight(self, name: str, seed: int, q: torch.nn.Module) -> tuple[float, str]:
        return self.quantize(q, self.masks(name, seed)), f"{self.settings.bits}:{len(self.sites)}"

    def _final_mlp(self, q: torch.nn.Module) -> tuple[float, str]:
        kept = final_mlp(self.sites)
        return self.quantize(q, kept), f"{self.settings.bits}:{len(self.sites) - len(kept)} 16:{len(kept)}"

    def _mixed(self, sensitivity: str, q: torch.nn.Module) -> tuple[float, str]:
        alloc = self.allocation(sensitivity)
        quantize_allocation_(
            q, alloc, method=self.settings.quantizer, calib=self.calib if self.gptq else None, progress=False
        )
        return alloc.bpw, " ".join(f"{b}:{n}" for b, n in alloc.counts().items())

    def _guided(self, with_masks: bool, q: torch.nn.Module) -> tuple[float, str]:
        transform = guided_transform(self.guided_hessians, self.settings.guided_mix)
        masks = self.masks("attribution_scale") if with_masks else None
        return self.quantize(q, masks, hessian_transform=transform), f"{self.settings.bits}:{len(self.sites)}"

    # ------------------------------------------------------------------ the rows
    @cached_property
    def rows(self) -> list[RowPlan]:
        """Every row of the experiment, in table order (module docs); labels are unique."""
        s = self.settings
        pct = f"{s.budget:.0%}"
        rows = [RowPlan("fp", "fp", self._full_precision), RowPlan("none", "none", self._uniform)]
        for name, src in SALIENCIES.items():
            if name == "attribution_gptq" and not self.gptq:
                continue
            uses = _saliency_uses(name)
            if name == "random":
                rows += [
                    RowPlan(f"{pct} random (seed {seed})", "per-weight", partial(self._per_weight, name, seed), uses)
                    for seed in s.random_seeds
                ]
            else:
                rows.append(RowPlan(f"{pct} {src.label}", "per-weight", partial(self._per_weight, name, 0), uses))
        rows.append(RowPlan(FINAL_MLP_ROW, "module", self._final_mlp))
        rows += [  # under the bits per weight of the magnitude masks (the budget)
            RowPlan(
                f"mixed precision by {sens}",
                "mixed",
                partial(self._mixed, sens),
                frozenset({"budget", "attribution_traces"} if sens == "attribution" else {"budget"}),
            )
            for sens in MIXED_SENSITIVITIES
        ]
        if self.gptq:  # the behaviour-gradient Hessians come from the attribution traces
            guided = frozenset({"guided_mix", "attribution_traces"})
            rows += [
                RowPlan(f"behaviour-guided GPTQ (mix {s.guided_mix})", "guided", partial(self._guided, False), guided),
                RowPlan(
                    f"behaviour-guided GPTQ + {pct} scale-aware attribution",
                    "guided",
                    partial(self._guided, True),
                    guided | _saliency_uses("attribution_scale"),
                ),
            ]
        rows.append(RowPlan(f"plain {s.bits + 1}-bit", "plain", partial(self._uniform, bits=s.bits + 1)))
        return rows

    def select(self, only: Sequence[str] | None = None, *, name: str = "only") -> list[RowPlan]:
        """The rows whose label contains one of ``only`` (plus ``fp`` and ``none``, which
        ``recovered`` needs); every row without ``only``. A text of ``only`` that is in no row's
        label raises ``ValueError`` ("only: ...") listing the labels: it would otherwise measure
        fp and none alone, silently (e.g. ``"guided"`` under RTN, which has no guided rows). A
        string instead of a list is refused (:func:`check_row_texts`; ``name`` names the argument
        in the messages), and so is an empty ``only`` (a filter that matched nothing; ``None``
        selects every row). The rows depend on the settings alone, so this can run before any model
        is loaded (:func:`check_only`)."""
        only = check_row_texts(name, only)
        if only == [] and name == "only":  # a filter that matched nothing, not "every row" (H15-PEE)
            raise ValueError(
                "only is empty: it selects no row; give row-label texts, or only=None to measure every row"
            )
        if not only:
            return list(self.rows)
        labels = [r.label for r in self.rows]
        unmatched = [o for o in only if not any(o in lab for lab in labels)]
        if unmatched:
            s = self.settings
            raise ValueError(
                f"{name}: {', '.join(repr(o) for o in unmatched)} "
                f"match{'es' * (len(unmatched) == 1)} no row of this experiment ({s.quantizer} "
                f"{s.bits}-bit); its rows: {'; '.join(labels)}"
            )
        return [r for r in self.rows if r.kind in ("fp", "none") or any(o in r.label for o in only)]

    def with_quantizer(self, quantizer: str) -> ProtectionPlanner:
        """The same experiment under ``quantizer``, sharing the inputs (:data:`SHARED`) and masks
        computed so far, and any computed later by either planner's masks."""
        other = ProtectionPlanner(
            self.model, self.tokenizer, dataclasses.replace(self.settings, quantizer=quantizer), progress=self.progress
        )
        other.__dict__.update({k: v for k, v in vars(self).items() if k in self.SHARED})
        other._masks = self._masks
        return other


def check_row_texts(name: str, texts: object) -> list[str] | None:
    """``texts`` (``only`` / ``redo``: texts matched against row labels) as a list, ``None`` as is.
    A string is refused with ``TypeError`` naming ``name`` and the fix (``only=['fp']``): iterated,
    ``'fp'`` would be its characters ``'f'``, ``'p'``, each a substring of most labels, so nearly
    every row would be measured without a word (H14-ONS). So is anything but a list / tuple of
    strings."""
    if texts is None:
        return None
    refuse_string(name, texts, "a list of row-label texts")
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name} must be a list of row-label texts (strings), got {shown_value(texts)}")
    return list(texts)


def check_only(settings: ExperimentSettings, only: Sequence[str] | None, name: str = "only") -> None:
    """Refuse (``ValueError``, :meth:`ProtectionPlanner.select`) an ``only`` text that matches no
    row of the experiment ``settings`` plan, before any model is loaded (the rows depend on the
    settings alone); a string instead of a list (``TypeError``, :func:`check_row_texts`). ``name``:
    the argument the messages name (``"redo"`` for that list)."""
    ProtectionPlanner(torch.nn.Module(), None, settings, progress=False).select(only, name=name)


def unused_settings(settings: ExperimentSettings, only: Sequence[str] | None = None) -> list[str]:
    """The fields of :data:`ROW_SETTINGS` that no row selected by ``only``
    (:meth:`ProtectionPlanner.select`; every row without it) reads, in that order: e.g.
    ``guided_mix`` under RTN (no guided rows) or with ``only=["magnitude"]``, ``random_seeds``
    without a random row. A value given for one of them changes no number the run measures, yet
    it is part of the folder's ``settings.json``. Depends on the settings alone (no model)."""
    rows = ProtectionPlanner(torch.nn.Module(), None, settings, progress=False).select(only)
    used = frozenset().union(*(r.uses for r in rows))
    return [f for f in ROW_SETTINGS if f not in used]


# --------------------------------------------------------------------------- for your own inputs
@checked_arguments
def comparison_sources(
    model: torch.nn.Module,
    sites: Sequence[Site],
    encoded: Sequence[EncodedTrace],
    behaviors: Sequence[str],
    calib: CalibData,
    *,
    bits: int,
    group_size: int | None = 128,
    symmetric: bool = False,
    module_importance: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Callable[[], SaliencyStream]]:
    """Every registered saliency (:data:`~lrm_interp.protect.registry.SALIENCIES`, in its order) as a
    lazy ``{row label: () -> stream of (site, [out, in])}``, on inputs you bring (any subset of
    sites, your own traces and calibration); :class:`ProtectionPlanner` builds the experiment's.

    ``attribution_ri`` is included only with a ``module_importance`` (``{site: score}`` or an
    Attribution). Attribution and Hessian measure ``W − Q(W)`` on the ``bits``/``group_size``/
    ``symmetric`` grid; activation and Hessian read ``calib`` (ids ``[b, s]`` or a tokenizer
    output dict); random uses ``seed``.
    """
    kw = dict(
        encoded=encoded,
        behaviors=list(behaviors),
        calib=calib,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        seed=seed,
        module_importance=module_importance,
        progress=progress,
    )
    return {
        src.label: partial(build_saliency, name, model, sites, **kw)
        for name, src in SALIENCIES.items()
        if module_importance is not None or "module_importance" not in src.needs
    }


@checked_arguments
def comparison_masks(
    sources: Mapping[str, Callable[[], SaliencyStream]],
    sites: Sequence[Site],
    budget: float = 0.02,
    *,
    progress: bool = False,
) -> dict[str, dict[str, ProtectionMask]]:
    """Mask rows for :func:`comparison_sources`: ``{"none": {}}``, then ``"<budget> <label>"`` =
    :func:`~lrm_interp.protect.policies.global_top` of each source (``round(budget · N)`` weights
    over the source's sites), then :data:`FINAL_MLP_ROW` (:func:`~lrm_interp.protect.policies.final_mlp`
    of ``sites``)."""
    rows: dict[str, dict[str, ProtectionMask]] = {"none": {}}
    for name, fn in tqdm(sources.items(), desc="saliency", disable=not progress):
        rows[f"{budget:.0%} {name}"] = global_top(fn(), budget)
    rows[FINAL_MLP_ROW] = final_mlp(sites)
    return rows
