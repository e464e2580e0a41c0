"""`lrm-interp quickstart` (the README's main job): a study of the shipped toy at matched bits per weight,
through the installed console script; the same numbers as before it was a study; its report in a browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest


def _cli() -> list[str]:
    exe = shutil.which("lrm-interp")
    return [exe] if exe else [sys.executable, "-m", "lrm_interp.cli.main"]


@pytest.mark.slow
def test_quickstart_on_shipped_model(tmp_path):
    out = tmp_path / "qs"
    argv = ["quickstart", "--out", str(out), "--traces", "6", "--eval", "15", "--quiet"]
    r = subprocess.run(
        _cli() + argv, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shipped toy reasoning model" in r.stdout and "TINY" not in r.stdout
    for f in [
        "traces.jsonl",
        "shift.csv",
        "shift.png",
        "attribution_fp32/scores.csv",
        "attribution_fp32/heatmap.png",
        "attribution_rtn3/scores.csv",
        "ranking.csv",
        "masks.safetensors",
        "masks.json",
        "bits.json",
        "study.json",
        "outcomes.safetensors",
        "results.csv",
        "bpw_accuracy.png",
    ]:
        assert (out / f).stat().st_size > 0, f
    df = pd.read_csv(out / "attribution_fp32" / "scores.csv")
    assert df["site"].nunique() == 28
    assert df.groupby("behavior")["ri"].sum().sub(1).abs().max() < 1e-4  # RI sums to 1 per behaviour
    rk = pd.read_csv(out / "ranking.csv")
    assert (rk.groupby("behavior")["rank"].apply(lambda r: list(r) == list(range(1, 29)))).all()
    # the masks file loads and holds exactly 2% of the 28 sites' weights; its summary agrees
    from lrm_interp.protect import load_masks

    masks, meta = load_masks(out / "masks.safetensors")
    n_w = int(df.drop_duplicates("site")["n_params"].sum())  # no biases in this model: params == weights
    n_p = sum(m.n_protected for m in masks.values())
    assert n_p == round(0.02 * n_w) and meta["budget"] == 0.02
    summary = json.loads((out / "masks.json").read_text())
    assert (
        summary["protected_weights"] == n_p
        and abs(summary["bits_per_weight"]["bpw"] - meta["bits_per_weight"]["bpw"]) < 1e-12
    )

    # the printed comparison: the study's rows at matched bits per weight, as saved
    from lrm_interp.experiments.study import ROW_KEYS, StudyResult

    res = StudyResult.load(out)
    lines = r.stdout.splitlines()
    i = next(k for k, l_ in enumerate(lines) if l_.startswith("held-out accuracy at matched bits per weight (15 "))
    table = lines[i + 2 : i + 2 + len(ROW_KEYS)]
    labels = [
        "full precision (fp32)",
        "3-bit RTN, group 128 (uniform)",
        "3-bit + 2% magnitude",
        "3-bit + 2% attribution",
        "mixed precision by attribution",
    ]
    for line, label, row in zip(table, labels, res.rows):
        assert line.strip().startswith(label) and f"{row.bpw:.3f}" in line and f"{100 * row.value:.1f}%" in line
        assert f"[{100 * row.ci[0]:.1f}, {100 * row.ci[1]:.1f}]" in line
    assert res.row("fp").value >= 0.93 and res.row("uniform").value < 1.0  # 3-bit group-128 RTN costs accuracy
    assert res.row("attribution").bpw == pytest.approx(summary["bits_per_weight"]["bpw"])
    assert res.row("mixed").bpw <= res.row("magnitude").bpw == pytest.approx(res.allocation.budget_bpw)
    assert "reuse them:" in r.stdout and "lrm-interp quantize --model toy" in r.stdout
    assert lines[-1] == f"report: {out / 'report.html'} (self-contained HTML: open it in a browser)"
    _check_in_browser(
        out / "report.html",
        n_images=3,
        must_contain=[
            "Compression at matched bits per weight",
            "3-bit + 2% attribution",
            "mixed precision by attribution",
            "best at matched bits",
            "Top modules",
        ],
    )

    # same numbers as the quickstart computed them before it was a study: greedy answers of the
    # plain / masked 3-bit RTN copies scored by lrm_interp.toy.evaluate on the same problems
    import copy

    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.toy import load_toy_model
    from lrm_interp.toy.evaluate import evaluate
    from lrm_interp.toy.tasks import problems

    model, tok = load_toy_model()
    held = problems(5, seed=2)
    for key, m in [("fp", None), ("uniform", {}), ("attribution", masks)]:
        q = model
        if m is not None:
            q = copy.deepcopy(model)
            quantize_model_(q, bits=3, group_size=128, masks=m, progress=False)
        acc = evaluate(q, tok, held)
        assert {f: acc[f] for f in ("math", "logic", "knowledge")} == res.row(key).per_task, key
        assert acc["mean"] == pytest.approx(res.row(key).value)

    # `lrm-interp study` with the flags the quickstart prints is the same study: it resumes the folder
    cmd = next(c for c in res.commands if c.startswith("lrm-interp study"))
    assert "--model toy" in cmd and "--tasks math logic knowledge --per-task 5" in cmd
    r2 = subprocess.run(
        _cli() + cmd.split()[1:] + ["--quiet"],
        capture_output=True,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        timeout=900,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "resumed: fp, uniform, magnitude, attribution, mixed" in r2.stdout
    j = next(k for k, l_ in enumerate(r2.stdout.splitlines()) if l_.startswith("held-out accuracy at matched"))
    assert r2.stdout.splitlines()[j + 2 : j + 2 + len(ROW_KEYS)] == table


def _check_in_browser(page, *, n_images: int, must_contain: list[str]) -> None:
    """Load a file in headless Chromium (Debian's chromium + chromedriver): every image decoded,
    no console error, the texts visible."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])"
        )
        assert len(imgs) == n_images and all(c and w > 100 and h > 100 for c, w, h, _ in imgs), imgs
        text = driver.find_element("tag name", "body").text
        for t in must_contain:
            assert t in text, t
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()


