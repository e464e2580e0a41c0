"""Cases the third hostile run left open (issue 22, "nothing lost, nothing silent"), H2-5 .. H2-17:
an alias shadowing a model folder, ``annotate agree`` dropping traces without a count, paper-layout
files neither loaded nor reported, a dataset loaded twice under two folder names, empty responses
loaded without a word, ``--out`` flags failing late (an existing file, a path under a file), a
hand-edited attribution result failing without naming its file, ``--device`` failing after the model
loaded, and ``bench run`` models sharing a run folder refused only after the first one generated."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc

from lrm_interp.data.traces import ReasoningDataset

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "tests" / "data" / "paper_layout"


def _traces(path: Path, n: int = 2, seed: int = 0) -> Path:
    from lrm_interp.data.toy_tasks import generate_dataset

    ReasoningDataset(list(generate_dataset(n, seed=seed))[:n]).save_jsonl(path)
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Any model load, training or distillation fails the test: refusals must come first."""
    import lrm_interp.model.loading as loading
    import lrm_interp.toy.distill as distill
    import lrm_interp.toy.train as train

    def boom(*a, **kw):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(loading, "load_model", boom)
    monkeypatch.setattr(train, "train_toy_model", boom)
    monkeypatch.setattr(distill, "distill_reasoner", boom)


# ------------------------------------------------------------------ H2-5
def test_alias_that_is_also_a_model_folder_is_refused_as_ambiguous(tmp_path, monkeypatch, capsys):
    """``--model toy`` beside a checkpoint folder ``./toy`` loaded the shipped model, silently; every
    alias (``smollm2-135m`` too) is now refused as ambiguous, naming both, in the API and the CLI."""
    from lrm_interp.cli.common import CliError, require_model
    from lrm_interp.model.loading import alias_folder_clash, load_model

    monkeypatch.chdir(tmp_path)
    traces = _traces(tmp_path / "t.jsonl")
    for alias in ("toy", "smollm2-135m", "smollm2-135m-reasoner"):
        (tmp_path / alias).mkdir()
        assert alias_folder_clash(alias) is None  # a folder without a model is no clash: the alias is meant
        (tmp_path / alias / "config.json").write_text("{}")
        assert alias_folder_clash(alias) == Path(alias)
        where = re.escape(str(tmp_path / alias))
        with pytest.raises(ValueError, match=rf"'{alias}' is ambiguous.*alias '{alias}'.*{where}.*\./{alias}"):
            load_model(alias)
        with pytest.raises(CliError, match=rf"--model '{alias}' is ambiguous"):
            require_model(alias)
        assert alias_folder_clash(f"./{alias}") is None  # a path is never an alias
    rc = _rc(["attribute", "--model", "toy", "--data", str(traces), "--out", str(tmp_path / "a"), "--quiet"])
    err = _err_line(capsys)
    assert rc == 2 and "--model 'toy' is ambiguous" in err and "./toy" in err
    assert not (tmp_path / "a").exists()
    rc = _rc(["bench", "score", "--tasks", "math", "--outputs", str(tmp_path), "--tokenizer", "toy"])
    assert rc == 2 and "--tokenizer 'toy' is ambiguous" in _err_line(capsys)


# ------------------------------------------------------------------ H2-9
def test_annotate_agree_counts_pred_traces_not_in_gold(tmp_path, capsys):
    """Traces of ``--pred`` whose id is not in ``--gold`` were left out without a word."""
    gold, pred = _traces(tmp_path / "gold.jsonl", 1), _traces(tmp_path / "pred.jsonl", 3)  # pred: gold + 2
    assert _rc(["annotate", "agree", "--gold", str(gold), "--pred", str(pred)]) == 0
    cap = capsys.readouterr()
    assert "1 traces (2 more in --pred, not in --gold: not scored)" in cap.out
    assert "note: 2 traces of --pred not in --gold, not scored" in cap.err
    assert _rc(["annotate", "agree", "--gold", str(gold), "--pred", str(pred), "--json"]) == 0
    cap = capsys.readouterr()
    json.loads(cap.out)  # stdout holds the JSON alone; the count goes to stderr
    assert "2 traces of --pred not in --gold" in cap.err
    # the reverse, gold traces without a prediction, is refused with both counts
    assert _rc(["annotate", "agree", "--gold", str(pred), "--pred", str(gold)]) == 2
    assert "2 of the 3 gold traces are missing" in _err_line(capsys)


