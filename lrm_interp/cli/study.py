"""``lrm-interp study``: :func:`lrm_interp.experiments.study.run_study` on any model and traces —
attribution, masks and a mixed-precision allocation, compressed variants at matched bits per
weight, accuracy (``--tasks``) or KL with intervals, importance shift, ``report.html``; resumable.
``lrm-interp quickstart`` is the same study on the shipped toy (:mod:`lrm_interp.experiments.quickstart`).
Conventions: :mod:`lrm_interp.cli.common`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from lrm_interp.checks import int_arg
from lrm_interp.cli.common import (
    PROG,
    Accumulate,
    CliError,
    add_command,
    check_paths,
    float_arg,
    folder_output_lock,
    model_input,
    positive_int,
    reading,
    require_model,
    require_path,
)
from lrm_interp.cli.protect import add_symmetry_flags

if TYPE_CHECKING:
    from lrm_interp.experiments.study import StudySettings

HELP = "attribute, protect and compress any model at matched bits per weight: accuracy or KL, report.html"
DESCRIPTION = (
    "The quickstart's pipeline on any model and annotated traces, as one resumable run: attribute every linear "
    "module (--data), build a --budget protection mask by attribution and one by magnitude and a mixed-precision "
    "allocation by attribution at the same bits per weight, quantize a copy per variant (uniform --bits RTN, "
    "magnitude, attribution, mixed precision), score them — accuracy on --tasks with 95% Wilson intervals, or "
    "without --tasks KL(full precision || variant) per response token on the traces with bootstrap intervals — "
    "attribute the uniform copy for the importance shift, and write report.html. Rerun the same command to "
    "resume; a --out holding another study is refused (--overwrite starts it over)."
)
EXAMPLES = [
    f"{PROG} study --model toy --data traces.jsonl --tasks math logic knowledge --bits 3 --out runs/study",
    f"{PROG} study --model ./my_model --data paper_layout/ --bits 3 --out runs/study_kl      # KL, no tasks",
    f"{PROG} study --model smollm2-135m-reasoner --data traces.jsonl --tasks aime --task-data bench/ --per-task 30 "
    "--bits 3 --out runs/study_aime",
]


#: the flags of one mode (accuracy on --tasks, or KL without): given in the other, refused (H7-Y1)
TASK_FLAGS = (
    ("--task-data", "task_data"),
    ("--per-task", "per_task"),
    ("--max-new-tokens", "max_new_tokens"),
    ("--batch-size", "batch_size"),
)
KL_FLAGS = (("--resamples", "resamples"),)


def _refuse_unused_flags(a: argparse.Namespace) -> None:
    """Flags the study's mode never uses were accepted and recorded in ``study.json`` (so a resume
    without them was refused as "another study"): refused, naming them (H7-Y1)."""
    if not a.tasks:
        unused = [f for f, dest in TASK_FLAGS if getattr(a, dest) is not None]
        if not a.require_think:
            unused.append("--no-require-think")
        if unused:
            raise CliError(
                f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} used with --tasks only (accuracy on "
                "benchmark tasks); without --tasks the study measures KL on the --data traces"
            )
        return
    unused = [f for f, dest in KL_FLAGS if getattr(a, dest) is not None]
    if unused:
        raise CliError(
            f"{', '.join(unused)} is used without --tasks only (the KL intervals' bootstrap); with --tasks the "
            "intervals are Wilson intervals of the accuracy"
        )
    if a.task_data is not None:
        from lrm_interp.data.benchmarks import get_task

        try:
            needs = [t for t in a.tasks if get_task(t).needs_data]
        except KeyError as e:
            raise CliError(f"--tasks: {e.args[0]}") from None
        if not needs:
            raise CliError(
                f"--task-data is read by the file tasks (aime, folio, temporal, musique) only; --tasks "
                f"{' '.join(a.tasks)} are generated toy tasks"
            )


def cmd_study(a: argparse.Namespace) -> int:
    from lrm_interp.data.benchmarks import find_task_file, get_task
    from lrm_interp.experiments.study import (
        StudySettings,
        check_environment,
        check_study_folder,
        quantized_model_note,
    )

    # everything that can be checked without loading the model, first
    try:
        check_environment()  # $LRM_INTERP_SKIP_MEMORY_CHECK: before the first write (H10-SMCL)
    except ValueError as e:
        raise CliError(str(e)) from None
    require_model(a.model)
    note = quantized_model_note(a.model)
    if note is not None:  # was labelled "full precision (fp32)" with KL 0 (H7-QM1)
        raise CliError(f"--model {note}")
    _refuse_unused_flags(a)
    data = require_path(a.data, "--data")
    check_paths({"--out": a.out}, {"--model": model_input(a.model), "--data": data}, dirs=True, own="study")
    for t in a.tasks or ():
        try:
            task = get_task(t)
        except KeyError as e:
            raise CliError(f"--tasks: {e.args[0]}") from None
        if task.needs_data:
            if a.task_data is None:
                raise CliError(f"--tasks {t}: this task reads a data file; give --task-data FILE|DIR")
            with reading(a.task_data, "--task-data"):
                try:
                    find_task_file(t, a.task_data)
                except FileNotFoundError as e:
                    raise CliError(f"--task-data: {e}") from None
    given = {
        k: v
        for k, v in (
            ("per_task", a.per_task),
            ("max_new_tokens", a.max_new_tokens),
            ("batch_size", a.batch_size),
            ("resamples", a.resamples),
        )
        if v is not None
    }
    try:
        settings = StudySettings(
            tasks=tuple(a.tasks or ()),
            task_data=a.task_data,
            bits=a.bits,
            group_size=a.group_size,
            symmetric=a.symmetric,
            budget=a.budget,
            require_think=a.require_think,
            **given,
        )
    except ValueError as e:
        raise CliError(str(e)) from None
    from lrm_interp.data.loading import load_dataset

    with reading(data, "--data"):
        ds = load_dataset(data)
    if len(ds) == 0:
        raise CliError(f"--data {data}: no traces")
    try:  # the settings and the traces, before the model loads (H33-HINTPART: traces were named only after it)
        check_study_folder(a.out, settings, a.overwrite, writes_traces=False, wording="cli", traces=ds)
    except ValueError as e:
        raise CliError(str(e)) from None
    # one study run per --out, from here to its report: a second --overwrite run replaced the first's
    # masks and allocation, then failed (H11-CST)
    with folder_output_lock("--out", a.out, "study", new=True):
        try:  # again, under the lock: a study that began or finished meanwhile is seen here
            check_study_folder(a.out, settings, a.overwrite, writes_traces=False, wording="cli", traces=ds)
        except ValueError as e:
            raise CliError(str(e)) from None
        return _run_study(a, data, settings)


def _run_study(a: argparse.Namespace, data: Path, settings: StudySettings) -> int:
    """The body of :func:`cmd_study` after its checks (the traces read and checked), under its lock."""
    from lrm_interp.experiments.report import files_and_commands, study_summary, write_study_report
    from lrm_interp.experiments.study import run_study

    result = run_study(a.model, data, a.out, settings, overwrite=a.overwrite, progress=not a.quiet)
    print("\n".join(study_summary(result)))
    report = write_study_report(result)
    print()
    print("\n".join(files_and_commands(result, {"report.html": "all of the above on one page"})))
    print(f"\nreport: {report} (self-contained HTML: open it in a browser)")
    for w in result.warnings:  # the rows compare nothing (H7-E1)
        import sys

        print(f"{PROG} study: warning: {w}", file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add the ``study`` subcommand to ``sub``."""
    from lrm_interp.model.loading import model_aliases

    p = add_command(sub, "study", help=HELP, description=DESCRIPTION, examples=EXAMPLES)
    io = p.add_argument_group("input and output")
    io.add_argument(
        "--model",
        required=True,
        metavar="DIR|ALIAS",
        help="local Hugging Face model directory, or an alias: " + ", ".join(model_aliases()),
    )
    io.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="annotated traces to attribute (and to measure KL on without --tasks): JSONL file or "
        "paper-layout directory",
    )
    io.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder; the same command on it again resumes (finished rows are kept)",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out holding another study (its study files and attribution folders are removed first)",
    )
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    ev = p.add_argument_group("what is measured")
    ev.add_argument(
        "--tasks",
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="TASK",
        help="benchmark tasks to score accuracy on (toy: math logic knowledge, generated; aime folio "
        "temporal musique: read from --task-data); without it: KL to full precision on --data",
    )
    ev.add_argument(
        "--task-data",
        default=None,
        metavar="FILE|DIR",
        help="benchmark file or folder of the tasks that read data (lrm_interp.data.benchmarks)",
    )
    ev.add_argument(
        "--per-task",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --tasks: problems per task: toy tasks generated with seed 2 (as 'bench --per-family'), file "
        "tasks their first N records (as 'bench --limit'); default 50",
    )
    ev.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --tasks: greedy tokens generated per problem (default 480)",
    )
    ev.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --tasks: problems generated at once (default 32)",
    )
    ev.add_argument(
        "--no-require-think",
        dest="require_think",
        action="store_false",
        help="with --tasks: grade outputs without </think> too (by default they count as wrong, as in 'bench score')",
    )
    ev.add_argument(
        "--resamples",
        type=positive_int,
        default=None,
        metavar="N",
        help="without --tasks: bootstrap resamples of the KL intervals (40 to 100000; default 1000)",
    )
    cq = p.add_argument_group("compression (RTN; the variants share these)")
    cq.add_argument(
        "--bits", type=int_arg(2, 7), required=True, metavar="B", help="bits of the quantized weights, 2..7"
    )
    cq.add_argument("--group-size", type=positive_int, default=128, metavar="G", help="quantization group size")
    add_symmetry_flags(cq)
    cq.add_argument(
        "--budget",
        type=float_arg(0.0, 1.0, min_open=True, max_open=True),
        default=0.02,
        metavar="F",
        help="fraction of the linear weights the magnitude and attribution masks keep in FP16, in (0, 1); "
        "their bits per weight are the mixed-precision allocation's budget",
    )
    p.set_defaults(fn=cmd_study)
