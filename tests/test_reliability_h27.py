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
from cli_run import TINY_STUDY, copied, err_line, folder_files, run_cli, tiny_study, toy_attribution

from lrm_interp._io import plain_mode
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


# --------------------------------------------------------------------------- the twenty-sixth probe (H27-…)
def test_quickstart_never_replaces_an_edited_tiny_model(tmp_path):
    """H27-QSMODEL: a rerun saved the generated tiny model over the user's edited ``tiny_model/``."""
    import json

    from lrm_interp.experiments.quickstart import quickstart_study

    out = tmp_path / "QS"
    run = dict(n_traces=3, tiny=True, n_eval=0, progress=False)
    quickstart_study(out, **run)
    # H27-PERM: the tiny model's files have plain modes (transformers writes model.safetensors 0600)
    assert {f.stat().st_mode & 0o777 for f in (out / "tiny_model").iterdir()} == {plain_mode()}
    quickstart_study(out, **run)  # an unedited folder resumes
    config = out / "tiny_model" / "config.json"
    doc = json.loads(config.read_text(encoding="utf-8"))
    config.write_text(json.dumps({**doc, "rms_norm_eps": 1e-3}), encoding="utf-8")
    (out / "tiny_model" / "notes.txt").write_text("mine")
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        quickstart_study(out, **run)
    assert str(e.value) == (
        f"{out / 'tiny_model'} is not the model the quickstart wrote there (config.json edited since?); a rerun "
        "would replace it with the generated tiny model: copy the folder elsewhere to keep it (and use it as "
        "'lrm-interp study --model'), or rerun with overwrite=True (--overwrite) to replace it"
    )
    assert folder_files(out) == before
    quickstart_study(out, **run, overwrite=True)  # consent: the generated model again, the user's note kept
    assert json.loads(config.read_text(encoding="utf-8")) == doc
    assert (out / "tiny_model" / "notes.txt").read_text() == "mine"


def test_printed_commands_quote_paths_with_spaces(study, tmp_path):
    """H27-QUOTE: ``--scores my runs/S x/attribution_fp32`` was split in two when pasted."""
    import json
    import shlex

    _, model, tok, traces = study
    data = tmp_path / "my runs" / "tr a.jsonl"
    data.parent.mkdir()
    traces.save_jsonl(data)
    out = tmp_path / "my runs" / "S x"
    run_study(model, data, out, tokenizer=tok, **TINY_STUDY)
    commands = json.loads((out / "study.json").read_text(encoding="utf-8"))["commands"]
    assert shlex.split(commands[1]) == [
        "lrm-interp", "attribute", "--model", "tiny", "--data", str(data), "--out", f"{out}/attribution_fp32"
    ]  # fmt: skip
    bits = shlex.split(commands[4])
    assert bits[bits.index("--scores") + 1] == f"{out}/attribution_fp32"
    assert bits[bits.index("--out") + 1] == f"{out}/reuse/bits.json"


def test_study_settings_as_a_dict_get_a_type_error(study, tmp_path):
    """H27-RSDICT: ``run_study(..., {'bits': 3})`` gave "AttributeError: 'dict' object has no attribute 'tasks'"."""
    _, model, tok, traces = study
    with pytest.raises(TypeError) as e:
        run_study(model, traces, tmp_path / "S", {"bits": 3}, tokenizer=tok, progress=False)
    assert str(e.value) == (
        "settings must be a StudySettings, got dict; give the fields as keywords (run_study(model, data, out, "
        "bits=3, ...)) or StudySettings(**fields)"
    )
    assert not (tmp_path / "S").exists()


def test_loading_the_study_file_names_its_folder(study):
    """H27-SRLOADFILE: ``StudyResult.load('S1/study.json')`` said "S1/study.json: no study.json"."""
    src = study[0]
    with pytest.raises(ValueError) as e:
        StudyResult.load(src / "study.json")
    assert str(e.value) == f"{src / 'study.json'} is a file, not a study folder: give the folder that holds it ({src})"


def test_a_study_with_other_settings_is_offered_its_own_settings_to_resume(study, tmp_path):
    """H27-STBATCH: a finished study rerun with one setting changed offered only ``--overwrite``
    (everything measured again); the same model and traces resume with the recorded settings."""
    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, **{**TINY_STUDY, "bits": 4})
    assert (
        "holds another study (differs in bits 3 ≠ 4); rerun with the settings it records (--bits 3) to resume it, "
        "or use another " in str(e.value)
    )
    other = list(traces)[:-1]  # other traces: no resume to offer
    with pytest.raises(ValueError) as e:
        run_study(model, other, out, tokenizer=tok, **TINY_STUDY)
    assert "differs in other traces); use another " in str(e.value) and "rerun with" not in str(e.value)
    assert folder_files(out) == before


def test_no_other_command_writes_into_an_annotation_cache(tmp_path, capsys):
    """H27-CACHEIN: ``compare``, ``attribute``, ``bench score`` and ``study`` wrote into an ``annotate
    --cache`` folder (exit 0), after which ``annotate`` refused its own cache as "the compare result"."""
    gold, a = toy_attribution(tmp_path)
    cache = tmp_path / "C1"
    annotate = ["annotate", "--data", gold, "--annotator", "keyword", "--cache", cache, "--quiet"]
    assert run_cli([*annotate, "--out", tmp_path / "a1.jsonl"]) == 0
    before = folder_files(cache)
    assert len(before) == 3  # one entry per trace
    refused = (
        f"--out {cache} is the annotation cache result {cache}, another command's result: it is never written into"
    )
    for argv in (
        ["compare", "--original", a, "--compressed", a, "--out", cache, "--overwrite"],
        ["attribute", "--model", "toy", "--data", gold, "--out", cache, "--overwrite", "--quiet"],
        ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", cache, "--quiet"],
    ):
        capsys.readouterr()
        assert run_cli(argv) == 2, argv
        assert err_line(capsys).startswith(f"lrm-interp {argv[0]}: error: {refused}"), argv
    assert folder_files(cache) == before
    capsys.readouterr()
    assert run_cli([*annotate, "--out", tmp_path / "a2.jsonl"]) == 0  # its own cache: every trace from it
    assert "3 traces: 0 annotated, 3 from cache" in capsys.readouterr().out
