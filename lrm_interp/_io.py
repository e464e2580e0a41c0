"""Atomic file writes and dtype names: the two pieces of I/O every stage shares.

Every file lrm_interp writes goes through :func:`atomic_write_bytes` (a temp file in the same
folder, fsync, rename), so a crash never leaves a half-written result, partial or mask file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

_DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "float": "float32", "bf16": "bfloat16",
                "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "half": "float16",
                "fp64": "float64", "float64": "float64"}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_out_dir(out: str | os.PathLike, *, overwrite: bool, sources: tuple[str | os.PathLike, ...] = (),
                  flag: str = "--out") -> Path:
    """``out`` as a Path once it is safe to write a folder there, else ``ValueError``.

    Refused: ``out`` is (or contains, or lies inside) one of ``sources`` (a model is never written
    onto its own source), or ``out`` exists and is not empty and ``overwrite`` is false."""
    out = Path(out).resolve()
    for src in sources:
        if src is None or not Path(src).exists():
            continue
        s = Path(src).resolve()
        if out == s or s in out.parents or out in s.parents:
            raise ValueError(f"{flag} {out} overlaps its source {s}; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{flag} {out} exists and is not empty; pass --overwrite to replace it or choose another "
                         "folder")
    return out


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``out`` (replacing ``out`` if present) with renames only,
    so ``out`` is either the old folder or the whole new one, never a mix."""
    tmp, out = Path(tmp), Path(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        import shutil

        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


def atomic_save_figure(fig, path: str | os.PathLike, **kw) -> Path:
    """``fig.savefig`` to a temp file beside ``path``, then rename (format from ``path``'s suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def dtype_to_str(dtype: torch.dtype | None) -> str | None:
    """``torch.bfloat16`` → ``"bfloat16"`` (``None`` stays ``None``)."""
    return None if dtype is None else str(dtype).replace("torch.", "")


def str_to_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` → ``torch.bfloat16``; unknown names raise ``ValueError``."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "").lower()
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPE_NAMES)}")
    return getattr(torch, _DTYPE_NAMES[key])


DTYPE_CHOICES: tuple[str, ...] = ("fp32", "bf16", "fp16")


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Atomically write ``tensors`` (CPU, contiguous) with string ``metadata`` as one safetensors file."""
    from safetensors.torch import save

    path = Path(path)
    atomic_write_bytes(path, save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                                  metadata=metadata))
    return path


def read_safetensors(path: str | os.PathLike, formats: tuple[str, ...], what: str
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of an lrm_interp safetensors file whose ``metadata["format"]`` is in ``formats``.

    A missing file raises ``FileNotFoundError``; a file that is not safetensors, or of another
    format, raises ``ValueError`` naming the file and ``what`` it should be (e.g. "mask file").
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        f = safe_open(str(path), "pt")
    except Exception as e:  # noqa: BLE001 - name the file in the error
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    with f:
        meta = f.metadata() or {}
        if meta.get("format") not in formats:
            raise ValueError(f"{path}: not an lrm_interp {what} (format {meta.get('format')!r}, expected "
                             f"{' or '.join(repr(x) for x in formats)})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, meta


def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError):
    """``(line number, where, object)`` for every non-blank line of a JSONL file.

    ``where`` is ``"<path>:<line>"``. Invalid UTF-8, invalid JSON or a line that is not a JSON
    object raises ``error`` with a message starting with ``where``.
    """
    import json

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: invalid UTF-8 at byte {e.start} of the line "
                            f"({raw[max(0, e.start - 10):e.start + 10]!r})") from e
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from e
            if not isinstance(d, dict):
                raise error(f"{where}: expected a JSON object, got {type(d).__name__}")
            yield lineno, where, d
