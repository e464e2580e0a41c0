"""Cases an eighth hostile probe run found (issue 22, "nothing lost, nothing silent"), part A: the file
writers replacing files of a ``toy train`` model or a ``toy distill`` run (H9-TM) or of the shipped toy
model (H9-TT), the Python writers replacing a finished result's files with their defaults (H9-PYW),
``Attribution.save`` / ``StudyResult.save`` mixing two kinds of result in one folder (H9-MIX), two
single-file writer runs into one ``--out`` both reporting success (H9-CC2), a study serving results of
settings edited in its ``study.json`` (H9-STS), and two raw errors of the ``Attribution`` API (H9-E2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import cli_env as _env
from cli_run import err_line as _err_line
from cli_run import race as _race
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold

import lrm_interp as li


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every entry under ``d``: its bytes (files) or ``None`` (folders)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """An attribution ``A`` and a study ``SC`` of the toy model on a small gold trace file, a copy ``TM``
    of the shipped toy model (a ``toy train`` model folder: it holds the log ``toy train`` writes) and a
    ``toy distill`` run folder ``D`` (its checkpoint and finished adapter, as the run writes them)."""
    from lrm_interp.model.reasoner import RECIPE_FILE
    from lrm_interp.toy import toy_model_dir
    from lrm_interp.toy.distill import ADAPTER_DIR, CHECKPOINT_DIR, STATE_FILE

    d = tmp_path_factory.mktemp("h9a")
    gold = _gold(d, n=2)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / "A", "--quiet"]) == 0
    argv = ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", d / "SC", "--quiet"]
    assert _rc(argv) == 0
    shutil.copytree(toy_model_dir(), d / "TM")
    run = d / "D"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    (run / CHECKPOINT_DIR / STATE_FILE).write_text(json.dumps({"step": 2, "config": {}, "log": {}}))
    (run / CHECKPOINT_DIR / "adapter_model.safetensors").write_bytes(b"factors")
    (run / ADAPTER_DIR).mkdir()
    for name, text in (("adapter_config.json", "{}"), ("adapter_model.safetensors", "fp16"), (RECIPE_FILE, "{}")):
        (run / ADAPTER_DIR / name).write_text(text)
    return {"dir": d, "gold": gold, "A": d / "A", "SC": d / "SC", "TM": d / "TM", "D": run}


def _copy(results, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(results[name], dst)
    return dst


# ------------------------------------------------------------------ H9-TM
def test_file_writers_never_replace_a_toy_train_model_or_a_distill_run(results, tmp_path, capsys):
    """``parse`` / ``bits`` / ``protect --out TM/config.json`` (or ``D/adapter/...``) ``--overwrite``
    replaced a file of a ``toy train`` model folder or a ``toy distill`` run; the model was unloadable."""
    tm, run, a = _copy(results, "TM", tmp_path), _copy(results, "D", tmp_path), results["A"]
    before = {x: _tree(x) for x in (tm, run)}
    gold = results["gold"]
    bits = ["bits", "--model", "toy", "--budget", 3.5, "--sensitivity", "none", "--quiet"]
    protect = ["protect", "--scores", a, "--model", "toy", "--data", gold, "--budget", 0.02, "--quiet"]
    cases = [
        (["parse", "--data", gold], tm / "config.json", f"is a file of the toy train result {tm.resolve()}"),
        (bits, tm / "training_log.json", f"is a file of the toy train result {tm.resolve()}"),
        (["toy", "traces", "--gold", "--per-family", 1], tm / "model.safetensors", "is a file of the toy train"),
        # a model folder: from_pretrained reads what it finds there, so a new file is refused too
        (["parse", "--data", gold], tm / "extra.jsonl", "would be a new file inside the toy train result"),
        (
            ["parse", "--data", gold],
            run / "adapter" / "adapter_config.json",
            f"is a file of the toy distill result {(run / 'adapter').resolve()}",
        ),
        (protect, run / "adapter" / "adapter_model.safetensors", "is a file of the toy distill result"),
        (
            ["parse", "--data", gold],
            run / "checkpoint" / "state.json",
            f"part of the toy distill result {run.resolve()}",
        ),
    ]
    for argv, out, needle in cases:
        capsys.readouterr()
        assert _rc([*argv, "--out", out, "--overwrite"]) == 2, (argv, out)
        line = _err_line(capsys)
        assert f"--out {out} " in line and needle in line, line
        assert "--overwrite does not replace another command's result" in line, line
    for x, tree in before.items():
        assert _tree(x) == tree
    # a new name beside a run's own entries is free
    assert _rc(["parse", "--data", gold, "--out", run / "notes.jsonl"]) == 0


def test_toy_train_and_distill_rewrite_their_own_kind_and_no_other(results, tmp_path, capsys, monkeypatch):
    """``toy train --overwrite`` / ``toy distill`` (resume) name their own kind (``own=``): they rewrite
    their own folder and refuse another command's result, before any work."""
    import lrm_interp.toy.distill as toy_distill
    import lrm_interp.toy.train as toy_train

    trained: list = []
    monkeypatch.setattr(toy_train, "train_toy_model", lambda out, **k: trained.append(out))
    monkeypatch.setattr(
        toy_distill, "distill_reasoner", lambda out, cfg, **k: {"loss": [], "finished": True, "seconds": 0.0}
    )
    tm, run = _copy(results, "TM", tmp_path), _copy(results, "D", tmp_path)
    train = ["toy", "train", "--steps", 5, "--stop-at", 5, "--device", "cpu"]
    assert _rc([*train, "--out", tm, "--overwrite"]) == 0 and trained == [str(tm)]
    assert _rc(["toy", "distill", "--out", run, "--steps", 2, "--quiet"]) == 0
    for argv, other in (
        ([*train, "--overwrite"], results["A"]),
        ([*train, "--overwrite"], run),
        (["toy", "distill", "--steps", 2, "--quiet"], results["SC"]),
        (["toy", "distill", "--steps", 2, "--quiet"], tm),
    ):
        capsys.readouterr()
        assert _rc([*argv, "--out", other]) == 2
        line = _err_line(capsys)
        assert f"--out {other} is the " in line and "another command's result" in line, line
    assert trained == [str(tm)]


