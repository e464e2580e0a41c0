"""The benchmark registry: one :class:`Task` per benchmark (loader, grader, metric kind),
:func:`register_task`, and :func:`load` / :func:`grade`.

Tasks register themselves: the paper's four below, the toy families in
:mod:`lrm_interp.data.benchmarks.toy` (loaded by the package ``lrm_interp.data.benchmarks``,
whose ``__init__`` runs before any of its modules is used). A name (or alias) registered twice
raises, unless it is the same task again (a module imported anew).

================  =========================================================  =====================
task              file schema                                                prompt (method.md §1)
================  =========================================================  =====================
``aime``          AIME 2024: ``Problem`` / ``Answer`` (or lower case), JSON,  ``problem + "\\n<think>\\n"``
                  JSONL or CSV; answers integers 0..999 (``"033"`` = 33)
``folio``         ``premises`` (a string, or a list of strings as FOLIO v1   FOLIO instruction ...
                  ships them: joined by newlines), ``conclusion`` (a
                  string), ``label``
``temporal``      BBH ``{"examples": [{"input", "target": "(A)"}]}``, or      Temporal instruction +
                  BIG-bench ``temporal_sequences/task.json``                  input
                  (``{"examples": [{"input", "target_scores"}]}``: options
                  (A)… in ``target_scores`` order appended as BBH does)
``musique``       ``question``, ``answer``, ``answer_aliases``; closed book:  question + brevity
                  ``paragraphs`` ignored                                      suffix
``math`` /        the toy families (:mod:`lrm_interp.data.toy_tasks`):        question +
``logic`` /       generated, no file                                          ``"\\n<think>\\n"``
``knowledge``
================  =========================================================  =====================

Prompt texts come from :mod:`lrm_interp.data.prompts` (character for character the paper's).
"Avg" (paper): the mean accuracy of the tasks with ``in_avg`` — AIME, FOLIO, Temporal (and the
toy analogues ``math``, ``logic``); MuSiQue / ``knowledge`` (knowledge recall) are reported apart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lrm_interp.checks import checked_arguments, user_stacklevel
from lrm_interp.data.benchmarks import grading
from lrm_interp.data.benchmarks.items import BenchItem, BenchmarkFormatError, Grade
from lrm_interp.data.benchmarks.readers import SUFFIXES, field_value, read_records, text_value
from lrm_interp.data.prompts import aime_prompt, folio_prompt, musique_prompt, temporal_prompt

#: default toy problems: per family, and the held-out seed of docs/toy_model.md
TOY_N, TOY_SEED = 30, 2


@checked_arguments
@dataclass(frozen=True)
class Task:
    """One benchmark. ``metric``: ``"accuracy"`` or ``"em_f1"``; ``files``: file stems looked
    for in a data folder (with ``.json`` / ``.jsonl`` / ``.csv``); ``needs_data``: ``False`` for
    generated (toy) tasks. ``loader(path)`` reads a file; a generated task's loader is called
    ``loader(None, n=..., seed=...)``. ``grader(item, text, *, require_think=...)``."""

    name: str
    description: str
    metric: str
    in_avg: bool
    needs_data: bool
    files: tuple[str, ...]
    loader: Callable[..., list[BenchItem]]
    grader: Callable[..., Grade]


# ----------------------------------------------------------------------------- loaders
def _item(task: str, k: int, loc: str, prompt: str, gold: str, problem: dict, **kw) -> BenchItem:
    return BenchItem(f"{task}/{k}", task, k, prompt, gold, problem=problem, source=loc, **kw)


AIME_RANGE = (0, 999)


def aime_answer(loc: str, raw: object) -> str:
    """An AIME gold answer as its canonical integer string (``"033"`` → ``"33"``); anything but an
    integer in 0..999 (a word, a fraction, a list) raises :class:`BenchmarkFormatError` naming
    ``loc`` (file and record)."""
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float) and raw.is_integer():
        value = int(raw)
    elif isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw):
        value = int(raw)
    lo, hi = AIME_RANGE
    if value is None or not lo <= value <= hi:
        raise BenchmarkFormatError(f"{loc}: answer {raw!r} is not an AIME answer (an integer {lo}..{hi})")
    return str(value)


@checked_arguments
def load_aime(path: Path) -> list[BenchItem]:
    out = []
    for k, (loc, rec) in enumerate(read_records(path)):
        prob = text_value(loc, rec, "Problem", "problem", "question")
        ans = aime_answer(loc, field_value(loc, rec, "Answer", "answer"))
        problem = {"problem": prob, "answer": ans}
        if rec.get("ID", rec.get("id")) is not None:
            problem["source_id"] = str(rec.get("ID", rec.get("id")))
        out.append(_item("aime", k, loc, aime_prompt(problem), ans, problem))
    return out


@checked_arguments
def load_folio(path: Path) -> list[BenchItem]:
    out = []
    for k, (loc, rec) in enumerate(read_records(path)):
        prem = field_value(loc, rec, "premises")
        if isinstance(prem, list):  # FOLIO v1 ships premises as a list of sentences: one per line
            bad = [i for i, x in enumerate(prem) if not isinstance(x, str)]
            if bad or not prem:
                what = f"{type(prem[bad[0]]).__name__} at position {bad[0]}" if bad else "nothing"
                raise BenchmarkFormatError(
                    f"{loc}: field 'premises' must be a string or a non-empty list of strings, got a list with {what}"
                )
            prem = "\n".join(x.strip() for x in prem)
        elif not isinstance(prem, str):
            raise BenchmarkFormatError(
                f"{loc}: field 'premises' must be a string or a list of strings, got {type(prem).__name__}"
            )
        concl = text_value(loc, rec, "conclusion")
        raw = field_value(loc, rec, "label")
        label = grading.canonical_folio_label(raw) if isinstance(raw, str) else None
        if label is None:
            raise BenchmarkFormatError(f"{loc}: label {raw!r} is not one of True / False / Uncertain (Unknown)")
        problem = {"premises": str(prem), "conclusion": concl, "label": label}
        out.append(_item("folio", k, loc, folio_prompt(problem), label, problem))
    return out


_TARGET = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*$")


def _check_options(loc: str, found: list[str]) -> None:
    """The option letters a Temporal (BBH) input lists at the start of its lines (``(A) 1pm``) must
    be ``(A), (B), …`` once each, in order: a record with no options, or one letter twice, was
    accepted and graded against a guessed option count. ``BenchmarkFormatError`` naming ``loc``."""
    if not found:
        raise BenchmarkFormatError(
            f"{loc}: the input lists no options (lines starting '(A) …', '(B) …'): a multiple-choice record "
            "needs its options in the input; add them or leave the record out"
        )
    twice = next((x for i, x in enumerate(found) if x in found[:i]), None)
    if twice is not None:
        raise BenchmarkFormatError(
            f"{loc}: option ({twice}) listed twice in the input; each option letter names one answer"
        )
    want = grading.option_letters(len(found))
    if list(found) != list(want):
        raise BenchmarkFormatError(
            f"{loc}: the input lists options {', '.join(f'({x})' for x in found)}, not "
            f"{', '.join(f'({x})' for x in want)} in order; letter the options from (A)"
        )


@checked_arguments
def load_temporal(path: Path) -> list[BenchItem]:
    out = []
    for k, (loc, rec) in enumerate(read_records(path)):
        text = text_value(loc, rec, "input", "question")
        if "target_scores" in rec:  # BIG-bench task.json: options from target_scores, BBH's layout
            scores = rec["target_scores"]
            if not isinstance(scores, dict) or not scores:
                raise BenchmarkFormatError(f"{loc}: target_scores must be a non-empty object of option: score")
            opts = list(scores)
            best = [o for o in opts if scores[o] == max(scores.values())]
            if len(best) != 1 or max(scores.values()) <= 0:
                raise BenchmarkFormatError(
                    f"{loc}: target_scores needs exactly one best (positive) option, got {scores}"
                )
            letters = grading.option_letters(len(opts))
            text = text.rstrip() + "\nOptions:\n" + "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(opts))
            gold, n_opt = letters[opts.index(best[0])], len(opts)
        else:
            raw = text_value(loc, rec, "target", "answer")
            m = _TARGET.match(raw)
            if not m:
                raise BenchmarkFormatError(f"{loc}: target {raw!r} is not an option letter like '(A)'")
            gold = m.group(1).upper()
            found = re.findall(r"^\(([A-Z])\)", text, re.M)
            _check_options(loc, found)  # none, one twice, or out of order: accepted and graded before (H8-TMP1)
            n_opt = len(found)
            if gold not in grading.option_letters(n_opt):
                raise BenchmarkFormatError(f"{loc}: target ({gold}) is not among the {n_opt} options of the input")
        problem = {"input": text, "target": f"({gold})"}
        out.append(_item("temporal", k, loc, temporal_prompt(problem), gold, problem, n_options=n_opt))
    return out


@checked_arguments
def load_musique(path: Path) -> list[BenchItem]:
    out = []
    for k, (loc, rec) in enumerate(read_records(path)):
        q = text_value(loc, rec, "question")
        ans = text_value(loc, rec, "answer", numbers=True).strip()
        aliases = rec.get("answer_aliases") or []
        if isinstance(aliases, str):
            aliases = [aliases]
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise BenchmarkFormatError(f"{loc}: answer_aliases must be a list of strings, got {aliases!r}")
        # a gold answer that SQuAD normalisation empties ("", " ", "the") matched every empty answer (H7-W7)
        if not grading.squad_normalize(ans):
            raise BenchmarkFormatError(
                f"{loc}: field 'answer' {ans!r} is empty after answer normalisation (case, punctuation, articles "
                "a/an/the removed): no answer could be graded against it"
            )
        empty = next((x for x in aliases if not grading.squad_normalize(x)), None)
        if empty is not None:
            raise BenchmarkFormatError(
                f"{loc}: answer_aliases entry {empty!r} is empty after answer normalisation (case, punctuation, "
                "articles a/an/the removed): an empty answer would be graded correct; remove it"
            )
        problem = {"question": q, "answer": ans, "answer_aliases": list(aliases)}
        if rec.get("id") is not None:
            problem["source_id"] = str(rec["id"])
        out.append(_item("musique", k, loc, musique_prompt(problem), ans, problem, aliases=tuple(aliases)))
    return out


#: every registered task by name, in registration order (:func:`register_task`)
TASKS: dict[str, Task] = {}

#: other accepted spellings of task names (lower case)
TASK_ALIASES: dict[str, str] = {}


def _same_task(a: Task, b: Task) -> bool:
    """``b`` is ``a`` again: the same fields, loader and grader by qualified name (so a module
    imported anew may register its tasks again)."""

    def key(t: Task) -> tuple:
        fn = tuple(
            f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', repr(f))}" for f in (t.loader, t.grader)
        )
        return (t.name, t.description, t.metric, t.in_avg, t.needs_data, t.files, fn)

    return a is b or key(a) == key(b)


def register_task(task: Task, *, aliases: Sequence[str] = ()) -> Task:
    """Add ``task`` (and other spellings ``aliases``) to :data:`TASKS`; returns ``task``.

    Raises:
        ValueError: ``task.name`` or an alias is taken by another task (a name or alias that
            is already this task, e.g. registered again by a re-imported module, is fine), or
            the metric is not ``"accuracy"`` / ``"em_f1"``.
    """
    name = task.name.strip().lower()
    if name != task.name or not name:
        raise ValueError(f"task names are non-empty lower case without spaces around, got {task.name!r}")
    if task.metric not in ("accuracy", "em_f1"):
        raise ValueError(f"task {name!r}: metric must be 'accuracy' or 'em_f1', got {task.metric!r}")
    old = TASKS.get(name)
    if old is not None and not _same_task(old, task):
        raise ValueError(
            f"benchmark task {name!r} is registered twice ({old.description!r} and "
            f"{task.description!r}); pick another name"
        )
    if name in TASK_ALIASES:
        raise ValueError(f"benchmark task {name!r} is already an alias of {TASK_ALIASES[name]!r}")
    keys = [a.strip().lower() for a in aliases]
    for a in keys:
        owner = a if a in TASKS else TASK_ALIASES.get(a, name)
        if owner != name:
            raise ValueError(f"alias {a!r} of task {name!r} is taken by task {owner!r}")
    TASKS[name] = task
    TASK_ALIASES.update({a: name for a in keys if a != name})
    return task


register_task(
    Task(
        "aime",
        "AIME 2024 (integer answers, math-verify)",
        "accuracy",
        True,
        True,
        ("aime", "aime_2024", "aime2024", "AIME_2024"),
        load_aime,
        grading.grade_math,
    ),
    aliases=("aime_2024", "aime2024", "aime24"),
)
register_task(
    Task(
        "folio",
        "FOLIO (True / False / Uncertain)",
        "accuracy",
        True,
        True,
        ("folio", "folio_validation", "FOLIO"),
        load_folio,
        grading.grade_folio,
    ),
    aliases=("folio_validation",),
)
register_task(
    Task(
        "temporal",
        "BBH / BIG-bench Temporal Sequences (option letter)",
        "accuracy",
        True,
        True,
        ("temporal", "temporal_sequences", "bbh_temporal_sequences", "task"),
        load_temporal,
        grading.grade_option,
    ),
    aliases=("temporal_sequences", "bbh_temporal_sequences", "temporal-sequences", "bigbench_temporal_sequences"),
)
register_task(
    Task(
        "musique",
        "MuSiQue, closed book (EM / F1)",
        "em_f1",
        False,
        True,
        ("musique", "musique100", "MuSiQue"),
        load_musique,
        grading.grade_qa,
    ),
    aliases=("musique100", "musique_ans"),
)


def get_task(name: str) -> Task:
    """The :class:`Task` named ``name`` (case-insensitive, aliases accepted)."""
    key = name.strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise KeyError(f"unknown benchmark task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[key]


@checked_arguments
def find_task_file(task: str, data: str | os.PathLike) -> Path:
    """The file of ``task`` in the folder ``data`` (``<stem>.json|jsonl|csv`` for the task's
    stems, also ``<stem>/task.json``), or ``data`` itself when it is a file. Two such files (``aime.jsonl``
    and ``aime.csv``) raise :class:`BenchmarkFormatError` naming both: which one is meant is unsaid."""
    t = get_task(task)
    d = Path(data)
    if d.is_file():
        return d
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such benchmark file or folder")
    tried: list[str] = []
    found: list[Path] = []
    for stem in t.files:
        for suf in SUFFIXES:
            for cand in (d / f"{stem}{suf}", d / stem / f"task{suf}"):
                tried.append(cand.relative_to(d).as_posix())
                if cand.is_file() and not any(_same_file(cand, f) for f in found):
                    found.append(cand)
    if len(found) > 1:  # the first one used to be read, the others ignored silently (H6-H9)
        raise BenchmarkFormatError(
            f"{d}: {len(found)} files for task {t.name!r} ({', '.join(f.relative_to(d).as_posix() for f in found)}): "
            "ambiguous; keep one of them in the folder, or give the file itself"
        )
    if found:
        return found[0]
    raise FileNotFoundError(f"{d}: no file for task {t.name!r} (looked for {', '.join(dict.fromkeys(tried))})")


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names (``aime.csv`` and ``AIME.csv`` on a case-insensitive disk, a link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@checked_arguments
def load(
    task: str,
    path: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    per_family: int = TOY_N,
    toy_seed: int = TOY_SEED,
    toy_people: int | None = None,
    toy_n: int | None = None,
) -> list[BenchItem]:
    """The items of ``task`` from ``path`` (a file, or a folder searched with :func:`find_task_file`).

    Toy tasks need no path (``per_family`` problems of ``toy_seed``, over the fact table of
    ``toy_people`` people: ``None`` = the shipped toy model's; the distilled SmolLM2 reasoner learned
    64, docs/reasoner.md). ``limit``: the first items only
    (``>= 1``; ``None``: all). Every record is validated; a bad one raises
    :class:`BenchmarkFormatError` naming file and record.

    ``toy_n``: the old name of ``per_family`` (the CLI's ``--per-family``), deprecated; it warns
    (``DeprecationWarning``) and is refused together with ``per_family``.
    """
    if toy_n is not None:
        import warnings

        if per_family != TOY_N:
            raise TypeError("load(): give per_family only (toy_n is its deprecated old name)")
        warnings.warn(
            "load(toy_n=...) is deprecated; use per_family=... (same meaning)",
            DeprecationWarning,
            stacklevel=user_stacklevel(),
        )
        per_family = toy_n
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 (or None for all items), got {limit!r}")
    t = get_task(task)
    if not t.needs_data and (isinstance(per_family, bool) or not isinstance(per_family, int) or per_family < 1):
        raise ValueError(f"per_family must be an integer >= 1, got {per_family!r}")
    if t.needs_data:
        if path is None:
            raise ValueError(f"task {t.name!r} needs a data file (schema: see lrm_interp.data.benchmarks.tasks)")
        items = t.loader(find_task_file(t.name, path))
        if not items:
            raise BenchmarkFormatError(f"{find_task_file(t.name, path)}: no records for task {t.name!r}")
    else:
        items = t.loader(None, n=per_family, seed=toy_seed, **({} if toy_people is None else {"n_people": toy_people}))
    return items if limit is None else items[:limit]


@checked_arguments
def grade(task: str | Task, item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    """Grade one output ``text`` (the response after the prompt) of ``item``; see :mod:`.grading`."""
    t = task if isinstance(task, Task) else get_task(task)
    return t.grader(item, text, require_think=require_think)


def paper_average(scores: dict[str, float]) -> float | None:
    """The paper's "Avg": mean of the accuracies of the ``in_avg`` tasks among ``scores``
    (``{task: accuracy}``); ``None`` when there are none."""
    vals = [v for k, v in scores.items() if k in TASKS and TASKS[k].in_avg and v is not None]
    return sum(vals) / len(vals) if vals else None


def task_names(names: Sequence[str]) -> list[str]:
    """Canonical names of ``names`` (checked), in order, without duplicates."""
    return list(dict.fromkeys(get_task(n).name for n in names))
