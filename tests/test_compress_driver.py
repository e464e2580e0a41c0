"""The one compression driver (quantizers and pruners): weights, reports and provenance equal,
bit for bit, to those of the two drivers it replaced (sha256 of every weight saved in
``tests/data/compress_driver.json``, computed with the old code); its method registry, the
shared N:M check and the damped inverse-Cholesky helper.

Float results of the Hessian-based methods depend on the summation order, so every case runs
on one CPU thread, and the hashes are compared only under the torch version and CPU capability
the fixture was computed with (elsewhere the test is skipped, saying so). Within one capability,
MKL still picks its code path by the CPU model: two AVX512 machines (one with and one without
AMX / AVX512-BF16) give different last bits for GPTQ and SparseGPT. The fixture's ``variants`` hold,
per case, the results of the same code on another CPU (its vector flags recorded); a case passes
when its results equal the fixture's or one variant's, all parts of one of them (weights, codes,
report). Regenerate the fixture (only when an algorithm is meant to change):
``python tests/test_compress_driver.py``; add the variants of this CPU, from code that passed here
on the fixture's CPU: ``python tests/test_compress_driver.py --variant``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lrm_interp.compress import driver
from lrm_interp.compress.common import check_pattern, damped_inverse_cholesky, parse_pattern, prepare_obs
from lrm_interp.compress.driver import CompressionMethod, get_method, method_names, register_method
from lrm_interp.compress.prune import PRUNERS, prune_model_, sparsegpt_prune, wanda_prune
from lrm_interp.compress.quant import quantize_model_
from lrm_interp.compress.specs import apply_compression, parse_compression
from lrm_interp.model.provenance import model_record
from lrm_interp.model.sites import find_sites
from lrm_interp.testing import tiny_model

FIXTURE = Path(__file__).parent / "data" / "compress_driver.json"


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))


def _masks(model) -> dict:
    """Random protection of two sites (one attention, one MLP) so the mask path is covered."""
    g = torch.Generator().manual_seed(1)
    sites = find_sites(model)
    out = {}
    for s in (sites[0], sites[-1]):
        out[s.name] = torch.rand(s.out_features, s.in_features, generator=g) < 0.05
    return out


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _quant(arch="llama", masked=False, **kw):
    def run():
        model = tiny_model(arch, seed=0)
        masks = _masks(model) if masked else None
        rep = quantize_model_(model, masks=masks, progress=False, keep_tensors=True, **kw)
        codes = {k: _digest(qt.codes) for k, qt in rep.tensors.items()}
        return model, rep.to_dict(), codes

    return run


def _prune(method, sparsity=None, arch="llama", masked=False, **kw):
    def run():
        model = tiny_model(arch, seed=0)
        masks = _masks(model) if masked else None
        calib = None if method == "magnitude" else _ids()
        rep = prune_model_(model, method, sparsity, masks=masks, calib=calib, progress=False, **kw)
        return model, rep.to_dict(), {}

    return run


CASES = {
    "rtn3": _quant(bits=3, method="rtn"),
    "rtn4_g16_sym_masked": _quant(bits=4, method="rtn", group_size=16, symmetric=True, masked=True),
    "rtn3_gpt2": _quant("gpt2", bits=3, method="rtn", group_size=None),
    "gptq3": _quant(bits=3, method="gptq", calib=_ids()),
    "gptq3_g16_b8_masked": _quant(bits=3, method="gptq", calib=_ids(), group_size=16, blocksize=8, masked=True),
    "gptq4_gpt2_parallel": _quant("gpt2", bits=4, method="gptq", calib=_ids(), group_size=32, sequential=False),
    "sparsegpt50": _prune("sparsegpt", 0.5),
    "sparsegpt2of4": _prune("sparsegpt", pattern="2:4"),
    "sparsegpt30_b16_masked": _prune("sparsegpt", 0.3, blocksize=16, masked=True),
    "sparsegpt50_gpt2": _prune("sparsegpt", 0.5, arch="gpt2"),
    "wanda50": _prune("wanda", 0.5),
    "wanda2of4_masked": _prune("wanda", pattern="2:4", masked=True),
    "wanda50_gpt2": _prune("wanda", 0.5, arch="gpt2"),
    "magnitude50": _prune("magnitude", 0.5),
    "magnitude30_masked": _prune("magnitude", 0.3, masked=True),
    "magnitude50_gpt2": _prune("magnitude", 0.5, arch="gpt2"),
}


def _environment() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def _cpu_flags() -> str:
    """The CPU's vector-extension flags (``/proc/cpuinfo``; ``"unknown"`` elsewhere): what MKL
    dispatches on within one torch CPU capability, recorded beside a variant."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("flags"):
            return " ".join(sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma"))))
    return "unknown"


def _result(case: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, report, codes = CASES[case]()
    finally:
        torch.set_num_threads(threads)
    weights = {k: _digest(v) for k, v in model.state_dict().items()}
    return {
        "weights": weights,
        "codes": codes,
        "report": json.loads(json.dumps(report, default=str)),
        "provenance": [dict(s) for s in model_record(model).compression],
    }


@pytest.fixture(scope="module")
def saved() -> dict:
    d = json.loads(FIXTURE.read_text())
    if d["environment"] != _environment():
        pytest.skip(f"fixture computed under {d['environment']}, here {_environment()}: float sums may differ")
    return d


def _differing(got: dict, want: dict) -> list[str]:
    return sorted(k for k in want["weights"] if got["weights"].get(k) != want["weights"][k])


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_equal_the_old_drivers_bit_for_bit(case, saved):
    got, want = _result(case), saved["cases"][case]
    bad = _differing(got, want)
    for variant in saved.get("variants", {}).get(case, []) if bad else []:  # the same code on another CPU
        if not _differing(got, variant) and got["codes"] == variant["codes"]:
            bad, want = [], {**want, **variant}
            break
    assert not bad, f"{case}: {len(bad)} tensors differ from the old driver, e.g. {bad[:3]}"
    assert got["weights"].keys() == want["weights"].keys()
    assert got["codes"] == want["codes"]
    assert got["report"] == want["report"]
    # every recorded field as before; magnitude pruning now records the same step as the other
    # pruners (pattern, n_sites, achieved added), the old driver recorded fewer fields for it
    assert len(got["provenance"]) == len(want["provenance"])
    for g, w in zip(got["provenance"], want["provenance"]):
        assert {k: g.get(k) for k in w} == w
        assert set(g) - set(w) <= ({"pattern", "n_sites", "achieved"} if case.startswith("magnitude") else set())


def test_registry_names_kinds_and_lookup():
    assert method_names() == ("rtn", "gptq", "magnitude", "sparsegpt", "wanda")
    assert method_names("quantization") == ("rtn", "gptq") and PRUNERS == method_names("pruning")
    assert method_names(calibrated=True) == ("gptq", "sparsegpt", "wanda")
    assert method_names("pruning", nm=True) == ("sparsegpt", "wanda")
    assert get_method("gptq").allowed_options == ("blocksize", "percdamp", "sequential", "batch_size")
    assert get_method("wanda").allowed_options == ("sequential", "batch_size")
    with pytest.raises(ValueError, match="method must be one of"):
        get_method("rtn", "pruning")
    with pytest.raises(ValueError, match="already registered"):
        register_method(CompressionMethod("rtn", "quantization", lambda **kw: None))
    with pytest.raises(ValueError, match="kind must be one of"):
        CompressionMethod("x", "distillation", lambda **kw: None)
    import lrm_interp.evaluation.variants as old

    assert old.parse_compression is parse_compression and old.apply_compression is apply_compression


def test_quantizers_and_pruners_run_through_one_per_site_loop(monkeypatch):
    calls = []
    loop = driver.compress_sites_

    def spy(model, groups, kernel, **kw):
        calls.append(kernel)
        return loop(model, groups, kernel, **kw)

    monkeypatch.setattr(driver, "compress_sites_", spy)
    ids = _ids()
    quantize_model_(tiny_model(seed=0), bits=3, method="gptq", calib=ids, progress=False)
    prune_model_(tiny_model(seed=0), "wanda", 0.5, calib=ids, progress=False)
    prune_model_(tiny_model(seed=0), "magnitude", 0.5, progress=False)
    apply_compression(tiny_model(seed=0), parse_compression("rtn:4"), progress=False)
    assert len(calls) == 4


def test_a_registered_method_runs_in_the_driver_and_specs(monkeypatch):
    def build(*, sparsity, prunen, prunem):
        def prune(W, m, H):  # zero the first input column (H is the calibration Hessian)
            assert H is not None and tuple(H.shape) == (W.shape[1], W.shape[1])
            out = W.clone()
            out[:, 0] = torch.where(m[:, 0], W[:, 0], torch.zeros_like(W[:, 0])) if m is not None else 0
            return out

        return prune

    monkeypatch.setitem(driver._REGISTRY, "firstcol", CompressionMethod("firstcol", "pruning", build, calibrated=True))
    model = tiny_model(seed=0)
    masks = _masks(model)
    rep = prune_model_(model, "firstcol", 0.1, calib=_ids(), masks=masks, progress=False)
    sites = find_sites(model)
    assert rep.pruned == sum(s.out_features for s in sites) - sum(int(m[:, 0].sum()) for m in masks.values())
    assert model_record(model).last("pruning")["method"] == "firstcol"
    spec = parse_compression("firstcol:10%")
    assert spec.needs_calibration and spec.tag == "firstcol10"
    with pytest.raises(ValueError, match="unstructured only; use sparsegpt or wanda"):
        prune_model_(model, "firstcol", pattern="2:4", calib=_ids())
    with pytest.raises(TypeError, match=r"unexpected arguments for firstcol: \['blocksize'\]"):
        prune_model_(model, "firstcol", 0.1, calib=_ids(), blocksize=8)


def test_options_are_checked_per_method():
    model = tiny_model(seed=0)
    with pytest.raises(TypeError, match="unexpected arguments for Wanda"):
        prune_model_(model, "wanda", 0.5, calib=_ids(), blocksize=8)
    with pytest.raises(TypeError, match="unexpected arguments for RTN"):
        quantize_model_(model, bits=3, percdamp=0.1)
    with pytest.raises(ValueError, match="GPTQ needs calibration data"):
        quantize_model_(model, bits=3, method="gptq")
    with pytest.raises(KeyError, match="not pruned here"):
        prune_model_(model, "magnitude", 0.5, masks={"nope": None})


def test_one_nm_check():
    W, H = torch.randn(4, 8), torch.eye(8)
    msg = "N:M pattern needs 0 < N < M, got 4:2"
    for f in (
        lambda: parse_pattern("4:2"),
        lambda: check_pattern(None, 4, 2),
        lambda: sparsegpt_prune(W, H, prunen=4, prunem=2),
        lambda: wanda_prune(W, torch.ones(8), prunen=4, prunem=2),
        lambda: parse_compression("wanda:4:2"),
        lambda: prune_model_(tiny_model(seed=0), "sparsegpt", pattern="4:2", calib=_ids()),
    ):
        with pytest.raises(ValueError, match=msg):
            f()
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("unstructured") == parse_pattern(None) == (0, 0)
    with pytest.raises(ValueError, match="sparsity must be in"):
        check_pattern(1.0, 0, 0)


def test_damped_inverse_cholesky_and_dead_inputs():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 6, generator=g)
    X[:, 2] = 0
    H = 2 * X.T @ X / 40
    U, dead = damped_inverse_cholesky(H, 0.01)
    assert dead.tolist() == [False, False, True, False, False, False]
    Hd = H.double().clone()
    Hd[2, 2] = 1.0
    Hd += 0.01 * torch.diag(Hd).mean() * torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close((U.T @ U).double(), torch.linalg.inv(Hd), rtol=1e-4, atol=1e-5)
    assert torch.equal(U, torch.triu(U)) and float(H[2, 2]) == 0.0  # upper factor; H not modified
    W = torch.randn(3, 6, generator=g)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 2] = True
    p = prepare_obs(W, H, mask, 0.01)
    assert torch.equal(p.W0, W) and torch.equal(p.U, U) and torch.equal(p.prot, mask)
    assert float(p.W[0, 2]) == float(W[0, 2]) and bool((p.W[1:, 2] == 0).all())
    with pytest.raises(ValueError, match="Hessian shape"):
        prepare_obs(W, torch.eye(5), None, 0.01)


