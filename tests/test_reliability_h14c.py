"""Leftovers of the thirteenth hostile probe run (issue 22, "nothing lost, nothing silent"), part C:
Python arguments of the wrong kind that were read silently or failed deep inside the library
(H14-ONS, H14-ACS, H14-STA), and protection masks applied on another grid without a word from
Python (H14-MGP).

``run_protection_experiment(only='fp')`` read the string as its characters and measured 13 rows
instead of 2; ``apply_compression(model, 'rtn:3')`` failed with an ``AttributeError``;
``Attribution.steer(alpha=nan)`` generated NUL tokens and ``alpha="4"`` failed inside a forward
hook; ``quantize_model_(masks=...)`` applied masks chosen on another grid without the warning the
CLI prints, and ``save_masks`` recorded no grid, so the CLI could not warn either."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.experiments import protection_table as pt
from lrm_interp.experiments.protection import ExperimentSettings, ProtectionPlanner, check_only


# --------------------------------------------------------------------------- H14-ONS
@pytest.mark.parametrize("arg", ["only", "redo"])
def test_only_or_redo_as_a_string_is_refused_before_anything(tmp_path, arg):
    out = tmp_path / "E"
    with pytest.raises(
        TypeError, match=rf"^{arg} must be a list of row-label texts, got the string 'fp': write {arg}=\['fp'\]"
    ):
        pt.run_protection_experiment(out, per_family=1, progress=False, **{arg: "fp"})
    assert not out.exists()  # refused before the model loads or anything is written


def test_only_list_and_tuple_still_select_rows():
    s = ExperimentSettings(per_family=1)
    check_only(s, ["fp"])
    check_only(s, ("magnitude",), "redo")
    assert len(ProtectionPlanner(torch.nn.Module(), None, s, progress=False).select(["fp"])) == 2  # fp + none
    with pytest.raises(TypeError, match="only must be a list of row-label texts"):
        check_only(s, "magnitude")
    with pytest.raises(TypeError, match=r"only must be a list of row-label texts \(strings\), got \[1\] \(list\)"):
        check_only(s, [1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"^redo: 'zzz' matches no row of this experiment"):
        check_only(s, ["zzz"], "redo")


# --------------------------------------------------------------------------- H14-ACS
@pytest.fixture(scope="module")
def toy():
    from lrm_interp.toy import load_toy_model

    model, tok = load_toy_model()
    return model.eval(), tok


def test_apply_compression_reads_a_spec_string_as_parse_compression_does(toy):
    from lrm_interp import apply_compression, parse_compression

    model, _ = toy
    q_str, rep_str = apply_compression(model, "rtn:3", progress=False)
    q_spec, rep_spec = apply_compression(model, parse_compression("rtn:3"), progress=False)
    assert rep_str == rep_spec and rep_str["bits"] == 3
    assert all(torch.equal(a, b) for a, b in zip(q_str.state_dict().values(), q_spec.state_dict().values()))
    assert apply_compression(model, "none", progress=False) == (model, {"method": "none"})


def test_apply_compression_refuses_another_kind_of_spec(toy):
    from lrm_interp import apply_compression

    model, _ = toy
    with pytest.raises(
        TypeError,
        match=r"^spec must be a CompressionSpec or its string \(e\.g\. 'rtn:3', read by parse_compression\), got 3$",
    ):
        apply_compression(model, 3, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtn:x"):
        apply_compression(model, "rtn:x", progress=False)  # parse_compression's own refusal


# --------------------------------------------------------------------------- H14-STA
@pytest.fixture(scope="module")
def attribution(toy):
    import lrm_interp
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = toy
    ds = generate_dataset(n_per_family=1, seed=4242)
    return lrm_interp.attribute(model, ds, tokenizer=tok, progress=False), tok(ds[0].prompt, return_tensors="pt")


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "alpha, words",
    [
        (float("nan"), r"^alpha must be a finite number in \[-3\.40282e\+38, 3\.40282e\+38\], got nan$"),
        (float("inf"), r"got inf$"),
        (-float("inf"), r"got -inf$"),
        (1e39, r"got 1e\+39$"),
        ("4", r"got '4' \(str\)$"),
        (True, r"got True \(bool\)$"),
    ],
)
def test_steer_refuses_a_bad_alpha_before_any_hook(toy, attribution, alpha, words):
    model, _ = toy
    res, _ = attribution
    before = _hooks(model)
    with pytest.raises(ValueError, match=words):
        with res.steer(model, res.behaviors[0], alpha=alpha):
            pytest.fail("the body ran")
    assert _hooks(model) == before


def test_steer_sites_must_be_a_list_and_good_alphas_still_steer(toy, attribution):
    model, _ = toy
    res, ids = attribution
    beh = res.behaviors[0]
    site = res.top(1, beh)[0][1]
    with pytest.raises(
        TypeError,
        match=rf"^sites must be a list of site names, got the string '{site}': write sites=\['{site}'\] "
        r"\(a string would be read character by character\)$",
    ):
        with res.steer(model, beh, sites=site):
            pass
    with pytest.raises(ValueError, match="^sites is empty"):
        with res.steer(model, beh, sites=[]):
            pass
    with torch.no_grad():
        base = model(**ids).logits
        for alpha in (0, -2.0, 4):  # 0 changes nothing; a negative alpha steers away; an int is a number
            with res.steer(model, beh, alpha=alpha, sites=[site]):
                out = model(**ids).logits
            assert torch.isfinite(out).all() and torch.equal(out, base) == (alpha == 0)


# --------------------------------------------------------------------------- H14-MGP
GRID3 = {"bits": 3, "group_size": 128, "symmetric": True, "saliency": "attribution_scale"}


@pytest.fixture(scope="module")
def toy_masks(toy):
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.policies import build_masks
    from lrm_interp.protect.saliency import magnitude

    model, _ = toy
    sites = find_sites(model)
    return build_masks(sites, "global_top", 0.01, saliency=magnitude(model, sites))


def _grid_warnings(record) -> list[str]:
    from lrm_interp.compress.quant.apply import MaskGridWarning

    return [str(w.message) for w in record if issubclass(w.category, MaskGridWarning)]


def test_save_masks_records_the_grid_and_quantize_model_warns_on_another(toy, toy_masks, tmp_path):
    import copy
    import warnings

    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.protect.encoding import load_masks, save_masks

    model, _ = toy
    p = save_masks(toy_masks, tmp_path / "m.safetensors", grid=GRID3)
    masks, extra = load_masks(p)
    assert {k: extra[k] for k in GRID3} == GRID3 and masks.grid == GRID3
    for given in (masks, (masks, extra)):  # the MaskSet, or the pair load_masks returns
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            quantize_model_(copy.deepcopy(model), masks=given, bits=4, group_size=32, symmetric=False, progress=False)
        (w,) = _grid_warnings(rec)
        assert w.startswith(f"masks {p}: the masks were computed for a 3-bit group 128 symmetric grid but are ")
        assert "4-bit group 32 asymmetric grid (bits, group_size, symmetric differ)" in w
        assert "'attribution_scale' scores the quantization error" in w and "\n" not in w
        with warnings.catch_warnings(record=True) as rec:  # the grid the masks were chosen on: no word
            warnings.simplefilter("always")
            quantize_model_(copy.deepcopy(model), masks=given, bits=3, group_size=128, symmetric=True, progress=False)
        assert _grid_warnings(rec) == []
    # saved again, the loaded set keeps its grid
    again = save_masks(masks, tmp_path / "again.safetensors")
    assert load_masks(again)[0].grid == GRID3


def test_masks_saved_without_a_grid_still_load_and_apply_silently(toy, toy_masks, tmp_path):
    import copy
    import warnings

    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.protect.encoding import load_masks, save_masks

    model, _ = toy
    p = save_masks(toy_masks, tmp_path / "old.safetensors")  # as before: no grid recorded
    masks, extra = load_masks(p)
    assert extra == {} and masks.grid is None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        quantize_model_(copy.deepcopy(model), masks=masks, bits=4, group_size=32, progress=False)
    assert _grid_warnings(rec) == []


@pytest.mark.parametrize(
    "grid, metadata, words",
    [
        ({"group_size": 32}, None, "grid must be a mapping with 'bits'"),
        ({"bits": 3, "sym": True}, None, r"grid: unknown entries \['sym'\]"),
        ({"bits": 3}, {"bits": 4}, r"grid and metadata disagree on bits \(3 vs 4\)"),
    ],
)
def test_save_masks_refuses_a_bad_grid_before_writing(toy_masks, tmp_path, grid, metadata, words):
    from lrm_interp.protect.encoding import save_masks

    with pytest.raises(ValueError, match=words):
        save_masks(toy_masks, tmp_path / "m.safetensors", grid=grid, metadata=metadata)
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_quantize_warns_once_about_python_masks_of_another_grid(toy_masks, tmp_path, capsys):
    from cli_run import run_cli

    from lrm_interp.protect.encoding import save_masks

    p = save_masks(toy_masks, tmp_path / "py_masks.safetensors", grid=GRID3)
    argv = ["quantize", "--model", "toy", "--masks", str(p), "--quiet"]
    argv += ["--bits", 4, "--group-size", 32, "--asymmetric", "--out", tmp_path / "Qpy"]
    assert run_cli(argv) == 0
    err = capsys.readouterr().err
    warn = [line for line in err.splitlines() if "computed for a" in line]
    assert len(warn) == 1 and warn[0].startswith(f"lrm-interp quantize: warning: --masks {p}: the masks were"), err


def test_maskset_declares_its_grid():
    """``MaskSet(grid=)`` keeps a copy of the grid the masks were chosen on; anything but a mapping is refused."""
    from lrm_interp.protect.masks import MaskSet

    g = {"bits": 3, "group_size": 128}
    ms = MaskSet(grid=g)
    g["bits"] = 4
    assert ms.grid == {"bits": 3, "group_size": 128} and MaskSet().grid is None
    with pytest.raises(TypeError, match="grid must be a mapping"):
        MaskSet(grid=3)  # type: ignore[arg-type]
