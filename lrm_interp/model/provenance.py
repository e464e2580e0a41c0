"""What a result was computed on: an explicit record of a model's source and compression steps,
content fingerprints of its weights and tokenizer, and the provenance dict of result files.

The record (:class:`ModelRecord`) travels with the model object (``copy.deepcopy`` copies it)
and with a saved checkpoint (``lrm_interp_provenance.json``, read back by
:func:`lrm_interp.model.loading.load_model`). Quantizers and pruners append to it through
:func:`record_compression`, so a result on a compressed model always says how it was
compressed, and its weights fingerprint differs from the original's.

The record vouches for the weights only until new weights are loaded: a model with a record is
hooked (:func:`_hook_loads`, ``register_load_state_dict_post_hook``) so that
``model.load_state_dict(...)`` appends a ``{"kind": "weights_loaded", "via": "load_state_dict"}``
step. The steps before the last such step stay in the record as history but no longer describe
the weights (:func:`current_steps`, the one rule behind every reader; H13-RST). A restore that
bypasses ``load_state_dict`` (``p.copy_(orig)``, ``p.data = ...``) is caught by a weights sample:
:func:`record_compression` stores :func:`weights_sample` (a digest of a few fixed elements of every
weight matrix) of the weights its step left, and :func:`model_record` appends a ``weights_loaded``
step (``"via": "weights changed in place"``) when the model's sample no longer matches (H14-RCP).

Fingerprints are BLAKE2b-128 digests of content, streamed tensor by tensor in chunks of
:data:`CHUNK_ELEMENTS` elements (a model on a GPU is copied to the CPU one chunk at a time):

- weights: every parameter and buffer (name, dtype, shape and bytes; tied tensors once);
  non-finite parameter values raise :class:`NonFiniteError` naming the tensor;
- tokenizer: its class, the fast tokenizer's serialized JSON (vocabulary, merges,
  normalizer, pre-tokenizer, post-processor) and its special tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lrm_interp._io import atomic_write_text, dtype_to_str, plain_mode
from lrm_interp.checks import checked_arguments, path_argument

PROVENANCE_FILE = "lrm_interp_provenance.json"
CHUNK_ELEMENTS = 1 << 24  # 16 Mi elements per hashed chunk (64 MiB in fp32)
_ATTR = "_lrm_interp_record"
_HOOKED = "_lrm_interp_load_hooked"
#: the record step appended when new weights are loaded into a recorded model (H13-RST)
WEIGHTS_LOADED = "weights_loaded"


class NonFiniteError(ValueError):
    """A weight, activation, gradient or loss is NaN or infinite; the message names where."""


@dataclass(frozen=True)
class ModelRecord:
    """Where a model came from and what was done to it, in order.

    ``source``: e.g. the SmolLM2 conversion record or ``{"alias": "toy", ...}``;
    ``compression``: one dict per step (``{"kind": "quantization", "method": "rtn", "bits": 3, ...}``
    or ``{"kind": "pruning", ...}``), oldest first.
    """

    source: dict | None = None
    compression: tuple[dict, ...] = ()
    #: :func:`weights_sample` of the weights the latest compression step left (``None``: none
    #: recorded, or new weights were loaded since)
    weights_sample: dict | None = None

    def to_dict(self) -> dict:
        d: dict = {"source": self.source, "compression": [dict(c) for c in self.compression]}
        if self.weights_sample is not None:
            d["weights_sample"] = dict(self.weights_sample)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelRecord:
        sample = d.get("weights_sample")
        return cls(
            source=d.get("source"),
            compression=tuple(d.get("compression") or ()),
            weights_sample=sample if isinstance(sample, dict) else None,
        )

    def current(self) -> list[dict]:
        """The steps that describe the weights now (:func:`current_steps`), oldest first."""
        return current_steps(self.compression)

    def last(self, kind: str) -> dict | None:
        """The latest current compression step of ``kind`` (``"quantization"`` / ``"pruning"``), or
        ``None`` (none since the last load of new weights included)."""
        return next((c for c in reversed(self.current()) if c.get("kind") == kind), None)


def current_steps(steps: Any) -> list[dict]:
    """The compression steps (dicts, oldest first) after the last ``weights_loaded`` step: the ones
    that still describe the weights; earlier steps were undone by loading other weights (e.g. the
    full-precision ``state_dict`` restored after a quantization; H13-RST)."""
    out: list[dict] = []
    for s in steps:
        if isinstance(s, dict):
            out = [] if s.get("kind") == WEIGHTS_LOADED else [*out, s]
    return out


#: how many elements at each end of every weight matrix :func:`weights_sample` reads
SAMPLE_ELEMENTS = 64


def weights_sample(model: torch.nn.Module) -> dict[str, Any]:
    """A cheap digest of ``model``'s weights (not a fingerprint): BLAKE2b-64 of the name and the first
    and last :data:`SAMPLE_ELEMENTS` elements of every floating-point parameter with two or more
    dimensions (the weight matrices compression changes; tied ones once, offloaded ``meta`` ones
    skipped), with their ``dtype`` set and count ``n``: ``{"dtype", "n", "digest"}``."""
    h = hashlib.blake2b(digest_size=8)
    dtypes: set[str] = set()
    n = 0
    for name, p in model.named_parameters():
        if not p.is_floating_point() or p.dim() < 2 or p.device.type == "meta" or p.numel() == 0:
            continue
        flat = p.detach().reshape(-1)
        k = SAMPLE_ELEMENTS
        part = flat if flat.numel() <= 2 * k else torch.cat([flat[:k], flat[-k:]])
        h.update(f"{name}|{tuple(p.shape)}\n".encode())
        h.update(_tensor_bytes(part))
        dtypes.add(dtype_to_str(p.dtype))
        n += 1
    return {"dtype": ",".join(sorted(dtypes)), "n": n, "digest": h.hexdigest()}


def _stale(recorded: dict, now: dict) -> bool:
    """Whether the weights changed since ``recorded`` was sampled: the same dtypes and count of
    sampled tensors but another digest (after a dtype cast, or with tensors offloaded, the sample
    cannot tell, and the record is trusted as before)."""
    same_kind = recorded.get("dtype") == now["dtype"] and recorded.get("n") == now["n"]
    return same_kind and recorded.get("digest") != now["digest"]


def model_record(model: torch.nn.Module) -> ModelRecord:
    """The model's record (an empty one when nothing was recorded).

    When its latest step is current and the weights no longer match the sample it recorded
    (:func:`weights_sample`; e.g. restored with ``p.copy_(orig)``), a ``weights_loaded`` step
    (``"via": "weights changed in place"``) is appended first, as ``load_state_dict`` would
    (H14-RCP): the steps so far no longer describe the weights."""
    rec = _raw_record(model)
    if rec.weights_sample is not None and rec.current() and _stale(rec.weights_sample, weights_sample(model)):
        step = {"kind": WEIGHTS_LOADED, "via": "weights changed in place"}
        rec = replace(rec, compression=rec.compression + (step,), weights_sample=None)
        _set(model, rec)
    return rec


def _raw_record(model: torch.nn.Module) -> ModelRecord:
    """The record as stored on ``model`` (no check against its weights)."""
    return getattr(model, _ATTR, None) or ModelRecord()


def _set(model: torch.nn.Module, rec: ModelRecord) -> None:
    model.__dict__[_ATTR] = rec  # a plain attribute (not a submodule or buffer); deepcopy copies it
    if rec.compression:
        _hook_loads(model)


def _hook_loads(model: torch.nn.Module) -> None:
    """Register :func:`_weights_loaded` as ``model``'s ``load_state_dict`` post-hook, once per model
    (a deepcopy copies the hook and the flag; the hook acts on the module it is called with)."""
    if not model.__dict__.get(_HOOKED):
        model.register_load_state_dict_post_hook(_weights_loaded)
        model.__dict__[_HOOKED] = True


def _weights_loaded(module: torch.nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: new weights were loaded, so the record's steps so far no longer
    vouch for them; append a ``weights_loaded`` step (when any step is current)."""
    rec = _raw_record(module)
    if rec.current():
        step = {"kind": WEIGHTS_LOADED, "via": "load_state_dict"}
        _set(module, replace(rec, compression=rec.compression + (step,), weights_sample=None))


