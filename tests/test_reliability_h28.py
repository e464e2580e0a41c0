"""Hostile probe H28 (docs/reliability.md, the twenty-seventh probe):

- H28-QSLINK: ``quickstart --overwrite`` whose ``tiny_model`` is a link to a user's folder saved the
  tiny model through the link, over the user's files outside ``--out``.
- H28-BPWSYM: ``bits_per_weight(symmetric="no")`` priced a symmetric grid (a string is truthy).
- H28-QUOTEDASH: a printed reuse command with a path beginning with ``-`` (``--data -dash.jsonl``)
  failed when pasted ("expected one argument").
- H28-STHINT: the resume hint of a study refusal named Python fields ("symmetric False").
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest
from cli_run import TINY_STUDY, copied, folder_files, tiny_study

from lrm_interp.experiments.quickstart import quickstart_study
from lrm_interp.experiments.study import run_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished tiny study (3-bit) and its model, tokenizer and traces (tests copy the folder)."""
    return tiny_study(tmp_path_factory.mktemp("h28") / "S")


def test_quickstart_never_saves_its_model_through_a_link(tmp_path):
    out = tmp_path / "QS"
    run = dict(n_traces=3, tiny=True, n_eval=0, progress=False)
    quickstart_study(out, **run)
    user = tmp_path / "mine"
    shutil.copytree(out / "tiny_model", user)
    config = user / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "rms_norm_eps": 1e-3}))
    shutil.rmtree(out / "tiny_model")
    (out / "tiny_model").symlink_to(user, target_is_directory=True)
    mine, before = folder_files(user), folder_files(out)
    for overwrite in (False, True):
        with pytest.raises(ValueError) as e:
            quickstart_study(out, **run, overwrite=overwrite)
        assert str(e.value) == (
            f"{out / 'tiny_model'} is a link to {os.path.realpath(user)}: the quickstart writes its tiny model "
            "only into a folder of its own, not even with overwrite=True (--overwrite); remove the link (the "
            "folder it points to is kept), or choose another out folder (--out)"
        )
        assert folder_files(user) == mine and folder_files(out) == before


def test_bits_per_weight_refuses_a_symmetric_flag_that_is_no_bool(study):
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import bits_per_weight

    sites = find_sites(study[1])
    for bad in ("no", 1, None):
        with pytest.raises(ValueError, match=r"^bits_per_weight: symmetric must be True or False, got "):
            bits_per_weight({}, sites, bits=3, symmetric=bad)
    assert bits_per_weight({}, sites, bits=3, symmetric=True)["bpw"] < bits_per_weight({}, sites, bits=3)["bpw"]


def test_printed_commands_glue_paths_that_begin_with_a_dash(study, tmp_path, monkeypatch):
    from lrm_interp.cli.main import build_parser

    _, model, tok, traces = study
    monkeypatch.chdir(tmp_path)
    traces.save_jsonl(tmp_path / "-dash.jsonl")
    run_study(model, "-dash.jsonl", "-S2", tokenizer=tok, **TINY_STUDY)
    commands = json.loads((tmp_path / "-S2" / "study.json").read_text(encoding="utf-8"))["commands"]
    attribute = shlex.split(commands[1])
    assert attribute == [
        "lrm-interp",
        "attribute",
        "--model",
        "tiny",
        "--data=-dash.jsonl",
        "--out=-S2/attribution_fp32",
    ]
    a = build_parser().parse_args(attribute[1:])  # argparse reads it back (it took "-dash.jsonl" for a flag)
    assert (str(a.data), str(a.out)) == ("-dash.jsonl", "-S2/attribution_fp32")
    for c in commands:
        build_parser().parse_args(shlex.split(c)[1:])


def test_the_resume_hint_names_the_study_flags(study, tmp_path):
    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, **{**TINY_STUDY, "symmetric": True, "budget": 0.05})
    assert (
        "(differs in budget 0.02 ≠ 0.05, symmetric False ≠ True); rerun with the settings it records "
        "(--budget 0.02, without --symmetric) to resume it, or use another " in str(e.value)
    ), e.value


