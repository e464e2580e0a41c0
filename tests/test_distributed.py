"""Data-parallel attribute() under torchrun (2 CPU processes, gloo) equals one process; resume per rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from synth import synthetic_traces

import lrm_interp
from lrm_interp.attribution.distributed import gather_ordered, shard
from lrm_interp.attribution.results import Attribution
from lrm_interp.testing import byte_tokenizer, tiny_model

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import sys, json
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import lrm_interp
from lrm_interp.testing import byte_tokenizer, tiny_model
from synth import synthetic_traces
res = lrm_interp.attribute(tiny_model("llama", seed=0), synthetic_traces(5, skip={{1: {{"example-testing"}}}}),
                           tokenizer=byte_tokenizer(), out_dir=sys.argv[1], progress=False, mode=sys.argv[2])
import torch.distributed as dist
with open(sys.argv[1] + f".rank{{dist.get_rank()}}.json", "w") as f:  # one file per rank: stdout interleaves
    json.dump({{"rank": dist.get_rank(), "resume": res.provenance["resume"],
               "distributed": res.provenance.get("distributed"), "sum": float(res.scores.sum())}}, f)
dist.destroy_process_group()
"""


def _torchrun(tmp_path: Path, out: Path, mode: str) -> list[dict]:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(out),
            mode,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    import json

    return [json.loads(Path(f"{out}.rank{k}.json").read_text()) for k in (0, 1)]


def test_two_ranks_equal_one_process_and_resume(tmp_path):

    ds = synthetic_traces(5, skip={1: {"example-testing"}})
    threads = torch.get_num_threads()
    for mode in ("exact", "joint"):
        torch.set_num_threads(1)  # the ranks run single-threaded: same float summation order
        try:
            one = lrm_interp.attribute(
                tiny_model("llama", seed=0), ds, tokenizer=byte_tokenizer(), progress=False, mode=mode
            )
        finally:
            torch.set_num_threads(threads)
        out = tmp_path / mode
        lines = _torchrun(tmp_path, out, mode)
        assert sorted(d["rank"] for d in lines) == [0, 1]
        assert all(d["distributed"]["world_size"] == 2 and d["distributed"]["backend"] == "gloo" for d in lines)
        assert sorted(d["distributed"]["rank"] for d in lines) == [0, 1]
        assert lines[0]["resume"]["dom"]["computed"] == 5  # counts summed over ranks: every trace once
        two = Attribution.load(out)  # written by rank 0
        torch.testing.assert_close(two.scores, one.scores, rtol=1e-6, atol=1e-12)
        for b in one.vectors:
            for s, v in one.vectors[b].items():
                torch.testing.assert_close(two.vectors[b][s], v, rtol=1e-6, atol=1e-7)
        again = _torchrun(tmp_path, out, mode)  # resumed: nothing recomputed
        assert again[0]["resume"]["dom"] == {"computed": 0, "reused": 5, "stale": 0}
        assert again[0]["resume"]["atp"] == {"computed": 0, "reused": 5, "stale": 0}


def test_shard_and_gather_single_process():
    assert shard(7, 1, 3) == [1, 4] and shard(2, 0, 1) == [0, 1]
    assert gather_ordered(["a", "b"], [0, 1], 2, 1) == ["a", "b"]
