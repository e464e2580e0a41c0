"""Shared helpers of the CLI reliability tests: run ``lrm-interp`` in-process, read its one-line
error, make a small gold trace file and its attribution, edit trace files, fingerprint a folder's files,
race two CLI runs into one output (:func:`race`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from lrm_interp.cli.main import main


def run_cli(argv) -> int:
    """``lrm-interp`` with ``argv`` (any values, turned into strings) in this process; its exit status."""
    try:
        return main([str(x) for x in argv])
    except SystemExit as e:
        return int(e.code or 0)


def err_line(capsys) -> str:
    """The command's stderr, which must be one line (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def toy_gold(tmp_path: Path, name: str = "gold.jsonl", n: int = 1, seed: int | None = None) -> Path:
    """``toy traces --gold``: ``n`` gold-annotated toy traces per family in ``tmp_path / name``."""
    out = tmp_path / name
    extra = [] if seed is None else ["--seed", seed]
    assert run_cli(["toy", "traces", "--gold", "--per-family", n, *extra, "--out", out]) == 0
    return out


def toy_attribution(tmp_path: Path) -> tuple[Path, Path]:
    """``(gold traces, attribution folder)``: :func:`toy_gold` and ``attribute --model toy`` of it."""
    gold = toy_gold(tmp_path)
    a = tmp_path / "A"
    assert run_cli(["attribute", "--model", "toy", "--data", gold, "--out", a, "--quiet"]) == 0
    return gold, a


def folder_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path (what a refused command must not change)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rewrite_traces(src: Path, dst: Path, edit) -> Path:
    """``dst``: the traces of the JSON lines file ``src``, ``edit(list of dicts)`` applied to them."""
    lines = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines()]
    dst.write_text("".join(json.dumps(d) + "\n" for d in edit(lines)), encoding="utf-8")
    return dst


def shifted(lines: list[dict]) -> list[dict]:
    """One character before each response, the spans moved with it: the same ids, other contents."""
    for d in lines:
        d["response"] = "x" + d["response"]
        for s in d["spans"]:
            s["start"] += 1
            s["end"] += 1
    return lines


#: a CLI run in a subprocess whose method ``sys.argv[3]`` (``module:Class.method``) first waits at a
#: barrier: it touches ``<barrier>/<name>`` and waits (up to ``sys.argv[4]`` seconds) until another
#: run has touched its file too, so that both runs have passed their checks before either writes
RACER = r"""
import importlib, sys, time
from pathlib import Path

barrier, name, target, wait = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
module, _, attr = target.partition(":")
cls_name, _, meth = attr.partition(".")
cls = getattr(importlib.import_module(module), cls_name)
real = getattr(cls, meth)

def waiting(self, *a, **k):
    (barrier / name).touch()
    end = time.time() + wait
    while len(list(barrier.iterdir())) < 2 and time.time() < end:
        time.sleep(0.05)
    return real(self, *a, **k)

setattr(cls, meth, waiting)
from lrm_interp.cli.main import main
sys.exit(main(sys.argv[5:]))
"""


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: one thread, offline, no debug tracebacks."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LRM_INTERP_DEBUG": ""}


def race(barrier: Path, target: str, wait: float, *argvs: list) -> list[tuple[int, str]]:
    """Start one CLI run per ``argvs`` at once (:data:`RACER`), wait for all; ``(exit status, stderr)`` each."""
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(barrier), str(i), target, str(wait), *map(str, argv)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for i, argv in enumerate(argvs)
    ]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        out.append((p.returncode, err.strip()))
    return out


#: the settings of :func:`tiny_study` (a resume of it passes the same)
TINY_STUDY = dict(model_ref="tiny", bits=3, resamples=50, progress=False)


def tiny_study(out: Path, families: int = 2):
    """``(out, model, tokenizer, traces)``: a finished ``run_study`` of the tiny Llama on
    ``families`` toy traces per family (seed 4242), written to ``out`` (tests copy it: :func:`copied`)."""
    from lrm_interp.experiments.study import run_study
    from lrm_interp.testing import byte_tokenizer, tiny_model
    from lrm_interp.toy.tasks import generate_dataset

    traces = generate_dataset(families, seed=4242)
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    run_study(model, traces, out, tokenizer=tok, **TINY_STUDY)
    return out, model, tok, traces


def copied(src: Path, dst: Path) -> Path:
    """``dst``: a copy of the folder ``src`` (a test's own copy of a shared result)."""
    import shutil

    shutil.copytree(src, dst)
    return dst
