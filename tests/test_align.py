"""Aligner: ordered, whitespace-normalised, fuzzy and out-of-order placement, against naive references."""

from __future__ import annotations

import itertools
import random
import re
from difflib import SequenceMatcher

import numpy as np
import pytest

from lrm_interp.data.align import align_segments, best_chain, char_codes, fuzzy_find, normalise, semiglobal_row
from lrm_interp.data.markup import Segment, parse_markup
from lrm_interp.data.paper_layout import annotate_trace
from lrm_interp.data.traces import ReasoningTrace


def segs(*pairs):
    return [Segment(i, lab, lab, txt) for i, (lab, txt) in enumerate(pairs)]


# ----------------------------------------------------------------- naive references
def naive_semiglobal(p: str, t: str) -> tuple[int, int]:
    """Textbook O(mn) DP: min edit distance of p to any substring of t, first best end."""
    prev = [0] * (len(t) + 1)
    for i in range(1, len(p) + 1):
        cur = [i] + [0] * len(t)
        for j in range(1, len(t) + 1):
            cur[j] = min(prev[j - 1] + (p[i - 1] != t[j - 1]), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    best = min(prev)
    return best, prev.index(best)


def naive_chain(cands):
    """Brute force over every choice (one occurrence or none per segment): most placed, then
    earlier segments placed (lexicographic), then smallest sum of starts."""
    best, best_key = None, None
    for choice in itertools.product(*[[None] + c for c in cands]):
        end, gap, ok = 0, 0, True
        for c in choice:
            if c is None:
                continue
            if c[0] < end:
                ok = False
                break
            gap += c[0]
            end = c[1]
        if ok:
            key = (-sum(c is not None for c in choice), [c is None for c in choice], gap)
            if best_key is None or key < best_key:
                best, best_key = choice, key
    return best, best_key


def test_normalise_maps_back_to_original():
    n, idx = normalise("a \n\n b\tc")
    assert n == "a b c" and idx == [0, 1, 5, 6, 7]
    rng = random.Random(0)
    for _ in range(50):
        s = "".join(rng.choice("ab \n\t.") for _ in range(rng.randint(0, 40)))
        n, idx = normalise(s)
        assert n == re.sub(r"\s+", " ", s) and len(idx) == len(n)
        assert all(s[i] == c or (c == " " and s[i].isspace()) for c, i in zip(n, idx))
        assert idx == sorted(set(idx))


def test_semiglobal_matches_naive_dp():
    rng = random.Random(1)
    for _ in range(200):
        p = "".join(rng.choice("abc") for _ in range(rng.randint(1, 8)))
        t = "".join(rng.choice("abc") for _ in range(rng.randint(0, 15)))
        want = naive_semiglobal(p, t)
        row = semiglobal_row(char_codes(p), char_codes(t), max_dist=10**6)
        j = int(np.argmin(row))
        assert (int(row[j]), j) == want, (p, t)
        # pruned run: None exactly when the distance exceeds the bound
        bound = rng.randint(0, 3)
        pruned = semiglobal_row(char_codes(p), char_codes(t), max_dist=bound)
        assert (pruned is None) == (want[0] > bound) and (pruned is None or int(pruned.min()) == want[0])


def test_chain_matches_brute_force():
    rng = random.Random(2)
    for _ in range(150):
        n = rng.randint(1, 5)
        cands = []
        for _ in range(n):
            occ = sorted({(a, a + rng.randint(1, 4)) for a in (rng.randint(0, 20) for _ in range(rng.randint(0, 3)))})
            cands.append(occ)
        got = best_chain(cands, 30)
        _, key = naive_chain(cands)
        end, gap = 0, 0
        for c in got:
            if c is not None:
                assert c[0] >= end
                gap += c[0]
                end = c[1]
        assert (-sum(c is not None for c in got), [c is None for c in got], gap) == key, cands


def test_identical_sentences_go_to_first_then_second_occurrence():
    resp = "A. Check it. B. Check it. C."
    parsed = parse_markup(
        '["deduction"]A.["end-section"]["example-testing"]Check it.["end-section"]'
        '["deduction"]B.["end-section"]["example-testing"]Check it.["end-section"]'
    )
    spans, reps = align_segments(resp, parsed.segments)
    assert [r.status for r in reps] == ["placed"] * 4
    checks = [s for s in spans if s.behavior == "example-testing"]
    assert [(s.start, s.end) for s in checks] == [(3, 12), (16, 25)]
    # consecutive repeats with nothing between them
    spans, _ = align_segments(
        "Hmm. Hmm. Hmm.", segs(("uncertainty-estimation", "Hmm."), ("uncertainty-estimation", "Hmm."))
    )
    assert [(s.start, s.end) for s in spans] == [(0, 4), (5, 9)]


def test_repeated_sentence_follows_its_neighbours():
    resp = "So n is 11. Let me check 2..10: none works. So n is 11. Done."
    spans, reps = align_segments(
        resp, segs(("example-testing", "Let me check 2..10: none works."), ("deduction", "So n is 11."))
    )
    assert spans[1].start == resp.rindex("So n is 11.")  # not the first occurrence


def test_long_segment_placed_where_difflib_autojunk_fails():
    sent = " ".join(f"step {i} adds {i} to the running total, which is fine." for i in range(12))
    assert len(sent) > 300
    resp = "Intro.\n\n" + sent.replace(", which", ",\nwhich") + "\n\nDone."
    # the paper's locator: longest block with autojunk, kept if it covers >= 90 %
    block = max(SequenceMatcher(None, resp, sent).get_matching_blocks(), key=lambda b: b.size)
    assert block.size / len(sent) < 0.9
    parsed = parse_markup(f'["deduction"]{sent}["end-section"]')
    spans, reps = align_segments(resp, parsed.segments)
    assert reps[0].status == "placed"
    assert (spans[0].start, spans[0].end) == (8, len(resp) - len("\n\nDone."))


def test_collapsed_newlines_span_the_original_blank_line():
    resp = "First.\n\nLet me check:\n\n4, 9, 16.\nNone ends in 21.\n\nEnd."
    spans, reps = align_segments(resp, segs(("example-testing", "Let me check: 4, 9, 16. None ends in 21.")))
    s = spans[0]
    assert resp[s.start : s.end] == "Let me check:\n\n4, 9, 16.\nNone ends in 21."


def test_segment_never_placed_in_the_prompt():
    sentence = "Let me check the premises again."
    trace = ReasoningTrace(
        "t", prompt=f"Question. {sentence}\n<think>\n", response=f"Okay. {sentence}\n</think>\nTrue."
    )
    t2, rep = annotate_trace(trace, f'["example-testing"]{sentence}["end-section"]')
    (s,) = t2.spans
    assert (s.start, s.end) == (6, 6 + len(sentence))  # response offsets
    a, b = t2.abs_span(s)
    assert a == len(trace.prompt) + 6 and t2.text[a:b] == sentence
    assert t2.prompt == trace.prompt and rep.segments[0].status == "placed"
    # a sentence only in the prompt is not placed at all
    t3, rep3 = annotate_trace(trace, '["deduction"]Question.["end-section"]')
    assert t3.spans == () and rep3.segments[0].reason == "text not found in the response"


def test_think_marker_is_ordinary_text():
    resp = "Reasoning.\n</think>\n\nThe answer is 5."
    spans, _ = align_segments(resp, segs(("deduction", "Reasoning. </think> The answer is 5.")))
    assert (spans[0].start, spans[0].end) == (0, len(resp))


def test_fuzzy_dropped_and_changed_characters():
    resp = "Intro. Let me compute 17 squared: that is 289, which is odd, so parity holds. Next."
    true_s = "Let me compute 17 squared: that is 289, which is odd, so parity holds."
    seg = "Let me compute 17 squared that is 289 which is odd so parity hold."  # 4 drops
    spans, reps = align_segments(resp, segs(("deduction", "Intro."), ("example-testing", seg), ("deduction", "Next.")))
    assert [r.status for r in reps] == ["placed", "placed fuzzy", "placed"]
    assert reps[1].edit_distance == 4 and "edit distance 4" in reps[1].reason
    assert (spans[1].start, spans[1].end) == (resp.index(true_s), resp.index(true_s) + len(true_s))


def test_fuzzy_rejects_too_different_and_too_short():
    resp = "We know that the capital of Zorbia is Quell, founded long ago by the river people of the north."
    far = "We know that Zorbia's capital city was founded by northern river folk a very long time ago."
    _, reps = align_segments(resp, segs(("adding-knowledge", far), ("deduction", "Nowhere here.")))
    assert [r.status for r in reps] == ["not placed", "not placed"]
    assert reps[0].reason == reps[1].reason == "text not found in the response"
    assert fuzzy_find("abc river peopla xyz", "river people") is None  # 12 chars < MIN_FUZZY_CHARS


def test_fuzzy_find_large_window_uses_anchors_and_finds_best():
    rng = random.Random(3)
    words = ["alpha", "beta", "gamma", "delta", "so", "then", "wait", "check", "value", "sum"]
    hay = " ".join(rng.choice(words) for _ in range(3000))
    true_start = hay.index(" ", 9000) + 1
    target = hay[true_start : true_start + 120].rsplit(" ", 1)[0]
    noisy = target[:30] + target[32:80] + "X" + target[80:]  # 2 dropped, 1 inserted
    r = fuzzy_find(hay, noisy, 0, len(hay))
    assert r is not None
    s, e, d = r
    assert d <= 3 and abs(s - true_start) <= 2 and abs(e - (true_start + len(target))) <= 2
    # brute-force check that no substring is closer (naive DP over the whole hay is too slow;
    # restrict to a window that contains the truth and compare distance)
    assert naive_semiglobal(noisy, hay[true_start - 50 : true_start + len(target) + 50])[0] == d


def test_far_ahead_match_does_not_push_later_segments_out_of_order():
    # greedy "next occurrence after the cursor" would jump to the late "Wait, try vectors."
    # and put S2..S4 out of order; the chain keeps them in order.
    resp = "S1 here. S2 here. S3 here. S4 here. Later on: Wait, try vectors."
    spans, reps = align_segments(
        resp,
        segs(
            ("deduction", "S1 here."),
            ("backtracking", "Wait, try vectors."),
            ("deduction", "S2 here."),
            ("deduction", "S3 here."),
            ("deduction", "S4 here."),
        ),
    )
    st = [r.status for r in reps]
    assert st == ["placed", "placed out of order", "placed", "placed", "placed"]
    assert reps[1].start == resp.index("Wait")


def test_out_of_order_must_not_overlap():
    resp = "Alpha beta. Gamma delta."
    _, reps = align_segments(resp, segs(("deduction", "Gamma delta."), ("deduction", "Alpha beta.")))
    assert [r.status for r in reps] == ["placed", "placed out of order"]
    _, reps = align_segments(resp, segs(("deduction", "Alpha beta. Gamma delta."), ("deduction", "Alpha beta.")))
    assert reps[1].status == "not placed" and reps[1].reason == "every occurrence overlaps a placed segment"


def test_unknown_labels_located_but_not_placed_and_labels_filter():
    resp = "Hi. Verify: 11 works. Wait, no."
    parsed = parse_markup(
        '["initializing"]Hi.["end-section"]["verification"]Verify: 11 works.["end-section"]'
        '["backtracking"]Wait, no.["end-section"]'
    )
    spans, reps = align_segments(resp, parsed.segments)
    assert [s.behavior for s in spans] == ["initializing", "backtracking"]
    assert reps[1].status == "not placed" and reps[1].reason.startswith("unknown label 'verification'")
    assert (reps[1].start, reps[1].end) == (4, 21)
    spans, _ = align_segments(resp, parsed.segments, keep_unknown=True)
    assert [(s.behavior, s.start) for s in spans] == [("initializing", 0), ("verification", 4), ("backtracking", 22)]
    spans, reps = align_segments(resp, parsed.segments, labels={"backtracking"})
    assert [s.behavior for s in spans] == ["backtracking"]
    assert reps[0].status == "not placed" and reps[0].reason == "label 'initializing' not selected"
    unk = parse_markup('["verification"]Not in the text at all.["end-section"]')
    _, reps = align_segments(resp, unk.segments)
    assert reps[0].reason == "unknown label 'verification'; text not found in the response"


def test_empty_segment_reported():
    _, reps = align_segments("abc", parse_markup('["deduction"]["end-section"]').segments)
    assert reps[0].status == "not placed" and reps[0].reason == "empty segment text"


def _perturb(rng, s):
    i = rng.randrange(5, len(s) - 5)  # inside, so the result is not a substring of the sentence
    return s[:i] + s[i + 1 :]


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_traces_placed_at_gold_spans(seed):
    """Responses with repeated sentences and line breaks; the annotation collapses whitespace,
    drops a character in 1 segment of 8, and uses one invented label."""
    rng = random.Random(seed)
    pool = [
        "So the answer is 11.",
        "Wait, let me check that again carefully.",
        "Hmm, I am not sure this approach is right at all.",
        "Recall that a square ends in 1 only when n ends in 1 or 9.",
        "Let me try n = 9: 81 does not end in 21, so no.",
        "Then 3 times 7 is 21, which fits the pattern.",
    ]
    pieces, gold = [], []
    pos = 0
    for _ in range(40):
        sent = rng.choice(pool)
        if rng.random() < 0.3:
            sent = sent.replace(", ", ",\n", 1)
        sep = rng.choice([" ", "\n", "\n\n"])
        gold.append((pos, pos + len(sent), sent))
        pieces.append(sent + sep)
        pos += len(sent) + len(sep)
    resp = "".join(pieces) + "</think>\nThe answer is 11."
    segments, expect = [], []
    for i, (a, b, sent) in enumerate(gold):
        txt = " ".join(sent.split())
        if i % 8 == 5 and len(txt) >= 30:
            txt = _perturb(rng, txt)
        label = "verification" if i == 17 else rng.choice(["deduction", "backtracking", "example-testing"])
        segments.append(Segment(i, label, None if label == "verification" else label, txt))
        expect.append((a, b))
    spans, reps = align_segments(resp, segments)
    known = [r for r in reps if r.label is not None]
    placed = [r for r in known if r.placed]
    assert len(placed) / len(known) >= 0.95
    for r in placed:
        a, b = expect[r.index]
        if r.status == "placed":
            assert (r.start, r.end) == (a, b), r
        else:  # fuzzy: at most the dropped char off at either edge
            assert r.status == "placed fuzzy" and abs(r.start - a) <= 1 and abs(r.end - b) <= 1, r
    assert (reps[17].start, reps[17].end) == expect[17]  # unknown label still located correctly
    assert all(np.diff([s.start for s in spans]) > 0)


def test_greedy_shortcut_equals_the_dynamic_programme_on_random_chains():
    """best_chain answers with greedy_chain only when it provably equals the exact DP; on random
    candidate sets (exact-length occurrences, and fuzzy ones of varying length) both agree."""
    import random

    from lrm_interp.data.align import best_chain, best_chain_dp, greedy_chain

    rng = random.Random(3)
    used = 0
    for trial in range(400):
        n = rng.randint(1, 12)
        length = 200
        cands = []
        for _ in range(n):
            k = rng.choice([0, 1, 1, 2, 3])
            w = rng.randint(1, 20)
            occ = sorted(
                {
                    (a, a + (w if trial % 2 else rng.randint(1, 20)))
                    for a in (rng.randrange(length - 20) for _ in range(k))
                }
            )
            cands.append(occ)
        used += greedy_chain(cands) is not None
        assert best_chain(cands, length) == best_chain_dp(cands, length), cands
    assert 50 < used < 400  # both routes exercised


def test_long_repetitive_markup_aligns_every_segment_in_order():
    """A 'Wait, ...' loop of 3,000 repeated sentences: every segment placed, in order, on the
    occurrence of its own position (the chain of identical texts must not collapse)."""
    from lrm_interp.data.markup import parse_markup

    sents = [f"Wait, let me check step {i % 7}." for i in range(3000)]
    response = " ".join(sents)
    mk = " ".join(f'["backtracking"]{s}["end-section"]' for s in sents)
    spans, reps = align_segments(response, parse_markup(mk).segments)
    assert len(spans) == 3000 and all(r.status == "placed" for r in reps)
    starts = [s.start for s in spans]
    assert starts == sorted(starts) and len(set(starts)) == 3000
    assert all(response[s.start : s.end] == sents[i] for i, s in enumerate(spans))
