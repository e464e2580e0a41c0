"""The llm-compressor export, verified by really running llm-compressor (GPTQ W4A16) on a tiny
model in its own virtual environment (it pins its own transformers), then reading the saved
checkpoint: protected modules must stay dense, everything else must be packed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lrm_interp.model.sites import find_sites
from lrm_interp.protect import exports
from lrm_interp.protect.policies import modules_by_score
from lrm_interp.testing import byte_tokenizer, tiny_model

pytestmark = pytest.mark.slow
LLMCOMPRESSOR = "llmcompressor==0.14.0.1"


def _venv() -> Path:
    root = Path(os.environ.get("LRM_INTERP_CACHE", Path.home() / ".cache" / "lrm_interp")) / "venvs" / "llmcompressor"
    py = root / "bin" / "python"
    if not (root / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", LLMCOMPRESSOR], check=True)
        (root / ".ready").write_text(LLMCOMPRESSOR)
    return py


def test_llmcompressor_keeps_protected_modules_dense(tmp_path):
    model = tiny_model("llama", hidden=128, intermediate=256, heads=4, kv_heads=2)
    sites = find_sites(model)
    scores = {s.name: (10.0 if s.layer == 1 and s.block == "mlp" else 1.0) for s in sites}
    masks = modules_by_score(sites, scores, budget=0.34)  # exactly the layer-1 MLP (1/3 of the weights)
    ignore = exports.llmcompressor_ignore(masks)
    assert ignore == [
        "lm_head",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "recipe.json").write_text(json.dumps({"ignore": ignore, "scheme": "W4A16"}))
    job = Path(__file__).parent / "jobs" / "llmcompressor_job.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    r = subprocess.run(
        [str(_venv()), str(job), str(tmp_path / "m"), str(tmp_path / "recipe.json"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    protected = set(ignore) - {"lm_head"}
    assert protected <= set(res["dense"])
    assert set(res["packed"]) == {s.name for s in sites} - protected
