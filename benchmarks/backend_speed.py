"""`bench run` speed, hf vs vLLM backend, side by side: start-up, generation, tokens/s, memory, agreement.

Each (backend, batch size) runs in its own process, back to back in one invocation, on the same
items and settings: compare the rows of one run as ratios, not with another machine's numbers.

What a worker runs is the path of ``lrm-interp bench run --model smollm2-135m --tasks temporal
--temperature 0 --backend hf|vllm``: ``load_model`` (as ``run_suite`` does, the model is loaded in
the main process for both backends), ``model_provenance``, the backend built as ``run_suite``
builds it (vLLM reads the cached SmolLM2 folder as is, ``max_model_len`` = longest prompt +
max new tokens, at least 1024, what the engine would take from the first call), then
``run_benchmark`` into a fresh run folder. The phases are timed apart:

- ``load``: Python imports, ``load_model`` and the weights fingerprint (the same for both);
- ``start``: one 1-token generation of an unrelated prompt: for vLLM the engine start-up
  (subprocess, engine core, profiling, KV cache), for hf the first-call overhead;
- ``generation``: ``run_benchmark`` over the items (files written and fsynced per item, as
  ``bench run`` does).

Before the first worker the model's files are read and vLLM imported once, untimed, so that no
row pays a cold page cache that the others do not.

Tokens are counted the same way for both: the output text re-tokenized with the model's
tokenizer (``add_special_tokens=False``); the backends' own counts are kept too. Peak memory is
sampled every 0.1 s (``/proc``) as the RSS of the worker process and, apart, of its descendants
(the vLLM front end and engine core; their sum double-counts shared libraries). Greedy outputs are
compared item by item: identical texts, and the mean share of the shorter output's tokens
before the first difference.

Threads (``--threads N``, default: every core this process may run on) are given the same to
both: hf gets ``torch.set_num_threads(N)`` and ``OMP_NUM_THREADS=N``; vLLM's CPU engine gets
``VLLM_CPU_OMP_THREADS_BIND`` = the first N allowed cores (what ``bench run --backend vllm`` does
when the variable is unset: ``lrm_interp.evaluation.backends.vllm_worker_env``). ``--vllm-bind
auto`` gives vLLM its own default instead (on x86 it reserves one core for its scheduler, so a
2-core machine computes on 1).

Items (``--task-data DIR``): the BBH / BIG-bench Temporal Sequences file(s) as ``bench run
--task-data`` takes them (``temporal.json`` or ``temporal_sequences/task.json``), first
``--items`` items. Without it: synthetic items in BBH's Temporal Sequences format (seeded,
:func:`synthetic_temporal`), loaded through the same loader and prompt, and marked
``"synthetic": true`` in the JSON — no real Temporal Sequences file ships with the package.

Usage (on an otherwise idle CPU; estimated 5–8 min on the 2-core development machine, not yet
measured; see docs/benchmark.md)::

    python benchmarks/backend_speed.py --items 16 --max-new-tokens 128 --batch-sizes 1 16 \\
        --out benchmarks/results/backend_speed.json

prints a Markdown table and writes the JSON. The worker mode (``--worker``) is what each
subprocess runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lrm_interp.evaluation.backends import VLLM_BIND_ENV, allowed_cpus, cpu_list

BACKENDS = ("hf", "vllm")
MODEL = "smollm2-135m"
WARMUP_PROMPT = "The weather report for tomorrow says that"

# ----------------------------------------------------------------------------- synthetic items

_NAMES = (
    "Susan",
    "Emily",
    "Sarah",
    "Jason",
    "Michael",
    "Andrew",
    "Mary",
    "David",
    "Lisa",
    "Thomas",
    "Ashley",
    "Hannah",
)
_WITNESSES = ("Linda", "John", "Betty", "James", "Richard", "Jessica", "William", "Leslie", "Anthony", "Sean", "Nancy")
_PLACES = (
    "coffee shop",
    "soccer field",
    "museum",
    "bakery",
    "swimming pool",
    "art studio",
    "library",
    "gas station",
    "orchestra hall",
    "restaurant",
    "park",
    "gym",
)
_SEEN = (
    "driving to the water park",
    "buying clothes at the mall",
    "waiting at the train station",
    "walking towards the Statue of Liberty",
    "reading at the library",
    "watching a movie at the theater",
    "taking photos near the Eiffel Tower",
    "working at the office",
    "sitting on a rooftop",
    "getting a coffee at the cafe",
    "playing tennis at the tennis court",
    "buying a phone at the electronics store",
)


def _clock(h: int) -> str:
    return f"{h % 12 or 12}{'am' if h < 12 else 'pm'}"


def synthetic_temporal(n: int, seed: int = 0) -> list[dict]:
    """``n`` items in BBH's Temporal Sequences layout (``{"input", "target": "(X)"}``): a wake-up
    time, 4–5 consecutive sightings with one free slot between them, a closing time, four
    interval options of which the free slot is the answer. Seeded: the same ``(n, seed)`` gives
    the same items."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        who, place = rng.choice(_NAMES), rng.choice(_PLACES)
        k = rng.randint(4, 5)  # slots between waking and closing
        hours = sorted(rng.sample(range(5, 23), k + 1))
        free = rng.randrange(k)
        witnesses = rng.sample(_WITNESSES, k - 1)
        acts = rng.sample([x for x in _SEEN if place not in x], k - 1)
        lines = [f"{who} woke up at {_clock(hours[0])}."]
        busy = []
        for j in range(k):
            if j == free:
                continue
            w, a = witnesses.pop(), acts.pop()
            lines.append(f"{w} saw {who} {a} from {_clock(hours[j])} to {_clock(hours[j + 1])}.")
            busy.append(j)
        lines.append(f"The {place} was closed after {_clock(hours[k])}.")
        opts = [free, *rng.sample(busy, 3)]
        rng.shuffle(opts)
        letters = "ABCD"
        text = (
            f"Today, {who} went to the {place}. Between what times could they have gone?\nWe know that:\n"
            + "\n".join(lines)
            + f"\nBetween what times could {who} have gone to the {place}?\nOptions:\n"
            + "\n".join(f"({letters[i]}) {_clock(hours[j])} to {_clock(hours[j + 1])}" for i, j in enumerate(opts))
        )
        out.append({"input": text, "target": f"({letters[opts.index(free)]})"})
    return out


