"""Leftovers of the thirteenth hostile probe run (issue 22, "nothing lost, nothing silent"), part A:
``divergence`` of a model with itself or with its arguments swapped (H14-DVS, H14-DVW), and a
tokenizer of another model given to ``divergence``, ``toy.evaluate.evaluate``, ``collect_traces``
and ``attribute`` (H14-TOK, H14-TKS).

``divergence(model, q, enc)`` with ``q`` the same object reported ``kl=0.0`` without a word; with
the 3-bit copy passed first it reported a swapped KL and NLLs. A larger tokenizer gave the three
Python entry points a raw "index out of range in self"; a far smaller one (the toy's 259 tokens for
a 49152-row embedding) gave ``attribute`` a normal-looking result."""

from __future__ import annotations

import copy
import warnings

import pytest

import lrm_interp
from lrm_interp import divergence, encode_trace, quantize_model_
from lrm_interp.testing import byte_tokenizer, tiny_model
from lrm_interp.toy.evaluate import collect_traces, evaluate
from lrm_interp.toy.tasks import generate_dataset, problems


@pytest.fixture(scope="module")
def toy(toy_encoded):
    return toy_encoded


@pytest.fixture(scope="module")
def big_tok(toy):
    """The toy tokenizer with 8 added tokens: ids 259.. that the 259-row embedding has no row for."""
    tok = copy.deepcopy(toy[1])
    tok.add_tokens(["is", "he", "th", "in", "an", "er", "at", "on"])
    assert len(tok) == 267
    return tok


@pytest.fixture(scope="module")
def wide_tok():
    """A tokenizer of its own 559 tokens (the toy model's embedding has 259 rows)."""
    tok = byte_tokenizer(tuple(f"<x{i}>" for i in range(300)))
    assert len(tok) == tok.vocab_size == 559
    return tok


# ------------------------------------------------------------------ H14-DVS
def test_divergence_of_a_model_with_itself_warns(toy):
    """``q = model`` (meant: a deepcopy), quantized: KL 0 by construction, now with a warning that
    points at the caller's line."""
    model, _, _, enc = toy
    m = copy.deepcopy(model)
    q = m
    quantize_model_(q, bits=3, group_size=128, progress=False)
    with pytest.warns(UserWarning, match="divergence of a model with itself is 0 by construction") as rec:
        d = divergence(m, q, enc)
    assert d.kl == 0.0 and d.nll == d.nll_ref
    w = next(r for r in rec if "by construction" in str(r.message))
    assert w.filename == __file__
    assert "copy.deepcopy(model)" in str(w.message)