# ------------------------------------------------------------------ H2-10
def test_paper_layout_reports_the_files_it_does_not_load(tmp_path, capsys):
    """Files nested inside a dataset folder, beside the dataset folders or with another extension
    were neither loaded nor reported."""
    from lrm_interp.data.paper_layout import IgnoredFileWarning, load_paper_layout

    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    n = len(load_paper_layout(root, progress=False))
    (root / "outputs" / "FOLIO" / "more").mkdir()
    shutil.copy(root / "outputs" / "FOLIO" / "0.txt", root / "outputs" / "FOLIO" / "more" / "9.txt")
    shutil.copy(root / "outputs" / "FOLIO" / "0.txt", root / "outputs" / "7.txt")
    shutil.copy(root / "annotated" / "FOLIO" / "0.txt", root / "annotated" / "FOLIO" / "8.md")
    stray = [
        str(root / "outputs" / "7.txt"),
        str(root / "outputs" / "FOLIO" / "more" / "9.txt"),
        str(root / "annotated" / "FOLIO" / "8.md"),
    ]
    with pytest.warns(IgnoredFileWarning, match=r"3 files not loaded.*outputs/<dataset>/<j>\.txt"):
        ds = load_paper_layout(root, progress=False)
    assert len(ds) == n and sorted(ds.report.ignored) == sorted(stray)
    assert ds.report.counts()["files_ignored"] == 3 and ds.report.to_dict()["ignored"] == list(ds.report.ignored)
    assert "3 files not loaded" in ds.report.summary()
    with pytest.warns(IgnoredFileWarning):  # a dataset not asked for is not reported, the others are
        only = load_paper_layout(root, datasets=["AIME_2024"], progress=False)
    assert list(only.report.ignored) == [str(root / "outputs" / "7.txt")]
    with pytest.warns(IgnoredFileWarning):
        assert _rc(["parse", "--data", str(root), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "3 files not loaded" in capsys.readouterr().out


# ------------------------------------------------------------------ H2-11
@pytest.mark.parametrize(
    ("copy_as", "match"),
    [
        ("folio", r"outputs/FOLIO and .*outputs/folio are the same dataset"),  # another spelling
        ("FOLIO_copy", r"outputs/FOLIO_copy is a copy of .*outputs/FOLIO \(the same 6 non-empty"),
    ],
)
def test_one_dataset_under_two_folder_names_is_refused(tmp_path, capsys, copy_as, match):
    """The same dataset under two folder names was loaded twice (every trace under two ids)."""
    from lrm_interp.data.paper_layout import load_paper_layout
    from lrm_interp.data.traces import TraceFormatError

    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    for j in range(6):  # the fixture's FOLIO outputs are one text six times: make them distinct
        p = root / "outputs" / "FOLIO" / f"{j}.txt"
        p.write_text(p.read_text() + f" (item {j})")
    for sub in ("outputs", "annotated"):
        shutil.copytree(root / sub / "FOLIO", root / sub / copy_as)
    with pytest.raises(TraceFormatError, match=match):
        load_paper_layout(root, progress=False)
    assert _rc(["parse", "--data", str(root), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "loaded twice" in _err_line(capsys) and not (tmp_path / "o.jsonl").exists()


def test_two_tasks_with_one_collapsed_output_are_no_copy(tmp_path):
    """A collapsed model writes one text for every item: two such tasks are not one dataset twice."""
    from lrm_interp.data.paper_layout import load_paper_layout

    root = tmp_path / "run"
    for task in ("math", "logic"):
        (root / "outputs" / task).mkdir(parents=True)
        for j in range(3):
            (root / "outputs" / task / f"{j}.txt").write_text("!!!!!!!!")
    assert len(load_paper_layout(root, progress=False)) == 6


def test_aime_alias_folder_is_the_same_dataset(tmp_path):
    from lrm_interp.data.paper_layout import load_paper_layout
    from lrm_interp.data.traces import TraceFormatError

    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    shutil.copytree(root / "outputs" / "AIME_2024", root / "outputs" / "aime")
    (root / "outputs" / "aime" / "0.txt").write_text("another response")  # not a byte copy: the name says it
    with pytest.raises(TraceFormatError, match=r"AIME_2024 and .*aime are the same dataset \(aime\)"):
        load_paper_layout(root, progress=False)


# ------------------------------------------------------------------ H2-12
def test_empty_responses_are_counted_when_loaded(tmp_path, capsys):
    """An empty response was loaded without a word (neither the parse report nor a warning)."""
    from lrm_interp.data.paper_layout import load_paper_layout
    from lrm_interp.data.traces import EmptyResponseWarning

    root = shutil.copytree(LAYOUT, tmp_path / "pl")
    (root / "outputs" / "FOLIO" / "2.txt").write_text("  \n")
    with pytest.warns(EmptyResponseWarning, match=r"1 trace with an empty response.*FOLIO/2"):
        ds = load_paper_layout(root, progress=False)
    assert ds.report.counts()["empty_responses"] == 1
    assert "1 empty response (kept without spans): FOLIO/2" in ds.report.summary()
    with pytest.warns(EmptyResponseWarning):
        assert _rc(["parse", "--data", str(root), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "1 empty response (kept without spans)" in capsys.readouterr().out
    # JSONL: the file, line and id
    recs = [json.loads(x) for x in _traces(tmp_path / "t.jsonl", 2).read_text().splitlines()]
    recs[1].update(response="", spans=[])
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    line2 = re.escape(f"e.jsonl:2 ('{recs[1]['id']}')")
    with pytest.warns(EmptyResponseWarning, match=rf"e\.jsonl: 1 trace with an empty response.*{line2}"):
        assert len(ReasoningDataset.load_jsonl(tmp_path / "e.jsonl")) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyResponseWarning)  # none for a file without empty responses
        ReasoningDataset.load_jsonl(tmp_path / "t.jsonl")


# ------------------------------------------------------------------ H2-13 / H2-14
def test_attribute_out_an_existing_file_is_refused_before_loading(tmp_path, capsys, no_work):
    """``attribute --out FILE`` failed after loading the model with "partial: Not a directory"."""
    traces = _traces(tmp_path / "t.jsonl")
    f = tmp_path / "afile"
    f.write_text("mine")
    for out in (f, f / "x"):
        assert _rc(["attribute", "--model", "toy", "--data", str(traces), "--out", str(out), "--quiet"]) == 2
        err = _err_line(capsys)
        assert err.startswith("lrm-interp attribute: error: --out ") and ("a file" in err)
    assert f.read_text() == "mine"


def _attr_dir(tmp_path: Path) -> Path:
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites
    from lrm_interp.toy import load_toy_model

    model, _ = load_toy_model()
    sites = tuple(find_sites(model))
    scores = torch.rand(2, len(sites), dtype=torch.float64) + 0.1
    return Attribution(("backtracking", "deduction"), sites, scores, method="attribution").save(tmp_path / "attr")


def test_out_under_a_file_is_refused_naming_the_flag_in_every_subcommand(tmp_path, monkeypatch, capsys):
    """``--out file/x`` gave a raw "File exists" / "Not a directory" (some after loading the model or
    training): now one line naming the flag, before any work, in every subcommand with ``--out``
    (``cli/common.py::check_paths``, ``_io.py::check_out_dir``, ``toy/distill.py::check_run_folder``)."""
    attr = _attr_dir(tmp_path)
    traces = _traces(tmp_path / "t.jsonl")
    capsys.readouterr()  # the toy model's loading bar
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "afile"
    f.write_text("mine")
    import importlib

    for mod, name in (
        ("lrm_interp.model.loading", "load_model"),
        ("lrm_interp.toy.train", "train_toy_model"),
        ("lrm_interp.toy.distill", "distill_reasoner"),
        ("lrm_interp.experiments.quickstart", "run_quickstart"),
        ("lrm_interp.experiments.study", "run_study"),
    ):
        monkeypatch.setattr(importlib.import_module(mod), name, lambda *a, **k: pytest.fail("work started"))
    out = str(f / "x")
    t, s = str(traces), str(attr)
    argvs = [
        ["quickstart", "--quiet"],
        ["attribute", "--model", "toy", "--data", t],
        ["parse", "--data", t],
        ["compare", "--original", s, "--compressed", s],
        ["protect", "--scores", s, "--policy", "modules_by_score"],
        ["quantize", "--model", "toy", "--bits", "3"],
        ["bits", "--model", "toy", "--budget", "3", "--scores", s],
        ["toy", "train", "--steps", "1"],
        ["toy", "traces", "--gold", "--per-family", "1"],
        ["toy", "distill"],
        ["bench", "run", "--tasks", "math", "--model", "toy", "--per-family", "1"],
        ["bench", "score", "--tasks", "math", "--outputs", str(tmp_path)],
        ["annotate", "--data", t],
        ["annotate", "train", "--data", t],
        ["annotate", "agree", "--gold", t, "--downstream", "toy"],
        ["study", "--model", "toy", "--data", t, "--bits", "3"],
        ["faithfulness", "--model", "toy", "--data", t],
        ["experiment", "protection", "--per-family", "1"],
    ]
    for argv in argvs:
        rc = _rc([*argv, "--out", out])
        err = _err_line(capsys)
        assert rc == 2 and f"--out {out}: {f} is a file, not a folder" in err, (argv, err)
    assert f.read_text() == "mine"
    assert _rc(["experiment", "protection", "--per-family", "1", "--out", str(f)]) == 2  # the file itself
    assert f"--out {f}" in _err_line(capsys) and f.read_text() == "mine"
    # the other output flags go through the same check
    assert _rc(["parse", "--data", str(LAYOUT), "--out", str(tmp_path / "o.jsonl"), "--report", out]) == 2
    assert f"--report {out}: {f} is a file, not a folder" in _err_line(capsys)


def test_file_on_the_way_and_check_out_dir():
    import tempfile

    from lrm_interp._io import check_out_dir, file_on_the_way

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "f"
        f.write_text("x")
        assert file_on_the_way(f / "a" / "b") == f and file_on_the_way(Path(d) / "new" / "x") is None
        assert file_on_the_way(f) is None  # the path itself is not "on the way"
        with pytest.raises(ValueError, match=r"--out .*f/a: .*f is a file, not a folder"):
            check_out_dir(f / "a", overwrite=True)


# ------------------------------------------------------------------ H2-15
def _old_format(d: Path) -> None:
    """Rewrite a saved result as one from before the labels checksum (loaded unverified)."""
    from safetensors import safe_open

    from lrm_interp._io import payload_checksum, write_safetensors

    with safe_open(str(d / "attribution.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("labels_sha256")
    write_safetensors(d / "attribution.safetensors", tensors, meta)
    m = json.loads((d / "attribution.json").read_text())
    m.pop("labels_sha256")
    m["tensors_sha256"] = payload_checksum(tensors, {"format": meta["format"]})
    (d / "attribution.json").write_text(json.dumps(m))


def _edit_json(d: Path, fn) -> None:
    m = json.loads((d / "attribution.json").read_text())
    fn(m)
    (d / "attribution.json").write_text(json.dumps(m))


def test_result_with_a_site_dropped_by_hand_names_the_file(tmp_path, capsys):
    """One site removed from ``attribution.json`` gave "scores shape (2, 3) != (2, 2)", naming no
    file (the labels checksum catches it; a folder saved before it did not)."""
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import Site

    def site(i: int) -> Site:
        return Site(f"model.layers.{i}.mlp.up_proj", i, "mlp", "up", 4, 8, 32, 32, "Linear")

    sites = (site(0), site(1), site(2))
    vec = {"backtracking": {s.name: torch.ones(8) for s in sites}}
    a = Attribution(("backtracking", "deduction"), sites, torch.rand(2, 3, dtype=torch.float64), "attribution", vec)
    d = a.save(tmp_path / "a")
    _old_format(d)
    assert Attribution.load(d).site_names == a.site_names  # loads unverified, as before
    _edit_json(d, lambda m: m["sites"].pop(1))
    with pytest.raises(
        ValueError,
        match=r"attribution\.json lists 2 behaviours x 2 sites, but the scores in attribution\.safetensors are 2 x 3",
    ):
        Attribution.load(d)
    rc = _rc(["protect", "--scores", str(d), "--policy", "modules_by_score", "--out", str(tmp_path / "m.safetensors")])
    err = _err_line(capsys)
    assert rc == 2 and str(d / "attribution.json") in err and "--budget" not in err
    # a steering vector of another size than its site's output
    d2 = Attribution(
        a.behaviors, sites, a.scores, "attribution", {"backtracking": {sites[0].name: torch.ones(5)}}
    ).save(tmp_path / "b")
    with pytest.raises(ValueError, match=r"attribution\.safetensors: steering vector .* shape \(5,\).* 8 outputs"):
        Attribution.load(d2)
    # a non-finite site size blames the file, not --budget (NaN is refused by the strict JSON reader, H11-AJS;
    # a size that is no count by the site-record check)
    for i, bad in enumerate((float("nan"), -3.5)):
        d3 = a.save(tmp_path / f"c{i}")
        _old_format(d3)
        _edit_json(d3, lambda m, bad=bad: m["sites"][0].__setitem__("n_weights", bad))
        argv = [
            "protect",
            "--scores",
            str(d3),
            "--policy",
            "modules_by_score",
            "--out",
            str(tmp_path / "m.safetensors"),
        ]
        rc = _rc(argv)
        err = _err_line(capsys)
        assert rc == 2 and str(d3 / "attribution.json") in err and "--budget" not in err, err
        assert ("NaN is not a JSON number" if i == 0 else "n_weights") in err, err


# ------------------------------------------------------------------ H2-16
def test_device_this_machine_lacks_is_refused_before_loading(tmp_path, monkeypatch, capsys, no_work):
    """``bench run --device cuda`` on a machine without CUDA (or ``--device gpu``) ended in an
    "internal error" after the model was loaded; now argparse refuses it, naming ``--device``."""
    from lrm_interp.cli.common import device_arg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (
        ["bench", "run", "--tasks", "math", "--model", "toy", "--per-family", "1", "--out", str(tmp_path / "b")],
        ["toy", "distill", "--out", str(tmp_path / "d")],
        ["toy", "train", "--out", str(tmp_path / "t")],
    ):
        for dev, why in (("cuda", "no CUDA device"), ("gpu", "not a device")):
            assert _rc([*argv, "--device", dev]) == 2
            err = _err_line(capsys)
            assert "--device" in err and why in err
    assert not any(tmp_path.iterdir())
    assert device_arg("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_arg("cuda:0") == "cuda:0"
    with pytest.raises(Exception, match=r"1 CUDA device \(cuda:0 \.\. cuda:0\)"):
        device_arg("cuda:1")


# ------------------------------------------------------------------ H2-17
def test_bench_run_refuses_models_sharing_a_run_folder_before_generating(tmp_path, capsys, no_work):
    """``--model a/m --model b/m`` was refused only after ``a/m`` finished generating (and a byte
    copy was silently served from the first one's outputs)."""
    from lrm_interp.compress.specs import parse_compression
    from lrm_interp.evaluation.backends import GenerationSettings
    from lrm_interp.evaluation.bench_suite import SuiteConfig, run_folders, run_suite

    for sub in ("a", "b"):
        (tmp_path / sub / "m").mkdir(parents=True)
        (tmp_path / sub / "m" / "config.json").write_text("{}")
    a, b, out = str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m"), tmp_path / "runs"
    base = ["bench", "run", "--tasks", "math", "--per-family", "1", "--out", str(out)]
    assert _rc([*base, "--model", a, "--model", b]) == 2
    err = _err_line(capsys)
    assert f"--model: model {a} and model {b} would both be written to the run folder 'm'" in err
    assert _rc([*base, "--model", "toy", "--model", "toy"]) == 2
    assert "model toy is given twice" in _err_line(capsys)
    assert _rc([*base, "--model", "toy", "--compress", "rtn:3", "rtn:3"]) == 2
    assert "--compress: rtn:3 is given twice" in _err_line(capsys)
    assert not out.exists()
    # the API refuses it before loading anything
    assert run_folders(["toy", a], [parse_compression("none"), parse_compression("rtn:3")]) == [
        "toy",
        "toy-rtn3",
        "m",
        "m-rtn3",
    ]
    with pytest.raises(ValueError, match="run folder 'm'"):
        run_suite([a, b], {}, out, SuiteConfig(GenerationSettings()), load=lambda n: pytest.fail("loaded"))
