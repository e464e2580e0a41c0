"""Behaviour annotators: text of a reasoning trace → the paper's markup (public entry point).

================================  ==============================================================
name                              what it is
================================  ==============================================================
:class:`R1RuleAnnotator`          offline rules for real R1-style text
                                  (:mod:`lrm_interp.data.annotators.r1`)
:class:`RuleAnnotator`            the first, keyword-only rule set (:data:`DEFAULT_RULES`); it
                                  matches the toy model's phrasing, which the toy tasks use
:class:`LinearAnnotator`          logistic regression fitted on any annotated set
                                  (:mod:`lrm_interp.data.annotators.trained`); the shipped one,
                                  fitted on the seed paper's real R1-Distill responses with
                                  GPT-4o's labels, is the default (``"trained"``,
                                  :func:`shipped_annotator`)
:class:`LLMAnnotator`             the paper's path: Venhoff et al.'s prompt through any
                                  ``complete(prompt) -> str``, e.g. :class:`OpenAIClient`
================================  ==============================================================

All emit ``["label"]text["end-section"]`` so their output goes through the same parser and
aligner (:mod:`lrm_interp.data.markup`, :mod:`lrm_interp.data.align`) as real annotation
files; :func:`annotate_dataset` runs one over a set of outputs with a report, and
:func:`annotation_agreement` compares two annotations. docs/annotation.md says which to use.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lrm_interp.data.annotators.agreement import annotation_agreement, format_agreement
from lrm_interp.data.annotators.base import Annotator, annotate_response, markup, thinking_part
from lrm_interp.data.annotators.driver import AnnotationRun, annotate_dataset, load_outputs
from lrm_interp.data.annotators.llm import (
    LLM_PROMPT,
    VENHOFF_PROMPT,
    LLMAnnotator,
    LLMRequestError,
    OpenAIClient,
    split_for_annotation,
)
from lrm_interp.data.annotators.r1 import RULE_TABLE, R1RuleAnnotator
from lrm_interp.data.annotators.segment import Sentence, split_sentences
from lrm_interp.data.annotators.trained import LinearAnnotator, cross_validate
from lrm_interp.data.traces import BEHAVIORS

_SENT = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")

#: (label, regex) in priority order; the first rule that matches a sentence labels it.
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (
        "backtracking",
        r"^\s*(wait|actually|hold on|no,|oops|alternatively)\b|that (is|was) (wrong|not right)"
        r"|let me (go back|redo|reconsider)",
    ),
    ("uncertainty-estimation", r"\b(not sure|unsure|i think|maybe|perhaps|might be|hmm)\b"),
    ("example-testing", r"\b(let me (check|test|verify|try)|for example|for instance|suppose|double[- ]check)\b"),
    ("adding-knowledge", r"\b(recall that|we know|it is known|by definition|remember that)\b"),
    ("initializing", r"^\s*(okay|ok|alright|so i need|i need to|first, let me understand|the problem)\b"),
    ("deduction", r"\b(so|therefore|thus|hence)\b"),
)


@dataclass
class RuleAnnotator:
    """Sentence-level, first-matching-rule annotator; unmatched sentences are ``deduction``.

    The original keyword rules: they match the toy model's phrasing (the toy tasks and
    :func:`lrm_interp.toy.evaluate.collect_traces` use them); for real R1-style text use
    :class:`R1RuleAnnotator`.
    """

    rules: Sequence[tuple[str, str]] = DEFAULT_RULES
    default: str = "deduction"
    _compiled: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        for label, _ in self.rules:
            if label not in BEHAVIORS:
                raise ValueError(f"rule label {label!r} is not one of {BEHAVIORS}")
        self._compiled = [(label, re.compile(rx, re.I)) for label, rx in self.rules]

    def label(self, sentence: str) -> str:
        for label, rx in self._compiled:
            if rx.search(sentence):
                return label
        return self.default

    def label_sentences(self, thinking_text: str) -> list[tuple[Sentence, str]]:
        """``(sentence, label)`` for each sentence (``[^.!?\\n]+`` up to its end punctuation)."""
        out: list[tuple[Sentence, str]] = []
        for m in _SENT.finditer(thinking_text):
            raw = m.group(0)
            text = raw.strip()
            if text:
                start = m.start() + (len(raw) - len(raw.lstrip()))
                out.append((Sentence(start, start + len(text), text, 0, len(out)), self.label(text)))
        return out

    def annotate(self, thinking_text: str) -> str:
        """The paper's markup, one segment per sentence."""
        return markup([(label, s.text) for s, label in self.label_sentences(thinking_text)])

    def describe(self) -> dict:
        return {"name": "keyword", "rules": len(self.rules)}


