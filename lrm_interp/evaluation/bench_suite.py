"""The benchmark suite: models × compressed variants × one backend, each into its own run folder.

:func:`run_suite` is the loop behind ``lrm-interp bench run``: for every model name (a local
folder, an alias such as ``toy`` or ``smollm2-135m-reasoner``, or a model served by an
OpenAI-compatible endpoint) and every compression spec (:mod:`lrm_interp.compress.specs`), it
builds the backend and calls :func:`lrm_interp.evaluation.bench_run.run_benchmark` into
``<out>/<model tag>[-<spec tag>]``. Every run folder is resumable on its own; a refused run
writes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrm_interp._io import OtherResultError, finished_result, refuse_other_result_folder
from lrm_interp.checks import checked_arguments
from lrm_interp.compress.specs import CompressionSpec, apply_compression
from lrm_interp.data.benchmarks import BenchItem
from lrm_interp.evaluation.backends import GenerationSettings
from lrm_interp.evaluation.bench_run import BenchRun, run_benchmark

BACKENDS = ("hf", "vllm", "openai")

#: ``tokenizer -> calibration ids`` (GPTQ, SparseGPT, Wanda); called once per local model
Calibration = Callable[[Any], Any]


@dataclass(frozen=True)
class VLLMOptions:
    """How the vLLM backend is started (:class:`lrm_interp.evaluation.backends.VLLMBackend`)."""

    python: str | None = None
    max_model_len: int | None = None
    log: str | None = None


@dataclass(frozen=True)
class SuiteConfig:
    """What :func:`run_suite` runs: generation settings, compressed variants and the backend."""

    settings: GenerationSettings
    specs: tuple[CompressionSpec, ...] = (CompressionSpec(),)
    backend: str = "hf"
    group_size: int | None = 128
    device: str = "cpu"
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not self.specs:
            raise ValueError("specs: give at least one compression spec (CompressionSpec() is the original)")
        if self.backend == "openai" and any(s.method != "none" for s in self.specs):
            raise ValueError("compression applies to local models only (hf, vllm), not to an HTTP endpoint")


def model_tag(name: str) -> str:
    """The run-folder name of a model: a folder's last part or the alias, filesystem-safe."""
    p = Path(name)
    base = p.name if p.name else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "model"


def run_folders(names: Sequence[str], specs: Sequence[CompressionSpec] = (CompressionSpec(),)) -> list[str]:
    """The run folder (tag) of every model × variant, in :func:`run_suite`'s order; ``ValueError``
    naming both when two of them share a folder (``a/m`` and ``b/m``, the same model given twice,
    or two specs with one tag): the second run would resume, or be refused by, the first one's
    folder, after the first model finished generating."""
    seen: dict[str, str] = {}
    tags = []
    for name in names:
        base = model_tag(name)
        for spec in specs:
            tag = base + (f"-{spec.tag}" if spec.tag else "")
            what = f"model {name}" + (f" with {spec.tag}" if spec.tag else "")
            if tag in seen and seen[tag] == what:
                raise ValueError(f"{what} is given twice (one run folder, {tag!r}, each): give it once")
            if tag in seen:
                raise ValueError(
                    f"{seen[tag]} and {what} would both be written to the run folder {tag!r} (a run folder "
                    "is named after the model folder's last part): give models from folders with distinct "
                    "names (rename or link one)"
                )
            seen[tag] = what
            tags.append(tag)
    return tags


def check_toy_world(model, name: str, items: Mapping[str, Sequence[BenchItem]], toy_people: int | None) -> None:
    """Refuse toy items made over another fact table than the one ``model`` learned (the knowledge
    family would ask about people it never saw, and score as if it forgot them)."""
    if not any(k in items for k in ("math", "logic", "knowledge")):
        return
    from lrm_interp.data.toy_tasks import N_PEOPLE
    from lrm_interp.model.world import model_world

    learned = len(model_world(model).people)
    asked = N_PEOPLE if toy_people is None else toy_people
    if learned != asked:
        raise ValueError(
            f"model {name} learned a fact table of {learned} people (its provenance); the toy items "
            f"were made over {asked}: make them with toy_people={learned} (--toy-people {learned})"
        )


