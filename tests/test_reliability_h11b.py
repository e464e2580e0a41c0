"""Leftovers of the tenth hostile probe run (issue 22, "nothing lost, nothing silent"), part B: the
SmolLM2 model cache deleting a folder of the user's files (H11-CCH), a bits file whose ``bpw``
contradicts its ``bits`` (H11-BPW), a ``/1`` bits file recording another model (H11-B1M), NumPy
integers refused by some config fields (H11-NPI) and a calibration set of a few tokens (H11-CAL1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc

from lrm_interp import _io


# ------------------------------------------------------------------ model cache (H11-CCH)
def _user_folder(folder: Path) -> dict[str, bytes]:
    """A folder of the user's own files at a model-cache path; its names and bytes."""
    folder.mkdir(parents=True)
    files = {"my_config.json": b'{"note": "mine"}\n', "NOTES.md": b"notes\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _kept(folder: Path, files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, data in files.items():
        assert (folder / name).read_bytes() == data


def test_smollm2_never_deletes_a_cache_folder_of_the_users_files(tmp_path, capsys, monkeypatch):
    """``--model smollm2-135m`` with ``$LRM_INTERP_CACHE`` holding a ``smollm2-135m/`` of the user's
    files is refused before the conversion, naming the folder and what it holds (it ran
    ``shutil.rmtree`` on it and published the converted model, exit 0)."""
    cache = tmp_path / "cache"
    files = _user_folder(cache / "smollm2-135m")
    monkeypatch.setenv("LRM_INTERP_CACHE", str(cache))
    out = tmp_path / "bs.json"
    capsys.readouterr()
    argv = ["bits", "--model", "smollm2-135m", "--sensitivity", "none", "--budget", 4, "--out", out, "--quiet"]
    assert _rc(argv) == 2
    line = _err_line(capsys)
    assert str(cache / "smollm2-135m") in line and "NOTES.md, my_config.json" in line, line
    assert "not a model lrm_interp wrote" in line and "$LRM_INTERP_CACHE" in line, line
    _kept(cache / "smollm2-135m", files)
    assert not out.exists() and sorted(p.name for p in cache.iterdir()) == ["smollm2-135m"]


def test_reasoner_never_deletes_a_cache_folder_of_the_users_files(tmp_path, monkeypatch):
    """The merged reasoner's cache folder holding the user's notes is refused before the base loads."""
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.reasoner import REASONER_ALIAS, delta_sha256, merged_key, reasoner_asset_dir

    cache = tmp_path / "cache"
    folder = cache / f"{REASONER_ALIAS}-{merged_key(delta_sha256(reasoner_asset_dir()))}"
    files = _user_folder(folder)
    monkeypatch.setenv("LRM_INTERP_CACHE", str(cache))
    with pytest.raises(_io.OtherResultError, match="not a model lrm_interp wrote"):
        load_model(REASONER_ALIAS)
    _kept(folder, files)


def test_publish_cache_folder_replaces_only_what_lrm_interp_wrote(tmp_path):
    """An incomplete copy with lrm_interp's record is replaced; one that also holds a file the
    converter never writes is refused after the write, and the temporary folder is removed."""
    from lrm_interp.model.smollm2 import SOURCE_FILE, publish_cache_folder

    def write(tmp: Path) -> None:
        for name in ("config.json", "model.safetensors", SOURCE_FILE):
            (tmp / name).write_text(name)

    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / SOURCE_FILE).write_text("old")
    (ours / "config.json").write_text("old")
    publish_cache_folder(ours, write, ("config.json", "model.safetensors"))
    assert (ours / "model.safetensors").read_text() == "model.safetensors"
    assert (ours / SOURCE_FILE).read_text() == SOURCE_FILE

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / SOURCE_FILE).write_text("old")
    (mixed / "NOTES.md").write_text("mine")
    with pytest.raises(_io.OtherResultError, match=r"holds NOTES\.md, not a model lrm_interp wrote"):
        publish_cache_folder(mixed, write, ("config.json", "model.safetensors"))
    assert sorted(p.name for p in mixed.iterdir()) == ["NOTES.md", SOURCE_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "ours"]  # no temporary folder left

    link = tmp_path / "link"
    link.symlink_to(mixed)
    with pytest.raises(_io.OtherResultError, match="is a link"):
        publish_cache_folder(link, write, ("config.json",))


# ------------------------------------------------------------------ bits files (H11-BPW, H11-B1M)
@pytest.fixture(scope="module")
def bits_file(tmp_path_factory) -> Path:
    """``bits --model toy --sensitivity none --budget 4``: a genuine allocation file of the toy model."""
    d = tmp_path_factory.mktemp("h11b_bits")
    out = d / "b.json"
    assert _rc(["bits", "--model", "toy", "--sensitivity", "none", "--budget", 4, "--out", out, "--quiet"]) == 0
    return out


def _edited(src: Path, dst: Path, edit) -> Path:
    d = json.loads(src.read_text())
    edit(d)
    d.pop("bits_digest", None)  # as a file written before the digest (H15-X-BEF): the later checks are the point
    dst.write_text(json.dumps(d))
    return dst


def _toy():
    from lrm_interp.model.loading import load_model

    r = load_model("toy")
    return r[0] if isinstance(r, tuple) else r


def test_bits_file_whose_bpw_its_bits_cannot_give_is_refused_on_load(bits_file, tmp_path):
    """Every module at 16 bits but ``bpw`` 4.0: refused when read, naming the file (it loaded, and
    ``quantize_allocation_`` left the model in full precision without a word)."""
    from lrm_interp.protect.bit_allocation import BitAllocation

    b16 = _edited(bits_file, tmp_path / "b16.json", lambda d: d.__setitem__("bits", dict.fromkeys(d["bits"], 16)))
    with pytest.raises(ValueError) as e:
        BitAllocation.load(b16)
    assert str(e.value).startswith(f"{b16}: bpw 4.0 contradicts bits: its sites at 16 bits give exactly 16 bits/weight")
    with pytest.raises(ValueError, match="BitAllocation: bpw 4.0 contradicts bits"):
        BitAllocation({"s": 16}, 4.0, None, "none")


def test_bits_file_whose_bpw_differs_from_its_bits_is_refused_before_any_weight_changes(bits_file, tmp_path):
    """``bpw`` edited to another plausible figure: refused against the model's sites, naming the
    file and the figure its bits give; no weight changes (``bpw`` 2.0 with the same bits was applied)."""
    import torch

    from lrm_interp.protect.bit_allocation import BitAllocation, quantize_allocation_

    real = json.loads(bits_file.read_text())["bpw"]
    edited = _edited(bits_file, tmp_path / "b2.json", lambda d: d.__setitem__("bpw", real - 0.25))
    alloc = BitAllocation.load(edited)  # within what its bits can give: only the sites tell
    model = _toy()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as e:
        quantize_allocation_(model, alloc, progress=False)
    assert str(e.value).startswith(
        f"bit allocation {edited}: bpw {real - 0.25} but its bits give {real:.4f} bits/weight"
    )
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    # the genuine file still applies
    quantize_allocation_(model, BitAllocation.load(bits_file), progress=False)


def test_v1_bits_file_recording_another_model_is_checked_not_dropped(bits_file, tmp_path):
    """A file marked ``lrm_interp.bits/1`` that records another model's fingerprint is refused
    before any weight changes (the record was dropped on load and the warning said "records no
    model"); a ``/1`` file without a record still applies with that warning."""
    import warnings

    import torch

    from lrm_interp.model.provenance import WeightsMismatchError
    from lrm_interp.protect.bit_allocation import FORMAT_V1, BitAllocation, quantize_allocation_

    def other(d: dict) -> None:
        d["format"] = FORMAT_V1
        d["model"]["weights_fingerprint"] = "0" * 32

    b1m = _edited(bits_file, tmp_path / "b1m.json", other)
    alloc = BitAllocation.load(b1m)
    assert alloc.model == {"name": json.loads(bits_file.read_text())["model"]["name"], "weights_fingerprint": "0" * 32}
    model = _toy()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(WeightsMismatchError, match=f"bit allocation {b1m}"):
        quantize_allocation_(model, alloc, progress=False)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))

    def v1(d: dict) -> None:
        d["format"] = FORMAT_V1
        del d["model"]

    old = BitAllocation.load(_edited(bits_file, tmp_path / "v1.json", v1))
    assert old.model is None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        quantize_allocation_(model, old, progress=False)
    assert any("records no model" in str(x.message) for x in w)


# ------------------------------------------------------------------ NumPy integers (H11-NPI)
def test_numpy_integers_are_accepted_by_every_integer_field_and_stored_as_int():
    """``AttributionConfig(k_context=np.int64(5))``, ``max_tokens=np.int64(512)`` and
    ``ExperimentSettings(bits=np.int64(3))`` were refused with a message calling them not an integer,
    while ``per_family=np.int64(3)`` was accepted and kept as a NumPy value: every integer field now
    takes the shared rule (:func:`lrm_interp.checks.check_int`) and stores a plain ``int``."""
    import numpy as np

    from lrm_interp import AttributionConfig
    from lrm_interp.experiments.protection import ExperimentSettings
    from lrm_interp.experiments.study import StudySettings
    from lrm_interp.protect.bit_allocation import BitAllocation

    cfg = AttributionConfig(k_context=np.int64(5), max_tokens=np.int64(512))
    assert (cfg.k_context, cfg.max_tokens) == (5, 512) and type(cfg.k_context) is int and type(cfg.max_tokens) is int
    json.dumps(cfg.to_dict())
    es = ExperimentSettings(bits=np.int64(3), per_family=np.int32(3), random_seeds=(np.int64(0), 1))
    assert (es.bits, es.per_family, es.random_seeds) == (3, 3, (0, 1))
    assert all(type(v) is int for v in (es.bits, es.per_family, *es.random_seeds))
    st = StudySettings(bits=np.int64(3), per_task=np.int64(2))
    assert type(st.bits) is int and type(st.per_task) is int
    assert BitAllocation({"s": np.int64(16)}, 16.0, None, "none").bits == {"s": 16}
    # bools and non-integers are still refused, with the field's words
    with pytest.raises(ValueError, match=r"k_context must be an integer >= 0, got True \(bool\)"):
        AttributionConfig(k_context=True)
    with pytest.raises(ValueError, match=r"max_tokens must be None or an integer >= 2, got np\.int64\(1\)"):
        AttributionConfig(max_tokens=np.int64(1))
    with pytest.raises(ValueError, match=r"bits must be in 2\.\.7 \(b\+1 is a row\), got np\.int64\(8\)"):
        ExperimentSettings(bits=np.int64(8))
    with pytest.raises(ValueError, match="bits must be in 2..7"):
        ExperimentSettings(bits=3.0)


# ------------------------------------------------------------------ calibration size (H11-CAL1)
def test_gptq_and_hessian_sensitivity_on_a_tiny_calibration_warn_with_the_counts(tmp_path):
    """One trace of one character as ``--calib``: GPTQ and the Hessian sensitivity warn with the token
    count and the minimum (the widest input of a site); they were accepted without a word."""
    cal = tmp_path / "cal_one.jsonl"
    cal.write_text(json.dumps({"id": "e", "prompt": None, "response": "x"}) + "\n")
    q = tmp_path / "Qc"
    argv = ["quantize", "--model", "toy", "--bits", 3, "--method", "gptq", "--calib", cal, "--out", q, "--quiet"]
    want = r"calibration has 1 token\(s\) in 1 row\(s\), fewer than the 384 inputs of model\.layers\.0\.mlp\.down_proj"
    with pytest.warns(UserWarning, match=want + ".*give at least 384 calibration tokens"):
        assert _rc(argv) == 0
    bh = tmp_path / "bh.json"
    with pytest.warns(UserWarning, match=want):
        argv = ["bits", "--model", "toy", "--budget", 4, "--sensitivity", "hessian", "--calib", cal, "--out", bh]
        assert _rc(argv) == 0
    assert bh.exists()


def test_calibration_size_counts_tokens_without_padding_and_rtn_records_none():
    """:func:`calibration_size` leaves padding out; a GPTQ report holds it (``QuantReport.calibration``),
    an RTN report none; enough tokens give no warning."""
    import copy
    import warnings

    import torch

    from lrm_interp.compress.calibration import calibration_size, check_calibration_size
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.sites import find_sites

    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert calibration_size({"input_ids": ids, "attention_mask": mask}) == {"rows": 2, "tokens": 7}
    assert calibration_size(ids[0]) == {"rows": 1, "tokens": 5} and calibration_size(lambda m: None) is None
    model = _toy()
    sites = find_sites(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_calibration_size(sites, torch.ones(2, 192, dtype=torch.long))  # 384 tokens: the minimum
    with pytest.warns(UserWarning, match="calibration has 383 token"):
        check_calibration_size(sites, torch.ones(1, 383, dtype=torch.long))
    assert quantize_model_(copy.deepcopy(model), bits=4, progress=False).calibration is None
    with pytest.warns(UserWarning, match="calibration has 7 token"):
        rep = quantize_model_(
            model, bits=4, method="gptq", calib={"input_ids": ids, "attention_mask": mask}, progress=False
        )
    assert rep.calibration == {"rows": 2, "tokens": 7}


def test_quantize_records_the_calibration_it_was_computed_from(tmp_path):
    """``quantize --method gptq --calib F`` recorded no calibration size (H11-CAL1): the record
    ``lrm_interp_quantization.json`` now holds ``{"rows", "tokens"}`` and the file; RTN holds none."""
    import json
    import warnings

    from cli_run import run_cli, toy_gold

    gold = toy_gold(tmp_path)
    base = ["quantize", "--model", "toy", "--bits", 3, "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the toy calibration is below the minimum: warned, counted
        assert run_cli([*base, "--method", "gptq", "--calib", gold, "--out", tmp_path / "G"]) == 0
    rec = json.loads((tmp_path / "G" / "lrm_interp_quantization.json").read_text())
    assert rec["calib"] == str(gold) and rec["calibration"]["rows"] >= 1
    assert rec["calibration"]["tokens"] >= rec["calibration"]["rows"]
    assert run_cli([*base, "--out", tmp_path / "R"]) == 0
    assert json.loads((tmp_path / "R" / "lrm_interp_quantization.json").read_text())["calibration"] is None
