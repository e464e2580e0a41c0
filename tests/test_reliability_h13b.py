"""Leftovers of the twelfth hostile probe run (issue 22, "nothing lost, nothing silent"), part B:
bit allocations and the files built from them (H13-BPM, H13-UNB, H13-GQS).

``alloc.bits[name] = 16`` left ``alloc.bpw`` stale, and ``save`` / ``load`` carried the stale
figure (the bits are read-only now, :func:`with_bits` builds the edited allocation). An attribution
whose patching left sites unresolved was used by ``bits`` / ``protect`` without a word (a warning
now, from ``module_scores``)."""

from __future__ import annotations

import copy
import json
import pickle
import re
import subprocess
import sys

import pytest
from cli_run import run_cli as _rc
from cli_run import toy_gold

from lrm_interp.model.sites import find_sites
from lrm_interp.protect.bit_allocation import (
    AllocationBits,
    BitAllocation,
    allocate_bits,
    allocation_bpw,
    check_bpw,
    quantization_errors,
    with_bits,
)


@pytest.fixture(scope="module")
def toy():
    """The shipped toy model and its linear sites."""
    from lrm_interp.toy import load_toy_model

    model, _ = load_toy_model()
    return model, find_sites(model)


@pytest.fixture(scope="module")
def alloc(toy) -> BitAllocation:
    """The probe's allocation: 3.5 bits per weight over the toy model's sites."""
    model, sites = toy
    errs = quantization_errors(model, sites, choices=(2, 3, 4, 8, 16), group_size=128)
    return allocate_bits(sites, errs, None, 3.5)


def test_allocation_bits_are_read_only_and_the_message_names_with_bits(alloc, tmp_path):
    """H13-BPM: an item assignment (the probe's ``alloc.bits[name] = 16``) or deletion raises
    ``TypeError`` naming :func:`with_bits`; ``bpw`` and the saved file stay those of its bits."""
    name = next(iter(alloc.bits))
    before = dict(alloc.bits)
    with pytest.raises(TypeError, match=r"BitAllocation\.bits is read-only: its bpw is computed from it.*with_bits"):
        alloc.bits[name] = 16  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        del alloc.bits[name]  # type: ignore[attr-defined]
    assert dict(alloc.bits) == before and isinstance(alloc.bits, AllocationBits)
    assert alloc.bits == before  # compares equal to a plain dict
    alloc.save(tmp_path / "b.json")
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["bits"] == before and saved["bpw"] == alloc.bpw
    back = BitAllocation.load(tmp_path / "b.json")
    assert back.bits == alloc.bits and back.bpw == alloc.bpw


def test_the_bits_given_are_copied(toy):
    """The dict the allocation was built from, edited afterwards, does not change it."""
    _, sites = toy
    bits = {s.name: 4 for s in sites}
    a = BitAllocation(bits, allocation_bpw(bits, sites), None, "test")
    bits[sites[0].name] = 16
    assert a.bits[sites[0].name] == 4


def test_an_allocation_copies_pickles_and_replaces(alloc):
    """Read-only bits survive ``copy.deepcopy``, ``pickle`` and ``dict(...)`` (an editable copy)."""
    assert copy.deepcopy(alloc) == alloc
    assert pickle.loads(pickle.dumps(alloc)) == alloc
    d = dict(alloc.bits)
    d[next(iter(d))] = 16
    assert d != alloc.bits


