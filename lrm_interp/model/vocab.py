"""Does a tokenizer (or a set of token ids) belong to a model? One rule for every entry point.

A tokenizer of another model shows in its size: one whose own vocabulary is larger than the model's
input embedding produces ids the embedding has no row for (torch says only "index out of range in
self"); one far smaller (the toy's 259 tokens for SmolLM2's 49152 rows) runs without an error on a
meaningless tokenization. Models pad their vocabulary by a little (to a multiple of 64 or 128), never
to twice the tokenizer's size, so a tokenizer with fewer than half the embedding's rows is refused
too (H14-TOK, H14-TKS). A few *added* tokens beyond the embedding (``AutoTokenizer`` adds Qwen2's
``<|endoftext|>`` to a tokenizer saved beside a Qwen2 config) are no proof: the ids a text really
produces are checked where the texts are known (:func:`check_ids_fit`,
:func:`lrm_interp.attribution.pipeline.check_ids`). Called by ``attribute``, ``divergence``,
``toy.evaluate.evaluate`` and ``collect_traces`` before any work.

Before the sizes, :func:`check_model_and_tokenizer` makes sure the two arguments are a model and a
tokenizer at all: swapped (``evaluate(tok, model, ...)``), torch or the tokenizer failed deep inside
(an embedding ``TypeError``, "model directory TokenizersBackend(...) does not exist", H15-ASW/EVS).
"""

from __future__ import annotations

from typing import Any

import torch

#: a tokenizer with fewer than ``rows / MIN_FILL`` tokens is not the model's (padding is never 2x)
MIN_FILL = 2


def embedding_rows(model: Any) -> int | None:
    """Rows of ``model``'s input embedding (its vocabulary as the model sees it), or ``None``
    when the model has no ``get_input_embeddings`` or it has no ``num_embeddings``."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    rows = getattr(emb, "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def tokenizer_label(tokenizer: Any) -> str:
    """How messages name a tokenizer: its ``name_or_path``, else its class name."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _looks_like_tokenizer(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and callable(getattr(obj, "decode", None))


def check_model_and_tokenizer(
    model: Any, tokenizer: Any, what: str, *, model_name: str = "model", tokenizer_name: str = "tokenizer"
) -> None:
    """``TypeError`` (one line, naming ``what`` and the argument) unless ``model`` is a torch model
    (``torch.nn.Module``) and ``tokenizer`` looks like a tokenizer (has ``encode`` and ``decode``);
    the two swapped are named as such::

        evaluate: model and tokenizer are swapped (model is a tokenizer (GPT2TokenizerFast), tokenizer
        a torch model (LlamaForCausalLM)): pass the model first, e.g. evaluate(model, tokenizer, ...)

    ``tokenizer=None`` (a caller that loads the model's own) and ``model`` given as a path string
    (callers that load it) are for the caller to accept before calling this."""
    m_tok, t_mod = _looks_like_tokenizer(model), isinstance(tokenizer, torch.nn.Module)
    if m_tok and t_mod:
        raise TypeError(
            f"{what}: {model_name} and {tokenizer_name} are swapped ({model_name} is a tokenizer "
            f"({type(model).__name__}), {tokenizer_name} a torch model ({type(tokenizer).__name__})): pass the "
            f"model first, e.g. {what}({model_name}, {tokenizer_name}, ...)"
        )
    if not isinstance(model, torch.nn.Module):
        hint = " (the tokenizer? the model goes first)" if m_tok else ""
        raise TypeError(f"{what}: {model_name} must be a torch model (nn.Module), got {type(model).__name__}{hint}")
    if t_mod or not _looks_like_tokenizer(tokenizer):
        hint = " (the model? pass the model's tokenizer)" if t_mod else ""
        raise TypeError(
            f"{what}: {tokenizer_name} must be a tokenizer (with encode and decode), got "
            f"{type(tokenizer).__name__}{hint}"
        )


def check_tokenizer_fits(model: Any, tokenizer: Any, what: str) -> None:
    """``ValueError`` (one line, naming ``what``, both sizes and the tokenizer) when ``tokenizer``
    is not ``model``'s: its own vocabulary (``tokenizer.vocab_size``, added tokens left out)
    exceeds the input embedding's rows, or its whole size (``len(tokenizer)``) is less than half of
    them (:data:`MIN_FILL`). Nothing is checked when either size is unknown."""
    rows = embedding_rows(model)
    try:
        size = len(tokenizer)
    except TypeError:
        return
    base = getattr(tokenizer, "vocab_size", None)
    base = base if isinstance(base, int) and base > 0 else size
    if rows is None or size <= 0:
        return
    if base > rows:
        why = f"its ids beyond {rows - 1} have no row"
    elif size * MIN_FILL < rows:
        why = "models pad their vocabulary by a little, never to twice the tokenizer's size"
    else:
        return
    raise ValueError(
        f"{what}: the tokenizer ({tokenizer_label(tokenizer)}) has {max(base, size)} tokens but the model's "
        f"input embedding has {rows} rows ({why}): a tokenizer of another model? pass the model's own tokenizer"
    )


def check_ids_fit(model: Any, ids: torch.Tensor, what: str) -> None:
    """``ValueError`` (one line, naming ``what``) when a token id of ``ids`` lies beyond ``model``'s
    input embedding: the ids were made by a tokenizer of another model (without this torch says
    only "index out of range in self")."""
    rows = embedding_rows(model)
    if rows is None or ids.numel() == 0:
        return
    top = int(ids.max())
    if top >= rows:
        raise ValueError(
            f"{what}: token id {top} but the model's input embedding has {rows} rows: encoded with "
            "a tokenizer of another model? encode the traces with the model's own tokenizer"
        )


__all__ = ["MIN_FILL", "check_ids_fit", "check_tokenizer_fits", "embedding_rows", "tokenizer_label"]
