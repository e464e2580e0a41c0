"""Issue 22 ("nothing lost, nothing silent"): the twentieth hostile probe's findings (H21-…).

H21-ATTDATA: ``attribute --out A`` over a finished result A, with traces of the same ids but other
contents (responses edited; or only the backtracking spans left, so that A, which held four
behaviours, then held one), replaced A with exit 0 and no ``--overwrite``: from the command line,
through ``lrm_interp.attribute(out_dir=)`` and in a study's ``attribution_fp32/``. Other settings,
weights and trace ids were refused; edited contents went through on purpose ("fix the annotations
and rerun"). A finished result is now replaced by edited traces only with ``--overwrite``
(``overwrite=True``); an interrupted run still resumes over them."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_run import err_line, folder_files, rewrite_traces, run_cli, shifted, toy_attribution

import lrm_interp as li
from lrm_interp.attribution.results import Attribution
from lrm_interp.attribution.resume import ResumeMismatchError


def _backtracking_only(lines: list[dict]) -> list[dict]:
    for d in lines:
        d["spans"] = [s for s in d["spans"] if s["behavior"] == "backtracking"]
    return lines


@pytest.fixture(scope="module")
def gold_and_result(tmp_path_factory):
    return toy_attribution(tmp_path_factory.mktemp("h21"))


def test_attribute_over_a_finished_result_of_edited_traces_needs_overwrite(gold_and_result, tmp_path, capsys):
    gold, a0 = gold_and_result
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    before = folder_files(a)
    assert len(Attribution.load(a).behaviors) == 4
    edited = rewrite_traces(gold, tmp_path / "edited.jsonl", shifted)
    bt = rewrite_traces(gold, tmp_path / "bt.jsonl", _backtracking_only)
    capsys.readouterr()
    for data, n in ((edited, 3), (bt, 3)):
        assert run_cli(["attribute", "--model", "toy", "--data", data, "--out", a, "--quiet"]) == 2
        err = err_line(capsys)
        assert f"{a} holds the finished result of this run on other contents of the same traces" in err
        assert f"{n} of 3 traces edited under the same id" in err and "pass --overwrite" in err
        assert folder_files(a) == before  # nothing replaced, the tables included
    # --overwrite replaces it with the result of the edited traces (what a fresh run gives)
    assert run_cli(["attribute", "--model", "toy", "--data", bt, "--out", a, "--quiet", "--overwrite"]) == 0
    fresh = tmp_path / "F"
    assert run_cli(["attribute", "--model", "toy", "--data", bt, "--out", fresh, "--quiet"]) == 0
    got, want = Attribution.load(a), Attribution.load(fresh)
    assert got.behaviors == want.behaviors == ("backtracking",)
    assert torch.equal(got.scores, want.scores)
    assert got.provenance["resume"]["dom"] == {"computed": 3, "reused": 0, "stale": 3}
    assert got.provenance["dataset"]["contents_fingerprint"] == want.provenance["dataset"]["contents_fingerprint"]
    # the same traces again: resumed (nothing to replace), no --overwrite needed
    assert run_cli(["attribute", "--model", "toy", "--data", bt, "--out", a, "--quiet"]) == 0
    assert Attribution.load(a).provenance["resume"]["dom"] == {"computed": 0, "reused": 3, "stale": 0}
    # --overwrite never replaces the result of another run (other settings)
    capsys.readouterr()
    assert (
        run_cli(["attribute", "--model", "toy", "--data", bt, "--out", a, "--method", "dom", "--overwrite", "--quiet"])
        == 2
    )
    err = err_line(capsys)
    assert "never replaced by another run" in err and "replaces only a result of the same run on edited traces" in err


def test_python_api_refuses_too_and_keeps_the_tables(gold_and_result, tmp_path):
    gold, a0 = gold_and_result
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    before = folder_files(a)
    assert {"scores.csv", "heatmap.png"} <= set(before)
    bt = rewrite_traces(gold, tmp_path / "bt.jsonl", _backtracking_only)
    with pytest.raises(ResumeMismatchError, match=r"3 of 3 traces edited under the same id .*overwrite=True"):
        li.attribute("toy", bt, out_dir=a, progress=False)
    assert folder_files(a) == before
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        li.attribute("toy", bt, out_dir=a, progress=False, overwrite="yes")
    # a result written before the contents' fingerprint was recorded: its partials' keys tell
    doc = json.loads((a / "attribution.json").read_text(encoding="utf-8"))
    del doc["provenance"]["dataset"]["contents_fingerprint"]
    del doc["provenance_sha256"]  # an older version recorded neither
    (a / "attribution.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ResumeMismatchError, match=r"3 of 3 traces edited under the same id"):
        li.attribute("toy", bt, out_dir=a, progress=False)
    # an interrupted run (no attribution.json yet) resumes over the edited traces: stale partials recomputed
    (a / "attribution.json").unlink()
    (a / "attribution.safetensors").unlink()  # a run stopped before its save
    res = li.attribute("toy", bt, out_dir=a, progress=False)
    assert res.behaviors == ("backtracking",)
    assert res.provenance["resume"]["dom"] == {"computed": 3, "reused": 0, "stale": 3}


def test_a_study_attribution_folder_is_not_replaced_by_edited_traces(gold_and_result, tmp_path, capsys):
    """The probe's N03: the same rule holds for a study's own ``attribution_fp32/`` (an attribution result)."""
    gold, a0 = gold_and_result
    st = tmp_path / "ST"
    st.mkdir()
    shutil.copytree(a0, st / "attribution_fp32")
    before = folder_files(st)
    edited = rewrite_traces(gold, tmp_path / "edited.jsonl", shifted)
    capsys.readouterr()
    assert run_cli(["attribute", "--model", "toy", "--data", edited, "--out", st / "attribution_fp32", "--quiet"]) == 2
    assert "3 of 3 traces edited under the same id" in err_line(capsys)
    assert folder_files(st) == before


# ------------------------------------------------------------------ H21-STLOADMSG
def test_study_load_names_a_replaced_attribution_folder(tmp_path):
    """``StudyResult.load`` of a study whose ``attribution_fp32/`` was replaced said compare's "the two
    results cannot be compared … pass strict=False", which ``load`` has no use for; it now names the
    study's folders and says how to recover."""
    from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset
    from lrm_interp.experiments.study import StudyResult, run_study
    from lrm_interp.testing import byte_tokenizer, tiny_model
    from lrm_interp.toy.tasks import generate_dataset

    traces = generate_dataset(1, seed=4242)
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    out = tmp_path / "st"
    run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    assert len(StudyResult.load(out).rows) == 5
    folders = json.loads((out / "study.json").read_text(encoding="utf-8"))["provenance"]["folders"]
    t0 = traces[0]
    moved = [BehaviorSpan(s.behavior, max(0, s.start - 3), s.end) for s in t0.spans]
    edited = ReasoningDataset([t0.with_spans(moved), *list(traces)[1:]])
    li.attribute(model, edited, tokenizer=tok, out_dir=tmp_path / "X", progress=False)
    shutil.rmtree(out / folders["original"])  # replaced by hand (--overwrite refuses it since H22-OVSTUDY)
    shutil.copytree(tmp_path / "X", out / folders["original"])
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    msg = str(e.value)
    assert msg.startswith(f"{out}: its attribution folders {folders['original']}/ and {folders['compressed']}/")
    assert "1 of 3 traces share an id but differ in content" in msg and "rerun the study with --overwrite" in msg
    assert "strict=False" not in msg


