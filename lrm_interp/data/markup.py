"""Parser for the paper's annotation markup ``["label"]text["end-section"]``.

Real annotator output deviates often (method.md §1). Each deviation is repaired where the
meaning is clear and named in the result; a file without any label tag is rejected with
its reason; nothing is dropped silently (docs/data_format.md has the full table).

=====================================  ===============================================
deviation                              handling (name in ``repairs`` / ``notes``)
=====================================  ===============================================
code fence lines (```, ```plaintext)   removed wherever they are (``code fence``)
numbered labels ``["1. deduction"]``   number dropped, name kept (``numbered label``)
bare numeric tags ``[2]``              Venhoff's numbering = order of ``BEHAVIORS``
                                       (0 initializing … 5 backtracking) (``numeric tag``);
                                       only in files without quoted labels, elsewhere
                                       ``[2]`` is ordinary text (e.g. ``a[2]``)
unquoted label ``[backtracking]``      accepted for known labels/aliases only
                                       (``unquoted label``)
missing ``["end-section"]``            a segment ends at the next label or at the end of
                                       the file (``implicit end``; note says how)
labels sharing one end marker          same: the earlier segment ends where the next
                                       label starts (``implicit end``)
case / spelling variants               explicit table :data:`LABEL_ALIASES`,
                                       case-insensitive (``alias``)
invented labels (``verification``)     segment kept with ``label=None``: the aligner
                                       reports it *not placed: unknown label*; callers
                                       may pass ``aliases={"verification": ...}``
end marker with no open segment        ignored (``stray end marker``)
text outside any segment               not a segment; quoted in ``notes``
                                       (``unlabelled text``)
empty segment                          kept; the aligner reports it (``empty segment text``)
refusal / free text without tags       file ``rejected``, reason quotes its start
=====================================  ===============================================
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from lrm_interp.data.traces import BEHAVIORS

#: Tags that close a segment (compared lower-cased, spaces/underscores as written).
END_LABELS: frozenset[str] = frozenset(
    {"end-section", "end_section", "endsection", "end section", "end-segment", "end"}
)

#: Misspellings and variants seen in real annotation files -> canonical label. Keys are
#: matched case-insensitively after stripping; canonical names themselves match in any case
#: (``Example-testing``). Invented labels (``verification``, ``clarification``...) are NOT here.
LABEL_ALIASES: dict[str, str] = {
    # initializing
    "intializing": "initializing",
    "initalizing": "initializing",
    "initialising": "initializing",
    "initialization": "initializing",
    "initialisation": "initializing",
    "initializaing": "initializing",
    "initialize": "initializing",
    # deduction
    "deuction": "deduction",
    "deducation": "deduction",
    "deductions": "deduction",
    "deducing": "deduction",
    # adding-knowledge
    "adding_knowledge": "adding-knowledge",
    "adding knowledge": "adding-knowledge",
    "add-knowledge": "adding-knowledge",
    "addition-knowledge": "adding-knowledge",
    "added-knowledge": "adding-knowledge",
    # example-testing
    "example_testing": "example-testing",
    "example testing": "example-testing",
    "examples-testing": "example-testing",
    "exampe-testing": "example-testing",
    "example-test": "example-testing",
    # uncertainty-estimation
    "uncertainty_estimation": "uncertainty-estimation",
    "uncertainty estimation": "uncertainty-estimation",
    "certainty-estimation": "uncertainty-estimation",
    "uncertainity-estimation": "uncertainty-estimation",
    "uncertainty-estimate": "uncertainty-estimation",
    # backtracking
    "back-tracking": "backtracking",
    "back tracking": "backtracking",
    "backtrack": "backtracking",
}

# ["label"] / ['label'] / [“label”] ; [3] ; [label-word] (unquoted: accepted only if known)
_TAG = re.compile(
    r"""\[\s*["'“”‘’]([^"'“”‘’\[\]\n]{1,80})["'“”‘’]\s*\]"""
    r"""|\[\s*(\d{1,2})\s*\]"""
    r"""|\[\s*([A-Za-z][A-Za-z _-]{2,40})\s*\]"""
)
_NUMBERED = re.compile(r"^\s*(\d+)\s*[.):-]\s*(\S.*)$")
_FENCE_LINE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.M)
_RULE_LINE = re.compile(r"^[ \t]*(?:-{3,}|\*{3,}|_{3,}|={3,})[ \t]*$", re.M)


@dataclass(frozen=True)
class Segment:
    """One labelled segment of an annotation file.

    ``label`` is the canonical behaviour (``None`` for an unknown label); ``raw_label`` is
    the tag as written; ``repairs`` names what was fixed for this segment; ``line`` is the
    1-based line of its tag in the annotation file (after code-fence removal: same numbering,
    fence lines are blanked, not deleted).
    """

    index: int
    raw_label: str
    label: str | None
    text: str
    repairs: tuple[str, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class ParsedAnnotation:
    """Result of parsing one annotation file: segments + file-level report.

    ``status``: ``"parsed"`` (clean), ``"repaired"`` (``repairs`` lists what was fixed) or
    ``"rejected"`` (``reason`` says why; no segments).
    """

    source: str
    status: str
    segments: tuple[Segment, ...] = ()
    repairs: tuple[str, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    def unknown_labels(self) -> list[str]:
        return [s.raw_label for s in self.segments if s.label is None]


def _alias_table(aliases: dict[str, str] | None) -> dict[str, str]:
    table = dict(LABEL_ALIASES)
    for k, v in (aliases or {}).items():
        if v not in BEHAVIORS:
            raise ValueError(f"alias {k!r} -> {v!r}: target must be one of {BEHAVIORS}")
        table[k.strip().lower()] = v
    return table


def canonical_label(raw: str, aliases: dict[str, str] | None = None) -> tuple[str | None, list[str]]:
    """Map a tag to a canonical behaviour: ``(label or None, repairs applied)``.

    ``"deuction"`` → ``("deduction", ["alias"])``; ``"1. deduction"`` → ``("deduction",
    ["numbered label"])``; ``"5"`` → ``("backtracking", ["numeric tag"])``; an unknown
    label → ``(None, [])``. ``aliases`` extends :data:`LABEL_ALIASES`.
    """
    return _canonical(raw, _alias_table(aliases))


def _canonical(raw: str, table: dict[str, str]) -> tuple[str | None, list[str]]:
    s = raw.strip()
    if s.isdigit():
        k = int(s)
        return (BEHAVIORS[k], ["numeric tag"]) if k < len(BEHAVIORS) else (None, [])
    repairs: list[str] = []
    m = _NUMBERED.match(s)
    if m:
        s = m.group(2).strip()
        repairs.append("numbered label")
    low = s.lower()
    if low in BEHAVIORS:
        return low, repairs + (["alias"] if s != low else [])
    if low in table:
        return table[low], repairs + ["alias"]
    return None, repairs


def _is_end(raw: str) -> bool:
    return raw.strip().lower() in END_LABELS


def _clean_text(s: str) -> str:
    """Segment text: separator lines (``---``) at its edges removed, then stripped."""
    s = s.strip()
    while True:
        m = re.match(r"(?:-{3,}|\*{3,}|_{3,}|={3,})[ \t]*(?:\n|$)", s)
        if m:
            s = s[m.end() :].strip()
            continue
        m = re.search(r"(?:^|\n)[ \t]*(?:-{3,}|\*{3,}|_{3,}|={3,})$", s)
        if m:
            s = s[: m.start()].strip()
            continue
        return s


def parse_markup(text: str, *, source: str = "", aliases: dict[str, str] | None = None) -> ParsedAnnotation:
    """Parse one annotation file's text into segments, repairing known deviations.

    Args:
        text: the annotation file's content.
        source: a name for messages (e.g. the file path).
        aliases: extra ``{variant: canonical}`` label aliases (case-insensitive keys).
    """
    table = _alias_table(aliases)
    repairs: list[str] = []
    notes: list[str] = []
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    if _FENCE_LINE.search(body):
        body = _FENCE_LINE.sub("", body)  # blank the line, keep line numbers
        repairs.append("code fence")

    matches = list(_TAG.finditer(body))
    has_quoted_label = any(m.group(1) is not None and not _is_end(m.group(1)) for m in matches)
    tags: list[tuple[re.Match, str, bool]] = []  # (match, raw label, is_end)
    for m in matches:
        if m.group(1) is not None:
            tags.append((m, m.group(1), _is_end(m.group(1))))
        elif m.group(2) is not None:
            if not has_quoted_label:  # bare numbers are tags only in files that use them as tags
                tags.append((m, m.group(2), False))
        else:
            raw = m.group(3)
            if _is_end(raw) and raw.strip().lower() != "end":
                tags.append((m, raw, True))
            elif _canonical(raw, table)[0] is not None:
                tags.append((m, raw, False))

    if not any(not is_end for _, _, is_end in tags):
        snippet = " ".join(text.split())[:100]
        why = "only end markers, no label tag" if tags else "no annotation markup found (refusal or free text?)"
        return ParsedAnnotation(source, "rejected", repairs=tuple(repairs), reason=f"{why}: {snippet!r}")

    segments: list[Segment] = []
    open_tag: tuple[str, str | None, list[str], int, int] | None = None  # raw, label, repairs, start, line
    last_end = 0
    n_shared = n_unclosed = 0
    n_end_markers = sum(1 for _, _, e in tags if e)

    def gap_note(a: int, b: int) -> None:
        gap = _RULE_LINE.sub("", body[a:b])
        if gap.strip():
            repairs.append("unlabelled text")
            notes.append(f"unlabelled text at line {body.count(chr(10), 0, a) + 1}: {' '.join(gap.split())[:80]!r}")

    def close(end: int, implicit: bool) -> None:
        nonlocal open_tag
        assert open_tag is not None  # every caller checks
        raw, label, seg_rep, start, line = open_tag
        rep = seg_rep + (["implicit end"] if implicit else [])
        segments.append(Segment(len(segments), raw, label, _clean_text(body[start:end]), tuple(rep), line))
        open_tag = None

    for m, raw, is_end in tags:
        if open_tag is None:
            gap_note(last_end, m.start())
        if is_end:
            if open_tag is None:
                repairs.append("stray end marker")
                notes.append(f"stray end marker at line {body.count(chr(10), 0, m.start()) + 1}")
            else:
                close(m.start(), implicit=False)
        else:
            if open_tag is not None:
                close(m.start(), implicit=True)
                n_shared += 1
            label, rep = _canonical(raw, table)
            if m.group(3) is not None:
                rep = rep + ["unquoted label"]
            open_tag = (raw, label, rep, m.end(), body.count("\n", 0, m.start()) + 1)
        last_end = m.end()
    if open_tag is not None:
        close(len(body), implicit=True)
        n_unclosed = 1
    else:
        gap_note(last_end, len(body))

    if n_end_markers == 0:
        notes.append(
            f"no end markers: each of the {len(segments)} segments ends at the next label or at the end of the file"
        )
    elif n_shared or n_unclosed:
        notes.append(
            f"{n_shared} segment(s) closed by the next label (shared end marker)"
            + (", the last one by the end of the file" if n_unclosed else "")
        )
    for s in segments:
        repairs.extend(s.repairs)
        if s.label is None:
            notes.append(f"unknown label {s.raw_label!r} at line {s.line}")
        if not s.text:
            notes.append(f"empty segment [{s.raw_label}] at line {s.line}")
    uniq = tuple(dict.fromkeys(repairs))
    return ParsedAnnotation(source, "repaired" if uniq else "parsed", tuple(segments), uniq, None, tuple(notes))
