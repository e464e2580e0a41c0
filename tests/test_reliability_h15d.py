"""Leftovers of the fourteenth hostile probe run (issue 22, "nothing lost, nothing silent"), part D:
``Attribution.write_tables`` into another result's folder (H15-WTM); ``divergence`` of an unchanged
copy (H15-DVZ), over a behaviour no trace holds (H15-DVB), given a dataset or a tokenizer where
encoded traces go (H15-DVD, H15-DVT) or ``chunk=0`` (H15-DC0); ``toy.evaluate.evaluate`` with a
``max_new_tokens`` too short (H15-EV5) or 0 (H15-EV0), or the model and tokenizer swapped (H15-EVS);
``ImportanceShift.heatmap`` / ``as_attribution`` of an unknown view (H15-SHV), ``largest_decreases``
of an unknown behaviour (H15-SLD) or its arguments swapped (H15-SLW); ``Attribution.steer(positions=
"all")`` (H15-SPS); ``score_outputs`` given a list of items (H15-BSL) or its arguments swapped
(H15-BSS)."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch

import lrm_interp
from lrm_interp import apply_compression, divergence
from lrm_interp.attribution.results import Attribution, ImportanceShift
from lrm_interp.evaluation.bench_score import score_outputs
from lrm_interp.toy.evaluate import collect_traces, evaluate
from lrm_interp.toy.tasks import problems


@pytest.fixture(scope="module")
def toy(toy_encoded):
    return toy_encoded


@pytest.fixture(scope="module")
def res(toy):
    model, tok, ds, _ = toy
    return lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)


@pytest.fixture(scope="module")
def q3(toy):
    q, _ = apply_compression(toy[0], "rtn:3", progress=False)
    return q


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------ H15-WTM
def test_write_tables_into_another_results_folder_is_refused(res, tmp_path):
    """The 3-bit result's tables went into the fp result's folder (no tables there yet), and
    ``Attribution.load`` there gave the fp result; refused now whatever ``overwrite`` says."""
    other = dataclasses.replace(res, scores=res.scores * 2)
    a = res.save(tmp_path / "A")
    before = _tree(a)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError) as ei:
            other.write_tables(a, overwrite=overwrite)
        msg = str(ei.value)
        assert "holds another attribution result" in msg and str(a) in msg
        assert "write them into this result's own folder (res.save(folder) first) or another folder" in msg
        assert _tree(a) == before
    assert [p.name for p in res.write_tables(a)] == ["scores.csv", "heatmap.png"]  # its own folder: fine
    assert Attribution.load(a).scores.equal(res.scores)


# ------------------------------------------------------------------ H15-DVZ
def test_divergence_of_an_unchanged_copy_warns(toy):
    """``q = copy.deepcopy(model); apply_compression(q, ...)`` (the return value discarded): KL 0.0
    without a word; now the same-weights warning, by value. A copy with one weight changed: none."""
    model, _, _, enc = toy
    q = copy.deepcopy(model)
    apply_compression(q, "rtn:3", progress=False)  # returns the compressed copy; q is unchanged
    with pytest.warns(UserWarning, match="divergence of a model with itself is 0 by construction") as rec:
        d = divergence(model, q, enc[:1])
    assert d.kl == 0.0
    msg = next(str(r.message) for r in rec if "by construction" in str(r.message))
    assert "weights all equal the reference's" in msg and "q, _ = apply_compression(model, ...)" in msg
    with torch.no_grad():
        q.model.layers[0].mlp.down_proj.weight[0, 0] += 0.5  # one weight of many
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert divergence(model, q, enc[:1]).kl > 0


# ------------------------------------------------------------------ H15-DVB
def test_divergence_refuses_a_behaviour_without_spans(toy, q3):
    """``behaviors=["backtraking"]`` (typo) or one absent from the traces gave a span NLL of 0.0
    over 0 tokens."""
    model, _, _, enc = toy
    with pytest.raises(ValueError) as ei:
        divergence(model, q3, enc, behaviors=["deductoin"])
    msg = str(ei.value)
    assert msg.startswith("divergence: behaviors ['deductoin'] are not behaviours of the 3 traces (their behaviours: ")
    assert "did you mean 'deduction'?" in msg
    with pytest.raises(ValueError, match=r"behaviors \['backtracking'\] have no span"):
        divergence(model, q3, enc, behaviors=["backtracking"])
    with pytest.raises(TypeError, match="behaviors must be a list of behaviour labels, got the string 'deduction'"):
        divergence(model, q3, enc, behaviors="deduction")
    with pytest.raises(
        ValueError, match=r"behaviors \['backtraking'\] are not behaviours .*did you mean 'backtracking'"
    ):
        divergence(model, q3, enc, behaviors=["backtraking"])
    assert divergence(model, q3, enc[:2], behaviors=["deduction"]).span_tokens > 0
    # a known behaviour absent from these traces beside one they hold: measured over the spans there are
    assert divergence(model, q3, enc[:2], behaviors=["deduction", "backtracking"]).span_tokens > 0


# ------------------------------------------------------------------ H15-DVD / H15-DVT
@pytest.mark.parametrize("what", ["dataset", "tokenizer"])
def test_divergence_refuses_a_dataset_or_a_tokenizer_for_encoded(toy, q3, what):
    """The dataset failed with "'ReasoningTrace' object has no attribute 'input_ids'", the tokenizer
    with "'TokenizersBackend' object is not iterable"."""
    model, tok, ds, _ = toy
    given = ds if what == "dataset" else tok
    with pytest.raises(TypeError) as ei:
        divergence(model, q3, given)
    msg = str(ei.value)
    assert msg.startswith("divergence: encoded must be a list of EncodedTrace (encode the traces first: ")
    assert "[encode_trace(tokenizer, t) for t in dataset]" in msg and type(given).__name__ in msg


# ------------------------------------------------------------------ H15-DC0
def test_divergence_refuses_a_chunk_below_one(toy, q3):
    model, _, _, enc = toy
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"^chunk must be an integer >= 1, got {bad}$"):
            divergence(model, q3, enc, chunk=bad)


# ------------------------------------------------------------------ H15-EV5
def test_evaluate_warns_when_the_answers_hit_max_new_tokens(toy):
    """``max_new_tokens=5``: 0 % everywhere, no warning; the default length: no warning."""
    model, tok, _, _ = toy
    from lrm_interp.toy.evaluate import LengthLimitWarning, evaluate_quietly

    with pytest.warns(LengthLimitWarning) as rec:
        acc = evaluate(model, tok, problems(1, seed=2), max_new_tokens=5)
    assert acc["mean"] == 0.0
    msg = next(str(r.message) for r in rec if "max_new_tokens" in str(r.message))
    assert msg.startswith("evaluate: 3 of 3 answers hit max_new_tokens 5 without the right answer")
    assert "raise max_new_tokens" in msg and rec[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate(model, tok, problems(1, seed=2))["mean"] == 1.0
        # callers that count the answers at the limit themselves (the protection experiment) or
        # monitor training: the same accuracy, no warning
        assert evaluate_quietly(model, tok, problems(1, seed=2), max_new_tokens=5)["mean"] == 0.0


# ------------------------------------------------------------------ H15-EV0
@pytest.mark.parametrize("fn", [evaluate, collect_traces], ids=["evaluate", "collect_traces"])
def test_evaluate_refuses_max_new_tokens_zero(toy, fn):
    """transformers' "`max_new_tokens` must be greater than 0, but is 0." before; now the library's rule."""
    model, tok, _, _ = toy
    with pytest.raises(ValueError, match=r"^max_new_tokens must be an integer >= 1, got 0$"):
        fn(model, tok, problems(1, seed=2), max_new_tokens=0)


# ------------------------------------------------------------------ H15-EVS
@pytest.mark.parametrize("fn", [evaluate, collect_traces], ids=["evaluate", "collect_traces"])
def test_evaluate_refuses_model_and_tokenizer_swapped(toy, fn):
    """``evaluate(tok, model, ...)`` failed in torch's embedding ("argument 'indices' must be Tensor")."""
    model, tok, _, _ = toy
    with pytest.raises(TypeError, match=rf"^{fn.__name__}: model and tokenizer are swapped \(model is a tokenizer"):
        fn(tok, model, problems(1, seed=2), max_new_tokens=4)