def record_source(model: torch.nn.Module, source: dict) -> None:
    """Set where the model's weights came from (JSON-able dict)."""
    _set(model, replace(_raw_record(model), source=_jsonable(source)))


def record_compression(model: torch.nn.Module, kind: str, **info: Any) -> None:
    """Append a compression step (``kind`` = ``"quantization"`` or ``"pruning"``) to the model's record,
    with the :func:`weights_sample` of the weights it left (H14-RCP). Call it right after the
    weights changed (the record is read as stored: a second step stacked on purpose stays current);
    call :func:`model_record` before changing them, so an in-place restore since the last step is
    noted first."""
    rec = _raw_record(model)
    step = _jsonable({"kind": kind, **info})
    _set(model, replace(rec, compression=rec.compression + (step,), weights_sample=weights_sample(model)))


#: the key of a model folder record's own digest (:func:`record_checksum`): ``lrm-interp quantize``
#: writes it into :data:`PROVENANCE_FILE` and ``lrm_interp_quantization.json`` (H27-QREC)
RECORD_CHECKSUM = "record_sha256"


def record_checksum(record: dict[str, Any]) -> str:
    """SHA-256 of a record (a JSON object) without its :data:`RECORD_CHECKSUM` entry, as canonical JSON
    (sorted keys, compact separators) of its JSON round trip: the value written under that key."""
    body = _jsonable({k: v for k, v in record.items() if k != RECORD_CHECKSUM})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def with_record_checksum(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with its :data:`RECORD_CHECKSUM` (:func:`record_checksum`) added, to be written as JSON."""
    return {**{k: v for k, v in record.items() if k != RECORD_CHECKSUM}, RECORD_CHECKSUM: record_checksum(record)}


class EditedRecordError(ValueError):
    """A model folder's record file no longer matches the :data:`RECORD_CHECKSUM` it was written with."""


@checked_arguments
def check_record_checksum(path: str | Path, record: Any) -> None:
    """Refuse (:class:`EditedRecordError`) ``record``, read from ``path``, when it holds a
    :data:`RECORD_CHECKSUM` that does not match it: a hand edit (``"bits": 3`` made ``2``) was believed
    by the loader, ``bench run``'s ``run.json``, ``quantize --requantize`` and the study's message
    (H27-QREC). A record without the key (written before it) is taken as it is."""
    if isinstance(record, dict) and RECORD_CHECKSUM in record and record[RECORD_CHECKSUM] != record_checksum(record):
        raise EditedRecordError(
            f"{path} was edited since 'lrm-interp quantize' wrote it (it does not match its {RECORD_CHECKSUM}): "
            "restore it, or run quantize again"
        )


@checked_arguments
def check_saved_records(directory: str | Path) -> None:
    """Refuse (:func:`check_record_checksum`) an edited :data:`PROVENANCE_FILE` or
    ``lrm_interp_quantization.json`` in a model folder; one that cannot be read as JSON is left to
    its reader."""
    from lrm_interp._io import QUANTIZE_RECORD

    for name in (PROVENANCE_FILE, QUANTIZE_RECORD):
        p = Path(directory) / name
        if p.is_file():
            check_record_checksum(p, _json_object(p))


@checked_arguments
def save_record(model: torch.nn.Module, directory: str | Path) -> Path | None:
    """Write the record next to a saved checkpoint (nothing when the record is empty), with its
    :data:`RECORD_CHECKSUM` (:func:`record_checksum`)."""
    rec = model_record(model)
    if rec == ModelRecord():
        return None
    p = Path(directory) / PROVENANCE_FILE
    atomic_write_text(p, json.dumps(with_record_checksum(rec.to_dict()), indent=2))
    return p


@checked_arguments
def load_record(model: torch.nn.Module, directory: str | Path) -> None:
    """Attach the record saved in ``directory`` (if any) to a freshly loaded model. An edited record
    file of the folder (:func:`check_saved_records`) raises :class:`EditedRecordError`."""
    check_saved_records(directory)
    p = Path(directory) / PROVENANCE_FILE
    _refuse_lost_record(Path(directory))
    if p.exists():
        try:
            rec = ModelRecord.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, AttributeError, TypeError) as e:
            raise ValueError(f"{p}: unreadable provenance record ({e})") from e
        if rec.weights_sample is not None and rec.current() and _stale(rec.weights_sample, weights_sample(model)):
            # the records of another quantize result, or other weights, were believed (a
            # "weights changed in place" step made them look current, H28-QRSWAP)
            steps = ", ".join(f"{c.get('method', c.get('kind'))} {c.get('bits', '')}".strip() for c in rec.current())
            raise ValueError(
                f"{Path(directory)}: its weights are not the ones {PROVENANCE_FILE} describes ({steps}; the sample "
                "of the weights it recorded differs): the record files or the weights were replaced since; "
                "restore them, or run quantize again"
            )
        _refuse_disagreeing_records(Path(directory), rec)
        _set(model, rec)


