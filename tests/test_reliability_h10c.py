"""Cases of the ninth hostile probe run (issue 22, "nothing lost, nothing silent"), part C: a bits
allocation of another model applied partially (H10-BAM), ``BitAllocation.load`` accepting values
with no meaning (H10-BAV) and giving raw Python errors (H10-BAL), calibration rows longer than the
model's context (H10-CLX) and malformed ``--base-url`` values (H10-URL)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.model.provenance import WeightsMismatchError, weights_fingerprint
from lrm_interp.protect.bit_allocation import (
    FORMAT,
    BitAllocation,
    allocate_bits,
    quantization_errors,
    quantize_allocation_,
    uniform_allocation,
)


@pytest.fixture(scope="module")
def toy():
    """The toy model and tokenizer (loaded once; tests quantize copies)."""
    from lrm_interp.model.loading import load_model

    return load_model("toy")


@pytest.fixture(scope="module")
def allocs(tmp_path_factory) -> dict[str, Path]:
    """``bits --sensitivity none --budget 3.5`` of the toy model (``toy.json``) and of a two-layer
    tiny model (``other.json``, its folder ``other``)."""
    from lrm_interp.testing import byte_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("h10c_bits")
    other = d / "other"
    tiny_model("llama", hidden=64, intermediate=128, seed=5).save_pretrained(other)
    byte_tokenizer().save_pretrained(other)
    for name, model in (("toy.json", "toy"), ("other.json", other)):
        assert (
            _rc(["bits", "--model", model, "--sensitivity", "none", "--budget", 3.5, "--out", d / name, "--quiet"]) == 0
        )
    return {"dir": d, "toy": d / "toy.json", "other": d / "other.json", "other_model": other}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ------------------------------------------------------------------ H10-BAM
def test_an_allocation_records_its_model_and_another_models_is_refused(toy, allocs):
    """``bits.json`` recorded no model: the two-layer model's allocation quantized layers 0 and 1 of the
    four-layer toy model and left 2 and 3 in full precision, without a word. It records the model now
    (name, weights fingerprint, as masks do); applying it to another model is refused before any weight
    changes, naming the file and both models."""
    model, _ = toy
    d = json.loads(allocs["toy"].read_text())
    assert d["format"] == FORMAT == "lrm_interp.bits/2"
    assert d["model"] == {"name": model.config._name_or_path, "weights_fingerprint": weights_fingerprint(model)}
    a = BitAllocation.load(allocs["other"])
    assert a.model is not None and a.source == str(allocs["other"])
    q = copy.deepcopy(model)
    before = _params(q)
    with pytest.raises(WeightsMismatchError) as e:
        quantize_allocation_(q, a, progress=False)
    msg = str(e.value)
    assert f"bit allocation {allocs['other']} was computed on another model: {allocs['other_model']}" in msg, msg
    assert a.model["weights_fingerprint"] in msg and weights_fingerprint(model) in msg
    assert "compute the allocation for this model (lrm-interp bits --model" in msg and "\n" not in msg
    assert _unchanged(q, before)
    # its own model's allocation applies, without a warning
    q = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_allocation_(q, BitAllocation.load(allocs["toy"]), progress=False)
    assert not _unchanged(q, before)


def test_an_allocation_that_leaves_sites_out_is_refused_unless_partial(toy, allocs, tmp_path):
    """A ``bits.json`` with one entry deleted by hand left that module in full precision while the file
    still said ``bpw 3.5``. Refused now, naming how many sites and the first; ``partial=True`` asks for
    it (only the named sites are quantized). A site the model lacks is refused before any change too."""
    from lrm_interp.model.sites import find_sites

    model, _ = toy
    d = json.loads(allocs["toy"].read_text())
    first = next(iter(d["bits"]))
    del d["bits"][first]
    d.pop("bits_digest", None)  # as a file written before the digest (H15-X-BEF): the later checks are the point
    (tmp_path / "b_missing.json").write_text(json.dumps(d))
    a = BitAllocation.load(tmp_path / "b_missing.json")
    q = copy.deepcopy(model)
    before = _params(q)
    n = len(find_sites(model))
    with pytest.raises(ValueError) as e:
        quantize_allocation_(q, a, progress=False)
    msg = str(e.value)
    assert f"bit allocation {tmp_path / 'b_missing.json'} leaves 1 of the {n} linear sites of" in msg, msg
    assert f"out (first: {first}): they would stay in full precision" in msg and "pass partial=True" in msg
    assert _unchanged(q, before)
    quantize_allocation_(q, a, progress=False, partial=True)
    changed = {name for name, p in q.named_parameters() if not torch.equal(p, before[name])}
    assert f"{first}.weight" not in changed and len(changed) == n - 1
    with pytest.raises(ValueError, match="partial must be True or False, got 'yes'"):
        quantize_allocation_(copy.deepcopy(model), a, progress=False, partial="yes")
    # a site this model lacks
    d = json.loads(allocs["toy"].read_text())
    d["bits"]["model.layers.9.mlp.up_proj"] = 4
    d.pop("bits_digest", None)
    (tmp_path / "b_extra.json").write_text(json.dumps(d))
    q = copy.deepcopy(model)
    with pytest.raises(ValueError, match=r"names 1 site\(s\) that .* has no linear module for \(first: model.layers.9"):
        quantize_allocation_(q, BitAllocation.load(tmp_path / "b_extra.json"), progress=False)
    assert _unchanged(q, before)


def test_a_stripped_model_record_is_refused_and_an_old_file_applies_with_a_warning(toy, allocs, tmp_path):
    """A file of the format that records the model, with the record removed, is refused (it is no old
    file); an ``lrm_interp.bits/1`` file (written before the record) loads and applies, with a warning
    naming the file, and quantizes exactly as the recorded one does."""
    model, _ = toy
    d = json.loads(allocs["toy"].read_text())
    stripped = {k: v for k, v in d.items() if k != "model"}
    (tmp_path / "stripped.json").write_text(json.dumps(stripped))
    with pytest.raises(ValueError) as e:
        BitAllocation.load(tmp_path / "stripped.json")
    assert (
        f"{tmp_path / 'stripped.json'}: the bit allocation file (format 'lrm_interp.bits/2') has no 'model' entry"
        in str(e.value)
    )
    (tmp_path / "old.json").write_text(json.dumps({**stripped, "format": "lrm_interp.bits/1"}))
    old = BitAllocation.load(tmp_path / "old.json")
    assert old.model is None and old.bits == BitAllocation.load(allocs["toy"]).bits
    q_old, q_new = copy.deepcopy(model), copy.deepcopy(model)
    with pytest.warns(UserWarning, match=f"{tmp_path / 'old.json'}: the bit allocation records no model"):
        quantize_allocation_(q_old, old, progress=False)
    quantize_allocation_(q_new, BitAllocation.load(allocs["toy"]), progress=False)
    assert all(torch.equal(p, q_new.get_parameter(n)) for n, p in q_old.named_parameters())


def test_the_library_records_the_model_the_errors_were_measured_on(toy):
    """``quantization_errors`` records the model it measured, ``allocate_bits`` carries it into the
    allocation (the study and the protection experiment allocate through them); another ``model=``
    than the errors' is refused; ``uniform_allocation(model=)`` records one too."""
    from lrm_interp.model.sites import find_sites
    from lrm_interp.testing import tiny_model

    model, _ = toy
    sites = find_sites(model)
    errors = quantization_errors(model, sites, (2, 3, 4, 8, 16))
    fp = weights_fingerprint(model)
    assert errors.model == {"name": model.config._name_or_path, "weights_fingerprint": fp}
    alloc = allocate_bits(sites, errors, None, 3.5)
    assert alloc.model == errors.model
    assert allocate_bits(sites, dict(errors), None, 3.5).model is None  # a plain dict records nothing
    with pytest.raises(ValueError, match="allocate_bits: the errors were measured on another model"):
        allocate_bits(sites, errors, None, 3.5, model=tiny_model("llama"))
    assert uniform_allocation(sites, 4, model=model).model == errors.model
    with pytest.raises(ValueError, match="BitAllocation: model must record a weights_fingerprint"):
        BitAllocation({sites[0].name: 4}, 4.25, None, "test", model={"name": "x"})


