"""H25 cases of the study settings and ``--scores``:

- H25-RESAMP1: ``study --resamples 1`` was accepted: each "95% interval" was one bootstrap draw, of
  zero width, beside (not around) its value; a study needs at least ``MIN_RESAMPLES`` (40: one
  draw in each 2.5% tail), refused up front by ``StudySettings`` (so by the CLI too); 0 and negative
  counts get the same message (H26-RSMIN: they said ">= 1"), and so do more than ``MAX_RESAMPLES``
  (H26-RSHUGE: 10^12 ended in an internal error after minutes).
- H25-PARTIALSCORES: ``--scores A/partial`` (the work folder of an attribution result) advised a
  new ``attribute`` run instead of pointing at ``A``.
"""

from __future__ import annotations

import pytest
from cli_run import err_line, run_cli, toy_attribution, toy_gold

from lrm_interp.experiments.study import MAX_RESAMPLES, MIN_RESAMPLES, StudySettings


@pytest.mark.parametrize("n", [-5, 0, 1, 2, 39, 100_001, 10**12])  # H26-RSMIN, H26-RSHUGE too
def test_a_study_needs_enough_resamples_for_its_intervals(n):
    with pytest.raises(ValueError) as e:
        StudySettings(resamples=n)
    assert str(e.value) == (
        f"resamples is {n}: a 95% percentile interval needs at least 40 bootstrap resamples (one in each 2.5% "
        "tail), and more than 100,000 only costs memory; use resamples (--resamples) from 40 to 100000 (default 1000)"
    )
    assert MIN_RESAMPLES == 40 and StudySettings(resamples=40).resamples == 40
    assert StudySettings(resamples=MAX_RESAMPLES).resamples == 100_000


def test_the_study_command_refuses_one_resample_before_any_work(tmp_path, capsys):
    gold = toy_gold(tmp_path)
    capsys.readouterr()
    argv = ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 1, "--out", tmp_path / "S"]
    assert run_cli([*argv, "--quiet"]) == 2
    assert "resamples is 1: a 95% percentile interval needs at least 40 bootstrap resamples (one in each" in err_line(
        capsys
    )
    assert not (tmp_path / "S").exists()


def test_scores_given_an_attributions_partial_folder_points_at_the_result(tmp_path, capsys):
    _, a = toy_attribution(tmp_path)
    capsys.readouterr()
    argv = ["protect", "--scores", a / "partial", "--model", "toy", "--out", tmp_path / "m.safetensors", "--quiet"]
    assert run_cli(argv) == 2
    assert err_line(capsys) == (
        f"lrm-interp protect: error: --scores {a / 'partial'}: not an attribution result folder; it is the work "
        f"folder partial/ of the attribution result {a}: give that folder (--scores {a})"
    )
    assert not (tmp_path / "m.safetensors").exists()
