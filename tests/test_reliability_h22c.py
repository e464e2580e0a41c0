"""Issue 22 ("nothing lost, nothing silent"), the twenty-first hostile probe (H22-…), third part.

H22-FSITES: ``FaithfulnessResult.load`` believed swapped ``site_names`` (each site's ``atp`` / ``real``
relabelled) and an edited provenance: the digest ``rows_sha256`` covered only the rows. The
``record_sha256`` digest covers the whole record.

H22-REPORT: ``annotate``'s report (``OUT.report.json``) and ``parse --report``'s JSON were replaced by
``toy traces`` / ``bits`` / ``parse --out R --overwrite``, which refuse every other command's file:
they are now known by their shape (``lrm_interp._io._shape_of``).

H22-BENCHGEN: in a ``bench run`` folder (``run.json``) whose ``generations.jsonl`` was deleted,
``bench score`` graded a hand-edited output unchecked (math 0 % → 50 %); refused now."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line, run_cli, toy_gold
from synth import synthetic_traces

from lrm_interp import _io
from lrm_interp.attribution.faithfulness import FaithfulnessResult, atp_faithfulness
from lrm_interp.testing import byte_tokenizer, tiny_model


def test_faithfulness_load_refuses_swapped_site_names_and_edited_provenance(tmp_path):
    res = atp_faithfulness(
        tiny_model("llama"), synthetic_traces(2), tokenizer=byte_tokenizer(), alphas=(0.1,), top_k=3, progress=False
    )
    good = res.save(tmp_path / "F")
    assert FaithfulnessResult.load(good).site_names == res.site_names  # a saved result loads as before
    doc = json.loads((good / "faithfulness.json").read_text())
    assert doc["record_sha256"] and "rows_sha256" not in doc

    def swap(d: dict) -> None:
        s = d["site_names"]
        s[0], s[1] = s[1], s[0]

    edits = [
        swap,
        lambda d: d["provenance"].update(model="x"),
        lambda d: d["behaviors"].reverse(),
        lambda d: d.update(top_k=4),
        lambda d: d["rows"][0].update(n_spans=d["rows"][0]["n_spans"] + 1),
    ]
    for i, edit in enumerate(edits):
        bad = tmp_path / f"E{i}"
        bad.mkdir()
        d = json.loads(json.dumps(doc))
        edit(d)
        text = json.dumps(d, indent=1)
        (bad / "faithfulness.json").write_text(text)
        with pytest.raises(ValueError) as e:
            FaithfulnessResult.load(bad)
        msg = str(e.value)
        if "row alpha=" in msg:  # behaviours reversed / top_k changed: the rows' own check names the row first
            assert i in (2, 3) and "edited or corrupt" in msg, msg
        else:
            assert msg == (
                f"{bad / 'faithfulness.json'} is edited or corrupt: its record is not the one it was saved with "
                "(record_sha256 differs); recompute it (lrm-interp faithfulness --overwrite)"
            )
        assert (bad / "faithfulness.json").read_text() == text  # nothing changed
    # a file of the development version with only the rows' digest: the rows are still checked
    old = res.to_dict()
    del old["record_sha256"]
    old["rows_sha256"] = _rows_sha(old["rows"])
    assert FaithfulnessResult.from_dict(old).rows == res.rows
    old["rows"][0]["n_spans"] += 1
    with pytest.raises(ValueError, match=r"its rows are not the ones it was saved with \(rows_sha256 differs\)"):
        FaithfulnessResult.from_dict(old)
    # a file with neither digest loads as before
    older = res.to_dict()
    del older["record_sha256"]
    swap(older)
    assert FaithfulnessResult.from_dict(older).site_names[:2] == res.site_names[:2][::-1]


def _rows_sha(rows: list) -> str:
    from lrm_interp.attribution.faithfulness import rows_digest

    return rows_digest(rows)


def test_annotate_and_parse_reports_are_not_replaced_by_other_commands(tmp_path, capsys):
    gold = toy_gold(tmp_path)
    ann = tmp_path / "ann.jsonl"
    assert run_cli(["annotate", "--data", gold, "--out", ann, "--annotator", "rules", "--quiet"]) == 0
    report = tmp_path / "ann.jsonl.report.json"
    assert _io.file_result(report).family == _io.ANNOTATE_REPORT_KIND
    layout = Path(__file__).resolve().parent / "data" / "paper_layout"
    prep = tmp_path / "parse_report.json"
    assert run_cli(["parse", "--data", layout, "--out", tmp_path / "p.jsonl", "--report", prep]) == 0
    assert _io.file_result(prep).family == _io.PARSE_REPORT_KIND
    capsys.readouterr()
    copies = {}
    for name, src in (("ra", report), ("rb", report), ("rc", report), ("pa", prep), ("pb", prep)):
        copies[name] = tmp_path / f"{name}.json"
        shutil.copy(src, copies[name])
    before = {p: p.read_bytes() for p in copies.values()}
    bits = ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, "--quiet"]
    cases = [
        (["toy", "traces", "--gold", "--per-family", 1, "--out", copies["ra"]], copies["ra"], "an annotation report"),
        ([*bits, "--out", copies["rb"]], copies["rb"], "an annotation report"),
        (["parse", "--data", gold, "--out", copies["rc"]], copies["rc"], "an annotation report"),
        (["toy", "traces", "--gold", "--per-family", 1, "--out", copies["pa"]], copies["pa"], "a parse report"),
        ([*bits, "--out", copies["pb"]], copies["pb"], "a parse report"),
    ]
    for argv, path, what in cases:
        assert run_cli([*argv, "--overwrite"]) == 2, argv
        line = err_line(capsys)
        assert f"--out {path} holds {what} (JSON)" in line, line
        assert "--overwrite does not replace another command's result; choose another --out" in line, line
    assert {p: p.read_bytes() for p in copies.values()} == before  # nothing written
    # their own commands still rewrite them on a rerun
    assert run_cli(["annotate", "--data", gold, "--out", ann, "--annotator", "rules", "--quiet", "--overwrite"]) == 0
    assert run_cli(["parse", "--data", layout, "--out", tmp_path / "p.jsonl", "--report", prep, "--overwrite"]) == 0
    assert _io.file_result(report).family == _io.ANNOTATE_REPORT_KIND


def test_bench_score_refuses_a_bench_run_folder_without_its_generations(tmp_path, capsys):
    from test_reliability_h3 import _bench_run, _toy_items

    from lrm_interp.evaluation.bench_score import score_outputs

    run = _bench_run(tmp_path / "run")
    (run / "outputs" / "math" / "0.txt").write_text("Okay.</think>\nThe answer is 16.")  # an edited answer
    (run / "generations.jsonl").unlink()
    with pytest.raises(ValueError) as e:
        score_outputs(run, _toy_items(), progress=False)
    assert str(e.value) == (
        f"{run}: a 'bench run' folder (run.json) without its generations.jsonl, which records the hash of every "
        "output file: its outputs cannot be checked, so they are not graded; rerun 'bench run' with --out on that "
        "folder to resume (it generates them again), or score a folder of outputs without run.json"
    )
    capsys.readouterr()
    argv = ["bench", "score", "--tasks", "math", "--per-family", 3, "--quiet", "--no-plots", "--outputs", run]
    assert run_cli(argv) == 2
    assert "without its generations.jsonl" in err_line(capsys)
    assert not (run / "scores").exists()  # nothing written
    # a folder of outputs without run.json (another generator) is graded as before
    plain = tmp_path / "plain"
    shutil.copytree(run / "outputs", plain / "outputs")
    assert len(score_outputs(plain, _toy_items(), progress=False).samples) == 3