# ------------------------------------------------------------------ H10-BAV
@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda d, k: d["bits"].__setitem__(k, 3.7),
            "bits of site {k} must be an integer 2..8 or 16 (kept in FP16), got 3.7",
        ),
        (
            lambda d, k: d["bits"].__setitem__(k, "3"),
            "bits of site {k} must be an integer 2..8 or 16 (kept in FP16), got '3' (str)",
        ),
        (
            lambda d, k: d["bits"].__setitem__(k, True),
            "bits of site {k} must be an integer 2..8 or 16 (kept in FP16), got True (bool)",
        ),
        (
            lambda d, k: d["bits"].__setitem__(k, 1),
            "bits of site {k} must be an integer 2..8 or 16 (kept in FP16), got 1",
        ),
        (
            lambda d, k: d["bits"].__setitem__(k, 12),
            "bits of site {k} must be an integer 2..8 or 16 (kept in FP16), got 12",
        ),
        (lambda d, k: d.__setitem__("bits", [4]), "bits must be a mapping {{site: bits}}, got [4] (list)"),
        (lambda d, k: d.__setitem__("bits", {}), "bits names no site"),
        (lambda d, k: d.__setitem__("bpw", "3.5"), "bpw must be a finite number > 0, got '3.5' (str)"),
        (lambda d, k: d.__setitem__("bpw", None), "bpw must be a finite number > 0, got None (NoneType)"),
        (
            lambda d, k: d.__setitem__("group_size", "128"),
            "group_size must be None or an integer >= 1, got '128' (str)",
        ),
        (lambda d, k: d.__setitem__("symmetric", "no"), "symmetric must be True or False, got 'no' (str)"),
        (lambda d, k: d.pop("bpw"), "the bit allocation file has no 'bpw' entry"),
        (lambda d, k: d.__setitem__("model", {"name": "toy"}), "model must record a weights_fingerprint"),
    ],
)
def test_load_refuses_values_with_no_meaning_naming_the_file_and_the_site(allocs, tmp_path, edit, words):
    """``BitAllocation.load`` truncated 3.7 to 3, took ``"3"`` and ``true`` as bit widths (``true`` then
    failed in ``quantize_allocation_`` naming no file), and accepted a NaN bpw. Each is refused now, one
    line naming the file and the site."""
    d = json.loads(allocs["toy"].read_text())
    k = next(iter(d["bits"]))
    edit(d, k)
    p = tmp_path / "b.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        BitAllocation.load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and words.format(k=k) in msg and "\n" not in msg, msg