def test_the_toy_result_markers_are_their_writers_own():
    """The recogniser knows the two toy kinds by the records their writers write (kept equal here)."""
    from lrm_interp import _io
    from lrm_interp.model import reasoner
    from lrm_interp.toy import distill, toy_model_dir, train

    assert train.TRAINING_LOG == _io.TOY_TRAIN_RECORD
    assert (distill.CHECKPOINT_DIR, distill.STATE_FILE) == _io.TOY_DISTILL_CHECKPOINT
    assert (distill.ADAPTER_DIR, reasoner.RECIPE_FILE) == _io.TOY_DISTILL_ADAPTER
    assert distill.CHECKPOINT_DIR in _io.TOY_DISTILL_ENTRIES and distill.ADAPTER_DIR in _io.TOY_DISTILL_ENTRIES
    assert {"toy train", "toy distill"} <= set(_io.RESULT_KINDS)
    res = _io.finished_result(toy_model_dir())  # the shipped toy model: a toy train model folder
    assert res is not None and res.kind == "toy train" and res.owns("config.json")


# ------------------------------------------------------------------ H9-TT
def test_no_output_is_written_into_the_shipped_models_or_the_model_cache(results, tmp_path, capsys, monkeypatch):
    """``parse --out <lrm_interp/assets/toy_reasoner>/config.json --overwrite`` destroyed the model behind
    ``--model toy``; only ``toy train`` refused the alias folders. Now every output checked by
    ``check_paths`` is refused when it is, contains or lies inside one (the SmolLM2 cache too)."""
    from lrm_interp.toy import toy_model_dir

    shipped = toy_model_dir()
    before = _tree(shipped.parent)
    gold = results["gold"]
    cache = tmp_path / "cache"
    (cache / "smollm2-135m").mkdir(parents=True)
    (cache / "smollm2-135m" / "config.json").write_text("{}")
    monkeypatch.setenv("LRM_INTERP_CACHE", str(cache))
    cases = [
        (
            ["parse", "--data", gold, "--overwrite"],
            shipped / "config.json",
            "which is the folder of the model alias 'toy'",
        ),
        (
            ["bits", "--model", "toy", "--budget", 3.5, "--sensitivity", "none", "--overwrite", "--quiet"],
            shipped / "training_log.json",
            "which is the folder of the model alias 'toy'",
        ),
        (["toy", "traces", "--gold", "--overwrite"], shipped.parent / "x.jsonl", "the shipped assets of lrm_interp"),
        (
            ["annotate", "train", "--data", gold, "--steps", 5, "--quiet"],
            shipped.parent / "annotators" / "mine.safetensors",
            "the shipped trained annotator",
        ),
        (
            ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--quiet"],
            shipped.parent,
            "contains",
        ),
        (["parse", "--data", gold, "--overwrite"], cache / "smollm2-135m" / "config.json", "'smollm2-135m'"),
        (
            ["study", "--model", "toy", "--data", gold, "--bits", 3, "--overwrite", "--quiet"],
            cache,
            "which is the folder of the model alias 'smollm2-135m'",
        ),
    ]
    for argv, out, needle in cases:
        capsys.readouterr()
        assert _rc([*argv, "--out", out]) == 2, (argv, out)
        line = _err_line(capsys)
        assert f"--out {out} " in line and needle in line and "even with --overwrite" in line, line
    assert _tree(shipped.parent) == before
    assert (cache / "smollm2-135m" / "config.json").read_text() == "{}"


