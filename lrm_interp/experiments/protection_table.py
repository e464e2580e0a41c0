"""The matched-bits protection experiment as one resumable run: ``lrm-interp experiment protection``.

For one model that solves the toy tasks (the shipped toy reasoner, the distilled SmolLM2 reasoner),
one quantizer (RTN or GPTQ) and one bit width ``b`` on one grid, every row quantizes a fresh copy of
the model and measures accuracy on held-out problems (greedy answers, :func:`lrm_interp.toy.evaluate.evaluate`):

================  =====================================================================
``none``          plain ``b``-bit
``per-weight``    ``budget`` (2 %) of the linear weights kept in FP16, chosen by each
                  saliency of :data:`lrm_interp.protect.registry.SALIENCIES` (random: 3 seeds;
                  ``attribution_gptq`` only under GPTQ)
``module``        the paper's final-layer MLP in FP16
``mixed``         bits per module (2/3/4/8/16) allocated by attribution RI, Hessian trace or
                  nothing, under the bits per weight of the ``magnitude`` row
                  (:func:`lrm_interp.protect.mixed.allocate_bits`)
``guided``        GPTQ only: behaviour-guided Hessians (:mod:`lrm_interp.compress.quant.guided`),
                  without and with the scale-aware attribution 2 %
``plain``         plain ``b+1``-bit
================  =====================================================================

Every row states its exact bits per weight, accuracy per family, the Wilson 95 % interval of the
mean over all problems, and ``recovered = (acc − acc_none) / (acc_fp − acc_none)``.
The run writes to ``out``: ``settings.json`` (what was asked and the model's and tokenizer's fingerprints; the traces and
problems are generated from seeds in the settings),
``rows.jsonl`` (rewritten atomically after every row: an interrupted run resumes at the next
row; a folder holding another run's settings is refused), and at the end ``table.md``,
``table.csv`` and ``bpw_accuracy.png``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp._io import atomic_save_figure, atomic_write_text, iter_jsonl
from lrm_interp.checks import check_fraction, check_int
from lrm_interp.compress.quant.grid import check_group_size
from lrm_interp.evaluation.intervals import wilson_interval

FORMAT = "lrm_interp.protection_experiment/1"
KINDS = ("fp", "none", "per-weight", "module", "mixed", "guided", "plain")


@dataclass(frozen=True)
class ExperimentSettings:
    """What one run measures (all of it is checked against an existing ``settings.json``)."""

    model: str = "toy"
    bits: int = 3
    quantizer: str = "rtn"
    per_family: int = 50
    group_size: int | None = 128
    symmetric: bool = True
    budget: float = 0.02
    attribution_traces: int = 8
    random_seeds: tuple[int, ...] = (0, 1, 2)
    guided_mix: float = 0.5
    problem_seed: int = 2

    def __post_init__(self) -> None:
        if self.quantizer not in ("rtn", "gptq"):
            raise ValueError(f"quantizer must be 'rtn' or 'gptq', got {self.quantizer!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 7:
            raise ValueError(f"bits must be in 2..7 (b+1 is a row), got {self.bits}")
        check_int("per_family", self.per_family, min=1)
        check_int("attribution_traces", self.attribution_traces, min=1)
        check_group_size(self.group_size)
        if not (isinstance(self.budget, (int, float)) and 0.0 < self.budget < 1.0):
            raise ValueError(f"budget must be a fraction in (0, 1), got {self.budget}")
        if not self.random_seeds:
            raise ValueError("random_seeds must name at least one seed")
        for seed in self.random_seeds:
            check_int("random_seeds", seed, min=0)
        check_fraction("guided_mix", self.guided_mix)
        check_int("problem_seed", self.problem_seed, min=0)


@dataclass(frozen=True)
class ResultRow:
    """One measured row: ``accuracy`` per family and ``mean`` in [0, 1] over ``n`` problems
    (``correct`` of them right), ``ci`` Wilson 95 %, ``bpw`` exact bits per weight."""

    label: str
    kind: str
    bpw: float
    accuracy: dict[str, float]
    mean: float
    n: int
    correct: int
    ci: tuple[float, float]
    modules: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ProtectionTable:
    """The rows of one run with its settings and the model's provenance."""

    settings: ExperimentSettings
    rows: tuple[ResultRow, ...]
    model: dict[str, Any] = field(default_factory=dict)

    def row(self, label: str) -> ResultRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(f"no row {label!r} (rows: {[r.label for r in self.rows]})")

    def recovered(self, r: ResultRow) -> float | None:
        """``(acc − acc_none) / (acc_fp − acc_none)``; ``None`` for the fp/none rows or no loss."""
        fp, none = self.row("fp").mean, self.row("none").mean
        if r.kind in ("fp", "none") or fp <= none:
            return None
        return (r.mean - none) / (fp - none)

    def __repr__(self) -> str:
        s = self.settings
        measured = [r for r in self.rows if r.kind not in ("fp", "plain")]
        best = max(measured, key=lambda r: r.mean, default=None)
        tail = "" if best is None else f"; best below b+1 bits: {best.label} {100 * best.mean:.1f}% at {best.bpw:.3f} bpw"
        return f"ProtectionTable({s.model}, {s.quantizer.upper()} {s.bits}-bit, {len(self.rows)} rows{tail})"

    def _repr_html_(self) -> str:
        """Jupyter: the table (accuracy %, Wilson 95 % interval, recovered)."""
        from lrm_interp.display import box, html_table

        fams = list(self.rows[0].accuracy) if self.rows else []
        rows = []
        for r in self.rows:
            rec = self.recovered(r)
            rows.append([r.label, r.kind, f"{r.bpw:.3f}"] + [f"{100 * r.accuracy[f]:.0f}" for f in fams]
                        + [f"{100 * r.mean:.1f}", f"{100 * r.ci[0]:.1f}–{100 * r.ci[1]:.1f}",
                           "" if rec is None else f"{100 * rec:.0f}%"])
        return box(repr(self), html_table(["protection", "kind", "bits/weight", *fams, "mean", "95% CI", "recovered"],
                                          rows))

    def to_dataframe(self):
        """One row per measured row: label, kind, bpw, each family, mean, CI, recovered."""
        import pandas as pd

        fams = list(self.rows[0].accuracy) if self.rows else []
        return pd.DataFrame([{"label": r.label, "kind": r.kind, "bpw": r.bpw, **{f: r.accuracy[f] for f in fams},
                              "mean": r.mean, "ci_low": r.ci[0], "ci_high": r.ci[1], "n": r.n,
                              "recovered": self.recovered(r), "modules": r.modules} for r in self.rows])

    def to_markdown(self) -> str:
        """The table in docs/protection.md's layout (percentages)."""
        s = self.settings
        fams = list(self.rows[0].accuracy) if self.rows else []
        head = (f"{s.model}, {s.quantizer.upper()} {s.bits}-bit, group {s.group_size or 'per channel'}, "
                f"{'symmetric' if s.symmetric else 'asymmetric'}; {s.per_family} held-out problems per family; "
                f"budget {s.budget:.0%}; attribution from {s.attribution_traces} gold traces per family.")
        lines = [head, "", "| protection | kind | bits/weight | " + " | ".join(fams) + " | mean | 95% CI | recovered |",
                 "|---|---|---|" + "---|" * (len(fams) + 3)]
        for r in self.rows:
            rec = self.recovered(r)
            label = r.label.replace("|", "\\|")  # a pipe in a label would split the Markdown cell
            lines.append(f"| {label} | {r.kind} | {r.bpw:.3f} | "
                         + " | ".join(f"{100 * r.accuracy[f]:.0f}" for f in fams)
                         + f" | {100 * r.mean:.1f} | {100 * r.ci[0]:.1f}–{100 * r.ci[1]:.1f} | "
                         + ("" if rec is None else f"{100 * rec:.0f}%") + " |")
        return "\n".join(lines) + "\n"

    def plot(self):
        """bpw (x) vs mean accuracy (y) with the Wilson intervals, one marker per kind; a ``Figure``."""
        from lrm_interp.attribution.plots import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        markers = {"none": "s", "per-weight": "o", "module": "^", "mixed": "D", "guided": "P", "plain": "s"}
        for kind, mk in markers.items():
            rs = [r for r in self.rows if r.kind == kind]
            if not rs:
                continue
            ax.errorbar([r.bpw for r in rs], [100 * r.mean for r in rs],
                        yerr=[[max(0.0, 100 * (r.mean - r.ci[0])) for r in rs], [max(0.0, 100 * (r.ci[1] - r.mean)) for r in rs]],
                        fmt=mk, capsize=3, label=kind, alpha=0.85)
            for i, r in enumerate(rs):  # staggered offsets: rows at the same bpw would overprint
                ax.annotate(r.label, (r.bpw, 100 * r.mean), fontsize=6, xytext=(4, (-7, 2, 11)[i % 3]),
                            textcoords="offset points")
        fp = self.row("fp")
        ax.axhline(100 * fp.mean, color="grey", ls="--", lw=1, label="full precision")
        s = self.settings
        ax.set_xlabel("bits per weight")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{s.model}: {s.quantizer.upper()} {s.bits}-bit, matched bits per weight", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        return fig

    def save(self, out: str | Path) -> dict[str, Path]:
        """Write ``table.md``, ``table.csv`` and ``bpw_accuracy.png`` into ``out``; their paths."""
        out = Path(out)
        paths = {"markdown": out / "table.md", "csv": out / "table.csv", "plot": out / "bpw_accuracy.png"}
        atomic_write_text(paths["markdown"], self.to_markdown())
        atomic_write_text(paths["csv"], self.to_dataframe().to_csv(index=False))
        fig = self.plot()
        atomic_save_figure(fig, paths["plot"], dpi=130)
        _plt_close(fig)
        return paths


