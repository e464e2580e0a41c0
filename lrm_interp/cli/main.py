"""``lrm-interp`` command line. Each subcommand mirrors a Python function:

=================  ===============================================
``quickstart``     :func:`lrm_interp.experiments.quickstart.run_quickstart` (``study`` on the shipped toy)
``study``          :func:`lrm_interp.experiments.study.run_study`
``attribute``      :func:`lrm_interp.attribute`
``parse``          :func:`lrm_interp.load_paper_layout` / :func:`lrm_interp.load_dataset`
``compare``        :func:`lrm_interp.compare`
``protect``        :func:`lrm_interp.protect.policies.build_masks`
``quantize``       :func:`lrm_interp.compress.quant.quantize_model_`
``toy``            :mod:`lrm_interp.toy` (train / eval / traces / distill)
``bits``           :func:`lrm_interp.protect.bit_allocation.allocate_bits`
``experiment``     :func:`lrm_interp.experiments.protection_table.run_protection_experiment`
``bench``          :func:`lrm_interp.evaluation.bench_suite.run_suite` /
                   :func:`lrm_interp.evaluation.bench_score.score_outputs`
``annotate``       :mod:`lrm_interp.data.annotators` (annotate / agree / train)
``faithfulness``   :func:`lrm_interp.attribution.faithfulness.atp_faithfulness`
=================  ===============================================

Conventions (help, examples, input checks, one-line errors): :mod:`lrm_interp.cli.common`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from lrm_interp.cli.common import (
    PROG,
    CliError,
    FileOutputs,
    HelpFormatter,
    Parser,
    add_command,
    add_dataclass_args,
    bits_int,
    dataclass_from_args,
    debug_enabled,
    float_arg,
    format_examples,
    load_attribution,
    load_model_quietly,
    nonneg_int,
    positive_int,
    quiet_progress,
    reading,
    report_error,
    require_attribution_dir,
    require_model,
    require_path,
)


# --------------------------------------------------------------------------- attribute
def _load_tokenizer(path: Path):
    from lrm_interp.model.loading import load_tokenizer

    try:
        return load_tokenizer(path, "--tokenizer")
    except ValueError as e:
        raise CliError(str(e)) from e


def _check_vocab(model, tok, model_name: str, tok_dir: Path) -> None:
    emb = model.get_input_embeddings()
    n_emb = getattr(emb, "num_embeddings", None)
    if n_emb is not None and len(tok) > n_emb:
        raise CliError(
            f"--tokenizer {tok_dir}: vocabulary of {len(tok)} tokens is larger than the input "
            f"embedding of --model {model_name} ({n_emb} rows): wrong tokenizer for this model"
        )


def _check_sites(model, pattern: str | None, model_name: str) -> None:
    if not isinstance(pattern, str):
        return
    from lrm_interp.model.sites import empty_pattern_problem, find_sites

    problem = empty_pattern_problem(pattern)  # selects everything: not "matches no linear site" (H33-FINDEMPTY)
    if problem is not None:
        raise CliError(f"--sites: {problem}")
    try:  # find_sites refuses a pattern that selects nothing (H15-FSE): say it with the flag
        found = find_sites(model, include_lm_head=True, pattern=pattern)
    except ValueError:
        found = []
    if not found:
        some = [s.name for s in find_sites(model)][:2]
        raise CliError(
            f"--sites {pattern!r} matches no linear site of --model {model_name} "
            f"(site names look like {', '.join(some)})"
        )


def cmd_attribute(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import check_paths

    # everything that can be checked without loading anything, first: --out a folder that can be
    # written (an existing file there, or a file on its way, used to fail after the model loaded)
    check_paths({"--out": a.out}, dirs=True, own="attribution")
    if a.overwrite:  # a folder of another command's result (a study's attribution_fp32/): refused up front
        from lrm_interp.attribution.resume import check_overwrite_target

        try:
            check_overwrite_target(a.out)
        except ValueError as e:
            raise CliError(str(e)) from None
    from lrm_interp.attribution.distributed import env_rank_world
    from lrm_interp.attribution.resume import out_dir_lock

    # one live run per --out, from here to the tables (a second one is refused naming the first's pid,
    # H7-K4); under torchrun rank 0 holds it for all ranks ($RANK / $WORLD_SIZE checked: H9-E1)
    try:
        rank0 = env_rank_world()[0] == 0
    except ValueError as e:
        raise CliError(str(e)) from None
    with out_dir_lock(a.out) if rank0 else contextlib.nullcontext():
        return _attribute_in_out(a)


def _attribute_in_out(a: argparse.Namespace) -> int:
    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.data.loading import load_dataset

    require_model(a.model)
    data = require_path(a.data, "--data")
    tok_dir = require_path(a.tokenizer, "--tokenizer", kind="dir") if a.tokenizer else None
    cfg = dataclass_from_args(AttributionConfig, a)  # validates every setting (regex included)
    with reading(data, "--data"):
        ds = load_dataset(data)
    if len(ds) == 0:
        raise CliError(f"--data {data}: no traces")
    tok = _load_tokenizer(tok_dir) if tok_dir else None
    model, tok = load_model_quietly(a.model, tokenizer=tok)
    if tok_dir:
        _check_vocab(model, tok, a.model, tok_dir)
    _check_sites(model, cfg.sites, a.model)

    from lrm_interp import attribute

    res = attribute(model, ds, config=cfg, tokenizer=tok, out_dir=a.out, progress=not a.quiet, overwrite=a.overwrite)
    if (res.provenance.get("distributed") or {}).get("rank", 0) != 0:
        return 0  # under torchrun rank 0 writes the tables and reports
    out = Path(a.out)
    res.write_tables(out)
    print(f"wrote {out}/attribution.json, attribution.safetensors, scores.csv, heatmap.png")
    for beh in res.behaviors:
        top = res.top(3, beh)
        print(f"  {beh:24s} " + ", ".join(f"{s} ({ri:.3f})" for _, s, ri in top))
    if res.provenance.get("absent_behaviors"):
        counts = res.provenance.get("absent_spans") or {}
        print(
            "  left out (no usable span in --data): "
            + ", ".join(
                f"{b} ({(counts.get(b) or {}).get('labelled', 0)} labelled, none usable)"
                for b in res.provenance["absent_behaviors"]
            )
        )
    if res.provenance.get("skipped_spans"):
        print(f"  skipped spans: {len(res.provenance['skipped_spans'])} (see attribution.json)")
    return 0


# --------------------------------------------------------------------------- parse / compare / quickstart
def cmd_parse(a: argparse.Namespace) -> int:
    """``lrm-interp parse``: a paper layout or JSONL file → validated JSONL ``--out`` (+ ``--report``)."""
    from lrm_interp.cli.common import check_paths, file_outputs

    data = require_path(a.data, "--data")
    if a.report and not _is_paper_layout(data):
        # never ignore a flag: a JSONL file has no parse report (its records are validated line by
        # line, and the first bad one stops the command naming file:line)
        raise CliError(
            f"--report: only a paper-layout directory (outputs/ + annotated/) has a parse report; "
            f"--data {data} is JSONL (drop --report)"
        )
    # before reading anything: no output names the input or the other output, none replaced without --overwrite
    check_paths(
        {"--out": a.out, "--report": a.report}, {"--data": data}, overwrite=a.overwrite, files=True, command="parse"
    )
    # published as one run's each: a new --out / --report never over what another run wrote meanwhile,
    # an existing one (--overwrite) by one run at a time (both runs printed "wrote", H9-CC2)
    with file_outputs({"--out": a.out, "--report": a.report}, "parse") as outs:
        return _parse(a, data, outs)


def _parse(a: argparse.Namespace, data: Path, outs: FileOutputs) -> int:
    """``parse`` once its outputs are checked and held (:func:`~lrm_interp.cli.common.file_outputs`)."""
    import warnings

    from lrm_interp._io import atomic_write_text
    from lrm_interp.data.loading import load_dataset
    from lrm_interp.data.traces import CustomBehaviorWarning

    with reading(data, "--data"), warnings.catch_warnings():
        warnings.simplefilter("ignore", CustomBehaviorWarning)  # printed below as one line
        ds = load_dataset(data)
    if not len(ds):  # load_dataset refuses this; never end in "wrote 0 traces"
        raise CliError(f"--data {data}: no traces found")
    rep = getattr(ds, "report", None)
    if a.report and rep is None:  # not reached: paper layouts always carry one
        raise CliError(f"--report: loading --data {data} produced no parse report")
    custom = ds.custom_behavior_summary(data)
    if custom is not None:
        print(f"{PROG} parse: note: {custom}", file=sys.stderr)
    outs.write("--out", ds.save_jsonl)
    print(f"wrote {len(ds)} traces, spans per behaviour {ds.span_counts()} to {a.out}")
    if rep is not None:
        print(rep.summary())
        if a.report:
            report = json.dumps(rep.to_dict(), indent=2)
            outs.write("--report", lambda p: atomic_write_text(p, report))
            print(f"wrote the parse report to {a.report}")
    return 0


def _is_paper_layout(p: Path) -> bool:
    """Whether :func:`lrm_interp.data.loading.load_dataset` reads ``p`` as a paper layout."""
    return p.is_dir() and ((p / "annotated").is_dir() or (p / "outputs").is_dir())


def cmd_compare(a: argparse.Namespace) -> int:
    """``lrm-interp compare``: the importance shift of two attribution results → ``--out/shift.csv``
    and ``shift.png``, published together: a new ``--out`` is one folder renamed into place, never
    over what appeared there meanwhile; into an existing one the two files are moved in one go,
    under :func:`~lrm_interp.cli.bench.folder_lock` (two runs both printed "wrote" and one result
    was lost, H8-CC)."""
    from lrm_interp._io import move_together, stage_folder
    from lrm_interp.cli.bench import created_meanwhile, folder_lock
    from lrm_interp.cli.common import check_paths

    out = Path(a.out)
    # --out never lies inside an input result, nor is another command's result folder (an attribution:
    # its shift.csv would be no file of any result there, replaced by the next writer; H16-CMPA);
    # shift.csv / shift.png are replaced only with --overwrite
    check_paths({"--out": a.out}, {"--original": a.original, "--compressed": a.compressed}, dirs=True, own="compare")
    existed = out.exists() or out.is_symlink()
    with folder_lock(out, "compare") if existed else contextlib.nullcontext():
        for name in ("shift.csv", "shift.png"):  # under the lock: a run that finished meanwhile is seen here
            # its own files of a compare result (H10-CMP); another result's are refused, naming it
            check_paths({"--out": out / name}, overwrite=a.overwrite, own="compare")
        shift = _importance_shift(a)
        with stage_folder(out, beside=not existed) as stage:
            shift.write_tables(stage, view=a.view)
            if existed:
                move_together(stage, out, SHIFT_FILES)
            else:
                from lrm_interp._io import publish_dir

                try:
                    publish_dir(stage, out, replace=False)
                except FileExistsError:
                    raise created_meanwhile("--out", out) from None
    print(f"wrote {out}/shift.csv and shift.png")
    return 0


#: the files ``compare`` writes, in the order they are published (the table last)
SHIFT_FILES = ("shift.png", "shift.csv")


def _importance_shift(a: argparse.Namespace):
    """The checked :class:`~lrm_interp.attribution.results.ImportanceShift` of ``compare``'s inputs."""
    import warnings

    from lrm_interp.attribution.results import comparability, compare
    from lrm_interp.model.provenance import swapped_compression

    require_attribution_dir(a.original, "--original")
    require_attribution_dir(a.compressed, "--compressed")
    orig, comp = load_attribution(a.original, "--original"), load_attribution(a.compressed, "--compressed")
    # --original the 3-bit copy, --compressed the full-precision model: every sign inverted, without a
    # word (H8-CR1); refused like the other mismatches, a warning with --allow-mismatch
    swapped = swapped_compression((orig.provenance or {}).get("model"), (comp.provenance or {}).get("model"))
    swap_note = (
        f"--original {a.original} is {swapped} and --compressed {a.compressed} is not: did you swap --original "
        "and --compressed?"
        if swapped
        else None
    )
    if swap_note and not a.allow_mismatch:
        raise CliError(swap_note + " (pass --allow-mismatch to compare them in this order anyway)")
    problems, notes = comparability(orig, comp)
    if problems and not a.allow_mismatch:
        raise CliError(
            f"--original {a.original} and --compressed {a.compressed} cannot be compared: "
            + "; ".join(problems)
            + " (attribute both models with the same settings and traces, or "
            "pass --allow-mismatch to compare anyway)"
        )
    if swap_note:
        print(f"{PROG} compare: warning: {swap_note}", file=sys.stderr)
    for n in problems + notes:
        if not (swap_note and "swap" in n):  # the API's clause of the same check: printed once, above
            print(f"{PROG} compare: warning: {n}", file=sys.stderr)
    with warnings.catch_warnings():  # printed above, one line each
        warnings.simplefilter("ignore")
        return compare(orig, comp, strict=False)