# ------------------------------------------------------------------ H9-PYW
def test_python_writers_never_replace_a_file_of_another_commands_result(results, tmp_path):
    """``save_masks``, ``save_jsonl`` and ``lrm_interp.atomic_write_text`` with their defaults replaced
    ``A/attribution.safetensors``, ``A/scores.csv``, ``A/attribution.json`` without a word."""
    from lrm_interp import _io

    a, sc = _copy(results, "A", tmp_path), _copy(results, "SC", tmp_path)
    before = {x: _tree(x) for x in (a, sc)}
    masks = li.load_masks(results["SC"] / "masks.safetensors")
    ds = li.load_dataset(results["gold"])
    writes = [
        (lambda p: li.save_masks(masks, p), a / "attribution.safetensors"),
        (lambda p: li.save_masks(masks, p, replace=False), sc / "masks.safetensors"),
        (ds.save_jsonl, a / "scores.csv"),
        (ds.save_jsonl, sc / "attribution_fp32" / "scores.csv"),
        (lambda p: li.atomic_write_text(p, "x"), a / "attribution.json"),
        (lambda p: li.atomic_write_bytes(p, b"x"), sc / "bits.json"),
    ]
    for write, path in writes:
        with pytest.raises(_io.OtherResultError, match=r"is a file of the (attribution|study) result .*save elsewhere"):
            write(path)
        try:  # both a FileExistsError and a ValueError
            write(path)
        except (FileExistsError, ValueError) as e:
            assert str(path) in str(e)
    with pytest.raises(ValueError, match="the work folder of the attribution run"):
        ds.save_jsonl(a / "partial" / "traces.jsonl")
    for x, tree in before.items():
        assert _tree(x) == tree
    li.Attribution.load(a)
    # a new name beside a result's files is free; the library's own writer names its kind
    ds.save_jsonl(a / "traces.jsonl")
    li.atomic_write_text(a / "notes.txt", "mine")
    li.save_masks(masks, sc / "masks.safetensors", own="study")
    # the exported writers are the checked ones; _io's stay the low-level writers the library uses
    assert li.atomic_write_text is _io.checked_write_text and li.atomic_write_bytes is _io.checked_write_bytes
    assert li.atomic_write_text is not _io.atomic_write_text