def saved_model_dir(model) -> str | None:
    """The folder ``model`` was loaded from when it still holds a safetensors checkpoint (vLLM can
    read it as is), else ``None`` (the backend then saves the in-memory weights)."""
    src = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not src or not Path(src).is_dir():
        return None
    d = Path(src)
    return str(d) if (d / "config.json").is_file() and any(d.glob("*.safetensors")) else None


def _endpoint_runs(
    names: Sequence[str], items, out: Path, cfg: SuiteConfig, endpoint, progress: bool
) -> list[BenchRun]:
    from lrm_interp.endpoint import EndpointError, EndpointNotAPI
    from lrm_interp.evaluation.backends import OpenAIBackend

    runs, checked = [], False
    for name in names:
        tag = model_tag(name)
        backend = OpenAIBackend(
            endpoint.base_url,
            name,
            api_key_env=endpoint.api_key_env,
            concurrency=endpoint.concurrency,
            retries=endpoint.retries,
            backoff=endpoint.backoff,
            max_backoff=endpoint.max_backoff,
            timeout=endpoint.timeout,
        )
        try:
            if not checked:  # an unreachable endpoint fails here, in seconds, before anything is written
                backend.check()
                checked = True
            runs.append(
                run_benchmark(
                    backend,
                    items,
                    out / tag,
                    settings=cfg.settings,
                    model=tag,
                    model_info={"served_model": name, "base_url": endpoint.base_url},
                    progress=progress,
                )
            )
        except EndpointError as e:
            if isinstance(e, EndpointNotAPI):  # running again cannot help: the URL must change (H11-NAPI)
                kept = "nothing was generated; fix --base-url"
            elif (out / tag).exists():
                kept = f"finished items are kept in {out / tag}; run again to resume"
            else:
                kept = "nothing was written"
            raise type(e)(" ".join(str(e).split()) + f"; {kept}") from e
    return runs


@checked_arguments
def run_suite(
    names: Sequence[str],
    items: Mapping[str, Sequence[BenchItem]],
    out: str | Path,
    cfg: SuiteConfig,
    *,
    endpoint: Any = None,
    calibration: Calibration | None = None,
    toy_people: int | None = None,
    load: Callable[[str], tuple[Any, Any]] | None = None,
    progress: bool = True,
) -> list[BenchRun]:
    """Benchmark every model of ``names`` and every variant of ``cfg.specs`` on ``items``.

    Args:
        names: local folders or aliases (``cfg.backend`` hf / vllm), or served model names
            (``openai``, with ``endpoint`` an :class:`lrm_interp.endpoint.EndpointConfig`).
        items: ``{task: items}`` (:func:`lrm_interp.data.benchmarks.load`).
        out: one run folder per model × variant under it.
        calibration: ``tokenizer -> ids``, needed when a spec is calibrated (GPTQ, SparseGPT, Wanda).
        toy_people: the fact table the toy items were made over (checked against each model's).
        load: ``name -> (model, tokenizer)`` (default :func:`lrm_interp.model.loading.load_model`).

    Returns one :class:`BenchRun` per run folder, in order. Raises ``ValueError`` before anything
    is loaded when two runs would share a folder (:func:`run_folders`), before anything is written
    for a model whose fact table differs from the items', and
    :class:`lrm_interp.endpoint.EndpointError` naming what was kept when an endpoint fails.
    """
    check_runs_folder(out)  # inside another result, or inside a run folder: refused before anything (H28-BENCHNEST)
    out = Path(out)
    run_folders(names, cfg.specs)  # two runs into one folder: refused before any model is loaded
    if cfg.backend == "openai":
        if endpoint is None:
            raise ValueError("backend 'openai' needs an endpoint (EndpointConfig with base_url)")
        return _endpoint_runs(names, items, out, cfg, endpoint, progress)
    if any(s.needs_calibration for s in cfg.specs) and calibration is None:
        raise ValueError(f"{', '.join(s.method for s in cfg.specs if s.needs_calibration)} need calibration data")
    if load is None:
        from lrm_interp.model.loading import load_model

        load = load_model
    from lrm_interp.model.provenance import model_provenance

    runs = []
    for name in names:
        base_tag = model_tag(name)
        model, tok = load(name)
        check_toy_world(model, name, items, toy_people)
        from lrm_interp.evaluation.generation import check_token_ids

        try:  # a tokenizer that is not the model's: refused before this model's run folder is written (H7-TE)
            check_token_ids(model, tok, ((f"{it.id} (prompt)", it.prompt) for its in items.values() for it in its))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        from lrm_interp.model.forward import check_finite_forward

        check_finite_forward(model, name)  # NaN logits from finite weights: NUL-byte outputs, exit 0 (H31-NANFWD)
        if cfg.device != "cpu":
            model = model.to(cfg.device)
        needs_calib = any(s.needs_calibration for s in cfg.specs)  # then calibration is given (checked above)
        calib = calibration(tok) if calibration is not None and needs_calib else None
        for spec in cfg.specs:
            variant, report = apply_compression(model, spec, group_size=cfg.group_size, calib=calib, progress=progress)
            tag = base_tag + (f"-{spec.tag}" if spec.tag else "")
            backend = _local_backend(cfg, variant, tok, original=spec.method == "none")
            with backend:
                runs.append(
                    run_benchmark(
                        backend,
                        items,
                        out / tag,
                        settings=cfg.settings,
                        model=tag,
                        model_info=model_provenance(variant, tok),
                        compression={**report, "base_model": base_tag},
                        progress=progress,
                    )
                )
            _add_base(out / tag, base_tag)
            if variant is not model:
                del variant
    return runs


