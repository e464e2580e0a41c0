"""Issue 22 ("nothing lost, nothing silent"): the nineteenth hostile probe (H20-…), the case of
``experiment protection``.

H20-EPWARN: a resume of a finished ``experiment protection`` rewrote ``table.md`` without the count
of full-precision answers cut by ``--max-new-tokens`` ("3 of 3 answers hit --max-new-tokens 5:
raise --max-new-tokens" became a question)."""

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
    # the count is kept in the full-precision row's record; a value that is no count is not used
    lines = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    fp = next(d for d in lines if d["kind"] == "fp")
    assert fp["measured_with"]["at_limit"] == 3
    fp["measured_with"]["at_limit"] = 7  # more than its 3 answers
    (out / "rows.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert run_cli(argv) == 0
    assert "answers hit" not in (out / "table.md").read_text()  # unknown: the question, as for an older run
