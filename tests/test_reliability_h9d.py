"""Leftovers of the eighth hostile probe run (issue 22, "nothing lost, nothing silent"), part D:
``protect --out`` published without :func:`~lrm_interp.cli.common.file_outputs` (H9-CC2), the Python
writers ``save_quantized``, ``ParseReport.save_json``, ``BitAllocation.save`` and ``LinearAnnotator.save``
replacing a file of another command's result (H9-PYW), ``LRM_INTERP_DEBUG=off`` read as on, ``bench
score`` / ``compare``'s folder lock kept apart from the other locks, and a NaN per-trace KL of a
study row named by neither the row nor the trace."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp import _io


def _hidden(folder: Path) -> list[str]:
    """Temporary and lock files left in ``folder`` (names starting with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def attr(tmp_path_factory) -> dict[str, Path]:
    """A finished ``attribute`` run ``A`` of the toy model on two gold traces per family."""
    d = tmp_path_factory.mktemp("h9d")
    gold = toy_gold(d, n=1)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / "A", "--quiet"]) == 0
    return {"dir": d, "gold": gold, "A": d / "A"}


def _protect(a: Path, out: Path, *extra: object, bits: int = 3) -> list[object]:
    return ["protect", "--scores", a, "--policy", "final_mlp", "--bits", bits, "--out", out, *extra]


# ------------------------------------------------------------------ protect --out (H9-CC2)
def test_protect_never_publishes_over_a_file_another_run_created_meanwhile(attr, tmp_path, capsys, monkeypatch):
    """A new ``--out`` that another run wrote while ``protect`` ran is kept, and this run is refused with
    the words every single-file writer uses (it said "created by something else ... not replaced"
    through ``save_masks(replace=False)``, naming no flag); nothing is left beside it."""
    import lrm_interp.protect.encoding as encoding

    folder = tmp_path / "O"
    folder.mkdir()
    out = folder / "m.safetensors"
    real = encoding.save_masks

    def racing(masks, path, **kw):
        out.write_bytes(b"the other run's masks")  # another run publishes first
        return real(masks, path, **kw)

    monkeypatch.setattr(encoding, "save_masks", racing)
    capsys.readouterr()
    assert _rc(_protect(attr["A"], out)) == 2
    line = _err_line(capsys)
    assert f"--out {out} was created by another run while this one ran: its result is kept" in line, line
    assert out.read_bytes() == b"the other run's masks"
    assert sorted(p.name for p in folder.iterdir()) == ["m.safetensors"]  # no temporary file, no lock
    monkeypatch.undo()
    # without a race: written, then replaced with --overwrite, nothing left beside it
    out.unlink()
    assert _rc(_protect(attr["A"], out)) == 0
    first = out.read_bytes()
    assert _rc(_protect(attr["A"], out, "--overwrite", bits=4)) == 0
    assert out.read_bytes() != first and _hidden(folder) == []
    masks, meta = encoding.load_masks(out)
    assert meta["policy"] == "final_mlp" and meta["bits"] == 4


def test_protect_overwrite_waits_for_no_one_and_replaces_nothing_held(attr, tmp_path, capsys):
    """Two ``protect --overwrite`` runs into one existing ``--out``: the second replaced the first's file
    while it ran. Now ``--out`` is held by a lock beside it: a run that finds it held is refused at once
    naming the holder, and the file stays byte for byte."""
    folder = tmp_path / "O"
    folder.mkdir()
    out = folder / "m.safetensors"
    out.write_bytes(b"earlier masks")
    with _io.exclusive_lock(_io.file_lock_path(out), "bits"):
        capsys.readouterr()
        assert _rc(_protect(attr["A"], out, "--overwrite")) == 2
        line = _err_line(capsys)
    assert f"--out {out} is in use by another 'lrm-interp bits' run (pid {os.getpid()})" in line, line
    assert "wait for it to end or choose another --out" in line
    assert out.read_bytes() == b"earlier masks" and _hidden(folder) == []
    assert _rc(_protect(attr["A"], out, "--overwrite")) == 0  # free again
    assert out.read_bytes() != b"earlier masks" and _hidden(folder) == []