def test_divergence_of_two_models_warns_nothing(toy):
    model, _, _, enc = toy
    q = copy.deepcopy(model)
    quantize_model_(q, bits=3, group_size=128, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = divergence(model, q, enc)
    assert d.kl > 0


# ------------------------------------------------------------------ H14-DVW
def test_divergence_with_the_compressed_model_first_is_refused(toy):
    """The records say which is the 3-bit copy: ``compare``'s rule ("did you swap"), before any
    forward pass."""
    model, _, _, enc = toy
    q = copy.deepcopy(model)
    quantize_model_(q, bits=3, group_size=128, progress=False)
    with pytest.raises(ValueError) as ei:
        divergence(q, model, enc)
    msg = str(ei.value)
    assert (
        "the reference is a 3-bit RTN copy and the compared model is not: did you swap reference and compressed?"
        in (msg)
    )
    assert "\n" not in msg
    divergence(model, q, enc[:1])  # the right order still runs


# ------------------------------------------------------------------ H14-TOK
def test_divergence_of_traces_encoded_by_a_larger_tokenizer_is_refused(toy, big_tok, wide_tok):
    model, _, ds, _ = toy
    q = copy.deepcopy(model)
    quantize_model_(q, bits=3, group_size=128, progress=False)
    enc = [encode_trace(big_tok, t) for t in ds]
    with pytest.raises(ValueError, match=r"but the model's input embedding has 259 rows") as ei:
        divergence(model, q, enc)
    msg = str(ei.value)
    assert msg.startswith(f"divergence: trace {enc[0].trace_id}: token id ") and "tokenizer of another model?" in msg
    with pytest.raises(ValueError, match=r"has 559 tokens but the model's input embedding has 259 rows"):
        divergence(model, q, [encode_trace(wide_tok, t) for t in ds], tokenizer=wide_tok)


@pytest.mark.parametrize("fn", [evaluate, collect_traces], ids=["evaluate", "collect_traces"])
def test_evaluate_and_collect_traces_refuse_a_larger_tokenizer(toy, big_tok, wide_tok, fn):
    """A tokenizer of 559 tokens: refused by its size; the toy tokenizer with 8 added tokens (ids
    259..266): refused by the prompts' ids (H7-TE's message). Both said "index out of range in self"."""
    model = toy[0]
    with pytest.raises(ValueError) as ei:
        fn(model, wide_tok, problems(1, seed=2), max_new_tokens=4)
    msg = str(ei.value)
    assert msg.startswith(f"{fn.__name__}: the tokenizer (")
    assert "has 559 tokens but the model's input embedding has 259 rows" in msg
    assert "a tokenizer of another model?" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"\(prompt\): the tokenizer .* but the model's input embedding has 259 rows"):
        fn(model, big_tok, problems(1, seed=2), max_new_tokens=4)


def test_the_toy_model_with_its_own_tokenizer_still_runs(toy):
    model, tok = toy[0], toy[1]
    acc = evaluate(model, tok, problems(1, seed=2), max_new_tokens=4)
    assert "mean" in acc


# ------------------------------------------------------------------ H14-TKS
def test_attribute_refuses_a_far_smaller_tokenizer():
    """A 49152-row embedding (SmolLM2's size) with the 259-token toy tokenizer: refused before any work."""
    big = tiny_model("llama", vocab_size=49152)
    ds = generate_dataset(n_per_family=1, seed=4242)[:1]
    with pytest.raises(ValueError) as ei:
        lrm_interp.attribute(big, ds, tokenizer=byte_tokenizer(), progress=False, behaviors=["deduction"])
    msg = str(ei.value)
    assert msg.startswith("attribute: the tokenizer (")
    assert "has 259 tokens but the model's input embedding has 49152 rows" in msg
    assert "a tokenizer of another model?" in msg


def test_divergence_of_models_of_other_vocabularies_is_refused(toy):
    model, _, _, enc = toy
    with pytest.raises(
        ValueError, match=r"the reference's input embedding has 259 rows but the compared model's has 300"
    ):
        divergence(model, tiny_model("llama", vocab_size=300), enc[:1])


@pytest.mark.parametrize("rows, refused", [(259, False), (300, False), (518, False), (519, True), (258, True)])
def test_check_tokenizer_fits_bounds(rows, refused):
    """Padding by a little passes (SmolLM2: 49152 tokens, 49152 rows); under half, or beyond, is refused."""
    import torch

    from lrm_interp.model.vocab import check_tokenizer_fits

    class Stub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(rows, 2)

        def get_input_embeddings(self) -> torch.nn.Embedding:
            return self.emb

    if refused:
        with pytest.raises(ValueError, match="a tokenizer of another model"):
            check_tokenizer_fits(Stub(), byte_tokenizer(), "x")
    else:
        check_tokenizer_fits(Stub(), byte_tokenizer(), "x")


def test_added_tokens_beyond_the_embedding_are_no_proof(toy, big_tok):
    """``AutoTokenizer`` adds Qwen2's ``<|endoftext|>`` to a tokenizer saved beside a Qwen2 config
    (260 tokens for 259 rows): only the tokenizer's own vocabulary counts; ids are checked per text."""
    from lrm_interp.model.vocab import check_tokenizer_fits

    check_tokenizer_fits(toy[0], big_tok, "x")  # 259 own tokens + 8 added ones
