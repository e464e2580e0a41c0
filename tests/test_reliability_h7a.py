"""Cases a sixth hostile probe run found (issue 22, "nothing lost, nothing silent"), part A: two live
runs into one result folder (H7-K4), ``Attribution.save`` over another result (API9) or onto a file
(API7), ``toy train`` over the shipped model (TT1), SIGTERM (T1), warnings in the CLI (AO1w), a
closed standard output (P-pipe), and the Python API's type and range checks (API1-API10, N1, TS4,
D4)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold

import lrm_interp as li


@pytest.fixture(scope="module")
def two_results(tmp_path_factory) -> dict[str, Path]:
    """Attributions of the toy model on two trace files (gold, g7): their folders and files."""
    d = tmp_path_factory.mktemp("h7a")
    gold, g7 = _gold(d), _gold(d, "g7.jsonl", seed=7)
    for data, name in ((gold, "A"), (g7, "A7")):
        assert _rc(["attribute", "--model", "toy", "--data", data, "--out", d / name, "--quiet"]) == 0
    return {"gold": gold, "g7": g7, "A": d / "A", "A7": d / "A7"}


def _no_model(monkeypatch):
    """Make loading a model fail the test: a check must come before it."""
    import lrm_interp.attribution.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))


# ------------------------------------------------------------------ H7-K4
def test_a_second_live_run_into_one_folder_is_refused_and_a_result_that_appeared_is_never_replaced(
    two_results, tmp_path, capsys, monkeypatch
):
    """Two ``attribute`` runs on different traces into one new ``--out`` both exited 0 and one result
    silently replaced the other: a run holds a lock on its folder (a second live one is refused naming
    the folder and the holder's pid), and it never publishes over a finished result of another run
    that appeared while it ran."""
    import lrm_interp.attribution.pipeline as pipeline
    from lrm_interp.attribution.resume import ResumeMismatchError

    out = tmp_path / "AK"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom lrm_interp.attribution.resume import out_dir_lock\n"
            "with out_dir_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert _rc(["attribute", "--model", "toy", "--data", two_results["gold"], "--out", out, "--quiet"]) == 2
        err = _err_line(capsys)
        assert f"{out} is in use by another attribution run (pid {holder.pid})" in err, err
        assert not (out / "attribution.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the folder is free again (a killed run holds no lock)
    assert _rc(["attribute", "--model", "toy", "--data", two_results["gold"], "--out", out, "--quiet"]) == 0
    assert not (out / "partial" / ".lock").exists()
    # another run's finished result appears while this one runs: refused at the end, that result kept
    out2 = tmp_path / "AK2"
    real = pipeline.reduce_dom

    def meanwhile(plan, stats):
        li.Attribution.load(two_results["A7"]).save(out2)  # the other run publishes first
        return real(plan, stats)

    monkeypatch.setattr(pipeline, "reduce_dom", meanwhile)
    with pytest.raises(ResumeMismatchError, match="holds the finished result of a run with other traces"):
        li.attribute("toy", two_results["gold"], out_dir=out2, progress=False)
    kept = json.loads((out2 / "attribution.json").read_text())
    assert (
        kept["provenance"]["dataset"]["name"]
        == json.loads((two_results["A7"] / "attribution.json").read_text())["provenance"]["dataset"]["name"]
    )


# ------------------------------------------------------------------ H7-API9
def test_save_over_another_result_is_refused_and_overwrite_leaves_no_mixed_folder(two_results, tmp_path):
    """``Attribution.load('A').save('A7')`` replaced attribution.* and kept A7's scores.csv,
    heatmap.png and partial/: a mixed folder."""
    import shutil

    a7 = tmp_path / "A7"
    shutil.copytree(two_results["A7"], a7)
    before = {p.name: p.read_bytes() for p in a7.iterdir() if p.is_file()}
    res = li.Attribution.load(two_results["A"])
    with pytest.raises(FileExistsError, match="holds another finished attribution result"):
        res.save(a7)
    assert {p.name: p.read_bytes() for p in a7.iterdir() if p.is_file()} == before
    li.Attribution.load(a7).save(a7)  # the same result again: fine
    res.save(a7, overwrite=True)
    assert sorted(p.name for p in a7.iterdir()) == ["attribution.json", "attribution.safetensors"]
    assert li.Attribution.load(a7).scores.equal(res.scores)


# ------------------------------------------------------------------ H7-API7
def test_out_dir_a_file_is_refused_before_any_work(two_results, tmp_path, monkeypatch):
    """``attribute(out_dir=<a file>)`` failed with a raw NotADirectoryError after the work;
    ``Attribution.save(<a file>)`` with FileExistsError."""
    f = tmp_path / "afile"
    f.write_text("mine")
    _no_model(monkeypatch)
    for out in (f, f / "sub"):
        with pytest.raises(ValueError, match=f"out_dir {out}: .*(a file|is a file)"):
            li.attribute("toy", two_results["gold"], out_dir=out, progress=False)
        with pytest.raises(ValueError, match=f"directory {out}: .*(a file|is a file)"):
            li.Attribution.load(two_results["A"]).save(out)
    assert f.read_text() == "mine"


# ------------------------------------------------------------------ H7-TT1
def test_toy_train_never_replaces_the_shipped_toy_model(tmp_path, capsys, monkeypatch):
    """``toy train --out <the shipped toy folder> --overwrite`` replaced the model behind ``--model toy``."""
    import lrm_interp.toy.train as toy_train
    from lrm_interp.toy import toy_model_dir

    monkeypatch.setattr(toy_train, "train_toy_model", lambda *a, **k: pytest.fail("trained"))
    shipped = toy_model_dir()
    before = hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest()
    for out in (shipped, shipped.parent):
        capsys.readouterr()
        argv = ["toy", "train", "--out", out, "--overwrite", "--steps", "5", "--stop-at", "5", "--device", "cpu"]
        assert _rc(argv) == 2
        assert "is the folder of the model alias 'toy'" in _err_line(capsys)
    assert hashlib.sha256((shipped / "model.safetensors").read_bytes()).hexdigest() == before


# ------------------------------------------------------------------ H7-T1
def test_sigterm_is_handled_like_ctrl_c_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    """SIGTERM killed the command silently, leaving ``.heatmap.*.tmp.png`` in the result forever."""
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process")
    import lrm_interp.cli.main as cli_main
    from lrm_interp._io import atomic_save_figure, atomic_write_bytes

    class Fig:
        def savefig(self, path, **kw):
            Path(path).write_bytes(b"half a png")
            signal.raise_signal(signal.SIGTERM)  # `kill PID` while the figure is written

    def command(a):
        atomic_save_figure(Fig(), tmp_path / "heatmap.png")
        return 0

    monkeypatch.setattr(cli_main, "cmd_parse", command)
    capsys.readouterr()
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 143
    assert _err_line(capsys) == "lrm-interp parse: terminated; nothing was written (--out is unchanged)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back

    real_fsync = os.fsync

    def fsync(fd):  # SIGTERM inside an atomic file write
        signal.raise_signal(signal.SIGTERM)

    def command2(a):
        monkeypatch.setattr(os, "fsync", fsync)
        try:
            atomic_write_bytes(tmp_path / "x.json", b"{}")
        finally:
            monkeypatch.setattr(os, "fsync", real_fsync)
        return 0

    monkeypatch.setattr(cli_main, "cmd_parse", command2)
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 143
    assert "terminated" in _err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------ H7-AO1w
def test_a_library_warning_is_one_cli_line(tmp_path, capsys, monkeypatch):
    """Warnings reached the user as "/…/cli/main.py:122: UserWarning: …" plus a source line."""
    import lrm_interp.cli.main as cli_main

    def command(a):
        warnings.warn("3 behaviour(s) without a usable span\nare left out", UserWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(cli_main, "cmd_parse", command)
    # print warnings as Python does outside pytest (pytest records them): to stderr, formatted
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", lambda msg: sys.stderr.write(warnings._formatwarnmsg(msg)))
    formatter = warnings.formatwarning
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 0
    assert warnings.formatwarning is formatter  # restored after main()
    assert _err_line(capsys) == "lrm-interp parse: warning: 3 behaviour(s) without a usable span are left out"
    # a caller recording warnings still gets them (pytest.warns around main() included)
    with pytest.warns(UserWarning, match="without a usable span"):
        assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 0


# ------------------------------------------------------------------ H7-P-pipe
def test_a_closed_standard_output_is_no_failure(tmp_path, capsys, monkeypatch):
    """``lrm-interp parse ... | true``: "error: [Errno 32] Broken pipe", exit 2, though the file was
    written. The output is dropped quietly; the exit status is the command's own (0: done)."""
    gold = _gold(tmp_path)

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert _rc(["parse", "--data", gold, "--out", tmp_path / "o.jsonl"]) == 0
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
    assert (tmp_path / "o.jsonl").read_text() == gold.read_text()


# ------------------------------------------------------------------ H7-API1 / API2
def test_wrong_argument_types_are_named_up_front(two_results, monkeypatch):
    """``load_dataset(123)`` said "'int' object is not iterable" (``attribute('toy', None)`` after
    loading the model); ``compare('A', 'A')`` and ``find_sites('toy')``: "'str' object has no
    attribute ..."."""
    from lrm_interp.model.sites import find_sites

    for bad in (123, None, {"id": "x"}):
        with pytest.raises(TypeError, match=f"dataset must be a ReasoningDataset.*got {type(bad).__name__}"):
            li.load_dataset(bad)
    with pytest.raises(TypeError, match="holding a str"):
        li.load_dataset(["not a trace"])
    _no_model(monkeypatch)
    with pytest.raises(TypeError, match="dataset must be a ReasoningDataset.*got NoneType"):
        li.attribute("toy", None)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="zero by construction"):
        shift = li.compare(two_results["A"], str(two_results["A"]))
    assert float(shift.delta.abs().max()) == 0.0
    with pytest.raises(TypeError, match="original must be an Attribution .*got int"):
        li.compare(1, two_results["A"])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module .*got str 'toy'"):
        find_sites("toy")


