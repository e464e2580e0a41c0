"""The paper's annotation path: an LLM labels the thinking part in the markup.

- :data:`VENHOFF_PROMPT`: the annotation prompt of Venhoff et al. (arXiv 2506.18167, their
  public code), the one the seed paper used with GPT-4o: the six labels with their
  definitions, the ``["label"]...["end-section"]`` format, "answer only with the annotated
  text". Only the thinking part is sent (:func:`~lrm_interp.data.annotators.base.thinking_part`).
- :class:`OpenAIClient`: a text client for any OpenAI-compatible server (vLLM, SGLang,
  llama.cpp, hosted APIs): ``/chat/completions`` or ``/completions``, greedy by default. Its
  requests go through :class:`lrm_interp.endpoint.EndpointClient`, the one HTTP client the
  benchmark backend uses too (retries with exponential back-off on one status set, ``Retry-After``
  honoured, an unreachable endpoint named at the first failure, one error type
  :class:`~lrm_interp.endpoint.EndpointError`), token and request counts in
  :attr:`OpenAIClient.usage`. Model, base URL and key come from arguments or the environment
  (``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` or ``api_key_env``, ``LRM_INTERP_LLM_MODEL``); the key
  is never part of :meth:`OpenAIClient.describe`, repr or any file.
- :class:`LLMAnnotator`: prompt → ``complete(prompt)`` (any callable, e.g. the client); long
  thinking parts are split at paragraph / sentence boundaries into chunks of at most
  ``max_chunk_chars`` characters, annotated one by one and re-joined, so the result goes
  through the parser and aligner as one annotation file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lrm_interp.checks import check_float, check_int
from lrm_interp.data.annotators.segment import split_sentences
from lrm_interp.endpoint import (
    API_KEY_ENV,
    DEFAULT_BACKOFF,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    EndpointClient,
    EndpointConfig,
    EndpointError,
    EndpointUnreachable,
    Usage,
)
from lrm_interp.endpoint import RETRY_STATUS as ENDPOINT_RETRY_STATUS

VENHOFF_PROMPT = """Please split the following reasoning chain of an LLM into annotated parts using labels and the \
following format ["label"]...["end-section"]. A sentence should be split into multiple parts if it incorporates \
multiple behaviours indicated by the labels.

Available labels:
0. initializing -> The model is rephrasing the given task and states initial thoughts.
1. deduction -> The model is performing a deduction step based on its current approach and assumptions.
2. adding-knowledge -> The model is enriching the current approach with recalled facts.
3. example-testing -> The model generates examples to test its current approach.
4. uncertainty-estimation -> The model is stating its own uncertainty.
5. backtracking -> The model decides to change its approach.

The reasoning chain to analyze:
{text}

