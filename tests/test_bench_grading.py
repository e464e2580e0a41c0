"""Benchmark loaders (every public schema, on the project's fixtures) and graders on hand-made cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrm_interp.data import benchmarks as B
from lrm_interp.data.benchmarks import grading as G
from lrm_interp.data.prompts import FOLIO_INSTRUCTION, MUSIQUE_SUFFIX, TEMPORAL_INSTRUCTION, build_prompt

DATA = Path(__file__).parent / "data" / "bench"


def _item(task, gold, aliases=(), n_options=None):
    return B.BenchItem(f"{task}/0", task, 0, "", gold, tuple(aliases), n_options=n_options)


# ----------------------------------------------------------------------------- loaders
def test_aime_csv_and_lowercase_json():
    items = B.load("aime", DATA / "aime.csv")
    assert [i.gold for i in items] == ["1", "16", "33"]
    assert items[0].prompt == "Find the remainder when $7^{2024}$ is divided by $100$.\n<think>\n"
    assert items[0].id == "aime/0" and items[2].problem["source_id"] == "2024-II-3"
    assert items[0].source.endswith("aime.csv:2")
    low = B.load("AIME_2024", DATA / "aime_lower.json")
    assert [i.gold for i in low] == ["5", "42"] and low[1].prompt.startswith("What is $6 \\cdot 7$?\n<think>")


def test_folio_prompt_labels_and_premise_lists():
    items = B.load("folio", DATA)
    assert [i.gold for i in items] == ["False", "True", "Uncertain"]  # "Unknown" -> Uncertain
    assert items[1].prompt == (
        FOLIO_INSTRUCTION + "*******\nPremise: All fams are daxes.\nAll daxes are warm.\n"
        "Mira is a fam.\n*******\n\n*******\nConclusion: Mira is warm.\n*******<think>\n"
    )
    # the problem record rebuilds the identical prompt through data.prompts (paper layout)
    assert all(build_prompt("folio", i.problem) == i.prompt for i in items)


def test_temporal_bbh_and_bigbench():
    bbh = B.load("temporal", DATA)
    assert [i.gold for i in bbh] == ["A", "C"] and bbh[0].n_options == 4
    assert bbh[0].prompt.startswith(TEMPORAL_INSTRUCTION + "Today, Susan") and bbh[0].prompt.endswith(
        "(D) 1pm to 6pm\n<think>\n"
    )
    bb = B.load("temporal_sequences", DATA / "bigbench")
    assert [i.gold for i in bb] == ["B", "A"]
    assert bb[0].prompt.endswith(
        "beach?\nOptions:\n(A) 5am to 6am\n(B) 6am to 10am\n(C) 4am to 5am\n(D) 10am to 11am\n<think>\n"
    )
    assert all(build_prompt("temporal", i.problem) == i.prompt for i in bb + bbh)


def test_musique_closed_book():
    items = B.load("musique", DATA / "musique.jsonl")
    assert items[0].prompt == "Who founded the company that makes the Tolvik phone?" + MUSIQUE_SUFFIX + "\n<think>\n"
    assert items[1].aliases == ("UK", "Britain") and "paragraph" not in items[0].prompt


def test_toy_families_need_no_file():
    items = B.load("knowledge", per_family=3, toy_seed=2)
    assert len(items) == 3 and items[0].prompt.endswith("?\n<think>\n") and items[0].id == "knowledge/0"
    assert B.load("math", limit=2, per_family=5)[1].index == 1


def test_load_toy_n_is_a_deprecated_keyword():
    """``load(task, toy_n=N)`` (the old keyword) still works for one release, with a
    DeprecationWarning naming ``per_family`` (the CLI's ``--per-family``); both at once are refused."""
    from lrm_interp import benchmarks

    with pytest.warns(DeprecationWarning, match="per_family"):
        old = benchmarks.load("logic", toy_n=4, toy_seed=3)
    assert [it.prompt for it in old] == [it.prompt for it in benchmarks.load("logic", per_family=4, toy_seed=3)]
    with pytest.raises(TypeError, match="per_family only"):
        benchmarks.load("logic", per_family=4, toy_n=4)
    with pytest.raises(ValueError, match="per_family must be an integer >= 1"):
        benchmarks.load("logic", per_family=0)


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("bad.jsonl", '{"problem": "x", "answer": "1"}\n{"problem": "y"\n', "bad.jsonl:2: invalid JSON"),
        (
            "bad.jsonl",
            '{"problem": "x", "answer": "1"}\n{"problem": "y"}\n',
            "bad.jsonl:2: missing field 'Answer' / 'answer'",
        ),
        ("bad.csv", "Problem,Answer\nx,1\ny,\n", "bad.csv:3: field 'Answer' is empty"),  # present, empty (H7-W1)
        ("bad.json", '{"rows": [{"problem": "x", "answer": "3"}, [1]]}', "bad.json: record 1: expected an object"),
        ("bad.json", '{"foo": 1}', "needs its records under one of"),
    ],
)
def test_malformed_aime_names_file_and_record(tmp_path, name, content, needle):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(B.BenchmarkFormatError) as e:
        B.load("aime", p)
    assert needle in str(e.value)


