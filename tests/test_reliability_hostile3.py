"""Silent results found by a hostile run (issue 22, "nothing silent"): labels of an attribution
result outside its checksum (H2-2), masks for one quantization grid used on another without a word
(H2-4), a top-k overlap with k >= the number of sites (H2-8)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_run import run_cli as _rc

from lrm_interp._io import ChecksumError
from lrm_interp.attribution.faithfulness import PatchingEffects, compare_scores
from lrm_interp.attribution.results import Attribution
from lrm_interp.model.sites import Site, find_sites
from lrm_interp.protect.encoding import grid_mismatch, save_masks
from lrm_interp.protect.policies import build_masks
from lrm_interp.protect.saliency import magnitude
from lrm_interp.toy import load_toy_model


def _site(layer: int, leaf: str, kind: str, n: int = 16) -> Site:
    name = f"model.layers.{layer}.mlp.{leaf}"
    return Site(name, layer, "mlp", kind, n, n, n * n, n * n, "Linear")


def _attr() -> Attribution:
    sites = (_site(0, "up_proj", "up"), _site(0, "down_proj", "down"), _site(1, "up_proj", "up"))
    scores = torch.tensor([[5.0, 1.0, 0.5], [0.1, 3.0, 2.0]], dtype=torch.float64)
    return Attribution(("backtracking", "deduction"), sites, scores, method="attribution")


def _edit(d, fn) -> None:
    p = d / "attribution.json"
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta, indent=2))


# ------------------------------------------------------------------ H2-2
def test_swapped_site_names_are_refused(tmp_path):
    d = _attr().save(tmp_path / "a")
    assert Attribution.load(d).site_names[0] == "model.layers.0.mlp.up_proj"  # round trip

    def swap(meta):
        s = meta["sites"]
        s[0]["name"], s[1]["name"] = s[1]["name"], s[0]["name"]

    _edit(d, swap)
    with pytest.raises(ChecksumError, match=r"attribution\.json.*labels"):
        Attribution.load(d)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["behaviors"].reverse(),  # relabelled rows
        lambda m: m.__setitem__("method", "dom"),
        lambda m: m["sites"][2].__setitem__("n_weights", 1),
        lambda m: m["sites"][0].__setitem__("layer", 1),
    ],
)
def test_other_label_edits_are_refused(tmp_path, edit):
    d = _attr().save(tmp_path / "a")
    _edit(d, edit)
    with pytest.raises(ChecksumError, match=str(d / "attribution.json")):
        Attribution.load(d)


def test_edit_with_a_recomputed_json_checksum_is_still_refused(tmp_path):
    """The labels checksum is also in the safetensors metadata (under the payload checksum)."""
    from lrm_interp.attribution.results import labels_checksum

    d = _attr().save(tmp_path / "a")

    def swap_and_rehash(meta):
        s = meta["sites"]
        s[0]["name"], s[1]["name"] = s[1]["name"], s[0]["name"]
        meta["labels_sha256"] = labels_checksum(meta["method"], meta["behaviors"], s)

    _edit(d, swap_and_rehash)
    with pytest.raises(ChecksumError, match="attribution.safetensors"):
        Attribution.load(d)


def test_folder_saved_before_labels_checksum_loads(tmp_path):
    """An attribution.json without labels_sha256 (older saves) loads as before."""
    from safetensors import safe_open

    from lrm_interp._io import write_safetensors

    d = _attr().save(tmp_path / "a")
    _edit(d, lambda m: m.pop("labels_sha256"))
    with safe_open(str(d / "attribution.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("labels_sha256")
    write_safetensors(d / "attribution.safetensors", tensors, meta)
    from lrm_interp._io import payload_checksum

    _edit(d, lambda m: m.__setitem__("tensors_sha256", payload_checksum(tensors, {"format": meta["format"]})))
    a = Attribution.load(d)
    assert a.site_names == _attr().site_names and torch.equal(a.scores, _attr().scores)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["sites"][1].__setitem__("name", m["sites"][0]["name"]), "duplicate site records"),
        # NaN / Infinity are no JSON: the strict reader refuses them (H11-AJS); other bad numbers reach the record check
        (lambda m: m["sites"][1].__setitem__("n_weights", float("nan")), "NaN is not a JSON number"),
        (lambda m: m["sites"][1].__setitem__("in_features", float("inf")), "Infinity is not a JSON number"),
        (lambda m: m["sites"][1].__setitem__("n_weights", "many"), "invalid values.*n_weights"),
        (lambda m: m["sites"][1].__setitem__("in_features", 2.5), "invalid values.*in_features"),
        (lambda m: m["sites"][0].__setitem__("layer", 1.5), "invalid values.*layer"),
        (lambda m: m["sites"][0].pop("kind"), "site record 0 is malformed"),
        (lambda m: m["behaviors"].__setitem__(1, "backtracking"), "duplicate behaviours"),
    ],
)
def test_bad_site_records_are_refused_naming_the_file(tmp_path, edit, match):
    d = _attr().save(tmp_path / "a")
    _edit(d, lambda m: (edit(m), m.pop("labels_sha256")))  # even without the labels checksum
    with pytest.raises(ValueError, match=match) as e:
        Attribution.load(d)
    assert str(d / "attribution.json") in str(e.value)


def test_protect_refuses_relabelled_scores(tmp_path, capsys):
    a = _attr()
    d = a.save(tmp_path / "a")
    _edit(d, lambda m: m["sites"].reverse())
    rc = _rc(["protect", "--scores", str(d), "--policy", "modules_by_score", "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "attribution.json" in err and "labels" in err
    assert not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------ H2-4
def test_grid_mismatch_text():
    extra = {"bits": 3, "group_size": 128, "symmetric": False, "saliency": "attribution"}
    assert grid_mismatch(extra, 3, 128, False) is None
    w = grid_mismatch(extra, 4, None, True)
    assert w is not None and "3-bit group 128 asymmetric" in w and "4-bit per channel symmetric" in w
    assert "'attribution'" in w and "grid" in w and "\n" not in w
    w = grid_mismatch(dict(extra, saliency="magnitude"), 4, 128, False)
    assert w is not None and "does not depend on the grid" in w
    assert "per module" in (grid_mismatch(dict(extra, saliency=None), 2, 128, False) or "")
    assert grid_mismatch({"budget": 0.1}, 4, 128, False) is None  # masks that record no grid


def test_quantize_warns_about_masks_of_another_grid(tmp_path, capsys):
    model, _ = load_toy_model()
    sites = find_sites(model)
    masks = build_masks(sites, "global_top", 0.01, saliency=magnitude(model, sites))
    grid = {"bits": 3, "group_size": 128, "symmetric": False, "saliency": "attribution"}
    p = save_masks(masks, tmp_path / "m.safetensors", metadata=grid)
    argv = ["quantize", "--model", "toy", "--masks", str(p), "--quiet"]
    assert _rc(argv + ["--bits", "4", "--group-size", "0", "--out", str(tmp_path / "q4")]) == 0
    warn = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warn) == 1, warn
    assert "3-bit group 128 asymmetric" in warn[0] and "4-bit per channel asymmetric" in warn[0]
    assert "attribution" in warn[0]
    info = json.loads((tmp_path / "q4" / "lrm_interp_quantization.json").read_text())
    assert info["masks_grid"] == grid
    # the same grid: no warning
    assert _rc(argv + ["--bits", "3", "--out", str(tmp_path / "q3")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((tmp_path / "q3" / "lrm_interp_quantization.json").read_text())["masks_grid"] == grid


# ------------------------------------------------------------------ H2-8
def _effects(n_sites: int) -> tuple[PatchingEffects, dict]:
    g = torch.Generator().manual_seed(0)
    eff = torch.randn(1, 2, n_sites, generator=g, dtype=torch.float64)
    pe = PatchingEffects(
        ("x",),
        tuple(f"s{j}" for j in range(n_sites)),
        (1.0,),
        {"x": eff},
        {"x": torch.zeros(2)},
        {"x": torch.tensor([1, 2])},
        {"x": (("a", 0), ("b", 0))},
    )
    return pe, {"x": torch.randn(2, n_sites, generator=g, dtype=torch.float64)}


@pytest.mark.parametrize("k", [5, 6, 50])
def test_compare_scores_refuses_top_k_not_below_the_sites(k):
    pe, dots = _effects(5)
    with pytest.raises(ValueError, match=r"--top-k .*5 site"):
        compare_scores(pe, dots, top_k=k)
    assert len(compare_scores(pe, dots, top_k=4)[0]) == 1


def test_cli_faithfulness_refuses_top_k_not_below_the_sites(tmp_path, capsys):
    from synth import synthetic_traces

    data = synthetic_traces(2, seed=2).save_jsonl(tmp_path / "t.jsonl")
    n = len(find_sites(load_toy_model()[0]))
    argv = ["faithfulness", "--model", "toy", "--data", str(data), "--out", str(tmp_path / "f"), "--quiet"]
    assert _rc(argv + ["--top-k", str(n)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "--top-k" in err[0] and f"{n} site" in err[0]
    assert not (tmp_path / "f").exists()