Answer only with the annotated text. Only use the labels outlined above. If there is a tail that has no \
annotation leave it out."""

#: Kept for the earlier name; the default prompt is Venhoff et al.'s.
LLM_PROMPT = VENHOFF_PROMPT

#: Kept for the earlier name: the one retryable status set of :mod:`lrm_interp.endpoint`.
RETRY_STATUS = ENDPOINT_RETRY_STATUS

#: Kept for the earlier name: the one endpoint error type (:class:`lrm_interp.endpoint.EndpointError`).
LLMRequestError = EndpointError


@dataclass
class OpenAIClient:
    """Minimal OpenAI-compatible text client over :class:`lrm_interp.endpoint.EndpointClient`
    (the benchmark backend's client too), safe to share between threads.

    Args:
        model: model name the server knows (default ``$LRM_INTERP_LLM_MODEL``).
        base_url: API root ending in ``/v1`` (default ``$OPENAI_BASE_URL`` or OpenAI's).
        api_key: bearer token (default ``$api_key_env``; local servers need none).
        api_key_env: environment variable read when ``api_key`` is not given (``""``: none).
        mode: ``"chat"`` (``/chat/completions``, one user message) or ``"completions"``.
        temperature: 0 = greedy, as the paper (a finite number >= 0).
        max_tokens: completion budget per request (an integer >= 1; ``None``: the server's default).
        timeout: seconds per request.
        max_retries: retries after the first attempt for retryable failures (the endpoint
            client's ``retries``).
        backoff: first wait in seconds; doubled per retry with ±25 % jitter, capped at
            ``max_backoff`` (a ``Retry-After`` header wins when present).
        concurrency: requests in flight at most over all threads sharing the client.
        extra_body: extra JSON fields for every request (``{"seed": 0}``, ``{"top_p": 1}``).

    Settings are validated by :class:`lrm_interp.endpoint.EndpointConfig` (``ValueError``);
    failures raise :class:`~lrm_interp.endpoint.EndpointError` (alias :data:`LLMRequestError`),
    an endpoint that cannot be reached :class:`~lrm_interp.endpoint.EndpointUnreachable` at once.
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = API_KEY_ENV
    mode: str = "chat"
    temperature: float = 0.0
    max_tokens: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    concurrency: int = DEFAULT_CONCURRENCY
    extra_body: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage, repr=False, compare=False)
    endpoint: EndpointClient = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model = self.model or os.environ.get("LRM_INTERP_LLM_MODEL")
        if not self.model:
            raise ValueError("model: give the model name (or set LRM_INTERP_LLM_MODEL)")
        if self.mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {self.mode!r}")
        self.temperature = check_float("temperature", self.temperature, min=0.0)
        self.max_tokens = check_int("max_tokens", self.max_tokens, min=1, optional=True)
        cfg = EndpointConfig(
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            concurrency=self.concurrency,
        )
        self.base_url = cfg.base_url
        self.endpoint = EndpointClient(cfg, api_key=self.api_key, usage=self.usage)
        if self.api_key is None and cfg.api_key_env:
            self.api_key = os.environ.get(cfg.api_key_env) or None

    # ------------------------------------------------------------------ requests
    def describe(self) -> dict[str, Any]:
        """What the results may record: model, mode, sampling settings (no URL, no key)."""
        return {
            "kind": "openai-compatible",
            "model": self.model,
            "mode": self.mode,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **({"extra_body": self.extra_body} if self.extra_body else {}),
        }

    def complete(self, prompt: str) -> str:
        """The completion text for ``prompt`` (retrying as configured); raises
        :class:`~lrm_interp.endpoint.EndpointError`."""
        if self.mode == "chat":
            path = "/chat/completions"
            body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        else:
            path = "/completions"
            body = {"model": self.model, "prompt": prompt}
        body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        data = self.endpoint.post_json(path, body)
        try:
            return _completion_text(data, self.mode)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            self.usage.add(failures=1)
            raise EndpointError(f"{self.base_url}{path}: malformed response ({type(e).__name__}: {e})") from None

    __call__ = complete


def _completion_text(data: dict, mode: str) -> str:
    choice = data["choices"][0]
    if mode == "chat":
        msg = choice.get("message") or {}
        text = msg.get("content")
        if text is None and "text" in choice:
            text = choice["text"]
    else:
        text = choice.get("text")
    if text is None:
        raise ValueError("no text in choices[0]")
    return str(text)


def split_for_annotation(text: str, max_chars: int) -> list[str]:
    """Contiguous chunks of ``text`` (concatenated they give ``text`` back) of at most
    ``max_chars`` characters, cut between paragraphs where possible, else between sentences,
    else at white space (a single sentence longer than ``max_chars``)."""
    check_int("max_chars", max_chars, min=1)
    if len(text) <= max_chars:
        return [text] if text else []
    sents = split_sentences(text)
    # candidate cut points: sentence starts, preferring paragraph starts
    cuts = [(s.start, s.index > 0 and s.paragraph != sents[s.index - 1].paragraph) for s in sents[1:]]
    chunks, start = [], 0
    while len(text) - start > max_chars:
        limit = start + max_chars
        inside = [(c, para) for c, para in cuts if start < c <= limit]
        para_cuts = [c for c, para in inside if para]
        if para_cuts and para_cuts[-1] - start >= max_chars // 3:
            cut = para_cuts[-1]
        elif inside:
            cut = inside[-1][0]
        else:
            ws = text.rfind(" ", start + 1, limit)
            cut = ws if ws > start else limit
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    return chunks


@dataclass
class LLMAnnotator:
    """Annotates through ``complete(prompt) -> str`` (an :class:`OpenAIClient`, a local model, …).

    Args:
        complete: the text-completion callable.
        prompt_template: must contain ``{text}`` (default: :data:`VENHOFF_PROMPT`).
        max_chunk_chars: longer thinking parts are annotated in chunks of at most this many
            characters (``None``: never split).
    """

    complete: Callable[[str], str]
    prompt_template: str = VENHOFF_PROMPT
    max_chunk_chars: int | None = None

    def __post_init__(self) -> None:
        if "{text}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {text} where the thinking part goes")
        self.max_chunk_chars = check_int("max_chunk_chars", self.max_chunk_chars, min=1, optional=True)

    def prompt(self, text: str) -> str:
        # str.replace, not str.format: the template may contain other braces (JSON, LaTeX)
        return self.prompt_template.replace("{text}", text)

    def chunks(self, thinking_text: str) -> list[str]:
        if self.max_chunk_chars is None:
            return [thinking_text]
        return split_for_annotation(thinking_text, self.max_chunk_chars)

    def annotate_chunks(self, thinking_text: str) -> list[str]:
        """The markup of each chunk, in order."""
        parts = self.chunks(thinking_text)
        return [self.complete(self.prompt(p.strip())) for p in parts]

    def annotate(self, thinking_text: str) -> str:
        """The re-joined markup of all chunks."""
        return "\n".join(m.strip() for m in self.annotate_chunks(thinking_text))

    def fingerprint(self) -> str:
        """Cache key of what the output depends on: prompt, chunking, and the client's
        :meth:`describe` (model, mode, sampling) when it has one — never URL or key."""
        desc = self.complete.describe() if hasattr(self.complete, "describe") else repr(self.complete)
        payload = json.dumps([self.prompt_template, self.max_chunk_chars, desc], sort_keys=True, default=str)
        return hashlib.blake2b(payload.encode("utf-8"), digest_size=12).hexdigest()

    def describe(self) -> dict[str, Any]:
        client = self.complete.describe() if hasattr(self.complete, "describe") else {"kind": "callable"}
        return {
            "name": "llm",
            "client": client,
            "max_chunk_chars": self.max_chunk_chars,
            "prompt": "venhoff" if self.prompt_template == VENHOFF_PROMPT else "custom",
            "prompt_sha": hashlib.blake2b(self.prompt_template.encode(), digest_size=8).hexdigest(),
        }


__all__ = [
    "VENHOFF_PROMPT",
    "LLM_PROMPT",
    "OpenAIClient",
    "LLMAnnotator",
    "LLMRequestError",
    "EndpointError",
    "EndpointUnreachable",
    "Usage",
    "split_for_annotation",
    "RETRY_STATUS",
]
