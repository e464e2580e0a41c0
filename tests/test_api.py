"""attribute(): every fixture architecture, quantized layers, resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.results import Attribution
from lrm_interp.cli.main import main as cli_main
from lrm_interp.data import loading as api
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import TINY_ARCHS, byte_tokenizer, tiny_model


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_attribute_every_arch(arch, tokenizer):
    model = tiny_model(arch)
    ds = synthetic_traces(4, skip={1: {"example-testing"}})
    res = lrm_interp.attribute(model, ds, tokenizer=tokenizer, progress=False)
    sites = find_sites(model)
    assert res.site_names == tuple(s.name for s in sites)
    assert res.behaviors == ("backtracking", "uncertainty-estimation", "example-testing", "adding-knowledge")
    assert torch.isfinite(res.scores).all() and (res.scores >= 0).all()
    assert (res.scores.sum(dim=1) > 0).all()
    assert torch.allclose(res.ri.sum(dim=1), torch.ones(4, dtype=torch.float64))
    counts = res.provenance["counts"]
    assert counts["traces_with_behavior"]["example-testing"] == 3
    assert counts["traces_with_behavior"]["backtracking"] == 4
    # steering vectors: one per (behaviour, site), rescaled to the site's mean-activation norm
    for b in res.behaviors:
        assert set(res.vectors[b]) == set(res.site_names)
        for s in sites:
            assert res.vectors[b][s.name].shape == (s.out_features,)
    # no hook left behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for _, m in model.named_modules())


def test_attribute_quantized_stub(tokenizer):
    from lrm_interp.testing import quantize_stub_

    model = tiny_model("llama")
    quantize_stub_(model)
    assert all(s.module_type != "Linear" for s in find_sites(model))
    res = lrm_interp.attribute(model, synthetic_traces(3), tokenizer=tokenizer, progress=False)
    assert len(res.sites) == 14 and (res.scores.sum(dim=1) > 0).all()


def test_dom_method_and_behaviour_errors(tokenizer, tiny_llama):
    ds = synthetic_traces(3)
    res = lrm_interp.attribute(
        tiny_llama, ds, tokenizer=tokenizer, method="dom", behaviors=["backtracking"], progress=False
    )
    assert res.method == "dom" and res.scores.shape == (1, 14)
    with pytest.raises(ValueError, match="method must be one of"):
        lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, method="nope")
    with pytest.warns(UserWarning, match="made-up"):
        res2 = lrm_interp.attribute(
            tiny_llama, ds, tokenizer=tokenizer, behaviors=["backtracking", "made-up"], progress=False
        )
    assert res2.provenance["absent_behaviors"] == ["made-up"]
    assert res2.behaviors == ("backtracking",) and res2.scores.shape == (1, 14)  # no all-zero row


def test_resume_after_kill_gives_identical_result(tokenizer, tiny_llama, tmp_path, monkeypatch):
    ds = synthetic_traces(5)
    full = lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, progress=False)

    import lrm_interp.attribution.pipeline as atp_mod  # the stage calls atp_trace_stats through it

    real = atp_mod.atp_trace_stats
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(atp_mod, "atp_trace_stats", dying)
    with pytest.raises(KeyboardInterrupt):
        lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "partial" / "dom").glob("*.safetensors"))) == 5
    assert len(list((tmp_path / "partial" / "atp").glob("*.safetensors"))) == 2
    monkeypatch.setattr(atp_mod, "atp_trace_stats", real)
    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(atp_mod, "atp_trace_stats", counting)
    resumed = lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, out_dir=tmp_path, progress=False)
    assert counted["n"] == 3  # only the unfinished traces were recomputed
    assert torch.equal(resumed.scores, full.scores)
    back = Attribution.load(tmp_path)
    assert torch.equal(back.scores, full.scores)
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        lrm_interp.attribute(tiny_llama, ds, tokenizer=tokenizer, out_dir=tmp_path, k_context=2, progress=False)


def test_load_dataset_forms(tmp_path, paper_layout_dir):
    ds = synthetic_traces(2)
    p = ds.save_jsonl(tmp_path / "t.jsonl")
    assert len(api.load_dataset(p)) == 2
    assert len(api.load_dataset(list(ds))) == 2
    assert len(api.load_dataset(tmp_path)) == 2  # a folder with one jsonl
    pl = api.load_dataset(paper_layout_dir)
    assert len(pl) >= 7
    with pytest.raises(FileNotFoundError):
        api.load_dataset(tmp_path / "missing.jsonl")


def test_cli_attribute_and_compare(tmp_path, tokenizer):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    synthetic_traces(3).save_jsonl(tmp_path / "t.jsonl")
    rc = cli_main(
        [
            "attribute",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "t.jsonl"),
            "--out",
            str(tmp_path / "a"),
            "--quiet",
        ]
    )
    assert rc == 0
    for f in ("attribution.json", "attribution.safetensors", "scores.csv", "heatmap.png"):
        assert (tmp_path / "a" / f).stat().st_size > 0
    meta = json.loads((tmp_path / "a" / "attribution.json").read_text())
    assert meta["provenance"]["counts"]["traces"] == 3
    rc = cli_main(
        [
            "attribute",
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "t.jsonl"),
            "--out",
            str(tmp_path / "b"),
            "--quiet",
            "--mode",
            "joint",
        ]
    )
    assert rc == 0
    rc = cli_main(
        [
            "compare",
            "--original",
            str(tmp_path / "a"),
            "--compressed",
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 0 and (tmp_path / "c" / "shift.csv").exists()
    assert (
        cli_main(
            [
                "attribute",
                "--model",
                str(tmp_path / "nope"),
                "--data",
                str(tmp_path / "t.jsonl"),
                "--out",
                str(tmp_path / "d"),
                "--quiet",
            ]
        )
        == 2
    )


def test_bytes_tokenizer_roundtrip_offline(tmp_path):
    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back("abc")["input_ids"] == tok("abc")["input_ids"] == [256, 97, 98, 99]


#: The compression, protection, evaluation / benchmark and experiment entry points of the public
#: API, with the module that defines each (the objects must be the same).
PUBLIC_ENTRY_POINTS = {
    "lrm_interp.compress.quant.apply": ("quantize_model_", "QuantReport"),
    "lrm_interp.compress.prune.apply": ("prune_model_", "PruneReport"),
    "lrm_interp.compress.specs": ("CompressionSpec", "parse_compression", "apply_compression"),
    "lrm_interp.compress.quant.format": ("save_quantized", "load_quantized"),
    "lrm_interp.compress.calibration": ("calibration_ids",),
    "lrm_interp.protect.registry": ("SALIENCIES", "build_saliency"),
    "lrm_interp.protect.masks": ("ProtectionMask", "MaskSet"),
    "lrm_interp.protect.policies": ("build_masks",),
    "lrm_interp.protect.encoding": ("save_masks", "load_masks", "bits_per_weight"),
    "lrm_interp.protect.bit_allocation": (
        "BitAllocation",
        "allocate_bits",
        "quantization_errors",
        "quantize_allocation_",
        "uniform_allocation",
    ),
    "lrm_interp.evaluation.divergence": ("divergence",),
    "lrm_interp.evaluation.intervals": ("wilson_interval", "bootstrap_interval"),
    "lrm_interp.evaluation.backends": ("GenerationSettings",),
    "lrm_interp.evaluation.bench_run": ("run_benchmark",),
    "lrm_interp.evaluation.bench_suite": ("run_suite", "SuiteConfig"),
    "lrm_interp.evaluation.bench_score": ("score_outputs", "BenchScores"),
    "lrm_interp.experiments.protection": ("ExperimentSettings", "ProtectionPlanner"),
    "lrm_interp.experiments.protection_table": ("run_protection_experiment",),
    "lrm_interp.experiments.study": ("run_study", "StudySettings", "StudyResult"),
    "lrm_interp._io": ("atomic_write_text", "atomic_write_bytes"),
}


def test_public_api_exports_compression_protection_and_benchmark_entry_points():
    import importlib

    for module, names in PUBLIC_ENTRY_POINTS.items():
        mod = importlib.import_module(module)
        for name in names:
            assert name in lrm_interp.__all__ and name in dir(lrm_interp), name
            # the exported atomic writers are the checked ones of _io (H9-PYW): lrm_interp._PUBLIC_AS
            defined = lrm_interp._PUBLIC_AS.get(name, name)
            assert getattr(lrm_interp, name) is getattr(mod, defined), f"lrm_interp.{name} is not {module}.{defined}"
    assert all(not n.startswith("_") for n in lrm_interp.__all__)
    with pytest.raises(AttributeError, match="no attribute 'prune_magnitude'"):
        lrm_interp.prune_magnitude  # noqa: B018 - a name the API does not export


def test_importing_the_package_stays_cheap():
    """``import lrm_interp`` loads no module of the package and not torch: every public name is
    imported on first use."""
    import subprocess
    import sys

    code = (
        "import sys, lrm_interp; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lrm_interp.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api_runs_compression_and_protection(tmp_path):
    """The root's names are enough for the protect → quantize → masks file → spec-string path."""
    model = tiny_model("llama")
    sites = lrm_interp.find_sites(model)
    masks = lrm_interp.build_masks(
        sites, "global_top", 0.02, saliency=lrm_interp.build_saliency("magnitude", model, sites, progress=False)
    )
    bpw = lrm_interp.bits_per_weight(masks, sites, bits=3)["bpw"]
    assert 3 < bpw < 4
    rep = lrm_interp.quantize_model_(model, bits=3, masks=masks, progress=False)
    assert isinstance(rep, lrm_interp.QuantReport) and rep.n_protected == sum(m.n_protected for m in masks.values())
    lrm_interp.save_masks(masks, tmp_path / "masks.safetensors")
    back, _ = lrm_interp.load_masks(tmp_path / "masks.safetensors")
    assert set(back) == set(masks)
    pruned, report = lrm_interp.apply_compression(model, lrm_interp.parse_compression("magnitude:0.5"), progress=False)
    assert pruned is not model and report["method"] == "magnitude"
    lrm_interp.atomic_write_text(tmp_path / "table.md", "| a |\n")
    assert (tmp_path / "table.md").read_text() == "| a |\n"