def test_load_reads_with_the_strict_json_reader(allocs, tmp_path):
    """A NaN bpw (not JSON) and a key twice were read by ``json.loads``; the strict reader refuses both,
    naming the file. A UTF-8 byte-order mark is no character of the file."""
    text = allocs["toy"].read_text()
    nan = tmp_path / "b_nan.json"
    nan.write_text(text.replace('"bpw": ', '"bpw": NaN, "x": ', 1))
    with pytest.raises(ValueError, match=f"{nan}: .*NaN"):
        BitAllocation.load(nan)
    twice = tmp_path / "b_twice.json"
    twice.write_text(text.replace('"bpw": ', '"bpw": 2.5, "bpw": ', 1))
    with pytest.raises(ValueError, match=f"{twice}: .*bpw"):
        BitAllocation.load(twice)
    bom = tmp_path / "b_bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert BitAllocation.load(bom) == BitAllocation.load(allocs["toy"])


def test_the_constructor_applies_the_same_checks():
    """The Python API gets the checks of the file reader (a bool or float bit width, a NaN bpw)."""
    with pytest.raises(ValueError, match=r"^BitAllocation: bits of site s must be an integer 2..8 or 16 .* got True"):
        BitAllocation({"s": True}, 4.0, None, "none")
    with pytest.raises(ValueError, match=r"^BitAllocation: bpw must be a finite number > 0, got nan"):
        BitAllocation({"s": 4}, float("nan"), None, "none")
    with pytest.raises(ValueError, match=r"^BitAllocation: budget_bpw must be None or a finite number > 0"):
        BitAllocation({"s": 4}, 4.0, float("inf"), "none")
    assert BitAllocation({"s": 16}, 16.0, None, "none").bits == {"s": 16}


