"""Leftovers of the eleventh hostile probe run (issue 22, "nothing lost, nothing silent"), part A: a
model that is already quantized given where the full-precision model is meant (H12-QQ, H12-EXQ).

``quantize --model ./Q`` (a ``quantize`` result) put a 4-bit grid on 3-bit weights and recorded
"bits 4, 4.25 bits/weight"; ``toy eval --bits``, ``bench run --compress rtn:4`` and ``bits`` did
likewise, and ``experiment protection --model ./Q`` labelled the 3-bit model its "fp" row. In
Python, ``quantize_model_`` run twice on one model (a notebook cell run again) reported the second
bits. Each is refused now, before anything loads (the CLI) or any weight changes (the API)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.model.provenance import AlreadyQuantizedError


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """``quantize --model toy --bits 3 --out Q``."""
    out = tmp_path_factory.mktemp("h12a") / "Q"
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", out, "--quiet"]) == 0
    return out


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize(
    "argv, words",
    [
        (["quantize", "--bits", 4, "--out", "{t}/Q4", "--quiet"], "puts a second grid on the first"),
        (["toy", "eval", "--bits", 4, "--per-family", 1, "--quiet"], "--bits 4 quantizes it again"),
        (
            ["bench", "run", "--compress", "rtn:4", "--tasks", "math", "--per-family", 1, "--out", "{t}/B", "--quiet"],
            "--compress rtn4 quantizes it again",
        ),
        (
            ["bits", "--sensitivity", "none", "--budget", 3.5, "--out", "{t}/b.json", "--quiet"],
            "full-precision weights",
        ),
        (["experiment", "protection", "--per-family", 1, "--only", "fp", "--out", "{t}/EX", "--quiet"], "fp row"),
    ],
    ids=["quantize", "toy-eval", "bench-run", "bits", "experiment"],
)
def test_a_quantized_copy_as_model_is_refused_before_anything_is_written(quantized, tmp_path, capsys, argv, words):
    """Every command that quantizes its --model itself (or labels it full precision) refuses a
    ``quantize`` result, naming its record and the original model; nothing is written."""
    before = _listing(tmp_path)
    argv = [str(x).replace("{t}", str(tmp_path)) for x in argv]
    at = 2 if argv[0] in ("toy", "bench", "experiment") else 1
    capsys.readouterr()
    assert _rc([*argv[:at], "--model", quantized, *argv[at:]]) == 2
    err = _err_line(capsys)
    assert f"--model {quantized} is a quantized copy written by 'lrm-interp quantize'" in err
    assert "method rtn, bits 3" in err and words in err and err.endswith("give the original model (toy)")
    assert _listing(tmp_path) == before


def test_what_may_still_run_on_a_quantized_copy(quantized, tmp_path, capsys):
    """Commands that measure the model as it is still take a quantized copy: ``toy eval`` without
    --bits, ``bench run --compress none``, ``attribute`` (the paper compares attributions of
    compressed models)."""
    gold = toy_gold(tmp_path)
    assert _rc(["toy", "eval", "--model", quantized, "--per-family", 1, "--quiet"]) == 0
    argv = ["bench", "run", "--model", quantized, "--tasks", "math", "--per-family", 1, "--max-new-tokens", 4]
    assert _rc([*argv, "--out", tmp_path / "B", "--quiet"]) == 0
    assert _rc(["attribute", "--model", quantized, "--data", gold, "--out", tmp_path / "A", "--quiet"]) == 0


def test_quantize_model_twice_is_refused_and_changes_nothing():
    """A notebook cell run twice: the second ``quantize_model_`` is refused before any weight
    changes, naming the first step; ``requantize=True`` stacks them on purpose."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.provenance import model_record
    from lrm_interp.testing import tiny_model

    model = tiny_model("llama")
    quantize_model_(model, bits=3, group_size=16, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AlreadyQuantizedError, match=r"already quantized \(a 3-bit RTN copy .*start from the original"):
        quantize_model_(model, bits=4, group_size=16, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert len(model_record(model).compression) == 1
    rep = quantize_model_(model, bits=4, group_size=16, progress=False, requantize=True)
    assert rep.bits == 4 and [c["bits"] for c in model_record(model).compression] == [3, 4]
    with pytest.raises(ValueError, match="requantize must be"):
        quantize_model_(tiny_model("llama"), bits=4, requantize="yes", progress=False)


def test_pruning_then_quantizing_is_still_one_quantization():
    """Another kind of step before (a pruned model) is no reason to refuse; a pruned model is
    quantized as before."""
    from lrm_interp.compress.prune import prune_model_
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.provenance import model_record
    from lrm_interp.testing import tiny_model

    model = tiny_model("llama")
    prune_model_(model, "magnitude", sparsity=0.5, progress=False)
    quantize_model_(model, bits=4, group_size=16, progress=False)
    assert [c["kind"] for c in model_record(model).compression] == ["pruning", "quantization"]


def test_an_allocation_is_applied_once_and_never_onto_a_quantized_model():
    """``quantize_allocation_`` quantizes each bit width's sites in turn (its own steps are no
    re-quantization), but refuses a model already quantized, unless ``requantize=True``."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.provenance import model_record
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import BitAllocation, allocation_bpw, quantize_allocation_
    from lrm_interp.testing import tiny_model

    model = tiny_model("llama")
    sites = find_sites(model)
    bits = {s.name: (3 if i % 2 else 4) for i, s in enumerate(sites)}
    alloc = BitAllocation(bits, allocation_bpw(bits, sites, group_size=16), None, "test", group_size=16)
    reps = quantize_allocation_(model, alloc, progress=False)
    assert sorted(r.bits for r in reps) == [3, 4] and len(model_record(model).compression) == 2
    q = tiny_model("llama")
    quantize_model_(q, bits=3, group_size=16, progress=False)
    with pytest.raises(AlreadyQuantizedError, match="allocation's bits are meant for the full-precision weights"):
        quantize_allocation_(q, alloc, progress=False)
    assert len(quantize_allocation_(q, alloc, progress=False, requantize=True)) == 2


def test_study_and_experiment_refuse_a_quantized_model_object(tmp_path):
    """In Python, a model object quantized earlier in the session: ``run_study`` and
    ``run_protection_experiment`` refuse it (its record says so) before writing anything."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.data.toy_tasks import generate_dataset
    from lrm_interp.experiments.study import run_study
    from lrm_interp.model.loading import load_model

    model, tok = load_model("toy")
    quantize_model_(model, bits=3, progress=False)
    with pytest.raises(AlreadyQuantizedError, match="compares it with that model as full precision"):
        run_study(model, generate_dataset(1), tmp_path / "S", tokenizer=tok, bits=3, progress=False)
    assert not (tmp_path / "S").exists()


def test_the_experiment_refuses_a_quantized_folder_in_python(quantized, tmp_path):
    from lrm_interp.experiments.protection_table import run_protection_experiment

    with pytest.raises(ValueError, match=r"is a quantized copy .* fp row is its model"):
        run_protection_experiment(tmp_path / "EX", model=str(quantized), per_family=1, progress=False)
    assert not (tmp_path / "EX").exists()


def test_quantize_requantize_stacks_on_purpose(quantized, tmp_path, capsys):
    """``quantize --requantize`` (the CLI's ``requantize=True``) quantizes a quantized copy anyway;
    its provenance record lists both steps."""
    import json

    out = tmp_path / "Q4"
    assert _rc(["quantize", "--model", quantized, "--bits", 4, "--requantize", "--out", out, "--quiet"]) == 0
    steps = json.loads((out / "lrm_interp_provenance.json").read_text())["compression"]
    assert [(s["kind"], s["bits"]) for s in steps] == [("quantization", 3), ("quantization", 4)]
