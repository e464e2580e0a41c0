"""Per-dataset prompt builders of the paper (method.md §1): no chat template, ``<think>`` opened.

The texts follow the seed paper's code (compute_u.py) character for character, because the
response was generated after exactly this prefix and the token positions depend on it.

Problem dicts (first key found is used):

=================  ==========================================  =============================
dataset            keys                                        gold answer key (metadata)
=================  ==========================================  =============================
AIME               ``problem`` (or ``Problem``, ``question``)  ``answer`` / ``Answer``
FOLIO              ``premises`` (str, or list joined by        ``label``
                   newlines), ``conclusion``
Temporal Sequ.     ``input`` (BBH item)                        ``target``
MuSiQue            ``question``                                ``answer`` (+ ``answer_aliases``)
=================  ==========================================  =============================

``build_prompt(dataset, problem)`` finds the builder by name, case-insensitively, through
:data:`DATASET_ALIASES` (``AIME_2024``, ``temporal_sequences``, ``MuSiQue100``...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

FOLIO_INSTRUCTION = (
    "Use logical deductions to determine whether the provided conclusion is true, false, "
    "or uncertain based on premise. Consider all relevant information to reach a logical "
    "conclusion.\n\n"
)
TEMPORAL_INSTRUCTION = (
    "Use the timeline provided and answer step by step. Finally give the index "
    "(the letter) of the actual correct answer.\n"
)
MUSIQUE_SUFFIX = " Final answer of this question should be in as fewer number of words as possible."
THINK = "<think>\n"


def _get(problem: Mapping, *keys: str) -> str:
    for k in keys:
        if k in problem and problem[k] is not None:
            v = problem[k]
            return "\n".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    raise KeyError(f"problem has none of the keys {list(keys)}; it has {sorted(problem)}")


def aime_prompt(p: Mapping) -> str:
    """AIME: ``{"problem"}`` → ``problem + "\\n<think>\\n"``."""
    return _get(p, "problem", "Problem", "question") + "\n" + THINK


def folio_prompt(p: Mapping) -> str:
    """FOLIO: ``{"premises", "conclusion"}`` → instruction, starred premise and conclusion blocks,
    ``"<think>\\n"`` right after the closing stars (no newline, as in the paper's code)."""
    return (
        FOLIO_INSTRUCTION + "*******\nPremise: " + _get(p, "premises") + "\n*******\n\n*******\n"
        "Conclusion: " + _get(p, "conclusion") + "\n*******" + THINK
    )


def temporal_prompt(p: Mapping) -> str:
    """Temporal Sequences: ``{"input"}`` → instruction + input + ``"\\n<think>\\n"``."""
    return TEMPORAL_INSTRUCTION + _get(p, "input", "question") + "\n" + THINK


def musique_prompt(p: Mapping) -> str:
    """MuSiQue (closed book): ``{"question"}`` → question + brevity suffix + ``"\\n<think>\\n"``."""
    return _get(p, "question") + MUSIQUE_SUFFIX + "\n" + THINK


PROMPT_BUILDERS: dict[str, Callable[[Mapping], str]] = {
    "aime": aime_prompt,
    "folio": folio_prompt,
    "temporal": temporal_prompt,
    "musique": musique_prompt,
}

#: Accepted dataset names (lower-cased) -> builder key.
DATASET_ALIASES: dict[str, str] = {
    "aime_2024": "aime",
    "aime2024": "aime",
    "aime-2024": "aime",
    "aime24": "aime",
    "temporal_sequences": "temporal",
    "temporal-sequences": "temporal",
    "temporal sequences": "temporal",
    "bbh_temporal_sequences": "temporal",
    "temporal_sequence": "temporal",
    "musique100": "musique",
    "musique_100": "musique",
    "musique_ans": "musique",
    "yale-nlp/folio": "folio",
    "folio_validation": "folio",
}

#: Where each builder finds the gold answer in a problem dict.
GOLD_KEYS: dict[str, tuple[str, ...]] = {
    "aime": ("answer", "Answer", "gold_answer"),
    "folio": ("label", "answer", "gold_answer"),
    "temporal": ("target", "answer", "gold_answer"),
    "musique": ("answer", "gold_answer"),
}


def canonical_dataset(name: str) -> str | None:
    """Builder key for a dataset name (``"AIME_2024"`` → ``"aime"``), or ``None``."""
    k = name.strip().lower()
    k = DATASET_ALIASES.get(k, k)
    return k if k in PROMPT_BUILDERS else None


def get_prompt_builder(dataset: str) -> Callable[[Mapping], str]:
    key = canonical_dataset(dataset)
    if key is None:
        raise KeyError(
            f"no prompt builder for dataset {dataset!r}; known: {sorted(PROMPT_BUILDERS)} "
            f"and aliases {sorted(DATASET_ALIASES)}"
        )
    return PROMPT_BUILDERS[key]


def build_prompt(dataset: str, problem: Mapping) -> str:
    """The paper's prompt for ``problem`` of ``dataset`` (see the module table for keys)."""
    return get_prompt_builder(dataset)(problem)


def gold_answer(dataset: str, problem: Mapping):
    """The problem's gold answer, or ``None`` when it has none of the known keys."""
    key = canonical_dataset(dataset)
    for k in GOLD_KEYS.get(key or "", ("answer", "gold_answer", "label", "target")):
        if k in problem:
            return problem[k]
    return None
