"""Sentence segmentation of R1-style thinking text: LaTeX, lists, code, equations, collapsed lines."""

from __future__ import annotations

import pytest

from lrm_interp.data.annotators.segment import protected_regions, split_paragraphs, split_sentences


def texts(t: str) -> list[str]:
    out = split_sentences(t)
    for s in out:  # offsets always point into the original text
        assert t[s.start : s.end] == s.text and s.text == s.text.strip()
    return [s.text for s in out]


def test_inline_math_and_decimals_do_not_end_sentences():
    t = r"The value is \( 3.5 \). So \( x = 7/2 = 3.5 \) and $a. b$ stays whole. Pi is about 3.14 here."
    assert texts(t) == [
        r"The value is \( 3.5 \).",
        r"So \( x = 7/2 = 3.5 \) and $a. b$ stays whole.",
        "Pi is about 3.14 here.",
    ]


def test_prices_are_not_math():
    assert texts("It costs $5 and $6 in total. Then we add.") == ["It costs $5 and $6 in total.", "Then we add."]


def test_display_equation_belongs_to_the_sentence_introducing_it():
    t = "Substituting gives:\n\\[\nx^2 = 9. \\quad x = 3.\n\\]\nSo x is 3.\n\nThe area is\n$$A = \\pi r^2.$$\nDone."
    assert texts(t) == [
        "Substituting gives:\n\\[\nx^2 = 9. \\quad x = 3.\n\\]",
        "So x is 3.",
        "The area is\n$$A = \\pi r^2.$$",
        "Done.",
    ]


def test_environments_are_atomic():
    t = "We expand:\n\\begin{align}\nf &= 1. \\\\\ng &= 2.\n\\end{align}\nBoth hold."
    assert texts(t) == ["We expand:\n\\begin{align}\nf &= 1. \\\\\ng &= 2.\n\\end{align}", "Both hold."]


def test_lists_numbered_and_bulleted():
    t = (
        "The cases are:\n1. n is even. Then n = 2k.\n2. n is odd.\n\nChecking each one.\n- First item.\n"
        "- Second item.\nNow the total."
    )
    assert texts(t) == [
        "The cases are:\n1. n is even. Then n = 2k.\n2. n is odd.",
        "Checking each one.",
        "- First item.",
        "- Second item.",
        "Now the total.",
    ]
    # a numbered item without a colon-introduction: the enumerator "3." does not end a sentence
    assert texts("3. Sum 5: four ways.\n4. Sum 7: six ways.") == ["3. Sum 5: four ways.", "4. Sum 7: six ways."]


def test_code_fences_and_inline_code_are_atomic():
    t = "In code:\n```python\nx = 1. y = 2\nprint(x)\n```\nThat prints 1. Also `a. B` is code."
    assert texts(t) == ["In code:\n```python\nx = 1. y = 2\nprint(x)\n```", "That prints 1.", "Also `a. B` is code."]


def test_collapsed_line_breaks():
    # what the paper's annotator produces: line breaks removed, sentences glued
    assert texts("So x = 5.Wait, no. \\[ x = 2 \\] Therefore it is 2.Hmm.") == [
        "So x = 5.",
        "Wait, no.",
        "\\[ x = 2 \\]",
        "Therefore it is 2.",
        "Hmm.",
    ]
    # a glued lower-case word is not a boundary (file names, versions)
    assert texts("See v1.2.final and e.g.this one.") == ["See v1.2.final and e.g.this one."]


def test_abbreviations_initials_and_questions():
    t = "Dr. Smith said e.g. five, i.e. 5, vs. six. Dwight D. Eisenhower won. Is that right? Yes! Good."
    assert texts(t) == [
        "Dr. Smith said e.g. five, i.e. 5, vs. six.",
        "Dwight D. Eisenhower won.",
        "Is that right?",
        "Yes!",
        "Good.",
    ]
    assert texts("Take the prime p. Then p divides n.") == ["Take the prime p.", "Then p divides n."]
    assert texts('He said "stop." Then he left.') == ['He said "stop."', "Then he left."]


def test_wrapped_lines_continue_the_sentence():
    assert texts("This sentence wraps\nonto the next line. Next.") == [
        "This sentence wraps\nonto the next line.",
        "Next.",
    ]


def test_paragraphs_and_protected_regions():
    t = "Okay. First.\n\nSecond para.\n  \nThird \\( x \\)."
    paras = split_paragraphs(t)
    assert [[s.text for s in p] for p in paras] == [["Okay.", "First."], ["Second para."], ["Third \\( x \\)."]]
    assert [s.paragraph for s in split_sentences(t)] == [0, 0, 1, 2]
    assert [t[a:b] for a, b in protected_regions(t)] == ["\\( x \\)"]


@pytest.mark.parametrize("t", ["", "   \n\n  ", "no punctuation at all", "```\nunclosed fence. Still one"])
def test_degenerate_inputs(t):
    out = texts(t)
    assert out == ([t.strip()] if t.strip() else [])