def cmd_quickstart(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import check_paths
    from lrm_interp.experiments.quickstart import run_quickstart

    check_paths(
        {"--out": a.out}, dirs=True, own="study"
    )  # a folder, never under a file: refused before the model loads
    run_quickstart(
        out_dir=a.out,
        n_traces=a.traces,
        tiny=a.tiny,
        bits=a.bits,
        group_size=a.group_size,
        budget=a.budget,
        n_eval=a.eval,
        overwrite=a.overwrite,
        progress=not a.quiet,
    )
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Mechanistic interpretability of compressed reasoning models: score model sites per reasoning "
            "behaviour, protect the important weights, quantize, and compare. Each subcommand mirrors a "
            f"Python function of lrm_interp; '{PROG} COMMAND --help' lists its options.",
            width=88,
        ),
        epilog=format_examples(
            [
                f"{PROG} quickstart --out qs      # the whole pipeline, offline, minutes",
                f"{PROG} attribute --help          # the options of one subcommand",
            ]
        ),
    )
    sub = p.add_subparsers(
        dest="cmd",
        required=True,
        metavar="COMMAND",
        help=f"one of the subcommands below ('{PROG} COMMAND --help' for its options)",
    )

    q = add_command(
        sub,
        "quickstart",
        help="run the whole pipeline offline on the shipped toy model",
        description=f"'{PROG} study' on the shipped toy reasoning model and its gold traces, offline: "
        "attribution (heatmaps, ranking), a 2% attribution protection mask, then uniform "
        "3-bit RTN, 3-bit + 2% magnitude, 3-bit + 2% attribution and mixed precision by "
        "attribution at matched bits per weight (held-out accuracy with 95% Wilson "
        "intervals), importance shift; then print the files written and the commands "
        "that reuse them. Rerunning it on the same --out resumes.",
        examples=[f"{PROG} quickstart --out qs", f"{PROG} quickstart --out qs_tiny --tiny --traces 6 --eval 0 --quiet"],
    )
    q.add_argument(
        "--out",
        default="lrm_interp_quickstart",
        metavar="DIR",
        help="output directory (the same command on it again resumes)",
    )
    q.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out holding a quickstart with other settings (refused otherwise)",
    )
    q.add_argument(
        "--traces",
        type=positive_int,
        default=24,
        metavar="N",
        help="annotated traces to generate: a multiple of 3 (as many per task family)",
    )
    q.add_argument(
        "--tiny",
        action="store_true",
        help="use a tiny random model (plumbing check, scores mean nothing; KL instead of accuracy)",
    )
    q.add_argument("--bits", type=bits_int, default=3, metavar="N", help="RTN bits of the compressed copies, 2..7")
    q.add_argument("--group-size", type=positive_int, default=128, metavar="G", help="RTN group size")
    q.add_argument(
        "--budget",
        type=float_arg(0.0, 1.0, min_open=True, max_open=True),
        default=0.02,
        metavar="F",
        help="fraction of the linear weights the protection masks keep in full precision, in (0, 1)",
    )
    q.add_argument(
        "--eval",
        type=nonneg_int,
        default=150,
        metavar="N",
        help="held-out problems every variant solves, split over the three task families: 0 or a multiple "
        "of 3 (0 = skip the accuracy evaluation: KL to full precision on the traces instead)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(fn=cmd_quickstart)

    from lrm_interp.attribution.config import AttributionConfig
    from lrm_interp.model.loading import model_aliases

    at = add_command(
        sub,
        "attribute",
        help="score linear sites per reasoning behaviour (attribution patching / DoM)",
        description="Score every linear site of a model for each reasoning behaviour of annotated traces "
        "(lrm_interp.attribute). Writes attribution.json, attribution.safetensors, scores.csv and "
        "heatmap.png to --out; rerunning with the same --out resumes a killed run (a finished result "
        "there is replaced only by the same run on edited traces, with --overwrite).",
        examples=[
            f"{PROG} attribute --model toy --data traces.jsonl --out attr",
            f"{PROG} attribute --model ./my_model --tokenizer ./my_tok --data paper_layout/ --out attr "
            "--sites 'mlp' --mode joint --compute-dtype bf16",
            f"{PROG} attribute --model toy --data fixed.jsonl --out attr --overwrite   # after fixing annotations",
        ],
    )
    io = at.add_argument_group("input and output")
    io.add_argument(
        "--model",
        required=True,
        metavar="DIR|ALIAS",
        help="local Hugging Face model directory, or an alias: " + ", ".join(model_aliases()),
    )
    io.add_argument("--data", required=True, metavar="PATH", help="JSONL trace file or paper-layout directory")
    io.add_argument("--out", required=True, metavar="DIR", help="output directory (also used to resume)")
    io.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="tokenizer folder overriding the model's own (its vocabulary must fit the model's input embedding)",
    )
    io.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished result in --out computed on edited traces (same ids; prompts, responses or "
        "spans changed): refused otherwise; the traces that did not change are reused from its partials. "
        "A result of other settings, weights or trace ids is never replaced",
    )
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(
        at.add_argument_group("attribution settings (lrm_interp.AttributionConfig)"),
        AttributionConfig,
        metavars={"sites": "REGEX", "behaviors": "LABEL"},
        notes={
            "sites": "on the command line a regex, matched with re.search (e.g. 'mlp' or 'layers\\.(0|1)\\.self_attn')"
        },
    )
    at.set_defaults(fn=cmd_attribute)

    pa = add_command(
        sub,
        "parse",
        help="paper layout / JSONL -> validated JSONL + parse report",
        description="Load annotated traces (a paper-layout directory or a JSONL file), validate "
        "every record and span, and write them as one JSONL file.",
        examples=[f"{PROG} parse --data paper_layout/ --out traces.jsonl --report report.json"],
    )
    pa.add_argument("--data", required=True, metavar="PATH", help="paper-layout directory or JSONL trace file")
    pa.add_argument("--out", required=True, metavar="FILE", help="output JSONL file")
    pa.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="also write the parse report as JSON here (paper-layout --data only; refused for JSONL)",
    )
    from lrm_interp.cli.common import add_overwrite_flag

    add_overwrite_flag(pa, "--out and --report")
    pa.set_defaults(fn=cmd_parse)

    c = add_command(
        sub,
        "compare",
        help="importance shift between two attribution results",
        description="Importance shift RI_compressed - RI_original per behaviour and site between two "
        "'lrm-interp attribute' result folders; writes shift.csv and shift.png. Results "
        "computed with different attribution settings, model types, tokenizers or traces "
        "are refused (naming the difference); behaviours found in one result only are left "
        "out with a warning.",
        examples=[f"{PROG} compare --original attr_fp --compressed attr_q3 --out shift"],
    )
    c.add_argument("--original", required=True, metavar="DIR", help="attribution result of the original model")
    c.add_argument("--compressed", required=True, metavar="DIR", help="attribution result of the compressed model")
    c.add_argument("--out", required=True, metavar="DIR", help="output directory")
    c.add_argument(
        "--view",
        choices=["decreases", "signed"],
        default="decreases",
        help="decreases = only importance lost, as positive values (paper); signed = the full delta",
    )
    c.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="compare even results computed with different attribution settings, tokenizers or traces "
        "(refused by default; each difference is then printed as a warning)",
    )
    from lrm_interp.cli.common import add_overwrite_flag as _overwrite

    _overwrite(c, "shift.csv / shift.png in --out")
    c.set_defaults(fn=cmd_compare)

    _add_optional_commands(sub)
    return p


