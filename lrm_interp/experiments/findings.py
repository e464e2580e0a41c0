"""The seed paper's claims, tested on a model that solves the toy tasks (docs/findings.md).

Claims 1 and 2 read a ``lrm-interp bench score`` per-output table (``scores.csv``,
:meth:`~lrm_interp.evaluation.bench_score.BenchScores.to_dataframe`):

- :func:`knowledge_vs_reasoning` — *weight loss hurts knowledge recall more than reasoning*:
  per compressed variant, the accuracy drop of each family against the uncompressed model and
  the difference "knowledge drop − reasoning-family drop", with paired percentile-bootstrap
  intervals (items resampled within each family, the same resample for both models).
- :func:`short_vs_long` — *shorter outputs score higher*: per model × task, the score of the
  shortest minus the longest 30 % of outputs (the paper's split,
  :func:`~lrm_interp.evaluation.compute.short_long_split`) with a bootstrap interval.

Claims 3 and 4 need attributions: :func:`run_shift_study` generates the uncompressed model's
own annotated traces, splits them into two disjoint halves (alternate problems of each
family), and attributes the uncompressed model and each compressed variant on each half —
the paper's importance shift is computed on the original model's traces. Every statistic is
reported per half, so a finding that does not replicate across the halves is visible.
:func:`site_rank_table` (claim 3: where does a final-layer ``up_proj`` rank per behaviour?) and
:func:`shift_summary` (claim 4: do the final layer and mid-layer ``gate_proj`` lose relative
importance?) read the saved results.

Folder of :func:`run_shift_study`::

    settings.json            what was asked + the model's weights / tokenizer fingerprints
    traces.jsonl             the model's own traces, annotated by the rule-based annotator
    attr/<variant>/<half>/   an Attribution folder (``fp`` = uncompressed; halves ``A``, ``B``)

An interrupted run resumes: finished attributions are loaded, an unfinished one resumes from
its per-trace partials; a folder of another run is refused.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lrm_interp._io import atomic_write_text
from lrm_interp.attribution.results import Attribution, ImportanceShift, compare
from lrm_interp.checks import check_int, checked_arguments
from lrm_interp.data.toy_tasks import check_held_out_seed
from lrm_interp.evaluation.output_stats import short_long_split
from lrm_interp.evaluation.paired import sign_test  # re-exported: claim 2's test

FORMAT = "lrm_interp.findings_shift/1"
HALVES = ("A", "B")
REASONING = ("math", "logic")


# ------------------------------------------------------------------ claims 1 and 2: bench scores
def _per_item(scores: pd.DataFrame, model: str, task: str) -> pd.Series:
    """Mean score over samples per item index of one model × task (index-sorted)."""
    d = scores[(scores.model == model) & (scores.task == task)]
    return d.groupby("index")["score"].mean().sort_index()


def _verdict(lo: float, hi: float, positive: str, negative: str) -> str:
    return positive if lo > 0 else negative if hi < 0 else "cannot tell"


def knowledge_vs_reasoning(
    scores: pd.DataFrame,
    reference: str,
    *,
    knowledge: str = "knowledge",
    reasoning: Sequence[str] = REASONING,
    resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy drops (percentage points) of every other model against ``reference``.

    ``scores``: per-output rows with ``model, task, index, score``. One row per compressed
    model × reasoning family ``r``: ``drop_<family>`` for the knowledge family and ``r``,
    ``diff = drop_knowledge − drop_r`` with its 95 % paired bootstrap interval, and a verdict
    (``knowledge more fragile`` when the interval is above 0, ``reasoning more fragile`` when
    below, else ``cannot tell``). A model that lacks an item of the reference in one of the
    families is left out and listed in ``df.attrs["incomplete"]`` (never compared on a subset).
    """
    check_int("resamples", resamples, min=1)
    fams = [knowledge, *reasoning]
    ref = {f: _per_item(scores, reference, f) for f in fams}
    for f, s in ref.items():
        if s.empty:
            raise ValueError(f"the reference {reference!r} has no outputs for {f!r}")
    rng = np.random.default_rng(seed)
    boot = {f: rng.integers(0, len(ref[f]), (resamples, len(ref[f]))) for f in fams}
    rows, incomplete = [], []
    for model in sorted(set(scores.model) - {reference}):
        mine = {f: _per_item(scores, model, f).reindex(ref[f].index) for f in fams}
        if any(bool(mine[f].isna().any()) for f in fams):
            incomplete.append(model)
            continue
        drop = {f: ref[f].to_numpy() - mine[f].to_numpy() for f in fams}  # per item, in {-1, 0, 1}
        bdrop = {f: drop[f][boot[f]].mean(1) for f in fams}
        for r in reasoning:
            diff = 100 * (bdrop[knowledge] - bdrop[r])
            lo, hi = (float(x) for x in np.percentile(diff, [2.5, 97.5]))
            d = 100 * (drop[knowledge].mean() - drop[r].mean())
            rows.append(
                {
                    "model": model,
                    "reasoning": r,
                    "acc_ref_knowledge": 100 * ref[knowledge].mean(),
                    "acc_knowledge": 100 * mine[knowledge].mean(),
                    f"acc_ref_{r}": 100 * ref[r].mean(),
                    f"acc_{r}": 100 * mine[r].mean(),
                    "drop_knowledge": 100 * drop[knowledge].mean(),
                    "drop_reasoning": 100 * drop[r].mean(),
                    "diff": d,
                    "ci95_low": lo,
                    "ci95_high": hi,
                    "verdict": _verdict(lo, hi, "knowledge more fragile", "reasoning more fragile"),
                }
            )
    df = pd.DataFrame(rows)
    df.attrs["incomplete"] = incomplete
    return df


