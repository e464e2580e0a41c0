"""Cases of the tenth hostile probe run (issue 22, "nothing lost, nothing silent"), part C: patch
scales that underflow or overflow (H11-ALPHA, H11-FAL), a server that answers but is not the API
(H11-NAPI), ``--base-url`` wording (H11-URLc) and ``attribution.json`` read leniently (H11-AJS)."""

from __future__ import annotations

import re
import shutil
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.attribution.atp import check_alphas
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.results import Attribution
from lrm_interp.endpoint import EndpointClient, EndpointNotAPI, _api_error, _excerpt, check_base_url


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> Path:
    """One gold toy trace per family."""
    return toy_gold(tmp_path_factory.mktemp("h11c_gold"))


# --------------------------------------------------------------------------- H11-ALPHA / H11-FAL
@pytest.mark.parametrize("alpha", [1e308, 3.5e38, 1e-40, 1e-300])
def test_a_patch_scale_outside_float32_is_refused_in_the_one_check(alpha):
    """The patch α·û goes through a float32 mask: α above its largest value overflowed after the model
    loaded ("internal error"), α below its smallest normal vanished. One rule
    (``config.check_patch_alpha``) refuses both, for ``check_alphas`` and ``AttributionConfig``."""
    word = "at most 3.4e+38" if alpha > 1 else "at least 1.18e-38"
    with pytest.raises(ValueError, match=re.escape(f"alpha must be {word}")):
        check_alphas([1.0, alpha])
    with pytest.raises(ValueError, match=re.escape(f"patch_alpha must be {word}")):
        AttributionConfig(method="patching", patch_alpha=alpha)
    assert check_alphas([3.4e38, 1.2e-38]) == (3.4e38, 1.2e-38)


@pytest.mark.parametrize("cmd", ["faithfulness", "attribute"])
def test_an_overflowing_alpha_is_refused_before_the_model_loads(tmp_path, capsys, gold, cmd):
    out = tmp_path / "F"
    argv = (
        ["faithfulness", "--alpha", "1e308", "--max-spans", 1, "--top-k", 3]
        if cmd == "faithfulness"
        else ["attribute", "--method", "patching", "--patch-alpha", "1e308"]
    )
    rc = _rc([*argv, "--model", "toy", "--data", gold, "--out", out, "--sites", r"layers\.3\.", "--quiet"])
    err = _err_line(capsys)
    assert rc == 2 and "internal error" not in err, err
    flag = "--alpha" if cmd == "faithfulness" else "--patch-alpha"
    assert f"{flag} must be at most 3.4e+38" in err and "got 1e+308" in err, err
    assert not out.exists()  # no AP/partial/ left behind


def test_faithfulness_refuses_an_alpha_whose_patch_changes_no_loss(tmp_path, capsys, gold):
    """``--alpha 1e-3`` on the toy model: every real effect of a behaviour was exactly 0; the table
    held NaN Spearman and relative errors of 1e292, exit 0. Now refused naming the alpha, no file written."""
    out = tmp_path / "F"
    rc = _rc(
        ["faithfulness", "--model", "toy", "--data", gold, "--out", out, "--quiet", "--max-spans", 1]
        + ["--top-k", 3, "--sites", r"layers\.3\.", "--alpha", "1e-9", 1]
    )
    err = _err_line(capsys)
    assert rc == 2, err
    assert "the patch at alpha 1e-09 changes no span loss of behaviour" in err and "use a larger alpha" in err, err
    assert not out.exists()


def test_attribute_patching_refuses_an_all_zero_ranking_and_leaves_no_partials(tmp_path, capsys, gold):
    """``attribute --method patching --patch-alpha 1e-9`` wrote an all-zero ranking, exit 0. Now
    refused; the run's own partials (keyed by that alpha, which would refuse the rerun with a larger
    one as "other settings") are removed, so the same --out works with a valid alpha."""
    out = tmp_path / "AP"
    base = ["attribute", "--model", "toy", "--data", gold, "--out", out, "--method", "patching"]
    base += ["--sites", r"layers\.3\.mlp", "--quiet"]
    assert _rc([*base, "--patch-alpha", "1e-9"]) == 2
    err = _err_line(capsys)
    assert "the patch at alpha 1e-09 changes no span loss" in err, err
    assert not out.exists()
    assert _rc([*base, "--patch-alpha", 1]) == 0
    assert (out / "scores.csv").is_file()


# --------------------------------------------------------------------------- H11-NAPI
class _NotFound(BaseHTTPRequestHandler):
    """A web framework without the API routes: every path is ``{"detail": "Not Found"}`` (vLLM's
    FastAPI answers a base URL without /v1 like that)."""

    def log_message(self, *a):  # quiet
        pass

    def _nf(self):
        if self.command == "POST":
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b'{"detail": "Not Found"}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _nf


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass


