"""The shipped toy reasoning model, its task generators and the rule annotator."""
from __future__ import annotations

import copy

import pytest
import torch

from lrm_interp.align import align_segments
from lrm_interp.annotate import LLMAnnotator, RuleAnnotator, annotate_response, annotation_agreement
from lrm_interp.markup import parse_markup
from lrm_interp.prune import prune_magnitude_
from lrm_interp.quant import quantize_model_
from lrm_interp.toy import load_toy_model, toy_model_dir
from lrm_interp.toy.evaluate import collect_traces, evaluate, extract_answer
from lrm_interp.toy.tasks import FAMILIES, generate_dataset, generate_trace, problems, to_markup
from lrm_interp.traces import BEHAVIORS, ReasoningDataset


def test_generators_deterministic_and_cover_behaviours():
    a, b = generate_dataset(20, seed=3), generate_dataset(20, seed=3)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert generate_trace("math", 3, 0).response != generate_trace("math", 4, 0).response
    big = generate_dataset(60, seed=9)
    assert set(big.span_counts()) == set(BEHAVIORS)
    assert {t.metadata["dataset"] for t in big} == set(FAMILIES)
    for t in big:
        think_end = t.response.index("</think>")
        for s in t.spans:
            txt = t.span_text(s)
            assert txt and txt == txt.strip() and s.end <= think_end


def test_markup_roundtrips_through_parser_and_aligner():
    for t in generate_dataset(15, seed=1):
        parsed = parse_markup(to_markup(t))
        assert parsed.status == "parsed"
        spans, reps = align_segments(t.response, parsed.segments)
        assert tuple(spans) == t.spans and all(r.status == "placed" for r in reps)


def test_answers_extracted():
    assert extract_answer("math", "x\n</think>\nThe answer is -27.") == "-27"
    assert extract_answer("logic", "</think>\nThe answer is Uncertain.") == "Uncertain"
    assert extract_answer("logic", "</think>\nThe answer is maybe.") is None
    assert extract_answer("knowledge", "no answer") is None
    for f in FAMILIES:
        t = generate_trace(f, 0, 1)
        assert extract_answer(f, t.response) == t.metadata["gold_answer"]


@pytest.fixture(scope="module")
def toy():
    return load_toy_model()


def test_shipped_weights_small_and_offline(toy):
    d = toy_model_dir()
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size <= 20 * 2**20
    model, tok = toy
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 259


def test_accuracy_and_quantization_drop(toy):
    """>= 90% per family at full precision; all-linear 2-bit RTN (group 32) loses >= 20 points.

    (3-bit RTN loses far less on this model: see docs/toy_model.md for the measured table.)
    """
    model, tok = toy
    held = problems(20, seed=2)  # evaluation seeds < 10000: never seen in training
    acc = evaluate(model, tok, held, batch_size=60)
    print("fp32", acc)
    assert all(acc[f] >= 0.9 for f in FAMILIES)
    q = copy.deepcopy(model)
    quantize_model_(q, bits=2, group_size=32, progress=False)
    acc2 = evaluate(q, tok, held, batch_size=60)
    print("rtn2-g32", acc2)
    assert acc["mean"] - acc2["mean"] >= 0.20


def test_pruning_respects_budget_and_protection(toy):
    model, _ = toy
    m = copy.deepcopy(model)
    w = m.model.layers[0].mlp.up_proj.weight
    prot = torch.zeros_like(w, dtype=torch.bool)
    prot[0, :5] = True
    keep = w[0, :5].clone()
    rep = prune_magnitude_(m, 0.5, masks={"model.layers.0.mlp.up_proj": prot})
    w = m.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w[0, :5], keep)
    assert int((w == 0).sum()) == round(0.5 * (w.numel() - 5))
    assert rep["weights"] == sum(p.numel() for n, p in m.named_parameters() if "layers" in n and "proj" in n)


def test_collect_traces_annotates_model_output(toy):
    model, tok = toy
    ds = collect_traces(model, tok, problems(2, seed=3), batch_size=6)
    assert len(ds) == 6 and all(t.metadata["correct"] for t in ds)
    assert all(len(t.spans) >= 3 for t in ds)
    assert all(t.metadata["annotation"]["placed"] == t.metadata["annotation"]["segments"] for t in ds)


def test_rule_annotator_agreement_with_gold():
    gold = generate_dataset(40, seed=5)
    pred = ReasoningDataset([t.with_spans(annotate_response(t.response, RuleAnnotator())[0]) for t in gold])
    agr = annotation_agreement(gold, pred)
    print({k: {m: round(v, 3) for m, v in d.items()} for k, d in agr.items()})
    for label in ("initializing", "adding-knowledge", "example-testing", "uncertainty-estimation"):
        assert agr[label]["precision"] >= 0.95 and agr[label]["recall"] >= 0.95
    # backtracking: "Wait, that is wrong." is caught, the corrected step after it is labelled deduction
    assert agr["backtracking"]["precision"] >= 0.95 and 0.4 <= agr["backtracking"]["recall"] < 0.9


def test_llm_annotator_interface():
    seen = {}

    def fake(prompt: str) -> str:
        seen["prompt"] = prompt
        return '["initializing"]Okay, I need to add.["end-section"] ["backtracking"]Wait, no.["end-section"]'

    spans, rep = annotate_response("Okay, I need to add. Wait, no.\n</think>\nThe answer is 1.", LLMAnnotator(fake))
    assert "Okay, I need to add. Wait, no." in seen["prompt"] and "</think>" not in seen["prompt"]
    assert [(s.behavior, s.start, s.end) for s in spans] == [("initializing", 0, 20), ("backtracking", 21, 30)]
    assert rep["placed"] == 2
