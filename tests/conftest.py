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
