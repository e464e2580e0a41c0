"""``lrm-interp bench run|score`` end to end on the shipped toy model, and its one-line errors."""

from __future__ import annotations

import json

import pandas as pd

from lrm_interp.cli.main import main


def test_run_and_score_the_toy_model(tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "bench",
        "run",
        "--model",
        "toy",
        "--tasks",
        "math",
        "logic",
        "knowledge",
        "--per-family",
        "1",
        "--temperature",
        "0",
        "--max-new-tokens",
        "480",
        "--batch-size",
        "3",
        "--compress",
        "none",
        "magnitude:0.9",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "toy-magnitude90" in printed and "bench score --outputs" in printed
    # the printed score command makes the same items (a bare one would look for 30 per family)
    assert f"bench score --outputs {out} --tasks math logic knowledge --per-family 1 --toy-seed 2" in printed
    meta = json.loads((out / "toy-magnitude90" / "run.json").read_text())
    assert meta["compression"]["method"] == "magnitude" and meta["compression"]["sparsity"] == 0.9
    assert meta["settings"]["temperature"] == 0 and meta["model"]["weights_fingerprint"]
    assert (
        main(
            [
                "bench",
                "score",
                "--outputs",
                str(out),
                "--tasks",
                "math",
                "logic",
                "knowledge",
                "--per-family",
                "1",
                "--quiet",
                "--no-plots",
            ]
        )
        == 0
    )
    acc = pd.read_csv(out / "scores" / "accuracy.csv").set_index("model")
    assert acc.loc["toy"].tolist() == [100.0, 100.0, 100.0, 100.0]  # the shipped model solves them
    assert acc.loc["toy-magnitude90", "Avg"] == 0.0  # 90 % of every matrix zeroed: nothing left
    s = pd.read_csv(out / "scores" / "summary.csv")
    assert (s[s.model == "toy"]["mean_tokens"] > 50).all()
    assert main(args) == 0  # resumed: nothing generated again
    assert "generated    0" in capsys.readouterr().out


def test_bench_errors_are_one_line(tmp_path, capsys):
    base = ["bench", "run", "--model", "toy", "--out", str(tmp_path / "o")]
    assert main(base + ["--tasks", "math", "--compress", "rtn:x"]) == 2
    err = capsys.readouterr().err
    assert "--compress" in err and "rtn:BITS" in err and len(err.strip().splitlines()) == 1
    assert main(base + ["--tasks", "aime"]) == 2
    assert "--task-data is required for aime" in capsys.readouterr().err
    assert main(base + ["--tasks", "gsm8k", "--task-data", str(tmp_path)]) == 2
    assert "unknown benchmark task 'gsm8k'" in capsys.readouterr().err
    (tmp_path / "aime.jsonl").write_text('{"problem": "x"}\n')
    assert main(base + ["--tasks", "aime", "--task-data", str(tmp_path)]) == 2
    assert "aime.jsonl:1: missing field 'Answer' / 'answer'" in capsys.readouterr().err
    assert main(base + ["--tasks", "math", "--backend", "openai"]) == 2
    assert "--base-url" in capsys.readouterr().err
    assert main(["bench", "run", "--model", str(tmp_path / "nope"), "--tasks", "math", "--out", "o"]) == 2
    assert "--model" in capsys.readouterr().err


def test_toy_items_follow_the_fact_table_the_model_learned(capsys, tmp_path):
    """The distilled SmolLM2 reasoner learned 64 people, the toy model 512: knowledge items over the
    wrong table ask about people the model never saw. --toy-people chooses the table; a model whose
    provenance records another is refused before any generation, naming the flag."""
    from lrm_interp.cli.main import main
    from lrm_interp.data.benchmarks import load
    from lrm_interp.data.toy_tasks import build_world

    default, small = load("knowledge", per_family=5), load("knowledge", per_family=5, toy_people=64)
    people = set(build_world(64).people)
    assert all(any(p in it.prompt for p in people) for it in small)
    assert [it.prompt for it in default] != [it.prompt for it in small]
    assert small[0].problem["n_people"] == 64
    rc = main(
        [
            "bench",
            "run",
            "--model",
            "toy",
            "--tasks",
            "knowledge",
            "--per-family",
            "1",
            "--toy-people",
            "64",
            "--temperature",
            "0",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "b"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "learned a fact table of 512 people" in err and "--toy-people 512" in err
    assert not (tmp_path / "b").exists()
