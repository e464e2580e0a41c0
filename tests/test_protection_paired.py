"""Per-problem outcomes of the protection experiment, the paired comparison built on them, and
the consistency check of a resumed ``rows.jsonl`` (a hand-edited row is refused, file:line)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from lrm_interp.evaluation.intervals import wilson_interval
from lrm_interp.evaluation.paired import compare_outcomes, sign_test
from lrm_interp.experiments import findings
from lrm_interp.experiments import protection_table as pt
from lrm_interp.experiments.protection import ExperimentSettings

SMALL = dict(model="toy", per_family=1, attribution_traces=1, random_seeds=(0,), symmetric=True)


def test_compare_outcomes_known_answers():
    a = [1, 1, 1, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 0, 1, 1, 0, 0]
    c = compare_outcomes(a, b, names=("x", "y"))
    # a right alone on items 0, 1, 6, 7; b alone on item 4; McNemar exact: 2 (C(5,0)+C(5,1)) / 2^5
    assert (c.a, c.b, c.n, c.a_only, c.b_only) == ("x", "y", 8, 4, 1)
    assert c.diff == pytest.approx(3 / 8) and c.p == pytest.approx(12 / 32)
    assert c.ci[0] <= c.diff <= c.ci[1] and -1 <= c.ci[0] and c.ci[1] <= 1 and not c.beyond_interval
    strong = compare_outcomes([1] * 20, [0] * 20)
    assert strong.ci == (1.0, 1.0) and strong.p == pytest.approx(2 / 2**20) and strong.beyond_interval
    same = compare_outcomes([1, 0, 1], [1, 0, 1])
    assert same.diff == 0 and same.ci == (0.0, 0.0) and same.p == 1.0 and not same.beyond_interval
    # 12 discordant pairs all one way among 150: p = 2 / 2^12, interval above 0
    a150 = [1] * 100 + [1] * 12 + [0] * 38
    b150 = [1] * 100 + [0] * 12 + [0] * 38
    c150 = compare_outcomes(a150, b150)
    assert c150.p == pytest.approx(2 / 2**12) and c150.ci[0] > 0 and c150.beyond_interval
    with pytest.raises(ValueError, match="one length"):
        compare_outcomes([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        compare_outcomes([2], [1])
    assert findings.sign_test is sign_test  # one function, re-exported where claim 2 uses it
    assert sign_test([1, -1, 0])["zero"] == 1


def _row(label, kind, outcomes, bpw=3.5):
    n, k = len(outcomes), outcomes.count("1")
    return pt.ResultRow(label, kind, bpw, {"math": k / n}, k / n, n, k, wilson_interval(k, n), "", 0.0, outcomes)


def test_table_pairs_the_best_attribution_row_against_every_other():
    rows = (
        _row("fp", "fp", "1" * 20, 32.0),
        _row("none", "none", "1" * 5 + "0" * 15),
        _row("2% magnitude", "per-weight", "1" * 10 + "0" * 10),
        _row("2% attribution, scale-aware", "per-weight", "1" * 16 + "0" * 4),
        _row("2% attribution (TaCQ)", "per-weight", "1" * 12 + "0" * 8),
        pt.ResultRow("2% hessian", "per-weight", 3.5, {"math": 0.5}, 0.5, 20, 10, wilson_interval(10, 20)),
    )
    table = pt.ProtectionTable(ExperimentSettings(**SMALL), rows)
    comps = table.comparisons()
    assert [(c.a, c.b) for c in comps] == [("2% attribution, scale-aware", b) for b in ("fp", "none", "2% magnitude")]
    vs_none = comps[1]
    assert (vs_none.a_only, vs_none.b_only) == (11, 0) and vs_none.diff == pytest.approx(11 / 20)
    assert vs_none.p == pytest.approx(2 / 2**11) and vs_none.beyond_interval
    md = table.to_markdown()
    assert (
        "| 2% magnitude | +30.0 |" in md
        and "Not paired (measured before per-problem outcomes were recorded): 2% hessian" in md
    )
    df = table.comparisons_dataframe()
    assert list(df["b"]) == ["fp", "none", "2% magnitude"] and df["a_only"].tolist() == [0, 11, 6]
    with pytest.raises(ValueError, match="redo '2% hessian'"):
        table.paired("2% attribution, scale-aware", "2% hessian")
    with pytest.raises(ValueError, match="outcomes must be 3"):
        pt.ResultRow("x", "none", 3.0, {"math": 1.0}, 1.0, 3, 3, (0.4, 1.0), "", 0.0, "11")


def test_outcomes_recorded_edited_rows_refused_and_redo(tmp_path, monkeypatch):
    out = tmp_path / "exp"
    table = pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL)
    for r in table.rows:  # 3 problems (one per family) in the run's order, summing to `correct`
        assert len(r.outcomes) == r.n == 3 and r.outcomes.count("1") == r.correct
    fp = table.row("fp")
    assert fp.hits == [round(fp.accuracy[f]) for f in ("math", "logic", "knowledge")]
    rp = out / "rows.jsonl"
    good = rp.read_text()
    lines = good.splitlines()

    def edited(i, **kv):
        d = json.loads(lines[i])
        d.update(kv)
        rp.write_text("\n".join([*lines[:i], json.dumps(d), *lines[i + 1 :]]) + "\n")

    mag = json.loads(lines[2])
    cases = [
        (dict(mean=0.99 if mag["mean"] != 0.99 else 0.5), "mean"),
        (dict(bpw=math.nan), "NaN is not a JSON number"),
        (dict(correct=mag["correct"] + 1 if mag["correct"] < 3 else 2), "correct / n|outcomes hold"),
        (dict(outcomes=("0" if mag["outcomes"][0] == "1" else "1") + mag["outcomes"][1:]), "outcomes hold"),
        (dict(n=4), "outcomes must be 4|n = 4"),
        (dict(kind="magic"), "kind 'magic'"),
        (dict(colour="red"), "not a protection row"),
    ]
    for kv, msg in cases:
        edited(2, **kv)
        with pytest.raises(ValueError, match=rf"rows.jsonl:3: .*({msg})"):
            pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL)
    rp.write_text(good + lines[2] + "\n")
    with pytest.raises(ValueError, match="rows.jsonl:4: row '2% magnitude' appears twice"):
        pt.run_protection_experiment(out, only=["magnitude"], progress=False, **SMALL)
    rp.write_text(good)

    measured = []
    real = pt._measure

    def spy(label, *a, **k):
        measured.append(label)
        return real(label, *a, **k)

    monkeypatch.setattr(pt, "_measure", spy)
    again = pt.run_protection_experiment(out, only=["magnitude"], redo=["magnitude"], progress=False, **SMALL)
    assert measured == ["2% magnitude"]
    assert dataclasses.replace(again.row("2% magnitude"), seconds=0.0) == dataclasses.replace(
        table.row("2% magnitude"), seconds=0.0
    )  # greedy answers: the same problems answered the same way
    with pytest.raises(ValueError, match="redo: 'hessian' matches no row selected"):
        pt.run_protection_experiment(out, only=["magnitude"], redo=["hessian"], progress=False, **SMALL)


def test_cli_redo_and_an_edited_row(tmp_path, capsys):
    from lrm_interp.cli.main import main

    out = tmp_path / "exp"
    base = ["experiment", "protection", "--per-family", "1"]
    base += ["--symmetric", "--out", str(out), "--quiet"]
    assert main([*base, "--redo", "zzz"]) == 2
    assert "--redo 'zzz' matches no row" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written
    assert main([*base, "--only", "magnitude"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "paired.csv").exists()
    rp = out / "rows.jsonl"
    lines = rp.read_text().splitlines()
    d = json.loads(lines[1])
    d["bpw"] = -1.0
    rp.write_text("\n".join([lines[0], json.dumps(d), *lines[2:]]) + "\n")
    assert main([*base, "--only", "magnitude"]) == 2
    err = capsys.readouterr().err
    assert "rows.jsonl:2: row 'none': bits per weight -1.0 outside (0, 32]" in err and "delete that line" in err
