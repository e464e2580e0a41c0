"""H20 cases of ``lrm-interp study`` / :func:`lrm_interp.experiments.study.run_study`:

- H20-STEDIT: a hand-edited row ``value`` in ``study.json`` that ``outcomes.safetensors`` contradicts
  is refused by :meth:`StudyResult.load` and by a resume (it was accepted and recomputed into
  ``results.csv`` / ``recovered``).
- H20-SBUD: a ``budget`` that protects no weight of the model is refused before the attribution,
  with advice ``study`` accepts (no "budget=0"), and no folder left behind.
- H20-BEHAV: traces without a target behaviour are refused before anything is written, in study's
  terms (no ``behaviors=[...]``), so the corrected command is not blocked by a partial folder.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cli_run import folder_files

from lrm_interp.data.traces import ReasoningDataset
from lrm_interp.experiments.study import StudyResult, run_study
from lrm_interp.testing import byte_tokenizer, tiny_model
from lrm_interp.toy.tasks import generate_dataset


@pytest.fixture(scope="module")
def traces():
    return generate_dataset(1, seed=4242)  # 3 toy traces (one per family) with gold spans


def test_edited_row_value_is_refused_by_load_and_resume(tmp_path, traces):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    out = tmp_path / "st"
    run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    study = out / "study.json"
    doc = json.loads(study.read_text(encoding="utf-8"))
    true_value = doc["rows"][1]["value"]
    assert doc["rows"][1]["key"] == "uniform"
    doc["rows"][1]["value"] = 99.0
    study.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    before = folder_files(out)
    with pytest.raises(ValueError) as e:
        StudyResult.load(out)
    msg = str(e.value)
    assert str(study) in msg and "row 'uniform'" in msg and "99.0" in msg and repr(true_value) in msg
    assert "the file was edited or is corrupt" in msg
    with pytest.raises(ValueError, match=r"row 'uniform'.*the file was edited or is corrupt"):
        run_study(model, traces, out, tokenizer=tok, model_ref="tiny", bits=3, resamples=50, progress=False)
    assert folder_files(out) == before  # results.csv, report, outcomes: nothing rewritten from the forged value
    # a row deleted from the finished study: load refuses it (its outcomes are there, H21-STRM)
    doc["rows"][1]["value"] = true_value
    gone = doc["rows"].pop(2)["key"]
    study.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"rows \['{gone}'\] have outcomes in .* but no row"):
        StudyResult.load(out)


def test_budget_protecting_no_weight_is_refused_before_any_work(tmp_path, traces):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    out = tmp_path / "sb"
    with pytest.raises(ValueError) as e:
        run_study(model, traces, out, tokenizer=tok, bits=3, budget=1e-300, progress=False)
    msg = str(e.value)
    assert (
        msg.startswith("budget (--budget) 1e-300 protects 0 of the ")
        and "give a budget above " in msg
        and "protects one weight" in msg
    )
    assert "budget=0" not in msg
    assert not out.exists()


def test_traces_without_target_behaviour_are_refused_before_any_write(tmp_path, traces):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    bare = ReasoningDataset([replace(t, spans=()) for t in traces])
    out = tmp_path / "sn"
    with pytest.raises(ValueError) as e:
        run_study(model, bare, out, tokenizer=tok, bits=3, progress=False)
    msg = str(e.value)
    assert "no target behaviour" in msg and "labels present: none" in msg and "annotate" in msg
    assert "behaviors=" not in msg
    assert not out.exists()
    # the file form: nothing written either, so the corrected command is not blocked
    data = bare.save_jsonl(tmp_path / "nosp.jsonl")
    with pytest.raises(ValueError, match=r"data \(--data\) .*nosp\.jsonl: no target behaviour"):
        run_study(model, data, out, tokenizer=tok, bits=3, progress=False)
    assert not out.exists()