#: Names ``lrm-interp annotate --annotator`` accepts besides a trained annotator file.
ANNOTATOR_NAMES: tuple[str, ...] = ("trained", "rules", "keyword", "llm")
#: The default annotator of ``lrm-interp annotate``.
DEFAULT_ANNOTATOR = "trained"
#: The shipped trained annotator: fitted on the 60 development responses of the seed paper's
#: release (R1-Distill-Llama-8B, GPT-4o's labels), ``lrm-interp annotate train --gold
#: ../shared/data/r1_gpt4o_dev --region gold`` (its file's info holds the cross-validation).
SHIPPED_ANNOTATOR = Path(__file__).resolve().parent.parent / "assets" / "annotators" / "r1_gpt4o.safetensors"


def shipped_annotator() -> LinearAnnotator:
    """The shipped :class:`LinearAnnotator` fitted on real GPT-4o labels (:data:`SHIPPED_ANNOTATOR`)."""
    if not SHIPPED_ANNOTATOR.is_file():
        raise FileNotFoundError(
            f"{SHIPPED_ANNOTATOR}: the shipped annotator is missing from this install "
            "(reinstall lrm_interp, or use --annotator rules)"
        )
    return LinearAnnotator.load(SHIPPED_ANNOTATOR)


def build_annotator(name: str, **llm_options) -> Annotator:
    """``"trained"`` → the shipped :class:`LinearAnnotator` (:func:`shipped_annotator`);
    ``"rules"`` → :class:`R1RuleAnnotator`; ``"keyword"`` → :class:`RuleAnnotator`;
    ``"llm"`` → :class:`LLMAnnotator` over :class:`OpenAIClient` (``llm_options``: the client's
    arguments plus ``prompt_template`` and ``max_chunk_chars``); a path to a file written by
    :meth:`LinearAnnotator.save` → that annotator."""
    if name == "trained":
        return shipped_annotator()
    if name == "rules":
        return R1RuleAnnotator()
    if name == "keyword":
        return RuleAnnotator()
    if name == "llm":
        opts = dict(llm_options)
        ann_kw = {k: opts.pop(k) for k in ("prompt_template", "max_chunk_chars") if k in opts}
        if ann_kw.get("prompt_template") is None:
            ann_kw.pop("prompt_template", None)
        return LLMAnnotator(OpenAIClient(**opts), **ann_kw)
    p = Path(name).expanduser()
    if p.is_file():
        return LinearAnnotator.load(p)
    raise ValueError(f"annotator {name!r}: not one of {', '.join(ANNOTATOR_NAMES)} and not a trained annotator file")


__all__ = [
    "Annotator",
    "RuleAnnotator",
    "DEFAULT_RULES",
    "R1RuleAnnotator",
    "RULE_TABLE",
    "LinearAnnotator",
    "cross_validate",
    "LLMAnnotator",
    "OpenAIClient",
    "LLMRequestError",
    "LLM_PROMPT",
    "VENHOFF_PROMPT",
    "split_for_annotation",
    "annotate_response",
    "thinking_part",
    "markup",
    "annotation_agreement",
    "format_agreement",
    "annotate_dataset",
    "load_outputs",
    "AnnotationRun",
    "split_sentences",
    "build_annotator",
    "ANNOTATOR_NAMES",
    "DEFAULT_ANNOTATOR",
    "SHIPPED_ANNOTATOR",
    "shipped_annotator",
]