def short_vs_long(scores: pd.DataFrame, *, fraction: float = 0.3, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Score of the shortest minus the longest ``fraction`` of outputs (length in words), per
    model × task, in percentage points, with a 95 % bootstrap interval (outputs resampled,
    the split recomputed on each resample) and a verdict (``shorter higher`` / ``longer
    higher`` / ``cannot tell``; ``no spread`` when every output has the same score).
    ``same_as`` names the first model (sorted) whose outputs on the task are the same word counts
    and scores item by item (e.g. RTN 8-bit answering exactly as full precision): such a cell is
    the same evidence again, so ``attrs["sign"]`` — the exact sign test over the cells with a
    spread — counts it once.

    ``scores``: per-output rows with ``model, task, score, words`` (ordered by ``index`` and
    ``sample`` where present).
    """
    check_int("resamples", resamples, min=1)
    rows = []
    seen: dict[tuple, str] = {}  # (task, outputs) -> the first model with exactly these outputs
    for (model, task), d in scores.groupby(["model", "task"], sort=True):
        # one stream per model × task: a row's interval does not move when other models are added
        rng = np.random.default_rng([seed, zlib.crc32(f"{model}\0{task}".encode())])
        if {"index", "sample"} <= set(d.columns):
            d = d.sort_values(["index", "sample"])
        w, s = d["words"].to_numpy(float), d["score"].to_numpy(float)
        same_as = seen.setdefault((task, tuple(w), tuple(s)), model)
        sp = short_long_split(w, s, fraction)
        diff = 100 * (sp.short_score - sp.long_score)
        if np.all(s == s[0]):
            lo = hi = 0.0
            verdict = "no spread"
        else:
            idx = rng.integers(0, len(s), (resamples, len(s)))
            bs = [short_long_split(w[i], s[i], fraction) for i in idx]
            b = 100 * np.array([x.short_score - x.long_score for x in bs])
            lo, hi = (float(x) for x in np.percentile(b, [2.5, 97.5]))
            verdict = _verdict(lo, hi, "shorter higher", "longer higher")
        rows.append(
            {
                "model": model,
                "task": task,
                "n": len(s),
                "accuracy": 100 * float(s.mean()),
                "short": 100 * sp.short_score,
                "long": 100 * sp.long_score,
                "len_ratio": sp.ratio,
                "diff": diff,
                "ci95_low": lo,
                "ci95_high": hi,
                "verdict": verdict,
                "same_as": "" if same_as == model else same_as,
            }
        )
    df = pd.DataFrame(rows)
    counted = (df["verdict"] != "no spread") & (df["same_as"] == "")
    df.attrs["sign"] = sign_test(df["diff"][counted])
    return df


# ------------------------------------------------------------------ claims 3 and 4: attributions
@dataclass(frozen=True)
class ShiftSettings:
    """What :func:`run_shift_study` measures (checked against an existing ``settings.json``).

    ``per_family`` held-out problems per toy family (seed ``problem_seed``; seeds under 10 000
    are never used in the reasoner's training), greedy answers up to ``max_new_tokens``;
    ``variants``: compression specs (:func:`~lrm_interp.compress.specs.parse_compression`),
    quantizers with ``group_size``; calibrated ones on the default calibration set.
    """

    model: str = "smollm2-135m-reasoner"
    per_family: int = 20
    problem_seed: int = 4242
    variants: tuple[str, ...] = ("gptq:3", "rtn:3", "sparsegpt:0.5", "magnitude:0.5")
    group_size: int | None = 128
    max_new_tokens: int = 480

    def __post_init__(self) -> None:
        from lrm_interp.compress.quant.grid import check_group_size
        from lrm_interp.compress.specs import parse_compression

        check_int("per_family", self.per_family, min=2)
        check_int("problem_seed", self.problem_seed, min=0)
        check_held_out_seed(self.problem_seed, "problem_seed")  # not a training seed of the toy models (H16-SEED)
        check_int("max_new_tokens", self.max_new_tokens, min=1)
        check_group_size(self.group_size)
        object.__setattr__(self, "variants", tuple(self.variants))
        if not self.variants:
            raise ValueError("variants: name at least one compression spec, e.g. gptq:3")
        tags = [parse_compression(v).tag for v in self.variants]  # raises on a bad spec
        if "" in tags:
            raise ValueError("variants: 'none' is always measured (as 'fp'); list compressed variants only")
        if len(set(tags)) != len(tags):
            raise ValueError(f"variants: the same compression twice in {list(self.variants)}")


@checked_arguments
@dataclass(frozen=True)
class ShiftStudy:
    """The attributions of one :func:`run_shift_study` folder: ``results[(variant, half)]``,
    variant ``"fp"`` or a spec's tag (``gptq3``), half ``"A"`` / ``"B"``."""

    settings: ShiftSettings
    results: dict[tuple[str, str], Attribution]
    out: Path

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for v, _ in self.results))

    def shift(self, variant: str, half: str) -> ImportanceShift:
        """RI_variant − RI_fp on one half's traces (:func:`~lrm_interp.attribution.results.compare`)."""
        return compare(self.results[("fp", half)], self.results[(variant, half)])

    def mean_shift(self, variant: str) -> ImportanceShift:
        """The two halves' shifts averaged (for the heatmaps): behaviours present in both."""
        a, b = (self.shift(variant, h) for h in HALVES)
        behs = tuple(x for x in a.behaviors if x in b.behaviors)
        ia, ib = [a.behaviors.index(x) for x in behs], [b.behaviors.index(x) for x in behs]
        return ImportanceShift(behs, a.sites, (a.delta[ia] + b.delta[ib]) / 2, a.original, a.compressed)


