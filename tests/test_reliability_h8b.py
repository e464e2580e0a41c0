"""Cases a seventh hostile probe run found (issue 22, "nothing lost, nothing silent"), part B: two
``compare`` / ``bench score`` runs into one folder (H8-CC), ``compare`` with its roles swapped
(CR1), ``bench score`` flags it ignored (BSf), a closed or full standard output (BP1, BP2), the
message of an interrupted command that keeps no partial work (QT) and ``save_quantized`` given a
model (SQ)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli_env as _env
from cli_run import err_line as _err_line
from cli_run import race as _race
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold


def _digest(folder: Path, names) -> tuple[str, ...]:
    return tuple(hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study of the toy model: ``attribution_fp32`` and its 3-bit RTN copy ``attribution_rtn3``."""
    d = tmp_path_factory.mktemp("h8b")
    gold = _gold(d, n=2)
    argv = ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", d / "SC", "--quiet"]
    assert _rc(argv) == 0
    return d / "SC"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    """A ``bench run`` folder of the toy model on two math items (with its generations.jsonl)."""
    d = tmp_path_factory.mktemp("h8b_bench")
    argv = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 2, "--max-new-tokens", 40]
    assert _rc([*argv, "--out", d / "BR", "--quiet"]) == 0
    return d / "BR"


# ------------------------------------------------------------------ H8-CC
SHIFT = ("shift.csv", "shift.png")