@pytest.fixture
def web_server(tmp_path):
    """``python -m http.server``: a static file server (GET: an HTML 404 page, POST: an HTML 501 page)."""
    root = tmp_path / "www"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def not_found_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_a_server_that_is_not_the_api_is_named_before_anything_is_written(tmp_path, capsys, web_server, gold):
    """``--base-url`` of a static web server: the HTML error page went into the one-line error with
    "run again to resume", after ``bench run`` had written its run folder and ``annotate`` its partials."""
    br = tmp_path / "BR"
    rc = _rc(
        ["bench", "run", "--endpoint-model", "m", "--backend", "openai", "--base-url", web_server, "--tasks", "math"]
        + ["--per-family", 1, "--out", br, "--quiet"]
    )
    err = _err_line(capsys)
    assert rc != 0 and "is not an OpenAI-compatible API" in err and web_server in err, err
    assert "GET /models answered HTTP 404 with an HTML page titled 'Error response'" in err, err
    assert "resume" not in err and "<" not in err, err
    assert not br.exists()
    out = tmp_path / "u.jsonl"
    rc = _rc(
        ["annotate", "--annotator", "llm", "--data", gold, "--out", out, "--endpoint-model", "m"]
        + ["--base-url", web_server, "--quiet"]
    )
    err = _err_line(capsys)
    assert rc != 0 and "is not an OpenAI-compatible API" in err and "resume" not in err, err
    assert not list(tmp_path.glob("u.*")), err  # no partials, no cache, no report


def test_a_framework_not_found_answer_is_no_api(not_found_server):
    """``{"detail": "Not Found"}`` at /models (a base URL without /v1) is refused by the check; at the
    first POST (a caller that skipped the check) too, as :class:`EndpointNotAPI`; an API's own 404
    (``{"error": ...}``: a model that is not served) stays the server's word."""
    client = EndpointClient(not_found_server, retries=0)
    with pytest.raises(EndpointNotAPI, match=r"GET /models answered HTTP 404 with '\{\"detail\": \"Not Found\"\}'"):
        client.check()
    with pytest.raises(EndpointNotAPI, match=r"POST /completions answered HTTP 404"):
        client.post_json("/completions", {"prompt": "x"})
    assert _api_error(b'{"error": {"message": "model m does not exist"}}')
    assert _excerpt(b"<!DOCTYPE HTML>\n<html><head><title>Error\n response</title>") == (
        "an HTML page titled 'Error response'"
    )


# --------------------------------------------------------------------------- H11-URLc
def test_base_url_scheme_is_case_insensitive_and_a_blank_in_the_path_is_named():
    assert check_base_url("HTTP://127.0.0.1:9/v1/") == "http://127.0.0.1:9/v1"
    assert check_base_url("Https://example.org/v1") == "https://example.org/v1"
    with pytest.raises(
        ValueError, match=r"^--base-url has a blank in its path: 'http://127.0.0.1:9/v 1'; write it as %20"
    ):
        check_base_url("http://127.0.0.1:9/v 1", "--base-url")
    with pytest.raises(ValueError, match="has no valid host name"):
        check_base_url("http://a b/v1", "--base-url")


# --------------------------------------------------------------------------- H11-AJS
@pytest.fixture(scope="module")
def attribution_dir(tmp_path_factory, gold) -> Path:
    out = tmp_path_factory.mktemp("h11c_attr") / "A"
    assert (
        _rc(["attribute", "--model", "toy", "--data", gold, "--out", out, "--sites", r"layers\.3\.mlp", "--quiet"]) == 0
    )
    return out


def test_attribution_json_is_read_with_the_strict_reader(tmp_path, attribution_dir):
    """``attribution.json`` was read by ``json.loads``: a key twice (the last winning) and ``NaN``
    were accepted, and a UTF-8 BOM refused. Now the strict reader of every other record."""
    text = (attribution_dir / "attribution.json").read_text(encoding="utf-8")
    assert '"k_context": 5' in text and '"patch_alpha": 1.0' in text

    def variant(name: str, new: str | bytes) -> Path:
        d = tmp_path / name
        shutil.copytree(attribution_dir, d)
        p = d / "attribution.json"
        p.write_bytes(new if isinstance(new, bytes) else new.encode("utf-8"))
        return d

    bom = variant("bom", b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert Attribution.load(bom).provenance["settings"]["k_context"] == 5
    dup = variant("dup", text.replace('"k_context": 5', '"k_context": 5, "k_context": 3', 1))
    with pytest.raises(ValueError, match=r"attribution\.json: .*k_context"):
        Attribution.load(dup)
    nan = variant("nan", text.replace('"patch_alpha": 1.0', '"patch_alpha": NaN', 1))
    with pytest.raises(ValueError, match=r"attribution\.json: .*NaN"):
        Attribution.load(nan)
    with pytest.raises(ValueError, match=r"attribution\.json: not a JSON object \(list\)"):
        Attribution.load(variant("list", "[1]"))


def test_a_nan_in_a_provenance_is_saved_as_null(tmp_path, attribution_dir):
    """What ``save`` writes, ``load`` reads: a non-finite provenance value is written as ``null``."""
    res = Attribution.load(attribution_dir)
    odd = Attribution(
        res.behaviors, res.sites, res.scores, res.method, res.vectors, {**res.provenance, "x": float("nan")}
    )
    odd.save(tmp_path / "B")
    assert Attribution.load(tmp_path / "B").provenance["x"] is None
    odd.save(tmp_path / "B", overwrite=True)  # the same result again: recognised as this one's