#: the fields of a quantization that both record files of a ``quantize`` result hold
_QUANT_FIELDS = ("method", "bits", "group_size", "symmetric", "n_sites", "n_weights", "n_protected")


def _refuse_disagreeing_records(directory: Path, rec: ModelRecord) -> None:
    """``ValueError`` when the folder's ``lrm_interp_quantization.json`` describes another quantization
    than the last step of its :data:`PROVENANCE_FILE` (each file intact: the 4-bit result's record
    copied into a 3-bit one, H29-QRSPLIT): ``bench run`` believed one, ``study`` quoted the other."""
    from lrm_interp._io import QUANTIZE_RECORD

    q = directory / QUANTIZE_RECORD
    steps = [c for c in rec.current() if c.get("kind") == "quantization"]
    if not steps or not q.is_file():
        return
    qd, step = _json_object(q), steps[-1]
    diff = [k for k in _QUANT_FIELDS if k in qd and k in step and qd[k] != step[k]]
    if diff:
        shown = ", ".join(f"{k} {qd[k]!r} there, {step[k]!r} in {PROVENANCE_FILE}" for k in diff)
        raise ValueError(
            f"{directory}: its {QUANTIZE_RECORD} describes another quantization than its {PROVENANCE_FILE} "
            f"({shown}): one of them was copied from another quantize result; restore it, or run quantize again"
        )


