"""``annotate agree --downstream``: site scores with reference spans vs an annotator's spans (issue 20, item 3)."""

from __future__ import annotations

import csv
import json
import math

import pytest
from synth import synthetic_traces

import lrm_interp.experiments.annotation_downstream as dsmod
from lrm_interp.cli.main import main
from lrm_interp.data.traces import TARGET_BEHAVIORS, ReasoningDataset, ReasoningTrace
from lrm_interp.experiments.annotation_downstream import (
    NOISE_FLOOR,
    AnnotationDownstream,
    annotation_downstream,
    spearman_brown,
    split_halves,
    top_overlap,
)
from lrm_interp.testing import byte_tokenizer, tiny_model


def _run(tmp_path, annotators, ds=None, **kw):
    ds = ds if ds is not None else synthetic_traces(6)
    return annotation_downstream(
        tiny_model("llama", seed=0),
        ds,
        annotators,
        tokenizer=byte_tokenizer(),
        model_name="tiny-llama",
        out_dir=tmp_path / "state",
        progress=False,
        **kw,
    )


# ------------------------------------------------------------------ naive reference
def _scores(path) -> dict[str, list[float]]:
    """``{behaviour: [score per site, in file order]}`` from an attribution's ``scores.csv``."""
    out: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["behavior"], []).append(float(row["score"]))
    return out


def _naive_ranks(x: list[float]) -> list[float]:
    r = [0.0] * len(x)
    for i, v in enumerate(x):  # average rank of ties, 1-based
        below = sum(1 for w in x if w < v)
        equal = sum(1 for w in x if w == v)
        r[i] = below + (equal + 1) / 2
    return r


def _naive_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _naive_ranks(a), _naive_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def _naive_top(a: list[float], k: int) -> set[int]:
    return set(sorted(range(len(a)), key=lambda i: (-a[i], i))[:k])


# ------------------------------------------------------------------ tests
def test_identical_spans_give_spearman_1_and_full_overlap(tmp_path):
    ds = synthetic_traces(6)
    res = _run(tmp_path, {"same": ds}, ds=ds)
    assert res.provenance["n_sites"] >= 10
    for b in TARGET_BEHAVIORS:
        r = res.row("same", b)
        assert r.spearman == pytest.approx(1.0)
        assert r.overlap == 10 and r.top_k == 10
        assert r.char_f1 == pytest.approx(1.0)
        assert r.spans == r.ref_spans > 0
    assert res.sources == ["same", NOISE_FLOOR]
    assert set(res.to_dataframe().columns) >= {"source", "behavior", "spearman", "overlap", "char_f1"}
    # saved as JSON and read back unchanged
    again = AnnotationDownstream.load(tmp_path / "state" / "result.json")
    assert again.rows == res.rows and again.settings == res.settings
    assert (tmp_path / "state" / "table.md").read_text().count("| ") > 4


def test_naive_spearman_and_overlap_on_the_saved_score_tables(tmp_path):
    res = _run(tmp_path, ["keyword"], top_k=5)
    st = tmp_path / "state"
    ref = _scores(st / "reference" / "scores.csv")
    pairs = {
        "keyword": (ref, _scores(st / "annotator-keyword" / "scores.csv")),
        NOISE_FLOOR: (_scores(st / "half-a-s0" / "scores.csv"), _scores(st / "half-b-s0" / "scores.csv")),
    }
    compared = 0
    for source, (a, b) in pairs.items():
        for beh in TARGET_BEHAVIORS:
            row = res.row(source, beh)
            if not any(a[beh]) or not any(b[beh]):
                assert row.spearman is None and row.overlap is None and "no scored" in row.note
                continue
            assert row.spearman == pytest.approx(_naive_spearman(a[beh], b[beh]), abs=1e-5)
            assert row.overlap == len(_naive_top(a[beh], 5) & _naive_top(b[beh], 5))
            if source == NOISE_FLOOR:  # the full-size estimate of the floor is printed beside it
                assert f"ρ ≈ {2 * row.spearman / (1 + row.spearman):.2f}" in row.note
            compared += 1
    assert compared >= 4
    # the spans used are saved next to the scores; the keyword rules are not the reference
    kw = ReasoningDataset.load_jsonl(st / "annotator-keyword" / "traces.jsonl")
    assert kw.span_counts() != synthetic_traces(6).span_counts()