# ------------------------------------------------------------------ Python writers (H9-PYW)
def test_more_python_writers_never_replace_a_file_of_another_commands_result(attr, tmp_path):
    """``save_quantized``, ``ParseReport.save_json``, ``BitAllocation.save`` and ``LinearAnnotator.save``
    replaced ``A/attribution.safetensors``, ``A/attribution.json``, ``SC/bits.json`` without a word,
    as ``save_masks`` / ``save_jsonl`` did before H9-PYW. Now each refuses first; ``own=`` is the
    library's own writers' way into their own result."""
    import copy
    import shutil

    import lrm_interp as li
    from lrm_interp.compress.quant import load_quantized, quantize_model_, save_quantized
    from lrm_interp.data.annotators.trained import LinearAnnotator
    from lrm_interp.data.paper_layout import ParseReport
    from lrm_interp.data.traces import BEHAVIORS
    from lrm_interp.protect.bit_allocation import BitAllocation

    a = tmp_path / "A"
    shutil.copytree(attr["A"], a)
    sc = tmp_path / "SC"  # a study folder: its record names it, bits.json is one of its files
    sc.mkdir()
    (sc / "study.json").write_text("{}")
    (sc / "bits.json").write_text('{"the study": "allocation"}')
    before = {p: p.read_bytes() for d in (a, sc) for p in d.rglob("*") if p.is_file()}

    model, _ = li.load_model("toy")
    rep = quantize_model_(
        copy.deepcopy(model), bits=3, progress=False, keep_tensors=True, sites=["model.layers.0.mlp.up_proj"]
    )
    alloc = BitAllocation({"model.layers.0.mlp.up_proj": 4}, 4.25, 4.5, "none", 128, True)
    ann = LinearAnnotator(torch.zeros(3, len(BEHAVIORS)), torch.zeros(len(BEHAVIORS)))
    report = ParseReport()
    writes = [
        (lambda p, **kw: save_quantized(rep.tensors, p, **kw), a / "attribution.safetensors", "attribution"),
        (lambda p, **kw: save_quantized(rep.tensors, p, replace=False, **kw), a / "scores.csv", "attribution"),
        (report.save_json, a / "attribution.json", "attribution"),
        (alloc.save, sc / "bits.json", "study"),
        (alloc.save, a / "partial" / "bits.json", None),
        (ann.save, a / "attribution.safetensors", "attribution"),
    ]
    for write, path, kind in writes:
        if kind is None:  # an attribution run's work folder
            with pytest.raises(ValueError, match="the work folder of the attribution run"):
                write(path)
            continue
        with pytest.raises(_io.OtherResultError, match=rf"is a file of the {kind} result .*save elsewhere"):
            write(path)
    assert {p: p.read_bytes() for d in (a, sc) for p in d.rglob("*") if p.is_file()} == before
    li.Attribution.load(a)
    # a new name beside a result's files is free; the library's own writer names its kind
    assert save_quantized(rep.tensors, a / "q.safetensors") == a / "q.safetensors"
    assert list(load_quantized(a / "q.safetensors")[0]) == list(rep.tensors)
    report.save_json(a / "parse_report.json")
    ann.save(a / "annotator.safetensors")
    assert LinearAnnotator.load(a / "annotator.safetensors").labels == ann.labels
    alloc.save(sc / "bits.json", own="study")
    assert BitAllocation.load(sc / "bits.json").bits == alloc.bits


def test_the_messages_name_the_file_and_its_result(attr, tmp_path):
    """The refusal is one line naming the path and the result it belongs to."""
    from lrm_interp.protect.bit_allocation import BitAllocation

    a = attr["A"]
    alloc = BitAllocation({"s": 4}, 4.0, None, "uniform", 128, True)
    with pytest.raises(_io.OtherResultError) as e:
        alloc.save(a / "scores.csv")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{a / 'scores.csv'} is a file of the attribution result "), msg
    assert "save elsewhere" in msg


# ------------------------------------------------------------------ LRM_INTERP_DEBUG
def test_debug_flag_reads_yes_and_no_and_never_raises(monkeypatch):
    """``LRM_INTERP_DEBUG=off`` (and ``maybe``) turned tracebacks on: anything but "", 0, false, no did.
    Now the yes/no words of every flag variable; a value that is neither counts as no (it is read
    inside the error handler, which must never fail)."""
    from lrm_interp.cli.common import DEBUG_ENV, debug_enabled

    for value, on in [
        ("1", True),
        ("yes", True),
        (" ON ", True),
        ("true", True),
        ("off", False),
        ("OFF", False),
        ("0", False),
        ("no", False),
        ("", False),
        ("maybe", False),
        ("2", False),
    ]:
        monkeypatch.setenv(DEBUG_ENV, value)
        assert debug_enabled() is on, value
    monkeypatch.delenv(DEBUG_ENV)
    assert debug_enabled() is False


@pytest.mark.parametrize("value", ["off", "maybe"])
def test_a_command_error_stays_one_line_with_debug_off_or_unreadable(tmp_path, capsys, monkeypatch, value):
    """With ``LRM_INTERP_DEBUG=off`` a bad input raised out of the command line (a traceback) instead of
    its one-line error; a value that is neither yes nor no does not break the error handler."""
    monkeypatch.setenv("LRM_INTERP_DEBUG", value)
    capsys.readouterr()
    assert _rc(["protect", "--scores", tmp_path / "nope", "--policy", "final_mlp", "--out", tmp_path / "m"]) == 2
    line = _err_line(capsys)
    assert "--scores" in line and "nope" in line, line


