"""Cases a hostile probe run found after the third one (issue 22, "nothing lost, nothing silent"), H3-1
.. H3-8 and the NaN writer: ``bench score`` grading outputs without a record (and a torn last line)
or against another task source's golds, ``annotate agree --downstream`` dropping ``--pred`` traces
without a count, trace JSONL accepting lone surrogates, repeated keys, ``"spans": null`` and NaN,
``01.txt`` loaded beside ``1.txt``, and nested same-label spans counted twice by the agreement."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc

from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace, TraceFormatError

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "tests" / "data" / "paper_layout"


# ------------------------------------------------------------------ bench run folders
def _toy_items(seed: int = 2, n: int = 3) -> dict:
    from lrm_interp.data.benchmarks import load

    return {"math": load("math", None, per_family=n, toy_seed=seed)}


def _bench_run(run: Path, seed: int = 2, n: int = 3) -> Path:
    """A ``bench run`` folder of the toy math family whose every output answers right."""
    from lrm_interp.evaluation.backends import Backend, GenerationSettings
    from lrm_interp.evaluation.bench_run import run_benchmark
    from lrm_interp.evaluation.generation import Generation

    items = _toy_items(seed, n)
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


SCORE = ["bench", "score", "--tasks", "math", "--per-family", "3", "--quiet", "--no-plots"]


# ------------------------------------------------------------------ H3-1
def test_bench_score_does_not_grade_outputs_without_a_record_and_names_a_torn_line(tmp_path, capsys):
    """An output file without its generations.jsonl record (the item never finished: its record is a
    torn last line) was graded like the others, and the torn line was not mentioned."""
    from lrm_interp.evaluation.bench_score import score_outputs

    run = _bench_run(tmp_path / "run")
    gen = run / "generations.jsonl"
    lines = gen.read_text().splitlines()
    assert len(lines) == 3
    gen.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # item 2: killed while writing its record
    sc = score_outputs(run, _toy_items(), progress=False)
    assert len(sc.samples) == 2 and {s.index for s in sc.samples} == {0, 1}
    assert list(sc.unrecorded) == [str(run / "outputs" / "math" / "2.txt")]
    assert list(sc.torn) == [f"{gen}:3"]
    assert sc.summary().iloc[0]["missing"] == 1 and sc.partial() == {"run": {"math": (1, 3)}}
    assert "1 unrecorded outputs not graded" in repr(sc) and f"{gen}:3" in repr(sc)
    assert _rc([*SCORE, "--outputs", run, "--out", tmp_path / "s"]) == 0
    err = capsys.readouterr().err
    assert "1 output file(s) without a record in generations.jsonl, not graded" in err
    assert "outputs/math/2.txt" in err and "torn last line (a run killed mid-write" in err and f"{gen}:3" in err
    # a file added by hand beside a finished run: not graded either
    gen.write_text("\n".join(lines[:2]) + "\n")
    sc = score_outputs(run, _toy_items(), progress=False)
    assert len(sc.samples) == 2 and len(sc.unrecorded) == 1 and sc.torn == ()
    # a complete run is graded whole, without a word
    gen.write_text("\n".join(lines) + "\n")
    sc = score_outputs(run, _toy_items(), progress=False)
    assert len(sc.samples) == 3 and sc.unrecorded == () and sc.torn == ()
    assert sc.summary().iloc[0]["pass@1"] == 100.0


# ------------------------------------------------------------------ H3-2
def test_bench_score_refuses_another_task_source_after_problems_are_deleted(tmp_path, capsys):
    """With problems/ deleted, grading with another --toy-seed used the other seed's golds (0 %)."""
    from lrm_interp.evaluation.bench_score import score_outputs

    run = _bench_run(tmp_path / "run")
    shutil.rmtree(run / "problems")
    assert score_outputs(run, _toy_items(2), progress=False).summary().iloc[0]["pass@1"] == 100.0
    with pytest.raises(ValueError, match=r"generations\.jsonl:1: the outputs of math/0 were generated from another"):
        score_outputs(run, _toy_items(3), progress=False)
    assert _rc([*SCORE, "--outputs", run, "--toy-seed", "3"]) == 2
    err = _err_line(capsys)
    assert "generations.jsonl:1" in err and "another prompt" in err and "--toy-seed" in err
    assert "run.json records the problems of 'lrm_interp.data.toy_tasks math/2/0'" in err
    assert not (run / "scores").exists()
    # neither problems/ nor generations.jsonl left: nothing vouches for the outputs any more, so a
    # 'bench run' folder is not graded at all (H22-BENCHGEN; run.json's source used to be the last check)
    (run / "generations.jsonl").unlink()
    for seed in (3, 2):
        with pytest.raises(ValueError, match=r"a 'bench run' folder \(run\.json\) without its generations\.jsonl"):
            score_outputs(run, _toy_items(seed), progress=False)


