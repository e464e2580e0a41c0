"""Scoring: test-time compute (split with ties, words), collapse detection, cues, and the tables of
an outputs folder written by hand (a foreign generator's paper layout) and by a 2-sample run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lrm_interp.cli.main import main
from lrm_interp.data.benchmarks import load
from lrm_interp.evaluation.bench_score import score_outputs
from lrm_interp.evaluation.output_stats import (
    backtracking_cues,
    detect_collapse,
    distinct_ngram_share,
    group_weights,
    periodic_suffix,
    short_long_split,
    word_count,
)
from lrm_interp.testing import byte_tokenizer

DATA = Path(__file__).parent / "data" / "bench"


def test_split_exact_groups_and_ties():
    lengths = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    scores = [1, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    s = short_long_split(lengths, scores, 0.3)
    assert (s.k, s.short_score, s.long_score) == (3.0, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert s.short_length == pytest.approx(20) and s.long_length == pytest.approx(90) and s.ratio == pytest.approx(4.5)
    # ties at the boundary share the weight, whatever their order
    tied = [5, 7, 7, 7, 9, 9, 9, 9, 9, 9]
    w = group_weights(tied, 3)
    assert w.tolist() == pytest.approx([1, 2 / 3, 2 / 3, 2 / 3, 0, 0, 0, 0, 0, 0])
    a = short_long_split(tied, [0, 1, 0, 0, 0, 0, 0, 0, 0, 1], 0.3)
    b = short_long_split(tied, [0, 0, 0, 1, 1, 0, 0, 0, 0, 0], 0.3)
    assert a.short_score == b.short_score == pytest.approx(2 / 9)  # (2/3 · 1) / 3
    assert a.long_score == b.long_score == pytest.approx(1 / 6)  # 6 tied at 9 share 3: 1/2 each, one correct
    s20 = short_long_split(list(range(7)), [1] * 3 + [0] * 4, 0.2)  # k = 1.4: the 2nd shortest weighs 0.4
    assert s20.short_score == pytest.approx(1.0) and s20.short_length == pytest.approx(0.4 / 1.4)
    with pytest.raises(ValueError):
        short_long_split([1], [1], 0.6)


def test_words_and_backtracking_cues():
    assert word_count("Okay, so  I need\nto compute 5.") == 7
    t = "Wait, 5 is wrong. But wait, maybe. Hmm, no. Actually, it is 6. Let me re-examine that. waiting room"
    assert backtracking_cues(t) == 5  # "But wait" once; "waiting" is not a cue


def test_collapse_needs_repetition_to_the_end_and_the_limit():
    looped = "Okay, so 5 + 3 = 8. " + "Wait, 8 - 2 = 6. " * 30
    c = detect_collapse(looped, True)
    assert c.collapsed and c.period == len("Wait, 8 - 2 = 6. ") and c.repeats >= 29
    assert not detect_collapse(looped, False).collapsed  # the model stopped by itself
    assert detect_collapse(looped, None).collapsed  # limit unknown: repetition alone
    assert not detect_collapse(looped + " So the answer is 6. </think> The answer is 6.", True).collapsed
    normal = (
        "Okay, I need to compute 52 - 17. 52 - 17 = 45. Wait, I forgot to borrow, so 52 - 17 = 35. "
        "Let me check: 35 + 17 = 52. So the result is 35. Hmm, I am not sure about the sign, but I think "
        "it is 35. So the answer is 35."
    )
    c = detect_collapse(normal, True)
    assert not c.collapsed and c.distinct > 0.9
    # a noisy loop (as a broken byte-level model writes): no exact period, few distinct 8-grams
    noisy = normal + " " + "".join("VVVV3VV" if i % 3 else "VV3V3VVVV" for i in range(40))
    c = detect_collapse(noisy, True)
    assert c.collapsed and c.distinct <= 0.5
    long_period = "Let me recompute everything from the start, carefully, once more. " * 4
    assert detect_collapse(normal * 3 + long_period, True).period == len(long_period) // 4
    assert periodic_suffix("xyzabcabcabc") == (3, 9) and periodic_suffix("abcdef") == (0, 0)
    assert distinct_ngram_share("a" * 20) == pytest.approx(1 / 13)


def _write(root: Path, task: str, j: int, text: str, sample: int = 0):
    d = (root if sample == 0 else root / "samples" / str(sample)) / "outputs" / task
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{j}.txt").write_text(text)


def test_foreign_paper_layout_scores(tmp_path):
    root = tmp_path / "r1"
    loop = "Hmm. " + "Let me compute 7^2 = 49. " * 40
    _write(root, "AIME_2024", 0, "Wait, compute.</think>\nThe answer is \\boxed{1}.")  # correct
    _write(root, "AIME_2024", 1, loop)  # collapsed at the limit: no </think> -> unanswered
    _write(root, "AIME_2024", 2, "Short.</think>\\boxed{32}")  # wrong
    _write(root, "folio", 0, "x</think>\n**False**")
    _write(root, "folio", 1, "x</think>\nTrue")
    _write(root, "folio", 2, "x</think>\nThe answer is Uncertain.")
    items = {"aime": load("aime", DATA / "aime.csv"), "folio": load("folio", DATA), "musique": load("musique", DATA)}
    tok = byte_tokenizer()
    sc = score_outputs(tmp_path, items, tokenizer=tok, max_new_tokens=len(loop) - 10, progress=False)
    s = sc.summary().set_index("task")
    assert s.loc["aime", "pass@1"] == pytest.approx(100 / 3)
    assert s.loc["aime", "unanswered"] == 1 and s.loc["aime", "collapse_rate"] == pytest.approx(100 / 3)
    assert s.loc["aime", "failures_at_limit"] == pytest.approx(50.0)  # 1 of the 2 failures hit the limit
    assert s.loc["aime", "cues_per_output"] == pytest.approx(1 / 3)
    assert s.loc["folio", "pass@1"] == pytest.approx(100.0)
    assert s.loc["musique", "missing"] == 3 and s.loc["musique", "outputs"] == 0
    from lrm_interp.evaluation.intervals import wilson_interval

    lo, hi = wilson_interval(1, 3)  # greedy, one output per item: Wilson over the items
    assert (s.loc["aime", "ci95_low"], s.loc["aime", "ci95_high"]) == pytest.approx((100 * lo, 100 * hi))
    assert s.loc["folio", "ci95_low"] == pytest.approx(100 * wilson_interval(3, 3)[0])
    acc = sc.accuracy_table().set_index("model")
    assert acc.loc["r1", "Avg"] == pytest.approx(round((100 / 3 + 100) / 2, 1))
    assert repr(sc).startswith(f"BenchScores({len(sc.samples)} graded outputs, 1 runs [r1]") and "3 missing" in repr(sc)
    assert "<td" in sc._repr_html_() and "33.3" in sc._repr_html_()
    for stale in ("short_vs_long.png", "accuracy_vs_sparsity.png"):  # plots of an earlier score here
        (tmp_path / "scores").mkdir(exist_ok=True)
        (tmp_path / "scores" / stale).write_bytes(b"old plot")
    (tmp_path / "scores" / "mine.png").write_bytes(b"not ours")
    (tmp_path / "scores" / "score_files.json").write_text(  # the earlier score recorded them (H7-BS4)
        json.dumps(
            {"format": "lrm_interp.bench_score_files/1", "files": ["short_vs_long.png", "accuracy_vs_sparsity.png"]}
        )
    )
    files = sc.write_tables(tmp_path / "scores", plots=False)
    assert not (tmp_path / "scores" / "short_vs_long.png").exists()  # hostile run 3, H2-7
    assert not (tmp_path / "scores" / "accuracy_vs_sparsity.png").exists()
    assert (tmp_path / "scores" / "mine.png").read_bytes() == b"not ours"
    assert {f.name for f in files} >= {"scores.csv", "summary.csv", "accuracy.csv", "tables.md"}
    assert "| r1 | 33.3 | 100.0 |" in (tmp_path / "scores" / "tables.md").read_text()


def test_pass_at_1_over_samples_and_score_cli(tmp_path, capsys):
    root = tmp_path / "out" / "m"
    (root).mkdir(parents=True)  # another generator's outputs, two samples each (no bench run record)
    items = load("musique", DATA)
    _write(root, "musique", 0, "</think> The answer is Ada Marsh.")
    _write(root, "musique", 0, "</think> The answer is Ada.", sample=1)
    _write(root, "musique", 1, "</think> UK", sample=0)
    _write(root, "musique", 1, "</think> France", sample=1)
    _write(root, "musique", 2, "</think> 1931", sample=0)
    _write(root, "musique", 2, "never finished", sample=1)
    sc = score_outputs(tmp_path / "out", {"musique": items}, progress=False)
    s = sc.summary().iloc[0]
    assert s["outputs"] == 6 and s["pass@1"] == pytest.approx(100 * (0.5 + 0.5 + 0.5) / 3)
    assert s["F1"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5 + 0.5) / 3)  # "Ada" vs "Ada Marsh": F1 2/3
    assert s["unanswered"] == 1
    assert math.isnan(s["ci95_low"])  # two samples per item are not independent trials: no Wilson interval
    assert (
        main(
            [
                "bench",
                "score",
                "--outputs",
                str(tmp_path / "out"),
                "--tasks",
                "musique",
                "--task-data",
                str(DATA),
                "--quiet",
                "--no-plots",
            ]
        )
        == 0
    )
    assert "50.0 / 61.1" in capsys.readouterr().out
    assert (
        main(["bench", "score", "--outputs", str(tmp_path / "nope"), "--tasks", "musique", "--task-data", str(DATA)])
        == 2
    )
    assert "--outputs" in capsys.readouterr().err


def test_old_compute_module_is_a_deprecated_re_export():
    """``lrm_interp.evaluation.compute`` (the old name of ``evaluation/output_stats.py``) still
    imports, for one release, with a DeprecationWarning naming the new module."""
    import importlib
    import sys

    import lrm_interp.evaluation.output_stats as new

    sys.modules.pop("lrm_interp.evaluation.compute", None)
    with pytest.warns(DeprecationWarning, match="lrm_interp.evaluation.output_stats"):
        old = importlib.import_module("lrm_interp.evaluation.compute")
    assert set(old.__all__) == set(new.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(new, name), name
