"""Run benchmark tasks through a generation backend, writing every item as it finishes.

Layout of one model's run folder (the paper's layout, so outputs feed ``lrm-interp parse``,
annotation and ``attribute()`` directly)::

    <run>/run.json                           format, model, compression, backend, settings
    <run>/problems/<task>.jsonl              line j = problem j (prompts rebuild from it)
    <run>/outputs/<task>/<j>.txt             sample 0 of item j (the response after the prompt)
    <run>/samples/<k>/outputs/<task>/<j>.txt sample k >= 1 (each samples/<k> is a paper layout too)
    <run>/generations.jsonl                  one line per finished item: token counts, finish
                                             reasons, prompt, problem and settings hashes, the
                                             model's fingerprints (``model``), the hash of each
                                             output file (``text_sha``) and of the record itself
                                             (``record_sha256``)

An item is finished when its ``generations.jsonl`` line exists (written after its text files,
flushed and fsynced). A rerun on the same folder skips finished items and generates only the
rest; it refuses other settings, another model (weights fingerprint), the same weights under
another model config (config fingerprint), a folder without ``run.json`` that holds outputs (a
paper layout written by someone else) or a changed prompt, naming
the file and the record — every check runs before the first write, so a refused run leaves the
folder exactly as it was (``problems/<task>.jsonl`` always matches the outputs beside it). A
torn last line (the run was killed mid-write) is dropped once the run is accepted.

Each ``generations.jsonl`` record carries ``record_sha256`` (:func:`record_digest`, over the
whole record but that key): a record edited since (its token count or finish reason, which the
bench tables report) is refused naming file:line by :func:`read_generations`, which the resume
and ``bench score`` both read it with (H23-GENMETA). Records of older runs carry no digest and
load as before; so, necessarily, does a record whose digest key was deleted.

``run.json`` carries a ``record_sha256`` over its whole record too (:func:`run_record_text`): an
edited one (its model block, settings or tasks) is refused by :func:`check_run_record` on a resume
and in ``bench score`` as edited or corrupt, not blamed on another model (H24-RJFP); older run
files without it load as before. A record whose ``settings_key`` is not the run's (a line of a run
with other settings mixed in) is refused naming file:line and the fix by
:func:`check_record_settings`, on a resume and in ``bench score`` (H24-MIXREC); so is a record of
another model (each record carries its model's fingerprints, ``"model"``: :func:`check_record_model`,
H25-MIXMODEL; records of older runs without it are not checked); and a resume
refuses a finished item whose output file no longer matches its recorded ``text_sha`` (edited or
swapped: it was counted finished, H24-BRTEXT), naming the files; deleting them makes the same run
generate them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lrm_interp._io import atomic_write_text
from lrm_interp.checks import checked_arguments, user_stacklevel
from lrm_interp.data.benchmarks.items import BenchItem
from lrm_interp.evaluation.backends import Backend, GenerationSettings
from lrm_interp.evaluation.generation import Generation

RUN_FORMAT = "lrm_interp.bench_run/1"
RUN_FILE, GEN_FILE = "run.json", "generations.jsonl"


def _sha(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def settings_key(settings: GenerationSettings | Mapping[str, Any]) -> str:
    """Hash of the settings that decide outputs (``batch_size`` excluded); ``settings`` may be the
    ``settings`` mapping a ``run.json`` records."""
    items = settings.items() if isinstance(settings, Mapping) else settings.to_dict().items()
    return _sha(json.dumps({k: v for k, v in items if k != "batch_size"}, sort_keys=True))


#: the key of a ``generations.jsonl`` record's own digest (:func:`record_digest`)
RECORD_KEY = "record_sha256"


def record_digest(rec: Mapping[str, Any]) -> str:
    """SHA-256 of a ``generations.jsonl`` record without its :data:`RECORD_KEY` (canonical JSON:
    sorted keys), the value ``bench run`` writes under that key."""
    body = {k: v for k, v in rec.items() if k != RECORD_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def problem_sha(problem: Any) -> str:
    """The ``problem_sha`` of an item's problem as ``generations.jsonl`` records it (of its JSON
    with sorted keys, after a JSON round trip, so a line of ``problems/<task>.jsonl`` hashes alike)."""
    return _sha(json.dumps(json.loads(json.dumps(problem)), sort_keys=True))


@checked_arguments
def output_path(run_dir: str | os.PathLike, task: str, index: int, sample: int = 0) -> Path:
    """Where sample ``sample`` of item ``index`` of ``task`` lives in a run folder."""
    root = Path(run_dir) if sample == 0 else Path(run_dir) / "samples" / str(sample)
    return root / "outputs" / task / f"{index}.txt"


@checked_arguments
def file_sha(path: str | os.PathLike) -> str:
    """The ``text_sha`` of an output file as ``generations.jsonl`` records it (of its bytes)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


