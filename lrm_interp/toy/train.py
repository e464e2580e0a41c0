"""Train the shipped toy reasoning model (a small ``LlamaForCausalLM`` on byte tokens).

:func:`train_toy_model` (``lrm-interp toy train --out DIR [--steps 3000] [--device cuda]`` on the
command line, :mod:`lrm_interp.cli.toy`) writes a ``from_pretrained``-loadable folder (config,
fp32 safetensors, byte tokenizer, training_log.json with the settings, the loss curve and held-out
accuracies).

Data are generated on the fly from :mod:`lrm_interp.data.toy_tasks`: batch ``step`` is a pure
function of ``(seed, step)`` drawn from task seeds >= 10 000 (held-out evaluation uses
seeds < 10 000), so the model never sees an evaluation problem (the knowledge family is
closed-book recall of the fixed fact table, whose facts it must of course learn). The loss
covers the response and the final EOS, not the prompt. Deterministic given the seed on one
device type (GPU kernels may differ in the last bits across hardware).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import torch

from lrm_interp.checks import check_float, check_int, check_seed, checked_arguments
from lrm_interp.data.toy_tasks import (
    FAMILIES,
    N_PEOPLE,
    TRAIN_SEED_BASE,
    WORLD_SEED,
    World,
    build_world,
    generate_trace,
    problems,
)
from lrm_interp.testing import byte_tokenizer

EVAL_SEED = 1
#: the log a trained model folder holds (written last): ``lrm-interp toy train --overwrite`` replaces
#: only a folder holding it, and the output checks recognise a ``toy train`` model folder by it
#: (``lrm_interp._io.TOY_TRAIN_RECORD``)
TRAINING_LOG = "training_log.json"
BOS, EOS, PAD = 256, 257, 258
#: The RTN settings ``(bits, group_size)`` evaluated after training with ``lrm-interp toy train
#: --quant-eval`` (``quant_eval=QUANT_EVAL`` of :func:`train_toy_model`; ``None``: per channel).
QUANT_EVAL: tuple[tuple[int, int | None], ...] = ((4, 32), (3, 32), (3, 64), (3, None), (2, 32))


def model_config(
    vocab_size: int = 259,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 384,
):
    """The toy model's ``LlamaConfig`` (byte vocabulary + BOS/EOS/PAD, untied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=1024,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
        rope_theta=10000.0,  # type: ignore[call-arg, unused-ignore]  # transformers 5: via **kwargs (4.x: a parameter)
    )


def encode_example(prompt: str, response: str) -> tuple[list[int], int]:
    """Byte ids ``[BOS] prompt response [EOS]`` (identical to :func:`byte_tokenizer`) and the
    index of the first response token."""
    p = list(prompt.encode("utf-8"))
    r = list(response.encode("utf-8"))
    return [BOS] + p + r + [EOS], 1 + len(p)


