"""Shared fixtures: tiny offline models of every supported family and a byte tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from lrm_interp.testing import TINY_ARCHS, byte_tokenizer, tiny_model

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
PAPER_LAYOUT = REPO / "tests" / "data" / "paper_layout"


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(params=TINY_ARCHS)
def any_tiny_model(request):
    return tiny_model(request.param, seed=0)


@pytest.fixture(params=("llama", "qwen2", "qwen3"))
def llama_like(request):
    return tiny_model(request.param, seed=0)


@pytest.fixture
def tiny_llama():
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="module")
def toy_encoded():
    """``(model, tokenizer, dataset, encoded)``: the shipped toy reasoner, its tokenizer, one gold
    trace per family (seed 4242) and those traces encoded (a fresh model per test module: tests
    compress copies of it)."""
    from lrm_interp import encode_trace
    from lrm_interp.toy import load_toy_model
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = load_toy_model()
    ds = generate_dataset(n_per_family=1, seed=4242)
    return model, tok, ds, [encode_trace(tok, t) for t in ds]


@pytest.fixture(scope="session")
def paper_layout_dir() -> Path:
    """The paper-layout annotation fixtures (copied into tests/data so CI has them)."""
    return PAPER_LAYOUT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: on a CPU-only machine they are skipped with that reason."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the lent GPU; results in docs/gpu.md)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _every_module_imported():
    """Import all of ``lrm_interp`` once, before any test patches ``load_model`` (or another
    function): a module first imported while a patch is in place (a subcommand's lazy import) would
    bind the patched function with ``from ... import name`` and keep it for every later test — an
    order-dependent failure that only shows in some subsets of the suite."""
    import importlib
    import pkgutil

    import lrm_interp

    for m in pkgutil.walk_packages(lrm_interp.__path__, "lrm_interp."):
        if m.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except ImportError:  # an optional dependency (vLLM, ...) missing here
            pass
