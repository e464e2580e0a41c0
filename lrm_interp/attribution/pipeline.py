"""``lrm_interp.attribute(model, dataset)``: the one-call pipeline.

model → sites → encoded traces → difference of means (steering vectors û) →
attribution patching (optional) → :class:`~lrm_interp.attribution.results.Attribution`.

With ``out_dir`` given, each trace's partial statistics are written to
``out_dir/partial/{dom,atp}/<trace>.safetensors`` as soon as they are computed, so a killed
run started again with the same arguments skips finished traces and ends with identical
results. The settings are stored in ``out_dir/partial/settings.json``; a restart with
different settings is refused (delete the folder or pass another ``out_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.attribution.results import Attribution
from lrm_interp.model.sites import Site, resolve_sites
from lrm_interp.data.tokens import EncodedTrace, encode_trace
from lrm_interp._io import atomic_write_bytes, atomic_write_text
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset, ReasoningTrace

METHODS = ("attribution", "dom")


def _file_key(trace_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in trace_id)[:40]
    return f"{safe}-{hashlib.sha1(trace_id.encode()).hexdigest()[:10]}"


class _PartialStore:
    """Per-trace partial statistics on disk (safetensors, atomic) for resumable runs."""

    def __init__(self, root: Path | None, settings: dict):
        self.root = root
        if root is None:
            return
        root.mkdir(parents=True, exist_ok=True)
        sp = root / "settings.json"
        text = json.dumps(settings, indent=2, sort_keys=True, default=str)
        if sp.exists():
            old = json.loads(sp.read_text())
            if old != json.loads(text):
                diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(text).get(k))
                raise ValueError(f"{root} holds partial results of a run with other settings "
                                 f"(differs in {diff}); delete it or choose another out_dir")
        else:
            atomic_write_text(sp, text)

    def get(self, stage: str, trace_id: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return None
        p = self.root / stage / f"{_file_key(trace_id)}.safetensors"
        if not p.exists():
            return None
        from safetensors.torch import load_file

        return load_file(str(p))

    def put(self, stage: str, trace_id: str, stats: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        from safetensors.torch import save

        data = save({k: v.detach().to("cpu").contiguous() for k, v in stats.items()})
        atomic_write_bytes(self.root / stage / f"{_file_key(trace_id)}.safetensors", data)


def _run_per_trace(stage: str, encoded: Sequence[EncodedTrace], store: _PartialStore,
                   fn: Callable[[EncodedTrace], dict], progress: bool) -> list[dict]:
    out, reused = [], 0
    bar = tqdm(encoded, desc=f"{stage} ({len(encoded)} traces)", disable=not progress, unit="trace")
    for enc in bar:
        stats = store.get(stage, enc.trace_id)
        if stats is None:
            stats = fn(enc)
            store.put(stage, enc.trace_id, stats)
        else:
            reused += 1
        out.append(stats)
    if reused and progress:
        tqdm.write(f"{stage}: resumed {reused} of {len(encoded)} traces from {store.root}")
    return out


def attribute(
    model: Any,
    dataset: ReasoningDataset | Sequence[ReasoningTrace] | str | os.PathLike,
    *,
    tokenizer: Any = None,
    behaviors: Sequence[str] | None = None,
    sites: Sequence[Site | str] | str | None = None,
    method: str = "attribution",
    k_context: int = 5,
    negatives: str = "all",
    weighting: str = "trace",
    mode: str = "exact",
    score: str = "paper",
    off_by_one: bool = False,
    max_tokens: int | None = None,
    gradient_checkpointing: bool = False,
    compute_dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Attribution:
    """Score every linear site of ``model`` for each reasoning behaviour.

    Args:
        model: an HF causal LM object, a local model directory, or ``"smollm2-135m"``.
        dataset: :class:`ReasoningDataset`, list of traces, JSONL path or paper-layout dir.
        tokenizer: needed when ``model`` is an object without a tokenizer of its own.
        behaviors: labels to score (default: the paper's four target behaviours that
            occur in the data; requested behaviours absent from the data are reported).
        sites: ``None`` (every linear module in the decoder layers), a regex, or names.
        method: ``"attribution"`` (AtP, paper Eq. 2) or ``"dom"`` (mean-shift size only).
        k_context: context tokens before each span in the DoM window (paper code: 5).
        negatives: tokens forming D−: ``"all"``, ``"response"`` or ``"thinking"``.
        weighting: ``"trace"`` (mean of per-trace means, paper) or ``"token"``.
        mode: AtP ``"exact"`` (one backward per span) or ``"joint"`` (one per trace).
        score: ``"paper"`` (Eq. 2) or ``"code"`` (the released code's Σ|·|/#segments).
        off_by_one: reproduce the released code's gradient window.
        max_tokens: truncate traces; spans cut off are counted in provenance.
        gradient_checkpointing: trade compute for memory in the AtP backward.
        compute_dtype: e.g. ``torch.bfloat16`` autocast for the forward/backward.
        out_dir: write results there and keep per-trace partials to resume a killed run.

    Returns:
        :class:`Attribution` with scores ``[n_behaviors, n_sites]`` and steering vectors.
    """
    from lrm_interp.attribution.atp import atp_aggregate, atp_trace_stats
    from lrm_interp.attribution.dom import dom_aggregate, dom_trace_stats
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.provenance import model_provenance

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    ds = load_dataset(dataset)
    if len(ds) == 0:
        raise ValueError("the dataset has no traces")
    present = ds.behaviors()
    if behaviors is None:
        behaviors = [b for b in TARGET_BEHAVIORS if b in present]
        if not behaviors:
            raise ValueError(f"no target behaviour {TARGET_BEHAVIORS} occurs in the data "
                             f"(labels present: {present}); pass behaviors=[...]")
    behaviors = list(behaviors)
    absent = [b for b in behaviors if b not in present]
    site_list = resolve_sites(model, sites)

    encoded: list[EncodedTrace] = []
    skipped: list[dict] = []
    for t in tqdm(ds, desc="tokenize", disable=not progress, unit="trace"):
        enc = encode_trace(tokenizer, t, k_context=k_context, max_tokens=max_tokens)
        for idx, reason in enc.dropped:
            skipped.append({"trace": t.id, "span": idx, "behavior": t.spans[idx].behavior, "reason": reason})
        encoded.append(enc)

    prov = model_provenance(model, tokenizer)
    settings = {"method": method, "behaviors": behaviors, "sites": [s.name for s in site_list],
                "k_context": k_context, "negatives": negatives, "weighting": weighting, "mode": mode,
                "score": score, "off_by_one": off_by_one, "max_tokens": max_tokens,
                "compute_dtype": str(compute_dtype) if compute_dtype else None,
                "model": prov.get("name"), "model_dtype": prov.get("dtype"),
                "traces": [t.id for t in ds]}
    out = Path(out_dir) if out_dir is not None else None
    store = _PartialStore(out / "partial" if out else None, settings)

    dom_stats = _run_per_trace(
        "dom", encoded, store,
        lambda e: dom_trace_stats(model, e, site_list, behaviors, negatives=negatives), progress)
    dom = dom_aggregate(dom_stats, site_list, behaviors, weighting=weighting)

    counts = {"traces": len(ds), "spans": {b: sum(len(e.spans_of(b)) for e in encoded) for b in behaviors},
              "traces_with_behavior": {b: dom.n_traces.get(b, 0) for b in behaviors},
              "tokens": {b: dom.n_tokens.get(b, 0) for b in behaviors}}
    if method == "dom":
        scores = torch.zeros(len(behaviors), len(site_list), dtype=torch.float64)
        for i, b in enumerate(behaviors):
            for j, s in enumerate(site_list):
                u, m = dom.raw[b][s.name].double(), dom.mean_all[s.name].double()
                scores[i, j] = u.norm() / m.norm().clamp_min(1e-12) if dom.n_traces.get(b, 0) else 0.0
    else:
        live = [b for b in behaviors if dom.n_traces.get(b, 0) > 0]
        atp_stats = _run_per_trace(
            "atp", encoded, store,
            lambda e: atp_trace_stats(model, e, site_list, live, dom.vectors, mode=mode,
                                      off_by_one=off_by_one, gradient_checkpointing=gradient_checkpointing,
                                      compute_dtype=compute_dtype), progress)
        res = atp_aggregate(atp_stats, site_list, live, score=score)
        scores = torch.zeros(len(behaviors), len(site_list), dtype=torch.float64)
        for i, b in enumerate(behaviors):
            if b in live:
                scores[i] = res.scores[live.index(b)].double()
    report = getattr(ds, "report", None)
    provenance = {
        "model": prov, "settings": {k: v for k, v in settings.items() if k not in {"traces", "sites"}},
        "counts": counts, "skipped_spans": skipped, "absent_behaviors": absent,
        "dataset": {"name": ds.name, "n_traces": len(ds),
                    "parse_report": report.summary() if hasattr(report, "summary") else None},
    }
    result = Attribution(behaviors=tuple(behaviors), sites=tuple(site_list), scores=scores, method=method,
                         vectors={b: dict(dom.vectors[b]) for b in behaviors if dom.n_traces.get(b, 0)},
                         provenance=provenance)
    if out is not None:
        result.save(out)
    return result
