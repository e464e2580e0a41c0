"""Per-trace partial statistics on disk, keyed so that a resumed run can never return stale numbers.

Layout of ``out_dir/partial/``::

    run.json                 the run key: config, weights / model-config / tokenizer fingerprints,
                             site names, context limit and overlong policy
    dom/<trace>.safetensors  per-trace DoM sums   (metadata "key" = the trace's content fingerprint,
                             plus the fingerprint of its tokens when it was cut at the context)
    grad/<trace>.safetensors per-trace AtP span-gradient sums of the one-pass stage (key as dom/: they do
                             not depend on the steering vectors; pipeline.one_pass_stage)
    atp/<trace>.safetensors  per-trace AtP dots   (metadata "key" = the DoM key + steering-vector fingerprint;
                             from grad/ and the vectors after a one-pass stage, no model pass)
    patching/<trace>.safetensors  per-trace real-patching span effects (method="patching"; keyed like atp/)

Each partial also carries the SHA-256 of its payload (:func:`lrm_interp._io.write_safetensors`): a
partial changed on disk is recomputed (with a warning), never reused. And each carries the run key
it was computed under (metadata ``"run"``: the very content of ``run.json``), so that a partial
never depends on ``run.json`` alone: with ``run.json`` deleted, or ``partial/dom``, ``grad``, ``atp``
copied into a new folder, a run with other settings or another model was served the old partials
and recorded its own key (H9-RK). A partial whose run key is not this run's is refused like a
``run.json`` of another run (:class:`ResumeMismatchError` naming the file and what differs).
Partials written before they carried a run key are reused only under a ``run.json`` that matches;
without ``run.json`` nothing can tell which run wrote them, and the run is refused.

A run whose key differs from ``run.json`` (other settings, other weights — a quantized copy
included —, another model config, another tokenizer, other sites, another context limit or
overlong policy) is refused with a message saying what differs.
Within a run, a partial whose stored key differs from the trace's current key (its prompt,
response or spans were edited under the same id; or, for AtP, the steering vectors changed
because another trace changed) is recomputed and counted as ``stale``; it is never reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lrm_interp._io import (
    ATTRIBUTION_FILES,
    LockHeldError,
    atomic_write_text,
    exclusive_lock,
    loads_strict,
    read_safetensors,
    read_text_file,
    temp_file_target,
    write_safetensors,
)
from lrm_interp.checks import checked_arguments, user_stacklevel

RUN_FILE = "run.json"
#: ``format`` of a per-trace partial (older partials have none); each carries its payload's checksum.
PARTIAL_FORMAT = "lrm_interp.partial/1"
_LEGACY = "settings.json"


class ResumeMismatchError(ValueError):
    """``out_dir`` holds partial results of a different run."""


def _json_kind(value: object) -> str:
    """What JSON calls the type of ``value`` (a message's "got an array")."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else type(value).__name__


@checked_arguments
def read_json_object(path: str | os.PathLike, fix: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in the record file ``path`` (a run's ``run.json``, an experiment's or a
    downstream run's ``settings.json``), read strictly: a leading byte-order mark dropped
    (:func:`lrm_interp._io.read_text_file`), then :func:`lrm_interp._io.loads_strict`. Invalid UTF-8,
    invalid JSON, or JSON that is not an object raises ``error`` with one line starting with
    ``path`` and ending with ``fix`` (what to do). Such a record gave "internal error
    (AttributeError: 'list' object has no attribute 'get')", or an "invalid JSON" naming no file
    (H10-JSN)."""
    try:
        text = read_text_file(path)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); {fix}") from None
    try:
        doc = loads_strict(text, str(path), error)
    except error as e:
        raise error(f"{e}; {fix}") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object, got {_json_kind(doc)}; {fix}")
    return doc


@checked_arguments
def read_run_record(root: str | os.PathLike) -> dict[str, Any] | None:
    """The run key ``run.json`` of the work folder ``root`` (``out_dir/partial``), or ``None`` when
    there is none. One that is not a readable JSON object (:func:`read_json_object`) is refused
    with :class:`ResumeMismatchError` naming the file: :func:`out_dir_lock` reads it before the
    caller loads the model (``[1]`` there gave "internal error (AttributeError ...)" after the model
    loaded, H10-JSN); :class:`PartialStore` compares it with the run's key."""
    rp = Path(root) / RUN_FILE
    if not rp.exists():
        return None
    fix = f"delete {root} or choose another out_dir (--out)"
    if rp.is_dir():
        raise ResumeMismatchError(f"{rp} is a folder, not a run key file; {fix}")
    return read_json_object(rp, fix, ResumeMismatchError)


def file_key(trace_id: str) -> str:
    """A filesystem-safe, collision-free file stem for a trace id."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in trace_id)[:40]
    return f"{safe}-{hashlib.sha1(trace_id.encode()).hexdigest()[:10]}"


def tensors_fingerprint(tensors: dict[str, dict[str, torch.Tensor]]) -> str:
    """BLAKE2b-128 of nested ``{behaviour: {site: tensor}}`` (names, shapes, float32 bytes), in sorted order."""
    h = hashlib.blake2b(digest_size=16)
    for b in sorted(tensors):
        for s in sorted(tensors[b]):
            t = tensors[b][s].detach().to("cpu", torch.float32).contiguous()
            h.update(f"{b}|{s}|{tuple(t.shape)}\n".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


_WHAT = {
    "config": "other settings",
    "weights_fingerprint": "other model weights",
    "config_fingerprint": "another model config",
    "tokenizer_fingerprint": "another tokenizer",
    "sites": "other sites",
    "context": "another context cut",
}

#: run-key entries added after runs were written without them: a key that lacks one is accepted (a
#: warning for the model config; a trace cut differently is recomputed, its partial key says the cut)
_LATER_KEYS = ("config_fingerprint", "context")


def _setting_value(v: object, limit: int = 40) -> str:
    """``repr(v)`` for a message, cut to ``limit`` characters (a long list of sites stays one line)."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 1] + "…"


def settings_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Each setting that differs between the configs ``old`` (recorded) and ``new`` (this run) with
    both values, for a message: ``"mode 'joint' there ≠ 'exact' now, k_context 3 there ≠ 2 now"``
    (the CLI user saw a Python list of names, ``differs in ['mode']``, H27-OUTDIRMSG)."""
    fields = sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f))
    return ", ".join(f"{f} {_setting_value(old.get(f))} there ≠ {_setting_value(new.get(f))} now" for f in fields)


def key_difference(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two run keys, in words (``[]``: the same run).

    A setting missing from ``old`` (a field added to :class:`AttributionConfig` after ``old`` was
    written) counts as its default, so a result or partials of an older version stay usable when
    the new setting is left at its default. ``config_fingerprint`` / ``context`` are compared only
    when both keys hold them: one missing from ``old`` (written before they were recorded) is accepted,
    the model config with a one-line warning (it cannot be checked), the context cut without one
    (each partial's key names its trace's cut, so a trace cut elsewhere is recomputed)."""
    unchecked_config = "config_fingerprint" in new and "config_fingerprint" not in old
    missing = [k for k in _LATER_KEYS if (k in new) != (k in old)]  # compared only where both record it
    if missing:
        old = {k: v for k, v in old.items() if k not in missing}
        new = {k: v for k, v in new.items() if k not in missing}
        if unchecked_config:
            import warnings

            warnings.warn(
                "the results being resumed were written before lrm_interp recorded the model config's "
                "fingerprint: a change of the model's config.json since then cannot be detected",
                stacklevel=user_stacklevel(),
            )
    if isinstance(old.get("config"), dict) and isinstance(new.get("config"), dict):
        from lrm_interp.attribution.config import AttributionConfig

        defaults = AttributionConfig().to_dict()
        added = {f: defaults[f] for f in new["config"] if f not in old["config"] and f in defaults}
        old = {**old, "config": {**old["config"], **added}}
    parts = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "config":
            parts.append(f"other settings (differs in {settings_difference(old.get(k) or {}, new.get(k) or {})})")
        elif k == "context":
            oc, nc = old.get(k) or {}, new.get(k) or {}
            parts.append(
                f"another context cut (limit {oc.get('limit')}, overlong={oc.get('overlong')!r} there; "
                f"limit {nc.get('limit')}, overlong={nc.get('overlong')!r} now)"
            )
        elif k.endswith("fingerprint"):
            parts.append(f"{_WHAT[k]} (fingerprint {str(old.get(k))[:12]} here, {str(new.get(k))[:12]} now)")
        else:
            parts.append(_WHAT.get(k, k))
    return parts


#: files an attribution run writes into its folder (``Attribution.save`` + ``write_tables``)
RESULT_FILES = ATTRIBUTION_FILES
#: the folders of per-trace partials a run writes into ``partial/``, one per stage (module docs)
STAGES = ("dom", "grad", "atp", "patching")
#: the name of a per-trace partial (:func:`file_key` + ``.safetensors``)
_PARTIAL_NAME = re.compile(r"[A-Za-z0-9_-]{0,40}-[0-9a-f]{10}\.safetensors")


def trace_ids_fingerprint(ids: Sequence[str]) -> str:
    """One fingerprint of the set of trace ids of a run (order-independent): which traces, not their
    contents (:func:`trace_contents_fingerprint`)."""
    return hashlib.sha256(json.dumps(sorted(ids)).encode("utf-8")).hexdigest()[:32]


@checked_arguments
def trace_content_keys(directory: str | Path) -> dict[str, str] | None:
    """``{file key: content fingerprint}`` of the traces an ``attribute`` run in ``directory`` scored,
    from the keys of its per-trace partials (``partial/dom/<trace>.safetensors``, metadata ``key``:
    :meth:`~lrm_interp.data.traces.ReasoningTrace.fingerprint` of the prompt, response and spans,
    plus a ``:cut...`` suffix when the trace was cut at the context, left out here). Only the
    safetensors headers are read. ``None`` when the folder holds no readable partials."""
    dom = Path(directory) / "partial" / "dom"
    if not dom.is_dir():
        return None
    keys: dict[str, str] = {}
    for f in sorted(dom.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100_000_000:
                    continue
                head = json.loads(fh.read(n))
            key = (head.get("__metadata__") or {}).get("key")
        except (OSError, ValueError, struct.error, AttributeError):
            continue
        if isinstance(key, str) and key:
            keys[f.stem] = key.split(":", 1)[0]
    return keys or None


def trace_contents_fingerprint(contents: dict[str, str]) -> str:
    """One fingerprint of the traces' contents ``{trace id: content fingerprint}`` (order-independent;
    :meth:`~lrm_interp.data.traces.ReasoningTrace.fingerprint`: prompt, response and spans), over
    the ids' file keys (:func:`file_key`), so that :func:`partials_contents_fingerprint` of the
    run's own partials gives the same value."""
    return partials_contents_fingerprint({file_key(t): fp for t, fp in contents.items()})


def partials_contents_fingerprint(keys: dict[str, str]) -> str:
    """:func:`trace_contents_fingerprint` of ``{file key: content fingerprint}``
    (:func:`trace_content_keys`: what the partials in a folder were computed on)."""
    return hashlib.sha256(json.dumps(sorted(keys.items())).encode("utf-8")).hexdigest()[:32]


def _edited_traces(out_dir: Path, recorded: dict[str, Any], dataset: dict[str, Any]) -> str | None:
    """How the traces of ``dataset`` (same ids as the finished result in ``out_dir``) differ in content
    from the ones it was computed on (a phrase completing "holds the finished result of this run …"),
    or ``None``: the same. Names the edited traces from the result's per-trace partials
    (``partial/dom`` keys) when they are what it was computed on (their fingerprint is the recorded
    one; after an ``overwrite`` run stopped midway some are the new traces', H22-ECOUNT). A result
    that records no fingerprint and lost its partials cannot be checked, and says so (H22-NOFP)."""
    contents = dataset.get("contents")
    if not isinstance(contents, dict):
        return None
    was_fp = recorded.get("contents_fingerprint")
    if was_fp is not None and was_fp == trace_contents_fingerprint(contents):
        return None
    stored = trace_content_keys(out_dir) or {}
    trusted = was_fp is None or (bool(stored) and partials_contents_fingerprint(stored) == was_fp)
    have = {tid: stored.get(file_key(tid)) for tid in contents} if trusted else {}
    known = bool(have) and all(v is not None for v in have.values())
    edited = sorted(tid for tid in contents if known and have[tid] != contents[tid])
    if edited:
        shown = ", ".join(repr(t) for t in edited[:5]) + (f" and {len(edited) - 5} more" if len(edited) > 5 else "")
        return (
            f"on other contents of the same traces: {len(edited)} of {len(contents)} traces edited under the same "
            f"id (prompt, response or spans: {shown})"
        )
    if was_fp is not None:
        return (
            "on other contents of the same traces (prompt, response or spans differ from the ones it was computed on)"
        )
    if known:
        return None  # an older result whose partials show the same contents
    return (
        "whose traces' contents cannot be checked (it records no contents_fingerprint, written by an older "
        "version, and its partial/ folder is gone)"
    )


@checked_arguments
def check_overwrite_target(out_dir: str | os.PathLike) -> None:
    """Refuse ``overwrite`` (``--overwrite``) for an ``out_dir`` that is one of the folders of another
    command's finished result (a study's ``attribution_fp32/``): the result would no longer be the
    one it was (``StudyResult.load`` then refused it and a rerun of the study left it unfinished,
    H22-OVSTUDY). Checked as given and through links (a link to the study's folder, H23-OVLINK). Run
    by ``attribute(overwrite=True)``, ``attribute --overwrite`` and ``Attribution.save(overwrite=True)``
    over another result (H23-SAVESTUDY). A rerun of the same run there without ``overwrite`` (the
    reuse command a study prints) still resumes it."""
    from lrm_interp._io import finished_result

    out = Path(out_dir)
    real = out.resolve()
    for parent_dir, name in dict.fromkeys(((out.absolute().parent, out.name), (real.parent, real.name))):
        parent = finished_result(parent_dir)
        if parent is not None and parent.kind != "attribution" and parent.owns(name):
            raise ValueError(
                f"{out} is a folder of {parent}: --overwrite (overwrite=True) does not replace part of another "
                "command's result; attribute into a new out_dir (without --overwrite, the same run resumes it there)"
            )


def provenance_checksum(provenance: Any) -> str:
    """SHA-256 (hex) of an attribution result's provenance as ``attribution.json`` holds it (canonical
    JSON): ``Attribution.save`` records it (``provenance_sha256``), so that an edited provenance
    (settings, fingerprints, traces' contents) is refused by ``Attribution.load`` and by a rerun into
    the folder instead of being believed (H22-PROV)."""
    text = json.dumps(provenance, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(b"lrm_interp.attribution.provenance/1\0" + text.encode("utf-8")).hexdigest()


def _refuse_tensors_of_other_traces(out_dir: Path, dataset: dict[str, Any]) -> None:
    """A folder holding ``attribution.safetensors`` without its ``attribution.json`` (the record
    removed, or a save stopped between the two files) is a finished result whose run cannot be
    told from its record: a rerun into it on the same traces (its partials' keys are those traces')
    finishes the save; on other traces or contents it replaced the tensors without ``--overwrite``
    (H23-NOJSON), and is refused."""
    if not (out_dir / "attribution.safetensors").exists():
        return
    contents = dataset.get("contents")
    if not isinstance(contents, dict):
        return
    stored = trace_content_keys(out_dir) or {}
    want = {file_key(t): fp for t, fp in contents.items()}
    if stored == want:
        return
    differ = sum(1 for k in set(stored) | set(want) if stored.get(k) != want.get(k))
    raise ResumeMismatchError(
        f"{out_dir} holds attribution.safetensors without its attribution.json (removed, or a save stopped "
        f"between the two), and its partials are of other traces ({differ} trace(s) differ in id or content): "
        "which result it is cannot be told, so it is not replaced; restore attribution.json, pass --overwrite "
        "(overwrite=True) to replace it, or choose another out_dir (--out)"
    )


@checked_arguments
def check_finished_result(
    out_dir: Path,
    run_key: dict[str, Any],
    result_file: str = "attribution.json",
    *,
    dataset: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Refuse to replace a finished result of another run: ``out_dir/result_file`` exists and the
    run key recorded in its provenance (settings, weights, tokenizer, sites) differs from ``run_key``,
    or it was computed on another set of traces than ``dataset`` (``{"ids_fingerprint",
    "n_traces", "contents"}``: :func:`trace_ids_fingerprint`; results written before it was recorded are
    compared by their trace count). Traces edited under the same ids (``contents``: ``{id: content
    fingerprint}``, against the recorded :func:`trace_contents_fingerprint` or, for older results, the
    partials' keys) replace the finished result only with ``overwrite`` (``--overwrite``): the
    partials of the traces that did not change are reused, the edited ones recomputed ("fix the
    annotations and rerun"); without it the rerun replaced the result silently, e.g. one of four
    behaviours with traces that kept only backtracking spans (H21-ATTDATA). An interrupted run (no
    ``result_file`` yet) resumes over edited traces without it. A folder that is not an
    attribution result but holds files a run would write (``scores.csv``, ...) is refused too: they
    are someone else's."""
    out_dir = Path(out_dir)
    path = out_dir / result_file
    if not path.exists() and not overwrite and dataset is not None:
        _refuse_tensors_of_other_traces(out_dir, dataset)
    if not path.exists():
        if out_dir.is_dir() and not (out_dir / "partial" / RUN_FILE).exists():
            clash = [f for f in RESULT_FILES if (out_dir / f).exists()]
            if clash:
                raise ResumeMismatchError(
                    f"{out_dir} is not an attribution result folder but holds {', '.join(clash)}, "
                    "which a run would overwrite; choose another out_dir (--out)"
                )
        return
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        prov = d["provenance"]
        recorded = d.get("provenance_sha256")
        if recorded is not None and recorded != provenance_checksum(prov):
            raise ResumeMismatchError(
                f"{path}: its provenance was edited since it was saved (it does not match the provenance_sha256 "
                "recorded with it): which run and traces the result holds cannot be told, so it is not replaced; "
                "restore it, delete the folder or choose another out_dir (--out)"
            )
        old = recorded_run_key(d)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ResumeMismatchError(
            f"{path} exists and is not a readable attribution result ({e!r}); delete it or choose another "
            "out_dir (--out)"
        ) from e
    new = json.loads(json.dumps(run_key, sort_keys=True, default=str))
    parts = key_difference(old, new)
    if dataset is not None:
        was = prov.get("dataset") or {}
        if was.get("ids_fingerprint") is not None and was["ids_fingerprint"] != dataset["ids_fingerprint"]:
            parts.append(
                f"other traces ({was.get('n_traces')} traces there, {dataset['n_traces']} now, other trace ids)"
            )
        elif was.get("ids_fingerprint") is None and was.get("n_traces") not in (None, dataset["n_traces"]):
            parts.append(f"other traces ({was.get('n_traces')} traces there, {dataset['n_traces']} now)")
    if parts:
        only = " (--overwrite / overwrite=True replaces only a result of the same run on edited traces)"
        raise ResumeMismatchError(
            f"{out_dir} holds the finished result of a run with {'; '.join(parts)}: it is "
            "never replaced by another run. Delete the folder or choose another out_dir (--out)"
            + (only if overwrite else "")
        )
    rec = prov.get("dataset")
    edited = _edited_traces(out_dir, rec if isinstance(rec, dict) else {}, dataset) if dataset is not None else None
    if edited and not overwrite:
        reuse = " (the traces that did not change are reused from its partials)" if trace_content_keys(out_dir) else ""
        raise ResumeMismatchError(
            f"{out_dir} holds the finished result of this run {edited}. A rerun would replace it: pass --overwrite "
            f"(overwrite=True) to replace it{reuse}, or choose another out_dir (--out)"
        )


def recorded_run_key(record: dict[str, Any]) -> dict[str, Any]:
    """The run key an ``attribution.json`` (``record``) was computed with, as a run's key compares
    (:func:`check_finished_result`): settings, weights / tokenizer / config fingerprints, sites and
    the context its traces were checked at. ``KeyError`` / ``TypeError`` for a record missing them."""
    prov = record["provenance"]
    key = {
        "config": prov["settings"],
        "weights_fingerprint": prov["model"]["weights_fingerprint"],
        "tokenizer_fingerprint": prov["model"]["tokenizer"]["fingerprint"],
        "sites": [s["name"] for s in record["sites"]],
    }
    if prov["model"].get("config_fingerprint") is not None:
        key["config_fingerprint"] = prov["model"]["config_fingerprint"]
    ol = prov.get("overlong")
    if isinstance(ol, dict) and "limit" in ol:  # the model's context the traces were cut / checked at
        key["context"] = {"limit": ol["limit"], "overlong": ol.get("policy", prov["settings"].get("overlong"))}
    return key


@checked_arguments
def result_identity_sha256(folder: str | os.PathLike) -> str | None:
    """SHA-256 of which computation ``folder/attribution.json`` holds: its run key
    (:func:`recorded_run_key`) and its traces by id and content (``ids_fingerprint``, ``n_traces``,
    ``contents_fingerprint``), not their order nor the data file's name. Two results of the same
    identity are the same scores up to float summation order (a rerun over the traces reordered
    moved them by ~1e-23, H23-REORDER). ``None``: no readable record, or one without the contents
    fingerprint (older results: their identity cannot be told)."""
    try:
        d = json.loads((Path(folder) / "attribution.json").read_text(encoding="utf-8"))
        ds = d["provenance"]["dataset"]
        traces = {k: ds[k] for k in ("ids_fingerprint", "n_traces", "contents_fingerprint")}
        if traces["contents_fingerprint"] is None or traces["ids_fingerprint"] is None:
            return None
        ident = {"run": recorded_run_key(d), "traces": traces}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@checked_arguments
def recorded_dataset_name(out_dir: Path, result_file: str = "attribution.json") -> str | None:
    """The dataset name recorded in the finished result ``out_dir/result_file`` (``provenance.dataset.name``),
    or ``None``: no such result, unreadable, or no name. A rerun into a finished result of the same run
    (:func:`check_finished_result` passed) keeps it: the name is the data file's stem, and a link or
    copy of the same traces under another name renamed the result, so that a later ``compare`` warned
    "different dataset names" for identical traces (H17-SYM)."""
    try:
        d = json.loads((Path(out_dir) / result_file).read_text(encoding="utf-8"))
        name = d["provenance"]["dataset"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name else None


#: the metadata entry of a per-trace partial holding the run key it was computed under (module docs)
RUN_META = "run"


@checked_arguments
class PartialStore:
    """Reads and writes per-trace partials under ``root`` (``None``: keep nothing, resume nothing).

    ``run_key``: JSON-able dict with ``config``, ``weights_fingerprint``, ``config_fingerprint``,
    ``tokenizer_fingerprint``, ``sites`` and ``context`` (the model's context limit and the overlong
    policy). ``counts[stage]`` = ``{"computed", "reused", "stale"}`` after :meth:`run`.

    Each partial written carries ``run_key`` (metadata :data:`RUN_META`); one read back under
    another run key is refused (:class:`ResumeMismatchError`), one without a run key (written by an
    older lrm_interp) is reused only when ``run.json`` was there and matched (module docs).
    """

    def __init__(self, root: Path | None, run_key: dict[str, Any]):
        self.root = root
        self.counts: dict[str, dict[str, int]] = {}
        key = json.loads(json.dumps(run_key, sort_keys=True, default=str))
        self._key = key
        self._key_text = json.dumps(key, sort_keys=True)
        #: run keys (as stored) already compared with this run's: what differs (``[]``: the same run)
        self._seen: dict[str, list[str]] = {self._key_text: []}
        #: whether partials without a run key may be reused: only under a matching ``run.json``
        self._unkeyed_ok = False
        if root is None:
            return
        rp = root / RUN_FILE
        old = read_run_record(root)
        if old is not None:
            parts = key_difference(old, key)
            if parts:
                raise ResumeMismatchError(
                    f"{root} holds partial results of a run with {'; '.join(parts)}: they cannot be reused by "
                    f"this run. Rerunning with the settings recorded in {rp} resumes that run; else delete the "
                    "folder or choose another out_dir (--out)"
                )
            self._unkeyed_ok = True  # partials of an older lrm_interp: run.json vouches for them, as before
        elif (root / _LEGACY).exists():
            raise ResumeMismatchError(
                f"{root} holds partial results written by an older lrm_interp (no {RUN_FILE}, "
                "so weights and traces cannot be checked): delete it or choose another out_dir (--out)"
            )
        else:
            # no run.json (deleted, or partials copied here from another folder): each partial left
            # must prove it is this run's before run.json says so (H9-RK)
            for p in self._stored_partials():
                self._check_run(p, self._run_meta(p))
            atomic_write_text(rp, json.dumps(key, indent=2, sort_keys=True))

    def _stored_partials(self) -> list[Path]:
        """Every per-trace partial under ``root`` (:data:`STAGES`; the names a run writes)."""
        assert self.root is not None
        found: list[Path] = []
        for stage in STAGES:
            d = self.root / stage
            if d.is_dir():
                found += sorted(p for p in d.iterdir() if _PARTIAL_NAME.fullmatch(p.name) and p.is_file())
        return found

    @staticmethod
    def _run_meta(path: Path) -> str | None:
        """The run key stored in partial ``path`` (:data:`RUN_META`; ``None``: none, written by an
        older lrm_interp); ``""`` when the file cannot be read (it is recomputed, never trusted)."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get(RUN_META)
        except Exception:  # noqa: BLE001 - a truncated or foreign file is recomputed, never trusted
            return ""

    def _check_run(self, path: Path, stored: str | None) -> bool:
        """Whether partial ``path``, whose stored run key is ``stored`` (:meth:`_run_meta`), may be
        reused: ``True`` for this run's key (or none under a matching ``run.json``); ``False`` for a
        key that is no JSON (a damaged file: recomputed). :class:`ResumeMismatchError` for another
        run's key, and for a partial without one when no ``run.json`` vouched for it."""
        assert self.root is not None
        if stored is None:
            if self._unkeyed_ok:
                return True
            raise ResumeMismatchError(
                f"{self.root} holds partials with no run key and no {RUN_FILE} (e.g. {path.parent.name}/{path.name}, "
                "written by an older lrm_interp): cannot tell which run wrote them; delete "
                f"{self.root} to recompute, or choose another out_dir (--out)"
            )
        parts = self._seen.get(stored)
        if parts is None:
            try:
                old = json.loads(stored)
            except (json.JSONDecodeError, TypeError):
                return False
            if not isinstance(old, dict):
                return False
            parts = self._seen[stored] = key_difference(old, self._key)
        if parts:
            why = f"although {RUN_FILE} says this run's" if (self.root / RUN_FILE).exists() else f"no {RUN_FILE}"
            raise ResumeMismatchError(
                f"{self.root} holds partials of a run with {'; '.join(parts)} (e.g. {path.parent.name}/{path.name}; "
                f"{why}): they cannot be reused by this run. Rerunning with the settings recorded in that partial "
                f"resumes that run; else delete {self.root} or choose another out_dir (--out)"
            )
        return True

    def _path(self, stage: str, trace_id: str) -> Path:
        assert self.root is not None
        return self.root / stage / f"{file_key(trace_id)}.safetensors"

    def get(self, stage: str, trace_id: str, key: str) -> tuple[dict[str, torch.Tensor] | None, bool]:
        """``(stats, stale)``: the stored partial when its key matches; ``(None, True)`` when one with
        another key exists; ``(None, False)`` when there is none."""
        if self.root is None:
            return None, False
        p = self._path(stage, trace_id)
        if not p.exists():
            return None, False
        from safetensors import safe_open

        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - a truncated or foreign file is recomputed, never trusted
            return None, True
        if not self._check_run(p, meta.get(RUN_META)):  # another run's partial: refused (H9-RK)
            return None, True
        if meta.get("key") != key:
            return None, True
        try:
            stats, _ = read_safetensors(p, (PARTIAL_FORMAT, None), "partial result")
        except ValueError as e:  # checksum mismatch, damaged data: recomputed, never trusted
            import warnings

            warnings.warn(f"{' '.join(str(e).split())}: recomputing trace {trace_id!r}", stacklevel=user_stacklevel())
            return None, True
        return stats, False

    def put(self, stage: str, trace_id: str, key: str, stats: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            return
        write_safetensors(
            self._path(stage, trace_id), stats, {"format": PARTIAL_FORMAT, "key": key, RUN_META: self._key_text}
        )

    @checked_arguments
    def run(
        self,
        stage: str,
        items: Sequence[tuple[str, str, Any]],
        fn: Callable[[Any], dict[str, torch.Tensor]],
        *,
        progress: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        """For each ``(trace_id, key, item)``: the stored partial, or ``fn(item)`` (then stored)."""
        c = self.counts.setdefault(stage, {"computed": 0, "reused": 0, "stale": 0})
        out = []
        for tid, key, item in tqdm(items, desc=f"{stage} ({len(items)} traces)", disable=not progress, unit="trace"):
            stats, stale = self.get(stage, tid, key)
            if stats is None:
                stats = fn(item)
                self.put(stage, tid, key, stats)
                c["computed"] += 1
                c["stale"] += int(stale)
            else:
                c["reused"] += 1
            out.append(stats)
        if progress and self.root is not None and (c["reused"] or c["stale"]):
            tqdm.write(
                f"{stage}: reused {c['reused']} of {len(items)} traces from {self.root}"
                + (f"; recomputed {c['stale']} whose content changed" if c["stale"] else "")
            )
        return out


class OutDirInUseError(ValueError):
    """Another live process runs into the same ``out_dir`` (it holds :func:`out_dir_lock`)."""


#: the lock file of a run, inside ``out_dir/partial/`` (removed when the run ends)
LOCK_FILE = ".lock"
#: folders this process holds the lock of: ``{resolved out_dir: depth}``
_HELD: dict[Path, int] = {}


@checked_arguments
@contextlib.contextmanager
def out_dir_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the result folder ``out_dir`` while the body runs.

    Two runs into one new folder both "succeeded" and one result silently replaced the other
    (the check for another finished result ran only at their start, H7-K4): a run now holds
    :func:`lrm_interp._io.exclusive_lock` on ``out_dir/partial/.lock`` for its whole duration, and
    a second live run is refused at once with :class:`OutDirInUseError` naming the folder and the
    holder's pid. The lock goes with the process (a killed run holds none); re-entrant within a
    process. Once the lock is taken, the run key ``partial/run.json`` found there is read
    (:func:`read_run_record`): one that is no JSON object is refused naming it, before the caller
    loads the model (H10-JSN). On release the lock file is removed, and so are ``partial/`` and ``out_dir`` when this
    made them and they are empty (a refused or failed run leaves no empty folder behind)."""
    out = Path(out_dir)
    key = out.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    # the folders this makes (out_dir's missing parents included), outermost first
    made = [d for d in (*reversed(out.parents), out, out / "partial") if not (d.exists() or d.is_symlink())]
    try:
        (out / "partial").mkdir(parents=True, exist_ok=True)
        try:
            with exclusive_lock(out / "partial" / LOCK_FILE, "attribution run"):
                _HELD[key] = 1
                try:
                    read_run_record(out / "partial")  # readable before any work (H10-JSN)
                    yield
                finally:
                    del _HELD[key]
        except LockHeldError as e:
            raise OutDirInUseError(
                f"{out} is in use by another attribution run (pid {e.pid}): two runs into one folder would "
                "replace each other's result; wait for it to end or choose another out_dir (--out)"
            ) from None
    finally:
        for d in reversed(made):  # partial/, then out_dir: only when this made them and they are empty
            with contextlib.suppress(OSError):
                d.rmdir()


def _written_by_run(name: str, stage: str | None) -> bool:
    """Whether the entry ``name`` of ``partial/`` (``stage=None``) or of ``partial/<stage>/`` is a
    file an attribution run writes there (the atomic writers' temporary files included)."""
    target = temp_file_target(name) or name
    if stage is None:
        return target in (RUN_FILE, _LEGACY) or name == LOCK_FILE
    return bool(_PARTIAL_NAME.fullmatch(target))


@checked_arguments
def clear_partials(root: str | os.PathLike) -> list[str]:
    """Remove what attribution runs wrote into the work folder ``root`` (``out_dir/partial``): the
    run key ``run.json`` (and an older run's ``settings.json``), the lock file, every per-trace
    partial ``<stage>/<trace>.safetensors`` (:data:`STAGES`) and the atomic writers' temporary
    files; then each stage folder left empty, and ``root`` when it is empty. Anything else (a file
    or folder no run writes: someone else's) is kept, with the folders holding it; returns those
    kept, as paths relative to ``root``. ``Attribution.save(overwrite=True)`` used to delete the
    whole folder, results written into it included (H8-PT).

    A live run holding the folder's lock (:func:`out_dir_lock`, another process) is refused with
    :class:`OutDirInUseError` before anything is removed; the lock this process holds is kept."""
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        return []
    lock = root / LOCK_FILE
    held_here = root.parent.resolve() in _HELD
    if lock.is_file() and not held_here:
        _refuse_live_lock(lock, root.parent)
    kept: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if _is_stage_folder(entry):
            for f in sorted(entry.iterdir(), key=lambda p: p.name):
                if _run_file(f, entry.name):
                    f.unlink()
                else:
                    kept.append(f"{entry.name}/{f.name}")
            with contextlib.suppress(OSError):
                entry.rmdir()  # only when empty
        elif _run_file(entry, None):
            if entry.name == LOCK_FILE and held_here:
                kept.append(entry.name)
                continue
            entry.unlink()
        else:
            kept.append(entry.name + ("/" if entry.is_dir() else ""))
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty
    return kept


@checked_arguments
def foreign_partials(root: str | os.PathLike) -> list[str]:
    """The entries of the work folder ``root`` (``out_dir/partial``) that no attribution run writes
    (someone else's: what :func:`clear_partials` keeps), as paths relative to ``root``, a folder
    with a trailing ``/``; nothing is removed. ``study --overwrite``, which removes its attribution
    folders whole, refuses a folder holding such a file (H29-STPARTIAL)."""
    root = Path(root)
    if root.is_symlink() or not root.is_dir():
        return []
    out: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if _is_stage_folder(entry):
            out += [f"{entry.name}/{f.name}" for f in sorted(entry.iterdir()) if not _run_file(f, entry.name)]
        elif not _run_file(entry, None):
            out.append(entry.name + ("/" if entry.is_dir() else ""))
    return out


def _is_stage_folder(entry: Path) -> bool:
    return entry.name in STAGES and entry.is_dir() and not entry.is_symlink()


def _run_file(entry: Path, stage: str | None) -> bool:
    """``entry`` of ``partial/`` (``stage=None``) or of ``partial/<stage>/`` is a file (not a link)
    an attribution run writes there."""
    return _written_by_run(entry.name, stage) and entry.is_file() and not entry.is_symlink()


def _refuse_live_lock(lock: Path, out: Path) -> None:
    """:class:`OutDirInUseError` when another live process holds the lock file ``lock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locks
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = (os.pread(fd, 200, 0).decode("utf-8", "replace").split() or ["?"])[0]
            raise OutDirInUseError(
                f"{out} is in use by an attribution run (pid {pid}): its partials are not removed while it "
                "runs; wait for it to end or choose another folder"
            ) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = [
    "clear_partials",
    "foreign_partials",
    "STAGES",
    "out_dir_lock",
    "OutDirInUseError",
    "PartialStore",
    "ResumeMismatchError",
    "read_json_object",
    "read_run_record",
    "file_key",
    "tensors_fingerprint",
    "RUN_FILE",
]
