"""Silent results found by the third hostile run (issue 22): duplicate spans counted twice, a
misspelt ``spans`` key, ``experiment protection --only`` matching nothing, unannotated paper-layout
outputs scored as all-negative, repeated list options keeping only the last, ``bench score``
grading an outputs folder changed since the run (and partial variants unmarked), output flags
naming a folder failing only after the work, writers without ``replace=``, ``toy distill --out``
over a folder of other files."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import run_cli as _rc

import lrm_interp
from lrm_interp.cli.main import build_parser
from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace, TraceFormatError


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _record(**kw) -> dict:
    d = {"id": "t0", "prompt": "Q\n<think>\n", "response": "Wait, let me check. So 4.</think>4"}
    d["spans"] = [{"behavior": "backtracking", "start": 0, "end": 19}]
    d.update(kw)
    return d


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# S1: duplicate spans --------------------------------------------------------------------------------


def test_duplicate_spans_are_refused_naming_the_file_line_and_both_spans(tmp_path, capsys):
    """The same label and range twice were counted twice (span counts, DoM's D+, AtP's |D+|)."""
    span = {"behavior": "backtracking", "start": 0, "end": 19}
    p = _write_jsonl(tmp_path / "dup.jsonl", [_record(id="a"), _record(id="b", spans=[span, span])])
    with pytest.raises(
        TraceFormatError, match=r"dup.jsonl:2: trace 'b': span #1 backtracking \[0,19\) duplicates span #0"
    ):
        ReasoningDataset.load_jsonl(p)
    # the Python API too: a dataset built in memory never holds a span twice
    with pytest.raises(TraceFormatError, match="duplicates span #0"):
        ReasoningTrace("x", "", "abcdef", (BehaviorSpan("deduction", 0, 3), BehaviorSpan("deduction", 0, 3)))
    # the same range under two labels, or two ranges of one label, are different spans
    ReasoningTrace("x", "", "abcdef", (BehaviorSpan("deduction", 0, 3), BehaviorSpan("backtracking", 0, 3)))
    assert _rc(["parse", "--data", str(p), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dup.jsonl:2" in err and "duplicates" in err
    assert not (tmp_path / "o.jsonl").exists()


# S2: a misspelt spans key ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["Spans", "span", "spnas", "SPANS"])
def test_misspelt_spans_key_is_refused_with_did_you_mean(tmp_path, key, capsys):
    """``"Spans": [...]`` became metadata and the trace had no spans, silently."""
    rec = _record()
    rec[key] = rec.pop("spans")
    p = _write_jsonl(tmp_path / "t.jsonl", [_record(id="ok"), rec | {"id": "bad"}])
    with pytest.raises(TraceFormatError, match=rf"t.jsonl:2: key '{key}' is not a trace field; did you mean 'spans'"):
        ReasoningDataset.load_jsonl(p)
    assert _rc(["parse", "--data", str(p), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "t.jsonl:2" in err and "did you mean 'spans'" in err


def test_other_near_misses_of_fields_are_refused_and_plain_metadata_is_kept(tmp_path):
    rec = _record()
    rec["Prompt"] = rec.pop("prompt")  # the prompt would silently have been ""
    p = _write_jsonl(tmp_path / "p.jsonl", [rec])
    with pytest.raises(TraceFormatError, match="did you mean 'prompt'"):
        ReasoningDataset.load_jsonl(p)
    p = _write_jsonl(tmp_path / "m.jsonl", [_record(dataset="FOLIO", gold_answer="4", response_time=3)])
    t = ReasoningDataset.load_jsonl(p)[0]
    assert t.metadata == {"dataset": "FOLIO", "gold_answer": "4", "response_time": 3} and len(t.spans) == 1


# S3: experiment protection --only that matches nothing ------------------------------------------------


def test_protection_only_matching_no_row_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    """``--only zzz`` (or ``--only guided`` under RTN: no guided rows) measured fp and none alone."""
    import lrm_interp.experiments.protection_table as pt
    from lrm_interp.experiments.protection import ExperimentSettings, check_only

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pt, "load_model", no_load)
    for extra in (["--only", "zzz"], ["--only", "guided", "--quantizer", "rtn"], ["--only", "magnitude", "zzz"]):
        out = tmp_path / "ep"
        assert _rc(["experiment", "protection", *extra, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "--only" in err and "matches no row" in err
        assert "2% magnitude" in err and "plain 4-bit" in err  # the labels are listed
        assert not out.exists()
    with pytest.raises(ValueError, match=r"only: 'guided' matches no row of this experiment \(rtn 3-bit\)"):
        pt.run_protection_experiment(tmp_path / "api", ExperimentSettings(quantizer="rtn"), only=["guided"])
    check_only(ExperimentSettings(quantizer="gptq"), ["guided", "magnitude"])  # both match under GPTQ
    check_only(ExperimentSettings(), None)


# S4: paper-layout outputs without annotation --------------------------------------------------------


def _layout(root: Path, traces: ReasoningDataset, unannotated: set[int]) -> Path:
    for j, t in enumerate(traces):
        for d in ("outputs/X", "annotated/X"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / f"outputs/X/{j}.txt").write_text(t.response)
        if j not in unannotated:
            spans = sorted(t.spans, key=lambda s: s.start)
            (root / f"annotated/X/{j}.txt").write_text(
                "".join(f'["{s.behavior}"]{t.span_text(s)}["end-section"]' for s in spans)
            )
    return root


def test_attribute_leaves_out_outputs_without_annotation(tmp_path, capsys):
    """``attribute`` on a paper layout kept an output without annotation file as a trace with no
    spans: every token a negative of the difference of means (only provenance recorded it)."""
    from lrm_interp.data.paper_layout import UnannotatedTraceWarning
    from lrm_interp.toy.tasks import generate_dataset

    gold = generate_dataset(2, seed=3)
    root = _layout(tmp_path / "lay", gold, unannotated={0, 3})
    with pytest.warns(UnannotatedTraceWarning, match=r"2 outputs without an annotation file left out.*X/0, X/3"):
        ds = lrm_interp.load_dataset(root)
    assert len(ds) == len(gold) - 2 and "X/0" not in {t.id for t in ds}
    assert ds.report.file("X/0").status == "missing annotation"
    out = tmp_path / "A"
    argv = ["attribute", "--model", "toy", "--data", str(root), "--out", str(out), "--method", "dom", "--quiet"]
    with pytest.warns(UnannotatedTraceWarning, match="2 outputs without an annotation file left out"):
        assert _rc(argv) == 0
    prov = json.loads((out / "attribution.json").read_text())["provenance"]
    assert prov["dataset"]["n_traces"] == len(gold) - 2 and prov["dataset"]["unannotated_left_out"] == ["X/0", "X/3"]
    # an outputs-only layout (bench run outputs, outputs to annotate) is read whole, without spans
    bare = _layout(tmp_path / "bare", gold, unannotated=set(range(len(gold))))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnannotatedTraceWarning)
        assert [t.spans for t in lrm_interp.load_dataset(bare)] == [()] * len(gold)
    with pytest.warns(UnannotatedTraceWarning):
        with pytest.raises(ValueError, match=f"no annotated traces: {len(gold)} output file"):
            lrm_interp.load_dataset(bare, keep_unannotated=False)
    assert len(lrm_interp.load_paper_layout(root, keep_unannotated=True, progress=False)) == len(gold)


# S5: repeated list options --------------------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield from _walk(sp, path + (name,))


#: list options not yet switched to ``Accumulate``, each with the reason (keep this empty)
PENDING_ACCUMULATE: dict[str, str] = {}  # "subcommand --flag" -> why it does not accumulate yet


def test_every_list_option_accumulates_its_repetitions():
    """``--tasks a --tasks b`` kept only ``b`` (argparse ``nargs='+'`` without extend), silently."""
    from lrm_interp.cli.common import Accumulate

    lists = []
    for path, p in _walk(build_parser()):
        for act in p._actions:
            if act.nargs == "+" and f"{' '.join(path)} {act.option_strings[0]}" not in PENDING_ACCUMULATE:
                lists.append(f"{' '.join(path)} {act.option_strings[0]}")
                assert isinstance(act, Accumulate), f"{' '.join(path)} {act.option_strings}: repeats must accumulate"
    assert {
        "bench run --tasks",
        "bench run --compress",
        "attribute --behaviors",
        "experiment protection --only",
    } <= set(lists)
    parse = build_parser().parse_args
    a = parse(["bench", "run", "--model", "toy", "--tasks", "math", "--tasks", "logic", "knowledge", "--out", "x"])
    assert a.tasks == ["math", "logic", "knowledge"] and a.compress == ["none"]  # the default is replaced, not extended
    a = parse(
        [
            "bench",
            "run",
            "--model",
            "toy",
            "--tasks",
            "math",
            "--compress",
            "rtn:3",
            "--compress",
            "rtn:4",
            "--out",
            "x",
        ]
    )
    assert a.compress == ["rtn:3", "rtn:4"]
    a = parse(
        [
            "attribute",
            "--model",
            "toy",
            "--data",
            "d",
            "--out",
            "o",
            "--behaviors",
            "backtracking",
            "--behaviors",
            "deduction",
        ]
    )
    assert a.behaviors == ["backtracking", "deduction"]
    a = parse(["experiment", "protection", "--out", "o", "--random-seeds", "5", "--random-seeds", "6"])
    assert a.random_seeds == [5, 6]
    a = parse(["experiment", "protection", "--out", "o"])
    assert a.random_seeds == [0, 1, 2]


# S7 and partial variants: bench score ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    argv = ["bench", "run", "--model", "toy", "--tasks", "math", "logic", "--per-family", "3"]
    assert _rc([*argv, "--max-new-tokens", "24", "--temperature", "0", "--out", str(out), "--quiet"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _items() -> dict:
    from lrm_interp.data.benchmarks import load

    return {t: load(t, None, per_family=3, toy_seed=2) for t in ("math", "logic")}


SCORE = ["bench", "score", "--tasks", "math", "logic", "--per-family", "3", "--quiet", "--no-plots"]


def test_bench_score_refuses_outputs_removed_or_swapped_since_the_run(bench_run, tmp_path, capsys):
    """An emptied outputs folder or swapped files were graded (or counted missing) with exit 0."""
    recs = [json.loads(line) for line in (bench_run / "toy" / "generations.jsonl").read_text().splitlines()]
    assert all(len(s["text_sha"]) == 16 for r in recs for s in r["samples"])  # the run records each file's hash
    assert _rc([*SCORE, "--outputs", str(bench_run), "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    emptied = _copy(bench_run, tmp_path / "emptied")
    for f in (emptied / "toy" / "outputs" / "math").glob("*.txt"):
        f.unlink()
    assert _rc([*SCORE, "--outputs", str(emptied)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "3 of the 6 outputs recorded in" in err and "generations.jsonl are missing" in err
    assert "outputs/math/0.txt" in err and not (emptied / "scores").exists()
    gone = _copy(bench_run, tmp_path / "gone")
    import shutil

    shutil.rmtree(gone / "toy" / "outputs")  # the whole outputs folder: the run is still found by its run.json
    assert _rc([*SCORE, "--outputs", str(gone)]) == 2
    assert "6 of the 6 outputs recorded" in capsys.readouterr().err
    swapped = _copy(bench_run, tmp_path / "swapped")
    a, b = swapped / "toy" / "outputs" / "math" / "1.txt", swapped / "toy" / "outputs" / "logic" / "1.txt"
    ta, tb = a.read_bytes(), b.read_bytes()
    assert ta != tb
    a.write_bytes(tb)
    b.write_bytes(ta)
    assert _rc([*SCORE, "--outputs", str(swapped)]) == 2
    err = capsys.readouterr().err
    assert "2 differ from the text recorded for them" in err and "math/1.txt" in err and "logic/1.txt" in err
    from lrm_interp.evaluation.bench_score import score_outputs

    with pytest.raises(ValueError, match="differ from the text recorded"):
        score_outputs(swapped, _items(), progress=False)


def test_bench_score_marks_partial_variants(bench_run, tmp_path, capsys):
    """A variant with only some items generated appeared in the accuracy table like a complete one."""
    from lrm_interp.evaluation.bench_score import score_outputs

    part = _copy(bench_run, tmp_path / "part")
    gen = part / "toy" / "generations.jsonl"
    keep = [line for line in gen.read_text().splitlines() if json.loads(line)["task"] != "logic"]
    keep += [line for line in gen.read_text().splitlines() if json.loads(line)["task"] == "logic"][:1]
    gen.write_text("\n".join(keep) + "\n")  # logic: one item generated of three (a run stopped early)
    done = {json.loads(line)["index"] for line in keep if json.loads(line)["task"] == "logic"}
    for f in (part / "toy" / "outputs" / "logic").glob("*.txt"):
        if int(f.stem) not in done:
            f.unlink()
    assert _rc([*SCORE, "--outputs", str(part)]) == 0
    cap = capsys.readouterr()
    assert "partial" in cap.out and "logic 2/3 missing" in cap.out
    assert "warning: 2 output(s) missing, 1 variant(s) partial" in cap.err and "toy: logic 2 of 3" in cap.err
    acc = (part / "scores" / "accuracy.csv").read_text()
    assert "logic 2/3 missing" in acc
    full = score_outputs(bench_run, _items(), progress=False)
    assert full.partial() == {} and "partial" not in full.accuracy_table().columns  # complete: as before


# output flags naming a folder: refused before the work ---------------------------------------------


def test_file_outputs_naming_a_folder_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """``annotate --out DIR --overwrite`` annotated every trace, then failed renaming onto the folder;
    ``protect --out DIR --overwrite`` scored every weight first."""
    import lrm_interp.data.annotate as annotate_mod
    import lrm_interp.protect.registry as registry

    def no_work(*a, **k):
        raise AssertionError("work started")

    monkeypatch.setattr(annotate_mod, "load_outputs", no_work)
    monkeypatch.setattr(registry, "build_saliency", no_work)
    monkeypatch.setattr("lrm_interp.data.loading.load_dataset", no_work)  # parse: refused before reading
    d = tmp_path / "dir"
    d.mkdir()
    (d / "mine.txt").write_text("mine")
    traces = _write_jsonl(tmp_path / "t.jsonl", [_record()])
    for argv in (
        ["annotate", "--data", str(traces), "--out", str(d), "--overwrite", "--quiet"],
        ["annotate", "--data", str(traces), "--out", str(tmp_path / "o.jsonl"), "--report", str(d), "--overwrite"],
        ["protect", "--scores", str(tmp_path / "A"), "--model", "toy", "--data", str(traces), "--out", str(d)]
        + ["--overwrite", "--quiet"],
        ["toy", "traces", "--gold", "--out", str(d), "--overwrite"],
        ["parse", "--data", str(traces), "--out", str(d), "--overwrite"],
    ):
        assert _rc(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{d}: a folder" in err, err
    assert _snapshot(d) == {"mine.txt": b"mine"}


# F12: the Python writers never replace unless asked ---------------------------------------------------


def test_writers_take_replace_and_never_replace_without_it(tmp_path):
    from lrm_interp._io import write_safetensors
    from lrm_interp.protect.encoding import load_masks, save_masks
    from lrm_interp.protect.masks import ProtectionMask

    m = {"layer.q": ProtectionMask("layer.q", torch.zeros(4, 8, dtype=torch.bool))}
    ds = ReasoningDataset([ReasoningTrace("a", "", "text")])
    for write in (
        lambda p, **kw: save_masks(m, p, **kw),
        lambda p, **kw: ds.save_jsonl(p, **kw),
        lambda p, **kw: write_safetensors(p, {"x": torch.zeros(2)}, {"format": "x"}, **kw),
    ):
        p = tmp_path / "theirs.bin"
        p.write_bytes(b"theirs")
        with pytest.raises(FileExistsError, match=str(p)):
            write(p, replace=False)
        assert p.read_bytes() == b"theirs" and sorted(x.name for x in tmp_path.iterdir()) == ["theirs.bin"]
        write(tmp_path / "new.bin", replace=False)  # a new file is written
        write(p)  # the default replaces, as before
        assert p.read_bytes() != b"theirs"
        (tmp_path / "sub").mkdir()
        with pytest.raises(IsADirectoryError, match="a folder"):  # before anything is written
            write(tmp_path / "sub")
        (tmp_path / "sub").rmdir()
        for f in tmp_path.iterdir():
            f.unlink()
    p = save_masks(m, tmp_path / "m.safetensors", replace=False, model={"name": "x", "weights_fingerprint": "f"})
    assert load_masks(p)[0]["layer.q"].n_protected == 0


# toy distill --out ---------------------------------------------------------------------------------


def test_toy_distill_refuses_a_folder_it_would_spoil_before_loading(tmp_path, monkeypatch, capsys):
    """``toy distill --out`` a folder of other files wrote checkpoint/ and adapter/ into it; a finished
    run without its checkpoint had its adapter replaced by a new run."""
    import lrm_interp.model.smollm2 as smollm2

    def no_load(*a, **k):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(smollm2, "load_smollm2", no_load)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    done = tmp_path / "done"
    (done / "adapter").mkdir(parents=True)
    (done / "adapter" / "distill_log.json").write_text("{}")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, says in (
        (mine, "not a distillation run folder"),
        (done, "holds adapter/ but no checkpoint/"),
        (afile, "not a folder"),
    ):
        before = _snapshot(out) if out.is_dir() else out.read_bytes()
        assert _rc(["toy", "distill", "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(out) in err and says in err, err
        assert (_snapshot(out) if out.is_dir() else out.read_bytes()) == before
    from lrm_interp.toy.distill import check_run_folder

    check_run_folder(tmp_path / "new")  # a new folder, an empty one, a run folder: accepted
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")
    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint" / "state.json").write_text("{}")
    check_run_folder(tmp_path / "run")


# hostile run 3 --------------------------------------------------------------------------------------


def test_misspelt_behaviour_in_the_config_is_refused_with_did_you_mean(tmp_path, capsys):
    """``attribute --behaviors uncertainty_estimation`` ran with that behaviour silently absent (no
    span carries the misspelt label); the config now refuses a near miss of a known behaviour, in the
    Python API and on the command line, while a custom label stays allowed (H2-18)."""
    from lrm_interp.attribution.config import AttributionConfig

    with pytest.raises(ValueError, match="did you mean 'uncertainty-estimation'"):
        AttributionConfig(behaviors=("backtracking", "uncertainty_estimation"))
    assert AttributionConfig(behaviors=("backtracking", "my-own-cue")).behaviors == ("backtracking", "my-own-cue")
    traces = _write_jsonl(tmp_path / "t.jsonl", [_record()])
    argv = ["attribute", "--model", "toy", "--data", str(traces), "--out", str(tmp_path / "A")]
    assert _rc(argv + ["--behaviors", "Backtracking"]) == 2
    assert "did you mean 'backtracking'" in capsys.readouterr().err
    assert not (tmp_path / "A").exists()


def test_always_or_never_regex_matching_no_site_is_refused():
    """``protect --always nomatch`` protected as if the flag were absent, exit 0 (H2-6)."""
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.policies import build_masks
    from lrm_interp.testing import tiny_model

    sites = find_sites(tiny_model("llama"))
    for kw in ({"always": "nomatch_xyz"}, {"never": r"layers\.99\."}):
        with pytest.raises(ValueError, match="matches none of the"):
            build_masks(sites, "final_mlp", 0.0, **kw)
    assert build_masks(sites, "final_mlp", 0.0, always=r"layers\.0\.mlp\.up_proj")  # a real match still works