@checked_arguments
def read_generations(path: str | os.PathLike) -> tuple[dict[tuple[str, int], dict], int]:
    """``({(task, index): record}, bytes of complete lines)``. Only newline-terminated lines count:
    an unterminated tail is a write torn by a kill and is left out (appending resumes at the
    returned offset); an unreadable complete line raises naming file:line, and so does a record
    whose ``record_sha256`` does not match it (:func:`record_digest`: edited or corrupt; records
    without the key, of older runs, are taken as they are)."""
    p = Path(path)
    if not p.exists():
        return {}, 0
    raw = p.read_bytes()
    good = raw.rfind(b"\n") + 1
    recs: dict[tuple[str, int], dict] = {}
    for n, line in enumerate(raw[:good].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            recs[(str(rec["task"]), int(rec["index"]))] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}:{n}: unreadable generation record ({e})") from e
        if isinstance(rec, dict) and RECORD_KEY in rec and rec[RECORD_KEY] != record_digest(rec):
            raise ValueError(
                f"{p}:{n}: the generation record of {rec['task']}/{rec['index']} was edited or is corrupt (it "
                f"does not match its {RECORD_KEY}): restore it, or delete that line and rerun 'bench run' with "
                "the same options and --out (it generates that item again)"
            )
    return recs, good


#: the fix of a ``generations.jsonl`` record generated with other settings than its run's (H24-MIXREC)
MIXED_RECORD_FIX = (
    "delete that line (and its output files) and rerun 'bench run' with the same options and --out, which "
    "generates it again, or use another --out"
)


@checked_arguments
def record_lines(path: str | os.PathLike, good: int | None = None) -> dict[tuple[str, int], int]:
    """``{(task, index): line number}`` of the records of ``generations.jsonl`` at ``path`` (the last
    line of an item wins, as in :func:`read_generations`; complete lines only, up to ``good`` bytes
    when given)."""
    p = Path(path)
    if not p.exists():
        return {}
    raw = p.read_bytes()
    good = raw.rfind(b"\n") + 1 if good is None else good
    lines: dict[tuple[str, int], int] = {}
    for n, line in enumerate(raw[:good].split(b"\n")[:-1], 1):
        if line.strip():
            rec = json.loads(line)
            lines[(str(rec["task"]), int(rec["index"]))] = n
    return lines


@checked_arguments
def check_record_settings(
    gen_path: str | os.PathLike,
    recs: Mapping[tuple[str, int], Mapping[str, Any]],
    lines: Mapping[tuple[str, int], int],
    run_key: str | None,
    run_file: str | os.PathLike,
) -> None:
    """``ValueError`` naming file:line of the first record of ``recs`` whose ``settings_key`` is not
    ``run_key`` (the one ``run_file``, the run's ``run.json``, records), with the fix: a record of a
    run with other settings mixed into this one (the resume refused it without a fix; ``bench
    score`` graded it, H24-MIXREC). Records without a ``settings_key`` (older runs), or a run file
    without one, are not checked."""
    if not run_key:
        return
    for key in sorted(recs, key=lambda k: lines.get(k, 0)):
        got = recs[key].get("settings_key")
        if got is not None and got != run_key:
            t, j = key
            raise ValueError(
                f"{gen_path}:{lines.get(key, '?')}: record {t}/{j} was generated with other settings than "
                f"{run_file} records (settings_key {got!r}, the run's {run_key!r}): {MIXED_RECORD_FIX}"
            )


