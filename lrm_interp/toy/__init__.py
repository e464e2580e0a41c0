"""The project's own small reasoning model and its synthetic tasks.

``load_toy_model()`` loads the shipped weights (``lrm_interp/assets/toy_reasoner``: a
4-layer LlamaForCausalLM on byte tokens trained by :mod:`lrm_interp.toy.train`), see
docs/toy_model.md. Tasks: :mod:`lrm_interp.data.toy_tasks` (re-exported by
:mod:`lrm_interp.toy.tasks`); evaluation and the model's own annotated traces:
:mod:`lrm_interp.toy.evaluate`. ``load_model("toy")`` finds :func:`load_toy_alias` through
the ``lrm_interp.models`` entry point this package declares (``pyproject.toml``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from lrm_interp.model.provenance import record_source


def toy_model_dir() -> Path:
    """Folder of the shipped toy model (inside the installed package)."""
    p = Path(str(resources.files("lrm_interp") / "assets" / "toy_reasoner"))
    if not (p / "model.safetensors").exists():
        raise FileNotFoundError(f"the toy model weights are missing from {p} (broken install?)")
    return p


def load_toy_model(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of the shipped toy reasoning model, offline, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = toy_model_dir()
    model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(d)
    record_source(model, {"alias": "toy", "path": "lrm_interp/assets/toy_reasoner"})
    return model, tok


def load_toy_alias(*, dtype: torch.dtype | None = None, device_map=None):
    """The ``"toy"`` alias of :func:`lrm_interp.model.loading.load_model` (``device_map`` must be ``None``/"cpu")."""
    if device_map not in (None, "cpu"):
        raise ValueError("the toy model loads on the CPU only; move it yourself afterwards")
    return load_toy_model(dtype=dtype or torch.float32)


__all__ = ["load_toy_model", "load_toy_alias", "toy_model_dir"]
