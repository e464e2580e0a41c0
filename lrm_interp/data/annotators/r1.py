"""Offline rule annotator for R1-style reasoning text (DeepSeek-R1 and its distillations).

The labels come from the discourse markers these models use for Venhoff et al.'s six
behaviours (reference: method.md §8) plus context. Every sentence of the thinking part
(:func:`lrm_interp.data.annotators.segment.split_sentences`) gets exactly one label; the rules
are tried in this order (:data:`RULE_TABLE` documents each one, ``explain(text)`` says which
rule labelled each sentence):

1. **restating** — in the opening paragraphs, before any derivation, a header that restates
   the task ("The premises:", "Given:") or the problem's imperative is initializing;
2. **strong rules** (:data:`STRONG_RULES`) — an explicit retraction ("that's wrong", "I made
   a mistake", "wait, no", "I misread") or a switch of approach ("Alternatively,", "let me try
   a different approach", "let me go back / re-read") is backtracking wherever it occurs
   (a retraction under a hedge — "maybe I misread it" — is uncertainty-estimation);
3. **openers** — a sentence that starts with "Wait" / "But wait" / "Hold on" / "Actually" /
   "Oh" / "Hmm" / "But" is labelled by what follows the opener: a question → uncertainty-
   estimation, a cue (hedge, check, recall, ...) → that cue's label, a named-entity fact →
   adding-knowledge; a "wait"/"actually" sentence with none of these (it re-derives,
   contrasts or corrects) → backtracking; a "Hmm" sentence that derives nothing →
   uncertainty-estimation;
4. **cue rules** (:data:`CUE_RULES`) — hedges, checks, concrete instances, recall phrases,
   named results, general laws, multiple-choice options tested, weak hedges; when several
   match, the cue that comes first in the sentence wins ("I'm not sure, so let me check" is a
   hedge, "Let me check, since I'm not sure" a check); "let me make sure" with no number is
   doubt, not a test;
5. **context rules** — short replies ("Yes.", "Good.") take the previous label; the sentences
   that carry out a check continue example-testing in the same paragraph until a conclusion;
   the first sentence and the opening paragraphs' plan / restatement sentences are
   initializing; a declarative statement about named entities (a world fact in closed-book
   QA traces) with no first person and no derivation is adding-knowledge; a bare "Wait." /
   "Hmm, wait." takes the label of the sentence it announces;
6. everything else is **deduction**.

docs/annotation.md has the measured agreement and the rule table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lrm_interp.checks import checked_arguments
from lrm_interp.data.annotators.segment import Sentence, split_sentences

BT, UE, ET, AK, IN, DE = (
    "backtracking",
    "uncertainty-estimation",
    "example-testing",
    "adding-knowledge",
    "initializing",
    "deduction",
)


@dataclass(frozen=True)
class Rule:
    """One documented rule: ``pattern`` (case-insensitive regex) → ``label``."""

    name: str
    label: str
    pattern: str
    doc: str

    def search(self, text: str) -> re.Match | None:
        return _compiled(self.pattern).search(text)


_CACHE: dict[str, re.Pattern] = {}


def _compiled(pattern: str) -> re.Pattern:
    rx = _CACHE.get(pattern)
    if rx is None:
        rx = _CACHE[pattern] = re.compile(pattern, re.I)
    return rx


_ME = r"(?:let me|let's|let us|i'll|i will|i should|i need to|i can|i could|i want to|i'd better|we can|we should)"
_CONCRETE = re.compile(r"\d|\\\(|\\\[|\$|=|[a-z]\s*\(\s*\d")
_DERIVATION = re.compile(
    r"=|\d\s*[-+*/×·^]\s*\d|\\(cdot|times|frac|implies)|^\W*(from|then|now)\b"
    r"|\b(so|therefore|thus|hence|gives|giving|implies|means that|we get|i get|get|becomes"
    r"|follows)\b",
    re.I,
)
_APPLIES = re.compile(
    r"^\W*(so|then|thus|hence|therefore|here|from|now|and|since|that means|this means|each such)\b"
    r"|\b(applies|apply|applying|we (get|have|find|obtain|see)|gives us)\b|\b(i|let|let's)\b",
    re.I,
)
_PLAN = re.compile(
    r"\b(maybe|perhaps|probably) (i|we) (should|can|could|need|will|'ll|might want)|\b(maybe|perhaps)"
    r" (try|use|start|consider|split|look)|\b(i|we) (should|could|can|might|will|'ll) (probably|maybe|"
    r"perhaps)\b|^\W*(so|therefore|thus|hence)\b",
    re.I,
)
_DIGIT = re.compile(r"\d")
_QUESTION_END = re.compile(r"\?[\"')\]]*\s*$")

#: Explicit retractions and changes of approach: backtracking wherever they occur.
STRONG_RULES: tuple[Rule, ...] = (
    Rule(
        "retraction",
        BT,
        r"\b(wait|hmm|oh|no),?\s+no\b|\bno,?\s+wait\b|\bthat('s| is| was)\s+(not (right|correct|true|it)|wrong"
        r"|incorrect"
        r"|a mistake|an error)\b|\bthat (can't|cannot|couldn't|doesn't|does not|isn't|won't) (be right|be correct"
        r"|seem right|look right|make sense|work|be it|be)\b|\b(i|we) (made|make) (a |an )?(mistake|error|slip)"
        r"|\bmy (mistake|bad|error)\b|\bi (misread|misunderstood|miscalculated|miscounted|misinterpreted"
        r"|misremembered"
        r"|mistyped|misapplied|mixed up|confused|forgot|overlooked|messed up|got .{1,20} wrong)\b"
        r"|\b(was|is|are|were) (the )?(wrong|incorrect|mistaken)\b|\bi \w+ed instead of\b|\bnot \S+, but\b"
        r"|\bi was wrong\b|\bscratch that\b|\b(i|that) (was|is) (mistaken|incorrect)\b|\bnot right\b",
        "an explicit retraction of an earlier step ('wait, no', 'that's wrong', 'I made a mistake', "
        "'I misread', 'that can't be right', 'I forgot')",
    ),
    Rule(
        "switch approach",
        BT,
        r"^\W*(but |so |hmm,? |okay,? )?(alternatively|instead)\b|\b(try|use|take|consider|think of) (a |an )?"
        r"(different|another|other|new|better|simpler|smarter|cleaner|alternative) (approach|way|method|strategy"
        r"|tack"
        r"|idea|angle|route)|\banother (approach|way|method)\b|\bon second thought\b|\b(let me|let's|i('ll| should))"
        r" (start over|start again|redo|rethink|reconsider|re-?examine|re-?evaluate|revisit|backtrack|go back"
        r"|step back"
        r"|re-?read|recompute|recalculate|re-?check the problem|re-?do)\b|\blet me (re-?)?read (the|it|that) (again"
        r"|problem|question|statement)|\bgo back to\b|\b(this|that) approach (doesn't|does not|isn't|won't)",
        "a change of approach or a return to an earlier point ('Alternatively,', 'let me try a different "
        "approach', 'let me go back / re-examine / reconsider / re-read', 'on second thought')",
    ),
)

#: Cue rules (first match in the sentence wins among them).
CUE_RULES: tuple[Rule, ...] = (
    Rule(
        "hedge",
        UE,
        r"\bnot (\w+ )?(sure|certain|confident|convinced)\b|\bunsure\b|\bi wonder\b|\bi('m| am) (a bit |a little |"
        r"getting |so |really )?(confused|worried|unsure|uncertain|concerned|doubtful|skeptical)\b|\bi doubt\b"
        r"|\b(i|we) (might|may|could) (be|have) (wrong|missing|missed|made|mistaken|misread|overlook\w*|confus\w*)"
        r"|\bmaybe i (made|missed|messed|miscount\w*|misread|got)\b|\bi feel like\b|\b(seems|looks|feels) (too "
        r"|a bit |"
        r"a little |kind of )?(small|big|large|easy|simple|quick|straightforward|off|odd|strange|suspicious|high"
        r"|low|wrong|complicated|unlikely|counterintuitive)\b|\bi('m| am) (pretty|fairly|quite|very|reasonably|now|"
        r"almost|100%)? ?(sure|confident|certain)\b|\bconfident\b|\bi (think|believe) (that's|that is|this is|it's|"
        r"so|i'm|i am|i have|i got|the answer)\b|\bi('m| am) not 100\b|\b(probably|likely) (right|correct|wrong)\b"
        r"|\bam i (missing|sure|right|wrong)\b|\bdid i (miss|make|get|forget|mess)\b|\bis (that|this|it) (right"
        r"|correct"
        r"|true|valid|possible|too)\b|\bhave i\b|\bdoubt\b|\bi might be (over|under)thinking\b|\bi (don't|do not) "
        r"think (that's|this is|that is)\b",
        "the model states doubt or confidence about its own work ('I'm not sure', 'I wonder', 'is that right', "
        "'did I miss', 'that seems too small', 'I'm fairly confident', 'I think that's right')",
    ),
    Rule(
        "check",
        ET,
        r"\b" + _ME + r" (quickly |also |now |just |first )?(check|verify|test|double[- ]?check|confirm|sanity[- ]"
        r"check|cross[- ]?check|plug|try (it |this |that )?(with|on|for|out|plugging|some|a few|small)"
        r"|validate|make sure|see if (this|that|it) (works|holds)|list them|enumerate)\b|\bto make sure\b"
        r"|\b(to|as a|a quick|quick|sanity)"
        r" (check|verify|confirm|test|sanity check)\b|\bchecking\b|^\W*(check|verify|verification|test|sanity "
        r"check)\b\s*[:(]|\bplugging\b|\bsubstitut\w+ back\b|\bdouble[- ]?check\b|\bcross[- ]?check\b"
        r"|\bcheck(s)? out\b|\bto be (sure|safe)\b",
        "a check or test of the approach or a result ('let me check / verify / test / double-check / plug in', "
        "'as a check', 'plugging in', 'checking')",
    ),
    Rule(
        "instance",
        ET,
        r"\bfor (example|instance)\b|\be\.g\.|\bsuppose\b|\bimagine\b|\bsay,? [a-z] ?= ?\d|\btake (a |an )?[a-z]"
        r" ?= ?|\b(let's|let me) (take|pick|try|consider|use) [a-z]? ?=? ?\d|\b(small|simple|concrete|specific|"
        r"test) (case|cases|example|examples|values?|numbers?)\b|\bcounter-?example\b|\bcountermodel\b"
        r"|\bin a (model|"
        r"world|scenario|case) where\b|\b(take|consider|build|construct) a (world|model|scenario)\b"
        r"|\b(if|when|with|for) [a-z] ?= ?-?\d+\b.{0,40}\b(then|gives|get|we get|becomes)\b",
        "a concrete instance used to test ('for example', 'suppose', 'take x = 2', 'small cases', 'a "
        "counterexample', 'in a model where', 'if n = 3, then')",
    ),
    Rule(
        "recall",
        AK,
        r"\b(i|we) (also |already |now |do |all )?(remember|recall|know)\b|\brecall(ing)? that\b"
        r"|\bremember(ing)? that\b|\b(it is|it's|as is) "
        r"(well[- ])?known\b|\b(a |the )?(well[- ])?known (fact|result|formula|identity|theorem)\b|\bas we know\b"
        r"|\bby definition\b|\b(the )?definition of\b|\bis defined as\b|\bfrom (geometry|number theory|algebra|"
        r"calculus|physics|chemistry|biology|history|logic|combinatorics|probability)\b|\b(the )?(formula|identity|"
        r"theorem|lemma|rule|law|principle|inequality|criterion) (for \w+ (is|says)|says|states|tells us|is that)\b"
        r"|\bthere('s| is) (a|an|also a|also an|the) (known |standard |well-known |classic )?(formula|identity"
        r"|theorem|closed form|result|rule|trick|fact)\b"
        r"|\bin general,|\bby (the )?\w+'s (theorem|formula|lemma|identity|rule|law|criterion)\b",
        "a fact brought in from memory ('I remember / recall / know', 'it is known', 'the formula for', "
        "'by definition', 'by X's theorem', 'in general,')",
    ),
    Rule(
        "named result",
        AK,
        r"\b(\w+'s (little )?(theorem|formula|identity|lemma|rule|law|inequality|criterion|principle)|pythagorean"
        r"|heron|vieta|legendre|fermat|euler|cauchy|am-gm|stars and bars|inclusion[- ]exclusion|pigeonhole|modus "
        r"(tollens|ponens)|contraposit\w+|de morgan|bayes|quadratic formula|change of base|binomial theorem|law of "
        r"(sines|cosines)|triangle inequality|chinese remainder|disjunctive syllogism|affirming the consequent"
        r"|denying the antecedent|harmonic mean|geometric series|arithmetic series|fibonacci)\b",
        "a sentence naming a standard result (Pythagorean theorem, Vieta, Legendre, modus tollens, stars and "
        "bars, ...) that states it; not when the sentence only applies it ('so', 'then', 'applies')",
    ),
    Rule(
        "general law",
        AK,
        r"\b(always|never|in general|exactly when|if and only if|iff|for (all|any|every) \w+|any (solution|number|"
        r"integer|triangle|prime|divisor|polygon|quadratic|function|root)|is defined|comes? from"
        r"|is (also )?equal to|"
        r"equals the|is the (same as|squared|sum|product|ratio))\b|^\W*(in (logic|geometry|general|a|an|any) \w+,?"
        r"|a|an|any|every|the number of|the sum of|the product of) [^.;]{0,60}?\b(is|are|has|have|satisfies|satisfy"
        r"|equals|means|splits|lies)\b"
        r"|^\W*\"?\w+\"? means\b",
        "a general law stated without reference to this problem ('A quadratic ... has its minimum at', 'the "
        'square root is always nonnegative\', \'"some" means "at least one"\'): no first person, no derivation',
    ),
    Rule(
        "option check",
        ET,
        r"^\W*(option |for |checking |check |testing |and )?\(?[A-H]\)[ :,.]",
        "a multiple-choice option tested against the facts ('(B) 7am to 11am: she was driving. No.')",
    ),
    Rule(
        "weak hedge",
        UE,
        r"\b(maybe|perhaps|possibly|probably|presumably|i guess|i suppose)\b",
        "'maybe' / 'perhaps' / 'probably' in a sentence with no computation and no plan ('maybe I should "
        "split into cases' is a plan, not doubt); tried only when no other cue matched",
    ),
)

_NEEDS_NO_DERIVATION = {"named result", "general law"}

_OPENER = re.compile(
    r"^\W*(?:(?:but|and|so|oh|okay|ok|hmm+|um+|ah|well|no)[,.!]*\s+)*(wait|hold on|hang on|actually"
    r"|hmm+|oh|but|well)\b[,.!:;—-]*\s*",
    re.I,
)
_HMM_ONLY = re.compile(r"^\W*hmm+\W*$", re.I)
_BARE_OPENER = re.compile(
    r"^\W*((but|and|oh|hmm+|okay|no|so)[,.!]*\s+)*(wait|hold on|hang on|hmm+|actually|oh)"
    r"(\s+(a (second|minute|moment)|wait))?[\W]*$",
    re.I,
)
_HEDGE_BEFORE = re.compile(r"\b(maybe|might|may|perhaps|possibly|wonder|not sure|unsure|if|whether|could)\b", re.I)
_HEADER = re.compile(
    r"^\W*(the )?(premises|facts|timeline|given|what we know|we know that|information|data|"
    r"conclusion( to check| is)?|question( is| asks)?|problem( is| says| asks)?|statements|options)"
    r"\b\s*(:|are|is|say|says)",
    re.I,
)
_IMPERATIVE = re.compile(r"^\W*(find|determine|compute|calculate|show|prove|evaluate|what is|how many)\b", re.I)
_CONTRAST = re.compile(
    r"\b(not|isn't|aren't|wasn't|instead|rather|but|should be|shouldn't|no longer|mistake|wrong"
    r"|miss\w*|forgot|correct(ion|ed)?|actually)\b|[\d=]",
    re.I,
)
_VERDICT = re.compile(
    r"\b(yes|yep|correct|good|great|works|matches|match|consistent|checks out|holds|agree|same"
    r"|as (expected|before|i had|computed|predicted)|confirmed|right|valid|fine|no|nope|fails"
    r"|possible|impossible|free|ok|okay)\b",
    re.I,
)
_CONTINUE_START = re.compile(
    r"^\W*(and|then|for|now|next|also|if|with|when|at|option|check|here|that('s| is| gives)"
    r"|this gives|which|same|it|\(?[A-H]\)|[a-z]\s*=|\d|\\\(|\\\[|\$)",
    re.I,
)
_STOP_CONTINUE = re.compile(r"^\W*(good|great|yes|ok|okay|right)?\W*(so|therefore|thus|hence|overall)\b", re.I)
_CHECK_VERDICT = re.compile(
    r"\bas (i had|before|expected|computed|predicted|claimed)\b|\bmatch(es)?\b|\bconsistent\b"
    r"|\bchecks out\b",
    re.I,
)
_INIT_CUE = re.compile(
    r"^\W*(okay|ok|alright|all right|so,? (i|we) (need|have|want)|let'?s see|let me see"
    r"|hmm,? let me"
    r" think|the (problem|question|task|conclusion|goal) (is|asks|says|wants|states)|(i|we) (need"
    r"|have|"
    r"want) to|we('re| are) (given|asked)|first,? (let me|i|we|i'll)|let me (start|begin|restate"
    r"|list|"
    r"parse|break|write down|understand|think about how|read|recall what)|let's (start|begin"
    r"|break|tackle|"
    r"parse|work out|try to figure)|given:|what we know|the (premises|facts|timeline|given)|(i|we)"
    r" (should|'ll|will) (start|begin|first|probably)|the plan is|i think the plan)",
    re.I,
)
_FIRST_PERSON = re.compile(r"\b(I|[Mm]e|[Mm]y|[Ww]e|us|[Oo]ur|[Ll]et's|[Ll]et)\b")  # case-sensitive: "US" is not "us"
_FACT_VERB = re.compile(
    r"\bthe (capital|president|author|founder|composer|director|language|languages|currency|"
    r"river|ocean|largest|oldest|population|official|national)\b|\b(was|were|is|are) (born"
    r"|founded|written|painted|built|designed|composed|located|made|"
    r"published|invented|discovered|named|called|situated|known|the capital|the largest|the "
    r"oldest|in|on|a|an|the)\b|\b(won|wrote|painted|founded|built|composed|invented|discovered|"
    r"directed|served|ruled|died|lived|flows|runs|borders|lies)\b",
    re.I,
)
_NOT_FACT = re.compile(
    r"^\W*(so|therefore|thus|hence|then|that|this|which|but|and)\b|\b(answer|question|option|"
    r"premise|conclusion|problem)\b|\?",
    re.I,
)
_CAPWORD = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}")
_NUMBERS_OTHER_THAN_YEARS = re.compile(r"(?<![\d.])(?!1[0-9]{3}\b|20[0-9]{2}\b)\d")


def _first_cue(text: str) -> tuple[Rule, re.Match] | None:
    """The cue rule matching earliest in ``text`` (weak cues only when nothing else matched;
    rules about stated knowledge only when the sentence does not merely apply it)."""
    best = weak = None
    for rule in CUE_RULES:
        m = rule.search(text)
        if not m:
            continue
        if rule.name in _NEEDS_NO_DERIVATION and _APPLIES.search(text):
            continue
        if rule.name == "weak hedge":
            if not (_CONCRETE.search(text) or _PLAN.search(text)):
                weak = (rule, m)
            continue
        if best is None or m.start() < best[1].start():
            best = (rule, m)
    return best or weak


def _is_fact_statement(text: str) -> bool:
    """A declarative sentence about named entities (world knowledge): no first person, no
    derivation marker, no computation other than years, a factual verb, a capitalised name."""
    if _FIRST_PERSON.search(text) or _NOT_FACT.search(text) or _NUMBERS_OTHER_THAN_YEARS.search(text):
        return False
    if "\\(" in text or "$" in text or "=" in text:
        return False
    return bool(_FACT_VERB.search(text)) and bool(_CAPWORD.search(text))


@checked_arguments
@dataclass
class R1RuleAnnotator:
    """The rule annotator for R1-style text (module docstring: the rules, in order).

    Args:
        facts_as_knowledge: label declarative named-entity statements adding-knowledge (the
            context rule for closed-book QA traces).
        continue_checks: let the sentences that carry out a check continue example-testing.
        initializing_paragraphs: how many opening paragraphs may hold initializing sentences.
    """

    facts_as_knowledge: bool = True
    continue_checks: bool = True
    initializing_paragraphs: int = 2

    def explain(self, thinking_text: str) -> list[tuple[Sentence, str, str]]:
        """``(sentence, label, rule name)`` for every sentence of ``thinking_text``."""
        sents = split_sentences(thinking_text)
        out: list[tuple[Sentence, str, str]] = []
        preamble = True  # no derivation yet: initializing is still possible
        for k, s in enumerate(sents):
            in_opening = preamble and s.paragraph < self.initializing_paragraphs
            label: str | None
            if in_opening and (_HEADER.search(s.text) or (k > 0 and _IMPERATIVE.search(s.text))):
                label, why = IN, "restating"
            else:
                label, why = self._label_one(s.text)
            if in_opening and why in ("hmm without derivation", "bare hmm") and (k == 0 or _INIT_CUE.search(s.text)):
                label, why = IN, "opening"
            prev = out[-1] if out else None
            if label is None and prev is not None:
                label, why = self._context(s, prev)
            if label is None and in_opening:
                continues = (
                    prev is not None
                    and prev[1] == IN
                    and prev[0].paragraph == s.paragraph
                    and not _DERIVATION.search(s.text)
                    and not _is_fact_statement(s.text)
                )
                if k == 0 or _INIT_CUE.search(s.text) or continues:
                    label, why = IN, "opening" if k == 0 else "restating / plan"
            if label is None and self.facts_as_knowledge and _is_fact_statement(s.text):
                label, why = AK, "fact statement"
            if label is None:
                label, why = DE, "default"
            if label != IN and not (label == DE and not _DERIVATION.search(s.text)):
                preamble = False
            out.append((s, label, why))
        # a bare "Wait." / "Hmm, wait." / "Hold on." takes the label of what it announces
        for k, (s, _label, _why) in enumerate(out):
            if _BARE_OPENER.match(s.text) and k + 1 < len(out) and out[k + 1][1] in (UE, ET, BT):
                out[k] = (s, out[k + 1][1], "bare opener + next")
        return out

    def _label_one(self, text: str) -> tuple[str | None, str]:
        for rule in STRONG_RULES:
            m = rule.search(text)
            if not m:
                continue
            if _HEDGE_BEFORE.search(text[: m.start()]) and rule.name == "retraction":
                return UE, "hedged retraction"
            hit = _first_cue(text)
            if rule.name == "switch approach" and hit is not None and hit[0].label == ET and hit[1].start() < m.start():
                return ET, "check (another way)"
            return rule.label, rule.name
        m = _OPENER.match(text)
        if m:
            opener = m.group(1).lower()
            rest = text[m.end() :]
            if _HMM_ONLY.match(text):
                return UE, "bare hmm"
            hit = _first_cue(rest)
            if _QUESTION_END.search(text) and (hit is None or hit[0].label == UE):
                return UE, f"{opener} + question"
            if hit is not None:
                label, why = self._cue_label(hit, rest)
                return label, f"{opener} + {why}"
            if _is_fact_statement(rest[:1].upper() + rest[1:]) and self.facts_as_knowledge:
                return AK, f"{opener} + fact"
            if opener in ("wait", "hold on", "hang on", "actually"):
                return BT, f"{opener} + re-derivation" if _CONTRAST.search(rest) else f"bare {opener}"
            if opener == "oh" and _CONTRAST.search(rest):
                return BT, "oh + correction"
            if opener.startswith("hmm") and not _DERIVATION.search(rest):
                return UE, "hmm without derivation"
            return None, ""
        hit = _first_cue(text)
        if hit is not None:
            return self._cue_label(hit, text)
        if (
            _QUESTION_END.search(text)
            and re.search(r"\b(i|my|that|this|it)\b", text, re.I)
            and not _CONCRETE.search(text)
            and not re.search(
                r"^\W*(what|how|which|where|when"
                r"|who)\b",
                text,
                re.I,
            )
        ):
            return UE, "self question"
        return None, ""

    @staticmethod
    def _cue_label(hit: tuple[Rule, re.Match], text: str) -> tuple[str, str]:
        rule, m = hit
        if (
            rule.name == "check"
            and re.search(r"make sure|to be (sure|safe)", m.group(0), re.I)
            and not _DIGIT.search(text)
        ):
            return UE, "make sure without a value"  # "let me make sure I have it right": doubt, not a test
        return rule.label, rule.name

    def _context(self, s: Sentence, prev: tuple[Sentence, str, str]) -> tuple[str | None, str]:
        p, plabel, _ = prev
        words = len(s.text.split())
        if words <= 3 and _VERDICT.search(s.text):
            return plabel, "short reply"
        if self.continue_checks and plabel == ET and p.paragraph == s.paragraph:
            if _STOP_CONTINUE.search(s.text) and not _CHECK_VERDICT.search(s.text):
                return None, ""
            if _CONTINUE_START.search(s.text) or _CONCRETE.search(s.text):
                return ET, "check continues"
        return None, ""

    def describe(self) -> dict:
        """What results record about this annotator (non-default options only)."""
        d: dict = {"name": "r1-rules"}
        for k, default in (("facts_as_knowledge", True), ("continue_checks", True), ("initializing_paragraphs", 2)):
            if getattr(self, k) != default:
                d[k] = getattr(self, k)
        return d

    def label_sentences(self, thinking_text: str) -> list[tuple[Sentence, str]]:
        """``(sentence, label)`` pairs."""
        return [(s, lab) for s, lab, _ in self.explain(thinking_text)]

    def annotate(self, thinking_text: str) -> str:
        """The paper's markup, one segment per sentence."""
        return " ".join(f'["{lab}"]{s.text}["end-section"]' for s, lab in self.label_sentences(thinking_text))