def test_two_compare_runs_into_one_folder_never_both_report_success_for_one_result(study, tmp_path, capsys):
    """Two ``compare`` runs into one new ``--out`` both exited 0 and printed "wrote …", but only one
    result was there. Now a new ``--out`` is published whole and never over what appeared meanwhile:
    exactly one run succeeds and the folder holds its result (csv and png of the same run); into an
    existing folder one run at a time writes (a second live one is refused naming the first), so
    either one is refused or both ran one after the other and the folder holds the last one's pair."""
    fp, q3 = study / "attribution_fp32", study / "attribution_rtn3"
    runs = {
        "a": ["compare", "--original", fp, "--compressed", q3],
        "b": ["compare", "--original", fp, "--compressed", fp],  # same weights: a shift of zero
    }
    ref = {}
    for k, argv in runs.items():  # each run's result, alone
        assert _rc([*argv, "--out", tmp_path / f"ref_{k}"]) == 0
        ref[k] = _digest(tmp_path / f"ref_{k}", SHIFT)
    assert ref["a"][0] != ref["b"][0]
    target = "lrm_interp.attribution.results:ImportanceShift.write_tables"
    for i in range(3):  # a new --out, both past their checks before either writes
        out = tmp_path / f"CC{i}"
        (ra, ea), (rb, eb) = _race(
            tmp_path / f"bar{i}", target, 60, [*runs["a"], "--out", out], [*runs["b"], "--out", out]
        )
        assert sorted([ra, rb]) == [0, 2], (ra, ea, rb, eb)
        won, lost_err = ("a", eb) if ra == 0 else ("b", ea)
        assert "was created by another run while this one ran: its result is kept" in lost_err, lost_err
        assert "\n" not in lost_err.splitlines()[-1] and "Traceback" not in lost_err
        assert _digest(out, SHIFT) == ref[won]
        assert sorted(p.name for p in out.iterdir()) == sorted(SHIFT)
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    for i in range(1):  # an existing --out with --overwrite: one run at a time
        out = tmp_path / f"CO{i}"
        out.mkdir()
        (ra, ea), (rb, eb) = _race(
            tmp_path / f"bo{i}",
            target,
            4,
            [*runs["a"], "--out", out, "--overwrite"],
            [*runs["b"], "--out", out, "--overwrite"],
        )
        assert 0 in (ra, rb) and {ra, rb} <= {0, 2}, (ra, ea, rb, eb)
        if 2 in (ra, rb):
            won, lost_err = ("a", eb) if ra == 0 else ("b", ea)
            assert "is in use by another 'lrm-interp compare' run (pid " in lost_err, lost_err
            assert _digest(out, SHIFT) == ref[won]
        else:  # one after the other: the folder holds one run's pair, never a mix
            assert _digest(out, SHIFT) in (ref["a"], ref["b"])
        assert sorted(p.name for p in out.iterdir()) == sorted(SHIFT)  # no lock file, no staging folder left
    # the lock names its holder; a folder in use is refused before anything is read
    out = tmp_path / "held"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom lrm_interp.cli.bench import folder_lock\n"
            "with folder_lock(Path(sys.argv[1]), 'compare'):\n    print('held', flush=True)\n    time.sleep(120)\n",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert _rc([*runs["a"], "--out", out]) == 2
        assert f"--out {out} is in use by another 'lrm-interp compare' run (pid {holder.pid})" in _err_line(capsys)
        assert not (out / "shift.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _rc([*runs["a"], "--out", out]) == 0  # a killed holder holds no lock
    assert sorted(p.name for p in out.iterdir()) == sorted(SHIFT)


def test_two_bench_scores_into_one_folder_never_both_report_success_for_one_result(bench_run, tmp_path):
    """``bench score`` did the same as ``compare`` now and then (its tables were written one by one)."""
    import shutil

    other = tmp_path / "BR2"  # the same run graded without the think requirement: other tables
    shutil.copytree(bench_run, other)
    base = ["bench", "score", "--tasks", "math", "--per-family", 2, "--quiet"]
    runs = {"a": [*base, "--outputs", bench_run], "b": [*base, "--outputs", other, "--no-require-think", "--no-plots"]}
    names = {"a": None, "b": None}
    ref = {}
    for k, argv in runs.items():
        assert _rc([*argv, "--out", tmp_path / f"ref_{k}"]) == 0
        names[k] = sorted(p.name for p in (tmp_path / f"ref_{k}").iterdir())
        ref[k] = _digest(tmp_path / f"ref_{k}", [n for n in names[k] if n.endswith((".csv", ".md", ".json"))])
    target = "lrm_interp.evaluation.bench_score:BenchScores.write_tables"
    for i in range(2):
        out = tmp_path / f"S{i}"
        (ra, ea), (rb, eb) = _race(
            tmp_path / f"bar{i}", target, 60, [*runs["a"], "--out", out], [*runs["b"], "--out", out]
        )
        assert sorted([ra, rb]) == [0, 2], (ra, ea, rb, eb)
        won, lost_err = ("a", eb) if ra == 0 else ("b", ea)
        assert "was created by another run while this one ran: its result is kept" in lost_err, lost_err
        assert sorted(p.name for p in out.iterdir()) == names[won]
        assert _digest(out, [n for n in names[won] if n.endswith((".csv", ".md", ".json"))]) == ref[won]
    # the Python API: replace=False never writes into a folder that holds files
    from lrm_interp.data.benchmarks import load
    from lrm_interp.evaluation.bench_score import score_outputs

    sc = score_outputs(bench_run, {"math": load("math", per_family=2)}, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "S0").iterdir()}
    with pytest.raises(FileExistsError, match="S0"):
        sc.write_tables(tmp_path / "S0", replace=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "S0").iterdir()} == before
    assert [p.name for p in sc.write_tables(tmp_path / "new", replace=False)][-1] == "score_files.json"


