"""``load_dataset``: one entry point for every form traces come in.

Every form is held to the same size limit (:func:`lrm_interp.data.traces.response_limit`: 2M
characters by default, ``max_response_chars=`` or ``$LRM_INTERP_MAX_RESPONSE_CHARS``), checked
before anything expensive runs: JSONL lines as they are read, the text files of a paper-layout
folder before they are parsed and aligned (:func:`check_layout_files`), in-memory traces before
they are returned.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from lrm_interp.checks import path_argument
from lrm_interp.data.paper_layout import check_layout_files
from lrm_interp.data.traces import ReasoningDataset, ReasoningTrace, response_limit


def load_dataset(
    data: ReasoningDataset | Sequence[ReasoningTrace] | str | os.PathLike,
    *,
    max_response_chars: int | None = None,
    **kw,
) -> ReasoningDataset:
    """Accept a dataset, a list of traces, a JSONL file or a paper-layout directory.

    ``max_response_chars``: the largest response (and prompt) accepted, in characters (default
    :func:`~lrm_interp.data.traces.response_limit`); a larger one raises
    :class:`~lrm_interp.data.traces.ResponseTooLargeError` naming the file and line, file, or
    trace. ``kw`` go to :func:`~lrm_interp.data.paper_layout.load_paper_layout`. A JSONL file or
    paper-layout folder without any trace raises ``ValueError`` naming it (in-memory datasets
    may be empty).
    """
    limit = response_limit(max_response_chars)
    if isinstance(data, ReasoningDataset):
        return data.check_sizes(limit)
    if isinstance(data, (str, os.PathLike)):
        p = Path(path_argument(data, "data"))  # "" was the current folder (H12-EMPY)
        if p.is_dir():
            if (p / "annotated").is_dir() or (p / "outputs").is_dir():
                from lrm_interp.data.paper_layout import load_paper_layout

                ds = load_paper_layout(p, max_response_chars=limit, **kw)
                if not len(ds):  # an empty result is never a silent success
                    unannotated = sum(f.status == "missing annotation" for f in ds.report.files)
                    if unannotated:
                        raise ValueError(
                            f"{p}: no annotated traces: {unannotated} output file(s) but no annotation "
                            "file for any (annotated/<dataset>/<j>.txt; 'lrm-interp annotate' writes them)"
                        )
                    raise ValueError(
                        f"{p}: no traces (no outputs/<dataset>/<j>.txt or annotated/<dataset>/<j>.txt "
                        "files" + (" among the datasets asked for" if kw.get("datasets") else "") + ")"
                    )
                return ds
            jsonls = sorted(p.glob("*.jsonl"))
            if len(jsonls) == 1:
                return ReasoningDataset.load_jsonl(jsonls[0], max_response_chars=limit)
            raise ValueError(
                f"{p}: expected a paper-layout directory (outputs/ + annotated/) "
                f"or exactly one .jsonl file, found {len(jsonls)} .jsonl files"
            )
        if not p.exists():
            raise FileNotFoundError(f"dataset {p} does not exist")
        return ReasoningDataset.load_jsonl(p, max_response_chars=limit)
    check_dataset_argument(data)
    traces = list(data)
    if not all(isinstance(t, ReasoningTrace) for t in traces):
        bad = next(t for t in traces if not isinstance(t, ReasoningTrace))
        raise TypeError(f"{_DATASET_TYPES}, got a {type(data).__name__} holding a {type(bad).__name__}")
    return ReasoningDataset(traces).check_sizes(limit)


_DATASET_TYPES = (
    "dataset must be a ReasoningDataset, a list of ReasoningTrace, a JSONL path or a paper-layout directory"
)


def check_dataset_argument(data: object) -> None:
    """``TypeError`` (the one message of :func:`load_dataset`) when ``data`` cannot be a dataset at all:
    not a dataset, a path, nor a list / tuple of traces (``None``, ``123``, a dict: it said "'int'
    object is not iterable", and :func:`~lrm_interp.attribute` only after loading the model, H7-API1).
    Cheap: :func:`~lrm_interp.attribute` calls it before anything loads."""
    if isinstance(data, (ReasoningDataset, str, os.PathLike)):
        return
    from collections.abc import Mapping

    if isinstance(data, (bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"{_DATASET_TYPES}, got {type(data).__name__}")


__all__ = ["load_dataset", "check_dataset_argument", "check_layout_files"]