def make_batch(step: int, batch_size: int, seed: int, world: World | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batch ``step``: ``input_ids`` and ``labels`` ``[batch, max_len]`` (right padded;
    labels -100 on the prompt and padding). A pure function of its arguments."""
    rng = random.Random(f"batch:{seed}:{step}")
    seqs, starts = [], []
    for k in range(batch_size):
        fam = FAMILIES[rng.randrange(len(FAMILIES))]
        t = generate_trace(fam, TRAIN_SEED_BASE + seed * 1_000_000 + step, k, world=world)
        seq, st = encode_example(t.prompt, t.response)
        seqs.append(seq)
        starts.append(st)
    L = max(map(len, seqs))
    ids = torch.full((batch_size, L), PAD, dtype=torch.long)
    labels = torch.full((batch_size, L), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, st : len(s)] = torch.tensor(s[st:])
    return ids, labels


class _Batches(torch.utils.data.Dataset):
    """Map-style view ``step -> make_batch(step)`` so DataLoader workers can prefetch."""

    def __init__(self, steps: int, batch_size: int, seed: int, n_people: int):
        self.steps, self.batch_size, self.seed, self.n_people = steps, batch_size, seed, n_people
        self._world: World | None = None

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        if self._world is None:
            self._world = build_world(self.n_people)
        return make_batch(step, self.batch_size, self.seed, self._world)


#: the way on of a :class:`DivergedError` (``--weight-decay 1e30`` diverges too, H30)
_DIVERGED_FIX = "use a smaller learning rate (--lr, or --anneal-lr for phase 2) or weight decay (--weight-decay)"


class DivergedError(ValueError):
    """Training made the loss or the weights NaN or infinite (a learning rate too large): nothing is saved."""


def _run(
    model,
    loader,
    opt,
    sched,
    *,
    device: str,
    log: dict,
    key: str,
    log_every: int,
    stop_at: int | None = None,
    max_seconds: float | None = None,
) -> None:
    """One training phase over ``loader``; losses go to ``log[key]``."""
    t0 = time.time()
    model.train()
    for step, (ids, labels) in enumerate(loader):
        if stop_at is not None and step >= stop_at:
            break
        ids, labels = ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(
            device_type="cuda" if device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=device.startswith("cuda"),
        ):
            loss = model(input_ids=ids, attention_mask=(ids != PAD).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == len(loader) - 1:
            log[key].append((step, float(loss.detach())))
            print(f"{key} step {step} loss {log[key][-1][1]:.5f} ({time.time() - t0:.0f}s)", flush=True)
            if not math.isfinite(log[key][-1][1]):  # nothing saved: the weights are NaN from here on (H29-NANMODEL)
                raise DivergedError(
                    f"training diverged: the {key.replace('_', ' ')} is {log[key][-1][1]} at step {step}; nothing "
                    f"was saved; {_DIVERGED_FIX}"
                )
        if max_seconds is not None and time.time() - t0 > max_seconds:
            log[f"{key}_stopped_at_step"] = step + 1
            print(f"stopped early after step {step} (max_seconds={max_seconds})", flush=True)
            break
    log[f"{key}_seconds"] = time.time() - t0
    model.eval()


def _loader(steps: int, batch_size: int, seed: int, n_people: int, workers: int):
    return torch.utils.data.DataLoader(
        _Batches(steps, batch_size, seed, n_people),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )


def anneal_(
    model,
    log: dict,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    n_people: int,
    device: str,
    workers: int = 2,
    log_every: int = 50,
) -> None:
    """Phase 2: a fresh AdamW whose learning rate falls linearly from ``lr`` to 0 over
    ``steps`` steps, on the data stream of ``seed`` (in place)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    log["anneal"] = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed, "device": device}
    log["anneal_loss"] = []
    _run(
        model.to(device),
        _loader(steps, batch_size, seed, n_people, workers),
        opt,
        sched,
        device=device,
        log=log,
        key="anneal_loss",
        log_every=log_every,
    )