def test_resume_does_not_recompute(tmp_path, monkeypatch):
    first = _run(tmp_path, ["keyword"])
    assert {r["how"] for r in first.provenance["attributions"].values()} == {"computed"}

    def no_attribution(*a, **k):
        raise AssertionError("an attribution was recomputed on resume")

    with monkeypatch.context() as m:
        m.setattr(dsmod, "attribute", no_attribution)
        again = _run(tmp_path, ["keyword"])
    assert again.rows == first.rows
    assert {r["how"] for r in again.provenance["attributions"].values()} == {"loaded"}
    # a run killed before its result: the per-trace partials are reused, nothing is recomputed
    (tmp_path / "state" / "reference" / "variant.json").unlink()
    (tmp_path / "state" / "reference" / "attribution.json").unlink()
    third = _run(tmp_path, ["keyword"])
    run = third.provenance["attributions"]["reference"]
    assert run["how"] == "computed"
    assert run["resume"]["dom"] == {"computed": 0, "reused": 6, "stale": 0}
    assert run["resume"]["atp"] == {"computed": 0, "reused": 6, "stale": 0}
    assert third.rows == first.rows
    # another seed of the noise floor: only its two halves are attributed, the rest is loaded
    calls = []
    real = dsmod.attribute

    def counting(model, ds, **kw):
        calls.append(kw["out_dir"].name)
        return real(model, ds, **kw)

    with monkeypatch.context() as m:
        m.setattr(dsmod, "attribute", counting)
        more = _run(tmp_path, ["keyword"], seed=[0, 1])
    assert sorted(calls) == ["half-a-s1", "half-b-s1"]
    assert more.sources == ["keyword", NOISE_FLOOR, f"{NOISE_FLOOR} s0", f"{NOISE_FLOOR} s1"]
    for b in TARGET_BEHAVIORS:
        s0, s1, mean = (more.row(f"{NOISE_FLOOR} s0", b), more.row(f"{NOISE_FLOOR} s1", b), more.row(NOISE_FLOOR, b))
        assert s0.spearman == first.row(NOISE_FLOOR, b).spearman
        got = [r.spearman for r in (s0, s1) if r.spearman is not None]
        assert mean.spearman == (pytest.approx(sum(got) / len(got)) if got else None)