def _settings_json(s: ShiftSettings, fingerprint: str, tokenizer_fingerprint: str | None) -> dict[str, Any]:
    d = asdict(s)
    d["variants"] = list(s.variants)
    return {
        "format": FORMAT,
        "settings": d,
        "weights_fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint,
    }


def _check_folder(out: Path, want: dict[str, Any]) -> None:
    sp = out / "settings.json"
    if not sp.exists():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out} exists and is not a findings folder (no settings.json); use a new --out folder")
        return
    have = json.loads(sp.read_text())
    if have != want:
        from lrm_interp.attribution.resume import settings_difference

        hs, ws = have.get("settings", {}), want["settings"]
        diff = [settings_difference(hs, ws)] if hs != ws else []  # each with both values (H29-EXHINT)
        other = [k for k in ("weights_fingerprint", "tokenizer_fingerprint", "format") if have.get(k) != want.get(k)]
        hint = "" if other else f"rerun with the settings recorded in {sp} to resume it, or "
        raise ValueError(
            f"{out} holds another study (differs in {', '.join(diff + other)}); {hint}use a new --out folder"
        )


def _halves(traces: Sequence[Any]) -> dict[str, list[Any]]:
    """Two disjoint halves: alternate traces of each family (``metadata["dataset"]``)."""
    by_family: dict[str, list[Any]] = {}
    for t in traces:
        by_family.setdefault(str(t.metadata.get("dataset")), []).append(t)
    return {h: [t for ts in by_family.values() for t in ts[i::2]] for i, h in enumerate(HALVES)}


