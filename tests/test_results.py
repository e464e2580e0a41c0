"""The Attribution result: RI, ranks, top, grid, dataframe, save/load, compare."""

from __future__ import annotations

import json

import pytest
import torch

from lrm_interp.attribution.results import Attribution, compare, relative_importance
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import tiny_model


@pytest.fixture
def attr():
    sites = find_sites(tiny_model("llama"))  # 14 sites, 2 layers
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(2, len(sites), generator=g, dtype=torch.float64)
    scores[0, 5] = 10.0  # layer 0 up_proj dominates backtracking
    vecs = {b: {s.name: torch.randn(s.out_features, generator=g) for s in sites} for b in ("backtracking", "deduction")}
    return Attribution(
        ("backtracking", "deduction"),
        tuple(sites),
        scores,
        "attribution",
        vecs,
        {"model": {"name": "tiny"}, "settings": {"k_context": 5}},
    )


def test_ri_ranks_top(attr):
    ri = attr.ri
    assert torch.allclose(ri.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ri[0], attr.scores[0] / attr.scores[0].sum())
    assert attr.ranks[0, 5] == 1
    assert sorted(attr.ranks[1].tolist()) == list(range(1, 15))
    top = attr.top(3, "backtracking")
    assert top[0][1] == "model.layers.0.mlp.up_proj"
    assert top[0][2] == pytest.approx(10.0 / float(attr.scores[0].sum()))
    assert [t[2] for t in top] == sorted([t[2] for t in top], reverse=True)
    # mean view
    mean_ri = ri.mean(0)
    assert attr.top(1)[0][2] == pytest.approx(float(mean_ri.max()))


def test_relative_importance_zero_row():
    r = relative_importance(torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64))
    assert r.tolist() == [[0.0, 0.0], [0.25, 0.75]]


def test_grid_and_dataframe(attr):
    g, layers, kinds = attr.grid("backtracking", "score")
    assert layers == [0, 1] and kinds == ["q", "k", "v", "o", "gate", "up", "down"]
    assert g[0, kinds.index("up")] == 10.0
    assert g[1, kinds.index("down")] == attr.scores[0, 13]
    df = attr.to_dataframe()
    assert len(df) == 28 and set(df.columns) >= {"behavior", "site", "layer", "kind", "score", "ri", "rank"}
    assert df.groupby("behavior")["ri"].sum().round(12).tolist() == [1.0, 1.0]


def test_save_load_roundtrip(attr, tmp_path):
    attr.save(tmp_path / "r")
    back = Attribution.load(tmp_path / "r")
    assert back.behaviors == attr.behaviors and back.sites == attr.sites
    assert torch.equal(back.scores, attr.scores)
    for b in attr.behaviors:
        for s in attr.site_names:
            assert torch.equal(back.vectors[b][s], attr.vectors[b][s])
    assert back.provenance == attr.provenance
    meta = json.loads((tmp_path / "r" / "attribution.json").read_text())
    assert meta["sites"][5]["kind"] == "up"
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="attribution.json"):
        Attribution.load(tmp_path)


def test_compare_shift(attr):
    other = Attribution(attr.behaviors, attr.sites, attr.scores.flip(-1), "attribution")
    shift = compare(attr, other)
    assert torch.allclose(shift.delta, other.ri - attr.ri)
    assert torch.allclose(shift.delta.sum(dim=1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    dec = shift.decreases
    assert (dec >= 0).all()
    assert torch.allclose(dec, (attr.ri - other.ri).clamp_min(0))
    assert len(shift.to_dataframe()) == 28
    fig = shift.heatmap()
    assert len(fig.axes) >= 2


def test_compare_rejects_mismatched_sites(attr):
    other = Attribution(attr.behaviors, attr.sites[:-1], attr.scores[:, :-1], "attribution")
    with pytest.raises(ValueError, match="site sets differ"):
        compare(attr, other)


def test_heatmap_panels(attr):
    fig = attr.heatmap()
    panels = [ax for ax in fig.axes if ax.get_title() in attr.behaviors]
    assert len(panels) == 2
    img = panels[0].images[0].get_array()
    assert img.shape == (2, 7)
    assert float(img.max()) == pytest.approx(float(attr.ri.max()))


def test_compare_refuses_incomparable_results_in_the_api(attr):
    """The library (not only the CLI) refuses a shift between results of other scoring settings,
    naming the difference; strict=False compares with a warning; a gradient-mode change only warns."""
    import dataclasses
    import warnings

    other = dataclasses.replace(attr, provenance={"model": {"name": "tiny"}, "settings": {"k_context": 1}})
    with pytest.raises(ValueError, match="cannot be compared: different attribution settings: k_context 5 vs 1"):
        compare(attr, other)
    with pytest.warns(UserWarning, match="k_context 5 vs 1"):
        shift = compare(attr, other, strict=False)
    assert torch.equal(shift.delta, torch.zeros_like(shift.delta))
    joint = dataclasses.replace(
        attr, provenance={"model": {"name": "tiny"}, "settings": {"k_context": 5, "mode": "joint"}}
    )
    attr_exact = dataclasses.replace(
        attr, provenance={"model": {"name": "tiny"}, "settings": {"k_context": 5, "mode": "exact"}}
    )
    with pytest.warns(UserWarning, match="mode 'exact' vs 'joint'"):
        compare(attr_exact, joint)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(attr, attr)  # same settings, no weights recorded: nothing to say
