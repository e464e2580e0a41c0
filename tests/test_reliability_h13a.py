"""Leftovers of the twelfth hostile probe run (issue 22, "nothing lost, nothing silent"), part A: the
provenance record's view of whether a model is quantized (H13-RST, H13-FPQ).

After ``quantize_model_`` a notebook restored the full-precision weights with
``model.load_state_dict(orig)``, but the record still said "a 3-bit RTN copy": the next
``quantize_model_`` was refused, ``attribute`` recorded the weights as quantized and ``compare``
asked "did you swap?" (H13-RST). A ``quantize`` result loaded with ``from_pretrained`` carried no
record, so ``quantize_model_`` put a second grid on it without a word (H13-FPQ)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.model.provenance import (
    WEIGHTS_LOADED,
    AlreadyQuantizedError,
    ModelRecord,
    check_not_quantized,
    describe_compression,
    load_record,
    model_provenance,
    model_record,
    quantization_steps,
    recorded_compression,
    save_record,
    swapped_compression,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """``quantize --model toy --bits 3 --out Q``."""
    out = tmp_path_factory.mktemp("h13a") / "Q"
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", out, "--quiet"]) == 0
    return out


def _tiny():
    from lrm_interp.testing import tiny_model

    return tiny_model("llama")


# ----------------------------------------------------------------------------- H13-RST
def test_quantize_after_load_state_dict_restore_is_accepted():
    """quantize, restore the full-precision weights with ``load_state_dict``, quantize again: the
    second quantization is accepted (the record no longer vouches for the first), and the record keeps
    the history: the first step, the load, the second step."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = copy.deepcopy(model.state_dict())
    quantize_model_(model, bits=3, group_size=16, progress=False)
    model.load_state_dict(orig)
    assert all(torch.equal(v, orig[k]) for k, v in model.state_dict().items())
    assert quantization_steps(model) == [] and model_record(model).last("quantization") is None
    check_not_quantized(model, "why")  # no refusal
    rep = quantize_model_(model, bits=4, group_size=16, progress=False)
    assert rep.bits == 4
    kinds = [c["kind"] for c in model_record(model).compression]
    assert kinds == ["quantization", WEIGHTS_LOADED, "quantization"]
    assert model_record(model).compression[1] == {"kind": WEIGHTS_LOADED, "via": "load_state_dict"}
    assert [c["bits"] for c in quantization_steps(model)] == [4]
    # a second cell run is still refused: the record vouches for the steps after the load
    with pytest.raises(AlreadyQuantizedError, match=r"already quantized \(a 4-bit RTN copy"):
        quantize_model_(model, bits=3, group_size=16, progress=False)
    # loading again hooks in once: one step per load, not one per recorded step
    model.load_state_dict(orig)
    kinds = [c["kind"] for c in model_record(model).compression]
    assert kinds == ["quantization", WEIGHTS_LOADED, "quantization", WEIGHTS_LOADED]
    assert len(model._load_state_dict_post_hooks) == 1


def test_a_load_into_an_unrecorded_model_adds_nothing():
    """A model whose record holds no compression step gets no hook and no step from a load."""
    model = _tiny()
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    assert model_record(model).compression == ()
    assert len(model._load_state_dict_post_hooks) == 0


