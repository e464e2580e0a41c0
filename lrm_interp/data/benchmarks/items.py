"""What a benchmark is made of: :class:`BenchItem` (one problem with its paper prompt and gold
answer), :class:`Grade` (one graded output) and :class:`BenchmarkFormatError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class BenchmarkFormatError(ValueError):
    """A benchmark file or record does not follow its schema; the message names the file and record."""


@dataclass(frozen=True)
class BenchItem:
    """One benchmark problem.

    ``id``: ``"<task>/<index>"`` (``index`` = position in the loaded file, 0-based: the ``<j>`` of
    the paper layout ``outputs/<task>/<j>.txt``); ``prompt``: the paper's prompt (no chat
    template, ``<think>`` opened); ``gold``: the gold answer as a string (AIME integer, FOLIO
    ``True``/``False``/``Uncertain``, Temporal option letter ``A``–``D``, MuSiQue answer text,
    toy answer); ``aliases``: further accepted answers (MuSiQue ``answer_aliases``);
    ``problem``: the record in the schema :mod:`lrm_interp.data.prompts` rebuilds the prompt
    from (written to ``problems/<task>.jsonl`` by a run); ``source``: ``file:record``.
    """

    id: str
    task: str
    index: int
    prompt: str
    gold: str
    aliases: tuple[str, ...] = ()
    problem: dict = field(default_factory=dict, compare=False, repr=False, hash=False)
    source: str = ""
    n_options: int | None = None


@dataclass(frozen=True)
class Grade:
    """One graded output.

    ``score``: 1.0 / 0.0 for the accuracy tasks; exact match (0/1) for MuSiQue, whose token
    F1 is ``f1``. ``extracted``: the final answer found in the output, ``None`` when nothing
    could be extracted (``answered=False``: counted as wrong, and counted); ``reason`` says why
    (``"no </think>"``, ``"no answer found"``).
    """

    score: float
    extracted: str | None
    em: float | None = None
    f1: float | None = None
    reason: str | None = None

    @property
    def correct(self) -> bool:
        return self.score >= 1.0

    @property
    def answered(self) -> bool:
        return self.extracted is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "extracted": self.extracted,
            "em": self.em,
            "f1": self.f1,
            "reason": self.reason,
            "answered": self.answered,
        }
