"""The command line's contract: help for every flag, an example per subcommand, and bad input
that exits non-zero with one stderr line naming the file or value (no traceback)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from synth import synthetic_traces

from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.cli.main import build_parser, main
from lrm_interp.testing import byte_tokenizer, tiny_model

# Flags known to lack help, as "subcommand path --flag": fix them where they are defined and
# delete them here (an entry that has gained help is simply ignored).
# toy train: lrm_interp/cli/toy.py::add_train_args defines these without help= (not a CLI file).
KNOWN_GAPS: set[str] = set()  # flags allowed to lack help (none)


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield from _walk(sp, path + (name,))


def _commands():
    return [(" ".join(path), p) for path, p in _walk(build_parser()) if path]


def test_every_subcommand_is_walked():
    names = {n for n, _ in _commands()}
    assert {
        "quickstart",
        "attribute",
        "parse",
        "compare",
        "protect",
        "quantize",
        "toy",
        "toy train",
        "toy eval",
        "toy traces",
    } <= names


@pytest.mark.parametrize("name", [n for n, _ in _commands()])
def test_help_description_and_example(name):
    parser = dict(_commands())[name]
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[0] if action.option_strings else action.dest
        if not (action.help or "").strip() and f"{name} {label}" not in KNOWN_GAPS:
            missing.append(label)
    assert not missing, f"lrm-interp {name}: flags without help= {missing}"
    assert (parser.description or "").strip(), f"lrm-interp {name} has no description"
    epilog = parser.epilog or ""
    assert epilog.startswith("example:"), f"lrm-interp {name}: epilog must begin with 'example:'"
    assert f"lrm-interp {name}" in epilog, f"lrm-interp {name}: the example must show the command itself"
    assert isinstance(parser.formatter_class, type) and issubclass(
        parser.formatter_class, argparse.RawDescriptionHelpFormatter
    )
    parser.format_help()  # help strings format (no stray %)


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "attribute" in out


def test_attribute_flags_derive_from_config():
    at = dict(_commands())["attribute"]
    by_dest = {a.dest: a for a in at._actions}
    for f in dataclasses.fields(AttributionConfig):
        a = by_dest[f.name]
        flag = ("--no-" if f.default is True else "--") + f.name.replace("_", "-")  # True defaults: --no-x
        assert a.option_strings == [flag]
        assert a.help.startswith(f.metadata["help"].replace("%", "%%"))
        assert a.default == f.default
        if "choices" in f.metadata:
            assert tuple(a.choices) == tuple(f.metadata["choices"])
        if isinstance(f.default, bool):
            assert isinstance(a, argparse._StoreFalseAction if f.default else argparse._StoreTrueAction)
    assert by_dest["sites"].type is str and by_dest["behaviors"].nargs == "+"
    # defaults build the default config
    ns = build_parser().parse_args(["attribute", "--model", "m", "--data", "d", "--out", "o"])
    from lrm_interp.cli.common import dataclass_from_args

    assert dataclass_from_args(AttributionConfig, ns) == AttributionConfig()


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["attribute", "--model", "toy", "--data", "d", "--out", "o", "--mode", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode" in err[0] and "'fast'" in err[0]


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny_model("llama").save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return synthetic_traces(2).save_jsonl(tmp_path_factory.mktemp("data") / "t.jsonl")


def _fails(capsys, argv, *needles, code=2):
    rc = main([str(x) for x in argv])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == code, (rc, cap.err)
    assert len(lines) == 1, cap.err
    assert "Traceback" not in cap.err + cap.out
    assert lines[0].startswith(f"lrm-interp {argv[0]}"), lines[0]
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def test_missing_data_file(capsys, tmp_path, model_dir):
    _fails(
        capsys,
        ["attribute", "--model", model_dir, "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o"],
        "--data",
        tmp_path / "nope.jsonl",
    )


def test_missing_model_checked_before_data(capsys, tmp_path, traces):
    _fails(
        capsys,
        ["attribute", "--model", tmp_path / "nomodel", "--data", traces, "--out", tmp_path / "o"],
        "--model",
        tmp_path / "nomodel",
    )


def test_malformed_jsonl_line(capsys, tmp_path, model_dir, traces):
    bad = tmp_path / "bad.jsonl"
    lines = traces.read_text().splitlines()
    bad.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    _fails(capsys, ["attribute", "--model", model_dir, "--data", bad, "--out", tmp_path / "o"], f"{bad}:2")


def test_invalid_utf8_line(capsys, tmp_path, model_dir, traces):
    bad = tmp_path / "latin.jsonl"
    lines = traces.read_bytes().splitlines()
    bad.write_bytes(lines[0] + b"\n" + lines[1] + b"\n" + b'{"id": "x\xff\xfe", "prompt": "a"}\n')
    _fails(capsys, ["attribute", "--model", model_dir, "--data", bad, "--out", tmp_path / "o"], f"{bad}:3")


def test_parse_malformed_line(capsys, tmp_path, traces):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(traces.read_text().splitlines()[0] + "\n[1, 2]\n")
    _fails(capsys, ["parse", "--data", bad, "--out", tmp_path / "o.jsonl"], f"{bad}:2")


def test_unknown_site_regex(capsys, tmp_path, model_dir, traces):
    _fails(
        capsys,
        ["attribute", "--model", model_dir, "--data", traces, "--out", tmp_path / "o", "--sites", "nomatch_xyz"],
        "--sites 'nomatch_xyz' matches no linear site of --model",
    )
    assert not (tmp_path / "o").exists()


def test_invalid_site_regex(capsys, tmp_path, model_dir, traces):
    _fails(
        capsys, ["attribute", "--model", model_dir, "--data", traces, "--out", tmp_path / "o", "--sites", "("], "'('"
    )


def test_invalid_config_value(capsys, tmp_path, model_dir, traces):
    _fails(
        capsys,
        [
            "attribute",
            "--model",
            model_dir,
            "--data",
            traces,
            "--out",
            tmp_path / "o",
            "--method",
            "dom",
            "--mode",
            "joint",
        ],
        "method='dom'",
    )


def test_tokenizer_bigger_than_model(capsys, tmp_path, model_dir, traces):
    tok = tmp_path / "tok"
    byte_tokenizer(extra_special=tuple(f"<x{i}>" for i in range(300))).save_pretrained(tok)
    line = _fails(
        capsys,
        ["attribute", "--model", model_dir, "--data", traces, "--out", tmp_path / "o", "--tokenizer", tok],
        "--tokenizer",
        tok,
        "559",
        "259",
    )
    assert str(model_dir) in line


def test_missing_tokenizer_dir(capsys, tmp_path, model_dir, traces):
    _fails(
        capsys,
        [
            "attribute",
            "--model",
            model_dir,
            "--data",
            traces,
            "--out",
            tmp_path / "o",
            "--tokenizer",
            tmp_path / "notok",
        ],
        "--tokenizer",
        tmp_path / "notok",
    )


def test_protect_missing_scores(capsys, tmp_path):
    _fails(
        capsys,
        ["protect", "--scores", tmp_path / "noscores", "--policy", "final_mlp", "--out", tmp_path / "m.safetensors"],
        tmp_path / "noscores",
    )


def test_compare_missing_result(capsys, tmp_path):
    _fails(
        capsys,
        ["compare", "--original", tmp_path / "a", "--compressed", tmp_path / "b", "--out", tmp_path / "c"],
        "--original",
        tmp_path / "a",
    )


def test_compare_corrupt_result(capsys, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "attribution.json").write_text("{truncated")
        (tmp_path / name / "attribution.safetensors").write_bytes(b"\0" * 8)
    _fails(
        capsys,
        ["compare", "--original", tmp_path / "a", "--compressed", tmp_path / "b", "--out", tmp_path / "c"],
        tmp_path / "a" / "attribution.json",
    )


def test_toy_eval_missing_model(capsys, tmp_path):
    _fails(capsys, ["toy", "eval", "--model", tmp_path / "nomodel"], "--model", tmp_path / "nomodel")


def test_internal_error_is_one_line_and_debug_reraises(capsys, monkeypatch, tmp_path):
    import sys

    mod = sys.modules["lrm_interp.cli.main"]  # the module (lrm_interp.cli.main is also the function's name)

    def boom(a):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(mod, "build_parser", _patched_parser(mod.build_parser, boom))
    line = _fails(
        capsys, ["parse", "--data", tmp_path, "--out", tmp_path / "o"], "kaput second line", "RuntimeError", code=1
    )
    assert "LRM_INTERP_DEBUG" in line
    monkeypatch.setenv("LRM_INTERP_DEBUG", "1")
    with pytest.raises(RuntimeError):
        mod.main(["parse", "--data", str(tmp_path), "--out", str(tmp_path / "o")])


def _patched_parser(build, fn):
    def patched():
        p = build()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.choices["parse"].set_defaults(fn=fn)
        return p

    return patched


# --------------------------------------------------------------------------- nothing silent (issue 22)
def test_parse_report_is_written_for_a_paper_layout_and_refused_for_jsonl(capsys, tmp_path, traces):
    """``parse --report`` never silently does nothing: a JSONL file has no parse report, so the flag
    is refused (one line naming it) before anything is written; a paper layout writes it."""
    from pathlib import Path

    line = _fails(
        capsys,
        ["parse", "--data", traces, "--out", tmp_path / "o.jsonl", "--report", tmp_path / "r.json"],
        "--report",
        traces,
    )
    assert "JSONL" in line
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "r.json").exists()
    layout = Path(__file__).parent / "data" / "paper_layout"
    assert (
        main(["parse", "--data", str(layout), "--out", str(tmp_path / "p.jsonl"), "--report", str(tmp_path / "p.json")])
        == 0
    )
    import json

    assert json.loads((tmp_path / "p.json").read_text())["counts"]
    assert (tmp_path / "p.jsonl").is_file()


def _attribution(
    tmp_path,
    name,
    *,
    behaviors=("backtracking", "uncertainty-estimation"),
    settings=None,
    tokenizer="tok1",
    spans=None,
    weights="w0",
):
    import torch

    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites

    sites = tuple(find_sites(tiny_model("llama")))
    prov = {
        "settings": AttributionConfig().to_dict() | (settings or {}),
        "model": {"model_type": "llama", "weights_fingerprint": weights, "tokenizer": {"fingerprint": tokenizer}},
        "counts": {"traces": 2, "spans": spans or {b: 2 for b in behaviors}, "tokens": {b: 40 for b in behaviors}},
        "dataset": {"name": "synth", "n_traces": 2},
    }
    d = tmp_path / name
    Attribution(
        tuple(behaviors),
        sites,
        torch.rand(len(behaviors), len(sites), dtype=torch.float64),
        "attribution",
        provenance=prov,
    ).save(d)
    return d


def test_compare_refuses_results_that_cannot_be_compared(capsys, tmp_path):
    """An importance shift between results of different settings, tokenizers or traces is refused,
    naming the difference; --allow-mismatch compares anyway, warning about each one."""
    a = _attribution(tmp_path, "a")
    cases = [
        (_attribution(tmp_path, "k1", settings={"k_context": 1}, weights="w1"), "k_context 5 vs 1"),
        (
            _attribution(tmp_path, "dom", settings={"method": "dom", "mode": "exact"}, weights="w1"),
            "method 'attribution' vs 'dom'",
        ),
        (_attribution(tmp_path, "tok", tokenizer="tok2", weights="w1"), "different tokenizers"),
        (
            _attribution(tmp_path, "data", spans={"backtracking": 3, "uncertainty-estimation": 2}, weights="w1"),
            "different traces",
        ),
    ]
    for b, needle in cases:
        line = _fails(
            capsys, ["compare", "--original", a, "--compressed", b, "--out", tmp_path / "c"], needle, "--allow-mismatch"
        )
        assert "cannot be compared" in line
        assert not (tmp_path / "c").exists()
    assert (
        main(
            [
                "compare",
                "--original",
                str(a),
                "--compressed",
                str(cases[0][0]),
                "--out",
                str(tmp_path / "c"),
                "--allow-mismatch",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lrm-interp compare: warning: different attribution settings: k_context 5 vs 1"]
    assert (tmp_path / "c" / "shift.csv").is_file()
    # a shift already written is replaced only with --overwrite; --out never lies inside an input result
    before = (tmp_path / "c" / "shift.csv").read_bytes()
    _fails(
        capsys,
        ["compare", "--original", a, "--compressed", cases[0][0], "--out", tmp_path / "c", "--allow-mismatch"],
        "pass --overwrite",
    )
    assert (tmp_path / "c" / "shift.csv").read_bytes() == before
    assert (
        main(
            [
                "compare",
                "--original",
                str(a),
                "--compressed",
                str(cases[0][0]),
                "--out",
                str(tmp_path / "c"),
                "--allow-mismatch",
                "--overwrite",
            ]
        )
        == 0
    )
    capsys.readouterr()
    _fails(
        capsys,
        ["compare", "--original", a, "--compressed", cases[0][0], "--out", a / "shift", "--allow-mismatch"],
        "lies inside the input folder",
    )


def test_compare_warns_about_behaviours_left_out_and_identical_weights(capsys, tmp_path):
    a = _attribution(tmp_path, "a")
    b = _attribution(tmp_path, "b", behaviors=("backtracking", "adding-knowledge"), weights="w1")
    assert main(["compare", "--original", str(a), "--compressed", str(b), "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "left out" in err[0]
    assert "--original uncertainty-estimation" in err[0] and "--compressed adding-knowledge" in err[0]
    same = _attribution(tmp_path, "same")
    assert main(["compare", "--original", str(a), "--compressed", str(same), "--out", str(tmp_path / "d")]) == 0
    assert "same weights" in capsys.readouterr().err
    joint = _attribution(tmp_path, "joint", weights="w3", settings={"mode": "joint"})
    assert main(["compare", "--original", str(a), "--compressed", str(joint), "--out", str(tmp_path / "j")]) == 0
    assert "mode 'exact' vs 'joint'" in capsys.readouterr().err  # the same quantity, approximated: a warning
    ok = _attribution(tmp_path, "ok", weights="w2", settings={"prefix_cache": False, "gradient_checkpointing": True})
    assert main(["compare", "--original", str(a), "--compressed", str(ok), "--out", str(tmp_path / "e")]) == 0
    assert capsys.readouterr().err == ""  # how it was computed, not what: nothing to say


def test_model_flag_accepts_a_distilled_delta_folder(tmp_path):
    """`toy eval --model RUN/adapter` (docs/reasoner.md) must pass the CLI's model check, as
    load_model accepts it; an empty folder is still refused with one line."""
    from lrm_interp.cli.common import CliError, require_model

    (tmp_path / "adapter").mkdir()
    with pytest.raises(CliError, match="no config.json .* or adapter_config.json"):
        require_model(str(tmp_path / "adapter"))
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    assert require_model(str(tmp_path / "adapter")) == str(tmp_path / "adapter")
