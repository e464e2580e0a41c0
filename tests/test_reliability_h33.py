"""The fixes of the thirty-second hostile probe's left-open findings and of probe 32 (H32-…, H33-…;
docs/reliability.md): each test fails on the code before its fix."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def study(tmp_path_factory: Any) -> Any:
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    from cli_run import tiny_study

    return tiny_study(tmp_path_factory.mktemp("h33") / "S")


def _make_wrong(out: Path, entry: str, now: str) -> None:
    """Turn the study's ``entry`` into ``now``: a folder (holding a note), a file, or a link to the study."""
    p = out / entry
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
    if now == "folder":
        p.mkdir()
        (p / "note.txt").write_text("mine\n")
    elif now == "file":
        p.write_text("mine\n")
    else:
        p.symlink_to(out.resolve(), target_is_directory=True)


#: (entry, what it becomes, how the refusal names it)
WRONG = [
    ("masks.safetensors", "folder", "a folder, not the file"),
    ("bits.json", "folder", "a folder, not the file"),
    ("shift.png", "folder", "a folder, not the file"),
    ("results.csv", "folder", "a folder, not the file"),
    ("attribution_fp32/partial", "file", "a file, not the work folder"),
    ("attribution_fp32/scores.csv", "folder", "a folder, not the file"),
    ("attribution_rtn3", "link", "a link to .*, which holds the study, not the attribution folder"),
]


@pytest.mark.parametrize(("entry", "now", "named"), WRONG, ids=[f"{e}-{n}" for e, n, _ in WRONG])
def test_a_study_rerun_refuses_an_entry_of_another_kind_before_writing(
    study: Any, tmp_path: Any, entry: str, now: str, named: str
) -> None:
    """H32-STFILE2: a finished study whose file became a folder (or whose attribution folder became a
    link to the study, its ``partial/`` a file): the rerun rewrote ``study.json`` as unfinished,
    recomputed, then failed ("Is a directory", "File exists"). Refused now before anything is
    written, naming the entry; removing it and rerunning gives the same rows."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, entry, now)
    before, record = folder_files(out), (out / "study.json").read_bytes()
    with pytest.raises(ValueError, match=rf"{out / entry} is {named} the study made there; nothing was changed"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert folder_files(out) == before and (out / "study.json").read_bytes() == record
    p = out / entry
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert StudyResult.load(out).rows == StudyResult.load(src).rows


def test_a_study_overwrite_refuses_a_folder_where_its_file_was(study: Any, tmp_path: Any) -> None:
    """H32-STFILE2 with ``overwrite``: the folder where ``masks.safetensors`` was is not the study's to
    delete (it failed with a raw "Is a directory" after removing the study's record)."""
    from cli_run import TINY_STUDY, copied, folder_files

    from lrm_interp.experiments.study import run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, "masks.safetensors", "folder")
    before = folder_files(out)
    with pytest.raises(ValueError, match="starting the study over removes only what the study wrote"):
        run_study(model, traces, out, tokenizer=tok, overwrite=True, **TINY_STUDY)
    assert folder_files(out) == before


def test_a_study_record_that_became_a_folder_is_named(study: Any, tmp_path: Any, capsys: Any) -> None:
    """H32-STFILE2: ``study.json`` made a folder: "S/study.json: Is a directory" (raw) from the CLI
    and the Python API; now one line naming it."""
    from cli_run import TINY_STUDY, copied, err_line, folder_files, run_cli

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    _make_wrong(out, "study.json", "folder")
    before = folder_files(out)
    with pytest.raises(ValueError, match="study.json is a folder, not the study's record file"):
        run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    with pytest.raises(ValueError, match="study.json is a folder, not the study's record file"):
        StudyResult.load(out)
    traces.save_jsonl(tmp_path / "tr.jsonl")
    argv = ["study", "--model", "toy", "--data", tmp_path / "tr.jsonl", "--out", out, "--bits", 3, "--resamples", 40]
    assert run_cli([*argv, "--quiet"]) == 2
    assert "study.json is a folder, not the study's record file" in err_line(capsys)
    assert folder_files(out) == before


def test_the_quickstart_hint_names_its_traces_and_its_model(tmp_path: Any, capsys: Any) -> None:
    """H32-QSHINT2: a quickstart rerun with another ``--traces``, or with ``--tiny`` missing (or added),
    was refused with no hint ("differs in other traces" / "another model"), and a settings
    difference hid the traces one. Every difference is named now with the flags that resume the
    recorded study; each hint, pasted, resumes it (every file kept)."""
    from cli_run import err_line, folder_files, run_cli

    cases = {
        ("--tiny",): {
            ("--tiny", "--traces", 6): "differs in other traces); rerun with the settings it records (--tiny "
            "--traces 3)",
            (): "differs in another model); rerun with the settings it records (--tiny)",
            ("--traces", 6, "--bits", 4, "--tiny"): "differs in bits 3 ≠ 4, other traces); rerun with the settings "
            "it records (--tiny --traces 3 --bits 3)",
        },
        (): {
            ("--tiny",): "differs in another model); rerun with the settings it records (without --tiny)",
            ("--traces", 6, "--eval", 3): "differs in tasks [] ≠ ['math', 'logic', 'knowledge'], other traces); rerun "
            "with the settings it records (--eval 0 --traces 3)",
        },
    }
    for made, reruns in cases.items():
        qs = tmp_path / f"QS{len(made)}"
        assert run_cli(["quickstart", *made, "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]) == 0
        capsys.readouterr()
        before = folder_files(qs)
        for extra, expected in reruns.items():
            args = ["quickstart", *extra, "--out", qs, "--quiet"]
            args += [] if "--traces" in extra else ["--traces", 3]
            args += [] if "--eval" in extra else ["--eval", 0]
            assert run_cli(args) == 2
            assert f"error: {qs} holds another study ({expected} to resume it, or use another" in err_line(capsys)
            assert folder_files(qs) == before
        assert run_cli(["quickstart", *made, "--traces", 3, "--eval", 0, "--out", qs, "--quiet"]) == 0
        assert "(resumed: fp, uniform, magnitude, attribution, mixed)" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "kind"), [(" ", "blank \\(only spaces\\)"), ("", "empty")])
def test_a_blank_model_path_is_named_as_the_model(tmp_path: Any, model: str, kind: str) -> None:
    """H32-APITYPES2 (left open): ``run_study(' ', data, out)`` said "check_saved_records: directory is
    blank" (an internal function, not the argument); the model is named now, nothing written."""
    from lrm_interp.checks import EmptyPathError
    from lrm_interp.experiments.study import run_study

    with pytest.raises(EmptyPathError, match=rf"^model is {kind} \('{model}'\): give a path"):
        run_study(model, tmp_path / "tr.jsonl", tmp_path / "S", bits=3, resamples=40)
    assert not (tmp_path / "S").exists()


def test_a_study_attribution_folder_linked_elsewhere_is_still_read(study: Any, tmp_path: Any) -> None:
    """The H32-STFILE2 check refuses a link to the study itself, not a link to an attribution folder kept
    elsewhere (a user's layout): the finished study's rerun reads it and gives the same rows."""
    from cli_run import TINY_STUDY, copied

    from lrm_interp.experiments.study import StudyResult, run_study

    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    shutil.move(out / "attribution_fp32", tmp_path / "kept")
    (out / "attribution_fp32").symlink_to(tmp_path / "kept", target_is_directory=True)
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    assert StudyResult.load(out).rows == StudyResult.load(src).rows