def test_deepcopy_keeps_the_record_and_its_hook_acts_on_the_copy():
    """``copy.deepcopy`` of a quantized model copies the record; a load into the copy marks the copy
    only, and the original stays "quantized"."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = copy.deepcopy(model.state_dict())
    quantize_model_(model, bits=3, group_size=16, progress=False)
    twin = copy.deepcopy(model)
    assert [c["bits"] for c in quantization_steps(twin)] == [3]
    twin.load_state_dict(orig)
    assert quantization_steps(twin) == []
    assert [c["bits"] for c in quantization_steps(model)] == [3]
    with pytest.raises(AlreadyQuantizedError):
        check_not_quantized(model, "why")
    check_not_quantized(twin, "why")


def test_the_record_round_trips_through_save_and_load_record(tmp_path):
    """``save_record`` / ``load_record`` keep the history and what it vouches for; a model the record
    is loaded into is hooked as well (a later load marks it)."""
    from lrm_interp.compress.quant import quantize_model_

    model = _tiny()
    orig = copy.deepcopy(model.state_dict())
    quantize_model_(model, bits=3, group_size=16, progress=False)
    model.load_state_dict(orig)
    save_record(model, tmp_path)
    other = _tiny()
    load_record(other, tmp_path)
    assert model_record(other) == model_record(model) and quantization_steps(other) == []
    quantize_model_(model, bits=4, group_size=16, progress=False)
    save_record(model, tmp_path)
    fresh = _tiny()
    fresh.load_state_dict(model.state_dict())  # the weights the record describes (H14-RCP: else stale)
    load_record(fresh, tmp_path)
    assert [c["bits"] for c in quantization_steps(fresh)] == [4]
    fresh.load_state_dict(orig)
    assert quantization_steps(fresh) == []


def test_readers_of_a_saved_provenance_dict_skip_steps_before_a_load():
    """``recorded_compression``, ``describe_compression`` and ``swapped_compression`` read saved
    results: steps before the last ``weights_loaded`` do not count."""
    q3 = {"kind": "quantization", "method": "rtn", "bits": 3}
    loaded = {"kind": WEIGHTS_LOADED, "via": "load_state_dict"}
    restored = {"record": ModelRecord(compression=(q3, loaded)).to_dict()}
    fresh = {"record": ModelRecord().to_dict()}
    assert recorded_compression(restored) == []
    assert swapped_compression(restored, fresh) is None and swapped_compression(fresh, restored) is None
    assert describe_compression([q3, loaded, q3]) == "a 3-bit RTN copy"
    requant = {"record": ModelRecord(compression=(q3, loaded, q3)).to_dict()}
    assert swapped_compression(requant, fresh) == "a 3-bit RTN copy"


def test_attribute_and_compare_after_a_restore(tmp_path):
    """The probe's notebook: ``attribute`` on restored weights records no quantization, and
    ``compare`` with a fresh model's result is not refused as a swap."""
    import lrm_interp as li

    gold = toy_gold(tmp_path)
    ds = li.load_dataset(gold)
    fresh, tok = li.load_model("toy")
    model, _ = li.load_model("toy")
    orig = copy.deepcopy(model.state_dict())
    li.quantize_model_(model, bits=3, progress=False)
    model.load_state_dict(orig)
    r = li.attribute(model, ds, tokenizer=tok, progress=False)
    a = li.attribute(fresh, ds, tokenizer=tok, progress=False)
    assert r.provenance["model"]["quantization"] is None
    assert r.provenance["model"]["weights_fingerprint"] == a.provenance["model"]["weights_fingerprint"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        li.compare(r, a)  # no "did you swap original and compressed?"
        li.compare(a, r)
    assert model_provenance(model, fingerprint=False)["quantization"] is None


# ----------------------------------------------------------------------------- H13-FPQ
def test_a_quantize_result_loaded_with_from_pretrained_is_refused(quantized):
    """``AutoModelForCausalLM.from_pretrained(Q)`` carries no record: ``quantize_model_`` looks at the
    folder it was loaded from and refuses, naming the folder's record; no weight changes."""
    from transformers import AutoModelForCausalLM

    import lrm_interp as li

    m = AutoModelForCausalLM.from_pretrained(quantized)
    assert model_record(m) == ModelRecord()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(AlreadyQuantizedError) as e:
        li.quantize_model_(m, bits=4, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"the model is already quantized (loaded from {quantized} without its lrm_interp record): "
        f"{quantized} is a quantized copy written by 'lrm-interp quantize'"
    )
    assert "bits 3" in msg and "puts a second grid on the first" in msg and "requantize=True" in msg
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    rep = li.quantize_model_(m, bits=4, progress=False, requantize=True)  # on purpose
    assert rep.bits == 4


def test_a_model_loaded_from_a_quantize_result_is_judged_by_its_record(quantized, tmp_path):
    """``load_model(Q)`` attaches the record: refused once, by the record; after a
    ``load_state_dict`` restore of full-precision weights the record says so and the folder is not
    asked again. A full-precision folder loaded with ``from_pretrained`` is accepted."""
    from transformers import AutoModelForCausalLM

    import lrm_interp as li

    m, _ = li.load_model(quantized)
    with pytest.raises(AlreadyQuantizedError, match=r"already quantized \(a 3-bit RTN copy by its provenance record"):
        li.quantize_model_(m, bits=4, progress=False)
    fp, _ = li.load_model("toy")
    m.load_state_dict(fp.state_dict())
    assert li.quantize_model_(m, bits=4, progress=False).bits == 4
    assert json.loads((quantized / "lrm_interp_quantization.json").read_text())["bits"] == 3
    fp.save_pretrained(tmp_path / "fp")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "fp")
    assert li.quantize_model_(full, bits=4, progress=False).bits == 4
