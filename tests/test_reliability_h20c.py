"""Issue 22 ("nothing lost, nothing silent"): the nineteenth hostile probe (H20-…), the case of
``experiment protection``.

H20-EPWARN: a resume of a finished ``experiment protection`` rewrote ``table.md`` without the count
of full-precision answers cut by ``--max-new-tokens`` ("3 of 3 answers hit --max-new-tokens 5:
raise --max-new-tokens" became a question).

H21-EPATL: that count, kept in ``rows.jsonl``, was believed when edited by hand (3 -> 0 printed
"0 of 3 answers hit"); it now carries a digest binding it to its row, and an edited one is refused."""

from __future__ import annotations

import json

from cli_run import run_cli


# ------------------------------------------------------------------ H20-EPWARN
def test_a_resumed_experiment_keeps_the_count_of_answers_cut_by_the_length_limit(tmp_path, capsys):
    out = tmp_path / "EX"
    argv = ["experiment", "protection", "--model", "toy", "--per-family", 1]
    argv += ["--random-seeds", 0, "--only", "random", "--max-new-tokens", 5, "--out", out, "--quiet"]
    assert run_cli(argv) == 0
    md = (out / "table.md").read_text()
    assert "3 of 3 answers hit --max-new-tokens 5: raise --max-new-tokens" in md
    capsys.readouterr()
    assert run_cli(argv) == 0  # every row measured: a plain resume
    assert "3 of 3 answers hit --max-new-tokens 5" in capsys.readouterr().err
    assert (out / "table.md").read_text() == md
    # the count is kept in the full-precision row's record, with a digest binding it to the row;
    # an edited count is refused naming the line (H21-EPATL: 3 -> 0 printed "0 of 3 answers hit")
    rows = out / "rows.jsonl"
    text = rows.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    fp = next(d for d in lines if d["kind"] == "fp")
    line_no = lines.index(fp) + 1
    assert fp["measured_with"]["at_limit"] == 3 and len(fp["measured_with"]["at_limit_sha256"]) == 64
    for forged, extra in ((0, ""), (2, ""), (7, " (a count is 0 to 3)"), ("3", " (a count is 0 to 3)")):
        fp["measured_with"]["at_limit"] = forged
        rows.write_text("".join(json.dumps(d) + "\n" for d in lines))
        capsys.readouterr()
        assert run_cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{rows}:{line_no}: row 'fp': measured_with.at_limit {forged!r}" in err
        assert f"is not the count of its 3 answers that hit the length limit it was recorded with{extra};" in err
        assert "delete that line (the row is re-measured)" in err
        assert (out / "table.md").read_text() == md  # nothing rewritten
    # a count without its digest (written before it): unknown, the question, as for an older run
    fp["measured_with"]["at_limit"] = 3
    del fp["measured_with"]["at_limit_sha256"]
    rows.write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert run_cli(argv) == 0
    assert "answers hit" not in (out / "table.md").read_text()
    # the line deleted: the row is re-measured and the count recorded again
    rows.write_text("".join(json.dumps(d) + "\n" for d in lines if d is not fp))
    assert run_cli(argv) == 0
    assert (out / "table.md").read_text() == md