# ------------------------------------------------------------------ H10-BAL
def test_load_of_a_file_that_is_no_allocation_names_the_file(tmp_path):
    """A safetensors file, an empty file, a JSON array and a folder gave UnicodeDecodeError,
    JSONDecodeError, AttributeError and IsADirectoryError naming no file (or no more than the OS does).
    One line naming the file now, as ``LinearAnnotator.load`` gives."""
    binary = tmp_path / "m.safetensors"
    binary.write_bytes(b"\xd8\x00\x00\x00\x00\x00\x00\x00{}" + bytes(range(128, 256)))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    arr = tmp_path / "list.json"
    arr.write_text("[1]")
    folder = tmp_path / "lx"
    folder.mkdir()
    cases = [
        (binary, ValueError, f"{binary}: not a bit allocation file (not UTF-8 text: a binary file?"),
        (empty, ValueError, f"{empty}: not a bit allocation file (the file is empty"),
        (
            arr,
            ValueError,
            f"{arr}: not a bit allocation file (a JSON array, expected an object of format 'lrm_interp.bits/2')",
        ),
        (folder, IsADirectoryError, f"{folder} is a folder; give the bit allocation file itself"),
        (tmp_path / "nope.json", FileNotFoundError, f"bit allocation file {tmp_path / 'nope.json'} does not exist"),
    ]
    for path, kind, words in cases:
        with pytest.raises(kind) as e:
            BitAllocation.load(path)
        assert type(e.value) is kind and words in str(e.value) and "\n" not in str(e.value), (path, e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "lrm_interp.bits/2", "bits": {')
    with pytest.raises(ValueError, match=f"{bad}: invalid JSON"):
        BitAllocation.load(bad)


# ------------------------------------------------------------------ H10-CLX
@pytest.mark.parametrize("length", [1.5, True, "256", 0, None])
def test_calibration_ids_checks_its_length(toy, length):
    """``calibration_ids(length=1.5)`` / ``True`` gave rows of one token, ``'256'`` worked as 256: a
    length is an int >= 1 now (check_int), the others refused naming ``length``."""
    from lrm_interp.compress.calibration import calibration_ids

    _, tok = toy
    with pytest.raises(ValueError, match="^length must be an integer >= 1, got"):
        calibration_ids(tok, length=length)


def test_calibration_rows_longer_than_the_context_are_refused_by_the_library(toy):
    """GPTQ Hessians were collected from positions 1024..4999 of the toy model (context 1024). Every
    statistic of calibration rows now refuses rows longer than the context, before a weight changes."""
    from lrm_interp.compress.calibration import calibration_ids, layer_hessians
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.compress.specs import apply_compression, parse_compression
    from lrm_interp.model.sites import find_sites

    model, tok = toy
    long = calibration_ids(tok, length=1100)
    words = (
        "calibration rows of 1100 tokens are longer than the model's context (1024 positions, "
        "config.max_position_embeddings)"
    )
    q = copy.deepcopy(model)
    before = _params(q)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        quantize_model_(q, bits=3, method="gptq", calib=long, progress=False)
    assert _unchanged(q, before)
    with pytest.raises(ValueError, match="longer than the model's context"):
        layer_hessians(model, find_sites(model), long)
    with pytest.raises(ValueError, match="longer than the model's context"):
        apply_compression(model, parse_compression("wanda:0.5"), calib=long, progress=False)
    from lrm_interp.protect.saliency import activation

    with pytest.raises(ValueError, match="longer than the model's context"):  # protect --saliency activation
        activation(model, find_sites(model), long, progress=False)
    _, rep = apply_compression(model, parse_compression("gptq:3"), calib=long[:2, :64], progress=False)
    assert rep["calibration"] == {"rows": 2, "length": 64}


def _bench(out: Path, *extra: object) -> list[object]:
    return [
        "bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--max-new-tokens", 8,
        "--compress", "gptq:3", "--out", out, "--quiet", *extra,
    ]  # fmt: skip


def test_bench_run_refuses_a_calib_length_above_the_context_and_records_it(tmp_path, capsys, monkeypatch):
    """``bench run --compress gptq:3 --calib-length 5000`` on the toy model (context 1024) ran with exit 0
    and ``run.json`` did not record the length. Refused now before anything loads or is written (the
    model folder's config), and once a model is loaded for one whose context is known only then; the
    length is recorded in ``run.json``; a resume with another length is refused (other weights)."""
    import lrm_interp.cli.bench as bench

    out = tmp_path / "BRL"
    capsys.readouterr()
    assert _rc(_bench(out, "--calib-length", 5000)) == 2
    line = _err_line(capsys)
    assert (
        "--calib-length 5000 is longer than the context of --model toy (1024 positions, "
        "config.max_position_embeddings)" in line
    ), line
    assert "give --calib-length 1024 or less" in line and not out.exists()
    # an alias without a folder: checked once loaded, still before its run folder is written
    monkeypatch.setattr(bench, "_folder_context", lambda name: (None, None))
    assert _rc(_bench(out, "--calib-length", 5000)) == 2
    assert "--calib-length 5000 is longer than the context of --model toy" in _err_line(capsys)
    assert not out.exists() or not any(out.rglob("run.json"))
    monkeypatch.undo()
    assert _rc(_bench(out, "--calib-length", 64)) == 0
    (run,) = out.rglob("run.json")
    assert json.loads(run.read_text())["compression"]["calibration"]["length"] == 64
    before = run.read_bytes()
    capsys.readouterr()
    assert _rc(_bench(out, "--calib-length", 128)) == 2
    assert "this folder holds outputs of another model (weights fingerprint" in _err_line(capsys)
    assert run.read_bytes() == before


# ------------------------------------------------------------------ H10-URL
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://[::1/v1", "--base-url is not a valid URL (Invalid IPv6 URL): 'http://[::1/v1'"),
        (
            "http://127.0.0.1:99999/v1",
            "--base-url is not a valid URL (Port out of range 0-65535): 'http://127.0.0.1:99999/v1'",
        ),
        (
            "http://user:secret@127.0.0.1:9/v1",
            "--base-url must not hold credentials (user:password@): 'http://user:***@127.0.0.1:9/v1'",
        ),
        ("http://127.0.0.1:0/v1", "--base-url: port 0 is no port a server listens on"),
        ("http://127.0.0.1:8000/v1?key=1", "--base-url must be the API root without a query or fragment"),
    ],
)
def test_a_malformed_base_url_is_refused_up_front(tmp_path, capsys, url, words):
    """``--base-url http://[::1/v1`` said "Invalid IPv6 URL" naming neither flag nor value; port 99999
    was tried (connection refused); ``user:secret@`` was tried and the password echoed to stderr. Each is
    refused before any request or write, one line naming --base-url and the value (password masked)."""
    gold = toy_gold(tmp_path)
    out = tmp_path / "al.jsonl"
    capsys.readouterr()
    argv = ["annotate", "--data", gold, "--annotator", "llm", "--endpoint-model", "m", "--base-url", url, "--out", out]
    assert _rc(argv) == 2
    line = _err_line(capsys)
    assert words in line and "secret" not in line and not out.exists(), line
    if "secret" in url:
        assert "--api-key-env" in line