# ------------------------------------------------------------------ H7-API-lm
def test_loading_masks_or_quantized_weights_from_a_folder_says_so(two_results):
    """``load_masks('A')`` / ``load_quantized('Q')`` said "No such device (os error 19)"."""
    from lrm_interp.compress.quant.format import load_quantized

    a = two_results["A"]
    with pytest.raises(IsADirectoryError, match=f"{a} is a folder; give the mask file itself"):
        li.load_masks(a)
    with pytest.raises(IsADirectoryError, match=f"{a} is a folder; give the quantized file itself.*attribution"):
        load_quantized(a)


# ------------------------------------------------------------------ H7-API4 / API3 / TS4
def test_numbers_as_strings_bad_top_counts_and_huge_seeds_are_refused(two_results, tmp_path, capsys):
    """``build_masks(budget='0.02')`` said "must be in [0,1], got 0.02"; ``top(-1)`` listed all rows
    but the last, ``top(True)`` one row; ``--seed 10**23`` was reduced mod 2**64."""
    from lrm_interp.checks import SEED_MAX, check_float, check_int, check_seed, seed_int
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.testing import tiny_model

    with pytest.raises(ValueError, match=r"got '0\.02' \(str\)"):
        check_float("budget", "0.02", min=0.0, max=1.0)
    with pytest.raises(ValueError, match=r"got '3' \(str\)"):
        check_int("bits", "3", min=2, max=8)
    with pytest.raises(ValueError, match=r"got True \(bool\)"):
        check_int("n", True)
    with pytest.raises(ValueError, match=r"got 9 *$"):
        check_int("bits", 9, min=2, max=8)
    with pytest.raises(ValueError, match=r"bits must be .*got '3' \(str\)"):
        quantize_model_(tiny_model(), bits="3", progress=False)
    res = li.Attribution.load(two_results["A"])
    for k in (-1, 0, True, 1.5):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            res.top(k)
    assert len(res.top(1)) == 1
    assert check_seed("seed", SEED_MAX) == SEED_MAX
    for bad in (SEED_MAX + 1, 10**23, -1):
        with pytest.raises(ValueError, match=r"seed must be an integer >= 0 \(at most 2\*\*63 - 1\)"):
            check_seed("seed", bad)
    with pytest.raises(Exception, match=r"must be an integer >= 0 \(at most"):
        seed_int(str(10**23))
    capsys.readouterr()
    argv = ["protect", "--scores", two_results["A"], "--model", "toy", "--data", two_results["gold"]]
    argv += ["--budget", "0.02", "--saliency", "random", "--seed", 10**23, "--out", tmp_path / "r.safetensors"]
    assert _rc(argv) == 2
    assert "--seed: must be an integer >= 0 (at most 2**63 - 1)" in _err_line(capsys)
    from lrm_interp.toy.train import check_train_settings

    with pytest.raises(ValueError, match=r"seed must be an integer >= 0 \(at most 2\*\*63 - 1\)"):
        check_train_settings(seed=2**64)