def _strip_prompt_sha(run):
    """``generations.jsonl`` records without their ``prompt_sha`` (a record of an older ``bench run``,
    which has no ``record_sha256`` either: with it, the edited record is refused, H23-GENMETA)."""
    gen = run / "generations.jsonl"
    recs = [json.loads(x) for x in gen.read_text().splitlines()]
    old = ("prompt_sha", "record_sha256")
    gen.write_text("".join(json.dumps({k: v for k, v in r.items() if k not in old}) + "\n" for r in recs))


def test_bench_score_compares_every_problem_not_only_those_in_the_file(tmp_path):
    """Only items with an index below the problems file's length were compared: outputs beyond a
    truncated problems/<task>.jsonl were graded against whatever items were given."""
    from lrm_interp.evaluation.bench_score import score_outputs

    run = _bench_run(tmp_path / "run")
    _strip_prompt_sha(run)  # nothing else verifies the prompts
    probs = run / "problems" / "math.jsonl"
    probs.write_text(probs.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"math\.jsonl: 1 problems, but .*outputs/math/1\.txt exists"):
        score_outputs(run, _toy_items(), progress=False)
    other = _toy_items(3)  # a line that differs: refused as before, naming file:line
    shutil.rmtree(run)
    run = _bench_run(tmp_path / "run")
    _strip_prompt_sha(run)
    with pytest.raises(ValueError, match=r"math\.jsonl:1: the outputs were generated for another problem"):
        score_outputs(run, other, progress=False)


