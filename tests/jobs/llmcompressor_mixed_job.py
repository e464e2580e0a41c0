"""Runs INSIDE llm-compressor's own virtual environment. Applies a module-level mixed-precision
recipe (``config_groups`` + ``ignore``, as written by
``lrm_interp.protect.exports.llmcompressor_config_groups``) with llm-compressor's
QuantizationModifier (weight-only, RTN-style min-max observers), saves the compressed
checkpoint and reports, per linear module, the bits it was stored with: read back from the
saved ``config.json`` quantization config, and the tensors it was saved as.

usage: python llmcompressor_mixed_job.py MODEL_DIR SPEC_JSON OUT_DIR  -> prints one JSON line
{"modules": {name: {"tensors": {suffix: [shape, dtype]}}}, "config_groups": {...}}
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(model_dir: str, spec_json: str, out_dir: str) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = json.load(open(spec_json))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = [f"Step {i}: 12 + {i} = {12 + i}. Wait, let me check that again." for i in range(8)]
    ds = Dataset.from_dict({"text": texts}).map(lambda e: tok(e["text"]), remove_columns=["text"])
    recipe = QuantizationModifier(config_groups=spec["config_groups"], ignore=spec["ignore"])
    oneshot(model=model, processor=tok, dataset=ds, recipe=recipe, max_seq_length=64,
            num_calibration_samples=8, output_dir=out_dir)
    modules: dict[str, dict] = {}
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            if ".layers." not in k or "norm" in k:
                continue
            name, suffix = k.rsplit(".", 1)
            t = f.get_slice(k)
            modules.setdefault(name, {"tensors": {}})["tensors"][suffix] = [list(t.get_shape()), t.get_dtype()]
    cfg = json.load(open(os.path.join(out_dir, "config.json")))
    qc = cfg.get("quantization_config", cfg.get("compression_config", {}))
    print(json.dumps({"modules": modules, "config_groups": qc.get("config_groups", {}),
                      "format": qc.get("format")}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