#: (rule name as ``explain`` reports it, label, what it matches), in the order rules are tried.
RULE_TABLE: tuple[tuple[str, str, str], ...] = (
    (
        "restating",
        IN,
        "in the opening paragraphs before any derivation: a header that restates the task "
        "('The premises:', 'Given:', 'What we know:') or an imperative from the problem ('Find ...')",
    ),
    *[(r.name, r.label, r.doc) for r in STRONG_RULES[:1]],
    (
        "hedged retraction",
        UE,
        "a retraction under a hedge ('maybe I misread it', 'I might have made a mistake'): doubt, not yet a change",
    ),
    *[(r.name, r.label, r.doc) for r in STRONG_RULES[1:]],
    ("check (another way)", ET, "'As a check, I can compute it another way': a check cue before the switch cue"),
    ("bare hmm", UE, "a sentence that is only 'Hmm.'"),
    (
        "<opener> + question",
        UE,
        "'Wait, is that right?' / 'Hmm, did I miss a case?': an opener (Wait, But wait, "
        "Hold on, Actually, Hmm, Oh, But) followed by a question",
    ),
    (
        "<opener> + <cue rule>",
        "(the cue's label)",
        "'Wait, let me check ...', 'Hmm, I recall ...': the first cue after the opener decides",
    ),
    ("<opener> + fact", AK, "'Hmm, wait, the ceremony is in December.': a named-entity fact after the opener"),
    (
        "wait + re-derivation",
        BT,
        "'Wait, 20 · 19 is 380, not 360.': a Wait / Hold on / Actually sentence that "
        "contrasts, corrects or recomputes (also 'hold on + ...', 'actually + ...')",
    ),
    ("bare wait", BT, "any other sentence opened by 'Wait' / 'Hold on' / 'Actually' (also 'bare actually')"),
    ("oh + correction", BT, "'Oh, I see: it is x/2, not 2x.'"),
    (
        "hmm without derivation",
        UE,
        "'Hmm, that was quick.': a Hmm sentence that derives nothing (in the "
        "opening, 'Hmm, let me think.' is initializing instead)",
    ),
    *[(r.name, r.label, r.doc) for r in CUE_RULES],
    (
        "make sure without a value",
        UE,
        "'let me make sure I have the formula right': a make-sure check with no number is doubt, not a test",
    ),
    (
        "self question",
        UE,
        "a question about the model's own work with no value in it ('Did I miss a case?', "
        "'Is it X or Y?'), not a wh-question that sets up a step",
    ),
    (
        "short reply",
        "(previous label)",
        "'Yes.' / 'Good.' / 'No.' (at most 3 words with a verdict) continues the previous segment",
    ),
    (
        "check continues",
        ET,
        "after an example-testing sentence, in the same paragraph: sentences that carry the "
        "check out (start with 'And', 'Then', 'For', an option letter, a number or math, or "
        "contain a value), until one starts with 'So' / 'Therefore' / 'Thus' without a "
        "check verdict ('as I had', 'matches')",
    ),
    ("opening", IN, "the first sentence of the trace"),
    (
        "restating / plan",
        IN,
        "in the first two paragraphs before any derivation: sentences with an opening cue "
        "('Okay, so I need to', 'Let me start by', 'First, I'll') or that continue an "
        "initializing sentence of the same paragraph without deriving",
    ),
    (
        "fact statement",
        AK,
        "a declarative statement about named entities with a factual verb ('was born in', "
        "'is the capital of', 'flows through'), no first person, no derivation, no numbers "
        "but years: world knowledge in closed-book QA traces",
    ),
    ("default", DE, "everything else"),
    (
        "bare opener + next",
        "(next label)",
        "a bare 'Wait.' / 'Hmm, wait.' / 'Hold on.' takes the label of the "
        "sentence it announces when that one is uncertainty, a check or "
        "backtracking",
    ),
)


__all__ = ["R1RuleAnnotator", "Rule", "STRONG_RULES", "CUE_RULES", "RULE_TABLE"]
