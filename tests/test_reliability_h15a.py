"""Issue 22 ("nothing lost, nothing silent"), the cases left open after the thirteenth probe and
checked beside the fourteenth (H15-MGB, H15-ALS, H15-SUB).

Masks built in Python from a grid-dependent saliency (``build_saliency(..., bits=3)`` +
``build_masks``, as the protection notebook does) carried no grid, so ``save_masks`` recorded none
and ``quantize_model_`` applied them on another grid without the warning a loaded file gives;
``atp.check_alphas("0.1")`` read the string as its characters; a ``load_state_dict`` into a
submodule never reaches the model's load hook (the weights sample sees it)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch


@pytest.fixture(scope="module")
def toy():
    from lrm_interp.toy import load_toy_model

    model, tok = load_toy_model()
    return model.eval(), tok


def _grid_warnings(record) -> list[str]:
    from lrm_interp.compress.quant.apply import MaskGridWarning

    return [str(w.message) for w in record if issubclass(w.category, MaskGridWarning)]


def _quantize_warnings(model, masks, **grid) -> list[str]:
    from lrm_interp.compress.quant import quantize_model_

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        quantize_model_(copy.deepcopy(model), masks=masks, progress=False, **grid)
    return _grid_warnings(rec)


# --------------------------------------------------------------------------- H15-MGB
def test_masks_built_from_a_grid_saliency_carry_its_grid_to_the_file_and_the_quantizer(toy, tmp_path):
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import load_masks, save_masks
    from lrm_interp.protect.policies import build_masks
    from lrm_interp.protect.registry import build_saliency

    model, tok = toy
    sites = find_sites(model)
    calib = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    stream = build_saliency("hessian", model, sites, calib=calib, bits=3, group_size=32, symmetric=True, progress=False)
    grid = {"bits": 3, "group_size": 32, "symmetric": True, "saliency": "hessian"}
    assert stream.grid == grid
    masks = build_masks(sites, "global_top", 0.01, saliency=stream)
    assert masks.grid == grid
    # in memory: another grid warns, the grid they were chosen on says nothing
    (w,) = _quantize_warnings(model, masks, bits=4, group_size=32, symmetric=False)
    assert "computed for a 3-bit group 32 symmetric grid but are applied on a 4-bit group 32 asymmetric" in w
    assert "(bits, symmetric differ)" in w and "'hessian' scores the quantization error" in w
    assert _quantize_warnings(model, masks, bits=3, group_size=32, symmetric=True) == []
    # saved without grid=: the file records it, and the loaded set warns the same way
    p = save_masks(masks, tmp_path / "m.safetensors")
    loaded, extra = load_masks(p)
    assert loaded.grid == grid and {k: extra[k] for k in grid} == grid
    (w2,) = _quantize_warnings(model, loaded, bits=4, group_size=32, symmetric=False)
    assert w2 == f"masks {p}: {w.split(': ', 1)[1]}"
    # metadata that disagrees with the saliency's grid is refused before writing
    with pytest.raises(ValueError, match=r"grid and metadata disagree on bits \(3 vs 4\)"):
        save_masks(masks, tmp_path / "bad.safetensors", metadata={"bits": 4})
    assert not (tmp_path / "bad.safetensors").exists()


def test_grid_free_saliencies_and_module_policies_record_no_grid(toy):
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.policies import build_masks
    from lrm_interp.protect.registry import build_saliency

    model, _ = toy
    sites = find_sites(model)
    for name in ("magnitude", "random"):
        stream = build_saliency(name, model, sites, bits=3, progress=False)
        assert stream.grid is None  # the same weights on any grid: nothing to warn about
        masks = build_masks(sites, "global_top", 0.01, saliency=stream)
        assert masks.grid is None
        assert _quantize_warnings(model, masks, bits=4, group_size=32) == []
    assert build_masks(sites, "final_mlp", 0.01).grid is None


def test_build_saliency_checks_symmetric(toy):
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.registry import build_saliency

    model, _ = toy
    with pytest.raises(ValueError, match=r"symmetric must be True or False, got 'no'"):
        build_saliency("magnitude", model, find_sites(model), symmetric="no")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- H15-ALS
def test_patch_alphas_as_a_string_are_refused_naming_the_fix():
    from lrm_interp.attribution.atp import check_alphas

    with pytest.raises(TypeError, match=r"^alphas must be a number or a list of numbers, got the string '0.1': "):
        check_alphas("0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"write alphas=\[0.1\] \(a string would be read character by character\)"):
        check_alphas("0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"write alphas=\[0.1, 1.0\]"):
        check_alphas("small")  # type: ignore[arg-type]
    assert check_alphas([0.1, 1.0]) == (0.1, 1.0) and check_alphas(0.5) == (0.5,)


# --------------------------------------------------------------------------- H15-SUB
def test_a_restore_into_a_submodule_is_seen_by_the_weights_sample():
    """``model.model.load_state_dict(inner)`` (the decoder without its head) does not reach the
    model's own load hook, but the weights sample (H14-RCP) sees the changed weights: the
    quantization no longer describes them and quantizing again is accepted."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.provenance import WEIGHTS_LOADED, check_not_quantized, model_record, quantization_steps
    from lrm_interp.testing import tiny_model

    model = tiny_model("llama")
    inner = {k: v.clone() for k, v in model.model.state_dict().items()}
    quantize_model_(model, bits=3, group_size=16, progress=False)
    assert len(quantization_steps(model)) == 1
    model.model.load_state_dict(inner)
    assert quantization_steps(model) == []
    assert model_record(model).compression[-1] == {"kind": WEIGHTS_LOADED, "via": "weights changed in place"}
    check_not_quantized(model, "why")  # no refusal
    assert quantize_model_(model, bits=4, group_size=16, progress=False).bits == 4


# --------------------------------------------------------------------------- H15-PEE
def test_an_empty_only_is_refused_and_an_empty_redo_redoes_nothing(tmp_path):
    """``only=[]`` (a list comprehension that matched nothing) measured every row, as ``only=None``."""
    from lrm_interp.experiments import protection_table as pt
    from lrm_interp.experiments.protection import ExperimentSettings, check_only

    s = ExperimentSettings(per_family=1)
    with pytest.raises(ValueError, match=r"^only is empty: it selects no row; give row-label texts, or only=None"):
        check_only(s, [])
    out = tmp_path / "E"
    with pytest.raises(ValueError, match="only is empty"):
        pt.run_protection_experiment(out, per_family=1, progress=False, only=[])
    assert not out.exists()
    check_only(s, [], "redo")  # nothing to redo: fine
    check_only(s, None)


# --------------------------------------------------------------------------- H15-ASW / EVS (the shared rule)
def test_model_and_tokenizer_are_checked_for_kind_and_order(toy):
    from lrm_interp.model.vocab import check_model_and_tokenizer

    model, tok = toy
    check_model_and_tokenizer(model, tok, "evaluate")
    with pytest.raises(TypeError, match=r"^evaluate: model and tokenizer are swapped \(model is a tokenizer \("):
        check_model_and_tokenizer(tok, model, "evaluate")
    with pytest.raises(TypeError, match=r"tokenizer must be a tokenizer \(with encode and decode\), got Llama"):
        check_model_and_tokenizer(model, model, "evaluate")
    with pytest.raises(TypeError, match=r"model must be a torch model \(nn.Module\), got str$"):
        check_model_and_tokenizer("toy", tok, "evaluate")