def _refuse_lost_record(directory: Path) -> None:
    """``ValueError`` when the folder's ``lrm_interp_quantization.json`` lists :data:`PROVENANCE_FILE`
    among the files ``quantize`` wrote and it is gone: the model loaded as one never compressed
    (``bench run`` recorded ``compression: []`` for a 3-bit model, H29-QRPROV). A folder of an older
    ``quantize``, whose record lists no such file, loads as before."""
    from lrm_interp._io import QUANTIZE_RECORD

    q = directory / QUANTIZE_RECORD
    if (directory / PROVENANCE_FILE).exists() or not q.is_file():
        return
    files = _json_object(q).get("files")
    if isinstance(files, list) and PROVENANCE_FILE in files:
        raise ValueError(
            f"{directory}: {PROVENANCE_FILE} is missing, though its {QUANTIZE_RECORD} lists it: without it the "
            "model would pass for one never compressed (the record holds its compression steps and a sample of "
            "its weights); restore the file, or run quantize again"
        )


@checked_arguments
@contextlib.contextmanager
def plain_permissions(folder: str | Path) -> Iterator[Path]:
    """Around ``model.save_pretrained(folder)`` (and the tokenizer's): every regular file the block
    wrote into ``folder`` (new, or rewritten: another inode, size or mtime) gets the permissions of a
    plain ``open(path, "w")`` (:func:`lrm_interp._io.plain_mode`, ``0o666 & ~umask``). transformers 5's
    shard writer leaves ``model.safetensors`` at 0600 (H27-PERM). Files the block did not touch, links
    and subfolders are left as they are. Yields ``folder`` as a ``Path``."""
    d = Path(folder)

    def files() -> dict[str, tuple[int, int, int]]:
        if not d.is_dir():
            return {}
        out = {}
        for e in os.scandir(d):
            if e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                out[e.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    before = files()
    yield d
    mode = plain_mode()
    for name, key in files().items():
        if before.get(name) != key:
            os.chmod(d / name, mode)


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d, default=str))


# ----------------------------------------------------------------------------- fingerprints
def _tensor_bytes(t: torch.Tensor):
    c = t.detach().contiguous().cpu()
    try:
        return c.view(torch.uint8).numpy()
    except (RuntimeError, TypeError):
        return c.numpy().tobytes()