def test_quickstart_tiny_says_so(tmp_path, capsys):
    from lrm_interp.experiments.quickstart import run_quickstart

    s = run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, progress=False)
    printed = capsys.readouterr().out
    assert printed.startswith("quickstart on a TINY RANDOM model") and "KL(full precision" in printed
    assert s.settings.metric == "kl" and len(s.attribution.sites) == 14 and not s.settings.tasks
    for f in (
        "shift.csv",
        "ranking.csv",
        "masks.safetensors",
        "masks.json",
        "bits.json",
        "report.html",
        "study.json",
        "attribution_fp32/heatmap.png",
    ):
        assert (tmp_path / "qs" / f).exists(), f
    # the printed reuse commands run: protect from the written result with the saved tiny model
    import shutil

    from lrm_interp.cli.main import main

    shutil.copy(tmp_path / "qs" / "masks.safetensors", tmp_path / "before.safetensors")
    cmd = next(c for c in s.commands if c.startswith("lrm-interp protect"))
    # as printed: it writes qs/reuse/masks.safetensors (the study's own file is never replaced, H8-OW1)
    assert main(cmd.split()[1:] + ["--quiet"]) == 0
    from lrm_interp.protect import load_masks

    assert (tmp_path / "qs" / "masks.safetensors").read_bytes() == (tmp_path / "before.safetensors").read_bytes()
    a, _ = load_masks(tmp_path / "before.safetensors")
    b, _ = load_masks(tmp_path / "qs" / "reuse" / "masks.safetensors")
    assert a == b  # the CLI reproduces the quickstart's masks exactly
    # so does `bits` the mixed-precision allocation
    from lrm_interp.protect.bit_allocation import BitAllocation

    cmd = next(c for c in s.commands if c.startswith("lrm-interp bits"))
    argv = cmd.split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "bits.json")
    assert main(argv + ["--quiet"]) == 0
    assert BitAllocation.load(tmp_path / "bits.json").bits == s.allocation.bits
    # a rerun resumes every row; other settings on the same folder are refused before any write
    capsys.readouterr()
    again = run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, progress=False)
    assert again.provenance["resumed"] == ["fp", "uniform", "magnitude", "attribution", "mixed"]
    assert again.rows == s.rows
    with pytest.raises(ValueError, match="holds another study"):
        run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, bits=4, progress=False)


def test_report_embeds_images_and_escapes(tmp_path):
    import base64

    import matplotlib.pyplot as plt
    import torch

    from lrm_interp.attribution.results import Attribution
    from lrm_interp.experiments.report import png_data_uri, write_report
    from lrm_interp.model.sites import find_sites
    from lrm_interp.testing import tiny_model

    fig = plt.figure(figsize=(1, 1))
    fig.savefig(tmp_path / "x.png")
    plt.close(fig)
    sites = find_sites(tiny_model("llama", seed=0))
    a = Attribution(("<b>",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution")
    p = write_report(
        tmp_path / "r.html",
        title="T & <t>",
        comparison=None,
        attribution=a,
        shift=None,
        images={"pic": tmp_path / "x.png"},
        masks_file="m.safetensors",
        masks_summary="s",
        files={"a": "b"},
        commands=["lrm-interp x --y <z>"],
    )
    h = p.read_text()
    assert "<title>T &amp; &lt;t&gt;</title>" in h and "&lt;b&gt;" in h and "--y &lt;z&gt;" in h
    assert "Nothing was measured" in h and "http" not in h  # no external resources
    p2 = write_report(
        tmp_path / "r2.html",
        title="T",
        comparison=(["variant", "x"], [["<v>", "1"]]),
        comparison_caption="c & d",
        notes=["a <note>"],
        attribution=a,
        shift=None,
        images={},
        masks_file="m",
        masks_summary="s",
        files={},
        commands=[],
    )
    h2 = p2.read_text()
    assert "&lt;v&gt;" in h2 and "c &amp; d" in h2 and "<p>a &lt;note&gt;</p>" in h2
    uri = png_data_uri(tmp_path / "x.png")
    assert uri in h and base64.b64decode(uri.split(",", 1)[1]) == (tmp_path / "x.png").read_bytes()
    (tmp_path / "bad.png").write_text("no")
    with pytest.raises(ValueError, match="bad.png: not a PNG"):
        png_data_uri(tmp_path / "bad.png")