#: the keys of a ``run.json`` model block that each ``generations.jsonl`` record carries under ``"model"``
#: (:func:`record_model`): the model identity a record is checked against (H25-MIXMODEL)
MODEL_KEYS = ("weights_fingerprint", "config_fingerprint")


def record_model(model: Any) -> dict[str, str]:
    """The model identity a ``generations.jsonl`` record carries: the :data:`MODEL_KEYS` of the model
    block ``model`` (``run.json``'s ``model``, or ``run_benchmark``'s ``model_info``) it holds, e.g.
    ``{"weights_fingerprint": ..., "config_fingerprint": ...}``; ``{}`` when it holds none (a served
    model)."""
    if not isinstance(model, Mapping):
        return {}
    return {k: model[k] for k in MODEL_KEYS if isinstance(model.get(k), str) and model[k]}


@checked_arguments
def check_record_model(
    gen_path: str | os.PathLike,
    recs: Mapping[tuple[str, int], Mapping[str, Any]],
    lines: Mapping[tuple[str, int], int],
    run_model: Any,
    run_file: str | os.PathLike,
) -> None:
    """``ValueError`` naming file:line of the first record of ``recs`` whose ``"model"``
    (:func:`record_model`) is not the model of ``run_model`` (the model block ``run_file``, the run's
    ``run.json``, records), with the fix: a record of another model's run with the same settings mixed
    into this one was counted finished by the resume and graded as this model's by ``bench score``
    (H25-MIXMODEL). Only the keys both hold are compared; records without ``"model"`` (older runs) and
    a run file without a model fingerprint (a served model) are not checked."""
    want = record_model(run_model)
    if not want:
        return
    for key in sorted(recs, key=lambda k: lines.get(k, 0)):
        if "model" not in recs[key]:
            continue
        got = recs[key]["model"]
        bad = [k for k in want if not isinstance(got, Mapping) or (k in got and got[k] != want[k])]
        if bad:
            k = bad[0]
            shown = got.get(k) if isinstance(got, Mapping) else got
            t, j = key
            raise ValueError(
                f"{gen_path}:{lines.get(key, '?')}: record {t}/{j} was generated by another model than "
                f"{run_file} records ({k} {shown!r}, the run's {want[k]!r}): {MIXED_RECORD_FIX}"
            )


