"""``lrm-interp toy train|eval|traces`` (mirror lrm_interp.toy)."""

from __future__ import annotations

import argparse
import copy


def cmd_eval(a: argparse.Namespace) -> int:
    from lrm_interp.model.loading import load_model
    from lrm_interp.compress.quant import quantize_model_
    from lrm_interp.toy.evaluate import evaluate
    from lrm_interp.toy.tasks import problems

    model, tok = load_model(a.model)
    if a.bits:
        model = copy.deepcopy(model)
        quantize_model_(model, bits=a.bits, group_size=a.group_size, progress=False)
    acc = evaluate(model, tok, problems(a.per_family, seed=a.seed), progress=True)
    print({k: round(v, 3) for k, v in acc.items()})
    return 0


def cmd_traces(a: argparse.Namespace) -> int:
    from lrm_interp.model.loading import load_model
    from lrm_interp.toy.evaluate import collect_traces
    from lrm_interp.toy.tasks import generate_dataset, problems

    if a.gold:
        ds = generate_dataset(a.per_family, seed=a.seed)
    else:
        model, tok = load_model(a.model)
        ds = collect_traces(model, tok, problems(a.per_family, seed=a.seed), progress=True)
    ds.save_jsonl(a.out)
    print(f"wrote {len(ds)} traces to {a.out}; spans {ds.span_counts()}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from lrm_interp.toy.train import train_from_args

    return train_from_args(a)


def register(sub) -> None:
    t = sub.add_parser("toy", help="the shipped toy reasoning model: train / eval / traces")
    ts = t.add_subparsers(dest="toy_cmd", required=True)
    tr = ts.add_parser("train", help="train a toy reasoning model (GPU if available)")
    from lrm_interp.toy.train import add_train_args

    add_train_args(tr)  # same options and defaults as `python -m lrm_interp.toy.train` (the shipped recipe)
    tr.set_defaults(fn=cmd_train)
    ev = ts.add_parser("eval", help="accuracy per family on held-out problems")
    ev.add_argument("--model", default="toy")
    ev.add_argument("--per-family", type=int, default=50)
    ev.add_argument("--seed", type=int, default=2)
    ev.add_argument("--bits", type=int, default=None, help="RTN-quantize first")
    ev.add_argument("--group-size", type=int, default=128)
    ev.set_defaults(fn=cmd_eval)
    tc = ts.add_parser("traces", help="write annotated traces (gold, or the model's own)")
    tc.add_argument("--model", default="toy")
    tc.add_argument("--gold", action="store_true", help="generator traces with gold spans")
    tc.add_argument("--per-family", type=int, default=10)
    tc.add_argument("--seed", type=int, default=3)
    tc.add_argument("--out", required=True)
    tc.set_defaults(fn=cmd_traces)
