"""One name per concept on the command line, old spellings kept as deprecated aliases; the toy
stage is a library (its command-line options live in ``lrm_interp/cli/toy.py``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lrm_interp
from lrm_interp.cli.main import build_parser, main

PKG = Path(lrm_interp.__file__).resolve().parent


@pytest.mark.parametrize(
    "cmd", [["bench", "run", "--model", "toy", "--out", "o"], ["bench", "score", "--outputs", "o"]]
)
def test_bench_per_family_and_its_deprecated_alias(cmd, capsys):
    """``bench run|score --per-family`` is the name of ``toy eval|traces``; ``--toy-n`` still works
    for one release, with a note naming the new flag."""
    parser = build_parser()
    a = parser.parse_args(cmd + ["--tasks", "math"])
    assert a.per_family == 30 and not hasattr(a, "toy_n")
    assert parser.parse_args(cmd + ["--tasks", "math", "--per-family", "4"]).per_family == 4
    assert capsys.readouterr().err == ""
    assert parser.parse_args(cmd + ["--tasks", "math", "--toy-n", "3"]).per_family == 3
    assert capsys.readouterr().err.strip() == "lrm-interp: note: --toy-n is deprecated; use --per-family (same meaning)"
    with pytest.raises(SystemExit) as e:  # the new flag's range check, naming the old spelling
        parser.parse_args(cmd + ["--tasks", "math", "--toy-n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --toy-n: must be an integer >= 1, got 0" in err and "deprecated" not in err


def test_bench_per_family_sets_the_toy_problems(capsys):
    from lrm_interp.cli.bench import _tasks_and_items

    for flag in ("--per-family", "--toy-n"):
        a = build_parser().parse_args(["bench", "score", "--outputs", "o", "--tasks", "math", "logic", flag, "2"])
        items = _tasks_and_items(a)
        assert {t: len(v) for t, v in items.items()} == {"math": 2, "logic": 2}


def test_bench_help_shows_the_new_name(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "run", "--help"])
    out = capsys.readouterr().out
    assert "--per-family N" in out and "deprecated spelling of --per-family" in out


NOTE = "lrm-interp: note: {old} is deprecated; use {new} (same meaning)"


@pytest.mark.parametrize(
    "cmd,old,new",
    [
        (["annotate", "--out", "o.jsonl"], "--in", "--data"),
        (["annotate", "train", "--out", "a.safetensors"], "--gold", "--data"),
        (["bench", "run", "--model", "toy", "--tasks", "aime", "--out", "o"], "--data", "--task-data"),
        (["bench", "score", "--outputs", "o", "--tasks", "aime"], "--data", "--task-data"),
    ],
)
def test_input_flags_have_one_name_with_deprecated_aliases(cmd, old, new, capsys):
    """The input traces (or outputs) of a command are ``--data`` everywhere, benchmark task files
    ``--task-data`` (``bench`` as ``study``); ``annotate --in``, ``annotate train --gold`` and
    ``bench --data`` still work for one release, with a note naming the new flag."""
    parser = build_parser()
    dest = new.lstrip("-").replace("-", "_")
    assert getattr(parser.parse_args(cmd + [new, "x"]), dest) == "x"
    assert capsys.readouterr().err == ""
    assert getattr(parser.parse_args(cmd + [old, "y"]), dest) == "y"
    assert capsys.readouterr().err.strip() == NOTE.format(old=old, new=new)


def test_every_input_traces_flag_is_data():
    """The commands that read traces (or model outputs) name that input ``--data``, the ones that
    read benchmark task files ``--task-data``; ``annotate agree`` keeps ``--gold`` / ``--pred`` (a
    reference and the annotation scored against it)."""
    from test_cli import _walk

    def flags(path):
        p = dict(_walk(build_parser()))[tuple(path)]
        return {s for a in p._actions for s in a.option_strings}

    for path in (["attribute"], ["parse"], ["study"], ["protect"], ["annotate"], ["annotate", "train"]):
        assert "--data" in flags(path), path
    for path in (["study"], ["bench", "run"], ["bench", "score"]):  # benchmark task files
        assert "--task-data" in flags(path), path
    assert {"--gold", "--pred"} <= flags(["annotate", "agree"]) and "--data" not in flags(["annotate", "agree"])


def test_annotate_endpoint_model_and_its_deprecated_alias(capsys):
    """The served LLM of ``annotate`` is ``--endpoint-model`` (the shared endpoint flags);
    ``--model`` still works for one release, with a note."""
    parser = build_parser()
    base = ["annotate", "--annotator", "llm", "--data", "x", "--out", "o.jsonl"]
    assert parser.parse_args(base + ["--endpoint-model", "gpt-4o"]).endpoint_model == "gpt-4o"
    assert capsys.readouterr().err == ""
    assert parser.parse_args(base + ["--model", "gpt-4o"]).endpoint_model == "gpt-4o"
    assert capsys.readouterr().err.strip() == NOTE.format(old="--model", new="--endpoint-model")


def test_annotate_llm_without_a_model_names_the_new_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LRM_INTERP_LLM_MODEL", raising=False)
    src = tmp_path / "o.jsonl"
    src.write_text('{"prompt": "q", "response": "Okay.</think>A"}\n')
    assert main(["annotate", "--annotator", "llm", "--data", str(src), "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "--annotator llm needs --endpoint-model NAME" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_bench_endpoint_model_implies_the_openai_backend(capsys):
    """``bench run --endpoint-model NAME`` is a served model (``--backend openai`` implied);
    ``--model`` a local one. ``--backend openai --model NAME`` (the old spelling) still works, with
    a note; the two together, or ``--endpoint-model`` with a local backend, are refused."""
    from lrm_interp.cli.bench import _models

    parser = build_parser()
    base = ["bench", "run", "--tasks", "math", "--out", "o"]
    a = parser.parse_args(base + ["--endpoint-model", "a", "--endpoint-model", "b"])
    assert _models(a) == ["a", "b"] and a.backend == "openai"
    a = parser.parse_args(base + ["--model", "toy"])
    assert _models(a) == ["toy"] and a.backend == "hf"
    assert capsys.readouterr().err == ""
    a = parser.parse_args(base + ["--backend", "openai", "--model", "served"])
    assert _models(a) == ["served"] and a.backend == "openai"
    assert capsys.readouterr().err.strip() == (
        "lrm-interp: note: --backend openai --model is deprecated; use --endpoint-model (same meaning)"
    )
    for argv, needle in (
        (["--model", "toy", "--endpoint-model", "x"], "exclude each other"),
        (["--backend", "vllm", "--endpoint-model", "x"], "not one for --backend vllm"),
        ([], "--model DIR|ALIAS (a local model) or --endpoint-model NAME"),
    ):
        assert main(base + argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_annotate_and_bench_help_show_the_new_names(capsys):
    for cmd, shown in (
        (["annotate"], ("--data OUTPUTS", "--endpoint-model NAME", "deprecated spelling of --data")),
        (["annotate", "train"], ("--data PATH", "deprecated spelling of --data")),
        (["bench", "run"], ("--endpoint-model NAME", "--model DIR|ALIAS", "--task-data DIR|FILE")),
    ):
        with pytest.raises(SystemExit):
            main(cmd + ["--help"])
        out = " ".join(capsys.readouterr().out.split())
        for s in shown:
            assert s in out, (cmd, s)


def test_the_toy_stage_takes_no_argparse_namespace():
    """``lrm_interp/toy/`` has library functions (keywords, ``DistillConfig``); the flags, their
    checks and the commands are ``lrm_interp/cli/toy.py``'s."""
    for path in sorted((PKG / "toy").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "argparse" not in imported, f"{path.name} imports argparse"
    import lrm_interp.cli.toy as cli_toy

    assert callable(cli_toy.add_train_args) and callable(cli_toy.add_distill_args)


def test_old_module_entry_point_names_the_command(tmp_path):
    """``python -m lrm_interp.toy.train`` (the old entry point) trains nothing: it prints the
    ``lrm-interp toy train`` command with the same options and exits non-zero."""
    r = subprocess.run(
        [sys.executable, "-m", "lrm_interp.toy.train", "--out", str(tmp_path / "my toy"), "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().endswith(f"lrm-interp toy train --out '{tmp_path / 'my toy'}' --steps 5")
    assert not (tmp_path / "my toy").exists()
