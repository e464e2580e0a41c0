"""``load_dataset``: one entry point for every form traces come in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace


def load_dataset(data: ReasoningDataset | Sequence[ReasoningTrace] | str | os.PathLike, **kw) -> ReasoningDataset:
    """Accept a dataset, a list of traces, a JSONL file or a paper-layout directory."""
    if isinstance(data, ReasoningDataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if p.is_dir():
            if (p / "annotated").is_dir() or (p / "outputs").is_dir():
                from lrm_interp.data.paper_layout import load_paper_layout

                return load_paper_layout(p, **kw)
            jsonls = sorted(p.glob("*.jsonl"))
            if len(jsonls) == 1:
                return ReasoningDataset.load_jsonl(jsonls[0])
            raise ValueError(f"{p}: expected a paper-layout directory (outputs/ + annotated/) "
                             f"or exactly one .jsonl file, found {len(jsonls)} .jsonl files")
        if not p.exists():
            raise FileNotFoundError(f"dataset {p} does not exist")
        return ReasoningDataset.load_jsonl(p)
    traces = list(data)
    if not all(isinstance(t, ReasoningTrace) for t in traces):
        raise TypeError("dataset must be a ReasoningDataset, a list of ReasoningTrace, a JSONL path "
                        "or a paper-layout directory")
    return ReasoningDataset(traces)


__all__ = ["load_dataset"]
