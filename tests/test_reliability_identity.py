"""Regression tests: what identifies a result's model and inputs. A resumed attribution never reuses
traces cut at another context length, the same weights under another model config are another
model (attribution and benchmark runs), a benchmark run never overwrites outputs it did not write,
and ``bits`` refuses the scores of another model as ``protect`` does."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.resume import ResumeMismatchError
from lrm_interp.cli.main import main
from lrm_interp.data.benchmarks import BenchItem
from lrm_interp.evaluation.backends import GenerationSettings, HFBackend
from lrm_interp.evaluation.bench_run import RUN_FILE, run_benchmark
from lrm_interp.model.provenance import config_fingerprint, model_provenance, weights_fingerprint
from lrm_interp.testing import byte_tokenizer, tiny_model


def _attr(model, ds, tok, out=None, **kw):
    return lrm_interp.attribute(model, ds, tokenizer=tok, out_dir=out, progress=False, **kw)


def _with_context(model, n):
    m = copy.deepcopy(model)
    m.config.max_position_embeddings = n
    return m


def _strip_run_key(out, *keys):
    """Make ``out/partial`` look written by an older version: ``run.json`` without ``keys``, and the
    per-trace partials without the run key they carry since H9-RK (an older version wrote none)."""
    from lrm_interp._io import read_safetensors, write_safetensors
    from lrm_interp.attribution.resume import PARTIAL_FORMAT

    p = out / "partial" / "run.json"
    d = json.loads(p.read_text())
    for k in keys:
        d.pop(k, None)
    p.write_text(json.dumps(d))
    for f in (out / "partial").glob("*/*.safetensors"):
        tensors, meta = read_safetensors(f, (PARTIAL_FORMAT,), "partial")
        write_safetensors(f, tensors, {"format": meta["format"], "key": meta["key"]})


def test_resume_on_a_model_with_another_context_is_refused(tmp_path, tokenizer):
    """F1: traces cut at 160 positions are never reused by a run whose model has a 1024 context."""
    ds = synthetic_traces(3)  # ~250 tokens each
    base = tiny_model("llama", seed=1)
    short = _with_context(base, 160)
    assert weights_fingerprint(short) == weights_fingerprint(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _attr(short, ds, tokenizer, tmp_path, overlong="truncate")
        with pytest.raises(ResumeMismatchError, match=r"finished result .*another context cut \(limit 160"):
            _attr(base, ds, tokenizer, tmp_path, overlong="truncate")
        (tmp_path / "attribution.json").unlink()
        with pytest.raises(ResumeMismatchError, match=r"partial results .*another context cut \(limit 160"):
            _attr(base, ds, tokenizer, tmp_path, overlong="truncate")


def test_partials_of_traces_cut_elsewhere_are_recomputed(tmp_path, tokenizer):
    """F1: even where the run key does not say the context (partials of an older version), a trace
    cut at another length is recomputed (its partial key names the cut), so the result equals a
    fresh run instead of all-zero rankings for the behaviours that were cut off."""
    ds = synthetic_traces(3)
    base = tiny_model("llama", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _attr(_with_context(base, 160), ds, tokenizer, tmp_path, overlong="truncate")
        fresh = _attr(base, ds, tokenizer, overlong="truncate")
    (tmp_path / "attribution.json").unlink()
    _strip_run_key(tmp_path, "context", "config_fingerprint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _attr(base, ds, tokenizer, tmp_path, overlong="truncate")
    assert again.behaviors == fresh.behaviors
    assert torch.equal(again.scores, fresh.scores)
    assert again.provenance["resume"]["dom"] == {"computed": 3, "reused": 0, "stale": 3}
    assert (again.scores.abs().sum(dim=1) > 0).all()
    assert any("model config's fingerprint" in str(w.message) for w in caught)


def test_same_weights_other_config_is_another_model(tmp_path, tokenizer):
    """F4: rms_norm_eps changed in the config, same weights: the attribution run is refused."""
    ds = synthetic_traces(3)
    model = tiny_model("llama", seed=1)
    other = copy.deepcopy(model)
    other.config.rms_norm_eps = 1e-2
    assert weights_fingerprint(other) == weights_fingerprint(model)
    assert config_fingerprint(other) != config_fingerprint(model)
    p = model_provenance(model, tokenizer)
    assert p["config_fingerprint"] == config_fingerprint(model)
    # names, versions and the dtype (recorded separately) are not part of it
    renamed = copy.deepcopy(model)
    renamed.config._name_or_path = "elsewhere/model"
    assert config_fingerprint(renamed) == config_fingerprint(model)
    _attr(model, ds, tokenizer, tmp_path)
    with pytest.raises(ResumeMismatchError, match="finished result of a run with another model config"):
        _attr(other, ds, tokenizer, tmp_path)
    (tmp_path / "attribution.json").unlink()
    with pytest.raises(ResumeMismatchError, match="partial results of a run with another model config"):
        _attr(other, ds, tokenizer, tmp_path)


def test_results_without_config_fingerprint_resume_with_a_warning(tmp_path, tokenizer):
    """F4: folders written before the config fingerprint was recorded still resume (one warning)."""
    ds = synthetic_traces(3)
    model = tiny_model("llama", seed=1)
    a = _attr(model, ds, tokenizer, tmp_path)
    res = tmp_path / "attribution.json"
    d = json.loads(res.read_text())
    del d["provenance"]["model"]["config_fingerprint"]
    del d["provenance_sha256"]  # an older version recorded neither
    res.write_text(json.dumps(d))
    _strip_run_key(tmp_path, "config_fingerprint", "context")
    with pytest.warns(UserWarning, match="model config's fingerprint"):
        b = _attr(model, ds, tokenizer, tmp_path)
    assert torch.equal(a.scores, b.scores)
    assert b.provenance["resume"]["dom"]["reused"] == 3


def _items(n=2):
    return {
        "math": [BenchItem(f"math/{j}", "math", j, f"What is {j}+1?", str(j + 1), problem={"j": j}) for j in range(n)]
    }


def test_bench_run_refuses_same_weights_other_config(tmp_path):
    """F4: one bench folder never mixes outputs of one set of weights under two configs."""
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    st = GenerationSettings(max_new_tokens=3, temperature=0)
    info = {"weights_fingerprint": "aaa", "config_fingerprint": "c1"}
    run_benchmark(HFBackend(model, tok), _items(), tmp_path, settings=st, progress=False, model_info=info)
    before = (tmp_path / RUN_FILE).read_text()
    with pytest.raises(ValueError, match=r"another model config \(config fingerprint c1 there, c2 now"):
        run_benchmark(
            HFBackend(model, tok),
            _items(),
            tmp_path,
            settings=st,
            progress=False,
            model_info={**info, "config_fingerprint": "c2"},
        )
    assert (tmp_path / RUN_FILE).read_text() == before
    old = tmp_path / "old"  # written before the config fingerprint was recorded: accepted, one warning
    run_benchmark(
        HFBackend(model, tok), _items(), old, settings=st, progress=False, model_info={"weights_fingerprint": "aaa"}
    )
    with pytest.warns(UserWarning, match="config's fingerprint"):
        rep = run_benchmark(HFBackend(model, tok), _items(), old, settings=st, progress=False, model_info=info)
    assert rep.tasks[0].resumed == 2


def test_bench_run_never_overwrites_a_foreign_paper_layout(tmp_path):
    """F13: outputs/<task>/*.txt without run.json (written by someone else) are refused, untouched."""
    mine = tmp_path / "outputs" / "math" / "0.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own output")
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    with pytest.raises(ValueError, match=r"not a benchmark run folder \(no run.json\) .*outputs/math/0.txt"):
        run_benchmark(
            HFBackend(model, tok), _items(), tmp_path, settings=GenerationSettings(max_new_tokens=3), progress=False
        )
    assert mine.read_text() == "my own output"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "outputs",
        "outputs/math",
        "outputs/math/0.txt",
    ]


def test_bits_refuses_scores_of_another_model(tmp_path, capsys):
    """F10: ``bits --model toy --scores A`` with A computed on other weights is refused, as ``protect``
    refuses the same pair."""
    from lrm_interp.model.loading import load_model

    traces = tmp_path / "t.jsonl"
    assert main(["toy", "traces", "--gold", "--per-family", "1", "--out", str(traces)]) == 0
    other, tok = load_model("toy")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    scores = tmp_path / "A"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lrm_interp.attribute(other, str(traces), tokenizer=tok, out_dir=scores, progress=False, overlong="truncate")
    capsys.readouterr()
    out = tmp_path / "bits.json"
    rc = main(["bits", "--model", "toy", "--scores", str(scores), "--budget", "3.25", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "computed on another model" in err and "weights fingerprint" in err
    assert not out.exists()