def _evaluate_and_save(
    model, log: dict, out_dir, *, n_people: int, eval_per_family: int, quant_eval: tuple[tuple[int, int | None], ...]
) -> dict:
    from lrm_interp.model.provenance import first_non_finite
    from lrm_interp.toy.evaluate import evaluate_quietly as evaluate  # a training log: accuracy says enough

    bad = first_non_finite(model)  # a NaN between two logged steps: never saved as a model (H29-NANMODEL)
    if bad is not None:
        raise DivergedError(
            f"training diverged: parameter {bad[0]} holds {bad[1]} non-finite values; nothing was saved; "
            + _DIVERGED_FIX
        )
    model.eval()
    tok = byte_tokenizer()
    held = problems(eval_per_family, seed=EVAL_SEED, world=build_world(n_people))
    log["eval"] = {"seed": EVAL_SEED, "per_family": eval_per_family}
    log["heldout_accuracy"] = evaluate(model, tok, held, batch_size=150)
    print("held-out accuracy", log["heldout_accuracy"], flush=True)
    if quant_eval:
        from lrm_interp.compress.quant import quantize_model_

        log["rtn_accuracy"] = {}
        for bits, g in quant_eval:
            q = copy.deepcopy(model)
            quantize_model_(q, bits=bits, group_size=g, progress=False)
            key = f"{bits}bit-g{g if g else 'channel'}"
            log["rtn_accuracy"][key] = evaluate(q, tok, held, batch_size=150)
            print(f"RTN {key}", log["rtn_accuracy"][key], flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from lrm_interp._io import atomic_write_text
    from lrm_interp.model.provenance import plain_permissions

    with plain_permissions(out):  # save_pretrained leaves model.safetensors at 0600 (H27-PERM)
        model.to("cpu").to(torch.float32).save_pretrained(out)
        tok.save_pretrained(out)

    atomic_write_text(out / TRAINING_LOG, json.dumps(log, indent=1))
    return log


_ARCH = ("hidden", "layers", "heads", "kv_heads", "intermediate")


def check_train_settings(
    *,
    steps: int = 3000,
    stop_at: int | None = None,
    anneal_steps: int = 0,
    anneal_lr: float = 1e-3,
    batch_size: int = 256,
    anneal_batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    anneal_seed: int = 1,
    n_people: int = N_PEOPLE,
    eval_per_family: int = 100,
    log_every: int = 100,
    weight_decay: float = 0.0,
    workers: int = 0,
    max_seconds: float | None = None,
    **arch,
) -> None:
    """``ValueError`` naming the first setting of :func:`train_toy_model` that is out of range
    (counts >= 1, ``stop_at`` ``None`` or in 1..``steps``, ``anneal_steps``/``workers`` >= 0, rates > 0, seeds
    >= 0, ``weight_decay`` >= 0, ``max_seconds`` ``None`` or > 0, NaN/inf never), or an architecture
    whose ``hidden`` is not a multiple of ``heads`` or ``heads`` not of ``kv_heads``."""
    for name, v in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("anneal_batch_size", anneal_batch_size),
        ("n_people", n_people),
        ("eval_per_family", eval_per_family),
        ("log_every", log_every),
    ):
        check_int(name, v, min=1)
    check_int("stop_at", stop_at, min=1, optional=True)
    if stop_at is not None and stop_at > steps:  # ran `steps` and recorded a stop never reached (H6-T2)
        raise ValueError(
            f"stop_at must be at most steps ({steps}): phase 1 ends after steps, so a later stop is never "
            f"reached (None: all steps), got {stop_at}"
        )
    for name, v in (("anneal_steps", anneal_steps), ("workers", workers)):
        check_int(name, v, min=0)
    for name, v in (("seed", seed), ("anneal_seed", anneal_seed)):
        check_seed(name, v)
    for name, x in (("lr", lr), ("anneal_lr", anneal_lr)):
        check_float(name, x, min=0.0, min_open=True)
    check_float("weight_decay", weight_decay, min=0.0)
    check_float("max_seconds", max_seconds, min=0.0, min_open=True, optional=True)
    unknown = sorted(set(arch) - set(_ARCH))
    if unknown:
        raise TypeError(f"unknown architecture settings {unknown} (known: {list(_ARCH)})")
    for name in arch:
        check_int(name, arch[name], min=1)
    cfg = {"hidden": 128, "heads": 4, "kv_heads": 2} | arch
    if cfg["hidden"] % cfg["heads"]:
        raise ValueError(f"hidden must be a multiple of heads ({cfg['heads']}), got {cfg['hidden']}")
    if cfg["heads"] % cfg["kv_heads"]:
        raise ValueError(f"heads must be a multiple of kv_heads ({cfg['kv_heads']}), got {cfg['heads']}")