def test_malformed_labels_and_targets(tmp_path):
    (tmp_path / "folio.jsonl").write_text(json.dumps({"premises": "p", "conclusion": "c", "label": "Maybe"}) + "\n")
    with pytest.raises(B.BenchmarkFormatError, match=r"folio.jsonl:1: label 'Maybe'"):
        B.load("folio", tmp_path)
    (tmp_path / "temporal.json").write_text(
        json.dumps({"examples": [{"input": "q\nOptions:\n(A) x\n(B) y", "target": "(C)"}]})
    )
    with pytest.raises(B.BenchmarkFormatError, match=r"record 0: target \(C\) is not among the 2 options"):
        B.load("temporal", tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"examples": [{"input": "q", "target_scores": {"a": 1, "b": 1}}]}))
    with pytest.raises(B.BenchmarkFormatError, match="exactly one best"):
        B.load("temporal", tmp_path / "task.json")
    with pytest.raises(FileNotFoundError, match="no file for task 'musique'"):
        B.load("musique", tmp_path)
    with pytest.raises(KeyError, match="unknown benchmark task 'gsm8k'"):
        B.load("gsm8k", tmp_path)


# ----------------------------------------------------------------------------- graders
@pytest.mark.parametrize(
    "text,gold,score,extracted",
    [
        ("reasoning...</think>\nSo the answer is $\\boxed{033}$.", "33", 1.0, "33"),
        ("</think> The remainder is \\boxed{1}.", "1", 1.0, "1"),
        ("</think>\n$\\frac{1}{2}$", "0.5", 1.0, None),
        ("</think>\nThe answer is 0.5", "\\frac{1}{2}", 1.0, None),
        ("</think>\n**Final Answer**\n\\[\\boxed{16}\\]", "16", 1.0, "16"),
        ("</think>\n\\boxed{17}", "16", 0.0, "17"),
        ("I think the answer is 16 but let me", "16", 0.0, None),  # never closed its reasoning
        ("</think>\nI cannot solve this.", "16", 0.0, None),
    ],
)
def test_math_verify_grading(text, gold, score, extracted):
    g = B.grade("aime", _item("aime", gold), text)
    assert g.score == score
    if extracted is not None:
        assert g.extracted == extracted
    if "</think>" not in text:
        assert not g.answered and g.reason == "no </think>"


def test_unanswered_only_when_nothing_is_extracted():
    g = B.grade("aime", _item("aime", "16"), "</think>\nI cannot solve this.")
    assert not g.answered and g.reason == "no answer found" and g.score == 0
    assert B.grade("aime", _item("aime", "16"), "the answer is 16", require_think=False).correct


@pytest.mark.parametrize(
    "region,label",
    [
        ("The conclusion is **False**.", "False"),
        ("Based on the premises, the answer is: Uncertain", "Uncertain"),
        ("\\boxed{\\text{True}}", "True"),
        ("It is true that Tolo is a glim, but whether Tolo is blue is unknown.", "Uncertain"),
        ("Answer: TRUE", "True"),
        ("The truth value cannot be determined from the premises.", "Uncertain"),
        ("no idea", None),
    ],
)
def test_folio_label_extraction(region, label):
    assert G.extract_folio_label(region) == label


def test_folio_grade_counts_unknown_as_uncertain():
    it = _item("folio", "Uncertain")
    assert B.grade("folio", it, "blah</think>\nFinal answer: Unknown").correct
    assert not B.grade("folio", it, "blah</think>\nFinal answer: False.").correct


@pytest.mark.parametrize(
    "region,letter",
    [
        ("So the answer is (C).", "C"),
        ("**Answer: (B)**", "B"),
        ("\\boxed{D}", "D"),
        ("\\boxed{(A) 6pm to 9pm}", "A"),
        ("Between 6pm and 9pm, option A fits. The correct answer is B.", "B"),
        ("Options (A) and (B) are wrong; it must be (D)", "D"),
        ("The answer is E.", None),  # only the item's four options count
        ("Let me think about A fresh approach", None),
        ("\n**C**\n", "C"),
    ],
)
def test_option_letter_extraction(region, letter):
    assert G.extract_option_letter(region, 4) == letter


def test_squad_normalisation_em_f1_and_aliases():
    assert G.squad_normalize("The  United-Kingdom!") == "unitedkingdom"
    assert G.squad_normalize("An Apple, a day") == "apple day"
    assert G.squad_em("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert G.squad_f1("Ada Marsh Jr", "Ada Marsh") == pytest.approx(0.8)  # p=2/3, r=1
    assert G.squad_f1("", "") == 1.0 and G.squad_f1("x", "") == 0.0
    it = _item("musique", "the United Kingdom", ["UK", "Britain"])
    g = B.grade("musique", it, "...</think>\nThe answer is **UK**.")
    assert (g.score, g.em, g.f1, g.extracted) == (1.0, 1.0, 1.0, "UK")
    g = B.grade("musique", it, "...</think>\nFinal answer: Great Britain")
    assert g.em == 0.0 and g.f1 == pytest.approx(2 / 3)  # best over aliases: "Britain" (p=1/2, r=1)
    g = B.grade("musique", it, "...</think>\n\\boxed{United Kingdom}")
    assert g.em == 1.0
    g = B.grade("musique", it, "still thinking")
    assert (g.em, g.f1, g.answered) == (0.0, 0.0, False)


def test_toy_grading_and_paper_average():
    it = _item("math", "-7")
    assert B.grade("math", it, "So the result is -7.\n</think>\nThe answer is -7.").correct
    assert not B.grade("math", it, "So the result is -7.\n</think>\nThe answer is 7.").correct
    assert B.grade("logic", _item("logic", "True"), "x</think>\nThe answer is true.").correct
    assert B.paper_average({"aime": 10.0, "folio": 60.0, "temporal": 80.0, "musique": 5.0}) == pytest.approx(50.0)
    assert B.paper_average({"musique": 5.0}) is None