def test_with_bits_recomputes_bpw(toy, alloc, tmp_path):
    """:func:`with_bits`: the probe's edit (10 modules kept in FP16) gives the bpw its bits cost
    (7.2188, not the stale 3.5), which saves, loads and passes :func:`check_bpw`; the original is
    unchanged and the edit is recorded."""
    model, sites = toy
    names = list(alloc.bits)[:10]
    edited = with_bits(alloc, model, {n: 16 for n in names})
    assert edited.bpw == pytest.approx(7.21875, abs=1e-4)
    assert edited.bpw == pytest.approx(allocation_bpw(edited.bits, sites))
    assert alloc.bpw == 3.5 and all(alloc.bits[n] != 16 for n in names)
    assert edited.provenance["edited"] == {n: 16 for n in names} and "objective" not in edited.provenance
    assert (edited.budget_bpw, edited.model, edited.group_size) == (alloc.budget_bpw, alloc.model, alloc.group_size)
    check_bpw(edited, model)
    edited.save(tmp_path / "e.json")
    assert BitAllocation.load(tmp_path / "e.json").bpw == edited.bpw
    assert with_bits(alloc, sites, {names[0]: 16}).bpw == pytest.approx(
        allocation_bpw(dict(alloc.bits, **{names[0]: 16}), sites)
    )


def test_with_bits_refuses_unknown_sites_and_bad_widths(toy, alloc):
    """A site the allocation does not name, a bit width that is not 2..8 or 16, and sites that
    lack one of the allocation's: ``ValueError`` naming it."""
    model, sites = toy
    with pytest.raises(ValueError, match="names no site 'nope'"):
        with_bits(alloc, model, {"nope": 4})
    with pytest.raises(ValueError, match="must be an integer 2..8 or 16"):
        with_bits(alloc, model, {sites[0].name: 9})
    with pytest.raises(ValueError, match="lack 27 site"):
        with_bits(alloc, sites[:1], {sites[0].name: 8})


# --- H13-UNB: scores with sites that patching left unresolved -------------------------------------


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """The probe's attribution: ``attribute --method patching --patch-alpha 0.01`` on 2 gold traces
    per family, which leaves 22 of 28 sites unresolved for uncertainty-estimation (recorded)."""
    tmp = tmp_path_factory.mktemp("h13b_unb")
    gold = toy_gold(tmp, n=2)
    out = tmp / "AP"
    with pytest.warns(UserWarning, match="changed no span loss"):
        rc = _rc(
            ["attribute", "--model", "toy", "--data", gold, "--method", "patching", "--patch-alpha", 0.01]
            + ["--out", out, "--quiet"]
        )
    assert rc == 0
    unresolved = json.loads((out / "attribution.json").read_text())["provenance"]["counts"]["unresolved_sites"]
    assert unresolved["uncertainty-estimation"] == 22 and unresolved["backtracking"] == 0
    return tmp, gold, out


_UNB = (
    r"the attribution scores .*AP were computed by patching at patch_alpha 0\.01, which changed no span loss at "
    r"some sites: 22 of 28 sites unresolved for behaviour 'uncertainty-estimation'; their scores are ties at 0 "
    r"and rank those modules by nothing; use a larger --patch-alpha"
)


