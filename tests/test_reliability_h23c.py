"""H23 cases of a finished study folder (:meth:`lrm_interp.experiments.study.StudyResult.load`, a
resume, :func:`lrm_interp._io.finished_result`):

- H23-SPROV: an edited ``study.json`` ``provenance`` (model name, data file, trace count) or reuse
  command was returned by ``load``; now refused by ``load`` and a resume (``record_sha256``).
- H23-REORDER: the study's reuse command ``attribute --out S/attribution_fp32`` rerun over the same
  traces in another order moved the scores by float summation order, and ``load`` then said the
  folder "was replaced"; a result of the same run on the same traces (its identity, recorded as
  ``attribution_identity_sha256``) is accepted, another run's is still refused.
- H23-NOSTUDYJSON: a study folder that lost ``study.json`` was taken for the compare result its
  ``shift.csv`` is, and not even ``overwrite=True`` could restart it; it is a study's folder now.

One study is run (module fixture); each test works on a copy of its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import TINY_STUDY, copied, folder_files, tiny_study

from lrm_interp._io import finished_result
from lrm_interp.attribution.pipeline import attribute
from lrm_interp.attribution.results import Attribution
from lrm_interp.data.traces import ReasoningDataset
from lrm_interp.experiments.study import StudyResult, run_study

STUDY = TINY_STUDY


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(folder, model, tokenizer, traces)`` of one finished study over 6 traces (never changed)."""
    return tiny_study(tmp_path_factory.mktemp("h23c") / "st", families=2)


def _copy(finished, tmp_path: Path, name: str) -> Path:
    return copied(finished[0], tmp_path / name)


def _doc(out: Path) -> dict:
    return json.loads((out / "study.json").read_text(encoding="utf-8"))


def _edit(out: Path, edit) -> None:
    doc = _doc(out)
    edit(doc)
    (out / "study.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")


def _tensors_sha(folder: Path) -> str:
    return json.loads((folder / "attribution.json").read_text(encoding="utf-8"))["tensors_sha256"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["provenance"]["traces"].__setitem__("n", 60),
        lambda d: d["provenance"]["model"].__setitem__("name", "meta-llama/Llama-3-70B"),
        lambda d: d["commands"].__setitem__(1, d["commands"][1].replace("--out", "--overwrite --out")),
        lambda d: d["files"].__setitem__("extra.csv", "a file the study never wrote"),
    ],
    ids=["trace-count", "model-name", "command", "files"],
)
def test_edited_provenance_or_commands_are_refused_by_load_and_resume(finished, tmp_path, edit):
    out = _copy(finished, tmp_path, "prov")
    assert "record_sha256" in _doc(out)
    _edit(out, edit)
    before = folder_files(out)
    want = "its provenance, commands, files were edited since the study wrote them"
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    assert str(e.value).startswith(f"{out / 'study.json'}: {want}")
    assert "the file was edited or is corrupt: restore it, or rerun with" in str(e.value)
    _, model, tok, traces = finished
    with pytest.raises(ValueError, match=want):
        run_study(model, traces, out, tokenizer=tok, **STUDY)
    assert folder_files(out) == before


def test_a_study_json_without_the_record_checksum_still_loads(finished, tmp_path):
    old = _copy(finished, tmp_path, "old")  # written before record_sha256: not checked
    _edit(old, lambda d: [d.pop("record_sha256"), d["provenance"]["traces"].__setitem__("n", 60)])
    assert StudyResult.load(old).provenance["traces"]["n"] == 60
    ok = _copy(finished, tmp_path, "ok")  # a load / save round trip writes a record that checks
    StudyResult.load(ok).save(ok)
    assert StudyResult.load(ok).commands == StudyResult.load(finished[0]).commands


def test_reuse_command_over_reordered_traces_keeps_the_study_loadable(finished, tmp_path):
    out = _copy(finished, tmp_path, "reorder")
    _, model, tok, traces = finished
    name = _doc(out)["provenance"]["folders"]["original"]
    sha = _tensors_sha(out / name)
    for order in (list(traces)[::-1], list(traces)[1:] + list(traces)[:1]):
        attribute(model, ReasoningDataset(order), tokenizer=tok, out_dir=out / name, progress=False)
        if _tensors_sha(out / name) != sha:
            break
    assert _tensors_sha(out / name) != sha  # the case: other bytes (summation order), the same run
    got = StudyResult.load(out)
    assert len(got.rows) == 5
    assert (got.attribution.scores - Attribution.load(finished[0] / name).scores).abs().max() < 1e-6


def test_another_runs_attribution_in_a_studys_folder_is_still_refused(finished, tmp_path):
    out = _copy(finished, tmp_path, "attr")
    folders = _doc(out)["provenance"]["folders"]
    shutil.rmtree(out / folders["compressed"])
    shutil.copytree(out / folders["original"], out / folders["compressed"])  # other weights: another run
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    assert str(e.value) == (
        f"{out}: {folders['compressed']}/ is not the attribution the study made (tensors_sha256 differs, and it "
        "is not a rerun of the same attribute run on the same traces: other model, settings, sites or traces): "
        "one was replaced since the study finished; restore it, or rerun the study with --overwrite "
        "(overwrite=True) to start it over"
    )
    assert folder_files(out) == before


def test_a_study_that_lost_study_json_is_a_study_folder_and_can_be_restarted(finished, tmp_path):
    out = _copy(finished, tmp_path, "nojson")
    (out / "study.json").unlink()
    assert finished_result(out).kind == "study"  # was "compare" (its shift.csv)
    _, model, tok, traces = finished
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, **STUDY)
    msg = str(e.value)
    assert msg.startswith(f"{out} is not a study folder (no study.json) but holds attribution_fp32/, ")
    assert msg.endswith(
        "which a study would replace; use another out folder (--out) or overwrite=True (--overwrite) to replace them"
    )
    assert folder_files(out) == before
    # compare --overwrite / write_tables(overwrite=True) no longer takes it for its own folder
    res = Attribution.load(out / "attribution_fp32")
    from lrm_interp.attribution.results import compare

    with pytest.raises(FileExistsError, match="a compare result is never written into another command's result"):
        compare(res, Attribution.load(out / "attribution_rtn3")).write_tables(out, overwrite=True)
    assert folder_files(out) == before
    got = run_study(model, traces, out, tokenizer=tok, overwrite=True, **STUDY)
    assert len(got.rows) == 5 and len(StudyResult.load(out).rows) == 5
    assert [(r.key, r.value, r.ci) for r in got.rows] == [
        (r.key, r.value, r.ci) for r in StudyResult.load(finished[0]).rows
    ]
