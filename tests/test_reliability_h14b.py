"""Leftovers of the thirteenth hostile probe run (issue 22, "nothing lost, nothing silent"), part B:
records that no longer describe what they sit on (H14-RCP, H14-BPR, H14-QEQ).

A restore of the full-precision weights with ``p.copy_(orig)`` left the record saying "a 3-bit RTN
copy" (H14-RCP); ``dataclasses.replace(alloc, bits=...)`` kept the old ``bpw`` (H14-BPR);
``quantization_errors`` measured an already-quantized model at its own grid (H14-QEQ)."""

from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.model.provenance import (
    WEIGHTS_LOADED,
    AlreadyQuantizedError,
    check_not_quantized,
    load_record,
    model_provenance,
    model_record,
    quantization_steps,
    save_record,
)


def _tiny():
    from lrm_interp.testing import tiny_model

    return tiny_model("llama")


def _copy_back(model: torch.nn.Module, orig: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(orig[k])


# ----------------------------------------------------------------------------- H14-RCP
def test_quantize_after_an_in_place_copy_restore_is_accepted():
    """quantize, restore with ``p.copy_(orig)``, quantize again: accepted, and the record notes the
    in-place change as a ``weights_loaded`` step between the two quantizations."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = {k: v.detach().clone() for k, v in model.named_parameters()}
    quantize_model_(model, bits=3, group_size=16, progress=False)
    _copy_back(model, orig)
    assert quantization_steps(model) == [] and model_record(model).last("quantization") is None
    assert model_record(model).compression[-1] == {"kind": WEIGHTS_LOADED, "via": "weights changed in place"}
    check_not_quantized(model, "why")  # no refusal
    assert model_provenance(model, fingerprint=False)["quantization"] is None
    assert quantize_model_(model, bits=4, group_size=16, progress=False).bits == 4
    kinds = [c["kind"] for c in model_record(model).compression]
    assert kinds == ["quantization", WEIGHTS_LOADED, "quantization"]
    with pytest.raises(AlreadyQuantizedError, match=r"already quantized \(a 4-bit RTN copy"):
        quantize_model_(model, bits=3, group_size=16, progress=False)


def test_a_data_assignment_restore_is_seen_too():
    """``p.data = orig`` (another in-place restore) is seen as well."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = {k: v.detach().clone() for k, v in model.named_parameters()}
    quantize_model_(model, bits=3, group_size=16, progress=False)
    for k, p in model.named_parameters():
        p.data = orig[k].clone()
    assert quantization_steps(model) == []


def test_stacked_quantization_on_purpose_stays_quantized():
    """A second quantization with ``requantize=True`` updates the sample: both steps stay current."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    quantize_model_(model, bits=3, group_size=16, progress=False)
    quantize_model_(model, bits=4, group_size=16, progress=False, requantize=True)
    assert [c["bits"] for c in quantization_steps(model)] == [3, 4]
    with pytest.raises(AlreadyQuantizedError, match="3-bit RTN \\+ 4-bit RTN"):
        check_not_quantized(model, "why")


def test_the_sample_survives_deepcopy_device_moves_casts_and_save_load(tmp_path):
    """The record stays current across ``deepcopy``, ``.to("cpu")``, ``save_record``/``load_record``
    into a model holding the same weights, and a dtype cast (the sample cannot judge there: trusted)."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    quantize_model_(model, bits=3, group_size=16, progress=False)
    twin = copy.deepcopy(model).to("cpu")
    assert [c["bits"] for c in quantization_steps(twin)] == [3]
    save_record(model, tmp_path)
    other = _tiny()
    other.load_state_dict(model.state_dict())
    load_record(other, tmp_path)
    assert [c["bits"] for c in quantization_steps(other)] == [3]
    fresh = _tiny()  # the original weights under the quantized record: not described by it, refused (H28-QRSWAP)
    with pytest.raises(ValueError, match=r"its weights are not the ones lrm_interp_provenance.json describes"):
        load_record(fresh, tmp_path)
    assert quantization_steps(fresh) == []
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert [c["bits"] for c in quantization_steps(half)] == [3]


def test_a_pruning_after_an_in_place_restore_records_the_restore_first():
    """A pruning after a ``copy_`` restore: the record reads quantization, weights_loaded, pruning."""
    from lrm_interp.compress.prune import prune_model_
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = {k: v.detach().clone() for k, v in model.named_parameters()}
    quantize_model_(model, bits=3, group_size=16, progress=False)
    _copy_back(model, orig)
    prune_model_(model, "magnitude", sparsity=0.5, progress=False)
    assert [c["kind"] for c in model_record(model).compression] == ["quantization", WEIGHTS_LOADED, "pruning"]
    assert quantization_steps(model) == []


# ----------------------------------------------------------------------------- H14-BPR
def _alloc():
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits, quantization_errors

    model = _tiny()
    sites = find_sites(model)
    errors = quantization_errors(model, sites, (2, 3, 4, 8, 16))
    return model, sites, allocate_bits(sites, errors, {s.name: 1.0 for s in sites}, 3.5)


def test_replace_with_other_bits_is_refused():
    """``dataclasses.replace(alloc, bits=...)`` keeps the old ``bpw``: refused, naming ``with_bits``;
    the same edit through ``with_bits`` gives the recomputed ``bpw``."""
    import dataclasses

    from lrm_interp.protect.bit_allocation import allocation_bpw, with_bits

    model, sites, alloc = _alloc()
    edit = {s.name: 16 for s in sites[:6]}
    with pytest.raises(ValueError) as e:
        dataclasses.replace(alloc, bits={**dict(alloc.bits), **edit})
    msg = str(e.value)
    assert msg.startswith(f"BitAllocation: bpw {alloc.bpw} was computed for other bits")
    assert "use with_bits(alloc, model, bits), which recomputes it" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="was computed for other bits or another grid"):
        dataclasses.replace(alloc, group_size=64)
    fields = {f.name: getattr(alloc, f.name) for f in dataclasses.fields(alloc)}
    with pytest.raises(ValueError, match="was computed for other bits"):
        type(alloc)(**{**fields, "bits": {**dict(alloc.bits), **edit}})
    new = with_bits(alloc, model, edit)
    assert new.bpw == pytest.approx(allocation_bpw(new.bits, sites, group_size=new.group_size))
    assert new.bpw > alloc.bpw + 1