# ------------------------------------------------------------------ bench score / compare folder lock
def test_the_folder_lock_is_the_file_lock_and_keeps_its_words(tmp_path):
    """``folder_lock`` had its own copy of the flock code and of ``created_meanwhile``; now it is
    :func:`lrm_interp._io.exclusive_lock` on ``out/.lrm_interp.lock``, with its messages."""
    from lrm_interp.cli import bench, common
    from lrm_interp.cli.common import CliError

    assert bench.created_meanwhile is common.created_meanwhile
    out = tmp_path / "S"
    out.mkdir()
    with _io.exclusive_lock(out / bench.FOLDER_LOCK, "compare"):  # a holder that wrote its name
        with pytest.raises(CliError) as e:
            with bench.folder_lock(out, "bench score"):
                pytest.fail("entered a held lock")
    msg = str(e.value)
    assert msg == (
        f"--out {out} is in use by another 'lrm-interp compare' run (pid {os.getpid()}): two runs into one "
        "folder would replace each other's result; wait for it to end or choose another --out"
    )
    with bench.folder_lock(out, "bench score"):
        assert (out / bench.FOLDER_LOCK).read_text() == f"{os.getpid()} bench score\n"
        with pytest.raises(CliError, match=r"in use by another 'lrm-interp bench score' run \(pid "):
            with bench.folder_lock(out, "compare"):
                pass
    assert not (out / bench.FOLDER_LOCK).exists()
    # an error of the body passes through unchanged, and the lock goes
    with pytest.raises(KeyError, match="body"):
        with bench.folder_lock(out, "compare"):
            raise KeyError("body")
    assert not (out / bench.FOLDER_LOCK).exists()
    # a folder that is not there: named, one line
    with pytest.raises(CliError, match=rf"--out {tmp_path / 'gone'}: cannot write there \(.*\); choose a folder"):
        with bench.folder_lock(tmp_path / "gone", "compare"):
            pass


# ------------------------------------------------------------------ study: a NaN per-trace KL
def test_a_nan_kl_names_the_study_row_and_the_trace(attr, monkeypatch):
    """A per-trace KL that is NaN (the compressed model's log-probabilities not finite on a trace) made
    the study fail with "bootstrap_interval: values[1] is nan", naming neither the row nor the trace."""
    import lrm_interp as li
    from lrm_interp.data.tokens import encode_trace
    from lrm_interp.experiments import study
    from lrm_interp.experiments.protection import RowPlan
    from lrm_interp.experiments.study import StudyRow

    model, tok = li.load_model("toy")
    ds = li.load_dataset(attr["gold"])
    enc = [encode_trace(tok, t) for t in ds][:3]
    assert len(enc) == 3
    plan = RowPlan("none", "uniform", lambda m: (3.0, ""))
    s = types.SimpleNamespace(tasks=None, resamples=20, seed=0)

    def measure(kl: list[float]):
        monkeypatch.setattr(
            study,
            "measure_kl",
            lambda *a, **k: (torch.tensor(kl, dtype=torch.float64), torch.tensor([5, 7, 9], dtype=torch.int64)),
        )
        return study._measure("uniform", plan, model, model, tok, s, [], enc, 3.0, "", 0.0, order=None, progress=False)

    row, outcome = measure([0.1, 0.2, 0.3])  # finite: measured as before
    assert isinstance(row, StudyRow) and row.ci[0] <= row.value <= row.ci[1]
    with pytest.raises(ValueError) as e:
        measure([0.1, float("nan"), 0.3])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("study row 'uniform' (none): the KL of trace "), msg
    assert repr(enc[1].trace_id) in msg and "is nan" in msg and "not finite" in msg
    with pytest.raises(ValueError, match=rf"trace {enc[0].trace_id!r} is inf \(2 of 3 traces\)"):
        measure([float("inf"), 0.2, float("nan")])
    # any other failure of the interval names the row too
    s.resamples = 0
    with pytest.raises(ValueError, match=r"^study row 'uniform' \(none\): bootstrap_interval: "):
        measure([0.1, 0.2, 0.3])


def test_the_sidecar_report_and_downstream_writers_refuse_another_results_file(attr, tmp_path):
    """``save_sidecar``, ``AnnotationRun.save_report`` and ``AnnotationDownstream.save`` replaced a
    file of a finished result like the writers above; they refuse it before touching anything (the
    refusal comes first, so no real run object is needed to show it)."""
    import shutil

    import lrm_interp as li
    from lrm_interp.data.annotators.driver import AnnotationRun
    from lrm_interp.experiments.annotation_downstream import AnnotationDownstream
    from lrm_interp.protect.exports import save_sidecar

    a = tmp_path / "A"
    shutil.copytree(attr["A"], a)
    before = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    model, _ = li.load_model("toy")
    for write, name in (
        (lambda p: save_sidecar(model, {}, p), "attribution.safetensors"),
        (lambda p: AnnotationRun.save_report(object(), p), "attribution.json"),  # type: ignore[arg-type]
        (lambda p: AnnotationDownstream.save(object(), p), "scores.csv"),  # type: ignore[arg-type]
    ):
        with pytest.raises(_io.OtherResultError, match=rf"{name} is a file of the attribution result"):
            write(a / name)
    assert {p: p.read_bytes() for p in a.rglob("*") if p.is_file()} == before
    li.Attribution.load(a)