# ------------------------------------------------------------------ H15-SHV / H15-SLD / H15-SLW
@pytest.fixture(scope="module")
def shift(res):
    delta = torch.linspace(-0.2, 0.2, res.scores.numel(), dtype=torch.float64).reshape(res.scores.shape)
    return ImportanceShift(res.behaviors, res.sites, delta)


def test_shift_views_must_be_decreases_or_signed(shift):
    """``heatmap('decrease')`` / ``as_attribution('example-testing')`` showed the signed shift."""
    for call in (shift.heatmap, shift.as_attribution):
        with pytest.raises(ValueError, match=r"^view must be one of 'decreases', 'signed' .*got 'decrease' \(str\)$"):
            call("decrease")
    with pytest.raises(ValueError, match=r"got 'example-testing' \(str\) \(a behaviour: every behaviour gets its own"):
        shift.heatmap("example-testing")
    assert shift.as_attribution("signed").method == "shift:signed"
    assert float(shift.as_attribution().scores.min()) >= 0.0


def test_largest_decreases_refuses_an_unknown_behaviour(shift):
    """A typo gave ``[]``."""
    with pytest.raises(KeyError, match=r"behaviour 'example-testng' not in this shift \("):
        shift.largest_decreases(5, "example-testng")
    assert len(shift.largest_decreases(5, "example-testing")) == 5


