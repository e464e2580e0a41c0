"""``lrm-interp quickstart``: a study (:mod:`lrm_interp.experiments.study`) of the shipped toy
reasoner on its own annotated traces, offline, with the defaults below.

1. **Which modules matter** — load the model (``lrm_interp/assets/toy_reasoner``; ``--tiny``: a
   random tiny Llama, a plumbing check only, and it says so), generate annotated reasoning traces
   (math / logic / knowledge) with gold behaviour spans, ``attribute()``: steering vectors (DoM)
   and attribution-patching scores per linear module → ``attribution_fp32/`` (result,
   ``scores.csv``, ``heatmap.png``) and ``ranking.csv``.
2. **Protection masks and bits** — a 2 % global budget of per-weight saliency (behaviour-span
   attribution × module relative importance, :data:`lrm_interp.protect.registry.SALIENCIES`
   ``"attribution_ri"``) → ``masks.safetensors`` (loadable with ``load_masks``) + ``masks.json``;
   bits per module by attribution under the same bits per weight → ``bits.json``.
3. **What compression does, at matched bits per weight** — uniform 3-bit RTN (group 128), 3-bit +
   2 % magnitude, 3-bit + 2 % attribution and the mixed-precision allocation by attribution, each
   with its exact bits per weight, on 150 held-out problems (50 per family) with 95 % Wilson
   intervals (``--eval 0`` or ``--tiny``: KL to full precision on the traces instead); the uniform
   copy attributed again and compared → ``shift.csv`` / ``shift.png``.

Compute: :func:`quickstart_study` (a :class:`~lrm_interp.experiments.study.StudyResult`, saved
and resumable in the folder). Presentation: :func:`run_quickstart` prints it
(:func:`lrm_interp.experiments.report.study_summary`) and writes ``report.html``
(:func:`~lrm_interp.experiments.report.write_study_report`), whose path is the last line printed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrm_interp._io import finished_result
from lrm_interp.checks import check_fraction, check_int, checked_arguments
from lrm_interp.compress.quant.grid import check_bits
from lrm_interp.data.traces import ReasoningDataset
from lrm_interp.experiments.report import files_and_commands, study_summary, write_study_report
from lrm_interp.experiments.study import (
    STUDY_FILE,
    StudyResult,
    StudySettings,
    changed_files,
    check_environment,
    check_study_folder,
    recorded_checksums,
    run_study,
    study_key,
)
from lrm_interp.toy.tasks import FAMILIES, generate_dataset

#: the quickstart's traces: ``n_traces // 3`` per family of this seed
TRACES_SEED = 4242


@checked_arguments
def check_per_family(name: str, flag: str, v: object, *, zero: bool = False) -> int:
    """``v`` if it is a whole number of items per toy task family (a multiple of ``len(FAMILIES)``,
    at least one per family; 0 too when ``zero``), else ``ValueError`` naming ``name`` (``flag``),
    the value and the nearest allowed ones. The quickstart's ``n_traces`` and ``n_eval`` used to be
    rounded down to whole per-family counts with no word (``--traces 2`` wrote 3 traces, ``--eval 4``
    scored 3 problems: H20-QSROUND)."""
    n = len(FAMILIES)
    v = check_int(f"{name} ({flag})", v, min=0 if zero else 1)
    if v % n == 0 and (v > 0 or zero):
        return v
    lo, hi = v // n * n, (v // n + 1) * n
    use = f"{lo} or {hi}" if lo > 0 else str(hi)
    raise ValueError(
        f"{name} ({flag}) must be {'0 or ' if zero else ''}a multiple of {n} (as many per task family: "
        f"{', '.join(FAMILIES)}), got {v}; use {use}"
    )


@checked_arguments
def quickstart_settings(
    *, tiny: bool = False, bits: int = 3, group_size: int = 128, budget: float = 0.02, n_eval: int = 150
) -> StudySettings:
    """The study the quickstart runs: accuracy on ``n_eval`` problems split over the toy families
    (``n_eval // 3`` each; :func:`check_per_family`: 0 or a multiple of 3), or KL on the traces
    (``tiny`` or ``n_eval == 0``)."""
    check_per_family("n_eval", "--eval", n_eval, zero=True)
    measured = not tiny and n_eval > 0
    return StudySettings(
        tasks=tuple(FAMILIES) if measured else (),
        bits=bits,
        group_size=group_size,
        budget=budget,
        per_task=max(1, n_eval // len(FAMILIES)),
    )


#: the study settings the quickstart sets, and its flag for each (``tasks`` / ``per_task``: ``--eval``, ``--tiny``)
_QUICKSTART_FLAGS = {"bits": "--bits", "group_size": "--group-size", "budget": "--budget"}


#: the differences of a study's inputs (:func:`~lrm_interp.experiments.study.check_study_folder`)
#: the quickstart's flags undo: ``--tiny`` (the model and its tokenizer) and ``--traces``
_QUICKSTART_INPUTS = ("another model", "another tokenizer", "other traces")


def quickstart_hint(have: Mapping[str, Any], diff: Sequence[str]) -> str:
    """``"rerun with the settings it records (--tiny --traces 3 --bits 4) to resume it, or "``: the
    quickstart's own flags for the study in its folder (``have``: its ``study.json``) where only what
    the quickstart sets differs: its settings, its model (``--tiny`` or not) and its number of
    traces. The study's hint named ``--tasks`` / ``--per-task``, which ``quickstart`` does not have,
    and not the ``--tiny`` that made the folder (H31-QSHINT); another ``--traces`` or a missing
    ``--tiny`` got no hint (H32-QSHINT2). ``""`` where another difference (or a setting the
    quickstart does not set) is to blame."""
    hs, prov = have.get("settings"), have.get("provenance")
    if not diff or not isinstance(hs, Mapping) or not isinstance(prov, Mapping):
        return ""
    settings = [d for d in diff if d not in _QUICKSTART_INPUTS]
    if any(" ≠ " not in d for d in settings):
        return ""
    keys = {d.split(" ", 1)[0] for d in settings}
    if not keys <= {"tasks", "per_task", *_QUICKSTART_FLAGS}:
        return ""
    traces = prov.get("traces")
    n_traces = traces.get("n") if isinstance(traces, Mapping) else None
    if "other traces" in diff and not isinstance(n_traces, int):
        return ""
    per_task = hs.get("per_task")
    n_eval = per_task * len(FAMILIES) if isinstance(per_task, int) and per_task > 1 else 0
    tiny = str(prov.get("model_ref", "")).endswith("tiny_model")
    model = {"another model", "another tokenizer"} & set(diff)
    if tiny:  # KL on the traces: --eval changes only per_task
        flags = ["--tiny"] + ([f"--eval {n_eval}"] if "per_task" in keys else [])
    else:
        flags = (["without --tiny"] if model else []) + (
            [f"--eval {n_eval if hs.get('tasks') else 0}"] if keys & {"tasks", "per_task"} else []
        )
    flags += [f"--traces {n_traces}"] if "other traces" in diff else []
    flags += [f"{flag} {hs.get(k)}" for k, flag in _QUICKSTART_FLAGS.items() if k in keys]
    return f"rerun with the settings it records ({' '.join(flags)}) to resume it, or "


def quickstart_traces(n_traces: int = 24) -> ReasoningDataset:
    """The annotated traces the quickstart attributes: ``n_traces // 3`` per family (gold spans;
    :func:`check_per_family`: a multiple of 3)."""
    check_per_family("n_traces", "--traces", n_traces)
    return generate_dataset(n_traces // len(FAMILIES), seed=TRACES_SEED)


@checked_arguments
def check_quickstart_traces(out: str | Path, traces: ReasoningDataset, overwrite: bool = False) -> None:
    """Refuse (``ValueError`` naming the file and ``overwrite``) a rerun into ``out`` whose
    ``traces.jsonl`` is not the one the quickstart wrote there: its SHA-256 is not the one
    ``study.json`` records (or, for a study that recorded none, its traces are not ``traces``). A
    rerun rewrites that file from the generated traces, so a hand-edited copy (the file the report
    offers as ``--data``) was replaced with no word (H20-QSTR). Nothing with ``overwrite``, without
    a ``study.json`` (:func:`~lrm_interp.experiments.study.check_study_folder` refuses that folder)
    or without a ``traces.jsonl`` (written again)."""
    out = Path(out)
    path = out / "traces.jsonl"
    if overwrite or not (out / STUDY_FILE).is_file() or not path.is_file():
        return
    doc = json.loads((out / STUDY_FILE).read_text(encoding="utf-8"))  # checked by check_study_folder
    if "traces.jsonl" in recorded_checksums(doc):
        edited = bool(changed_files(out, doc, ("traces.jsonl",)))
    else:  # an older study: compare what the file holds
        try:
            have = [t.to_dict() for t in ReasoningDataset.load_jsonl(path)]
        except (ValueError, OSError):  # unreadable: not the file the quickstart wrote
            have = None
        edited = have != [t.to_dict() for t in traces]
    if edited:
        raise ValueError(
            f"{path} is not the traces file the quickstart wrote there (edited since?); a rerun would replace it "
            "with the generated traces: copy it elsewhere to keep it (and use it as 'lrm-interp study --data'), or "
            "rerun with overwrite=True (--overwrite) to replace it"
        )


@checked_arguments
def check_quickstart_model(out: str | Path, model: Any, tokenizer: Any, overwrite: bool = False) -> None:
    """Refuse (``ValueError`` naming the folder, its edited files and ``overwrite``) a rerun into
    ``out`` whose ``tiny_model/`` is not the model the quickstart writes: a file the quickstart
    writes there (weights, ``config.json``, tokenizer files) whose bytes differ from what ``model``
    and ``tokenizer`` save now. A rerun saves the generated tiny model again, so an edited copy was
    replaced with no word (H27-QSMODEL; ``traces.jsonl`` is checked by
    :func:`check_quickstart_traces`). Nothing with ``overwrite`` or without a ``tiny_model/``; a file
    missing from it is written again, a file of the user's own beside them is kept. A ``tiny_model``
    that is a link is refused, ``overwrite`` or not (H28-QSLINK), and so is one that is a file (it was
    never written, the rerun printed "wrote" and commands that load it, H33-QSTINYFILE)."""
    ref = Path(out) / "tiny_model"
    if ref.is_symlink():  # --overwrite saved the tiny model through it, into a user's folder (H28-QSLINK)
        raise ValueError(
            f"{ref} is a link to {os.path.realpath(ref)}: the quickstart writes its tiny model only into a folder "
            "of its own, not even with overwrite=True (--overwrite); remove the link (the folder it points to is "
            "kept), or choose another out folder (--out)"
        )
    if ref.exists() and not ref.is_dir():  # save_pretrained logged an error and returned: rc 0 (H33-QSTINYFILE)
        raise ValueError(
            f"{ref} is a file, not the folder the quickstart writes its tiny model into; nothing was changed: move "
            "or remove it (not even overwrite=True (--overwrite) deletes a file the quickstart did not write), or "
            "choose another out folder (--out)"
        )
    if not ref.is_dir():
        return
    with tempfile.TemporaryDirectory(prefix="lrm_interp_tiny_") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        written = sorted(Path(tmp).iterdir())
        folders = [f.name for f in written if (ref / f.name).is_dir()]
        if folders:  # "config.json edited since?", then a raw "Is a directory" with --overwrite (H34-QSCFGDIR)
            raise ValueError(
                f"{ref / folders[0]} is a folder, not the file the quickstart writes there; nothing was changed: move "
                "or remove it (not even overwrite=True (--overwrite) deletes what the quickstart did not write), or "
                "choose another out folder (--out)"
            )
        if overwrite:
            return
        edited = [
            f.name
            for f in written
            if os.path.lexists(ref / f.name)
            and (not (ref / f.name).is_file() or (ref / f.name).read_bytes() != f.read_bytes())
        ]
    if edited:
        raise ValueError(
            f"{ref} is not the model the quickstart wrote there ({', '.join(edited)} edited since?); a rerun "
            "would replace it with the generated tiny model: copy the folder elsewhere to keep it (and use it as "
            "'lrm-interp study --model'), or rerun with overwrite=True (--overwrite) to replace it"
        )


def _quickstart_made(doc: Mapping[str, Any], out: Path) -> bool | None:
    """Whether the ``study.json`` ``doc`` in ``out`` records a quickstart (:func:`quickstart_study`),
    by what its provenance names: its data the ``traces.jsonl`` the study wrote into its own folder
    (:func:`_own_traces`), and its model the shipped toy (``"toy"``) or the quickstart's
    ``tiny_model`` beside that data. ``None``: it records no model or data (cannot be told)."""
    prov = doc.get("provenance")
    model = prov.get("model_ref") if isinstance(prov, Mapping) else None
    data = prov.get("data") if isinstance(prov, Mapping) else None
    if not isinstance(model, str) or not isinstance(data, str):
        return None
    tiny = Path(model).name == "tiny_model" and Path(model).parent == Path(data).parent
    return _own_traces(doc, data, out) and (model == "toy" or tiny)


def _own_traces(doc: Mapping[str, Any], data: str, out: Path) -> bool:
    """Whether the study ``doc`` in ``out`` attributed the traces it wrote itself as
    ``out/traces.jsonl`` (traces given in memory, as the quickstart gives them), not a user's
    ``--data`` file. A study that records checksums records that file's from its first save (so it
    does, wherever the folder was moved or run from); an older one recording none: its data, resolved,
    is ``out/traces.jsonl``. Any ``--data .../traces.jsonl`` file counted, an interrupted user study
    (no checksum recorded yet) replaced by ``quickstart --overwrite`` (H25-QSPART)."""
    if Path(data).name != "traces.jsonl":
        return False
    prov = doc.get("provenance")
    if isinstance(prov, Mapping) and isinstance(prov.get("checksums"), Mapping):
        return "traces.jsonl" in recorded_checksums(doc)
    try:
        return Path(data).resolve() == (out / "traces.jsonl").resolve()
    except (OSError, RuntimeError):  # a link loop: not the quickstart's own file
        return False


@checked_arguments
def check_quickstart_folder(out: str | Path) -> None:
    """Refuse (``ValueError``), ``overwrite`` or not, an ``out`` whose ``study.json`` records a study
    that is no quickstart (:func:`_quickstart_made`: a user's ``lrm-interp study`` / ``run_study``
    of another model or data, finished or interrupted): ``quickstart --overwrite`` deleted it and
    wrote a tiny-model quickstart in its place, and the refusal without ``--overwrite`` named only a
    setting (H24-QSOVER, H25-QSPART). Refused too: a study's folder (:func:`~lrm_interp._io.finished_result`)
    whose ``study.json`` is gone or unreadable: who made it cannot be told, and ``--overwrite``
    replaced a user's study that had lost it (the first, refused run had already written a quickstart
    ``study.json`` into it, H26-QSNOJSON; a truncated one got a ``tiny_model/``, H26-QSCORRUPT). Any
    other folder without a readable ``study.json`` is left to
    :func:`~lrm_interp.experiments.study.check_study_folder`."""
    out = Path(out)
    try:
        doc = json.loads((out / STUDY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        held = finished_result(out)
        if held is not None and held.kind == "study":
            if (out / STUDY_FILE).exists():
                head = f"{out} holds a study whose {STUDY_FILE} cannot be read ({type(e).__name__})"
            else:
                names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
                shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
                head = f"{out} is not a study folder (no {STUDY_FILE}) but holds a study's files ({shown})"
            raise ValueError(
                f"{head}: whether a quickstart made it cannot be told, so the quickstart never writes into it, not "
                f"even with overwrite=True (--overwrite); restore {STUDY_FILE} (a user's study resumes with its own "
                "'lrm-interp study' command), or choose another out folder (--out)"
            ) from None
        return
    if not isinstance(doc, dict) or _quickstart_made(doc, out) is not False:
        return
    prov = doc["provenance"]
    resume = (
        "" if doc.get("complete") is not False else " (interrupted: resume it with the same 'lrm-interp study' command)"
    )
    raise ValueError(
        f"{out} holds a study made by 'lrm-interp study' (model {prov['model_ref']}, data {prov['data']}){resume}, "
        "not a quickstart: overwrite=True (--overwrite) replaces only a quickstart's folder; choose another out "
        "folder (--out)"
    )


@checked_arguments
def quickstart_study(
    out_dir: str | Path = "lrm_interp_quickstart",
    *,
    n_traces: int = 24,
    tiny: bool = False,
    bits: int = 3,
    group_size: int = 128,
    budget: float = 0.02,
    n_eval: int = 150,
    overwrite: bool = False,
    progress: bool = True,
) -> StudyResult:
    """The quickstart's compute (module docs), no printing: a
    :func:`~lrm_interp.experiments.study.run_study` of the shipped toy (``tiny``: a random tiny
    Llama saved to ``out_dir/tiny_model``) on :func:`quickstart_traces`. Every setting is checked
    (``ValueError``) before anything is loaded or written, ``$LRM_INTERP_SKIP_MEMORY_CHECK`` included
    (:func:`~lrm_interp.experiments.study.check_environment`)."""
    check_environment()  # before tiny_model/ and study.json are written (H10-SMCL)
    check_per_family("n_traces", "--traces", n_traces)
    check_bits(bits)
    check_int("group_size", group_size, min=1)
    check_fraction("budget", budget, zero=False, one=False)
    settings = quickstart_settings(tiny=tiny, bits=bits, group_size=group_size, budget=budget, n_eval=n_eval)
    out = Path(out_dir)
    check_quickstart_folder(out)  # a user's study: never replaced (H24-QSOVER)
    traces = quickstart_traces(n_traces)
    if tiny:
        from lrm_interp.testing import byte_tokenizer, tiny_model

        model, tok = tiny_model("llama"), byte_tokenizer()
        ref = str(out / "tiny_model")
    else:
        from lrm_interp.toy import load_toy_model

        model, tok = load_toy_model()
        ref = "toy"
    # the whole check (a study of these settings, this model and these traces, or a folder without a
    # study's files), before tiny_model/ is written, with the quickstart's hint naming every difference
    # at once (run_study's names the study's flags: another --traces or a missing --tiny got none, and
    # a check of the settings alone hid them, H32-QSHINT2); run_study checks again
    check_study_folder(
        out,
        settings,
        overwrite,
        key=study_key(model, tok, settings, traces),
        also=("tiny_model",),
        hint=quickstart_hint,
    )
    check_quickstart_traces(out, traces, overwrite)  # a hand-edited traces.jsonl is not replaced (H20-QSTR)
    if tiny:
        check_quickstart_model(out, model, tok, overwrite)  # an edited tiny_model/ is not replaced (H27-QSMODEL)
        out.mkdir(parents=True, exist_ok=True)
        from lrm_interp.model.provenance import plain_permissions

        with plain_permissions(ref):  # transformers leaves model.safetensors at 0600 (H27-PERM)
            model.save_pretrained(ref)
            tok.save_pretrained(ref)
    return run_study(
        model,
        traces,
        out,
        settings,
        tokenizer=tok,
        model_ref=ref,
        overwrite=overwrite,
        progress=progress,
    )


@checked_arguments
def run_quickstart(
    out_dir: str | Path = "lrm_interp_quickstart",
    *,
    n_traces: int = 24,
    tiny: bool = False,
    bits: int = 3,
    group_size: int = 128,
    budget: float = 0.02,
    n_eval: int = 150,
    overwrite: bool = False,
    progress: bool = True,
) -> StudyResult:
    """Run the quickstart and print it: :func:`quickstart_study`, then the summary, the files, the
    commands and ``report.html`` (its path is the last line printed). Returns the study.

    ``n_eval`` held-out problems (split over the task families) are solved by every variant
    (shipped model only; 0: KL on the traces instead). ``budget``: fraction of the linear weights
    kept in full precision, in (0, 1). A rerun on the same folder resumes; a folder holding a
    quickstart with other settings is refused unless ``overwrite``; one holding a study that is no
    quickstart (a user's ``lrm-interp study``) is refused even then (:func:`check_quickstart_folder`).
    """
    check_environment()  # the header below is printed after the checks only
    check_per_family("n_traces", "--traces", n_traces)
    check_bits(bits)
    check_int("group_size", group_size, min=1)
    check_fraction("budget", budget, zero=False, one=False)
    check_per_family("n_eval", "--eval", n_eval, zero=True)
    check_quickstart_folder(out_dir)
    if tiny:
        print("quickstart on a TINY RANDOM model (--tiny): this checks the plumbing, the scores mean nothing.")
    else:
        from lrm_interp.toy import toy_model_dir

        print(f"quickstart on the shipped toy reasoning model ({toy_model_dir()})")
    result = quickstart_study(
        out_dir,
        n_traces=n_traces,
        tiny=tiny,
        bits=bits,
        group_size=group_size,
        budget=budget,
        n_eval=n_eval,
        overwrite=overwrite,
        progress=progress,
    )
    tr = result.provenance["traces"]
    print(f"{tr['n']} annotated traces, spans per behaviour: {tr['span_counts']}\n")
    print("\n".join(study_summary(result)))
    report = write_study_report(
        result, title=f"lrm_interp quickstart — {'tiny random model' if tiny else 'shipped toy reasoner'}"
    )
    extra = (
        {"bpw_accuracy.png": "accuracy against bits per weight"}
        if (Path(result.out_dir) / "bpw_accuracy.png").exists() and result.settings.tasks
        else {}
    )
    print()
    print("\n".join(files_and_commands(result, {**extra, "report.html": "all of the above on one page"})))
    print(f"\nreport: {report} (self-contained HTML: open it in a browser)")
    return result


__all__ = [
    "TRACES_SEED",
    "check_per_family",
    "check_quickstart_folder",
    "check_quickstart_traces",
    "check_quickstart_model",
    "quickstart_settings",
    "quickstart_traces",
    "quickstart_study",
    "run_quickstart",
]
