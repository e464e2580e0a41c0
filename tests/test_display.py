"""Rich display: terminal __repr__ and Jupyter _repr_html_ of the result types."""

from __future__ import annotations

import re

import torch

from lrm_interp.attribution.results import Attribution, compare
from lrm_interp.display import html_heatmap, html_table
from lrm_interp.experiments.protection_table import ExperimentSettings, ProtectionTable, ResultRow
from lrm_interp.model.sites import find_sites
from lrm_interp.protect.bit_allocation import uniform_allocation
from lrm_interp.testing import tiny_model


def _attr(behaviors=("backtracking", "<b>odd</b>")):
    sites = find_sites(tiny_model("llama", seed=0))
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(len(behaviors), len(sites), generator=g, dtype=torch.float64)
    prov = {"model": {"name": "/x/tiny-llama/"}, "counts": {"traces": 5, "spans": {"backtracking": 3, "<b>odd</b>": 2}}}
    return Attribution(behaviors, sites, scores, "attribution", provenance=prov)


def test_attribution_repr_and_html():
    a = _attr()
    r = repr(a)
    top = a.top(1)[0][1]
    assert r.startswith(
        "Attribution(method='attribution', model='tiny-llama', 2 behaviours × 14 sites, 5 traces / 5 spans"
    )
    assert top in r
    h = a._repr_html_()
    assert "&lt;b&gt;odd&lt;/b&gt;" in h and "<b>odd</b>" not in h  # data is escaped
    for b in a.behaviors:
        for _, s, ri in a.top(5, b):
            assert f"{s} ({ri:.3f})" in h
    assert "steering vectors" not in h
    vec = Attribution(
        a.behaviors,
        a.sites,
        a.scores,
        a.method,
        provenance=a.provenance,
        vectors={"backtracking": {a.sites[0].name: torch.full((64,), 0.5)}},
    )
    assert "steering vectors û: 1 (behaviour, site) pairs, norm 4–4" in vec._repr_html_()
    layers, kinds = a.grid("backtracking")[1:]
    assert len(re.findall(r'<td title="layer', h)) == len(a.behaviors) * len(layers) * len(kinds)


def test_shift_largest_decreases_and_html():
    a = _attr()
    b = Attribution(a.behaviors, a.sites, a.scores.flip(1), a.method, provenance=a.provenance)
    sh = compare(a, b)
    brute = sorted(
        (
            (beh, s.name, float(-sh.delta[i, j]))
            for i, beh in enumerate(sh.behaviors)
            for j, s in enumerate(sh.sites)
            if sh.delta[i, j] < 0
        ),
        key=lambda x: -x[2],
    )[:4]
    assert sh.largest_decreases(4) == brute
    assert "largest decreases" in repr(sh) and brute[0][1] in repr(sh)
    h = sh._repr_html_()
    assert f"{brute[0][1]} (−{brute[0][2]:.3f})" in h and "ImportanceShift" in h


def test_table_allocation_and_helpers():
    rows = (
        ResultRow("fp", "fp", 32.0, {"math": 1.0}, 1.0, 4, 4, (0.5, 1.0)),
        ResultRow("none", "none", 3.125, {"math": 0.5}, 0.5, 4, 2, (0.15, 0.85)),
        ResultRow("2% <magnitude>", "per-weight", 3.6, {"math": 0.75}, 0.75, 4, 3, (0.3, 0.95)),
    )
    t = ProtectionTable(ExperimentSettings(per_family=4), rows)
    assert "best below b+1 bits: 2% <magnitude> 75.0% at 3.600 bpw" in repr(t)
    h = t._repr_html_()
    assert "2% &lt;magnitude&gt;" in h and "50%" in h and h.count("<tr>") == 4
    alloc = uniform_allocation(find_sites(tiny_model("llama", seed=0)), 3)
    assert repr(alloc) == f"BitAllocation(uniform, {alloc.bpw:.4f} bits/weight; modules at bits: 14×3)"
    assert alloc._repr_html_().count("<tr>") == 15
    assert "nan" not in html_table(["a"], [[float("nan")]])
    cells = html_heatmap(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), [0, 1], ["q", "k"])
    assert cells.count("#eeeeee") == 1 and cells.count("<td title=") == 4


def test_mask_html():
    from lrm_interp.protect.masks import ProtectionMask

    m = ProtectionMask.from_rows("model.layers.0.mlp.<x>", (16, 8), torch.tensor([0, 1]))
    h = m._repr_html_()
    assert "model.layers.0.mlp.&lt;x&gt;" in h and "16 × 8" in h and "12.50%" in h
    assert h.count("<td title=") == 8 + 8  # 8 row blocks, 8 column blocks
    assert 'title="layer 0 share: 1"' in h  # the first row block (rows 0-1) is fully protected
