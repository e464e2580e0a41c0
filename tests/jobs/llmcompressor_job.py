"""Runs INSIDE a separate virtual environment that has llm-compressor (it pins its own
transformers). Quantizes a saved model with GPTQ W4A16 and the given ``ignore`` list, then
reports which linear weights in the saved checkpoint stayed unquantized.

usage: python llmcompressor_job.py MODEL_DIR RECIPE_JSON OUT_DIR  -> prints one JSON line
RECIPE_JSON: {"ignore": [...], "scheme": "W4A16", "targets": "Linear"}
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(model_dir: str, recipe_json: str, out_dir: str) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.load(open(recipe_json))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = [f"Step {i}: 12 + {i} = {12 + i}. Wait, let me check that again." for i in range(16)]
    ds = Dataset.from_dict({"text": texts}).map(lambda e: tok(e["text"]), remove_columns=["text"])
    recipe = GPTQModifier(targets=spec.get("targets", "Linear"), scheme=spec.get("scheme", "W4A16"),
                          ignore=spec["ignore"])
    oneshot(model=model, processor=tok, dataset=ds, recipe=recipe, max_seq_length=64,
            num_calibration_samples=16, output_dir=out_dir)
    packed, dense = [], []
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if k.endswith(".weight_packed"):
                packed.append(k[: -len(".weight_packed")])
            elif k.endswith(".weight") and "norm" not in k and "embed" not in k:
                dense.append(k[: -len(".weight")])
    print(json.dumps({"packed": sorted(packed), "dense": sorted(dense)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