def test_largest_decreases_refuses_a_k_that_is_no_positive_int(shift):
    """The arguments swapped failed with "slice indices must be integers"; ``k=0`` gave ``[]``."""
    with pytest.raises(ValueError) as ei:
        shift.largest_decreases("example-testing", 5)
    assert str(ei.value) == (
        "k must be an integer >= 1 (the number of sites to list), got 'example-testing' (str): did you swap k "
        "and behavior? write largest_decreases(5, 'example-testing')"
    )
    with pytest.raises(ValueError, match=r"^k must be an integer >= 1 .*got 0$"):
        shift.largest_decreases(0)


# ------------------------------------------------------------------ H15-SPS
def test_steer_refuses_positions_that_are_not_token_positions(toy, res):
    """``positions="all"`` failed inside the forward hook with "new(): invalid data type 'str'"."""
    model, tok, ds, _ = toy
    beh = res.behaviors[0]
    with pytest.raises(TypeError, match=r"^positions must be a list of token positions or None, got the string 'all'"):
        res.steer(model, beh, alpha=4.0, positions="all")
    with pytest.raises(TypeError, match=r"its entry 'a' \(str\) is not a token position"):
        res.steer(model, beh, alpha=4.0, positions=[0, "a"])
    with pytest.raises(TypeError, match=r"got 3: write positions=\[3\]"):
        res.steer(model, beh, alpha=4.0, positions=3)
    assert _hooks(model) == 0
    ids = tok(ds[0].prompt, return_tensors="pt")
    with res.steer(model, beh, alpha=4.0, positions=[0, 1]):
        model(**ids)
    assert _hooks(model) == 0


# ------------------------------------------------------------------ H15-BSL / H15-BSS
@pytest.fixture(scope="module")
def math_items():
    from lrm_interp.data.benchmarks import load

    return load("math", None, per_family=1, toy_seed=2)


def test_score_outputs_refuses_a_list_of_items(math_items, tmp_path):
    """``score_outputs('bench_a', load('math'))`` failed with "'list' object has no attribute 'items'"."""
    with pytest.raises(TypeError) as ei:
        score_outputs(tmp_path, math_items, progress=False)
    msg = str(ei.value)
    assert msg.startswith("score_outputs: items must be {task: [BenchItem, ...]} (write {'math': items}), got list of ")
    assert "score_outputs(outputs, items): the outputs folder first" in msg
    assert list(tmp_path.iterdir()) == []


def test_score_outputs_refuses_its_arguments_swapped(math_items, tmp_path):
    """``score_outputs(items, 'bench_a')`` failed in pathlib ("expected str, bytes or os.PathLike
    object, not dict")."""
    with pytest.raises(TypeError, match=r"^score_outputs: outputs and items are swapped \(outputs is a dict"):
        score_outputs({"math": math_items}, str(tmp_path), progress=False)
    with pytest.raises(TypeError, match=r"^score_outputs: outputs must be the folder of the outputs"):
        score_outputs(None, {"math": math_items}, progress=False)
    assert list(tmp_path.iterdir()) == []
