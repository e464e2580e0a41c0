"""Hostile probe H26 (docs/reliability.md), data loss:

- H26-QSNOJSON: ``quickstart --overwrite`` on a user's study folder that lost ``study.json``: the
  first run was refused only after it had written a quickstart ``study.json``, ``traces.jsonl`` and
  ``tiny_model/`` (and replaced ``outcomes.safetensors``); the same command again then took the folder
  for a quickstart and replaced the whole study.
- H26-QSCORRUPT: the same with a truncated ``study.json``: refused after ``tiny_model/`` was written.

Both are refused now, ``--overwrite`` or not, before anything is written.
"""

from __future__ import annotations

import shutil

import pytest
from cli_run import folder_files, run_cli

from lrm_interp.experiments.quickstart import quickstart_study, quickstart_traces
from lrm_interp.experiments.study import run_study


@pytest.fixture(scope="module")
def user_study(tmp_path_factory):
    """A user's finished ``study`` of the toy on its own traces (never changed: tests copy it)."""
    d = tmp_path_factory.mktemp("h26")
    data = d / "mine.jsonl"
    quickstart_traces(3).save_jsonl(data)
    run_study("toy", data, d / "S", bits=3, resamples=40, progress=False)
    return d / "S"


@pytest.mark.parametrize("damage", ["gone", "truncated"])
def test_quickstart_never_writes_into_a_study_whose_record_is_gone_or_unreadable(user_study, tmp_path, capsys, damage):
    out = tmp_path / "S"
    shutil.copytree(user_study, out)
    rec = out / "study.json"
    if damage == "gone":
        rec.unlink()
        head = (
            f"{out} is not a study folder (no study.json) but holds a study's files (attribution_fp32/, "
            "attribution_rtn3/, bits.json, masks.json, masks.safetensors, outcomes.safetensors, ranking.csv, "
            "results.csv and 2 more)"
        )
    else:
        rec.write_bytes(rec.read_bytes()[:100])
        head = f"{out} holds a study whose study.json cannot be read (JSONDecodeError)"
    before = folder_files(out)
    msg = (
        f"{head}: whether a quickstart made it cannot be told, so the quickstart never writes into it, not even "
        "with overwrite=True (--overwrite); restore study.json (a user's study resumes with its own 'lrm-interp "
        "study' command), or choose another out folder (--out)"
    )
    for _ in range(2):  # the second --overwrite run replaced the whole study
        for extra in ([], ["--overwrite"]):
            assert run_cli(["quickstart", "--out", out, *extra, "--tiny", "--traces", 3, "--eval", 0, "--quiet"]) == 2
            assert msg in capsys.readouterr().err
    with pytest.raises(ValueError) as e:
        quickstart_study(out, n_traces=3, tiny=True, n_eval=0, overwrite=True, progress=False)
    assert str(e.value) == msg
    assert folder_files(out) == before and not (out / "tiny_model").exists()
