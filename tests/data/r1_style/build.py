"""Build the paper layout of this gold set from ``source/`` (run from anywhere).

``source/<dataset>/<j>.txt`` is the thinking part in the paper's markup, written with the
original line breaks, then ``</think>`` and the final answer. This writes

- ``outputs/<dataset>/<j>.txt``: the response (tags removed, line breaks kept, answer appended);
- ``annotated/<dataset>/<j>.txt``: the markup of the thinking part only, as GPT-4o writes it in
  the paper's files: every second file with its line breaks collapsed into spaces, two files
  wrapped in a code fence (both are deviations the parser repairs, method.md §1).

``python build.py --check`` exits 1 if the stored files differ from what it would write.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SEG = re.compile(r'\["([a-z-]+)"\](.*?)\["end-section"\]', re.S)
FENCED = {"AIME_2024/5", "MuSiQue/3"}


def _key(p: Path):
    return (p.parent.name, int(p.stem))


def build() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for n, src in enumerate(sorted(ROOT.glob("source/*/*.txt"), key=_key)):
        ds, j = src.parent.name, src.stem
        text = src.read_text(encoding="utf-8")
        thinking, answer = text.split("</think>", 1)
        thinking = thinking.rstrip("\n")
        segs = list(SEG.finditer(thinking))
        rest = SEG.sub("", thinking)
        if rest.strip():
            raise ValueError(f"{src}: text outside any segment: {rest.strip()[:60]!r}")
        response = SEG.sub(lambda m: m.group(2), thinking) + "\n</think>" + answer
        if n % 2:
            markup = " ".join(f'["{m.group(1)}"]{" ".join(m.group(2).split())}["end-section"]' for m in segs)
        else:
            markup = thinking
        if f"{ds}/{j}" in FENCED:
            markup = "```plaintext\n" + markup + "\n```"
        files[ROOT / "outputs" / ds / f"{j}.txt"] = response
        files[ROOT / "annotated" / ds / f"{j}.txt"] = markup + "\n"
    return files


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        bad = [
            str(p.relative_to(ROOT)) for p, t in files.items() if not p.is_file() or p.read_text(encoding="utf-8") != t
        ]
        stale = [
            str(p.relative_to(ROOT))
            for d in ("outputs", "annotated")
            for p in ROOT.glob(f"{d}/*/*.txt")
            if p not in files
        ]
        if bad or stale:
            print("out of date:", bad, "not from source:", stale)
            return 1
        return 0
    for p, t in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(t, encoding="utf-8")
    print(f"wrote {len(files) // 2} traces")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