# ----------------------------------------------------------------------------- worker


def _rss_bytes(pid: int) -> int:
    """Resident set size of a process (``/proc/<pid>/statm``), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (a scan of ``/proc/*/stat`` for parent ids; Linux only, as is
    vLLM's CPU build)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            parent[int(d)] = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "(comm) state"
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class _PeakRSS:
    """Samples the RSS of this process and, apart, of all its descendants every ``every`` s."""

    def __init__(self, every: float = 0.1):
        self.pid, self.every = os.getpid(), every
        self.self_mb = self.children_mb = self.total_mb = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        own = _rss_bytes(self.pid)
        kids = sum(_rss_bytes(c) for c in _descendants(self.pid))
        mb = 1024 * 1024
        self.self_mb = max(self.self_mb, own / mb)
        self.children_mb = max(self.children_mb, kids / mb)
        self.total_mb = max(self.total_mb, (own + kids) / mb)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.sample()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def worker(cfg: dict) -> dict:
    """One backend × batch size (``cfg``: see :func:`_worker_config`); returns the row and, under
    ``"_items"``, each item's text hash and re-tokenized ids (for the agreement, not stored)."""
    t_start = time.perf_counter()
    with _PeakRSS() as mem:
        import torch

        torch.set_num_threads(int(cfg["threads"]))
        from dataclasses import replace

        from lrm_interp import benchmarks
        from lrm_interp.evaluation.backends import GenerationSettings, HFBackend, VLLMBackend
        from lrm_interp.evaluation.bench_run import output_path, read_generations, run_benchmark
        from lrm_interp.evaluation.bench_suite import model_tag, saved_model_dir
        from lrm_interp.evaluation.generation import encode_prompts
        from lrm_interp.model.loading import load_model
        from lrm_interp.model.provenance import model_provenance

        items = benchmarks.load("temporal", cfg["task_data"], limit=int(cfg["items"]))
        model, tok = load_model(cfg["model"])
        info = model_provenance(model, tok)
        t_loaded = time.perf_counter()
        rss_loaded = _rss_bytes(os.getpid()) / 2**20
        settings = GenerationSettings(
            max_new_tokens=int(cfg["max_new_tokens"]), temperature=0.0, seed=0, batch_size=int(cfg["batch_size"])
        )
        prompt_lens = [len(x) for x in encode_prompts(tok, [it.prompt for it in items])]
        run_dir = Path(cfg["run_dir"])
        backend: HFBackend | VLLMBackend
        if cfg["backend"] == "hf":
            backend = HFBackend(model, tok)
            max_model_len = None
        else:
            max_model_len = max(1024, max(prompt_lens) + settings.max_new_tokens)
            backend = VLLMBackend(
                saved_model_dir(model) or model,
                tok,
                python=cfg.get("vllm_python"),
                max_model_len=max_model_len,
                log=str(run_dir.parent / f"{run_dir.name}.vllm.log"),
            )
        with backend:
            t0 = time.perf_counter()
            backend.generate([WARMUP_PROMPT], replace(settings, max_new_tokens=1, batch_size=1))
            t_started = time.perf_counter()
            run = run_benchmark(
                backend,
                {"temporal": items},
                run_dir,
                settings=settings,
                model=model_tag(cfg["model"]),
                model_info=info,
                progress=False,
            )
            t_gen = time.perf_counter()
        t_closed = time.perf_counter()
    binding = None
    log = run_dir.parent / f"{run_dir.name}.vllm.log"
    if cfg["backend"] == "vllm" and log.exists():  # vLLM's own account of the cores it computes on
        text = log.read_text(errors="replace")
        cores, reserved = re.findall(r"core ids=\[([^\]]*)\]", text), re.findall(r"reserved_cpus=\[([^\]]*)\]", text)
        binding = {"core_ids": cores[-1] if cores else None, "reserved_cpus": reserved[-1] if reserved else None}
    recs, _ = read_generations(run_dir / "generations.jsonl")
    per_item = []
    for it in items:
        text = output_path(run_dir, "temporal", it.index).read_text(encoding="utf-8")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        s = recs[("temporal", it.index)]["samples"][0]
        per_item.append(
            {
                "sha": hashlib.blake2b(text.encode(), digest_size=8).hexdigest(),
                "ids": ids,
                "backend_tokens": int(s["n_tokens"]),
                "finish_reason": s["finish_reason"],
            }
        )
    gen_s = t_gen - t_started
    tokens = sum(len(p["ids"]) for p in per_item)
    ru_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "backend": cfg["backend"],
        "batch_size": settings.batch_size,
        "threads": int(cfg["threads"]),
        "torch_threads": torch.get_num_threads(),
        "vllm_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") if cfg["backend"] == "vllm" else None,
        "vllm_omp_binding": binding,
        "items": len(items),
        "max_new_tokens": settings.max_new_tokens,
        "max_model_len": max_model_len,
        "prompt_tokens": sum(prompt_lens),
        "load_s": t_loaded - t_start,
        "start_s": t_started - t0,
        "generation_s": gen_s,
        "close_s": t_closed - t_gen,
        "run_benchmark_s": sum(t.seconds for t in run.tasks),
        "new_tokens": tokens,
        "backend_new_tokens": sum(p["backend_tokens"] for p in per_item),
        "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
        "at_limit": sum(p["finish_reason"] == "length" for p in per_item),
        "peak_rss_mb": mem.total_mb,
        "peak_rss_main_mb": mem.self_mb,
        "peak_rss_children_mb": mem.children_mb,
        "rss_after_load_mb": rss_loaded,
        "ru_maxrss_self_mb": ru_self,
        "ru_maxrss_children_mb": ru_kids,
        "_items": per_item,
    }