def test_replace_of_other_fields_copies_pickles_and_round_trips(tmp_path):
    """What stays accepted: ``replace`` of other fields, ``deepcopy``, pickling, ``save``/``load``,
    ``uniform_allocation``, ``with_bits`` results edited again, and allocations built by hand."""
    import dataclasses
    import pickle

    from lrm_interp.protect.bit_allocation import BitAllocation, uniform_allocation, with_bits

    model, sites, alloc = _alloc()
    assert dataclasses.replace(alloc, model=None).bpw == alloc.bpw
    assert dataclasses.replace(alloc, provenance={}).bits == alloc.bits
    for twin in (copy.deepcopy(alloc), pickle.loads(pickle.dumps(alloc))):
        assert twin == alloc and twin.bits_digest == alloc.bits_digest
        with pytest.raises(ValueError, match="computed for other bits"):
            dataclasses.replace(twin, bits={**dict(alloc.bits), sites[0].name: 16})
    loaded = BitAllocation.load(alloc.save(tmp_path / "a.json"))
    assert loaded == alloc and loaded.bits_digest == alloc.bits_digest
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'a.json'}: bpw .* computed for other bits"):
        dataclasses.replace(loaded, bits={**dict(alloc.bits), sites[0].name: 16})
    u = uniform_allocation(sites, 4, model=model)
    assert dataclasses.replace(u, model=None).bpw == u.bpw
    w = with_bits(with_bits(alloc, sites, {sites[0].name: 8}), sites, {sites[1].name: 8})
    assert w.bits[sites[1].name] == 8
    by_hand = BitAllocation({sites[0].name: 4}, 4.25, None, "none")
    assert by_hand.bits_digest is None
    assert dataclasses.replace(by_hand, bits={sites[0].name: 3}).bpw == 4.25  # unstamped: as before


# ----------------------------------------------------------------------------- H14-QEQ
_QEQ_WHY = "its quantization errors would be measured on a grid already applied"


def test_quantization_errors_refuse_an_in_memory_quantized_copy():
    """A ``quantize_model_`` copy (its record holds the step) is refused with one line; the
    full-precision model is measured as before, and ``requantize=True`` measures the copy on purpose."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import quantization_errors

    model = _tiny()
    sites = find_sites(model)
    q = copy.deepcopy(model)
    quantize_model_(q, bits=3, group_size=16, progress=False)
    with pytest.raises(AlreadyQuantizedError) as e:
        quantization_errors(q, sites, (2, 3, 4), group_size=16)
    msg = str(e.value)
    assert msg.startswith("the model is already quantized (a 3-bit RTN copy by its provenance record")
    assert _QEQ_WHY in msg and "pass requantize=True" in msg and "\n" not in msg
    fp = quantization_errors(model, sites, (2, 3, 4), group_size=16)
    on_purpose = quantization_errors(q, sites, (2, 3, 4), group_size=16, requantize=True)
    k = sites[0].name
    assert on_purpose[k][3] < 1e-6 * fp[k][3]  # what the refusal keeps out of an allocation
    with pytest.raises(ValueError, match="requantize must be True or False"):
        quantization_errors(model, sites, (3,), requantize="no")


def test_quantization_errors_refuse_a_quantize_result_loaded_with_from_pretrained(tmp_path):
    """The probe's case: ``from_pretrained`` of a ``quantize`` result (no record) is refused by the
    folder it was loaded from, as ``bits --model Q3`` is."""
    from cli_run import run_cli
    from transformers import AutoModelForCausalLM

    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import quantization_errors

    out = tmp_path / "Q3"
    assert run_cli(["quantize", "--model", "toy", "--bits", 3, "--out", out, "--quiet"]) == 0
    q = AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(AlreadyQuantizedError, match=rf"loaded from {out} without its lrm_interp record.*{_QEQ_WHY}"):
        quantization_errors(q, find_sites(q), (2, 3, 4, 8, 16))