if __name__ == "__main__":  # write the fixture from the code as it is now
    import sys

    if sys.argv[1:] == ["--variant"]:  # add this CPU's results where they differ (same capability only)
        out = json.loads(FIXTURE.read_text())
        assert out["environment"] == _environment(), f"fixture computed under {out['environment']}"
        added = []
        for c in sorted(CASES):
            got, known = _result(c), [out["cases"][c], *out.get("variants", {}).get(c, [])]
            if all(_differing(got, k) or got["codes"] != k["codes"] for k in known):
                v = {
                    "cpu_flags": _cpu_flags(),
                    "weights": got["weights"],
                    "codes": got["codes"],
                    "report": got["report"],
                }
                out.setdefault("variants", {}).setdefault(c, []).append(v)
                added.append(c)
        print(f"added variants for {added or 'no case'}")
    else:
        out = {"environment": _environment(), "cases": {c: _result(c) for c in sorted(CASES)}}
    FIXTURE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE} ({len(CASES)} cases)")


def test_quantizer_specs_name_their_grid():
    """``rtn:3`` is the asymmetric grid (the library default), ``rtn:3:sym`` the symmetric one:
    each gives the weights quantize_model_ gives for that grid, and its own folder tag."""
    asym, sym = parse_compression("rtn:3"), parse_compression("rtn:3:sym")
    assert (asym.symmetric, sym.symmetric) == (False, True)
    assert parse_compression("rtn:3:asym") == asym
    assert (asym.tag, sym.tag) == ("rtn3", "rtn3sym")
    for spec in ("rtn:3:sim", "rtn:3:sym:x", "magnitude:0.5:sym"):
        with pytest.raises(ValueError):
            parse_compression(spec)
    model = tiny_model(seed=0)
    for spec, symmetric in ((asym, False), (sym, True)):
        got, rep = apply_compression(model, spec, progress=False)
        ref = quantize_model_(tiny_model(seed=0), bits=3, symmetric=symmetric, progress=False)
        assert rep["symmetric"] is symmetric and ref.symmetric is symmetric
    w_asym = apply_compression(model, asym, progress=False)[0].state_dict()
    w_sym = apply_compression(model, sym, progress=False)[0].state_dict()
    ref = tiny_model(seed=0)
    quantize_model_(ref, bits=3, symmetric=True, progress=False)
    keys = [k for k in w_sym if "layers" in k and k.endswith("proj.weight")]
    assert keys and all(torch.equal(w_sym[k], ref.state_dict()[k]) for k in keys)
    assert any(not torch.equal(w_sym[k], w_asym[k]) for k in keys)
