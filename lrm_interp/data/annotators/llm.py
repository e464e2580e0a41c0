"""The paper's annotation path: an LLM labels the thinking part in the markup.

- :data:`VENHOFF_PROMPT`: the annotation prompt of Venhoff et al. (arXiv 2506.18167, their
  public code), the one the seed paper used with GPT-4o: the six labels with their
  definitions, the ``["label"]...["end-section"]`` format, "answer only with the annotated
  text". Only the thinking part is sent (:func:`~lrm_interp.data.annotators.base.thinking_part`).
- :class:`OpenAIClient`: a stdlib client for any OpenAI-compatible server (vLLM, SGLang,
  llama.cpp, hosted APIs): ``/chat/completions`` or ``/completions``, greedy by default,
  retries with exponential backoff (connection errors, timeouts, 408/409/429/5xx; honours
  ``Retry-After``), token and request counts in :attr:`OpenAIClient.usage`. Model, base URL
  and key come from arguments or the environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
  ``LRM_INTERP_LLM_MODEL``); the key is never part of :meth:`OpenAIClient.describe`, repr or
  any file.
- :class:`LLMAnnotator`: prompt → ``complete(prompt)`` (any callable, e.g. the client); long
  thinking parts are split at paragraph / sentence boundaries into chunks of at most
  ``max_chunk_chars`` characters, annotated one by one and re-joined, so the result goes
  through the parser and aligner as one annotation file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

from lrm_interp.data.annotators.segment import split_sentences

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

RETRY_STATUS: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class LLMRequestError(RuntimeError):
    """A request failed for good (non-retryable status, or retries exhausted); the message
    names the endpoint and the server's reason, never the key."""


@dataclass
class Usage:
    """Thread-safe counters of what a client spent."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + int(v))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                    "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class OpenAIClient:
    """Minimal OpenAI-compatible text client (stdlib only), safe to share between threads.

    Args:
        model: model name the server knows (default ``$LRM_INTERP_LLM_MODEL``).
        base_url: API root ending in ``/v1`` (default ``$OPENAI_BASE_URL`` or OpenAI's).
        api_key: bearer token (default ``$OPENAI_API_KEY``; local servers need none).
        mode: ``"chat"`` (``/chat/completions``, one user message) or ``"completions"``.
        temperature: 0 = greedy, as the paper.
        max_tokens: completion budget per request (``None``: the server's default).
        timeout: seconds per request.
        max_retries: retries after the first attempt for retryable failures.
        backoff: first wait in seconds; doubled per retry with ±25 % jitter, capped at
            ``max_backoff`` (a ``Retry-After`` header wins when present).
        extra_body: extra JSON fields for every request (``{"seed": 0}``, ``{"top_p": 1}``).
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    mode: str = "chat"
    temperature: float = 0.0
    max_tokens: int | None = None
    timeout: float = 300.0
    max_retries: int = 6
    backoff: float = 1.0
    max_backoff: float = 30.0
    extra_body: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model = self.model or os.environ.get("LRM_INTERP_LLM_MODEL")
        if not self.model:
            raise ValueError("model: give the model name (or set LRM_INTERP_LLM_MODEL)")
        self.base_url = (self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY") or None
        if self.mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {self.mode!r}")
        if self.max_retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError("max_retries and backoff must be >= 0 and timeout > 0")

    # ------------------------------------------------------------------ requests
    def describe(self) -> dict[str, Any]:
        """What the results may record: model, mode, sampling settings (no URL, no key)."""
        return {"kind": "openai-compatible", "model": self.model, "mode": self.mode, "temperature": self.temperature,
                "max_tokens": self.max_tokens, **({"extra_body": self.extra_body} if self.extra_body else {})}

    def _request(self, prompt: str) -> tuple[str, dict]:
        if self.mode == "chat":
            url = self.base_url + "/chat/completions"
            body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": prompt}]}
        else:
            url = self.base_url + "/completions"
            body = {"model": self.model, "prompt": prompt}
        body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return url, json.loads(r.read().decode("utf-8"))

    def complete(self, prompt: str) -> str:
        """The completion text for ``prompt`` (retrying as configured); raises :class:`LLMRequestError`."""
        attempt = 0
        while True:
            wait: float | None = None
            try:
                self.usage.add(requests=1)
                url, data = self._request(prompt)
                text = _completion_text(data, self.mode)
                u = data.get("usage") or {}
                self.usage.add(prompt_tokens=u.get("prompt_tokens") or 0,
                               completion_tokens=u.get("completion_tokens") or 0)
                return text
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in RETRY_STATUS or attempt >= self.max_retries:
                    self.usage.add(failures=1)
                    raise LLMRequestError(f"{self.base_url}: HTTP {e.code} from the server ({detail})"
                                          + (f" after {attempt + 1} attempts" if attempt else "")) from None
                wait = _retry_after(e)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, http.client.HTTPException) as e:
                if attempt >= self.max_retries:
                    self.usage.add(failures=1)
                    raise LLMRequestError(f"{self.base_url}: no answer after {attempt + 1} attempts "
                                          f"({getattr(e, 'reason', e)})") from None
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.usage.add(failures=1)
                raise LLMRequestError(f"{self.base_url}: malformed response ({e})") from None
            attempt += 1
            self.usage.add(retries=1)
            if wait is None:
                wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
            time.sleep(wait)

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


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only for the message
        raw = ""
    try:
        d = json.loads(raw)
        msg = d.get("error", d)
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
        raw = str(msg)
    except (ValueError, AttributeError):
        pass
    return " ".join(raw.split())[:200] or e.reason or "no detail"


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    v = e.headers.get("Retry-After") if e.headers else None
    try:
        return min(60.0, max(0.0, float(v))) if v is not None else None
    except ValueError:
        return None


def split_for_annotation(text: str, max_chars: int) -> list[str]:
    """Contiguous chunks of ``text`` (concatenated they give ``text`` back) of at most
    ``max_chars`` characters, cut between paragraphs where possible, else between sentences,
    else at white space (a single sentence longer than ``max_chars``)."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
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
        if self.max_chunk_chars is not None and self.max_chunk_chars <= 0:
            raise ValueError(f"max_chunk_chars must be positive, got {self.max_chunk_chars}")

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
        return {"name": "llm", "client": client, "max_chunk_chars": self.max_chunk_chars,
                "prompt": "venhoff" if self.prompt_template == VENHOFF_PROMPT else "custom",
                "prompt_sha": hashlib.blake2b(self.prompt_template.encode(), digest_size=8).hexdigest()}


__all__ = ["VENHOFF_PROMPT", "LLM_PROMPT", "OpenAIClient", "LLMAnnotator", "LLMRequestError", "Usage",
           "split_for_annotation", "RETRY_STATUS"]
