"""Issue 22, "nothing silent": models, masks, behaviours and budgets that would give a wrong
result with exit 0 are refused or reported.

- a model folder missing parameters is refused (never randomly initialised), unused checkpoint
  tensors are warned about;
- masks record the weights fingerprint of the model they were computed for; applying them (or
  attribution scores as module importance) to a model with other weights is refused naming both
  fingerprints and the file; a mask of another shape names the file and the site; old masks
  files load with a one-line warning;
- a behaviour whose spans are all unusable is reported as absent with its dropped spans, never
  saved as an all-zero ranking;
- a protection budget that protects no weight at all is refused naming the budget and the
  weight count.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from synth import synthetic_traces

import lrm_interp
from lrm_interp.cli.main import main
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.data.tokens import encode_trace
from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import WeightsMismatchError, weights_fingerprint
from lrm_interp.model.sites import find_sites
from lrm_interp.protect.encoding import load_masks, mask_tensors, save_masks
from lrm_interp.protect.masks import MaskSet, ProtectionMask
from lrm_interp.protect.policies import build_masks, global_top, modules_by_score, per_module_top
from lrm_interp.protect.registry import build_saliency
from lrm_interp.protect.saliency import magnitude
from lrm_interp.testing import byte_tokenizer, tiny_config, tiny_model


def _save(model, d):
    model.save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- 6. incomplete checkpoints
def test_model_folder_missing_parameters_is_refused(tmp_path):
    d = _save(tiny_model("llama", seed=0), tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    gone = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    for k in gone:
        del sd[k]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        load_model(str(d))
    msg = str(e.value)
    assert str(d) in msg and "lacks 2 of the model's" in msg and all(k in msg for k in gone)
    assert "randomly initialised" in msg
    # the command line: one line, exit 2, nothing written
    traces = tmp_path / "t.jsonl"
    synthetic_traces(2).save_jsonl(traces)
    assert main(["attribute", "--model", str(d), "--data", str(traces), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


def test_model_folder_with_a_tensor_of_another_shape_is_refused_in_one_line(tmp_path, capsys):
    d = _save(tiny_model("llama", seed=0), tmp_path / "m")
    sd = load_file(str(d / "model.safetensors"))
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(127, 64)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 checkpoint tensor\(s\) have another shape .*layers\.0\.mlp\.up_proj"):
        load_model(str(d))
    traces = tmp_path / "t.jsonl"
    synthetic_traces(2).save_jsonl(traces)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # what transformers' handlers would print
    log = logging.getLogger("transformers.modeling_utils")
    log.addHandler(handler)
    try:
        capsys.readouterr()
        assert (
            main(["attribute", "--model", str(d), "--data", str(traces), "--out", str(tmp_path / "out"), "--quiet"])
            == 2
        )
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(d) in err
    assert not [r for r in seen if "LOAD REPORT" in str(r.msg)]  # transformers' table held back


def test_tied_head_loads_and_unused_checkpoint_tensors_are_warned_about(tmp_path):
    from transformers import LlamaForCausalLM

    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    d = _save(LlamaForCausalLM(cfg), tmp_path / "tied")
    assert "lm_head.weight" not in load_file(str(d / "model.safetensors"))  # filled by tying, not missing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m, _ = load_model(str(d))
    assert m.lm_head.weight is m.model.embed_tokens.weight
    sd = load_file(str(d / "model.safetensors"))
    sd["model.extra.a"], sd["model.extra.b"] = torch.zeros(2), torch.zeros(3)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(
        UserWarning,
        match=r"2 tensor\(s\) in the checkpoint are not used by the model "
        r"\(model\.extra\.a, model\.extra\.b\)",
    ):
        load_model(str(d))


# ----------------------------------------------------------------------------- 7. masks of another model
def test_masks_record_their_model_and_are_refused_on_another(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)  # same shapes, other weights
    sites = find_sites(a)
    masks = build_masks(sites, "global_top", 0.05, saliency=magnitude(a, sites))
    fa, fb = weights_fingerprint(a), weights_fingerprint(b)
    assert isinstance(masks, MaskSet) and masks.model["weights_fingerprint"] == fa
    p = save_masks(masks, tmp_path / "a.safetensors", metadata={"budget": 0.05})
    back, extra = load_masks(p)
    assert back == masks and back.model == masks.model and back.source == str(p) and extra == {"budget": 0.05}
    # the model the masks were built for: applied
    quantize_model_(copy.deepcopy(a), bits=3, masks=back, progress=False)
    # another model of the same shapes: refused before any weight changes, naming file and fingerprints
    before = _weights(b)
    with pytest.raises(WeightsMismatchError) as e:
        quantize_model_(b, bits=3, masks=back, progress=False)
    msg = str(e.value)
    assert str(p) in msg and fa in msg and fb in msg
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())


def test_cli_quantize_refuses_masks_of_another_model(tmp_path):
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    da = _save(a, tmp_path / "a")
    db = _save(b, tmp_path / "b")
    loaded_a, _ = load_model(str(da))
    sites = find_sites(loaded_a)
    p = save_masks(
        build_masks(sites, "global_top", 0.05, saliency=magnitude(loaded_a, sites)), tmp_path / "masks.safetensors"
    )
    assert (
        main(
            ["quantize", "--model", str(db), "--bits", "3", "--masks", str(p), "--out", str(tmp_path / "qb"), "--quiet"]
        )
        == 2
    )
    assert not (tmp_path / "qb").exists()
    assert (
        main(
            ["quantize", "--model", str(da), "--bits", "3", "--masks", str(p), "--out", str(tmp_path / "qa"), "--quiet"]
        )
        == 0
    )


def test_attribution_scores_of_another_model_are_refused_and_module_masks_record_their_model():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    tok = byte_tokenizer()
    res = lrm_interp.attribute(a, synthetic_traces(2), tokenizer=tok, progress=False)
    sites = list(res.sites)
    enc = [encode_trace(tok, t) for t in synthetic_traces(2)]
    with pytest.raises(WeightsMismatchError, match=weights_fingerprint(a)):
        build_saliency(
            "attribution_ri",
            b,
            sites,
            encoded=enc,
            behaviors=list(res.behaviors),
            module_importance=res,
            progress=False,
        )
    ok = build_saliency(
        "attribution_ri", a, sites, encoded=enc, behaviors=list(res.behaviors), module_importance=res, progress=False
    )
    assert (
        build_masks(sites, "global_top", 0.02, saliency=ok).model["weights_fingerprint"]
        == res.provenance["model"]["weights_fingerprint"]
    )
    # module policies (no model at hand): the model of the scores
    fm = build_masks(sites, "final_mlp", scores=res)
    assert fm.model["weights_fingerprint"] == weights_fingerprint(a)
    with pytest.raises(WeightsMismatchError):
        quantize_model_(b, bits=3, masks=fm, progress=False)


def test_old_masks_file_loads_with_one_warning_and_still_applies(tmp_path):
    model = tiny_model("llama", seed=0)
    s = find_sites(model)[0]
    tensors, info = mask_tensors({s.name: ProtectionMask.from_rows(s.name, (s.out_features, s.in_features), [1])})
    save_file(
        tensors,
        str(tmp_path / "old.safetensors"),
        metadata={"format": "lrm_interp.masks/2", "sites": json.dumps(info), "extra": "{}"},
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        masks, _ = load_masks(tmp_path / "old.safetensors")
    msgs = [str(x.message) for x in w if "weights fingerprint" in str(x.message)]
    assert len(msgs) == 1 and "old.safetensors" in msgs[0] and "\n" not in msgs[0]
    assert masks.model is None
    rep = quantize_model_(tiny_model("llama", seed=5), bits=3, masks=masks, progress=False)
    assert rep.n_protected == s.in_features


def test_mask_of_another_shape_names_the_file_and_the_site(tmp_path):
    small = tiny_model("llama", seed=0)
    sites = find_sites(small)
    masks = build_masks(sites, "global_top", 0.05, saliency=magnitude(small, sites))
    p = save_masks(masks, tmp_path / "small.safetensors")
    from transformers import LlamaForCausalLM

    cfg = tiny_config("llama")
    cfg.intermediate_size = cfg.intermediate_size * 2  # same site names, other MLP shapes
    big = LlamaForCausalLM(cfg)
    before = _weights(big)
    with pytest.raises(ValueError) as e:
        quantize_model_(big, bits=3, masks=load_masks(p)[0], progress=False)
    msg = str(e.value)
    assert "small.safetensors" in msg and "model.layers.0.mlp.gate_proj" in msg and "has shape" in msg
    assert all(torch.equal(before[k], v) for k, v in big.state_dict().items())  # nothing quantized


# ----------------------------------------------------------------------------- 8. behaviours without usable spans
def _cut_before_backtracking(ds) -> int:
    """A max_tokens that keeps every trace's first deduction span and cuts every backtracking span."""
    tok = byte_tokenizer()
    enc = [encode_trace(tok, t) for t in ds]
    cut = min(e.spans_of("backtracking")[0].start for e in enc)
    assert all(e.spans_of("deduction")[0].end <= cut for e in enc)
    return cut


