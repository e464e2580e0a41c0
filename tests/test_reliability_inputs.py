"""Issue 22, "nothing lost, nothing silent": inputs the pipeline cannot take are refused up front
with a message naming them, or handled as the user asked and counted; files changed after they
were written are refused on load.

- traces longer than the model's context: refused (ids, token lengths, limit), or truncated /
  skipped with ``overlong=`` and counted;
- responses over the size limit: refused at load time naming the file and line, or a counted
  skip when annotating;
- every lrm_interp safetensors file (masks, FP16 sidecar, attribution results and their steering
  vectors, partials, trained annotators) carries a SHA-256 of its payload, checked on load;
- a run whose longest trace obviously cannot fit in free memory is refused before any work.
"""

from __future__ import annotations

import json
import struct
import warnings

import pytest
import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp import _io
from lrm_interp.attribution import pipeline
from lrm_interp.attribution.config import AttributionConfig
from lrm_interp.attribution.results import Attribution
from lrm_interp.data.annotate import R1RuleAnnotator, annotate_dataset, annotate_response, load_outputs
from lrm_interp.data.loading import load_dataset
from lrm_interp.data.traces import (
    MAX_RESPONSE_CHARS,
    MAX_RESPONSE_ENV,
    BehaviorSpan,
    ReasoningDataset,
    ReasoningTrace,
    ResponseTooLargeError,
    TraceFormatError,
    response_limit,
)
from lrm_interp.model.forward import context_limit, memory_lower_bound
from lrm_interp.model.sites import find_sites
from lrm_interp.protect import exports
from lrm_interp.protect.encoding import load_masks, save_masks
from lrm_interp.protect.masks import ProtectionMask
from lrm_interp.testing import byte_tokenizer, tiny_model

LIMIT = 200  # the context the tests give the tiny model (synthetic traces are ~245-260 byte tokens)


def _short_model(limit: int = LIMIT):
    m = tiny_model("llama", seed=0)
    m.config.max_position_embeddings = limit
    return m


def _mixed_traces() -> ReasoningDataset:
    """Four synthetic traces over the context and one short one that fits."""
    short = ReasoningTrace(
        "short",
        "Q: 2+2?\n<think>\n",
        "Wait, 2+2 is 4. Hmm, maybe.\n</think>\n4",
        (BehaviorSpan("backtracking", 0, 15), BehaviorSpan("uncertainty-estimation", 16, 27)),
    )
    return ReasoningDataset([*synthetic_traces(4), short], name="mixed")


def _attr(model, ds, **kw):
    return lrm_interp.attribute(model, ds, tokenizer=byte_tokenizer(), progress=False, **kw)


# ------------------------------------------------------------------------------------------- context
def test_context_limit_reads_the_config():
    assert context_limit(tiny_model("llama")) == (1024, "config.max_position_embeddings")
    gpt2 = tiny_model("gpt2")
    gpt2.config.n_positions = 64  # learned position embeddings: GPT-2 states its context as n_positions
    assert context_limit(gpt2) == (64, "config.n_positions")


def test_overlong_traces_are_refused_naming_ids_lengths_and_limit():
    with pytest.raises(pipeline.ContextLengthError) as e:
        _attr(_short_model(), _mixed_traces())
    msg = str(e.value)
    assert (
        "4 of 5 trace(s) are longer than the model's context of 200 positions (config.max_position_embeddings)" in msg
    )
    n0 = len(byte_tokenizer()(synthetic_traces(4)[0].text)["input_ids"])
    assert f"synth/0 ({n0} tokens)" in msg and "short (" not in msg
    assert "overlong='truncate'" in msg and "--overlong" in msg


def test_gpt2_overlong_trace_is_refused_not_crashed():
    gpt2 = tiny_model("gpt2", seed=0)
    gpt2.config.n_positions = 64
    with pytest.raises(pipeline.ContextLengthError, match=r"context of 64 positions \(config\.n_positions\)"):
        _attr(gpt2, synthetic_traces(2))


