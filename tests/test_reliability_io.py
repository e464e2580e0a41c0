"""Issue 22, hostile-run cases 9, 11, 12 and 13: trace files are read without coercion, results are
never replaced silently, written files get ordinary permissions, and write errors name the user's
path.

- 9: span offsets must be JSON integers (``1.5``, ``true``, ``"3"`` refused, ``file:line`` and the
  field named); a misspelt behaviour label is refused with "did you mean"; custom labels are kept
  and named in one line; a trace file (or paper layout) without a trace is refused naming it;
- 11: ``parse``, ``toy traces`` and ``protect`` refuse an existing ``--out`` unless ``--overwrite``;
  ``quantize`` refuses an ``--out`` that is or contains its ``--masks`` / ``--calib``;
- 12: atomic writes give files ``0o666 & ~umask`` and folders ``0o777 & ~umask`` (mkstemp /
  mkdtemp give 0600 / 0700);
- 13: a failed write names the destination, the temporary name only in brackets.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import run_cli as _rc

from lrm_interp import _io
from lrm_interp.data import traces as traces_mod
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.traces import BEHAVIORS, ReasoningDataset, TraceFormatError
from lrm_interp.testing import tiny_model
from lrm_interp.toy import toy_model_dir

RESPONSE = "Wait, let me check this again. So x = 2."


def _write_traces(path: Path, *span_lists) -> Path:
    """A JSONL file with one trace per span list (ids t0, t1, ...)."""
    path.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "prompt": "p", "response": RESPONSE, "spans": spans}) + "\n"
            for i, spans in enumerate(span_lists)
        )
    )
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------------- case 9
OK_SPAN = {"behavior": "backtracking", "start": 0, "end": 5}


@pytest.mark.parametrize(
    "field,value,shown",
    [("start", 1.5, "1.5"), ("start", True, "true"), ("end", "3", '"3"'), ("end", 7.0, "7.0"), ("start", None, "null")],
)
def test_span_offsets_must_be_json_integers(tmp_path, field, value, shown):
    """1.5 was read as 1, true as 1, "3" as 3: offsets that are not JSON integers are refused, naming
    file:line, the span and the field."""
    bad = dict(OK_SPAN, **{field: value})
    p = _write_traces(tmp_path / "t.jsonl", [OK_SPAN], [OK_SPAN, bad])
    with pytest.raises(TraceFormatError) as e:
        ReasoningDataset.load_jsonl(p)
    assert str(e.value).startswith(f"{p}:2: span #1 field '{field}' must be a JSON integer")
    assert str(e.value).endswith(f"got {shown}")


def test_span_offsets_in_the_cli_are_one_line_naming_file_line_and_field(tmp_path, capsys):
    p = _write_traces(tmp_path / "t.jsonl", [dict(OK_SPAN, start=1.5)])
    assert _rc(["parse", "--data", p, "--out", tmp_path / "o.jsonl"]) == 2
    assert f"{p}:1: span #0 field 'start' must be a JSON integer" in _one_error_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "label,meant",
    [
        ("backtraking", "backtracking"),
        ("Backtracking", "backtracking"),
        ("adding_knowledge", "adding-knowledge"),
        ("uncertainty-estimate", "uncertainty-estimation"),
        ("examples-testing", "example-testing"),
        ("deductions", "deduction"),
    ],
)
def test_misspelt_behaviour_label_is_refused_with_did_you_mean(tmp_path, label, meant):
    """A misspelt label used to become a new behaviour with a handful of spans."""
    p = _write_traces(tmp_path / "t.jsonl", [OK_SPAN], [dict(OK_SPAN, behavior=label)])
    with pytest.raises(
        TraceFormatError,
        match=rf"t\.jsonl:2: span #0: field 'behavior' '{label}' is not a known "
        rf"behaviour; did you mean '{meant}'\?",
    ):
        ReasoningDataset.load_jsonl(p)


def test_custom_labels_are_kept_and_named_in_one_summary_line(tmp_path, capsys):
    spans = [
        {"behavior": "verification", "start": 0, "end": 4},
        {"behavior": "verification", "start": 5, "end": 9},
        {"behavior": "induction", "start": 10, "end": 12},
        OK_SPAN,
    ]
    p = _write_traces(tmp_path / "t.jsonl", spans)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = ReasoningDataset.load_jsonl(p)
    assert ds.span_counts() == {"verification": 2, "induction": 1, "backtracking": 1}  # nothing dropped
    assert ds.custom_behaviors() == {"induction": 1, "verification": 2}
    notes = [x for x in w if issubclass(x.category, traces_mod.CustomBehaviorWarning)]
    assert len(notes) == 1
    msg = str(notes[0].message)
    assert "\n" not in msg and str(p) in msg and "3 spans with 2 labels" in msg
    assert "'induction' (1)" in msg and "'verification' (2)" in msg
    # the CLI: one note line, and the traces are written with their custom labels
    assert _rc(["parse", "--data", p, "--out", tmp_path / "o.jsonl"]) == 0
    out = capsys.readouterr()
    note = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(note) == 1 and note[0].startswith("lrm-interp parse: note: ") and "'verification' (2)" in note[0]
    back = [json.loads(ln) for ln in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [s["behavior"] for s in back[0]["spans"]] == ["verification", "verification", "induction", "backtracking"]
    # known labels only: no note
    q = _write_traces(tmp_path / "k.jsonl", [OK_SPAN])
    with warnings.catch_warnings():
        warnings.simplefilter("error", traces_mod.CustomBehaviorWarning)
        assert ReasoningDataset.load_jsonl(q).custom_behaviors() == {}


def test_behaviour_label_check_keeps_every_known_label_and_real_custom_ones():
    check_behavior_label = traces_mod.check_behavior_label
    for b in BEHAVIORS:
        assert check_behavior_label(b) == b
    for custom in ("verification", "clarification", "planning", "induction", "abduction", "final-answer"):
        assert check_behavior_label(custom) == custom
    for bad in ("", "  ", 3, None, ["backtracking"]):
        with pytest.raises(TraceFormatError, match="field 'behavior' must be a non-empty string"):
            check_behavior_label(bad)


@pytest.mark.parametrize(
    "record,msg",
    [
        ({"id": "a", "response": "r", "prompt": 3}, "'prompt' must be a string"),
        ({"id": True, "response": "r"}, "'id' must be a string"),
        ({"id": "a", "response": "r", "spans": {"behavior": "backtracking"}}, "'spans' must be a list"),
        ({"id": "a", "response": "r", "spans": ["backtracking"]}, "span #0 must be an object"),
        ({"id": "a", "response": "rrrr", "spans": [{"behavior": 5, "start": 0, "end": 1}]}, "field 'behavior' must be"),
        ({"id": "a", "response": "r", "spans": [{"behavior": "backtracking", "start": 0}]}, "missing field 'end'"),
        ({"id": "a", "response": "r", "metadata": ["x"]}, "'metadata' must be an object"),
    ],
)
def test_trace_fields_are_typed_not_coerced(tmp_path, record, msg):
    """prompt 3 became "3", id true became "True", a dict of spans was iterated over its keys."""
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(record) + "\n")
    with pytest.raises(TraceFormatError, match=f"t\\.jsonl:1: .*{msg}"):
        ReasoningDataset.load_jsonl(p)


def test_null_prompt_and_integer_ids_still_load(tmp_path):
    p = tmp_path / "t.jsonl"
    # no "spans" key: no spans ("spans": null is refused since issue 22 h3, tests/test_reliability_h3.py)
    p.write_text(json.dumps({"id": 7, "prompt": None, "response": "r"}) + "\n")
    (t,) = ReasoningDataset.load_jsonl(p)
    assert (t.id, t.prompt, t.spans) == ("7", "", ())


def test_duplicate_ids_name_both_lines(tmp_path):
    p = _write_traces(tmp_path / "t.jsonl", [OK_SPAN])
    p.write_text(p.read_text() * 2)
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:2: duplicate trace id 't0' \(first at .*t\.jsonl:1\)"):
        ReasoningDataset.load_jsonl(p)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_trace_file_is_refused_naming_it(tmp_path, capsys, content):
    """`parse` on an empty JSONL ended in "wrote 0 traces" with exit 0, and so did `annotate agree`."""
    p = tmp_path / "empty.jsonl"
    p.write_text(content)
    with pytest.raises(TraceFormatError, match=r"empty\.jsonl: no traces"):
        load_dataset(p)
    assert _rc(["parse", "--data", p, "--out", tmp_path / "o.jsonl"]) == 2
    assert f"{p}: no traces" in _one_error_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()
    assert _rc(["annotate", "agree", "--gold", p, "--pred", p]) == 2
    assert "no traces" in _one_error_line(capsys)


def test_empty_paper_layout_is_refused_naming_it(tmp_path, capsys):
    d = tmp_path / "layout"
    (d / "outputs").mkdir(parents=True)
    (d / "annotated").mkdir()
    with pytest.raises(ValueError, match=r"layout: no traces"):
        load_dataset(d)
    assert _rc(["parse", "--data", d, "--out", tmp_path / "o.jsonl", "--report", tmp_path / "r.json"]) == 2
    assert "no traces" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------------- case 11
def _attribution(tmp_path: Path) -> Path:
    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites

    sites = tuple(find_sites(tiny_model("llama")))
    behaviors = ("backtracking", "uncertainty-estimation")
    prov = {
        "settings": AttributionConfig().to_dict(),
        "model": {"model_type": "llama", "weights_fingerprint": "w0", "tokenizer": {"fingerprint": "t"}},
        "counts": {"traces": 2, "spans": {b: 2 for b in behaviors}, "tokens": {b: 40 for b in behaviors}},
        "dataset": {"name": "synth", "n_traces": 2},
    }
    d = tmp_path / "A"
    Attribution(
        behaviors, sites, torch.rand(len(behaviors), len(sites), dtype=torch.float64), "attribution", provenance=prov
    ).save(d)
    return d


def _commands(tmp_path: Path) -> dict[str, list]:
    traces = _write_traces(tmp_path / "in.jsonl", [OK_SPAN])
    return {
        "parse": ["parse", "--data", traces],
        "toy traces": ["toy", "traces", "--gold", "--per-family", "1"],
        "protect": ["protect", "--scores", _attribution(tmp_path), "--policy", "final_mlp"],
    }


@pytest.mark.parametrize("command", ["parse", "toy traces", "protect"])
def test_existing_out_is_replaced_only_with_overwrite(tmp_path, capsys, command):
    """`parse --out F`, `toy traces --out F`, `protect --out F` silently replaced an existing F."""
    argv = _commands(tmp_path)[command]
    out = tmp_path / "result.out"
    out.write_bytes(b"an earlier result")
    assert _rc(argv + ["--out", out]) == 2
    line = _one_error_line(capsys)
    assert f"--out {out}: the file exists; pass --overwrite" in line
    assert out.read_bytes() == b"an earlier result"
    assert _rc(argv + ["--out", out, "--overwrite"]) == 0
    assert out.read_bytes() != b"an earlier result"
    capsys.readouterr()
    fresh = tmp_path / "fresh.out"
    assert _rc(argv + ["--out", fresh]) == 0 and fresh.is_file()  # a new path needs no flag


def test_parse_report_is_not_replaced_without_overwrite(tmp_path, capsys):
    from conftest import PAPER_LAYOUT

    rep = tmp_path / "r.json"
    rep.write_text("{}")
    assert _rc(["parse", "--data", PAPER_LAYOUT, "--out", tmp_path / "o.jsonl", "--report", rep]) == 2
    assert f"--report {rep}: the file exists" in _one_error_line(capsys)
    assert rep.read_text() == "{}" and not (tmp_path / "o.jsonl").exists()
    assert _rc(["parse", "--data", PAPER_LAYOUT, "--out", tmp_path / "o.jsonl", "--report", rep, "--overwrite"]) == 0
    assert json.loads(rep.read_text()) != {}


def test_parse_out_never_names_its_input(tmp_path, capsys):
    p = _write_traces(tmp_path / "t.jsonl", [OK_SPAN])
    before = p.read_bytes()
    assert _rc(["parse", "--data", p, "--out", p, "--overwrite"]) == 2
    assert "--out" in (line := _one_error_line(capsys)) and "--data" in line
    assert p.read_bytes() == before


def test_quantize_out_never_is_or_contains_its_masks_or_calib(tmp_path, capsys):
    """`quantize --overwrite --out D` replaced D whole, --masks D/masks.safetensors or --calib D/... with it."""
    d = tmp_path / "D"
    d.mkdir()
    from lrm_interp.protect.encoding import save_masks

    masks = save_masks({}, d / "masks.safetensors")  # a real (empty) masks file: the old code used it, then
    kept = masks.read_bytes()  # replaced D whole, masks and all
    calib = d / "calib"
    calib.mkdir()
    (calib / "c.jsonl").write_text("calibration text")
    for folder in (d, calib):  # earlier results (the only folders --overwrite may replace)
        (folder / "lrm_interp_quantization.json").write_text("{}")
    base = ["quantize", "--model", "toy", "--bits", "3", "--quiet", "--overwrite"]
    for argv, flag in (
        (base + ["--masks", masks, "--out", d], "--masks"),
        (base + ["--method", "gptq", "--calib", calib, "--out", d], "--calib"),
        (base + ["--method", "gptq", "--calib", calib / "c.jsonl", "--out", d], "--calib"),
        (base + ["--masks", masks, "--out", masks], "a file (protection masks"),  # a file: never (H24-QFILE)
        (base + ["--method", "gptq", "--calib", calib, "--out", calib], "--calib"),
        (base + ["--method", "gptq", "--calib", calib, "--out", calib / "q"], "--calib"),
    ):
        assert _rc(argv) == 2
        line = _one_error_line(capsys)
        assert "--out" in line and flag in line, line
    assert masks.read_bytes() == kept
    assert (calib / "c.jsonl").read_text() == "calibration text"
    assert sorted(p.name for p in d.iterdir()) == ["calib", "lrm_interp_quantization.json", "masks.safetensors"]


# ----------------------------------------------------------------------------------- case 12
@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_atomic_files_and_folders_get_plain_open_permissions(tmp_path, umask):
    """mkstemp / mkdtemp made every result 0600 / 0700, whatever the umask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    assert _mode(plain) == 0o666 & ~umask
    _io.atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == _mode(plain)
    _io.atomic_write_text(tmp_path / "a.txt", "replaced")  # a replaced file too
    assert _mode(tmp_path / "a.txt") == _mode(plain)
    _io.write_safetensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {"format": "test"})
    assert _mode(tmp_path / "t.safetensors") == _mode(plain)
    fig = plt.figure()
    try:
        _io.atomic_save_figure(fig, tmp_path / "f.png")
    finally:
        plt.close(fig)
    assert _mode(tmp_path / "f.png") == _mode(plain)
    assert _io.plain_mode() == 0o666 & ~umask and _io.plain_mode(folder=True) == 0o777 & ~umask
    folder = _io.make_temp_dir(tmp_path / "out")
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    assert _mode(folder) == _mode(plain_dir) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [folder.name]  # no temp file left


