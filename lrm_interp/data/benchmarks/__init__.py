"""Benchmarks of the seed paper's v1 (method.md §5) and the toy families: task loaders with the
paper's prompts and gold answers, and graders.

``load(task, path)`` → :class:`BenchItem` list (``.id``, ``.prompt``, ``.gold``);
``grade(task, item, text)`` → :class:`Grade` (``.score``, ``.extracted``, ``.em``, ``.f1``).
Tasks and file schemas: :mod:`lrm_interp.data.benchmarks.tasks`; graders:
:mod:`lrm_interp.data.benchmarks.grading`.
"""

from lrm_interp.data.benchmarks.items import BenchItem, BenchmarkFormatError, Grade
from lrm_interp.data.benchmarks.tasks import (TASKS, Task, find_task_file, get_task, grade, load, paper_average,
                                              task_names)

__all__ = ["BenchItem", "BenchmarkFormatError", "Grade", "TASKS", "Task", "find_task_file", "get_task", "grade",
           "load", "paper_average", "task_names"]
