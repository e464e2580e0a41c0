"""The shipped toy reasoning model: offline loading, accuracy, compression damage, training."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lrm_interp.compress.prune import prune_magnitude_
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.data.traces import TARGET_BEHAVIORS
from lrm_interp.evaluation.generation import generate_answers
from lrm_interp.toy import load_toy_model, toy_model_dir
from lrm_interp.toy.evaluate import collect_traces, evaluate
from lrm_interp.toy.tasks import FAMILIES, N_PEOPLE, generate_trace, problems
from lrm_interp.toy.train import make_batch, train_toy_model


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


@pytest.fixture(scope="module")
def held():
    return problems(20, seed=2)  # evaluation seeds < 10000: never seen in training


@pytest.fixture(scope="module")
def fp_acc(toy, held):
    model, tok = toy
    return evaluate(model, tok, held, batch_size=60, max_new_tokens=460)


def test_shipped_weights_small_offline_and_consistent(toy):
    d = toy_model_dir()
    assert sum(p.stat().st_size for p in d.iterdir()) <= 20 * 2**20
    model, tok = toy
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 259
    assert tok.eos_token_id == model.config.eos_token_id == 257
    log = json.loads((d / "training_log.json").read_text())
    assert log["n_people"] == N_PEOPLE  # trained on the fact table the package ships
    assert log["heldout_accuracy"]["mean"] >= 0.9


def test_accuracy_at_full_precision(fp_acc):
    print("fp32", fp_acc)
    assert all(fp_acc[f] >= 0.9 for f in FAMILIES)


def test_quantization_damage(toy, held, fp_acc):
    """All-linear 3-bit RTN with groups of 128: the symmetric grid (GPTQ's convention) loses
    >= 20 points; the asymmetric (zero-point) grid loses fewer but still some.

    docs/toy_model.md has the full table (4/3/2 bits, group sizes, per channel).
    """
    model, tok = toy
    drops = {}
    for sym in (True, False):
        q = copy.deepcopy(model)
        quantize_model_(q, bits=3, group_size=128, symmetric=sym, progress=False)
        acc = evaluate(q, tok, held, batch_size=60, max_new_tokens=460)
        print("3-bit g128", "sym" if sym else "asym", acc)
        drops[sym] = fp_acc["mean"] - acc["mean"]
    assert drops[True] >= 0.20
    assert drops[False] >= 0.05


def test_pruning_respects_budget_and_protection(toy):
    model, _ = toy
    m = copy.deepcopy(model)
    w = m.model.layers[0].mlp.up_proj.weight
    prot = torch.zeros_like(w, dtype=torch.bool)
    prot[0, :5] = True
    keep = w[0, :5].clone()
    free = w.detach()[~prot].abs().sort().values
    rep = prune_magnitude_(m, 0.5, masks={"model.layers.0.mlp.up_proj": prot})
    w = m.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w[0, :5], keep)
    assert int((w == 0).sum()) == round(0.5 * (w.numel() - 5))
    kept = w.detach()[(w != 0) & ~prot].abs()
    assert kept.min() >= free[round(0.5 * (w.numel() - 5)) - 1]  # only the smallest free weights were zeroed
    assert rep["weights"] == sum(p.numel() for n, p in m.named_parameters() if "layers" in n and "proj" in n)


def test_model_traces_show_target_behaviours(toy):
    """The model's own greedy traces, annotated by the rule annotator, contain all four
    target behaviours (the generators make them deterministic functions of the problem)."""
    model, tok = toy
    picked = []
    for fam in FAMILIES:
        ts = [generate_trace(fam, 3, i) for i in range(40)]
        picked += [t for t in ts if t.spans_of("backtracking")][:2]
    ds = collect_traces(model, tok, picked, batch_size=6, max_new_tokens=460)
    assert len(ds) == 6 and sum(t.metadata["correct"] for t in ds) >= 5
    assert set(TARGET_BEHAVIORS) <= set(ds.span_counts())
    assert all(t.metadata["annotation"]["placed"] == t.metadata["annotation"]["segments"] > 2 for t in ds)
    assert generate_answers(model, tok, [picked[0].prompt], max_new_tokens=460)[0] == ds[0].response


def test_training_is_deterministic(tmp_path):
    a, b = make_batch(5, 4, 0), make_batch(5, 4, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[1][:, :3] == -100).all()  # no loss on the prompt
    kw = dict(
        steps=3,
        stop_at=None,
        anneal_steps=1,
        batch_size=4,
        anneal_batch_size=4,
        seed=0,
        device="cpu",
        eval_per_family=1,
        workers=0,
        hidden=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate=64,
    )
    log1 = train_toy_model(tmp_path / "a", **kw)
    train_toy_model(tmp_path / "b", **kw)
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(log1["loss"]) == 2 and len(log1["anneal_loss"]) == 1
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert m.config.hidden_size == 32 and len(AutoTokenizer.from_pretrained(tmp_path / "a")) == 259
