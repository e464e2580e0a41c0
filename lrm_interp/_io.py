"""Atomic file writes and dtype names: the two pieces of I/O every stage shares.

Every file lrm_interp writes goes through :func:`atomic_write_bytes` (a temp file in the same
folder, fsync, rename), so a crash never leaves a half-written result, partial or mask file. Files and folders written
this way get the permissions a plain ``open()`` / ``mkdir`` would give (``0o666`` / ``0o777``
minus the umask, :func:`plain_mode`), and a failed write names the path the caller asked for,
the temporary name only in brackets (:func:`naming_destination`).

:func:`atomic_write_bytes`, :func:`atomic_write_text` and :func:`write_safetensors` are the
low-level writers: unchecked and fast, every result writer of the library writes its own files with
them (thousands of per-trace partials included). The writers a user calls check the path first
(:func:`refuse_result_file`: never a file of a finished result of another command):
``lrm_interp.atomic_write_text`` / ``atomic_write_bytes`` are :func:`checked_write_text` /
:func:`checked_write_bytes`, and ``save_masks``, ``ReasoningDataset.save_jsonl`` run the same check.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import torch

from lrm_interp.checks import checked_arguments, path_argument, user_stacklevel

_DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp64": "float64",
    "float64": "float64",
}


def current_umask() -> int:
    """The process's umask (``0o022`` on most systems), read without changing it where the OS
    allows (``/proc/self/status``), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@checked_arguments
