"""``lrm-interp experiment protection`` (mirrors
:func:`lrm_interp.experiments.protection_table.run_protection_experiment`). Conventions:
:mod:`lrm_interp.cli.common`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lrm_interp.cli.common import (
    PROG,
    Accumulate,
    CliError,
    add_command,
    float_arg,
    fraction,
    group_size_arg,
    int_arg,
    nonneg_int,
    positive_int,
    refuse_quantized_model,
    require_model,
    seed_int,
)
from lrm_interp.cli.protect import add_symmetry_flags, given, untyped
from lrm_interp.experiments.protection import ExperimentSettings

#: the defaults of the flags only some rows read: refused when typed and no row reads them, never as defaults
_DEFAULTS = ExperimentSettings()

PROTECTION_HELP = "matched-bits protection experiment: accuracy of every protection row, table + CSV + plot"
PROTECTION_DESCRIPTION = (
    "Quantize a model that solves the toy tasks (the toy reasoner, the distilled SmolLM2 reasoner) once per row — "
    "no protection, 2% of weights in FP16 by each saliency (random: 3 seeds), the paper's final-layer MLP, "
    "module-level mixed precision by attribution / Hessian / nothing at the same bits per weight, behaviour-guided "
    "GPTQ, plain b+1 bits — and measure accuracy on held-out problems with 95% Wilson intervals. Writes "
    "table.md, table.csv, bpw_accuracy.png, rows.jsonl and settings.json to --out, and paired.csv: the best "
    "attribution-guided row against every other row on the same problems (paired bootstrap interval, exact "
    "McNemar p); an interrupted run resumes there, a folder of another run is refused. The grid is asymmetric "
    "unless --symmetric."
)
PROTECTION_EXAMPLES = [
    f"{PROG} experiment protection --model toy --bits 3 --quantizer rtn --symmetric --per-family 50 "
    "--out runs/protection_rtn3",
    f"{PROG} experiment protection --model toy --bits 3 --quantizer gptq --asymmetric --per-family 10 "
    "--only magnitude scale-aware --out runs/protection_gptq3_quick",
    f"{PROG} experiment protection --model toy --bits 3 --quantizer gptq --asymmetric --per-family 10 "
    "--only magnitude scale-aware --redo magnitude --out runs/protection_gptq3_quick",
]


def cmd_protection(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import check_paths
    from lrm_interp.experiments.protection_table import (
        EXPERIMENT_REQUANTIZED,
        ExperimentSettings,
        run_protection_experiment,
    )

    check_paths(
        {"--out": a.out}, dirs=True, own="experiment"
    )  # a file at --out (or on the way to it): refused before loading
    require_model(a.model)
    refuse_quantized_model(a.model, EXPERIMENT_REQUANTIZED)
    dup = next((x for i, x in enumerate(a.random_seeds) if x in a.random_seeds[:i]), None)
    if dup is not None:  # was a duplicate row "2% random (seed 0)" in table.md (H7-E4)
        raise CliError(f"--random-seeds: seed {dup} given twice (each seed is one control row); give it once")
    typed = {field: getattr(a, field) for _, field, _ in ROW_FLAGS if given(getattr(a, field))}
    if "random_seeds" in typed:
        typed["random_seeds"] = tuple(typed["random_seeds"])
    try:
        s = ExperimentSettings(
            model=a.model,
            bits=a.bits,
            quantizer=a.quantizer,
            per_family=a.per_family,
            group_size=group_size_arg(a.group_size),
            symmetric=a.symmetric,
            max_new_tokens=a.max_new_tokens,
            **typed,
        )
    except ValueError as e:
        raise CliError(str(e)) from None
    from lrm_interp.experiments.protection import check_only

    try:
        check_only(s, a.only)
    except ValueError as e:  # "only: 'zzz' matches no row ..." -> "--only 'zzz' matches ..."
        raise CliError("--only" + str(e).removeprefix("only:")) from None
    try:
        check_only(s, a.redo)
    except ValueError as e:
        raise CliError("--redo" + str(e).removeprefix("only:")) from None
    _refuse_unused_flags(a, s, typed)
    try:
        table = run_protection_experiment(a.out, s, only=a.only, redo=a.redo, progress=not a.quiet)
    except ValueError as e:
        if "rows.jsonl:" in str(e):  # names the file and line
            raise CliError(str(e)) from None
        if "holds another experiment" in str(e) or "rows.jsonl without" in str(e):
            raise CliError(f"--out {e}{_grid_hint(a.out, e)}") from None
        raise
    print(table.to_markdown())
    print(f"wrote {a.out}/table.md, table.csv, paired.csv, bpw_accuracy.png ({len(table.rows)} rows)")
    for w in table.warnings:  # full precision answers nothing: the table means nothing (H7-E1)
        import sys

        print(f"{PROG} experiment protection: warning: {w}", file=sys.stderr)
    return 0


#: the flags that only some rows read: (flag, ExperimentSettings field, the rows that read it)
ROW_FLAGS = (
    (
        "--budget",
        "budget",
        "the 2% per-weight rows, the mixed-precision rows (at their bits per weight) and guided GPTQ + 2%",
    ),
    (
        "--attribution-traces",
        "attribution_traces",
        "the rows built from behaviour-span gradients or attribution: the attribution / scale-aware / TaCQ "
        "saliencies, mixed precision by attribution, behaviour-guided GPTQ",
    ),
    ("--random-seeds", "random_seeds", "the random-saliency control rows"),
    ("--guided-mix", "guided_mix", "the behaviour-guided GPTQ rows (--quantizer gptq only)"),
)


def _refuse_unused_flags(a: argparse.Namespace, s: ExperimentSettings, typed: dict[str, Any]) -> None:
    """A flag given for a new experiment that no row this run measures reads (``--guided-mix``
    under RTN or with ``--only magnitude``, ``--random-seeds`` without a random row, ...) changed no
    number but was recorded in ``settings.json``, so a resume without it was refused as another
    experiment (H8-EX2): refused, naming it and the rows that read it. A folder that already
    holds ``settings.json`` is a resume: there the flags must repeat what it records (an older run
    may have recorded such a value), and the folder check compares every one of them."""
    from lrm_interp.experiments.protection import unused_settings

    if (Path(a.out) / "settings.json").exists():
        return
    unused = set(unused_settings(s, a.only)) & set(typed)
    flags = [(flag, rows) for flag, field, rows in ROW_FLAGS if field in unused]
    if not flags:
        return
    measured = f"--quantizer {a.quantizer}" + (f", --only {' '.join(a.only)}" if a.only else "")
    names = ", ".join(f for f, _ in flags)
    it = "it" if len(flags) == 1 else "them"
    # a flag no row of the whole grid reads (--guided-mix under RTN): --only cannot help
    tail = "" if unused & set(unused_settings(s)) else ", or select such a row with --only"
    raise CliError(
        f"{names} {'does' if len(flags) == 1 else 'do'} not apply: no row this run measures ({measured}) reads "
        f"{it} ({'; '.join(f'{f} is read by {rows}' for f, rows in flags)}); leave {it} out{tail}"
    )


def _grid_hint(out: str, e: ValueError) -> str:
    """For a folder refused for its grid: the flag that resumes it. (This command defaulted to a
    symmetric grid until the --symmetric/--asymmetric pair; now, as everywhere, to asymmetric.)"""
    try:
        sym = json.loads((Path(out) / "settings.json").read_text())["settings"]["symmetric"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if "symmetric" not in str(e).partition("differs in")[2]:
        return ""
    return (
        f" (its grid is {'symmetric' if sym else 'asymmetric'}: add --{'symmetric' if sym else 'asymmetric'} to "
        "resume it; the default is asymmetric)"
    )


def register(sub) -> None:
    """Add ``experiment protection`` to ``sub``."""
    e = add_command(
        sub,
        "experiment",
        help="the paper-style experiments (protection at matched bits)",
        examples=PROTECTION_EXAMPLES[:1],
    )
    es = e.add_subparsers(
        dest="experiment_cmd",
        required=True,
        metavar="EXPERIMENT",
        help="protection: the matched-bits protection table of one model and quantizer",
    )
    p = add_command(
        es, "protection", help=PROTECTION_HELP, description=PROTECTION_DESCRIPTION, examples=PROTECTION_EXAMPLES
    )
    p.add_argument(
        "--model",
        default="toy",
        metavar="DIR|ALIAS",
        help="a model that answers the toy tasks: 'toy', 'smollm2-135m-reasoner' or a folder",
    )
    p.add_argument(
        "--bits",
        type=int_arg(2, 7),
        default=3,
        metavar="B",
        help="bit width of the quantized rows, 2..7 (b+1 is a row)",
    )
    p.add_argument("--quantizer", choices=["rtn", "gptq"], default="rtn", help="quantizer of every row")
    p.add_argument("--per-family", type=positive_int, default=50, metavar="N", help="held-out problems per task family")
    p.add_argument(
        "--group-size",
        type=nonneg_int,
        default=128,
        metavar="N",
        help="quantization group size in input columns (0 = per channel)",
    )
    add_symmetry_flags(p)
    typed_only = "(refused when typed for a new --out none of whose rows reads it)"
    p.add_argument(
        "--budget",
        type=float_arg(0.0, 1.0, min_open=True, max_open=True),
        default=untyped(_DEFAULTS.budget),
        metavar="F",
        help=f"fraction of the linear weights kept in FP16 by the per-weight rows, in (0, 1); default "
        f"{_DEFAULTS.budget} {typed_only}",
    )
    p.add_argument(
        "--attribution-traces",
        type=positive_int,
        default=untyped(_DEFAULTS.attribution_traces),
        metavar="N",
        help=f"gold-annotated toy traces per family for gradients and module importance; default "
        f"{_DEFAULTS.attribution_traces} {typed_only}",
    )
    p.add_argument(
        "--random-seeds",
        type=seed_int,
        nargs="+",
        action=Accumulate,
        default=untyped(list(_DEFAULTS.random_seeds)),
        metavar="S",
        help=f"seeds of the random-saliency control rows; default {' '.join(map(str, _DEFAULTS.random_seeds))} "
        f"{typed_only}",
    )
    p.add_argument(
        "--guided-mix",
        type=fraction,
        default=untyped(_DEFAULTS.guided_mix),
        metavar="F",
        help="weight of the behaviour-gradient Hessian in the guided GPTQ rows, in [0, 1] (0: the "
        f"calibration Hessian alone, 1: the behaviour-gradient Hessian alone); default {_DEFAULTS.guided_mix} "
        f"{typed_only}: the guided rows are GPTQ's only",
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=480,
        metavar="N",
        help="length limit of each greedy answer (about twice the full-precision model's longest "
        "answer bounds what a broken, looping row costs)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="TEXT",
        help="measure only rows whose label contains one of these (fp and none always)",
    )
    p.add_argument(
        "--redo",
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="TEXT",
        help="re-measure the rows whose label contains one of these although --out holds them (rows "
        "measured before per-problem outcomes were recorded have no paired comparison)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_protection)