def test_overlong_option_is_validated():
    with pytest.raises(ValueError, match="overlong must be one of"):
        AttributionConfig(overlong="drop")
    assert AttributionConfig().overlong == "error"


def test_overlong_truncate_cuts_at_the_context_and_counts_the_spans_cut():
    ds = _mixed_traces()
    with pytest.warns(UserWarning, match=r"4 trace\(s\) longer than the model's context \(200 positions"):
        res = _attr(_short_model(), ds, overlong="truncate")
    ov = res.provenance["overlong"]
    assert ov["policy"] == "truncate" and ov["limit"] == LIMIT and ov["n_truncated"] == 4
    assert set(ov["traces"]) == {f"synth/{i}" for i in range(4)}
    assert all(v["kept"] == LIMIT and v["tokens"] > LIMIT for v in ov["traces"].values())
    cut = [s for s in res.provenance["skipped_spans"] if "the model's context" in s["reason"]]
    assert len(cut) == ov["spans_dropped"] > 0 and all(s["used_by"] == [] for s in cut)
    assert res.provenance["counts"]["overlong_traces"] == {"truncated": 4, "skipped": 0}
    assert res.provenance["counts"]["traces"] == 5
    # the same numbers as an explicit max_tokens at the context (which needs no overlong policy)
    ref = _attr(_short_model(), ds, max_tokens=LIMIT)
    assert torch.equal(res.scores, ref.scores)


def test_overlong_skip_leaves_traces_out_and_counts_them():
    ds = _mixed_traces()
    with pytest.warns(UserWarning, match=r"4 of 5 trace\(s\) longer .* were left out \(overlong='skip'\)"):
        res = _attr(_short_model(), ds, overlong="skip", behaviors=["backtracking", "uncertainty-estimation"])
    ov = res.provenance["overlong"]
    assert ov["n_skipped"] == 4 and ov["traces_given"] == 5 and res.provenance["counts"]["traces"] == 1
    assert ov["spans_dropped"] == sum(len(t.spans) for t in synthetic_traces(4))
    left = [s for s in res.provenance["skipped_spans"] if "left out" in s["reason"]]
    assert len(left) == ov["spans_dropped"]
    assert res.provenance["counts"]["overlong_traces"] == {"truncated": 0, "skipped": 4}
    with pytest.raises(pipeline.ContextLengthError, match="every trace is longer"):
        _attr(_short_model(), synthetic_traces(2), overlong="skip")


def test_traces_within_the_context_are_untouched():
    res = _attr(tiny_model("llama", seed=0), synthetic_traces(2))
    assert res.provenance["overlong"]["traces"] == {} and res.provenance["overlong"]["limit"] == 1024


# -------------------------------------------------------------------------------------------- memory
def test_memory_lower_bound_counts_eager_attention_of_the_full_prefix():
    m = tiny_model("llama", seed=0)
    m.config._attn_implementation = "eager"
    full = memory_lower_bound(m, 1000, gradients="full", dtype=torch.float32)
    assert full["attention scores (eager)"] == 2 * 4 * 1000 * 1000 * 4  # layers × heads × n² × 4 bytes
    win = memory_lower_bound(m, 1000, gradients="windows", dtype=torch.float32)
    assert win["KV cache"] == 2 * 2 * 2 * 16 * 1000 * 4 and "layer inputs saved for backward" not in win
    assert sum(win.values()) < sum(full.values())


def test_run_that_cannot_fit_in_free_memory_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(pipeline, "available_memory", lambda device: 10_000)
    with pytest.raises(pipeline.MemoryEstimateError, match=r"trace synth/\d \(\d+ tokens\) needs at least .* free"):
        _attr(tiny_model("llama", seed=0), synthetic_traces(2))
    monkeypatch.setenv(pipeline.SKIP_MEMORY_CHECK_ENV, "1")
    assert _attr(tiny_model("llama", seed=0), synthetic_traces(2)).provenance["memory_estimate"] is None


