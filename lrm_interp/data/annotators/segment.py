"""Sentence and paragraph segmentation of R1-style thinking text.

R1-Distill traces mix prose with LaTeX (``\\( x \\)``, ``$x$``, ``\\[ ... \\]``, ``$$ ... $$``,
``\\begin{align} ... \\end{align}``), lists, code fences and bare equations; the paper's
annotator (GPT-4o) additionally collapses their line breaks. A sentence ends

1. at a blank line (a paragraph break);
2. at a single line break, unless the line ends with ``:`` (a list or display equation
   introduced by the sentence stays with it, until a blank line or a line that is not a list
   item / equation), the next line is a display equation and the line does not end a
   sentence ("the area is" + ``\\[ ... \\]``), or the next line continues the sentence in
   lower case;
3. after ``.``, ``!``, ``?`` (and closing quotes/brackets) followed by white space and a
   sentence start (capital letter, digit, ``(``, ``\\``, ``$``, a quote), except after an
   abbreviation (``e.g.``, ``i.e.``, ``vs.``, ``Dr.``, ``approx.``…), an initial (``D.``), a list
   enumerator at the start of a line (``1.``) or inside math;
4. where collapsed line breaks glued sentences: ``= 5.Wait,`` (a period followed directly by
   a capitalised discourse marker) and after a display equation followed by a capitalised
   word (``\\] So the area``).

Math, code fences and inline code are atomic: nothing inside them ends a sentence. Offsets
always refer to the original text; a sentence's ``text`` is ``text[start:end]`` with outer
white space excluded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Words after which a period does not end a sentence (compared lower-cased, without the dot).
ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "e.g",
        "i.e",
        "etc",
        "vs",
        "cf",
        "approx",
        "dr",
        "mr",
        "mrs",
        "ms",
        "prof",
        "st",
        "jr",
        "sr",
        "fig",
        "eq",
        "eqs",
        "resp",
        "viz",
        "al",
        "inc",
        "ltd",
        "mt",
        "vol",
        "u.s",
        "a.m",
        "p.m",
    }
)

#: Capitalised discourse markers that start a sentence even when a collapsed line break glued
#: them to the previous one (``... = 5.Wait, ...``).
GLUE_MARKERS = (
    "Wait",
    "Hmm",
    "So",
    "But",
    "Alternatively",
    "Actually",
    "Let",
    "Okay",
    "OK",
    "Alright",
    "Therefore",
    "Thus",
    "Hence",
    "Now",
    "First",
    "Then",
    "Hold",
    "Oh",
    "No",
    "Yes",
    "Check",
    "Maybe",
    "Perhaps",
    "I",
    "The",
    "This",
    "That",
    "Since",
    "If",
    "For",
    "And",
)

# the alternatives and their comments are a table: the formatter keeps it aligned
# fmt: off
_PROTECTED = re.compile(
    r"```.*?(?:```|\Z)"                     # fenced code (to the end if unclosed)
    r"|`[^`\n]+`"                           # inline code
    r"|\$\$.+?\$\$"                         # $$ display $$
    r"|\\\[.+?\\\]"                         # \[ display \]
    r"|\\begin\{([a-zA-Z*]+)\}.*?\\end\{\1\}"  # environments
    r"|\\\(.+?\\\)"                         # \( inline \)
    r"|(?<![\\$])\$(?!\s)[^$\n]+?(?<!\s)\$(?!\d)",  # $inline$ (not a price like "$5 and $6")
    re.S)
# fmt: on
_DISPLAY_START = re.compile(r"```|\$\$|\\\[|\\begin\{")
_LIST_ITEM = re.compile(
    r"[ \t]*(?:[-*•+][ \t]+|\d{1,3}[.)][ \t]+|\(?[A-Za-z]\)[ \t]+|\(\d{1,3}\)[ \t]+"
    r"|(?:Step|Case|Option)[ \t]+\w+[:.)])"
)
_ENUM_AT_LINE_START = re.compile(r"(?:^|\n)[ \t]*(?:\d{1,3}|[A-Za-z])\.$")
_SENT_START = re.compile(r"""["'“‘(\[]*(?:[A-Z0-9\\$]|\*\*)""")
_CLOSERS = "\"'”’)]*"
_INITIAL = re.compile(r"[A-Z][a-z]+ [A-Z]$")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Sentence:
    """One sentence of a text: ``text == source[start:end]``; ``paragraph`` counts blank-line
    separated paragraphs from 0; ``index`` is the sentence's position in the text."""

    start: int
    end: int
    text: str
    paragraph: int
    index: int


def protected_regions(text: str) -> list[tuple[int, int]]:
    """Sorted, disjoint ``(start, end)`` of math, code fences and inline code in ``text``."""
    return [(m.start(), m.end()) for m in _PROTECTED.finditer(text)]


def _inside(regions: list[tuple[int, int]], pos: int) -> tuple[int, int] | None:
    lo, hi = 0, len(regions)
    while lo < hi:
        mid = (lo + hi) // 2
        a, b = regions[mid]
        if pos < a:
            hi = mid
        elif pos >= b:
            lo = mid + 1
        else:
            return a, b
    return None


def _prev_word(text: str, dot: int) -> str:
    m = re.search(r"([A-Za-z][A-Za-z.]*)$", text[max(0, dot - 20) : dot])
    return m.group(1).lower().rstrip(".") if m else ""