def test_endpoint_config_refuses_a_malformed_base_url_in_python(monkeypatch):
    """The Python API gets the same checks, naming ``base_url`` (or ``$OPENAI_BASE_URL`` when the value
    came from it); the password is never part of the message."""
    from lrm_interp.endpoint import EndpointConfig

    for url, words in [
        ("http://[::1/v1", "base_url is not a valid URL (Invalid IPv6 URL)"),
        ("http://127.0.0.1:99999/v1", "base_url is not a valid URL (Port out of range 0-65535)"),
        ("http://h:port/v1", "base_url is not a valid URL (Port could not be cast to integer value"),
        ("http://user:pa@ss@h/v1", "base_url must not hold credentials"),
        ("http://:80/v1", "base_url has no valid host name"),
    ]:
        with pytest.raises(ValueError) as e:
            EndpointConfig(base_url=url)
        assert str(e.value).startswith(words) and "pa@ss" not in str(e.value), str(e.value)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://u:hunter2@h/v1")
    with pytest.raises(ValueError) as e:
        EndpointConfig()
    assert str(e.value).startswith("$OPENAI_BASE_URL (the default base_url) must not hold credentials")
    assert "hunter2" not in str(e.value)
    assert EndpointConfig(base_url=" http://[::1]:8000/v1/ ").base_url == "http://[::1]:8000/v1"