# ----------------------------------------------------------------------------------- response sizes
def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_response_limit_default_env_and_keyword(monkeypatch):
    assert response_limit() == MAX_RESPONSE_CHARS == 2_000_000
    monkeypatch.setenv(MAX_RESPONSE_ENV, "5000")
    assert response_limit() == 5000 and response_limit(10) == 10
    monkeypatch.setenv(MAX_RESPONSE_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_RESPONSE_ENV):
        response_limit()
    with pytest.raises(ValueError, match="max_response_chars"):
        response_limit(0)


def test_oversized_response_is_refused_at_load_naming_file_line_and_sizes(tmp_path):
    big = "Okay. " + "x" * MAX_RESPONSE_CHARS
    p = _write_jsonl(tmp_path / "t.jsonl", [synthetic_traces(1)[0].to_dict(), {"id": "big", "response": big}])
    with pytest.raises(
        ResponseTooLargeError,
        match=r"t\.jsonl:2: response of 2,000,006 characters exceeds the "
        r"limit of 2,000,000 characters",
    ):
        load_dataset(p)
    assert len(load_dataset(p, max_response_chars=3_000_000)) == 2  # configurable
    with pytest.raises(ResponseTooLargeError, match="t.jsonl:2"):  # the annotation input too
        load_outputs(p)


def test_one_megabyte_response_still_loads_and_annotates(tmp_path):
    resp = ("Okay, so let me think. Wait, maybe not. " * 26_000)[:1_000_000] + "\n</think>\nDone."
    p = _write_jsonl(tmp_path / "t.jsonl", [{"id": "r1", "prompt": "Q?\n<think>\n", "response": resp}])
    ds = load_outputs(p)
    assert len(ds[0].response) > 1_000_000
    run = annotate_dataset(ds, R1RuleAnnotator(), progress=False)
    assert run.stats["annotated"] == 1 and len(run.dataset[0].spans) > 1000


def test_oversized_trace_in_memory_or_paper_layout_is_refused(tmp_path):
    t = ReasoningTrace("huge/0", "", "y" * 101)
    with pytest.raises(ResponseTooLargeError, match=r"trace 'huge/0': response of 101 characters .* limit of 100"):
        load_dataset([t], max_response_chars=100)
    root = tmp_path / "layout"
    (root / "outputs" / "FOLIO").mkdir(parents=True)
    (root / "outputs" / "FOLIO" / "0.txt").write_text("ok </think> fine", encoding="utf-8")
    (root / "outputs" / "FOLIO" / "1.txt").write_text("z" * 101, encoding="utf-8")
    with pytest.raises(ResponseTooLargeError, match=r"FOLIO/1\.txt: 101 characters exceeds the limit of 100"):
        load_outputs(root, max_response_chars=100)
    with pytest.raises(ResponseTooLargeError, match=r"FOLIO/1\.txt"):
        load_dataset(root, max_response_chars=100, progress=False)
    assert len(load_outputs(root)) == 2


def test_invalid_utf8_in_paper_layout_names_file_and_line(tmp_path):
    root = tmp_path / "layout"
    (root / "outputs" / "FOLIO").mkdir(parents=True)
    (root / "outputs" / "FOLIO" / "0.txt").write_bytes(b"line one\ncaf\xe9 </think>\n")
    with pytest.raises(TraceFormatError, match=r"FOLIO/0\.txt:2: invalid UTF-8 at byte 12"):
        load_outputs(root)
    from lrm_interp.data.paper_layout import load_paper_layout

    (root / "annotated" / "FOLIO").mkdir(parents=True)
    (root / "annotated" / "FOLIO" / "0.txt").write_text('["deduction"]ok["end-section"]')
    with pytest.raises(TraceFormatError, match=r"FOLIO/0\.txt:2: invalid UTF-8"):
        load_paper_layout(root, progress=False)  # the API entry point checks too, not only load_dataset
    from lrm_interp.data.traces import ResponseTooLargeError

    (root / "outputs" / "FOLIO" / "0.txt").write_text("x" * 50 + " </think> 1")
    with pytest.raises(ResponseTooLargeError, match=r"FOLIO/0\.txt: 61 characters exceeds the limit of 40"):
        load_paper_layout(root, progress=False, max_response_chars=40)
    p = tmp_path / "o.jsonl"
    p.write_bytes(b'{"id": "a", "response": "ok"}\n{"id": "b", "response": "caf\xe9"}\n')
    with pytest.raises(TraceFormatError, match=r"o\.jsonl:2: invalid UTF-8"):
        load_outputs(p)


