"""Verifiable synthetic reasoning tasks with gold behaviour annotations (the toy families).

They live in the data stage (plain Python over traces: no model, no generation): the benchmark registry
(:mod:`lrm_interp.data.benchmarks.toy`), the default calibration set
(:mod:`lrm_interp.compress.calibration`) and the toy model (:mod:`lrm_interp.toy`) all draw
from here. :mod:`lrm_interp.toy.tasks` re-exports everything, with
:func:`~lrm_interp.toy.tasks.model_world` (the fact table a *model* was trained on).

Three families mirror the paper's datasets:

- ``math`` (AIME-like): chains of 2–4 additions/subtractions of one- and two-digit
  numbers, integer answer.
- ``logic`` (FOLIO-like): syllogisms over made-up categories, answer True / False / Uncertain.
- ``knowledge`` (MuSiQue-like, closed book): 2–3 hop recall over a fixed table of synthetic
  facts (:func:`build_world`: person → city → country → continent, fixed by a seed), never
  stated in the prompt.

Each problem yields a :class:`~lrm_interp.data.traces.ReasoningTrace`: prompt = question +
``"\\n<think>\\n"``; response = reasoning sentences + ``"\\n</think>\\n"`` + ``"The answer is
X."``. The reasoning shows the six behaviours of Venhoff et al. with gold spans, and
:func:`to_markup` writes the annotation in the paper's markup.

Every behaviour is a *deterministic function of the problem*, so a model trained on these
traces reproduces them under greedy decoding (its own traces contain all six):

- backtracking: a subtraction that needs a borrow is first done without it ("52 - 17 =
  45.") and corrected ("Wait, I forgot to borrow, so 52 - 17 = 35."); people with a
  *decoy* city in the table are first misremembered; a tempting "some" premise in logic.
- example-testing: the corrected step is checked ("Let me check: 35 + 17 = 52."), and so are
  two-hop logic chains and the misremembered fact.
- uncertainty-estimation: negative results, "Uncertain" conclusions, three-hop recall.
- adding-knowledge: recalled facts (knowledge), rules the problem does not state.

Everything is deterministic given the seed (``random.Random`` seeded by strings).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lrm_interp.checks import check_bool, check_int, checked_arguments, shown_value
from lrm_interp.data.traces import BehaviorSpan, ReasoningDataset, ReasoningTrace

FAMILIES: tuple[str, ...] = ("math", "logic", "knowledge")

#: Size of the shipped fact table (the shipped model was trained on this world).
N_PEOPLE = 512
WORLD_SEED = 7

_ONSETS = ["B", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z"]
_NUCLEI = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "r", "l", "s"]
_CITIES = [
    "Tolvik",
    "Marsa",
    "Brenna",
    "Kolpe",
    "Vessa",
    "Dunmar",
    "Ostra",
    "Pelka",
    "Rundel",
    "Sorvo",
    "Talmi",
    "Ukrin",
    "Albet",
    "Crosk",
    "Elvar",
    "Garrow",
    "Hestin",
    "Irrel",
    "Jovan",
    "Lurra",
    "Mekto",
    "Nirva",
    "Quoss",
    "Wendel",
]
_COUNTRIES = ["Zorbia", "Quellan", "Fedora", "Marnis", "Oskel", "Trevia", "Ulmany", "Vastro"]
_CONTINENTS = ["Avalon", "Borea", "Celune", "Dravia"]
_CATEGORIES = ["glims", "zorps", "blicks", "fams", "daxes", "wugs", "tovs", "plins", "kerns", "mibs"]
_PROPERTIES = ["blue", "red", "warm", "tall", "quiet", "round", "soft", "fast", "loud", "green"]


@dataclass(frozen=True)
class World:
    """A fixed table of synthetic facts (closed book: never stated in prompts).

    ``lives_in[p]``: city of person p; ``decoy[p]``: a wrong city that p is first
    misremembered as living in (for about a quarter of the people); ``city_country``,
    ``country_continent``: the higher hops.
    """

    people: tuple[str, ...]
    lives_in: dict[str, str]
    decoy: dict[str, str]
    city_country: dict[str, str]
    country_continent: dict[str, str]

    def to_dict(self) -> dict:
        return {
            "people": list(self.people),
            "lives_in": self.lives_in,
            "decoy": self.decoy,
            "city_country": self.city_country,
            "country_continent": self.country_continent,
        }


def build_world(n_people: int = N_PEOPLE, seed: int = WORLD_SEED) -> World:
    """The fact table with ``n_people`` made-up people (deterministic given ``seed``)."""
    names = sorted(
        {
            o + n + o2.lower() + n2 + c
            for o in _ONSETS
            for n in _NUCLEI
            for o2 in _ONSETS
            for n2 in _NUCLEI
            for c in _CODAS
        }
    )
    if not 1 <= n_people <= len(names):
        raise ValueError(f"n_people must be in [1, {len(names)}], got {shown_value(n_people)}")
    rng = random.Random(f"world:{seed}")
    people = tuple(rng.sample(names, n_people))
    lives = {p: rng.choice(_CITIES) for p in people}
    decoy = {}
    for p in people:
        if rng.random() < 0.25:
            decoy[p] = rng.choice([c for c in _CITIES if c != lives[p]])
    city_country = {c: _COUNTRIES[i % len(_COUNTRIES)] for i, c in enumerate(_CITIES)}
    country_cont = {c: _CONTINENTS[i % len(_CONTINENTS)] for i, c in enumerate(_COUNTRIES)}
    return World(people, lives, decoy, city_country, country_cont)


#: The shipped fact table of the knowledge family.
WORLD = build_world()


@dataclass(frozen=True)
class Problem:
    """One task instance: family, question prompt and gold answer."""

    id: str
    family: str
    prompt: str
    answer: str


class _Builder:
    """Accumulates labelled sentences into a response and its gold spans."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[BehaviorSpan] = []

    def add(self, behavior: str, sentence: str) -> None:
        if self.text:
            self.text += " "
        start = len(self.text)
        self.text += sentence
        self.spans.append(BehaviorSpan(behavior, start, len(self.text)))


