"""A small OpenAI-compatible server for a local transformers model (stdlib ``http.server``).

For annotation and evaluation runs against a model you have on disk, and for tests of
OpenAI-compatible clients without vLLM::

    python -m lrm_interp.evaluation.serve --model toy --port 8011
    curl -s 127.0.0.1:8011/v1/completions -d '{"model": "toy", "prompt": "2+2=", "max_tokens": 8}'

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (the chat template of the tokenizer when it has one, otherwise
the messages' contents joined by blank lines). Decoding is greedy (``temperature`` is
accepted and ignored: the server says so in ``system_fingerprint``); ``max_tokens``
(default 16, as OpenAI) and ``stop`` (string or list) are honoured; ``usage`` counts prompt
and completion tokens. A prompt that does not fit the context (prompt + ``max_tokens`` >
the model's maximum positions) is refused with HTTP 400 and vLLM's wording, or cut from the
left with ``--truncate-prompt``. Requests are served one at a time (one model, one lock);
errors are JSON ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from lrm_interp.checks import checked_arguments
from lrm_interp.model.forward import input_device

DEFAULT_MAX_TOKENS = 16


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.kind = status, kind


class Generator:
    """Greedy text generation with one model behind a lock; :meth:`handle` is the whole API
    (path + JSON body → status + JSON), so it is testable without a socket.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        name: the model id clients must send.
        max_context: maximum positions (default: the config's ``max_position_embeddings``).
        truncate_prompt: cut over-long prompts from the left instead of refusing them.
        max_tokens_cap: upper bound on ``max_tokens`` per request.
    """

    @checked_arguments
    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        max_context: int | None = None,
        truncate_prompt: bool = False,
        max_tokens_cap: int = 4096,
    ):
        self.model, self.tok, self.name = model.eval(), tokenizer, name
        cfg_len = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_context = int(max_context or cfg_len or 2048)
        self.truncate_prompt = truncate_prompt
        self.max_tokens_cap = max_tokens_cap
        self.lock = threading.Lock()
        self.counter = 0
        self.started = int(time.time())

    # ------------------------------------------------------------------ generation
    def chat_prompt(self, messages: object) -> str:
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise RequestError(400, "every message needs a string 'content' (text only)")
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    @torch.no_grad()
    def generate(self, prompt: str, max_tokens: int, stop: Sequence[str] = ()) -> tuple[str, str, int, int]:
        """``(text, finish_reason, prompt_tokens, completion_tokens)``; greedy."""
        ids = self.tok(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"]
        n_prompt = int(ids.shape[1])
        if n_prompt + max_tokens > self.max_context:
            if not self.truncate_prompt or max_tokens >= self.max_context:
                raise RequestError(
                    400,
                    f"This model's maximum context length is {self.max_context} tokens. However, "
                    f"you requested {n_prompt + max_tokens} tokens ({n_prompt} in the messages, "
                    f"{max_tokens} in the completion). Please reduce the length of the messages "
                    "or completion.",
                )
            ids = ids[:, n_prompt + max_tokens - self.max_context :]
            n_prompt = int(ids.shape[1])  # usage counts what the model saw
        dev = input_device(self.model)
        ids = ids.to(dev)
        eos = self.tok.eos_token_id
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else eos
        with self.lock:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        new = out[0, ids.shape[1] :]
        n_completion = int(new.shape[0])
        finish = "stop" if (eos is not None and n_completion and int(new[-1]) == eos) else "length"
        text = self.tok.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return text, finish, n_prompt, n_completion

    # ------------------------------------------------------------------ API
    def _params(self, body: dict) -> tuple[int, list[str]]:
        if body.get("model") not in (None, self.name):
            raise RequestError(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        mt = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
        if mt is None:
            mt = DEFAULT_MAX_TOKENS
        if not isinstance(mt, int) or mt < 1:
            raise RequestError(400, f"max_tokens must be a positive integer, got {mt!r}")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        if int(body.get("n", 1) or 1) != 1:
            raise RequestError(400, "only n=1 is supported (greedy decoding)")
        return min(mt, self.max_tokens_cap), [str(s) for s in stop]

    def handle(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        """One request: ``(HTTP status, JSON body)``."""
        path = path.split("?", 1)[0].rstrip("/")
        try:
            if method == "GET" and path in ("/health", "/v1/health"):
                return 200, {"status": "ok"}
            if method == "GET" and path == "/v1/models":
                return 200, {
                    "object": "list",
                    "data": [
                        {
                            "id": self.name,
                            "object": "model",
                            "created": self.started,
                            "owned_by": "lrm_interp",
                            "max_model_len": self.max_context,
                        }
                    ],
                }
            if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
                raise RequestError(404, f"no route {method} {path}", "NotFoundError")
            if not isinstance(body, dict):
                raise RequestError(400, "the request body must be a JSON object")
            max_tokens, stop = self._params(body)
            chat = path.endswith("chat/completions")
            prompt: object  # from the request: checked below
            if chat:
                prompt = self.chat_prompt(body.get("messages"))
            else:
                prompt = body.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                    prompt = prompt[0]
                if not isinstance(prompt, str):
                    raise RequestError(400, "'prompt' must be a string")
            text, finish, n_p, n_c = self.generate(prompt, max_tokens, stop)
            self.counter += 1
            usage = {"prompt_tokens": n_p, "completion_tokens": n_c, "total_tokens": n_p + n_c}
            common = {
                "id": f"{'chatcmpl' if chat else 'cmpl'}-{self.counter}",
                "created": int(time.time()),
                "model": self.name,
                "system_fingerprint": "lrm_interp-greedy",
                "usage": usage,
            }
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                return 200, {"object": "chat.completion", "choices": [choice], **common}
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            return 200, {"object": "text_completion", "choices": [choice], **common}
        except RequestError as e:
            return e.status, {"error": {"message": str(e), "type": e.kind, "code": e.status}}


@checked_arguments
def make_server(
    generator: Generator, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False
) -> ThreadingHTTPServer:
    """A ``ThreadingHTTPServer`` serving ``generator`` (call ``serve_forever()``)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # http.server API
            self._send(*generator.handle("GET", self.path))

        def do_POST(self) -> None:  # http.server API
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                body = json.loads(raw.decode("utf-8")) if raw else None
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                self._send(
                    400,
                    {"error": {"message": f"invalid JSON body ({e})", "type": "invalid_request_error", "code": 400}},
                )
                return
            try:
                self._send(*generator.handle("POST", self.path, body))
            except Exception as e:  # noqa: BLE001 - a server error must still answer
                self._send(500, {"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error", "code": 500}})

        def log_message(self, fmt: str, *args) -> None:  # http.server API
            if not quiet:
                sys.stderr.write(f"[serve] {self.address_string()} {fmt % args}\n")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lrm_interp.evaluation.serve",
        description="OpenAI-compatible /v1/completions and /v1/chat/completions for a local "
        "transformers model (greedy decoding).",
        epilog="example:\n  python -m lrm_interp.evaluation.serve --model toy --port 8011",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="toy", help="model directory or alias (toy, smollm2-135m, ...)")
    p.add_argument("--served-name", default=None, help="model id clients send (default: the --model value)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0 = any free port)")
    p.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:1)")
    p.add_argument("--max-context", type=int, default=None, help="context length (default: the model config's)")
    p.add_argument(
        "--truncate-prompt",
        action="store_true",
        help="cut over-long prompts from the left instead of answering HTTP 400",
    )
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Load the model, print ``serving <name> on http://HOST:PORT/v1`` and serve until SIGTERM/SIGINT."""
    a = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from lrm_interp.model.loading import load_model

    hf_logging.disable_progress_bar()
    model, tok = load_model(a.model)
    model.to(a.device)
    gen = Generator(
        model, tok, name=a.served_name or a.model, max_context=a.max_context, truncate_prompt=a.truncate_prompt
    )
    server = make_server(gen, a.host, a.port, quiet=a.quiet)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"serving {gen.name} on http://{a.host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