@checked_arguments
def check_run_record(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """``ValueError`` when the ``run.json`` ``meta`` (read from ``path``) does not match its own
    :data:`RECORD_KEY` (:func:`record_digest`): its model block, settings or tasks were edited, or
    the file is corrupt (an edited weights fingerprint was blamed on "another model", H24-RJFP).
    A ``run.json`` of an older run (no digest) is not checked."""
    if RECORD_KEY in meta and meta[RECORD_KEY] != record_digest(meta):
        raise ValueError(
            f"{path}: run.json was edited or is corrupt (it does not match its {RECORD_KEY}): restore it, or use "
            "another --out"
        )


def run_record_text(meta: Mapping[str, Any]) -> str:
    """The text of a ``run.json`` holding ``meta`` with its :data:`RECORD_KEY` (recomputed)."""
    body = {k: v for k, v in meta.items() if k != RECORD_KEY}
    return json.dumps({**body, RECORD_KEY: record_digest(body)}, indent=2)


@dataclass(frozen=True)
class TaskRun:
    """One task of one model's run: items finished before (``resumed``) and now (``generated``)."""

    model: str
    task: str
    n_items: int
    resumed: int
    generated: int
    seconds: float


@dataclass(frozen=True)
class BenchRun:
    """What :func:`run_benchmark` did for one model: its folder and one :class:`TaskRun` per task."""

    model: str
    run_dir: str
    tasks: tuple[TaskRun, ...] = ()
    info: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame([t.__dict__ for t in self.tasks])


def _recorded_source_note(path: Path, task: str, source: str) -> str:
    """`` (run.json records the problems of 'X', given now: 'Y': ...)`` when the run file ``path``
    (not yet rewritten) records another source of ``task``'s problems than ``source`` (item source
    without its index), else ``""``: a resume with another ``--toy-seed`` was refused as "another
    prompt" without naming the option (H16-BSR)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        was = old["tasks"][task]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    now = source.rsplit(":", 1)[0]
    if not isinstance(was, str) or was == now:
        return ""
    return (
        f" (run.json records the problems of {was!r}, given now: {now!r}: resume with the task options the run "
        "used: --task-data, --limit, --per-family, --toy-seed, --toy-people)"
    )


def _check_run_file(path: Path, meta: dict) -> dict:
    """The run file to write for ``meta``: ``meta`` itself for a new folder, else the old file
    merged with it. Raises (naming the file) when the folder holds another run; writes nothing."""
    if not path.exists():
        return meta
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(old, dict) or old.get("format") != RUN_FORMAT:
        fmt = old.get("format") if isinstance(old, dict) else None
        raise ValueError(f"{path}: not a benchmark run file (format {fmt!r}, expected {RUN_FORMAT!r})")
    if old.get("settings_key") != meta["settings_key"]:
        old_settings = old.get("settings")
        if not isinstance(old_settings, dict) or old.get("settings_key") != settings_key(old_settings):
            # the settings shown would not be the ones the outputs were generated with (H23-BRMSG B11)
            raise ValueError(
                f"{path}: its settings do not match its settings_key {old.get('settings_key')!r} (run.json was "
                "edited or is corrupt), so the settings its outputs were generated with are unknown; restore "
                "it, or use another --out"
            )
        check_run_record(path, old)  # settings consistent with their key, but something else edited
        diff = {
            k: (old.get("settings", {}).get(k), v)
            for k, v in meta["settings"].items()
            if k != "batch_size" and old.get("settings", {}).get(k) != v
        }
        raise ValueError(
            f"{path}: this folder was generated with other settings {diff} (old, new); "
            "resume with the same settings or use another --out"
        )
    check_run_record(path, old)  # an edited model block is no "other model" (H24-RJFP)
    om, nm = old.get("model") or {}, meta.get("model") or {}
    ofp, nfp = om.get("weights_fingerprint"), nm.get("weights_fingerprint")
    if ofp and nfp and ofp != nfp:
        raise ValueError(
            f"{path}: this folder holds outputs of another model (weights fingerprint {ofp} != {nfp}; the run "
            "folder is named after the model folder's last part): give models from folders with distinct names "
            "(rename or link one), or use another --out"
        )
    ocf, ncf = om.get("config_fingerprint"), nm.get("config_fingerprint")
    if ocf and ncf and ocf != ncf:
        raise ValueError(
            f"{path}: this folder holds outputs of the same weights under another model config "
            f"(config fingerprint {ocf} there, {ncf} now: config.json changed); use another --out"
        )
    if ofp and ncf and not ocf:
        import warnings

        warnings.warn(
            f"{path} was written before lrm_interp recorded the model config's fingerprint: "
            "a change of the model's config.json since then cannot be detected",
            stacklevel=user_stacklevel(),
        )
    merged = dict(old)
    merged["tasks"] = {**old.get("tasks", {}), **meta.get("tasks", {})}
    for t, info in (old.get("tasks") or {}).items():  # a resume with fewer items keeps the count of the folder
        if isinstance(info, dict) and isinstance(info.get("n_items"), int) and t in meta.get("tasks", {}):
            merged["tasks"][t] = {**meta["tasks"][t], "n_items": max(info["n_items"], meta["tasks"][t]["n_items"])}
    merged["backend"] = meta["backend"]
    return merged


def _problem_lines(prob_file: Path, items: Sequence[Any]) -> str:
    """The text of ``problems/<task>.jsonl`` (line j = problem j) after a run of ``items``.

    A resumed run with fewer items than the folder holds (a smaller ``--limit`` or
    ``--per-family``) keeps the lines of the items it does not cover: their outputs stay beside
    them and ``parse`` / ``bench score`` rebuild their prompts from these lines."""
    new = [json.dumps(it.problem) for it in items]
    if not prob_file.exists() or [it.index for it in items] != list(range(len(items))):
        return "".join(x + "\n" for x in new)
    old = prob_file.read_text(encoding="utf-8").splitlines()
    return "".join(x + "\n" for x in new + old[len(new) :])


def _check_foreign(run: Path) -> None:
    """Refuse a folder without ``run.json`` that already holds outputs (``outputs/``, ``samples/``,
    ``generations.jsonl``: e.g. a paper layout written by hand): a run would overwrite them."""
    if not run.is_dir() or (run / RUN_FILE).exists():
        return
    found = [run / GEN_FILE] if (run / GEN_FILE).exists() else []
    for sub in ("outputs", "samples"):
        d = run / sub
        if d.is_dir():
            found += [p for p in sorted(d.rglob("*")) if p.is_file()][:3]
    if found:
        shown = ", ".join(str(p.relative_to(run)) for p in found[:3])
        raise ValueError(
            f"{run}: not a benchmark run folder (no {RUN_FILE}) but it holds output files ({shown}"
            f"{' ...' if len(found) > 3 else ''}), which a run would overwrite; choose another --out"
        )


@checked_arguments
def run_benchmark(
    backend: Backend,
    tasks: Mapping[str, Sequence[BenchItem]],
    run_dir: str | os.PathLike,
    *,
    settings: GenerationSettings,
    model: str = "model",
    model_info: Mapping[str, Any] | None = None,
    compression: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> BenchRun:
    """Generate ``settings.n_samples`` outputs for every unfinished item of ``tasks``
    (``{task: items}``) with ``backend`` into ``run_dir`` (layout: module docs), one progress
    bar per model × task. Returns what was resumed and generated per task."""
    run = Path(run_dir)
    skey = settings_key(settings)
    rmodel = record_model(model_info)  # each record names its model (check_record_model, H25-MIXMODEL)
    meta = {
        "format": RUN_FORMAT,
        "model_name": model,
        "model": dict(model_info or {}),
        "compression": dict(compression or {"method": "none"}),
        "backend": backend.describe(),
        "settings": settings.to_dict(),
        "settings_key": skey,
        "tasks": {
            t: {"n_items": len(items), "source": items[0].source.rsplit(":", 1)[0] if items else None}
            for t, items in tasks.items()
        },
    }
    # every check first: a refused run writes nothing (run.json, problems/, generations.jsonl untouched)
    _check_foreign(run)
    run_meta = _check_run_file(run / RUN_FILE, meta)
    gen_path = run / GEN_FILE
    done, good = read_generations(gen_path)
    rec_lines = record_lines(gen_path, good)
    check_record_settings(gen_path, done, rec_lines, skey, run / RUN_FILE)
    check_record_model(gen_path, done, rec_lines, run_meta.get("model"), run / RUN_FILE)  # H25-MIXMODEL
    plans = []
    changed: list[str] = []  # finished outputs whose bytes differ from their recorded text_sha (H24-BRTEXT)
    n_finished = 0
    for task, items in tasks.items():
        todo, resumed = [], 0
        for it in items:
            rec = done.get((task, it.index))
            if rec is None:
                todo.append(it)
                continue
            if rec.get("prompt_sha") != _sha(it.prompt):
                raise ValueError(
                    f"{gen_path}: record {task}/{it.index} was generated from another prompt "
                    f"than {it.source} gives now{_recorded_source_note(run / RUN_FILE, task, it.source)}; "
                    "use another --out"
                )
            paths = [output_path(run, task, it.index, k) for k in range(settings.n_samples)]
            if not all(p.exists() for p in paths):
                todo.append(it)  # its text files were removed: generate again
                continue
            samples = rec.get("samples") or []
            for p, smp in zip(paths, samples):
                n_finished += 1
                if isinstance(smp, dict) and smp.get("text_sha") and file_sha(p) != smp["text_sha"]:
                    changed.append(str(p))
            resumed += 1
        plans.append((task, items, todo, resumed))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise ValueError(
            f"{len(changed)} of the {n_finished} finished outputs differ from the text recorded for them in "
            f"{gen_path}, swapped or edited ({shown}): a resume would count them finished; restore them, or delete "
            "the changed ones and run the same 'bench run --out' again (it generates missing outputs anew)"
        )
    # accepted: now write
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / RUN_FILE, run_record_text(run_meta))  # with its digest (check_run_record)
    if gen_path.exists() and good < gen_path.stat().st_size:
        with open(gen_path, "r+b") as f:  # drop the torn line of a killed run
            f.truncate(good)
    for task, items, _, _ in plans:
        prob_file = run / "problems" / f"{task}.jsonl"
        prob_lines = _problem_lines(prob_file, items)
        if not prob_file.exists() or prob_file.read_text(encoding="utf-8") != prob_lines:
            atomic_write_text(prob_file, prob_lines)
    reports = []
    with open(gen_path, "a", encoding="utf-8") as gf:
        for task, items, todo, resumed in plans:
            t0 = time.perf_counter()

            def write(i: int, gens: list[Generation], todo=todo, task=task) -> None:
                it = todo[i]
                for k, g in enumerate(gens):
                    atomic_write_text(output_path(run, task, it.index, k), g.text)
                rec = {
                    "task": task,
                    "index": it.index,
                    "id": it.id,
                    "prompt_sha": _sha(it.prompt),
                    "problem_sha": problem_sha(it.problem),
                    "settings_key": skey,
                    **({"model": rmodel} if rmodel else {}),
                    # the hash of each output file: 'bench score' refuses outputs swapped or edited since
                    "samples": [{**g.to_dict(), "text_sha": _sha(g.text)} for g in gens],
                    "max_new_tokens": settings.max_new_tokens,
                }
                rec[RECORD_KEY] = record_digest(rec)  # an edited record is refused (read_generations)
                gf.write(json.dumps(rec) + "\n")
                gf.flush()
                os.fsync(gf.fileno())
                bar.update(1)

            with tqdm(
                total=len(items), initial=resumed, desc=f"{model} × {task}", unit="item", disable=not progress
            ) as bar:
                if todo:
                    backend.generate(
                        [it.prompt for it in todo],
                        settings,
                        keys=[it.id for it in todo],
                        on_result=write,
                        progress=False,
                    )
            reports.append(TaskRun(model, task, len(items), resumed, len(todo), time.perf_counter() - t0))
    return BenchRun(model, str(run), tuple(reports), meta)


__all__ = [
    "run_benchmark",
    "file_sha",
    "BenchRun",
    "TaskRun",
    "read_generations",
    "output_path",
    "settings_key",
    "record_digest",
    "record_lines",
    "check_record_settings",
    "check_record_model",
    "record_model",
    "MODEL_KEYS",
    "check_run_record",
    "run_record_text",
    "MIXED_RECORD_FIX",
    "problem_sha",
    "RECORD_KEY",
    "RUN_FORMAT",
    "RUN_FILE",
    "GEN_FILE",
]