# ------------------------------------------------------------------ H9-MIX
def test_an_attribution_and_a_study_are_never_saved_into_each_others_folder(results, tmp_path, capsys):
    """``Attribution.save(<a study folder>)`` succeeded without ``overwrite``; the folder was then taken
    for an attribution result and the study's files lost their protection. ``StudyResult.save(<an
    attribution folder>)`` mixed the other way."""
    from lrm_interp import _io
    from lrm_interp.experiments.study import StudyResult

    a, sc = _copy(results, "A", tmp_path), _copy(results, "SC", tmp_path)
    before = {x: _tree(x) for x in (a, sc)}
    res, study = li.Attribution.load(results["A"]), StudyResult.load(results["SC"])
    attempts = [
        (lambda: res.save(sc), f"directory {sc} is the study result"),
        (lambda: res.save(sc, overwrite=True), "an attribution result is never written into another command's result"),
        (lambda: res.write_tables(sc, overwrite=True), f"directory {sc} is the study result"),
        (lambda: study.save(a), f"out folder {a} is the attribution result"),
        (lambda: study.save(a, overwrite=True), "a study result is never written into another command's result"),
        (lambda: li.run_study("toy", results["gold"], a, bits=3, resamples=40, progress=False), "attribution result"),
        (lambda: li.attribute("toy", results["gold"], out_dir=sc, progress=False), f"out_dir {sc} is the study result"),
    ]
    for attempt, needle in attempts:
        with pytest.raises(_io.OtherResultError) as e:
            attempt()
        assert needle in str(e.value), str(e.value)
    for x, tree in before.items():
        assert _tree(x) == tree
    # the study stays a study: its bits.json is still refused to the file writers
    capsys.readouterr()
    assert _rc(["parse", "--data", results["gold"], "--out", sc / "bits.json", "--overwrite"]) == 2
    assert f"is a file of the study result {sc.resolve()}" in _err_line(capsys)
    # each still saves into its own kind; a study's own attribution folder is an attribution's, but another
    # attribution never replaces it (the study would no longer be the one it was, H23-SAVESTUDY)
    assert study.save(sc) == sc
    fp = sc / "attribution_fp32"
    kept = _tree(fp)
    with pytest.raises(ValueError, match=rf"{fp} is a folder of the study result {sc}: --overwrite"):
        res.save(fp, overwrite=True)
    assert _tree(fp) == kept
    li.Attribution.load(fp).save(fp)  # its own result saved again: fine


# ------------------------------------------------------------------ H9-CC2


def _no_leftovers(folder: Path) -> None:
    """No temporary file, no lock file left in ``folder``."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], sorted(folder.iterdir())


def test_two_single_file_writers_into_one_new_out_never_both_report_success(results, tmp_path):
    """Two ``bits`` / ``parse`` / ``annotate train`` runs into one new ``--out`` at once: both exited 0 and
    printed "wrote", one result lost. Now the later one is refused naming ``--out``, and the file is
    the earlier one's, whole."""
    from safetensors import safe_open

    gold, gold9 = results["gold"], _gold(tmp_path, "gold9.jsonl", n=2, seed=9)
    parse_ref = {}
    for k, data in (("a", gold), ("b", gold9)):
        assert _rc(["parse", "--data", data, "--out", tmp_path / f"ref_{k}.jsonl"]) == 0
        parse_ref[k] = (tmp_path / f"ref_{k}.jsonl").read_bytes()
    assert parse_ref["a"] != parse_ref["b"]

    def budget(p: Path) -> float:
        return json.loads(p.read_text())["budget_bpw"]

    def steps(p: Path) -> int:
        with safe_open(str(p), "pt") as f:
            return json.loads((f.metadata() or {})["info"])["steps"]

    bits = ["bits", "--model", "toy", "--sensitivity", "none", "--quiet"]
    train = ["annotate", "train", "--quiet"]
    races = [
        (
            "lrm_interp.data.traces:ReasoningDataset.save_jsonl",
            "p.jsonl",
            {"a": ["parse", "--data", gold], "b": ["parse", "--data", gold9]},
            lambda p: next(k for k, v in parse_ref.items() if p.read_bytes() == v),
        ),
        (
            "lrm_interp.protect.bit_allocation:BitAllocation.save",
            "b.json",
            {"a": [*bits, "--budget", 3.5], "b": [*bits, "--budget", 5]},
            lambda p: {3.5: "a", 5.0: "b"}[budget(p)],
        ),
        (
            "lrm_interp.data.annotators.trained:LinearAnnotator.save",
            "t.safetensors",
            {"a": [*train, "--data", gold, "--steps", 20], "b": [*train, "--data", gold9, "--steps", 30]},
            lambda p: {20: "a", 30: "b"}[steps(p)],
        ),
    ]
    for i, (target, name, runs, which) in enumerate(races):
        folder = tmp_path / f"race{i}"
        folder.mkdir()
        out = folder / name
        (ra, ea), (rb, eb) = _race(
            tmp_path / f"bar{i}", target, 90, [*runs["a"], "--out", out], [*runs["b"], "--out", out]
        )
        assert sorted([ra, rb]) == [0, 2], (target, ra, ea, rb, eb)
        won, lost_err = ("a", eb) if ra == 0 else ("b", ea)
        last = lost_err.splitlines()[-1]
        assert f"--out {out} was created by another run while this one ran: its result is kept" in last, lost_err
        assert "Traceback" not in lost_err
        assert which(out) == won  # the file is the winner's, whole
        assert sorted(p.name for p in folder.iterdir()) == [name]
        _no_leftovers(folder)


