"""The trainable (logistic-regression) annotator: fit, cross-validation, save/load, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lrm_interp.cli.main import main
from lrm_interp.data.annotate import LinearAnnotator, annotate_response, annotation_agreement, cross_validate
from lrm_interp.data.annotators.trained import fit_softmax_regression
from lrm_interp.data.paper_layout import load_paper_layout
from lrm_interp.data.traces import BEHAVIORS, TARGET_BEHAVIORS, ReasoningDataset

R1_STYLE = Path(__file__).resolve().parent / "data" / "r1_style"


@pytest.fixture(scope="module")
def gold():
    return load_paper_layout(R1_STYLE, progress=False)


@pytest.fixture(scope="module")
def split():
    return json.loads((R1_STYLE / "split.json").read_text())


@pytest.fixture(scope="module")
def fitted(gold, split):
    return LinearAnnotator.fit(gold.filter(lambda t: t.id in split["dev"]), dim=1 << 12, steps=150)


def test_softmax_regression_kernel_against_the_dense_formula():
    """Naive reference: logits = X @ W + b with X the dense feature counts; at the fitted point the
    dense objective's gradient vanishes (first-order optimality)."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 20, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g) for _ in range(40)]
    y = torch.randint(0, 3, (40,), generator=g)
    flat = torch.cat(rows)
    offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
    x = torch.zeros(40, 20)
    for i, r in enumerate(rows):
        x[i].index_add_(0, r, torch.ones(len(r)))
    w0 = torch.randn(20, 3, generator=g)
    assert torch.allclose(torch.nn.functional.embedding_bag(flat, w0, offsets, mode="sum"), x @ w0, atol=1e-5)
    w, b = torch.zeros(20, 3), torch.zeros(3)
    loss = fit_softmax_regression(flat, offsets, y, w, b, steps=1500, lr=0.05, l2=1e-2)
    wd, bd = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    obj = torch.nn.functional.cross_entropy(x @ wd + bd, y) + 1e-2 * wd.pow(2).sum()
    gw, gb = torch.autograd.grad(obj, [wd, bd])
    assert abs(float(obj.detach()) - loss) < 1e-3
    assert gw.abs().max() < 1e-3 and gb.abs().max() < 1e-3


def test_fit_and_annotate_held_out(fitted, gold, split):
    assert fitted.info["traces"] == len(split["dev"]) and fitted.labels == BEHAVIORS
    held = gold.filter(lambda t: t.id in split["heldout"])
    pred = ReasoningDataset([t.with_spans(annotate_response(t.response, fitted)[0]) for t in held])
    agr = annotation_agreement(held, pred)
    for label in TARGET_BEHAVIORS:
        assert agr[label]["f1"] >= 0.5, (label, agr[label])


def test_save_load_round_trip(fitted, gold, tmp_path):
    p = fitted.save(tmp_path / "ann.safetensors")
    back = LinearAnnotator.load(p)
    text = gold[0].response
    assert back.annotate(text) == fitted.annotate(text) and back.info == fitted.info
    assert back.fingerprint() == fitted.fingerprint()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        LinearAnnotator.load(tmp_path / "junk.safetensors")


def test_cross_validation_annotates_every_trace_unseen(gold):
    small = gold[:12]
    cv = cross_validate(small, folds=3, dim=1 << 11, steps=60)
    assert cv["folds"] == 3 and cv["traces"] == 12
    assert set(TARGET_BEHAVIORS) <= set(cv["agreement"])
    with pytest.raises(ValueError, match="folds"):
        cross_validate(small, folds=1)
    with pytest.raises(ValueError, match="no annotated sentence"):
        LinearAnnotator.fit([t.with_spans(()) for t in small])


def test_cli_train_then_annotate_with_the_file(tmp_path, capsys):
    model = tmp_path / "r1.safetensors"
    assert (
        main(
            [
                "annotate",
                "train",
                "--data",
                str(R1_STYLE),
                "--out",
                str(model),
                "--folds",
                "2",
                "--steps",
                "60",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2-fold cross-validated agreement" in out and "backtracking" in out
    assert LinearAnnotator.load(model).info["cross_validation"]["folds"] == 2
    traces = tmp_path / "t.jsonl"
    assert main(["annotate", "--annotator", str(model), "--data", str(R1_STYLE), "--out", str(traces), "--quiet"]) == 0
    rep = json.loads((tmp_path / "t.jsonl.report.json").read_text())
    assert rep["annotator"]["name"] == "linear" and rep["stats"]["traces"] == 44


@pytest.mark.parametrize(
    "setting,value,needle",
    [
        ("steps", 0, "steps must be an integer >= 1, got 0"),  # would save the random initialisation
        ("steps", -3, "steps must be an integer >= 1"),
        ("steps", 2.5, "steps must be an integer"),
        ("l2", float("inf"), "l2 must be a finite number >= 0, got inf"),  # NaN weights
        ("l2", float("nan"), "l2 must be a finite number >= 0"),
        ("l2", -1.0, "l2 must be a finite number >= 0"),
        ("lr", 0.0, "lr must be a finite number > 0"),
        ("lr", float("nan"), "lr must be a finite number > 0"),
        ("class_balance", float("inf"), "class_balance must be a finite number >= 0"),
        ("class_balance", -0.5, "class_balance must be a finite number >= 0"),
        ("dim", 0, "dim must be an integer >= 1"),
        ("seed", -1, "seed must be an integer >= 0"),
        ("labels", ("backtracking",), "at least two distinct"),
        ("labels", ("a", "a"), "at least two distinct"),
    ],
)
def test_fit_and_cross_validation_refuse_nonsense_settings(gold, monkeypatch, setting, value, needle):
    """Issue 22: ``steps=0`` returned (and the CLI saved) an untrained annotator; ``l2=inf`` a NaN
    one. Both the fit and the cross-validation refuse before any work."""
    small = gold[:6]
    with pytest.raises(ValueError, match=needle):
        LinearAnnotator.fit(small, **{setting: value})
    if setting != "seed":  # cross_validate's seed is its own (the fold shuffle)
        calls = []
        monkeypatch.setattr(LinearAnnotator, "fit", classmethod(lambda cls, *a, **k: calls.append(1)))
        with pytest.raises(ValueError, match=needle):
            cross_validate(small, folds=2, **{setting: value})
        assert not calls  # refused before the first fold


def test_cross_validation_refuses_bad_folds_and_iou(gold):
    with pytest.raises(ValueError, match="folds must be an integer >= 2, got 0"):
        cross_validate(gold[:4], folds=0)
    for bad in (0.0, -1.0, float("nan"), 1.5):
        with pytest.raises(ValueError, match="min_iou must be a finite number in"):
            cross_validate(gold[:4], folds=2, min_iou=bad)
    with pytest.raises(TypeError, match="unknown fit settings"):
        cross_validate(gold[:4], folds=2, step=10)


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-1"], "--steps"),
        (["--folds", "0", "--l2", "inf"], "l2"),
        (["--folds", "-1"], "--folds"),
    ],
)
def test_cli_train_refuses_an_untrained_annotator(tmp_path, capsys, argv, flag):
    """``lrm-interp annotate train --steps 0`` (or ``--l2 inf``) exits 2 with one line naming the
    setting and writes no annotator file."""
    out = tmp_path / "a.safetensors"
    try:
        rc = main(["annotate", "train", "--data", str(R1_STYLE), "--out", str(out), "--quiet", *argv])
    except SystemExit as e:  # a range-checked option, refused by argparse
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and flag in err[0] and "Traceback" not in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []
