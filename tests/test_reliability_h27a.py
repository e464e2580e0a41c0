"""H27 cases of the model folders ``lrm-interp quantize`` and ``toy train`` publish:

- H27-QREC: ``lrm_interp_quantization.json`` and ``lrm_interp_provenance.json`` carried no digest, so
  a hand edit (bits 3 -> 2) was believed by ``load_model``, ``bench run``'s ``run.json`` and
  ``quantize --requantize``. Both now carry ``record_sha256``
  (:func:`lrm_interp.model.provenance.record_checksum`) and an edited one is refused where it is
  read, naming the file; an unedited result (and an older record without the key) still loads.
- H27-PERM: ``save_pretrained`` (transformers 5) wrote ``model.safetensors`` with mode 0600; every
  file of a quantize or toy train result now gets ``0o666 & ~umask``
  (:func:`lrm_interp.model.provenance.plain_permissions`).

One quantize result is made (module fixture); each test works on a copy of it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_run import copied, err_line, folder_files, run_cli

from lrm_interp.model.loading import load_model
from lrm_interp.model.provenance import (
    RECORD_CHECKSUM,
    EditedRecordError,
    model_record,
    plain_permissions,
    record_checksum,
)

QUANT, PROV = "lrm_interp_quantization.json", "lrm_interp_provenance.json"
EDITED = (
    "was edited since 'lrm-interp quantize' wrote it (it does not match its record_sha256): "
    "restore it, or run quantize again"
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    """A 3-bit RTN quantize result of the toy model (never changed: tests copy it)."""
    out = tmp_path_factory.mktemp("h27a") / "Q3"
    assert run_cli(["quantize", "--model", "toy", "--bits", 3, "--out", out, "--quiet"]) == 0
    return out


def _edit(path: Path, edit) -> None:
    d = json.loads(path.read_text(encoding="utf-8"))
    edit(d)
    path.write_text(json.dumps(d, indent=2), encoding="utf-8")


def _bits2_quant(d: dict) -> None:
    d.update(bits=2, bits_per_weight=2.25)


def _bits2_prov(d: dict) -> None:
    d["compression"][0].update(bits=2)


@pytest.mark.parametrize(("name", "edit"), [(QUANT, _bits2_quant), (PROV, _bits2_prov)])
def test_edited_quantize_record_is_refused_by_load_bench_run_and_requantize(quantized, tmp_path, capsys, name, edit):
    q = copied(quantized, tmp_path / "Q3")
    for f in (QUANT, PROV):  # both written with their digest over every other field
        d = json.loads((q / f).read_text(encoding="utf-8"))
        assert d[RECORD_CHECKSUM] == record_checksum(d)
    _edit(q / name, edit)
    before = folder_files(q)
    want = f"{q / name} {EDITED}"
    with pytest.raises(EditedRecordError) as e:
        load_model(q)
    assert str(e.value) == want
    capsys.readouterr()
    bench = ["bench", "run", "--model", q, "--tasks", "math", "--per-family", 1, "--max-new-tokens", 8]
    assert run_cli([*bench, "--temperature", 0, "--out", tmp_path / "B", "--quiet"]) == 2
    assert err_line(capsys) == f"lrm-interp bench run: error: {want}"
    assert not (tmp_path / "B").exists()
    requant = ["quantize", "--model", q, "--requantize", "--bits", 3, "--out", tmp_path / "QQ", "--quiet"]
    assert run_cli(requant) == 2
    assert err_line(capsys) == f"lrm-interp quantize: error: {want}"
    assert not (tmp_path / "QQ").exists()
    assert folder_files(q) == before


def test_unedited_and_older_quantize_records_still_load(quantized, tmp_path, capsys):
    q = copied(quantized, tmp_path / "Q3")
    model, _ = load_model(q)
    assert [c["bits"] for c in model_record(model).current()] == [3]
    capsys.readouterr()
    requant = ["quantize", "--model", q, "--requantize", "--bits", 3, "--out", tmp_path / "QQ", "--quiet"]
    assert run_cli(requant) == 0
    for f in (QUANT, PROV):  # an older record, written before record_sha256: taken as it is
        _edit(q / f, lambda d: d.pop(RECORD_CHECKSUM))
    model, _ = load_model(q)
    assert [c["bits"] for c in model_record(model).current()] == [3]
    assert load_model(tmp_path / "QQ")[0] is not None  # the requantized result's records match too


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o022
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_quantize_and_toy_train_results_get_plain_permissions(tmp_path, umask_022):
    from lrm_interp.toy.train import train_toy_model

    q = tmp_path / "Q8"
    assert run_cli(["quantize", "--model", "toy", "--bits", 8, "--out", q, "--quiet"]) == 0
    modes = _modes(q)
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
    m = tmp_path / "M1"
    kw = {"steps": 2, "stop_at": None, "anneal_steps": 0, "batch_size": 4, "eval_per_family": 1, "workers": 0}
    train_toy_model(m, device="cpu", **kw)
    modes = _modes(m)
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
    # plain_permissions leaves the files the block did not write as they are
    d = tmp_path / "d"
    d.mkdir()
    (d / "private.txt").write_text("x")
    os.chmod(d / "private.txt", 0o600)
    with plain_permissions(d):
        (d / "new.bin").write_bytes(b"x")
        os.chmod(d / "new.bin", 0o600)
    assert _modes(d) == {"private.txt": 0o600, "new.bin": 0o644}
