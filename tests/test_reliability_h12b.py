"""Leftovers of the eleventh hostile probe run (issue 22), part B: an empty path in the Python API
(H12-EMPY). ``load_dataset("")`` (an unset environment variable) read the current folder and
loaded its only ``.jsonl``; ``compare("", "")`` run inside a result folder compared it with
itself; other loaders named "." instead of the empty value. One rule now,
``lrm_interp.checks.path_argument``: an empty or blank path is refused naming the argument."""

from __future__ import annotations

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.checks import EmptyPathError, path_argument


@pytest.fixture()
def in_result_folder(tmp_path, monkeypatch):
    """The current folder holds one trace file and is an attribution result folder."""
    from lrm_interp.testing import byte_tokenizer, tiny_model

    ds = synthetic_traces(2, seed=1)
    ds.save_jsonl(tmp_path / "only.jsonl")
    lrm_interp.attribute(tiny_model("llama"), ds, tokenizer=byte_tokenizer(), method="dom", progress=False).save(
        tmp_path / "A"
    )
    (tmp_path / "A" / "only.jsonl").write_bytes((tmp_path / "only.jsonl").read_bytes())
    monkeypatch.chdir(tmp_path / "A")
    return tmp_path


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_path_is_refused_by_every_loader(in_result_folder, value):
    from lrm_interp.attribution.faithfulness import FaithfulnessResult
    from lrm_interp.experiments.study import StudyResult

    calls = {
        "data": lambda: lrm_interp.load_dataset(value),
        "model": lambda: lrm_interp.load_model(value),
        "load_masks: path": lambda: lrm_interp.load_masks(value),  # the function named (H31-APIOUT)
        "load_quantized: path": lambda: lrm_interp.load_quantized(value),
        "BitAllocation.load: path": lambda: lrm_interp.BitAllocation.load(value),
        "Attribution.load: directory": lambda: lrm_interp.Attribution.load(value),
        "original": lambda: lrm_interp.compare(value, value),
        "FaithfulnessResult.load: out_dir": lambda: FaithfulnessResult.load(value),
        "StudyResult.load: out": lambda: StudyResult.load(value),
    }
    kind = "empty" if value == "" else "blank"
    for what, call in calls.items():
        with pytest.raises(
            EmptyPathError, match=rf"^{what} is {kind} .*give a path \(an unset environment variable\?\)"
        ):
            call()


def test_attribute_refuses_an_empty_data_path_before_any_work(in_result_folder):
    from lrm_interp.testing import byte_tokenizer, tiny_model

    with pytest.raises(ValueError, match="data is empty"):
        lrm_interp.attribute(tiny_model("llama"), "", tokenizer=byte_tokenizer(), progress=False)
    assert lrm_interp.load_dataset("only.jsonl").name == "only"  # the file itself still loads


def test_path_argument_rule():
    assert path_argument("a", "x") == "a"
    with pytest.raises(TypeError, match="x must be a path"):
        path_argument(None, "x")
    with pytest.raises(TypeError):  # EmptyPathError is a TypeError too (the older checks raised one)
        path_argument("", "x")


def test_identical_results_print_no_negative_decrease():
    """compare() of a result with itself: no site's RI fell; the repr printed "−-0.000"."""
    from lrm_interp.testing import byte_tokenizer, tiny_model

    a = lrm_interp.attribute(
        tiny_model("llama"), synthetic_traces(2), tokenizer=byte_tokenizer(), method="dom", progress=False
    )
    with pytest.warns(UserWarning, match="same weights"):
        shift = lrm_interp.compare(a, a)
    assert torch.count_nonzero(shift.delta) == 0
    assert "largest decreases: none" in repr(shift) and "−-" not in repr(shift)
    assert "−-" not in shift._repr_html_()