def test_annotation_counts_oversized_empty_and_unclosed_responses(tmp_path):
    traces = [
        ReasoningTrace("ok", "", "Okay, so 2+2 is 4. Wait, maybe not.\n</think>\n4"),
        ReasoningTrace("big", "", "Wait. " * 40),
        ReasoningTrace("empty", "", ""),
        ReasoningTrace("open", "", "Okay, so 2+2 is 4. Hmm, I think so."),
    ]
    run = annotate_dataset(traces, R1RuleAnnotator(), progress=False, max_response_chars=100)
    s = run.stats
    assert (s["annotated"], s["skipped_too_large"], s["skipped_empty"], s["without_think_end"]) == (2, 1, 1, 1)
    big = run.report.file("big")
    assert big.status == "rejected" and "response of 240 characters exceeds the limit of 100" in big.reason
    assert run.dataset["big"].spans == () and run.dataset["big"].metadata["annotation_status"] == "rejected"
    assert "1 skipped (response over the size limit)" in run.summary()
    with pytest.raises(ResponseTooLargeError, match="limit of 100"):
        annotate_response("Wait. " * 40, R1RuleAnnotator(), max_response_chars=100)


# ------------------------------------------------------------------------------------------ checksums
def _flip(path, offset: int = 0):
    """Flip the lowest bit of byte ``offset`` of a safetensors file's tensor data."""
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n + offset] ^= 1
    path.write_bytes(bytes(raw))


def _masks():
    g = torch.Generator().manual_seed(0)
    return {
        "model.layers.0.mlp.up_proj": ProtectionMask(
            "model.layers.0.mlp.up_proj", torch.rand(128, 64, generator=g) < 0.05
        ),
        "model.layers.0.self_attn.q_proj": ProtectionMask.from_rows(
            "model.layers.0.self_attn.q_proj", (64, 64), [1, 5]
        ),
    }


@pytest.mark.parametrize("encoding", ["bitmask", "gaps", "csr16"])
def test_masks_file_with_a_flipped_bit_is_refused(tmp_path, encoding):
    p = save_masks(_masks(), tmp_path / "m.safetensors", metadata={"budget": 0.02}, encoding=encoding)
    back, extra = load_masks(p)
    assert back == _masks() and extra == {"budget": 0.02}
    _flip(p, offset=20)
    with pytest.raises(_io.ChecksumError, match=r"m\.safetensors: checksum mismatch: the mask file"):
        load_masks(p)
    p2 = save_masks(_masks(), tmp_path / "m2.safetensors", metadata={"budget": 0.02})
    raw = p2.read_bytes().replace(b'\\"budget\\": 0.02', b'\\"budget\\": 0.03')  # metadata edited
    p2.write_bytes(raw)
    with pytest.raises(_io.ChecksumError, match="m2.safetensors"):
        load_masks(p2)