@checked_arguments
def train_toy_model(
    out_dir: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | None = None,
    n_people: int = N_PEOPLE,
    stop_at: int | None = 1274,
    anneal_steps: int = 900,
    anneal_lr: float = 1e-3,
    anneal_batch_size: int = 256,
    anneal_seed: int = 1,
    eval_per_family: int = 100,
    log_every: int = 100,
    weight_decay: float = 0.0,
    quant_eval: tuple[tuple[int, int | None], ...] = (),
    workers: int = 2,
    max_seconds: float | None = None,
    **arch,
) -> dict:
    """Train a toy reasoning model, evaluate it on held-out problems, save it to ``out_dir``.

    Phase 1: AdamW (betas 0.9/0.95), linear warm-up over 5% of ``steps`` then cosine decay
    to 0 at ``steps``, gradient clipping at 1.0, bf16 autocast on GPU; the phase ends after
    ``stop_at`` steps (``None``: all ``steps``) — stopping mid-cosine leaves a model that
    is accurate but not over-converged. Phase 2 (``anneal_steps > 0``): :func:`anneal_`.

    Args:
        seed: seeds ``torch`` (initialisation) and the phase-1 data stream.
        device: ``"cuda"``/``"cpu"`` (default: cuda if available).
        n_people: size of the knowledge fact table (:func:`~lrm_interp.data.toy_tasks.build_world`).
        quant_eval: ``((bits, group_size), ...)`` RTN settings also evaluated after training.
        max_seconds: emergency stop of phase 1 (recorded in the log; not reproducible).
        **arch: ``hidden``, ``layers``, ``heads``, ``kv_heads``, ``intermediate`` (see
            :func:`model_config`).

    Returns:
        the training log (also written to ``out_dir/training_log.json``).
    """
    from transformers import LlamaForCausalLM

    check_train_settings(
        steps=steps,
        stop_at=stop_at,
        anneal_steps=anneal_steps,
        anneal_lr=anneal_lr,
        batch_size=batch_size,
        anneal_batch_size=anneal_batch_size,
        lr=lr,
        seed=seed,
        anneal_seed=anneal_seed,
        n_people=n_people,
        eval_per_family=eval_per_family,
        log_every=log_every,
        weight_decay=weight_decay,
        workers=workers,
        max_seconds=max_seconds,
        **arch,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(**arch)).to(device)  # type: ignore[arg-type, unused-ignore]  # mistyped .to() in some transformers versions
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    log: dict = {
        "steps": steps,
        "stop_at": stop_at,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "device": device,
        "n_people": n_people,
        "world_seed": WORLD_SEED,
        "arch": arch,
        "torch": torch.__version__,
        "config": model.config.to_dict(),
        "loss": [],
    }
    _run(
        model,
        _loader(steps, batch_size, seed, n_people, workers),
        opt,
        sched,
        device=device,
        log=log,
        key="loss",
        log_every=log_every,
        stop_at=stop_at,
        max_seconds=max_seconds,
    )
    if anneal_steps:
        anneal_(
            model,
            log,
            steps=anneal_steps,
            lr=anneal_lr,
            batch_size=anneal_batch_size,
            seed=anneal_seed,
            n_people=n_people,
            device=device,
            workers=workers,
        )
    return _evaluate_and_save(
        model, log, out_dir, n_people=n_people, eval_per_family=eval_per_family, quant_eval=quant_eval
    )


@checked_arguments
def anneal_toy_model(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 1,
    device: str | None = None,
    workers: int = 2,
    eval_per_family: int = 100,
    quant_eval: tuple[tuple[int, int | None], ...] = (),
) -> dict:
    """Run phase 2 (:func:`anneal_`) on a saved phase-1 model ``src_dir``; log extends its log."""
    from transformers import LlamaForCausalLM

    check_int("steps", steps, min=1)
    check_train_settings(
        anneal_lr=lr, anneal_batch_size=batch_size, anneal_seed=seed, workers=workers, eval_per_family=eval_per_family
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    src = Path(src_dir)
    log = json.loads((src / TRAINING_LOG).read_text())
    for k in ("heldout_accuracy", "rtn_accuracy", "eval"):
        if k in log:
            log[f"phase1_{k}"] = log.pop(k)
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(src, dtype=torch.float32)
    anneal_(
        model,
        log,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        n_people=log["n_people"],
        device=device,
        workers=workers,
    )
    return _evaluate_and_save(
        model, log, out_dir, n_people=log["n_people"], eval_per_family=eval_per_family, quant_eval=quant_eval
    )


if __name__ == "__main__":  # the old module entry point: the options are the CLI's now (lrm_interp/cli/toy.py)
    import shlex
    import sys

    sys.exit(
        "python -m lrm_interp.toy.train is now 'lrm-interp toy train' (same options and defaults): "
        + shlex.join(["lrm-interp", "toy", "train", *sys.argv[1:]])
    )
