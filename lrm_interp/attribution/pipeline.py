"""``lrm_interp.attribute(model, dataset)``: plan → per-trace stages → reduce.

1. :func:`plan_attribution` validates everything before any work: the
   :class:`~lrm_interp.attribution.config.AttributionConfig` (already validated when built),
   model and tokenizer (fast, vocabulary fits the embedding), dataset, sites; fingerprints the
   weights (non-finite weights raise here) and tokenizer; tokenizes every trace; refuses,
   truncates, skips or (rotary models, ``overlong="extrapolate"``) runs past it the traces longer
   than the model's context (``overlong``, counted);
   refuses a run whose longest trace obviously cannot fit in free memory; lists the spans that
   cannot be used (dropped by tokenization or truncation, or unscorable by AtP) and the
   behaviours left without a usable span (left out of the result with a warning, never an
   all-zero row; a run where no requested behaviour has one is refused); opens the resume store.
2. :func:`dom_stage` / :func:`atp_stage` (``method="attribution"``) or :func:`patching_stage`
   (``method="patching"``: exact activation patching, :func:`~lrm_interp.attribution.atp.patching_trace_stats`):
   one independent computation per trace (so a data-parallel runner only has to shard the trace
   list), each result written to ``out_dir/partial/{dom,atp,patching}/`` as soon as it exists
   (:mod:`lrm_interp.attribution.resume`). By default (exact AtP with the prefix cache,
   ``score="paper"``: :func:`one_pass_reason`) :func:`one_pass_stage` reads each trace once instead:
   the prefix-cache forward takes the DoM sums too, the span windows give per-behaviour gradient
   sums (``partial/grad/``), and :func:`atp_stage` dots them with the steering vectors after the DoM
   reduction (docs/performance.md, "One read per trace").
3. :func:`reduce_dom` / :func:`finish`: arithmetic on the per-trace statistics →
   :class:`~lrm_interp.attribution.results.Attribution`, saved to ``out_dir``.

Under ``torchrun`` the per-trace stages run on each rank's shard of the traces and the
statistics are gathered before each reduction (:mod:`lrm_interp.attribution.distributed`).

A killed run started again with the same arguments reuses finished traces and ends with
identical results; a run on other weights, another model config, another tokenizer, other
settings or another context limit / overlong policy is refused; a trace edited under the same
id, or cut at another length, is recomputed (never served from its old partial). A finished
result is replaced by edited traces only with ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm.auto import tqdm

from lrm_interp import __version__
from lrm_interp._io import check_out_folder
from lrm_interp.attribution import distributed
from lrm_interp.attribution.atp import (
    PATCH_BATCH,
    UnresolvedPatchError,
    atp_aggregate,
    atp_trace_stats,
    decoder_holds_sites,
    low_precision_note,
    one_pass_trace_stats,
    patching_dtype,
    patching_trace_stats,
    unresolved_sites,
)
from lrm_interp.attribution.config import SPAN_LOSS_METHODS, AttributionConfig
from lrm_interp.attribution.dom import DoMResult, dom_aggregate, dom_trace_stats
from lrm_interp.attribution.results import Attribution
from lrm_interp.attribution.resume import (
    LOCK_FILE,
    PartialStore,
    check_finished_result,
    check_overwrite_target,
    clear_partials,
    out_dir_lock,
    recorded_dataset_name,
    tensors_fingerprint,
    trace_contents_fingerprint,
    trace_ids_fingerprint,
)
from lrm_interp.checks import checked_arguments, env_flag, user_stacklevel
from lrm_interp.data.loading import check_dataset_argument, load_dataset
from lrm_interp.data.tokens import EncodedTrace, encode_trace
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset, ReasoningTrace
from lrm_interp.model.forward import available_memory, context_limit, input_device, memory_lower_bound
from lrm_interp.model.loading import load_model
from lrm_interp.model.prefix_cache import cache_support, rope_switch
from lrm_interp.model.provenance import model_provenance
from lrm_interp.model.sites import Site, find_sites, resolve_sites
from lrm_interp.model.vocab import check_model_and_tokenizer, check_tokenizer_fits, embedding_rows, tokenizer_label

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@checked_arguments
@dataclass
class AttributionPlan:
    """Everything :func:`attribute` needs, checked and prepared (see module docs).

    ``encoded[i]`` is ``dataset[i]`` tokenized; ``trace_keys[id]`` its partial key (content
    fingerprint, plus the cut when it was truncated: :func:`_trace_key`);
    ``skipped`` one dict per span that does not enter every statistic (trace, span index,
    behaviour, reason, and which statistics still use it); ``absent`` the requested behaviours
    without a usable span (none labelled, or every one dropped: empty after tokenization, past
    the context, truncated away, or for AtP unscorable): they are left out of the result's rows
    and described in ``extra["absent_spans"]``.
    """

    model: torch.nn.Module
    tokenizer: Any
    config: AttributionConfig
    dataset: ReasoningDataset
    sites: list[Site]
    behaviors: list[str]
    absent: list[str]
    encoded: list[EncodedTrace]
    trace_keys: dict[str, str]
    skipped: list[dict]
    model_provenance: dict
    store: PartialStore
    out_dir: Path | None = None
    extra: dict = field(default_factory=dict)
    #: what :func:`finish` checks a finished result in ``out_dir`` against before saving over it
    run_key: dict | None = None
    dataset_key: dict | None = None
    #: a finished result in ``out_dir`` computed on edited traces (same ids) may be replaced (``attribute(overwrite=)``)
    overwrite: bool = False


def _check_tokenizer(model: torch.nn.Module, tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: character offsets (needed to map "
            "behaviour spans to tokens) are unavailable"
        )


def check_ids(model: torch.nn.Module, tokenizer: Any, enc: EncodedTrace) -> None:
    """Token ids beyond the input embedding mean the tokenizer is not this model's
    (:func:`lrm_interp.model.vocab.embedding_rows`: the one reading of the embedding's size)."""
    rows = embedding_rows(model)
    top = int(enc.input_ids.max()) if len(enc) else -1
    if rows is not None and top >= rows:
        name = tokenizer_label(tokenizer)
        raise ValueError(
            f"trace {enc.trace_id}: the tokenizer ({name}, {len(tokenizer)} tokens) produced token id "
            f"{top} but the model's input embedding has {rows} rows: it is not this model's tokenizer"
        )


class ContextLengthError(ValueError):
    """Traces longer than the model's context, refused before any work (``overlong="error"``)."""


class MemoryEstimateError(ValueError):
    """The longest trace obviously cannot fit in the device's free memory (refused before any work)."""


#: Set to 1 to skip the up-front memory check of :func:`attribute` (:func:`check_memory`).
SKIP_MEMORY_CHECK_ENV = "LRM_INTERP_SKIP_MEMORY_CHECK"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _list_traces(items: Sequence[tuple[str, int]], k: int = 10) -> str:
    shown = ", ".join(f"{tid} ({n} tokens)" for tid, n in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")


def _tokenize(
    ds: ReasoningDataset,
    tokenizer: Any,
    model: torch.nn.Module,
    config: AttributionConfig,
    *,
    behaviors: Sequence[str],
    progress: bool,
    warn: bool,
) -> tuple[ReasoningDataset, list[EncodedTrace], dict, list[dict]]:
    """Tokenize every trace and apply ``config.overlong`` to the traces longer than the model's
    context: ``(dataset kept, encoded, provenance["overlong"], skipped-span entries of the traces
    left out)``."""
    limit, where = context_limit(model)
    mt = config.max_tokens
    cut, by = mt, "max_tokens"
    if config.overlong == "truncate" and limit is not None and (mt is None or mt > limit):
        cut, by = limit, f"the model's context ({limit} positions, {where})"
    encoded = []
    for t in tqdm(ds, desc="tokenize", disable=not progress, unit="trace"):
        enc = encode_trace(tokenizer, t, k_context=config.k_context, max_tokens=cut, truncated_by=by)
        check_ids(model, tokenizer, enc)
        encoded.append(enc)
    info: dict[str, Any] = {"policy": config.overlong, "limit": limit, "limit_from": where, "traces": {}}
    if limit is None:
        return ds, encoded, info, []
    if config.overlong == "extrapolate":
        _extrapolate(model, encoded, limit, where, info, behaviors=behaviors, warn=warn)
        return ds, encoded, info, []
    if config.overlong == "truncate":
        hit = [e for e in encoded if e.full_length > limit and len(e) == limit]
        info["traces"] = {
            e.trace_id: {"tokens": e.full_length, "kept": len(e), "spans_dropped": len(e.dropped)} for e in hit
        }
        info["n_truncated"] = len(hit)
        info["spans_dropped"] = sum(len(e.dropped) for e in hit)
        if hit and warn:
            warnings.warn(
                f"{len(hit)} trace(s) longer than the model's context ({limit} positions, {where}) were "
                f"truncated to it (overlong='truncate'): "
                f"{_list_traces([(e.trace_id, e.full_length) for e in hit])}; "
                f"{info['spans_dropped']} span(s) cut off (not used); listed in provenance['overlong'] and "
                "['skipped_spans']",
                stacklevel=user_stacklevel(),
            )
        return ds, encoded, info, []
    over = [(e.trace_id, len(e)) for e in encoded if len(e) > limit]
    if not over:
        return ds, encoded, info, []
    if config.overlong == "error":
        raise ContextLengthError(
            f"{len(over)} of {len(encoded)} trace(s) are longer than the model's context of {limit} positions "
            f"({where}): {_list_traces(over)}. Choose overlong='truncate' (cut them at the context; spans cut off "
            "are counted), overlong='skip' (leave them out, counted), overlong='extrapolate' (run them at full "
            "length past the context: rotary models only, out of the model's trained range), or max_tokens=N "
            "(command line: --overlong truncate|skip|extrapolate, --max-tokens N)"
        )
    ids = {tid for tid, _ in over}
    n_span = {t.id: len(t.spans) for t in ds if t.id in ids}
    n_spans = sum(n_span.values())
    info["traces"] = {tid: {"tokens": n, "spans": n_span[tid]} for tid, n in over}
    info["n_skipped"] = len(over)
    info["spans_dropped"] = n_spans
    if len(over) == len(encoded):
        raise ContextLengthError(
            f"every trace is longer than the model's context of {limit} positions ({where}): "
            f"{_list_traces(over)}; nothing is left with overlong='skip' (use 'truncate')"
        )
    if warn:
        warnings.warn(
            f"{len(over)} of {len(encoded)} trace(s) longer than the model's context ({limit} positions, "
            f"{where}) were left out (overlong='skip'): {_list_traces(over)}; their {n_spans} span(s) are "
            "not used; listed in provenance['overlong'] and ['skipped_spans']",
            stacklevel=user_stacklevel(),
        )
    reason = f"trace longer than the model's context ({limit} positions): left out (overlong='skip')"
    left_out = [
        {"trace": t.id, "span": i, "behavior": sp.behavior, "reason": reason, "used_by": []}
        for t in ds
        if t.id in ids
        for i, sp in enumerate(t.spans)
    ]
    kept = ReasoningDataset([t for t in ds if t.id not in ids], name=ds.name, report=getattr(ds, "report", None))
    return kept, [e for e in encoded if e.trace_id not in ids], info, left_out


def position_table(model: torch.nn.Module, limit: int) -> str | None:
    """Why ``model`` cannot run past its configured context of ``limit`` positions, or ``None``.

    Rotary position encodings (a module whose class name contains ``Rotary``) compute each
    position's rotation from its index, so a forward past the configured context runs (the
    model extrapolates); a learned position table (an embedding other than the input
    embedding, named like ``wpe`` / ``*pos*`` or with ``limit`` rows: GPT-2's ``wpe``) has no
    row for a position past it, and a model with neither is not known to cope.
    """
    emb = cast("PreTrainedModel", model).get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding) and m is not emb:
            leaf = name.rsplit(".", 1)[-1].lower()
            if m.num_embeddings == limit or "pos" in leaf or leaf == "wpe":
                return f"it has a learned position table ({name}: {m.num_embeddings} rows)"
    if not any("rotary" in type(m).__name__.lower() for m in model.modules()):
        return "no rotary position embedding was found in it (only rotary encodings are known to run past the context)"
    return None


def _extrapolate(
    model: torch.nn.Module,
    encoded: Sequence[EncodedTrace],
    limit: int,
    where: str | None,
    info: dict,
    *,
    behaviors: Sequence[str],
    warn: bool,
) -> None:
    """``overlong="extrapolate"``: keep the traces longer than the context whole when the model's
    position encoding can run past it (:func:`position_table`; refused with
    :class:`ContextLengthError` otherwise); count per trace the tokens past the context and the
    spans of ``behaviors`` ending past it in ``info`` (``provenance["overlong"]``) and warn."""
    over = [e for e in encoded if len(e) > limit]
    info["n_extrapolated"] = len(over)
    if not over:
        return
    why = position_table(model, limit)
    if why is not None:
        raise ContextLengthError(
            f"overlong='extrapolate': {type(model).__name__} cannot run past its context of {limit} positions "
            f"({where}): {why}. {len(over)} trace(s) are longer: {_list_traces([(e.trace_id, len(e)) for e in over])}; "
            "choose overlong='truncate' or 'skip', or max_tokens=N"
        )
    info["traces"] = {
        e.trace_id: {
            "tokens": len(e),
            "past_context": len(e) - limit,
            "spans_past_context": sum(1 for sp in e.spans if sp.end > limit and sp.behavior in behaviors),
        }
        for e in over
    }
    info["spans_past_context"] = sum(v["spans_past_context"] for v in info["traces"].values())
    if warn:
        warnings.warn(
            f"{len(over)} trace(s) longer than the model's context ({limit} positions, {where}) run at full length "
            f"past it (overlong='extrapolate'): {_list_traces([(e.trace_id, len(e)) for e in over])}. Positions past "
            f"{limit} are outside what the model was trained on: activations, losses and scores there describe the "
            f"model out of its range ({info['spans_past_context']} span(s) of the scored behaviours end past the "
            "context); listed in "
            "provenance['overlong']",
            stacklevel=user_stacklevel(),
        )


def check_memory(
    model: torch.nn.Module, encoded: Sequence[EncodedTrace], config: AttributionConfig, *, free: int | None = None
) -> dict | None:
    """Refuse (:class:`MemoryEstimateError`) a run whose longest trace obviously cannot fit in the free
    memory of the model's device: a lower bound (:func:`~lrm_interp.model.forward.memory_lower_bound`)
    of what one pass over it needs beyond the weights exceeds ``free`` (default: the device's free
    memory now). Returns the estimate (``None`` when unknown or skipped with
    ``LRM_INTERP_SKIP_MEMORY_CHECK=1``; the variable is read by :func:`lrm_interp.checks.env_flag`:
    ``false`` / ``no`` keep the check, a value that is neither yes nor no is refused, H9-SMC)."""
    if env_flag(SKIP_MEMORY_CHECK_ENV) or not encoded:
        return None
    longest = max(encoded, key=len)
    if config.method != "attribution":
        grads = "none"
    elif (
        config.mode == "exact"
        and config.prefix_cache
        and cache_support(model, gradient_checkpointing=config.gradient_checkpointing)[0]
    ):
        grads = "windows"
    else:
        grads = "full_checkpointed" if config.gradient_checkpointing else "full"
    parts = memory_lower_bound(model, len(longest), gradients=grads, dtype=config.torch_compute_dtype)
    device = input_device(model)
    if free is None:
        free = available_memory(device)
    need = sum(parts.values())
    est = {
        "longest_trace": longest.trace_id,
        "tokens": len(longest),
        "gradients": grads,
        "bytes_at_least": need,
        "free_bytes": free,
        "device": str(device),
    }
    if free is not None and parts and need > free:
        detail = ", ".join(f"{k} {_gib(v)}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
        raise MemoryEstimateError(
            f"trace {longest.trace_id} ({len(longest)} tokens) needs at least {_gib(need)} on {device} beyond the "
            f"weights ({detail}) but {_gib(free)} is free: the run cannot fit. Shorten the traces (max_tokens=N), "
            "use mode='exact' with prefix_cache, gradient_checkpointing=True, compute_dtype='bf16', an attention "
            f"implementation other than eager, or a device with more memory ({SKIP_MEMORY_CHECK_ENV}=1 skips this "
            "check)"
        )
    return est


def _absent_behaviors(
    behaviors: Sequence[str],
    encoded: Sequence[EncodedTrace],
    skipped: Sequence[dict],
    config: AttributionConfig,
    *,
    warn: bool,
) -> tuple[list[str], dict[str, dict]]:
    """The requested behaviours without a usable span, and per behaviour what became of its spans.

    A span is usable when it survived tokenization and the context (``encoded``) and, for
    ``method="attribution"`` or ``"patching"``, is scorable (a behaviour whose spans all lack a
    predictable token would get an all-zero row). Returns ``(absent, {behaviour: {"labelled", "dropped",
    "reasons": {reason: count}}})``. Absent behaviours are left out of the result (never saved
    as an all-zero ranking) and warned about with their counts; when every requested
    behaviour is absent the run is refused (``ValueError``).
    """
    usable = {sp.behavior for e in encoded for sp in e.spans if config.method not in SPAN_LOSS_METHODS or sp.scorable}
    absent = [b for b in behaviors if b not in usable]
    info: dict[str, dict] = {}
    for b in absent:
        mine = [s for s in skipped if s["behavior"] == b]
        reasons: dict[str, int] = {}
        for s in mine:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        info[b] = {
            "labelled": len(mine) + sum(len(e.spans_of(b)) for e in encoded),
            "dropped": len(mine),
            "reasons": reasons,
        }
    if not absent:
        return absent, info

    def say(b: str) -> str:
        d = info[b]
        if not d["labelled"]:
            return f"{b} (no span labelled in the data)"
        why = "; ".join(f"{n} {r}" for r, n in d["reasons"].items())
        return f"{b} (all {d['labelled']} span(s) unusable: {why})"

    listed = ", ".join(say(b) for b in absent)
    if len(absent) == len(behaviors):
        raise ValueError(f"no requested behaviour has a usable span: {listed}; nothing to attribute")
    if warn:
        warnings.warn(
            f"{len(absent)} behaviour(s) without a usable span are left out of the result (no ranking): "
            f"{listed}; listed in provenance['absent_behaviors'] and ['absent_spans']",
            stacklevel=user_stacklevel(),
        )
    return absent, info


def _trace_key(trace: ReasoningTrace, enc: EncodedTrace) -> str:
    """A trace's partial key: its content fingerprint, plus (when it was cut: ``max_tokens`` or the
    model's context) the length and a fingerprint of the tokens kept, so a trace tokenized or cut
    differently is recomputed, never served from a partial of another cut."""
    key = trace.fingerprint()
    if not enc.truncated:
        return key
    ids = enc.input_ids.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    return f"{key}:cut{len(enc)}-{hashlib.blake2b(ids, digest_size=8).hexdigest()}"


def attribution_sites(model: Any, sites: Any) -> list[Site]:
    """The sites ``sites`` (``config.sites``) names, all inside the decoder layers: the output head
    cannot be scored (its output is read at the predicted positions, not the span's; a pattern
    matching it ended in an internal "MaskedSum weights are ..." error, H7-API6). A regex matching
    it scores the other sites it matches (refused when it matches the head only); a list naming it
    is refused naming it."""
    found = resolve_sites(model, sites)
    head = [s for s in found if s.kind == "lm_head"]
    if not head:
        return found
    inside = [s for s in found if s.kind != "lm_head"]
    if isinstance(sites, str) and inside:
        return inside
    some = [s.name for s in find_sites(model)][:2]
    raise ValueError(
        f"sites {sites!r} names the output head {head[0].name!r}, which attribution does not score (it "
        f"scores the linear sites inside the decoder layers, e.g. {', '.join(some)}); leave it out"
    )


@checked_arguments
def plan_attribution(
    model: Any,
    dataset: Any,
    config: AttributionConfig,
    *,
    tokenizer: Any = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    warn: bool = True,
    overwrite: bool = False,
) -> AttributionPlan:
    """Step 1 of :func:`attribute`: check and prepare everything; no statistic is computed.

    Traces longer than the model's context (:func:`~lrm_interp.model.forward.context_limit`) are
    refused, truncated, skipped or run past it as ``config.overlong`` says (counted in ``extra["overlong"]``);
    a run whose longest trace obviously cannot fit in memory is refused (:func:`check_memory`).
    A finished result in ``out_dir`` is checked here (and again before the save): one of another run
    or other trace ids is refused, one of edited traces (same ids) unless ``overwrite``
    (:func:`~lrm_interp.attribution.resume.check_finished_result`).
    """
    if not isinstance(config, AttributionConfig):
        raise TypeError(f"config must be an AttributionConfig, got {type(config).__name__}")
    check_dataset_argument(dataset)  # before the model loads (H7-API1)
    if out_dir is not None:
        check_out_folder(out_dir, "out_dir")  # a file there: refused before any work (H7-API7)
    model, tokenizer = load_model(model, tokenizer=tokenizer)
    _check_tokenizer(model, tokenizer)
    check_tokenizer_fits(model, tokenizer, "attribute")  # another model's tokenizer (H14-TKS)
    ds = load_dataset(dataset)
    if len(ds) == 0:
        raise ValueError("the dataset has no traces")
    present = ds.behaviors()
    behaviors = (
        list(config.behaviors) if config.behaviors is not None else [b for b in TARGET_BEHAVIORS if b in present]
    )
    if not behaviors:
        raise ValueError(
            f"no target behaviour {TARGET_BEHAVIORS} occurs in the data (labels present: {present}); "
            "choose behaviours it labels (behaviors=[...], --behaviors LABEL ...)"
        )
    sites = attribution_sites(model, config.sites)
    prov = model_provenance(model, tokenizer)  # fingerprints; non-finite weights raise here

    n_given = len(ds)
    ds, encoded, overlong, left_out = _tokenize(
        ds, tokenizer, model, config, behaviors=behaviors, progress=progress, warn=warn
    )
    memory = check_memory(model, encoded, config)
    skipped: list[dict] = list(left_out)
    for enc, t in zip(encoded, ds):
        for idx, reason in enc.dropped:
            skipped.append(
                {"trace": t.id, "span": idx, "behavior": t.spans[idx].behavior, "reason": reason, "used_by": []}
            )
        if config.method in SPAN_LOSS_METHODS:
            for sp in enc.spans:
                if sp.behavior in behaviors and not sp.scorable:
                    skipped.append(
                        {
                            "trace": t.id,
                            "span": sp.index,
                            "behavior": sp.behavior,
                            "reason": "no predictable token (a one-token span at position 0)",
                            "used_by": ["dom"],
                        }
                    )
    absent, absent_spans = _absent_behaviors(behaviors, encoded, skipped, config, warn=warn)
    run_key = {
        "config": config.to_dict(),
        "weights_fingerprint": prov["weights_fingerprint"],
        "config_fingerprint": prov["config_fingerprint"],
        "tokenizer_fingerprint": prov["tokenizer"]["fingerprint"],
        "sites": [s.name for s in sites],
        # the context the traces were cut at / checked against: a resumed run on a model with another
        # context (same weights) must not reuse traces cut elsewhere
        "context": {"limit": overlong["limit"], "overlong": config.overlong},
    }
    out = Path(out_dir) if out_dir is not None else None
    trace_keys = {t.id: _trace_key(t, e) for t, e in zip(ds, encoded)}
    dataset_key = {
        "ids_fingerprint": trace_ids_fingerprint(list(trace_keys)),
        "n_traces": len(ds),
        "contents": {t.id: t.fingerprint() for t in ds},
    }
    if out is not None:  # a finished result of another run or other traces is never replaced
        check_finished_result(out, run_key, dataset=dataset_key, overwrite=overwrite)
    store = PartialStore(out / "partial" if out is not None else None, run_key)
    extra: dict[str, Any] = {"overlong": overlong, "memory_estimate": memory, "absent_spans": absent_spans}
    if len(ds) != n_given:
        extra["overlong"]["traces_given"] = n_given
    return AttributionPlan(
        model,
        tokenizer,
        config,
        ds,
        sites,
        behaviors,
        absent,
        encoded,
        trace_keys,
        skipped,
        prov,
        store,
        out,
        extra,
        run_key=run_key,
        dataset_key=dataset_key,
        overwrite=overwrite,
    )


@checked_arguments
def dom_stage(
    plan: AttributionPlan, encoded: Sequence[EncodedTrace] | None = None, *, progress: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Step 2a: per-trace DoM sums (:func:`~lrm_interp.attribution.dom.dom_trace_stats`), resumable."""
    cfg = plan.config
    items = [(e.trace_id, plan.trace_keys[e.trace_id], e) for e in (encoded if encoded is not None else plan.encoded)]
    return plan.store.run(
        "dom",
        items,
        lambda e: dom_trace_stats(
            plan.model, e, plan.sites, plan.behaviors, negatives=cfg.negatives, special_tokens=cfg.special_tokens
        ),
        progress=progress,
    )


def one_pass_reason(plan: AttributionPlan) -> str | None:
    """Why :func:`attribute` reads each trace twice (a DoM forward, then the AtP stage's passes), or
    ``None`` when one read does (:func:`one_pass_stage`).

    One pass needs ``method="attribution"``, ``mode="exact"`` with a usable prefix cache (the cache
    forward is the forward the DoM sums are taken from), ``score="paper"`` (|Σ_s dot| is û · Σ_s ḡ_s:
    the gradient sums suffice; ``"code"`` needs each span's |dot|), no ``compute_dtype`` (the DoM
    forward runs at the model's dtype, the AtP passes under autocast: one forward cannot be both) and
    every site inside the decoder (:func:`~lrm_interp.attribution.atp.decoder_holds_sites`)."""
    cfg = plan.config
    if cfg.method != "attribution":
        why = ": the patches need the steering vectors before the pass" if cfg.method == "patching" else ""
        return f"method={cfg.method!r}{why}"
    if cfg.mode != "exact":
        return f"mode={cfg.mode!r}: its backward runs over the prefix, not against a cache"
    path = gradient_path(plan) or {}
    if path.get("path") != "prefix_cache":
        return f"no prefix cache ({path.get('reason')})"
    if cfg.score != "paper":
        return f"score={cfg.score!r} needs each span's |dot|, i.e. each span's gradient until the vectors exist"
    if cfg.compute_dtype is not None:
        return "compute_dtype is set: the DoM forward runs at the model's dtype, the AtP passes under autocast"
    if not decoder_holds_sites(plan.model, plan.sites):
        return "a site lies outside the decoder (the LM head): the cache forward does not run it"
    return None


@checked_arguments
def one_pass_stage(
    plan: AttributionPlan, encoded: Sequence[EncodedTrace] | None = None, *, progress: bool = True
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Steps 2a + the passes of 2b in one read per trace (:func:`~lrm_interp.attribution.atp.one_pass_trace_stats`),
    resumable: ``(DoM sums, span-gradient sums)`` per trace, kept as ``partial/dom/`` (the very files of
    :func:`dom_stage`) and ``partial/grad/`` (keyed by the trace alone: the gradients do not depend on
    the steering vectors). A trace with both partials is reused; otherwise both are computed (one
    pass gives both) and written. :func:`atp_stage` with ``gradients=`` then forms the dots."""
    cfg = plan.config
    store = plan.store
    cd = store.counts.setdefault("dom", {"computed": 0, "reused": 0, "stale": 0})
    cg = store.counts.setdefault("grad", {"computed": 0, "reused": 0, "stale": 0})
    todo = list(encoded if encoded is not None else plan.encoded)
    doms: list[dict[str, torch.Tensor]] = []
    grads: list[dict[str, torch.Tensor]] = []
    for e in tqdm(todo, desc=f"DoM + AtP gradients ({len(todo)} traces)", disable=not progress, unit="trace"):
        key = plan.trace_keys[e.trace_id]
        d, d_stale = store.get("dom", e.trace_id, key)
        g, g_stale = store.get("grad", e.trace_id, key)
        if d is None or g is None:
            d, g = one_pass_trace_stats(
                plan.model,
                e,
                plan.sites,
                plan.behaviors,
                negatives=cfg.negatives,
                special_tokens=cfg.special_tokens,
                off_by_one=cfg.off_by_one,
                gradient_checkpointing=cfg.gradient_checkpointing,
                progress=progress,
            )
            store.put("grad", e.trace_id, key, g)  # gradients first: a trace with its DoM partial is complete
            store.put("dom", e.trace_id, key, d)
            for c, stale in ((cd, d_stale), (cg, g_stale)):
                c["computed"] += 1
                c["stale"] += int(stale)
        else:
            cd["reused"] += 1
            cg["reused"] += 1
        doms.append(d)
        grads.append(g)
    if progress and store.root is not None and (cd["reused"] or cd["stale"]):
        tqdm.write(f"dom + grad: reused {cd['reused']} of {len(todo)} traces from {store.root}")
    return doms, grads


def reduce_dom(plan: AttributionPlan, stats: Sequence[dict[str, torch.Tensor]]) -> DoMResult:
    """Step 3a: steering vectors from the per-trace sums of every trace."""
    return dom_aggregate(stats, plan.sites, plan.behaviors, weighting=plan.config.weighting)


def live_behaviors(plan: AttributionPlan, dom: DoMResult) -> list[str]:
    """Behaviours with at least one trace in D+ (the others score 0 and get no AtP pass)."""
    return [b for b in plan.behaviors if dom.n_traces.get(b, 0) > 0]


def _vector_keyed(
    plan: AttributionPlan, dom: DoMResult, encoded: Sequence[EncodedTrace] | None
) -> tuple[list[str], list[tuple[str, str, EncodedTrace]]]:
    """Live behaviours and the ``(trace id, partial key, trace)`` items of a stage that uses the
    steering vectors: each key includes their fingerprint, so a change anywhere in the data (which
    moves every vector) recomputes every trace."""
    live = live_behaviors(plan, dom)
    vfp = tensors_fingerprint({b: dom.vectors[b] for b in live})
    items = [
        (e.trace_id, f"{plan.trace_keys[e.trace_id]}:{vfp}", e)
        for e in (encoded if encoded is not None else plan.encoded)
    ]
    return live, items


@checked_arguments
def atp_stage(
    plan: AttributionPlan,
    dom: DoMResult,
    encoded: Sequence[EncodedTrace] | None = None,
    *,
    progress: bool = True,
    gradients: Sequence[dict[str, torch.Tensor]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Step 2b: per-trace AtP dot products (:func:`~lrm_interp.attribution.atp.atp_trace_stats`), resumable.

    Each partial's key includes the fingerprint of the steering vectors it used, so a change
    anywhere in the data (which moves every vector) recomputes every trace. ``gradients``: the
    span-gradient sums of :func:`one_pass_stage` for the same traces, in order: then no model pass
    runs here, only their dot products with the vectors.
    """
    cfg = plan.config
    live, items = _vector_keyed(plan, dom, encoded)
    by_id = {it[0]: g for it, g in zip(items, gradients)} if gradients is not None else {}
    if gradients is not None and len(gradients) != len(items):
        raise ValueError(f"{len(gradients)} gradient statistics for {len(items)} traces")
    return plan.store.run(
        "atp",
        items,
        lambda e: atp_trace_stats(
            plan.model,
            e,
            plan.sites,
            live,
            dom.vectors,
            mode=cfg.mode,
            off_by_one=cfg.off_by_one,
            gradient_checkpointing=cfg.gradient_checkpointing,
            compute_dtype=cfg.torch_compute_dtype,
            prefix_cache=cfg.prefix_cache,
            progress=progress,
            **({"gradients": by_id[e.trace_id]} if gradients is not None else {}),
        ),
        progress=progress,
    )


@checked_arguments
def patching_stage(
    plan: AttributionPlan, dom: DoMResult, encoded: Sequence[EncodedTrace] | None = None, *, progress: bool = True
) -> list[dict[str, torch.Tensor]]:
    """Step 2b of ``method="patching"``: per-trace real activation patching at ``config.patch_alpha``
    (:func:`~lrm_interp.attribution.atp.patching_trace_stats`), resumable like
    :func:`atp_stage` (partials under ``partial/patching/``, keyed by the steering vectors too)."""
    cfg = plan.config
    live, items = _vector_keyed(plan, dom, encoded)
    return plan.store.run(
        "patching",
        items,
        lambda e: patching_trace_stats(
            plan.model,
            e,
            plan.sites,
            live,
            dom.vectors,
            alpha=cfg.patch_alpha,
            off_by_one=cfg.off_by_one,
            prefix_cache=cfg.prefix_cache,
            compute_dtype=cfg.torch_compute_dtype,
        ),
        progress=progress,
    )


def gradient_path(plan: AttributionPlan) -> dict[str, str] | None:
    """How AtP gradients were computed: ``{"path": "prefix_cache" | "full_prefix" | "joint", "reason"}``."""
    cfg = plan.config
    if cfg.method != "attribution":
        return None
    if cfg.mode == "joint":
        return {"path": "joint", "reason": "mode='joint': one backward per trace and behaviour"}
    if not cfg.prefix_cache:
        return {"path": "full_prefix", "reason": "prefix_cache=False"}
    ok, why = cache_support(plan.model, gradient_checkpointing=cfg.gradient_checkpointing)
    if not ok:
        return {"path": "full_prefix", "reason": why}
    reason = "span windows against the cached prefix"
    switch = rope_switch(plan.model)
    if switch is not None:  # one cache per rotary regime (model/prefix_cache.py::prefix_length)
        kind, n = switch
        past = (
            "the others the cache of the whole prefix"
            if kind == "longrope"
            else "the others run on the full prefix (no cache)"
        )
        reason += (
            f"; {kind} RoPE switches its frequencies at {n} positions: windows ending within them use a cache "
            f"of at most {n} positions, {past}"
        )
    return {"path": "prefix_cache", "reason": reason}


def patching_path(plan: AttributionPlan) -> dict[str, Any] | None:
    """How ``method="patching"`` ran: ``{"path": "prefix_cache" | "full_prefix", "reason", "patch_alpha",
    "batch_size"}`` (``None`` for the other methods)."""
    cfg = plan.config
    if cfg.method != "patching":
        return None
    ok, why = cache_support(plan.model) if cfg.prefix_cache else (False, "prefix_cache=False")
    return {
        "path": "prefix_cache" if ok else "full_prefix",
        "reason": "span windows against the cached prefix" if ok else why,
        "patch_alpha": cfg.patch_alpha,
        "batch_size": PATCH_BATCH,
        "dtype": str(patching_dtype(plan.model, cfg.torch_compute_dtype)).removeprefix("torch."),
    }


@checked_arguments
def finish(
    plan: AttributionPlan, dom: DoMResult, atp_stats: Sequence[dict[str, torch.Tensor]] | None, *, warn: bool = True
) -> Attribution:
    """Step 3b: scores, counts and provenance → :class:`Attribution` (saved when the plan has ``out_dir``).

    ``atp_stats``: the per-trace statistics of :func:`atp_stage` (``method="attribution"``) or
    :func:`patching_stage` (``method="patching"``); both are aggregated on the same score scale
    (:func:`~lrm_interp.attribution.atp.aggregate_spans`)."""
    cfg, sites = plan.config, plan.sites
    behaviors = [b for b in plan.behaviors if b not in plan.absent]  # absent ones get no (all-zero) row
    scores = torch.zeros(len(behaviors), len(sites), dtype=torch.float64)
    unscorable = {b: 0 for b in behaviors}
    unresolved: dict[str, int] = {}
    if cfg.method == "dom":
        for i, b in enumerate(behaviors):
            if dom.n_traces.get(b, 0):
                for j, s in enumerate(sites):
                    scores[i, j] = dom.raw[b][s.name].double().norm() / dom.mean_all[s.name].double().norm().clamp_min(
                        1e-12
                    )
    else:
        live = live_behaviors(plan, dom)
        key = "real" if cfg.method == "patching" else "dots"
        res = atp_aggregate(atp_stats or [], sites, live, score=cfg.score, key=key)
        for i, b in enumerate(behaviors):
            if b in live:
                scores[i] = res.scores[live.index(b)].double()
                unscorable[b] = res.n_skipped.get(b, 0)
        n_bad = sum(unscorable.values())
        if n_bad and warn:
            warnings.warn(
                f"{n_bad} span(s) cannot be scored by {_METHOD_WORDS[cfg.method]} (no predictable token): they "
                f"enter the steering vectors but not the scores; per behaviour {unscorable}; listed in "
                "provenance['skipped_spans']",
                stacklevel=user_stacklevel(),
            )
        if cfg.method == "patching":
            note = low_precision_note(
                patching_dtype(plan.model, cfg.torch_compute_dtype),
                [cfg.patch_alpha],
                name="patch_alpha",
                meaning="the scores rank rounding more than the modules",
            )
            if note is not None and warn:
                warnings.warn(note, stacklevel=user_stacklevel())
            unresolved = _unresolved(atp_stats or [], live, len(sites))
            bad = {b: n for b, n in unresolved.items() if n}
            if bad and warn:
                warnings.warn(
                    f"the patch at patch_alpha {cfg.patch_alpha:g} changed no span loss at some sites (every effect "
                    f"exactly 0, below the resolution of the model's activations): per behaviour, of {len(sites)} "
                    f"sites: {bad}; their scores are ties at 0 (their ranks say nothing); use a larger patch_alpha "
                    "(--patch-alpha); counted in provenance['counts']['unresolved_sites']",
                    stacklevel=user_stacklevel(),
                )
    ov = plan.extra.get("overlong") or {}
    overlong_traces = {"truncated": int(ov.get("n_truncated", 0)), "skipped": int(ov.get("n_skipped", 0))}
    if ov.get("n_extrapolated", 0):  # only then, so results of the other policies keep their shape
        overlong_traces["extrapolated"] = int(ov["n_extrapolated"])
    counts = {
        "traces": len(plan.dataset),
        "spans": {b: sum(len(e.spans_of(b)) for e in plan.encoded) for b in behaviors},
        "traces_with_behavior": {b: dom.n_traces.get(b, 0) for b in behaviors},
        "tokens": {b: dom.n_tokens.get(b, 0) for b in behaviors},
        "unscorable_spans": unscorable,
        "dropped_spans": sum(1 for s in plan.skipped if not s["used_by"]),
        "overlong_traces": overlong_traces,
        **({"unresolved_sites": unresolved} if cfg.method == "patching" else {}),
    }
    report = getattr(plan.dataset, "report", None)
    # paper-layout outputs without an annotation file: left out by the loader (warned), listed here
    kept = {t.id for t in plan.dataset}
    unannotated = [
        f.trace_id
        for f in getattr(report, "files", ())
        if getattr(f, "status", None) == "missing annotation" and f.trace_id not in kept
    ]
    # a rerun into this run's finished result keeps its dataset name (a link's name renamed it, H17-SYM);
    # a finished result of another run is refused before the save (check_finished_result below)
    recorded = recorded_dataset_name(plan.out_dir) if plan.out_dir is not None and plan.run_key is not None else None
    dataset_name = recorded or plan.dataset.name
    provenance = {
        "lrm_interp": __version__,
        "model": plan.model_provenance,
        "settings": cfg.to_dict(),
        "n_sites": len(sites),
        "counts": counts,
        "skipped_spans": plan.skipped,
        "absent_behaviors": plan.absent,
        "resume": plan.store.counts,
        "gradient_path": gradient_path(plan),
        **({"patching_path": patching_path(plan)} if cfg.method == "patching" else {}),
        **plan.extra,
        "dataset": {
            "name": dataset_name,
            "n_traces": len(plan.dataset),
            "ids_fingerprint": trace_ids_fingerprint(list(plan.trace_keys)),
            "contents_fingerprint": trace_contents_fingerprint({t.id: t.fingerprint() for t in plan.dataset}),
            "parse_report": report.summary() if report is not None and hasattr(report, "summary") else None,
            "unannotated_left_out": unannotated,
        },
    }
    result = Attribution(
        behaviors=tuple(behaviors),
        sites=tuple(sites),
        scores=scores,
        method=cfg.method,
        vectors={b: dict(dom.vectors[b]) for b in behaviors if dom.n_traces.get(b, 0)},
        provenance=provenance,
    )
    if plan.out_dir is not None:
        if plan.run_key is not None:  # a finished result that appeared meanwhile must be this run's (H7-K4)
            check_finished_result(plan.out_dir, plan.run_key, dataset=plan.dataset_key, overwrite=plan.overwrite)
        tables = [n for n in ("scores.csv", "heatmap.png") if (plan.out_dir / n).is_file()]
        result.save(plan.out_dir, overwrite=True, keep_partial=True)
        if tables and not all((plan.out_dir / n).is_file() for n in tables):
            # the save removed the old result's tables (its scores differ, if only by the summation order of
            # traces given in another order): they are this result's again, not lost (H22-PYTAB)
            result.write_tables(plan.out_dir)
    return result


def _unresolved(stats: Sequence[dict[str, torch.Tensor]], behaviors: Sequence[str], n_sites: int) -> dict[str, int]:
    """Per behaviour, the sites whose real patching effect (``effect/<b>``, ``[n_spans_b, n_sites]``
    per trace) is exactly 0 on every span of every trace (:func:`~lrm_interp.attribution.atp.unresolved_sites`)."""
    out = {}
    for b in behaviors:
        eff = [st[f"effect/{b}"] for st in stats if f"effect/{b}" in st and st[f"effect/{b}"].numel()]
        out[b] = unresolved_sites(torch.cat(eff)) if eff else 0
    return out


@checked_arguments
def attribute(
    model: Any,
    dataset: ReasoningDataset | Sequence[ReasoningTrace] | str | os.PathLike,
    *,
    config: AttributionConfig | None = None,
    tokenizer: Any = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> Attribution:
    """Score every linear site of ``model`` for each reasoning behaviour.

    Args:
        model: an HF causal LM object, a local model directory, or an alias (``"toy"``,
            ``"smollm2-135m"``).
        dataset: :class:`ReasoningDataset`, list of traces, JSONL path or paper-layout dir.
        config: an :class:`~lrm_interp.attribution.config.AttributionConfig`; or give its
            fields as keywords (``mode="joint"``, ``k_context=1``, ``behaviors=[...]``,
            ``sites="mlp"``, ``compute_dtype=torch.bfloat16`` ...; both: keywords override).
            Everything is validated before any work. ``method="patching"`` (with
            ``patch_alpha``, default 1) scores by exact activation patching instead of AtP:
            same score scale, one forward of each span's window per site (docs/method.md).
        tokenizer: needed when ``model`` is an object without a tokenizer of its own.
        out_dir: write the result there and keep per-trace partials to resume a killed run.
        progress: progress bars.
        overwrite: replace a finished result in ``out_dir`` computed on other contents of the same
            traces (same ids; prompts, responses or spans edited): refused without it, so that a
            rerun never replaces a result silently. The traces that did not change are reused from
            its partials. A result of another run (settings, weights, tokenizer, sites, trace ids)
            is never replaced: delete it or choose another ``out_dir``.

    Returns:
        :class:`Attribution` with scores ``[n_behaviors, n_sites]`` and steering vectors; its
        provenance records the model (weights fingerprint, compression record), tokenizer,
        settings, counts, skipped spans and what was resumed.

    Raises:
        ContextLengthError: traces longer than the model's context, with ``overlong="error"``
            (the default; ``"truncate"`` / ``"skip"`` / ``"extrapolate"`` handle them, counted in
            ``provenance["overlong"]``), or with ``"extrapolate"`` on a model with a learned
            position table (:func:`position_table`).
        MemoryEstimateError: the longest trace obviously cannot fit in the device's free memory.
        ResumeMismatchError: ``out_dir`` holds a finished result of another run, or of edited traces
            without ``overwrite``; or partials of another run.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"attribute: overwrite must be True or False, got {overwrite!r}")
    if overwrite and out_dir is not None:
        check_overwrite_target(out_dir)
    _check_model_tokenizer(model, tokenizer)
    if config is not None and not isinstance(config, AttributionConfig):  # a raw AttributeError (H28-APITYPES)
        raise TypeError(
            f"attribute: config must be an AttributionConfig, got {type(config).__name__}; give its fields as "
            "keywords (attribute(model, data, mode='joint', ...)) or AttributionConfig(**fields)"
        )
    cfg = config or AttributionConfig()
    if options:
        cfg = cfg.replace(**options)  # sites given as Site objects: the config reads their names
    check_prefix_cache_applies(cfg)
    env_flag(SKIP_MEMORY_CHECK_ENV)  # a value that is neither yes nor no: refused before the model loads
    rank, world = distributed.context()
    check_dataset_argument(dataset)  # before the model loads (H7-API1)
    if out_dir is None or rank != 0:
        return _attribute(model, dataset, cfg, tokenizer, out_dir, progress and rank == 0, rank, world, overwrite)
    check_out_folder(out_dir, "out_dir")  # a file there: refused before any work (H7-API7)
    work = Path(out_dir) / "partial"  # this run's (no state of an earlier run there: at most a caller's lock)
    fresh = not work.is_dir() or all(p.name == LOCK_FILE for p in work.iterdir())
    with out_dir_lock(out_dir):  # one live run per result folder (H7-K4)
        try:
            return _attribute(model, dataset, cfg, tokenizer, out_dir, progress, rank, world, overwrite)
        except UnresolvedPatchError:
            # partials keyed by a patch_alpha that resolves nothing would refuse the rerun with a larger
            # one ("other settings"): this run's own are removed, a resumed run's kept (H11-ALPHA)
            if fresh:
                clear_partials(work)
            raise


def _check_model_tokenizer(model: Any, tokenizer: Any) -> None:
    """``TypeError`` for a model and tokenizer given swapped (``attribute(tok, ds, tokenizer=model)``:
    the tokenizer was read as a model directory named by its ~1000-character repr, H15-ASW), or a
    torch model as ``tokenizer=``; a model given as a path or alias is loaded later."""
    if isinstance(model, (str, os.PathLike)):
        if isinstance(tokenizer, torch.nn.Module):
            raise TypeError(
                f"attribute: tokenizer must be a tokenizer (with encode and decode), got {type(tokenizer).__name__} "
                "(a torch model: pass it as model, and its tokenizer as tokenizer=)"
            )
        return
    if isinstance(tokenizer, torch.nn.Module) or (
        not isinstance(model, torch.nn.Module) and callable(getattr(model, "encode", None))
    ):
        check_model_and_tokenizer(model, tokenizer, "attribute")


def check_prefix_cache_applies(cfg: AttributionConfig) -> None:
    """Refuse ``prefix_cache=False`` where it changes nothing: attribution patching in
    ``mode="joint"`` takes one backward over the whole trace and never caches a prefix, so the flag
    would only be recorded and make a resume of the same folder look like another run (H8-AF5).
    (The config itself accepts it: ``faithfulness`` runs real patching with the same config, where
    the prefix cache does apply.)"""
    if cfg.method == "attribution" and cfg.mode == "joint" and not cfg.prefix_cache:
        raise ValueError(
            "prefix_cache=False (--no-prefix-cache) does not apply to mode='joint' (one backward over the "
            "whole trace, no prefix is cached): drop it"
        )


def _attribute(
    model: Any,
    dataset: Any,
    cfg: AttributionConfig,
    tokenizer: Any,
    out_dir: str | os.PathLike | None,
    progress: bool,
    rank: int,
    world: int,
    overwrite: bool = False,
) -> Attribution:
    plan = plan_attribution(
        model,
        dataset,
        cfg,
        tokenizer=tokenizer,
        out_dir=out_dir,
        progress=progress,
        warn=rank == 0,
        overwrite=overwrite,
    )
    n = len(plan.encoded)
    mine = distributed.shard(n, rank, world)
    local = [plan.encoded[i] for i in mine]
    why_two = one_pass_reason(plan)
    plan.extra["passes"] = {"passes": 1 if why_two is None else 2, "reason": why_two or _ONE_PASS}
    atp = None
    if why_two is None:  # one read per trace: DoM sums and span gradients, then dots (atp_stage)
        dstats, grads = one_pass_stage(plan, local, progress=progress)
        dom = reduce_dom(plan, distributed.gather_ordered(dstats, mine, n, world))
        del dstats
        if live_behaviors(plan, dom):
            atp = distributed.gather_ordered(
                atp_stage(plan, dom, local, progress=progress, gradients=grads), mine, n, world
            )
        del grads
    else:
        dom = reduce_dom(plan, distributed.gather_ordered(dom_stage(plan, local, progress=progress), mine, n, world))
        if cfg.method in SPAN_LOSS_METHODS and live_behaviors(plan, dom):
            stage = patching_stage if cfg.method == "patching" else atp_stage
            atp = distributed.gather_ordered(stage(plan, dom, local, progress=progress), mine, n, world)
    plan.store.counts = distributed.sum_counts(plan.store.counts, world)
    if world > 1:
        plan.extra["distributed"] = {"world_size": world, "backend": _backend(), "rank": rank}
        if rank != 0:
            plan.out_dir = None  # rank 0 writes the result
    result = finish(plan, dom, atp, warn=rank == 0)
    distributed.barrier(world)  # rank 0 has written the result before any rank goes on
    return result


_METHOD_WORDS = {"attribution": "attribution patching", "patching": "activation patching"}
_ONE_PASS = (
    "one read per trace: the prefix-cache forward over the whole trace also takes the DoM sums, "
    "span-gradient sums are dotted with the steering vectors after the DoM reduction"
)


def _backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend())


__all__ = [
    "attribute",
    "AttributionPlan",
    "plan_attribution",
    "dom_stage",
    "one_pass_stage",
    "one_pass_reason",
    "reduce_dom",
    "atp_stage",
    "patching_stage",
    "patching_path",
    "finish",
    "live_behaviors",
    "check_memory",
    "position_table",
    "ContextLengthError",
    "MemoryEstimateError",
    "SKIP_MEMORY_CHECK_ENV",
]
