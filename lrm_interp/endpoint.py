"""The one OpenAI-compatible HTTP client of lrm_interp (stdlib only).

Both the LLM annotator (:class:`lrm_interp.data.annotators.llm.OpenAIClient`) and the benchmark
backend (:class:`lrm_interp.evaluation.backends.OpenAIBackend`) send their requests through
:class:`EndpointClient`, so they share one behaviour:

- **settings** in one validated :class:`EndpointConfig` (base URL, key variable, timeout,
  retries, back-off, requests in flight): a negative retry count, a non-positive, NaN or
  infinite timeout / back-off, a URL that is not ``http(s)://`` fail at construction with a
  ``ValueError`` naming the field (the range checks are :mod:`lrm_interp.checks`', the ones
  the command line's flags use);
- **retries** with exponential back-off (``backoff · 2^k``, ±25 % jitter, capped at
  ``max_backoff``) on :data:`RETRY_STATUS`, read timeouts and dropped connections; a
  ``Retry-After`` header (seconds or an HTTP date) replaces the computed wait;
- **unreachable endpoints fail fast**: a refused connection, an unknown host, an unreachable
  network, a connect timeout or a TLS failure on an endpoint that has never answered is not
  retried like a 429 — :class:`EndpointUnreachable` names the URL at the first failure. Once
  the endpoint has answered, a refused connection is a restart and is retried; when the
  retries run out the client marks the endpoint down and every later request fails at once
  with the same error (:attr:`EndpointClient.unreachable`, :meth:`EndpointClient.reset`), so
  a long run stops instead of failing item after item;
- **one error type**, :class:`EndpointError` (message: URL, HTTP status and the server's
  reason; never the key), :class:`EndpointUnreachable` a subclass (also a ``ConnectionError``);
- the **API key** from an environment variable (``api_key_env``, default ``OPENAI_API_KEY``)
  unless given; it is never part of a repr, a description or any file;
- **counts** of requests, retries, failures and tokens in a thread-safe :class:`Usage`.
"""

from __future__ import annotations

import email.utils
import errno
import http.client
import json
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from lrm_interp.checks import check_float, check_int

#: HTTP statuses retried with back-off (everything else fails at once with the server's message)
RETRY_STATUS: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
#: "no such route / method" answers: before any request succeeded and without an API error body,
#: the URL is not the API (H11-NAPI)
NO_ROUTE_STATUS: frozenset[int] = frozenset({404, 405, 501})
API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT = 600.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 30.0
DEFAULT_CONCURRENCY = 8
#: the longest ``Retry-After`` honoured (seconds)
MAX_RETRY_AFTER = 300.0
#: timeout of :meth:`EndpointClient.check` (seconds; at most the request timeout)
CHECK_TIMEOUT = 10.0

_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EADDRNOTAVAIL,
    getattr(errno, "EHOSTDOWN", -1),
    getattr(errno, "ENETDOWN", -1),
}


class EndpointError(RuntimeError):
    """A request to an endpoint failed for good (a status that is not retried, retries used up,
    an unusable answer). The message names the URL and the server's reason, never the key."""


class EndpointUnreachable(EndpointError, ConnectionError):
    """No connection to the endpoint at all (refused, unknown host, unreachable network, connect
    timeout, TLS failure): raised at the first failure on an endpoint that never answered, or once
    the retries are used up on one that did; the message names the URL."""


class EndpointNotAPI(EndpointError):
    """The server answers, but not as an OpenAI-compatible API: a page that is not JSON, or "no such
    route" (HTTP 404 / 405 / 501) before any request succeeded (a base URL without ``/v1``, another
    service on the port, H11-NAPI). Running again cannot help: the URL must change."""


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
            return {
                "requests": self.requests,
                "retries": self.retries,
                "failures": self.failures,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            }


