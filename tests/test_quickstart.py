"""`lrm-interp quickstart` (the README's main job) through the installed console script."""
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
    r = subprocess.run(_cli() + ["quickstart", "--out", str(out), "--traces", "6", "--eval", "15", "--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shipped toy reasoning model" in r.stdout and "TINY" not in r.stdout
    for f in ["traces.jsonl", "shift.csv", "shift.png", "attribution_fp32/scores.csv", "attribution_fp32/heatmap.png",
              "attribution_rtn3/scores.csv", "ranking.csv", "masks.safetensors", "masks.json"]:
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
    assert summary["protected_weights"] == n_p and abs(summary["bits_per_weight"]["bpw"] - meta["bits_per_weight"]["bpw"]) < 1e-12
    lines = r.stdout.splitlines()
    i = next(k for k, l_ in enumerate(lines) if l_.startswith("held-out accuracy (15 problems"))
    fp, q, qp = (lines[i + 2], lines[i + 3], lines[i + 4])
    assert fp.startswith("full precision") and q.startswith("3-bit RTN, group 128") and qp.startswith("3-bit RTN + 2%")
    mean = lambda l_: float(l_.split()[-2].rstrip("%"))  # noqa: E731
    bpw = lambda l_: float(l_.split()[-1])  # noqa: E731
    assert mean(fp) >= 93.0 and mean(q) < 100.0  # 3-bit group-128 RTN costs accuracy
    assert bpw(q) == pytest.approx(3.25) and bpw(qp) == pytest.approx(summary["bits_per_weight"]["bpw"], abs=5e-4)
    assert "reuse them:" in r.stdout and "lrm-interp quantize --model toy" in r.stdout
    assert lines[-1] == f"report: {out / 'report.html'} (self-contained HTML: open it in a browser)"
    _check_in_browser(out / "report.html", n_images=2, must_contain=["Accuracy and bits per weight",
                                                                      "3-bit RTN + 2% protected", "Top modules"])


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
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.alt])")
        assert len(imgs) == n_images and all(c and w > 100 and h > 100 for c, w, h, _ in imgs), imgs
        text = driver.find_element("tag name", "body").text
        for t in must_contain:
            assert t in text, t
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()


def test_quickstart_tiny_says_so(tmp_path):
    from lrm_interp.experiments.quickstart import run_quickstart

    s = run_quickstart(tmp_path / "qs", n_traces=3, tiny=True, progress=False)
    assert s["tiny"] and s["sites"] == 14 and s["accuracy"] == {}
    for f in ("shift.csv", "ranking.csv", "masks.safetensors", "masks.json", "tiny-attribution_fp32/heatmap.png",
              "report.html"):
        assert (tmp_path / "qs" / f).exists(), f
    # the printed reuse commands run: protect from the written result with the saved tiny model
    from lrm_interp.cli.main import main

    cmd = next(c for c in s["commands"] if c.startswith("lrm-interp protect"))
    argv = cmd.split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again.safetensors")
    assert main(argv + ["--quiet"]) == 0
    from lrm_interp.protect import load_masks

    a, _ = load_masks(tmp_path / "qs" / "masks.safetensors")
    b, _ = load_masks(tmp_path / "again.safetensors")
    assert a == b  # the CLI reproduces the quickstart's masks exactly


def test_report_embeds_images_and_escapes(tmp_path):
    import base64

    from lrm_interp.attribution.results import Attribution
    from lrm_interp.experiments.report import png_data_uri, write_report
    from lrm_interp.model.sites import find_sites
    from lrm_interp.testing import tiny_model
    import matplotlib.pyplot as plt
    import torch

    fig = plt.figure(figsize=(1, 1))
    fig.savefig(tmp_path / "x.png")
    plt.close(fig)
    sites = find_sites(tiny_model("llama", seed=0))
    a = Attribution(("<b>",), sites, torch.rand(1, len(sites), dtype=torch.float64), "attribution")
    p = write_report(tmp_path / "r.html", title="T & <t>", accuracy={}, bits_per_weight={}, n_problems=0,
                     attribution=a, shift=None, images={"pic": tmp_path / "x.png"}, masks_file="m.safetensors",
                     masks_summary="s", files={"a": "b"}, commands=["lrm-interp x --y <z>"])
    h = p.read_text()
    assert "<title>T &amp; &lt;t&gt;</title>" in h and "&lt;b&gt;" in h and "--y &lt;z&gt;" in h
    assert "not measured" in h and "http" not in h  # no external resources
    uri = png_data_uri(tmp_path / "x.png")
    assert uri in h and base64.b64decode(uri.split(",", 1)[1]) == (tmp_path / "x.png").read_bytes()
    (tmp_path / "bad.png").write_text("no")
    with pytest.raises(ValueError, match="bad.png: not a PNG"):
        png_data_uri(tmp_path / "bad.png")
