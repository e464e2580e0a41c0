"""Cases a ninth hostile probe run found (issue 22, "nothing lost, nothing silent"), part A: the Python
writers writing into the shipped assets and the model cache (H10-ASP), ``BenchScores.write_tables``
writing into another command's result and a ``toy train`` folder losing its protection to a
``score_files.json`` (H10-BSW), ``compare`` and ``annotate agree --downstream`` folders not known as
results (H10-CMP), a single-file result (masks, a bits allocation, a trained annotator) replaced by
another command or writer (H10-SFR), the per-file lock emptying a user's file or following a link
(H10-LCK), ``annotate --cache`` writing into another command's result folder (R27) and a file output
spelled as a folder (R28)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

import lrm_interp as li
from lrm_interp import _io

BENCH_DATA = Path(__file__).parent / "data" / "bench"


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every entry under ``d``: its bytes (files) or ``None`` (folders)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> dict[str, Path]:
    """An attribution ``A`` of the toy model, its masks ``m.safetensors`` (``protect``), a bits
    allocation ``b.json`` (``bits``), a trained annotator ``ann.safetensors`` (``annotate train``), a
    ``compare`` result ``CMP`` and a copy ``TM`` of the shipped toy model (a ``toy train`` folder)."""
    from lrm_interp.toy import toy_model_dir

    d = tmp_path_factory.mktemp("h10a")
    gold = toy_gold(d, n=1)
    a = d / "A"
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    argv = ["protect", "--scores", a, "--policy", "final_mlp", "--bits", 3, "--out", d / "m.safetensors"]
    assert _rc(argv) == 0
    bits = ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, "--quiet"]
    assert _rc([*bits, "--out", d / "b.json"]) == 0
    gold2 = toy_gold(d, "gold2.jsonl", n=2)  # cross-validation needs 5 traces
    train = ["annotate", "train", "--data", gold2, "--steps", 5, "--quiet", "--out", d / "ann.safetensors"]
    assert _rc(train) == 0
    assert _rc(["compare", "--original", a, "--compressed", a, "--out", d / "CMP"]) == 0
    shutil.copytree(toy_model_dir(), d / "TM")
    return {
        "dir": d,
        "gold": gold,
        "gold2": gold2,
        "A": a,
        "CMP": d / "CMP",
        "TM": d / "TM",
        "m": d / "m.safetensors",
    } | {
        "b": d / "b.json",
        "ann": d / "ann.safetensors",
    }


def _copy(res, name: str, tmp_path: Path, as_name: str | None = None) -> Path:
    src, dst = res[name], tmp_path / (as_name or res[name].name)
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
    return dst


def _bench_scores(tmp_path: Path):
    """The scores of a hand-written paper layout (three FOLIO outputs): no model is run."""
    from lrm_interp.data.benchmarks import load
    from lrm_interp.evaluation.bench_score import score_outputs

    root = tmp_path / "outs" / "r1" / "outputs" / "folio"
    root.mkdir(parents=True)
    for j, text in enumerate(["x</think>\n**False**", "x</think>\nTrue", "x</think>\nThe answer is Uncertain."]):
        (root / f"{j}.txt").write_text(text)
    return score_outputs(tmp_path / "outs", {"folio": load("folio", BENCH_DATA)}, progress=False)


# ------------------------------------------------------------------ H10-ASP
def test_python_writers_never_write_into_the_shipped_assets_or_the_model_cache(res, tmp_path, monkeypatch):
    """``save_masks`` / ``save_jsonl`` / ``lrm_interp.atomic_write_bytes`` wrote into the shipped
    annotator's folder and onto the SmolLM2 cache's ``config.json`` (only the command line refused
    them). Now every Python writer applies the same rule (:func:`lrm_interp._io.refuse_alias_folder`)."""
    from lrm_interp.data.annotate import SHIPPED_ANNOTATOR

    annotators = SHIPPED_ANNOTATOR.parent
    before = _tree(annotators)
    cache = tmp_path / "cache"
    (cache / "smollm2-135m").mkdir(parents=True)
    (cache / "smollm2-135m" / "config.json").write_text("{}")
    (cache / "smollm2-135m" / "lrm_interp_source.json").write_text('{"source": "x"}')
    (cache / "smollm2-135m-reasoner-abc").mkdir()
    (cache / "smollm2-135m-reasoner-abc" / "config.json").write_text("{}")
    cache_before = _tree(cache)
    monkeypatch.setenv("LRM_INTERP_CACHE", str(cache))
    ds = li.load_dataset(res["gold"])
    masks = li.load_masks(res["m"])
    attr = li.Attribution.load(res["A"])
    writes = [
        (lambda: ds.save_jsonl(annotators / "new.jsonl"), "the shipped trained annotator", "replace=True"),
        (lambda: li.atomic_write_bytes(annotators / "x.safetensors", b"x"), "the shipped trained annotator", ""),
        (lambda: li.save_masks(masks, annotators / "m.safetensors"), "the shipped trained annotator", ""),
        (lambda: li.atomic_write_text(annotators.parent / "notes.txt", "x"), "the shipped assets of lrm_interp", ""),
        (lambda: ds.save_jsonl(cache / "smollm2-135m" / "config.json"), "the model alias 'smollm2-135m'", ""),
        (
            lambda: li.atomic_write_text(cache / "smollm2-135m-reasoner-abc" / "config.json", "x"),
            "the model alias 'smollm2-135m-reasoner'",
            "",
        ),
        (lambda: attr.save(cache / "smollm2-135m"), "the model alias 'smollm2-135m'", "overwrite=True"),
        (lambda: attr.write_tables(annotators, overwrite=True), "the shipped trained annotator", ""),
    ]
    try:
        for write, needle, consent in writes:
            with pytest.raises(_io.OtherResultError) as e:
                write()
            msg = str(e.value)
            assert needle in msg and "it is never replaced or written into, even with" in msg, msg
            assert consent in msg and "--overwrite" not in msg, msg
    finally:  # the code before the fix wrote new files there: never leave them in the package
        for p in annotators.iterdir():
            if p.is_file() and p.name not in before:
                p.unlink()
        stray = annotators.parent / "notes.txt"
        if stray.exists():
            stray.unlink()
    assert _tree(annotators) == before
    assert _tree(cache) == cache_before
    # the command line keeps its words (the one rule, imported by cli/common)
    from lrm_interp.cli import common

    with pytest.raises(ValueError, match=r"even with --overwrite \(lrm_interp reads them as shipped\)"):
        common.refuse_alias_folder(annotators / "r1_gpt4o.safetensors", "--out")
    assert common.alias_folders() == _io.alias_folders()


# ------------------------------------------------------------------ H10-BSW
def test_bench_score_tables_are_never_written_into_another_commands_result(res, tmp_path, capsys):
    """``BenchScores.write_tables(A)`` replaced the attribution's ``scores.csv``; ``write_tables(TM)``
    wrote into a ``toy train`` model folder, whose ``score_files.json`` then made it a "bench score
    result": ``parse --out TM/config.json --overwrite`` replaced the model's config."""
    sc = _bench_scores(tmp_path)
    a, tm, cmp_ = _copy(res, "A", tmp_path), _copy(res, "TM", tmp_path), _copy(res, "CMP", tmp_path)
    before = {x: _tree(x) for x in (a, tm, cmp_)}
    for folder, kind in ((a, "attribution"), (tm, "toy train"), (cmp_, "compare"), (a / "partial", "attribution")):
        for replace in (True, False):
            with pytest.raises((_io.OtherResultError, ValueError)) as e:
                sc.write_tables(folder, plots=False, replace=replace)
            assert f"the {kind} result" in str(e.value) or "work folder" in str(e.value), str(e.value)
    for x, tree in before.items():
        assert _tree(x) == tree
    # a model folder stays a model folder, whatever table records were written into it before
    (tm / "score_files.json").write_text('{"format": "lrm_interp.bench_score_files/1", "files": ["scores.csv"]}')
    found = _io.finished_result(tm)
    assert found is not None and found.kind == "toy train" and found.owns("config.json")
    config = (tm / "config.json").read_bytes()
    capsys.readouterr()
    assert _rc(["parse", "--data", res["gold"], "--out", tm / "config.json", "--overwrite"]) == 2
    assert f"is a file of the toy train result {tm.resolve()}" in _err_line(capsys)
    assert (tm / "config.json").read_bytes() == config
    # a bench score's own folder: written, then rewritten
    out = tmp_path / "BS"
    assert [p.name for p in sc.write_tables(out, plots=False)][-1] == "score_files.json"
    assert [p.name for p in sc.write_tables(out, plots=False)][-1] == "score_files.json"
    assert _io.finished_result(out).kind == "bench score"


