"""The benchmark suite loop (models × variants × backend) is a library function: the CLI's
``bench run`` and Python users get the same folders, checks and refusals."""

from __future__ import annotations

import json

import pytest

from lrm_interp.compress.specs import parse_compression
from lrm_interp.data.benchmarks import load
from lrm_interp.evaluation.backends import GenerationSettings
from lrm_interp.evaluation.bench_suite import SuiteConfig, check_toy_world, model_tag, run_suite, saved_model_dir
from lrm_interp.model.loading import load_model
from lrm_interp.toy import toy_model_dir


def _settings() -> GenerationSettings:
    return GenerationSettings(temperature=0.0, max_new_tokens=24, batch_size=4)


def test_one_folder_per_model_and_variant(tmp_path):
    items = {"math": load("math", None, per_family=2, toy_seed=2)}
    cfg = SuiteConfig(_settings(), (parse_compression("none"), parse_compression("rtn:4:sym")))
    runs = run_suite(["toy"], items, tmp_path, cfg, progress=False)
    assert [r.model for r in runs] == ["toy", "toy-rtn4sym"]
    assert [t.generated for r in runs for t in r.tasks] == [2, 2]
    meta = json.loads((tmp_path / "toy-rtn4sym" / "run.json").read_text())
    assert meta["base_model"] == "toy" and meta["tag"] == "toy-rtn4sym"
    assert meta["compression"]["symmetric"] is True and meta["compression"]["bits"] == 4
    assert len(list((tmp_path / "toy" / "outputs" / "math").glob("*.txt"))) == 2
    again = run_suite(["toy"], items, tmp_path, cfg, progress=False)  # resumes, generates nothing
    assert [(t.resumed, t.generated) for r in again for t in r.tasks] == [(2, 0), (2, 0)]


def test_refusals_come_before_any_write(tmp_path):
    items = {"knowledge": load("knowledge", None, per_family=1, toy_seed=2, toy_people=64)}
    cfg = SuiteConfig(_settings())
    with pytest.raises(ValueError, match="learned a fact table of 512 people.*--toy-people 512"):
        run_suite(["toy"], items, tmp_path / "out", cfg, toy_people=64, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="need calibration data"):
        run_suite(["toy"], items, tmp_path / "out", SuiteConfig(_settings(), (parse_compression("gptq:4"),)))
    with pytest.raises(ValueError, match="local models only"):
        SuiteConfig(_settings(), (parse_compression("rtn:4"),), backend="openai")
    with pytest.raises(ValueError, match="backend must be one of"):
        SuiteConfig(_settings(), backend="tgi")
    model, _ = load_model("toy")
    check_toy_world(model, "toy", {"temporal": []}, toy_people=64)  # no toy family asked: nothing to check


def test_vllm_reads_an_unmodified_model_from_its_folder():
    model, _ = load_model("toy")
    assert saved_model_dir(model) == str(toy_model_dir())
    import torch

    assert saved_model_dir(torch.nn.Linear(2, 2)) is None
    assert model_tag("/a/b/My Model/") == "My_Model" and model_tag("toy") == "toy"


@pytest.mark.parametrize("python", ["/nonexistent/bin/python", "/bin/false"])
def test_a_vllm_python_that_cannot_run_the_worker_is_named(python):
    """A missing interpreter is named at start; one that exits at once reports the worker's exit
    code — never a later AttributeError from closing the log (the old symptom)."""
    from lrm_interp.evaluation.backends import VLLMBackend

    model, tok = load_model("toy")
    backend = VLLMBackend(str(toy_model_dir()), tok, python=python)
    want = (
        (FileNotFoundError, "cannot start the vLLM worker with Python")
        if "nonexistent" in python
        else (RuntimeError, r"exited while loading the model \(exit code 1\)")
    )
    with pytest.raises(want[0], match=want[1]), backend:
        backend.generate(["Compute 1 + 1."], _settings())
