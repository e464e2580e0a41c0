"""H22 cases of :meth:`lrm_interp.experiments.study.StudyResult.load` and the folder check of a
resumed study (:func:`~lrm_interp.experiments.study.check_study_folder`):

- H22-SDUP: a row key twice in ``study.json`` is refused by ``load`` and by a resume (``load``
  returned 6 rows, ``'magnitude'`` twice).
- H22-SROWS: a row's ``bpw`` / ``label`` / ``modules`` or the ``masks`` summary edited in
  ``study.json`` is refused (``rows_sha256`` / ``masks_sha256``, recorded by the study); a
  ``load(...).save(...)`` round trip still loads.
- H22-SLOAD: ``load`` refuses a replaced ``masks.safetensors`` (as a resume does) and an attribution
  folder that is not the one the study made (its ``tensors_sha256``, recorded in ``study.json``).

One study is run (module fixture); each test works on a copy of its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import TINY_STUDY, copied, folder_files, tiny_study

from lrm_interp.experiments.study import StudyResult, run_study

STUDY = TINY_STUDY


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(folder, model, tokenizer, traces)`` of one finished study (never changed: tests copy it)."""
    return tiny_study(tmp_path_factory.mktemp("h22a") / "st", families=1)


def _copy(finished, tmp_path: Path, name: str) -> Path:
    return copied(finished[0], tmp_path / name)


def _edit(out: Path, edit) -> None:
    p = out / "study.json"
    doc = json.loads(p.read_text(encoding="utf-8"))
    edit(doc)
    p.write_text(json.dumps(doc, indent=1), encoding="utf-8")


def _resume(finished, out: Path):
    _, model, tok, traces = finished
    return run_study(model, traces, out, tokenizer=tok, **STUDY)


def test_duplicated_row_is_refused_by_load_and_resume(finished, tmp_path):
    out = _copy(finished, tmp_path, "dup")
    _edit(out, lambda d: d["rows"].append(d["rows"][2]))
    before = folder_files(out)
    want = "row 'magnitude' appears twice; the file was edited or is corrupt: restore it, or rerun with"
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    assert str(out / "study.json") in str(e.value) and want in str(e.value)
    with pytest.raises(ValueError, match=want):
        _resume(finished, out)
    assert folder_files(out) == before


@pytest.mark.parametrize(
    ("what", "edit", "want"),
    [
        ("bpw", lambda d: d["rows"][1].__setitem__("bpw", 3.0), "row 'uniform' was edited since the study wrote it"),
        (
            "label",
            lambda d: d["rows"][2].__setitem__("label", "2% attribution"),
            "row 'magnitude' was edited since the study wrote it",
        ),
        (
            "modules",
            lambda d: d["rows"][2].__setitem__("modules", "2:28"),
            "row 'magnitude' was edited since the study wrote it",
        ),
        (
            "masks",
            lambda d: d["masks"].__setitem__("protected_weights", 1),
            "its masks summary was edited since the study wrote it",
        ),
    ],
)
def test_edited_row_fields_and_masks_summary_are_refused(finished, tmp_path, what, edit, want):
    out = _copy(finished, tmp_path, what)
    _edit(out, edit)
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    msg = str(e.value)
    assert msg.startswith(f"{out / 'study.json'}: ") and want in msg and "the file was edited or is corrupt" in msg
    with pytest.raises(ValueError, match=want):  # a resume: results.csv not rewritten with the edited bpw
        _resume(finished, out)
    assert folder_files(out) == before


def test_load_save_round_trip_and_resume_of_a_finished_study_still_work(finished, tmp_path):
    out = _copy(finished, tmp_path, "ok")
    doc = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert set(doc["rows_sha256"]) == {r["key"] for r in doc["rows"]} and "masks_sha256" in doc
    assert set(doc["provenance"]["attribution_sha256"]) == set(doc["provenance"]["folders"].values())
    res = StudyResult.load(out)
    res.save(out)
    assert [r.key for r in StudyResult.load(out).rows] == [r.key for r in res.rows]
    assert len(_resume(finished, out).rows) == 5  # a rerun of the finished study
    StudyResult.load(out)
    # an older study.json (no rows / masks / attribution checksums) loads as before
    old = _copy(finished, tmp_path, "old")
    _edit(
        old,
        lambda d: [
            d.pop("rows_sha256"),
            d.pop("masks_sha256"),
            d.pop("record_sha256"),
            d["provenance"].pop("attribution_sha256"),
        ],
    )
    assert len(StudyResult.load(old).rows) == 5


def test_load_refuses_a_replaced_masks_file_and_attribution_folder(finished, tmp_path):
    out = _copy(finished, tmp_path, "masks")
    masks = out / "masks.safetensors"
    masks.write_bytes(masks.read_bytes() + b" ")  # any other file than the study wrote
    before = folder_files(out)
    with pytest.raises(ValueError, match=r"masks\.safetensors was changed since the study wrote it"):
        StudyResult.load(out)
    assert folder_files(out) == before

    out = _copy(finished, tmp_path, "attr")
    folders = json.loads((out / "study.json").read_text(encoding="utf-8"))["provenance"]["folders"]
    shutil.rmtree(out / folders["compressed"])
    shutil.copytree(out / folders["original"], out / folders["compressed"])
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