def test_another_run_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    _run(tmp_path, ["keyword"])
    monkeypatch.setattr(dsmod, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(ValueError, match="holds another downstream run.*top_k"):
        _run(tmp_path, ["keyword"], top_k=3)


def test_spearman_brown_projects_half_size_agreement_to_full_size():
    # two halves agreeing at ρ give two full sets at 2ρ / (1 + ρ); k-fold length in general
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.44) == pytest.approx(0.88 / 1.44)
    assert spearman_brown(0.0) == 0.0 and spearman_brown(1.0) == pytest.approx(1.0)
    assert spearman_brown(0.3, factor=4) == pytest.approx(1.2 / 1.9)
    assert spearman_brown(-0.2) == pytest.approx(-0.4 / 0.8)
    for bad in (1.5, -1.1, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            spearman_brown(bad)


def test_split_halves_is_seeded_stratified_and_disjoint():
    ds = synthetic_traces(6)
    a, b = split_halves(ds, TARGET_BEHAVIORS, seed=3)
    assert sorted(a + b) == sorted(t.id for t in ds) and not set(a) & set(b) and len(a) == len(b) == 3
    assert split_halves(ds, TARGET_BEHAVIORS, seed=3) == (a, b)
    assert top_overlap([3.0, 2.0, 1.0, 0.0], [0.0, 2.0, 3.0, 1.0], 2) == 1


def _jsonl(tmp_path, ds) -> str:
    return str(ds.save_jsonl(tmp_path / "ref.jsonl"))


def _no_model(monkeypatch):
    import lrm_interp.model.loading as loading

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", boom)
    monkeypatch.setattr(dsmod, "load_model", boom)


def test_reference_without_spans_of_a_behaviour_is_one_line(tmp_path, monkeypatch, capsys):
    ds = synthetic_traces(4)
    no_et = ReasoningDataset([t.with_spans([s for s in t.spans if s.behavior != "example-testing"]) for t in ds])
    _no_model(monkeypatch)
    rc = main(
        [
            "annotate",
            "agree",
            "--gold",
            _jsonl(tmp_path, no_et),
            "--downstream",
            "toy",
            "--annotator",
            "rules",
            "--out",
            str(tmp_path / "st"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "no 'example-testing' spans" in err[0] and "--behaviors" in err[0]
    assert not (tmp_path / "st").exists()


def test_unknown_annotator_is_one_line(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    rc = main(
        [
            "annotate",
            "agree",
            "--gold",
            _jsonl(tmp_path, synthetic_traces(2)),
            "--downstream",
            "toy",
            "--annotator",
            "nosuch",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--annotator nosuch: not one of trained, rules, keyword, trained-cv" in err[0]
    with pytest.raises(ValueError, match="nosuch"):
        annotation_downstream("toy", synthetic_traces(2), ["nosuch"], progress=False)


def test_downstream_flags_need_downstream(tmp_path, capsys):
    rc = main(["annotate", "agree", "--gold", _jsonl(tmp_path, synthetic_traces(2)), "--seed", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--seed applies only with --downstream" in err[0]


def test_cli_end_to_end_with_a_model_folder(tmp_path, capsys):
    mdir = tmp_path / "m"
    tiny_model("llama", seed=0).save_pretrained(mdir)
    byte_tokenizer().save_pretrained(mdir)
    ds = synthetic_traces(6)
    # one long trace: cut by --max-tokens, counted
    t0 = ds[0]
    long = ReasoningTrace(t0.id, t0.prompt, t0.response + " So it holds." * 60, t0.spans, t0.metadata)
    ds = ReasoningDataset([long] + list(ds)[1:])
    assert len(long.text) > 600 > max(len(t.text) for t in list(ds)[1:])
    gold = _jsonl(tmp_path, ds)
    argv = [
        "annotate",
        "agree",
        "--gold",
        gold,
        "--downstream",
        str(mdir),
        "--annotator",
        "rules",
        "--annotator",
        "trained-cv",
        "--out",
        str(tmp_path / "st"),
        "--max-tokens",
        "600",
        "--top-k",
        "5",
        "--quiet",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "noise floor" in out and "trained-cv" in out and "traces cut" in out
    d = json.loads((tmp_path / "st" / "result.json").read_text())
    cut = d["provenance"]["cut"]
    assert cut["limit"] == 600 and cut["n_cut"] == 1 and list(cut["traces"]) == [long.id]
    assert d["provenance"]["annotators"]["trained-cv"]["kind"] == "cross-validated"
    assert {r["source"] for r in d["rows"]} == {"rules", "trained-cv", NOISE_FLOOR}
    # the same command again: everything loaded
    capsys.readouterr()
    assert main(argv) == 0
    d2 = json.loads((tmp_path / "st" / "result.json").read_text())
    assert {r["how"] for r in d2["provenance"]["attributions"].values()} == {"loaded"}
    assert d2["rows"] == d["rows"]
    capsys.readouterr()
    assert main(argv[:-1] + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == dsmod.FORMAT


def test_top_k_beyond_the_sites_is_refused_before_any_attribution(tmp_path, monkeypatch):
    monkeypatch.setattr(dsmod, "attribute", lambda *a, **k: (_ for _ in ()).throw(AssertionError("attributed")))
    with pytest.raises(ValueError, match="top_k 99 exceeds the model's 14 sites"):
        _run(tmp_path, ["keyword"], top_k=99)
