"""Batched generation with a KV cache (transformers ``generate``, left padding).

:func:`generate_responses` / :func:`generate_answers`: greedy texts. :func:`generate_samples`:
the benchmark kernel — greedy or sampled (temperature, top-p, seed), ``n`` samples per prompt,
with the number of new tokens and whether the length limit was hit (:class:`Generation`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from lrm_interp.checks import checked_arguments
from lrm_interp.model.forward import input_device


def finite_logits_guard(first: str, width: int) -> Any:
    """A ``transformers`` logits processor list for ``generate(logits_processor=...)`` that raises
    :class:`~lrm_interp.model.provenance.NonFiniteError` at the first step whose logits hold a NaN or
    ``+inf``: greedy decoding picked token 0 from NaN logits, so ``bench run`` wrote NUL-byte outputs
    and ``toy eval`` scored accuracy 0, both with exit 0 (H31-NANFWD). ``-inf`` (a token masked by
    another processor) is allowed. ``first`` names the batch's first prompt, ``width`` its padded
    prompt length (the step is counted from it)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from lrm_interp.model.provenance import NonFiniteError

    class _FiniteLogits(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if bool(torch.isnan(scores).any()) or bool(torch.isposinf(scores).any()):  # scores: [batch, vocab]
                raise NonFiniteError(
                    f"generate: the model's logits hold NaN or +inf at new token {input_ids.shape[1] - width + 1} "
                    f"(batch of {input_ids.shape[0]} sequence(s) from {first}): the model is broken (its config, or "
                    "weights too large for its dtype); nothing was written for this batch"
                )
            return scores

    return LogitsProcessorList([_FiniteLogits()])


@checked_arguments
@torch.no_grad()
def generate_responses(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 480, batch_size: int = 64, progress: bool = False
) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left padding, KV cache)."""
    dev = input_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            chunk = list(prompts[i : i + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(dev)
            gen = model.generate(
                **enc,
                logits_processor=finite_logits_guard(f"prompt {i}", enc["input_ids"].shape[1]),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in gen[:, enc["input_ids"].shape[1] :]:
                out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out


@dataclass(frozen=True)
class _Ids:
    """Token ids under a name, in the shape :func:`lrm_interp.attribution.pipeline.check_ids` reads
    (an :class:`~lrm_interp.data.tokens.EncodedTrace`'s ``trace_id`` and ``input_ids``)."""

    trace_id: str
    input_ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def check_token_ids(model, tokenizer, texts: Iterable[tuple[str, str | torch.Tensor]]) -> None:
    """``ValueError`` when ``tokenizer`` is not ``model``'s: a token id of one of ``texts``
    (``(name, text or ids)``) lies beyond the model's input embedding. ``attribute``'s check
    (:func:`lrm_interp.attribution.pipeline.check_ids`), for the commands that generate or
    calibrate, run before anything is computed or written (H7-TE: they said "index out of range
    in self", and ``bench run`` left ``run.json`` behind)."""
    from lrm_interp.attribution.pipeline import check_ids

    for name, x in texts:
        ids = x if isinstance(x, torch.Tensor) else torch.tensor(tokenizer(x)["input_ids"], dtype=torch.long)
        check_ids(model, tokenizer, cast(Any, _Ids(name, ids.reshape(-1))))  # reads trace_id, input_ids, len()


def count_at_limit(tokenizer, responses: Sequence[str], max_new_tokens: int) -> int:
    """How many of ``responses`` (decoded greedy continuations, :func:`generate_responses`) are
    ``max_new_tokens`` tokens long: cut off by the length limit before they ended."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) >= max_new_tokens for r in responses)


def length_limit_warning(
    correct: int, n: int, at_limit: int | None, max_new_tokens: int, *, flag: str = "--max-new-tokens"
) -> str | None:
    """A sentence when the full-precision answers show that a comparison of compressed variants
    means nothing (H7-E1: every row 0 %, full precision included, printed with a "best" verdict):
    full precision solved none of its ``n`` problems, or at least half of its answers (``at_limit``,
    :func:`count_at_limit`; ``None``: not known, e.g. a resumed row) hit the length limit. ``None``
    when neither holds."""
    if n <= 0:
        return None
    cut = at_limit is not None and 2 * at_limit >= n
    if correct > 0 and not cut:
        return None
    msg = f"full precision solved {correct} of {n}"
    if at_limit is not None:
        msg += f"; {at_limit} of {n} answers hit {flag} {max_new_tokens}"
    msg += f": raise {flag}" if cut else f" (is {flag} {max_new_tokens} too short for the model's answers? raise it)"
    return msg + "; the compressed rows are compared against a baseline that does not answer, so no verdict is drawn"


@checked_arguments
def generate_answers(
    model,
    tokenizer,
    traces_or_problems: Sequence,
    *,
    max_new_tokens: int = 480,
    batch_size: int = 64,
    progress: bool = False,
) -> list[str]:
    """Greedy responses to the prompts of ``traces_or_problems`` (anything with a ``.prompt``:
    :class:`~lrm_interp.data.toy_tasks.Problem`, :class:`~lrm_interp.data.traces.ReasoningTrace`; or plain strings)."""
    prompts = [x if isinstance(x, str) else x.prompt for x in traces_or_problems]
    return generate_responses(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )


@dataclass(frozen=True)
class Generation:
    """One generated output: ``text`` (decoded without special tokens), ``n_tokens`` (new tokens
    up to, not including, the end-of-sequence token), ``finish_reason`` (``"stop"``: the model
    ended it; ``"length"``: ``max_new_tokens`` reached) and ``prompt_tokens``."""

    text: str
    n_tokens: int
    finish_reason: str
    prompt_tokens: int | None = None

    @property
    def hit_limit(self) -> bool:
        return self.finish_reason == "length"

    def to_dict(self) -> dict:
        return {"n_tokens": self.n_tokens, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens}


def derive_seed(seed: int, key: str) -> int:
    """A 31-bit seed from ``(seed, key)`` (BLAKE2b), so that the samples of one item do not depend
    on which other items share its batch or on a resumed run's order."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=4).digest(), "little") >> 1


def chat_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` as one user turn through the tokenizer's chat template, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template (turn the chat template off)"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


@checked_arguments
def encode_prompts(tokenizer, prompts: Sequence[str], *, chat_template: bool = False) -> list[list[int]]:
    """Token ids of each prompt: plain (the tokenizer's special tokens, e.g. BOS, added: the paper
    uses no chat template) or through the chat template (which carries its own special tokens)."""
    if chat_template:
        return [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    return [tokenizer(p)["input_ids"] for p in prompts]


def _row_generation(tokenizer, row: torch.Tensor, eos: set[int], max_new_tokens: int, n_prompt: int) -> Generation:
    ids = row.tolist()
    n = next((i for i, t in enumerate(ids) if t in eos), None)
    if n is None:  # no end-of-sequence token: the row ran to the limit
        n = len(ids)
        return Generation(
            tokenizer.decode(ids, skip_special_tokens=True), n, "length" if n >= max_new_tokens else "stop", n_prompt
        )
    return Generation(tokenizer.decode(ids[:n], skip_special_tokens=True), n, "stop", n_prompt)


@checked_arguments
@torch.no_grad()
def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    seed: int = 0,
    keys: Sequence[str] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    on_result: Callable[[int, list[Generation]], None] | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[list[Generation]]:
    """``n`` outputs per prompt (``[len(prompts)][n]``), batched with left padding and a KV cache.

    ``temperature == 0``: greedy (the ``n`` outputs are one output repeated). Sampling: each batch
    is seeded with :func:`derive_seed` of ``seed`` and its first prompt's key (``keys``, default
    the prompt's position). ``on_result(i, gens)`` is called for every prompt as its batch ends
    (the benchmark runner writes files there). Prompts are sorted by length within the call so
    that batches pad little; results come back in input order.
    """
    dev = input_device(model)
    keys = [str(i) for i in range(len(prompts))] if keys is None else list(keys)
    encoded = encode_prompts(tokenizer, prompts, chat_template=chat_template)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    eos_ids = (
        tokenizer.eos_token_id
        if tokenizer.eos_token_id is not None
        else getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    )
    eos = set(eos_ids if isinstance(eos_ids, (list, tuple)) else [] if eos_ids is None else [eos_ids])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (min(eos) if eos else 0)
    sample = float(temperature) > 0
    reps = int(n) if sample else 1
    out: list[list[Generation] | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, disable=not progress, unit="item", leave=False) as bar:
        for b0 in range(0, len(order), int(batch_size)):
            idx = order[b0 : b0 + int(batch_size)]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                att[r, width - len(encoded[i]) :] = 1
            kw: dict = {"do_sample": False}
            if sample:
                torch.manual_seed(derive_seed(seed, keys[idx[0]]))
                kw = {
                    "do_sample": True,
                    "temperature": float(temperature),
                    "top_p": float(top_p),
                    "top_k": 0,
                    "num_return_sequences": reps,
                }
            gen = model.generate(
                input_ids=ids.to(dev),
                attention_mask=att.to(dev),
                logits_processor=finite_logits_guard(f"prompt {keys[idx[0]]!r}", width),
                max_new_tokens=int(max_new_tokens),
                eos_token_id=sorted(eos) or None,
                pad_token_id=pad,
                **kw,
            )
            new = gen[:, width:].cpu()
            for r, i in enumerate(idx):
                rows = new[r * reps : (r + 1) * reps]
                gens = [_row_generation(tokenizer, row, eos, int(max_new_tokens), len(encoded[i])) for row in rows]
                out[i] = got = gens * int(n) if not sample else gens
                if on_result is not None:
                    on_result(i, got)
            bar.update(len(idx))
    return out  # type: ignore[return-value]  # every slot is filled: ``order`` covers every prompt


__all__ = [
    "generate_responses",
    "generate_answers",
    "generate_samples",
    "Generation",
    "derive_seed",
    "encode_prompts",
    "chat_prompt",
]
