"""Distillation recipe (LoRA on the toy traces) and the reasoner loader (delta merged into the base).

Fast tests use the shipped toy model as the base (a real LlamaForCausalLM with every LoRA target
module); the slow test distils SmolLM2 for one step and loads it through the alias machinery.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from lrm_interp.toy import load_toy_model
from lrm_interp.toy.distill import DistillConfig, batch_examples, distill_reasoner, make_batch, pack_rows, response_loss
from lrm_interp.toy.tasks import build_world

pytest.importorskip("peft")

CFG = DistillConfig(steps=3, batch_size=4, lr=1e-3, rank=4, alpha=8, n_people=16, seed=5, eval_every=0)


def _run(tmp_path, name, cfg=CFG, **kw):
    model, tok = load_toy_model()
    return distill_reasoner(tmp_path / name, cfg, base=model, tokenizer=tok, progress=False, log_every=1, **kw)


def _adapter(tmp_path, name):
    return load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))


def test_response_loss_equals_hf_labels_loss():
    model, tok = load_toy_model()
    b = make_batch(tok, 0, replace(CFG, pack=0), build_world(CFG.n_people))
    labels = b["labels"]
    assert (labels != -100).sum() > 0 and (labels == -100).sum() > 0  # prompt masked, response kept
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss
    assert torch.allclose(response_loss(model, b), ref, rtol=1e-6, atol=1e-6)


def test_packed_batch_computes_every_example_as_alone():
    """Packed rows (block-diagonal causal mask, positions restarting per example) give the
    loss of the padded batch, and each example's logits equal a forward of that example alone."""
    model, tok = load_toy_model()
    w = build_world(CFG.n_people)
    cfg = replace(CFG, batch_size=6, pack=600)
    packed, padded = make_batch(tok, 3, cfg, w), make_batch(tok, 3, replace(cfg, pack=0), w)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # several examples share a row
    assert packed["input_ids"].shape[1] <= 600 and packed["attention_mask"].dim() == 4
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    with torch.no_grad():
        assert torch.allclose(response_loss(model, packed), response_loss(model, padded), rtol=1e-5, atol=1e-6)
        out = model(
            input_ids=packed["input_ids"], attention_mask=packed["attention_mask"], position_ids=packed["position_ids"]
        ).logits
        seqs = batch_examples(tok, 3, cfg, w)
        rows = pack_rows([len(x) for x, _ in seqs], cfg.pack)
        assert max(len(r) for r in rows) >= 2
        for r, row in enumerate(rows):
            at = 0
            for i in row:  # every example, in packing order
                ids = torch.tensor(seqs[i][0])[None]
                assert torch.equal(packed["input_ids"][r, at : at + ids.shape[1]], ids[0])
                assert torch.allclose(out[r, at : at + ids.shape[1]], model(input_ids=ids).logits[0], atol=1e-4)
                at += ids.shape[1]


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([300, 200, 250, 100, 60], 512)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([300, 200, 250, 100, 60][i] for i in r) <= 512 for r in rows)
    assert rows == [[0, 1], [2, 3, 4]]
    assert pack_rows([700, 10], 512) == [[0], [1]]  # an over-long example keeps a row of its own


def test_family_weights_steer_the_batches():
    _, tok = load_toy_model()
    w = build_world(CFG.n_people)
    cfg = replace(CFG, batch_size=12, family_weights=(1.0, 0.0, 0.0))
    ex = [tok.decode(ids[:st]) for s in range(3) for ids, st in batch_examples(tok, s, cfg, w)]
    assert all(p.startswith("Compute ") for p in ex)  # math only
    with pytest.raises(ValueError, match="family_weights"):
        DistillConfig(family_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="early_stop"):
        DistillConfig(early_stop=0.0)


def test_batches_are_a_pure_function_of_seed_and_step():
    _, tok = load_toy_model()
    w = build_world(CFG.n_people)
    a, b = make_batch(tok, 7, CFG, w), make_batch(tok, 7, CFG, w)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = make_batch(tok, 8, CFG, w)["input_ids"]
    assert a["input_ids"].shape != other.shape or not torch.equal(a["input_ids"], other)


def test_early_stop_ships_the_adapter_and_a_rerun_does_nothing(tmp_path):
    """The toy reasoner (already a reasoner on the full fact table) reaches the threshold at the
    first evaluation: the run stops there, ships the adapter, and a rerun resumes as finished."""
    cfg = replace(CFG, n_people=512, steps=50, lr=1e-5, eval_every=2, eval_per_family=3, early_stop=0.6)
    log = _run(tmp_path, "e", cfg)
    assert log["finished"] and log["early_stop_step"] == 2 and log["steps_done"] == 2
    assert log["eval"][0]["step"] == 2 and min(log["eval"][0][f] for f in ("math", "logic", "knowledge")) >= 0.6
    assert (tmp_path / "e" / "adapter" / "adapter_model.safetensors").is_file()
    again = _run(tmp_path, "e", cfg)
    assert again["finished"] and again["steps_done"] == 2 and len(again["eval"]) == 1