def test_compare_tells_other_contents_without_partials_and_after_a_stopped_overwrite(gold_and_result, tmp_path):
    """The recorded ``contents_fingerprint`` also serves ``compare``: results without their
    ``partial/`` folders were "could not be checked"; and a rerun with ``--overwrite`` stopped after
    recomputing some partials left the old result beside partials of the new traces, whose keys
    ``load`` read as the result's traces (it now trusts them only when they give the fingerprint)."""
    import warnings

    gold, a0 = gold_and_result
    edited = rewrite_traces(gold, tmp_path / "edited.jsonl", shifted)
    b = tmp_path / "B"
    assert run_cli(["attribute", "--model", "toy", "--data", edited, "--out", b, "--quiet"]) == 0
    # a stopped --overwrite: A's result, B's partials (the edited traces' keys)
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    shutil.rmtree(a / "partial" / "dom")
    shutil.copytree(b / "partial" / "dom", a / "partial" / "dom")
    assert Attribution.load(a).trace_keys is None and Attribution.load(a0).trace_keys
    with pytest.raises(ValueError, match=r"different traces: the same ids and counts, but other contents"):
        li.compare(Attribution.load(a), Attribution.load(b))
    with pytest.raises(ValueError, match=r"different traces: 3 of 3 traces share an id but differ in content"):
        li.compare(Attribution.load(a0), Attribution.load(b))  # with partials: named one by one, as before
    # without partial/ folders at all
    na, nb = tmp_path / "NA", tmp_path / "NB"
    for src, dst in ((a0, na), (b, nb)):
        shutil.copytree(src, dst)
        shutil.rmtree(dst / "partial")
    with pytest.raises(ValueError, match=r"other contents \(prompt, response or spans; contents_fingerprint"):
        li.compare(Attribution.load(na), Attribution.load(nb))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        li.compare(Attribution.load(na), Attribution.load(a0))
    said = " ".join(str(w.message) for w in caught)
    assert "same weights and traces: the shift is zero by construction" in said and "could not be checked" not in said