def _masked(url: str) -> str:
    """``url`` with what may be a password shown as ``***``: everything after the user name up to
    the last ``@`` (``http://user:***@host/v1``; errors never echo a password)."""
    m = re.match(r"^([^:/?#]*://)([^:@]*)(:?)(.*)@", url, re.S)
    if m is None:
        return url
    scheme, user, colon = m.group(1), m.group(2), m.group(3)
    return f"{scheme}{user}{':***' if colon else ''}@{url[m.end() :]}"


def check_base_url(url: object, name: str = "base_url") -> str:
    """``url`` stripped of blanks and a trailing ``/``, its scheme lower-cased (``HTTP://`` is
    ``http://``), if it is an ``http://`` / ``https://`` API root (parsed with
    ``urllib.parse.urlsplit``); else ``ValueError`` starting with ``name`` and naming the value:
    another scheme, no host, a malformed host (``http://[::1/v1``), a blank in the path, a port that is not
    1..65535, a query or fragment (the request paths are appended to it), and credentials
    (``user:secret@host``: urllib never sends them; the key goes in an environment variable,
    ``api_key_env``; the password is shown as ``***``). They were found only by the first request,
    whose message named neither the flag nor the problem (H10-URL)."""
    from urllib.parse import urlsplit

    example = "such as http://127.0.0.1:8000/v1"
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url.strip(), re.I):
        shown = _masked(url) if isinstance(url, str) else url
        raise ValueError(f"{name} must be an http:// or https:// URL {example}, got {shown!r}")
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest  # the scheme is case-insensitive (RFC 3986 §3.1): HTTP:// is http:// (H11-URLc)
    shown = _masked(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port that is no number
        raise ValueError(f"{name} is not a valid URL ({e}): {shown!r}; give one {example}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{name} must not hold credentials (user:password@): {shown!r}; they are never sent. Put the API key in "
            f"an environment variable and name it (--api-key-env VAR on the command line, api_key_env= in Python; "
            f"default ${API_KEY_ENV})"
        )
    if not parts.hostname or re.search(r"\s", parts.netloc):
        raise ValueError(f"{name} has no valid host name: {shown!r}; give one {example}")
    if re.search(r"\s", url):
        raise ValueError(f"{name} has a blank in its path: {shown!r}; write it as %20, or give the API root {example}")
    if port == 0:
        raise ValueError(f"{name}: port 0 is no port a server listens on: {shown!r}; give one in 1..65535")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(
            f"{name} must be the API root without a query or fragment ('?...', '#...'): {shown!r}; the request "
            f"paths (/chat/completions) are appended to it"
        )
    return url


@dataclass(frozen=True)
class EndpointConfig:
    """The settings of an :class:`EndpointClient`, validated in full at construction.

    Args:
        base_url: API root ending in ``/v1`` (default ``$OPENAI_BASE_URL``, else OpenAI's);
            ``http://`` or ``https://``; a trailing ``/`` is dropped (:func:`check_base_url`:
            a malformed host, a port outside 1..65535, credentials, a query are refused).
        api_key_env: environment variable holding the key (``""``: no key).
        timeout: seconds per request (> 0).
        retries: retries after the first attempt (>= 0) for :data:`RETRY_STATUS`, read timeouts
            and dropped connections of an endpoint that has answered before.
        backoff: first wait in seconds (> 0), doubled per retry (±25 % jitter).
        max_backoff: cap of one wait (>= ``backoff``); a ``Retry-After`` header wins (up to
            :data:`MAX_RETRY_AFTER`).
        concurrency: requests in flight at most (>= 1), over all threads using the client.
    """

    base_url: str | None = None
    api_key_env: str = API_KEY_ENV
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    concurrency: int = DEFAULT_CONCURRENCY

    def __post_init__(self) -> None:
        from_env = self.base_url is None and bool(os.environ.get(BASE_URL_ENV))
        url = self.base_url if self.base_url is not None else (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)
        name = f"${BASE_URL_ENV} (the default base_url)" if from_env else "base_url"
        object.__setattr__(self, "base_url", check_base_url(url, name))
        if not isinstance(self.api_key_env, str) or (
            self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env)
        ):
            raise ValueError(f"api_key_env must name an environment variable (or be empty), got {self.api_key_env!r}")
        # seconds: finite and > 0; counts: integers (lrm_interp.checks, the rule of every other setting)
        object.__setattr__(self, "timeout", check_float("timeout", self.timeout, min=0.0, min_open=True))
        object.__setattr__(self, "retries", check_int("retries", self.retries, min=0))
        object.__setattr__(self, "backoff", check_float("backoff", self.backoff, min=0.0, min_open=True))
        mb = check_float("max_backoff", self.max_backoff, min=0.0, min_open=True)
        if mb < self.backoff:
            raise ValueError(f"max_backoff must be >= backoff ({self.backoff}), got {self.max_backoff!r}")
        object.__setattr__(self, "max_backoff", mb)
        object.__setattr__(self, "concurrency", check_int("concurrency", self.concurrency, min=1))