def test_files_without_a_checksum_still_load_with_one_warning(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from lrm_interp.protect.encoding import mask_tensors

    tensors, info = mask_tensors(_masks())
    for name in ("old1", "old2"):
        save_file(
            tensors,
            str(tmp_path / f"{name}.safetensors"),
            metadata={"format": "lrm_interp.masks/2", "sites": json.dumps(info), "extra": "{}"},
        )
    monkeypatch.setattr(_io, "_UNVERIFIED_WARNED", set())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert load_masks(tmp_path / "old1.safetensors")[0] == _masks()
        assert load_masks(tmp_path / "old2.safetensors")[0] == _masks()
    msgs = [str(x.message) for x in w if "payload_sha256" in str(x.message)]
    assert len(msgs) == 1 and "old1.safetensors" in msgs[0] and "without an integrity check" in msgs[0]


def test_shipped_annotator_loads_verified_or_silently(monkeypatch):
    from lrm_interp.data.annotate import shipped_annotator

    monkeypatch.setattr(_io, "_UNVERIFIED_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shipped_annotator()


def test_sidecar_with_a_flipped_bit_is_refused(tmp_path):
    model = tiny_model("llama", seed=1)
    s = find_sites(model)[0]
    masks = {s.name: ProtectionMask.from_rows(s.name, (s.out_features, s.in_features), [0, 3])}
    p = exports.save_sidecar(model, masks, tmp_path / "sidecar.safetensors")
    q = tiny_model("llama", seed=2)
    assert exports.apply_sidecar_(q, p) == 2 * s.in_features
    _flip(p, offset=40)
    with pytest.raises(_io.ChecksumError, match=r"sidecar\.safetensors: checksum mismatch: the sidecar"):
        exports.apply_sidecar_(q, p)


def test_attribution_result_and_steering_vectors_are_checked_on_load(tmp_path):
    res = _attr(tiny_model("llama", seed=0), synthetic_traces(2), out_dir=tmp_path / "run")
    back = Attribution.load(tmp_path / "run")
    assert torch.equal(back.scores, res.scores)
    meta = json.loads((tmp_path / "run" / "attribution.json").read_text())
    assert len(meta["tensors_sha256"]) == 64
    # a flipped bit in a steering vector
    t = tmp_path / "run" / "attribution.safetensors"
    good = t.read_bytes()
    _flip(t, offset=len(good) - 8 - struct.unpack("<Q", good[:8])[0] - 3)  # the last tensor's last bytes
    with pytest.raises(_io.ChecksumError, match=r"attribution\.safetensors: checksum mismatch"):
        Attribution.load(tmp_path / "run")
    # attribution.json of another save next to these tensors
    t.write_bytes(good)
    other = _attr(tiny_model("llama", seed=3), synthetic_traces(2), out_dir=tmp_path / "other")
    assert not torch.equal(other.scores, res.scores)
    (tmp_path / "run" / "attribution.safetensors").write_bytes(
        (tmp_path / "other" / "attribution.safetensors").read_bytes()
    )
    with pytest.raises(_io.ChecksumError, match="come from different saves"):
        Attribution.load(tmp_path / "run")


def test_corrupted_partial_is_recomputed_never_reused(tmp_path):
    ds = synthetic_traces(2)
    first = _attr(tiny_model("llama", seed=0), ds, out_dir=tmp_path / "run")
    (tmp_path / "run" / "attribution.json").unlink()
    part = sorted((tmp_path / "run" / "partial" / "dom").glob("*.safetensors"))[0]
    _flip(part, offset=16)
    with pytest.warns(UserWarning, match="checksum mismatch.*recomputing trace"):
        again = _attr(tiny_model("llama", seed=0), ds, out_dir=tmp_path / "run")
    assert torch.equal(again.scores, first.scores)
    assert again.provenance["resume"]["dom"]["stale"] == 1


def test_results_of_older_versions_without_the_new_setting_still_resume(tmp_path):
    """A result written before ``overlong`` existed is the same run as one with its default."""
    from lrm_interp.attribution.resume import ResumeMismatchError, check_finished_result

    _attr(tiny_model("llama", seed=0), synthetic_traces(2), out_dir=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "attribution.json").read_text())
    del meta["provenance"]["settings"]["overlong"]
    del meta["provenance_sha256"]  # an older version recorded neither
    (tmp_path / "run" / "attribution.json").write_text(json.dumps(meta))
    prov = meta["provenance"]
    key = {
        "config": AttributionConfig().to_dict(),
        "weights_fingerprint": prov["model"]["weights_fingerprint"],
        "tokenizer_fingerprint": prov["model"]["tokenizer"]["fingerprint"],
        "sites": [s["name"] for s in meta["sites"]],
    }
    check_finished_result(tmp_path / "run", key)
    with pytest.raises(ResumeMismatchError, match=r"differs in overlong 'error' there ≠ 'skip' now"):
        check_finished_result(tmp_path / "run", dict(key, config=AttributionConfig(overlong="skip").to_dict()))
