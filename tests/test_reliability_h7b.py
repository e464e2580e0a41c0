"""Cases a sixth hostile probe run found (issue 22, "nothing lost, nothing silent"), second part:
``study --overwrite`` removing what a damaged ``study.json`` lists (ST1), ``bench score --overwrite``
deleting a user's plot (BS4), a table of zeros with a verdict (E1), duplicate seeds (E4), flags a
command would ignore (Y1, BF-a/b/c, PR-a, PR5, AF, AT_1, F3, BI1), a one-site faithfulness run (F5),
empty MuSiQue answers graded correct (W7), an empty field called missing (W1), a study of an
already quantized model (QM1) and a tokenizer that is not the model's (TE)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold


def _scores(tmp_path: Path) -> Path:
    """An attribution result folder of the toy model (random scores: enough for ``protect``)."""
    import torch

    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.sites import find_sites

    model, _ = load_model("toy")
    sites = tuple(find_sites(model))
    d = tmp_path / "A"
    Attribution(("deduction",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution").save(d)
    return d


# ------------------------------------------------------------------ H7-ST1
def test_study_overwrite_removes_only_its_own_attribution_folders(tmp_path):
    """``study --overwrite`` ran ``rmtree(out / name)`` for every name of ``study.json``'s
    ``provenance.folders``: ``".."`` deleted the folder holding the study."""
    from lrm_interp.experiments.study import FORMAT, STUDY_FILE, _resume_state

    victim = tmp_path / "victim"
    out = victim / "SY"
    out.mkdir(parents=True)
    (victim / "precious.txt").write_text("precious")
    key = {"settings": {"bits": 3}, "weights_fingerprint": "w", "tokenizer_fingerprint": "t", "traces_fingerprint": "d"}
    for bad in ("..", ".", "../victim", "attribution_fp32/..", "/tmp", "notes", ""):
        doc = {"format": FORMAT, **key, "provenance": {"folders": {"original": "attribution_fp32", "compressed": bad}}}
        (out / STUDY_FILE).write_text(json.dumps(doc))
        (out / "attribution_fp32").mkdir(exist_ok=True)
        (out / "notes").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match=r"provenance.folders\['compressed'\] is .*refusing to remove it"):
            _resume_state(out, key, overwrite=True)
        # nothing removed: neither the parent, nor the good entry listed before the bad one
        assert (victim / "precious.txt").read_text() == "precious" and (out / "attribution_fp32").is_dir()
        assert (out / STUDY_FILE).exists() and (out / "notes").is_dir()
    # a link named like a study folder, pointing out of the study: refused, its target kept
    (victim / "elsewhere").mkdir()
    (victim / "elsewhere" / "keep.txt").write_text("k")
    (out / "attribution_rtn3").symlink_to(victim / "elsewhere")
    doc = {"format": FORMAT, **key, "provenance": {"folders": {"compressed": "attribution_rtn3"}}}
    (out / STUDY_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="attribution_rtn3 is a link to .*refusing to remove anything through it"):
        _resume_state(out, key, overwrite=True)
    assert (victim / "elsewhere" / "keep.txt").exists()
    (out / "attribution_rtn3").unlink()
    # the study's own folders are removed as before, the user's other folders kept
    (out / "attribution_rtn3").mkdir()
    doc = {
        "format": FORMAT,
        **key,
        "provenance": {"folders": {"original": "attribution_fp32", "compressed": "attribution_rtn3"}},
    }
    (out / STUDY_FILE).write_text(json.dumps(doc))
    assert _resume_state(out, key, overwrite=True) == ({}, {})
    assert not (out / "attribution_fp32").exists() and not (out / "attribution_rtn3").exists()
    assert (out / "notes").is_dir() and (victim / "precious.txt").exists()


# ------------------------------------------------------------------ H7-BS4
def test_bench_score_overwrite_keeps_a_plot_no_score_wrote(tmp_path, capsys):
    """``bench score --out mine --overwrite`` deleted the user's ``accuracy_vs_bits.png`` (this score
    writes no such plot) as "a plot of an earlier score"."""
    br = tmp_path / "BR"
    argv = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--max-new-tokens", 30]
    assert _rc([*argv, "--out", br, "--quiet"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "accuracy_vs_bits.png").write_text("my plot")
    (mine / "tables.md").write_text("x")
    score = ["bench", "score", "--outputs", br, "--tasks", "math", "--per-family", 1, "--out", mine, "--quiet"]
    assert _rc([*score, "--overwrite"]) == 0
    assert (mine / "accuracy_vs_bits.png").read_text() == "my plot"
    rec = json.loads((mine / "score_files.json").read_text())
    assert "tables.md" in rec["files"] and "accuracy_vs_bits.png" not in rec["files"]
    # a plot an earlier score recorded writing is removed when this score does not write it
    (mine / "short_vs_long.png").write_text("stale plot")
    rec["files"].append("short_vs_long.png")
    (mine / "score_files.json").write_text(json.dumps(rec))
    assert _rc([*score, "--no-plots", "--overwrite"]) == 0
    assert not (mine / "short_vs_long.png").exists() and (mine / "accuracy_vs_bits.png").read_text() == "my plot"


# ------------------------------------------------------------------ H7-E1
def test_a_table_where_full_precision_answers_nothing_says_so_and_draws_no_verdict(tmp_path, capsys):
    """``experiment protection --max-new-tokens 40``: every row 0 %, full precision included, with
    its paired "best" comparisons; nothing said the limit was too short (``study --tasks`` alike)."""
    from lrm_interp.evaluation.generation import length_limit_warning

    out = tmp_path / "EX"
    argv = ["experiment", "protection", "--model", "toy", "--per-family", 1]
    argv += ["--random-seeds", 0, "--only", "random", "--max-new-tokens", 5, "--out", out, "--quiet"]
    capsys.readouterr()
    assert _rc(argv) == 0
    cap = capsys.readouterr()
    warn = "warning: full precision solved 0 of 3; 3 of 3 answers hit --max-new-tokens 5: raise --max-new-tokens"
    assert warn in cap.err and "no verdict" in cap.err
    md = (out / "table.md").read_text()
    assert "**Warning: full precision solved 0 of 3" in md and "Paired on the same" not in md
    # the rule: nothing solved, or half the answers cut; a working baseline gets no warning
    assert length_limit_warning(3, 6, 0, 480) is None and length_limit_warning(0, 6, None, 480) is not None
    assert "raise --max-new-tokens" in (length_limit_warning(4, 6, 3, 40) or "")
    # the study's verdict: no "best at matched bits" over a baseline that answers nothing
    from types import SimpleNamespace

    from lrm_interp.experiments import report

    keys = ("uniform", "magnitude", "attribution", "mixed")
    rows = {k: SimpleNamespace(key=k, label=k, value=0.0, bpw=3.0, ci=(0.0, 0.5), metric="accuracy") for k in keys}
    fake = SimpleNamespace(
        settings=SimpleNamespace(metric="accuracy", budget=0.02, bits=3, group_size=128),
        provenance={},
        higher_is_better=True,
        row=rows.__getitem__,
        separated=lambda a, b: False,
        recovered=lambda r: None,
        warnings=[length_limit_warning(0, 6, 6, 30)],
    )
    lines = report.verdict(fake)  # type: ignore[arg-type]
    assert not any(x.startswith("best at matched bits") for x in lines)
    assert lines[-1].startswith("no verdict: full precision solved 0 of 6; 6 of 6 answers hit --max-new-tokens 30")


# ------------------------------------------------------------------ H7-E4
def test_experiment_refuses_a_random_seed_given_twice(tmp_path, capsys):
    """``--random-seeds 0 0`` put the row "2% random (seed 0)" twice into table.md / table.csv."""
    from lrm_interp.experiments.protection import ExperimentSettings

    out = tmp_path / "EX4"
    capsys.readouterr()
    assert _rc(["experiment", "protection", "--model", "toy", "--random-seeds", 0, 1, 0, "--out", out]) == 2
    assert "--random-seeds: seed 0 given twice" in _err_line(capsys) and not out.exists()
    with pytest.raises(ValueError, match="random_seeds: seed 0 given twice"):
        ExperimentSettings(random_seeds=(0, 0))


# ------------------------------------------------------------------ H7-Y1
def test_study_refuses_flags_its_mode_does_not_use(tmp_path, capsys):
    """A KL study took --max-new-tokens / --per-task / --batch-size / --no-require-think, a task
    study --resamples and a --task-data its toy tasks never read, and recorded them in study.json."""
    gold = _gold(tmp_path)
    out = tmp_path / "SY"
    base = ["study", "--model", "toy", "--data", gold, "--bits", 3, "--out", out, "--quiet"]
    cases = [
        (["--max-new-tokens", 7], "--max-new-tokens is used with --tasks only"),
        (["--per-task", 2, "--batch-size", 4], "--per-task, --batch-size are used with --tasks only"),
        (["--no-require-think"], "--no-require-think is used with --tasks only"),
        (["--task-data", gold], "--task-data is used with --tasks only"),
        (["--tasks", "math", "--resamples", 40], "--resamples is used without --tasks only"),
        (["--tasks", "math", "--task-data", gold], "--task-data is read by the file tasks"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        assert msg in _err_line(capsys), extra
    assert not out.exists()


# ------------------------------------------------------------------ H7-BF-a / BF-b / BF-c
def test_bench_run_refuses_flags_it_would_ignore(tmp_path, capsys):
    """``bench run`` without --compress took --calib / --group-size / --calib-length, with toy tasks
    only --limit, with --backend hf the endpoint and vLLM flags, with --temperature 0 --top-p /
    --seed; ``--temperature 0 --n-samples 3`` generated three identical greedy outputs."""
    gold = _gold(tmp_path)
    out = tmp_path / "BF"
    base = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--max-new-tokens", 5]
    base += ["--out", out, "--quiet"]
    cases = [
        (["--calib", gold], "--calib is used with --compress gptq / sparsegpt / wanda only"),
        (["--calib-length", 64, "--compress", "rtn:3"], "--calib-length is used with --compress gptq"),
        (["--group-size", 32], "--group-size is used with a quantizing --compress"),
        (["--group-size", 32, "--compress", "magnitude:0.5"], "--group-size is used with a quantizing --compress"),
        (["--limit", 3], "--limit is used with the file tasks"),
        (["--base-url", "http://localhost:9/v1"], "--base-url: flag(s) of the openai backend"),
        (["--timeout", 5, "--retries", 1], "--retries, --timeout: flag(s) of the openai backend"),
        (["--vllm-max-model-len", 100], "--vllm-max-model-len: flag(s) of --backend vllm"),
        (["--temperature", 0, "--n-samples", 3], "greedy decoding gives 3 identical copies"),
        (["--temperature", 0, "--top-p", 0.5], "--top-p is not used with --temperature 0"),
        (["--temperature", 0, "--seed", 7], "--seed is not used with --temperature 0"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        assert msg in _err_line(capsys), extra
        assert not out.exists(), extra
    # the combinations that use them still run
    assert _rc([*base, "--temperature", 0, "--compress", "rtn:3", "--group-size", 32]) == 0


# ------------------------------------------------------------------ H7-PR-a / PR5
def test_protect_refuses_flags_its_policy_or_saliency_ignores(tmp_path, capsys):
    """``protect --saliency magnitude --data --seed 7`` ignored both; ``--policy final_mlp --budget
    0.3`` protected 18.75 % without a word about the budget."""
    gold = _gold(tmp_path)
    a = _scores(tmp_path)
    out = tmp_path / "m.safetensors"
    base = ["protect", "--scores", a, "--out", out, "--quiet"]
    cases = [
        (["--policy", "final_mlp", "--budget", 0.3], "--budget is not used by --policy final_mlp"),
        (["--policy", "final_mlp", "--seed", 3], "--seed is not used by --policy final_mlp"),
        (["--model", "toy", "--saliency", "magnitude", "--data", gold], "--data is not used by --saliency magnitude"),
        (["--model", "toy", "--saliency", "magnitude", "--seed", 7], "--seed is used by --saliency random only"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        assert msg in _err_line(capsys), extra
        assert not out.exists()
    assert _rc([*base, "--policy", "final_mlp"]) == 0
    assert _rc([*base, "--model", "toy", "--saliency", "random", "--seed", 7, "--overwrite"]) == 0


# ------------------------------------------------------------------ H7-AF / AT_1
def test_annotate_refuses_llm_flags_without_the_llm_and_region_without_cross_validation(tmp_path, capsys):
    """``annotate --annotator rules --prompt-file pf --temperature 0.7`` and ``--annotator trained
    --endpoint-model gpt-4o`` ignored them; ``annotate train --folds 0 --region gold`` ignored --region."""
    gold = _gold(tmp_path)
    pf = tmp_path / "pf.txt"
    pf.write_text("{text}")
    out = tmp_path / "af.jsonl"
    base = ["annotate", "--data", gold, "--out", out, "--quiet"]
    cases = [
        (["--annotator", "rules", "--prompt-file", pf, "--temperature", 0.7], "--temperature, --prompt-file apply"),
        (["--annotator", "trained", "--endpoint-model", "gpt-4o"], "--endpoint-model applies only with --annotator"),
        (["--annotator", "keyword", "--base-url", "http://x/v1", "--timeout", 3], "--base-url, --timeout apply only"),
        (["--annotator", "rules", "--mode", "completions"], "--mode applies only with --annotator llm"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        assert msg in _err_line(capsys), extra
        assert not out.exists()
    # --concurrency is used by every annotator (its threads): accepted
    assert _rc([*base, "--annotator", "rules", "--concurrency", 2]) == 0
    t = tmp_path / "at1.safetensors"
    capsys.readouterr()
    assert _rc(["annotate", "train", "--data", gold, "--out", t, "--folds", 0, "--region", "gold", "--quiet"]) == 2
    assert "--region is the cross-validation's scoring region: it applies with --folds K >= 2 only" in _err_line(capsys)
    assert not t.exists()


# ------------------------------------------------------------------ H7-F3 / F5
def test_faithfulness_seed_needs_max_spans_and_one_site_is_named(tmp_path, capsys):
    """``faithfulness --seed 5`` without --max-spans was ignored; one matched site gave "use a
    --top-k below 1"."""
    gold = _gold(tmp_path)
    out = tmp_path / "FA"
    base = ["faithfulness", "--model", "toy", "--data", gold, "--out", out, "--quiet"]
    capsys.readouterr()
    assert _rc([*base, "--seed", 5]) == 2
    assert "--seed is used with --max-spans only" in _err_line(capsys)
    assert _rc([*base, "--sites", r"layers\.0\.mlp\.down_proj", "--top-k", 1]) == 2
    err = _err_line(capsys)
    assert "faithfulness needs at least 2 sites to compare rankings (--sites matched 1)" in err
    assert "below 1" not in err and not out.exists()


