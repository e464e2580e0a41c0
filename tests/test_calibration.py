"""Calibration data (one normaliser, token ids from traces) and the Hessians collected from it."""

from __future__ import annotations

import pytest
import torch

from lrm_interp.compress.calibration import (
    HessianReducer,
    calibration_batches,
    calibration_ids,
    calibration_texts,
    collect_hessians,
    layer_hessians,
)
from lrm_interp.model.capture import Capture, FullCapture
from lrm_interp.model.sites import find_sites, get_module
from lrm_interp.testing import tiny_model
from lrm_interp.toy.tasks import generate_dataset


def test_padded_dict_yields_exactly_the_unpadded_tokens(tokenizer):
    texts = ["first calibration text", "x", "a somewhat longer third one", "four"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")  # a BatchEncoding, right-padded with 258
    got = list(calibration_batches(enc, 3))
    assert [tuple(i.shape) for i, _ in got] == [(3, enc["input_ids"].shape[1]), (1, enc["input_ids"].shape[1])]
    tokens = torch.cat([ids[att.bool()] for ids, att in got])
    expect = torch.cat([torch.tensor(tokenizer(t)["input_ids"]) for t in texts])
    assert torch.equal(tokens, expect) and 258 not in tokens.tolist()
    # plain ids: every token, no mask; [s] becomes one row; a list of ids too
    ids = torch.arange(20).view(4, 5)
    assert [(tuple(i.shape), a) for i, a in calibration_batches(ids, 3)] == [((3, 5), None), ((1, 5), None)]
    ((one, att),) = calibration_batches(torch.arange(7), 8)
    assert one.shape == (1, 7) and att is None
    ((lst, _),) = calibration_batches([[1, 2, 3]], 8)
    assert torch.equal(lst, torch.tensor([[1, 2, 3]]))
    ((d1, a1),) = calibration_batches({"input_ids": torch.arange(4), "attention_mask": torch.tensor([1, 1, 1, 0])})
    assert d1.shape == a1.shape == (1, 4)


def test_calibration_batches_errors():
    with pytest.raises(TypeError, match="integers"):
        list(calibration_batches(torch.rand(2, 3)))
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        list(calibration_batches(torch.zeros(2, 3, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="attention_mask shape"):
        list(
            calibration_batches({"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)})
        )
    with pytest.raises(KeyError, match="input_ids"):
        list(calibration_batches({"ids": torch.zeros(2, 3, dtype=torch.long)}))
    with pytest.raises(TypeError, match="callable"):
        list(calibration_batches(lambda m: None))
    with pytest.raises(TypeError, match="calib must be"):
        list(calibration_batches(object()))
    with pytest.raises(ValueError, match="batch_size"):
        list(calibration_batches(torch.zeros(2, 3, dtype=torch.long), 0))


def test_calibration_ids_from_toy_tasks_and_from_a_file(tokenizer, tmp_path):
    """Byte-level tokenizer: the ids are the UTF-8 bytes of the concatenated texts, cut into rows."""
    texts = [t.text for t in generate_dataset(16, seed=77)]
    assert calibration_texts() == texts
    raw = torch.tensor(list("".join(texts).encode()))
    n = raw.numel() // 256
    ids = calibration_ids(tokenizer)
    assert ids.dtype == torch.long and ids.shape == (n, 256) and n > 10
    assert torch.equal(ids.flatten(), raw[: n * 256])
    sep = calibration_ids(tokenizer, separator="\n", length=100)
    raw_sep = torch.tensor(list("".join(t + "\n" for t in texts).encode()))
    assert torch.equal(sep.flatten(), raw_sep[: sep.numel()]) and sep.shape == (raw_sep.numel() // 100, 100)
    ds = generate_dataset(1, seed=3)
    ds.save_jsonl(tmp_path / "t.jsonl")
    file_raw = torch.tensor(list("".join(t.text for t in ds).encode()))
    f = calibration_ids(tokenizer, tmp_path / "t.jsonl", length=64)
    assert f.shape == (file_raw.numel() // 64, 64) and torch.equal(f.flatten(), file_raw[: f.numel()])
    short = calibration_ids(tokenizer, tmp_path / "t.jsonl", length=10**6)  # fewer tokens than one row
    assert short.shape == (1, file_raw.numel()) and torch.equal(short[0], file_raw)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        calibration_ids(tokenizer, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="length"):
        calibration_ids(tokenizer, length=0)


@pytest.fixture(scope="module")
def model_ids():
    model = tiny_model("llama", seed=0)
    ids = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(2))
    return model, ids


def _reference_hessians(model, sites, ids):
    """Plain capture of every site input over the whole batch, then 2·XᵀX/n."""
    red = FullCapture("input")
    with torch.no_grad(), Capture(model, sites, [red]):
        model(input_ids=ids)
    out = {}
    for s in sites:
        X = torch.cat(red.tensors[s.name]).reshape(-1, s.in_features).float()
        out[s.name] = 2 * (X.T @ X) / X.shape[0]
    return out


def test_hessians_stop_early_batches_and_padding(model_ids):
    model, ids = model_ids
    sites = find_sites(model)
    ref = _reference_hessians(model, sites[:3], ids)
    for kw in ({}, {"stop_early": False}, {"batch_size": 2}):
        H, n = collect_hessians(model, sites[:3], ids, progress=False, **kw)
        assert n == {s.name: ids.numel() for s in sites[:3]}
        for s in sites[:3]:
            torch.testing.assert_close(H[s.name], ref[s.name], rtol=1e-5, atol=1e-6)
    # right-padding excluded through the attention mask: equals the unpadded sequences
    short = ids[:2, :20]
    padded = torch.cat([short, torch.full((2, 12), 258)], 1)
    att = torch.cat([torch.ones(2, 20), torch.zeros(2, 12)], 1).long()
    a, na = collect_hessians(model, sites[:1], {"input_ids": padded, "attention_mask": att}, progress=False)
    b, nb = collect_hessians(model, sites[:1], short, progress=False)
    torch.testing.assert_close(a[sites[0].name], b[sites[0].name], rtol=1e-4, atol=1e-5)
    assert na == nb == {sites[0].name: 40}
    # a callable running the forwards itself
    c, nc = collect_hessians(model, sites[:1], lambda m: m(input_ids=short), progress=False)
    torch.testing.assert_close(c[sites[0].name], b[sites[0].name])
    assert nc == nb
    red = HessianReducer()
    red.on_input("x", torch.ones(1, 3, 2))
    assert torch.equal(red.hessians()["x"], torch.full((2, 2), 2.0)) and red.n == {"x": 3}


def test_layer_hessians_are_collected_lazily_layer_by_layer(model_ids):
    _, ids = model_ids
    model = tiny_model("llama", seed=0)  # its own copy: layer 0 is changed below
    sites = find_sites(model, include_lm_head=True)
    shuffled = sites[::-1]
    gen = layer_hessians(model, shuffled, ids, progress=False)
    grp0, H0 = next(gen)
    assert [s.name for s in grp0] == [s.name for s in shuffled if s.layer == 0]
    for s, H in _reference_hessians(model, grp0, ids).items():
        torch.testing.assert_close(H0[s], H, rtol=1e-5, atol=1e-6)
    before = _reference_hessians(model, [s for s in sites if s.layer == 1], ids)
    with torch.no_grad():  # the consumer changes layer 0 before asking for layer 1
        for s in grp0:
            get_module(model, s.name).weight.mul_(0.5)
    grp1, H1 = next(gen)
    assert {s.layer for s in grp1} == {1}
    after = _reference_hessians(model, grp1, ids)
    for s in grp1:
        torch.testing.assert_close(H1[s.name], after[s.name], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(H1[s.name], before[s.name], rtol=1e-3)
    grp_last, _ = next(gen)
    assert [s.name for s in grp_last] == ["lm_head"]  # outside the layer stack: last
    assert next(gen, None) is None
    ((every, Hall),) = list(layer_hessians(model, sites, ids, sequential=False, progress=False))
    assert every == sites and set(Hall) == {s.name for s in sites}
    with pytest.raises(ValueError, match="calibration"):
        layer_hessians(model, sites, None)  # at the call, before any Hessian is collected