def test_behaviour_whose_spans_are_all_dropped_is_absent_not_a_zero_ranking():
    ds = synthetic_traces(3)
    cut = _cut_before_backtracking(ds)
    with pytest.warns(
        UserWarning,
        match=r"left out of the result \(no ranking\): backtracking \(all 3 span\(s\) "
        r"unusable: 3 beyond max_tokens\)",
    ):
        res = lrm_interp.attribute(
            tiny_model("llama", seed=0),
            ds,
            tokenizer=byte_tokenizer(),
            progress=False,
            behaviors=["deduction", "backtracking"],
            max_tokens=cut,
        )
    assert res.behaviors == ("deduction",) and res.scores.shape[0] == 1 and float(res.scores.sum()) > 0
    assert res.provenance["absent_behaviors"] == ["backtracking"]
    info = res.provenance["absent_spans"]["backtracking"]
    assert info["labelled"] == info["dropped"] == 3 and sum(info["reasons"].values()) == 3
    assert "backtracking" not in res.vectors
    # nothing left at all: refused up front
    with pytest.raises(ValueError, match="no requested behaviour has a usable span: backtracking"):
        lrm_interp.attribute(
            tiny_model("llama", seed=0),
            ds,
            tokenizer=byte_tokenizer(),
            progress=False,
            behaviors=["backtracking"],
            max_tokens=cut,
        )


