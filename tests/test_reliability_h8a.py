"""Cases a seventh hostile probe run found (issue 22, "nothing lost, nothing silent"), part A: outputs
inside an attribution run's ``partial/`` and ``Attribution.save(overwrite=True)`` deleting it whole
(H8-PT), commands replacing the files of another command's finished result with ``--overwrite``
(H8-OW1), ``Attribution.write_tables`` / ``StudyResult.save`` replacing a user's files (H8-WT,
H8-SS), NaN scores saved (H8-NAN1) and a hand-edited ``bits.json`` kept by a study rerun (H8-ST1e)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold as _gold

import lrm_interp as li


def _tree(d: Path) -> dict[str, bytes | None]:
    """Every entry under ``d``: its bytes (files) or ``None`` (folders)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """An attribution ``A`` (and ``A1``, other settings), a study ``SC`` and a bench run ``BR`` of the toy
    model on a small gold trace file."""
    d = tmp_path_factory.mktemp("h8a")
    gold = _gold(d, n=2)
    for name, extra in (("A", []), ("A1", ["--k-context", "1"])):
        assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / name, "--quiet", *extra]) == 0
    assert (
        _rc(["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", d / "SC", "--quiet"])
        == 0
    )
    run = ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--max-new-tokens", 5]
    assert _rc([*run, "--out", d / "BR", "--quiet"]) == 0
    return {"dir": d, "gold": gold, "A": d / "A", "A1": d / "A1", "SC": d / "SC", "BR": d / "BR"}


def _copy(results, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(results[name], dst)
    return dst


# ------------------------------------------------------------------ H8-PT
def test_outputs_inside_an_attribution_runs_work_folder_are_refused(results, tmp_path, capsys):
    """``study``, ``bench run`` and ``faithfulness --out A/partial`` were accepted; their results were then
    deleted with the partials by ``Attribution.save(A, overwrite=True)``."""
    a = _copy(results, "A", tmp_path)
    before = _tree(a)
    gold = results["gold"]
    for argv in (
        ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--out", a / "partial", "--quiet"],
        ["study", "--model", "toy", "--data", gold, "--bits", 3, "--resamples", 40, "--out", a / "partial", "--quiet"],
        ["faithfulness", "--model", "toy", "--data", gold, "--out", a / "partial" / "fa", "--quiet"],
        ["attribute", "--model", "toy", "--data", gold, "--out", a / "partial" / "x", "--quiet"],
        ["parse", "--data", gold, "--out", a / "partial" / "dom" / "t.jsonl"],
    ):
        capsys.readouterr()
        assert _rc(argv) == 2, argv
        line = _err_line(capsys)
        assert f"the work folder of the attribution run {a}" in line and "choose a path outside it" in line, line
    assert _tree(a) == before
    with pytest.raises(ValueError, match="work folder of the attribution run"):
        li.Attribution.load(results["A1"]).save(a / "partial" / "copy")


def test_save_overwrite_removes_only_what_the_run_wrote_into_partial(results, tmp_path):
    """``Attribution.save(A, overwrite=True)`` ran rmtree on ``A/partial``: what a run writes there goes
    (run key, per-trace partials, their temporary files), anything else is kept."""
    a = _copy(results, "A", tmp_path)
    (a / "partial" / "mine").mkdir()
    (a / "partial" / "mine" / "result.csv").write_text("mine")
    (a / "partial" / "notes.txt").write_text("mine")
    (a / "partial" / "dom" / "notes.txt").write_text("mine")
    (a / "partial" / ".run.json.abcd1234.tmp").write_text("{")  # a killed writer's temporary file
    li.Attribution.load(results["A1"]).save(a, overwrite=True)
    assert sorted(str(p.relative_to(a)) for p in a.rglob("*")) == [
        "attribution.json",
        "attribution.safetensors",
        "partial",
        "partial/dom",
        "partial/dom/notes.txt",
        "partial/mine",
        "partial/mine/result.csv",
        "partial/notes.txt",
    ]
    assert li.Attribution.load(a).scores.equal(li.Attribution.load(results["A1"]).scores)


def test_save_overwrite_refuses_a_folder_a_live_run_holds(results, tmp_path):
    """The partials of a run still writing into the folder are not removed under it."""
    from lrm_interp.attribution.resume import OutDirInUseError

    a = _copy(results, "A", tmp_path)
    lock = a / "partial" / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"4242\n")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _tree(a)
        with pytest.raises(OutDirInUseError, match=r"in use by an attribution run \(pid 4242\)"):
            li.Attribution.load(results["A1"]).save(a, overwrite=True)
        assert _tree(a) == before
    finally:
        os.close(fd)