def non_finite_count(t: torch.Tensor) -> int:
    """How many NaN or infinite values ``t`` holds (0 for an integer tensor, e.g. packed weights,
    and for an offloaded ``meta`` tensor, which holds no values here)."""
    if t.device.type == "meta" or not t.is_floating_point():
        return 0
    return int((~torch.isfinite(t.detach())).sum())


def first_non_finite(model: torch.nn.Module, names: Mapping[int, str] | None = None) -> tuple[str, int] | None:
    """``(name, count)`` of the first parameter of ``model`` holding a NaN or an infinity, else
    ``None``: a model whose training diverged (H29-NANMODEL). ``names`` (``{id(parameter): name}``,
    e.g. the site owning a weight) reports a parameter by another name."""
    for name, t in model.named_parameters():
        bad = non_finite_count(t)
        if bad:
            return (names or {}).get(id(t), name), bad
    return None


@checked_arguments
def weights_fingerprint(model: torch.nn.Module, *, check_finite: bool = True) -> str:
    """BLAKE2b-128 hex digest of every parameter and buffer (name, dtype, shape, bytes).

    Streams one chunk of at most :data:`CHUNK_ELEMENTS` elements at a time. With
    ``check_finite`` a NaN/inf parameter (NaN buffer) raises :class:`NonFiniteError` naming
    the tensor, e.g. ``model.layers.0.mlp.up_proj.weight``. Offloaded (``meta``) tensors
    contribute their name and shape only.
    """
    h = hashlib.blake2b(digest_size=16)
    seen: set[tuple[int, str, tuple[int, ...]]] = set()
    named = [(n, t, True) for n, t in model.named_parameters()] + [(n, t, False) for n, t in model.named_buffers()]
    for name, t, is_param in named:
        key = (t.data_ptr(), str(t.dtype), tuple(t.shape))
        if t.device.type != "meta" and t.numel() and key in seen:
            continue
        seen.add(key)
        h.update(f"{name}|{dtype_to_str(t.dtype)}|{tuple(t.shape)}\n".encode())
        if t.device.type == "meta" or t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        for chunk in flat.split(CHUNK_ELEMENTS):
            if check_finite and chunk.is_floating_point():
                bad = ~torch.isfinite(chunk) if is_param else torch.isnan(chunk)
                if bool(bad.any()):
                    raise NonFiniteError(
                        f"{'parameter' if is_param else 'buffer'} {name} holds "
                        f"{int(bad.sum())} non-finite values: every score would be NaN"
                    )
            h.update(_tensor_bytes(chunk))
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """BLAKE2b-128 hex digest of a tokenizer's class, serialized fast tokenizer and special tokens."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # what the tokenizer is, not how it was last called: transformers sets the backend's
        # padding / truncation on each call (a padded batch, a truncating encode), so they are not
        # part of the fingerprint (else one call to generate() would change it)
        d = json.loads(backend.to_str())
        d["padding"] = d["truncation"] = None
        h.update(json.dumps(d, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    specials = {k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    specials["all"] = list(getattr(tokenizer, "all_special_tokens", []) or [])
    specials["add_bos_token"] = getattr(tokenizer, "add_bos_token", None)
    specials["add_eos_token"] = getattr(tokenizer, "add_eos_token", None)
    h.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return h.hexdigest()


#: config fields left out of :func:`config_fingerprint`: names, versions and bookkeeping, the dtype
#: (recorded separately: ``dtype`` in :func:`model_provenance`, and part of every tensor's entry in
#: :func:`weights_fingerprint`), the class (recorded as ``class``) and runtime switches that do not
#: change what the model computes (caching, what a forward returns, the attention kernel).
CONFIG_FINGERPRINT_IGNORED = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "_commit_hash",
        "architectures",
        "torch_dtype",
        "dtype",
        "use_cache",
        "return_dict",
        "output_attentions",
        "output_hidden_states",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
    }
)


def config_fingerprint(model: torch.nn.Module) -> str | None:
    """BLAKE2b-128 hex digest of the model config's ``to_dict()`` without the fields of
    :data:`CONFIG_FINGERPRINT_IGNORED` (``None`` when the model has no config).

    The same weights under another config (``rms_norm_eps``, rope settings, the context length ...)
    compute something else: results of one are never served for the other."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return None

    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {str(k): clean(v) for k, v in d.items() if k not in CONFIG_FINGERPRINT_IGNORED}
        return d

    d = clean(_jsonable(cfg.to_dict()))
    return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=16).hexdigest()