def plain_mode(*, folder: bool = False) -> int:
    """Permission bits a plain ``open(path, "w")`` (``0o666 & ~umask``) or ``os.mkdir``
    (``0o777 & ~umask``, ``folder=True``) gives a new file or folder. ``mkstemp`` / ``mkdtemp``
    create 0600 / 0700 ones: every atomic writer sets this mode before the rename, so a result
    is as readable as one written in place."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _naming_destination(e: OSError, dest: Path, tmp: str | os.PathLike | None) -> OSError:
    """``e`` re-made to name ``dest`` (the path the user asked for), the temporary name in brackets."""
    where = e.filename if e.filename is not None else tmp
    note = f" [temporary {where}]" if where is not None and str(where) != str(dest) else ""
    if e.errno is not None and e.strerror:
        try:
            return type(e)(e.errno, f"{e.strerror}{note}", str(dest))
        except TypeError:  # a subclass with another constructor
            return OSError(e.errno, f"{e.strerror}{note}", str(dest))
    return OSError(f"{dest}: cannot write ({e}){note}")


@checked_arguments
@contextlib.contextmanager
def naming_destination(dest: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[None]:
    """Re-raise an ``OSError`` from inside (a failed write to a temporary file or folder ``tmp``
    on its way to ``dest``) as one naming ``dest``, the temporary name in brackets: errors name
    the file the user asked for, not ``.OUT.x1y2.tmp``."""
    dest = Path(dest)
    try:
        yield
    except OSError as e:
        if e.filename is not None and (Path(e.filename) == dest or Path(e.filename) in dest.parents):
            raise  # already names the user's path (or a folder on its way: e.g. a parent that is a file)
        raise _naming_destination(e, dest, tmp) from e
    except Exception as e:
        failed = _failed_serialization(e)
        if failed is None:
            raise
        raise _naming_destination(failed, dest, tmp) from e


def _failed_serialization(e: BaseException) -> OSError | None:
    """A safetensors writer's I/O failure (``SafetensorError: Error while serializing: I/O error: No
    space left on device (os error 28)``: ``save_pretrained`` on a full disk, which the command line
    reported as an "unreadable safetensors file" naming no path, H7-D4) as the ``OSError`` it is;
    ``None`` for any other exception."""
    if type(e).__name__ != "SafetensorError" or not re.search(r"(?<![a-z])serializ", str(e).lower()):
        return None
    m = re.search(r"\(os error (\d+)\)", str(e))
    if m is None:
        return OSError(errno.EIO, f"cannot write a safetensors file ({' '.join(str(e).split())})")
    code = int(m.group(1))
    return OSError(code, f"{os.strerror(code)} (while writing a safetensors file)")


@checked_arguments
def new_stage(out: Path, *, beside: bool) -> Path:
    """A new empty hidden folder for the tables: beside ``out`` (to become ``out``) or inside it (to
    move the files from), with the permissions of a plain ``mkdir``."""
    where = out.parent if beside else out
    with naming_destination(out):
        where.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}." if beside else ".staged.", suffix=".tmp", dir=where))
        os.chmod(stage, plain_mode(folder=True))
    return stage


@checked_arguments
@contextlib.contextmanager
def stage_folder(out: str | os.PathLike, *, beside: bool) -> Iterator[Path]:
    """A new empty hidden folder to write a result's files into before they are published: beside
    ``out`` (``beside=True``: to become ``out`` with :func:`lrm_interp._io.publish_dir`) or inside
    it (to move the files from with :func:`move_together`), with the permissions of a plain
    ``mkdir``. Removed with whatever is left in it when the body ends (an interrupt included)."""
    stage = new_stage(Path(out), beside=beside)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@checked_arguments
def move_together(stage: Path, out: Path, names: Sequence[str]) -> None:
    """Move the files ``names`` of ``stage`` into ``out`` in that order (the one that marks the
    result complete last), with Ctrl-C and SIGTERM held back until all are there: the files are
    never a mix of two results (the main thread's signals; elsewhere the moves just run)."""
    import signal
    import threading

    hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if hold else None
    try:
        with naming_destination(out):
            for n in names:
                os.replace(stage / n, out / n)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@checked_arguments
def make_temp_dir(out: str | os.PathLike) -> Path:
    """A new empty folder beside ``out`` (``.OUT.xxxx.tmp``) to fill and then publish with
    :func:`publish_dir`, with the permissions a plain ``mkdir`` would give (not ``mkdtemp``'s 0700)."""
    out = Path(out)
    with naming_destination(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.chmod(tmp, plain_mode(folder=True))
    if not (out.exists() or out.is_symlink()):
        _ABSENT_AT_START.add(tmp)  # publish_dir will not replace what appears at out meanwhile
    return tmp


#: temp folders whose ``out`` did not exist when :func:`make_temp_dir` made them
_ABSENT_AT_START: set[Path] = set()


@checked_arguments
def refuse_special(path: str | os.PathLike) -> None:
    """``OSError`` naming ``path`` when it exists and is not a regular file, a folder or a link to
    one (a FIFO, a device, a socket): a writer never replaces it with a regular file."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "not a regular file"
    )
    raise OSError(f"{path}: is {kind}, not a regular file: refusing to replace it; choose another path")


def _check_replace(replace: object) -> None:
    """``ValueError`` unless ``replace`` is ``True`` or ``False``: ``replace='no'`` is truthy, and
    every writer built on these replaced the user's file (H28-REPLACESTR)."""
    from lrm_interp.checks import check_bool

    check_bool("replace", replace)


@checked_arguments
def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The file gets the mode a plain ``open()`` gives a new file (``0o666 & ~umask``); a failure
    raises ``OSError`` naming ``path`` (the temporary name in brackets) and leaves ``path`` as it was.
    An existing ``path`` holding a single-file result (masks, a bits allocation, a trained annotator:
    :func:`file_result`) is replaced only by bytes of the same kind; others raise
    :class:`OtherResultError` before anything is written (H10-SFR).
    ``replace=False``: ``path`` must not exist when the file is published (a hard link, atomic):
    a file created there meanwhile (by another run) is kept, and ``FileExistsError`` names it; one
    there from the start is refused the same way before anything is written. A folder at ``path``
    is refused (``IsADirectoryError`` naming it) before anything is written, whatever ``replace``.
    ``replace`` must be a bool (:func:`_check_replace`)."""
    _check_replace(replace)
    path = Path(path)
    refuse_special(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder: never replaced by a file; choose a file path", str(path))
    if not replace and (path.exists() or path.is_symlink()):
        raise FileExistsError(errno.EEXIST, "exists: not replaced (replace=False); choose another path", str(path))
    _refuse_replacing_file_result(path, data)  # masks, a bits allocation: only by their own kind (H10-SFR)
    tmp = None
    with naming_destination(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:  # an interrupt (Ctrl-C, SIGTERM in the CLI) anywhere from here on leaves no temporary file
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), plain_mode())
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    _remove_stale_temps(path)


#: a temporary file of :func:`atomic_write_bytes` (``tempfile.mkstemp``): ``.<name>.<8 characters>.tmp``
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
#: a temporary file untouched this long is a leftover of a killed writer (``kill -9``, a crash):
#: a live writer writes it and renames it within one ``write`` call
STALE_TEMP_SECONDS = 3600.0
#: per folder, the temporary files found there by the first write of this process, by target name
_TEMPS_FOUND: dict[Path, dict[str, list[str]]] = {}


def temp_file_target(name: str) -> str | None:
    """The file name a temporary file of :func:`atomic_write_bytes` named ``name`` was written for
    (``.scores.csv.x1y2z3w4.tmp`` -> ``scores.csv``), or ``None`` for any other name."""
    m = _TEMP_NAME.match(name)
    return m["target"] if m else None


def _remove_stale_temps(path: Path) -> None:
    """Remove the leftover temporary files of ``path`` (a killed writer's ``.<name>.x1y2z3w4.tmp``
    beside it, untouched for :data:`STALE_TEMP_SECONDS`): they stayed forever (H5-A2). The folder is
    listed once per process (a folder of many partial files is not listed at every write); only
    temporary files of the file just written are removed, never a fresh one (a concurrent writer's)."""
    folder = path.parent
    found = _TEMPS_FOUND.get(folder)
    if found is None:
        found = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    m = _TEMP_NAME.match(entry.name)
                    if m:
                        found.setdefault(m["target"], []).append(entry.name)
        except OSError:
            pass
        _TEMPS_FOUND[folder] = found
    now = time.time()
    for name in found.pop(path.name, ()):
        q = folder / name
        try:
            st = os.lstat(q)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TEMP_SECONDS:
                os.unlink(q)
        except OSError:  # gone meanwhile, or not ours to remove
            pass


def _publish_new(tmp: str | os.PathLike, path: Path) -> None:
    """``tmp`` renamed to ``path`` only if nothing is there (``os.link``, then unlink ``tmp``)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, "created by something else while this ran: not replaced; choose another path", str(path)
        ) from None
    os.unlink(tmp)


@checked_arguments
def atomic_write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes` (low-level and unchecked: the library's
    result writers write their own files with it; ``lrm_interp.atomic_write_text`` is
    :func:`checked_write_text`)."""
    atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


@checked_arguments
def checked_write_bytes(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> None:
    """:func:`atomic_write_bytes` for user code (exported as ``lrm_interp.atomic_write_bytes``):
    a ``path`` that is one of the files of a finished result of an ``lrm-interp`` command
    (``A/scores.csv``, ``SC/bits.json``), or lies inside one or inside an attribution run's work
    folder ``partial/``, is refused first (:func:`refuse_result_file`: :class:`OtherResultError`
    naming it; with the default ``replace=True`` it was replaced without a word, H9-PYW)."""
    refuse_result_file(path)
    atomic_write_bytes(path, data, replace=replace)


@checked_arguments
def checked_write_text(path: str | os.PathLike, text: str, *, replace: bool = True) -> None:
    """UTF-8 text version of :func:`checked_write_bytes` (exported as ``lrm_interp.atomic_write_text``)."""
    refuse_result_file(path)
    atomic_write_bytes(path, text.encode("utf-8"), replace=replace)


@checked_arguments
@contextlib.contextmanager
def staged_file(path: str | os.PathLike, *, replace: bool) -> Iterator[Path]:
    """A new temporary path beside ``path`` (``.NAME.x1y2z3w4.tmp``) for any writer to write the file
    to; when the body ends without an error the file is published at ``path`` in one step:
    ``replace=True`` by a rename over what is there, ``replace=False`` by a hard link that never
    replaces anything (a file that appeared at ``path`` meanwhile, another run's, is kept and
    ``FileExistsError`` names ``path``). The temporary file is removed whatever happens. One way for
    every single-file output of the command line to be published (H9-CC2), whichever writer makes
    the file (``BitAllocation.save``, ``LinearAnnotator.save``, ``save_jsonl``, ...). ``replace`` must
    be a bool (:func:`_check_replace`)."""
    _check_replace(replace)
    path = Path(path)
    refuse_special(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder: never replaced by a file; choose a file path", str(path))
    with naming_destination(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as e:  # the writer names the file it was given: name the user's instead
            if e.filename is not None and str(e.filename) == str(tmp) and e.errno is not None:
                try:
                    renamed = type(e)(e.errno, e.strerror or str(e), str(path))
                except TypeError:  # a subclass with another constructor
                    renamed = OSError(e.errno, e.strerror or str(e), str(path))
                raise renamed from e
            raise
        if not tmp.is_file() or tmp.is_symlink():
            raise OSError(errno.EIO, "the writer left no file to publish", str(path))
        with naming_destination(path, tmp):
            if replace:
                os.replace(tmp, path)
            else:
                _publish_new(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


@checked_arguments
class LockHeldError(OSError):
    """A lock of :func:`exclusive_lock` is held by another live process: ``holder`` is what that
    process wrote into the lock file (its pid, then what it is, e.g. ``"4242 bits"``)."""

    def __init__(self, lock: Path, holder: str) -> None:
        super().__init__(errno.EWOULDBLOCK, f"held by another process ({holder or '?'})", str(lock))
        self.lock, self.holder = lock, holder

    @property
    def pid(self) -> str:
        """The holder's pid as written into the lock file (``"?"`` when unreadable)."""
        return (self.holder.split() or ["?"])[0]

    @property
    def what(self) -> str:
        """What the holder said it is (``"bits"``), or ``""``."""
        return " ".join(self.holder.split()[1:])


@checked_arguments
class ForeignLockFileError(OSError):
    """The path of a lock of :func:`exclusive_lock` holds something this library did not write there
    (a symbolic link, a folder, a FIFO, a file of other content): it is never opened for writing,
    emptied or removed (an input named ``.o.jsonl.lrm_interp.lock`` was emptied, then deleted; a link
    there had its target overwritten, H10-LCK). ``why``: what is there."""

    def __init__(self, lock: Path, why: str) -> None:
        super().__init__(errno.EEXIST, f"{why}, not a lock file lrm_interp wrote: never emptied or removed", str(lock))
        self.lock, self.why = lock, why


#: what :func:`exclusive_lock` writes into its lock file (``"<pid> <holder>\n"``, the holder a command
#: name; an earlier version wrote the pid alone); an empty file is one whose writer was killed before
#: it wrote
_LOCK_TEXT = re.compile(rb"(?:\d{1,10}(?: [A-Za-z][\w .:-]{0,100})?\n)?")
#: a lock file longer than this is not one :func:`exclusive_lock` wrote
_LOCK_MAX_BYTES = 4096


def _open_lock(lock: Path) -> int:
    """A descriptor of the lock file ``lock`` (created when absent), opened without following a
    symbolic link; :class:`ForeignLockFileError` when ``lock`` is a link or not a regular file."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | nofollow | getattr(os, "O_NONBLOCK", 0), plain_mode())
    except OSError as e:
        if lock.is_symlink():  # O_NOFOLLOW: ELOOP (or EMLINK on some systems)
            raise ForeignLockFileError(lock, "a symbolic link") from None
        if e.errno in (errno.EISDIR, errno.ENXIO):
            raise ForeignLockFileError(lock, "a folder" if lock.is_dir() else "not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ForeignLockFileError(lock, "not a regular file")
    return fd


def _refuse_foreign_lock(fd: int, lock: Path) -> None:
    """:class:`ForeignLockFileError` (``fd`` closed) unless the open lock file holds what
    :func:`exclusive_lock` writes (``"<pid> <holder>\n"``, or nothing) and has no other name (a hard
    link: an empty user's file got the lock text, H11-LHL): a stale lock of a killed run is taken
    over, anything else (a user's file under that name) is left as it is."""
    st = os.fstat(fd)
    if st.st_nlink != 1:  # an (empty) user's file with a second name there was written into (H11-LHL)
        os.close(fd)
        raise ForeignLockFileError(lock, f"a hard link to another file ({st.st_nlink} names)")
    size = st.st_size
    text = os.pread(fd, _LOCK_MAX_BYTES + 1, 0) if size <= _LOCK_MAX_BYTES else b""
    if size > _LOCK_MAX_BYTES or len(text) > _LOCK_MAX_BYTES or not _LOCK_TEXT.fullmatch(text):
        os.close(fd)
        raise ForeignLockFileError(lock, f"a file of {size} bytes that is not '<pid> <command>'")


@checked_arguments
@contextlib.contextmanager
def exclusive_lock(lock: str | os.PathLike, holder: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` (created if needed, holding ``"<pid> <holder>"``)
    while the body runs; another live process holding it: :class:`LockHeldError` at once (never a
    wait). The lock goes with the process (a killed holder holds none: its file, of the same form,
    is taken over); the file is removed when the body ends. ``lock`` is opened without following a
    symbolic link, and nothing is written into it before it is known to be a lock: a link, a folder,
    a FIFO or a file of other content there raises :class:`ForeignLockFileError` naming it, and is
    left as it was (H10-LCK). Not POSIX (no ``fcntl``): no lock. The generic form of ``lrm-interp
    compare`` / ``bench score``'s folder lock, for any file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(lock)
    while True:
        fd = _open_lock(lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                text = ""
            os.close(fd)
            raise LockHeldError(lock, text) from None
        try:  # the holder that just ended may have removed the file: lock the one that is there now
            same = os.path.samestat(os.fstat(fd), os.lstat(lock))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    _refuse_foreign_lock(fd, lock)  # before anything is written into it
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.lstat(lock)):  # still this lock's file
                os.unlink(lock)
        os.close(fd)


@checked_arguments
def file_lock_path(path: str | os.PathLike) -> Path:
    """The lock file of :func:`exclusive_lock` for one output file ``path``: ``.NAME.lrm_interp.lock``
    beside it (hidden, removed when the run holding it ends)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lrm_interp.lock")


#: environment variable naming lrm_interp's cache folder (converted models, venvs)
CACHE_ENV = "LRM_INTERP_CACHE"


def cache_root() -> Path:
    """Root of lrm_interp's cache: ``$LRM_INTERP_CACHE``, else ``~/.cache/lrm_interp``.

    A variable set but empty (or blank: ``export LRM_INTERP_CACHE=$UNSET``) counts as unset: as a
    path it would be ``.``, and a model would be written into the current folder (H6-V4). One that
    names a regular file (or a path under one) raises ``ValueError`` naming the variable (nothing
    can be cached there; it used to end in a bare "File exists", H6-V1)."""
    raw = os.environ.get(CACHE_ENV, "")
    if not raw.strip():
        return Path.home() / ".cache" / "lrm_interp"
    root = Path(raw).expanduser()
    if (root.exists() or root.is_symlink()) and not root.is_dir():
        raise ValueError(f"${CACHE_ENV} {raw}: a file, not a folder; point it at a folder (or unset it)")
    blocked = file_on_the_way(root)
    if blocked is not None:
        raise ValueError(
            f"${CACHE_ENV} {raw}: {blocked} is a file, not a folder, so nothing can be cached under it; "
            "point it at a folder (or unset it)"
        )
    return root


UTF8_BOM = b"\xef\xbb\xbf"


def strip_bom(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 byte-order mark: an editor's BOM is no character of the text.
    The one place both text readers drop it: :func:`iter_jsonl` (JSONL) and :func:`read_text_file`
    (a paper layout's ``.txt`` files, which kept it as U+FEFF, H6-U12)."""
    return raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw


@checked_arguments
def read_text_file(path: str | os.PathLike) -> str:
    """A UTF-8 text file's text as ``Path.read_text(encoding="utf-8")`` gives it (``\\r\\n`` and
    ``\\r`` read as ``\\n``; invalid UTF-8 raises ``UnicodeDecodeError``), without a leading
    byte-order mark (:func:`strip_bom`)."""
    text = strip_bom(Path(path).read_bytes()).decode("utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


#: the record file ``lrm-interp quantize`` writes into its --out folder: a folder holding it (an
#: earlier result) may be replaced with ``--overwrite`` (:func:`check_out_dir`)
QUANTIZE_RECORD = "lrm_interp_quantization.json"


@checked_arguments
def file_on_the_way(path: str | os.PathLike) -> Path | None:
    """The first existing ancestor of ``path`` (as given, and with a leading ``~`` expanded) that is
    not a folder (a regular file, a FIFO, a dangling link), or ``None``: nothing can be written at
    ``path`` then (``mkdir`` says "File exists", ``open`` "Not a directory", naming neither the flag
    nor the file in the way). The output checks (:func:`check_out_dir`,
    ``lrm_interp.cli.common.check_paths``) refuse such a path up front."""
    for form in dict.fromkeys([Path(path), Path(path).expanduser()]):
        for parent in reversed(form.parents):  # the outermost first: that is the one in the way
            if str(parent) in ("", ".", "/"):
                continue
            if (parent.exists() or parent.is_symlink()) and not parent.is_dir():
                return parent
    return None


# --------------------------------------------------------------------------- shipped assets, model cache
def alias_folders() -> dict[str, Path]:
    """``{name: folder}`` of the folders a model alias or a shipped asset is loaded from on this
    machine: the shipped toy model (``toy``), the shipped reasoner delta
    (``smollm2-135m-reasoner``) and its merged copies in the cache (``smollm2-135m-reasoner@<folder
    name>``), the SmolLM2 cache (``smollm2-135m``; left out when ``$LRM_INTERP_CACHE`` is unusable),
    the shipped trained annotator (``--annotator trained``) and the package's ``assets/`` folder
    holding them. Computed without loading anything (a damaged install, weights missing, still lists
    them)."""
    assets = Path(__file__).resolve().parent / "assets"
    out = {
        "toy": assets / "toy_reasoner",
        "smollm2-135m-reasoner": assets / "smollm2_reasoner",
        "trained": assets / "annotators",
    }
    try:
        cache = cache_root()
        out["smollm2-135m"] = cache / "smollm2-135m"
        if cache.is_dir():
            for merged in sorted(cache.glob("smollm2-135m-reasoner-*")):  # its merged copies
                out[f"smollm2-135m-reasoner@{merged.name}"] = merged
    except (ValueError, OSError):
        pass
    out["lrm_interp"] = assets  # the shipped assets as a whole (last: a message names the alias first)
    return out


#: how :func:`refuse_alias_folder` names an entry of :func:`alias_folders` that is no model alias
_ALIAS_WORDS = {
    "trained": "the shipped trained annotator (--annotator trained)",
    "lrm_interp": "the shipped assets of lrm_interp",
}


@checked_arguments
def refuse_alias_folder(out: str | os.PathLike, what: str = "--out", *, consent: str = "--overwrite") -> None:
    """:class:`OtherResultError` (a ``ValueError``) when ``out`` is, contains or lies inside the folder
    an alias loads or a shipped asset is read from (:func:`alias_folders`): a writer never replaces
    the model behind ``--model toy`` (``toy train --out <the shipped folder> --overwrite`` did,
    H7-TT1; ``parse --out <it>/config.json --overwrite`` too, H9-TT), whatever ``consent`` (the
    flag or argument that replaces a result: ``--overwrite``, ``replace=True``) says. An output that
    would contain such a folder is refused only while the folder exists (nothing to destroy
    otherwise). The rule of every output the command line checks (``check_paths``) and of every
    Python writer (:func:`refuse_result_file`, :func:`refuse_other_result_folder`: ``save_masks``
    into ``assets/annotators/``, ``save_jsonl`` onto the SmolLM2 cache's ``config.json``, H10-ASP)."""
    forms = [Path(out).resolve(), Path(out).expanduser().resolve()]
    for alias, d in alias_folders().items():
        d = d.resolve()
        for o in forms:
            if o == d:
                where = ""
            elif d in o.parents:
                where = f"lies inside {d}, which "
            elif o in d.parents and d.exists():
                where = f"contains {d}, which "
            else:
                continue
            name = alias.split("@")[0]
            owner = _ALIAS_WORDS.get(name, f"the model alias {name!r}")
            uses = (
                f"every later --model {name} would load what is written there"
                if name not in _ALIAS_WORDS
                else "lrm_interp reads them as shipped"
            )
            raise OtherResultError(
                f"{what} {out} {where}is the folder of {owner}" + ("" if where else f" ({d})") + ": it is never "
                f"replaced or written into, even with {consent} ({uses}); choose another path"
            )


# --------------------------------------------------------------------------- finished results
# The record file each command writes into its result folder, as the writers define it (the names
# are repeated here, the lowest floor, so that the output checks read no heavy module;
# tests/test_reliability_h8a.py keeps each equal to its writer's constant).

#: what an attribution run writes into its folder (``Attribution.save`` + ``write_tables``); the
#: first is its record. The run's work folder ``partial/`` (:data:`ATTRIBUTION_WORK`) is its too.
ATTRIBUTION_FILES = ("attribution.json", "attribution.safetensors", "scores.csv", "heatmap.png")
#: the work folder of an attribution run inside its result folder (per-trace partials, run key, lock)
ATTRIBUTION_WORK = "partial"
#: what a study writes into its folder besides its attribution folders (``attribution_<tag>/``) and
#: the traces it was given in memory (``traces.jsonl``); the first is its record
STUDY_FILES = (
    "study.json",
    "outcomes.safetensors",
    "ranking.csv",
    "masks.safetensors",
    "masks.json",
    "bits.json",
    "shift.csv",
    "shift.png",
    "results.csv",
    "bpw_accuracy.png",
    "report.html",
)
#: what only a study writes (its rows' per-item outcomes, its ranking, its report): a folder holding
#: one is a study's even without ``study.json`` (it was taken for the compare result its
#: ``shift.csv`` is, which not even ``study --overwrite`` could replace, H23-NOSTUDYJSON, H24-NOOUTCOMES)
STUDY_ONLY_FILES = ("outcomes.safetensors", "ranking.csv", "report.html")
STUDY_OUTCOMES = STUDY_ONLY_FILES[0]
#: a study's plans (masks and bits), written beside its ``shift.csv`` and attribution folders: a
#: compare writes none, so ``shift.csv`` + one of these + an ``attribution_*/`` result is a study's
#: even without :data:`STUDY_ONLY_FILES` (H25-STUDYMIN)
STUDY_PLAN_FILES = ("bits.json", "masks.safetensors", "masks.json")
#: ``lrm-interp experiment protection``: ``settings.json`` whose ``format`` starts with this
#: (``lrm_interp.experiments.protection_table.FORMAT``), and the files the run writes
EXPERIMENT_FORMAT = "lrm_interp.protection_experiment/"
EXPERIMENT_FILES = ("settings.json", "rows.jsonl", "table.md", "table.csv", "paired.csv", "bpw_accuracy.png")
#: one model's folder of ``lrm-interp bench run``: ``run.json`` whose ``format`` starts with this
#: (``lrm_interp.evaluation.bench_run.RUN_FORMAT``), and what the run writes
BENCH_RUN_FORMAT = "lrm_interp.bench_run/"
BENCH_RUN_FILES = ("run.json", "generations.jsonl", "problems", "outputs", "samples")
#: ``lrm-interp bench score``: the record of the files one score wrote
#: (``lrm_interp.evaluation.bench_score.SCORE_RECORD``, ``{"format", "files": [names]}``)
BENCH_SCORE_RECORD = "score_files.json"
#: ``lrm-interp faithfulness`` (``lrm_interp.attribution.faithfulness.FILES``); the first is its record
FAITHFULNESS_FILES = ("faithfulness.json", "faithfulness.csv", "sites.csv")

#: ``lrm-interp toy train``: the log it writes last into its model folder
#: (``lrm_interp.toy.train.TRAINING_LOG``). The folder is a model (``from_pretrained`` reads what it
#: finds there): every entry of it is the model's
TOY_TRAIN_RECORD = "training_log.json"
#: ``lrm-interp toy distill``: a run folder holds ``checkpoint/state.json`` (while it runs, and after)
#: or ``adapter/distill_log.json`` (finished); its entries are these
#: (``lrm_interp.toy.distill``: ``CHECKPOINT_DIR``, ``STATE_FILE``, ``ADAPTER_DIR``, ``RECIPE_FILE``)
TOY_DISTILL_CHECKPOINT = ("checkpoint", "state.json")
TOY_DISTILL_ADAPTER = ("adapter", "distill_log.json")
TOY_DISTILL_ENTRIES = ("checkpoint", "adapter", "checkpoint.old")
#: a finished adapter folder (``RUN/adapter``, a copy of it, the shipped reasoner's delta): its
#: recipe and peft config (every entry of it is the adapter's)
TOY_DISTILL_ADAPTER_FILES = ("distill_log.json", "adapter_config.json")

#: ``lrm-interp compare`` (``ImportanceShift.write_tables``): its two files, the table last written;
#: the table's header line (``ImportanceShift.to_dataframe``'s columns) is its record
COMPARE_FILES = ("shift.csv", "shift.png")
COMPARE_HEADER = "behavior,site,layer,kind,delta_ri,decrease"
#: ``lrm-interp annotate agree --downstream``: its record ``result.json`` (written when the run ends;
#: ``lrm_interp.experiments.annotation_downstream.RESULT_FILE``) whose ``format`` starts with this
#: (``...annotation_downstream.FORMAT``), and the files it writes into its folder (its attributions,
#: ``reference/`` ..., are attribution results of their own)
DOWNSTREAM_RECORD = "result.json"
DOWNSTREAM_FORMAT = "lrm_interp.annotation_downstream/"
DOWNSTREAM_FILES = ("settings.json", "result.json", "table.md", "table.csv")

#: ``lrm-interp annotate --cache``: a folder of per-trace entries ``<32 hex digits>.json`` whose
#: ``format`` starts with this (``lrm_interp.data.annotators.driver``: ``CACHE_FORMAT``, the kind
#: ``ANNOTATION_CACHE``); ``compare``, ``attribute``, ``bench score`` and ``study`` wrote into one, after
#: which ``annotate`` refused its own cache as "the compare result" (H27-CACHEIN)
ANNOTATION_CACHE_FORMAT = "lrm_interp.annotation_cache/"
ANNOTATION_CACHE_KIND = "annotation cache"
_CACHE_ENTRY = re.compile(r"[0-9a-f]{32}\.json")

#: the kinds of finished result :func:`finished_result` recognises, as messages name them
RESULT_KINDS = (
    "attribution",
    "study",
    "experiment",
    "quantize",
    "faithfulness",
    "bench score",
    "bench run",
    "toy train",
    "toy distill",
    "compare",
    "annotate downstream",
    ANNOTATION_CACHE_KIND,
)


@checked_arguments
@dataclass(frozen=True)
class FinishedResult:
    """A folder holding a finished result of one ``lrm-interp`` command (:func:`finished_result`).

    ``kind``: one of :data:`RESULT_KINDS`; ``names``: the entries of ``folder`` that are the
    result's (files and folders it writes, whether there now or not); ``None``: every entry is
    (a quantize folder recording no file list: it is replaced whole)."""

    kind: str
    folder: Path
    names: frozenset[str] | None

    def owns(self, name: str) -> bool:
        """Whether the entry ``name`` of :attr:`folder` is one of the result's files or folders."""
        return self.names is None or name in self.names

    def __str__(self) -> str:
        return f"the {self.kind} result {self.folder}"


#: a record larger than this is not read (:func:`_json_dict`, :func:`file_result`): not one of ours
RECORD_MAX_BYTES = 64 << 20


def _json_dict(path: Path) -> dict | None:
    """The JSON object in the regular file ``path``, or ``None`` (absent, unreadable, larger than
    :data:`RECORD_MAX_BYTES`, not an object)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > RECORD_MAX_BYTES:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _str_list(value: object) -> list[str] | None:
    return list(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def _csv_header(path: Path) -> str | None:
    """The first line of the regular file ``path`` (at most 4 KiB read), or ``None``."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    return strip_bom(head).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


def _model_result(d: Path) -> FinishedResult | None:
    """The model folder result ``d`` holds (``toy train``, ``toy distill``, ``quantize``), or ``None``:
    tested before the table results, since a model folder's entries are all the model's (a bench
    score's ``score_files.json`` written into a ``toy train`` folder made it a "bench score result",
    its model files unprotected, H10-BSW)."""
    if (d / TOY_TRAIN_RECORD).is_file():
        return FinishedResult("toy train", d, None)
    if all((d / n).is_file() for n in TOY_DISTILL_ADAPTER_FILES):
        return FinishedResult("toy distill", d, None)
    if (d.joinpath(*TOY_DISTILL_CHECKPOINT)).is_file() or (d.joinpath(*TOY_DISTILL_ADAPTER)).is_file():
        return FinishedResult("toy distill", d, frozenset(TOY_DISTILL_ENTRIES))
    if (d / QUANTIZE_RECORD).is_file():
        files = _str_list((_json_dict(d / QUANTIZE_RECORD) or {}).get("files"))
        return FinishedResult("quantize", d, None if files is None else frozenset((*files, QUANTIZE_RECORD)))
    return None


def _table_result(d: Path) -> FinishedResult | None:
    """The result of tables and records ``d`` holds, or ``None``; the more specific records first (a
    study writes ``shift.csv`` too, and an experiment's or a downstream run's ``settings.json`` is
    told apart by its format; a study that lost ``study.json`` by its :data:`STUDY_ONLY_FILES`, or by
    its ``shift.csv`` beside its plans, :data:`STUDY_PLAN_FILES`, and an attribution folder)."""
    if (d / ATTRIBUTION_FILES[0]).is_file():
        return FinishedResult("attribution", d, frozenset((*ATTRIBUTION_FILES, ATTRIBUTION_WORK)))
    if (d / STUDY_FILES[0]).is_file():
        doc = _json_dict(d / STUDY_FILES[0]) or {}
        folders = (doc.get("provenance") or {}).get("folders") if isinstance(doc.get("provenance"), dict) else None
        subs = [v for v in folders.values() if isinstance(v, str)] if isinstance(folders, dict) else []
        subs += [p.name for p in d.glob("attribution_*") if p.is_dir()]  # written before study.json named them
        return FinishedResult("study", d, frozenset((*STUDY_FILES, "traces.jsonl", *subs)))
    if any((d / n).is_file() for n in STUDY_ONLY_FILES):  # a study that lost its record (H23-NOSTUDYJSON)
        subs = [p.name for p in d.glob("attribution_*") if p.is_dir()]
        return FinishedResult("study", d, frozenset((*STUDY_FILES, "traces.jsonl", *subs)))
    if _csv_header(d / COMPARE_FILES[0]) == COMPARE_HEADER and any((d / n).is_file() for n in STUDY_PLAN_FILES):
        subs = [p.name for p in d.glob("attribution_*") if p.is_dir()]
        if any((d / s / ATTRIBUTION_FILES[0]).is_file() for s in subs):  # not the compare result (H25-STUDYMIN)
            return FinishedResult("study", d, frozenset((*STUDY_FILES, "traces.jsonl", *subs)))
    settings = _json_dict(d / EXPERIMENT_FILES[0])
    if settings is not None and str(settings.get("format", "")).startswith(EXPERIMENT_FORMAT):
        return FinishedResult("experiment", d, frozenset(EXPERIMENT_FILES))
    if (d / DOWNSTREAM_RECORD).is_file():
        result = _json_dict(d / DOWNSTREAM_RECORD)
        if result is not None and str(result.get("format", "")).startswith(DOWNSTREAM_FORMAT):
            return FinishedResult("annotate downstream", d, frozenset(DOWNSTREAM_FILES))
    if (d / FAITHFULNESS_FILES[0]).is_file():
        return FinishedResult("faithfulness", d, frozenset(FAITHFULNESS_FILES))
    if (d / BENCH_SCORE_RECORD).is_file():
        files = _str_list((_json_dict(d / BENCH_SCORE_RECORD) or {}).get("files")) or []
        return FinishedResult("bench score", d, frozenset((*files, BENCH_SCORE_RECORD)))
    run = _json_dict(d / BENCH_RUN_FILES[0])
    if run is not None and str(run.get("format", "")).startswith(BENCH_RUN_FORMAT):
        return FinishedResult("bench run", d, frozenset(BENCH_RUN_FILES))
    if _csv_header(d / COMPARE_FILES[0]) == COMPARE_HEADER:
        return FinishedResult("compare", d, frozenset(COMPARE_FILES))
    if _annotation_cache(d):
        return FinishedResult(ANNOTATION_CACHE_KIND, d, None)
    return None


def _annotation_cache(d: Path) -> bool:
    """Whether the folder ``d`` holds an ``annotate --cache`` entry (:data:`ANNOTATION_CACHE_FORMAT`):
    the first file named like one is read, nothing more."""
    try:
        with os.scandir(d) as it:
            for e in it:
                if _CACHE_ENTRY.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                    doc = _json_dict(Path(e.path))
                    if doc is not None and str(doc.get("format", "")).startswith(ANNOTATION_CACHE_FORMAT):
                        return True
    except OSError:
        return False
    return False


@checked_arguments
def finished_result(folder: str | os.PathLike) -> FinishedResult | None:
    """The finished result of an ``lrm-interp`` command that the folder ``folder`` holds, or ``None``.

    Recognised by each writer's own record, the model folders first (:func:`_model_result`: every
    entry of one is the model's): :data:`TOY_TRAIN_RECORD` (a ``toy train`` model folder), a finished
    adapter folder holding :data:`TOY_DISTILL_ADAPTER_FILES` or a run folder holding
    ``checkpoint/state.json`` or ``adapter/distill_log.json`` (``toy distill``),
    :data:`QUANTIZE_RECORD` (``quantize``); then the tables' records (:func:`_table_result`):
    ``attribution.json`` (``attribute``), ``study.json`` or :data:`STUDY_ONLY_FILES` (``study`` /
    ``quickstart``),
    ``settings.json`` of format :data:`EXPERIMENT_FORMAT` (``experiment protection``),
    ``result.json`` of format :data:`DOWNSTREAM_FORMAT` (``annotate agree --downstream``),
    ``faithfulness.json``, :data:`BENCH_SCORE_RECORD` (``bench score``), ``run.json`` of format
    :data:`BENCH_RUN_FORMAT` (one model's folder of ``bench run``), a ``shift.csv`` whose header
    is :data:`COMPARE_HEADER` (``compare``) and an entry of :data:`ANNOTATION_CACHE_FORMAT`
    (``annotate --cache``). Reads only those records."""
    d = Path(folder)
    try:
        if not d.is_dir():
            return None
    except OSError:
        return None
    return _model_result(d) or _table_result(d)


@checked_arguments
def attribution_work_folder(path: str | os.PathLike) -> Path | None:
    """The work folder ``A/partial`` of an attribution run that ``path`` is or lies inside (as
    given, and resolved), or ``None``. A folder named :data:`ATTRIBUTION_WORK` is one when its
    parent holds an attribution result (``attribution.json``) or it holds a run's key (``run.json``
    with the weights' fingerprint) or lock (``.lock``): a run keeps its per-trace partials there,
    and ``Attribution.save(overwrite=True)`` clears them, so nothing else may be written there."""
    import json

    seen: set[Path] = set()
    for form in dict.fromkeys([Path(path), Path(path).expanduser(), Path(path).expanduser().resolve()]):
        for p in (form, *form.parents):
            if p.name != ATTRIBUTION_WORK or p in seen:
                continue
            seen.add(p)
            try:
                if (p.parent / ATTRIBUTION_FILES[0]).is_file() or (p / ".lock").is_file():
                    return p
                key = p / "run.json"
                if key.is_file():
                    doc = json.loads(key.read_text(encoding="utf-8"))
                    if isinstance(doc, dict) and "weights_fingerprint" in doc and "sites" in doc:
                        return p
            except (OSError, ValueError):
                continue
    return None


@checked_arguments
def refuse_attribution_work_folder(path: str | os.PathLike, what: str = "--out") -> None:
    """``ValueError`` naming ``what`` when ``path`` is or lies inside the work folder of an
    attribution run (:func:`attribution_work_folder`): a result written there was deleted with the
    run's partials by ``Attribution.save(overwrite=True)`` (H8-PT)."""
    work = attribution_work_folder(path)
    if work is not None:
        where = "is" if Path(path).expanduser().resolve() == work.resolve() else "lies inside"
        raise ValueError(
            f"{what} {path} {where} {work}, the work folder of the attribution run {work.parent} (its "
            "per-trace partials, cleared when that result is replaced): choose a path outside it"
        )


@checked_arguments
def result_owning(path: str | os.PathLike) -> tuple[FinishedResult, Path] | None:
    """``(result, entry)`` when the resolved ``path`` is, or lies inside, one of the files or
    folders (``entry``) of the finished result nearest above it (:func:`finished_result`), else
    ``None``: a path that no result above it lists (a new file beside a result's own) is free."""
    p = Path(path).expanduser().resolve()
    child = p
    for folder in p.parents:
        res = finished_result(folder)
        if res is not None:
            return (res, child) if res.owns(child.name) else None
        child = folder
    return None


@checked_arguments
@dataclass(frozen=True)
class ResultConflict:
    """Writing :attr:`path` would change :attr:`result`, a finished result of another command
    (:func:`result_conflict`): :attr:`entry` is the entry of the result that :attr:`path` is or lies
    inside, ``None`` when :attr:`path` is the result folder itself."""

    result: FinishedResult
    path: Path
    entry: Path | None

    def __str__(self) -> str:
        """``"is the study result SC"``, ``"is a file of the attribution result A"``, ``"lies inside
        BR/toy/problems, part of the bench run result BR/toy"`` (the subject, the path, is the caller's)."""
        if self.entry is None:
            return f"is {self.result}"
        if self.entry != self.path:
            return f"lies inside {self.entry}, part of {self.result}"
        if self.path.is_dir():
            return f"is a folder of {self.result}"
        if self.result.names is None and not (self.path.exists() or self.path.is_symlink()):
            return f"would be a new file inside {self.result}, a folder whose every file is its own"
        return f"is a file of {self.result}"


def check_own(own: object) -> None:
    """``ValueError`` unless ``own`` is ``None`` or one of :data:`RESULT_KINDS` (the writers'
    ``own=`` argument: the kind of result whose own file or folder the library writes)."""
    if own is not None and own not in RESULT_KINDS:
        raise ValueError(
            f"own must be None or the kind of a result ({', '.join(map(repr, RESULT_KINDS))}), got "
            f"{own!r} ({type(own).__name__}); leave it out to write a file of your own"
        )


@checked_arguments
def result_conflict(path: str | os.PathLike, own: str | None = None, *, slot_ok: bool = False) -> ResultConflict | None:
    """Why writing ``path`` would change a finished result of another command, or ``None``: the one
    rule of the command line's output checks (``lrm_interp.cli.common.refuse_other_results``) and of
    the Python writers (:func:`refuse_result_file`, :func:`refuse_other_result_folder`).

    - with ``own`` (the kind of result the writer writes into the folder ``path``): ``path`` is a
      result folder of another kind (``Attribution.save`` into a study folder, H9-MIX); one of the
      kind ``own`` is the writer's own (its own checks decide: a resume, a rerun);
    - ``path`` is one of the files or folders of the finished result nearest above it, or lies
      inside one (:func:`result_owning`), unless that result is of the kind ``own``. ``slot_ok``: a
      folder a result names (a study's ``attribution_fp32/``) is free for a folder writer while it
      is not there or is a folder (the study writes its attribution results there).

    The work folder ``partial/`` of an attribution run is :func:`refuse_attribution_work_folder`'s.
    An ``own`` that names no kind of :data:`RESULT_KINDS` is a ``ValueError``: ``own=5`` (truthy)
    made ``BitAllocation.save`` skip its check of the file it replaces (H29-OWNARG)."""
    check_own(own)
    p = Path(path).expanduser().resolve()
    if own is not None:
        here = finished_result(p)
        if here is not None:
            return None if here.kind == own else ResultConflict(here, p, None)
    hit = result_owning(p)
    if hit is None:
        return None
    res, entry = hit
    if own is not None and res.kind == own:
        return None
    if slot_ok and entry == p and (p.is_dir() or not (p.exists() or p.is_symlink())):
        return None
    return ResultConflict(res, p, entry)


@checked_arguments
def refuse_file_as_folder(path: str | os.PathLike, what: str, marker: str) -> None:
    """``ValueError`` when ``path``, given to a loader of a result folder (``what``: "a study
    folder", which holds the file ``marker``), is a file: the loaders said "S1/study.json: no
    study.json" or ".../attribution.json/attribution.json is missing" (H27-SRLOADFILE,
    H28-LOADFILE). The folder holding ``path`` is named as the fix when it holds ``marker``."""
    p = Path(path)
    if p.is_file():
        fix = f"give the folder that holds it ({p.parent})" if (p.parent / marker).is_file() else f"give {what}"
        raise ValueError(f"{p} is a file, not {what}: {fix}")


class OtherResultError(FileExistsError, ValueError):
    """A Python writer was given a path of a finished result of another command
    (:func:`refuse_result_file`, :func:`refuse_other_result_folder`): both a ``FileExistsError``
    and a ``ValueError`` (a bad argument), so either ``except`` catches it."""


@checked_arguments
def refuse_folder_spelling(path: str | os.PathLike, what: str = "--out") -> None:
    """``ValueError`` naming ``what`` when the file output ``path`` is spelled as a folder: it ends
    with ``/`` (or ``/.``), which pathlib drops, so ``parse --out newdir/`` wrote a *file* named
    ``newdir`` (R28); or its last part is ``..`` or ``.`` (``nd/..``, H11-DD). The rule of every file
    output: the command line's (``check_paths(files=True)``) and the Python writers'
    (:func:`refuse_result_file`)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    seps = tuple({"/", os.sep})
    if text.endswith(seps) or text.endswith(tuple(f"{c}." for c in seps)):
        raise ValueError(
            f"{what} {text}: ends with '/', which names a folder, but {what} names a file to write (a file "
            f"named {Path(text).name or text} would be written); give a file path without the trailing '/'"
        )
    last = re.split("|".join(map(re.escape, seps)), text)[-1]
    if last in (".", ".."):  # "nd/..": "the folder exists", then a folder nd made and "created meanwhile" (H11-DD)
        raise ValueError(
            f"{what} {text}: ends with '{last}', which names a folder, but {what} names a file to write; "
            "give a file path"
        )


@checked_arguments
def refuse_result_file(path: str | os.PathLike, *, own: str | None = None, what: str = "") -> None:
    """:class:`OtherResultError` when the file ``path`` is one of the files of a finished result of
    another command, or lies inside one (:func:`result_conflict`: ``A/scores.csv``,
    ``SC/attribution_fp32/attribution.json``, ``TM/config.json``), and ``ValueError`` when it lies
    inside an attribution run's work folder ``partial/``: the check of every file writer a user
    calls (``save_masks``, ``save_jsonl``, ``lrm_interp.atomic_write_text``), whatever ``replace``
    says (H9-PYW). Refused the same way: a ``path`` in the shipped assets or the model cache
    (:func:`refuse_alias_folder`, H10-ASP) and one spelled as a folder (``"out/"``,
    :func:`refuse_folder_spelling`). ``own``: the kind of result whose file the caller writes (the
    library's own writers: a study writing its ``masks.safetensors``). ``what``: the argument's name,
    for the message."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{what or 'path'} must be a file path (str or os.PathLike), got {path!r}")
    refuse_folder_spelling(path, what or "path")
    refuse_alias_folder(path, what or "path", consent="replace=True")
    refuse_attribution_work_folder(path, what or "path")
    c = result_conflict(path, own)
    if c is not None:
        head = f"{what} {path}" if what else f"{path}"
        raise OtherResultError(
            f"{head} {c}; save elsewhere (a finished result's files are written only by the command that made it)"
        )


@checked_arguments
def refuse_other_result_folder(folder: str | os.PathLike, own: str, what: str = "directory") -> None:
    """:class:`OtherResultError` when the folder ``folder``, into which a writer of the Python API
    writes a result of the kind ``own``, holds a finished result of another kind, or lies inside one
    of its files or folders (:func:`result_conflict` with ``slot_ok``): ``Attribution.save(<a
    study folder>)`` succeeded and the folder was then taken for an attribution result, its study
    files unprotected (H9-MIX). Whatever ``overwrite`` says: nothing of another kind is replaced.
    The one check of ``Attribution.save`` / ``write_tables``, ``attribute(out_dir=...)``
    (:func:`check_out_folder`), ``StudyResult.save`` / ``run_study``, ``BenchScores.write_tables``
    and ``ImportanceShift.write_tables``. A folder that is, contains or lies inside the shipped
    assets or the model cache is refused too (:func:`refuse_alias_folder`, H10-ASP), and so is the
    work folder ``partial/`` of an attribution run (:func:`refuse_attribution_work_folder`)."""
    refuse_alias_folder(folder, what, consent="overwrite=True")
    refuse_attribution_work_folder(folder, what)
    c = result_conflict(folder, own, slot_ok=True)
    if c is not None:
        raise OtherResultError(
            f"{what} {folder} {c}: {'an' if own[:1] in 'aeiou' else 'a'} {own} result is never written into "
            "another command's result (not even with overwrite); choose another folder"
        )


# --------------------------------------------------------------------------- single-file results
#: the kinds of files that declare no ``format`` but are known by their shape (:func:`_shape_of`):
#: traces JSON lines (``toy traces``, ``parse``, ``annotate``, a user's data) and the toolchain
#: configs of ``bits`` (GPTQModel ``dynamic``, llm-compressor ``config_groups``), and the JSON
#: reports of ``parse --report`` and ``annotate`` (``OUT.report.json``, H22-REPORT). Their "format" is
#: the family itself (no ``/version``): no replacing writer of another kind (H17-TRO).
TRACES_KIND = "traces"
GPTQMODEL_DYNAMIC_KIND = "gptqmodel.dynamic"
LLMCOMPRESSOR_GROUPS_KIND = "llmcompressor.config_groups"
PARSE_REPORT_KIND = "parse report"
ANNOTATE_REPORT_KIND = "annotate report"
#: the keys of a parse report (:meth:`lrm_interp.data.paper_layout.ParseReport.to_dict`) and of an
#: annotation run's report (:meth:`lrm_interp.data.annotators.driver.AnnotationRun.to_dict`)
PARSE_REPORT_KEYS = frozenset({"counts", "files", "ignored"})
ANNOTATE_REPORT_KEYS = PARSE_REPORT_KEYS | {"annotator", "stats", "failures"}
#: the single-file results of lrm_interp, by the family of their ``format`` (``lrm_interp.masks/2``:
#: ``lrm_interp.masks``) or the kind their shape shows: what the file holds (as messages say it) and
#: the commands that write it (a flag's own writer: ``"bits --gptqmodel"``; none: only the Python API)
FILE_RESULT_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lrm_interp.masks": ("protection masks", ("protect",)),
    "lrm_interp.bits": ("a bits allocation", ("bits",)),
    "lrm_interp.annotator": ("a trained annotator", ("annotate train",)),
    "lrm_interp.sidecar": ("a protection sidecar", ()),
    "lrm_interp.quantized": ("quantized weights", ()),
    TRACES_KIND: ("reasoning traces (JSON lines)", ("toy traces", "parse", "annotate")),
    GPTQMODEL_DYNAMIC_KIND: ("a GPTQModel 'dynamic' config", ("bits --gptqmodel",)),
    LLMCOMPRESSOR_GROUPS_KIND: ("an llm-compressor 'config_groups' config", ("bits --llmcompressor",)),
    PARSE_REPORT_KIND: ("a parse report (JSON)", ("parse --report",)),
    ANNOTATE_REPORT_KIND: ("an annotation report (JSON)", ("annotate --report",)),
}
#: a safetensors header or a JSON file larger than this is not read for its format (not one of ours);
#: nor is a JSON lines file whose first line is longer
FILE_RESULT_MAX_BYTES = 16 << 20


@checked_arguments
@dataclass(frozen=True)
class FileResult:
    """A single file holding an lrm_interp result (:func:`file_result`): its ``format``
    (``"lrm_interp.masks/2"``; a kind known by its shape: the family itself, ``"traces"``), the
    format's ``family`` (a key of :data:`FILE_RESULT_FORMATS`), what it ``holds`` and the
    ``commands`` that write it (none: the Python API only)."""

    path: Path
    format: str
    family: str
    holds: str
    commands: tuple[str, ...]

    @property
    def what(self) -> str:
        """What the file holds, with its declared format: ``"protection masks (lrm_interp.masks/2)"``,
        ``"reasoning traces (JSON lines)"`` (a kind known by its shape declares none)."""
        return self.holds if self.format == self.family else f"{self.holds} ({self.format})"

    def __str__(self) -> str:
        return f"{self.path} holds {self.what}"


def _shape_of(doc: object) -> str | None:
    """The kind (:data:`FILE_RESULT_FORMATS`) a JSON value has by its shape, or ``None``: one trace
    (an object with ``"id"`` and a string ``"response"``, the first line of a traces file; any other
    key, a ``"format"`` in its metadata too, H18-FMT), a GPTQModel ``dynamic`` config (an object whose
    keys all start ``"+:"`` / ``"-:"``, :func:`lrm_interp.protect.exports.gptqmodel_dynamic_bits`), an
    llm-compressor ``config_groups`` config (an object with a ``"config_groups"`` object,
    :func:`~lrm_interp.protect.exports.llmcompressor_config_groups`), a parse report (exactly the
    keys :data:`PARSE_REPORT_KEYS`: ``counts`` object, ``files`` and ``ignored`` lists; ``parse
    --report``), an annotation run's report (exactly :data:`ANNOTATE_REPORT_KEYS`, the same plus the
    ``annotator``, ``stats`` and ``failures`` objects; ``annotate``'s ``OUT.report.json``: it was
    replaced by ``toy traces`` / ``bits`` / ``parse --out R --overwrite``, H22-REPORT)."""
    if not isinstance(doc, dict) or not doc:
        return None
    if set(doc) in (PARSE_REPORT_KEYS, ANNOTATE_REPORT_KEYS) and (
        isinstance(doc["counts"], dict) and isinstance(doc["files"], list) and isinstance(doc["ignored"], list)
    ):
        if set(doc) == PARSE_REPORT_KEYS:
            return PARSE_REPORT_KIND
        if all(isinstance(doc[k], dict) for k in ("annotator", "stats", "failures")):
            return ANNOTATE_REPORT_KIND
    if "id" in doc and isinstance(doc.get("response"), str):
        return TRACES_KIND
    if all(isinstance(k, str) and k[:2] in ("+:", "-:") for k in doc):
        return GPTQMODEL_DYNAMIC_KIND
    if isinstance(doc.get("config_groups"), dict):
        return LLMCOMPRESSOR_GROUPS_KIND
    return None


def _first_line(size: int, read) -> str | None:
    """The first line that is not blank, as :func:`iter_jsonl` reads lines (split at ``\\n``, a
    leading byte-order mark dropped, blank: ``str.strip()`` leaves nothing, Unicode spaces such as
    U+00A0 or U+2028 included; a file with one was not known for traces, H18-BLANK, H19-USP), of a
    file of ``size`` bytes read by ``read(offset, n)``; ``None``: none within the first
    :data:`FILE_RESULT_MAX_BYTES` (read in 1 MiB pieces). Invalid UTF-8 raises
    ``UnicodeDecodeError`` (no traces file: the reader refuses it too)."""
    offset, limit = 0, min(size, FILE_RESULT_MAX_BYTES + 1)  # the line and its end
    buf = b""
    while offset < limit:
        piece = read(offset, min(1 << 20, limit - offset))
        if not piece:
            break
        lines = (buf + (strip_bom(piece) if offset == 0 else piece)).split(b"\n")
        offset += len(piece)
        buf = lines.pop()  # the line the next piece goes on with
        for raw in lines:
            text = raw.decode("utf-8")
            if text.strip():
                return text
    text = buf.decode("utf-8") if offset >= size else ""
    return text if text.strip() else None


def _format_in(head: bytes, size: int, read) -> str | None:
    """The ``format`` a file's bytes declare (``head``: its first bytes, ``size``: its length,
    ``read(offset, n)``: more of it), or the kind its shape shows (:func:`_shape_of`), or ``None``: a
    safetensors file's ``__metadata__["format"]`` (the 8-byte header length, then the header alone is
    read), a JSON object's shape when it is a trace, else its ``"format"`` when it names a kind of
    :data:`FILE_RESULT_FORMATS` (a file of at most :data:`FILE_RESULT_MAX_BYTES`), else the shape of
    that object or of a JSON lines file's first line that is not blank. Anything unreadable
    declares none."""
    import json

    try:
        if len(head) >= 8 and head[8:9] == b"{":  # safetensors: <u64 little-endian n><n bytes of JSON>
            n = int.from_bytes(head[:8], "little")
            if 2 <= n <= min(FILE_RESULT_MAX_BYTES, size - 8):
                meta = json.loads(read(8, n)).get("__metadata__") or {}
                return meta.get("format") if isinstance(meta.get("format"), str) else None
        start = strip_bom(head).decode("utf-8", "ignore").lstrip()[:1]  # Unicode spaces too (H19-USP)
        if start not in ("{", ""):
            return None
        if size <= FILE_RESULT_MAX_BYTES:
            try:
                doc = json.loads(strip_bom(read(0, size)))
            except ValueError:  # JSON lines: more than one value
                doc = None
            if isinstance(doc, dict):
                fmt, shape = doc.get("format"), _shape_of(doc)
                if shape == TRACES_KIND:  # a trace whose metadata says "format": no JSON result of ours has
                    return shape  # an "id" and a "response" (H19-FMT)
                if isinstance(fmt, str) and fmt.rsplit("/", 1)[0] in FILE_RESULT_FORMATS:
                    return fmt
                return shape
        line = _first_line(size, read)
        kind = None if line is None else _shape_of(json.loads(line))
        return kind if kind == TRACES_KIND else None  # a config or report is one JSON document, never JSON lines
    except (ValueError, AttributeError, OSError):
        return None


def _file_result_of(path: Path, fmt: str | None) -> FileResult | None:
    """The :class:`FileResult` of a file at ``path`` declaring ``fmt``, or ``None`` (no family of ours)."""
    family = fmt.rsplit("/", 1)[0] if fmt else ""
    if family not in FILE_RESULT_FORMATS:
        return None
    holds, commands = FILE_RESULT_FORMATS[family]
    return FileResult(path, str(fmt), family, holds, commands)


@checked_arguments
def file_result(path: str | os.PathLike) -> FileResult | None:
    """The single-file result the regular file ``path`` (a link followed) holds, by the lrm_interp
    ``format`` it declares (:data:`FILE_RESULT_FORMATS`: masks, a bits allocation, a trained
    annotator, ...) or the kind its shape shows (traces JSON lines, a GPTQModel / llm-compressor
    config: :func:`_shape_of`), or ``None``: absent, not a regular file, unreadable, or no such
    format. Cheap: a safetensors file's header only, a JSON file of at most
    :data:`FILE_RESULT_MAX_BYTES`, a JSON lines file's first line."""
    p = Path(path)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(p, "rb") as f:

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            fmt = _format_in(f.read(64), st.st_size, read)
    except OSError:
        return None
    return _file_result_of(p, fmt)


def data_format(data: bytes) -> str | None:
    """The lrm_interp ``format`` the bytes ``data`` (a file about to be written) declare, as
    :func:`file_result` reads one from a file, or ``None``."""
    return _format_in(data[:64], len(data), lambda offset, n: data[offset : offset + n])


@checked_arguments
def file_result_conflict(path: str | os.PathLike, writes: Sequence[str]) -> FileResult | None:
    """The single-file result at ``path`` (:func:`file_result`) when a writer of the format families
    ``writes`` would replace it with a file of another kind, else ``None``: the one rule of H10-SFR
    (``bits --out <a masks file> --overwrite``, ``save_jsonl(<a masks file>)``: a file holding
    another command's result is never replaced by another writer; the same kind is, as before).
    Applied by :func:`atomic_write_bytes` (``writes``: the format of the new bytes) and by the
    command line's ``file_outputs`` (``writes``: the families its command writes)."""
    held = file_result(path)
    return held if held is not None and held.family not in writes else None


def _refuse_replacing_file_result(path: Path, data: bytes) -> None:
    """:class:`OtherResultError` when writing ``data`` at ``path`` would replace a single-file result
    of another kind (:func:`file_result_conflict`)."""
    if file_result(path) is None:  # the common case (no file there, or none of ours): the data is not read
        return
    new = _file_result_of(path, data_format(data))
    held = file_result_conflict(path, [new.family] if new is not None else [])
    if held is not None:
        what = new.what if new is not None else "a file of another kind"
        raise OtherResultError(
            f"{held}: not replaced by {what}, even with replace=True (a result file is replaced only by "
            "a writer of its own kind); choose another path"
        )


@checked_arguments
def check_out_folder(out: str | os.PathLike, what: str = "out_dir", *, own: str | None = "attribution") -> Path:
    """``out`` as a Path when a result folder can be written there, else ``ValueError`` naming
    ``what`` (the argument or flag) and the path: ``out`` lies under a file (:func:`file_on_the_way`),
    or is itself a file, a link to one, a FIFO or a device (a folder is never written over it).
    The Python API's check (``attribute(out_dir=...)``, ``Attribution.save``: a raw
    ``NotADirectoryError`` / ``FileExistsError`` after the work, H7-API7), the same rule as the
    command line's ``check_paths(dirs=True)``. Refused too: ``out`` inside the work folder
    ``partial/`` of an attribution run (:func:`refuse_attribution_work_folder`), and a folder
    holding a finished result of another kind than ``own`` (:func:`refuse_other_result_folder`;
    ``own`` defaults to ``"attribution"``, the kind its callers write: ``attribute(out_dir=...)``
    and ``Attribution.save``; ``None``: not checked). Checks nothing else: no write, nothing created."""
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise TypeError(f"{what} must be a folder path (str or os.PathLike), got {out!r}")
    blocked = file_on_the_way(out)
    if blocked is not None:
        raise ValueError(
            f"{what} {out}: {blocked} is a file, not a folder, so nothing can be written under it; "
            f"give {what} a path outside it"
        )
    refuse_attribution_work_folder(out, what)
    for q in dict.fromkeys([Path(out), Path(out).expanduser()]):
        if (q.exists() or q.is_symlink()) and not q.is_dir():
            raise ValueError(
                f"{what} {out}: a file (or link, or device); {what} names a folder to write the result "
                "into (a file is never replaced by one); choose a folder path"
            )
    if own is not None:
        refuse_other_result_folder(out, own, what)
    else:
        refuse_alias_folder(out, what, consent="overwrite=True")
    return Path(out)


@checked_arguments
def check_out_dir(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    sources: tuple[str | os.PathLike, ...] = (),
    flag: str = "--out",
    marker: str = QUANTIZE_RECORD,
) -> Path:
    """``out`` as a Path once it is safe to write a folder there, else ``ValueError``.

    Refused: ``out`` lies under a file (:func:`file_on_the_way`) or inside the work folder
    ``partial/`` of an attribution run (:func:`refuse_attribution_work_folder`), ``out`` is (or contains, or lies
    inside) one of ``sources`` (a model is never written onto its own source), or ``out`` exists and
    is not empty and ``overwrite`` is false. Even with
    ``overwrite``, only an empty folder or an earlier result (a folder holding the regular file
    ``marker``) is replaced: never a folder of someone else's files (``--out .``), a FIFO or a
    device, nor a file or a link to one (refused at once, ``overwrite`` or not, naming what it holds:
    :func:`_file_as_out_dir`, H24-QFILE). A non-empty folder without ``marker`` is refused at once,
    ``overwrite`` or not, naming another command's result it is (:func:`_not_replaceable`, H13-OVM);
    the advice to pass ``--overwrite`` is given only where it applies."""
    blocked = file_on_the_way(out)
    if blocked is not None:
        raise ValueError(
            f"{flag} {out}: {blocked} is a file, not a folder, so nothing can be written under it; "
            f"give {flag} a path outside it"
        )
    refuse_attribution_work_folder(out, flag)
    given = Path(out)
    out = given.resolve()
    for src in sources:
        if src is None or not Path(src).exists():
            continue
        s = Path(src).resolve()
        if out == s or s in out.parents or out in s.parents:
            raise ValueError(f"{flag} {out} overlaps its source {s}; choose another folder")
    if not (out.exists() or out.is_symlink()):
        return out
    if out.is_dir() and not any(out.iterdir()):
        return out
    if not out.is_dir():
        try:
            refuse_special(out)  # a FIFO, a device: never
        except OSError as e:
            raise ValueError(f"{flag} {e}") from None
        raise ValueError(_file_as_out_dir(given, out, flag))  # a file: never, --overwrite or not (H24-QFILE)
    rec = out / marker
    if not (rec.is_file() and not rec.is_symlink()):
        raise ValueError(_not_replaceable(out, flag, marker))  # --overwrite or not: no advice to pass it
    if not overwrite:
        raise ValueError(
            f"{flag} {out} exists and is not empty; pass --overwrite to replace it or choose another folder"
        )
    return out


def _file_as_out_dir(given: Path, out: Path, flag: str) -> str:
    """Why :func:`check_out_dir` never replaces the file ``out`` (``given``: the path as named,
    perhaps a link to it) with a folder, said at once, with or without ``--overwrite``: what the
    file holds (:func:`file_result`: traces, masks, a trained annotator, ...). ``quantize
    --overwrite --out traces.jsonl`` replaced the traces with a model folder, and the refusal
    without ``--overwrite`` advised passing it (H24-QFILE)."""
    held = file_result(out)
    what = f"a file ({held.what})" if held is not None else "a file"
    if given.is_symlink():
        what = f"a link to {out}, {what}"
    return (
        f"{flag} {given}: {what}; {flag} names a folder to write the result into (a file is never replaced "
        "by one, not even with --overwrite): choose another folder"
    )


def _not_replaceable(out: Path, flag: str, marker: str) -> str:
    """Why :func:`check_out_dir` never replaces the non-empty folder ``out`` that holds no ``marker``
    (not an earlier result of the writer), said at once, with or without ``--overwrite``: the first
    refusal advised ``--overwrite``, and the rerun with it was refused for another reason (H13-OVM).
    Names what ``out`` is when it is (or lies inside) another command's result
    (:func:`finished_result`, :func:`result_conflict`)."""
    res = finished_result(out)
    conflict = None if res is not None else result_conflict(out)
    if res is not None or conflict is not None:
        what = f"is an earlier {res.kind} result" if res is not None else str(conflict)
        return (
            f"{flag} {out} {what} (another command's result; no {marker}): it is never written into, not even "
            "with --overwrite; choose another folder"
        )
    return (
        f"{flag} {out} is not an earlier result (no {marker}) and not empty: --overwrite replaces only those; "
        "choose another folder"
    )


@checked_arguments
def check_writable(out: str | os.PathLike, flag: str = "--out") -> None:
    """``OSError`` naming ``flag`` and the folder when nothing can be created at ``out``: its nearest
    existing folder (``out`` itself, or the ancestor its missing parents would be made in) is
    probed by making and removing an empty folder there (permissions, a read-only mount and an
    immutable folder alike; ``os.access`` misses the last two). For writers that run long before
    they write (``toy train``: the model is saved after the training, H6-P13)."""
    path = Path(out)
    probe_in = path if path.is_dir() else next((p for p in path.parents if p.is_dir()), Path("."))
    try:
        tmp = tempfile.mkdtemp(prefix=".lrm_interp-write-probe.", dir=probe_in)
    except OSError as e:
        why = e.strerror or str(e)
        raise OSError(
            f"{flag} {out}: cannot write in {probe_in} ({why}); choose a folder this user can write"
        ) from None
    os.rmdir(tmp)


@checked_arguments
def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike, *, replace: bool | None = None) -> Path:
    """Move the finished folder ``tmp`` to ``out`` (replacing ``out`` if present) with renames only,
    so ``out`` is either the old folder or the whole new one, never a mix.

    ``replace=False`` (the default, ``None``, for a ``tmp`` from :func:`make_temp_dir` made while
    ``out`` did not exist): ``out`` must still not exist (or be an empty folder); what appeared
    there meanwhile (another run's result, a file) is kept and ``FileExistsError`` names ``out``."""
    tmp, out = Path(tmp), Path(out)
    if replace is None:
        replace = tmp not in _ABSENT_AT_START
    _ABSENT_AT_START.discard(tmp)
    old = None
    if not replace:
        try:
            os.rename(tmp, out)  # atomic; fails onto a file or a non-empty folder
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR) or out.is_symlink():
                raise FileExistsError(
                    errno.EEXIST,
                    "created by something else while this ran: not replaced; choose another path",
                    str(out),
                ) from None
            raise _naming_destination(e, out, tmp) from e
        return out
    with naming_destination(out, tmp):
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:  # put the previous result back
                os.replace(old, out)
            raise
    if old is not None:
        import shutil

        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return out


@checked_arguments
def atomic_save_figure(fig, path: str | os.PathLike, **kw) -> Path:
    """``fig.savefig`` to a temp file beside ``path``, then rename (format from ``path``'s suffix)."""
    path = Path(path)
    refuse_special(path)
    with naming_destination(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        tmp = Path(name)
        try:  # an interrupt (Ctrl-C, SIGTERM in the CLI) anywhere from here on leaves no temporary file
            os.close(fd)
            fig.savefig(tmp, **kw)
            os.chmod(tmp, plain_mode())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


@overload
def dtype_to_str(dtype: torch.dtype) -> str: ...
@overload
def dtype_to_str(dtype: None) -> None: ...
@overload
def dtype_to_str(dtype: torch.dtype | None) -> str | None: ...
def dtype_to_str(dtype: torch.dtype | None) -> str | None:
    """``torch.bfloat16`` → ``"bfloat16"`` (``None`` stays ``None``)."""
    return None if dtype is None else str(dtype).replace("torch.", "")


@overload
def str_to_dtype(name: str | torch.dtype) -> torch.dtype: ...
@overload
def str_to_dtype(name: None) -> None: ...
@overload
def str_to_dtype(name: str | torch.dtype | None) -> torch.dtype | None: ...
def str_to_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` → ``torch.bfloat16``; unknown names raise ``ValueError``."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "").lower()
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPE_NAMES)}")
    return getattr(torch, _DTYPE_NAMES[key])


DTYPE_CHOICES: tuple[str, ...] = ("fp32", "bf16", "fp16")


#: Metadata key of the checksum every lrm_interp safetensors file carries (:func:`payload_checksum`).
CHECKSUM_KEY = "payload_sha256"
_UNVERIFIED_WARNED: set[str] = set()


class ChecksumError(ValueError):
    """A file's payload does not match the checksum in its metadata (it was changed after writing)."""


def payload_checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 (hex) of what a safetensors file holds: every metadata entry but :data:`CHECKSUM_KEY`
    (in key order, as JSON ``[key, value]``) and every tensor (in name order: JSON ``[name, dtype,
    shape]``, then its raw bytes in C order). Independent of the file's byte layout."""
    import hashlib
    import json

    h = hashlib.sha256(b"lrm_interp.payload/1\0")
    for k in sorted(metadata):
        if k != CHECKSUM_KEY:
            h.update(json.dumps([k, metadata[k]]).encode("utf-8") + b"\0")
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(json.dumps([name, dtype_to_str(t.dtype), list(t.shape)]).encode("utf-8") + b"\0")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the array's buffer (a memoryview)
    return h.hexdigest()


@checked_arguments
def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, replace: bool = True
) -> Path:
    """Atomically write ``tensors`` (CPU, contiguous) with string ``metadata`` as one safetensors file.

    The metadata gets :data:`CHECKSUM_KEY`: the :func:`payload_checksum` of the tensors and the
    other metadata, checked by :func:`read_safetensors`. ``replace=False``: an existing ``path``
    (there from the start, or created while this ran) is never replaced (:func:`atomic_write_bytes`)."""
    from safetensors.torch import save

    path = Path(path)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in metadata.items() if k != CHECKSUM_KEY}
    meta[CHECKSUM_KEY] = payload_checksum(cpu, meta)
    atomic_write_bytes(path, save(cpu, metadata=meta), replace=replace)
    return path


@checked_arguments
def verify_checksum(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str], what: str
) -> bool:
    """Check ``metadata[CHECKSUM_KEY]`` against the payload read from ``path``.

    Returns ``True`` when it matches; ``False`` for a file written before checksums existed (no
    key: it loads unverified, with one warning per kind of file and process; files shipped
    inside the lrm_interp package are not warned about). A mismatch raises
    :class:`ChecksumError` naming the file.
    """
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        path = Path(path)
        shipped = Path(__file__).resolve().parent / "assets"
        if what not in _UNVERIFIED_WARNED and shipped not in path.resolve().parents:
            _UNVERIFIED_WARNED.add(what)
            import warnings

            warnings.warn(
                f"{what} {path} has no {CHECKSUM_KEY} (written by an lrm_interp before checksums): "
                "loaded without an integrity check; saving it again adds one",
                stacklevel=user_stacklevel(),
            )
        return False
    actual = payload_checksum(tensors, metadata)
    if actual != stored:
        raise ChecksumError(
            f"{path}: checksum mismatch: the {what} was changed or corrupted after it was written "
            f"({CHECKSUM_KEY} {stored[:16]}... in its metadata, {actual[:16]}... of its contents); "
            "do not use it: write it again"
        )
    return True


@checked_arguments
def read_safetensors(
    path: str | os.PathLike, formats: tuple[str | None, ...], what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of an lrm_interp safetensors file whose ``metadata["format"]`` is in ``formats``
    (``None`` in ``formats``: a file without a format entry is accepted too).

    A missing file raises ``FileNotFoundError``; a file that is not safetensors, or of another
    format, raises ``ValueError`` naming the file and ``what`` it should be (e.g. "mask file");
    a payload that does not match the file's checksum raises :class:`ChecksumError` naming the
    file (:func:`verify_checksum`; files without a checksum load unverified).
    """
    from safetensors import safe_open

    path_argument(path, what)  # "" is no file (H12-EMPY)

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():  # safetensors said "No such device (os error 19)" (H7-API-lm)
        inside = sorted(q.name for q in path.glob("*.safetensors"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise IsADirectoryError(f"{path} is a folder; give the {what} itself, a .safetensors file{hint}")
    try:
        f = safe_open(str(path), "pt")
    except Exception as e:  # name the file in the error
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    with f:
        meta = f.metadata() or {}
        if meta.get("format") not in formats:
            shown = [repr(x) for x in formats if x is not None] + (["none"] if None in formats else [])
            raise ValueError(
                f"{path}: not an lrm_interp {what} (format {meta.get('format')!r}, expected {' or '.join(shown)})"
            )
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # a truncated or damaged data section
            raise ValueError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from e
    verify_checksum(path, tensors, meta, what)
    return tensors, meta


class _JSONRefusal(Exception):
    """Raised inside ``json.loads`` hooks; :func:`loads_strict` turns it into the caller's error."""


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _JSONRefusal(
                    f"key {k!r} appears twice in one object (JSON readers keep the last one silently); "
                    "remove one of the two"
                )
            seen.add(k)
    return d


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent: refused when it overflows a float (``1e400`` was
    read as ``inf``, which no JSON writer can write back, H7-N1)."""
    import math

    x = float(text)
    if math.isinf(x):
        raise _JSONRefusal(
            f"the number {text} is too large for a float (it would read as infinity); write a finite number"
        )
    return x


def _no_constant(name: str) -> object:
    raise _JSONRefusal(f"{name} is not a JSON number (a Python / JavaScript extension); write null or a finite number")


def lone_surrogate(value: object, key: str = "") -> str | None:
    """Why ``value`` (decoded JSON: a string, or a list / dict holding strings) is not valid Unicode,
    or ``None``. JSON's ``\\uXXXX`` escapes can spell a lone surrogate (``"\\ud800"``): the line
    is valid UTF-8 and valid JSON, but the string cannot be encoded (every UTF-8 writer fails on it,
    later, far from the file)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            where = f"{key!r} " if key else ""
            return (
                f"{where}holds a lone surrogate {value[e.start]!r} at character {e.start} (a JSON \\u "
                "escape that is not valid Unicode; it cannot be written as UTF-8)"
            )
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{key}.{k}" if key else str(k)
            bad = lone_surrogate(k)
            bad = f"a key {bad}" if bad else lone_surrogate(v, path)
            if bad:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = lone_surrogate(v, f"{key}[{i}]")
            if bad:
                return bad
    return None


def loads_strict(text: str, where: str, error: type[Exception] = ValueError) -> object:
    """``json.loads(text)`` that refuses what Python's reader accepts silently, raising ``error``
    with a message starting with ``where`` (``file:line`` or a file): invalid JSON; a key twice in
    one object (the last one would win); ``NaN`` / ``Infinity`` (not JSON: written back they make
    an invalid file); a string with a lone surrogate (``"\\ud800"``: valid JSON, not valid Unicode)."""
    import json
    import re

    try:
        d = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant, parse_float=_finite_float
        )
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        raise error(f"{where}: invalid JSON ({e.msg}, {at})") from e
    except _JSONRefusal as e:
        raise error(f"{where}: {e}") from None
    # a lone surrogate can only come from a \uD800-\uDFFF escape (UTF-8 cannot encode one): walk the
    # decoded value only when the text holds such an escape
    if re.search(r"\\u[dD][89abcdefABCDEF]", text):
        bad = lone_surrogate(d)
        if bad:
            raise error(f"{where}: {bad}")
    return d


def _refuse_json_document(path: str | os.PathLike, error: type[Exception]) -> None:
    """Raise ``error`` saying ``path`` is one JSON document (naming its ``"format"`` when it has
    one) if the whole file parses as one JSON value; return otherwise. A pretty-printed JSON file
    (``bits.json``, ``attribution.json``) read as JSON lines said "F:1: invalid JSON (Expecting
    property name ...)" of a valid file (H15-CLB / H15-CAJ)."""
    import json

    try:
        text = strip_bom(Path(path).read_bytes()).decode("utf-8")
        # one line that parses is refused for what it holds (a key twice, NaN), not for its layout
        whole = json.loads(text) if len([x for x in text.splitlines() if x.strip()]) > 1 else None
    except (ValueError, OSError):  # not one JSON document either (UnicodeDecodeError is a ValueError)
        return
    if whole is None:
        return
    fmt = whole.get("format") if isinstance(whole, dict) else None
    what = f" (a {fmt} file)" if isinstance(fmt, str) else ""
    raise error(f"{path} is one JSON document{what}, not JSON lines (one object per line)")


@checked_arguments
def iter_jsonl(path: str | os.PathLike, error: type[Exception] = ValueError):
    """``(line number, where, object)`` for every non-blank line of a JSONL file.

    ``where`` is ``"<path>:<line>"``. Invalid UTF-8, invalid JSON, a line that is not a JSON
    object, a key twice in one object, ``NaN`` / ``Infinity`` or a lone surrogate escape
    (:func:`loads_strict`) raises ``error`` with a message starting with ``where``.
    """
    first = 1  # the first non-blank line (0 once it is read)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if first == lineno and not raw.strip():
                first += 1
            if lineno == 1:  # a UTF-8 byte-order mark (as read_text_file drops it)
                raw = strip_bom(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    f"{where}: invalid UTF-8 at byte {e.start} of the line "
                    f"({raw[max(0, e.start - 10) : e.start + 10]!r})"
                ) from e
            if not line.strip():
                continue
            try:
                d = loads_strict(line, where, error)
            except error:
                if lineno == first:
                    _refuse_json_document(path, error)
                raise
            first = 0
            if not isinstance(d, dict):
                raise error(f"{where}: expected a JSON object, got {type(d).__name__}")
            yield lineno, where, d


#: the options of ``lrm-interp`` commands whose value is a path (:func:`shell_command`)
PATH_FLAGS = frozenset(
    {"--model", "--data", "--out", "--scores", "--masks", "--original", "--compressed", "--task-data", "--outputs",
     "--annotator", "--tokenizer", "--calib", "--cache", "--in"}
)  # fmt: skip


def shell_command(argv: Sequence[object]) -> str:
    """A command line to print for the user to paste: each argument shell-quoted (``shlex.join``: a
    path with a space, a quote or a ``$`` was split or expanded when pasted, H27-QUOTE, H29-PRINTQUOTE),
    and a path option whose value begins with ``-`` glued to it (``--data=-dash.jsonl``: argparse
    took ``--data -dash.jsonl`` for a missing value, H28-QUOTEDASH)."""
    import shlex

    args = [str(a) for a in argv]
    glued: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in PATH_FLAGS and i + 1 < len(args) and args[i + 1].startswith("-"):
            glued.append(f"{args[i]}={args[i + 1]}")
            i += 2
        else:
            glued.append(args[i])
            i += 1
    return shlex.join(glued)