def _plt_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _settings_json(s: ExperimentSettings, fingerprint: str, tokenizer_fingerprint: str | None) -> dict[str, Any]:
    d = asdict(s)
    d["random_seeds"] = list(s.random_seeds)
    return {"format": FORMAT, "settings": d, "weights_fingerprint": fingerprint,
            "tokenizer_fingerprint": tokenizer_fingerprint}


def _check_folder(out: Path, want: dict[str, Any]) -> list[ResultRow]:
    """The rows already measured in ``out`` (resume), or ``ValueError`` if it holds another run."""
    sp = out / "settings.json"
    if not sp.exists():
        if (out / "rows.jsonl").exists():
            raise ValueError(f"{out}: rows.jsonl without settings.json — not a folder this run can resume")
        return []
    have = json.loads(sp.read_text())
    if have != want:
        diff = sorted(k for k in set(have.get("settings", {})) | set(want["settings"])
                      if have.get("settings", {}).get(k) != want["settings"].get(k))
        if have.get("weights_fingerprint") != want["weights_fingerprint"]:
            diff.append("weights_fingerprint (another model)")
        if have.get("tokenizer_fingerprint") != want["tokenizer_fingerprint"]:
            diff.append("tokenizer_fingerprint (another tokenizer)")
        raise ValueError(f"{out} holds another experiment (differs in {', '.join(diff) or 'format'}); "
                         "use a new --out folder")
    rows = []
    rp = out / "rows.jsonl"
    if rp.exists():
        for _, _, d in iter_jsonl(rp):
            d["ci"] = tuple(d["ci"])
            rows.append(ResultRow(**d))
    return rows


