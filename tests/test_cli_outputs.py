"""CLI: an output never replaces an input or another output (refused before any work, exit 2, one
line naming both flags); Ctrl-C prints one line and returns 130."""

from __future__ import annotations

import json

import pytest
from cli_run import run_cli as _rc

from lrm_interp.cli import main as cli_main
from lrm_interp.cli.main import main
from lrm_interp.testing import tiny_model


def _snapshot(*paths):
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        out.update({q: q.read_bytes() for q in files})
    return out


def _refused(capsys, argv, flags, *inputs):
    before = _snapshot(*inputs)
    assert _rc([str(x) for x in argv]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for f in flags:
        assert f in lines[0], (f, lines[0])
    assert _snapshot(*inputs) == before


def _attribution(tmp_path):
    import torch

    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites

    sites = tuple(find_sites(tiny_model("llama")))
    behaviors = ("backtracking", "uncertainty-estimation")
    prov = {
        "settings": AttributionConfig().to_dict(),
        "model": {"model_type": "llama", "weights_fingerprint": "w0", "tokenizer": {"fingerprint": "t"}},
        "counts": {"traces": 2, "spans": {b: 2 for b in behaviors}, "tokens": {b: 40 for b in behaviors}},
        "dataset": {"name": "synth", "n_traces": 2},
    }
    d = tmp_path / "A1"
    Attribution(
        behaviors, sites, torch.rand(len(behaviors), len(sites), dtype=torch.float64), "attribution", provenance=prov
    ).save(d)
    return d


def _model_dir(tmp_path):
    d = tmp_path / "toym"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "model.safetensors").write_bytes(b"weights, not to be replaced")
    return d


def test_protect_out_inside_scores_or_model_is_refused(capsys, tmp_path):
    a = _attribution(tmp_path)
    _refused(
        capsys,
        ["protect", "--scores", a, "--policy", "final_mlp", "--out", a / "attribution.safetensors"],
        ["--out", "--scores"],
        a,
    )
    _refused(
        capsys,
        ["protect", "--scores", a, "--policy", "final_mlp", "--out", a / "sub" / "m.safetensors"],
        ["--out", "--scores"],
        a,
    )
    m = _model_dir(tmp_path)
    _refused(
        capsys,
        ["protect", "--scores", a, "--model", m, "--saliency", "magnitude", "--out", m / "model.safetensors"],
        ["--out", "--model"],
        a,
        m,
    )
    # the same path spelled another way (.., a symbolic link) is the same path
    _refused(
        capsys,
        [
            "protect",
            "--scores",
            a,
            "--model",
            m,
            "--saliency",
            "magnitude",
            "--out",
            m / ".." / "toym" / "model.safetensors",
        ],
        ["--out", "--model"],
        a,
        m,
    )
    assert not (a / "sub").exists()


def test_annotate_outputs_never_name_the_input_or_each_other(capsys, tmp_path):
    src = tmp_path / "resp.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": "p", "response": "Wait, let me check. So x = 2."}) + "\n"
            for i in range(2)
        )
    )
    same = tmp_path / "same.jsonl"
    base = ["annotate", "--annotator", "rules", "--quiet", "--data", src]
    _refused(capsys, base + ["--out", same, "--report", same], ["--out", "--report"], src)
    assert not same.exists()
    _refused(capsys, base + ["--out", tmp_path / "o.jsonl", "--report", src], ["--report", "--data"], src)
    _refused(capsys, base + ["--out", src], ["--out", "--data"], src)
    _refused(capsys, base + ["--out", same, "--cache", same], ["--out", "--cache"], src)
    # distinct paths still work
    assert main([str(x) for x in base + ["--out", same, "--report", tmp_path / "r.json"]]) == 0
    assert same.is_file() and (tmp_path / "r.json").is_file()


def test_bits_outputs_are_distinct_and_outside_the_model(capsys, tmp_path):
    bb = tmp_path / "bb.json"
    _refused(
        capsys,
        [
            "bits",
            "--model",
            "toy",
            "--sensitivity",
            "none",
            "--budget",
            "4",
            "--out",
            bb,
            "--gptqmodel",
            bb,
            "--llmcompressor",
            bb,
        ],
        ["--out", "--gptqmodel"],
    )
    _refused(
        capsys,
        ["bits", "--model", "toy", "--sensitivity", "none", "--budget", "4", "--out", bb, "--llmcompressor", bb],
        ["--out", "--llmcompressor"],
    )
    assert not bb.exists()
    m = _model_dir(tmp_path)
    _refused(
        capsys,
        ["bits", "--model", m, "--sensitivity", "none", "--budget", "4", "--out", m / "config.json"],
        ["--out", "--model"],
        m,
    )


def test_check_paths_aliases_and_the_toy_folder(tmp_path):
    from lrm_interp.cli.common import CliError, check_paths, model_input
    from lrm_interp.toy import toy_model_dir

    check_paths({"--out": tmp_path / "o"}, {"--model": "not-a-path", "--data": None})  # not paths: ignored
    # the toy alias reads the shipped folder: an input folder too (checked without running a command,
    # which would write into it if the check ever broke)
    with pytest.raises(CliError, match="--out .* --model"):
        check_paths({"--out": toy_model_dir() / "config.json"}, {"--model": model_input("toy")})


def test_ctrl_c_prints_one_line_and_returns_130(capsys, monkeypatch, tmp_path):
    def interrupted(a):
        raise KeyboardInterrupt

    real = cli_main.build_parser

    def parser():
        p = real()
        p._subparsers._group_actions[0].choices["parse"].set_defaults(fn=interrupted)
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser)
    monkeypatch.delenv("LRM_INTERP_DEBUG", raising=False)
    assert main(["parse", "--data", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 130
    err = capsys.readouterr().err
    assert err == "lrm-interp parse: interrupted; nothing was written (--out is unchanged)\n"
