"""Graders: the final answer is read after ``</think>`` and compared with the gold answer.

=============  =====================================================================================
task           extraction and comparison
=============  =====================================================================================
AIME           ``math_verify.parse`` of the answer part (``\\boxed{}`` first, then the last
               expression), ``math_verify.verify`` against the gold integer
               (``\\boxed{033}`` = 33, ``\\frac{1}{2}`` = 0.5) — the grader of lighteval / open-r1;
               a gold with letters (never an AIME gold: the loader refuses those) is compared
               as text, since math-verify reads ``four`` and ``ruof`` as the same product
FOLIO          a label ``True`` / ``False`` / ``Uncertain`` (``Unknown``, "cannot be determined"
               → Uncertain): a ``\\boxed{}`` label, else the label after "answer / conclusion is",
               else the last label word
Temporal       an option letter: ``\\boxed{}``, else the letter after "answer is", else the last
               ``(X)``, else "option X"; only letters of the item's options count
MuSiQue        the short answer (``\\boxed{}``, else the text after "answer is", else the last
               line); SQuAD normalisation (lower case, no punctuation, no articles a/an/the,
               single spaces), exact match and token F1, each the maximum over the answer
               and its aliases
toy families   :func:`lrm_interp.data.toy_tasks.extract_answer` (``The answer is X.``), exact
=============  =====================================================================================

An output without ``</think>`` never finished its reasoning: with ``require_think=True``
(default) it is *unanswered* (``Grade.extracted is None``, reason ``"no </think>"``), scored
as wrong and counted. Outputs from generators that strip the reasoning: ``require_think=False``
grades the whole text.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from lrm_interp.checks import checked_arguments
from lrm_interp.data.benchmarks.items import BenchItem, Grade
from lrm_interp.data.toy_tasks import extract_answer as toy_extract_answer

THINK_CLOSE = "</think>"
NO_THINK = "no </think>"
NO_ANSWER = "no answer found"


@checked_arguments
def answer_region(text: str, *, require_think: bool = True) -> str | None:
    """The text after the last ``</think>``; without one: ``None`` (``require_think``) or all of it."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return None if require_think else text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched; ``None`` if none."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for s in reversed(starts):
        depth, i = 1, s
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[s : i - 1].strip()
    return None


def _strip_markup(s: str) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("**", "").replace("__", "").replace("$", "")
    return s.strip().strip("*_`\"' ").strip()