def test_distill_learns_is_deterministic_and_resumes_exactly(tmp_path):
    full = _run(tmp_path, "a", DistillConfig(**{**CFG.to_dict(), "lr": 5e-3, "steps": 6}))
    losses = [loss for _, loss in full["loss"]]
    assert full["finished"] and losses[-1] < losses[0]  # the LoRA factors are trained
    a = _run(tmp_path, "b")
    again = _run(tmp_path, "c")
    assert a["finished"] and again["finished"]
    ref = _adapter(tmp_path, "b")
    assert set(ref) == set(_adapter(tmp_path, "c"))
    assert all(torch.equal(ref[k], _adapter(tmp_path, "c")[k]) for k in ref)
    assert all(v.dtype == torch.float16 for v in ref.values())
    # interrupted after the first step (max_seconds=0), then resumed: the same factors
    first = _run(tmp_path, "d", max_seconds=0)
    assert not first["finished"] and not (tmp_path / "d" / "adapter").exists()
    assert json.loads((tmp_path / "d" / "checkpoint" / "state.json").read_text())["step"] == 1
    resumed = _run(tmp_path, "d")
    assert resumed["finished"] and resumed["sessions"] == 2
    got = _adapter(tmp_path, "d")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert [s for s, _ in resumed["loss"]] == [0, 1, 2]
    log = json.loads((tmp_path / "d" / "adapter" / "distill_log.json").read_text())
    assert log["config"] == CFG.to_dict()


def test_resume_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, "r", max_seconds=0)
    other = DistillConfig(**{**CFG.to_dict(), "lr": 2e-3})
    with pytest.raises(ValueError, match=r"checkpoint of a run with other settings.*'lr'"):
        _run(tmp_path, "r", other)


def test_resume_on_another_base_model_is_refused(tmp_path):
    _run(tmp_path, "b", max_seconds=0)
    model, tok = load_toy_model()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    with pytest.raises(ValueError, match="another base model or tokenizer"):
        distill_reasoner(tmp_path / "b", CFG, base=model, tokenizer=tok, progress=False)
    log = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["log"]
    assert set(log["inputs"]) == {"base_weights", "tokenizer"}


def test_init_adapter_continues_from_a_finished_delta(tmp_path):
    """A continuation starts from the delta's factors (its step-0 loss is the finished run's level,
    not a fresh LoRA's), records the delta's hash and log, and refuses a rank that does not fit."""
    first = _run(tmp_path, "a", replace(CFG, lr=5e-3, steps=6))
    start = _adapter(tmp_path, "a")
    cont = _run(tmp_path, "c", replace(CFG, lr=1e-9, steps=1, seed=7, init_adapter=str(tmp_path / "a" / "adapter")))
    fresh = _run(tmp_path, "f", replace(CFG, lr=1e-9, steps=1, seed=7))
    got = _adapter(tmp_path, "c")
    assert set(got) == set(start)
    assert all(torch.allclose(got[k].float(), start[k].float(), atol=1e-3) for k in start)  # lr 1e-9: unchanged
    b = next(k for k in start if "lora_B" in k)
    assert start[b].abs().max() > 0 and _adapter(tmp_path, "f")[b].abs().max() < 1e-6  # fresh B starts at 0
    assert cont["loss"][0][1] < fresh["loss"][0][1]
    assert cont["init"]["steps_done"] == first["steps_done"] == 6 and len(cont["init"]["sha256"]) == 64
    assert cont["inputs"]["init_adapter"] == cont["init"]["sha256"]
    with pytest.raises(ValueError, match="rank 4 / alpha 8, this run rank 8"):
        _run(tmp_path, "x", replace(CFG, rank=8, alpha=16, init_adapter=str(tmp_path / "a" / "adapter")))
    with pytest.raises(FileNotFoundError, match="not a LoRA delta"):
        _run(tmp_path, "y", replace(CFG, init_adapter=str(tmp_path / "nowhere")))