def test_module_scores_warns_about_unresolved_sites(patched):
    """:func:`module_scores` on a patching attribution with unresolved sites for a behaviour used
    (that behaviour, or the mean over all) gives an :class:`UnresolvedScoresWarning` (a
    :class:`ZeroScoreWarning`) naming the count, the behaviour and the patch_alpha; a behaviour
    whose sites were all resolved gets no warning."""
    import warnings

    from lrm_interp.attribution.results import Attribution
    from lrm_interp.protect.policies import UnresolvedScoresWarning, ZeroScoreWarning, module_scores

    _, _, out = patched
    attr = Attribution.load(out)
    assert issubclass(UnresolvedScoresWarning, ZeroScoreWarning)
    for behavior in ("uncertainty-estimation", None):
        with pytest.warns(UnresolvedScoresWarning, match=_UNB):
            module_scores(attr, behavior, source=str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module_scores(attr, "backtracking", source=str(out))


@pytest.mark.parametrize(
    "argv",
    [
        ["bits", "--model", "toy", "--scores", "{AP}", "--behavior", "uncertainty-estimation", "--budget", 3.5]
        + ["--out", "{t}/bpu.json", "--quiet"],
        ["protect", "--scores", "{AP}", "--model", "toy", "--data", "{gold}", "--out", "{t}/mp.safetensors", "--quiet"],
    ],
    ids=["bits", "protect"],
)
def test_bits_and_protect_say_the_scores_have_unresolved_sites(patched, tmp_path, argv):
    """H13-UNB: ``bits --scores AP --behavior uncertainty-estimation`` and ``protect --scores AP``
    (the probe's commands) still run, and say once, in one line, that 22 of 28 sites were left
    unresolved and to use a larger --patch-alpha (they said nothing: 21 modules at 2 bits from ties)."""
    _, gold, out = patched
    argv = [str(x).format(AP=out, gold=gold, t=tmp_path) for x in argv]
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from lrm_interp.cli.main import main; sys.exit(main(sys.argv[1:]))", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if "unresolved" in ln]
    assert len(lines) == 1, run.stderr
    assert re.fullmatch(rf"lrm-interp {argv[0]}: warning: {_UNB} .*", lines[0]), lines[0]


# --- H13-GQS: the GPTQModel dynamic file says the grid of every module --------------------------


@pytest.mark.parametrize(
    "extra, grid",
    [
        (["--group-size", 0], {"group_size": -1, "sym": False}),
        (["--symmetric", "--default-bits", 3], {"group_size": 128, "sym": True}),
    ],
    ids=["per-channel", "symmetric"],
)
def test_gptqmodel_file_records_every_modules_grid(tmp_path, capsys, extra, grid):
    """H13-GQS: ``bits --gptqmodel`` wrote only the modules off ``--default-bits``, without
    ``sym``: with ``--group-size 0`` the 18 per-channel 4-bit modules were recorded nowhere. Now
    every quantized module has a ``"+:^name$"`` entry with its bits, ``group_size`` (-1 = per
    channel) and ``sym``, as the allocation's grid, and the command says which ``QuantizeConfig``
    the file assumes."""
    from lrm_interp.protect import exports

    b, dyn = tmp_path / "b.json", tmp_path / "dyn.json"
    argv = ["bits", "--model", "toy", "--sensitivity", "none", "--budget", 3.5, *extra]
    capsys.readouterr()
    assert _rc([*argv, "--out", b, "--gptqmodel", dyn, "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    alloc = BitAllocation.load(b)
    d = json.loads(dyn.read_text())
    assert len(d) == len(alloc.bits) and all(k.startswith("+:^") and k.endswith("$") for k in d)
    for name, bits in alloc.bits.items():
        assert d[f"+:^{re.escape(name)}$"] == {"bits": bits, **grid}
    default = 3 if "--default-bits" in extra else 4
    assert default in alloc.bits.values()  # the modules at the default bits have their entries too
    assert exports.gptqmodel_quantize_config(alloc, default_bits=default) == {"bits": default, **grid}
    assert out[-1] == (
        f"{dyn} assumes QuantizeConfig(bits={default}, group_size={grid['group_size']}, sym={grid['sym']}, "
        "dynamic=...): each of its entries sets the module's bits, group_size and sym"
    )


def test_gptqmodel_file_skips_fp16_modules(toy):
    """Modules kept in FP16 stay ``"-:^name$": {}`` (skipped by GPTQModel); the rest carry the grid."""
    from lrm_interp.protect import exports

    _, sites = toy
    bits = {s.name: 16 if i == 0 else 4 for i, s in enumerate(sites)}
    alloc = BitAllocation(bits, allocation_bpw(bits, sites, group_size=32), None, "test", group_size=32)
    d = exports.gptqmodel_dynamic_bits(alloc, default_bits=4)
    assert d[f"-:^{re.escape(sites[0].name)}$"] == {}
    assert d[f"+:^{re.escape(sites[1].name)}$"] == {"bits": 4, "group_size": 32, "sym": False}
    assert len(d) == len(sites)
    with pytest.raises(ValueError, match=r"default_bits must be an integer in \[2, 8\]"):
        exports.gptqmodel_quantize_config(alloc, default_bits=16)
