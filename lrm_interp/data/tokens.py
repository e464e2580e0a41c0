"""Character spans -> token spans, through a fast tokenizer's offsets mapping.

Token positions are indices into ``input_ids`` of the whole ``prompt + response``. A
behaviour span covers the tokens whose characters overlap ``[start, end)``; its *context
window* adds the ``k`` tokens before it (default 5, as in the paper's code), clamped so it
never reaches below the first real token (the BOS/special tokens are excluded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from lrm_interp.checks import check_int, checked_arguments
from lrm_interp.data.traces import ReasoningTrace


@dataclass(frozen=True)
class TokenSpan:
    """A behaviour span in token positions (``end`` exclusive).

    ``ctx_start`` = ``max(start - k, first_content_token)``: DoM averages over
    ``[ctx_start, end)``; attribution's loss predicts tokens ``[start, end)`` from the
    positions ``[start - 1, end - 1)``.
    """

    behavior: str
    start: int
    end: int
    ctx_start: int
    char_start: int
    char_end: int
    index: int  # index of the span in ``trace.spans``

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def targets(self) -> tuple[int, int]:
        """Tokens ``[a, b)`` the span loss predicts: the span's tokens except a token at
        position 0, which no position predicts."""
        return max(self.start, 1), self.end

    @property
    def scorable(self) -> bool:
        """Whether the span has at least one predictable token (else it has no loss to attribute)."""
        a, b = self.targets
        return b > a


@dataclass(frozen=True)
class EncodedTrace:
    """A tokenized trace.

    Attributes:
        trace_id: the trace's id.
        input_ids: ``[seq]`` long tensor of the whole text (special tokens included).
        offsets: ``[seq, 2]`` long tensor of character offsets into ``trace.text``
            (``(0, 0)`` for special tokens).
        first_content: first position that is not a special token (1 after a BOS).
        response_start: first token position whose characters lie in the response.
        spans: the behaviour spans, in order.
        dropped: ``(span index, reason)`` for spans that could not be tokenized (empty
            after tokenization or cut off by ``max_tokens``).
        think_end: first position at or after the ``</think>`` marker of the response
            (``len`` when there is none): ``[response_start, think_end)`` is the thinking part.
        special: positions holding a special token of the tokenizer (BOS, and e.g. ``<think>``
            when the tokenizer treats it as special), anywhere in the text.
        full_length: tokens of the whole text before any truncation (``len`` when not truncated).
    """

    trace_id: str
    input_ids: torch.Tensor
    offsets: torch.Tensor
    first_content: int
    response_start: int
    spans: tuple[TokenSpan, ...]
    dropped: tuple[tuple[int, str], ...] = ()
    think_end: int = -1
    special: tuple[int, ...] = ()
    full_length: int = -1

    def __post_init__(self) -> None:
        if self.think_end < 0:
            object.__setattr__(self, "think_end", len(self))
        if self.full_length < 0:
            object.__setattr__(self, "full_length", len(self))

    @property
    def truncated(self) -> bool:
        """Whether tokens of the text were cut off (``max_tokens`` or the model's context)."""
        return self.full_length > len(self)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def spans_of(self, behavior: str) -> list[TokenSpan]:
        return [s for s in self.spans if s.behavior == behavior]


def char_span_to_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """Token range ``[t0, t1)`` of the tokens overlapping characters ``[start, end)``.

    ``offsets`` are per-token ``(char_start, char_end)``; special tokens have ``(0, 0)`` and
    never match. Returns ``None`` when no token overlaps.
    """
    t0 = t1 = None
    for i, (a, b) in enumerate(offsets):
        if b <= a:  # special / empty token
            continue
        if b > start and a < end:
            if t0 is None:
                t0 = i
            t1 = i + 1
        elif a >= end:
            break
    if t0 is None or t1 is None:  # set together
        return None
    return t0, t1


@checked_arguments
def encode_trace(
    tokenizer,
    trace: ReasoningTrace,
    *,
    k_context: int = 5,
    max_tokens: int | None = None,
    add_special_tokens: bool = True,
    truncated_by: str = "max_tokens",
) -> EncodedTrace:
    """Tokenize ``trace.text`` and map every behaviour span to token positions.

    Args:
        tokenizer: a fast HF tokenizer (must support ``return_offsets_mapping``).
        trace: the trace (one :class:`ReasoningTrace`; anything else, a dataset included, is a
            ``TypeError``).
        k_context: preceding context tokens added to each span's DoM window (>= 0).
        max_tokens: optional truncation (an ``int`` >= 1, else ``ValueError``); spans ending past
            it are reported in ``dropped`` (a span cut in two is dropped whole, never shortened).
        truncated_by: what ``max_tokens`` is, in the ``dropped`` reasons (e.g. "the model's
            context (1024 positions)").
    """
    if not isinstance(trace, ReasoningTrace):  # a dataset: "... has no attribute 'text'" (H15-END)
        many = isinstance(trace, Iterable) and not isinstance(trace, (str, bytes, Mapping))
        hint = ": encode each trace: [encode_trace(tok, t) for t in ds]" if many else ""
        raise TypeError(f"encode_trace: trace must be one ReasoningTrace, got {type(trace).__name__}{hint}")
    if k_context < 0:
        raise ValueError("k_context must be >= 0")
    check_int("max_tokens", max_tokens, min=1, optional=True)  # 0: an empty encoding (H15-EN0)
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("encode_trace needs a fast tokenizer (offsets mapping)")
    enc = tokenizer(trace.text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    ids = list(enc["input_ids"])
    offs = [tuple(o) for o in enc["offset_mapping"]]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    content = [i for i, (t, (a, b)) in enumerate(zip(ids, offs)) if t not in special and b > a]
    first_content = content[0] if content else len(ids)
    full_length = len(ids)
    if max_tokens is not None and len(ids) > max_tokens:
        ids, offs = ids[:max_tokens], offs[:max_tokens]
    plen = len(trace.prompt)
    response_start = len(ids)
    for i, (a, b) in enumerate(offs):
        if b > a and b > plen:
            response_start = i
            break
    spans, dropped = [], []
    for idx, s in enumerate(trace.spans):
        a, b = trace.abs_span(s)
        r = char_span_to_tokens(offs, a, b)
        if r is None:
            reason = (
                f"beyond {truncated_by}"
                if max_tokens is not None and a >= _last_char(offs)
                else "no token overlaps the span"
            )
            dropped.append((idx, reason))
            continue
        t0, t1 = r
        t0 = max(t0, response_start)  # a response span never starts inside the prompt
        if max_tokens is not None and b > _last_char(offs):
            dropped.append((idx, f"cut by {truncated_by}"))
            continue
        ctx = max(t0 - k_context, first_content)
        spans.append(TokenSpan(s.behavior, t0, t1, ctx, s.start, s.end, idx))
    think_end = len(ids)
    k = trace.response.find("</think>")
    if k >= 0:
        cut = plen + k
        think_end = next((i for i, (a, b) in enumerate(offs) if b > a and b > cut), len(ids))
    return EncodedTrace(
        think_end=think_end,
        special=tuple(i for i, t in enumerate(ids) if t in special),
        trace_id=trace.id,
        input_ids=torch.tensor(ids, dtype=torch.long),
        offsets=torch.tensor(offs, dtype=torch.long).reshape(-1, 2),
        first_content=first_content,
        response_start=response_start,
        spans=tuple(spans),
        dropped=tuple(dropped),
        full_length=full_length,
    )


def _last_char(offs: list[tuple[int, int]]) -> int:
    return max((b for a, b in offs), default=0)


@checked_arguments
def span_mask(length: int, spans: list[TokenSpan], *, context: bool = True) -> torch.Tensor:
    """``[length]`` float mask of the union of ``spans`` (each token counted once)."""
    m = torch.zeros(length)
    for s in spans:
        m[(s.ctx_start if context else s.start) : s.end] = 1.0
    return m


@checked_arguments
def target_positions(span: TokenSpan, *, off_by_one: bool = False) -> tuple[int, int]:
    """Positions ``[p0, p1)`` whose outputs predict the span's tokens.

    Default: ``[start-1, end-1)`` (position t predicts token t+1). ``off_by_one=True``
    reproduces the paper code's window ``[start, end)``: it includes the last input
    position (zero gradient once the input is cut after the span) and misses the position
    predicting the first span token.
    """
    if off_by_one:
        return span.start, span.end
    return max(span.start - 1, 0), span.end - 1


__all__ = ["TokenSpan", "EncodedTrace", "encode_trace", "char_span_to_tokens", "span_mask", "target_positions"]
