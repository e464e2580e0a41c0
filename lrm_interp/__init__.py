"""lrm_interp: which weights of a reasoning model matter for reasoning, and what compression does to them.

Main entry points::

    import lrm_interp
    result = lrm_interp.attribute(model, dataset)      # -> Attribution
    result.heatmap(); result.top(10); result.to_dataframe()
    shift = lrm_interp.compare(result_fp16, result_3bit)

    sites = lrm_interp.find_sites(model)
    sal = lrm_interp.build_saliency("magnitude", model, sites)          # or "attribution", ... (SALIENCIES)
    masks = lrm_interp.build_masks(sites, "global_top", 0.02, saliency=sal)
    lrm_interp.quantize_model_(model, bits=3, masks=masks)              # in place; prune_model_ likewise
    variant, report = lrm_interp.apply_compression(model, lrm_interp.parse_compression("wanda:2:4"), calib=ids)
    scores = lrm_interp.score_outputs("bench", items)  # outputs of run_suite / run_benchmark (lrm-interp bench)

Compression (``compress/``), protection (``protect/``), evaluation and benchmarks
(``evaluation/``; the tasks: :mod:`lrm_interp.benchmarks`) and the protection experiment have
their entry points here too (``__all__``); the rest stays in its stage's module.

The package is laid out by stage of the data path, and imports only go forward along it
(docs/architecture.md): ``data/`` (traces, tokens, annotation, benchmarks, the toy task
generators), ``model/`` (loading, sites, forward plumbing, capture), ``attribution/`` (DoM,
AtP, results), ``compress/`` (calibration, quantization, pruning), ``protect/`` (saliency,
masks, exports), ``evaluation/``, ``toy/`` (the shipped toy model), ``experiments/`` and
``cli/``. Every public name below is imported lazily, on first use: ``import lrm_interp`` itself
imports no module of the package (nor torch).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_LAZY: dict[str, str] = {
    "attribute": "lrm_interp.attribution.pipeline",
    "AttributionConfig": "lrm_interp.attribution.config",
    "Attribution": "lrm_interp.attribution.results",
    "ImportanceShift": "lrm_interp.attribution.results",
    "compare": "lrm_interp.attribution.results",
    "load_dataset": "lrm_interp.data.loading",
    "load_paper_layout": "lrm_interp.data.paper_layout",
    "encode_trace": "lrm_interp.data.tokens",
    "BEHAVIORS": "lrm_interp.data.traces",
    "TARGET_BEHAVIORS": "lrm_interp.data.traces",
    "BehaviorSpan": "lrm_interp.data.traces",
    "ReasoningDataset": "lrm_interp.data.traces",
    "ReasoningTrace": "lrm_interp.data.traces",
    "TraceFormatError": "lrm_interp.data.traces",
    "load_model": "lrm_interp.model.loading",
    "Site": "lrm_interp.model.sites",
    "find_sites": "lrm_interp.model.sites",
    "parse_site_name": "lrm_interp.model.sites",
    "Capture": "lrm_interp.model.capture",
    # compression: quantizers, pruners, spec strings ("rtn:3", "gptq:4", "wanda:2:4"), calibration
    "quantize_model_": "lrm_interp.compress.quant.apply",
    "QuantReport": "lrm_interp.compress.quant.apply",
    "prune_model_": "lrm_interp.compress.prune.apply",
    "PruneReport": "lrm_interp.compress.prune.apply",
    "CompressionSpec": "lrm_interp.compress.specs",
    "parse_compression": "lrm_interp.compress.specs",
    "apply_compression": "lrm_interp.compress.specs",
    "save_quantized": "lrm_interp.compress.quant.format",
    "load_quantized": "lrm_interp.compress.quant.format",
    "calibration_ids": "lrm_interp.compress.calibration",
    # protection: saliencies, masks and their file, bits per weight, module-level mixed precision
    "SALIENCIES": "lrm_interp.protect.registry",
    "build_saliency": "lrm_interp.protect.registry",
    "ProtectionMask": "lrm_interp.protect.masks",
    "MaskSet": "lrm_interp.protect.masks",
    "build_masks": "lrm_interp.protect.policies",
    "save_masks": "lrm_interp.protect.encoding",
    "load_masks": "lrm_interp.protect.encoding",
    "bits_per_weight": "lrm_interp.protect.encoding",
    "BitAllocation": "lrm_interp.protect.bit_allocation",
    "allocate_bits": "lrm_interp.protect.bit_allocation",
    "quantization_errors": "lrm_interp.protect.bit_allocation",
    "quantize_allocation_": "lrm_interp.protect.bit_allocation",
    "uniform_allocation": "lrm_interp.protect.bit_allocation",
    # evaluation and benchmarks (the tasks themselves: lrm_interp.benchmarks)
    "divergence": "lrm_interp.evaluation.divergence",
    "wilson_interval": "lrm_interp.evaluation.intervals",
    "bootstrap_interval": "lrm_interp.evaluation.intervals",
    "GenerationSettings": "lrm_interp.evaluation.backends",
    "run_benchmark": "lrm_interp.evaluation.bench_run",
    "run_suite": "lrm_interp.evaluation.bench_suite",
    "SuiteConfig": "lrm_interp.evaluation.bench_suite",
    "score_outputs": "lrm_interp.evaluation.bench_score",
    "BenchScores": "lrm_interp.evaluation.bench_score",
    # the protection experiment (lrm-interp experiment protection)
    "ExperimentSettings": "lrm_interp.experiments.protection",
    "ProtectionPlanner": "lrm_interp.experiments.protection",
    "run_protection_experiment": "lrm_interp.experiments.protection_table",
    # the study (lrm-interp study / quickstart): attribute → masks and bits → variants → report
    "run_study": "lrm_interp.experiments.study",
    "StudySettings": "lrm_interp.experiments.study",
    "StudyResult": "lrm_interp.experiments.study",
    # the package's atomic writers (temp file + fsync + rename), for scripts writing results: the
    # checked ones (_PUBLIC_AS), which never replace a file of a finished result of a command
    "atomic_write_text": "lrm_interp._io",
    "atomic_write_bytes": "lrm_interp._io",
}
#: public names bound to another name of their module: ``lrm_interp._io.atomic_write_text`` is the
#: low-level writer the library writes its own results with; users get the checked one (H9-PYW)
_PUBLIC_AS = {"atomic_write_text": "checked_write_text", "atomic_write_bytes": "checked_write_bytes"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), _PUBLIC_AS.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lrm_interp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