# ----------------------------------------------------------------------------- driver


def worker_env(backend: str, threads: int, vllm_bind: str, base: dict | None = None) -> dict:
    """The environment of one worker: offline, ``threads`` for OpenMP / MKL, and for vLLM the
    core list (``vllm_bind == "threads"``) or vLLM's own default (``"auto"``)."""
    env = dict(os.environ if base is None else base)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop(VLLM_BIND_ENV, None)
    if backend == "vllm":  # its log lines (the OpenMP binding among them) to the log file, not the pipe
        env["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
        # "auto" said explicitly: the backend binds every allowed core when the variable is unset
        env[VLLM_BIND_ENV] = "auto"
    if backend == "vllm" and vllm_bind == "threads":
        cpus = allowed_cpus()
        if threads > len(cpus):
            raise SystemExit(f"--threads {threads}: only {len(cpus)} cores are available ({cpu_list(cpus)})")
        env[VLLM_BIND_ENV] = cpu_list(cpus[:threads])
    return env


def _run_worker(cfg: dict, env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        log = Path(cfg["run_dir"]).parent / f"{Path(cfg['run_dir']).name}.vllm.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"{cfg['backend']} batch {cfg['batch_size']} failed (exit {r.returncode}):\n{r.stderr[-3000:]}"
            + (f"\nvLLM log tail:\n{tail}" if tail else "")
        )
    row = json.loads(r.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = wall
    return row


def agreement(a: dict, b: dict) -> dict:
    """Item-by-item comparison of two rows' greedy outputs."""
    ia, ib = a["_items"], b["_items"]
    same = sum(x["sha"] == y["sha"] for x, y in zip(ia, ib))
    fracs = []
    for x, y in zip(ia, ib):
        n = min(len(x["ids"]), len(y["ids"]))
        fracs.append(1.0 if n == 0 else _common_prefix(x["ids"], y["ids"]) / n)
    return {
        "a": label(a),
        "b": label(b),
        "identical": same,
        "n": len(ia),
        "mean_common_prefix_frac": sum(fracs) / len(fracs) if fracs else None,
        "first_difference_at_token": [
            None if x["sha"] == y["sha"] else _common_prefix(x["ids"], y["ids"]) for x, y in zip(ia, ib)
        ],
    }


def break_even(hf: dict, vllm: dict) -> str:
    """How many new tokens a run must generate before vLLM's longer start-up (load + engine) is
    paid back by its faster generation, at the two rows' tokens/s."""
    a, b = hf.get("tokens_per_s"), vllm.get("tokens_per_s")
    if not a or not b:
        return "–"
    extra = (vllm["load_s"] + vllm["start_s"]) - (hf["load_s"] + hf["start_s"])
    if extra <= 0:
        return "0 (vLLM starts no later)" if b >= a else "never (vLLM is slower)"
    if b <= a:
        return "never (vLLM starts later and generates slower)"
    return f"{extra / (1 / a - 1 / b):.0f}"


def label(row: dict) -> str:
    return f"{row['backend']} b{row['batch_size']}"


def _fmt(x, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def render_table(result: dict) -> str:
    """The Markdown of a result (``main``'s JSON): one row per run, hf's tokens/s the reference
    at each batch size, then the agreement of the greedy outputs."""
    rows = result["runs"]
    hf = {r["batch_size"]: r for r in rows if r["backend"] == "hf"}
    s = result["settings"]
    cores = sorted(
        {
            f"cores [{r['vllm_omp_binding']['core_ids']}] (reserved [{r['vllm_omp_binding']['reserved_cpus']}])"
            for r in rows
            if r["backend"] == "vllm" and r.get("vllm_omp_binding")
        }
    )
    vl = f" (vLLM: {s.get('vllm_bind', 'threads')}" + (f", {', '.join(cores)}" if cores else "") + ")"
    lines = [
        f"{result['items']['n']} items ({result['items']['source']}), greedy, {s['max_new_tokens']} max new tokens, "
        f"{s['threads']} threads{vl if any(r['backend'] == 'vllm' for r in rows) else ''}, "
        f"{result['machine']['cpus']} cores",
        "",
        "| batch | backend | start-up s (load + engine) | generation s | process wall s | new tokens | tokens/s "
        "| × hf | peak RSS MB (main + children) | at limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = hf.get(r["batch_size"])
        ratio = (
            r["tokens_per_s"] / ref["tokens_per_s"]
            if ref is not None and ref["tokens_per_s"] and r["tokens_per_s"]
            else None
        )
        lines.append(
            f"| {r['batch_size']} | {r['backend']} | {r['load_s'] + r['start_s']:.1f} ({r['load_s']:.1f} + "
            f"{r['start_s']:.1f}) | {r['generation_s']:.1f} | {_fmt(r.get('process_wall_s'))} | {r['new_tokens']} "
            f"| {_fmt(r['tokens_per_s'])} "
            f"| {_fmt(ratio, '.2f')} | {r['peak_rss_mb']:.0f} ({r['peak_rss_main_mb']:.0f} + "
            f"{r['peak_rss_children_mb']:.0f}) | {r['at_limit']}/{r['items']} |"
        )
    even = [
        f"batch {bs}: {break_even(hf[bs], r)}"
        for bs in sorted(hf)
        for r in rows
        if r["backend"] == "vllm" and r["batch_size"] == bs
    ]
    if even:
        lines += ["", "vLLM's longer start-up pays back after (new tokens, at these rates): " + "; ".join(even)]
    if result.get("agreement"):
        lines += [
            "",
            "| greedy outputs | identical items | mean shared prefix (tokens) |",
            "|---|---|---|",
        ]
        for g in result["agreement"]:
            lines.append(
                f"| {g['a']} vs {g['b']} | {g['identical']}/{g['n']} | {_fmt(g['mean_common_prefix_frac'], '.0%')} |"
            )
    return "\n".join(lines)


def warm_caches(model: str, vllm_python: str | None) -> float:
    """Read the model's files and import vLLM once, untimed, so that the first worker does not
    pay a cold page cache the later ones do not. Returns the seconds it took."""
    t0 = time.perf_counter()
    folder = Path(model).expanduser()
    if not folder.is_dir():
        from lrm_interp.model.smollm2 import SMOLLM2_ALIASES, smollm2_cache_dir

        folder = smollm2_cache_dir() if model in SMOLLM2_ALIASES else Path("/nonexistent")
    for f in sorted(folder.glob("*")) if folder.is_dir() else []:
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    if vllm_python:
        env = dict(os.environ, VLLM_NO_USAGE_STATS="1", PYTHONNOUSERSITE="1")
        env.pop("PYTHONPATH", None)
        subprocess.run([vllm_python, "-c", "import vllm"], capture_output=True, env=env, timeout=600)
    return time.perf_counter() - t0


def _vllm_version(python: str | None) -> str | None:
    if not python:
        return None
    code = (
        "import importlib.metadata as m\nfor n in ('vllm-cpu', 'vllm'):\n try:\n  print(n, m.version(n)); break\n"
        " except m.PackageNotFoundError: pass"
    )
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="backends to run")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="bench run --batch-size values")
    ap.add_argument("--items", type=int, default=16, help="items of the temporal task (the first N)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per output (greedy)")
    ap.add_argument(
        "--threads",
        type=int,
        default=len(allowed_cpus()),
        help="compute threads for both backends (default: every core this process may use)",
    )
    ap.add_argument(
        "--vllm-bind",
        choices=("threads", "auto"),
        default="threads",
        help="vLLM CPU cores: the first --threads cores (default) or vLLM's own 'auto' (one core reserved)",
    )
    ap.add_argument(
        "--task-data",
        default=None,
        metavar="DIR|FILE",
        help="Temporal Sequences file(s) as bench run --task-data takes them (default: synthetic BBH-format items)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic items")
    ap.add_argument("--model", default=MODEL, help="model alias or folder")
    ap.add_argument("--vllm-python", default=None, help="Python with vLLM (default: as the vllm backend finds it)")
    ap.add_argument("--keep-runs", default=None, metavar="DIR", help="keep the run folders here (default: deleted)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per worker before it is stopped")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for flag, v in (("--items", a.items), ("--max-new-tokens", a.max_new_tokens), ("--threads", a.threads)):
        if v < 1:
            ap.error(f"{flag} must be >= 1, got {v}")
    if any(b < 1 for b in a.batch_sizes):
        ap.error(f"--batch-sizes must be >= 1, got {a.batch_sizes}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    vllm_python = None
    if "vllm" in a.backends:
        from lrm_interp.evaluation.backends import default_vllm_python

        vllm_python = a.vllm_python or default_vllm_python()
        if vllm_python is None:
            raise SystemExit("no Python with vLLM: build the CPU venv (python tests/servers.py) or pass --vllm-python")
    warm_s = warm_caches(a.model, vllm_python)
    print(f"page cache warmed (model files read, vLLM imported once): {warm_s:.1f} s, untimed", flush=True)
    work = Path(a.keep_runs) if a.keep_runs else Path(tempfile.mkdtemp(prefix="backend_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if a.task_data:
            task_data, source, synthetic = str(Path(a.task_data).resolve()), str(a.task_data), False
        else:
            task_data = str(work / "temporal.json")
            Path(task_data).write_text(json.dumps({"examples": synthetic_temporal(a.items, a.seed)}))
            source, synthetic = f"synthetic BBH-format Temporal Sequences, seed {a.seed}", True
        rows = []
        for bs in a.batch_sizes:
            for be in a.backends:
                cfg = {
                    "backend": be,
                    "batch_size": bs,
                    "items": a.items,
                    "max_new_tokens": a.max_new_tokens,
                    "threads": a.threads,
                    "task_data": task_data,
                    "model": a.model,
                    "vllm_python": vllm_python,
                    "run_dir": str(work / f"{be}-b{bs}"),
                }
                shutil.rmtree(cfg["run_dir"], ignore_errors=True)  # a fresh run, never a resumed one
                load_before = os.getloadavg()[0]
                r = _run_worker(cfg, worker_env(be, a.threads, a.vllm_bind), a.timeout)
                r["load_avg_before"], r["load_avg_after"] = load_before, os.getloadavg()[0]
                rows.append(r)
                print(
                    f"{be:5s} batch {bs:3d}: start-up {r['load_s']:.1f} + {r['start_s']:.1f} s, generation "
                    f"{r['generation_s']:.1f} s, {r['new_tokens']} tokens, {r['tokens_per_s']:.1f} tok/s, "
                    f"peak {r['peak_rss_mb']:.0f} MB (load avg {load_before:.1f})",
                    flush=True,
                )
    finally:
        if not a.keep_runs:
            shutil.rmtree(work, ignore_errors=True)
    pairs = []
    by = {(r["backend"], r["batch_size"]): r for r in rows}
    for bs in a.batch_sizes:  # across backends at one batch size
        if ("hf", bs) in by and ("vllm", bs) in by:
            pairs.append(agreement(by[("hf", bs)], by[("vllm", bs)]))
    for be in a.backends:  # across batch sizes within one backend
        for bs in a.batch_sizes[1:]:
            if (be, a.batch_sizes[0]) in by and (be, bs) in by:
                pairs.append(agreement(by[(be, a.batch_sizes[0])], by[(be, bs)]))
    import torch
    import transformers

    runs = []
    for r in rows:
        kept = {k: v for k, v in r.items() if k != "_items"}
        kept["item_sha"] = [p["sha"] for p in r["_items"]]
        kept["item_tokens"] = [len(p["ids"]) for p in r["_items"]]
        runs.append(kept)
    result = {
        "benchmark": "backend_speed",
        "command": "python benchmarks/backend_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": len(allowed_cpus()),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "vllm": _vllm_version(vllm_python),
        },
        "settings": {
            "model": a.model,
            "max_new_tokens": a.max_new_tokens,
            "temperature": 0.0,
            "batch_sizes": a.batch_sizes,
            "threads": a.threads,
            "vllm_bind": a.vllm_bind,
            "warm_caches_s": warm_s,
        },
        "items": {"n": a.items, "source": source, "synthetic": synthetic},
        "runs": runs,
        "agreement": pairs,
    }
    print()
    print(render_table(result))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
