"""Cases an eighth hostile probe found (issue 22, "nothing lost, nothing silent"), part C: the
Python API's intervals, paper-layout reader, protection masks and site names took bad values
without a word or failed with a raw error (H9-WI ``wilson_interval``, H9-BO ``bootstrap_interval``
and the paired tests, H9-PLE / H9-E3 ``load_paper_layout(datasets=...)``, H9-PM ``ProtectionMask``
/ ``MaskSet``, H9-E2 ``parse_site_name(5)`` and the other name/path arguments)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lrm_interp as li
from lrm_interp.data.paper_layout import (
    ParseReport,
    annotate_trace,
    canonical_index,
    check_layout_files,
    load_paper_layout,
    stray_files,
)
from lrm_interp.evaluation.intervals import bootstrap_interval, real_vector, wilson_interval
from lrm_interp.evaluation.paired import compare_outcomes, sign_test
from lrm_interp.model.sites import find_sites, get_module, parse_site_name, resolve_sites
from lrm_interp.protect.encoding import load_masks, save_masks
from lrm_interp.protect.masks import MaskSet, ProtectionMask
from lrm_interp.testing import tiny_model

NAN = float("nan")


# --------------------------------------------------------------------------- H9-WI
@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        ((1, 3), {"z": -2}, r"wilson_interval: z must be a finite number > 0, got -2"),
        ((1, 3), {"z": 0}, r"z must be a finite number > 0, got 0"),
        ((1, 3), {"z": NAN}, r"z must be a finite number > 0, got nan"),
        ((1, 3), {"z": math.inf}, r"z must be a finite number > 0, got inf"),
        ((1, 3), {"z": "2"}, r"z must be a finite number > 0, got '2' \(str\)"),
        ((1.5, 3), {}, r"wilson_interval: correct must be an integer in \[0, 3\], got 1.5"),
        ((True, 3), {}, r"correct must be an integer in \[0, 3\], got True \(bool\)"),
        ((1, 3.0), {}, r"n must be an integer >= 1, got 3.0"),
        ((1, True), {}, r"n must be an integer >= 1, got True \(bool\)"),
        ((5, 3), {}, r"correct must be an integer in \[0, 3\], got 5"),
        ((-1, 3), {}, r"correct must be an integer in \[0, 3\], got -1"),
        ((0, 0), {}, r"n must be an integer >= 1, got 0"),
    ],
)
def test_wilson_interval_refuses_a_bad_z_or_count(args, kw, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(*args, **kw)


def test_wilson_interval_still_takes_integer_counts_and_a_positive_z():
    lo, hi = wilson_interval(1, 3, z=2)
    assert 0 <= lo < 1 / 3 < hi <= 1
    assert wilson_interval(np.int64(1), np.int64(3)) == wilson_interval(1, 3)  # NumPy integers are integers
    assert wilson_interval(1, 3, z=1) < wilson_interval(1, 3, z=3)[::-1]  # narrower at a smaller z


# --------------------------------------------------------------------------- H9-BO
@pytest.mark.parametrize(
    ("values", "weights", "error", "match"),
    [
        ([1, 2], [0, 0], ValueError, r"bootstrap_interval: the weights are all 0: no item counts"),
        ([1, 2], [-1, 2], ValueError, r"bootstrap_interval: weights\[0\] is -1.0: weights must be >= 0"),
        ([1, 2], [1, NAN], ValueError, r"weights\[1\] is nan: every entry must be a finite number"),
        ([NAN, 1], None, ValueError, r"bootstrap_interval: values\[0\] is nan: every entry must be a finite number"),
        ([1, math.inf, -math.inf], None, ValueError, r"values\[1\] is inf: .*\(2 of 3 are not\)"),
        (torch.tensor([1.0, NAN]), None, ValueError, r"values\[1\] is nan"),
        ("12", None, TypeError, r"bootstrap_interval: values must be a sequence or 1-D tensor of numbers, got '12'"),
        (5, None, TypeError, r"values must be a sequence or 1-D tensor of numbers, got 5 \(int\)"),
        ({"a": 1}, None, TypeError, r"values must be a sequence or 1-D tensor of numbers"),
        ([1, "2"], None, ValueError, r"values\[1\] must be a finite number, got '2' \(str\)"),
        ([1, True], None, ValueError, r"values\[1\] must be a finite number, got True \(bool\)"),
        ([[1, 2]], None, ValueError, r"values\[0\] must be a finite number, got \[1, 2\] \(list\)"),
        (torch.ones(2, 2), None, ValueError, r"values must be .*got shape \(2, 2\)"),
        (torch.tensor([True, False]), None, ValueError, r"values must hold real numbers, got a torch.bool tensor"),
        ([], None, ValueError, r"values is empty"),
        ([1, 2], [1], ValueError, r"2 values and 1 weights"),
        ([1, 2], "11", TypeError, r"weights must be a sequence or 1-D tensor of numbers, got '11'"),
    ],
)
def test_bootstrap_interval_refuses_values_and_weights_with_no_meaning(values, weights, error, match):
    with pytest.raises(error, match=match):
        bootstrap_interval(values, weights, resamples=20)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"seed": -1}, r"bootstrap_interval: seed must be an integer >= 0 \(at most 2\*\*63 - 1\), got -1"),
        ({"seed": True}, r"seed must be an integer >= 0 .*got True \(bool\)"),
        ({"seed": 1.5}, r"seed must be an integer >= 0 .*got 1.5"),
        ({"seed": 2**64}, r"seed must be an integer >= 0"),
        ({"level": 1.0}, r"level must be a finite number in \(0, 1\), got 1.0"),
        ({"level": NAN}, r"level must be a finite number in \(0, 1\)"),
        ({"resamples": 0}, r"resamples must be an integer >= 1, got 0"),
        ({"resamples": 10.0}, r"resamples must be an integer >= 1, got 10.0"),
    ],
)
def test_bootstrap_interval_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval([1.0, 2.0, 3.0], **kw)


def test_bootstrap_interval_leaves_out_resamples_of_zero_weight_items_only():
    # the weighted mean is 1 whenever it exists; the old code counted a resample of the two
    # zero-weight items only as a mean of 0, and so reported (0.0, 1.0)
    assert bootstrap_interval([100.0, 100.0, 1.0], [0, 0, 3], resamples=200) == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"each of the 1 resamples drew only zero-weight items .*raise resamples"):
        for seed in range(50):  # one resample of 3 items misses the only weighted one with p = 8/27
            bootstrap_interval([1.0, 2.0, 3.0], [0, 0, 1], resamples=1, seed=seed)
    with pytest.raises(ValueError, match=r"values × weights overflow float64"):
        bootstrap_interval([1e300, 1e300], [1e300, 1e300], resamples=10)


def test_bootstrap_interval_takes_lists_arrays_tensors_and_series_alike():
    import pandas as pd

    v, w = [0.5, 1.0, 2.0, 4.0], [1, 2, 3, 4]
    ref = bootstrap_interval(v, w, resamples=300, seed=3)
    assert ref[0] <= sum(a * b for a, b in zip(v, w)) / sum(w) <= ref[1]
    assert bootstrap_interval(np.array(v), np.array(w), resamples=300, seed=3) == ref
    assert bootstrap_interval(torch.tensor(v), torch.tensor(w), resamples=300, seed=3) == ref
    assert bootstrap_interval(pd.Series(v), pd.Series(w), resamples=300, seed=3) == ref
    assert real_vector("x", (1, np.float32(2.5), torch.tensor(3))).tolist() == [1.0, 2.5, 3.0]


def test_sign_test_and_compare_outcomes_refuse_what_they_cannot_count():
    with pytest.raises(TypeError, match=r"sign_test: diffs must be a sequence or 1-D tensor of numbers, got '12'"):
        sign_test("12")  # it counted the characters "1" and "2" as two positive differences
    with pytest.raises(ValueError, match=r"sign_test: diffs\[1\] is nan"):
        sign_test([1.0, NAN])  # a NaN counted as a tie
    assert sign_test([]) == {"positive": 0, "negative": 0, "zero": 0, "p": 1.0}
    with pytest.raises(TypeError, match=r"compare_outcomes: a must be a sequence of 0/1 outcomes, got '10' \(str\)"):
        compare_outcomes("10", [1, 0])
    with pytest.raises(TypeError, match=r"compare_outcomes: b must be a sequence of 0/1 outcomes, got 3 \(int\)"):
        compare_outcomes([1, 0], 3)
    with pytest.raises(TypeError, match=r"names must be two strings \(a, b\), got 'xy' \(str\)"):
        compare_outcomes([1, 0], [0, 0], names="xy")
    with pytest.raises(ValueError, match=r"names must be two non-empty strings"):
        compare_outcomes([1, 0], [0, 0], names=("x", " "))
    with pytest.raises(ValueError, match=r"compare_outcomes: seed must be an integer >= 0"):
        compare_outcomes([1, 0], [0, 0], seed=-3)
    with pytest.raises(ValueError, match=r"outcomes must be 0/1 \(or bools\), got b\[1\] = nan"):
        compare_outcomes([1, 0], [0, NAN])
    with pytest.raises(ValueError, match=r"got a\[0\] = \[1\]"):
        compare_outcomes([[1], 0], [0, 0])
    c = compare_outcomes(np.array([1, 1, 0]), [True, False, False], names=("x", "y"))
    assert (c.n, c.a_only, c.b_only) == (3, 1, 0)


# --------------------------------------------------------------------------- H9-PLE / H9-E3
def _layout(tmp_path: Path) -> Path:
    root = tmp_path / "layout"
    for ds, texts in (("math", ["two plus two is four", "five"]), ("FOLIO", ["yes"])):
        d = root / "outputs" / ds
        d.mkdir(parents=True)
        for j, t in enumerate(texts):
            (d / f"{j}.txt").write_text(t, encoding="utf-8")
    return root


def test_load_paper_layout_refuses_an_empty_dataset_list(tmp_path):
    root = _layout(tmp_path)
    with pytest.raises(ValueError, match=r"load_paper_layout: datasets=\[\] selects no dataset; leave it None for all"):
        load_paper_layout(root, datasets=[], progress=False)
    with pytest.raises(ValueError, match=r"datasets=\(\) selects no dataset"):
        load_paper_layout(root, datasets=(), progress=False)
    with pytest.raises(ValueError, match=r"labels=\[\] selects no behaviour; leave it None for all"):
        load_paper_layout(root, labels=[], progress=False)
    assert len(load_paper_layout(root, progress=False)) == 3


def test_load_paper_layout_reads_one_string_as_one_dataset(tmp_path):
    root = _layout(tmp_path)
    ds = load_paper_layout(root, datasets="math", progress=False)  # said "no dataset folder for ['m', 'a', 't', 'h']"
    assert sorted(t.id for t in ds) == ["math/0", "math/1"]
    assert [t.id for t in load_paper_layout(root, datasets="folio", progress=False)] == ["FOLIO/0"]
    assert len(li.load_dataset(root, datasets="math", progress=False)) == 2
    assert stray_files(root, "math") == []
    with pytest.raises(FileNotFoundError, match=r"no dataset folder for \['aime'\]"):
        load_paper_layout(root, datasets="aime", progress=False)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"datasets": [5]}, TypeError, r"datasets\[0\] must be a dataset name \(str\), got 5 \(int\)"),
        ({"datasets": 5}, TypeError, r"datasets must be a dataset name or a list of them, got 5 \(int\)"),
        ({"datasets": ["math", ""]}, ValueError, r"datasets\[1\] is '': an empty dataset name names nothing"),
        ({"datasets": ""}, ValueError, r"datasets is '': an empty dataset name"),
        ({"labels": [None]}, TypeError, r"labels\[0\] must be a behaviour name \(str\), got None"),
        ({"problems": [1]}, TypeError, r"problems must be a mapping \{dataset: \[problem, ...\]\} or None"),
        ({"aliases": "x"}, TypeError, r"aliases must be a mapping"),
        ({"progress": "no"}, TypeError, r"progress must be True or False, got 'no' \(str\)"),
        ({"keep_unannotated": 1}, TypeError, r"keep_unannotated must be True, False or None, got 1 \(int\)"),
    ],
)
def test_load_paper_layout_refuses_arguments_of_another_type(tmp_path, kw, error, match):
    root = _layout(tmp_path)
    with pytest.raises(error, match=f"load_paper_layout: {match}"):
        load_paper_layout(root, **{"progress": False, **kw})


def test_paper_layout_functions_name_a_path_or_text_of_another_type(tmp_path):
    with pytest.raises(TypeError, match=r"load_paper_layout: root must be a path \(str or os.PathLike\), got None"):
        load_paper_layout(None)
    with pytest.raises(ValueError, match=r"load_paper_layout: root is empty \(''\): give a path"):
        load_paper_layout("")
    with pytest.raises(TypeError, match=r"check_layout_files: root must be a path .*got int 5"):
        check_layout_files(5)
    with pytest.raises(TypeError, match=r"stray_files: root must be a path"):
        stray_files(["a"])
    with pytest.raises(TypeError, match=r"canonical_index: stem must be a file name's stem \(str\), got 12 \(int\)"):
        canonical_index(12)
    with pytest.raises(TypeError, match=r"annotate_trace: trace_or_response must be a ReasoningTrace or a response"):
        annotate_trace(None, "[backtracking] x")  # it became the response "None"
    with pytest.raises(TypeError, match=r"annotate_trace: markup_text must be the annotation text \(str\)"):
        annotate_trace("a response", b"[backtracking] a")
    with pytest.raises(TypeError, match=r"ParseReport.save_json: path must be a path"):
        ParseReport().save_json(None)


# --------------------------------------------------------------------------- H9-PM
@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.tensor([[NAN, 0.0]]), r"mask of x must be bool, or hold only 0 and 1, got nan at \[0, 0\]"),
        (torch.tensor([[0.0, 2.0]]), r"mask of x must be bool, or hold only 0 and 1, got 2.0 at \[0, 1\]"),
        (torch.tensor([[1, -1], [3, 0]]), r"got -1 at \[0, 1\] \(2 such entries"),
        (torch.tensor([[0.5]]), r"got 0.5 at \[0, 0\]"),
    ],
)
def test_protection_mask_refuses_values_that_are_not_0_or_1(mask, match):
    with pytest.raises(ValueError, match=match):
        ProtectionMask("x", mask)


def test_protection_mask_converts_exact_0_1_values_and_checks_its_other_arguments():
    m = ProtectionMask("x", torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert m.n_protected == 2 and torch.equal(m.dense(), torch.eye(2, dtype=torch.bool))
    assert ProtectionMask("x", [[1, 0]]) == ProtectionMask("x", torch.tensor([[True, False]]))
    with pytest.raises(TypeError, match=r"ProtectionMask: site must be a site name \(str\) or a Site, got 5 \(int\)"):
        ProtectionMask(5, torch.ones(1, 1, dtype=torch.bool))  # it became site "5"
    with pytest.raises(ValueError, match=r"ProtectionMask: site is ''"):
        ProtectionMask("", torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask of x must be a bool \[out, in\] tensor .*got 'ab' \(str\)"):
        ProtectionMask("x", "ab")
    with pytest.raises(ValueError, match=r"unknown granularity ''"):
        ProtectionMask("x", torch.ones(1, 1, dtype=torch.bool), "")  # "" read as "elements"
    with pytest.raises(ValueError, match=r"give a dense mask or an index, not both"):
        ProtectionMask("x", torch.ones(1, 2, dtype=torch.bool), index=[0])
    with pytest.raises(ValueError, match=r"shape of x is \(3, 3\) but its mask is \(1, 2\)"):
        ProtectionMask("x", torch.ones(1, 2, dtype=torch.bool), shape=(3, 3))
    with pytest.raises(ValueError, match=r"shape of x must be two integers \(out, in\), got \(2.5, 3\)"):
        ProtectionMask.from_rows("x", (2.5, 3), [0])  # it was truncated to (2, 3)
    with pytest.raises(ValueError, match=r"shape of x must be two integers >= 1"):
        ProtectionMask.from_rows("x", (0, 3), [])
    with pytest.raises(ValueError, match=r"index of x must hold row ids \(integers\), got 0.5 at \[0\]"):
        ProtectionMask.from_rows("x", (2, 3), [0.5])  # it was row 0
    with pytest.raises(ValueError, match=r"index of x must hold flat element ids \(integers\), got nan at \[1\]"):
        ProtectionMask.from_indices("x", (2, 3), torch.tensor([1.0, NAN]))
    with pytest.raises(ValueError, match=r"index of x is a bool tensor: a mask, not row ids"):
        ProtectionMask.from_rows("x", (2, 3), torch.tensor([True, False]))  # it was the ids [1, 0]
    with pytest.raises(ValueError, match=r"granularity 'full' takes no index"):
        ProtectionMask("x", shape=(2, 2), granularity="full", index=[0])
    assert ProtectionMask.from_rows("x", (2, 3), [1.0]).n_protected == 3  # an integral float is an id


def test_mask_set_refuses_a_key_that_is_not_its_masks_site(tmp_path):
    pm = ProtectionMask("b", torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match=r"MaskSet: the entry 'a' holds the mask of site 'b'.*key it by 'b'"):
        MaskSet({"a": pm})  # it was saved and reloaded as site "a"
    with pytest.raises(TypeError, match=r"MaskSet: the entry 'a' must be a ProtectionMask, got 5 \(int\)"):
        MaskSet({"a": 5})
    with pytest.raises(TypeError, match=r"MaskSet: a key must be a site name \(str\), got 1 \(int\)"):
        MaskSet({1: pm})
    with pytest.raises(TypeError, match=r"MaskSet: masks must be a mapping"):
        MaskSet([pm])
    ms = MaskSet({"b": pm}, model={"name": "toy"})
    for change in (
        lambda: ms.__setitem__("a", pm),
        lambda: ms.update({"a": pm}),
        lambda: ms.update(a=pm),
        lambda: ms.setdefault("a", pm),
        lambda: ms.__ior__({"a": pm}),
    ):
        with pytest.raises(ValueError, match=r"the entry 'a' holds the mask of site 'b'"):
            change()
    with pytest.raises(TypeError, match=r"the entry 'c' must be a ProtectionMask, got None"):
        ms.setdefault("c")
    assert list(ms) == ["b"]
    c = ProtectionMask("c", torch.tensor([[False, True]]))
    ms["c"] = c
    ms |= {"c": c}
    assert isinstance(ms, MaskSet) and list(ms) == ["b", "c"] and ms.model == {"name": "toy"}
    save_masks(ms, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning):  # no weights fingerprint recorded: warned, loaded
        back, _ = load_masks(tmp_path / "m.safetensors")
    assert {k: v.site for k, v in back.items()} == {"b": "b", "c": "c"} and back["b"] == pm
    # a plain dict keyed by another name: refused by the writer too (it was saved under the key)
    with pytest.raises(ValueError, match=r"masks\['a'\] is the mask of site 'b'"):
        save_masks({"a": pm}, tmp_path / "d.safetensors")
    assert not (tmp_path / "d.safetensors").exists()


# --------------------------------------------------------------------------- H9-E2
def test_site_functions_name_an_argument_of_another_type():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match=r"parse_site_name: name must be a module path \(str, .*got 5 \(int\)"):
        parse_site_name(5)  # AttributeError "'int' object has no attribute 'split'"
    with pytest.raises(TypeError, match=r"get_module: name must be a module path"):
        get_module(model, None)
    with pytest.raises(TypeError, match=r"get_module: model must be a torch.nn.Module"):
        get_module("toy", "model.layers.0.mlp.up_proj")  # said "model has no module ..."
    with pytest.raises(TypeError, match=r"resolve_sites: sites must be None, a regex string, or a list"):
        resolve_sites(model, 5)
    with pytest.raises(TypeError, match=r"resolve_sites: sites\[1\] must be a site name \(str\) or a Site, got 3"):
        resolve_sites(model, ["model.layers.0.mlp.up_proj", 3])
    with pytest.raises(TypeError, match=r"resolve_sites: model must be a torch.nn.Module"):
        resolve_sites("toy", ["model.layers.0.mlp.up_proj"])
    with pytest.raises(TypeError, match=r"find_sites: pattern must be a regex string or None, got 5 \(int\)"):
        find_sites(model, pattern=5)
    with pytest.raises(TypeError, match=r"find_sites: kinds must hold kind names"):
        find_sites(model, kinds=[1])
    with pytest.raises(TypeError, match=r"find_sites: layers must hold layer indices \(int\), got '0' \(str\)"):
        find_sites(model, layers=["0"])
    # one kind / one layer given alone: kinds="up" selected the kinds "u" and "p" (no site)
    ups = find_sites(model, kinds="up")
    assert ups and {s.kind for s in ups} == {"up"} and ups == find_sites(model, kinds=["up"])
    assert find_sites(model, layers=1) == find_sites(model, layers=[1])
    assert parse_site_name("model.layers.12.mlp.up_proj") == (12, "mlp", "up")