def model_name(model: torch.nn.Module) -> str:
    """The model's name in records and messages: its config's ``_name_or_path``, else its class name."""
    return getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__


class WeightsMismatchError(ValueError):
    """Something computed on one model's weights (masks, scores) is applied to a model with other weights."""


def weights_record(model: torch.nn.Module, fingerprint: str | None = None) -> dict[str, str]:
    """``{"name", "weights_fingerprint"}`` of ``model``: what masks record about the model they were
    computed for (``fingerprint``: an already computed :func:`weights_fingerprint`)."""
    return {"name": model_name(model), "weights_fingerprint": fingerprint or weights_fingerprint(model)}


def recorded_weights(obj: Any) -> dict | None:
    """The ``{"name", "weights_fingerprint", ...}`` record a result carries about the model it was
    computed on: ``obj.provenance["model"]`` (an attribution result), ``obj.model`` (a masks set),
    or ``obj`` itself when it is such a mapping; ``None`` when it records no fingerprint."""
    rec = getattr(obj, "model", None)
    if not isinstance(rec, dict):
        prov = getattr(obj, "provenance", None)
        rec = prov.get("model") if isinstance(prov, dict) else None
    if rec is None and isinstance(obj, dict) and "weights_fingerprint" in obj:
        rec = obj
    return rec if isinstance(rec, dict) and rec.get("weights_fingerprint") else None


def check_same_weights(
    recorded: Any, model: torch.nn.Module, *, what: str, fingerprint: str | None = None, hint: str = ""
) -> str | None:
    """Refuse to apply ``what`` (e.g. ``"masks file m.safetensors"``), computed on the model that
    ``recorded`` names (see :func:`recorded_weights`), to ``model`` when its weights differ.

    Returns ``model``'s fingerprint (``fingerprint`` if given, else computed), or ``None``
    without computing anything when ``recorded`` holds no fingerprint (nothing to check).

    Raises:
        WeightsMismatchError: the fingerprints differ; the message names ``what``, both models
            and both fingerprints (and ``hint``, what to do instead).
    """
    rec = recorded_weights(recorded)
    if rec is None:
        return None
    have = fingerprint or weights_fingerprint(model)
    if have != rec["weights_fingerprint"]:
        raise WeightsMismatchError(
            f"{what} was computed on another model: {rec.get('name') or '?'} with weights fingerprint "
            f"{rec['weights_fingerprint']}, but the model at hand ({model_name(model)}) has weights fingerprint {have} "
            f"(another checkpoint, or the same one in another dtype or after compression){': ' + hint if hint else ''}"
        )
    return have


def recorded_compression(model: Any) -> list[dict] | None:
    """The compression steps a result records about its model's weights: the current steps
    (:func:`current_steps`) of ``record.compression`` of a :func:`model_provenance` dict (oldest
    first); ``None`` when the dict records no steps at all (an older result, or not a provenance dict)."""
    rec = model.get("record") if isinstance(model, dict) else None
    steps = rec.get("compression") if isinstance(rec, dict) else None
    if not isinstance(steps, list):
        return None
    return current_steps(steps)


#: how messages spell the compression methods (others as recorded)
_METHOD_NAMES = {"rtn": "RTN", "gptq": "GPTQ", "sparsegpt": "SparseGPT", "wanda": "Wanda", "awq": "AWQ"}


def describe_compression(steps: list[dict]) -> str:
    """A short phrase for compression steps: ``"a 3-bit RTN copy"``, ``"a 50% sparse Wanda copy"``,
    several steps joined with ``" + "`` (``"a 50% sparse SparseGPT + 4-bit GPTQ copy"``); only the
    current steps (:func:`current_steps`) count."""
    parts = []
    for s in current_steps(steps):
        method = str(s.get("method") or s.get("kind") or "compressed")
        name = _METHOD_NAMES.get(method.lower(), method)
        if s.get("kind") == "quantization" and isinstance(s.get("bits"), int):
            parts.append(f"{s['bits']}-bit {name}")
        elif s.get("kind") == "pruning" and isinstance(s.get("sparsity"), (int, float)):
            parts.append(f"{100 * float(s['sparsity']):g}% sparse {name}")
        else:
            parts.append(name if s.get("kind") not in ("quantization", "pruning") else f"{name} {s['kind']}")
    return "a " + " + ".join(parts) + " copy"