@dataclass(frozen=True)
class RowPlan:
    """A row to measure: ``quantize(model_copy)`` quantizes in place and returns ``(bpw, modules)``."""

    label: str
    kind: str
    quantize: Callable[[torch.nn.Module], tuple[float, str]]


def plan_rows(model: torch.nn.Module, tokenizer: Any, s: ExperimentSettings, *, progress: bool = True) -> list[RowPlan]:
    """Every row of the experiment (module docs), lazily: saliencies and allocations are computed
    when a row's ``quantize`` runs, so a resumed run recomputes only what its remaining rows need."""
    from lrm_interp import attribute
    from lrm_interp.compress.calibration import calibration_ids, layer_hessians
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.compress.quant.guided import gradient_weighted_hessians, guided_transform
    from lrm_interp.data.tokens import encode_trace
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import bits_per_weight
    from lrm_interp.protect.mixed import allocate_bits, hessian_sensitivity, quantization_errors, quantize_allocation_
    from lrm_interp.protect.policies import final_mlp, global_top
    from lrm_interp.protect.registry import SALIENCIES, build_saliency
    from lrm_interp.protect.saliency import scorable_spans, span_loss
    from lrm_interp.toy.tasks import generate_dataset, model_world

    sites = find_sites(model)
    grid = dict(group_size=s.group_size, symmetric=s.symmetric)
    calib = calibration_ids(tokenizer, n_per_family=16, seed=77, separator="\n")
    gptq = s.quantizer == "gptq"
    memo: dict[str, Any] = {}

    def once(key: str, fn: Callable[[], Any]) -> Any:
        if key not in memo:
            memo[key] = fn()
        return memo[key]

    def traces():
        def make():
            ds = generate_dataset(s.attribution_traces, seed=99, world=model_world(model))
            res = attribute(model, ds, tokenizer=tokenizer, progress=False)
            return res, [encode_trace(tokenizer, t) for t in ds]
        return once("traces", make)

    def quantize(q, masks=None, bits=s.bits, transform=None):
        quantize_model_(q, bits=bits, method=s.quantizer, masks=masks or {}, calib=calib if gptq else None,
                        progress=False, **grid, **({"hessian_transform": transform} if transform else {}))
        return bits_per_weight(masks or {}, sites, bits=bits, **grid)["bpw"]

    def saliency_masks(name: str, seed: int = 0):
        def make():
            res, enc = traces()
            st = build_saliency(name, model, sites, encoded=enc, behaviors=list(res.behaviors), calib=calib,
                                bits=s.bits, seed=seed, module_importance=res, progress=progress, **grid)
            return global_top(st, s.budget)
        return once(f"masks:{name}:{seed}", make)

    def per_weight(name: str, seed: int = 0):
        def fn(q):
            return quantize(q, saliency_masks(name, seed)), f"{s.bits}:{len(sites)}"
        return fn

    def mixed(sens: str):
        def fn(q):
            budget = bits_per_weight(saliency_masks("magnitude"), sites, bits=s.bits, **grid)["bpw"]
            choices = (2, 3, 4, 8, 16)
            if sens == "attribution":
                weights, err = traces()[0].site_ri(), quantization_errors(model, sites, choices, relative=True, **grid)
            elif sens == "hessian":
                H: dict[str, torch.Tensor] = {}
                for _, hs in layer_hessians(model, sites, calib, sequential=False, progress=False):
                    H.update(hs)
                weights, err = hessian_sensitivity(H), quantization_errors(model, sites, choices, **grid)
            else:
                weights, err = None, quantization_errors(model, sites, choices, **grid)
            alloc = allocate_bits(sites, err, weights, budget, choices=choices, name=sens, **grid)
            quantize_allocation_(q, alloc, method=s.quantizer, calib=calib if gptq else None, progress=False)
            return alloc.bpw, " ".join(f"{b}:{n}" for b, n in alloc.counts().items())
        return fn

    def guided(with_masks: bool):
        def fn(q):
            def make():
                res, enc = traces()
                return gradient_weighted_hessians(model, sites, span_loss, scorable_spans(enc, list(res.behaviors)),
                                                  progress=progress)
            Hg = once("guided", make)
            masks = saliency_masks("attribution_scale") if with_masks else None
            return quantize(q, masks, transform=guided_transform(Hg, s.guided_mix)), f"{s.bits}:{len(sites)}"
        return fn

    pct = f"{s.budget:.0%}"
    rows = [RowPlan("none", "none", lambda q: (quantize(q), f"{s.bits}:{len(sites)}"))]
    for name, src in SALIENCIES.items():
        if name == "attribution_gptq" and not gptq:
            continue
        if name == "random":
            rows += [RowPlan(f"{pct} random (seed {seed})", "per-weight", per_weight("random", seed))
                     for seed in s.random_seeds]
        else:
            rows.append(RowPlan(f"{pct} {src.label}", "per-weight", per_weight(name)))
    rows.append(RowPlan("final-layer MLP (paper)", "module",
                        lambda q: (quantize(q, final_mlp(sites)), f"{s.bits}:{len(sites) - len(final_mlp(sites))} "
                                                                  f"16:{len(final_mlp(sites))}")))
    rows += [RowPlan(f"mixed precision by {sens}", "mixed", mixed(sens)) for sens in ("attribution", "hessian", "none")]
    if gptq:
        rows += [RowPlan(f"behaviour-guided GPTQ (mix {s.guided_mix})", "guided", guided(False)),
                 RowPlan(f"behaviour-guided GPTQ + {pct} scale-aware attribution", "guided", guided(True))]
    rows.append(RowPlan(f"plain {s.bits + 1}-bit", "plain", lambda q: (quantize(q, bits=s.bits + 1),
                                                                      f"{s.bits + 1}:{len(sites)}")))
    return rows


