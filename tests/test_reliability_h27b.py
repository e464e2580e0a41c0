"""Cases a twenty-sixth hostile probe run found (issue 22, "nothing lost, nothing silent"), part B:
``bits_per_weight`` / ``quantized_site_bits`` / ``uniform_allocation`` without the shared
``group_size`` check (-4 and 2.5 gave a cost, ``value_bits=0`` too, H27-BPWNEG; 0 a
``ZeroDivisionError`` and the ``(masks, extra)`` pair of ``load_masks`` "unhashable type: 'MaskSet'",
H27-BPWZERO), and the refusal of partials of another run naming Python arguments and a Python list
(``differs in ['mode']``, ``choose another out_dir``) to the CLI user (H27-OUTDIRMSG)."""

from __future__ import annotations

import shutil

import pytest
import torch
from cli_run import err_line, folder_files, run_cli, toy_gold

from lrm_interp.model.sites import find_sites
from lrm_interp.protect.bit_allocation import uniform_allocation
from lrm_interp.protect.encoding import bits_per_weight, load_masks, quantized_site_bits, save_masks
from lrm_interp.protect.masks import MaskSet, ProtectionMask
from lrm_interp.testing import tiny_model


@pytest.fixture(scope="module")
def sites():
    return find_sites(tiny_model("llama"))


# ------------------------------------------------------------------ H27-BPWNEG / H27-BPWZERO
def test_bits_per_weight_and_uniform_allocation_check_group_size_value_bits_and_take_the_load_masks_pair(
    sites, tmp_path
):
    """``group_size`` -4 / 2.5 / 0 are refused by the shared check ("positive or None") in
    ``bits_per_weight``, ``quantized_site_bits`` and ``uniform_allocation`` (they gave -4.54 / 16.41
    bits per weight, or a ``ZeroDivisionError``); ``value_bits`` 0 / -1 / nan are refused (0 gave a
    cost); ``None`` (per channel, the CLI's ``--group-size 0``) still works; the ``(masks, extra)``
    pair ``load_masks`` returns gives the cost of its masks, as ``quantize_model_`` takes it."""
    s = sites[0]
    for g in (-4, 2.5, 0):
        msg = f"group_size must be positive or None, got {g!r}"
        with pytest.raises(ValueError, match=msg):
            bits_per_weight({}, sites, bits=3, group_size=g)
        with pytest.raises(ValueError, match=msg):
            quantized_site_bits(s, 3, group_size=g)
        with pytest.raises(ValueError, match=msg):
            uniform_allocation(sites, 3, group_size=g)
        with pytest.raises(ValueError, match=msg):
            uniform_allocation(sites, 16, group_size=g)  # FP16 everywhere: no quantized cost computed
    for v in (0, -1, float("nan")):
        with pytest.raises(ValueError, match=r"bits_per_weight: value_bits \(the bits of each kept weight"):
            bits_per_weight({}, sites, bits=3, value_bits=v)
    with pytest.raises(ValueError, match=r"bits_per_weight: param_bits .* must be an integer >= 1, got 0"):
        bits_per_weight({}, sites, bits=3, param_bits=0)
    with pytest.raises(ValueError, match=r"bits must be in 2\.\.8, got 16"):
        bits_per_weight({}, sites, bits=16)

    # sensible calls unchanged: per channel, and a group size
    per_channel = bits_per_weight({}, sites, bits=3, group_size=None)
    assert per_channel["bpw"] == pytest.approx(
        3 + 32 * sum(x.out_features for x in sites) / sum(x.n_weights for x in sites)
    )
    assert quantized_site_bits(s, 3, group_size=None) == (3 * s.n_weights, 32 * s.out_features)
    assert uniform_allocation(sites, 3, group_size=None).group_size is None
    assert uniform_allocation(sites, 3, group_size=16).bpw == bits_per_weight({}, sites, bits=3, group_size=16)["bpw"]

    # the pair load_masks returns: the cost of its masks (it raised "unhashable type: 'MaskSet'")
    m = torch.zeros(s.out_features, s.in_features, dtype=torch.bool)
    m[0, :5] = True
    path = save_masks(MaskSet({s.name: ProtectionMask(s.name, m)}), tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="records no model"):
        pair = load_masks(path)
    assert bits_per_weight(pair, sites, bits=3) == bits_per_weight(pair[0], sites, bits=3)
    assert bits_per_weight(pair, sites, bits=3)["protected_fraction"] == 5 / sum(x.n_weights for x in sites)


# ------------------------------------------------------------------ H27-OUTDIRMSG
def test_partials_of_other_settings_are_refused_naming_each_setting_both_values_the_flag_and_the_resume(
    tmp_path, capsys
):
    """An interrupted ``--mode joint`` run resumed with the default mode: the refusal said
    ``differs in ['mode']`` and ``choose another out_dir``. It names the setting with both values,
    ``--out`` and that rerunning with the recorded settings resumes the run; nothing is written."""
    gold = toy_gold(tmp_path, n=2)
    a = tmp_path / "A"
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--mode", "joint", "--quiet"]) == 0
    capsys.readouterr()
    for p in a.iterdir():  # as an interrupted run leaves it: partial/ only
        if p.is_file():
            p.unlink()
        elif p.name != "partial":
            shutil.rmtree(p)
    before = folder_files(a)
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 2
    err = err_line(capsys)
    assert (
        f"{a / 'partial'} holds partial results of a run with other settings (differs in mode 'joint' there "
        f"≠ 'exact' now): they cannot be reused by this run. Rerunning with the settings recorded in "
        f"{a / 'partial' / 'run.json'} resumes that run; else delete the folder or choose another out_dir (--out)"
    ) in err, err
    assert folder_files(a) == before