# ------------------------------------------------------------------ H8-CR1
def test_compare_with_original_and_compressed_swapped_is_refused(study, tmp_path, capsys):
    """``compare --original <the 3-bit copy> --compressed <full precision>`` exited 0 without a word,
    every sign inverted."""
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.provenance import swapped_compression

    fp, q3 = study / "attribution_fp32", study / "attribution_rtn3"
    capsys.readouterr()
    assert _rc(["compare", "--original", q3, "--compressed", fp, "--out", tmp_path / "CR1"]) == 2
    assert _err_line(capsys) == (
        f"lrm-interp compare: error: --original {q3} is a 3-bit RTN copy and --compressed {fp} is not: did you "
        "swap --original and --compressed? (pass --allow-mismatch to compare them in this order anyway)"
    )
    assert not (tmp_path / "CR1").exists()
    # the escape flag: compared, with the same sentence as a warning
    assert _rc(["compare", "--original", q3, "--compressed", fp, "--out", tmp_path / "CR1", "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert err.count("did you swap --original and --compressed?") == 1 and "warning" in err
    # the right order, and two results of the same model: no word about it
    assert _rc(["compare", "--original", fp, "--compressed", q3, "--out", tmp_path / "ok"]) == 0
    assert "swap" not in capsys.readouterr().err
    # the one check (for the CLI and the Python API), on the provenance of the results
    mo = Attribution.load(q3).provenance["model"]
    mf = Attribution.load(fp).provenance["model"]
    assert swapped_compression(mo, mf) == "a 3-bit RTN copy"
    assert swapped_compression(mf, mo) is None and swapped_compression(mo, mo) is None
    assert swapped_compression({}, mf) is None  # an older result records no steps: nothing to say
    gptq = {"record": {"compression": [{"kind": "quantization", "method": "gptq", "bits": 4}]}}
    assert swapped_compression(mo, gptq) is None  # two other compressions: a sideways comparison
    pruned = {"record": {"compression": [{"kind": "pruning", "method": "wanda", "sparsity": 0.5}]}}
    both = {"record": {"compression": pruned["record"]["compression"] + gptq["record"]["compression"]}}
    assert swapped_compression(both, pruned) == "a 4-bit GPTQ copy"
    assert swapped_compression(pruned, {"record": {"compression": []}}) == "a 50% sparse Wanda copy"
    # the Python API: compare() refuses the swapped pair (strict) and says it under strict=False
    from lrm_interp.attribution.results import compare

    with pytest.raises(ValueError, match="did you swap original and compressed"):
        compare(q3, fp)
    with pytest.warns(UserWarning, match="did you swap original and compressed"):
        compare(q3, fp, strict=False)


# ------------------------------------------------------------------ H8-BSf
def test_bench_score_refuses_length_flags_it_would_ignore(bench_run, tmp_path, capsys):
    """``bench score`` ignored ``--max-new-tokens`` / ``--tokenizer`` on a run with generations.jsonl,
    and ``--max-new-tokens`` without ``--tokenizer`` on foreign outputs."""
    import shutil

    from lrm_interp.data.benchmarks import load
    from lrm_interp.evaluation.bench_score import score_outputs

    base = ["bench", "score", "--tasks", "math", "--per-family", 2, "--no-plots", "--quiet"]
    capsys.readouterr()
    for extra, given in ((["--max-new-tokens", 10], "--max-new-tokens"), (["--tokenizer", "toy"], "--tokenizer")):
        assert _rc([*base, "--outputs", bench_run, *extra, "--out", tmp_path / "BS"]) == 2
        err = _err_line(capsys)
        assert "--max-new-tokens / --tokenizer apply only to outputs without generations.jsonl" in err, err
        assert f"drop {given}" in err and str(bench_run) in err
    foreign = tmp_path / "FL"
    foreign.mkdir()
    shutil.copytree(bench_run / "toy" / "outputs", foreign / "outputs")
    assert _rc([*base, "--outputs", foreign, "--max-new-tokens", 10, "--out", tmp_path / "BS"]) == 2
    assert "--max-new-tokens needs --tokenizer" in _err_line(capsys)
    assert not (tmp_path / "BS").exists()
    # with both, on foreign outputs: the limit is decided (every toy output is over 1 token)
    assert (
        _rc([*base, "--outputs", foreign, "--max-new-tokens", 1, "--tokenizer", "toy", "--out", tmp_path / "BS"]) == 0
    )
    summary = (tmp_path / "BS" / "summary.csv").read_text()
    assert "failures_at_limit" in summary
    # the Python API refuses the same
    items = {"math": load("math", per_family=2)}
    with pytest.raises(ValueError, match="apply only to outputs without generations.jsonl"):
        score_outputs(bench_run, items, max_new_tokens=10, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens needs a tokenizer"):
        score_outputs(foreign, items, max_new_tokens=10, progress=False)


# ------------------------------------------------------------------ H8-BP1 / BP2
def _cli_subprocess(args, **kw) -> subprocess.CompletedProcess:
    code = "import sys\nfrom lrm_interp.cli.main import main\nsys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=_env(), timeout=300, **kw)


def test_a_missing_or_full_standard_output_does_not_fail_a_finished_command(tmp_path):
    """With standard output closed (``>&-``) a command that did its work ended in "internal error"
    and a traceback, exit 1; with it on a full device: "error: [Errno 28] No space left on device",
    exit 2, although ``--out`` was written."""
    traces = ["toy", "traces", "--gold", "--per-family", 1]
    # closed (not /dev/null): the child starts without descriptor 1, so sys.stdout is None
    r = _cli_subprocess(
        [*traces, "--out", tmp_path / "a.jsonl"], stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1)
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 3
    # both closed, and a refusal: its exit status, no traceback anywhere
    r = _cli_subprocess(
        [*traces, "--out", tmp_path / "a.jsonl"], preexec_fn=lambda: (os.close(1), os.close(2)), capture_output=False
    )
    assert r.returncode == 2
    # the shell's way: `>&-`, and a parse that reads what it wrote
    code = "import sys\nfrom lrm_interp.cli.main import main\nsys.exit(main())"
    shell = f'"{sys.executable}" -c "$0" parse --data "$1" --out "$2" >&-'
    r = subprocess.run(
        ["bash", "-c", shell, code, str(tmp_path / "a.jsonl"), str(tmp_path / "p.jsonl")],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    assert (r.returncode, r.stderr) == (0, "") and (tmp_path / "p.jsonl").is_file()
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        r = _cli_subprocess([*traces, "--out", tmp_path / "b.jsonl"], stdout=full, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip() == (
            "lrm-interp toy traces: warning: could not print the report (No space left on device); "
            "the outputs were written"
        )
        assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 3
        # an error of the command itself stays an error, its own line
        r = _cli_subprocess([*traces, "--out", tmp_path / "b.jsonl"], stdout=full, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 2 and r.stderr.strip().endswith(
            "the file exists; pass --overwrite to replace it, or choose another path"
        )
        # a command whose whole work is the print: that is a failure, said in one line
        r = _cli_subprocess(
            ["toy", "eval", "--model", "toy", "--per-family", 1, "--quiet"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert r.returncode == 2
        assert r.stderr.strip() == (
            "lrm-interp toy eval: error: could not print the result (No space left on device); nothing else was written"
        )


def test_a_write_error_of_an_output_file_still_fails(tmp_path, capsys, monkeypatch):
    """Only the report on standard output is forgiven: ENOSPC writing ``--out`` stays an error."""
    import errno

    import lrm_interp.cli.main as cli_main

    def command(a):
        raise OSError(errno.ENOSPC, "No space left on device", str(a.out))

    monkeypatch.setattr(cli_main, "cmd_parse", command)
    capsys.readouterr()
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl"]) == 2
    assert "No space left on device" in _err_line(capsys)


# ------------------------------------------------------------------ H8-QT
def _every_command() -> list[str]:
    """The name of every subcommand (``toy train``, ``bench score``, ...)."""
    import argparse

    from lrm_interp.cli.main import build_parser

    names = []

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            names.append(prefix)
            return
        for name, child in subs[0].choices.items():
            walk(child, f"{prefix} {name}".strip())
        if p.get_default("fn") is not None:  # `annotate` runs itself too
            names.append(prefix)

    walk(build_parser(), "")
    return sorted(names)


def test_an_interrupted_command_promises_a_resume_only_where_it_keeps_its_work(tmp_path, capsys, monkeypatch):
    """SIGTERM / Ctrl-C of ``quantize``, ``toy train``, ``protect``, ``compare`` … printed "terminated;
    run the same command again to resume (finished work is kept)", though they keep no partial work."""
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this process")
    import lrm_interp.cli.main as cli_main
    import lrm_interp.compress.quant as quant

    assert sorted(cli_main.ON_INTERRUPT) == _every_command()  # one row per command, in one table
    q = tmp_path / "Q"
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", q, "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in q.iterdir()}

    def killed(*a, **k):  # `kill PID` while the weights are quantized
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(quant, "quantize_model_", killed)
    capsys.readouterr()
    assert _rc(["quantize", "--model", "toy", "--bits", 4, "--out", q, "--overwrite", "--quiet"]) == 143
    assert _err_line(capsys) == "lrm-interp quantize: terminated; nothing was written (--out is unchanged)"
    assert {p.name: p.read_bytes() for p in q.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

    def parse_then_stop(a):  # one output written, the next not yet
        Path(a.out).write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "cmd_parse", parse_then_stop)
    argv = ["parse", "--data", tmp_path, "--out", tmp_path / "o.jsonl", "--report", tmp_path / "r.json"]
    assert _rc(argv) == 130
    assert _err_line(capsys) == (
        "lrm-interp parse: interrupted; it had written --out when it stopped (--report unchanged); check it, "
        "or run the same command again with --overwrite to redo it"
    )

    def stopped(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "cmd_parse", stopped)
    assert _rc(["parse", "--data", tmp_path, "--out", tmp_path / "o2.jsonl", "--report", tmp_path / "r.json"]) == 130
    assert _err_line(capsys) == "lrm-interp parse: interrupted; nothing was written (--out, --report are unchanged)"
    # a command that keeps its finished work still promises the resume
    import lrm_interp.attribution.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: signal.raise_signal(signal.SIGTERM))
    gold = _gold(tmp_path)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", tmp_path / "A", "--quiet"]) == 143
    assert _err_line(capsys) == (
        "lrm-interp attribute: terminated; run the same command again to resume (finished work is kept)"
    )
    # the rows that depend on the arguments: annotate resumes with a cache only
    from lrm_interp.cli.main import _on_interrupt, build_parser

    p = build_parser()
    plain = p.parse_args(["annotate", "--data", "x", "--out", "o.jsonl"])
    cached = p.parse_args(["annotate", "--data", "x", "--out", "o.jsonl", "--cache", "c"])
    assert not _on_interrupt(plain).resumes(plain) and _on_interrupt(cached).resumes(cached)


# ------------------------------------------------------------------ H8-SQ
def test_save_quantized_names_a_wrong_argument_and_can_refuse_to_replace(tmp_path):
    """``save_quantized(model, path)``: "AttributeError: 'LlamaForCausalLM' object has no attribute
    'items'"; and it had no ``replace=``, which the other writers have."""
    import copy

    import lrm_interp as li
    from lrm_interp.compress.quant import load_quantized, quantize_model_, save_quantized

    model, _ = li.load_model("toy")
    with pytest.raises(
        TypeError, match=r"tensors must be a mapping of site name → QuantizedTensor .*got LlamaForCausalLM"
    ):
        save_quantized(model, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match=r"'lm_head.weight' maps to Parameter"):
        save_quantized({"lm_head.weight": model.lm_head.weight}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    rep = quantize_model_(
        copy.deepcopy(model), bits=3, progress=False, keep_tensors=True, sites=["model.layers.0.mlp.up_proj"]
    )
    p = save_quantized(rep.tensors, tmp_path / "q.safetensors", metadata={"bits": 3})
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="q.safetensors"):
        save_quantized(rep.tensors, p, replace=False)
    assert p.read_bytes() == before
    save_quantized(load_quantized(p), tmp_path / "q2.safetensors", replace=False)  # the load_quantized pair
    t2, extra = load_quantized(tmp_path / "q2.safetensors")
    assert extra == {"bits": 3} and list(t2) == list(rep.tensors)
    json.dumps(extra)
