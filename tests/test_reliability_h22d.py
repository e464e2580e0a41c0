"""Issue 22 ("nothing lost, nothing silent"): the twenty-first hostile probe (H22-…), ``attribute``.

H22-OVSTUDY: ``attribute --overwrite --out S/attribution_fp32`` replaced a study's attribution folder
(the study then failed to load, and its rerun left it unfinished). H22-PYTAB: a plain Python rerun
on the same traces in another order removed the CLI's ``scores.csv`` / ``heatmap.png`` and wrote
none. H22-NOFP: a finished result recording no contents' fingerprint, without its ``partial/``, was
replaced by edited traces without ``--overwrite``. H22-ECOUNT: after an ``--overwrite`` run stopped
midway the refusal counted only the traces whose partials were still the old ones. H22-EMSG: the
command line was told "pass behaviors=[...]"."""

from __future__ import annotations

import json
import shutil

import pytest
from cli_run import err_line, folder_files, rewrite_traces, run_cli, shifted, toy_attribution

import lrm_interp as li
from lrm_interp.attribution.results import Attribution
from lrm_interp.attribution.resume import ResumeMismatchError


@pytest.fixture(scope="module")
def gold_and_result(tmp_path_factory):
    return toy_attribution(tmp_path_factory.mktemp("h22d"))