def _glued(text: str, dot: int, rest: str) -> bool:
    """A period directly followed by a capitalised discourse marker (no space), after a word,
    a number or closing math: two sentences whose line break the annotator collapsed."""
    before = text[dot - 1 : dot]
    if not (before.isalnum() or before in ")}$"):
        return False
    m = re.match(r"[A-Z][A-Za-z]*", rest)
    return m is not None and m.group(0) in GLUE_MARKERS and len(m.group(0)) > 1


def _starts_display(line: str, region_starts: set[int], line_start: int) -> bool:
    """The line begins with a display equation or a code fence (a protected region starts there)."""
    stripped = line.lstrip()
    return (line_start + len(line) - len(stripped)) in region_starts and bool(_DISPLAY_START.match(stripped))


def _line_is_block(line: str, region_starts: set[int], line_start: int) -> bool:
    """A line that belongs to a block introduced by a colon: a list item or a display equation."""
    return bool(line.strip()) and (bool(_LIST_ITEM.match(line)) or _starts_display(line, region_starts, line_start))


def _boundaries(text: str) -> list[int]:
    """Cut positions (each one a place where one sentence ends and the next may begin)."""
    regions = protected_regions(text)
    region_starts = {a for a, _ in regions}
    cuts: list[int] = []
    n = len(text)

    # line structure: blank lines always cut; single newlines cut unless the sentence continues
    lines = text.split("\n")
    offs, pos = [], 0
    for ln in lines:
        offs.append(pos)
        pos += len(ln) + 1
    in_block = False  # inside a list / equation block introduced by a line ending with ':'
    blocks: list[list[int]] = []  # [start, end) of each introduced block (no sentence ends inside)
    for k in range(len(lines) - 1):
        nl = offs[k] + len(lines[k])  # position of the '\n'
        if _inside(regions, nl):
            continue
        cur, nxt = lines[k], lines[k + 1]
        if not nxt.strip() or not cur.strip():
            in_block = False
            cuts.append(nl)
            continue
        if (cur.rstrip().endswith(":") and _line_is_block(nxt, region_starts, offs[k + 1])) or (
            not re.search(r"[.!?]['\")\]]*\s*$", cur) and _starts_display(nxt, region_starts, offs[k + 1])
        ):
            if not in_block:
                blocks.append([offs[k + 1], 0])
            in_block = True
            blocks[-1][1] = offs[k + 1] + len(nxt)
            continue
        if in_block and _line_is_block(nxt, region_starts, offs[k + 1]):
            blocks[-1][1] = offs[k + 1] + len(nxt)
            continue
        in_block = False
        if re.match(r"\s*[a-z]", nxt) and not _LIST_ITEM.match(nxt) and not re.search(r"[.!?]['\")\]]*\s*$", cur):
            continue  # a wrapped line: the sentence goes on in lower case
        cuts.append(nl)

    # punctuation inside a line
    for m in re.finditer(r"[.!?]+", text):
        end = m.end()
        if _inside(regions, m.start()) or any(a <= m.start() < b - 1 for a, b in blocks):
            continue  # inside math / code, or inside a list introduced by a colon
        while end < n and text[end] in _CLOSERS:
            end += 1
        rest = text[end : end + 40]
        if m.group(0).startswith(".") and len(m.group(0)) == 1:
            word = _prev_word(text, m.start())
            if word in ABBREVIATIONS or _ENUM_AT_LINE_START.search(text[max(0, m.start() - 6) : m.start() + 1]):
                continue
            if _INITIAL.search(text[max(0, m.start() - 30) : m.start()]) and re.match(r" [A-Z][a-z]", rest):
                continue  # "Dwight D. Eisenhower"
            if m.start() > 0 and text[m.start() - 1].isdigit() and end < n and text[end].isdigit():
                continue  # 3.14
        if rest[:1] in (" ", "\t"):
            if _SENT_START.match(rest.lstrip(" \t")):
                cuts.append(end)
        elif _glued(text, m.start(), rest):
            cuts.append(end)  # "x = 5.Wait, ..." (collapsed line break)

    # after a display block followed (on the same line) by a capitalised word: "\\] So the area"
    for a, b in regions:
        if _DISPLAY_START.match(text[a : a + 8]) and re.match(r"[ \t]+[A-Z][a-z]", text[b : b + 4]):
            cuts.append(b)
    return sorted(set(c for c in cuts if 0 < c < n))


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of ``text`` in order (see the module docstring for the rules)."""
    out: list[Sentence] = []
    prev = 0
    for cut in _boundaries(text) + [len(text)]:
        chunk = text[prev:cut]
        s = prev + len(chunk) - len(chunk.lstrip())
        e = prev + len(chunk.rstrip())
        if e > s:
            para = 0
            if out:
                para = out[-1].paragraph + (1 if _BLANK_LINE.search(text[out[-1].end : s]) else 0)
            out.append(Sentence(s, e, text[s:e], para, len(out)))
        prev = cut
    return out


def split_paragraphs(text: str) -> list[list[Sentence]]:
    """Sentences grouped by paragraph (blank-line separated)."""
    groups: list[list[Sentence]] = []
    for s in split_sentences(text):
        if not groups or groups[-1][-1].paragraph != s.paragraph:
            groups.append([])
        groups[-1].append(s)
    return groups


__all__ = ["Sentence", "split_sentences", "split_paragraphs", "protected_regions", "ABBREVIATIONS", "GLUE_MARKERS"]
