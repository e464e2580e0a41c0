"""Reliability fixes of the H15 hostile probe, part b: silent empty selections and arguments in the
wrong place, refused before any work.

Cases: H15-QSE / H15-PSE (an empty ``sites`` list quantized / pruned nothing and recorded the step),
H15-FSE (``find_sites`` filters selecting nothing returned ``[]``), H15-LMD (``load_model`` dtype),
H15-GCO / H15-GCT (GPTQ calibration ids beyond the embedding), H15-SQE (``save_quantized`` of an
empty mapping), H15-END / H15-EN0 (``encode_trace`` of a dataset / ``max_tokens=0``), H15-ASW
(``attribute`` with model and tokenizer swapped), H15-CLM (``calibration_ids(model)``), H15-CLB /
H15-CAJ (a JSON document read as JSON lines).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

import lrm_interp
from lrm_interp import calibration_ids, encode_trace, find_sites, load_model, prune_model_, quantize_model_
from lrm_interp.compress.quant.format import save_quantized
from lrm_interp.data.traces import TraceFormatError
from lrm_interp.model.provenance import model_record
from lrm_interp.testing import byte_tokenizer, tiny_model
from lrm_interp.toy import load_toy_model
from lrm_interp.toy.tasks import generate_dataset


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_empty_site_list_is_refused_before_anything_changes(toy):
    model, _ = toy
    for run, done in (
        (lambda q: quantize_model_(q, bits=3, sites=[], progress=False), "quantized"),
        (lambda q: prune_model_(q, "magnitude", 0.5, sites=[], progress=False), "pruned"),
        (
            lambda q: quantize_model_(q, bits=3, sites=(s for s in find_sites(q) if s.kind == "x"), progress=False),
            "quantized",
        ),
    ):
        q = copy.deepcopy(model)
        before = json.dumps(model_record(q), default=str)
        with pytest.raises(ValueError, match=rf"^sites is empty: nothing would be {done} \(pass sites=None"):
            run(q)
        assert _same(q, model) and json.dumps(model_record(q), default=str) == before
    q = copy.deepcopy(model)
    assert quantize_model_(q, bits=3, sites=None, progress=False).n_sites == len(find_sites(model))


def test_find_sites_filters_that_select_nothing_are_refused(toy):
    model, _ = toy
    with pytest.raises(
        ValueError,
        match=r"^find_sites: no linear site matches the pattern 'mpl' "
        r"\(kinds: q, k, v, o, gate, up, down; layers 0\.\.3",
    ):
        find_sites(model, pattern="mpl")
    with pytest.raises(ValueError, match=r"no linear site matches kinds \['gate_proj'\] \(kinds: q, k, v, o, gate"):
        find_sites(model, kinds=["gate_proj"])
    with pytest.raises(
        ValueError, match=r"layers \[-1\] out of range: the model's linear sites are in layers 0\.\.3 \(a negative"
    ):
        find_sites(model, layers=[-1])
    with pytest.raises(ValueError, match=r"^find_sites: layers \[4\] out of range: .* in layers 0\.\.3$"):
        find_sites(model, layers=[4])
    # sensible filters unchanged; a pattern is still refused by quantize_model_ with its own message
    assert len(find_sites(model, kinds={"gate", "nonexistent"}, layers=[3])) == 1
    assert len(find_sites(model, pattern="mlp")) == 12
    with pytest.raises(ValueError, match="no linear site of the model matches the pattern 'mpl'"):
        quantize_model_(copy.deepcopy(model), bits=3, sites="mpl", progress=False)
    assert find_sites(torch.nn.Sequential(torch.nn.ReLU())) == []


def test_load_model_refuses_an_unknown_dtype_name():
    with pytest.raises(
        ValueError,
        match=r"^dtype must be None, a floating torch dtype or one of 'float32', 'bfloat16', 'float16'.*got 'fp8'$",
    ):
        load_model("toy", dtype="fp8")
    with pytest.raises(ValueError, match=r"got torch\.int8"):
        load_model(tiny_model("llama"), tokenizer=byte_tokenizer(), dtype=torch.int8)
    m, _ = load_model(tiny_model("llama"), tokenizer=byte_tokenizer(), dtype="bf16")
    assert next(m.parameters()).dtype == torch.bfloat16


def test_gptq_calibration_ids_beyond_the_embedding_refused_before_any_weight_changes(toy):
    model, tok = toy
    ids = calibration_ids(tok, length=64, n_per_family=2)
    q = copy.deepcopy(model)
    before = json.dumps(model_record(q), default=str)
    with pytest.raises(
        ValueError, match=r"^calibration \(calib=\): token id 300 but the model's input embedding has 259 rows"
    ):
        quantize_model_(q, bits=3, method="gptq", calib=torch.full_like(ids, 300), progress=False)
    assert _same(q, model) and json.dumps(model_record(q), default=str) == before


def test_gptq_calibration_from_another_tokenizer_refused(toy):
    model, _ = toy
    wider = byte_tokenizer(extra_special=("<sep>",))  # 260 ids; the model has 259 embedding rows
    calib = calibration_ids(wider, length=64, n_per_family=2, separator="<sep>")
    q = copy.deepcopy(model)
    with pytest.raises(
        ValueError, match=r"^calibration \(calib=\): token id 259 but the model's input embedding has 259 rows"
    ):
        quantize_model_(q, bits=3, method="gptq", calib=calib, progress=False)
    assert _same(q, model)


def test_save_quantized_refuses_an_empty_mapping(toy, tmp_path):
    model, _ = toy
    rep = quantize_model_(copy.deepcopy(model), bits=3, progress=False)  # without keep_tensors
    out = tmp_path / "q.safetensors"
    with pytest.raises(ValueError, match=r"^tensors is empty: nothing to save to .*keep_tensors=True\)\)$"):
        save_quantized(rep.tensors, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_encode_trace_refuses_a_dataset(toy):
    _, tok = toy
    ds = generate_dataset(n_per_family=1, seed=1)
    with pytest.raises(
        TypeError,
        match=r"^encode_trace: trace must be one ReasoningTrace, got ReasoningDataset: encode each trace: "
        r"\[encode_trace\(tok, t\) for t in ds\]$",
    ):
        encode_trace(tok, ds)


def test_encode_trace_refuses_max_tokens_zero(toy):
    _, tok = toy
    t = generate_dataset(n_per_family=1, seed=1)[0]
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"^max_tokens must be None or an integer >= 1, got "):
            encode_trace(tok, t, max_tokens=bad)
    assert len(encode_trace(tok, t, max_tokens=5)) == 5


def test_attribute_with_model_and_tokenizer_swapped(toy, tmp_path):
    model, tok = toy
    ds = generate_dataset(n_per_family=1, seed=1)
    with pytest.raises(TypeError, match=r"^attribute: model and tokenizer are swapped \(model is a tokenizer"):
        lrm_interp.attribute(tok, ds, tokenizer=model, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(TypeError, match=r"^attribute: tokenizer must be a tokenizer .* got LlamaForCausalLM"):
        lrm_interp.attribute("toy", ds, tokenizer=model, progress=False)
    with pytest.raises(
        TypeError, match=r"^load_model: model must be a torch model \(nn.Module\), got \w+ \(the tokenizer\?"
    ):
        load_model(tok)
    assert not (tmp_path / "a").exists()


def test_calibration_ids_refuses_the_model_as_tokenizer(toy):
    model, _ = toy
    with pytest.raises(
        TypeError, match=r"^calibration_ids: tokenizer must be a tokenizer .*got LlamaForCausalLM \(a torch model"
    ):
        calibration_ids(model)


def test_json_document_read_as_json_lines_is_named(toy, tmp_path):
    _, tok = toy
    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"format": "lrm_interp.bits/2", "bits": {"a": 3}}, indent=2))
    with pytest.raises(
        TraceFormatError,
        match=rf"^{re.escape(str(bits))} is one JSON document \(a lrm_interp\.bits/2 file\), "
        r"not JSON lines \(one object per line\)$",
    ):
        calibration_ids(tok, bits)
    arr = tmp_path / "traces.json"
    arr.write_text(json.dumps([{"id": "x"}], indent=1))
    with pytest.raises(TraceFormatError, match=rf"^{re.escape(str(arr))} is one JSON document, not JSON lines"):
        lrm_interp.load_dataset(arr)
    broken = tmp_path / "broken.jsonl"  # no JSON at all: the line's error as before
    broken.write_text('{"id": \n{"id": "y"}\n')
    with pytest.raises(TraceFormatError, match=rf"^{re.escape(str(broken))}:1: invalid JSON"):
        lrm_interp.load_dataset(broken)


def test_cli_attribute_of_a_bits_file_names_it(tmp_path, capsys):
    from lrm_interp.cli.main import main

    bits = tmp_path / "bits.json"
    bits.write_text(json.dumps({"format": "lrm_interp.bits/2", "bits": {"a": 3}}, indent=2))
    assert main(["attribute", "--model", "toy", "--data", str(bits), "--out", str(tmp_path / "at"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is one JSON document (a lrm_interp.bits/2 file), not JSON lines (one object per line)" in err
    assert not (tmp_path / "at").exists() or not any((tmp_path / "at").iterdir())
