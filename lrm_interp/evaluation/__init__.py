"""The evaluation stage: what a model (or a compressed copy) does, measured.

=====================  ==================================================================
``generation.py``      batched greedy generation with a KV cache
``divergence.py``      KL and behaviour-span NLL between two models on annotated traces
``intervals.py``       Wilson and bootstrap confidence intervals
``backends.py``        generation backends behind one interface (transformers, vLLM, an
                       OpenAI-compatible endpoint); ``vllm_worker.py``: the vLLM subprocess
``bench_run.py``       one model variant on benchmark tasks, resumable (paper layout + JSONL)
``bench_suite.py``     models × compression specs × one backend (``lrm-interp bench run``)
``bench_score.py``     grading and paper-style tables / plots (``lrm-interp bench score``)
``output_stats.py``    statistics of generated outputs: lengths, short-vs-long split, collapse,
                       backtracking cues (``compute.py``: its old path, a deprecated re-export)
``variants.py``        re-export of :mod:`lrm_interp.compress.specs`
``serve.py``           a small OpenAI-compatible server for a local model
=====================  ==================================================================

The ``bench_*`` modules *run and score* models on the benchmark tasks, which are
:mod:`lrm_interp.data.benchmarks` (imported publicly as :mod:`lrm_interp.benchmarks`);
``benchmarks/`` at the repository root holds the package's own speed / agreement scripts
(docs/architecture.md, "Names: one per concept").
"""