# ------------------------------------------------------------------ H3-3
def test_downstream_counts_pred_traces_not_in_gold(tmp_path, capsys):
    """``annotate agree --downstream --pred`` left out --pred traces that are not in --gold silently."""
    from synth import synthetic_traces

    from lrm_interp.experiments.annotation_downstream import UnscoredTracesWarning, annotation_downstream
    from lrm_interp.testing import byte_tokenizer, tiny_model

    ref = synthetic_traces(4)
    t = ref[0]
    extra = ReasoningTrace("other/9", t.prompt, t.response, t.spans, t.metadata)
    pred = ReasoningDataset([*ref, extra], name="pred")
    with pytest.warns(UnscoredTracesWarning, match=r"1 trace of the annotation not in the reference, not scored"):
        res = annotation_downstream(
            tiny_model("llama", seed=0),
            ref,
            {"pred": pred},
            tokenizer=byte_tokenizer(),
            model_name="tiny-llama",
            progress=False,
            behaviors=["backtracking"],
        )
    assert res.provenance["annotators"]["pred"]["not_in_reference"] == {"n": 1, "first": ["other/9"]}
    mdir = tmp_path / "m"
    tiny_model("llama", seed=0).save_pretrained(mdir)
    byte_tokenizer().save_pretrained(mdir)
    gold, pp = ref.save_jsonl(tmp_path / "gold.jsonl"), pred.save_jsonl(tmp_path / "pred.jsonl")
    argv = ["annotate", "agree", "--gold", gold, "--pred", pp, "--downstream", mdir, "--out", tmp_path / "st"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnscoredTracesWarning)  # printed once, as a note, not warned again
        assert _rc([*argv, "--behaviors", "backtracking", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "annotate agree: note: 1 trace of --pred not in --gold, not scored (first: 'other/9')" in err


# ------------------------------------------------------------------ H3-4 .. H3-6, NaN: trace JSONL
def _load(tmp_path, line: str):
    p = tmp_path / "t.jsonl"
    p.write_text(line + "\n")
    return ReasoningDataset.load_jsonl(p)


def test_lone_surrogate_is_refused_at_load_naming_file_line(tmp_path, capsys):
    """``"\\ud800"`` is valid JSON; the trace loaded and failed much later ("internal error")."""
    ok = '{"id": "a", "response": "fine \\ud83d\\ude00", "spans": []}'  # a surrogate pair: one character
    assert _load(tmp_path, ok)[0].response == "fine \U0001f600"
    bad = '{"id": "a", "response": "bad \\ud800 here", "spans": []}'
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: 'response' holds a lone surrogate '\\ud800'"):
        _load(tmp_path, bad)
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: 'metadata\.note' holds a lone surrogate"):
        _load(tmp_path, '{"id": "a", "response": "r", "metadata": {"note": "\\udfff"}}')
    assert _rc(["parse", "--data", tmp_path / "t.jsonl", "--out", tmp_path / "o.jsonl"]) == 2
    assert "t.jsonl:1" in _err_line(capsys) and not (tmp_path / "o.jsonl").exists()


def test_repeated_json_keys_are_refused_naming_file_line_and_key(tmp_path, capsys):
    """``{"spans": [...], "spans": []}``: the last one won silently (the spans were lost)."""
    line = (
        '{"id": "a", "response": "wait, no", "spans": [{"behavior": "backtracking", "start": 0, "end": 4}], '
        '"spans": []}'
    )
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: key 'spans' appears twice in one object"):
        _load(tmp_path, line)
    nested = (
        '{"id": "a", "response": "wait", "spans": [{"behavior": "backtracking", "start": 0, "start": 1, "end": 4}]}'
    )
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: key 'start' appears twice"):
        _load(tmp_path, nested)
    assert _rc(["annotate", "agree", "--gold", tmp_path / "t.jsonl", "--pred", tmp_path / "t.jsonl"]) == 2
    assert "t.jsonl:1: key 'start' appears twice" in _err_line(capsys)
    # the one JSONL reader: benchmark files and paper-layout problems files too
    from lrm_interp.data.benchmarks import load
    from lrm_interp.data.benchmarks.items import BenchmarkFormatError

    b = tmp_path / "aime.jsonl"
    b.write_text('{"problem": "x", "answer": 1, "answer": 2}\n')
    with pytest.raises(BenchmarkFormatError, match=r"aime\.jsonl:1: key 'answer' appears twice"):
        load("aime", b)
    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    (root / "problems").mkdir()
    (root / "problems" / "FOLIO.jsonl").write_text('{"premises": "a", "premises": "b"}\n')
    from lrm_interp.data.paper_layout import load_paper_layout

    with pytest.raises(TraceFormatError, match=r"FOLIO\.jsonl:1: key 'premises' appears twice"):
        load_paper_layout(root, progress=False)


def test_null_spans_are_refused_and_a_missing_key_means_no_spans(tmp_path):
    """``"spans": null`` loaded as a trace without spans: null may mean "not annotated"."""
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: 'spans' is null"):
        _load(tmp_path, '{"id": "a", "response": "r", "spans": null}')
    (t,) = _load(tmp_path, '{"id": "a", "response": "r"}')  # documented: spans default to []
    assert t.spans == ()


def test_nan_is_refused_on_load_and_never_written(tmp_path):
    """NaN in metadata loaded, and ``save_jsonl`` wrote it back as a bare NaN (not JSON)."""
    for const in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(TraceFormatError, match=rf"t\.jsonl:1: {const} is not a JSON number"):
            _load(tmp_path, f'{{"id": "a", "response": "r", "metadata": {{"score": {const}}}}}')
    ds = ReasoningDataset([ReasoningTrace("a", "", "r", (), {"score": float("nan")})])
    out = tmp_path / "o.jsonl"
    with pytest.raises(TraceFormatError, match=r"trace 'a': cannot be written as JSON.*NaN"):
        ds.save_jsonl(out)
    assert not out.exists()
    ReasoningDataset([ReasoningTrace("a", "", "r", (), {"score": None})]).save_jsonl(out)
    assert json.loads(out.read_text())["metadata"] == {"score": None}


# ------------------------------------------------------------------ H3-7
def test_paper_layout_refuses_two_files_for_one_item_and_reports_other_spellings(tmp_path):
    """``outputs/FOLIO/01.txt`` beside ``1.txt`` was loaded as a second trace of item 1."""
    from lrm_interp.data.paper_layout import IgnoredFileWarning, load_paper_layout

    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    n = len(load_paper_layout(root, progress=False))
    shutil.copy(root / "outputs" / "FOLIO" / "1.txt", root / "outputs" / "FOLIO" / "01.txt")
    shutil.copy(root / "annotated" / "FOLIO" / "1.txt", root / "annotated" / "FOLIO" / "01.txt")
    with pytest.raises(TraceFormatError, match=r"FOLIO/01\.txt and .*FOLIO/1\.txt are two files for one item"):
        load_paper_layout(root, progress=False)
    # alone, a number spelt otherwise is not loaded, and reported like the other files a layout does not hold
    for d in ("outputs", "annotated"):
        (root / d / "FOLIO" / "1.txt").unlink()
    (root / "annotated" / "FOLIO" / "007.txt").write_text("x")
    with pytest.warns(IgnoredFileWarning, match=r"3 files not loaded.*leading zero"):
        ds = load_paper_layout(root, progress=False)
    assert len(ds) == n - 1 and "FOLIO/1" not in {t.id for t in ds} and "FOLIO/01" not in {t.id for t in ds}
    assert sorted(ds.report.ignored) == sorted(
        str(root / d / "FOLIO" / f)
        for d, f in (("outputs", "01.txt"), ("annotated", "01.txt"), ("annotated", "007.txt"))
    )


# ------------------------------------------------------------------ H3-8
def test_nested_same_label_spans_count_once_in_the_agreement():
    """A span inside another of the same label counted as a second gold / predicted span."""
    from lrm_interp.data.annotators.agreement import annotation_agreement, merge_same_label

    r = "x" * 100
    bt = "backtracking"
    gold = ReasoningDataset([ReasoningTrace("a", "", r, (BehaviorSpan(bt, 0, 40), BehaviorSpan(bt, 10, 20)))])
    pred = ReasoningDataset([ReasoningTrace("a", "", r, (BehaviorSpan(bt, 0, 20), BehaviorSpan(bt, 10, 30)))])
    # by hand: gold covers [0, 40) = 40 characters, pred [0, 30) = 30; both: 30
    p, rc = 30 / 30, 30 / 40
    for region in ("all", "gold"):
        a = annotation_agreement(gold, pred, region=region)[bt]
        assert a["precision"] == pytest.approx(p) and a["recall"] == pytest.approx(rc)
        assert a["f1"] == pytest.approx(2 * p * rc / (p + rc))  # 6/7
        assert (a["gold_spans"], a["pred_spans"]) == (1, 1)  # one region each, not two
        assert a["span_recall"] == 1.0 and a["span_precision"] == 1.0  # IoU 30/40 >= 0.5
    same = annotation_agreement(gold, gold)[bt]
    assert (same["f1"], same["span_precision"], same["span_recall"], same["gold_spans"]) == (1.0, 1.0, 1.0, 1)
    merged = merge_same_label([BehaviorSpan(bt, 5, 9), BehaviorSpan(bt, 0, 5), BehaviorSpan(bt, 1, 3)])
    assert merged == [BehaviorSpan(bt, 0, 5), BehaviorSpan(bt, 5, 9)]  # touching spans stay two
    assert not math.isnan(annotation_agreement(gold, pred)[bt]["f1"])