def _local_backend(cfg: SuiteConfig, model, tok, *, original: bool):
    if cfg.backend == "hf":
        from lrm_interp.evaluation.backends import HFBackend

        return HFBackend(model, tok)
    from lrm_interp.evaluation.backends import VLLMBackend

    src = (saved_model_dir(model) if original else None) or model
    return VLLMBackend(src, tok, python=cfg.vllm.python, max_model_len=cfg.vllm.max_model_len, log=cfg.vllm.log)


def _add_base(run_dir: Path, base: str) -> None:
    """Record the base model and the folder tag in ``run.json`` (``bench score`` groups by them),
    its ``record_sha256`` recomputed (:func:`~lrm_interp.evaluation.bench_run.run_record_text`)."""
    from lrm_interp._io import atomic_write_text
    from lrm_interp.evaluation.bench_run import run_record_text

    p = run_dir / "run.json"
    meta = json.loads(p.read_text(encoding="utf-8"))
    if meta.get("base_model") != base or meta.get("tag") != run_dir.name:
        meta["base_model"], meta["tag"] = base, run_dir.name
        atomic_write_text(p, run_record_text(meta))


@checked_arguments
def check_runs_folder(out: str | Path, what: str = "out") -> None:
    """:class:`~lrm_interp._io.OtherResultError` (a ``ValueError``) when ``out``, the folder a bench
    run writes one run folder per model into, is or lies inside one model's run folder of a finished
    bench run (``B/toy``, ``B/toy/outputs``: the run was written into the other run's outputs and
    scored as one of its tasks, H28-BENCHNEST): run folders never nest, the folder that holds them
    is named as the fix. Also the Python writers' rule (:func:`~lrm_interp._io.refuse_other_result_folder`):
    never into another command's result (``A`` of ``attribute``) or one of its files or folders. A new
    folder beside another result's own files (``Q3/bench``) is free, as for every writer."""
    p = Path(out).expanduser().resolve()
    for folder in (p, *p.parents):
        res = finished_result(folder)
        if res is not None and res.kind == "bench run":
            where = "is" if folder == p else "lies inside"
            raise OtherResultError(
                f"{what} {out} {where} {folder}, one model's run folder of a bench run (its run.json): run folders "
                f"never nest; give the folder that holds the runs ({folder.parent}) to add or resume a run there, "
                "or another folder"
            )
    refuse_other_result_folder(out, "bench run", what)


__all__ = [
    "run_suite",
    "check_runs_folder",
    "run_folders",
    "SuiteConfig",
    "VLLMOptions",
    "model_tag",
    "check_toy_world",
    "saved_model_dir",
    "BACKENDS",
]