class EndpointClient:
    """POST JSON to an OpenAI-compatible endpoint with the behaviour of the module docs; safe to
    share between threads (at most ``config.concurrency`` requests in flight).

    ``EndpointClient(config)`` or ``EndpointClient(base_url, retries=..., ...)`` (the fields of
    :class:`EndpointConfig`). ``api_key``: the key itself (default: ``$api_key_env``).
    ``usage``: a :class:`Usage` to count into (default: a new one)."""

    def __init__(
        self,
        config: EndpointConfig | str | None = None,
        *,
        api_key: str | None = None,
        usage: Usage | None = None,
        **settings: Any,
    ):
        if isinstance(config, EndpointConfig):
            if settings:
                raise TypeError("give either an EndpointConfig or keyword settings, not both")
            self.config = config
        else:
            self.config = EndpointConfig(base_url=config, **settings)
        if api_key is None and self.config.api_key_env:
            api_key = os.environ.get(self.config.api_key_env) or None
        self._api_key = api_key or None
        self.usage = usage if usage is not None else Usage()
        self._slots = threading.BoundedSemaphore(self.config.concurrency)
        self._lock = threading.Lock()
        self._reached = False
        #: a POST has had a JSON answer: a later 404 is the server's word on one request, not a wrong URL
        self._answered = False
        self._down: EndpointUnreachable | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"EndpointClient({c.base_url!r}, retries={c.retries}, backoff={c.backoff}, timeout={c.timeout}, "
            f"concurrency={c.concurrency}, key={'set' if self._api_key else 'none'})"
        )

    @property
    def base_url(self) -> str:
        return str(self.config.base_url)

    @property
    def has_key(self) -> bool:
        return self._api_key is not None

    @property
    def unreachable(self) -> EndpointUnreachable | None:
        """The error that marked the endpoint down (every request now fails with it), else ``None``."""
        return self._down

    def reset(self) -> None:
        """Forget that the endpoint was down (try it again)."""
        with self._lock:
            self._down = None

    # ------------------------------------------------------------------ requests
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _mark_down(self, reason: str) -> EndpointUnreachable:
        err = EndpointUnreachable(
            f"{self.base_url}: endpoint unreachable ({reason}); is the server running and is the URL right?"
        )
        with self._lock:
            if self._down is None:
                self._down = err
        return err

    def _not_api(self, what: str) -> EndpointNotAPI:
        """:class:`EndpointNotAPI` naming the base URL and ``what`` answered (no resume advice: the URL must change)."""
        return EndpointNotAPI(
            f"{self.base_url}: the server answers but is not an OpenAI-compatible API ({what}); "
            "is the URL the API root (e.g. ending in /v1)?"
        )

    def _raise_if_down(self) -> None:
        down = self._down
        if down is not None:
            raise EndpointUnreachable(str(down))

    def check(self) -> None:
        """One ``GET <base_url>/models`` (timeout at most :data:`CHECK_TIMEOUT`): an API's answer
        means the endpoint is there; no connection raises :class:`EndpointUnreachable` naming the URL;
        an answer that is no API's — a body that is not JSON (an HTML page: its title is quoted, never
        the page), or a web framework's "no such route" (HTTP 404 / 405 / 501 without an API error
        body) — raises :class:`EndpointNotAPI` (a busy server's :data:`RETRY_STATUS` page and an
        empty body are left to the requests). Cheap; run it before a long job."""
        self._raise_if_down()
        req = urllib.request.Request(self.base_url + "/models", headers=self._headers(), method="GET")
        try:
            with urllib.request.urlopen(req, timeout=min(self.config.timeout, CHECK_TIMEOUT)) as r:
                raw = r.read()
            if _json_value(raw) is None:
                raise self._not_api(f"GET /models answered HTTP {r.status} with {_excerpt(raw)}")
        except urllib.error.HTTPError as e:
            try:
                raw = e.read()
            except Exception:  # noqa: BLE001 - the body only tells what answered
                raw = b""
            # a page that is no JSON, or a web framework's "no such route" ({"detail": "Not Found"}); a
            # busy / starting server's proxy page (RETRY_STATUS) and an empty body are left to the requests
            bad = _json_value(raw) is None or (e.code in NO_ROUTE_STATUS and not _api_error(raw))
            if e.code not in RETRY_STATUS and raw.strip() and bad:
                raise self._not_api(f"GET /models answered HTTP {e.code} with {_excerpt(raw)}") from None
        except urllib.error.URLError as e:
            unreachable, reason = _classify(e.reason)
            if unreachable:
                raise self._mark_down(reason) from None
            return  # reached, then something else went wrong: the real requests will say what
        except (TimeoutError, OSError, http.client.HTTPException):
            return  # connected (the read failed): reachable
        self._reached = True

    def post_json(self, path: str, body: dict) -> dict:
        """POST ``body`` to ``base_url + path``; the decoded JSON object of the answer. Retries as the
        module docs say; raises :class:`EndpointError` (:class:`EndpointUnreachable`) naming the URL."""
        url = self.base_url + path
        data = json.dumps(body).encode("utf-8")
        attempt = 0
        while True:
            self._raise_if_down()
            with self._slots:
                self.usage.add(requests=1)
                outcome = self._attempt(url, data)
            if isinstance(outcome, dict):
                u = outcome.get("usage")
                if isinstance(u, dict):
                    self.usage.add(
                        prompt_tokens=u.get("prompt_tokens") or 0, completion_tokens=u.get("completion_tokens") or 0
                    )
                return outcome
            kind, reason, wait = outcome
            last = attempt >= self.config.retries
            if kind == "not_api":
                self.usage.add(failures=1)
                raise self._not_api(f"POST {path} answered {reason}")
            if kind == "fatal" or (kind == "transient" and last):
                self.usage.add(failures=1)
                tail = f" (failed after {attempt + 1} attempts)" if attempt else ""
                raise EndpointError(f"{url}: {reason}{tail}")
            if kind == "unreachable" and (last or not self._reached):
                self.usage.add(failures=1)
                raise self._mark_down(reason + (f", after {attempt + 1} attempts" if attempt else ""))
            attempt += 1
            self.usage.add(retries=1)
            if wait is None:
                wait = min(self.config.max_backoff, self.config.backoff * 2 ** (attempt - 1)) * random.uniform(
                    0.75, 1.25
                )
            time.sleep(wait)

    def _attempt(self, url: str, data: bytes) -> dict | tuple[str, str, float | None]:
        """One request: the JSON object, or ``(kind, reason, wait)`` with kind ``fatal`` (never
        retried), ``transient`` (retried) or ``unreachable`` (no connection)."""
        req = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            self._reached = True
            try:
                body = e.read()
            except Exception:  # noqa: BLE001 - the body is only for the message
                body = b""
            if not self._answered and e.code in NO_ROUTE_STATUS and not _api_error(body):
                return "not_api", f"HTTP {e.code} with {_excerpt(body)}", None
            reason = f"HTTP {e.code} from the server ({_error_detail(body, e)})"
            if e.code not in RETRY_STATUS:
                return "fatal", reason, None
            return "transient", reason, _retry_after(e.headers)
        except urllib.error.URLError as e:
            unreachable, reason = _classify(e.reason)
            return ("unreachable" if unreachable else "transient"), reason, None
        except TimeoutError:
            self._reached = True
            return "transient", f"no answer within the {self.config.timeout:g} s timeout", None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            self._reached = True
            return "transient", f"connection dropped ({type(e).__name__}: {e})", None
        self._reached = True
        out = _json_value(raw)
        if out is None:
            return "not_api", f"HTTP 200 with {_excerpt(raw)}, not JSON", None
        if not isinstance(out, dict):
            return "fatal", f"the answer is not a JSON object ({type(out).__name__})", None
        self._answered = True
        return out


