"""The toy tasks' accuracy, and collecting a model's own annotated traces (generation itself:
:mod:`lrm_interp.evaluation.generation`; answer extraction, pure text:
:func:`lrm_interp.data.toy_tasks.extract_answer`, re-exported here)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from lrm_interp.data.toy_tasks import Problem, extract_answer
from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace
from lrm_interp.evaluation.generation import check_token_ids, generate_responses
from lrm_interp.model.vocab import check_tokenizer_fits


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
    the embedding: :func:`~lrm_interp.evaluation.generation.check_token_ids`)."""
    check_tokenizer_fits(model, tokenizer, "evaluate")
    probs = [_as_problem(p) for p in probs]
    check_token_ids(model, tokenizer, [(f"{p.id} (prompt)", p.prompt) for p in probs])
    if not probs:
        raise ValueError("evaluate: no problems to evaluate (an accuracy of nothing is undefined)")
    responses = generate_responses(
        model,
        tokenizer,
        [p.prompt for p in probs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, ok in zip(probs, score_responses(probs, responses)):
        hits[p.family].append(ok)
    acc = {f: sum(v) / len(v) for f, v in hits.items()}
    acc["mean"] = sum(acc.values()) / len(acc)
    return (acc, responses) if return_responses else acc


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
    """
    check_tokenizer_fits(model, tokenizer, "collect_traces")
    from lrm_interp.data.annotate import RuleAnnotator, annotate_response

    annotator = annotator or RuleAnnotator()
    probs = [_as_problem(p) for p in probs]
    check_token_ids(model, tokenizer, [(f"{p.id} (prompt)", p.prompt) for p in probs])
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
