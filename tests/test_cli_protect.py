"""CLI: attribute → protect → quantize on the shipped toy model; toy eval/traces."""
from __future__ import annotations

import json

import torch

from lrm_interp.cli import main
from lrm_interp.protect.masks import load_masks
from lrm_interp.model.sites import get_module
from lrm_interp.toy import load_toy_model, toy_model_dir


def test_attribute_protect_quantize_roundtrip(tmp_path):
    assert main(["toy", "traces", "--gold", "--per-family", "2", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert main(["attribute", "--model", "toy", "--data", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    assert main(["protect", "--scores", str(tmp_path / "a"), "--policy", "final_mlp", "--bits", "3",
                 "--out", str(tmp_path / "fm.safetensors")]) == 0
    fm, meta = load_masks(tmp_path / "fm.safetensors")
    assert sorted(fm) == [f"model.layers.3.mlp.{k}_proj" for k in ("down", "gate", "up")]
    assert meta["policy"] == "final_mlp"
    assert main(["protect", "--scores", str(tmp_path / "a"), "--policy", "global_top", "--saliency",
                 "attribution_ri", "--model", "toy", "--data", str(tmp_path / "t.jsonl"), "--budget", "0.01",
                 "--group-size", "32", "--out", str(tmp_path / "g.safetensors")]) == 0
    g, meta = load_masks(tmp_path / "g.safetensors")
    n = sum(m.mask.numel() for m in g.values())
    assert sum(m.n_protected for m in g.values()) == round(0.01 * n)
    assert 3.0 < meta["bits_per_weight"]["bpw"] < 5.0
    # regexes: an `always` module counts against the budget (total exact), `never` sites get nothing
    assert main(["protect", "--scores", str(tmp_path / "a"), "--policy", "global_top", "--saliency", "magnitude",
                 "--model", "toy", "--budget", "0.03", "--always", r"layers\.3\.self_attn\.v_proj",
                 "--never", r"layers\.0\.", "--out", str(tmp_path / "r.safetensors")]) == 0
    r, _ = load_masks(tmp_path / "r.safetensors")
    assert sum(m.n_protected for m in r.values()) == round(0.03 * n)
    assert r["model.layers.3.self_attn.v_proj"].is_full and not any(".layers.0." in k for k in r)
    assert main(["quantize", "--model", str(toy_model_dir()), "--bits", "3", "--group-size", "32",
                 "--masks", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "q")]) == 0
    from transformers import AutoModelForCausalLM

    q = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    orig, _ = load_toy_model()
    for name, m in g.items():
        w0, w1 = get_module(orig, name).weight, get_module(q, name).weight
        assert torch.equal(w1[m.mask], w0[m.mask])
        assert len(torch.unique(w1[0, :32][~m.mask[0, :32]])) <= 8
    info = json.loads((tmp_path / "q" / "lrm_interp_quantization.json").read_text())
    assert info["bits"] == 3 and info["n_protected"] == sum(m.n_protected for m in g.values())
    assert main(["protect", "--scores", str(tmp_path / "a"), "--policy", "global_top",
                 "--out", str(tmp_path / "x.safetensors")]) == 2  # needs --model: clear error


def test_toy_eval_cli(capsys):
    assert main(["toy", "eval", "--per-family", "3"]) == 0
    out = capsys.readouterr().out
    assert "'mean': 1.0" in out
