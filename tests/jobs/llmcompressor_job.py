"""Runs INSIDE a separate virtual environment that has llm-compressor (it pins its own
transformers). Quantizes a saved model with the recipe in SPEC_JSON, saves the compressed
checkpoint and reports how each linear weight was stored.

usage: python llmcompressor_job.py MODEL_DIR SPEC_JSON OUT_DIR  -> prints one JSON line
SPEC_JSON, one of:
  {"ignore": [...], "scheme": "W4A16", "targets": "Linear"}   GPTQModifier with a preset scheme
  {"config_groups": {...}, "ignore": [...]}                   QuantizationModifier with per-module
      groups (module-level mixed precision, lrm_interp.protect.exports.llmcompressor_config_groups)
Output: {"packed": [...], "dense": [...], "modules": {name: {"tensors": {suffix: [shape, dtype]}}},
         "config_groups": {...}} (config_groups as saved in config.json)
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(model_dir: str, spec_json: str, out_dir: str) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.load(open(spec_json))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = [f"Step {i}: 12 + {i} = {12 + i}. Wait, let me check that again." for i in range(16)]
    ds = Dataset.from_dict({"text": texts}).map(lambda e: tok(e["text"]), remove_columns=["text"])
    if "config_groups" in spec:
        recipe = QuantizationModifier(config_groups=spec["config_groups"], ignore=spec["ignore"])
    else:
        recipe = GPTQModifier(
            targets=spec.get("targets", "Linear"), scheme=spec.get("scheme", "W4A16"), ignore=spec["ignore"]
        )
    oneshot(
        model=model,
        processor=tok,
        dataset=ds,
        recipe=recipe,
        max_seq_length=64,
        num_calibration_samples=16,
        output_dir=out_dir,
    )
    packed, dense, modules = [], [], {}
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if k.endswith(".weight_packed"):
                packed.append(k[: -len(".weight_packed")])
            elif k.endswith(".weight") and "norm" not in k and "embed" not in k:
                dense.append(k[: -len(".weight")])
            if ".layers." in k and "norm" not in k:
                name, suffix = k.rsplit(".", 1)
                t = f.get_slice(k)
                modules.setdefault(name, {"tensors": {}})["tensors"][suffix] = [list(t.get_shape()), t.get_dtype()]
    cfg = json.load(open(os.path.join(out_dir, "config.json")))
    qc = cfg.get("quantization_config", cfg.get("compression_config", {}))
    print(
        json.dumps(
            {
                "packed": sorted(packed),
                "dense": sorted(dense),
                "modules": modules,
                "config_groups": qc.get("config_groups", {}),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
