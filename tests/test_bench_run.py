"""The benchmark runner: the transformers backend's token accounting, per-item writes in the paper
layout, resuming after a kill (in process and a real SIGKILL of the CLI), and refusing to mix runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lrm_interp.data.benchmarks import BenchItem, load
from lrm_interp.data.loading import load_dataset
from lrm_interp.evaluation.backends import Backend, GenerationSettings, HFBackend
from lrm_interp.evaluation.bench_run import GEN_FILE, output_path, read_generations, run_benchmark
from lrm_interp.evaluation.generation import generate_responses, generate_samples
from lrm_interp.testing import byte_tokenizer, tiny_model

REPO = Path(__file__).resolve().parents[1]


def test_hf_samples_greedy_equal_generate_and_count_tokens():
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    prompts = ["abc", "hello there", "x"]
    gens = generate_samples(model, tok, prompts, max_new_tokens=12, batch_size=2, n=2)
    assert [g[0].text for g in gens] == generate_responses(model, tok, prompts, max_new_tokens=12)
    for p, g in zip(prompts, gens):
        assert len(g) == 2 and g[0] == g[1]  # greedy: one output repeated
        assert (g[0].finish_reason == "length") == (g[0].n_tokens == 12)
        assert g[0].prompt_tokens == len(tok(p)["input_ids"]) == len(p) + 1  # bytes + BOS


def test_hf_sampling_is_seeded_per_item():
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, n=3, batch_size=1)
    a = generate_samples(model, tok, ["ab", "cd"], keys=["t/0", "t/1"], seed=1, **kw)
    b = generate_samples(model, tok, ["cd"], keys=["t/1"], seed=1, **kw)  # resumed alone: same draw
    c = generate_samples(model, tok, ["ab", "cd"], keys=["t/0", "t/1"], seed=2, **kw)
    assert a[1] == b[0] and a != c
    assert len({g.text for g in a[0]}) > 1  # three different samples


def test_eos_gives_stop_and_excludes_eos(monkeypatch):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    with torch.no_grad():  # make EOS the argmax after the first step
        model.lm_head.weight[tok.eos_token_id] += 50 * model.lm_head.weight[ord("a")].sign()
    g = generate_samples(model, tok, ["aaaa"], max_new_tokens=20)[0][0]
    assert g.finish_reason == "stop" and g.n_tokens < 20 and tok.eos_token not in g.text


class Counting(Backend):
    """Wraps a backend; counts prompts; raises KeyboardInterrupt after ``kill_after`` results."""

    name = "counting"

    def __init__(self, inner, kill_after=None):
        self.inner, self.kill_after, self.prompts = inner, kill_after, []

    def generate(self, prompts, settings, *, keys=None, on_result=None, progress=False, desc=""):
        self.prompts += list(prompts)
        seen = [0]

        def cb(i, gens):
            on_result(i, gens)
            seen[0] += 1
            if self.kill_after is not None and seen[0] >= self.kill_after:
                raise KeyboardInterrupt

        return self.inner.generate(prompts, settings, keys=keys, on_result=cb, progress=progress)


def _items(n=5):
    return {"math": load("math", per_family=n)}


def test_run_writes_paper_layout_and_resumes_after_interrupt(tmp_path):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    st = GenerationSettings(max_new_tokens=8, temperature=0, batch_size=1, n_samples=2)
    items = _items()
    first = Counting(HFBackend(model, tok), kill_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(first, items, tmp_path, settings=st, model="tiny", progress=False)
    recs, _ = read_generations(tmp_path / GEN_FILE)
    assert len(recs) == 2
    done = {j for _, j in recs}
    texts = {j: output_path(tmp_path, "math", j).read_text() for j in done}
    assert all(output_path(tmp_path, "math", j, 1).exists() for j in done)  # sample 1 beside it
    # a torn last line (killed mid-write) is dropped and that item regenerated
    with open(tmp_path / GEN_FILE, "a") as f:
        f.write('{"task": "math", "index": 4, "samp')
    again = Counting(HFBackend(model, tok))
    rep = run_benchmark(again, items, tmp_path, settings=st, model="tiny", progress=False)
    assert (rep.tasks[0].resumed, rep.tasks[0].generated) == (2, 3)
    assert len(again.prompts) == 3 and not {items["math"][j].prompt for j in done} & set(again.prompts)
    assert all(output_path(tmp_path, "math", j).read_text() == texts[j] for j in done)
    recs, _ = read_generations(tmp_path / GEN_FILE)
    assert sorted(j for _, j in recs) == [0, 1, 2, 3, 4]
    # the outputs feed the paper-layout loader directly (prompts rebuilt from problems/<task>.jsonl)
    probs = [json.loads(x) for x in (tmp_path / "problems" / "math.jsonl").read_text().splitlines()]
    assert probs[3]["answer"] == items["math"][3].gold
    ds = load_dataset(tmp_path)
    assert len(ds) == 5 and ds[0].response == output_path(tmp_path, "math", 0).read_text()
    # nothing left to do: a third run generates nothing
    third = Counting(HFBackend(model, tok))
    assert run_benchmark(third, items, tmp_path, settings=st, model="tiny", progress=False).tasks[0].generated == 0
    assert third.prompts == []


def test_resume_with_fewer_items_keeps_the_problems_of_the_rest(tmp_path):
    """A resumed run with a smaller --per-family / --limit never cuts problems/<task>.jsonl: the
    outputs of the items it does not cover stay beside their problems (hostile run 3, H2-1)."""
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    st = GenerationSettings(max_new_tokens=4, temperature=0, batch_size=2)
    run_benchmark(HFBackend(model, tok), _items(3), tmp_path, settings=st, model="tiny", progress=False)
    prob_file = tmp_path / "problems" / "math.jsonl"
    before = prob_file.read_text()
    assert len(before.splitlines()) == 3
    again = Counting(HFBackend(model, tok))
    rep = run_benchmark(again, _items(1), tmp_path, settings=st, model="tiny", progress=False)
    assert rep.tasks[0].generated == 0 and again.prompts == []
    assert prob_file.read_text() == before  # was: cut to 1 line beside 3 outputs
    assert json.loads((tmp_path / "run.json").read_text())["tasks"]["math"]["n_items"] == 3
    probs = [json.loads(x) for x in prob_file.read_text().splitlines()]
    assert [p["answer"] for p in probs] == [it.gold for it in _items(3)["math"]]
    assert len(load_dataset(tmp_path)) == 3
    run_benchmark(HFBackend(model, tok), _items(4), tmp_path, settings=st, model="tiny", progress=False)
    assert prob_file.read_text().startswith(before) and len(prob_file.read_text().splitlines()) == 4


def test_run_refuses_other_settings_model_or_prompts(tmp_path):
    model, tok = tiny_model("llama", seed=0), byte_tokenizer()
    st = GenerationSettings(max_new_tokens=4, temperature=0)
    items = _items(2)
    run_benchmark(
        HFBackend(model, tok),
        items,
        tmp_path,
        settings=st,
        model="tiny",
        progress=False,
        model_info={"weights_fingerprint": "aaa"},
    )
    with pytest.raises(ValueError, match=r"run.json: this folder was generated with other settings .*max_new_tokens"):
        run_benchmark(
            HFBackend(model, tok),
            items,
            tmp_path,
            settings=GenerationSettings(max_new_tokens=5, temperature=0),
            progress=False,
        )
    with pytest.raises(ValueError, match="another model"):
        run_benchmark(
            HFBackend(model, tok),
            items,
            tmp_path,
            settings=st,
            progress=False,
            model_info={"weights_fingerprint": "bbb"},
        )
    changed = {"math": [BenchItem("math/0", "math", 0, "other prompt", "1", problem={"x": 1})]}
    with pytest.raises(ValueError, match=r"generations.jsonl: record math/0 was generated from another prompt"):
        run_benchmark(HFBackend(model, tok), changed, tmp_path, settings=st, progress=False)
    (tmp_path / GEN_FILE).write_text('{"task": "math", "index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"generations.jsonl:2: unreadable"):
        read_generations(tmp_path / GEN_FILE)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ValueError, match="n_samples"):
        GenerationSettings(n_samples=0)


def test_killed_cli_run_resumes_without_regenerating(tmp_path):
    mdir = tmp_path / "tiny"
    tiny_model("llama", seed=0).save_pretrained(mdir)
    byte_tokenizer().save_pretrained(mdir)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "lrm_interp.cli.main",
        "bench",
        "run",
        "--model",
        str(mdir),
        "--tasks",
        "math",
        "logic",
        "--per-family",
        "6",
        "--temperature",
        "0",
        "--max-new-tokens",
        "48",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    gen = out / "tiny" / GEN_FILE
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if gen.exists() and len(read_generations(gen)[0]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before, _ = read_generations(gen)
    assert 2 <= len(before) < 12
    mtimes = {k: output_path(out / "tiny", *k).stat().st_mtime_ns for k in before}
    from lrm_interp.cli.main import main

    assert main(cmd[3:]) == 0
    after, _ = read_generations(gen)
    assert len(after) == 12
    assert all(output_path(out / "tiny", *k).stat().st_mtime_ns == t for k, t in mtimes.items())