def _no_borrow(a: int, b: int) -> int:
    """``a - b`` done digit-wise with the smaller units digit subtracted from the larger
    (the classic forgotten borrow), for ``a > b >= 10`` with ``a % 10 < b % 10``."""
    return (a // 10 - b // 10) * 10 + (b % 10 - a % 10)


def _math(rng: random.Random, b: _Builder, world: World) -> tuple[str, str]:
    n = rng.randint(2, 4)
    nums = [rng.randint(10, 99)] + [rng.randint(2, 49) for _ in range(n)]
    ops = [rng.choice("+-") for _ in range(n)]
    expr = str(nums[0]) + "".join(f" {o} {x}" for o, x in zip(ops, nums[1:]))
    b.add("initializing", f"Okay, so I need to compute {expr}.")
    acc, borrowed, went_negative = nums[0], False, False
    for o, x in zip(ops, nums[1:]):
        new = acc + x if o == "+" else acc - x
        if o == "-" and new < 0 <= acc and not went_negative:
            b.add("adding-knowledge", "Recall that taking away a larger number gives a negative result.")
            went_negative = True
        if o == "-" and not borrowed and acc > x >= 10 and acc % 10 < x % 10:
            b.add("deduction", f"{acc} - {x} = {_no_borrow(acc, x)}.")
            b.add("backtracking", f"Wait, I forgot to borrow, so {acc} - {x} = {new}.")
            b.add("example-testing", f"Let me check: {new} + {x} = {acc}.")
            borrowed = True
        else:
            b.add("deduction", f"{acc} {o} {x} = {new}.")
        acc = new
    if acc < 0:
        b.add("uncertainty-estimation", f"Hmm, I am not sure about the sign, but I think it is {acc}.")
    b.add("deduction", f"So the result is {acc}.")
    return f"Compute {expr}.", str(acc)


def _logic(rng: random.Random, b: _Builder, world: World) -> tuple[str, str]:
    c0, c1, c2 = rng.sample(_CATEGORIES, 3)
    prop, other = rng.sample(_PROPERTIES, 2)
    name = rng.choice(world.people[:64])
    kind = rng.choice(["true", "false", "uncertain"])
    hops = rng.randint(1, 2)
    distractor = rng.random() < 0.5
    tempting = kind == "uncertain" and rng.random() < 0.5
    last = c1 if hops == 2 else c0
    chain = [f"{name} is one of the {c0}."] + ([f"All {c0} are {c1}."] if hops == 2 else [])
    rule = f"No {last} are {prop}." if kind == "false" else f"All {last} are {prop}."
    extra = [f"All {c2} are {other}."] if distractor else []
    extra += [f"Some {last} are {other}."] if tempting else []
    premises = chain + [rule]
    for e in extra:
        premises.insert(rng.randrange(len(premises) + 1), e)
    concl = other if kind == "uncertain" else prop
    question = "Premises: " + " ".join(premises) + f" Conclusion: {name} is {concl}. True, False or Uncertain?"
    b.add("initializing", f"Okay, I need to decide whether {name} is {concl}.")
    b.add("deduction", f"{name} is one of the {c0}.")
    if hops == 2:
        b.add("deduction", f"All {c0} are {c1}, so {name} is one of the {c1}.")
    if distractor:
        b.add("adding-knowledge", f"Recall that a premise about {c2} says nothing about {name}.")
    if kind == "false":
        b.add("deduction", f"No {last} are {prop}, so {name} is not {prop}.")
        b.add("example-testing", f"Let me check: if {name} were {prop}, {name} could not be one of the {last}.")
        answer = "False"
    else:
        b.add("deduction", f"All {last} are {prop}, so {name} is {prop}.")
        if kind == "true":
            if hops == 2:
                b.add("example-testing", f"Let me check: {name} is one of the {c1}, and all {c1} are {prop}.")
            answer = "True"
        else:
            if tempting:
                b.add("deduction", f"Some {last} are {other}, so {name} is {other}.")
                b.add("backtracking", f"Wait, only some {last} are {other}, so that does not follow.")
            b.add("uncertainty-estimation", f"Hmm, I am not sure whether {name} is {other}.")
            answer = "Uncertain"
    b.add("deduction", f"So the conclusion is {answer}.")
    return question, answer


def _knowledge(rng: random.Random, b: _Builder, world: World) -> tuple[str, str]:
    name = rng.choice(world.people)
    city = world.lives_in[name]
    country = world.city_country[city]
    cont = world.country_continent[country]
    hops = rng.randint(2, 3)
    if hops == 2:
        question, answer = f"In which country does {name} live?", country
    else:
        question, answer = f"On which continent does {name} live?", cont
    b.add("initializing", f"Okay, I need to find where {name} lives.")
    decoy = world.decoy.get(name)
    if decoy:
        b.add("adding-knowledge", f"Recall that {name} lives in {decoy}.")
        b.add("backtracking", f"Wait, that was someone else, {name} lives in {city}.")
        b.add("example-testing", f"Let me check: {name} lives in {city}, not in {decoy}.")
    else:
        b.add("adding-knowledge", f"Recall that {name} lives in {city}.")
    b.add("adding-knowledge", f"Recall that {city} is in {country}.")
    if hops == 3:
        b.add("adding-knowledge", f"Recall that {country} is in {cont}.")
        b.add("uncertainty-estimation", f"Hmm, I am not sure, but I think it is {cont}.")
    b.add("deduction", f"So the answer is {answer}.")
    return question, answer


_GEN = {"math": _math, "logic": _logic, "knowledge": _knowledge}


def generate_trace(family: str, seed: int, index: int = 0, *, world: World | None = None) -> ReasoningTrace:
    """One deterministic trace of ``family`` (random state from ``(family, seed, index)``).

    ``world``: fact table for the knowledge family (and names in logic); default :data:`WORLD`.
    """
    if family not in _GEN:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    rng = random.Random(f"{family}:{seed}:{index}")
    b = _Builder()
    question, answer = _GEN[family](rng, b, world or WORLD)
    response = b.text + "\n</think>\n" + f"The answer is {answer}."
    return ReasoningTrace(
        id=f"{family}/{seed}/{index}",
        prompt=question + "\n<think>\n",
        response=response,
        spans=tuple(b.spans),
        metadata={"dataset": family, "gold_answer": answer, "source": "lrm_interp.data.toy_tasks"},
    )


def generate_dataset(
    n_per_family: int = 10, seed: int = 0, families=FAMILIES, *, world: World | None = None
) -> ReasoningDataset:
    """``n_per_family`` traces of each family, interleaved, deterministic given ``seed``."""
    check_int("n_per_family", n_per_family, min=0)
    traces = [generate_trace(f, seed, i, world=world) for i in range(n_per_family) for f in families]
    return ReasoningDataset(traces, name=f"toy-seed{seed}")


#: the toy models' training draws its problems from seeds ``TRAIN_SEED_BASE + ...`` (``toy train``,
#: ``toy distill``): held-out problems are those of seeds below it (:func:`problems`)
TRAIN_SEED_BASE = 10_000


def check_held_out_seed(seed: int, name: str = "seed") -> None:
    """``ValueError`` when ``seed`` is one the toy models' training draws from (>= :data:`TRAIN_SEED_BASE`):
    ``toy eval --seed 10000`` scored 60 of 150 training prompts as held-out without a word (H16-SEED)."""
    if isinstance(seed, int) and seed >= TRAIN_SEED_BASE:
        raise ValueError(
            f"{name} {seed} is a training seed of the toy models (their training draws problems from seeds >= "
            f"{TRAIN_SEED_BASE}): these problems would be training data scored as held-out; use a seed below "
            f"{TRAIN_SEED_BASE}"
        )


@checked_arguments
def problems(
    n_per_family: int, seed: int, families=FAMILIES, *, world: World | None = None, held_out: bool = True
) -> list[Problem]:
    """Problems (prompt + gold answer only) for evaluation. ``held_out`` (default): the seed must be
    below :data:`TRAIN_SEED_BASE` (training draws from the seeds above; :func:`check_held_out_seed`,
    ``ValueError``); ``held_out=False`` for problems not meant as held-out (traces to attribute)."""
    check_int("n_per_family", n_per_family, min=0)
    if check_bool("held_out", held_out):
        check_held_out_seed(seed)
    out = []
    for i in range(n_per_family):
        for f in families:
            t = generate_trace(f, seed, i, world=world)
            out.append(Problem(t.id, f, t.prompt, t.metadata["gold_answer"]))
    return out


_ANSWER = re.compile(r"The answer is\s+([^\n]+?)\.?\s*$", re.M)


def extract_answer(family: str, text: str) -> str | None:
    """The final answer after ``</think>`` (``"The answer is X."``), normalised per family
    (pure text: the grader of the toy benchmark tasks and of :func:`lrm_interp.toy.evaluate.evaluate`)."""
    tail = text.split("</think>", 1)[1] if "</think>" in text else text
    m = _ANSWER.search(tail.strip())
    if not m:
        return None
    ans = m.group(1).strip().rstrip(".")
    if family == "math":
        ans = ans.replace(" ", "")
        return ans if re.fullmatch(r"-?\d+", ans) else None
    if family == "logic":
        ans = ans.capitalize()
        return ans if ans in {"True", "False", "Uncertain"} else None
    return ans


def to_markup(trace: ReasoningTrace) -> str:
    """The trace's gold annotation in the paper's markup (thinking part only)."""
    return " ".join(f'["{s.behavior}"]{trace.span_text(s)}["end-section"]' for s in trace.spans)


__all__ = [
    "FAMILIES",
    "N_PEOPLE",
    "WORLD_SEED",
    "WORLD",
    "World",
    "Problem",
    "build_world",
    "generate_trace",
    "generate_dataset",
    "problems",
    "extract_answer",
    "to_markup",
]
