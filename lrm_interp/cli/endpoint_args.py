"""The one set of OpenAI-compatible endpoint flags, shared by ``lrm-interp annotate`` and
``lrm-interp bench run`` (both send their requests through :class:`lrm_interp.endpoint.EndpointClient`).

=========================  ================================================================
``--endpoint-model NAME``  the model's name on the endpoint (what the server calls it)
``--base-url URL``         API root ending in ``/v1``
``--api-key-env VAR``      environment variable holding the key (the key itself is never a flag)
``--concurrency N``        requests in flight
``--retries N``            retries per request (429, 5xx, timeouts, dropped connections)
``--backoff S``            first retry wait, doubled per retry (capped at 30 s; Retry-After wins)
``--timeout S``            seconds per request
=========================  ================================================================

``--endpoint-model`` has its own name because ``--model`` is, everywhere else on the command
line, a *local* model (a Hugging Face folder or an alias that is loaded here); a served model
is only a string sent in each request. ``annotate --model NAME`` (the old spelling) is a
deprecated alias of it; ``bench run --backend openai --model NAME`` still works, with a note.

The numbers are range-checked by their ``argparse`` types (:mod:`lrm_interp.checks`, the
rules :class:`~lrm_interp.endpoint.EndpointConfig` applies), so a bad one ends the command
with one line naming the flag (exit status 2) whatever the backend or annotator, before any
work; the rest (the URL, the key variable) by :class:`~lrm_interp.endpoint.EndpointConfig`
(:func:`endpoint_config`), which names the flag as well. Old spellings stay as deprecated
aliases (:class:`DeprecatedAlias`: a note on stderr, then the new flag's value; a bad value is
refused before the note), e.g. ``annotate --workers`` for ``--concurrency``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from lrm_interp.checks import nonneg_int, positive_float, positive_int
from lrm_interp.cli.common import PROG, CliError
from lrm_interp.endpoint import (
    API_KEY_ENV,
    DEFAULT_BACKOFF,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    EndpointConfig,
    EndpointError,
)

#: config field → flag
FLAGS = {
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "concurrency": "--concurrency",
    "retries": "--retries",
    "backoff": "--backoff",
    "timeout": "--timeout",
    "max_backoff": "--backoff",
}


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: prints ``lrm-interp: note: --old is deprecated; use --new`` to
    stderr and stores its value where the new flag does. Its ``type`` is the new flag's, so a bad
    value is refused by argparse (one line) before the note is printed."""

    def __init__(self, option_strings, dest, *, new: str, **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{PROG}: note: {option_string} is deprecated; use {self.new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_endpoint_args(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    base_url_help: str = "API root ending in /v1, e.g. http://127.0.0.1:8000/v1",
    concurrency_help: str = "requests in flight",
    endpoint_model_help: str = "the model's name on the endpoint",
    several_models: bool = False,
    aliases: dict[str, str] | None = None,
) -> None:
    """Add the endpoint flags (module table) to ``group``. ``several_models``: ``--endpoint-model``
    may be repeated (a list; else one name). ``aliases``: ``{old flag: new flag}`` deprecated
    spellings kept working."""
    group.add_argument(
        "--endpoint-model",
        action="append" if several_models else "store",
        default=None,
        metavar="NAME",
        help=endpoint_model_help,
    )
    group.add_argument("--base-url", default=None, metavar="URL", help=base_url_help)
    group.add_argument(
        "--api-key-env",
        default=API_KEY_ENV,
        metavar="VAR",
        help="environment variable holding the API key (empty: no key; local servers need none); "
        "the key itself is never a flag nor written anywhere",
    )
    group.add_argument(
        "--concurrency",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"{concurrency_help} (default: {DEFAULT_CONCURRENCY})",
    )
    group.add_argument(
        "--retries",
        type=nonneg_int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="retries per request after 408/409/425/429/5xx, timeouts and dropped connections "
        "(0: no retry; an unreachable endpoint is reported at once, not retried)",
    )
    group.add_argument(
        "--backoff",
        type=positive_float,
        default=DEFAULT_BACKOFF,
        metavar="S",
        help=f"first retry wait in seconds, doubled per retry (capped at {DEFAULT_MAX_BACKOFF:g} s); "
        "a Retry-After header wins",
    )
    group.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="S", help="seconds per request"
    )
    for old, new in (aliases or {}).items():
        typ, metavar = _TYPES.get(new, (None, "VALUE"))
        group.add_argument(
            old,
            dest=new.lstrip("-").replace("-", "_"),
            action=DeprecatedAlias,
            new=new,
            type=typ,  # type: ignore[arg-type]  # None: no conversion, argparse's default (not in the stubs)
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"deprecated spelling of {new}",
        )


_TYPES = {
    "--endpoint-model": (None, "NAME"),
    "--concurrency": (positive_int, "N"),
    "--retries": (nonneg_int, "N"),
    "--backoff": (positive_float, "S"),
    "--timeout": (positive_float, "S"),
    "--base-url": (None, "URL"),
    "--api-key-env": (None, "VAR"),
}


def endpoint_config(a: argparse.Namespace, *, base_url: str | None = None, **overrides: Any) -> EndpointConfig:
    """The :class:`EndpointConfig` of the parsed flags (``base_url``/``overrides`` win over them);
    an invalid value becomes a :class:`CliError` naming the flag."""
    kw: dict[str, Any] = {
        "base_url": a.base_url if base_url is None else base_url,
        "api_key_env": a.api_key_env,
        "concurrency": DEFAULT_CONCURRENCY if a.concurrency is None else a.concurrency,
        "retries": a.retries,
        "backoff": a.backoff,
        "timeout": a.timeout,
        "max_backoff": max(DEFAULT_MAX_BACKOFF, a.backoff) if _finite(a.backoff) else a.backoff,
    }
    kw.update(overrides)
    try:
        return EndpointConfig(**kw)
    except ValueError as e:
        msg = " ".join(str(e).split())
        head = re.match(r"\w+", msg)
        if head and head.group(0) in FLAGS:
            msg = FLAGS[head.group(0)] + msg[head.end() :]
        raise CliError(msg) from e


def endpoint_flags_given(a: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The endpoint flags (module table) set on the command line to another value than their
    default, in table order (``skip``: flags not to report, e.g. one the command uses otherwise).
    A command that sends no request refuses them, naming them, rather than ignore them (H7-AF, BF-b)."""
    defaults = {
        "--endpoint-model": ("endpoint_model", None),
        "--base-url": ("base_url", None),
        "--api-key-env": ("api_key_env", API_KEY_ENV),
        "--concurrency": ("concurrency", None),
        "--retries": ("retries", DEFAULT_RETRIES),
        "--backoff": ("backoff", DEFAULT_BACKOFF),
        "--timeout": ("timeout", DEFAULT_TIMEOUT),
    }
    return [
        flag
        for flag, (dest, default) in defaults.items()
        if flag not in skip and getattr(a, dest, default) not in (default,)
    ]


def _finite(x: Any) -> bool:
    try:
        return float(x) == float(x) and abs(float(x)) != float("inf")
    except (TypeError, ValueError):
        return False


def endpoint_failure(e: EndpointError, what: str = "") -> CliError:
    """A :class:`CliError` (exit status 2, one line) for an endpoint failure; ``what`` says what
    was kept or how to go on."""
    return CliError(" ".join(str(e).split()) + (f"; {what}" if what else ""))


__all__ = [
    "add_endpoint_args",
    "endpoint_config",
    "endpoint_failure",
    "endpoint_flags_given",
    "DeprecatedAlias",
    "FLAGS",
]