def _measure(label: str, kind: str, model, tokenizer, held, bpw: float, modules: str, t0: float) -> ResultRow:
    from lrm_interp.toy.evaluate import evaluate

    acc = evaluate(model, tokenizer, held, batch_size=150)
    fams = [f for f in acc if f != "mean"]
    correct = sum(round(acc[f] * sum(p.family == f for p in held)) for f in fams)
    lo, hi = wilson_interval(correct, len(held))
    return ResultRow(label, kind, float(bpw), {f: float(acc[f]) for f in fams}, correct / len(held), len(held),
                     correct, (lo, hi), modules, round(time.time() - t0, 1))


def run_protection_experiment(out: str | Path, settings: ExperimentSettings | None = None, *,
                              only: Sequence[str] | None = None, progress: bool = True, **kw: Any) -> ProtectionTable:
    """Run (or resume) the experiment into folder ``out`` and write its table (module docs).

    ``settings`` or keyword fields of :class:`ExperimentSettings`. ``only``: measure just the
    rows whose label contains one of these strings (plus fp / none, which ``recovered`` needs).
    Returns the :class:`ProtectionTable` of every row measured in ``out`` so far.
    """
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.provenance import model_provenance
    from lrm_interp.toy.tasks import model_world, problems

    s = settings or ExperimentSettings(**kw)
    out = Path(out)
    model, tok = load_model(s.model)
    model.eval()
    prov = model_provenance(model, tok)
    want = _settings_json(s, prov["weights_fingerprint"], (prov.get("tokenizer") or {}).get("fingerprint"))
    done = _check_folder(out, want)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", json.dumps(want, indent=1))
    rows = {r.label: r for r in done}
    held = problems(s.per_family, seed=s.problem_seed, world=model_world(model))

    def save_rows():
        atomic_write_text(out / "rows.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in rows.values()))

    plans = [RowPlan("fp", "fp", lambda q: (32.0 if next(model.parameters()).dtype == torch.float32 else 16.0, "–"))]
    plans += plan_rows(model, tok, s, progress=progress)
    if only:
        plans = [p for p in plans if p.kind in ("fp", "none") or any(o in p.label for o in only)]
    todo = [p for p in plans if p.label not in rows]
    with tqdm(total=len(plans), initial=len(plans) - len(todo), desc="protection rows", unit="row",
              disable=not progress) as bar:
        for p in todo:
            t0 = time.time()
            q = model if p.kind == "fp" else copy.deepcopy(model)
            bpw, modules = p.quantize(q)
            rows[p.label] = _measure(p.label, p.kind, q, tok, held, bpw, modules, t0)
            del q
            save_rows()
            bar.set_postfix_str(f"{p.label}: {100 * rows[p.label].mean:.1f}%")
            bar.update(1)
    order = [p.label for p in plans] + [k for k in rows if k not in {p.label for p in plans}]
    table = ProtectionTable(s, tuple(rows[k] for k in order if k in rows), prov)
    table.save(out)
    return table