class AlreadyQuantizedError(ValueError):
    """A model that is already quantized was given where the full-precision model is meant
    (:func:`check_not_quantized`, :func:`quantized_folder_note`)."""


def quantization_steps(model: torch.nn.Module) -> list[dict]:
    """The current quantization steps of ``model``'s record (:func:`model_record`,
    :func:`current_steps`), oldest first: empty for a full-precision model (one only pruned
    included, or one whose full-precision weights were loaded back after a quantization)."""
    return [dict(c) for c in model_record(model).current() if c.get("kind") == "quantization"]


def check_not_quantized(model: torch.nn.Module, why: str) -> None:
    """Refuse (:class:`AlreadyQuantizedError`) a model whose record holds a quantization step (a
    checkpoint written by ``lrm-interp quantize`` and loaded back, or a model quantized in place
    earlier in the session, e.g. a notebook cell run twice): ``why`` says what would go wrong
    ("quantizing it again puts a second grid on the first, ..."). The one rule behind
    :func:`lrm_interp.compress.driver.compress_model_` (``requantize=False``) and the commands that
    quantize their ``--model`` themselves (H12-QQ).

    A model whose record holds no step at all (loaded with ``from_pretrained``, which attaches no
    record) is judged by the local folder it was loaded from (:func:`loaded_from`) with
    :func:`quantized_folder_note` (H13-FPQ); a model with steps (a quantization, or the
    ``weights_loaded`` step of a later ``load_state_dict``) by its record alone (H13-RST)."""
    steps = quantization_steps(model)
    rec = model_record(model)
    if steps:
        src = f"; its source: {json.dumps(rec.source, default=str)[:120]}" if rec.source else ""
        raise AlreadyQuantizedError(
            f"the model is already quantized ({describe_compression(steps)} by its provenance record{src}): {why}"
        )
    folder = None if rec.compression else loaded_from(model)
    note = None if folder is None else quantized_folder_note(folder, why)
    if note:
        raise AlreadyQuantizedError(
            f"the model is already quantized (loaded from {folder} without its lrm_interp record): {note}"
        )


