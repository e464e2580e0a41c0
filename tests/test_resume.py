"""Regression tests: a reused out_dir never returns another run's numbers; bad input fails early
and clearly (non-finite values, unscorable spans, invalid UTF-8, late option validation)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.resume import ResumeMismatchError
from lrm_interp.compress.quant.apply import quantize_model_
from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace, TraceFormatError
from lrm_interp.model.provenance import NonFiniteError, weights_fingerprint
from lrm_interp.testing import byte_tokenizer, tiny_model


def _attr(model, ds, tok, out=None, **kw):
    return lrm_interp.attribute(model, ds, tokenizer=tok, out_dir=out, progress=False, **kw)


def test_other_weights_in_same_folder_are_refused(tmp_path, tokenizer):
    ds = synthetic_traces(3)
    a = _attr(tiny_model("llama", seed=1), ds, tokenizer, tmp_path)
    with pytest.raises(ResumeMismatchError, match="other model weights"):
        _attr(tiny_model("llama", seed=2), ds, tokenizer, tmp_path)
    # the seed-2 numbers really differ (so reusing seed 1's partials would have been wrong)
    b = _attr(tiny_model("llama", seed=2), ds, tokenizer)
    assert not torch.equal(a.scores, b.scores)
    assert a.provenance["model"]["weights_fingerprint"] != b.provenance["model"]["weights_fingerprint"]


def test_finished_result_is_never_replaced_by_another_run(tmp_path, tokenizer):
    """Issue 22, loss case 3: with ``partial/`` deleted, a run with other settings or weights still
    cannot replace the finished result in the folder; the same run may (it reproduces it)."""
    import shutil

    ds = synthetic_traces(3)
    model = tiny_model("llama", seed=1)
    a = _attr(model, ds, tokenizer, tmp_path)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    shutil.rmtree(tmp_path / "partial")
    with pytest.raises(ResumeMismatchError, match=r"finished result of a run with other settings .*k_context"):
        _attr(model, ds, tokenizer, tmp_path, k_context=2)
    with pytest.raises(ResumeMismatchError, match="finished result of a run with other model weights"):
        _attr(tiny_model("llama", seed=2), ds, tokenizer, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == saved
    b = _attr(model, ds, tokenizer, tmp_path)  # the same run is allowed and gives the same numbers
    assert torch.equal(a.scores, b.scores)
    (tmp_path / "attribution.json").write_text("{not json")
    shutil.rmtree(tmp_path / "partial")
    with pytest.raises(ResumeMismatchError, match="not a readable attribution result"):
        _attr(model, ds, tokenizer, tmp_path)


def test_quantized_copy_differs_and_shift_is_not_zero(tmp_path, tokenizer):
    ds = synthetic_traces(3)
    model = tiny_model("llama", seed=0)
    q = copy.deepcopy(model)
    quantize_model_(q, bits=2, group_size=32, progress=False)
    assert weights_fingerprint(q) != weights_fingerprint(model)
    a = _attr(model, ds, tokenizer, tmp_path)
    with pytest.raises(ResumeMismatchError, match="other model weights"):
        _attr(q, ds, tokenizer, tmp_path)
    b = _attr(q, ds, tokenizer, tmp_path / "q")
    assert b.provenance["model"]["quantization"]["bits"] == 2  # the record says how it was compressed
    assert a.provenance["model"]["quantization"] is None
    shift = lrm_interp.compare(a, b)
    assert float(shift.delta.abs().max()) > 1e-4


def test_other_tokenizer_is_refused(tmp_path):
    ds = synthetic_traces(2)
    tok1, tok2 = byte_tokenizer(), byte_tokenizer(extra_special=("<think>",))
    model = tiny_model("llama", vocab_size=260)
    _attr(model, ds, tok1, tmp_path)
    with pytest.raises(ResumeMismatchError, match="another tokenizer"):
        _attr(model, ds, tok2, tmp_path)


def test_edited_spans_under_same_ids_are_recomputed(tmp_path, tokenizer, tiny_llama):
    ds = synthetic_traces(4)
    _attr(tiny_llama, ds, tokenizer, tmp_path)
    t0 = ds[0]
    moved = [BehaviorSpan(s.behavior, max(0, s.start - 3), s.end) for s in t0.spans]  # edited spans, same id
    ds2 = ReasoningDataset([t0.with_spans(moved), *list(ds)[1:]])
    # the finished result of the old spans is replaced only when asked (H21-ATTDATA)
    with pytest.raises(ResumeMismatchError, match=rf"1 of 4 traces edited under the same id .*'{t0.id}'.*--overwrite"):
        _attr(tiny_llama, ds2, tokenizer, tmp_path)
    resumed = _attr(tiny_llama, ds2, tokenizer, tmp_path, overwrite=True)
    fresh = _attr(tiny_llama, ds2, tokenizer)
    assert torch.equal(resumed.scores, fresh.scores)
    r = resumed.provenance["resume"]
    assert r["dom"] == {"computed": 1, "reused": 3, "stale": 1}
    # every AtP partial depends on the steering vectors, which the edit moved: all recomputed
    assert r["atp"] == {"computed": 4, "reused": 0, "stale": 4}
    again = _attr(tiny_llama, ds2, tokenizer, tmp_path)
    assert again.provenance["resume"]["atp"] == {"computed": 0, "reused": 4, "stale": 0}
    assert torch.equal(again.scores, fresh.scores)


def test_options_are_validated_before_any_file_is_written(tmp_path, tokenizer, tiny_llama):
    ds = synthetic_traces(2)
    for bad in (
        {"weighting": "tokens"},
        {"score": "papers"},
        {"mode": "fast"},
        {"k_context": -1},
        {"negatives": "none"},
        {"compute_dtype": "int4"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _attr(tiny_llama, ds, tokenizer, tmp_path, **bad)
    with pytest.raises(TypeError, match="unknown attribution option"):
        _attr(tiny_llama, ds, tokenizer, tmp_path, wieghting="token")
    assert not (tmp_path / "partial").exists()
    res = _attr(tiny_llama, ds, tokenizer, tmp_path, weighting="token")  # the corrected run is not refused
    assert res.provenance["settings"]["weighting"] == "token"
    saved = json.loads((tmp_path / "partial" / "run.json").read_text())
    assert saved["config"] == res.provenance["settings"]


def test_nan_weight_names_the_parameter(tokenizer):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        _attr(model, synthetic_traces(2), tokenizer)


def test_nan_activation_names_site_and_trace(tokenizer):
    model = tiny_model("llama")
    h = model.model.layers[0].self_attn.v_proj.register_forward_hook(lambda m, a, o: o * float("nan"))
    try:
        with pytest.raises(
            NonFiniteError, match=r"trace synth/0: activations at site model\.layers\.0\.self_attn\.v_proj"
        ):
            _attr(model, synthetic_traces(2), tokenizer)
    finally:
        h.remove()


def test_nan_gradient_names_trace_and_behaviour(tokenizer):
    model = tiny_model("llama")

    def poison(m, a, o):
        if o.requires_grad:
            o.register_hook(lambda g: g * float("nan"))

    h = model.model.layers[1].mlp.down_proj.register_forward_hook(poison)
    try:
        with pytest.raises(
            NonFiniteError, match=r"trace synth/0, behaviour backtracking: activation gradients at site"
        ):
            _attr(model, synthetic_traces(2), tokenizer)
    finally:
        h.remove()


def test_unscorable_span_is_counted_and_warned(tiny_llama):
    tok = byte_tokenizer()
    tok.backend_tokenizer.post_processor = None  # no BOS: a span on the first character sits at position 0
    good = synthetic_traces(2)
    bad = ReasoningTrace(
        "first-char",
        "",
        "Wait, x. Hmm, maybe.",
        (BehaviorSpan("backtracking", 0, 1), BehaviorSpan("backtracking", 6, 8)),
    )
    ds = ReasoningDataset([bad, *good])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = _attr(tiny_llama, ds, tok)
    assert any("cannot be scored by attribution patching" in str(x.message) for x in w)
    assert res.provenance["counts"]["unscorable_spans"]["backtracking"] == 1
    sk = [s for s in res.provenance["skipped_spans"] if s["trace"] == "first-char"]
    assert sk == [
        {
            "trace": "first-char",
            "span": 0,
            "behavior": "backtracking",
            "reason": "no predictable token (a one-token span at position 0)",
            "used_by": ["dom"],
        }
    ]
    assert float(res.scores[res.behaviors.index("backtracking")].sum()) > 0  # the other spans still score


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "t.jsonl"
    lines = [json.dumps(t.to_dict()).encode() for t in synthetic_traces(2)]
    p.write_bytes(lines[0] + b"\n" + lines[1] + b"\n" + b'{"id": "x", "response": "caf\xe9"}\n')
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:3: invalid UTF-8"):
        ReasoningDataset.load_jsonl(p)


def test_attribution_result_refuses_non_finite_scores():
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites

    sites = find_sites(tiny_model("llama"))[:2]
    with pytest.raises(ValueError, match="not finite"):
        Attribution(("backtracking",), tuple(sites), torch.tensor([[1.0, float("nan")]]), "attribution")


def test_jsonl_with_byte_order_mark_loads(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(synthetic_traces(1)[0].to_dict()).encode() + b"\n")
    assert [t.id for t in ReasoningDataset.load_jsonl(p)] == ["synth/0"]


def test_tokenizer_fingerprint_ignores_call_state_not_content():
    """A padded or truncating call sets the fast tokenizer's padding / truncation (generate() does, so
    did attribute()); that must not make the same tokenizer look like another one (it made compare
    and resume refuse a model evaluated between two attributions). A changed vocabulary or special
    token still changes the fingerprint."""
    from lrm_interp.model.provenance import tokenizer_fingerprint
    from lrm_interp.toy import load_toy_model

    _, tok = load_toy_model()
    before = tokenizer_fingerprint(tok)
    tok(["a", "a longer text"], padding=True)
    tok("some text", truncation=True, max_length=3, return_offsets_mapping=True)
    tok.backend_tokenizer.enable_padding(pad_id=0, pad_token="<x>")
    assert tokenizer_fingerprint(tok) == before
    tok.add_special_tokens({"additional_special_tokens": ["<new>"]})
    assert tokenizer_fingerprint(tok) != before


def test_finished_result_is_not_replaced_by_other_traces_nor_foreign_files(tmp_path, tokenizer):
    """Hostile run: `attribute --out R` over a finished 36-trace result with 6 other traces exited 0 and
    replaced it; `--out` a folder of the user's own scores.csv overwrote it. Both are refused now;
    the same traces (any order) still rerun."""
    ds = synthetic_traces(4)
    model = tiny_model("llama", seed=1)
    _attr(model, ds, tokenizer, tmp_path / "R")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "R").iterdir() if p.is_file()}
    with pytest.raises(ResumeMismatchError, match=r"other traces \(4 traces there, 2 now"):
        _attr(model, synthetic_traces(2), tokenizer, tmp_path / "R")
    assert {p.name: p.read_bytes() for p in (tmp_path / "R").iterdir() if p.is_file()} == saved
    _attr(model, list(reversed(list(ds))), tokenizer, tmp_path / "R")  # the same traces: allowed
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores.csv").write_text("a,b\n")
    with pytest.raises(ResumeMismatchError, match="not an attribution result folder but holds scores.csv"):
        _attr(model, ds, tokenizer, mine)
    assert (mine / "scores.csv").read_text() == "a,b\n"
    (mine / "scores.csv").unlink()
    (mine / "notes.txt").write_text("kept")
    _attr(model, ds, tokenizer, mine)  # files a run does not write are left alone
    assert (mine / "notes.txt").read_text() == "kept"