def test_merge_adapter_is_w_plus_scaled_ba_and_matches_peft(tmp_path):
    import peft

    from lrm_interp.model.reasoner import merge_adapter

    _run(tmp_path, "m", DistillConfig(**{**CFG.to_dict(), "lr": 2e-2}))
    adapter = tmp_path / "m" / "adapter"
    sd = _adapter(tmp_path, "m")
    base, tok = load_toy_model()
    orig = {k: v.clone() for k, v in base.state_dict().items()}
    ids = tok(["Compute 12 + 7.\n<think>\n"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        unmerged = peft.PeftModel.from_pretrained(load_toy_model()[0], str(adapter))(input_ids=ids).logits
    merged = merge_adapter(base, adapter)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    scale = CFG.alpha / CFG.rank
    checked = 0
    for key in sd:
        if not key.endswith("lora_A.weight"):
            continue
        a, b = sd[key].float(), sd[key.replace("lora_A", "lora_B")].float()
        wname = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        expect = orig[wname] + scale * (b @ a)  # naive reference of the merge
        assert torch.allclose(merged.state_dict()[wname], expect, atol=1e-6), wname
        assert not torch.equal(merged.state_dict()[wname], orig[wname])
        checked += 1
    assert checked == 4 * 7  # 4 layers x q k v o gate up down
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, unmerged, atol=1e-4, rtol=1e-4)


def test_missing_delta_names_the_folder_and_the_fix(tmp_path):
    from lrm_interp.model.reasoner import load_reasoner

    with pytest.raises(FileNotFoundError, match=r"missing adapter_config.json.*lrm-interp toy distill"):
        load_reasoner(adapter=tmp_path)


@pytest.mark.slow
def test_reasoner_alias_merges_a_smollm2_delta_and_caches_it(tmp_path, monkeypatch):
    from lrm_interp.model.provenance import model_record
    from lrm_interp.model.reasoner import delta_sha256, load_reasoner, merged_key
    from lrm_interp.model.smollm2 import load_smollm2

    base, tok = load_smollm2()
    cfg = DistillConfig(steps=1, batch_size=2, rank=2, alpha=4, lr=1e-2, n_people=8, eval_every=0)
    distill_reasoner(tmp_path / "run", cfg, base=base, tokenizer=tok, progress=False)
    adapter = tmp_path / "run" / "adapter"
    monkeypatch.setenv("LRM_INTERP_CACHE", str(tmp_path / "cache"))
    model, tok2 = load_reasoner(adapter=adapter)
    sha = delta_sha256(adapter)
    src = model_record(model).source
    assert src["delta_sha256"] == sha and src["recipe"] == cfg.to_dict() and src["base"]["alias"] == "smollm2-135m"
    cache = tmp_path / "cache" / f"smollm2-135m-reasoner-{merged_key(sha)}"
    assert merged_key(sha) != merged_key("0" * 64) and len(merged_key(sha)) == 12
    assert (cache / "model.safetensors").exists()
    ref, _ = load_smollm2()
    w = "model.layers.29.mlp.up_proj.weight"
    assert not torch.equal(model.state_dict()[w], ref.state_dict()[w])
    mtime = (cache / "model.safetensors").stat().st_mtime_ns
    again, _ = load_reasoner(adapter=adapter)
    assert (cache / "model.safetensors").stat().st_mtime_ns == mtime  # second load reads the cache
    assert torch.equal(again.state_dict()[w], model.state_dict()[w])
    # load_model takes the adapter folder itself, and the toy tasks use the recipe's fact table
    from lrm_interp.model.loading import load_model
    from lrm_interp.toy.tasks import model_world

    by_dir, _ = load_model(str(adapter))
    assert torch.equal(by_dir.state_dict()[w], model.state_dict()[w])
    assert model_world(by_dir) == build_world(8) and model_world(ref) == build_world()


@pytest.mark.slow
def test_shipped_reasoner_loads_offline_and_reasons():
    """The shipped delta (600 steps on the 2-core CPU) on 20 held-out problems per family (seed 1,
    never used in training or early stopping): measured 80 % math, 100 % logic, 100 % knowledge.
    Math is below the issue's 90 % target (docs/reasoner.md)."""
    from lrm_interp.model.loading import load_model
    from lrm_interp.toy.evaluate import evaluate
    from lrm_interp.toy.tasks import model_world, problems

    model, tok = load_model("smollm2-135m-reasoner")
    assert model.config.num_hidden_layers == 30
    from lrm_interp.model.reasoner import reasoner_asset_dir

    log = json.loads((reasoner_asset_dir() / "distill_log.json").read_text())
    assert log["finished"] and log["steps_done"] == 600 and log["config"]["n_people"] == 64
    acc = evaluate(model, tok, problems(20, 1, world=model_world(model)), batch_size=60)
    assert acc["logic"] >= 0.9 and acc["knowledge"] >= 0.9 and acc["math"] >= 0.7, acc