@pytest.mark.parametrize("swapped", ["records", "weights"])
def test_records_of_another_quantize_result_are_refused(tmp_path, swapped):
    """H28-QRSWAP: the (intact, checksummed) record files of a 4-bit quantize result copied into a
    3-bit one were believed (``bench run`` recorded "rtn 4"), and so were the 3-bit records over the
    4-bit weights: the loader saw a stale weights sample and only appended "weights changed in place"."""
    from cli_run import run_cli

    from lrm_interp.model.loading import load_model

    for bits in (3, 4):
        assert run_cli(["quantize", "--model", "toy", "--bits", bits, "--out", tmp_path / f"Q{bits}", "--quiet"]) == 0
    q = copied(tmp_path / "Q3", tmp_path / "Qx")
    names = (
        ["lrm_interp_provenance.json", "lrm_interp_quantization.json"]
        if swapped == "records"
        else ["model.safetensors"]
    )
    for name in names:
        shutil.copyfile(tmp_path / "Q4" / name, q / name)
    steps = "rtn 4" if swapped == "records" else "rtn 3"
    with pytest.raises(ValueError) as e:
        load_model(q)
    assert str(e.value) == (
        f"{q}: its weights are not the ones lrm_interp_provenance.json describes ({steps}; the sample of the "
        "weights it recorded differs): the record files or the weights were replaced since; restore them, or run "
        "quantize again"
    )
    load_model(tmp_path / "Q3")  # the result as quantize wrote it loads


def test_writers_refuse_a_replace_flag_that_is_no_bool(tmp_path):
    """H28-REPLACESTR: ``replace='no'`` (truthy) replaced the user's file in ``atomic_write_text``,
    ``atomic_write_bytes``, ``save_jsonl`` and ``save_masks``."""
    import lrm_interp as li
    from lrm_interp.toy.tasks import generate_dataset

    path = tmp_path / "mine.txt"
    for write in (
        lambda: li.atomic_write_text(path, "new", replace="no"),
        lambda: li.atomic_write_bytes(path, b"new", replace="no"),
        lambda: generate_dataset(1, seed=1).save_jsonl(path, replace="no"),
    ):
        path.write_text("my own file, keep it")
        with pytest.raises(ValueError, match=r"^[\w.]+: replace must be True or False, got 'no' \(str\)$"):
            write()
        assert path.read_text() == "my own file, keep it"


def test_study_overwrite_never_deletes_what_others_put_in_its_attribution_folders(study, tmp_path):
    """H28-STOWNEST: ``study --overwrite`` removed ``attribution_rtn3/`` whole, a user's notes and a
    bench run written inside it included."""
    src, model, tok, traces = study
    out = copied(src, tmp_path / "S")
    (out / "attribution_rtn3" / "my_notes.md").write_text("my notes")
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, overwrite=True, **{**TINY_STUDY, "bits": 4})
    assert str(e.value) == (
        f"{out / 'attribution_rtn3'} holds files the study did not write (my_notes.md): overwrite=True "
        "(--overwrite) removes that folder whole and would delete them; move them out, or choose another out "
        "folder (--out)"
    )
    assert folder_files(out) == before
    (out / "attribution_rtn3" / "my_notes.md").unlink()
    run_study(model, traces, out, tokenizer=tok, overwrite=True, **{**TINY_STUDY, "bits": 4})  # its own: replaced


def test_a_diverged_annotator_fit_is_refused(tmp_path):
    """H28-L2NAN: ``annotate train --l2 1e39`` wrote an annotator of NaN weights (exit 0)."""
    from cli_run import run_cli, toy_gold

    gold = toy_gold(tmp_path, n=3)
    out = tmp_path / "ann.safetensors"
    assert run_cli(["annotate", "train", "--data", gold, "--out", out, "--folds", 0, "--l2", "1e39", "--quiet"]) == 2
    assert not out.exists()
    assert run_cli(["annotate", "train", "--data", gold, "--out", out, "--folds", 0, "--quiet"]) == 0


def test_loaders_given_the_record_file_name_its_folder(study, tmp_path):
    """H28-LOADFILE: ``Attribution.load('A/attribution.json')`` said ".../attribution.json/attribution.json
    is missing", ``FaithfulnessResult.load`` on its json raised a raw ``NotADirectoryError``,
    ``load_model('Q3/config.json')`` said it "does not exist"."""
    from lrm_interp.attribution.faithfulness import FaithfulnessResult
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.loading import load_model

    src = study[0]
    record = src / "attribution_fp32" / "attribution.json"
    config = tmp_path / "M" / "config.json"
    config.parent.mkdir()
    config.write_text("{}")
    faith = tmp_path / "F" / "faithfulness.json"
    faith.parent.mkdir()
    faith.write_text("{}")
    for load, path, what in (
        (Attribution.load, record, "an attribution folder"),
        (FaithfulnessResult.load, faith, "a faithfulness folder"),
        (load_model, config, "a model folder"),
    ):
        with pytest.raises(ValueError) as e:
            load(path)
        assert str(e.value) == f"{path} is a file, not {what}: give the folder that holds it ({path.parent})"
    Attribution.load(record.parent)  # the folder loads
    other = tmp_path / "notes.txt"  # a file beside no model: no folder to point at
    other.write_text("x")
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a model folder: give a model folder$"):
        load_model(other)