@checked_arguments
def run_shift_study(
    out: str | Path, settings: ShiftSettings | None = None, *, progress: bool = True, **kw: Any
) -> ShiftStudy:
    """Run (or resume) the importance-shift study into ``out`` (module docs); returns every
    attribution it holds. ``settings`` or keyword fields of :class:`ShiftSettings`."""
    from tqdm.auto import tqdm

    from lrm_interp.attribution.pipeline import attribute
    from lrm_interp.compress.calibration import calibration_ids
    from lrm_interp.compress.specs import apply_compression, parse_compression
    from lrm_interp.data.loading import load_dataset
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.provenance import model_provenance
    from lrm_interp.toy.evaluate import collect_traces
    from lrm_interp.toy.tasks import model_world, problems

    s = settings or ShiftSettings(**kw)
    out = Path(out).expanduser()
    model, tok = load_model(s.model)
    model.eval()
    prov = model_provenance(model, tok)
    want = _settings_json(s, prov["weights_fingerprint"], (prov.get("tokenizer") or {}).get("fingerprint"))
    _check_folder(out, want)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", json.dumps(want, indent=1))
    tp = out / "traces.jsonl"
    if tp.exists():
        traces = list(load_dataset(tp))
    else:
        probs = problems(s.per_family, seed=s.problem_seed, world=model_world(model))
        ds = collect_traces(
            model, tok, probs, max_new_tokens=s.max_new_tokens, batch_size=len(probs), progress=progress
        )
        ds.save_jsonl(tp)
        traces = list(ds)
    halves = _halves(traces)
    results: dict[tuple[str, str], Attribution] = {}
    specs = {"fp": None} | {parse_compression(v).tag: parse_compression(v) for v in s.variants}
    calib = None
    for tag, spec in tqdm(specs.items(), desc="variants", disable=not progress):
        dirs = {h: out / "attr" / tag / h for h in HALVES}
        if all((d / "attribution.json").exists() for d in dirs.values()):
            results |= {(tag, h): Attribution.load(d) for h, d in dirs.items()}
            continue
        q = model
        if spec is not None:
            if spec.needs_calibration and calib is None:
                calib = calibration_ids(tok)
            q, _ = apply_compression(model, spec, group_size=s.group_size, calib=calib, progress=progress)
        for h, d in dirs.items():
            done = (d / "attribution.json").exists()
            results[(tag, h)] = (
                Attribution.load(d) if done else attribute(q, halves[h], tokenizer=tok, out_dir=d, progress=progress)
            )
        del q
    return ShiftStudy(s, results, out)


def _final_layer(sites: Sequence[Any]) -> int:
    return max(s.layer for s in sites if s.layer is not None)


def site_rank_table(study: ShiftStudy, *, variant: str = "fp", kind: str = "up", k: int = 3) -> pd.DataFrame:
    """Claim 3, per half × behaviour: the rank (1 = most important, of ``n_sites``) and RI of
    the final layer's ``kind`` site, the best rank of any final-layer site, and the top ``k``
    sites."""
    rows = []
    for h in HALVES:
        a = study.results[(variant, h)]
        last = _final_layer(a.sites)
        j = next(i for i, s in enumerate(a.sites) if s.layer == last and s.kind == kind)
        final = [i for i, s in enumerate(a.sites) if s.layer == last]
        for b, beh in enumerate(a.behaviors):
            ranks, ri = a.ranks[b], a.ri[b]
            rows.append(
                {
                    "half": h,
                    "behavior": beh,
                    "n_sites": len(a.sites),
                    "site": a.sites[j].name,
                    "rank": int(ranks[j]),
                    "ri": float(ri[j]),
                    "best_final_layer_rank": int(ranks[final].min()),
                    "final_layer_ri": float(ri[final].sum()),
                    "top": ", ".join(f"{n} ({r:.3f})" for _, n, r in a.top(k, beh)),
                }
            )
    return pd.DataFrame(rows)


def shift_summary(study: ShiftStudy, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """Claim 4, per variant × half × behaviour: the signed RI change (RI_variant − RI_fp, summed
    over a group of sites) of the final layer, of ``gate_proj`` in the middle third of the
    layers, and of each module kind; plus the share of the total RI decrease that falls on the
    final layer and on mid-layer ``gate_proj`` (compare with their share of the sites)."""
    rows = []
    for v in variants or [x for x in study.variants if x != "fp"]:
        for h in HALVES:
            sh = study.shift(v, h)
            last = _final_layer(sh.sites)
            lo, hi = last / 3, 2 * last / 3
            final = torch.tensor([s.layer == last for s in sh.sites])
            midgate = torch.tensor([s.kind == "gate" and s.layer is not None and lo <= s.layer <= hi for s in sh.sites])
            kinds = sorted({s.kind for s in sh.sites})
            for b, beh in enumerate(sh.behaviors):
                d, dec = sh.delta[b], sh.decreases[b]
                tot = float(dec.sum())
                row = {
                    "variant": v,
                    "half": h,
                    "behavior": beh,
                    "final_layer_delta": float(d[final].sum()),
                    "mid_gate_delta": float(d[midgate].sum()),
                    "final_layer_share_of_decrease": float(dec[final].sum()) / tot if tot > 0 else math.nan,
                    "mid_gate_share_of_decrease": float(dec[midgate].sum()) / tot if tot > 0 else math.nan,
                    "final_layer_site_share": float(final.float().mean()),
                    "mid_gate_site_share": float(midgate.float().mean()),
                }
                for kd in kinds:
                    row[f"delta_{kd}"] = float(d[torch.tensor([s.kind == kd for s in sh.sites])].sum())
                rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "FORMAT",
    "knowledge_vs_reasoning",
    "short_vs_long",
    "sign_test",
    "ShiftSettings",
    "ShiftStudy",
    "run_shift_study",
    "site_rank_table",
    "shift_summary",
]