# ----------------------------------------------------------------------------- AIME (math-verify)
@checked_arguments
def grade_math(item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    """AIME: ``math_verify.verify(parse(gold), parse(answer part))``."""
    from math_verify import parse, verify

    region = answer_region(text, require_think=require_think)
    if region is None:
        return Grade(0.0, None, reason=NO_THINK)
    pred = parse(region)
    if not pred:
        return Grade(0.0, None, reason=NO_ANSWER)
    gold = parse(item.gold if "$" in item.gold or "\\" in item.gold else f"${item.gold}$")
    if not gold:
        raise ValueError(f"{item.id}: gold answer {item.gold!r} is not an expression math-verify can read")
    if _symbolic(gold[0]):
        # math-verify reads a word as a product of symbols (four = f·o·u·r = r·u·o·f): a gold
        # with free symbols is compared as text, so no anagram or reordering counts as correct
        ok = _plain(str(pred[-1])) == _plain(item.gold)
        return Grade(1.0 if ok else 0.0, str(pred[-1]))
    ok = bool(verify(gold, pred))
    return Grade(1.0 if ok else 0.0, str(pred[0]))


def _symbolic(expr: object) -> bool:
    """Whether a math-verify parse has free symbols (letters), i.e. is no number."""
    return bool(getattr(expr, "free_symbols", None))


def _plain(s: str) -> str:
    return " ".join(_strip_markup(s).replace("\\boxed", "").strip("{}$ ").split()).lower()


# ----------------------------------------------------------------------------- FOLIO
FOLIO_LABELS = ("True", "False", "Uncertain")
_LABEL_WORD = r"(true|false|uncertain|unknown|undetermined|indeterminate|cannot be determined)"
_FOLIO_CANON = {
    "true": "True",
    "false": "False",
    "uncertain": "Uncertain",
    "unknown": "Uncertain",
    "undetermined": "Uncertain",
    "indeterminate": "Uncertain",
    "cannot be determined": "Uncertain",
}


def canonical_folio_label(label: object) -> str | None:
    """``"true"`` → ``"True"``, ``"Unknown"`` → ``"Uncertain"``; ``None`` for anything else."""
    return _FOLIO_CANON.get(str(label).strip().strip(".").lower())


def extract_folio_label(region: str) -> str | None:
    """The True / False / Uncertain label of an answer part (module table), or ``None``."""
    boxed = last_boxed(region)
    if boxed is not None:
        m = re.search(r"\b" + _LABEL_WORD + r"\b", _strip_markup(boxed), re.I)
        if m:
            return _FOLIO_CANON[m.group(1).lower()]
    lead = re.findall(
        r"(?:answer|conclusion|label)\s*(?:is|:|=)?\s*(?:\*\*|:|\s)*(?:that\s+it\s+is\s+)?"
        + r"\**\s*"
        + _LABEL_WORD
        + r"\b",
        region,
        re.I,
    )
    if lead:
        return _FOLIO_CANON[lead[-1].lower()]
    words = re.findall(r"\b" + _LABEL_WORD + r"\b", region, re.I)
    return _FOLIO_CANON[words[-1].lower()] if words else None


@checked_arguments
def grade_folio(item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    region = answer_region(text, require_think=require_think)
    if region is None:
        return Grade(0.0, None, reason=NO_THINK)
    lab = extract_folio_label(region)
    if lab is None:
        return Grade(0.0, None, reason=NO_ANSWER)
    return Grade(1.0 if lab == item.gold else 0.0, lab)


# ----------------------------------------------------------------------------- Temporal (letters)
def option_letters(n_options: int | None) -> str:
    return string.ascii_uppercase[: n_options or 4]


def extract_option_letter(region: str, n_options: int | None = 4) -> str | None:
    """The option letter of an answer part (module table), restricted to the first
    ``n_options`` letters; ``None`` when none is found."""
    letters = option_letters(n_options)
    cls = f"[{letters}{letters.lower()}]"
    boxed = last_boxed(region)
    if boxed is not None:
        m = re.fullmatch(rf"\(?\s*({cls})\s*\)?(?:[\s.:].*)?", _strip_markup(boxed), re.S)
        if m:
            return m.group(1).upper()
    lead = re.findall(
        rf"answer\s*(?:is|:|=)?\s*(?:\*\*|:|\s)*(?:option\s+)?\(?\s*([{letters}])\s*\)?(?![A-Za-z])", region, re.I
    )
    if lead:
        return lead[-1].upper()
    paren = re.findall(rf"\(\s*([{letters}])\s*\)", region)
    if paren:
        return paren[-1]
    opt = re.findall(rf"\boption\s+\(?({cls})\)?(?![A-Za-z])", region, re.I)
    if opt:
        return opt[-1].upper()
    lone = re.findall(rf"^\s*\**\s*({cls})\s*[.)]?\s*\**\s*$", region, re.M)
    return lone[-1].upper() if lone else None


@checked_arguments
def grade_option(item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    region = answer_region(text, require_think=require_think)
    if region is None:
        return Grade(0.0, None, reason=NO_THINK)
    letter = extract_option_letter(region, item.n_options)
    if letter is None:
        return Grade(0.0, None, reason=NO_ANSWER)
    return Grade(1.0 if letter == item.gold else 0.0, letter)


# ----------------------------------------------------------------------------- MuSiQue (EM / F1)
def squad_normalize(s: str) -> str:
    """SQuAD answer normalisation: lower case, punctuation removed, articles removed, spaces collapsed."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised strings (SQuAD); two empty answers give 1, one empty 0."""
    p, g = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_em(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def extract_short_answer(region: str) -> str | None:
    """The short answer of an answer part (module table), markup stripped; ``None`` if empty."""
    boxed = last_boxed(region)
    if boxed is not None and _strip_markup(boxed):
        return _strip_markup(boxed)
    lead = re.findall(r"(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+)", region, re.I)
    if lead:
        ans = _strip_markup(lead[-1].strip())
        ans = re.split(r"(?<=[^A-Z.]\w)\.\s|\.$", ans)[0].strip()
        if ans:
            return ans
    lines = [_strip_markup(ln) for ln in region.splitlines() if _strip_markup(ln)]
    return lines[-1].rstrip(".") if lines else None


def best_em_f1(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """``(max EM, max F1)`` of ``prediction`` over ``golds``. A gold that normalises to nothing
    (``""``, ``"the"``) is no answer: it is left out, and an empty normalised prediction scores 0,
    never a match of two empty strings (H7-W7)."""
    golds = [g for g in golds if squad_normalize(g)]
    if not golds or not squad_normalize(prediction):
        return 0.0, 0.0
    return max(squad_em(prediction, g) for g in golds), max(squad_f1(prediction, g) for g in golds)


@checked_arguments
def grade_qa(item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    region = answer_region(text, require_think=require_think)
    if region is None:
        return Grade(0.0, None, em=0.0, f1=0.0, reason=NO_THINK)
    ans = extract_short_answer(region)
    if ans is None:
        return Grade(0.0, None, em=0.0, f1=0.0, reason=NO_ANSWER)
    em, f1 = best_em_f1(ans, (item.gold, *item.aliases))
    return Grade(em, ans, em=em, f1=f1)


# ----------------------------------------------------------------------------- toy families
@checked_arguments
def grade_toy(item: BenchItem, text: str, *, require_think: bool = True) -> Grade:
    """Toy families (``math`` / ``logic`` / ``knowledge``): ``The answer is X.`` after ``</think>``."""
    region = answer_region(text, require_think=require_think)
    if region is None:
        return Grade(0.0, None, reason=NO_THINK)
    ans = toy_extract_answer(item.task, region)
    if ans is None:
        return Grade(0.0, None, reason=NO_ANSWER)
    return Grade(1.0 if ans == item.gold else 0.0, ans)


__all__ = [
    "answer_region",
    "last_boxed",
    "grade_math",
    "canonical_folio_label",
    "extract_folio_label",
    "grade_folio",
    "extract_option_letter",
    "grade_option",
    "squad_normalize",
    "squad_f1",
    "squad_em",
    "extract_short_answer",
    "best_em_f1",
    "grade_qa",
    "grade_toy",
    "FOLIO_LABELS",
    "option_letters",
]