def _classify(reason: Any) -> tuple[bool, str]:
    """``(unreachable, text)`` for the ``reason`` of a ``URLError`` (a connection-level failure)."""
    if isinstance(reason, socket.gaierror):
        return True, f"cannot resolve the host name: {reason.strerror or reason}"
    if isinstance(reason, ConnectionRefusedError):
        return True, "connection refused"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return True, "connection timed out"
    if isinstance(reason, ssl.SSLError):
        return True, f"TLS failure: {getattr(reason, 'reason', None) or reason}"
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS:
        return True, reason.strerror or str(reason)
    if isinstance(reason, OSError):
        return False, f"connection failed ({type(reason).__name__}: {reason})"
    return True, str(reason)  # e.g. "unknown url type"


def _json_value(raw: bytes) -> Any:
    """The JSON value of an answer's body, or ``None`` when it is none (not UTF-8, not JSON, empty)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _api_error(raw: bytes) -> bool:
    """Whether an error answer is an API's: a JSON object with an ``error`` or ``message`` entry
    (OpenAI's ``{"error": {...}}``, vLLM's ``{"object": "error", "message": ...}``); a web
    framework's ``{"detail": "Not Found"}``, an HTML page or an empty body is not."""
    v = _json_value(raw)
    return isinstance(v, dict) and ("error" in v or "message" in v)


