"""``lrm-interp annotate`` (run an annotator over model outputs), ``annotate agree``, ``annotate train``.

Mirrors :func:`lrm_interp.data.annotate.annotate_dataset`, :func:`~lrm_interp.data.annotate.annotation_agreement`
and :meth:`~lrm_interp.data.annotate.LinearAnnotator.fit` / :func:`~lrm_interp.data.annotate.cross_validate`.
The LLM key is read from the environment (``--api-key-env``, default ``OPENAI_API_KEY``) and
never written anywhere; the report records the model name and settings only.

Input traces are ``--data`` here as in every command (``--in`` and ``annotate train --gold``, the
old spellings, are deprecated aliases for one release). ``annotate agree`` keeps ``--gold`` /
``--pred``: there the two inputs are the *reference* annotation and the one scored against it,
and the flag names say which is which. The served LLM is ``--endpoint-model``
(:mod:`lrm_interp.cli.endpoint_args`; ``--model``, the old spelling, is a deprecated alias). The endpoint flags
are ``lrm-interp bench run``'s (:mod:`lrm_interp.cli.endpoint_args`); an endpoint that cannot be
reached ends the command with one line naming the URL, before any file is written (or, when it
goes away mid-run, as soon as the client gives it up: the run stops there).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lrm_interp.cli.common import FileOutputs

#: ``--mode``, ``--temperature`` and ``--chunk-chars`` of ``--annotator llm`` unless given
LLM_MODE, LLM_TEMPERATURE, LLM_CHUNK_CHARS = "chat", 0.0, 12000


def _load_annotated(path: str, flag: str):
    from lrm_interp.cli.common import reading, require_path
    from lrm_interp.data.loading import load_dataset

    p = require_path(path, flag)
    with reading(p, flag):
        return load_dataset(p, progress=False) if p.is_dir() else load_dataset(p)


def _build(a: argparse.Namespace):
    from lrm_interp.cli.common import CliError, reading, require_path
    from lrm_interp.data.annotate import ANNOTATOR_NAMES, build_annotator

    if a.annotator != "llm":  # the LLM's flags were ignored silently by the offline annotators (H7-AF)
        from lrm_interp.cli.endpoint_args import endpoint_flags_given

        unused = endpoint_flags_given(a, skip=("--concurrency",)) + [
            flag
            for flag, dest in (
                ("--mode", "mode"),
                ("--temperature", "temperature"),
                ("--max-tokens", "max_tokens"),
                ("--chunk-chars", "chunk_chars"),
                ("--prompt-file", "prompt_file"),
            )
            if getattr(a, dest) is not None
        ]
        if unused:
            raise CliError(
                f"{', '.join(unused)} {'applies' if len(unused) == 1 else 'apply'} only with --annotator llm (the "
                f"LLM endpoint's settings); --annotator {a.annotator} sends no request"
            )
    if a.annotator == "llm":
        from lrm_interp.cli.endpoint_args import endpoint_config

        model = a.endpoint_model or os.environ.get("LRM_INTERP_LLM_MODEL")
        if not model:
            raise CliError("--annotator llm needs --endpoint-model NAME (or LRM_INTERP_LLM_MODEL)")
        cfg = endpoint_config(a)
        template = None
        if a.prompt_file:
            pf = require_path(a.prompt_file, "--prompt-file", kind="file")
            with reading(pf, "--prompt-file"):
                template = pf.read_text(encoding="utf-8")
            if "{text}" not in template:
                raise CliError(f"--prompt-file {pf}: the template has no {{text}} placeholder for the thinking part")
        return build_annotator(
            "llm",
            model=model,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            mode=a.mode or LLM_MODE,
            temperature=LLM_TEMPERATURE if a.temperature is None else a.temperature,
            max_tokens=a.max_tokens,
            timeout=cfg.timeout,
            max_retries=cfg.retries,
            backoff=cfg.backoff,
            max_backoff=cfg.max_backoff,
            concurrency=cfg.concurrency,
            prompt_template=template,
            max_chunk_chars=(LLM_CHUNK_CHARS if a.chunk_chars is None else a.chunk_chars) or None,
        )
    if a.annotator in ANNOTATOR_NAMES:
        return build_annotator(a.annotator)
    p = Path(a.annotator).expanduser()
    if not p.is_file():
        raise CliError(
            f"--annotator {a.annotator}: not one of {', '.join(ANNOTATOR_NAMES)} and no such trained "
            "annotator file (write one with 'lrm-interp annotate train')"
        )
    with reading(p, "--annotator", safetensors_file=p):
        return build_annotator(str(p))


def cmd_annotate(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import CliError, check_paths, file_outputs

    if not a.data or not a.out:
        raise CliError("--data OUTPUTS and --out FILE are required (or use 'annotate agree' / 'annotate train')")
    # the report path a run without failures writes: --report, or its default OUT.report.json, checked
    # the same way (the default used to replace a user's file there, or the input itself, H5-P10 / P9)
    report_flag = "--report" if a.report else "--report (default OUT.report.json)"
    report_path = a.report or str(Path(a.out).with_name(Path(a.out).name + ".report.json"))
    # the cache an llm annotator uses without --cache (OUT.cache) is checked as --cache is
    cache_flag = "--cache" if a.cache else "--cache (default OUT.cache)"
    if a.cache is None and a.annotator == "llm":
        a.cache = str(Path(a.out).with_name(Path(a.out).name + ".cache"))
    # no two of --data / --out / --report / --cache may name the same path (nor an output lie inside --data)
    check_paths(
        {"--out": a.out, report_flag: report_path, cache_flag: a.cache},
        {"--data": a.data, "--annotator": a.annotator, "--prompt-file": a.prompt_file},
    )
    # an existing --out / --report is replaced only with --overwrite (--cache is meant to be reused)
    check_paths({"--out": a.out, report_flag: report_path}, overwrite=a.overwrite, files=True, command="annotate")
    # --cache is a folder: a regular file there failed at the first trace with a bare "File exists" (H6-P11);
    # never a finished result of another command (its cache files were written into a toy train model,
    # a study, a bench run, R27): no result is of the kind "annotation cache"
    from lrm_interp.data.annotators.driver import ANNOTATION_CACHE  # no result is of this kind (R27)

    check_paths({cache_flag: a.cache}, dirs=True, own=ANNOTATION_CACHE)
    # --out / --report published as one run's: a new one never over what another run wrote meanwhile,
    # an existing one (--overwrite) by one run at a time (H9-CC2)
    with file_outputs({"--out": a.out, report_flag: report_path}, "annotate") as outs:
        return _annotate(a, outs, report_flag)


def _annotate(a: argparse.Namespace, outs: FileOutputs, report_flag: str) -> int:
    """``annotate`` once its outputs are checked and held (:func:`~lrm_interp.cli.common.file_outputs`)."""
    from lrm_interp.cli.common import CliError, reading, require_path
    from lrm_interp.data.annotate import annotate_dataset, load_outputs

    src = require_path(a.data, "--data")
    annotator = _build(a)
    with reading(src, "--data"):
        traces = load_outputs(src, progress=not a.quiet)
    if not len(traces):
        raise CliError(f"--data {src}: no model outputs found")
    # an LLM endpoint: one request in flight per trace, up to --concurrency; offline annotators: one
    # thread unless --concurrency says otherwise
    endpoint = getattr(getattr(annotator, "complete", None), "endpoint", None)
    workers = a.concurrency if a.concurrency is not None else (endpoint.config.concurrency if endpoint else 1)
    if endpoint is not None:
        from lrm_interp.cli.endpoint_args import endpoint_failure
        from lrm_interp.endpoint import EndpointError

        try:  # an unreachable endpoint fails here, in seconds, before anything is written
            endpoint.check()
        except EndpointError as e:
            raise endpoint_failure(e, "nothing was annotated or written") from e
    cache = a.cache  # with an llm annotator, OUT.cache unless given (set and checked by cmd_annotate)
    from lrm_interp.endpoint import EndpointUnreachable

    down: EndpointUnreachable | None = None
    try:
        run = annotate_dataset(traces, annotator, workers=workers, cache_dir=cache, progress=not a.quiet)
    except EndpointUnreachable as e:  # the endpoint went away mid-run: the run stopped, e.run is what it did
        if getattr(e, "run", None) is None:
            raise
        down, run = e, e.run  # type: ignore[attr-defined]  # the driver attaches .run (checked just above)
    # a run with failed traces never replaces --out (it may hold an earlier, complete result): the
    # traces go to OUT.partial.jsonl instead, failed ones with no spans, listed in the report
    out = Path(a.out) if not run.failures else Path(a.out).with_name(Path(a.out).name + ".partial.jsonl")
    if run.failures:  # OUT.partial.jsonl (and its report): a rerun's, replaced
        run.dataset.save_jsonl(out)
        # not --report (an earlier result's, or one a rerun of the same command would then refuse)
        report = (
            str(Path(a.report).with_name(Path(a.report).name + ".partial.json"))
            if a.report
            else str(out.with_name(out.name[: -len(".jsonl")] + ".report.json"))
        )
        run.save_report(report)
    else:  # --out and --report: never one that appeared while this ran, never without --overwrite
        outs.write("--out", run.dataset.save_jsonl)
        report = str(outs.write(report_flag, run.save_report))
    print(f"wrote {len(run.dataset)} traces, spans per behaviour {run.dataset.span_counts()} to {out}")
    print(run.summary())
    print(f"wrote the report to {report}" + (f"; cache in {cache}" if cache else ""))
    if down is None and endpoint is not None:
        down = endpoint.unreachable
    if down is not None:  # the endpoint went away mid-run: the client stopped sending, the run stopped
        from lrm_interp.cli.endpoint_args import endpoint_failure

        rerun = (
            "; rerun the same command once the endpoint is up (finished traces come from the cache)" if cache else ""
        )
        raise endpoint_failure(
            down,
            f"the run stopped ({len(run.failures)} of {len(run.dataset)} traces not "
            f"annotated); --out {a.out} left as it was, this run's traces are in {out}" + rerun,
        )
    if run.failures:
        first = next(iter(run.failures.items()))
        raise CliError(
            f"{len(run.failures)} of {len(run.dataset)} traces failed (first: {first[0]}: {first[1]}); "
            f"--out {a.out} left as it was, this run's traces are in {out}; rerun the same command to "
            "retry them (finished traces come from the cache)"
        )
    return 0


#: flags of ``annotate agree`` used only with ``--downstream`` (given without it: refused, naming them)
_DOWNSTREAM_ONLY = (
    ("annotator", "--annotator"),
    ("out", "--out"),
    ("max_tokens", "--max-tokens"),
    ("top_k", "--top-k"),
    ("seed", "--seed"),
    ("behaviors", "--behaviors"),
    ("datasets", "--datasets"),
    ("long", "--long"),
    ("per_dataset", "--per-dataset"),
    ("max_traces", "--max-traces"),
)
#: where ``annotate agree --downstream`` keeps its state unless ``--out`` says otherwise
DOWNSTREAM_CACHE = Path("~/.cache/lrm_interp/annotate_downstream")


def cmd_agree(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import CliError
    from lrm_interp.data.annotate import annotation_agreement, format_agreement

    if a.downstream is not None:
        return _cmd_downstream(a)
    given = [flag for attr, flag in _DOWNSTREAM_ONLY if getattr(a, attr, None) is not None]  # 0 is a value
    if given:
        raise CliError(
            f"{given[0]} applies only with --downstream MODEL (the attribution comparison); "
            f"without it 'annotate agree' compares --gold and --pred character by character"
        )
    if a.pred is None:
        raise CliError(
            "--pred PATH is required (the annotation to score), or --downstream MODEL to compare the "
            "attributions the annotators' spans lead to"
        )
    gold = _load_annotated(a.gold, "--gold")
    _require_gold_spans(gold, a.gold)
    _refuse_same_annotation(a.gold, a.pred)  # after --gold's own problems (no traces, a FIFO) are named
    pred = _load_annotated(a.pred, "--pred")
    ids, gold_ids = {t.id for t in pred}, {t.id for t in gold}
    missing = [t.id for t in gold if t.id not in ids]
    extra = [t.id for t in pred if t.id not in gold_ids]  # not scored: counted, never dropped silently
    extra_note = (
        f"{len(extra)} trace{'s' * (len(extra) != 1)} of --pred not in --gold, not scored (first: {extra[0]!r})"
        if extra
        else ""
    )
    if missing:
        raise CliError(
            f"--pred {a.pred}: {len(missing)} of the {len(gold)} gold traces are missing (first: {missing[0]!r})"
            + (f"; {extra_note}" if extra else "")
            + "; annotate the same outputs as --gold"
        )
    if extra:
        import sys

        from lrm_interp.cli.common import PROG

        print(f"{PROG} annotate agree: note: {extra_note}", file=sys.stderr)
    by_id = {t.id: t for t in pred}
    for t in gold:
        if by_id[t.id].response != t.response:
            raise CliError(f"trace {t.id!r}: the response differs between --gold {a.gold} and --pred {a.pred}")
    _warn_identical_annotations(a.gold, a.pred, gold, by_id)
    min_iou = 0.5 if a.min_iou is None else a.min_iou
    agr = annotation_agreement(gold, pred, min_iou=min_iou, region=a.region)
    where = "characters the gold labels" if a.region == "gold" else "all characters"
    if a.json:
        print(json.dumps(agr, indent=1))
    else:
        print(
            format_agreement(
                agr,
                title=f"{len(gold)} traces"
                + (f" ({len(extra)} more in --pred, not in --gold: not scored)" if extra else "")
                + f"; {where}; character level and span level "
                f"(IoU >= {min_iou}); * = target behaviour",
            )
        )
    return 0


def _refuse_same_annotation(gold: str, pred: str) -> None:
    """:class:`CliError` when ``--pred`` names the ``--gold`` file or folder (the same path resolved:
    ``./F``, an absolute path, a symlink, a hard link): the annotation was scored against itself, every
    score 1.000 with exit 0 (H13-AGS)."""
    import os

    from lrm_interp.cli.common import CliError

    g, p = Path(gold).expanduser(), Path(pred).expanduser()
    try:
        same = g.resolve() == p.resolve() or (g.exists() and p.exists() and os.path.samefile(g, p))
    except OSError:
        return  # unreadable: the loading names it
    if same:
        raise CliError(
            f"--pred {pred} is the --gold {'folder' if g.is_dir() else 'file'} ({gold}): the annotation would be "
            "scored against itself, agreement 1 by construction; give the annotation to score as --pred"
        )


def _warn_identical_annotations(gold_path: str, pred_path: str, gold, pred_by_id: dict) -> None:
    """A warning on stderr when ``--pred`` holds the very spans of ``--gold`` in every scored trace
    (byte-identical files, a copy of the folder): the table's every score is 1 by construction, as
    ``compare`` warns for one attribution on both sides (H13-AGS)."""
    if any(pred_by_id[t.id].spans != t.spans for t in gold):
        return
    import filecmp
    import sys

    from lrm_interp.cli.common import PROG

    g, p = Path(gold_path).expanduser(), Path(pred_path).expanduser()
    try:
        what = "are byte-identical files" if g.is_file() and p.is_file() and filecmp.cmp(g, p, shallow=False) else ""
    except OSError:
        what = ""
    what = what or "hold identical annotations (the same spans in every scored trace)"
    print(
        f"{PROG} annotate agree: warning: --gold {gold_path} and --pred {pred_path} {what}: agreement is 1 by "
        "construction; check that --pred is the annotation you meant to score",
        file=sys.stderr,
    )


def _require_gold_spans(gold, path: str) -> None:
    """:class:`CliError` when the reference annotation holds no span at all (a paper layout without
    ``annotated/``, read as outputs only): every score against it would be 0, with exit 0 (H6-N6)."""
    from lrm_interp.cli.common import CliError

    if not any(t.spans for t in gold):
        raise CliError(
            f"--gold {path} has no annotation (0 spans in {len(gold)} trace{'s' * (len(gold) != 1)}): nothing "
            "to score against; give annotated traces (a paper layout with annotated/<dataset>/<j>.txt, or "
            "JSONL with spans)"
        )


def _downstream_sources(a: argparse.Namespace) -> list[str]:
    """The --annotator values, checked (names or trained annotator files) before anything loads."""
    from lrm_interp.cli.common import CliError
    from lrm_interp.data.annotate import ANNOTATOR_NAMES, DEFAULT_ANNOTATOR
    from lrm_interp.experiments.annotation_downstream import CV_ANNOTATOR

    names = list(a.annotator or ([] if a.pred else [DEFAULT_ANNOTATOR]))
    for n in names:
        if n == "llm":
            raise CliError(
                "--annotator llm needs an endpoint: annotate the outputs first ('lrm-interp annotate "
                "--annotator llm --data OUTPUTS --out llm.jsonl') and compare that file with --pred llm.jsonl"
            )
        if n not in ANNOTATOR_NAMES and n != CV_ANNOTATOR and not Path(n).expanduser().is_file():
            known = [x for x in ANNOTATOR_NAMES if x != "llm"] + [CV_ANNOTATOR]
            raise CliError(
                f"--annotator {n}: not one of {', '.join(known)} and no such trained annotator file "
                "(write one with 'lrm-interp annotate train')"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CliError(f"--annotator {dup[0]} is given twice")
    return names


def _cmd_downstream(a: argparse.Namespace) -> int:
    import hashlib

    from lrm_interp.cli.common import CliError, check_paths, model_input, require_model, require_path

    if a.min_iou is not None:
        raise CliError(
            "--min-iou applies to the span-level agreement, not to --downstream (which compares site "
            "scores; its character F1 column uses --region)"
        )
    require_model(a.downstream, "--downstream")
    names = _downstream_sources(a)
    gold_path = require_path(a.gold, "--gold")
    pred_path = require_path(a.pred, "--pred") if a.pred else None
    settings_key = json.dumps(
        [
            str(gold_path.resolve()),
            str(pred_path.resolve()) if pred_path else None,
            a.downstream,
            names,
            a.max_tokens,
            a.top_k,
            a.behaviors,
            a.datasets,
            a.long,
            a.per_dataset,
            a.max_traces,
            a.region,
        ]
    )  # not --seed: seeds share --out
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(a.downstream).name)[:40]
    out = (
        Path(a.out).expanduser()
        if a.out
        else (DOWNSTREAM_CACHE.expanduser() / f"{slug}-{hashlib.sha1(settings_key.encode()).hexdigest()[:10]}")
    )
    check_paths(
        {"--out": out},
        {
            "--gold": a.gold,
            "--pred": a.pred,
            "--downstream": model_input(a.downstream, "--downstream"),
            **{f"--annotator {n}": n for n in names if n not in ("trained", "rules", "keyword")},
        },
        dirs=True,
        own="annotate downstream",
    )
    import contextlib
    import sys
    import warnings

    from lrm_interp.data.traces import ReasoningDataset
    from lrm_interp.experiments.annotation_downstream import (
        UnscoredTracesWarning,
        annotation_downstream,
        unscored_note,
    )

    ref = _load_annotated(a.gold, "--gold")
    _require_gold_spans(ref, a.gold)
    ref = ReasoningDataset(list(ref), name=str(a.gold), report=getattr(ref, "report", None))
    sources: dict = {n: n for n in names}
    if pred_path is not None:
        pred = _load_annotated(a.pred, "--pred")
        sources[str(a.pred)] = ReasoningDataset(list(pred), name=str(a.pred))
        gold_ids = {t.id for t in ref}
        extra = [t.id for t in pred if t.id not in gold_ids]  # not scored: counted, as without --downstream
        if extra:
            from lrm_interp.cli.common import PROG

            note = unscored_note(len(extra), extra[0], "--pred", "--gold")
            print(f"{PROG} annotate agree: note: {note}", file=sys.stderr)
    if not a.quiet and not a.json:
        print(f"state in {out} (rerun the same command to resume)")

    # everything is checked (behaviours, annotators, the state folder) before the model is loaded; with
    # --json every line of the run goes to stderr, so stdout holds the JSON alone
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UnscoredTracesWarning)  # printed above as the note
        res = annotation_downstream(
            a.downstream,
            ref,
            sources,
            out_dir=out,
            model_name=a.downstream,
            top_k=10 if a.top_k is None else a.top_k,
            max_tokens=a.max_tokens,
            seed=[0] if a.seed is None else a.seed,
            behaviors=a.behaviors,
            region=a.region,
            datasets=a.datasets,
            long=a.long or "cut",
            per_dataset=a.per_dataset,
            max_traces=a.max_traces,
            progress=not a.quiet,
        )
    if a.json:
        print(json.dumps(res.to_dict(), indent=1, ensure_ascii=False))
        return 0
    cut = res.provenance["cut"]
    runs = res.provenance["attributions"].values()
    secs = sum(r.get("seconds", 0) for r in runs)
    done = sum(1 for r in runs if r.get("how") == "computed")
    skipped = f", {cut['n_skipped']} longer ones left out (--long skip)" if cut.get("n_skipped") else ""
    print(
        f"{res.provenance['reference']['n_traces']} traces of --gold {a.gold}; model {a.downstream}; cut at "
        f"{cut['limit']} tokens ({cut['by']}): {cut['n_cut']} traces cut{skipped}, {cut['tokens_kept']} of "
        f"{cut['tokens_total']} tokens kept; {len(runs)} attributions ({done} computed by this call, the others "
        f"loaded from --out), {secs:.0f} s"
    )
    print(
        "Spearman = rank correlation of the site scores with the reference spans' scores; "
        f"top-{res.settings['top_k']} = sites in common; noise floor = two random halves of the reference spans ("
        + "; ".join(f"seed {x}: {len(h['a'])} + {len(h['b'])} traces" for x, h in res.provenance["halves"].items())
        + f"); char F1 over {'the characters --gold labels' if a.region == 'gold' else 'all characters'}"
    )
    print(res.format())
    print(f"wrote {out}/result.json, table.md, table.csv (scores of each attribution: {out}/<run>/scores.csv)")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from lrm_interp.cli.common import CliError, check_paths, file_outputs

    if a.data is None:  # not required by argparse, so that the deprecated --gold can stand for it
        raise CliError("--data PATH (the annotated traces to fit on) is required")
    check_paths({"--out": a.out}, {"--data": a.data}, overwrite=a.overwrite, files=True, command="annotate train")
    # published as one run's: a new --out never over what another run wrote meanwhile, an existing one
    # (--overwrite) by one run at a time (two runs both printed "wrote", H9-CC2)
    with file_outputs({"--out": a.out}, "annotate train") as outs:
        return _train(a, outs)


def _train(a: argparse.Namespace, outs: FileOutputs) -> int:
    """``annotate train`` once its output is checked and held (:func:`~lrm_interp.cli.common.file_outputs`)."""
    from lrm_interp.cli.common import CliError
    from lrm_interp.data.annotate import LinearAnnotator, cross_validate, format_agreement

    if a.folds == 1:  # the other ranges are the flags' argparse types
        raise CliError("--folds must be 0 (no cross-validation) or an integer >= 2, got 1")
    if a.region is not None and not a.folds:  # was ignored silently (H7-AT_1)
        raise CliError(
            f"--region is the cross-validation's scoring region: it applies with --folds K >= 2 only (got "
            f"--region {a.region} with --folds 0)"
        )
    if a.region is None:
        a.region = "all"
    gold = _load_annotated(a.data, "--data")
    if not any(t.spans for t in gold):
        raise CliError(f"--data {a.data}: no trace has behaviour spans to learn from")
    bare = [t.id for t in gold if not t.spans]
    if bare:  # the fit and the cross-validation leave them out: said, never silently (H6-N9)
        import sys

        from lrm_interp.cli.common import PROG

        print(
            f"{PROG} annotate train: note: {len(bare)} of {len(gold)} traces have no spans: left out "
            f"(not annotated, nothing to learn from; first: {bare[0]!r})",
            file=sys.stderr,
        )
    fit_kw = {"l2": a.l2, "steps": a.steps, "class_balance": a.class_balance}
    info_cv = None
    if a.folds:
        cv = cross_validate(gold, folds=a.folds, progress=not a.quiet, region=a.region, **fit_kw)

        def rounded(agr: dict) -> dict:
            return {k: {m: round(v, 4) for m, v in d.items()} for k, d in agr.items()}

        info_cv = {
            "region": a.region,
            "agreement": rounded(cv["agreement"]),
            "by_dataset": {n: rounded(d) for n, d in cv["by_dataset"].items()},
        }
        print(
            format_agreement(
                cv["agreement"],
                title=f"{a.folds}-fold cross-validated agreement (grouped by trace) "
                f"on {cv['traces']} traces, region {a.region}",
            )
        )
    model = LinearAnnotator.fit(gold, **fit_kw)
    if bare:
        model.info["left_out_without_spans"] = len(bare)
    if info_cv is not None:
        model.info["cross_validation"] = {"folds": a.folds, **info_cv}
    outs.write("--out", model.save)
    from lrm_interp._io import shell_command

    print(  # quoted to paste (H29-PRINTQUOTE)
        f"wrote {a.out} (fitted on {model.info['traces']} traces, {model.info['sentences']} sentences"
        + (f"; {len(bare)} traces without spans left out" if bare else "")
        + "); use it with "
        + shell_command(["lrm-interp", "annotate", "--annotator", a.out, "--data", "OUTPUTS", "--out", "traces.jsonl"])
    )
    return 0


def register(sub) -> None:
    from lrm_interp.cli.common import (
        PROG,
        Accumulate,
        add_command,
        add_overwrite_flag,
        float_arg,
        int_arg,
        nonneg_float,
        nonneg_int,
        positive_int,
        seed_int,
    )
    from lrm_interp.data.annotate import ANNOTATOR_NAMES, DEFAULT_ANNOTATOR
    from lrm_interp.data.annotators.agreement import REGIONS

    an = add_command(
        sub,
        "annotate",
        help="label the reasoning behaviours of model outputs (rules, trained, or an LLM)",
        description="Annotate model outputs (a paper-layout folder outputs/<task>/<j>.txt, or a JSONL file of "
        "prompt/response records) with behaviour spans and write them as JSONL traces. "
        "--annotator trained (default): the shipped sentence classifier fitted on the seed paper's real "
        "R1-Distill responses with GPT-4o's labels; rules: offline rules for R1-style text; keyword: "
        "the toy model's keyword rules; llm: Venhoff et al.'s prompt against an OpenAI-compatible "
        "endpoint; or a file written by 'annotate train'. Sentence annotators place their spans by "
        "their own offsets, an LLM's markup goes through the paper-markup parser and aligner; the "
        "report (--report) accounts for every trace and segment.",
        examples=[
            f"{PROG} annotate --data outputs_dir --out traces.jsonl",
            f"{PROG} annotate --annotator llm --endpoint-model gpt-4o --data outputs.jsonl --out traces.jsonl "
            "--concurrency 8",
            f"{PROG} annotate --annotator llm --endpoint-model toy --base-url http://127.0.0.1:8011/v1 "
            "--data out.jsonl --out traces.jsonl --chunk-chars 4000",
            f"{PROG} annotate agree --gold tests/data/r1_style --pred traces.jsonl",
        ],
    )
    from lrm_interp.cli.endpoint_args import DeprecatedAlias

    io = an.add_argument_group("input and output")
    io.add_argument(
        "--data",
        default=None,
        metavar="OUTPUTS",
        help="the model outputs to annotate: a paper-layout folder (outputs/<task>/<j>.txt, optional "
        "problems/) or JSONL of {id?, prompt, response} records",
    )
    io.add_argument(
        "--in",
        dest="data",
        action=DeprecatedAlias,
        new="--data",
        metavar="OUTPUTS",
        default=argparse.SUPPRESS,
        help="deprecated spelling of --data",
    )
    io.add_argument("--out", default=None, metavar="FILE", help="output JSONL trace file")
    io.add_argument(
        "--annotator",
        default=DEFAULT_ANNOTATOR,
        metavar="NAME|FILE",
        help=f"{' | '.join(ANNOTATOR_NAMES)} | a trained annotator file ('annotate train'); default "
        f"{DEFAULT_ANNOTATOR}: the shipped annotator fitted on real R1-Distill responses with "
        "GPT-4o's labels",
    )
    io.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="JSON report: parse report, counts, tokens (default: OUT.report.json)",
    )
    io.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="per-trace cache; a rerun skips finished traces (default for llm: OUT.cache, else none)",
    )
    add_overwrite_flag(an, "--out and --report")
    io.add_argument("--quiet", action="store_true", help="no progress bars")
    from lrm_interp.cli.endpoint_args import add_endpoint_args

    llm = an.add_argument_group(
        "LLM endpoint (used by --annotator llm, range-checked with any annotator; the same "
        "endpoint flags as 'lrm-interp bench run'); the key is read from the environment only"
    )
    add_endpoint_args(
        llm,
        base_url_help="API root ending in /v1 (default: $OPENAI_BASE_URL, else OpenAI's)",
        concurrency_help="traces annotated at the same time, one request in flight each (an offline "
        "annotator: 1 unless given)",
        endpoint_model_help="the LLM's name on the endpoint, e.g. gpt-4o (default: $LRM_INTERP_LLM_MODEL)",
        aliases={"--workers": "--concurrency", "--model": "--endpoint-model"},
    )
    llm.add_argument(
        "--mode",
        choices=["chat", "completions"],
        default=None,
        help=f"chat = /chat/completions with one user message; completions = /completions (default {LLM_MODE})",
    )
    llm.add_argument(
        "--temperature",
        type=nonneg_float,
        default=None,
        metavar="X",
        help=f"sampling temperature (0: greedy; default {LLM_TEMPERATURE:g})",
    )
    llm.add_argument(
        "--max-tokens",
        type=positive_int,
        default=None,
        metavar="N",
        help="completion budget per request (default: the server's)",
    )
    llm.add_argument(
        "--chunk-chars",
        type=nonneg_int,
        default=None,
        metavar="N",
        help=f"split longer thinking parts into chunks of at most N characters (0: never split; default "
        f"{LLM_CHUNK_CHARS})",
    )
    llm.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help="annotation prompt template with {text} (default: Venhoff et al.'s prompt)",
    )
    an.set_defaults(fn=cmd_annotate)

    subs = an.add_subparsers(
        dest="annotate_cmd",
        required=False,
        metavar="SUBCOMMAND",
        help="optional: agree (compare two annotations) or train (fit an annotator)",
    )
    ag = add_command(
        subs,
        "agree",
        help="per-label agreement of two annotations of the same outputs, or of the "
        "attributions they lead to (--downstream)",
        description="Per-label agreement of --pred with --gold: character-level precision, recall "
        "and F1, and span-level precision/recall (one-to-one matches with IoU >= "
        "--min-iou). Both may be paper-layout folders or JSONL trace files. With "
        "--downstream MODEL: does the annotator matter downstream? MODEL is attributed "
        "(exact mode, prefix-cached) with --gold's spans and with each --annotator's spans "
        "(and --pred's, if given) on the same traces; per behaviour the Spearman "
        "correlation of the site scores and the top-k sites in common, plus a noise floor: "
        "the same statistics between two random halves of --gold's spans (split by trace, "
        "seeded). Resumable: rerun the same command.",
        examples=[
            f"{PROG} annotate agree --gold tests/data/r1_style --pred traces.jsonl",
            f"{PROG} annotate agree --gold gpt4o_layout/ --pred rules.jsonl --min-iou 0.3 --json",
            f"{PROG} annotate agree --gold gpt4o_layout/ --pred traces.jsonl --region gold",
            f"{PROG} annotate agree --gold ../shared/data/r1_gpt4o_dev --downstream smollm2-135m "
            "--annotator trained --annotator trained-cv --annotator rules --datasets FOLIO "
            "--max-tokens 4096",
        ],
    )
    ag.add_argument("--gold", required=True, metavar="PATH", help="reference annotation (paper layout or JSONL)")
    ag.add_argument(
        "--pred",
        default=None,
        metavar="PATH",
        help="annotation to score (paper layout or JSONL); required without --downstream, with it an "
        "extra annotation to compare",
    )
    ag.add_argument(
        "--min-iou",
        type=float_arg(0.0, 1.0, min_open=True, name="iou"),
        default=None,
        metavar="X",
        help="IoU for a span-level match, in (0, 1] (default 0.5)",
    )
    ag.add_argument(
        "--region",
        choices=REGIONS,
        default="all",
        help="all: score every character; gold: only the characters --gold labels (real annotators "
        "leave text out, e.g. GPT-4o drops the tails of long traces); with --downstream the "
        "annotators' spans are also clipped to that region before attributing",
    )
    ag.add_argument("--json", action="store_true", help="print the agreement (or the downstream result) as JSON")
    ds = ag.add_argument_group("downstream: the attributions the spans lead to")
    ds.add_argument(
        "--downstream",
        default=None,
        metavar="MODEL",
        help="attribute this model (a local Hugging Face folder or an alias, e.g. smollm2-135m) with "
        "--gold's spans and with each annotator's spans, and compare the site scores",
    )
    ds.add_argument(
        "--annotator",
        action="append",
        default=None,
        metavar="NAME|FILE",
        help=f"annotator whose spans are compared, repeatable: {' | '.join(ANNOTATOR_NAMES[:-1])} | "
        "trained-cv (the trained annotator's recipe refitted 5-fold on --gold, grouped by trace: "
        "each trace annotated by the fold that did not see it; the honest figure on the traces the "
        "shipped annotator was fitted on) | a trained annotator file (default: "
        f"{DEFAULT_ANNOTATOR}, unless --pred is given)",
    )
    ds.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="state folder: each attribution with its scores.csv, result.json, table.md (default: "
        f"{DOWNSTREAM_CACHE}/<model>-<hash of the arguments>)",
    )
    ds.add_argument(
        "--max-tokens",
        type=int_arg(2, name="max_tokens"),
        default=None,
        metavar="N",
        help="cut every trace to its first N tokens, on every side alike (default: the model's "
        "context); the number of cut traces is reported",
    )
    ds.add_argument(
        "--top-k", type=positive_int, default=None, metavar="K", help="compare the K most important sites (default 10)"
    )
    ds.add_argument(
        "--seed",
        type=seed_int,
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="S",
        help="seed of the noise floor's random split of the traces; several: one split each, rows per "
        "seed and their mean; a new seed reuses every other attribution of --out (default 0)",
    )
    ds.add_argument(
        "--behaviors",
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="LABEL",
        help="behaviours to compare; each needs --gold spans (default: the four target behaviours)",
    )
    ds.add_argument(
        "--datasets",
        nargs="+",
        action=Accumulate,
        default=None,
        metavar="NAME",
        help="only --gold's traces of these datasets (case-insensitive, e.g. FOLIO temporal_sequences)",
    )
    ds.add_argument(
        "--long",
        choices=("cut", "skip"),
        default=None,
        help="traces longer than --max-tokens (or the model's context): cut = attribute their first "
        "tokens (default), skip = leave them out (counted)",
    )
    ds.add_argument(
        "--per-dataset",
        type=positive_int,
        default=None,
        metavar="N",
        help="only the first N traces of each dataset (after --datasets and --long skip)",
    )
    ds.add_argument(
        "--max-traces",
        type=positive_int,
        default=None,
        metavar="N",
        help="only the first N traces (after --datasets, --long skip and --per-dataset), e.g. to time a run",
    )
    ds.add_argument("--quiet", action="store_true", help="no progress bars")
    ag.set_defaults(fn=cmd_agree)

    tr = add_command(
        subs,
        "train",
        help="fit a linear annotator on annotated traces (with cross-validation)",
        description="Fit a logistic-regression sentence annotator (word n-grams, shape and rule "
        "features) on annotated traces; print its k-fold cross-validated agreement; save it "
        "as one safetensors file usable as --annotator FILE.",
        examples=[
            f"{PROG} annotate train --data my_gpt4o_layout/ --out my_annotator.safetensors",
            f"{PROG} annotate train --data tests/data/r1_style --out r1.safetensors --folds 5",
            f"{PROG} annotate train --data ../shared/data/r1_gpt4o_dev --out r1_gpt4o.safetensors --region gold",
        ],
    )
    tr.add_argument(
        "--data", default=None, metavar="PATH", help="annotated traces to fit on (paper layout or JSONL); required"
    )
    tr.add_argument(
        "--gold",
        dest="data",
        action=DeprecatedAlias,
        new="--data",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="deprecated spelling of --data",
    )
    tr.add_argument("--out", required=True, metavar="FILE", help="annotator file to write (.safetensors)")
    tr.add_argument("--folds", type=nonneg_int, default=5, metavar="K", help="cross-validation folds, >= 2 (0: skip)")
    tr.add_argument(
        "--l2", type=nonneg_float, default=1e-2, metavar="X", help="L2 penalty on the weights (0: no penalty)"
    )
    tr.add_argument(
        "--class-balance",
        type=nonneg_float,
        default=0.5,
        metavar="X",
        help="weigh each label's sentences by count^-X (0: plain mean; 1: labels weigh equally)",
    )
    tr.add_argument(
        "--region",
        choices=REGIONS,
        default=None,
        help="region the cross-validated agreement is scored on (see 'annotate agree --region'; with --folds "
        "K >= 2 only; default all)",
    )
    tr.add_argument("--steps", type=positive_int, default=200, metavar="N", help="full-batch optimisation steps")
    add_overwrite_flag(tr)
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.set_defaults(fn=cmd_train)
