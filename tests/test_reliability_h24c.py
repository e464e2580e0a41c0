"""H24 cases of the study folder, ``compare``, ``--scores``, the annotation cache and ``python -m``:

- H24-NOOUTCOMES: a study folder that lost ``study.json`` and ``outcomes.safetensors`` was still "the
  compare result" (its ``shift.csv``); its ``ranking.csv`` / ``report.html`` tell it is a study's.
- H24-REORDSTUDY: a study resumed with the same traces in another order was refused as "other
  traces"; the refusal now says they are the same traces in another order, and which order.
- H24-SCORESSTUDY: ``protect`` / ``bits --scores <study folder>`` advised a new ``attribute`` run
  instead of the study's own attribution folders.
- H24-CACHEDIR: a cache entry that is a folder stopped ``annotate`` after its work with "a folder:
  never replaced by a file; choose a file path", a path the user never chose.
- H24-PYM: ``python -m lrm_interp`` failed (no ``__main__``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import TINY_STUDY, cli_env, copied, err_line, folder_files, run_cli, tiny_study

from lrm_interp._io import finished_result
from lrm_interp.data.annotators.driver import annotate_dataset, load_outputs
from lrm_interp.data.annotators.r1 import R1RuleAnnotator
from lrm_interp.data.traces import ReasoningDataset
from lrm_interp.experiments.study import run_study
from lrm_interp.toy.tasks import generate_dataset

STUDY = TINY_STUDY


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """``(folder, model, tokenizer, traces)`` of one finished study over 6 traces (never changed)."""
    return tiny_study(tmp_path_factory.mktemp("h24c") / "st", families=2)


def _copy(finished, tmp_path: Path, name: str) -> Path:
    return copied(finished[0], tmp_path / name)


def test_a_study_without_study_json_and_outcomes_is_still_a_study_folder(finished, tmp_path):
    out = _copy(finished, tmp_path, "noout")
    (out / "study.json").unlink()
    (out / "outcomes.safetensors").unlink()
    assert (out / "shift.csv").is_file() and finished_result(out).kind == "study"  # was "compare"
    (out / "ranking.csv").unlink()  # report.html is a study's only too (the study writes it via the CLI)
    (out / "report.html").write_text("<html></html>", encoding="utf-8")
    assert finished_result(out).kind == "study"
    _, model, tok, traces = finished
    before = folder_files(out)
    with pytest.raises(ValueError, match="is not a study folder \\(no study.json\\) but holds attribution_fp32/"):
        run_study(model, traces, out, tokenizer=tok, **STUDY)
    assert folder_files(out) == before
    assert len(run_study(model, traces, out, tokenizer=tok, overwrite=True, **STUDY).rows) == 5


def test_a_study_resumed_on_reordered_traces_says_so(finished, tmp_path):
    out = _copy(finished, tmp_path, "reorder")
    _, model, tok, traces = finished
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        run_study(model, ReasoningDataset(list(traces)[::-1]), out, tokenizer=tok, **STUDY)
    assert "holds another study (differs in the same traces in another order: a study pairs its rows trace by " in (
        str(e.value)
    )
    assert "give them in the order of" in str(e.value) and "other traces" not in str(e.value)
    with pytest.raises(ValueError, match="differs in other traces"):  # really other traces: as before
        run_study(model, generate_dataset(2, seed=7), out, tokenizer=tok, **STUDY)
    assert folder_files(out) == before


def test_scores_given_a_study_folder_points_at_its_attributions(finished, tmp_path, capsys):
    for argv in (
        ["bits", "--scores", finished[0], "--model", "toy", "--budget", "3.5", "--out", tmp_path / "b.json"],
        ["protect", "--scores", finished[0], "--model", "toy", "--out", tmp_path / "m.safetensors", "--quiet"],
    ):
        capsys.readouterr()
        assert run_cli(argv) == 2
        line = err_line(capsys)
        assert (
            f"--scores {finished[0]}: attribution.json is missing, not an attribution result folder; it is the "
            f"study result {finished[0]}, whose attribution results are attribution_fp32 (the original model) and "
            f"attribution_rtn3 (its uniform compressed copy): give one as --scores (e.g. --scores "
            f"{finished[0] / 'attribution_fp32'})"
        ) in line, line
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "m.safetensors").exists()


def test_a_cache_entry_that_is_a_folder_is_refused_before_any_work(tmp_path):
    data = tmp_path / "outs.jsonl"
    rows = [
        {"id": "math/0", "prompt": "Q", "response": "Okay, 2 + 3 = 5. Wait, let me check. Yes.\n</think>\n5"},
        {"id": "math/1", "prompt": "Q", "response": "Hmm, 4 + 4 = 8. So 8.\n</think>\n8"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cache = tmp_path / "C"
    annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    entry = next(p for p in cache.glob("*.json") if json.loads(p.read_text())["trace_id"] == "math/1")
    entry.unlink()
    entry.mkdir()
    before = folder_files(cache)
    with pytest.raises(ValueError) as e:
        annotate_dataset(load_outputs(data), R1RuleAnnotator(), cache_dir=cache, progress=False)
    assert str(e.value) == (
        f"cache_dir (--cache) {cache}: the cache entry of trace 'math/1', {entry}, is a folder, not a file annotate "
        "wrote: remove it, or use another cache folder"
    )
    assert folder_files(cache) == before and entry.is_dir()


def test_python_dash_m_lrm_interp_runs_the_command_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "lrm_interp", "--help"], capture_output=True, text=True, env=cli_env(), cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: lrm-interp ") and "study" in p.stdout