def test_two_runs_replacing_one_existing_file_take_turns(results, tmp_path, capsys):
    """Into an existing ``--out`` with ``--overwrite``: one run at a time (a second live one is refused
    at once naming the first's pid), the file is one run's whole result; a killed holder holds nothing."""
    from lrm_interp._io import exclusive_lock, file_lock_path

    gold, gold9 = results["gold"], _gold(tmp_path, "gold9.jsonl", n=2, seed=9)
    ref = {}
    for k, data in (("a", gold), ("b", gold9)):
        assert _rc(["parse", "--data", data, "--out", tmp_path / f"ref_{k}.jsonl"]) == 0
        ref[k] = (tmp_path / f"ref_{k}.jsonl").read_bytes()
    folder = tmp_path / "O"
    folder.mkdir()
    out = folder / "p.jsonl"
    out.write_text("old\n")
    (ra, ea), (rb, eb) = _race(
        tmp_path / "bo",
        "lrm_interp.data.traces:ReasoningDataset.save_jsonl",
        4,
        ["parse", "--data", gold, "--out", out, "--overwrite"],
        ["parse", "--data", gold9, "--out", out, "--overwrite"],
    )
    assert 0 in (ra, rb) and {ra, rb} <= {0, 2}, (ra, ea, rb, eb)
    if 2 in (ra, rb):
        won, lost_err = ("a", eb) if ra == 0 else ("b", ea)
        assert f"--out {out} is in use by another 'lrm-interp parse' run (pid " in lost_err, lost_err
        assert out.read_bytes() == ref[won]
    else:  # one after the other
        assert out.read_bytes() in (ref["a"], ref["b"])
    _no_leftovers(folder)
    # the lock names its holder; the file stays as it was
    out.write_text("old\n")
    code = (
        "import sys, time\nfrom lrm_interp._io import exclusive_lock, file_lock_path\n"
        "with exclusive_lock(file_lock_path(sys.argv[1]), 'bits'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert _rc(["parse", "--data", gold, "--out", out, "--overwrite"]) == 2
        line = _err_line(capsys)
        assert f"--out {out} is in use by another 'lrm-interp bits' run (pid {holder.pid})" in line, line
        assert out.read_text() == "old\n"
    finally:
        holder.kill()
        holder.wait()
    assert _rc(["parse", "--data", gold, "--out", out, "--overwrite"]) == 0  # a killed holder holds no lock
    assert out.read_bytes() == ref["a"]
    _no_leftovers(folder)
    with exclusive_lock(file_lock_path(out), "test"):  # the lock is free again, and goes when released
        assert file_lock_path(out).is_file()
    assert not file_lock_path(out).exists()


# ------------------------------------------------------------------ H9-STS
def test_a_study_refuses_a_study_json_whose_settings_were_edited(results, tmp_path, capsys):
    """``study`` after a hand edit of study.json's budget (0.02 → 0.05), rerun with ``--budget 0.05``,
    exited 0 and served the 0.02 study's results.csv and bits.json."""
    from lrm_interp.experiments.study import KEY_CHECKSUMS, StudyResult

    sc = _copy(results, "SC", tmp_path)
    doc = json.loads((sc / "study.json").read_text())
    assert set(doc[KEY_CHECKSUMS]) == {"settings", "weights_fingerprint", "tokenizer_fingerprint", "traces_fingerprint"}
    doc["settings"]["budget"] = 0.05
    (sc / "study.json").write_text(json.dumps(doc))
    before = _tree(sc)
    argv = ["study", "--model", "toy", "--data", results["gold"], "--bits", 3, "--resamples", 40, "--out", sc]
    capsys.readouterr()
    assert _rc([*argv, "--budget", 0.05, "--quiet"]) == 2
    line = _err_line(capsys)
    assert f"{sc / 'study.json'} was edited since the study wrote it (settings)" in line, line
    assert "delete the folder or rerun with --overwrite" in line and "overwrite=True" not in line, line
    assert _tree(sc) == before
    with pytest.raises(ValueError, match=r"study.json was edited since the study wrote it \(settings\)"):
        StudyResult.load(sc)
    # a fingerprint edited to another model's: refused the same way
    doc = json.loads((results["SC"] / "study.json").read_text())
    doc["weights_fingerprint"] = "0" * 64
    (sc / "study.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"edited since the study wrote it \(weights_fingerprint\)"):
        StudyResult.load(sc)
    # a study.json of the older format, written before the checksums: loads and resumes as before, and
    # keeps its format (no checksums written over settings nobody checked, H10-STK)
    doc = json.loads((results["SC"] / "study.json").read_text())
    del doc[KEY_CHECKSUMS]
    doc["format"] = "lrm_interp.study/1"
    (sc / "study.json").write_text(json.dumps(doc))
    StudyResult.load(sc)
    assert _rc([*argv, "--quiet"]) == 0
    again = json.loads((sc / "study.json").read_text())
    assert again["format"] == "lrm_interp.study/1" and KEY_CHECKSUMS not in again


# ------------------------------------------------------------------ H9-E2
def test_attribution_grid_and_load_name_a_wrong_argument(results):
    """``grid(b, 'foo')`` was a bare KeyError 'foo'; ``load(None)`` pathlib's TypeError."""
    res = li.Attribution.load(results["A"])
    with pytest.raises(ValueError, match=r"value must be one of 'ri', 'score', 'rank', got 'foo'"):
        res.grid(res.behaviors[0], "foo")
    with pytest.raises(ValueError, match="value must be one of"):
        res.heatmap(value="RI")
    with pytest.raises(
        TypeError, match=r"^Attribution.load: directory must be a path \(str or os.PathLike\), got NoneType"
    ):
        li.Attribution.load(None)  # type: ignore[arg-type]  # checks.checked_arguments (H31-APIOUT)
    with pytest.raises(TypeError, match="directory must be a path"):
        li.Attribution.load(5)  # type: ignore[arg-type]
    assert res.grid(res.behaviors[0], "rank")[0].shape[0] > 0