# ------------------------------------------------------------------ H8-OW1
def test_file_outputs_never_replace_a_file_of_another_commands_result(results, tmp_path, capsys):
    """``bits``, ``annotate``, ``annotate train``, ``parse`` and ``toy traces`` with ``--out <a file of a
    finished result> --overwrite`` replaced it (the attribution was then unreadable); a new name beside
    a result's own files is still free."""
    a, sc, br = (_copy(results, n, tmp_path) for n in ("A", "SC", "BR"))
    gold = results["gold"]
    before = {d: _tree(d) for d in (a, sc, br)}
    cases = [
        (["bits", "--model", "toy", "--budget", 3.5, "--sensitivity", "none", "--quiet"], a / "attribution.json"),
        (["annotate", "train", "--data", gold, "--steps", 5, "--quiet"], a / "attribution.safetensors"),
        (["parse", "--data", gold], a / "scores.csv"),
        (["toy", "traces", "--gold", "--per-family", 1], a / "heatmap.png"),
        (["annotate", "--data", br / "toy", "--annotator", "rules", "--quiet"], a / "scores.csv"),
        (["bits", "--model", "toy", "--budget", 3.5, "--sensitivity", "none", "--quiet"], sc / "bits.json"),
        (["parse", "--data", gold], sc / "attribution_fp32" / "scores.csv"),
        (["parse", "--data", gold], br / "toy" / "generations.jsonl"),
    ]
    kinds = {a: "attribution", sc: "study", br / "toy": "bench run", sc / "attribution_fp32": "attribution"}
    for argv, out in cases:
        capsys.readouterr()
        assert _rc([*argv, "--out", out, "--overwrite"]) == 2, (argv, out)
        line = _err_line(capsys)
        owner = out.parent
        assert f"--out {out} is a file of the {kinds[owner]} result {owner.resolve()}" in line, line
        assert "--overwrite does not replace another command's result" in line, line
    for d, tree in before.items():
        assert _tree(d) == tree
    # a file no result lists, inside a result folder: written
    capsys.readouterr()
    assert _rc(["parse", "--data", gold, "--out", a / "traces.jsonl"]) == 0
    assert (a / "traces.jsonl").is_file() and li.Attribution.load(a).scores.equal(
        li.Attribution.load(results["A"]).scores
    )


