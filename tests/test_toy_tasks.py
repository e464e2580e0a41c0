"""Task generators of the toy reasoning model: determinism, gold spans, markup round trip."""
from __future__ import annotations

import re

from lrm_interp.data.align import align_segments
from lrm_interp.data.markup import parse_markup
from lrm_interp.data.paper_layout import annotate_trace
from lrm_interp.toy.evaluate import extract_answer
from lrm_interp.toy.tasks import (FAMILIES, N_PEOPLE, WORLD, build_world, generate_dataset, generate_trace,
                                  problems, to_markup)
from lrm_interp.data.traces import BEHAVIORS


def test_deterministic_given_seed():
    a, b = generate_dataset(20, seed=3), generate_dataset(20, seed=3)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert generate_trace("math", 3, 0).response != generate_trace("math", 4, 0).response
    assert build_world(N_PEOPLE).to_dict() == WORLD.to_dict()
    assert build_world(N_PEOPLE, seed=8).lives_in != WORLD.lives_in


def test_world_table():
    assert len(set(WORLD.people)) == N_PEOPLE
    assert all(WORLD.decoy[p] != WORLD.lives_in[p] for p in WORLD.decoy)
    assert 0.15 * N_PEOPLE < len(WORLD.decoy) < 0.35 * N_PEOPLE
    assert set(WORLD.lives_in.values()) <= set(WORLD.city_country)


def test_gold_spans_exactly_cover_the_thinking_part():
    ds = generate_dataset(60, seed=9)
    assert set(ds.span_counts()) == set(BEHAVIORS)
    for fam in FAMILIES:  # every family shows the four target behaviours somewhere
        sub = ds.filter(lambda t: t.metadata["dataset"] == fam)
        assert {"backtracking", "example-testing", "uncertainty-estimation", "adding-knowledge"} <= set(
            sub.span_counts()), fam
    for t in ds:
        think = t.response[:t.response.index("\n</think>\n")]
        pieces = [t.span_text(s) for s in t.spans]
        assert " ".join(pieces) == think  # spans tile the thinking part, one space apart
        assert all(p == p.strip() and p for p in pieces)
        assert [s.start for s in t.spans] == sorted(s.start for s in t.spans)
        assert t.prompt.endswith("\n<think>\n") and t.response.endswith(f"The answer is {t.metadata['gold_answer']}.")


def test_behaviours_follow_the_problem():
    for t in generate_dataset(80, seed=4, families=("math",)):
        expr = re.match(r"Compute (.*)\.\n", t.prompt).group(1)
        assert str(eval(expr)) == t.metadata["gold_answer"]  # noqa: S307 - our own arithmetic string
        nums = [int(x) for x in re.findall(r"\d+", expr)]
        ops = re.findall(r" ([+-]) ", expr)
        acc, borrow = nums[0], False
        for o, x in zip(ops, nums[1:]):
            borrow |= o == "-" and acc > x >= 10 and acc % 10 < x % 10
            acc = acc + x if o == "+" else acc - x
        assert bool(t.spans_of("backtracking")) == borrow
        assert bool(t.spans_of("uncertainty-estimation")) == (acc < 0)
    for t in generate_dataset(60, seed=4, families=("knowledge",)):
        name = re.search(r"does (\w+) live", t.prompt).group(1)
        assert bool(t.spans_of("backtracking")) == (name in WORLD.decoy)
    answers = {t.metadata["gold_answer"] for t in generate_dataset(30, seed=4, families=("logic",))}
    assert answers == {"True", "False", "Uncertain"}


def test_markup_round_trips_through_parser_and_aligner():
    for t in generate_dataset(15, seed=1):
        m = to_markup(t)
        assert m.startswith('["initializing"]') and m.endswith('["end-section"]')
        parsed = parse_markup(m)
        assert parsed.status == "parsed"
        spans, reps = align_segments(t.response, parsed.segments)
        assert tuple(spans) == t.spans and all(r.status == "placed" for r in reps)
        t2, rep = annotate_trace(t.with_spans(()), m)
        assert t2.spans == t.spans


def test_problems_and_answer_extraction():
    ps = problems(5, seed=2)
    assert [p.family for p in ps[:3]] == list(FAMILIES) and len(ps) == 15
    assert extract_answer("math", "x\n</think>\nThe answer is -27.") == "-27"
    assert extract_answer("logic", "</think>\nThe answer is Uncertain.") == "Uncertain"
    assert extract_answer("logic", "</think>\nThe answer is maybe.") is None
    assert extract_answer("math", "</think>\nThe answer is twelve.") is None
    assert extract_answer("knowledge", "no answer") is None
    for f in FAMILIES:
        t = generate_trace(f, 0, 1)
        assert extract_answer(f, t.response) == t.metadata["gold_answer"]
