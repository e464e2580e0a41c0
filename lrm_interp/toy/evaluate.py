"""The toy tasks' accuracy, and collecting a model's own annotated traces (generation itself:
:mod:`lrm_interp.evaluation.generation`; answer extraction, pure text:
:func:`lrm_interp.data.toy_tasks.extract_answer`, re-exported here)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence

from lrm_interp.checks import check_int, checked_arguments, user_stacklevel
from lrm_interp.data.toy_tasks import Problem, extract_answer
from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace
from lrm_interp.evaluation.generation import check_token_ids, count_at_limit, generate_responses
from lrm_interp.model.forward import check_finite_forward
from lrm_interp.model.provenance import NonFiniteError, first_non_finite
from lrm_interp.model.vocab import check_model_and_tokenizer, check_tokenizer_fits


class LengthLimitWarning(UserWarning):
    """At least half of :func:`evaluate`'s answers hit ``max_new_tokens`` without the right answer
    (H15-EV5). Callers that count the answers at the limit themselves (the protection experiment,
    H7-E1) or evaluate during training ignore it."""


def check_finite_model(model) -> None:
    """:class:`~lrm_interp.model.provenance.NonFiniteError` for a model whose accuracy would be 0
    for no reason of its reasoning: a NaN or infinite weight (H29-NANMODEL), or a forward that
    gives NaN logits from finite weights (a norm's epsilon at or below 0, H31-NANFWD); an
    evaluation blamed the length limit."""
    bad = first_non_finite(model)
    if bad is not None:
        raise NonFiniteError(
            f"evaluate: parameter {bad[0]} holds {bad[1]} non-finite values: the model is broken (a training "
            "that diverged?); its accuracy would be 0"
        )
    check_finite_forward(model, "evaluate")


@checked_arguments
def evaluate(
    model,
    tokenizer,
    probs: Sequence[Problem],
    *,
    max_new_tokens: int = 480,
    batch_size: int = 64,
    progress: bool = False,
    return_responses: bool = False,
):
    """Accuracy per family (and ``"mean"`` over families) of greedy answers on ``probs``.

    ``probs``: :class:`Problem` objects or traces whose ``metadata`` has ``dataset`` and
    ``gold_answer`` (as produced by :mod:`lrm_interp.data.toy_tasks`). A tokenizer of another
    model is refused first (:func:`~lrm_interp.model.vocab.check_tokenizer_fits`; a prompt id beyond
    the embedding: :func:`~lrm_interp.evaluation.generation.check_token_ids`), and so are the model
    and the tokenizer swapped (:func:`~lrm_interp.model.vocab.check_model_and_tokenizer`, H15-EVS) and
    a ``max_new_tokens`` or ``batch_size`` below 1 (H15-EV0), and a model with a NaN or infinite
    parameter (it answered nothing, blamed on the length limit, H29-NANMODEL). When at least half of the answers hit
    ``max_new_tokens`` without the right answer, a ``UserWarning`` says how many (the accuracy
    measures the limit, not the model: H15-EV5, a :class:`LengthLimitWarning`; the rule of
    :func:`~lrm_interp.evaluation.generation.length_limit_warning`)."""
    max_new_tokens, batch_size = _check_lengths(max_new_tokens, batch_size)
    probs = [_as_problem(p) for p in probs]
    if not probs:
        raise ValueError("evaluate: no problems to evaluate (an accuracy of nothing is undefined)")
    check_model_and_tokenizer(model, tokenizer, "evaluate")
    check_tokenizer_fits(model, tokenizer, "evaluate")
    check_token_ids(model, tokenizer, [(f"{p.id} (prompt)", p.prompt) for p in probs])
    check_finite_model(model)
    responses = generate_responses(
        model,
        tokenizer,
        [p.prompt for p in probs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    hits: dict[str, list[bool]] = defaultdict(list)
    oks = score_responses(probs, responses)
    for p, ok in zip(probs, oks):
        hits[p.family].append(ok)
    acc = {f: sum(v) / len(v) for f, v in hits.items()}
    acc["mean"] = sum(acc.values()) / len(acc)
    _warn_at_limit(tokenizer, responses, oks, max_new_tokens)
    return (acc, responses) if return_responses else acc


def _check_lengths(max_new_tokens: object, batch_size: object) -> tuple[int, int]:
    """``max_new_tokens`` and ``batch_size`` as integers >= 1 (:func:`~lrm_interp.checks.check_int`),
    checked before any generation: 0 failed in transformers' ``generate`` (H15-EV0)."""
    return check_int("max_new_tokens", max_new_tokens, min=1), check_int("batch_size", batch_size, min=1)


def _warn_at_limit(tokenizer, responses: Sequence[str], correct: Sequence[bool], max_new_tokens: int) -> None:
    """A ``UserWarning`` when at least half of ``responses`` hit ``max_new_tokens``
    (:func:`~lrm_interp.evaluation.generation.count_at_limit`) without the right answer
    (``correct``): ``evaluate(max_new_tokens=5)`` gave 0 % everywhere without a word (H15-EV5). The
    threshold of :func:`~lrm_interp.evaluation.generation.length_limit_warning` (H7-E1)."""
    cut = [r for r, ok in zip(responses, correct) if not ok]
    n_cut = count_at_limit(tokenizer, cut, max_new_tokens) if cut else 0
    if responses and 2 * n_cut >= len(responses) and n_cut:
        warnings.warn(
            f"evaluate: {n_cut} of {len(responses)} answers hit max_new_tokens {max_new_tokens} without the "
            "right answer: the accuracy measures the length limit (raise max_new_tokens; the default is 480), "
            "or the model repeats itself up to it",
            LengthLimitWarning,
            stacklevel=user_stacklevel(),
        )


def evaluate_quietly(*args, **kwargs):
    """:func:`evaluate` with its :class:`LengthLimitWarning` ignored, for callers that count the
    answers at the limit themselves (the protection experiment, H7-E1) or monitor a model in
    training (where a model that still loops is expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthLimitWarning)
        return evaluate(*args, **kwargs)


def score_responses(probs: Sequence[Problem], responses: Sequence[str]) -> list[bool]:
    """Per problem: is the answer extracted from its response the gold answer? ``[n]`` in the
    order of ``probs`` (what :func:`evaluate` averages per family)."""
    if len(probs) != len(responses):
        raise ValueError(f"score_responses: {len(probs)} problems but {len(responses)} responses")
    return [extract_answer(p.family, r) == p.answer for p, r in zip(probs, responses)]


def _as_problem(x) -> Problem:
    if isinstance(x, Problem):
        return x
    md = getattr(x, "metadata", None) or {}
    if "dataset" not in md or "gold_answer" not in md:
        raise ValueError(f"{getattr(x, 'id', x)!r}: need a Problem or a trace with metadata dataset/gold_answer")
    return Problem(x.id, md["dataset"], x.prompt, str(md["gold_answer"]))


@checked_arguments
def collect_traces(
    model,
    tokenizer,
    probs: Sequence[Problem],
    *,
    annotator=None,
    max_new_tokens: int = 480,
    batch_size: int = 64,
    progress: bool = False,
) -> ReasoningDataset:
    """The model's own reasoning traces, annotated (rule-based by default), as the paper does.

    Metadata: dataset (family), gold_answer, predicted answer, correct, annotation report.
    A tokenizer of another model is refused first (:func:`~lrm_interp.model.vocab.check_tokenizer_fits`;
    a prompt id beyond the embedding: :func:`~lrm_interp.evaluation.generation.check_token_ids`).
    The model and the tokenizer swapped, and a ``max_new_tokens`` or ``batch_size`` below 1, are
    refused as :func:`evaluate` refuses them (H15-EVS, H15-EV0).
    """
    max_new_tokens, batch_size = _check_lengths(max_new_tokens, batch_size)
    check_model_and_tokenizer(model, tokenizer, "collect_traces")
    check_tokenizer_fits(model, tokenizer, "collect_traces")
    from lrm_interp.data.annotate import RuleAnnotator, annotate_response

    annotator = annotator or RuleAnnotator()
    probs = [_as_problem(p) for p in probs]
    check_token_ids(model, tokenizer, [(f"{p.id} (prompt)", p.prompt) for p in probs])
    check_finite_model(model)
    responses = generate_responses(
        model,
        tokenizer,
        [p.prompt for p in probs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    traces = []
    for p, r in zip(probs, responses):
        pred = extract_answer(p.family, r)
        spans, report = annotate_response(r, annotator, source=p.id)
        traces.append(
            ReasoningTrace(
                p.id,
                p.prompt,
                r,
                tuple(spans),
                {
                    "dataset": p.family,
                    "gold_answer": p.answer,
                    "predicted": pred,
                    "correct": pred == p.answer,
                    "annotation": report,
                },
            )
        )
    return ReasoningDataset(traces, name="collected")


__all__ = ["extract_answer", "evaluate", "score_responses", "collect_traces"]
