"""The option walk (issue 22, "nothing lost, nothing silent"): every numeric option of every
``lrm-interp`` subcommand, given NaN, inf, -1 or 0, is refused up front — exit status 2, exactly one
stderr line naming the flag, no traceback, no file written, no model loaded — unless the value has a
documented meaning for that flag (:data:`MEANINGFUL`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from synth import synthetic_traces
from test_cli import _walk  # one walk of the parser tree for both CLI tests

from lrm_interp.cli.main import build_parser

VALUES = ("nan", "inf", "-1", "0")

# Values with a documented meaning for a flag ("subcommand --flag" -> {value: the meaning}). They
# are valid input, so the walk does not run them (they would start real work). Each meaning must be
# said in the flag's help.
MEANINGFUL: dict[str, dict[str, str]] = {
    "quickstart --eval": {"0": "skip the accuracy evaluation"},
    "attribute --k-context": {"0": "no context tokens before a span's DoM window"},
    "faithfulness --k-context": {"0": "no context tokens before a span's DoM window"},
    "faithfulness --seed": {"0": "a seed"},
    "protect --budget": {"0": "an empty mask (the no-protection baseline)"},
    "protect --seed": {"0": "a seed"},
    # group size 0 = per channel (one scale per output row)
    "protect --group-size": {"0": "per channel"},
    "quantize --group-size": {"0": "per channel"},
    "bits --group-size": {"0": "per channel"},
    "toy eval --group-size": {"0": "per channel"},
    "experiment protection --group-size": {"0": "per channel"},
    "bench run --group-size": {"0": "per channel"},
    "toy train --stop-at": {"0": "run all --steps"},
    "toy train --anneal-steps": {"0": "no phase 2"},
    "toy train --seed": {"0": "a seed"},
    "toy train --weight-decay": {"0": "no weight decay"},
    "toy train --workers": {"0": "generate batches in the main process"},
    "toy eval --seed": {"0": "a seed"},
    "annotate agree --seed": {"0": "a seed (of the noise floor's split; refused without --downstream)"},
    "toy traces --seed": {"0": "a seed"},
    "toy distill --seed": {"0": "a seed"},
    "toy distill --pack": {"0": "pad each trace instead of packing"},
    "toy distill --eval-every": {"0": "never evaluate"},
    "toy distill --max-seconds": {"0": "one step, checkpoint, stop (resumable)"},
    "experiment protection --random-seeds": {"0": "a seed"},
    "experiment protection --guided-mix": {"0": "the calibration Hessian alone"},
    "bench run --seed": {"0": "a seed"},
    "bench run --toy-seed": {"0": "a seed"},
    "bench score --toy-seed": {"0": "a seed"},
    "bench run --temperature": {"0": "greedy decoding"},
    "bench run --retries": {"0": "no retry"},
    "annotate --temperature": {"0": "greedy decoding"},
    "annotate --chunk-chars": {"0": "never split the thinking part"},
    "annotate --retries": {"0": "no retry"},
    "annotate train --folds": {"0": "skip the cross-validation"},
    "annotate train --l2": {"0": "no penalty"},
    "annotate train --class-balance": {"0": "the plain mean over sentences"},
}


@pytest.fixture(scope="module")
def traces_file(tmp_path_factory) -> Path:
    return synthetic_traces(2).save_jsonl(tmp_path_factory.mktemp("walk_data") / "t.jsonl")


def _is_numeric(action: argparse.Action) -> bool:
    """An option whose value is a number: ``type=int``/``float`` or a range-checked type of
    :mod:`lrm_interp.checks` (``bounds``)."""
    t = action.type
    return bool(action.option_strings) and (t in (int, float) or hasattr(t, "bounds"))


PARSER = build_parser()
COMMANDS = {" ".join(path): p for path, p in _walk(PARSER) if path}
NUMERIC = {(cmd, a.option_strings[0]): a for cmd, p in COMMANDS.items() for a in p._actions if _is_numeric(a)}


def _cases():
    for (cmd, flag), _ in sorted(NUMERIC.items()):
        key = f"{cmd} {flag}"
        for v in VALUES:
            if v in MEANINGFUL.get(key, {}):
                continue
            yield pytest.param(cmd, flag, v, id=f"{cmd}{flag}={v}".replace(" ", "_"))


def _required_args(cmd: str, flag: str, tmp: Path, traces: Path) -> list[str]:
    """Dummy values for the required options of ``cmd`` (other than ``flag``): cheap, and any
    check of the value under test must come before they are used."""
    dummies = {
        "--model": "toy",
        "--data": str(traces),
        "--out": str(tmp / "out"),
        "--scores": str(tmp / "scores"),
        "--bits": "3",
        "--budget": "3.5",
        "--tasks": "math",
        "--outputs": str(tmp / "outputs"),
        "--gold": str(traces),
        "--pred": str(traces),
    }
    argv: list[str] = []
    for a in COMMANDS[cmd]._actions:
        if a.required and a.option_strings and a.option_strings[0] != flag:
            assert a.option_strings[0] in dummies, f"add a dummy value for {cmd} {a.option_strings[0]} to the walk"
            argv += [a.option_strings[0], dummies[a.option_strings[0]]]
    if cmd == "annotate":  # --data and --out are required by the command itself (not by argparse)
        argv += ["--data", str(traces), "--out", str(tmp / "out.jsonl")]
    return argv


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


def test_the_walk_sees_every_command_with_numbers():
    cmds = {cmd for cmd, _ in NUMERIC}
    assert {
        "quickstart",
        "attribute",
        "protect",
        "quantize",
        "bits",
        "toy train",
        "toy eval",
        "toy traces",
        "toy distill",
        "bench run",
        "bench score",
        "annotate",
        "annotate agree",
        "annotate train",
        "experiment protection",
    } <= cmds
    assert len(NUMERIC) > 80


def test_allow_list_names_real_flags():
    known = {f"{cmd} {flag}" for cmd, flag in NUMERIC}
    stale = sorted(set(MEANINGFUL) - known)
    assert not stale, f"MEANINGFUL names flags that are not numeric options (any more): {stale}"
    for key, vals in MEANINGFUL.items():
        assert vals and set(vals) <= set(VALUES), (key, vals)


@pytest.mark.parametrize("cmd,flag,value", list(_cases()))
def test_numeric_option_refused_up_front(cmd, flag, value, tmp_path, monkeypatch, capsys, traces_file):
    import lrm_interp.model.loading as loading
    import lrm_interp.model.smollm2 as smollm2

    # every lrm_interp module is imported before any patch (tests/conftest.py::_every_module_imported)

    mod = sys.modules["lrm_interp.cli.main"]
    monkeypatch.setattr(mod, "build_parser", lambda: PARSER)  # one parser for the whole walk (fast)
    loaded = []

    def no_loading(*a, **k):
        loaded.append(a)
        raise AssertionError("a model was loaded before the option was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    monkeypatch.setattr(smollm2, "load_smollm2", no_loading)
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    action = NUMERIC[(cmd, flag)]
    n = action.nargs if isinstance(action.nargs, int) else 1
    argv = cmd.split() + _required_args(cmd, flag, tmp_path, traces_file) + [flag] + [value] * n
    before = _tree(tmp_path)
    capsys.readouterr()
    try:
        rc = mod.main(argv)
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    shown = " ".join(argv[len(cmd.split()) :])
    assert rc == 2, f"lrm-interp {cmd} {flag} {value}: exit {rc}, not a refusal (argv {shown}); stderr {cap.err[-500:]}"
    assert len(lines) == 1, f"lrm-interp {cmd} {flag} {value}: not one stderr line: {cap.err[-800:]}"
    assert "Traceback" not in cap.err + cap.out
    assert lines[0].startswith(f"lrm-interp {cmd}"), lines[0]
    assert flag in lines[0], f"lrm-interp {cmd} {flag} {value}: the error does not name the flag: {lines[0]}"
    assert not loaded
    assert _tree(tmp_path) == before, f"lrm-interp {cmd} {flag} {value} wrote files"


def test_meaningful_values_parse():
    """The allow-listed values are accepted by the parser (the walk skips them; here they must parse)."""
    for key, vals in MEANINGFUL.items():
        cmd, flag = key.rsplit(" ", 1)
        action = NUMERIC[(cmd, flag)]
        for v in vals:
            action.type(v)  # raises if a type= refuses a value documented as meaningful


def test_range_checks_api_and_argparse_agree():
    from lrm_interp.checks import check_float, check_int, float_arg, int_arg

    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0"):
        check_int("steps", 0, min=1)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got nan"):
        check_float("lr", float("nan"), min=0.0, min_open=True)
    with pytest.raises(ValueError, match="an integer"):
        check_int("n", True)
    assert check_int("n", None, optional=True) is None and check_float("x", 3, min=0) == 3.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a finite number in \(0, 1\), got inf"):
        float_arg(0, 1, min_open=True, max_open=True)("inf")
    with pytest.raises(argparse.ArgumentTypeError, match="must be an integer >= 0, got '1.5'"):
        int_arg(0)("1.5")
    assert int_arg(0)("0") == 0 and json.dumps(float_arg(0)("2.5")) == "2.5"


def test_the_python_api_refuses_the_same_values(tmp_path):
    """The checks live in the config dataclasses and entry points, so the API refuses what the
    command line refuses, before anything is loaded or written."""
    from lrm_interp.compress.quant import check_bits, check_group_size, quantize_model_
    from lrm_interp.experiments.protection_table import ExperimentSettings
    from lrm_interp.experiments.quickstart import run_quickstart
    from lrm_interp.model.sites import find_sites
    from lrm_interp.protect.policies import build_masks, global_top
    from lrm_interp.protect.registry import build_saliency
    from lrm_interp.testing import tiny_model

    for kw, needle in [
        ({"n_traces": 0}, "n_traces"),
        ({"bits": 9}, "bits must be in 2..8"),
        ({"bits": float("nan")}, "bits must be in 2..8"),
        ({"group_size": 0}, "group_size"),
        ({"budget": float("nan")}, "budget"),
        ({"budget": 0.0}, "budget"),
        ({"n_eval": -1}, "n_eval"),
    ]:
        with pytest.raises(ValueError, match=needle):
            run_quickstart(tmp_path / "qs", tiny=True, progress=False, **kw)
    assert not (tmp_path / "qs").exists()
    for kw, needle in [
        ({"guided_mix": float("nan")}, "guided_mix"),
        ({"guided_mix": 1.5}, "guided_mix"),
        ({"random_seeds": (-1,)}, "random_seeds"),
        ({"random_seeds": ()}, "random_seeds"),
        ({"group_size": 0}, "group_size"),
        ({"budget": float("nan")}, "budget"),
        ({"bits": 3.5}, "bits"),
        ({"per_family": 0}, "per_family"),
        ({"problem_seed": -2}, "problem_seed"),
    ]:
        with pytest.raises(ValueError, match=needle):
            ExperimentSettings(**kw)
    assert check_bits(3.0) == 3 and check_group_size(None) is None and check_group_size(64) == 64
    for bad in (2.5, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="bits must be in 2..8"):
            check_bits(bad)
    model = tiny_model("llama")
    before = [p.detach().clone() for p in model.parameters()]
    for g in (0, -1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="group_size must be positive or None"):
            quantize_model_(model, bits=3, group_size=g, progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # untouched
    sites = find_sites(model)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        build_saliency("random", model, sites, seed=-1)
    with pytest.raises(ValueError, match="group_size"):
        build_saliency("magnitude", model, sites, group_size=-8)
    for budget in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match=r"budget must be a fraction of the weights in \[0, 1\]"):
            build_masks(sites, "final_mlp", budget)
        with pytest.raises(ValueError, match="budget"):
            global_top(build_saliency("magnitude", model, sites), budget)


def test_generation_annotator_and_export_settings_refuse_bad_values():
    """The Python API behind 'bench run' and 'annotate' refuses what their flags refuse, naming the
    field (the command line maps the name to the flag)."""
    from lrm_interp.data.annotate import LLMAnnotator, OpenAIClient, split_for_annotation
    from lrm_interp.evaluation.backends import GenerationSettings
    from lrm_interp.protect import exports

    nan, inf = float("nan"), float("inf")
    for kw, needle in [
        ({"temperature": inf}, "temperature must be a finite number >= 0"),
        ({"temperature": nan}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, r"top_p must be a finite number in \(0, 1\]"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": nan}, "top_p"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed"),
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"chat_template": "yes"}, "chat_template"),
    ]:
        with pytest.raises(ValueError, match=needle):
            GenerationSettings(**kw)
    ok = GenerationSettings(temperature=0, top_p=1, seed=0, max_new_tokens=1, n_samples=1, batch_size=1)
    assert ok.greedy and ok.to_dict()["temperature"] == 0
    for kw, needle in [
        ({"temperature": nan}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": inf}, "temperature"),
        ({"max_tokens": 0}, "max_tokens must be None or an integer >= 1"),
        ({"max_tokens": -1}, "max_tokens"),
    ]:
        with pytest.raises(ValueError, match=needle):
            OpenAIClient(model="m", base_url="http://127.0.0.1:1/v1", **kw)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_chunk_chars"):
            LLMAnnotator(lambda p: "", max_chunk_chars=bad)
        with pytest.raises(ValueError, match="max_chars"):
            split_for_annotation("text", bad)

    class Alloc:
        bits = {"model.layers.0.mlp.down_proj": 4, "model.layers.0.mlp.up_proj": 16}
        group_size = 128
        symmetric = False

    assert exports.gptqmodel_dynamic_bits(Alloc(), default_bits=3) == {
        r"+:^model\.layers\.0\.mlp\.down_proj$": {"bits": 4, "group_size": 128, "sym": False},
        r"-:^model\.layers\.0\.mlp\.up_proj$": {},
    }
    for bad in (1, 9, 16, 3.5, nan, True, "3"):
        with pytest.raises(ValueError, match=r"default_bits must be an integer in \[2, 8\]"):
            exports.gptqmodel_dynamic_bits(Alloc(), default_bits=bad)
