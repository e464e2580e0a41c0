"""Issue 22 ("nothing lost, nothing silent"): the twenty-first hostile probe, case H22-EROWS of
``experiment protection``.

H22-EROWS: a resume believed hand-edited rows of ``rows.jsonl`` other than the full-precision one:
an accuracy per family that contradicts the row's outcomes (E05: ``math`` 100 % beside outcomes
``000``), a "none" row forged consistently to 3 of 3 right (E05b: correct, outcomes, mean, interval
and accuracy all changed) and an edited bits per weight (E15: 3.742 → 3.3) all reached ``table.md``
and ``table.csv``. Each row now records a digest of its fields (``measured_with.row_sha256``) and
its accuracy per family is checked against its outcomes; a row of an older run, without the
digest, still resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line, run_cli

from lrm_interp.evaluation.intervals import wilson_interval


def _argv(out: Path) -> list:
    argv = ["experiment", "protection", "--model", "toy", "--per-family", 1, "--random-seeds", 0]
    return [*argv, "--only", "random", "--max-new-tokens", 5, "--out", out, "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished small run (fp, none, 2 % random seed 0: 3 problems, one per family)."""
    out = tmp_path_factory.mktemp("h22b") / "E0"
    assert run_cli(_argv(out)) == 0
    return out


def _edited(finished: Path, tmp_path: Path, label: str, edit) -> tuple[Path, int, dict[str, bytes]]:
    """A copy of ``finished`` with row ``label`` of ``rows.jsonl`` edited by ``edit(row)``; the copy,
    the edited line's number, and the folder's files as bytes (to tell that nothing was rewritten)."""
    ex = tmp_path / "EX"
    shutil.copytree(finished, ex)
    rows = [json.loads(x) for x in (ex / "rows.jsonl").read_text().splitlines()]
    i = next(k for k, d in enumerate(rows) if d["label"] == label)
    assert len(rows[i]["measured_with"]["row_sha256"]) == 64  # every row records its digest
    edit(rows[i])
    (ex / "rows.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
    return ex, i + 1, {p.name: p.read_bytes() for p in ex.iterdir()}


def _refused(ex: Path, before: dict[str, bytes], capsys) -> str:
    capsys.readouterr()
    assert run_cli(_argv(ex)) == 2
    err = err_line(capsys)
    assert "delete that line (the row is re-measured) or use a new --out folder" in err, err
    assert {p.name: p.read_bytes() for p in ex.iterdir()} == before  # nothing rewritten
    return err


def test_an_accuracy_per_family_contradicting_the_outcomes_is_refused(finished, tmp_path, capsys):
    def edit(d):  # E05: math 100 % beside outcomes '000'
        assert d["outcomes"][0] == "0" and d["accuracy"]["math"] == 0.0
        d["accuracy"]["math"] = 1.0

    ex, line, before = _edited(finished, tmp_path, "none", edit)
    err = _refused(ex, before, capsys)
    assert f"{ex / 'rows.jsonl'}:{line}: row 'none': accuracy math 1.0 ≠ 0/1 of its outcomes in math" in err, err


def test_a_consistently_forged_row_is_refused_by_its_digest(finished, tmp_path, capsys):
    def edit(d):  # E05b: "none" 3 of 3 right, every field consistent with the others
        d.update(correct=3, outcomes="111", mean=1.0, ci=list(wilson_interval(3, 3)))
        d["accuracy"] = {f: 1.0 for f in d["accuracy"]}

    ex, line, before = _edited(finished, tmp_path, "none", edit)
    err = _refused(ex, before, capsys)
    assert f"{ex / 'rows.jsonl'}:{line}: row 'none': its fields are not the ones it was measured with" in err, err
    assert "(measured_with.row_sha256 does not match them)" in err, err


def test_an_edited_bits_per_weight_is_refused_and_a_row_without_digest_still_resumes(finished, tmp_path, capsys):
    def edit(d):  # E15: 3.742 -> 3.30
        d["bpw"] = 3.30

    ex, line, before = _edited(finished, tmp_path, "2% random (seed 0)", edit)
    err = _refused(ex, before, capsys)
    assert f"{ex / 'rows.jsonl'}:{line}: row '2% random (seed 0)': its fields are not the ones" in err, err
    # the line deleted: the row is re-measured with its true bits and its digest
    rows = [json.loads(x) for x in (ex / "rows.jsonl").read_text().splitlines()]
    (ex / "rows.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows if d["label"] != "2% random (seed 0)"))
    assert run_cli(_argv(ex)) == 0
    again = {d["label"]: d for d in map(json.loads, (ex / "rows.jsonl").read_text().splitlines())}
    first = {d["label"]: d for d in map(json.loads, (finished / "rows.jsonl").read_text().splitlines())}
    assert again["2% random (seed 0)"]["bpw"] == first["2% random (seed 0)"]["bpw"] != 3.30
    assert (ex / "table.csv").read_bytes() == (finished / "table.csv").read_bytes()
    # a row of an older run (no digest) is accepted as before
    rows = [json.loads(x) for x in (ex / "rows.jsonl").read_text().splitlines()]
    for d in rows:
        del d["measured_with"]["row_sha256"]
    (ex / "rows.jsonl").write_text("".join(json.dumps(d) + "\n" for d in rows))
    assert run_cli(_argv(ex)) == 0
    assert (ex / "table.csv").read_bytes() == (finished / "table.csv").read_bytes()
