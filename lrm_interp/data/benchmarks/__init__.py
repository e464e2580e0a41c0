"""Benchmarks of the seed paper's v1 (method.md §5) and the toy families: task loaders with the
paper's prompts and gold answers, and graders.

``load(task, path)`` → :class:`BenchItem` list (``.id``, ``.prompt``, ``.gold``);
``grade(task, item, text)`` → :class:`Grade` (``.score``, ``.extracted``, ``.em``, ``.f1``).
Tasks and file schemas: :mod:`lrm_interp.data.benchmarks.tasks` (the registry:
:func:`register_task`); the toy families: :mod:`lrm_interp.data.benchmarks.toy`; graders:
:mod:`lrm_interp.data.benchmarks.grading`.

These are the benchmark *tasks* (what is asked and how an answer is graded; no model). Imported
publicly as :mod:`lrm_interp.benchmarks` (a re-export); running and scoring models on them is
:mod:`lrm_interp.evaluation` (``bench_run``, ``bench_suite``, ``bench_score``); ``benchmarks/``
at the repository root holds the package's own speed / agreement scripts (docs/architecture.md,
"Names: one per concept").
"""

from lrm_interp.data.benchmarks.items import BenchItem, BenchmarkFormatError, Grade
from lrm_interp.data.benchmarks.tasks import (
    TASK_ALIASES,
    TASKS,
    Task,
    find_task_file,
    get_task,
    grade,
    load,
    paper_average,
    register_task,
    task_names,
)

# isort: split
from lrm_interp.data.benchmarks import toy  # noqa: F401 - imported to register the toy families (after the paper's tasks)

__all__ = [
    "BenchItem",
    "BenchmarkFormatError",
    "Grade",
    "TASKS",
    "TASK_ALIASES",
    "Task",
    "find_task_file",
    "get_task",
    "grade",
    "load",
    "paper_average",
    "register_task",
    "task_names",
]
