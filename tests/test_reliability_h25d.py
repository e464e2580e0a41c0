"""Hostile probe H25 (docs/reliability.md), data loss and unclear results:

- H25-QSPART: ``quickstart --overwrite`` deleted a user's *interrupted* ``study --model toy --data
  <any>/traces.jsonl`` (no checksum recorded yet), taking it for a quickstart by its data file's name
  alone; without ``--overwrite`` the refusal named only a setting and advised ``--overwrite``.
- H25-STUDYMIN: a study folder that lost ``study.json`` and every file only a study writes was "the
  compare result" (its ``shift.csv``), which not even ``study --overwrite`` could start over; its
  plans (``bits.json`` / ``masks.*``) beside an attribution folder tell it is a study's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_run import folder_files, run_cli

from lrm_interp._io import finished_result
from lrm_interp.experiments import study as study_mod
from lrm_interp.experiments.quickstart import check_quickstart_folder, quickstart_study, quickstart_traces
from lrm_interp.experiments.study import run_study
from lrm_interp.testing import byte_tokenizer, tiny_model
from lrm_interp.toy.tasks import generate_dataset


def _interrupt(*a, **k):
    raise KeyboardInterrupt


def test_quickstart_never_replaces_an_interrupted_user_study_of_a_traces_jsonl(tmp_path, monkeypatch, capsys):
    """H25-QSPART: a user's study of the toy on ``ud/traces.jsonl``, interrupted after its first save
    (no checksum recorded), is refused by the quickstart, --overwrite or not, as a user's study (not
    "resamples 50 ≠ 1000"); nothing in it changes. An interrupted quickstart, run from another
    working folder, is still the quickstart's."""
    data = tmp_path / "ud" / "traces.jsonl"
    data.parent.mkdir()
    quickstart_traces(3).save_jsonl(data)
    out = tmp_path / "S5"
    monkeypatch.setattr(study_mod, "attribute", _interrupt)  # interrupted right after the first save
    with pytest.raises(KeyboardInterrupt):
        run_study("toy", data, out, bits=3, resamples=50, progress=False)
    monkeypatch.undo()
    assert (out / "study.json").is_file()
    before = folder_files(out)
    msg = (
        f"{out} holds a study made by 'lrm-interp study' (model toy, data {data}) (interrupted: resume it with the "
        "same 'lrm-interp study' command), not a quickstart: overwrite=True (--overwrite) replaces only a "
        "quickstart's folder; choose another out folder (--out)"
    )
    for extra in ([], ["--overwrite"]):
        assert run_cli(["quickstart", "--out", out, *extra, "--tiny", "--traces", 3, "--quiet"]) == 2
        err = capsys.readouterr()
        assert msg in err.err and "resamples" not in err.err and "quickstart on a TINY" not in err.out
    with pytest.raises(ValueError) as e:
        quickstart_study(out, n_traces=3, tiny=True, n_eval=0, overwrite=True, progress=False)
    assert msg in str(e.value)
    assert folder_files(out) == before and not (out / "tiny_model").exists()

    # the quickstart's own folder, interrupted, relative --out, then checked from its parent: still its own
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(study_mod, "attribute", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        quickstart_study("q", n_traces=3, progress=False)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    check_quickstart_folder(Path("w") / "q")  # not refused
    check_quickstart_folder(work / "q")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """``(folder, model, tokenizer, traces)`` of one finished tiny study (never changed)."""
    traces = generate_dataset(2, seed=4242)
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    out = tmp_path_factory.mktemp("h25d") / "st"
    run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    return out, model, tok, traces


def test_a_study_without_its_study_only_files_is_a_study_not_a_compare_result(study_dir, tmp_path):
    """H25-STUDYMIN: shift.csv + bits/masks + attribution_*/ is a study (``--overwrite`` starts it over);
    a user's compare folder with an attribution folder but no plans stays the compare result."""
    src, model, tok, traces = study_dir
    out = tmp_path / "S7"
    shutil.copytree(src, out)
    for n in ("study.json", "outcomes.safetensors", "ranking.csv", "report.html", "results.csv"):
        (out / n).unlink(missing_ok=True)
    assert (out / "shift.csv").is_file() and (out / "bits.json").is_file()
    got = finished_result(out)
    assert got is not None and got.kind == "study"  # was "compare"
    before = folder_files(out)
    kw = dict(tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    with pytest.raises(ValueError, match=r"is not a study folder \(no study.json\) but holds attribution_fp32/"):
        run_study(model, traces, out, **kw)
    assert folder_files(out) == before
    assert len(run_study(model, traces, out, overwrite=True, **kw).rows) == 5

    d = tmp_path / "D"  # a user's compare folder holding an attribution folder: still the compare result
    d.mkdir()
    shutil.copy(src / "shift.csv", d / "shift.csv")
    shutil.copytree(src / "attribution_fp32", d / "attribution_x")
    got = finished_result(d)
    assert got is not None and got.kind == "compare"
    before = folder_files(d)
    with pytest.raises(ValueError, match="another command's result"):
        run_study(model, traces, d, overwrite=True, **kw)
    assert folder_files(d) == before
