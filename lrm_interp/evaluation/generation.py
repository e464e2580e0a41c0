"""Batched greedy generation with a KV cache (transformers ``generate``, left padding)."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from lrm_interp.model.forward import input_device


@torch.no_grad()
def generate_responses(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 480,
                       batch_size: int = 64, progress: bool = False) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left padding, KV cache)."""
    dev = input_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            chunk = list(prompts[i:i + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(dev)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for row in gen[:, enc["input_ids"].shape[1]:]:
                out.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out


def generate_answers(model, tokenizer, traces_or_problems: Sequence, *, max_new_tokens: int = 480,
                     batch_size: int = 64, progress: bool = False) -> list[str]:
    """Greedy responses to the prompts of ``traces_or_problems`` (anything with a ``.prompt``:
    :class:```lrm_interp.toy.tasks.Problem``, :class:`~lrm_interp.data.traces.ReasoningTrace`; or plain strings)."""
    prompts = [x if isinstance(x, str) else x.prompt for x in traces_or_problems]
    return generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              progress=progress)


__all__ = ["generate_responses", "generate_answers"]