def _add_optional_commands(sub) -> None:
    """Subcommands defined in their own modules (protect / quantize / bits / toy / bench / annotate)."""
    from lrm_interp.cli import annotate as cli_annotate
    from lrm_interp.cli import bench as cli_bench
    from lrm_interp.cli import bits as cli_bits
    from lrm_interp.cli import experiment as cli_experiment
    from lrm_interp.cli import faithfulness as cli_faithfulness
    from lrm_interp.cli import protect as cli_protect
    from lrm_interp.cli import study as cli_study
    from lrm_interp.cli import toy as cli_toy

    cli_protect.register(sub)
    cli_bits.register(sub)
    cli_toy.register(sub)
    cli_bench.register(sub)
    cli_annotate.register(sub)
    cli_experiment.register(sub)
    cli_study.register(sub)
    cli_faithfulness.register(sub)


def _command_prog(args: argparse.Namespace) -> str:
    parts = [PROG] + [
        getattr(args, k)
        for k in ("cmd", "toy_cmd", "bench_cmd", "annotate_cmd", "experiment_cmd")
        if getattr(args, k, None)
    ]
    return " ".join(parts)


class _Interrupts:
    """While a command runs (``with _Interrupts() as intr``), no Ctrl-C is lost:

    * a SIGINT handler records it (``intr.seen``) before raising ``KeyboardInterrupt``, so an
      interrupt a library turned into another error (transformers' lazy import, interrupted, says
      "Could not import module 'LlamaConfig'") still ends the command as interrupted (H6-Y6);
    * a ``KeyboardInterrupt`` raised inside a finalizer (a ``__del__``, where Python prints
      "Exception ignored in ..." and drops it: the command then ran on to its end, H6-Y7) is
      delivered again to the main thread (``_thread.interrupt_main``, from a timer thread once the
      hook has returned), so it is raised in the code that runs next. Other exceptions a finalizer
      drops go to the previous ``sys.unraisablehook``.

    Installed in the main thread only, and the handler only where SIGINT has Python's default
    handler (an ignored SIGINT stays ignored); both are restored on exit, and an interrupt not yet
    delivered again is dropped then (the command has ended)."""

    def __init__(self) -> None:
        self.seen = False
        #: a SIGTERM arrived (``kill PID``, a job scheduler): handled like Ctrl-C, exit status 143
        self.terminated = False
        self._term_handler: object = None
        self._handler: object = None
        self._hook: object = None
        self._timers: list = []

    def _on_sigint(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame) -> None:
        # killed silently before, leaving an atomic writer's temporary file behind (H7-T1): raised as an
        # interrupt instead, so every writer's cleanup (finally / except BaseException) runs
        self.seen = self.terminated = True
        raise Terminated

    def _unraisable(self, unraisable) -> None:
        import _thread
        import threading

        if isinstance(unraisable.exc_type, type) and issubclass(unraisable.exc_type, KeyboardInterrupt):
            self.seen = True
            # the SIGINT handler runs again, once this hook has returned (an interrupt raised inside the
            # hook would be dropped too): from another thread, a moment later
            timer = threading.Timer(0.01, _thread.interrupt_main)
            timer.daemon = True
            timer.start()
            self._timers.append(timer)
            return
        self._previous_hook(unraisable)

    def __enter__(self) -> _Interrupts:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._handler = signal.signal(signal.SIGINT, self._on_sigint)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._term_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_hook = sys.unraisablehook
        self._hook = sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for timer in self._timers:  # the command has ended: no interrupt for the caller afterwards
            timer.cancel()
        if self._handler is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._handler)  # type: ignore[arg-type]  # getsignal's value
        if self._term_handler is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._term_handler)  # type: ignore[arg-type]  # getsignal's value
        if self._hook is not None and sys.unraisablehook == self._hook:
            sys.unraisablehook = self._previous_hook


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler (:class:`_Interrupts`): a ``KeyboardInterrupt``, so every
    cleanup that runs on Ctrl-C runs on ``kill`` too."""


def _interrupted(prog: str, started: bool, terminated: bool = False, left: str | None = None) -> int:
    """Ctrl-C: one line, exit status 130, no traceback (``LRM_INTERP_DEBUG=1`` shows it: the caller
    re-raises). SIGTERM (``terminated``): the same, "terminated", exit status 143 (128 + 15).
    ``left``: what the command leaves behind (:func:`_left_behind`; a resume only where the command
    keeps its finished work)."""
    verb = "terminated" if terminated else "interrupted"
    if started:
        print(f"{prog}: {verb}; {left or 'run the same command again'}", file=sys.stderr)
    else:  # while the parser was built (the heavy imports) or the options read: nothing ran yet
        print(f"{prog}: {verb} before the command started; nothing was done", file=sys.stderr)
    return 143 if terminated else 130


def _always(a: argparse.Namespace) -> bool:
    return True


def _never(a: argparse.Namespace) -> bool:
    return False


def _no_files(a: argparse.Namespace) -> list[tuple[str, object]]:
    return []


def _flags(*pairs: tuple[str, str]) -> Callable[[argparse.Namespace], list[tuple[str, object]]]:
    """``(flag, path)`` of the output options ``pairs`` (``(flag, argparse dest)``) of a command."""
    return lambda a: [(flag, getattr(a, dest, None)) for flag, dest in pairs]


def _annotate_outputs(a: argparse.Namespace) -> list[tuple[str, object]]:
    out = getattr(a, "out", None)
    report = getattr(a, "report", None) or (Path(out).with_name(Path(out).name + ".report.json") if out else None)
    return [("--out", out), ("--report", report)]


def _score_outputs(a: argparse.Namespace) -> list[tuple[str, object]]:
    out = getattr(a, "out", None)
    outputs = getattr(a, "outputs", None)
    return [("--out", out or (Path(outputs) / "scores" if outputs else None))]


class OnInterrupt(NamedTuple):
    """What an interrupted command leaves behind: ``resumes(args)``: it keeps its finished work
    (``partial/``, a state folder, a cache, checkpoints) and the same command resumes it;
    ``outputs(args)``: the ``(flag, path)`` it writes, compared before and after the run when it
    does not resume (:func:`_left_behind`)."""

    resumes: Callable[[argparse.Namespace], bool]
    outputs: Callable[[argparse.Namespace], list[tuple[str, object]]]


#: Every command (its name after ``lrm-interp``), one row each: an interrupted run of a command
#: that keeps no partial work used to promise "run the same command again to resume (finished
#: work is kept)" (H8-QT). Each writer below publishes its files atomically; whether it published
#: any before it was stopped is checked, not assumed (:func:`_left_behind`).
ON_INTERRUPT: dict[str, OnInterrupt] = {
    "quickstart": OnInterrupt(_always, _flags(("--out", "out"))),  # study.json + finished rows
    "study": OnInterrupt(_always, _flags(("--out", "out"))),  # finished rows and attributions kept
    "attribute": OnInterrupt(_always, _flags(("--out", "out"))),  # --out/partial/
    "experiment protection": OnInterrupt(_always, _flags(("--out", "out"))),  # rows.jsonl
    "bench run": OnInterrupt(_always, _flags(("--out", "out"))),  # generations.jsonl, outputs/
    "toy distill": OnInterrupt(_always, _flags(("--out", "out"))),  # RUN/checkpoint/
    # a per-trace cache (--cache; the llm annotator's default OUT.cache): finished traces are kept
    "annotate": OnInterrupt(lambda a: a.cache is not None or a.annotator == "llm", _annotate_outputs),
    # --downstream: a state folder of finished attributions; without it only a print
    "annotate agree": OnInterrupt(lambda a: a.downstream is not None, _flags(("--out", "out"))),
    "annotate train": OnInterrupt(_never, _flags(("--out", "out"))),
    "parse": OnInterrupt(_never, _flags(("--out", "out"), ("--report", "report"))),
    "compare": OnInterrupt(_never, _flags(("--out", "out"))),
    "protect": OnInterrupt(_never, _flags(("--out", "out"))),
    "quantize": OnInterrupt(_never, _flags(("--out", "out"))),
    "bits": OnInterrupt(
        _never, _flags(("--out", "out"), ("--gptqmodel", "gptqmodel"), ("--llmcompressor", "llmcompressor"))
    ),
    "toy train": OnInterrupt(_never, _flags(("--out", "out"))),
    "toy eval": OnInterrupt(_never, _no_files),
    "toy traces": OnInterrupt(_never, _flags(("--out", "out"))),
    "bench score": OnInterrupt(_never, _score_outputs),
    "faithfulness": OnInterrupt(_never, _flags(("--out", "out"))),
}


def _on_interrupt(args: argparse.Namespace) -> OnInterrupt:
    """The row of :data:`ON_INTERRUPT` of the command ``args`` runs (a command without one: no
    resume, its ``--out`` compared)."""
    name = _command_prog(args)[len(PROG) + 1 :]
    return ON_INTERRUPT.get(name) or OnInterrupt(_never, _flags(("--out", "out")))


def _path_state(path: object) -> object:
    """What tells whether ``path`` was written: ``None`` when absent; a file's inode, size and
    modification time; a folder's inode and those of its entries (hidden ones, the temporary files
    and locks of the writers, left out)."""
    import os
    import stat

    p = Path(str(path)).expanduser()
    try:
        st = os.lstat(p)
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(st.st_mode):
        return (st.st_ino, st.st_size, st.st_mtime_ns)
    entries = set()
    try:
        with os.scandir(p) as it:
            for e in it:
                if not e.name.startswith("."):
                    with contextlib.suppress(OSError):
                        es = e.stat(follow_symlinks=False)
                        entries.add((e.name, es.st_ino, es.st_size, es.st_mtime_ns))
    except OSError:
        pass
    return (st.st_ino, frozenset(entries))


def _output_states(args: argparse.Namespace) -> list[tuple[str, object, object]] | None:
    """``(flag, path, state)`` of the outputs of a command that keeps no partial work (before it
    runs); ``None`` for a command that resumes."""
    row = _on_interrupt(args)
    if row.resumes(args):
        return None
    return [(flag, path, _path_state(path)) for flag, path in row.outputs(args) if path is not None and str(path)]


def _left_behind(before: list[tuple[str, object, object]] | None) -> str:
    """What an interrupted command left, for :func:`_interrupted`: a resume where it keeps its
    finished work (``before`` is ``None``), else whether its outputs changed since it started."""
    if before is None:
        return "run the same command again to resume (finished work is kept)"
    changed = [flag for flag, path, state in before if _path_state(path) != state]
    kept = [flag for flag, _, _ in before if flag not in changed]
    if not changed:
        if not kept:
            return "nothing was written"
        return f"nothing was written ({', '.join(kept)} {'is' if len(kept) == 1 else 'are'} unchanged)"
    return (
        f"it had written {', '.join(changed)} when it stopped"
        + (f" ({', '.join(kept)} unchanged)" if kept else "")
        + "; check it, or run the same command again with --overwrite to redo it"
    )


@contextlib.contextmanager
def _one_line_warnings(prog: list[str]):
    """While a command runs, a library warning prints as one line ``lrm-interp <cmd>: warning: ...``
    (it printed as ``/path/cli/main.py:122: UserWarning: ...`` plus a source line, H7-AO1w);
    ``prog[0]`` is the command's name once known. Only the format is replaced
    (``warnings.formatwarning``): where warnings go (printed, recorded by a caller's
    ``catch_warnings(record=True)``, turned into errors) is unchanged. Restored afterwards."""
    import warnings

    previous = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"{prog[0]}: warning: {' '.join(str(message).split())}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        if warnings.formatwarning is one_line:
            warnings.formatwarning = previous


#: errors writing to standard output that say the stream cannot take the report (a full disk,
#: ``>/dev/full``, an I/O error, a quota): the work is done; one warning on stderr (H8-BP2)
_UNPRINTABLE = frozenset(getattr(errno, n) for n in ("ENOSPC", "EIO", "EDQUOT", "EFBIG") if hasattr(errno, n))


class _GuardedStdout:
    """``sys.stdout`` while a command runs: when the reader of a pipe goes away (``lrm-interp parse
    ... | head``), writes are dropped instead of raising ``BrokenPipeError`` ("error: [Errno 32]
    Broken pipe", exit 2, although the files were written, H7-P-pipe): the command runs to its end
    and its exit status says how the work went (0 when it was done). The stream's descriptor is
    pointed at ``/dev/null`` so that the interpreter's final flush does not fail either.

    The same for a stream that cannot take the output (``>/dev/full``: "error: [Errno 28] No space
    left on device", exit 2, although ``--out`` was written, H8-BP2): ``failed`` holds the reason,
    and :func:`main` warns once. ``missing``: there is no standard output at all (``>&-``:
    ``sys.stdout`` is ``None``; the command ended in "internal error" and a traceback, H8-BP1):
    everything is dropped."""

    def __init__(self, stream, *, missing: bool = False) -> None:
        self._stream = stream
        self.closed_by_reader = False
        self.missing = missing
        #: why the output could not be written (``"No space left on device"``), else ``None``
        self.failed: str | None = None

    @property
    def dropping(self) -> bool:
        return self.closed_by_reader or self.missing or self.failed is not None

    def _to_null(self) -> None:
        import os

        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):  # a stream without a descriptor (captured output)
            pass

    def _absorb(self, e: OSError) -> bool:
        """Whether the write error ``e`` is the stream's (then dropped from now on), not a bug."""
        if isinstance(e, BrokenPipeError):
            self.closed_by_reader = True
        elif e.errno is not None and e.errno in _UNPRINTABLE:
            import os

            self.failed = e.strerror or os.strerror(e.errno)
        else:
            return False
        self._to_null()
        return True

    def write(self, text: str) -> int:
        if self.dropping:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as e:
            if not self._absorb(e):
                raise
            return len(text)

    def flush(self) -> None:
        if self.dropping:
            return
        try:
            self._stream.flush()
        except OSError as e:
            if not self._absorb(e):
                raise

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _occupy(fd: int) -> None:
    """Point a closed standard descriptor ``fd`` at ``/dev/null``: else the next file opened gets it,
    and whatever writes to the descriptor (a library printing) would write into that file. So too
    one open for reading only (``2>&-`` under a shell wrapper such as pyenv's: the wrapper's script
    inherited as descriptor 2; writing there failed with "Bad file descriptor")."""
    import os

    try:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
            return
    except ImportError:  # pragma: no cover - not POSIX
        return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


@contextlib.contextmanager
def _guarded_stdout():
    """:class:`_GuardedStdout` as ``sys.stdout`` while the body runs; a missing ``sys.stdout`` or
    ``sys.stderr`` (closed: ``>&-``, ``2>&-``) is a writer to ``/dev/null`` meanwhile (a print to
    a missing stderr went to stdout). Restored afterwards."""
    import os

    original, original_err = sys.stdout, sys.stderr
    null_out = null_err = None
    _occupy(1)  # closed (``>&-``, ``2>&-``): sys.stdout is None, sys.stderr a stream on a closed descriptor
    _occupy(2)
    if original is None:
        null_out = open(os.devnull, "w", encoding="utf-8")  # closed below
    if original_err is None:
        null_err = sys.stderr = open(os.devnull, "w", encoding="utf-8")  # closed below
    guard = _GuardedStdout(original if null_out is None else null_out, missing=original is None)
    sys.stdout = guard  # a file-like proxy (sys.stdout is typed TextIO | Any)
    try:
        yield guard
    finally:
        if sys.stdout is guard:
            sys.stdout = original
        with contextlib.suppress(OSError, ValueError):  # what the stream cannot take is absorbed
            guard.flush()
        if null_err is not None and sys.stderr is null_err:
            sys.stderr = original_err
        for f in (null_out, null_err):
            if f is not None:
                f.close()


def _unprinted(prog: str, guard: _GuardedStdout, rc: int, writes_files: bool) -> int:
    """The exit status once the output is flushed: a report that could not be printed
    (``guard.failed``) is a warning when the command wrote its files (its work is done), an error
    (exit 2) when printing was its whole work (``toy eval``, ``annotate agree``)."""
    guard.flush()
    if guard.failed is None:
        return rc
    if writes_files or rc != 0:
        done = "; the outputs were written" if rc == 0 else ""
        print(f"{prog}: warning: could not print the report ({guard.failed}){done}", file=sys.stderr)
        return rc
    print(f"{prog}: error: could not print the result ({guard.failed}); nothing else was written", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input prints one line ``lrm-interp <cmd>: error: ...`` and returns 2;
    Ctrl-C, at any moment (the imports while the parser is built included), one line and 130;
    SIGTERM likewise, 143 (a resume is promised only by a command that keeps its finished work,
    :data:`ON_INTERRUPT`). A warning prints as one line ``lrm-interp <cmd>: warning: ...``. A
    closed standard output (``| head``), a missing one (``>&-``) or one that cannot take the
    report (``>/dev/full``: a one-line warning) does not fail a command whose work was done: the
    exit status is the command's own (0 when its work was done)."""
    prog = [PROG]
    with _Interrupts() as intr, _one_line_warnings(prog), _guarded_stdout() as guard:
        try:
            args = build_parser().parse_args(argv)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            return _interrupted(PROG, started=False, terminated=intr.terminated)
        except Exception:
            if intr.seen and not debug_enabled():  # a Ctrl-C an import turned into another error
                return _interrupted(PROG, started=False, terminated=intr.terminated)
            raise
        prog[0] = _command_prog(args)
        before = _output_states(args)
        try:
            # --quiet: no progress bar at all, the libraries' (transformers' shard writer, the GGUF
            # conversion, huggingface_hub) included, not only the command's own
            with quiet_progress() if getattr(args, "quiet", False) else contextlib.nullcontext():
                rc = int(args.fn(args) or 0)
        except KeyboardInterrupt:
            if debug_enabled():
                raise
            return _interrupted(prog[0], started=True, terminated=intr.terminated, left=_left_behind(before))
        except Exception as e:  # SystemExit passes through
            if debug_enabled():
                raise
            if intr.seen:  # a Ctrl-C a library turned into another error: still an interrupt
                return _interrupted(prog[0], started=True, terminated=intr.terminated, left=_left_behind(before))
            rc = report_error(prog[0], e)
        return _unprinted(prog[0], guard, rc, writes_files=before is None or bool(before))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
