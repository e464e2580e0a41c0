"""The session of the thirtieth hostile probe (H31-…; docs/reliability.md) and what it tidied."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lrm_interp.compress import driver
from lrm_interp.model import provenance
from lrm_interp.model.provenance import NonFiniteError
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import tiny_model


def _counting(monkeypatch: Any) -> list[int]:
    """Patch ``non_finite_count`` where the driver and provenance use it; the ids of the tensors read."""
    seen: list[int] = []
    real = provenance.non_finite_count

    def count(t: torch.Tensor) -> int:
        seen.append(t.data_ptr())
        return real(t)

    monkeypatch.setattr(provenance, "non_finite_count", count)
    monkeypatch.setattr(driver, "non_finite_count", count)
    return seen


def test_the_finiteness_check_before_a_compression_reads_each_weight_once(monkeypatch: Any) -> None:
    """H29-NANMODEL checked the sites' weights, H30-NANQUANT then every parameter: the sites'
    weights were read twice before a quantization (twice 16 GB for an 8B model). One pass now
    reads every parameter once, and still names the site whose weight is broken."""
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    seen = _counting(monkeypatch)
    driver.check_finite_weights(model, sites, "quantization")
    params = [p.data_ptr() for p in model.parameters()]
    assert sorted(seen) == sorted(params)  # each parameter once, nothing else
    with torch.no_grad():
        model.get_submodule(sites[3].name).weight[1, 2] = float("-inf")
        model.model.norm.weight[0] = float("nan")  # after the site in parameter order
    with pytest.raises(NonFiniteError, match=rf"^{sites[3].name}: its weights hold 1 NaN or infinite value: the "):
        driver.check_finite_weights(model, sites, "quantization")
    # the same broken weight outside the sites compressed is named as a parameter
    with pytest.raises(NonFiniteError, match=rf"^parameter {sites[3].name}\.weight holds 1 NaN or infinite value"):
        driver.check_finite_weights(model, sites[:2], "pruning")


def test_a_site_whose_weight_is_a_buffer_is_still_checked(monkeypatch: Any) -> None:
    """A linear whose ``weight`` is a buffer (some packed or frozen layers) is not among the
    parameters: the single pass reads it besides them."""
    model = tiny_model("llama", seed=0)
    sites = find_sites(model)
    mod = model.get_submodule(sites[0].name)
    w = mod.weight.detach().clone()
    del mod.weight
    mod.register_buffer("weight", w)
    seen = _counting(monkeypatch)
    driver.check_finite_weights(model, sites, "quantization")
    assert sorted(seen) == sorted([p.data_ptr() for p in model.parameters()] + [w.data_ptr()])
    w[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"^{sites[0].name}: its weights hold 1 NaN or infinite value"):
        driver.check_finite_weights(model, sites, "quantization")