# ------------------------------------------------------------------ H10-CMP
def test_compare_and_downstream_results_are_never_replaced_by_another_command(res, tmp_path, capsys):
    """``parse --out CMP/shift.csv --overwrite``, ``Attribution.save(CMP)`` and ``parse --out
    DL/result.json --overwrite`` replaced or mixed a ``compare`` / ``annotate agree --downstream``
    result. Both kinds are recognised now; each command still rewrites its own."""
    cmp_ = _copy(res, "CMP", tmp_path)
    gold = res["gold"]
    dl = tmp_path / "DL"
    downstream = ["annotate", "agree", "--gold", gold, "--pred", gold, "--downstream", "toy", "--out", dl, "--quiet"]
    assert _rc(downstream) == 0
    assert _io.finished_result(cmp_).kind == "compare" and _io.finished_result(dl).kind == "annotate downstream"
    before = {x: _tree(x) for x in (cmp_, dl)}
    cases = [
        (["parse", "--data", gold, "--out", cmp_ / "shift.csv", "--overwrite"], "is a file of the compare result"),
        (["parse", "--data", gold, "--out", cmp_ / "shift.png", "--overwrite"], "is a file of the compare result"),
        (
            ["parse", "--data", gold, "--out", dl / "result.json", "--overwrite"],
            "is a file of the annotate downstream result",
        ),
        (
            ["attribute", "--model", "toy", "--data", gold, "--out", cmp_, "--quiet"],
            f"--out {cmp_} is the compare result",
        ),
        (["attribute", "--model", "toy", "--data", gold, "--out", dl, "--quiet"], "is the annotate downstream result"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert _rc(argv) == 2, argv
        line = _err_line(capsys)
        assert needle in line and "another command's result" in line, line
    attr = li.Attribution.load(res["A"])
    for folder, kind in ((cmp_, "compare"), (dl, "annotate downstream")):
        with pytest.raises(_io.OtherResultError, match=f"is the {kind} result"):
            attr.save(folder, overwrite=True)
        with pytest.raises(_io.OtherResultError, match=f"is the {kind} result"):
            _bench_scores(tmp_path / kind.replace(" ", "_")).write_tables(folder, plots=False)
    for x, tree in before.items():
        assert _tree(x) == tree
    # each rewrites its own: compare --overwrite (CLI) and ImportanceShift.write_tables (Python), the
    # downstream run resumed
    capsys.readouterr()
    assert _rc(["compare", "--original", res["A"], "--compressed", res["A"], "--out", cmp_, "--overwrite"]) == 0
    shift = li.compare(attr, attr, strict=False)
    assert [p.name for p in shift.write_tables(cmp_)] == ["shift.csv", "shift.png"]
    shift.write_tables(cmp_, overwrite=True)
    with pytest.raises(_io.OtherResultError, match="is the attribution result"):  # no mixed folder
        shift.write_tables(_copy(res, "A", tmp_path, "A2"), overwrite=True)
    assert _rc(downstream) == 0


def test_the_new_result_markers_are_their_writers_own(res):
    """The recogniser knows ``compare`` by its table's header and the downstream run by its record
    (kept equal here to what their writers write)."""
    from lrm_interp.experiments import annotation_downstream as ds

    assert (res["CMP"] / "shift.csv").read_text().splitlines()[0] == _io.COMPARE_HEADER
    shift = li.compare(li.Attribution.load(res["A"]), li.Attribution.load(res["A"]), strict=False)
    assert ",".join(shift.to_dataframe().columns) == _io.COMPARE_HEADER
    assert ds.FORMAT.startswith(_io.DOWNSTREAM_FORMAT) and ds.RESULT_FILE == _io.DOWNSTREAM_RECORD
    assert {"compare", "annotate downstream"} <= set(_io.RESULT_KINDS)


# ------------------------------------------------------------------ H10-SFR
def test_single_file_results_are_replaced_only_by_their_own_kind(res, tmp_path, capsys):
    """``bits --out <masks> --overwrite`` replaced a ``protect`` result; ``save_jsonl(<masks>)`` and
    ``save_masks(<bits.json>)`` replaced one with no flag at all. Now a file declaring an lrm_interp
    format is replaced only by its own kind (its command with --overwrite, its writer)."""
    m, b, ann = (_copy(res, n, tmp_path, f"{n}2{res[n].suffix}") for n in ("m", "b", "ann"))
    before = {p: p.read_bytes() for p in (m, b, ann)}
    gold = res["gold"]
    bits = ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, "--quiet"]
    protect = ["protect", "--scores", res["A"], "--policy", "final_mlp", "--bits", 3]
    fmt_m, fmt_b = _io.file_result(m).format, _io.file_result(b).format
    fmt_a = _io.file_result(ann).format
    assert fmt_m.startswith("lrm_interp.masks/") and fmt_b.startswith("lrm_interp.bits/")
    assert fmt_a.startswith("lrm_interp.annotator/")
    cases = [
        (bits, m, f"holds protection masks ({fmt_m}), a result of 'lrm-interp protect'"),
        (["parse", "--data", gold], b, f"holds a bits allocation ({fmt_b}), a result of 'lrm-interp bits'"),
        (protect, ann, f"holds a trained annotator ({fmt_a}), a result of 'lrm-interp annotate train'"),
        (["annotate", "train", "--data", res["gold2"], "--steps", 5, "--quiet"], m, "holds protection masks"),
        (["toy", "traces", "--gold", "--per-family", 1], b, "holds a bits allocation"),
        (["annotate", "--data", gold, "--annotator", "rules"], ann, "holds a trained annotator"),
    ]
    for argv, out, needle in cases:
        capsys.readouterr()
        assert _rc([*argv, "--out", out, "--overwrite"]) == 2, argv
        line = _err_line(capsys)
        assert f"--out {out} {needle}" in line, line
        assert line.endswith(": --overwrite does not replace another command's result; choose another --out"), line
        # without --overwrite the refusal names what the file holds: "pass --overwrite" led on to the refusal above
        assert _rc([*argv, "--out", out]) == 2, argv
        line = _err_line(capsys)
        assert f"--out {out}: the file exists and holds " in line and "(with --overwrite); choose another path" in line
        assert "pass --overwrite" not in line, line
        assert not list(tmp_path.glob(".*.lrm_interp.lock")), "refused before its lock was taken"
    masks = li.load_masks(res["m"])
    alloc = li.BitAllocation.load(res["b"])
    ds = li.load_dataset(gold)
    writes = [
        (lambda: ds.save_jsonl(m), m, "holds protection masks", "not replaced by reasoning traces (JSON lines)"),
        (lambda: li.save_masks(masks, b), b, "holds a bits allocation", "not replaced by protection masks"),
        (lambda: li.atomic_write_bytes(ann, b"x"), ann, "holds a trained annotator", "a file of another kind"),
        (lambda: alloc.save(m), m, "holds protection masks", "not replaced by a bits allocation"),
        (lambda: li.save_masks(masks, ann, replace=True), ann, "holds a trained annotator", "protection masks"),
    ]
    for write, path, held, new in writes:
        with pytest.raises(_io.OtherResultError) as e:
            write()
        assert str(e.value).startswith(f"{path} {held} (") and new in str(e.value), str(e.value)
        assert "even with replace=True" in str(e.value)
    assert {p: p.read_bytes() for p in (m, b, ann)} == before
    # the same kind replaces it, as before: the command with --overwrite, the Python writer
    capsys.readouterr()
    assert _rc([*protect, "--out", m, "--overwrite"]) == 0
    assert _rc([*bits, "--out", b, "--overwrite"]) == 0
    li.save_masks(masks, m)
    alloc.save(b)
    li.load_masks(m), li.BitAllocation.load(b)
    # a file that declares no lrm_interp format (or cannot be read as one) is no result
    for name, data in (("junk.safetensors", b"\xff" * 40), ("notes.json", b'{"format": "mine/1"}'), ("e.json", b"")):
        (tmp_path / name).write_bytes(data)
        assert _io.file_result(tmp_path / name) is None
        assert _rc(["parse", "--data", gold, "--out", tmp_path / name, "--overwrite"]) == 0


# ------------------------------------------------------------------ H10-LCK
def test_the_lock_path_never_empties_a_users_file_nor_follows_a_link(res, tmp_path, capsys):
    """``parse --data .o.jsonl.lrm_interp.lock --out o.jsonl --overwrite`` emptied, then deleted the
    input (the lock's name); a link there had its target overwritten with "<pid> parse". Now the lock
    is opened without following links and a file that is not a lock is left as it is."""
    gold = res["gold"]
    o = tmp_path / "o.jsonl"
    shutil.copyfile(gold, o)
    lock = _io.file_lock_path(o)
    shutil.copyfile(gold, lock)
    capsys.readouterr()
    assert _rc(["parse", "--data", lock, "--out", o, "--overwrite"]) == 2
    line = _err_line(capsys)
    assert f"--out {o}: its lock file {lock} is a file of " in line and "never emptied or removed" in line, line
    assert lock.read_bytes() == Path(gold).read_bytes() and o.read_bytes() == Path(gold).read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    p = tmp_path / "p.jsonl"
    shutil.copyfile(gold, p)
    link = _io.file_lock_path(p)
    link.symlink_to(notes.name)
    assert _rc(["parse", "--data", gold, "--out", p, "--overwrite"]) == 2
    assert f"its lock file {link} is a symbolic link" in _err_line(capsys)
    assert notes.read_text() == "my notes\n" and link.is_symlink()
    dangling = _io.file_lock_path(tmp_path / "q.jsonl")
    (tmp_path / "q.jsonl").write_text("")
    dangling.symlink_to("nowhere.txt")
    assert _rc(["parse", "--data", gold, "--out", tmp_path / "q.jsonl", "--overwrite"]) == 2
    assert "is a symbolic link" in _err_line(capsys) and not (tmp_path / "nowhere.txt").exists()
    # the Python lock alike: a folder, a user's file
    (tmp_path / "dir.lock").mkdir()
    for target in (tmp_path / "dir.lock", notes, link):
        with pytest.raises(_io.ForeignLockFileError):
            with _io.exclusive_lock(target, "test"):
                pass
    assert notes.read_text() == "my notes\n" and (tmp_path / "dir.lock").is_dir()
    # a stale lock of a killed run (its own form, or empty) is taken over, and removed at the end
    for stale in ("4242 parse\n", "4242\n", ""):
        lock.write_text(stale)
        assert _rc(["parse", "--data", gold, "--out", o, "--overwrite"]) == 0, stale
        assert not lock.exists()


# ------------------------------------------------------------------ R27 / R28
def test_annotate_cache_is_never_another_commands_result(res, tmp_path, capsys):
    """``annotate --cache TM`` (or a study, a bench run, a compare folder) wrote its cache files into
    another command's result folder (R27): held to the rule every folder output follows."""
    tm, a, cmp_ = _copy(res, "TM", tmp_path), _copy(res, "A", tmp_path), _copy(res, "CMP", tmp_path)
    before = {x: _tree(x) for x in (tm, a, cmp_)}
    gold = res["gold"]
    for cache, kind in ((tm, "toy train"), (a, "attribution"), (cmp_, "compare")):
        capsys.readouterr()
        argv = ["annotate", "--data", gold, "--annotator", "rules", "--cache", cache, "--out", tmp_path / "x.jsonl"]
        assert _rc(argv) == 2
        line = _err_line(capsys)
        assert f"--cache {cache} is the {kind} result" in line and "another command's result" in line, line
    # an llm annotator's default cache OUT.cache alike, before the endpoint is tried
    shutil.copytree(tm, tmp_path / "z.jsonl.cache")
    llm = ["--annotator", "llm", "--endpoint-model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    capsys.readouterr()
    assert _rc(["annotate", "--data", gold, *llm, "--out", tmp_path / "z.jsonl"]) == 2
    line = _err_line(capsys)
    assert f"--cache (default OUT.cache) {tmp_path / 'z.jsonl.cache'} is the toy train result" in line, line
    assert _tree(tmp_path / "z.jsonl.cache") == before[tm]
    for x, tree in before.items():
        assert _tree(x) == tree
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "z.jsonl").exists()
    cache = tmp_path / "C"  # a folder of its own: the cache is written there
    assert (
        _rc(["annotate", "--data", gold, "--annotator", "rules", "--cache", cache, "--out", tmp_path / "y.jsonl"]) == 0
    )
    # the Python API alike: annotate_dataset(cache_dir=<a result folder>) is refused before any trace
    from lrm_interp.data.annotators.driver import annotate_dataset
    from lrm_interp.data.annotators.r1 import R1RuleAnnotator

    ds = li.load_dataset(gold)
    with pytest.raises(_io.OtherResultError, match=r"cache_dir .* is the toy train result"):
        annotate_dataset(ds, R1RuleAnnotator(), cache_dir=tm, progress=False)
    assert _tree(tm) == before[tm]
    run = annotate_dataset(ds, R1RuleAnnotator(), cache_dir=tmp_path / "C2", progress=False)
    assert len(run.dataset) == len(ds) and any((tmp_path / "C2").iterdir())


def test_a_file_output_spelled_as_a_folder_is_refused(res, tmp_path, capsys, monkeypatch):
    """``parse --out newdir/`` wrote a file named ``newdir`` (R28): a trailing ``/`` names a folder."""
    monkeypatch.chdir(tmp_path)
    gold = res["gold"]
    cases = [
        ["parse", "--data", gold, "--out", "newdir/"],
        ["toy", "traces", "--gold", "--per-family", 1, "--out", "newdir/."],
        ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, "--quiet", "--out", "newdir/"],
        ["protect", "--scores", res["A"], "--policy", "final_mlp", "--bits", 3, "--out", "newdir/"],
        ["annotate", "train", "--data", res["gold2"], "--steps", 5, "--quiet", "--out", "newdir/"],
        ["annotate", "--data", gold, "--annotator", "rules", "--out", "out.jsonl", "--report", "newdir/"],
    ]
    for argv in cases:
        capsys.readouterr()
        assert _rc(argv) == 2, argv
        line = _err_line(capsys)
        assert "ends with '/', which names a folder" in line and "a file named newdir would be written" in line, line
        assert not os.path.lexists("newdir") and not os.path.lexists("out.jsonl")
    with pytest.raises(ValueError, match="path newdir/: ends with '/'"):
        li.load_dataset(gold).save_jsonl("newdir/")
    assert not os.path.lexists("newdir")
    assert _rc(["parse", "--data", gold, "--out", "newdir/x.jsonl"]) == 0  # a file inside a new folder is fine


def test_the_folder_lock_names_a_users_file_at_its_name(tmp_path):
    """``compare`` / ``bench score`` into an existing folder take ``out/.lrm_interp.lock``; a user's
    file there said "cannot write there (…); choose a folder this user can write" (the generic
    OSError branch): now it names the lock file and what to do, and the file is left as it was."""
    from lrm_interp.cli.bench import FOLDER_LOCK, folder_lock
    from lrm_interp.cli.common import CliError

    out = tmp_path / "S"
    out.mkdir()
    (out / FOLDER_LOCK).write_text("my notes\n")
    with pytest.raises(CliError) as e:
        with folder_lock(out, "compare"):
            raise AssertionError("the body never runs")
    msg = str(e.value)
    assert msg.startswith(f"--out {out}: its lock file {out / FOLDER_LOCK} is ") and "move it away" in msg, msg
    assert (out / FOLDER_LOCK).read_text() == "my notes\n"
