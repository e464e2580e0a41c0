"""CLI: attribute → protect → quantize on the shipped toy model; toy eval/traces."""

from __future__ import annotations

import json

import pytest
import torch
from cli_run import run_cli as _rc

from lrm_interp.cli.main import main
from lrm_interp.model.sites import get_module
from lrm_interp.protect.encoding import load_masks
from lrm_interp.toy import load_toy_model, toy_model_dir


def test_attribute_protect_quantize_roundtrip(tmp_path):
    assert main(["toy", "traces", "--gold", "--per-family", "2", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert (
        main(
            [
                "attribute",
                "--model",
                "toy",
                "--data",
                str(tmp_path / "t.jsonl"),
                "--out",
                str(tmp_path / "a"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "protect",
                "--scores",
                str(tmp_path / "a"),
                "--policy",
                "final_mlp",
                "--bits",
                "3",
                "--out",
                str(tmp_path / "fm.safetensors"),
            ]
        )
        == 0
    )
    fm, meta = load_masks(tmp_path / "fm.safetensors")
    assert sorted(fm) == [f"model.layers.3.mlp.{k}_proj" for k in ("down", "gate", "up")]
    assert meta["policy"] == "final_mlp"
    assert (
        main(
            [
                "protect",
                "--scores",
                str(tmp_path / "a"),
                "--policy",
                "global_top",
                "--saliency",
                "attribution_ri",
                "--model",
                "toy",
                "--data",
                str(tmp_path / "t.jsonl"),
                "--budget",
                "0.01",
                "--group-size",
                "32",
                "--out",
                str(tmp_path / "g.safetensors"),
            ]
        )
        == 0
    )
    g, meta = load_masks(tmp_path / "g.safetensors")
    n = sum(m.mask.numel() for m in g.values())
    assert sum(m.n_protected for m in g.values()) == round(0.01 * n)
    assert 3.0 < meta["bits_per_weight"]["bpw"] < 5.0
    # regexes: an `always` module counts against the budget (total exact), `never` sites get nothing
    assert (
        main(
            [
                "protect",
                "--scores",
                str(tmp_path / "a"),
                "--policy",
                "global_top",
                "--saliency",
                "magnitude",
                "--model",
                "toy",
                "--budget",
                "0.03",
                "--always",
                r"layers\.3\.self_attn\.v_proj",
                "--never",
                r"layers\.0\.",
                "--out",
                str(tmp_path / "r.safetensors"),
            ]
        )
        == 0
    )
    r, _ = load_masks(tmp_path / "r.safetensors")
    assert sum(m.n_protected for m in r.values()) == round(0.03 * n)
    assert r["model.layers.3.self_attn.v_proj"].is_full and not any(".layers.0." in k for k in r)
    assert (
        main(
            [
                "quantize",
                "--model",
                str(toy_model_dir()),
                "--bits",
                "3",
                "--group-size",
                "32",
                "--masks",
                str(tmp_path / "g.safetensors"),
                "--out",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    from transformers import AutoModelForCausalLM

    q = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    orig, _ = load_toy_model()
    for name, m in g.items():
        w0, w1 = get_module(orig, name).weight, get_module(q, name).weight
        assert torch.equal(w1[m.mask], w0[m.mask])
        assert len(torch.unique(w1[0, :32][~m.mask[0, :32]])) <= 8
    info = json.loads((tmp_path / "q" / "lrm_interp_quantization.json").read_text())
    assert info["bits"] == 3 and info["n_protected"] == sum(m.n_protected for m in g.values())
    assert (
        main(
            [
                "protect",
                "--scores",
                str(tmp_path / "a"),
                "--policy",
                "global_top",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )  # needs --model: clear error


def test_toy_eval_cli(capsys):
    assert main(["toy", "eval", "--per-family", "3"]) == 0
    out = capsys.readouterr().out
    assert "'mean': 1.0" in out


def test_protect_and_quantize_help_lists_every_option_and_examples():
    import argparse

    from lrm_interp.cli.main import build_parser
    from lrm_interp.protect.policies import POLICIES
    from lrm_interp.protect.registry import SALIENCIES

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("protect", "quantize"):
        p = sub.choices[name]
        assert p.description and f"lrm-interp {name} --" in p.epilog and "example" in p.epilog
        assert issubclass(p.formatter_class, argparse.RawDescriptionHelpFormatter)
        for act in p._actions:
            assert act.help and act.help != argparse.SUPPRESS, (name, act.dest)
        assert p.epilog.startswith("example:\n  lrm-interp " + name)
        assert "example:\n  lrm-interp " + name in p.format_help()  # the epilog keeps its line breaks
    prot = {a.dest: a for a in sub.choices["protect"]._actions}
    assert list(prot["saliency"].choices) == list(SALIENCIES) and tuple(prot["policy"].choices) == POLICIES
    assert all(n in sub.choices["protect"].epilog for n in SALIENCIES)


def test_protect_and_quantize_errors_name_the_value(tmp_path, capsys):
    from lrm_interp.attribution.results import Attribution
    from lrm_interp.model.sites import find_sites

    model, _ = load_toy_model()
    sites = tuple(find_sites(model))
    Attribution(("deduction",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution").save(
        tmp_path / "a"
    )
    base = ["protect", "--scores", str(tmp_path / "a"), "--out", str(tmp_path / "m.safetensors")]
    cases = [
        (["protect", "--scores", str(tmp_path / "nope"), "--out", "x"], "nope"),
        (base + ["--policy", "final_mlp", "--budget", "1.5"], "1.5"),
        (base + ["--policy", "final_mlp", "--bits", "9"], "got 9"),
        (base + ["--policy", "final_mlp", "--group-size", "-4"], "-4"),
        (base + ["--policy", "final_mlp", "--never", "(["], "--never"),
        (base + ["--model", "toy", "--saliency", "attribution"], "--data"),
        (
            [
                "quantize",
                "--model",
                "toy",
                "--bits",
                "3",
                "--masks",
                str(tmp_path / "gone.safetensors"),
                "--out",
                str(tmp_path / "q"),
            ],
            "gone.safetensors",
        ),
    ]
    capsys.readouterr()
    for argv, needle in cases:
        assert _rc(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(err) == 1 and err[0].startswith(f"lrm-interp {argv[0]}: error:") and needle in err[0], (argv, err)
    # magnitude saliency needs no data; the quantized copy carries its provenance record
    assert main(base + ["--model", "toy", "--saliency", "magnitude", "--budget", "0.01", "--quiet"]) == 0
    assert (
        main(
            [
                "quantize",
                "--model",
                "toy",
                "--bits",
                "3",
                "--method",
                "gptq",
                "--group-size",
                "0",
                "--quiet",
                "--masks",
                str(tmp_path / "m.safetensors"),
                "--out",
                str(tmp_path / "q"),
            ]
        )
        == 0
    )
    rec = json.loads((tmp_path / "q" / "lrm_interp_provenance.json").read_text())
    step = rec["compression"][-1]
    assert step["kind"] == "quantization" and step["method"] == "gptq" and step["group_size"] is None
    assert step["n_protected"] == round(0.01 * sum(s.n_weights for s in sites))


def test_quantize_never_writes_onto_its_source_or_an_existing_result(tmp_path, capsys):
    """Issue 22, loss case 2: ``quantize --out`` equal to (or inside) ``--model`` is refused before
    anything is written; an existing result is replaced only with ``--overwrite``, and whole."""
    import shutil

    src = tmp_path / "m"
    shutil.copytree(toy_model_dir(), src)
    before = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()}
    for out in (src, src / "sub"):
        assert main(["quantize", "--model", str(src), "--bits", "2", "--quiet", "--out", str(out)]) == 2
        assert "overlaps its source" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before
    assert not (src / "sub").exists()
    q = tmp_path / "q"
    assert main(["quantize", "--model", str(src), "--bits", "8", "--quiet", "--out", str(q)]) == 0
    first = json.loads((q / "lrm_interp_quantization.json").read_text())
    assert first["bits"] == 8
    assert main(["quantize", "--model", str(src), "--bits", "2", "--quiet", "--out", str(q)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((q / "lrm_interp_quantization.json").read_text()) == first
    # a file the earlier result does not record (a user's): refused, never deleted with it (H5-Q6)
    (q / "stale.txt").write_text("from the old result")
    assert main(["quantize", "--model", str(src), "--bits", "2", "--quiet", "--overwrite", "--out", str(q)]) == 2
    assert "stale.txt" in capsys.readouterr().err and (q / "stale.txt").exists()
    # a file the earlier result wrote (it records it) and this one does not: replaced whole, not merged
    rec = json.loads((q / "lrm_interp_quantization.json").read_text())
    rec["files"].append("stale.txt")
    (q / "lrm_interp_quantization.json").write_text(json.dumps(rec))
    assert main(["quantize", "--model", str(src), "--bits", "2", "--quiet", "--overwrite", "--out", str(q)]) == 0
    assert json.loads((q / "lrm_interp_quantization.json").read_text())["bits"] == 2
    assert not (q / "stale.txt").exists()  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_quiet_silences_every_progress_bar(tmp_path, capfd):
    """Issue 22: ``--quiet`` silenced only lrm_interp's own bars; transformers' shard writer
    ("Writing model shards") still printed. Now nothing but the result line is printed."""
    assert main(["quantize", "--model", "toy", "--bits", "3", "--quiet", "--out", str(tmp_path / "q")]) == 0
    out, err = capfd.readouterr()
    assert err == "", err
    assert out.startswith(f"wrote {tmp_path / 'q'}") and len(out.strip().splitlines()) == 1
    assert (tmp_path / "q" / "model.safetensors").is_file()


def test_quiet_progress_covers_direct_tqdm_and_transformers_bars(capfd):
    """The GGUF conversion of SmolLM2 (transformers.modeling_gguf_pytorch_utils) calls tqdm
    directly, the shard writer goes through transformers' logging.tqdm: both are silent inside
    quiet_progress, and bars come back after it."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from lrm_interp.cli.common import quiet_progress

    with quiet_progress():
        list(tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        list(hf_logging.tqdm(range(3), desc="Writing model shards"))
        list(tqdm(range(3), desc="explicitly enabled", disable=False))
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()
    list(tqdm(range(3), desc="after"))
    assert "after" in capfd.readouterr().err


def test_grid_flags_are_one_pair_with_one_default(tmp_path, capsys):
    """Issue 21 item 5: protect, quantize, bits and experiment protection all take --symmetric and
    --asymmetric (mutually exclusive, one destination), default asymmetric, said in the help."""
    import argparse

    from lrm_interp.attribution.results import Attribution
    from lrm_interp.cli.main import build_parser
    from lrm_interp.model.sites import find_sites

    parser = build_parser()
    required = {
        "protect": ["--scores", "s", "--out", "o"],
        "quantize": ["--model", "toy", "--bits", "3", "--out", "o"],
        "bits": ["--model", "toy", "--budget", "3.5", "--out", "o"],
        "experiment protection": ["--out", "o"],
    }
    for cmd, argv in required.items():
        path = cmd.split()
        p = parser
        for name in path:
            p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        flags = {a.option_strings[0]: a for a in p._actions if a.dest == "symmetric"}
        assert sorted(flags) == ["--asymmetric", "--symmetric"], cmd
        assert all(a.default is False for a in flags.values())
        assert "default: asymmetric" in flags["--symmetric"].help and "the default" in flags["--asymmetric"].help
        assert parser.parse_args(path + argv).symmetric is False
        assert parser.parse_args(path + argv + ["--symmetric"]).symmetric is True
        assert parser.parse_args(path + argv + ["--asymmetric"]).symmetric is False
        with pytest.raises(SystemExit):
            parser.parse_args(path + argv + ["--symmetric", "--asymmetric"])
        assert "not allowed with argument" in capsys.readouterr().err
    # and the choice reaches the output: the mask file's metadata and bits per weight
    model, _ = load_toy_model()
    sites = tuple(find_sites(model))
    Attribution(("deduction",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution").save(
        tmp_path / "a"
    )
    bpw = {}
    for flag in ([], ["--symmetric"], ["--asymmetric"]):
        out = tmp_path / f"m{len(bpw)}.safetensors"
        assert (
            main(["protect", "--scores", str(tmp_path / "a"), "--policy", "final_mlp", "--out", str(out)] + flag) == 0
        )
        meta = load_masks(out)[1]
        bpw[tuple(flag)] = (meta["symmetric"], meta["bits_per_weight"]["bpw"])
    assert bpw[()] == bpw[("--asymmetric",)] and bpw[()][0] is False
    assert bpw[("--symmetric",)][0] is True and bpw[("--symmetric",)][1] < bpw[()][1]  # no zero-points stored
