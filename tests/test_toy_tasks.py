"""Task generators of the toy reasoning model: determinism, gold spans, markup round trip."""

from __future__ import annotations

import re

import pytest

from lrm_interp.data.align import align_segments
from lrm_interp.data.markup import parse_markup
from lrm_interp.data.paper_layout import annotate_trace
from lrm_interp.data.traces import BEHAVIORS
from lrm_interp.toy.evaluate import extract_answer
from lrm_interp.toy.tasks import (
    FAMILIES,
    N_PEOPLE,
    WORLD,
    build_world,
    generate_dataset,
    generate_trace,
    problems,
    to_markup,
)


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
        sub = ds.filter(lambda t, fam=fam: t.metadata["dataset"] == fam)
        assert {"backtracking", "example-testing", "uncertainty-estimation", "adding-knowledge"} <= set(
            sub.span_counts()
        ), fam
    for t in ds:
        think = t.response[: t.response.index("\n</think>\n")]
        pieces = [t.span_text(s) for s in t.spans]
        assert " ".join(pieces) == think  # spans tile the thinking part, one space apart
        assert all(p == p.strip() and p for p in pieces)
        assert [s.start for s in t.spans] == sorted(s.start for s in t.spans)
        assert t.prompt.endswith("\n<think>\n") and t.response.endswith(f"The answer is {t.metadata['gold_answer']}.")


def test_behaviours_follow_the_problem():
    for t in generate_dataset(80, seed=4, families=("math",)):
        expr = re.match(r"Compute (.*)\.\n", t.prompt).group(1)
        assert str(eval(expr)) == t.metadata["gold_answer"]  # our own arithmetic string
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


# --------------------------------------------------------------------------- settings refused up front (issue 22)
@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"batch_size": -1}, "batch_size must be an integer >= 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"anneal_lr": 0.0}, "anneal_lr must be a finite number > 0"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0"),
        ({"stop_at": 0}, "stop_at must be None or an integer >= 1"),
        ({"max_seconds": float("nan")}, "max_seconds must be None or a finite number > 0"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"eval_per_family": 0}, "eval_per_family must be an integer >= 1"),
        ({"hidden": 130}, "hidden must be a multiple of heads"),
        ({"heads": 4, "kv_heads": 3}, "heads must be a multiple of kv_heads"),
        ({"layers": 0}, "layers must be an integer >= 1"),
    ],
)
def test_train_toy_model_refuses_nonsense_before_any_work(tmp_path, kw, needle):
    from lrm_interp.toy.train import train_toy_model

    with pytest.raises(ValueError, match=needle):
        train_toy_model(tmp_path / "out", **kw)
    assert list(tmp_path.iterdir()) == []


def test_distill_settings_refuse_nonsense_before_loading(tmp_path, monkeypatch):
    import lrm_interp.model.smollm2 as smollm2
    from lrm_interp.toy.distill import DistillConfig, distill_reasoner

    for kw, needle in [
        ({"family_weights": (float("nan"), 1.0, 1.0)}, "family_weights"),
        ({"family_weights": (float("inf"), 1.0, 1.0)}, "family_weights"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0"),
        ({"eval_every": -1}, "eval_every must be an integer >= 0"),
        ({"steps": 0}, "steps must be an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=needle):
            DistillConfig(**kw)
    monkeypatch.setattr(smollm2, "load_smollm2", lambda *a, **k: pytest.fail("loaded SmolLM2 before the check"))
    for kw, needle in [
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"max_seconds": -1.0}, "max_seconds"),
        ({"threads": 0}, "threads"),
    ]:
        with pytest.raises(ValueError, match=needle):
            distill_reasoner(tmp_path / "run", **kw)
    assert list(tmp_path.iterdir()) == []


def test_cli_toy_train_names_the_flag_of_a_cross_option_error(tmp_path, capsys):
    from lrm_interp.cli.main import main

    assert main(["toy", "train", "--out", str(tmp_path / "m"), "--hidden", "130"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lrm-interp toy train: error: --hidden must be a multiple of heads (4), got 130"]
    assert list(tmp_path.iterdir()) == []


def test_task_counts_and_empty_evaluations_are_refused():
    from lrm_interp.toy.evaluate import evaluate

    with pytest.raises(ValueError, match="n_per_family must be an integer >= 0"):
        generate_dataset(-1)
    with pytest.raises(ValueError, match="n_per_family must be an integer >= 0"):
        problems(2.5, seed=1)
    with pytest.raises(ValueError, match="no problems to evaluate"):
        evaluate(None, None, [])