def loaded_from(model: Any) -> Path | None:
    """The existing local folder ``model`` was loaded from (``model.name_or_path``, else its config's
    ``_name_or_path``, as ``from_pretrained`` sets them), else ``None`` (a hub id, a model built in
    memory)."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not isinstance(name, (str, Path)) or not str(name):
        return None
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None


def quantized_folder_note(model: Any, why: str) -> str | None:
    """For a model folder (``model``: a path) holding a checkpoint already quantized — by the record
    file of ``lrm-interp quantize`` or by its provenance record (:data:`PROVENANCE_FILE`, the
    compression steps ``save_quantized`` writes) — one sentence: the folder, the file and what it
    says, then ``why`` (what the caller would get wrong), then "give the original model (its
    source)"; else ``None``. Read before the model loads (H7-QM1, H12-QQ). An edited record file
    raises :class:`EditedRecordError` (:func:`check_saved_records`; H27-QREC)."""
    from lrm_interp._io import QUANTIZE_RECORD

    if not isinstance(model, (str, Path)):
        return None
    # a blank model was named as "check_saved_records: directory is blank" (H32-APITYPES2)
    folder = Path(path_argument(model, "model")).expanduser()
    rec, prov = folder / QUANTIZE_RECORD, folder / PROVENANCE_FILE
    check_saved_records(folder)  # an edited record is refused, not quoted (H27-QREC)
    if rec.is_file():
        info = _json_object(rec)
        what = ", ".join(
            f"{k} {info[k]}" for k in ("method", "bits", "group_size", "source_model") if info.get(k) is not None
        )
        head = (
            f"{model} is a quantized copy written by 'lrm-interp quantize' ({rec}" + (f": {what}" if what else "") + ")"
        )
        src = info.get("source_model")
    elif prov.is_file():
        steps = _json_object(prov).get("compression")
        quant = [c for c in current_steps(steps) if c.get("kind") == "quantization"] if isinstance(steps, list) else []
        if not quant:
            return None
        head, src = f"{model} is {describe_compression(quant)} (by its provenance record {prov})", None
    else:
        return None
    return f"{head}; {why}; give the original model" + (f" ({src})" if src else "")


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it cannot be read as one."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def swapped_compression(original: Any, compressed: Any) -> str | None:
    """Whether an importance shift's two models look swapped: the ``original`` model (a
    :func:`model_provenance` dict) records compression steps that the ``compressed`` one lacks,
    while every step ``compressed`` records is also one of ``original``'s (an earlier stage of the
    same chain: ``compressed`` is, e.g., the full-precision model ``original`` was quantized from).

    Returns the phrase for ``original``'s extra steps (:func:`describe_compression`, e.g. ``"a
    3-bit RTN copy"``), else ``None``: no record on either side (older results), the same steps,
    or two other compressions (a sideways comparison, e.g. RTN against GPTQ, is no swap). The one
    check behind ``lrm-interp compare`` and :func:`lrm_interp.attribution.results.comparability`."""
    so, sc = recorded_compression(original), recorded_compression(compressed)
    if so is None or sc is None or len(so) <= len(sc) or so[: len(sc)] != sc:
        return None
    return describe_compression(so[len(sc) :])


@checked_arguments
def model_provenance(model: torch.nn.Module, tokenizer: Any = None, *, fingerprint: bool = True) -> dict[str, Any]:
    """JSON-able description of a model (and tokenizer) for result files.

    Keys: ``name`` (config ``_name_or_path`` or the class name), ``class``, ``model_type``,
    ``dtype``, ``device``, ``n_params`` (unique parameters), ``weights_fingerprint``,
    ``config_fingerprint`` (:func:`config_fingerprint`),
    ``record`` (:class:`ModelRecord`: source and compression steps), ``quantization`` and
    ``pruning`` (the latest step of each from the record, else the HF ``quantization_config``
    for quantization, else ``None``), ``source``, ``tokenizer`` (class, name, vocab size incl.
    added tokens, fingerprint) and ``versions`` (torch, transformers).
    """
    import transformers

    cfg = getattr(model, "config", None)
    p = next(model.parameters(), None)
    qcfg = getattr(cfg, "quantization_config", None) if cfg is not None else None
    if qcfg is not None and hasattr(qcfg, "to_dict"):
        qcfg = qcfg.to_dict()
    rec = model_record(model)
    quant = rec.last("quantization") or (_jsonable(qcfg) if qcfg else None)
    return {
        "name": model_name(model),
        "class": type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "dtype": dtype_to_str(p.dtype) if p is not None else None,
        "device": str(p.device) if p is not None else None,
        "n_params": int(sum(x.numel() for x in model.parameters())),
        "weights_fingerprint": weights_fingerprint(model) if fingerprint else None,
        "config_fingerprint": config_fingerprint(model),
        "record": rec.to_dict(),
        "quantization": quant,
        "pruning": rec.last("pruning"),
        "source": rec.source,
        "tokenizer": None
        if tokenizer is None
        else {
            "class": type(tokenizer).__name__,
            "name": getattr(tokenizer, "name_or_path", None),
            "vocab_size": len(tokenizer),
            "fingerprint": tokenizer_fingerprint(tokenizer),
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


__all__ = [
    "ModelRecord",
    "NonFiniteError",
    "model_record",
    "record_source",
    "record_compression",
    "save_record",
    "load_record",
    "RECORD_CHECKSUM",
    "record_checksum",
    "with_record_checksum",
    "check_record_checksum",
    "check_saved_records",
    "EditedRecordError",
    "plain_permissions",
    "weights_fingerprint",
    "tokenizer_fingerprint",
    "config_fingerprint",
    "CONFIG_FINGERPRINT_IGNORED",
    "model_provenance",
    "PROVENANCE_FILE",
    "model_name",
    "weights_record",
    "recorded_weights",
    "check_same_weights",
    "WeightsMismatchError",
    "recorded_compression",
    "describe_compression",
    "swapped_compression",
    "AlreadyQuantizedError",
    "quantization_steps",
    "check_not_quantized",
    "quantized_folder_note",
    "loaded_from",
    "current_steps",
    "WEIGHTS_LOADED",
    "weights_sample",
    "SAMPLE_ELEMENTS",
]
