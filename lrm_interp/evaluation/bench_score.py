"""Grade benchmark outputs (a run folder of :mod:`lrm_interp.evaluation.bench_run`, or any paper
layout ``outputs/<task>/<j>.txt`` from another generator) and build the paper-style tables.

Per output: the grade (:func:`lrm_interp.data.benchmarks.grade`), tokens (from the run's
``generations.jsonl``, else the ``tokenizer`` if given), words, whether the length limit was
hit, collapse (:func:`lrm_interp.evaluation.output_stats.detect_collapse`), backtracking cues.
Per model × task (:meth:`BenchScores.summary`): pass@1 (the mean over items of each item's mean
over its samples; with its 95 % Wilson interval ``ci95_low`` / ``ci95_high`` when each item has
one output graded 0 or 1), EM / F1, unanswered outputs, mean tokens / words, collapse rate, the share of
failures that hit the length limit, cues per output, and the short-vs-long split at 30 % and
20 %. :meth:`BenchScores.write_tables` writes CSV + Markdown and the plots.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from lrm_interp._io import (
    atomic_save_figure,
    atomic_write_text,
    loads_strict,
    move_together,
    new_stage,
    publish_dir,
    refuse_other_result_folder,
    stage_folder,
)
from lrm_interp.checks import checked_arguments, own_path_checks
from lrm_interp.data.benchmarks.items import BenchItem
from lrm_interp.data.benchmarks.tasks import TASKS, get_task, paper_average
from lrm_interp.evaluation.bench_run import (
    GEN_FILE,
    RUN_FILE,
    RUN_FORMAT,
    check_record_model,
    check_record_settings,
    check_run_record,
    file_sha,
    output_path,
    problem_sha,
    read_generations,
)
from lrm_interp.evaluation.output_stats import backtracking_cues, detect_collapse, short_long_split, word_count

SPLITS = (0.3, 0.2)


@checked_arguments
@dataclass(frozen=True)
class SampleScore:
    """One graded output (``sample`` k of item ``index``)."""

    model: str
    task: str
    index: int
    sample: int
    score: float
    answered: bool
    extracted: str | None
    reason: str | None
    em: float | None
    f1: float | None
    n_tokens: int | None
    words: int
    hit_limit: bool | None
    collapsed: bool
    collapse_period: int
    cues: int


@dataclass(frozen=True)
class RunInfo:
    """A model's run folder: ``name`` (table row), ``path``, its ``run.json`` (empty for foreign
    layouts), and the compression parsed from it (``method``, ``bits``, ``sparsity``, ``pattern``)."""

    name: str
    path: str
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def compression(self) -> dict:
        return dict(self.meta.get("compression") or {"method": "none"})

    @property
    def base(self) -> str:
        return str(self.meta.get("base_model") or self.meta.get("model_name") or self.name).split("@")[0]

    @property
    def n_samples(self) -> int | None:
        s = self.meta.get("settings") or {}
        return int(s["n_samples"]) if "n_samples" in s else None


@checked_arguments
def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is one model's run folder: it holds ``outputs/`` or ``run.json`` (a run
    folder whose ``outputs/`` was removed still has its ``run.json``: found, its outputs missing)."""
    try:
        return (folder / "outputs").is_dir() or (folder / RUN_FILE).is_file()
    except OSError:
        return False