def test_folder_outputs_never_write_into_another_commands_result(results, tmp_path, capsys):
    """``bench score --outputs BR --out A --overwrite`` replaced ``A/scores.csv``; ``compare --out SC
    --overwrite`` the study's shift.csv; folder writers accepted any other command's result folder."""
    a, sc = _copy(results, "A", tmp_path), _copy(results, "SC", tmp_path)
    before = {d: _tree(d) for d in (a, sc)}
    br, gold = results["BR"], results["gold"]
    score = ["bench", "score", "--outputs", br, "--tasks", "math", "--per-family", 1, "--no-plots", "--quiet"]
    cases = [
        ([*score, "--out", a, "--overwrite"], f"--out {a} is the attribution result {a.resolve()}"),
        (
            ["bench", "run", "--model", "toy", "--tasks", "math", "--per-family", 1, "--out", sc, "--quiet"],
            f"--out {sc} is the study result {sc.resolve()}",
        ),
        (
            ["attribute", "--model", "toy", "--data", gold, "--out", sc, "--quiet"],
            f"--out {sc} is the study result {sc.resolve()}",
        ),
        (
            ["compare", "--original", results["A"], "--compressed", results["A1"], "--out", sc, "--overwrite"],
            f"--out {sc} is the study result {sc.resolve()}",  # the folder itself, since H16-CMPA
        ),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert _rc(argv) == 2, argv
        line = _err_line(capsys)
        assert needle in line and "another command's result" in line, line
    for d, tree in before.items():
        assert _tree(d) == tree
    # each command still rewrites its own kind of result: a score reruns into its folder, attribute
    # resumes its folder (SC/attribution_fp32, a study's, included: the same run)
    bs = tmp_path / "BS"
    assert _rc([*score, "--out", bs]) == 0
    assert _rc([*score, "--out", bs, "--overwrite"]) == 0
    capsys.readouterr()
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", sc / "attribution_fp32", "--quiet"]) == 0


def test_the_reuse_commands_a_study_prints_run_and_leave_its_files_alone(results, tmp_path, capsys):
    """The study printed ``protect/bits ... --out SC/<its file> --overwrite`` and ``compare --out SC
    --overwrite``, now refused: they write into ``SC/reuse/`` and reproduce the study's files."""
    from lrm_interp.experiments.study import StudyResult
    from lrm_interp.protect import load_masks
    from lrm_interp.protect.bit_allocation import BitAllocation

    sc = _copy(results, "SC", tmp_path)
    before = _tree(sc)
    for cmd in StudyResult.load(sc).commands:
        if cmd.split()[1] in ("protect", "bits", "compare"):
            assert "/reuse/" in cmd or cmd.endswith("/reuse --overwrite"), cmd
            # the commands name the folder the study was written to: here, its copy
            assert _rc(cmd.replace(str(results["SC"]), str(sc)).split()[1:]) == 0, cmd
    reuse = sc / "reuse"
    assert load_masks(reuse / "masks.safetensors")[0] == load_masks(sc / "masks.safetensors")[0]
    assert BitAllocation.load(reuse / "bits.json").bits == BitAllocation.load(sc / "bits.json").bits
    assert (reuse / "shift.csv").read_bytes() == (sc / "shift.csv").read_bytes()
    assert {k: v for k, v in _tree(sc).items() if not k.startswith("reuse")} == before


# ------------------------------------------------------------------ H8-WT
def test_write_tables_never_replaces_a_users_tables(results, tmp_path):
    """``Attribution.write_tables(dir)`` replaced the user's scores.csv / heatmap.png silently."""
    res = li.Attribution.load(results["A"])
    u = tmp_path / "U"
    u.mkdir()
    (u / "scores.csv").write_text("a,b\n")
    (u / "heatmap.png").write_text("mine")
    with pytest.raises(FileExistsError, match="not a table of this result"):
        res.write_tables(u)
    assert (u / "scores.csv").read_text() == "a,b\n" and (u / "heatmap.png").read_text() == "mine"
    # another result's tables: refused too; this result's own folder: rewritten
    a1 = _copy(results, "A1", tmp_path)
    before = _tree(a1)
    with pytest.raises(FileExistsError, match="scores.csv"):
        res.write_tables(a1)
    assert _tree(a1) == before
    a = _copy(results, "A", tmp_path)
    assert [p.name for p in res.write_tables(a)] == ["scores.csv", "heatmap.png"]
    res.write_tables(u, overwrite=True)
    assert (u / "scores.csv").read_text().startswith("behavior,site")
    # the importance shift's tables alike: the same shift again is fine
    with warnings.catch_warnings():  # other settings: said by compare, not the point here
        warnings.simplefilter("ignore")
        shift = li.compare(res, li.Attribution.load(results["A1"]), strict=False)
    v = tmp_path / "V"
    v.mkdir()
    (v / "shift.csv").write_text("mine")
    with pytest.raises(FileExistsError, match="not a table of this importance shift"):
        shift.write_tables(v)
    assert (v / "shift.csv").read_text() == "mine"
    shift.write_tables(v, overwrite=True)
    shift.write_tables(v)


# ------------------------------------------------------------------ H8-SS
def test_study_result_save_refuses_a_folder_holding_a_users_results_csv(results, tmp_path):
    """``StudyResult.save(dir)`` replaced the user's results.csv in a folder holding no study.json."""
    from lrm_interp.experiments.study import StudyResult

    r = StudyResult.load(results["SC"])
    u = tmp_path / "U3"
    u.mkdir()
    (u / "results.csv").write_text("mine")
    with pytest.raises(ValueError, match=r"not a study folder \(no study.json\) but holds results.csv.*overwrite=True"):
        r.save(u)
    assert sorted(p.name for p in u.iterdir()) == ["results.csv"] and (u / "results.csv").read_text() == "mine"
    r.save(u, overwrite=True)
    assert (u / "results.csv").read_text().startswith("key,label")
    sc = _copy(results, "SC", tmp_path)
    assert r.save(sc) == sc  # the study's own folder (the same study): fine
    # another study's folder: refused
    doc = json.loads((sc / "study.json").read_text())
    doc["settings"]["bits"] = 4
    (sc / "study.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="holds another study"):
        r.save(sc)


def test_the_study_command_words_its_refusals_for_the_command_line(results, tmp_path, capsys):
    u = tmp_path / "U4"
    u.mkdir()
    (u / "results.csv").write_text("mine")
    argv = ["study", "--model", "toy", "--data", results["gold"], "--bits", 3, "--resamples", 40, "--out", u]
    assert _rc(argv) == 2
    line = _err_line(capsys)
    assert "use another --out or --overwrite to replace them" in line and "overwrite=True" not in line, line


# ------------------------------------------------------------------ H8-NAN1
def test_save_refuses_scores_that_are_not_finite(results, tmp_path):
    """``Attribution.save`` wrote NaN scores that every reader then refused."""
    res = li.Attribution.load(results["A"])
    res.scores[1, 2] = float("nan")
    out = tmp_path / "A_nan"
    site = res.sites[2].name
    with pytest.raises(
        ValueError, match=rf"not saved: scores are not finite \(e.g. behaviour '{res.behaviors[1]}', site {site}"
    ):
        res.save(out)
    assert not out.exists()
    res.scores[1, 2] = float("inf")
    with pytest.raises(ValueError, match="not finite"):
        res.save(out)


# ------------------------------------------------------------------ H8-ST1e
def test_a_study_rerun_refuses_a_changed_bits_json(results, tmp_path, capsys):
    """A study rerun kept a hand-edited bits.json beside results measured with another allocation."""
    from lrm_interp.experiments.study import StudyResult

    sc = _copy(results, "SC", tmp_path)
    doc = json.loads((sc / "study.json").read_text())
    assert set(doc["provenance"]["checksums"]) >= {"bits.json", "masks.safetensors", "results.csv", "shift.csv"}
    original = (sc / "bits.json").read_bytes()
    alloc = json.loads(original)
    site = next(iter(alloc["bits"]))
    alloc["bits"][site] = 16
    (sc / "bits.json").write_text(json.dumps(alloc, indent=1))
    (sc / "results.csv").unlink()
    argv = [
        "study",
        "--model",
        "toy",
        "--data",
        results["gold"],
        "--bits",
        3,
        "--resamples",
        40,
        "--out",
        sc,
        "--quiet",
    ]
    capsys.readouterr()
    assert _rc(argv) == 2
    line = _err_line(capsys)
    assert f"{sc / 'bits.json'} was changed since the study wrote it" in line, line
    assert "delete it to have it rewritten, or restore it" in line
    with pytest.raises(ValueError, match="bits.json was changed since the study wrote it"):
        StudyResult.load(sc)
    # deleted: the rerun writes it again, as the study wrote it
    (sc / "bits.json").unlink()
    assert _rc(argv) == 0
    assert (sc / "bits.json").read_bytes() == original and (sc / "results.csv").is_file()
    # a study.json written before the checksums: loads and resumes, nothing checked
    doc = json.loads((sc / "study.json").read_text())
    del doc["provenance"]["checksums"]
    doc.pop("record_sha256")  # written before the record's checksum too (H23-SPROV)
    (sc / "study.json").write_text(json.dumps(doc))
    alloc.pop("bits_digest", None)  # and a bits.json written before its own digest (H15-X-BEF)
    (sc / "bits.json").write_text(json.dumps(alloc, indent=1))
    StudyResult.load(sc)


# ------------------------------------------------------------------ the recognisers
def test_the_result_markers_are_their_writers_own():
    """The output checks recognise each result by its writer's record (the names are repeated in the
    lowest floor, ``_io``, so that the checks import no heavy module): kept equal here."""
    from lrm_interp import _io
    from lrm_interp.attribution import faithfulness, resume
    from lrm_interp.data.annotators import driver
    from lrm_interp.evaluation import bench_run, bench_score
    from lrm_interp.experiments import protection_table, study

    assert resume.RESULT_FILES == _io.ATTRIBUTION_FILES and study.OWN_FILES == _io.STUDY_FILES
    assert study.STUDY_FILE == _io.STUDY_FILES[0] and study.OUTCOMES_FILE == _io.STUDY_OUTCOMES
    assert protection_table.FORMAT.startswith(_io.EXPERIMENT_FORMAT)
    assert bench_run.RUN_FORMAT.startswith(_io.BENCH_RUN_FORMAT) and bench_run.RUN_FILE == _io.BENCH_RUN_FILES[0]
    assert bench_run.GEN_FILE in _io.BENCH_RUN_FILES
    assert bench_score.SCORE_RECORD == _io.BENCH_SCORE_RECORD
    assert tuple(faithfulness.FILES) == _io.FAITHFULNESS_FILES
    assert driver.CACHE_FORMAT.startswith(_io.ANNOTATION_CACHE_FORMAT) and driver.ANNOTATION_CACHE == "annotation cache"


def test_each_folder_writer_names_its_own_result_kind():
    """Every command whose folder output is a result passes ``own=`` to ``check_paths`` (so it may
    rewrite its own kind and nothing else), and each kind named is one the recogniser knows (or the
    downstream cache, which no other command writes)."""
    import re

    from lrm_interp import _io

    cli = Path(__file__).resolve().parents[1] / "lrm_interp" / "cli"
    kinds = {m for f in cli.glob("*.py") for m in re.findall(r'own="([^"]+)"', f.read_text(encoding="utf-8"))}
    # annotate names the cache's kind through ANNOTATION_CACHE (not a literal)
    assert kinds == {*_io.RESULT_KINDS} - {"faithfulness", _io.ANNOTATION_CACHE_KIND} | {"annotate downstream"}
