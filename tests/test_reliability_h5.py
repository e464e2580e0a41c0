"""Cases a fifth hostile probe run found (issue 22, "nothing lost, nothing silent"), H5-P10 / P9,
H8, Q6, R8 / R9, C5 / C8 / C4 and S22 / S10: ``annotate``'s default report path replacing a user's
file or the input, ``bench score`` replacing good tables with an empty grading, ``quantize
--overwrite`` deleting the user's files in its folder, ``protect --never '.*'`` / ``--always '.*'``,
``compare`` of different traces or models, and trace keys dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold


# ------------------------------------------------------------------ H5-P10 / P9
def test_annotate_default_report_path_is_checked_like_an_explicit_report(tmp_path, capsys):
    """``--report`` defaults to OUT.report.json: an existing file there was replaced without
    --overwrite (P10), and with --overwrite a --data at that path was replaced by the report (P9)."""
    gold = _gold(tmp_path)
    mine = tmp_path / "res.jsonl.report.json"
    mine.write_text('{"mine": 1}')
    capsys.readouterr()
    assert _rc(["annotate", "--data", gold, "--out", tmp_path / "res.jsonl", "--quiet"]) == 2
    err = _err_line(capsys)
    assert "--report (default OUT.report.json)" in err and "res.jsonl.report.json" in err and "--overwrite" in err
    assert mine.read_text() == '{"mine": 1}' and not (tmp_path / "res.jsonl").exists()
    # the input at the default report path: refused even with --overwrite
    inp = tmp_path / "in.jsonl.report.json"
    inp.write_bytes(gold.read_bytes())
    argv = ["annotate", "--data", inp, "--out", tmp_path / "in.jsonl", "--overwrite", "--quiet"]
    assert _rc(argv) == 2
    err = _err_line(capsys)
    assert "is the input --data" in err and "in.jsonl.report.json" in err
    assert inp.read_bytes() == gold.read_bytes() and not (tmp_path / "in.jsonl").exists()
    # with --overwrite, the default report is replaced as before
    assert _rc(["annotate", "--data", gold, "--out", tmp_path / "res.jsonl", "--overwrite", "--quiet"]) == 0
    assert "annotator" in json.loads(mine.read_text())


# ------------------------------------------------------------------ H5-H8
def _bench_run(run: Path, n: int = 3) -> Path:
    """A ``bench run`` folder of the toy math family (only math generated)."""
    from lrm_interp.data.benchmarks import load
    from lrm_interp.evaluation.backends import Backend, GenerationSettings
    from lrm_interp.evaluation.bench_run import run_benchmark
    from lrm_interp.evaluation.generation import Generation

    items = {"math": load("math", None, per_family=n, toy_seed=2)}
    gold = {it.prompt: it.gold for it in items["math"]}

    class Right(Backend):
        name = "right"

        def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc=""):
            out = []
            for i, p in enumerate(prompts):
                gens = [Generation(f"Let me add.</think>\nThe answer is {gold[p]}.", 9, "stop")]
                out.append(gens)
                if on_result is not None:
                    on_result(i, gens)
            return out

    st = GenerationSettings(max_new_tokens=16, temperature=0, batch_size=1)
    run_benchmark(Right(), items, run, settings=st, model="right", progress=False)
    return run


def test_bench_score_of_tasks_never_generated_is_refused_and_keeps_the_earlier_tables(tmp_path, capsys):
    """``bench score --tasks logic`` on a run that generated math only exited 0 with an all-empty
    table, and replaced the good ``<run>/scores`` tables of an earlier ``--tasks math``."""
    run = _bench_run(tmp_path / "run")
    score = ["bench", "score", "--outputs", run, "--per-family", "3", "--quiet", "--no-plots"]
    assert _rc([*score, "--tasks", "math"]) == 0
    before = {f.name: f.read_bytes() for f in (run / "scores").iterdir()}
    assert "math" in before["accuracy.csv"].decode()
    capsys.readouterr()
    assert _rc([*score, "--tasks", "logic"]) == 2
    err = _err_line(capsys)
    assert "nothing to grade for logic" in err and "0 of 3 outputs exist" in err and str(run) in err
    assert {f.name: f.read_bytes() for f in (run / "scores").iterdir()} == before
    # an explicit --out is not created either
    assert _rc([*score, "--tasks", "logic", "--out", tmp_path / "s"]) == 2
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------ H5-Q6
def test_quantize_overwrite_refuses_a_result_folder_holding_the_users_files(tmp_path, capsys):
    """``quantize --overwrite`` onto an earlier result replaced the folder whole, deleting the
    user's ``my_notes.md`` in it: now refused up front, naming the file; a result holding only what
    quantize wrote is still replaced."""
    q = tmp_path / "Q"
    argv = ["quantize", "--model", "toy", "--quiet", "--out", q]
    assert _rc([*argv, "--bits", 3]) == 0
    rec = json.loads((q / "lrm_interp_quantization.json").read_text())
    assert "lrm_interp_quantization.json" in rec["files"] and "config.json" in rec["files"]
    (q / "my_notes.md").write_text("notes")
    capsys.readouterr()
    assert _rc([*argv, "--bits", 4, "--overwrite"]) == 2
    err = _err_line(capsys)
    assert "my_notes.md" in err and "did not write" in err
    assert (q / "my_notes.md").read_text() == "notes"
    assert json.loads((q / "lrm_interp_quantization.json").read_text())["bits"] == 3
    (q / "my_notes.md").unlink()
    (q / "sub").mkdir()
    assert _rc([*argv, "--bits", 4, "--overwrite"]) == 2 and "sub/" in _err_line(capsys)
    (q / "sub").rmdir()
    assert _rc([*argv, "--bits", 4, "--overwrite"]) == 0
    assert json.loads((q / "lrm_interp_quantization.json").read_text())["bits"] == 4
    # an earlier result without a file list (before it was recorded): checked against quantize's names
    rec = json.loads((q / "lrm_interp_quantization.json").read_text())
    del rec["files"]
    (q / "lrm_interp_quantization.json").write_text(json.dumps(rec))
    (q / "README_mine.md").write_text("mine")
    assert _rc([*argv, "--bits", 3, "--overwrite"]) == 2 and "README_mine.md" in _err_line(capsys)
    (q / "README_mine.md").unlink()
    assert _rc([*argv, "--bits", 3, "--overwrite"]) == 0


# ------------------------------------------------------------------ H5-R8 / R9
@pytest.fixture(scope="module")
def toy_attr(tmp_path_factory) -> tuple[Path, Path]:
    """An attribution of the toy model on one gold trace per family: (traces, result folder)."""
    d = tmp_path_factory.mktemp("h5attr")
    gold = _gold(d)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / "A", "--quiet"]) == 0
    return gold, d / "A"


def test_protect_refuses_never_matching_every_site_and_names_the_share_of_always(toy_attr, tmp_path, capsys):
    """``--never '.*' --budget 0.02`` wrote an empty mask (a budget above 0 that protects nothing is
    refused); ``--always '.*' --budget 0.02`` protected 100 % without a word."""
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.protect.policies import BudgetExceededWarning, build_masks, check_always_never

    gold, attr = toy_attr
    base = ["protect", "--scores", attr, "--model", "toy", "--data", gold, "--budget", "0.02", "--quiet"]
    capsys.readouterr()
    assert _rc([*base, "--never", ".*", "--out", tmp_path / "never.safetensors"]) == 2
    err = _err_line(capsys)
    assert "--never '.*' matches all" in err and "--budget 0.02" in err and "protects 0 weights" in err
    assert not (tmp_path / "never.safetensors").exists()
    assert _rc([*base, "--always", ".*", "--out", tmp_path / "always.safetensors"]) == 0
    cap = capsys.readouterr()
    assert "warning: --always '.*' protects" in cap.err and "(100.00%), above --budget 0.02 (2.00%)" in cap.err
    assert "(100.00%)" in cap.out
    # the library: the same refusal, and a BudgetExceededWarning naming the share
    sites = list(Attribution.load(attr).sites)
    with pytest.raises(ValueError, match="never regex '.\\*' matches all"):
        build_masks(sites, "modules_by_score", 0.02, scores={s.name: 1.0 for s in sites}, never=".*")
    with pytest.warns(BudgetExceededWarning, match=r"\(100\.00%\), above the budget 0\.02"):
        build_masks(sites, "modules_by_score", 0.02, scores={s.name: 1.0 for s in sites}, always=".*")
    assert check_always_never(sites, 0.0, never=".*") is None  # budget 0: the no-protection baseline
    assert check_always_never(sites, 0.02) is None


# ------------------------------------------------------------------ H5-C5 / C8 / C4
def _attribute(d: Path, data: Path, name: str) -> Path:
    assert _rc(["attribute", "--model", "toy", "--data", data, "--out", d / name, "--quiet"]) == 0
    return d / name


def test_compare_refuses_edited_traces_and_another_model_config_and_says_zero_only_when_it_is(
    toy_attr, tmp_path, capsys
):
    """``compare`` checked only ids and span counts (C5: an edited response went through, "zero by
    construction" claimed), said nothing of two models with other configs (C8), and claimed "zero by
    construction" for other traces on the same weights under --allow-mismatch (C4)."""
    import shutil

    from lrm_interp.attribution.results import Attribution, comparability
    from lrm_interp.attribution.resume import provenance_checksum

    gold, a = toy_attr
    # C5: the same ids and span counts, another content (one character before each response)
    edited = tmp_path / "edited.jsonl"
    with edited.open("w") as f:
        for line in gold.read_text().splitlines():
            d = json.loads(line)
            d["response"] = "x" + d["response"]
            for s in d["spans"]:
                s["start"] += 1
                s["end"] += 1
            f.write(json.dumps(d) + "\n")
    a_ed = _attribute(tmp_path, edited, "A_ed")
    capsys.readouterr()
    assert _rc(["compare", "--original", a, "--compressed", a_ed, "--out", tmp_path / "C5"]) == 2
    err = _err_line(capsys)
    assert "different traces: 3 of 3 traces share an id but differ in content" in err
    assert not (tmp_path / "C5").exists()
    assert _rc(["compare", "--original", a, "--compressed", a_ed, "--out", tmp_path / "C5", "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert "zero by construction" not in err and "the shift measures only the differences above" in err
    # the same result twice: zero by construction, and said so
    assert _rc(["compare", "--original", a, "--compressed", a, "--out", tmp_path / "C0"]) == 0
    assert "same weights and traces: the shift is zero by construction" in capsys.readouterr().err
    # C4: other traces (6, not 3) on the same weights under --allow-mismatch
    a6 = _attribute(tmp_path, _gold(tmp_path, "g6.jsonl", n=2), "A6")
    capsys.readouterr()
    assert _rc(["compare", "--original", a, "--compressed", a6, "--out", tmp_path / "C4", "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert "different traces: traces 3 vs 6" in err and "zero by construction" not in err
    # C8: another model config (same site names): refused naming both fingerprints
    other = tmp_path / "A_other"
    shutil.copytree(a, other)
    meta = json.loads((other / "attribution.json").read_text())
    model = meta["provenance"]["model"]
    fo = model["config_fingerprint"]
    model.update(config_fingerprint="0" * 32, weights_fingerprint="1" * 32, n_params=57824)
    meta["provenance_sha256"] = provenance_checksum(meta["provenance"])  # as a result of that model records it
    (other / "attribution.json").write_text(json.dumps(meta))
    assert _rc(["compare", "--original", a, "--compressed", other, "--out", tmp_path / "C8"]) == 2
    err = _err_line(capsys)
    assert f"different model configs (config_fingerprint {fo} vs {'0' * 32}" in err and "57824" in err
    assert not (tmp_path / "C8").exists()
    # a compressed copy (other weights, the same config) still compares without a problem
    model.update(config_fingerprint=fo)
    meta["provenance_sha256"] = provenance_checksum(meta["provenance"])
    (other / "attribution.json").write_text(json.dumps(meta))
    problems, notes = comparability(Attribution.load(a), Attribution.load(other))
    assert problems == [] and not any("zero by construction" in n for n in notes)


# ------------------------------------------------------------------ H5-S22 / S10
def test_near_miss_key_beside_its_field_and_unknown_span_keys_are_refused(tmp_path, capsys):
    """``"spans": []`` beside ``"Spans": [...]`` loaded without spans (the real ones became
    metadata); span keys other than behavior/start/end ("Start", "behaviour") were dropped."""
    from lrm_interp.data.traces import ReasoningDataset, TraceFormatError

    gold = _gold(tmp_path)
    recs = [json.loads(x) for x in gold.read_text().splitlines()]

    def write(name, edit):
        rs = [json.loads(json.dumps(r)) for r in recs]
        edit(rs)
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in rs))
        return p

    def two(rs):
        rs[0]["Spans"], rs[0]["spans"] = rs[0]["spans"], []

    p = write("spans2.jsonl", two)
    with pytest.raises(
        TraceFormatError,
        match=r"spans2\.jsonl:1: key 'Spans' is not a trace field; did you mean 'spans'\? \(beside 'spans'",
    ):
        ReasoningDataset.load_jsonl(p)
    capsys.readouterr()
    assert _rc(["parse", "--data", p, "--out", tmp_path / "p.jsonl"]) == 2
    assert "spans2.jsonl:1" in _err_line(capsys) and not (tmp_path / "p.jsonl").exists()

    def start(rs):
        rs[1]["spans"][0]["Start"] = 3

    with pytest.raises(
        TraceFormatError, match=r":2: span #0 has the key 'Start', which is not a span field; did you mean 'start'\?"
    ):
        ReasoningDataset.load_jsonl(write("start.jsonl", start))

    def behaviour(rs):
        rs[0]["spans"][0]["behaviour"] = "backtracking"

    with pytest.raises(TraceFormatError, match=r":1: span #0 has the key 'behaviour'.*did you mean 'behavior'\?"):
        ReasoningDataset.load_jsonl(write("behaviour.jsonl", behaviour))

    def other(rs):
        rs[0]["spans"][0]["label"] = "x"

    with pytest.raises(TraceFormatError, match=r"span #0 has the key 'label', which is not a span field \(fields"):
        ReasoningDataset.load_jsonl(write("label.jsonl", other))

    # the file as written loads, and other top-level keys still go to metadata
    def extra(rs):
        rs[0]["source_file"] = "a.txt"

    ds = ReasoningDataset.load_jsonl(write("ok.jsonl", extra))
    assert ds[0].metadata["source_file"] == "a.txt" and ds[0].spans