# ------------------------------------------------------------------ H7-BI1
def test_bits_default_bits_needs_gptqmodel(tmp_path, capsys):
    """``bits --default-bits 4`` without --gptqmodel was ignored."""
    out = tmp_path / "b.json"
    capsys.readouterr()
    argv = ["bits", "--model", "toy", "--budget", 3.5, "--sensitivity", "none", "--default-bits", 3, "--out", out]
    assert _rc([*argv, "--quiet"]) == 2
    assert "--default-bits is used with --gptqmodel only" in _err_line(capsys) and not out.exists()


# ------------------------------------------------------------------ H7-W7 / W1
def test_empty_musique_answers_and_empty_fields(tmp_path):
    """A MuSiQue alias ``""`` (or ``" "``, ``"the"``) was accepted and any answer normalising to
    nothing graded correct; an empty field was reported as missing while the message listed it."""
    from lrm_interp import benchmarks
    from lrm_interp.data.benchmarks.grading import best_em_f1
    from lrm_interp.data.benchmarks.items import BenchItem, BenchmarkFormatError

    td = tmp_path / "td"
    td.mkdir()
    for alias in ("", " ", "the", "A."):
        (td / "musique.jsonl").write_text(
            json.dumps({"question": "Who wrote it?", "answer": "Bob", "answer_aliases": ["Robert", alias]}) + "\n"
        )
        with pytest.raises(BenchmarkFormatError, match=r"musique\.jsonl:1: answer_aliases entry .* is empty after"):
            benchmarks.load("musique", td)
    (td / "musique.jsonl").write_text(json.dumps({"question": "Who?", "answer": "The"}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"musique\.jsonl:1: field 'answer' 'The' is empty after"):
        benchmarks.load("musique", td)
    # grading: an empty normalised answer never matches, whatever the item holds
    item = BenchItem("musique/0", "musique", 0, "p", "Bob", aliases=("",))
    g = benchmarks.grade("musique", item, "<think>no idea</think>The answer is the.")
    assert g.score == 0.0 and g.em == 0.0 and g.f1 == 0.0
    assert best_em_f1("the", ["", "Bob"]) == (0.0, 0.0) and best_em_f1("bob", ["", "Bob"]) == (1.0, 1.0)
    # W1: present but empty is "empty", not "missing"
    (td / "aime.jsonl").write_text(json.dumps({"problem": "   ", "answer": 5}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"aime\.jsonl:1: field 'problem' is empty \('   '\)"):
        benchmarks.load("aime", td)
    (td / "musique.jsonl").write_text(json.dumps({"question": "Who?", "answer": ""}) + "\n")
    with pytest.raises(BenchmarkFormatError, match=r"musique\.jsonl:1: field 'answer' is empty"):
        benchmarks.load("musique", td)
    (td / "aime.jsonl").write_text(json.dumps({"answer": 5}) + "\n")
    with pytest.raises(BenchmarkFormatError, match="missing field"):
        benchmarks.load("aime", td)


# ------------------------------------------------------------------ H7-QM1
def test_study_refuses_a_model_quantize_wrote(tmp_path, capsys):
    """``study --model ./Q`` (a ``quantize`` result) labelled it "full precision (fp32)" with KL 0."""
    from lrm_interp._io import QUANTIZE_RECORD
    from lrm_interp.toy import toy_model_dir

    gold = _gold(tmp_path)
    q = tmp_path / "Q"
    shutil.copytree(toy_model_dir(), q)
    (q / QUANTIZE_RECORD).write_text(json.dumps({"method": "rtn", "bits": 3, "source_model": "toy"}))
    out = tmp_path / "SY"
    capsys.readouterr()
    assert _rc(["study", "--model", q, "--data", gold, "--bits", 3, "--out", out, "--quiet"]) == 2
    err = _err_line(capsys)
    assert f"--model {q} is a quantized copy written by 'lrm-interp quantize'" in err
    assert "already quantized" in err and "bits 3" in err and not out.exists()


# ------------------------------------------------------------------ H7-TE
def test_a_tokenizer_that_is_not_the_models_is_named_before_anything_is_written(tmp_path, capsys):
    """Toy weights with a larger tokenizer: ``attribute`` explained it, ``bench run`` / ``protect`` /
    ``quantize --method gptq`` said "index out of range in self" (bench run left run.json behind).
    ``toy eval`` said the same."""
    from transformers import AutoTokenizer

    from lrm_interp.toy import toy_model_dir

    gold = _gold(tmp_path)
    m = tmp_path / "toyA"
    shutil.copytree(toy_model_dir(), m)
    tok = AutoTokenizer.from_pretrained(m)
    tok.add_tokens(["is", "he", "th", "in", "an", "er", "at", "on"])  # ids beyond the 259 embedding rows
    tok.save_pretrained(m)
    a = _scores(tmp_path)
    want = "it is not this model's tokenizer"
    capsys.readouterr()
    br = tmp_path / "BT"
    argv = ["bench", "run", "--model", m, "--tasks", "math", "--per-family", 1, "--max-new-tokens", 5, "--out", br]
    assert _rc([*argv, "--quiet"]) == 2
    err = _err_line(capsys)
    assert want in err and "math/0 (prompt)" in err and not br.exists()
    p = tmp_path / "p.safetensors"
    assert _rc(["protect", "--scores", a, "--model", m, "--data", gold, "--out", p, "--quiet"]) == 2
    assert want in _err_line(capsys) and not p.exists()
    qo = tmp_path / "QT"
    argv = ["quantize", "--model", m, "--bits", 3, "--method", "gptq", "--calib", gold, "--out", qo, "--quiet"]
    assert _rc(argv) == 2
    err = _err_line(capsys)
    assert want in err and "calibration text" in err and not qo.exists()
    b = tmp_path / "b.json"
    assert _rc(["bits", "--model", m, "--budget", 3.5, "--sensitivity", "hessian", "--out", b, "--quiet"]) == 2
    assert want in _err_line(capsys) and not b.exists()
    assert _rc(["toy", "eval", "--model", m, "--per-family", 1, "--quiet"]) == 2
    assert want in _err_line(capsys)