@checked_arguments
def run_folders_in(folder: str | os.PathLike) -> list[Path]:
    """The run folders (:func:`is_run_folder`) that ``folder`` is (``[folder]``) or holds (its
    subfolders that are, sorted); empty when it is no folder or holds none: the one rule of
    :func:`find_runs` and of the ``bench score`` output checks (:func:`refuse_scores_into_runs`)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    if is_run_folder(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run_folder(p))


@checked_arguments
def refuse_scores_into_runs(out: str | os.PathLike, what: str = "out_dir") -> None:
    """``ValueError`` naming ``what`` when the folder ``out`` holds run folders (a ``bench run --out``
    folder, :func:`run_folders_in`): the tables written there made it a "bench score result", and
    every later ``bench run --out`` of it (a resume, more items, another model) was refused for good
    (H13-BSO). The rule of :meth:`BenchScores.write_tables` and of ``bench score --out``, checked
    before anything is written; the suggested folders are ``<out>_scores`` beside it and
    ``<out>/scores`` (``bench score``'s default) inside it."""
    p = Path(out).expanduser()
    try:
        runs = [r for r in run_folders_in(p) if r != p]
    except OSError:
        return  # unreadable: the writer's own error names it
    if runs:
        names = ", ".join(r.name for r in runs[:3]) + (", ..." if len(runs) > 3 else "")
        raise ValueError(
            f"{what} {out} holds the bench run folders {names} (a 'bench run --out' folder): the score tables "
            f"written there would make it a bench score result, which no later 'bench run --out {out}' writes "
            f"into (no resume, no more items or models); write them to another folder, e.g. {p}_scores, or "
            f"{p / 'scores'}"
        )


@checked_arguments
def find_runs(outputs: str | os.PathLike) -> list[RunInfo]:
    """Run folders under ``outputs``: itself when it holds ``outputs/``, else each subfolder that does."""
    root = Path(outputs)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such outputs folder")
    dirs = run_folders_in(root)
    if not dirs:
        raise FileNotFoundError(f"{root}: neither outputs/<task>/ nor <model>/outputs/<task>/ (paper layout)")
    runs = []
    for d in dirs:
        meta: dict = {}
        if (d / RUN_FILE).exists():
            loaded = loads_strict((d / RUN_FILE).read_text(encoding="utf-8"), str(d / RUN_FILE))
            if not isinstance(loaded, dict):
                raise ValueError(f"{d / RUN_FILE}: expected a JSON object, got {type(loaded).__name__}")
            check_run_record(d / RUN_FILE, loaded)  # edited since 'bench run' wrote it (H24-RJFP)
            meta = loaded
        runs.append(RunInfo(str(meta.get("tag") or d.name), str(d), meta))
    return runs


def _task_folder(run: Path, task: str) -> str | None:
    t = get_task(task)
    base = run / "outputs"
    if not base.is_dir():
        return None
    if (base / t.name).is_dir():
        return t.name
    for p in sorted(base.iterdir()):
        if p.is_dir():
            try:
                if get_task(p.name).name == t.name:
                    return p.name
            except KeyError:
                continue
    return None


def _same_task_folders(run: Path, task: str) -> list[str]:
    """Every folder under ``run/outputs`` (and ``run/samples/<k>/outputs``) naming ``task`` (its
    name or an alias, e.g. ``AIME_2024`` and ``aime``)."""
    name = get_task(task).name
    found = set()
    for base in [run / "outputs", *sorted((run / "samples").glob("*/outputs"))]:
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if p.is_dir():
                try:
                    if get_task(p.name).name == name:
                        found.add(p.name)
                except KeyError:
                    continue
    return sorted(found)


def _ignored_files(run: Path, task: str, folder: str | None, indices: set[int], n_samples: int) -> list[str]:
    """Files in ``run``'s folders of ``task`` that are no output of a scored item: other names
    than ``<j>.txt`` of an item, samples beyond ``n_samples``, folders of the task under another
    name than the one scored."""
    want = {f"{j}.txt" for j in indices}
    out = []
    for name in _same_task_folders(run, task):
        roots = [(0, run / "outputs" / name)] + [
            (int(d.name) if d.name.isdigit() else -1, d / "outputs" / name) for d in sorted((run / "samples").glob("*"))
        ]
        for k, root in roots:
            if not root.is_dir():
                continue
            for f in sorted(root.rglob("*")):
                if not f.is_file():
                    continue
                scored = name == folder and 0 <= k < n_samples and f.parent == root and f.name in want
                if not scored:
                    out.append(str(f))
    return out


def _check_recorded_outputs(runs: Sequence[RunInfo], items: Mapping[str, Sequence[BenchItem]]) -> None:
    """``ValueError`` when an output that a run's ``generations.jsonl`` records for a scored item is
    missing, or differs from the hash recorded (``text_sha``; records without one are not checked)."""
    lost: list[str] = []
    changed: list[str] = []
    recorded = 0
    gen_files: list[str] = []  # of the runs with a missing or changed output
    for info in runs:
        run = Path(info.path)
        recs, _ = read_generations(run / GEN_FILE)
        if not recs:
            continue
        bad = len(lost) + len(changed)
        for task, its in items.items():
            t = get_task(task)
            folder = _task_folder(run, t.name)
            for it in its:
                rec = recs.get((folder or t.name, it.index)) or recs.get((t.name, it.index))
                if rec is None:
                    continue
                for k, s in enumerate(rec.get("samples") or []):
                    p = output_path(run, folder or t.name, it.index, k)
                    recorded += 1
                    if not p.is_file():
                        lost.append(str(p))
                    elif isinstance(s, dict) and s.get("text_sha") and file_sha(p) != s["text_sha"]:
                        changed.append(str(p))
        if len(lost) + len(changed) > bad:
            gen_files.append(str(run / GEN_FILE))
    if not lost and not changed:
        return

    def show(paths: list[str]) -> str:
        return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")

    parts = []
    if lost:
        parts.append(f"{len(lost)} of the {recorded} outputs recorded in {show(gen_files)} are missing ({show(lost)})")
    if changed:
        parts.append(f"{len(changed)} differ from the text recorded for them, swapped or edited ({show(changed)})")
    raise ValueError(
        "; ".join(parts) + ": the outputs changed since 'bench run' wrote them, so their grades would not be "
        "of the recorded generations; restore them, or delete the changed ones and run the same 'bench run "
        "--out' again (it generates missing outputs anew)"
    )


def _prompt_sha(prompt: str) -> str:
    """The ``prompt_sha`` ``bench run`` records for an item in ``generations.jsonl``."""
    return hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class _Generations:
    """A run's ``generations.jsonl``: the records (:func:`read_generations`), the line of each, and
    ``torn``: ``file:line`` of an unterminated last line (a write cut by a kill), else ``None``."""

    path: Path
    exists: bool
    recs: dict[tuple[str, int], dict]
    lines: dict[tuple[str, int], int]
    torn: str | None

    def get(self, folder: str, task: str, index: int) -> tuple[dict | None, int | None]:
        for key in ((folder, index), (task, index)):
            if key in self.recs:
                return self.recs[key], self.lines.get(key)
        return None, None


def _generations(run: Path) -> _Generations:
    path = run / GEN_FILE
    recs, good = read_generations(path)  # raises naming file:line on an unreadable complete line
    lines: dict[tuple[str, int], int] = {}
    torn = None
    if path.exists():
        raw = path.read_bytes()
        for n, line in enumerate(raw[:good].split(b"\n")[:-1], 1):
            if line.strip():
                rec = json.loads(line)
                lines[(str(rec["task"]), int(rec["index"]))] = n  # the last record of an item wins, as there
        if raw[good:].strip():
            n_complete = raw.count(b"\n", 0, good)
            torn = f"{path}:{n_complete + 1}"
    return _Generations(path, path.exists(), recs, lines, torn)


def _check_record_settings(runs: Sequence[RunInfo], gens: Mapping[str, _Generations]) -> None:
    """``ValueError`` naming file:line of a ``generations.jsonl`` record generated with other
    settings than its run's ``run.json`` records (its ``settings_key``): a record of another run mixed
    in was graded, its token count and length limit those of other settings (H24-MIXREC); the rule
    of the resume (:func:`~lrm_interp.evaluation.bench_run.check_record_settings`). So is a record of
    another model than its ``run.json`` records (its ``"model"`` fingerprints, graded as this model's:
    :func:`~lrm_interp.evaluation.bench_run.check_record_model`, H25-MIXMODEL)."""
    for info in runs:
        key = info.meta.get("settings_key") if info.meta.get("format") == RUN_FORMAT else None
        g = gens[info.path]
        check_record_settings(
            g.path, g.recs, g.lines, key if isinstance(key, str) else None, Path(info.path) / RUN_FILE
        )
        if info.meta.get("format") == RUN_FORMAT:  # a record of another model's run (H25-MIXMODEL)
            check_record_model(g.path, g.recs, g.lines, info.meta.get("model"), Path(info.path) / RUN_FILE)


@checked_arguments
def outputs_fingerprint(outputs: str | os.PathLike, runs: Sequence[RunInfo] | None = None) -> str:
    """A fingerprint of the outputs folder ``outputs`` (its ``runs``, :func:`find_runs` when not given):
    SHA-256 over each run folder's path inside it, its ``run.json`` and ``generations.jsonl`` (or,
    for a layout without them, the names and sizes of its files). A copy of the folder has the same
    fingerprint; ``score_files.json`` records it (:meth:`BenchScores.write_tables`, H24-SCOREDEF)."""
    root = Path(outputs)
    h = hashlib.sha256()
    for info in sorted(find_runs(root) if runs is None else runs, key=lambda r: r.path):
        run = Path(info.path)
        rel = os.path.relpath(run, root)
        h.update(f"run {rel}\n".encode())
        kept = [run / n for n in (RUN_FILE, GEN_FILE) if (run / n).is_file()]
        for f in kept:
            h.update(f"{f.name} ".encode() + hashlib.sha256(f.read_bytes()).digest())
        if not kept:
            for f in sorted(run.rglob("*")):
                if f.is_file():
                    h.update(f"{f.relative_to(run)} {f.stat().st_size}\n".encode())
    return h.hexdigest()


@checked_arguments
def scores_of_other_outputs(out: str | os.PathLike, outputs: str | os.PathLike) -> str | None:
    """The outputs folder whose scores the score folder ``out`` holds (its ``score_files.json``
    records it) when that is not ``outputs`` (another path and another :func:`outputs_fingerprint`: a
    copy of the folder counts as the same outputs); ``None`` when it is, when no record tells (a
    record of an older lrm_interp) or when ``outputs`` cannot be read (grading it says why)."""
    try:
        doc = json.loads((Path(out) / SCORE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), str):
        return None
    if doc["outputs"] == str(Path(outputs).resolve()):
        return None
    try:
        if doc.get("outputs_fingerprint") == outputs_fingerprint(outputs):
            return None
    except (OSError, ValueError):
        return None
    return doc["outputs"]


def _graded_unverified(g: _Generations, folder: str, task: str, index: int) -> bool:
    """Whether the outputs of item ``index`` would be graded without a record that verifies their
    prompt (no ``generations.jsonl`` at all, or a record without ``prompt_sha``); outputs without a
    record in a run that has the file are not graded at all."""
    rec, _ = g.get(folder, task, index)
    if rec is None:
        return not g.exists
    return not rec.get("prompt_sha")


def _check_generations_kept(runs: Sequence[RunInfo]) -> None:
    """``ValueError`` when a run folder of ``bench run`` (its ``run.json`` of format
    :data:`~lrm_interp.evaluation.bench_run.RUN_FORMAT`) has no ``generations.jsonl``: ``bench run``
    creates it before writing any output, and it holds the hash of every output file; without it the
    output texts were graded unchecked (a hand-edited answer took math from 0 % to 50 %, H22-BENCHGEN).
    Folders of other generators (no ``run.json`` of ``bench run``) are graded as before."""
    for info in runs:
        run = Path(info.path)
        if info.meta.get("format") == RUN_FORMAT and not (run / GEN_FILE).exists():
            raise ValueError(
                f"{run}: a 'bench run' folder ({RUN_FILE}) without its {GEN_FILE}, which records the hash of "
                "every output file: its outputs cannot be checked, so they are not graded; rerun 'bench run' "
                f"with --out on that folder to resume (it generates them again), or score a folder of outputs "
                f"without {RUN_FILE}"
            )


def _check_same_items(
    runs: Sequence[RunInfo], items: Mapping[str, Sequence[BenchItem]], gens: Mapping[str, _Generations]
) -> None:
    """``ValueError`` when a ``bench run`` folder's outputs were generated for other problems than
    ``items`` (another ``--toy-seed``, ``--per-family``, ``--task-data``): an item whose record in
    ``generations.jsonl`` holds another prompt hash, a line of ``problems/<task>.jsonl`` that
    differs from the item's problem, an item with outputs beyond the lines of that file that no
    record verifies, or (when the run kept neither file) another source than ``run.json`` records.
    Grading them would use the golds of other problems."""
    for info in runs:
        if info.meta.get("format") != RUN_FORMAT:
            continue  # a foreign layout records nothing to check against
        run, g = Path(info.path), gens[info.path]
        n_s = _sample_count(run, info)
        tasks_meta = info.meta.get("tasks")
        recorded: dict = tasks_meta if isinstance(tasks_meta, dict) else {}
        for task, its in items.items():
            if not its:
                continue
            t = get_task(task)
            name = _task_folder(run, t.name) or t.name
            tinfo = recorded.get(name) or recorded.get(t.name) or {}
            was = tinfo.get("source") if isinstance(tinfo, dict) else None
            now = its[0].source.rsplit(":", 1)[0]
            differs = bool(was) and was != now
            told = f" (run.json records the problems of {was!r}, graded now: {now!r})" if differs else ""
            hint = (
                "; grade with the task options the run used ('bench run' prints its score command: --task-data, "
                "--limit, --per-family, --toy-seed, --toy-people)"
            )
            for it in its:
                rec, line = g.get(name, t.name, it.index)
                if rec is not None and rec.get("prompt_sha") and rec["prompt_sha"] != _prompt_sha(it.prompt):
                    raise ValueError(
                        f"{g.path}:{line}: the outputs of {name}/{it.index} were generated from another prompt "
                        f"than {it.source} gives{told}: their grades would use another problem's gold" + hint
                    )
            prob_file = run / "problems" / f"{name}.jsonl"
            if prob_file.exists():
                probs = prob_file.read_text(encoding="utf-8").splitlines()
                for it in its:
                    if not it.problem:
                        continue
                    if it.index < len(probs):
                        try:
                            was_problem = json.loads(probs[it.index])
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{prob_file}:{it.index + 1}: invalid JSON ({e.msg})") from e
                        if was_problem != json.loads(json.dumps(it.problem)):
                            rec, line = g.get(name, t.name, it.index)
                            raise ValueError(
                                _problem_mismatch(prob_file, it.index + 1, was_problem, it, rec, f"{g.path}:{line}")
                                or f"{prob_file}:{it.index + 1}: the outputs were generated for another problem "
                                f"than {it.source}{told}"
                                + hint
                            )
                    elif _graded_unverified(g, name, t.name, it.index) and any(
                        output_path(run, name, it.index, k).is_file() for k in range(n_s)
                    ):
                        raise ValueError(
                            f"{prob_file}: {len(probs)} problems, but {output_path(run, name, it.index)} exists: "
                            f"the problem its outputs were generated for is not recorded, so it cannot be graded "
                            f"against {it.source}{told}" + hint
                        )
            elif differs and not g.exists:
                raise ValueError(
                    f"{run / RUN_FILE}: the outputs of {name} were generated for the problems of {was!r}, graded now "
                    f"against {now!r}, and neither problems/{name}.jsonl nor {GEN_FILE} is left to tell whether they "
                    "are the same problems" + hint
                )


def _problem_mismatch(
    prob_file: Path, n: int, line_problem: Any, item: BenchItem, rec: dict | None, where: str
) -> str | None:
    """Why line ``n`` of ``prob_file`` (``line_problem``) differs from ``item``'s problem when the
    item's ``generations.jsonl`` record (at ``where``) tells: the line does not match the recorded
    ``problem_sha`` (the file was edited or is corrupt), or, in a record of an older run without one,
    the record's prompt is the item's (the prompt was checked before): the file was edited, or the
    task data's non-prompt fields (the gold) changed since the run. ``None`` when the line matches
    the recorded problem or no record tells: the items differ from the run's, the task options are
    the cause (H23-PROBMSG: an edited gold was advised to "grade with the task options the run used")."""
    if rec is None:
        return None
    fix = "restore it, or rerun 'bench run' with the same options and --out, which writes the run's problems again"
    recorded = rec.get("problem_sha")
    if recorded:
        if recorded == problem_sha(line_problem):
            return None
        return (
            f"{prob_file}:{n} was edited or is corrupt (it does not match the problem the run recorded, {where}): {fix}"
        )
    if rec.get("prompt_sha"):
        return (
            f"{prob_file}:{n} differs from the problem {item.source} gives, though the run recorded this prompt "
            f"({where}): either the file was edited or is corrupt ({fix}), or the task data changed since the "
            "run (grade with the data the run used)"
        )
    return None


def _sample_count(run: Path, info: RunInfo) -> int:
    if info.n_samples:
        return info.n_samples
    k = 1
    while (run / "samples" / str(k) / "outputs").is_dir():
        k += 1
    return k


def runs_without_generations(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The runs without a ``generations.jsonl`` (outputs of another generator, a paper layout): the
    only ones whose tokens a tokenizer counts and whose length limit ``max_new_tokens`` decides; a
    ``bench run`` folder records both for each output (:func:`score_outputs`)."""
    return [r for r in runs if not (Path(r.path) / GEN_FILE).exists()]


@checked_arguments
def length_option_problem(runs: Sequence[RunInfo], *, tokenizer: bool, max_new_tokens: bool) -> str | None:
    """Why a tokenizer / ``max_new_tokens`` given for ``runs`` would be ignored (they were, without a
    word, H8-BSf), else ``None``: ``"recorded"`` when every run records its outputs' tokens and
    length limit in ``generations.jsonl``; ``"no tokenizer"`` when ``max_new_tokens`` comes without
    a tokenizer (it decides which outputs hit the limit by their token counts)."""
    if not (tokenizer or max_new_tokens):
        return None
    if not runs_without_generations(runs):
        return "recorded"
    if max_new_tokens and not tokenizer:
        return "no tokenizer"
    return None


def check_score_arguments(outputs: object, items: object) -> None:
    """``TypeError`` unless ``outputs`` is a folder path (str or ``os.PathLike``) and ``items`` a
    mapping ``{task: [BenchItem, ...]}``: a list of items failed with "'list' object has no attribute
    'items'" and the two swapped with pathlib's "expected str, bytes or os.PathLike object, not dict"
    (H15-BSL, H15-BSS)."""
    usage = "score_outputs(outputs, items): the outputs folder first, then {task: [BenchItem, ...]}"
    if isinstance(outputs, Mapping) and isinstance(items, (str, os.PathLike)):
        raise TypeError(f"score_outputs: outputs and items are swapped (outputs is a dict, items a path): {usage}")
    if not isinstance(outputs, (str, os.PathLike)):
        raise TypeError(
            f"score_outputs: outputs must be the folder of the outputs (str or os.PathLike), got "
            f"{type(outputs).__name__}: {usage}"
        )
    if not isinstance(items, Mapping):
        listed = list(items) if isinstance(items, Sequence) and not isinstance(items, (str, bytes)) else None
        tasks = sorted({it.task for it in listed or [] if isinstance(it, BenchItem)})
        fix = f"write {{{tasks[0]!r}: items}}" if len(tasks) == 1 else "e.g. {'math': load('math')}"
        got = type(items).__name__ + (f" of {len(listed)} items" if listed is not None else "")
        raise TypeError(f"score_outputs: items must be {{task: [BenchItem, ...]}} ({fix}), got {got}: {usage}")
    for task, its in items.items():
        if not isinstance(task, str) or isinstance(its, (str, bytes)) or not isinstance(its, Sequence):
            raise TypeError(
                f"score_outputs: items must be {{task: [BenchItem, ...]}}, got the entry {task!r}: "
                f"{type(its).__name__}: {usage}"
            )


@checked_arguments
@own_path_checks("outputs")  # its own message names swapped arguments
def score_outputs(
    outputs: str | os.PathLike,
    items: Mapping[str, Sequence[BenchItem]],
    *,
    tokenizer: Any = None,
    max_new_tokens: int | None = None,
    require_think: bool = True,
    progress: bool = True,
    collapse_kw: Mapping[str, Any] | None = None,
) -> BenchScores:
    """Grade every output of every run under ``outputs`` for the tasks of ``items``
    (``{task: items}``). Outputs missing for an item are counted (``summary()['missing']``, the
    ``partial`` column of :meth:`BenchScores.accuracy_table`), never silently dropped; files in the
    scored task folders that are no item's output (another name, an index beyond the items, a
    sample beyond the run's count, a second folder of the same task) are listed in
    :attr:`BenchScores.ignored`. Foreign layouts: ``tokenizer`` counts tokens and, with
    ``max_new_tokens``, decides which outputs hit the length limit (else unknown). Both apply only
    to runs without ``generations.jsonl``: given where every run has one, or ``max_new_tokens``
    without ``tokenizer``, they raise ``ValueError`` (:func:`length_option_problem`).

    A run folder of ``bench run`` is checked against its ``generations.jsonl``: an output it
    records as generated that is gone (the outputs folder emptied or removed), or whose bytes
    differ from the hash it records (files swapped or edited), raises ``ValueError`` with the
    counts and the first files, before anything is graded; so do outputs generated for other
    problems than ``items`` (another prompt hash in ``generations.jsonl``, another line in
    ``problems/<task>.jsonl``, or another source in ``run.json`` when neither file is left). An
    output file the run's ``generations.jsonl`` has no record for (the item was cut off before it
    finished, e.g. a torn last line, or the file was added by hand) is not graded: it is counted
    missing and listed in :attr:`BenchScores.unrecorded`; a torn last line is named ``file:line``
    in :attr:`BenchScores.torn`. A ``bench run`` folder whose ``generations.jsonl`` is gone (its
    ``run.json`` still there) raises ``ValueError`` before anything is graded
    (:func:`_check_generations_kept`); so does a ``generations.jsonl`` record edited since (its
    ``record_sha256`` does not match it: :func:`~lrm_interp.evaluation.bench_run.read_generations`,
    H23-GENMETA), and a line of ``problems/<task>.jsonl`` that no longer matches the problem hash
    the run recorded is named edited or corrupt (H23-PROBMSG).

    ``outputs`` that is not a path, ``items`` that is not a ``{task: items}`` mapping (a plain list
    of items) and the two swapped raise ``TypeError`` naming the expected kinds and the order
    (:func:`check_score_arguments`, H15-BSL/BSS)."""
    check_score_arguments(outputs, items)
    samples: list[SampleScore] = []
    ignored: list[str] = []
    unrecorded: list[str] = []
    missing: dict[tuple[str, str], int] = {}
    runs = find_runs(outputs)
    _check_generations_kept(runs)  # before anything is read or graded (H22-BENCHGEN)
    problem = length_option_problem(runs, tokenizer=tokenizer is not None, max_new_tokens=max_new_tokens is not None)
    if problem == "recorded":
        raise ValueError(
            "tokenizer / max_new_tokens apply only to outputs without generations.jsonl: every run under "
            f"{outputs} records its outputs' tokens and length limit there ({', '.join(r.name for r in runs)}); "
            "leave them out"
        )
    if problem == "no tokenizer":
        raise ValueError(
            "max_new_tokens needs a tokenizer: it decides which outputs hit the limit by counting their tokens "
            "(pass the tokenizer the outputs were generated with)"
        )
    gens = {info.path: _generations(Path(info.path)) for info in runs}
    _check_record_settings(runs, gens)  # a record of another run's settings mixed in (H24-MIXREC)
    _check_same_items(runs, items, gens)
    _check_recorded_outputs(runs, items)
    ckw = dict(collapse_kw or {})
    for info in runs:
        run = Path(info.path)
        gen = gens[info.path]
        n_s = _sample_count(run, info)
        for task, its in items.items():
            t = get_task(task)
            folder = _task_folder(run, t.name)
            miss = 0
            for it in tqdm(its, desc=f"score {info.name} × {t.name}", unit="item", disable=not progress, leave=False):
                rec, _ = gen.get(folder or t.name, t.name, it.index)
                for k in range(n_s):
                    p = output_path(run, folder, it.index, k) if folder else None
                    if p is None or not p.exists():
                        miss += 1
                        continue
                    if gen.exists and (rec is None or k >= len(rec.get("samples") or [])):
                        # 'bench run' writes an item's record after its files: without one the item never
                        # finished (a rerun generates it anew) or the file is not the run's
                        unrecorded.append(str(p))
                        miss += 1
                        continue
                    text = p.read_text(encoding="utf-8")
                    g = t.grader(it, text, require_think=require_think)
                    n_tok, hit = None, None
                    if rec is not None and k < len(rec.get("samples", [])):
                        s = rec["samples"][k]
                        n_tok, hit = s.get("n_tokens"), s.get("finish_reason") == "length"
                    elif tokenizer is not None:
                        n_tok = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                        hit = None if max_new_tokens is None else n_tok >= int(max_new_tokens)
                    c = detect_collapse(text, hit, **ckw)
                    samples.append(
                        SampleScore(
                            info.name,
                            t.name,
                            it.index,
                            k,
                            g.score,
                            g.answered,
                            g.extracted,
                            g.reason,
                            g.em,
                            g.f1,
                            n_tok,
                            word_count(text),
                            hit,
                            c.collapsed,
                            c.period if c.collapsed else 0,
                            backtracking_cues(text),
                        )
                    )
            missing[(info.name, t.name)] = miss
            ignored += _ignored_files(run, t.name, folder, {it.index for it in its}, n_s)
    if not samples:
        # nothing to grade (tasks never generated, or no output the run recorded): an all-empty table
        # would replace an earlier good one (bench score refreshes <outputs>/scores), H5-H8
        expected = sum(len(its) for its in items.values()) * sum(_sample_count(Path(i.path), i) for i in runs)
        why = f" ({len(unrecorded)} without a record in generations.jsonl)" if unrecorded else ""
        raise ValueError(
            f"{outputs}: nothing to grade for {', '.join(get_task(t).name for t in items)}: 0 of {expected} "
            f"outputs exist{why} in {len(runs)} run(s) ({', '.join(i.name for i in runs[:5])}"
            f"{', ...' if len(runs) > 5 else ''}); check --tasks against the tasks the run generated"
        )
    return BenchScores(
        tuple(samples),
        tuple(runs),
        missing,
        tuple(get_task(t).name for t in items),
        tuple(dict.fromkeys(ignored)),
        unrecorded=tuple(unrecorded),
        torn=tuple(g.torn for g in gens.values() if g.torn),
        outputs=str(Path(outputs).resolve()),
        outputs_fingerprint=outputs_fingerprint(outputs, runs),
    )


def _mean(x) -> float:
    x = [v for v in x if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(x) / len(x) if x else math.nan


#: every file :meth:`BenchScores.write_tables` may write (``bench score`` refuses an ``--out``
#: holding one unless ``--overwrite``)
SCORE_FILES = (
    "score_files.json",
    "scores.csv",
    "summary.csv",
    "accuracy.csv",
    "collapse_points.csv",
    "tables.md",
    "accuracy_vs_bits.png",
    "accuracy_vs_sparsity.png",
    "short_vs_long.png",
)

#: the record of what one :meth:`BenchScores.write_tables` wrote (``{"format", "files": [names]}``,
#: and ``outputs`` / ``outputs_fingerprint``: the outputs folder scored, :func:`scores_of_other_outputs`):
#: the next score into that folder removes only the plots it lists (H7-BS4: a plot of the same name
#: that no score wrote is the user's, kept)
SCORE_RECORD = "score_files.json"
SCORE_RECORD_FORMAT = "lrm_interp.bench_score_files/1"


def _recorded_plots(out: Path) -> set[str]:
    """The plots (:data:`SCORE_FILES` ``*.png``) an earlier score recorded writing into ``out``
    (empty without a readable record)."""
    try:
        doc = json.loads((out / SCORE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(doc, dict) or doc.get("format") != SCORE_RECORD_FORMAT or not isinstance(doc.get("files"), list):
        return set()
    return {n for n in doc["files"] if isinstance(n, str) and n in SCORE_FILES and n.endswith(".png")}


def _holds_files(out: Path) -> bool:
    """Whether ``out`` is anything but absent or an empty folder."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return True
    try:
        return out.is_dir() and any(out.iterdir())
    except OSError:
        return True


@dataclass(frozen=True)
class BenchScores:
    """Graded outputs of one or more runs; tables derive from :meth:`to_dataframe`."""

    samples: tuple[SampleScore, ...]
    runs: tuple[RunInfo, ...] = ()
    missing: dict = field(default_factory=dict, compare=False)
    tasks: tuple[str, ...] = ()
    #: files in the scored task folders that are no output of a scored item (paths), not graded
    ignored: tuple[str, ...] = field(default=(), compare=False)
    #: output files of a ``bench run`` folder its ``generations.jsonl`` has no record for (paths):
    #: not graded, counted in ``missing``
    unrecorded: tuple[str, ...] = field(default=(), compare=False)
    #: ``file:line`` of each ``generations.jsonl`` whose last line is torn (a write cut by a kill)
    torn: tuple[str, ...] = field(default=(), compare=False)
    #: the graded outputs folder (resolved) and its :func:`outputs_fingerprint`, recorded in
    #: ``score_files.json`` (``None``: not known, not recorded)
    outputs: str | None = field(default=None, compare=False)
    outputs_fingerprint: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        n_missing = sum(self.missing.values()) if self.missing else 0
        return (
            f"BenchScores({len(self.samples)} graded outputs, {len(self.runs)} runs "
            f"[{', '.join(r.name for r in self.runs[:4])}{', …' if len(self.runs) > 4 else ''}], "
            f"tasks {list(self.tasks)}, {n_missing} missing"
            + (f", {len(self.ignored)} ignored files" if self.ignored else "")
            + (f", {len(self.unrecorded)} unrecorded outputs not graded" if self.unrecorded else "")
            + (f", torn last line {', '.join(self.torn)}" if self.torn else "")
            + ")"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the accuracy table (models × tasks + Avg) when there are runs, else the counts."""
        from lrm_interp.display import box, html_table

        if not self.runs or not self.samples:
            return box(repr(self))
        t = self.accuracy_table()
        return box(
            repr(self),
            html_table(list(t.columns), t.astype(object).values.tolist(), caption="pass@1 % (MuSiQue: EM / F1)"),
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per graded output (the fields of :class:`SampleScore`)."""
        cols = list(SampleScore.__dataclass_fields__)
        return pd.DataFrame([asdict(s) for s in self.samples], columns=cols)

    def summary(self) -> pd.DataFrame:
        """One row per model × task (module docs); scores in percent."""
        df = self.to_dataframe()
        rows = []
        for run in self.runs:
            for task in self.tasks:
                d = df[(df.model == run.name) & (df.task == task)]
                row: dict[str, Any] = {
                    "model": run.name,
                    "task": task,
                    **_compression_cols(run),
                    "items": int(d["index"].nunique()),
                    "outputs": len(d),
                    "missing": int(self.missing.get((run.name, task), 0)),
                }
                per_item = d.groupby("index")["score"].mean()
                row["pass@1"] = 100 * per_item.mean() if len(per_item) else math.nan
                row["ci95_low"], row["ci95_high"] = _wilson_percent(d)
                if TASKS[task].metric == "em_f1":
                    row["EM"] = 100 * d.groupby("index")["em"].mean().mean() if len(d) else math.nan
                    row["F1"] = 100 * d.groupby("index")["f1"].mean().mean() if len(d) else math.nan
                row["unanswered"] = int((~d["answered"]).sum()) if len(d) else 0
                row["mean_tokens"] = _mean(d["n_tokens"].tolist())
                row["mean_words"] = d["words"].mean() if len(d) else math.nan
                row["collapse_rate"] = 100 * d["collapsed"].mean() if len(d) else math.nan
                fail = d[d["score"] < 1]
                known = fail["hit_limit"].dropna()
                row["failures_at_limit"] = 100 * known.astype(bool).mean() if len(known) else math.nan
                row["cues_per_output"] = d["cues"].mean() if len(d) else math.nan
                for f in SPLITS:
                    sp = short_long_split(d["words"].tolist(), d["score"].tolist(), f)
                    pc = int(round(f * 100))
                    row[f"short{pc}"] = 100 * sp.short_score
                    row[f"long{pc}"] = 100 * sp.long_score
                    row[f"len_ratio{pc}"] = sp.ratio
                rows.append(row)
        return pd.DataFrame(rows)

    def partial(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Runs with outputs missing: ``{model: {task: (missing, expected)}}`` (expected = graded +
        missing outputs). Their pass@1 and Avg are over the outputs that exist only."""
        s = self.summary()
        out: dict[str, dict[str, tuple[int, int]]] = {}
        for r in s.itertuples(index=False):
            miss = int(r.missing)
            if miss:
                out.setdefault(str(r.model), {})[str(r.task)] = (miss, miss + int(r.outputs))
        return out

    def accuracy_table(self) -> pd.DataFrame:
        """Rows = models, columns = tasks (pass@1 %, MuSiQue as ``EM / F1``) + the paper's Avg; when
        some variant misses outputs, a ``partial`` column too: empty for a complete variant, else which
        tasks miss how many (``"math 3/10 missing"``): its scores cover only the outputs that exist
        (:meth:`partial`)."""
        s = self.summary()
        part = self.partial()
        out = []
        for run in self.runs:
            d = s[s.model == run.name].set_index("task")
            row: dict[str, Any] = {"model": run.name}
            acc = {}
            for t in self.tasks:
                if TASKS[t].metric == "em_f1":
                    row[t] = f"{d.loc[t, 'EM']:.1f} / {d.loc[t, 'F1']:.1f}"
                else:
                    row[t] = round(float(d.loc[t, "pass@1"]), 1)
                    acc[t] = float(d.loc[t, "pass@1"])
            avg = paper_average(acc)
            row["Avg"] = None if avg is None else round(avg, 1)
            if part:  # the column only when some variant misses outputs: complete tables stay as they were
                row["partial"] = ", ".join(f"{t} {m}/{n} missing" for t, (m, n) in part.get(run.name, {}).items())
            out.append(row)
        return pd.DataFrame(out)

    def collapse_points(self, threshold: float = 10.0) -> pd.DataFrame:
        """Per base model × method × task: the first sparsity (increasing) or bit width (decreasing)
        whose collapse rate reaches ``threshold`` % (``None``: never), and the rate there."""
        s = self.summary()
        rows = []
        for (base, method), grp in s.groupby(["base", "method"]):
            if method == "none":
                continue
            key = "sparsity" if grp["sparsity"].notna().any() else "bits"
            for task, g in grp.groupby("task"):
                g = g.sort_values(key, ascending=(key == "sparsity"))
                hit = g[g["collapse_rate"] >= threshold]
                first = hit.iloc[0] if len(hit) else None
                rows.append(
                    {
                        "base": base,
                        "method": method,
                        "task": task,
                        "axis": key,
                        "collapse_starts_at": None if first is None else first[key],
                        "rate_there": None if first is None else first["collapse_rate"],
                        "max_rate": g["collapse_rate"].max(),
                    }
                )
        return pd.DataFrame(rows)

    @checked_arguments
    def write_tables(self, out_dir: str | os.PathLike, *, plots: bool = True, replace: bool = True) -> list[Path]:
        """``scores.csv`` (per output), ``summary.csv``, ``accuracy.csv``, ``collapse_points.csv``,
        ``tables.md`` (accuracy, test-time compute, collapse) and, with ``plots``,
        ``accuracy_vs_bits.png``, ``accuracy_vs_sparsity.png``, ``short_vs_long.png`` (each when it
        has something to show), and :data:`SCORE_RECORD` listing them. A plot an earlier score
        recorded writing into ``out_dir`` and not written now is removed: it would sit beside tables
        it does not match; a plot of the same name that no score recorded (the user's) is kept.

        The files are published together (they were written one by one, so two scores into one
        folder could leave a mix, H8-CC): all are written into a hidden folder first, which then
        becomes ``out_dir`` (a new folder: one rename) or whose files are moved into ``out_dir``
        in one go, the record last, with Ctrl-C and SIGTERM held back meanwhile.

        ``replace=False``: ``out_dir`` must not hold anything when the tables are published (it may
        be absent or an empty folder): a folder with files, there from the start or made by
        another run meanwhile, is kept, and ``FileExistsError`` names it.

        Whatever ``replace`` says, a folder holding a finished result of another command (an
        attribution's ``scores.csv`` shares a name with these tables; a ``toy train`` model folder), or
        lying inside one, is refused before anything is written
        (:func:`~lrm_interp._io.refuse_other_result_folder`, :class:`~lrm_interp._io.OtherResultError`,
        H10-BSW), as ``Attribution.write_tables`` refuses it; so is a folder holding ``bench run``
        folders (:func:`refuse_scores_into_runs`, ``ValueError``, H13-BSO): the run could no longer
        be resumed or extended."""
        if not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
            raise TypeError(f"out_dir must be a folder path (str or os.PathLike), got {out_dir!r}")
        out = Path(out_dir)
        refuse_other_result_folder(out, "bench score", "out_dir")
        refuse_scores_into_runs(out, "out_dir")
        if not replace and _holds_files(out):
            raise FileExistsError(errno.EEXIST, "holds files already: not replaced (replace=False)", str(out))
        new = not replace or not (out.exists() or out.is_symlink())
        stage = new_stage(out, beside=new)
        try:
            names = self._write_into(stage, plots)
            if new:
                try:
                    publish_dir(stage, out, replace=False)
                    return [out / n for n in names]
                except FileExistsError:
                    if not replace:
                        raise
                    # replace=True: a folder that appeared meanwhile is filled like an existing one
                    out.mkdir(parents=True, exist_ok=True)
                    inside = new_stage(out, beside=False)
                    for n in names:
                        os.replace(stage / n, inside / n)
                    shutil.rmtree(stage, ignore_errors=True)
                    stage = inside
            earlier = _recorded_plots(out)
            move_together(stage, out, names)
            for name in sorted(earlier):  # a plot of an earlier score in this folder no longer matches these tables
                p = out / name
                if name not in names and p.is_file() and not p.is_symlink():
                    p.unlink()
            return [out / n for n in names]
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _write_into(self, folder: Path, plots: bool) -> list[str]:
        """Write every table (and plot) into the empty ``folder``; their names, :data:`SCORE_RECORD` last."""
        s, acc, cp = self.summary(), self.accuracy_table(), self.collapse_points()
        files = []
        for name, df in (
            ("scores.csv", self.to_dataframe()),
            ("summary.csv", s),
            ("accuracy.csv", acc),
            ("collapse_points.csv", cp),
        ):
            atomic_write_text(folder / name, df.to_csv(index=False))
            files.append(name)
        atomic_write_text(folder / "tables.md", self.markdown())
        files.append("tables.md")
        if plots:
            files += [p.name for p in _plots(s, folder)]
        record: dict[str, Any] = {"format": SCORE_RECORD_FORMAT, "files": list(files)}
        if self.outputs is not None:  # whose scores these are: the default folder's refresh (H24-SCOREDEF)
            record.update(outputs=self.outputs, outputs_fingerprint=self.outputs_fingerprint)
        atomic_write_text(folder / SCORE_RECORD, json.dumps(record, indent=1))
        return files + [SCORE_RECORD]

    def markdown(self) -> str:
        """The tables as Markdown: accuracy (+ Avg), test-time compute and collapse."""
        s = self.summary()
        acc = self.accuracy_table()
        avg_tasks = [t for t in self.tasks if TASKS[t].in_avg]
        parts = [
            "## Accuracy (pass@1, %; MuSiQue EM / F1)",
            "",
            f"Avg = mean of {', '.join(avg_tasks) or 'no accuracy task'} (the paper's Avg: AIME, FOLIO, Temporal).",
            "",
            _md(acc),
            "",
        ]
        ttc_cols = [
            "model",
            "task",
            "mean_tokens",
            "mean_words",
            "short30",
            "long30",
            "len_ratio30",
            "short20",
            "long20",
            "len_ratio20",
        ]
        parts += [
            "## Test-time compute: shortest vs longest 30 % / 20 % of outputs (score %, length ratio "
            "long/short in words)",
            "",
            _md(s[ttc_cols].round(2)),
            "",
        ]
        col_cols = [
            "model",
            "task",
            "outputs",
            "missing",
            "unanswered",
            "collapse_rate",
            "failures_at_limit",
            "cues_per_output",
        ]
        parts += [
            "## Collapse, length limit, backtracking cues",
            "",
            "collapse_rate: % of outputs that hit the length limit repeating one chunk; failures_at_limit: "
            "% of wrong outputs that hit the limit; unanswered: outputs with no extractable answer "
            "(scored wrong).",
            "",
            _md(s[col_cols].round(2)),
            "",
        ]
        cp = self.collapse_points()
        if len(cp):
            parts += ["## Where collapse starts (first setting with a collapse rate >= 10 %)", "", _md(cp.round(2)), ""]
        return "\n".join(parts)


def _wilson_percent(d: pd.DataFrame) -> tuple[float, float]:
    """95 % Wilson interval (percent) of pass@1 when every item has one output graded 0 or 1
    (greedy runs); NaN otherwise (several samples per item are not independent trials)."""
    if not len(d) or d.groupby("index").size().max() != 1 or not set(d["score"].unique()) <= {0.0, 1.0}:
        return math.nan, math.nan
    from lrm_interp.evaluation.intervals import wilson_interval

    lo, hi = wilson_interval(int(d["score"].sum()), len(d))
    return 100 * lo, 100 * hi


def _compression_cols(run: RunInfo) -> dict:
    c = run.compression
    return {
        "base": run.base,
        "method": c.get("method", "none"),
        "bits": c.get("bits"),
        "sparsity": c.get("sparsity"),
        "pattern": c.get("pattern"),
        "symmetric": c.get("symmetric") if c.get("bits") is not None else None,
    }


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    cols = list(df.columns)
    fmt = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)  # noqa: E731 - a one-line cell formatter
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _plots(s: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for axis, fname, methods in (
        ("bits", "accuracy_vs_bits.png", ("rtn", "gptq")),
        ("sparsity", "accuracy_vs_sparsity.png", ("magnitude", "sparsegpt", "wanda")),
    ):
        d = s[s["method"].isin(methods)]
        if d.empty:
            continue
        base = s[s["method"] == "none"]
        tasks = list(dict.fromkeys(s["task"]))
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for (b, m), g in d[d.task == task].groupby(["base", "method"]):
                g = g.dropna(subset=[axis])
                if axis == "sparsity" and g["pattern"].notna().any():
                    g = g[g["pattern"].isna() | (g["pattern"] == "unstructured")]
                x, y = list(g[axis]), list(g["pass@1"])
                ref = base[(base.base == b) & (base.task == task)]
                if len(ref):
                    x, y = x + [0.0 if axis == "sparsity" else 16.0], y + [float(ref["pass@1"].iloc[0])]
                order = sorted(range(len(x)), key=lambda i: x[i])
                ax.plot([x[i] for i in order], [y[i] for i in order], marker="o", label=f"{b} {m}")
            ax.set_title(task)
            ax.set_xlabel("bits per weight" if axis == "bits" else "sparsity")
            ax.set_ylabel("pass@1 (%)")
            ax.set_ylim(-3, 103)
            ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(atomic_save_figure(fig, out / fname, dpi=110))
        plt.close(fig)
    if len(s):
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(s)), 3.2))
        labels = [f"{m}\n{t}" for m, t in zip(s["model"], s["task"])]
        xs = range(len(s))
        ax.bar([x - 0.2 for x in xs], s["short30"], width=0.4, label="shortest 30 %")
        ax.bar([x + 0.2 for x in xs], s["long30"], width=0.4, label="longest 30 %")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_ylabel("score (%)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(atomic_save_figure(fig, out / "short_vs_long.png", dpi=110))
        plt.close(fig)
    return files


__all__ = [
    "score_outputs",
    "check_score_arguments",
    "BenchScores",
    "SampleScore",
    "RunInfo",
    "find_runs",
    "SPLITS",
    "runs_without_generations",
    "outputs_fingerprint",
    "scores_of_other_outputs",
    "length_option_problem",
    "stage_folder",
    "move_together",
]
