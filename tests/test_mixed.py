"""Module-level mixed precision: costs, greedy allocation under a bpw budget, quantization at the
allocated bits, and the GPTQModel / llm-compressor exports (the latter run in llm-compressor)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.model.weights import weight_matrix
from lrm_interp.protect import exports
from lrm_interp.protect.bit_allocation import (
    BitAllocation,
    allocate_bits,
    allocation_bpw,
    quantization_errors,
    quantize_allocation_,
    uniform_allocation,
)
from lrm_interp.protect.encoding import bits_per_weight
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.testing import byte_tokenizer, tiny_model

CHOICES = (2, 3, 4, 8, 16)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", hidden=128, intermediate=256, heads=4, kv_heads=2, seed=3)


def test_costs_agree_with_bits_per_weight(model):
    sites = find_sites(model)
    for b in (2, 3, 4):
        for sym in (False, True):
            assert uniform_allocation(sites, b, symmetric=sym).bpw == pytest.approx(
                bits_per_weight({}, sites, bits=b, symmetric=sym)["bpw"], rel=1e-12
            )
    # a module kept in FP16 costs what a fully protected module costs in bits_per_weight
    s0 = sites[0]
    bits = {s.name: 3 for s in sites} | {s0.name: 16}
    full = {s0.name: ProtectionMask.full(s0.name, (s0.out_features, s0.in_features))}
    assert allocation_bpw(bits, sites) == pytest.approx(bits_per_weight(full, sites, bits=3)["bpw"], rel=1e-12)


def test_quantization_errors_are_the_rtn_errors(model):
    sites = find_sites(model)[:3]
    err = quantization_errors(model, sites, CHOICES)
    rel = quantization_errors(model, sites, CHOICES, relative=True)
    for s in sites:
        W = weight_matrix(get_module(model, s.name)).float()
        for b in (2, 3, 4, 8):
            naive = float(((rtn_quantize(W, b) - W) ** 2).sum())
            assert err[s.name][b] == pytest.approx(naive, rel=1e-6)
            assert rel[s.name][b] == pytest.approx(naive / float((W**2).sum()), rel=1e-6)
        assert err[s.name][16] == 0.0
        assert err[s.name][2] > err[s.name][3] > err[s.name][4] > err[s.name][8] > 0


def test_hessian_sensitivity_is_mean_diagonal():
    from lrm_interp.protect.bit_allocation import hessian_sensitivity

    X = torch.randn(50, 8, dtype=torch.float64)
    H = X.T @ X / 50
    assert hessian_sensitivity({"a": H})["a"] == pytest.approx(float((X**2).mean()), rel=1e-12)


def test_allocation_respects_budget_and_follows_sensitivity(model):
    sites = find_sites(model)
    err = quantization_errors(model, sites, CHOICES, relative=True)
    hot = sites[5].name
    sens = {s.name: 1.0 for s in sites} | {hot: 1e6}
    objectives = []
    for budget in (2.3, 3.25, 4.25, 6.0):
        alloc = allocate_bits(sites, err, sens, budget, choices=CHOICES, name="attribution")
        assert alloc.bpw <= budget + 1e-12 and alloc.bpw == pytest.approx(allocation_bpw(alloc.bits, sites))
        objectives.append(alloc.provenance["objective"])
        # nothing left out: no single further upgrade fits the budget
        n = sum(s.n_weights for s in sites)
        hb = alloc.bits[hot]
        if hb != 16:  # the sensitive module is served first: below 16 bits only if its next step cannot fit
            up = dict(alloc.bits, **{hot: CHOICES[CHOICES.index(hb) + 1]})
            assert allocation_bpw(up, sites) > budget
        for s in sites:
            b = alloc.bits[s.name]
            if b != 16:
                up = dict(alloc.bits, **{s.name: CHOICES[CHOICES.index(b) + 1]})
                assert allocation_bpw(up, sites) * n > budget * n - 1e-6
    assert objectives == sorted(objectives, reverse=True)  # more bits, less modelled loss
    assert allocate_bits(sites, err, sens, 4.25, choices=CHOICES).bits[hot] == 16
    assert allocate_bits(sites, err, None, 4.25, choices=CHOICES).bits[hot] < 16
    with pytest.raises(ValueError, match="below the cheapest allocation"):
        allocate_bits(sites, err, None, 2.0, choices=CHOICES)
    with pytest.raises(ValueError, match=">= 0"):
        allocate_bits(sites, err, {s.name: 1.0 for s in sites} | {hot: -1.0}, 3.0, choices=CHOICES)


def test_quantize_allocation_uses_each_modules_bits(model, tmp_path):
    import copy

    sites = find_sites(model)
    bits = {s.name: CHOICES[i % len(CHOICES)] for i, s in enumerate(sites)}
    alloc = BitAllocation(bits, allocation_bpw(bits, sites), None, "test")
    q = copy.deepcopy(model)
    quantize_allocation_(q, alloc, progress=False)
    for s in sites:
        W = weight_matrix(get_module(model, s.name))
        got = weight_matrix(get_module(q, s.name))
        ref = W if bits[s.name] == 16 else rtn_quantize(W, bits[s.name])
        assert torch.equal(got, ref), s.name
    assert alloc.counts() == {b: sum(v == b for v in bits.values()) for b in CHOICES}
    df = alloc.to_dataframe()
    assert list(df["site"]) == list(bits) and list(df["bits"]) == list(bits.values())
    alloc.save(tmp_path / "bits.json")
    assert BitAllocation.load(tmp_path / "bits.json") == alloc
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="bad.json: not a bit allocation file"):
        BitAllocation.load(tmp_path / "bad.json")


def test_toolchain_configs(model):
    sites = find_sites(model)
    bits = {s.name: CHOICES[i % len(CHOICES)] for i, s in enumerate(sites)}
    alloc = BitAllocation(bits, allocation_bpw(bits, sites), None, "test", group_size=64)
    dyn = exports.gptqmodel_dynamic_bits(alloc, default_bits=4)
    assert dyn["-:^model\\.layers\\.0\\.mlp\\.gate_proj$"] == {}
    assert dyn["+:^model\\.layers\\.0\\.self_attn\\.q_proj$"] == {"bits": 2, "group_size": 64, "sym": False}
    # every module's grid, those at the default bits too (they took the QuantizeConfig's, H13-GQS)
    assert dyn["+:^model\\.layers\\.0\\.self_attn\\.v_proj$"] == {"bits": 4, "group_size": 64, "sym": False}
    assert len(dyn) == len(bits)
    cg = exports.llmcompressor_config_groups(alloc)
    assert cg["ignore"] == ["lm_head"] + [n for n, b in bits.items() if b == 16]
    assert {g["weights"]["num_bits"] for g in cg["config_groups"].values()} == {2, 3, 4, 8}
    assert sum(len(g["targets"]) for g in cg["config_groups"].values()) == sum(b != 16 for b in bits.values())


@pytest.mark.slow
def test_llmcompressor_stores_each_module_at_its_allocated_bits(model, tmp_path):
    sites = find_sites(model)
    bits = {s.name: CHOICES[i % len(CHOICES)] for i, s in enumerate(sites)}  # every width, q/k/v/o/mlp mixed
    alloc = BitAllocation(bits, allocation_bpw(bits, sites), None, "test")
    model.save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    (tmp_path / "spec.json").write_text(json.dumps(exports.llmcompressor_config_groups(alloc)))
    job = Path(__file__).parent / "jobs" / "llmcompressor_job.py"
    from test_llmcompressor_export import _venv  # its venv, built once

    r = subprocess.run(
        [str(_venv()), str(job), str(tmp_path / "m"), str(tmp_path / "spec.json"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=""),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    by_target = {t: g["weights"]["num_bits"] for g in res["config_groups"].values() for t in g["targets"]}
    for s in sites:
        t = res["modules"][s.name]["tensors"]
        b = alloc.bits[s.name]
        if b == 16:
            assert "weight" in t and "weight_packed" not in t, s.name
            continue
        assert by_target[exports.llmcompressor_config_groups(alloc)["config_groups"][f"w{b}"]["targets"][0]] == b
        packed_cols = t["weight_packed"][0][1]
        assert packed_cols * 32 == s.in_features * b, (s.name, b, packed_cols)  # int32 words hold the b-bit codes


def test_bits_cli_writes_allocation_and_configs(tmp_path, capsys):
    from synth import synthetic_traces

    from lrm_interp.cli.main import main

    d = tmp_path / "model"
    tiny_model("llama", hidden=128, intermediate=256, heads=4, kv_heads=2, seed=3).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    data = synthetic_traces(2).save_jsonl(tmp_path / "t.jsonl")
    assert main(["attribute", "--model", str(d), "--data", str(data), "--out", str(tmp_path / "attr"), "--quiet"]) == 0
    out, cfg = tmp_path / "bits.json", tmp_path / "groups.json"
    assert (
        main(
            [
                "bits",
                "--model",
                str(d),
                "--scores",
                str(tmp_path / "attr"),
                "--budget",
                "3.5",
                "--out",
                str(out),
                "--llmcompressor",
                str(cfg),
                "--gptqmodel",
                str(tmp_path / "dyn.json"),
                "--default-bits",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    alloc = BitAllocation.load(out)
    assert alloc.sensitivity == "attribution" and alloc.bpw <= 3.5 and f"{alloc.bpw:.4f} bits/weight" in printed
    assert json.loads(cfg.read_text()) == exports.llmcompressor_config_groups(alloc)
    assert json.loads((tmp_path / "dyn.json").read_text()) == exports.gptqmodel_dynamic_bits(alloc, default_bits=3)
    # the allocation is the library's for the same inputs
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.loading import load_model

    m, _ = load_model(str(d))
    sites = find_sites(m)
    ref = allocate_bits(
        sites,
        quantization_errors(m, sites, CHOICES, relative=True),
        Attribution.load(tmp_path / "attr").site_ri(),
        3.5,
        choices=CHOICES,
        name="attribution",
    )
    assert ref.bits == alloc.bits
    assert (
        main(
            [
                "bits",
                "--model",
                str(d),
                "--sensitivity",
                "hessian",
                "--budget",
                "3.5",
                "--out",
                str(tmp_path / "h.json"),
                "--quiet",
            ]
        )
        == 0
    )
    assert BitAllocation.load(tmp_path / "h.json").sensitivity == "hessian"
    capsys.readouterr()
    new = str(tmp_path / "new.json")
    assert main(["bits", "--model", str(d), "--budget", "3", "--out", new]) == 2
    assert "--scores" in capsys.readouterr().err
    assert main(["bits", "--model", str(d), "--sensitivity", "none", "--budget", "1.5", "--out", new]) == 2
    assert "below the cheapest allocation" in capsys.readouterr().err
    # an allocation (or an export) already there is replaced only with --overwrite
    before = out.read_bytes()
    for extra in ([], ["--llmcompressor", str(cfg)]):
        assert (
            main(
                [
                    "bits",
                    "--model",
                    str(d),
                    "--sensitivity",
                    "hessian",
                    "--budget",
                    "3.5",
                    "--out",
                    str(out) if not extra else new,
                    *extra,
                    "--quiet",
                ]
            )
            == 2
        )
        err = capsys.readouterr().err  # its own kind of file (an allocation, an export): "pass --overwrite"
        assert "the file exists; pass --overwrite to replace it" in err
    assert out.read_bytes() == before and not (tmp_path / "new.json").exists()
    assert (
        main(
            [
                "bits",
                "--model",
                str(d),
                "--sensitivity",
                "hessian",
                "--budget",
                "3.5",
                "--out",
                str(out),
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert BitAllocation.load(out).sensitivity == "hessian"


@pytest.mark.parametrize("budget", [float("nan"), float("inf"), 0.0, -1.0])
def test_allocate_bits_refuses_a_budget_that_is_not_a_number_of_bits(model, budget):
    """Issue 22: a NaN budget compared false against every cost, so every module silently got 16
    bits; now any budget that is not a finite positive number is refused."""
    sites = find_sites(model)
    err = quantization_errors(model, sites, CHOICES)
    with pytest.raises(ValueError, match="budget_bpw must be a finite number > 0"):
        allocate_bits(sites, err, None, budget, choices=CHOICES)


def test_allocate_bits_refuses_bad_choices_and_sensitivities(model):
    sites = find_sites(model)
    err = quantization_errors(model, sites, CHOICES)
    for bad in ([1, 4], [4, 9], [4, 2.5], []):
        with pytest.raises(ValueError, match="choices"):
            allocate_bits(sites, err, None, 4.0, choices=bad)
    with pytest.raises(ValueError, match="finite and >= 0, got nan"):
        allocate_bits(sites, err, {s.name: 1.0 for s in sites} | {sites[0].name: float("nan")}, 4.0, choices=CHOICES)
    with pytest.raises(ValueError, match="group_size must be positive or None, got 0"):
        allocate_bits(sites, err, None, 4.0, choices=CHOICES, group_size=0)


def test_old_module_path_is_a_deprecated_re_export():
    """``lrm_interp.protect.mixed`` (the old name of ``protect/bit_allocation.py``) still imports,
    for one release, with a DeprecationWarning naming the new module; the names are the same objects."""
    import importlib
    import sys

    import lrm_interp.protect.bit_allocation as new

    sys.modules.pop("lrm_interp.protect.mixed", None)
    with pytest.warns(DeprecationWarning, match="lrm_interp.protect.bit_allocation"):
        old = importlib.import_module("lrm_interp.protect.mixed")
    assert set(old.__all__) >= set(new.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