def test_cli_attribute_reports_a_behaviour_whose_spans_are_all_dropped(tmp_path, capsys):
    ds = synthetic_traces(3)
    cut = _cut_before_backtracking(ds)
    d = _save(tiny_model("llama", seed=0), tmp_path / "m")
    ds.save_jsonl(tmp_path / "t.jsonl")
    with pytest.warns(UserWarning, match="backtracking"):
        rc = main(
            [
                "attribute",
                "--model",
                str(d),
                "--data",
                str(tmp_path / "t.jsonl"),
                "--out",
                str(tmp_path / "r"),
                "--behaviors",
                "deduction",
                "backtracking",
                "--max-tokens",
                str(cut),
                "--quiet",
            ]
        )
    assert rc == 0
    out = capsys.readouterr().out
    assert "backtracking" in out  # named as absent, with no ranking line of its own
    assert not any(line.strip().startswith("backtracking ") for line in out.splitlines())
    saved = json.loads((tmp_path / "r" / "attribution.json").read_text())
    assert saved["behaviors"] == ["deduction"]


# ----------------------------------------------------------------------------- 14. budgets that protect nothing
def test_budget_that_protects_no_weight_is_refused():
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    n = sum(s.n_weights for s in sites)
    with pytest.raises(ValueError, match=rf"budget 5e-07 of {n} weights protects 0 weights"):
        build_masks(sites, "global_top", 5e-7, saliency=magnitude(model, sites))
    with pytest.raises(ValueError, match=rf"of {n} weights protects 0 weights.*every module"):
        per_module_top(magnitude(model, sites), 5e-5)  # round(5e-5 · n_m) = 0 in every module
    with pytest.raises(ValueError, match="fewer than one whole row"):
        global_top(magnitude(model, sites), 2e-4, granularity="rows")  # 15 weights, rows of 64 or more
    with pytest.raises(ValueError, match="fewer than the smallest module"):
        # scores that tell the modules apart (equal ones are refused first, H34-CONSTSAL)
        modules_by_score(sites, {s.name: float(i + 1) for i, s in enumerate(sites)}, 1e-3)
    # 0 is the no-protection baseline; some modules at 0 with a nonzero total is normal
    assert (
        sum(m.n_protected for m in build_masks(sites, "global_top", 0.0, saliency=magnitude(model, sites)).values())
        == 0
    )
    small = min(s.n_weights for s in sites)
    b = 0.4 / small  # rounds to 0 weights in the smallest modules, 1 or 2 in the larger ones
    pm = per_module_top(magnitude(model, sites), b)
    assert sum(m.n_protected for m in pm.values()) > 0 and any(m.n_protected == 0 for m in pm.values())
    # always-protected modules give a nonzero total: not refused
    assert (
        sum(
            m.n_protected
            for m in build_masks(
                sites, "global_top", 5e-7, saliency=magnitude(model, sites), always="layers\\.1\\.mlp\\.down_proj"
            ).values()
        )
        > 0
    )