# ------------------------------------------------------------------ H7-API5 / API10
def test_masks_as_a_path_and_the_load_masks_pair_round_trip(tmp_path):
    """``quantize_model_(masks='m.safetensors')``: KeyError listing the path's characters;
    ``save_masks(load_masks(p), q)``: AttributeError on a tuple."""
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.encoding import load_masks, save_masks
    from lrm_interp.protect.masks import ProtectionMask
    from lrm_interp.testing import tiny_model

    torch.manual_seed(0)
    model = tiny_model()
    site = find_sites(model)[0]
    pm = ProtectionMask.from_indices(site.name, (site.out_features, site.in_features), [0, 1, 2])
    mask = pm.dense()
    p = tmp_path / "m.safetensors"
    save_masks({site.name: pm}, p, metadata={"note": 1})
    with pytest.warns(UserWarning, match="records no model"):
        pair = load_masks(p)
    q = save_masks(pair, tmp_path / "q.safetensors")  # the pair load_masks returns
    with pytest.warns(UserWarning, match="records no model"):
        again, extra = load_masks(q)
    assert extra == {"note": 1} and torch.equal(again[site.name].dense(), mask)
    with pytest.raises(TypeError, match="masks must be a .*mapping"):
        save_masks(["x"], tmp_path / "z.safetensors")
    a, b = tiny_model(), tiny_model()
    b.load_state_dict(a.state_dict())
    with pytest.raises(TypeError, match=r"masks is a path .*load_masks\(path\)\[0\]"):
        quantize_model_(a, bits=3, masks=str(p), progress=False)  # compress does not read protect's format
    quantize_model_(a, bits=3, masks=pair, progress=False)  # the pair load_masks returns
    quantize_model_(b, bits=3, masks=pair[0], progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(TypeError, match="masks must be a .*mapping.*or the pair load_masks returns, got int"):
        quantize_model_(tiny_model(), bits=3, masks=5, progress=False)
    res_heatmap_err = None
    try:
        li.Attribution(("backtracking",), (site,), torch.ones(1, 1), "dom").heatmap("plot.png")
    except TypeError as e:
        res_heatmap_err = str(e)
    assert res_heatmap_err and "behaviors must be a list of behaviour labels" in res_heatmap_err
    assert "'plot.png'" in res_heatmap_err and "savefig" in res_heatmap_err


# ------------------------------------------------------------------ H7-API6 / API-sn
def test_site_patterns_that_match_everything_or_the_head_and_unknown_names(two_results, tmp_path, capsys):
    """``--sites ''`` / ``'mlp|'`` ended in "MaskedSum weights are (1,1,57) but the site tensor is
    [1,56,...]"; ``sites=['nope']`` said "(e.g. [])". ``'mlp|'`` (every site: a typo, or an unset
    variable after the bar) is refused since H32-EMPTYMATCH."""
    gold = two_results["gold"]
    capsys.readouterr()
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", tmp_path / "E", "--sites", "", "--quiet"]) == 2
    assert "sites regex '' is empty" in _err_line(capsys)
    with pytest.raises(ValueError, match="names the output head 'lm_head'"):
        li.attribute("toy", gold, sites="lm_head", progress=False)
    with pytest.raises(ValueError, match="names the output head 'lm_head'"):
        li.attribute("toy", gold, sites=["model.layers.0.mlp.up_proj", "lm_head"], progress=False)
    with pytest.raises(ValueError, match=r"sites regex 'mlp\|' matches the empty string"):  # H32-EMPTYMATCH
        li.attribute("toy", gold, sites="mlp|", progress=False)  # it scored every site inside the layers
    with pytest.raises(KeyError, match=r"'nope' is not a linear module .*\['model\.layers\.0\."):
        li.attribute("toy", gold, sites=["nope"], progress=False)


# ------------------------------------------------------------------ H7-API8 / API8b / N1
def test_trace_fields_are_typed_and_overflowing_numbers_refused(tmp_path):
    """``BehaviorSpan('b', 0.0, 20.5)`` was accepted and written, then refused by the loader;
    ``ReasoningTrace(response=None)`` / ``id=5`` failed far away; ``1e400`` loaded as inf."""
    from lrm_interp._io import loads_strict

    for args in (("backtracking", 0.0, 20), ("backtracking", 0, 20.5), ("backtracking", True, 2)):
        with pytest.raises(TypeError, match="must be an int character offset"):
            li.BehaviorSpan(*args)
    assert li.BehaviorSpan("backtracking", torch.tensor(1).item(), 2).start == 1
    for kw, msg in (
        ({"id": "t", "prompt": "", "response": None}, "trace 't': response must be a str, got NoneType"),
        ({"id": 5, "prompt": "", "response": "x"}, "trace id must be a str, got int 5"),
        ({"id": "t", "prompt": b"", "response": "x"}, "trace 't': prompt must be a str"),
        ({"id": "t", "prompt": "", "response": "x", "spans": [("b", 0, 1)]}, r"spans\[0\] must be a BehaviorSpan"),
    ):
        with pytest.raises(TypeError, match=msg):
            li.ReasoningTrace(**kw)
    bad = tmp_path / "n1.jsonl"
    bad.write_text('{"id": "a", "prompt": "p", "response": "r", "metadata": {"x": 1e400}}\n')
    with pytest.raises(ValueError, match=rf"{bad}:1: the number 1e400 is too large for a float"):
        li.load_dataset(bad)
    assert loads_strict('{"x": 1e-400, "y": 1.5e300}', "w") == {"x": 0.0, "y": 1.5e300}


# ------------------------------------------------------------------ H7-D4
def test_a_failed_safetensors_write_names_the_path_and_the_reason(tmp_path):
    """``quantize`` on a full disk said "unreadable safetensors file (Error while serializing: I/O
    error: No space left on device (os error 28))", naming no path."""
    from safetensors import SafetensorError

    from lrm_interp._io import naming_destination

    out = tmp_path / "Q"
    with pytest.raises(OSError) as e:
        with naming_destination(out, tmp_path / ".Q.x1.tmp"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert e.value.errno == 28 and e.value.filename == str(out)
    assert e.value.strerror.startswith("No space left on device")
    with pytest.raises(SafetensorError, match="header too large"):  # a read error is not touched
        with naming_destination(out):
            raise SafetensorError("Error while deserializing header: header too large")
