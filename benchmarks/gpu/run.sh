#!/usr/bin/env bash
# One prepared GPU run (issue 23; docs/gpu.md). On the lent GPU, from anywhere:
#
#     bash benchmarks/gpu/run.sh                      # results into $OUT, else benchmarks/results/gpu/
#     bash benchmarks/gpu/run.sh --out DIR            # or a folder of your choice
#     bash benchmarks/gpu/run.sh --dry-run --out DIR  # the same code paths on the CPU, tiny shapes (CI)
#
# Writes DIR/gpu_results.json, DIR/gpu_results.md, DIR/gpu_logs.txt, DIR/pytest_gpu.txt; keeps to
# 450 s (--budget) in all. Every option of benchmarks/gpu/run_gpu.py passes through (--help).
#
# The package does not need to be installed: the repository root goes on PYTHONPATH. The Python is
# $PYTHON, else python3 (on the lent machine the one that holds PyTorch), else python. Wheels the
# machine lacks (e.g. llm-compressor for part e) can travel in a folder: LRM_GPU_WHEELS=DIR or --wheels DIR.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/gpu/run_gpu.py" "$@"
