"""Cases a seventh hostile probe run found (issue 22, "nothing lost, nothing silent"), part C: flags
that no row, policy or method reads were accepted and recorded (H8-EX2 ``experiment protection``,
H8-PF ``protect``, H8-AF5 ``attribute --method dom``, ``toy traces --gold --model``), an all-zero
score row allocated bits from no information (H8-NAN2), and malformed Temporal records loaded
(H8-TMP1)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from cli_run import err_line as _err_line
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.attribution.results import Attribution

BEHAVIORS = ("backtracking", "deduction")


def _toy_scores(tmp_path: Path, name: str, rows: torch.Tensor | None = None) -> Path:
    """An attribution result folder of the toy model with the score ``rows`` ([2, n_sites]; default:
    random), one row per :data:`BEHAVIORS`."""
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.sites import find_sites

    model, _ = load_model("toy")
    sites = tuple(find_sites(model))
    if rows is None:
        rows = torch.rand(len(BEHAVIORS), len(sites), dtype=torch.float64)
    d = tmp_path / name
    Attribution(BEHAVIORS, sites, rows, "attribution").save(d)
    return d


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


#: the exit status of the stand-in of ``run_protection_experiment``: the command got past its checks
REACHED = 77


# ------------------------------------------------------------------ H8-EX2
def test_experiment_refuses_flags_no_planned_row_reads(tmp_path, capsys, monkeypatch):
    """``--guided-mix`` under RTN or with ``--only random``, ``--random-seeds`` with ``--only
    magnitude``, ``--attribution-traces`` / ``--budget`` where no row reads them: accepted, recorded in
    settings.json (a resume without them refused as "another experiment"), unused. Refused now, before
    any work; the defaults, flags a selected row reads, and a resume repeating what the folder
    records still run."""
    import lrm_interp.experiments.protection_table as pt
    from lrm_interp.experiments.protection import ExperimentSettings, unused_settings

    seen: list = []

    def stand_in(out, s, **kw):
        seen.append(s)
        raise SystemExit(REACHED)

    monkeypatch.setattr(pt, "run_protection_experiment", stand_in)
    out = tmp_path / "EX"
    base = ["experiment", "protection", "--model", "toy", "--per-family", 1, "--out", out, "--quiet"]
    cases = [
        (["--only", "random", "--guided-mix", 0.9], "--guided-mix does not apply"),
        (["--quantizer", "rtn", "--guided-mix", 0.5], "--guided-mix does not apply"),  # RTN: no guided row at all
        (["--only", "magnitude", "--random-seeds", 5, 7], "--random-seeds does not apply"),
        (["--only", "magnitude", "--attribution-traces", 3], "--attribution-traces does not apply"),
        (["--only", "final", "--budget", 0.05], "--budget does not apply"),
        (["--quantizer", "gptq", "--only", "guided", "--random-seeds", 3], "--random-seeds does not apply"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        err = _err_line(capsys)
        assert msg in err and "no row this run measures" in err, (extra, err)
        assert not out.exists() and not seen, extra
    # under RTN no --only helps: the hint says to leave it out only
    _rc([*base, "--guided-mix", 0.5])
    assert "select such a row with --only" not in _err_line(capsys)
    # the defaults are never refused; flags a selected row reads run
    ok = [
        ["--only", "magnitude"],
        ["--only", "random", "--random-seeds", 5, 7],
        ["--only", "mixed precision by attribution", "--attribution-traces", 3, "--budget", 0.05],
        ["--quantizer", "gptq", "--only", "guided", "--guided-mix", 0.9, "--attribution-traces", 2],
    ]
    for extra in ok:
        assert _rc([*base, *extra]) == REACHED, extra
    assert seen[0] == ExperimentSettings(model="toy", per_family=1)
    assert seen[1].random_seeds == (5, 7) and seen[3].guided_mix == 0.9 and seen[3].attribution_traces == 2
    # a folder an older run wrote with such a value resumes when the value is repeated (and only then:
    # the folder check compares every setting)
    out.mkdir()
    rec = {"format": 1, "settings": {"guided_mix": 0.9}}
    (out / "settings.json").write_text(json.dumps(rec))
    assert _rc([*base, "--only", "magnitude", "--guided-mix", 0.9]) == REACHED
    assert seen[-1].guided_mix == 0.9
    # the library's view, without a model
    s = ExperimentSettings()
    assert unused_settings(s) == ["guided_mix"]  # RTN
    assert unused_settings(s, ["magnitude"]) == ["attribution_traces", "random_seeds", "guided_mix"]
    assert unused_settings(ExperimentSettings(quantizer="gptq"), ["plain"]) == list(
        ("budget", "attribution_traces", "random_seeds", "guided_mix")
    )
    assert unused_settings(ExperimentSettings(quantizer="gptq")) == []


# ------------------------------------------------------------------ H8-PF
def test_protect_module_policies_refuse_per_weight_flags(tmp_path, capsys):
    """``--policy final_mlp --saliency magnitude``, ``--policy modules_by_score --span-grads window`` /
    ``--saliency magnitude`` were ignored (masks identical to the plain policy); so was ``--model``
    with a module policy, and ``--span-grads exact`` with a saliency that takes no span gradients."""
    a = _toy_scores(tmp_path, "A")
    out = tmp_path / "m.safetensors"
    base = ["protect", "--scores", a, "--out", out, "--quiet"]
    cases = [
        (["--policy", "final_mlp", "--saliency", "magnitude"], "--saliency magnitude: --saliency / --span-grads"),
        (["--policy", "modules_by_score", "--span-grads", "window"], "--policy modules_by_score protects whole"),
        (["--policy", "modules_by_score", "--saliency", "magnitude"], "score single weights"),
        (
            ["--policy", "modules_by_score", "--saliency", "attribution_ri"],
            "score single weights",
        ),  # the default, typed
        (["--policy", "final_mlp", "--model", "toy"], "--model is not used by --policy final_mlp"),
        (["--model", "toy", "--saliency", "magnitude", "--span-grads", "exact"], "--span-grads exact applies to"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert _rc([*base, *extra]) == 2, extra
        assert msg in _err_line(capsys), extra
        assert not out.exists(), extra
    # the policies with their defaults run, and record plain names
    assert _rc([*base, "--policy", "modules_by_score", "--budget", 0.1]) == 0
    assert _rc([*base, "--policy", "final_mlp", "--overwrite"]) == 0
    assert _rc([*base, "--model", "toy", "--saliency", "magnitude", "--overwrite"]) == 0
    from lrm_interp.protect.encoding import load_masks

    _, meta = load_masks(out)
    assert meta["saliency"] == "magnitude" and meta["span_grads"] is None


# ------------------------------------------------------------------ H8-AF5
def test_dom_refuses_no_prefix_cache_and_keeps_the_default(tmp_path, capsys):
    """``attribute --method dom --no-prefix-cache`` gave the same scores but recorded
    ``prefix_cache: false``, so a resume without the flag was refused ("differs in prefix_cache")."""
    from lrm_interp.attribution.config import AttributionConfig

    with pytest.raises(ValueError, match=r"^prefix_cache does not apply to method='dom'"):
        AttributionConfig(method="dom", prefix_cache=False)
    with pytest.raises(ValueError, match=r"^off_by_one and prefix_cache do not apply to method='dom'"):
        AttributionConfig(method="dom", off_by_one=True, prefix_cache=False)
    assert AttributionConfig(method="dom").prefix_cache is True  # the default is no refusal
    # joint mode keeps it: faithfulness's real patching runs on the cached prefix or not by it
    assert AttributionConfig(mode="joint", prefix_cache=False).prefix_cache is False
    out = tmp_path / "AF5"
    data = toy_gold(tmp_path)
    capsys.readouterr()
    assert (
        _rc(["attribute", "--model", "toy", "--data", data, "--out", out, "--method", "dom", "--no-prefix-cache"]) == 2
    )
    err = _err_line(capsys)
    assert (
        err.startswith("lrm-interp attribute: error: --no-prefix-cache does not apply to method='dom'")
        and not out.exists()
    )


def test_joint_attribution_refuses_no_prefix_cache_before_any_work(tmp_path, capsys):
    """``attribute --mode joint --no-prefix-cache`` gave the same scores as without the flag but
    recorded it, so a resume either way was refused (H8-AF5, joint half). :func:`attribute` refuses it
    before the model loads; the config still takes it (faithfulness's patching uses it)."""
    from lrm_interp.attribution.pipeline import attribute

    data = toy_gold(tmp_path)
    with pytest.raises(ValueError, match=r"^prefix_cache=False \(--no-prefix-cache\) does not apply to mode='joint'"):
        attribute("no-such-model", data, mode="joint", prefix_cache=False, progress=False)
    out = tmp_path / "AF5j"
    capsys.readouterr()
    assert (
        _rc(["attribute", "--model", "toy", "--data", data, "--out", out, "--mode", "joint", "--no-prefix-cache"]) == 2
    )
    assert "does not apply to mode='joint'" in _err_line(capsys) and not out.exists()


# ------------------------------------------------------------------ H8-NAN2
def _said_once(run, folder: Path) -> int:
    """``run()``'s exit status; it must warn exactly once that behaviour 'backtracking' of ``folder``
    has no non-zero score (the CLI prints a warning as one line: test_reliability_h7a)."""
    from lrm_interp.protect.policies import ZeroScoreWarning

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        rc = run()
    said = [str(w.message) for w in got if issubclass(w.category, ZeroScoreWarning)]
    assert said == [
        f"behaviour 'backtracking' has no non-zero attribution score in {folder}: the mean relative importance "
        "over behaviours counts it as zero"
    ], said
    return rc


def test_an_all_zero_score_row_is_no_basis_for_bits_or_masks(tmp_path, capsys):
    """``bits --behavior X`` where X's row is all zero (saved through the API) allocated bits with no
    word; ``protect`` ranked modules by all-zero scores. Refused now (the library too); a zero row in
    the mean over behaviours is named in a one-line warning."""
    from lrm_interp.model.loading import load_model
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.bit_allocation import allocate_bits
    from lrm_interp.protect.policies import ZeroScoreWarning, module_scores, modules_by_score

    n = len(find_sites(load_model("toy")[0]))
    half = torch.rand(2, n, dtype=torch.float64)
    half[0] = 0.0
    az, zero = _toy_scores(tmp_path, "AZ", half), _toy_scores(tmp_path, "Z", torch.zeros(2, n, dtype=torch.float64))
    out = tmp_path / "bits.json"
    capsys.readouterr()
    bits = ["bits", "--model", "toy", "--budget", 3.5, "--out", out, "--quiet"]
    assert _rc([*bits, "--scores", az, "--behavior", "backtracking"]) == 2
    err = _err_line(capsys)
    assert f"behaviour 'backtracking' has no non-zero attribution score in {az}: nothing to allocate by" in err
    assert "give another --behavior" in err and not out.exists()
    assert _rc([*bits, "--scores", zero]) == 2
    assert f"no behaviour has a non-zero attribution score in {zero}" in _err_line(capsys) and not out.exists()
    # the other behaviour, and the mean (with a word about the zero row), still allocate
    assert _rc([*bits, "--scores", az, "--behavior", "deduction"]) == 0 and out.exists()
    assert _said_once(lambda: _rc([*bits, "--scores", az, "--overwrite"]), az) == 0
    # protect: the policies and saliencies that read --scores
    m = tmp_path / "m.safetensors"
    base = ["protect", "--out", m, "--quiet"]
    assert _rc([*base, "--scores", zero, "--policy", "modules_by_score", "--budget", 0.1]) == 2
    err = _err_line(capsys)
    assert f"no behaviour has a non-zero attribution score in {zero}: nothing to rank the modules by" in err
    assert "--policy modules_by_score ranks the modules by these scores" in err and not m.exists()
    assert _rc([*base, "--scores", zero, "--model", "toy", "--data", toy_gold(tmp_path)]) == 2
    assert "--saliency attribution_ri weighs the modules" in _err_line(capsys) and not m.exists()
    assert _said_once(lambda: _rc([*base, "--scores", az, "--policy", "modules_by_score", "--budget", 0.1]), az) == 0
    assert (
        _rc([*base, "--scores", zero, "--model", "toy", "--saliency", "magnitude", "--overwrite"]) == 0
    )  # no scores read
    # the library
    a = Attribution.load(az)
    sites = list(a.sites)
    with pytest.raises(ValueError, match="behaviour 'backtracking' has no non-zero attribution score"):
        modules_by_score(sites, a, 0.1, behavior="backtracking")
    with pytest.raises(ValueError, match="no behaviour has a non-zero attribution score"):
        modules_by_score(sites, Attribution.load(zero), 0.1)
    with pytest.raises(ValueError, match="every module score is 0"):
        module_scores({s.name: 0.0 for s in sites})
    with pytest.warns(ZeroScoreWarning, match="'backtracking'"):
        assert module_scores(a) == a.site_ri()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module_scores(a, "deduction") == a.site_ri("deduction")
    errors = {s.name: {b: 1.0 / b for b in (2, 3, 4, 8, 16)} for s in sites}
    with pytest.raises(ValueError, match="every sensitivity of the .* sites is 0: nothing to allocate by"):
        allocate_bits(sites, errors, {s.name: 0.0 for s in sites}, 4.0)
    assert allocate_bits(sites, errors, None, 4.0).bpw <= 4.0


# ------------------------------------------------------------------ H8-TMP1
@pytest.mark.parametrize(
    "text, msg",
    [
        ("Q with no options", "record 0: the input lists no options"),
        ("Q? Options:\n(A) 1pm\n(A) 2pm", "record 0: option (A) listed twice"),
        ("Q? Options:\n(A) 1pm\n(C) 2pm", "record 0: the input lists options (A), (C), not (A), (B) in order"),
    ],
)
def test_temporal_records_without_options_or_with_one_twice_are_refused(tmp_path, text, msg):
    """A Temporal (BBH) record whose input lists no options (the count was guessed as 4), or one
    option letter twice, was accepted; the shipped files still load."""
    from lrm_interp import benchmarks

    d = tmp_path / "d"
    d.mkdir()
    f = d / "temporal.json"
    f.write_text(json.dumps({"examples": [{"input": text, "target": "(A)"}]}))
    with pytest.raises(benchmarks.BenchmarkFormatError) as e:
        benchmarks.load("temporal", d)
    assert str(e.value).startswith(f"{f}: {msg}"), str(e.value)
    data = Path(__file__).parent / "data"
    assert [i.n_options for i in benchmarks.load("temporal", data / "bench")] == [4, 4]
    assert len(benchmarks.load("temporal", data / "r1_style" / "problems" / "temporal_sequences.jsonl")) > 0


# ------------------------------------------------------------------ toy traces --gold --model
def test_toy_gold_traces_refuse_a_model(tmp_path, capsys):
    """``toy traces --gold --model ./nonexistent`` exited 0: --model is not read by --gold (the traces
    come from the task generator). Refused, naming it; the plain --gold run is unchanged."""
    out = tmp_path / "g.jsonl"
    capsys.readouterr()
    argv = ["toy", "traces", "--gold", "--per-family", 1, "--out", out]
    assert _rc([*argv, "--model", tmp_path / "nonexistent"]) == 2
    assert "--model does not apply to --gold traces" in _err_line(capsys) and not out.exists()
    assert _rc([*argv, "--model", "toy"]) == 2 and not out.exists()
    capsys.readouterr()
    assert _rc(argv) == 0 and out.exists()
    before = _digest(out)
    assert _rc([*argv, "--model", "toy", "--overwrite"]) == 2 and _digest(out) == before