def test_cli_results_get_plain_permissions(tmp_path, umask, capsys):
    """The files of `parse` / `toy traces` and the folder of `quantize` (published from mkdtemp)."""
    assert _rc(["toy", "traces", "--gold", "--per-family", "1", "--out", tmp_path / "t.jsonl"]) == 0
    assert _mode(tmp_path / "t.jsonl") == 0o666 & ~umask
    if umask == 0o022:  # one quantization is enough (seconds)
        assert _rc(["quantize", "--model", "toy", "--bits", "8", "--quiet", "--out", tmp_path / "q"]) == 0
        assert _mode(tmp_path / "q") == 0o777 & ~umask
        assert _mode(tmp_path / "q" / "lrm_interp_quantization.json") == 0o666 & ~umask


# ----------------------------------------------------------------------------------- case 13
def test_write_errors_name_the_destination_not_the_temporary_file(tmp_path, monkeypatch):
    """A failed write reported `.OUT.xxxx.tmp` (or no file at all); it now names OUT, the temporary
    name in brackets, and leaves no temporary file behind."""
    out = tmp_path / "out.jsonl"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # what a full disk gives: no file name

    monkeypatch.setattr(_io.os, "fsync", no_space)
    with pytest.raises(OSError) as e:
        _io.atomic_write_text(out, "x")
    assert e.value.filename == str(out) and e.value.errno == errno.ENOSPC
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def denied(*a, **kw):  # what mkstemp raises in a folder you may not write: the temporary name
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.jsonl.abc123.tmp"))

    monkeypatch.setattr(_io.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError) as e:
        _io.atomic_write_text(out, "x")
    assert e.value.filename == str(out)
    assert "[temporary " in e.value.strerror and ".out.jsonl.abc123.tmp" in e.value.strerror


def test_cli_write_errors_name_the_out_the_user_gave(tmp_path, monkeypatch, capsys):
    traces = _write_traces(tmp_path / "in.jsonl", [OK_SPAN])
    out = tmp_path / "o.jsonl"

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", no_space)
    assert _rc(["parse", "--data", traces, "--out", out]) == 2
    assert _one_error_line(capsys) == f"lrm-interp parse: error: {out}: No space left on device"
    assert not out.exists()


def test_quantize_write_error_names_out_not_its_temporary_folder(tmp_path, monkeypatch, capsys):
    from lrm_interp.cli import protect as cli_protect

    def full_disk(model, tok, rep, masks, a, group_size, tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))

    monkeypatch.setattr(cli_protect, "_write_quantized", full_disk)
    q = tmp_path / "q"
    assert _rc(["quantize", "--model", "toy", "--bits", "8", "--quiet", "--out", q]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"lrm-interp quantize: error: {q}: No space left on device [temporary "), line
    assert not q.exists() and [p.name for p in tmp_path.iterdir()] == []
    assert toy_model_dir().is_dir()