def test_overwrite_never_replaces_a_studys_attribution_folder(tmp_path, capsys):
    from lrm_interp.experiments.study import StudyResult, run_study
    from lrm_interp.testing import byte_tokenizer, tiny_model
    from lrm_interp.toy.tasks import generate_dataset

    traces = generate_dataset(1, seed=4242)
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    st = tmp_path / "S"
    run_study(model, traces, st, tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    fp = st / json.loads((st / "study.json").read_text())["provenance"]["folders"]["original"]
    before = folder_files(st)
    data = traces.save_jsonl(tmp_path / "t.jsonl")
    capsys.readouterr()
    assert run_cli(["attribute", "--model", "toy", "--data", data, "--out", fp, "--overwrite", "--quiet"]) == 2
    err = err_line(capsys)
    assert f"{fp} is a folder of the study result {st}: --overwrite (overwrite=True) does not replace part" in err
    with pytest.raises(ValueError, match=r"is a folder of the study result .* does not replace part"):
        li.attribute(model, traces, tokenizer=tok, out_dir=fp, progress=False, overwrite=True)
    # through a link to the folder (H23-OVLINK), and by a plain save over it (H23-SAVESTUDY)
    link = tmp_path / "lnf32"
    link.symlink_to(fp, target_is_directory=True)
    assert run_cli(["attribute", "--model", "toy", "--data", data, "--out", link, "--overwrite", "--quiet"]) == 2
    assert f"{link} is a folder of the study result {st}" in err_line(capsys)
    with pytest.raises(ValueError, match=r"is a folder of the study result .* does not replace part"):
        li.attribute(model, traces, tokenizer=tok, out_dir=link, progress=False, overwrite=True)
    other = li.attribute(model, traces[:2], tokenizer=tok, progress=False)
    for target in (fp, link):
        with pytest.raises(ValueError, match=r"is a folder of the study result .* does not replace part"):
            other.save(target, overwrite=True)
    assert folder_files(st) == before
    # the same run without overwrite (the reuse command a study prints) resumes it; the study still loads
    again = li.attribute(model, traces, tokenizer=tok, out_dir=fp, progress=False)
    assert again.provenance["resume"]["dom"]["reused"] == 3
    assert len(StudyResult.load(st).rows) == 5


def test_a_python_rerun_in_another_order_keeps_the_tables(gold_and_result, tmp_path):
    gold, a0 = gold_and_result
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    rev = rewrite_traces(gold, tmp_path / "rev.jsonl", lambda lines: lines[::-1])
    res = li.attribute("toy", rev, out_dir=a, progress=False)  # the same run: no overwrite needed
    assert (a / "scores.csv").read_text() == res.to_dataframe().to_csv(index=False)
    assert (a / "heatmap.png").stat().st_size > 0
    assert Attribution.load(a).behaviors == res.behaviors


def test_an_unverifiable_finished_result_needs_overwrite(gold_and_result, tmp_path, capsys):
    gold, a0 = gold_and_result
    k = tmp_path / "K"
    shutil.copytree(a0, k)
    shutil.rmtree(k / "partial")
    doc = json.loads((k / "attribution.json").read_text())
    del doc["provenance"]["dataset"]["contents_fingerprint"]  # as written by an older version,
    del doc["provenance_sha256"]  # which recorded neither
    (k / "attribution.json").write_text(json.dumps(doc))
    before = folder_files(k)
    edited = rewrite_traces(gold, tmp_path / "ed.jsonl", shifted)
    capsys.readouterr()
    assert run_cli(["attribute", "--model", "toy", "--data", edited, "--out", k, "--quiet"]) == 2
    err = err_line(capsys)
    assert "holds the finished result of this run whose traces' contents cannot be checked" in err
    assert "pass --overwrite (overwrite=True) to replace it, or choose" in err  # no partials to reuse: not promised
    assert folder_files(k) == before
    assert run_cli(["attribute", "--model", "toy", "--data", edited, "--out", k, "--quiet", "--overwrite"]) == 0
    assert Attribution.load(k).provenance["dataset"]["contents_fingerprint"]


def test_after_a_stopped_overwrite_the_refusal_does_not_undercount(gold_and_result, tmp_path):
    gold, a0 = gold_and_result
    edited = rewrite_traces(gold, tmp_path / "ed.jsonl", shifted)
    b = tmp_path / "B"
    li.attribute("toy", edited, out_dir=b, progress=False)
    a = tmp_path / "A"
    shutil.copytree(a0, a)
    first = sorted((b / "partial" / "dom").iterdir())[0]  # one trace recomputed before the stop
    shutil.copy(first, a / "partial" / "dom" / first.name)
    with pytest.raises(ResumeMismatchError) as e:
        li.attribute("toy", edited, out_dir=a, progress=False)
    msg = str(e.value)
    assert "on other contents of the same traces (prompt, response or spans differ" in msg
    assert "2 of 3" not in msg  # the partials are no longer the result's: not counted from them


def test_no_target_behaviour_message_names_the_flag(gold_and_result, tmp_path, capsys):
    gold, _ = gold_and_result
    keep = ("initializing", "deduction")
    nt = rewrite_traces(
        gold,
        tmp_path / "nt.jsonl",
        lambda lines: [{**d, "spans": [s for s in d["spans"] if s["behavior"] in keep]} for d in lines],
    )
    capsys.readouterr()
    assert run_cli(["attribute", "--model", "toy", "--data", nt, "--out", tmp_path / "N", "--quiet"]) == 2
    assert "choose behaviours it labels (behaviors=[...], --behaviors LABEL ...)" in err_line(capsys)


def test_an_edited_provenance_is_refused_by_load_and_by_a_rerun(gold_and_result, tmp_path, capsys):
    """H22-PROV: ``attribution.json``'s provenance had no checksum: a forged ``contents_fingerprint``
    let a rerun on edited traces replace the result without ``--overwrite``, and an edited
    ``settings.score`` made ``compare`` accept a paper-scored / code-scored pair."""
    from lrm_interp._io import ChecksumError

    gold, a0 = gold_and_result
    edited = rewrite_traces(gold, tmp_path / "ed.jsonl", shifted)
    fresh = li.attribute("toy", edited, out_dir=tmp_path / "F", progress=False)
    for what, forge in (
        (
            "contents",
            lambda p: p["dataset"].update(contents_fingerprint=fresh.provenance["dataset"]["contents_fingerprint"]),
        ),
        ("score", lambda p: p["settings"].update(score="code")),
    ):
        a = tmp_path / what
        shutil.copytree(a0, a)
        doc = json.loads((a / "attribution.json").read_text())
        forge(doc["provenance"])
        (a / "attribution.json").write_text(json.dumps(doc, indent=2))
        before = folder_files(a)
        with pytest.raises(ChecksumError, match=r"its provenance .* does not match the provenance_sha256"):
            Attribution.load(a)
        capsys.readouterr()
        assert run_cli(["attribute", "--model", "toy", "--data", edited, "--out", a, "--quiet"]) == 2
        err = err_line(capsys)
        assert "its provenance was edited since it was saved" in err and "it is not replaced" in err
        assert folder_files(a) == before
    assert Attribution.load(a0).provenance["resume"]  # an unedited result loads


def test_tensors_without_their_record_are_not_replaced_by_other_traces(gold_and_result, tmp_path, capsys):
    """H23-NOJSON: with ``attribution.json`` removed, a rerun on edited or other traces replaced the
    finished tensors without ``--overwrite``; a rerun on the same traces (a save stopped between the
    two files) still finishes it."""
    gold, a0 = gold_and_result
    edited = rewrite_traces(gold, tmp_path / "ed.jsonl", shifted)
    fewer = rewrite_traces(gold, tmp_path / "two.jsonl", lambda lines: lines[:2])
    for data, differ in ((edited, 3), (fewer, 1)):
        a = tmp_path / f"A_{data.stem}"
        shutil.copytree(a0, a)
        (a / "attribution.json").unlink()
        before = folder_files(a)
        capsys.readouterr()
        assert run_cli(["attribute", "--model", "toy", "--data", data, "--out", a, "--quiet"]) == 2
        err = err_line(capsys)
        assert "holds attribution.safetensors without its attribution.json" in err
        assert f"its partials are of other traces ({differ} trace(s) differ in id or content)" in err
        assert folder_files(a) == before
    a = tmp_path / "A_same"
    shutil.copytree(a0, a)
    (a / "attribution.json").unlink()
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    got, want = (json.loads((d / "attribution.json").read_text()) for d in (a, a0))
    assert got["tensors_sha256"] == want["tensors_sha256"]  # the same scores and vectors (the save finished)