def _excerpt(raw: bytes) -> str:
    """One short line telling what a non-API answer was: an HTML page's ``<title>`` (never the page),
    else the body's first 80 characters, blanks collapsed; ``"an empty body"`` when there is none."""
    text = raw[:4096].decode("utf-8", "replace")
    m = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
    if m:
        return f"an HTML page titled {' '.join(m.group(1).split())[:80]!r}"
    if re.match(r"\s*<", text):
        return "an HTML page"
    one = " ".join(text.split())
    return f"{one[:80] + ('…' if len(one) > 80 else '')!r}" if one else "an empty body"


def _error_detail(body: bytes, e: urllib.error.HTTPError) -> str:
    """The server's reason in an error answer: a JSON error's message, an HTML page's title
    (:func:`_excerpt`, never the page), else the body's first 300 characters."""
    raw = body.decode("utf-8", "replace")
    if re.match(r"\s*<", raw):
        return _excerpt(body)
    try:
        d = json.loads(raw)
        msg = d.get("error", d)
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
        raw = str(msg)
    except (ValueError, AttributeError):
        pass
    return " ".join(raw.split())[:300] or str(e.reason or "") or "no detail"


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), capped at
    :data:`MAX_RETRY_AFTER`; ``None`` without a usable header."""
    v = headers.get("Retry-After") if headers else None
    if v is None:
        return None
    try:
        secs = float(v)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - time.time()
    if not math.isfinite(secs):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, secs))


__all__ = [
    "check_base_url",
    "EndpointClient",
    "EndpointConfig",
    "EndpointError",
    "EndpointUnreachable",
    "EndpointNotAPI",
    "Usage",
    "RETRY_STATUS",
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_CONCURRENCY",
    "MAX_RETRY_AFTER",
    "CHECK_TIMEOUT",
]
