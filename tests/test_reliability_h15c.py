"""Issue 22 ("nothing lost, nothing silent"): the fifteenth probe's cases on bit allocation, masks
and saliency (H15-BST, H15-X-BEF, H15-ASM, H15-ARD, H15-AXS, H15-ASW2, H15-EGR, H15-MSS, H15-USS,
H15-FSZ, H15-BPS, H15-SMM, H15-MBI, H15-SOT).

``BitAllocation.save`` replaced a traces JSONL (any file) with the allocation; a hand-edited
``bits.json`` loaded with its stale ``bpw``; ``allocate_bits`` priced sites missing from the
sensitivity at 0, failed deep inside on swapped or wrong-kind arguments and took errors of another
grid; a pattern string or an empty list of sites, ``bits="3"``, ``save_masks(model=<module>)`` failed
with raw errors; ``build_masks(behavior=...)`` was ignored with a saliency stream; ids beyond the
embedding reached torch's "index out of range in self"."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch


@pytest.fixture(scope="module")
def toy():
    from lrm_interp.toy import load_toy_model

    model, tok = load_toy_model()
    return model.eval(), tok


@pytest.fixture(scope="module")
def sites(toy):
    from lrm_interp import find_sites

    return find_sites(toy[0])


@pytest.fixture(scope="module")
def errors(toy, sites):
    from lrm_interp.protect.bit_allocation import quantization_errors

    return quantization_errors(toy[0], sites, (2, 3, 4, 8, 16), relative=True, group_size=128, symmetric=True)


@pytest.fixture(scope="module")
def res(toy):
    import lrm_interp
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = toy
    return lrm_interp.attribute(model, generate_dataset(n_per_family=1, seed=4242), tokenizer=tok, progress=False)


def _alloc(errors, sites):
    from lrm_interp.protect.bit_allocation import allocate_bits

    return allocate_bits(sites, errors, None, 3.5, group_size=128, symmetric=True)


def test_bit_allocation_save_never_replaces_a_file_that_is_not_a_bits_allocation(toy, errors, sites, tmp_path):
    from lrm_interp._io import OtherResultError
    from lrm_interp.protect.bit_allocation import BitAllocation
    from lrm_interp.toy.tasks import generate_dataset

    alloc = _alloc(errors, sites)
    traces = tmp_path / "traces.jsonl"
    generate_dataset(n_per_family=1, seed=1).save_jsonl(traces)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    for p, says in (  # traces are known by their shape (H17-TRO): another kind of result, named
        (traces, r"holds reasoning traces \(JSON lines\): not replaced by a bits allocation"),
        (notes, "BitAllocation.save replaces only a bits allocation file"),
    ):
        before = p.read_bytes()
        with pytest.raises(OtherResultError, match=says):
            alloc.save(p)
        assert p.read_bytes() == before
    # an earlier allocation is replaced as before; replace=False refuses it; an empty file holds nothing
    bits = tmp_path / "bits.json"
    alloc.save(bits)
    alloc.save(bits)
    with pytest.raises(FileExistsError):
        alloc.save(bits, replace=False)
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    alloc.save(empty)
    assert BitAllocation.load(empty) == alloc


def test_a_hand_edited_bits_file_is_refused_on_load_and_an_old_one_loads(errors, sites, tmp_path):
    from lrm_interp.protect.bit_allocation import BitAllocation

    alloc = _alloc(errors, sites)
    p = alloc.save(tmp_path / "b.json")
    assert BitAllocation.load(p) == alloc
    d = json.loads(p.read_text())
    d["bits"][sites[0].name] = 16
    edited = tmp_path / "b_edit.json"
    edited.write_text(json.dumps(d, indent=1))
    with pytest.raises(ValueError, match=r"b_edit.json: the bit allocation file was edited.*with_bits"):
        BitAllocation.load(edited)
    del d["bits_digest"]  # a file written before the digest was recorded loads as before
    d["bits"][sites[0].name] = alloc.bits[sites[0].name]
    old = tmp_path / "b_old.json"
    old.write_text(json.dumps(d, indent=1))
    assert BitAllocation.load(old) == alloc


def test_allocate_bits_refuses_a_sensitivity_lacking_sites(errors, sites):
    from lrm_interp.protect.bit_allocation import allocate_bits

    mlp_only = {s.name: 1.0 for s in sites if s.block == "mlp"}
    n_missing = len(sites) - len(mlp_only)
    with pytest.raises(ValueError, match=rf"sensitivity has no value for {n_missing} of {len(sites)} sites \(e\.g\."):
        allocate_bits(sites, errors, mlp_only, 3.5, group_size=128, symmetric=True)


def test_allocate_bits_takes_an_attribution_as_its_mean_relative_importance(errors, sites, res):
    from lrm_interp.protect.bit_allocation import allocate_bits

    a = allocate_bits(sites, errors, res, 3.5, group_size=128, symmetric=True, name="attribution")
    b = allocate_bits(sites, errors, res.site_ri(), 3.5, group_size=128, symmetric=True, name="attribution")
    assert a.bits == b.bits


def test_allocate_bits_refuses_an_attribution_of_another_model(toy, sites, res):
    import copy

    from lrm_interp.protect.bit_allocation import allocate_bits, quantization_errors

    other = copy.deepcopy(toy[0])
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    err_b = quantization_errors(other, sites, (2, 3, 4, 8, 16), relative=True, group_size=128, symmetric=True)
    with pytest.raises(ValueError, match=r"the sensitivity \(an Attribution\) was computed on another model"):
        allocate_bits(sites, err_b, res, 3.5, group_size=128, symmetric=True)


def test_allocate_bits_names_swapped_errors_and_sensitivity(errors, sites):
    from lrm_interp.protect.bit_allocation import allocate_bits

    sens = {s.name: 1.0 for s in sites}
    with pytest.raises(TypeError, match="errors and sensitivity swapped"):
        allocate_bits(sites, sens, errors, 3.5)
    with pytest.raises(TypeError, match="errors and sensitivity swapped"):
        allocate_bits(sites, errors, errors, 3.5, group_size=128, symmetric=True)


def test_allocate_bits_refuses_errors_measured_on_another_grid(toy, errors, sites):
    from lrm_interp.protect.bit_allocation import allocate_bits, quantization_errors

    e32 = quantization_errors(toy[0], sites, (2, 3, 4, 8, 16), relative=True, group_size=32, symmetric=False)
    with pytest.raises(ValueError, match=r"errors were measured on another grid \(group_size=32, symmetric=False\)"):
        allocate_bits(sites, e32, None, 3.5, group_size=128, symmetric=True)
    allocate_bits(sites, dict(e32), None, 3.5, group_size=128, symmetric=True)  # a plain dict: not compared


def test_a_site_pattern_string_is_refused_naming_find_sites(errors, sites, toy):
    from lrm_interp import build_masks, build_saliency
    from lrm_interp.protect.bit_allocation import allocate_bits, uniform_allocation
    from lrm_interp.protect.encoding import bits_per_weight

    sal = build_saliency("magnitude", toy[0], sites, progress=False)
    fix = r"write sites=find_sites\(model, pattern='mlp'\)"
    with pytest.raises(TypeError, match=fix):
        build_masks("mlp", "global_top", 0.02, saliency=sal)
    with pytest.raises(TypeError, match=fix):
        uniform_allocation("mlp", 4)
    with pytest.raises(TypeError, match=fix):
        allocate_bits("mlp", errors, None, 3.5)
    with pytest.raises(TypeError, match=fix):
        bits_per_weight({}, "mlp", bits=3)


def test_uniform_allocation_refuses_bits_as_a_string(sites):
    from lrm_interp.protect.bit_allocation import uniform_allocation

    with pytest.raises(ValueError, match=r"uniform_allocation: bits must be an integer 2\.\.8 or 16 .*got '3'"):
        uniform_allocation(sites, "3")
    assert uniform_allocation(sites, 16).counts() == {16: len(sites)}


def test_an_empty_site_list_is_refused_as_empty(toy, errors):
    from lrm_interp import build_masks, build_saliency, find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits, uniform_allocation

    none: list = []
    with pytest.raises(ValueError, match="build_saliency: sites is empty"):  # H32-SALSITES: refused here first
        build_saliency("magnitude", toy[0], none, progress=False)
    sal = build_saliency("magnitude", toy[0], list(find_sites(toy[0]))[:1], progress=False)
    with pytest.raises(ValueError, match="build_masks: sites is empty"):
        build_masks(none, "global_top", 0.02, saliency=sal)
    with pytest.raises(ValueError, match="allocate_bits: sites is empty"):
        allocate_bits(none, {}, None, 3.5)
    with pytest.raises(ValueError, match="uniform_allocation: sites is empty"):
        uniform_allocation(none, 3)


def test_bits_per_weight_refuses_bits_as_a_string(sites):
    from lrm_interp.protect.encoding import bits_per_weight

    with pytest.raises(ValueError, match=r"bits must be in 2\.\.8, got '3'"):
        bits_per_weight({}, sites, bits="3")


def test_save_masks_takes_the_model_as_its_record(toy, sites, tmp_path):
    from lrm_interp import build_masks, build_saliency
    from lrm_interp.model.provenance import weights_record
    from lrm_interp.protect.encoding import load_masks, save_masks

    masks = build_masks(sites, "global_top", 0.02, saliency=build_saliency("magnitude", toy[0], sites, progress=False))
    p = save_masks(masks, tmp_path / "m.safetensors", model=toy[0])
    assert load_masks(p)[0].model["weights_fingerprint"] == weights_record(toy[0])["weights_fingerprint"]
    with pytest.raises(TypeError, match=r"save_masks: model must be the model the masks are for .* got int"):
        save_masks(masks, tmp_path / "n.safetensors", model=3)
    assert not (tmp_path / "n.safetensors").exists()


def test_build_masks_refuses_behavior_with_a_saliency_stream(toy, sites):
    from lrm_interp import build_masks, build_saliency

    sal = build_saliency("magnitude", toy[0], sites, progress=False)
    with pytest.raises(ValueError, match=r"behavior='backtracking' is read only by policy 'modules_by_score'"):
        build_masks(sites, "global_top", 0.02, saliency=sal, behavior="backtracking")


def test_build_saliency_refuses_token_ids_beyond_the_embedding(toy, sites):
    from lrm_interp import build_saliency
    from lrm_interp.data.tokens import encode_trace
    from lrm_interp.toy.tasks import generate_dataset

    model, tok = toy
    ds = generate_dataset(n_per_family=1, seed=4242)
    rows = model.get_input_embeddings().num_embeddings
    enc = [encode_trace(tok, t) for t in ds]
    ids = enc[0].input_ids.clone()
    ids[-1] = rows + 1
    enc[0] = dataclasses.replace(enc[0], input_ids=ids)
    with pytest.raises(ValueError, match=rf"trace {enc[0].trace_id}: token id {rows + 1} but the model's input"):
        build_saliency("attribution", model, sites, encoded=enc, behaviors=list(ds.behaviors()), progress=False)
