"""Hostile probe H26 (docs/reliability.md), the three findings left open by the twenty-fifth probe:

- H26-OUTCOMESMSG: a study's ``outcomes.safetensors`` replaced by another study's was refused with a
  message blaming ``study.json`` ("the file was edited or is corrupt: restore it"), and it did not
  say that deleting ``outcomes.safetensors`` has the study measure its rows again.
- H26-LINKMSG: ``study --overwrite`` in a folder whose ``attribution_fp32`` is a link was refused
  (right) with a false reason: "'attribution_fp32' is not an attribution folder a study writes".
- H26-GSHUGE: ``--group-size`` above a layer's input width padded every row to that many columns:
  ``study --group-size 100000`` ran for minutes where per channel takes seconds.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from cli_run import TINY_STUDY, copied, folder_files, tiny_study

from lrm_interp.compress.quant.grid import fit_params
from lrm_interp.compress.quant.rtn import rtn_quantize
from lrm_interp.experiments.study import StudyResult, run_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    return tiny_study(tmp_path_factory.mktemp("h27") / "S")


def test_replaced_outcomes_are_blamed_and_deleting_them_measures_the_rows_again(study, tmp_path):
    src, model, tok, traces = study
    other = tmp_path / "S4"
    run_study(model, traces, other, tokenizer=tok, **{**TINY_STUDY, "bits": 4})
    out = copied(src, tmp_path / "S")
    outcomes = out / "outcomes.safetensors"
    shutil.copyfile(other / "outcomes.safetensors", outcomes)
    before = folder_files(out)
    head = f"{outcomes}: the per-item outcomes of row 'uniform' give kl "
    tail = (
        f"{out / 'study.json'} recorded (that row is as the study wrote it): outcomes.safetensors was replaced "
        "or edited since; restore it, delete it (the study measures its rows again when rerun), or rerun with "
    )
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    assert str(e.value).startswith(head) and tail in str(e.value), e.value
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert str(e.value).startswith(head) and tail in str(e.value), e.value
    assert folder_files(out) == before  # refused before any write
    outcomes.unlink()  # the advice: the rerun study measures its rows again, the same values
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    want = {r.key: r.value for r in StudyResult.load(src).rows}
    assert {r.key: r.value for r in StudyResult.load(out).rows} == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_overwrite_names_a_linked_attribution_folder_as_a_link(study, tmp_path):
    src, model, tok, traces = study
    keep = copied(src, tmp_path / "keep")
    out = copied(src, tmp_path / "S")
    shutil.rmtree(out / "attribution_fp32")
    (out / "attribution_fp32").symlink_to(keep / "attribution_fp32", target_is_directory=True)
    kept, before = folder_files(keep), folder_files(out)
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, overwrite=True, **{**TINY_STUDY, "bits": 4})
    assert str(e.value) == (
        f"{out / 'attribution_fp32'} is a link to {os.path.realpath(keep / 'attribution_fp32')}, not a folder "
        f"this study wrote inside {out}; refusing to remove anything through it (--overwrite): remove the link "
        "yourself (the folder it points to is kept) or use another out folder"
    )
    assert "not an attribution folder" not in str(e.value)
    assert folder_files(keep) == kept and folder_files(out) == before


@pytest.mark.parametrize("masked", [False, True])
def test_a_group_wider_than_the_row_is_one_group_per_row(masked):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 10, generator=g)
    mask = (torch.rand(6, 10, generator=g) < 0.2) if masked else None
    wide = fit_params(W, 3, group_size=100_000, mask=mask)
    row = fit_params(W, 3, group_size=None, mask=mask)
    assert wide.group_size == 10  # not padded to 100000 columns per row
    assert torch.equal(wide.scale, row.scale) and torch.equal(wide.zero, row.zero)
    assert torch.equal(
        rtn_quantize(W, 3, group_size=100_000, mask=mask), rtn_quantize(W, 3, group_size=None, mask=mask)
    )
    assert fit_params(W, 3, group_size=4, mask=mask).scale.shape == (6, 3)  # narrower groups unchanged