def test_cli_protect_refuses_a_budget_that_protects_nothing(tmp_path, capsys):
    d = _save(tiny_model("llama", seed=0), tmp_path / "m")
    lrm_interp.attribute(str(d), synthetic_traces(2), progress=False, out_dir=tmp_path / "scores")
    rc = main(
        [
            "protect",
            "--scores",
            str(tmp_path / "scores"),
            "--model",
            str(d),
            "--saliency",
            "magnitude",
            "--budget",
            "5e-7",
            "--out",
            str(tmp_path / "m.safetensors"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "budget 5e-07" in err and "protects 0 weights" in err
    assert not (tmp_path / "m.safetensors").exists()
    # a masks file the command writes records the model
    assert (
        main(
            [
                "protect",
                "--scores",
                str(tmp_path / "scores"),
                "--model",
                str(d),
                "--saliency",
                "magnitude",
                "--budget",
                "0.02",
                "--out",
                str(tmp_path / "ok.safetensors"),
                "--quiet",
            ]
        )
        == 0
    )
    masks, _ = load_masks(tmp_path / "ok.safetensors")
    assert masks.model["weights_fingerprint"] == weights_fingerprint(load_model(str(d))[0])


def test_masks_file_with_its_checksum_removed_but_its_model_kept_is_refused(tmp_path):
    """A file that records its model was written after checksums existed: no checksum means it
    was stripped (to hide an edit), so it is refused — not loaded as an "old file" (hostile run H1)."""
    from safetensors import safe_open

    from lrm_interp._io import CHECKSUM_KEY, ChecksumError

    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    p = save_masks(build_masks(sites, "global_top", 0.05, saliency=magnitude(model, sites)), tmp_path / "m.safetensors")
    with safe_open(str(p), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    assert "model" in meta and CHECKSUM_KEY in meta
    del meta[CHECKSUM_KEY]
    save_file(tensors, str(tmp_path / "stripped.safetensors"), metadata=meta)
    with pytest.raises(
        ChecksumError, match=f"stripped.safetensors: the masks file records its model but has no {CHECKSUM_KEY}"
    ):
        load_masks(tmp_path / "stripped.safetensors")
