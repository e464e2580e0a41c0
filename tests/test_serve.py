"""The OpenAI-compatible server of lrm_interp.evaluation.serve: greedy generation equal to
transformers' generate, the OpenAI response shapes, vLLM-style errors; one real socket round trip."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from lrm_interp.evaluation.generation import generate_responses
from lrm_interp.evaluation.serve import Generator, make_server
from lrm_interp.toy import load_toy_model

PROMPT = "Problem: 12 + 7 = ?\n<think>\n"


@pytest.fixture(scope="module")
def gen():
    model, tok = load_toy_model()
    return Generator(model, tok, name="toy")


def test_completion_is_greedy_generate(gen):
    status, d = gen.handle("POST", "/v1/completions", {"model": "toy", "prompt": PROMPT, "max_tokens": 12})
    assert status == 200 and d["object"] == "text_completion" and d["model"] == "toy"
    ref = generate_responses(gen.model, gen.tok, [PROMPT], max_new_tokens=12)[0]
    assert d["choices"][0]["text"] == ref
    n_prompt = len(gen.tok(PROMPT)["input_ids"])
    assert (
        d["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 12, "total_tokens": n_prompt + 12}
        or d["choices"][0]["finish_reason"] == "stop"
    )
    # stop strings cut the text; the default budget is 16 tokens, as OpenAI's
    text = d["choices"][0]["text"]
    if len(text) > 3:
        _, d2 = gen.handle("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 12, "stop": [text[2:4]]})
        assert d2["choices"][0]["text"] == text[: text.find(text[2:4])] and d2["choices"][0]["finish_reason"] == "stop"
    _, d3 = gen.handle("POST", "/v1/completions", {"prompt": [PROMPT]})
    assert d3["usage"]["completion_tokens"] <= 16


def test_chat_completion_and_models(gen):
    status, d = gen.handle(
        "POST",
        "/v1/chat/completions",
        {"model": "toy", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8},
    )
    assert status == 200 and d["object"] == "chat.completion"
    assert d["choices"][0]["message"]["role"] == "assistant"
    assert (
        d["choices"][0]["message"]["content"] == generate_responses(gen.model, gen.tok, [PROMPT], max_new_tokens=8)[0]
    )
    assert gen.handle("GET", "/health") == (200, {"status": "ok"})
    status, m = gen.handle("GET", "/v1/models")
    assert m["data"][0]["id"] == "toy" and m["data"][0]["max_model_len"] == 1024


def test_errors_are_openai_shaped(gen):
    status, d = gen.handle("POST", "/v1/completions", {"model": "gpt-4o", "prompt": "x"})
    assert status == 404 and "does not exist" in d["error"]["message"]
    assert gen.handle("POST", "/v1/completions", {"prompt": "x", "max_tokens": 0})[0] == 400
    assert gen.handle("POST", "/v1/completions", {"prompt": 3})[0] == 400
    assert gen.handle("POST", "/v1/chat/completions", {"messages": []})[0] == 400
    assert gen.handle("POST", "/v1/embeddings", {"input": "x"})[0] == 404
    assert gen.handle("POST", "/v1/completions", None)[0] == 400
    status, d = gen.handle("POST", "/v1/completions", {"prompt": "a" * 1020, "max_tokens": 16})
    assert status == 400 and "maximum context length is 1024 tokens" in d["error"]["message"]


def test_truncate_prompt_keeps_the_tail(gen):
    import torch

    cut = Generator(gen.model, gen.tok, name="toy", truncate_prompt=True)
    long_prompt = "a" * 1020 + PROMPT
    status, d = cut.handle("POST", "/v1/completions", {"prompt": long_prompt, "max_tokens": 2})
    assert status == 200 and d["usage"]["prompt_tokens"] == 1024 - 2
    ids = gen.tok(long_prompt, return_tensors="pt")["input_ids"][:, -(1024 - 2) :]
    ref = gen.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=2,
        do_sample=False,
        pad_token_id=gen.tok.pad_token_id,
    )
    assert d["choices"][0]["text"] == gen.tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)


def test_socket_round_trip(gen):
    server = make_server(gen, "127.0.0.1", 0, quiet=True)
    th = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        req = urllib.request.Request(
            base + "/v1/completions", method="POST", data=json.dumps({"prompt": PROMPT, "max_tokens": 4}).encode()
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] <= 4
        bad = urllib.request.Request(base + "/v1/completions", method="POST", data=b"{not json")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=30)
        assert e.value.code == 400 and "invalid JSON" in json.loads(e.value.read())["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()
