"""Issue 22 ("Nothing lost, nothing silent") for the benchmark harness and the endpoint clients,
and issue 21 item 3 (one OpenAI-compatible client, one set of endpoint flags).

Every server here is a real HTTP server on 127.0.0.1 started and stopped by the test; "connection
refused" is a port with nothing listening."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_run import run_cli as _rc

import lrm_interp.endpoint as E
from lrm_interp.cli.main import build_parser, main
from lrm_interp.data.annotate import LLMAnnotator, LLMRequestError, OpenAIClient, annotate_dataset
from lrm_interp.data.benchmarks import BenchItem, BenchmarkFormatError, grade, load
from lrm_interp.data.traces import ReasoningTrace
from lrm_interp.evaluation.backends import EndpointError, GenerationSettings, OpenAIBackend
from lrm_interp.evaluation.bench_score import score_outputs
from lrm_interp.testing import byte_tokenizer, tiny_model

DATA = Path(__file__).parent / "data" / "bench"


# --------------------------------------------------------------------------- a scripted local endpoint
class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):  # http.server API
        self._send(200, {}, {"object": "list", "data": [{"id": "served"}]})

    def do_POST(self):  # http.server API
        st = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with st.lock:
            st.posts.append((self.path, dict(self.headers), body))
            step = st.script.pop(0) if st.script else None
        time.sleep(st.delay)
        if step is not None:
            status, headers, payload = step
            return self._send(status, headers, payload)
        text = st.reply
        self._send(
            200,
            {},
            {
                "choices": [{"text": text, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            },
        )

    def _send(self, status, headers, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.posts: list = []
        self.script: list = []  # (status, headers, payload) answered in order before the normal reply
        self.delay = 0.0
        self.reply = "ok"
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self._th = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._th.start()

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def endpoint():
    srv = _Server()
    yield srv
    srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dead_url() -> str:
    return f"http://127.0.0.1:{_free_port()}/v1"


def _tiny_model_dir(tmp_path: Path) -> Path:
    mdir = tmp_path / "tiny"
    tiny_model("llama", seed=0).save_pretrained(mdir)
    byte_tokenizer().save_pretrained(mdir)
    return mdir


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- case 1: a refused run writes nothing
def test_refused_bench_run_leaves_the_folder_untouched(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    recs = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 3?", "answer": "5"}]
    (data / "aime.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    args = [
        "bench",
        "run",
        "--model",
        str(_tiny_model_dir(tmp_path)),
        "--tasks",
        "aime",
        "--task-data",
        str(data),
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    run = out / "tiny"
    with open(run / "generations.jsonl", "a") as f:
        f.write('{"task": "aime", "index": 9, "sam')  # a torn tail: kept as it is by a refused run
    before = _snapshot(run)
    recs[0]["problem"] = "What is 1 + 2?"  # the task file edited since the outputs were generated
    (data / "aime.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "record aime/0 was generated from another prompt" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(run) == before  # problems/aime.jsonl still matches the outputs beside it
    assert main(args[:-4] + ["3", "--out", str(out), "--quiet"]) == 2  # other settings: refused, nothing written
    assert "other settings" in capsys.readouterr().err and _snapshot(run) == before


# --------------------------------------------------------------------------- case 2: golds and field types at load
@pytest.mark.parametrize("answer", ["four", "1000", "-3", "3.5", [1], True, "", "12 or 13"])
def test_aime_gold_must_be_an_integer_0_to_999(tmp_path, answer):
    p = tmp_path / "aime.jsonl"
    p.write_text(
        json.dumps({"problem": "ok", "answer": "7"}) + "\n" + json.dumps({"problem": "x", "answer": answer}) + "\n"
    )
    with pytest.raises(
        BenchmarkFormatError,
        match=r"aime.jsonl:2: (answer .* is not an AIME answer \(an integer "
        r"0..999\)|missing field|field 'answer' is empty)",
    ):
        load("aime", p)


def test_aime_golds_are_canonical_integers(tmp_path):
    p = tmp_path / "aime.json"
    p.write_text(
        json.dumps(
            [{"problem": "a", "answer": "033"}, {"problem": "b", "answer": 7}, {"problem": "c", "answer": 999.0}]
        )
    )
    assert [it.gold for it in load("aime", p)] == ["33", "7", "999"]


def test_symbolic_gold_is_never_matched_by_an_anagram():
    item = BenchItem("aime/0", "aime", 0, "p", "four")
    assert not grade("aime", item, "</think> \\boxed{ruof}").correct  # math-verify: f·o·u·r == r·u·o·f
    assert grade("aime", item, "</think> \\boxed{four}").correct
    assert not grade("aime", item, "</think> \\boxed{4}").correct
    assert grade("aime", BenchItem("aime/1", "aime", 1, "p", "16"), "</think> \\boxed{016}").correct


def test_folio_fields_are_typed_at_load(tmp_path):
    p = tmp_path / "folio.jsonl"
    good = {"premises": ["All A are B.", "x is A."], "conclusion": "x is B.", "label": "True"}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "conclusion": ["x is B."]}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"folio.jsonl:2: field 'conclusion' must be a string, got list"):
        load("folio", p)
    p.write_text(json.dumps({**good, "premises": ["All A are B.", {"x": 1}]}) + "\n")
    with pytest.raises(
        BenchmarkFormatError,
        match=r"folio.jsonl:1: field 'premises' must be a string or a non-empty "
        r"list of strings",
    ):
        load("folio", p)
    p.write_text(json.dumps({**good, "label": ["True"]}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"folio.jsonl:1: label"):
        load("folio", p)
    p.write_text(json.dumps(good) + "\n")  # FOLIO v1's premise lists: one premise per line, no repr
    it = load("folio", p)[0]
    assert "All A are B.\nx is A." in it.prompt and "[" not in it.prompt and it.problem["conclusion"] == "x is B."


def test_bad_gold_is_a_one_line_cli_error(tmp_path, capsys):
    (tmp_path / "aime.jsonl").write_text(json.dumps({"problem": "x", "answer": "four"}) + "\n")
    (tmp_path / "runs").mkdir()
    assert (
        main(
            [
                "bench",
                "score",
                "--outputs",
                str(tmp_path / "runs"),
                "--tasks",
                "aime",
                "--task-data",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "aime.jsonl:1: answer 'four' is not an AIME answer" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- case 3: --limit, ignored files
def test_limit_must_be_positive(tmp_path, capsys):
    for bad in ("-1", "0"):
        assert (
            _rc(["bench", "run", "--model", "toy", "--tasks", "math", "--limit", bad, "--out", str(tmp_path / "o")])
            == 2
        )
        assert "argument --limit: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        load("math", limit=-1)
    assert len(load("math", limit=2, per_family=3)) == 2


def test_score_reports_files_it_ignores(tmp_path, capsys):
    root = tmp_path / "r1"
    for rel, text in {
        "outputs/aime/0.txt": "</think> \\boxed{1}",
        "outputs/aime/1.txt": "</think> \\boxed{16}",
        "outputs/aime/2.txt": "</think> \\boxed{33}",  # beyond --limit 2
        "outputs/aime/7.txt": "x",
        "outputs/aime/notes.md": "x",  # no item's output
        "outputs/AIME_2024/0.txt": "x",
    }.items():  # a second folder of the same task
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    items = {"aime": load("aime", DATA / "aime.csv", limit=2)}
    sc = score_outputs(tmp_path, items, progress=False)
    assert sorted(Path(p).relative_to(root).as_posix() for p in sc.ignored) == [
        "outputs/AIME_2024/0.txt",
        "outputs/aime/2.txt",
        "outputs/aime/7.txt",
        "outputs/aime/notes.md",
    ]
    assert sc.summary().iloc[0]["pass@1"] == 100.0 and "4 ignored files" in repr(sc)
    assert (
        main(
            [
                "bench",
                "score",
                "--outputs",
                str(tmp_path),
                "--tasks",
                "aime",
                "--task-data",
                str(DATA / "aime.csv"),
                "--limit",
                "2",
                "--quiet",
                "--no-plots",
                "--out",
                str(tmp_path / "scores"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: ignored 4 file(s)" in err and "notes.md" in err


# --------------------------------------------------------------------------- case 4: settings checked in the config
@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer"),
        ({"retries": True}, "retries must be an integer"),
        ({"timeout": 0}, "timeout must be a finite number > 0"),
        ({"timeout": float("nan")}, "timeout must be a finite"),
        ({"timeout": -5}, "timeout must be a finite number > 0"),
        ({"timeout": float("inf")}, "timeout must be a finite"),
        ({"backoff": 0}, "backoff must be a finite number > 0"),
        ({"backoff": float("nan")}, "backoff must be a finite"),
        ({"backoff": float("inf")}, "backoff must be a finite"),
        ({"max_backoff": float("inf")}, "max_backoff must be"),
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"base_url": "127.0.0.1:8000/v1"}, "base_url"),
        ({"max_backoff": 0.5}, "max_backoff must be >= backoff"),
    ],
)
def test_endpoint_settings_are_refused_in_the_config(kw, needle):
    with pytest.raises(ValueError, match=needle):
        E.EndpointConfig(**{"base_url": "http://127.0.0.1:1/v1", **kw})
    client_kw = {("max_retries" if k == "retries" else k): v for k, v in kw.items()}
    with pytest.raises(ValueError, match=needle):  # both clients: the same check
        OpenAIClient(model="m", **{"base_url": "http://127.0.0.1:1/v1", **client_kw})
    with pytest.raises(ValueError, match=needle):
        OpenAIBackend(
            kw.get("base_url", "http://127.0.0.1:1/v1"), "m", **{k: v for k, v in kw.items() if k != "base_url"}
        )


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--retries", "-1", "argument --retries: must be an integer >= 0"),
        ("--timeout", "nan", "argument --timeout: must be a finite number > 0"),
        ("--backoff", "0", "argument --backoff: must be a finite number > 0"),
        ("--concurrency", "0", "argument --concurrency: must be an integer >= 1"),
        ("--workers", "0", "argument --workers: must be an integer >= 1"),
    ],
)
def test_endpoint_flags_are_refused_by_both_commands(tmp_path, capsys, flag, value, needle):
    """Checked by the flags' argparse types: with any annotator / backend (the endpoint flags of an
    offline annotator or of --backend hf are refused too), one line, before any work."""
    src = tmp_path / "o.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": "Okay.</think>A"}) + "\n")
    url = _dead_url()
    for annotator in (["--annotator", "llm", "--endpoint-model", "m", "--base-url", url], ["--annotator", "rules"]):
        assert _rc(["annotate", *annotator, "--data", str(src), "--out", str(tmp_path / "t.jsonl"), flag, value]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "deprecated" not in err
    if flag != "--workers":  # an annotate-only alias
        for backend in (["--backend", "openai", "--base-url", url], ["--backend", "hf"]):
            assert (
                _rc(
                    [
                        "bench",
                        "run",
                        *backend,
                        "--model",
                        "m",
                        "--tasks",
                        "math",
                        "--out",
                        str(tmp_path / "b"),
                        flag,
                        value,
                    ]
                )
                == 2
            )
            err = capsys.readouterr().err
            assert needle in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


# --------------------------------------------------------------------------- case 5: an unreachable endpoint
def test_unreachable_endpoint_is_named_at_once_not_retried():
    url = _dead_url()
    t0 = time.monotonic()
    client = OpenAIClient(model="m", base_url=url)  # default retries and back-off
    with pytest.raises(E.EndpointUnreachable, match=rf"{url}: endpoint unreachable \(connection refused\)"):
        client.complete("x")
    be = OpenAIBackend(url, "m")
    with pytest.raises(E.EndpointUnreachable, match="connection refused"):
        be.generate(["a", "b", "c"], GenerationSettings(max_new_tokens=2))
    with pytest.raises(E.EndpointUnreachable):
        be.check()
    assert time.monotonic() - t0 < 3
    assert client.usage.retries == 0 and client.usage.requests == 1
    assert isinstance(client.endpoint.unreachable, ConnectionError)  # also an OSError: exit status 2 anywhere


def test_unknown_host_is_not_retried(monkeypatch):
    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    c = E.EndpointClient("http://no-such-host.invalid/v1", retries=5)
    with pytest.raises(E.EndpointUnreachable, match="no-such-host.invalid/v1: endpoint unreachable \\(cannot resolve"):
        c.post_json("/completions", {})
    assert c.usage.snapshot()["requests"] == 1


def test_unreachable_endpoint_cli_exits_2_naming_the_url_before_any_write(tmp_path, capsys):
    url = _dead_url()
    src = tmp_path / "o.jsonl"
    src.write_text(json.dumps({"prompt": "q", "response": "Okay.</think>A"}) + "\n")
    t0 = time.monotonic()
    assert (
        main(
            [
                "bench",
                "run",
                "--backend",
                "openai",
                "--base-url",
                url,
                "--endpoint-model",
                "m",
                "--tasks",
                "math",
                "--per-family",
                "2",
                "--out",
                str(tmp_path / "bench"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("lrm-interp bench run: error: " + url + ": endpoint unreachable (connection refused)")
    assert "internal error" not in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "annotate",
                "--annotator",
                "llm",
                "--endpoint-model",
                "m",
                "--base-url",
                url,
                "--data",
                str(src),
                "--out",
                str(tmp_path / "t.jsonl"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("lrm-interp annotate: error: " + url + ": endpoint unreachable (connection refused)")
    assert time.monotonic() - t0 < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]  # nothing written


def _traces(n: int) -> list[ReasoningTrace]:
    return [ReasoningTrace(f"t{i}", "Q\n<think>\n", f"Okay, step {i}. Wait, maybe not.\n</think>\nA") for i in range(n)]


def test_endpoint_gone_mid_run_stops_the_annotation(endpoint):
    """A refused connection after the endpoint has answered is a restart: retried; once the retries
    are used up the endpoint is marked down and every later request fails at once (no trace
    waits through its own retries)."""
    client = OpenAIClient(model="m", base_url=endpoint.url, max_retries=2, backoff=0.01)
    assert client.complete("x") == "ok"
    endpoint.stop()
    with pytest.raises(E.EndpointUnreachable, match="connection refused, after 3 attempts"):
        client.complete("y")
    assert client.usage.requests == 4 and client.usage.retries == 2
    t0 = time.monotonic()
    with pytest.raises(E.EndpointUnreachable, match="endpoint unreachable") as ei:  # stops, not 6 failures
        annotate_dataset(_traces(6), LLMAnnotator(client), workers=2, progress=False)
    assert time.monotonic() - t0 < 1 and client.usage.requests == 4  # no request sent any more
    run = ei.value.run  # the partial run: every trace accounted for
    assert run.stats["failed"] == 6 and all("endpoint unreachable" in m for m in run.failures.values())
    assert "endpoint unreachable" in run.stats["stopped"] and "the run stopped" in run.summary()
    assert [t.metadata["annotation_status"] for t in run.dataset] == ["failed"] * 6
    client.endpoint.reset()
    with pytest.raises(E.EndpointUnreachable):
        client.complete("z")  # tried again after reset (with its retries: it answered before)
    assert client.usage.requests == 7


def test_endpoint_gone_mid_run_stops_the_cli(endpoint, tmp_path, capsys):
    src = tmp_path / "o.jsonl"
    src.write_text(
        "".join(json.dumps({"id": t.id, "prompt": t.prompt, "response": t.response}) + "\n" for t in _traces(12))
    )
    endpoint.delay = 0.25
    out = tmp_path / "t.jsonl"
    box: dict = {}
    th = threading.Thread(
        target=lambda: box.setdefault(
            "rc",
            main(
                [
                    "annotate",
                    "--annotator",
                    "llm",
                    "--endpoint-model",
                    "m",
                    "--base-url",
                    endpoint.url,
                    "--data",
                    str(src),
                    "--out",
                    str(out),
                    "--concurrency",
                    "1",
                    "--retries",
                    "1",
                    "--backoff",
                    "0.01",
                    "--quiet",
                ]
            ),
        )
    )
    th.start()
    cache = tmp_path / "t.jsonl.cache"
    deadline = time.monotonic() + 8
    while not (cache.is_dir() and any(cache.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    endpoint.stop()
    th.join(timeout=8)
    assert box["rc"] == 2
    err = capsys.readouterr().err
    assert f"{endpoint.url}: endpoint unreachable" in err and "the run stopped" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert len(endpoint.posts) < 12 and (tmp_path / "t.jsonl.partial.jsonl").exists()


# --------------------------------------------------------------------------- issue 21 item 3: one client, one flag set
def test_one_client_one_error_type_one_status_set(endpoint):
    assert LLMRequestError is EndpointError is E.EndpointError
    client = OpenAIClient(model="m", base_url=endpoint.url)
    be = OpenAIBackend(endpoint.url, "m")
    assert isinstance(client.endpoint, E.EndpointClient) and isinstance(be.client, E.EndpointClient)
    from lrm_interp.data.annotators import llm

    assert llm.RETRY_STATUS is OpenAIBackend.RETRY_STATUS is E.RETRY_STATUS and {425, 529} <= E.RETRY_STATUS
    endpoint.script = [(529, {}, {"error": "overloaded"}), (425, {}, {"error": "too early"})]
    be = OpenAIBackend(endpoint.url, "m", retries=2, backoff=0.01)
    assert be.generate(["p"], GenerationSettings(max_new_tokens=2))[0][0].text == "ok"
    assert be.requests_sent == 3
    endpoint.script = [(404, {}, {"error": {"message": "model 'm' does not exist"}})]
    with pytest.raises(EndpointError, match=r"HTTP 404 from the server \(model 'm' does not exist\)"):
        OpenAIClient(model="m", base_url=endpoint.url, backoff=0.01).complete("x")


def test_retry_after_is_honoured_by_both(endpoint):
    for call in (
        lambda: OpenAIClient(model="m", base_url=endpoint.url, backoff=0.01).complete("x"),
        lambda: OpenAIBackend(endpoint.url, "m", backoff=0.01).generate(["x"], GenerationSettings(max_new_tokens=2)),
    ):
        endpoint.script = [(429, {"Retry-After": "1"}, {"error": "slow down"})]
        t0 = time.monotonic()
        call()
        assert 0.9 <= time.monotonic() - t0 < 5


def test_api_key_from_the_named_environment_variable(endpoint, monkeypatch):
    monkeypatch.setenv("MY_ENDPOINT_KEY", "sk-local-123")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    be = OpenAIBackend(endpoint.url, "m", api_key_env="MY_ENDPOINT_KEY")
    be.generate(["x"], GenerationSettings(max_new_tokens=2))
    OpenAIClient(model="m", base_url=endpoint.url, api_key_env="MY_ENDPOINT_KEY").complete("x")
    OpenAIClient(model="m", base_url=endpoint.url).complete("x")  # $OPENAI_API_KEY unset: no key sent
    auth = [h.get("Authorization") for _, h, _ in endpoint.posts]
    assert auth == ["Bearer sk-local-123", "Bearer sk-local-123", None]
    assert "sk-local" not in repr(E.EndpointClient(endpoint.url, api_key_env="MY_ENDPOINT_KEY"))


def _parser_of(*path: str):
    import argparse

    p = build_parser()
    for name in path:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


def test_annotate_and_bench_share_the_endpoint_flags(capsys):
    flags = ("--base-url", "--api-key-env", "--concurrency", "--retries", "--backoff", "--timeout")

    def spec(parser):
        by = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
        return {f: (by[f].default, by[f].type, by[f].metavar) for f in flags}

    assert spec(_parser_of("annotate")) == spec(_parser_of("bench", "run"))
    assert spec(_parser_of("annotate"))["--retries"][0] == E.DEFAULT_RETRIES
    a = build_parser().parse_args(["annotate", "--workers", "3", "--data", "x", "--out", "y"])
    assert a.concurrency == 3
    assert "--workers is deprecated; use --concurrency" in capsys.readouterr().err


def test_deprecated_workers_flag_still_runs(tmp_path, capsys):
    src = tmp_path / "o.jsonl"
    src.write_text(
        "".join(json.dumps({"id": t.id, "prompt": t.prompt, "response": t.response}) + "\n" for t in _traces(3))
    )
    assert (
        main(
            [
                "annotate",
                "--annotator",
                "rules",
                "--workers",
                "2",
                "--data",
                str(src),
                "--out",
                str(tmp_path / "t.jsonl"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "note: --workers is deprecated; use --concurrency" in capsys.readouterr().err
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 3


def test_bench_openai_backend_through_the_cli(endpoint, tmp_path, capsys):
    endpoint.reply = "</think> The answer is 1."
    assert (
        main(
            [
                "bench",
                "run",
                "--backend",
                "openai",
                "--base-url",
                endpoint.url,
                "--endpoint-model",
                "served",
                "--tasks",
                "math",
                "--per-family",
                "2",
                "--max-new-tokens",
                "4",
                "--concurrency",
                "2",
                "--retries",
                "1",
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "b" / "served" / "run.json").read_text())
    assert meta["backend"]["retries"] == 1 and meta["backend"]["concurrency"] == 2
    assert len(endpoint.posts) == 2
