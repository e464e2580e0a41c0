"""Cases an eighth hostile probe run found (issue 22, "nothing lost, nothing silent"), part B:
partials of another run reused when ``partial/run.json`` is missing or edited (H9-RK), experiment
rows served after a hand edit of ``settings.json`` (H9-EXS), unchecked :class:`CompressionSpec` /
:class:`ExperimentSettings` fields (H9-CS), ``LRM_INTERP_SKIP_MEMORY_CHECK=false`` read as yes
(H9-SMC) and ``RANK`` / ``WORLD_SIZE`` that are no numbers (H9-E1)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp._io import read_safetensors, write_safetensors
from lrm_interp.attribution.resume import PARTIAL_FORMAT, RUN_FILE, RUN_META


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: relative path -> SHA-256 (what "untouched" means here)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _without_results(src: Path, dst: Path) -> Path:
    """A copy of the attribution folder ``src`` holding only its ``partial/`` (a killed run's folder)."""
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        if p.is_file():
            p.unlink()
    return dst


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> tuple[Path, Path]:
    """``(A, gold)``: a finished ``attribute`` run of the toy model (default settings, k_context 5)."""
    d = tmp_path_factory.mktemp("h9b_rk")
    gold = toy_gold(d, n=2)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", d / "A", "--quiet"]) == 0
    return d / "A", gold


# ------------------------------------------------------------------ H9-RK
def test_partials_carry_the_run_key(run_a):
    """Each per-trace partial holds the run key it was computed under: run.json's very content."""
    a, _ = run_a
    key = json.loads((a / "partial" / RUN_FILE).read_text())
    parts = sorted((a / "partial").glob("*/*.safetensors"))
    assert {p.parent.name for p in parts} == {"dom", "grad", "atp"}
    for p in parts:
        _, meta = read_safetensors(p, (PARTIAL_FORMAT,), "partial")
        assert json.loads(meta[RUN_META]) == key


def test_partials_copied_into_a_new_folder_are_refused_for_another_model(run_a, tmp_path, capsys):
    """``partial/dom``, ``grad``, ``atp`` copied into a new folder: a run of another model (a 3-bit
    copy) was served the full-precision partials and recorded as the copy's scores. Refused now,
    naming what differs; nothing is written (no run.json that would vouch for them later)."""
    a, gold = run_a
    q = tmp_path / "Q"
    assert _rc(["quantize", "--model", "toy", "--bits", 3, "--out", q, "--quiet"]) == 0
    capsys.readouterr()
    r = tmp_path / "R"
    for stage in ("dom", "grad", "atp"):
        shutil.copytree(a / "partial" / stage, r / "partial" / stage)
    before = _tree(r)
    for _ in range(2):  # the refusal wrote no run.json: a second try is refused the same way
        assert _rc(["attribute", "--model", q, "--data", gold, "--out", r, "--quiet"]) == 2
        err = _err_line(capsys)
        assert f"{r / 'partial'} holds partials of a run with other model weights" in err, err
        assert "no run.json" in err and "cannot be reused" in err
        assert _tree(r) == before


def test_deleted_or_edited_run_json_lets_no_other_settings_reuse_partials(run_a, tmp_path, capsys):
    """``run.json`` deleted (or edited to k_context 3), resumed with ``--k-context 3``: the k = 5
    partials were served and recorded as k = 3. Refused now; with this run's own settings the
    partials prove themselves and are reused (scores byte for byte those of the run that wrote them)."""
    a, gold = run_a
    a2 = _without_results(a, tmp_path / "A2")
    (a2 / "partial" / RUN_FILE).unlink()
    before = _tree(a2)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", a2, "--k-context", 3, "--quiet"]) == 2
    err = _err_line(capsys)
    assert "holds partials of a run with other settings (differs in k_context " in err and "no run.json" in err
    assert _tree(a2) == before

    a3 = _without_results(a, tmp_path / "A3")
    rp = a3 / "partial" / RUN_FILE
    key = json.loads(rp.read_text())
    key["config"]["k_context"] = 3
    rp.write_text(json.dumps(key, indent=2, sort_keys=True))
    before = _tree(a3)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", a3, "--k-context", 3, "--quiet"]) == 2
    err = _err_line(capsys)
    assert "other settings (differs in k_context " in err and "although run.json says this run's" in err
    assert _tree(a3) == before

    # the same settings as the run that wrote them: reused, the result is that run's
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", a2, "--quiet"]) == 0
    capsys.readouterr()
    assert (a2 / "scores.csv").read_bytes() == (a / "scores.csv").read_bytes()
    resume = json.loads((a2 / "attribution.json").read_text())["provenance"]["resume"]
    assert resume["dom"]["reused"] == 6 and resume["dom"]["computed"] == 0
    assert json.loads((a2 / "partial" / RUN_FILE).read_text()) == json.loads((a / "partial" / RUN_FILE).read_text())


def _as_older_partials(folder: Path) -> None:
    """Rewrite the partials of ``folder`` as lrm_interp wrote them before H9-RK: no run key."""
    for p in (folder / "partial").glob("*/*.safetensors"):
        tensors, meta = read_safetensors(p, (PARTIAL_FORMAT,), "partial")
        write_safetensors(p, tensors, {"format": meta["format"], "key": meta["key"]})


def test_partials_of_an_older_version_need_their_run_json(run_a, tmp_path, capsys):
    """Partials without a run key (an older lrm_interp): reused as before under a ``run.json`` that
    matches; without ``run.json`` nothing tells which run wrote them, and the run is refused."""
    a, gold = run_a
    old = _without_results(a, tmp_path / "old")
    _as_older_partials(old)
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", old, "--quiet"]) == 0
    capsys.readouterr()
    assert (old / "scores.csv").read_bytes() == (a / "scores.csv").read_bytes()
    resume = json.loads((old / "attribution.json").read_text())["provenance"]["resume"]
    assert resume["atp"] == {"computed": 0, "reused": 6, "stale": 0}

    bare = _without_results(a, tmp_path / "bare")
    _as_older_partials(bare)
    (bare / "partial" / RUN_FILE).unlink()
    before = _tree(bare)
    for _ in range(2):
        assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", bare, "--quiet"]) == 2
        err = _err_line(capsys)
        assert "holds partials with no run key and no run.json" in err and "cannot tell which run wrote them" in err
        assert _tree(bare) == before


# ------------------------------------------------------------------ H9-EXS
def test_experiment_rows_measured_before_a_settings_edit_are_refused(tmp_path, capsys):
    """``settings.json`` edited by hand (max_new_tokens 300 -> 20) and resumed with
    ``--max-new-tokens 20``: exit 0 with the 300-token rows as the table. Each row now records what it
    was measured with; such a row is refused naming it and the setting, and nothing is written. Rows
    of older runs (no record) still resume."""
    ex = tmp_path / "EX"
    base = ["experiment", "protection", "--model", "toy", "--bits", 3, "--per-family", 1, "--only", "magnitude"]
    base += ["--out", ex, "--quiet"]
    assert _rc([*base, "--max-new-tokens", 300]) == 0
    capsys.readouterr()
    lines = [json.loads(x) for x in (ex / "rows.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lines] == ["fp", "none", "2% magnitude"]
    settings = json.loads((ex / "settings.json").read_text())
    assert all(r["measured_with"]["settings"] == settings["settings"] for r in lines)
    assert all(r["measured_with"]["weights_fingerprint"] == settings["weights_fingerprint"] for r in lines)

    sp = ex / "settings.json"
    good = sp.read_text()
    sp.write_text(good.replace('"max_new_tokens": 300', '"max_new_tokens": 20'))
    before = _tree(ex)
    assert _rc([*base, "--max-new-tokens", 20]) == 2
    err = _err_line(capsys)
    assert "rows.jsonl:1: row 'fp' was measured with max_new_tokens 300 but settings.json says max_new_tokens 20" in err
    assert "settings.json was edited" in err and "use a new --out folder" in err
    assert _tree(ex) == before

    # a damaged record is refused naming the line
    sp.write_text(good)
    rp = ex / "rows.jsonl"
    bad = [dict(r) for r in lines]
    bad[2]["measured_with"] = 5
    rp.write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert _rc([*base, "--max-new-tokens", 300]) == 2
    assert "rows.jsonl:3: row '2% magnitude': measured_with is not a record of settings" in _err_line(capsys)

    # rows written before rows recorded their settings (settings.json of the older format /1): accepted
    # as before, left without a record, and the folder keeps its format (H10-EXK)
    sp.write_text(good.replace("lrm_interp.protection_experiment/2", "lrm_interp.protection_experiment/1"))
    legacy = [{k: v for k, v in r.items() if k != "measured_with"} for r in lines]
    rp.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    assert _rc([*base, "--max-new-tokens", 300]) == 0
    assert "| 2% magnitude |" in capsys.readouterr().out
    assert [json.loads(x) for x in rp.read_text().splitlines()] == legacy
    assert json.loads(sp.read_text())["format"] == "lrm_interp.protection_experiment/1"


def test_experiment_row_record_compares_every_setting_and_the_model():
    """:func:`_check_measured_with` (API): each differing setting and fingerprint named; a setting the
    record lacks (added to the settings later) counts as its default."""
    from lrm_interp.experiments import protection_table as pt
    from lrm_interp.experiments.protection import ExperimentSettings

    want = pt._settings_json(ExperimentSettings(per_family=2), "w" * 32, "t" * 32)
    rec = pt._measured_with(want)
    pt._check_measured_with(rec, "fp", "x/rows.jsonl:1", want)  # the same: accepted
    older = json.loads(json.dumps(rec))
    del older["settings"]["max_new_tokens"]  # at its default, 480: the same run
    pt._check_measured_with(older, "fp", "x/rows.jsonl:1", want)
    other = json.loads(json.dumps(rec))
    other["settings"].update(bits=4, symmetric=True)
    other["weights_fingerprint"] = "v" * 32
    with pytest.raises(
        ValueError,
        match=r"rows.jsonl:1: row 'fp' was measured with bits 4, symmetric true, model "
        r"weights vvvvvvvvvvvv but settings.json says bits 3, symmetric false, model weights wwww",
    ):
        pt._check_measured_with(other, "fp", "x/rows.jsonl:1", want)


# ------------------------------------------------------------------ H9-CS
def test_compression_spec_fields_are_checked():
    """``CompressionSpec("rtn", bits=3, sparsity=0.5)`` ran plain RTN and recorded the sparsity;
    ``symmetric="no"`` (truthy) quantized symmetrically; ``("none", bits=3)`` was accepted. Every
    field is checked now: its type, its range, and whether it applies to the method."""
    from lrm_interp.compress.specs import CompressionSpec, parse_compression

    bad = {  # field -> (kwargs, message)
        "method": [({"method": 5}, "method must be one of"), ({"method": "awq", "bits": 3}, "method must be one of")],
        "bits": [
            ({"method": "rtn"}, "needs bits"),
            ({"method": "rtn", "bits": True}, "bits must be an integer"),
            ({"method": "rtn", "bits": 3.0}, "bits must be an integer"),
            ({"method": "rtn", "bits": 9}, r"bits must be in 2..8"),
            ({"method": "magnitude", "bits": 3, "sparsity": 0.5}, "bits does not apply to the pruner 'magnitude'"),
            ({"method": "none", "bits": 3}, "'none' .* takes no bits"),
        ],
        "sparsity": [
            ({"method": "rtn", "bits": 3, "sparsity": 0.5}, "sparsity does not apply to the quantizer 'rtn'"),
            ({"method": "wanda", "sparsity": float("nan")}, "sparsity must be a finite number in"),
            ({"method": "wanda", "sparsity": 1.0}, r"sparsity must be a finite number in \[0, 1\)"),
            ({"method": "wanda", "sparsity": "0.5"}, r"got '0.5' \(str\)"),
            ({"method": "sparsegpt"}, "needs sparsity"),
            ({"method": "sparsegpt", "pattern": "2:4", "sparsity": 0.3}, "disagrees with pattern"),
        ],
        "pattern": [
            ({"method": "gptq", "bits": 3, "pattern": "2:4"}, "pattern does not apply to the quantizer"),
            ({"method": "magnitude", "pattern": "2:4"}, "unstructured only"),
            ({"method": "wanda", "pattern": "half"}, "pattern must be 'N:M'"),
            ({"method": "wanda", "pattern": 24}, "pattern must be 'N:M'"),
        ],
        "symmetric": [
            ({"method": "rtn", "bits": 3, "symmetric": "no"}, r"symmetric must be True or False, got 'no' \(str\)"),
            ({"method": "magnitude", "sparsity": 0.5, "symmetric": True}, "symmetric does not apply to the pruner"),
            ({"method": "none", "symmetric": True}, "takes no symmetric"),
        ],
    }
    assert set(bad) == {f.name for f in dataclasses.fields(CompressionSpec)}  # every field
    for cases in bad.values():
        for kw, msg in cases:
            with pytest.raises(ValueError, match=msg):
                CompressionSpec(**kw)
    # what parse_compression makes is unchanged
    for spec, tag in [
        ("none", ""),
        ("rtn:3", "rtn3"),
        ("rtn:3:sym", "rtn3sym"),
        ("gptq:4", "gptq4"),
        ("magnitude:50%", "magnitude50"),
        ("sparsegpt:2:4", "sparsegpt2of4"),
        ("wanda:0.3", "wanda30"),
    ]:
        assert parse_compression(spec).tag == tag
    assert CompressionSpec("sparsegpt", pattern="2:4") == parse_compression("sparsegpt:2:4")
    assert CompressionSpec("rtn", bits=3, symmetric=True) == parse_compression("rtn:3:sym")


def test_experiment_settings_fields_are_checked():
    """``ExperimentSettings(symmetric="no", model=5)`` was accepted. Every field is checked now."""
    from pathlib import PurePath

    from lrm_interp.experiments.protection import ExperimentSettings

    bad = {
        "model": [(5, "model must be a model folder or alias"), ("  ", "model must be")],
        "bits": [("3", "bits must be in 2..7"), (True, "bits must be in 2..7"), (8, "bits must be in 2..7")],
        "quantizer": [(["rtn"], "quantizer must be"), ("awq", "quantizer must be")],
        "per_family": [(True, "per_family must be"), (1.0, "per_family must be")],
        "group_size": [(128.0, "group_size must be None or an integer >= 1"), (0, "group_size")],
        "symmetric": [("no", r"symmetric must be True or False, got 'no' \(str\)"), (0, "symmetric must be True")],
        "budget": [(True, "budget must be a fraction"), (float("inf"), "budget"), ("0.02", "budget")],
        "attribution_traces": [(0, "attribution_traces"), (2.0, "attribution_traces")],
        "random_seeds": [
            ("01", "random_seeds must be a tuple"),
            (5, "random_seeds must be a tuple"),
            ((True,), "random"),
        ],
        "guided_mix": [(True, "guided_mix"), (1.5, "guided_mix")],
        "problem_seed": [(-1, "problem_seed"), (1.5, "problem_seed")],
        "max_new_tokens": [(2.0, "max_new_tokens"), (0, "max_new_tokens")],
    }
    assert set(bad) == {f.name for f in dataclasses.fields(ExperimentSettings)}  # every field
    for name, cases in bad.items():
        for v, msg in cases:
            with pytest.raises(ValueError, match=msg):
                ExperimentSettings(**{name: v})
    s = ExperimentSettings(model=PurePath("toy"), random_seeds=[4, 5], group_size=None)
    assert s.model == "toy" and s.random_seeds == (4, 5) and s.group_size is None


# ------------------------------------------------------------------ H9-SMC
def test_env_flag_reads_yes_and_no_and_refuses_the_rest(monkeypatch):
    from lrm_interp.checks import env_flag

    for v in ("1", "true", "YES", " on "):
        assert env_flag("X", {"X": v}) is True
    for v in ("", " ", "0", "false", "No", "OFF"):
        assert env_flag("X", {"X": v}) is False
    assert env_flag("X", {}) is False
    monkeypatch.setenv("LRM_INTERP_SKIP_MEMORY_CHECK", "maybe")
    with pytest.raises(ValueError, match=r"\$LRM_INTERP_SKIP_MEMORY_CHECK='maybe' is neither yes nor no: set it to 1"):
        env_flag("LRM_INTERP_SKIP_MEMORY_CHECK")


def test_skip_memory_check_false_keeps_the_check(run_a, tmp_path, capsys, monkeypatch):
    """``LRM_INTERP_SKIP_MEMORY_CHECK=false`` (or ``no``) turned the memory check off (only "" and
    "0" counted as no). ``false`` keeps it now (the estimate is recorded); a value that is neither
    yes nor no is refused naming the variable, before the model loads."""
    _, gold = run_a
    monkeypatch.setenv("LRM_INTERP_SKIP_MEMORY_CHECK", "false")
    out = tmp_path / "M"
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", out, "--quiet"]) == 0
    capsys.readouterr()
    est = json.loads((out / "attribution.json").read_text())["provenance"]["memory_estimate"]
    assert est is not None and est["bytes_at_least"] > 0
    monkeypatch.setenv("LRM_INTERP_SKIP_MEMORY_CHECK", "maybe")
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", tmp_path / "N", "--quiet"]) == 2
    assert "$LRM_INTERP_SKIP_MEMORY_CHECK='maybe' is neither yes nor no" in _err_line(capsys)
    assert not (tmp_path / "N").exists()


# ------------------------------------------------------------------ H9-E1
def test_rank_and_world_size_from_the_environment_are_checked(monkeypatch):
    from lrm_interp.attribution.distributed import env_rank_world

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_rank_world() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert env_rank_world() == (3, 4)
    for rank, world, msg in [
        ("0", "abc", r"\$WORLD_SIZE='abc' in the environment: must be an integer >= 1"),
        ("0", "-2", r"\$WORLD_SIZE='-2' in the environment: must be an integer >= 1"),
        ("0", "0", r"\$WORLD_SIZE='0'"),
        ("abc", "2", r"\$RANK='abc' in the environment: must be an integer >= 0"),
        ("-1", "2", r"\$RANK='-1'"),
        ("2", "2", r"\$RANK=2 in the environment is not below \$WORLD_SIZE=2: a rank is 0..1"),
    ]:
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        with pytest.raises(ValueError, match=msg):
            env_rank_world()


def test_attribute_names_a_bad_rank_or_world_size(run_a, tmp_path, capsys, monkeypatch):
    """``WORLD_SIZE=abc`` said "invalid literal for int() with base 10: 'abc'". It names the variable
    and what it should be now, before anything is written or loaded (the API checks ``RANK`` the same way)."""
    import lrm_interp

    _, gold = run_a
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", tmp_path / "W", "--quiet"]) == 2
    assert "$WORLD_SIZE='abc' in the environment: must be an integer >= 1" in _err_line(capsys)
    assert not (tmp_path / "W").exists()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(ValueError, match=r"\$RANK='abc' in the environment"):
        lrm_interp.attribute("toy", gold, progress=False)


def test_cli_attribute_names_a_bad_rank(run_a, tmp_path, capsys, monkeypatch):
    _, gold = run_a
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "abc")
    assert _rc(["attribute", "--model", "toy", "--data", gold, "--out", tmp_path / "W", "--quiet"]) == 2
    assert "$RANK='abc' in the environment" in _err_line(capsys)


def test_a_row_with_a_bool_count_is_named_with_its_line():
    """A hand-edited ``rows.jsonl`` line with ``"correct": true`` (``isinstance(True, int)``) reached
    ``wilson_interval``, whose refusal did not say which file and line it came from."""
    from lrm_interp.evaluation.intervals import wilson_interval
    from lrm_interp.experiments.protection_table import _check_row

    good = {
        "label": "none", "kind": "none", "bpw": 3.27, "accuracy": {"math": 1.0}, "mean": 1.0,
        "n": 1, "correct": 1, "ci": list(wilson_interval(1, 1)),
    }  # fmt: skip
    assert _check_row(good, "EX/rows.jsonl:2", 1).correct == 1
    with pytest.raises(ValueError, match=r"^EX/rows\.jsonl:2: row 'none': correct = True outside 0\.\.1"):
        _check_row({**good, "correct": True}, "EX/rows.jsonl:2", 1)
    with pytest.raises(ValueError, match=r"^EX/rows\.jsonl:2: row 'none': n = True is not a count of problems"):
        _check_row({**good, "n": True}, "EX/rows.jsonl:2", 1)
