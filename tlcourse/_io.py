"""Files on disk: atomic writes, locks, and reading back with errors a learner can act on.

A file written in place and cut short (Ctrl-C, a kernel restart, a full disk, a killed job)
loses the last good copy. Every writer in ``tlcourse`` therefore writes a temporary file in the
target's folder, flushes it to disk, then ``os.replace``-s it over the target, which is atomic
on POSIX and Windows: readers see the old file or the new one, never half of one. Two processes
writing the same file both leave a complete file (the later one wins); read-modify-write cycles
(``results.record``) take :func:`locked` around them so that concurrent merges lose nothing.

A write that fails because the disk is full or read-only raises :class:`DiskWriteError`, which
names the folder and the setting that moves it. A file that cannot be read back is reported by
:func:`read_or_explain` as a :class:`DamagedFileError` naming the file, what it is and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from tlcourse.paths import data_dir

try:  # POSIX; on Windows locks are skipped (see locked) and partials are judged by age
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DamagedFileError", "DiskWriteError", "atomic_copy", "atomic_path", "atomic_save",
           "atomic_write", "atomic_write_text", "format_problem", "locked", "make_folder", "read_json",
           "read_or_explain", "read_torch", "remove_partial_files"]

PARTIAL_SUFFIX = ".tmp"
T = TypeVar("T")

#: errno -> what it means for a learner. Anything else is re-raised unchanged.
_DISK_PROBLEMS = {
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "this user may not write there",
    errno.EPERM: "this user may not write there",
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file is larger than this system allows (a file-size limit)",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOTDIR: "part of the path is a file, not a folder",
}


class DiskWriteError(OSError):
    """A write failed for a reason on the learner's machine (full, read-only, no permission).

    Keeps the original ``errno``; the original error is the ``__cause__``.
    """


class DamagedFileError(ValueError):
    """A file the package wrote (or was given) cannot be read back; ``path`` names it.

    ``what`` is a short noun ("checkpoint", "metrics file"); ``remedy`` says what to do.
    """

    def __init__(self, path: str | os.PathLike[str], what: str, remedy: str, detail: str) -> None:
        detail = " ".join(detail.split())  # one line: parsers' messages can span several
        self.path, self.what, self.remedy, self.detail = Path(path), what, remedy, detail
        super().__init__(f"Could not read {what} {self.path}: the file is damaged, cut short or of "
                         f"another kind ({detail}). {remedy}")


def _setting_for(folder: Path) -> str:
    """The environment variable that moves ``folder`` (data or generated files)."""
    with contextlib.suppress(OSError, ValueError):
        if folder.resolve().is_relative_to(data_dir().resolve()):
            return "TLCOURSE_DATA_DIR"
    return "TLCOURSE_BUILD_DIR"


def _explain_write_error(err: OSError, path: Path, *, action: str | None = None,
                         remedy: str | None = None) -> OSError:
    """``err`` as a :class:`DiskWriteError` naming the folder and the setting; else ``err``.

    ``action`` ("create the folder X") and ``remedy`` replace the defaults, which speak of a file
    written into a folder that a setting moves.
    """
    if isinstance(err, DiskWriteError) or err.errno not in _DISK_PROBLEMS:
        return err
    folder = path.parent
    setting = _setting_for(folder)
    action = action or f"write {path.name} into {folder}"
    remedy = remedy or (
        f"The previous file, if any, is unchanged. Free some space or make the folder writable, or "
        f"move the course's files to a writable disk with space: set {setting}=/another/folder "
        "(or pass another folder, e.g. checkpoint_dir=, to the function that writes it).")
    return DiskWriteError(err.errno, f"Could not {action}: {_DISK_PROBLEMS[err.errno]} ({err.strerror}). {remedy}")


def _file_in_the_way(path: Path) -> Path | None:
    """The deepest existing part of ``path`` that is not a folder (``a.txt`` in ``a.txt/out``)."""
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


def make_folder(path: str | os.PathLike[str], *, remedy: str | None = None) -> Path:
    """``mkdir -p path``, or a :class:`DiskWriteError` naming ``path`` and what is in the way.

    A full, read-only or forbidden disk, and a file where a folder should be (``notes.txt/out``),
    get the same clear error as a failed write; ``remedy`` says what to do instead of the default.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = _file_in_the_way(path)
        if blocker is not None or isinstance(err, FileExistsError):  # a file (or a broken link) holds the name
            err = NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        remedy = remedy or (f"Free some space, make the folder writable or move the file in the way, or "
                            f"use a writable disk with space: set {_setting_for(path)}=/another/folder.")
        if blocker is not None:
            remedy = f"The file in the way is {blocker}. {remedy}"
        raise _explain_write_error(err, path, action=f"create the folder {path}", remedy=remedy) from err
    return path


def _try_lock(fd: int, blocking: bool) -> bool:
    """flock ``fd`` exclusively; False if another process holds it (non-blocking only)."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    For writers that need a file name rather than a file object (``zipfile``, ``shutil``,
    ``torch.onnx.export``). On any error the temporary file is removed and ``path`` is untouched;
    a full, read-only or forbidden folder raises :class:`DiskWriteError`. The temporary file is
    locked while it is written, so :func:`remove_partial_files` in another process leaves it alone.
    """
    path = Path(path)
    tmp_name: str | None = None
    fd = -1
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as err:  # the folder's name is taken by a file
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from err
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
        _try_lock(fd, blocking=True)
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp_name, path)
    except BaseException as err:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        cause = _disk_error_in(err)
        if cause is not None:
            raise _explain_write_error(cause, path) from err
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _umask() -> int:
    """The process's umask (reading it means setting it; put it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_error_in(err: BaseException) -> OSError | None:
    """The first OSError with a disk errno in ``err``'s chain (torch wraps write errors)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_PROBLEMS:
            return current
        current = current.__cause__ or current.__context__
    return None


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary temporary file, then move it over ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Mapping[str, Any] | Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically (checkpoints, feature caches, bundles).

    Keep ``obj`` to tensors, numbers, strings, lists and dicts so that
    ``torch.load(..., weights_only=True)`` can read it back.
    """
    import torch  # heavy: only the writers of tensors need it

    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy ``source`` to ``target`` atomically (a staged dataset or weights file)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def remove_partial_files(folder: str | os.PathLike[str], name: str, *, min_age: float = 3600.0) -> None:
    """Delete the temporary files that killed writes of ``folder/name`` left behind.

    They are never read (the target itself is intact); they only clutter the folder. A partial
    file whose writer is still running (another notebook writing the same checkpoint) is locked
    by :func:`atomic_path` and kept; without ``fcntl`` only files older than ``min_age`` s go.
    """
    for partial in Path(folder).glob(f".{name}.*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            if fcntl is None:  # pragma: no cover - Windows
                if time.time() - partial.stat().st_mtime > min_age:
                    partial.unlink()
                continue
            fd = os.open(partial, os.O_RDONLY)
            try:
                if _try_lock(fd, blocking=False):
                    partial.unlink()
            finally:
                os.close(fd)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (a hidden ``.<name>.lock`` beside it) while inside.

    For read-modify-write cycles that several processes run on one file (``results.record`` from
    two notebooks of one classroom machine). POSIX only; elsewhere it does not lock.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise _explain_write_error(err, lock) from err
    try:
        _try_lock(fd, blocking=True)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


def read_or_explain(path: str | os.PathLike[str], reader: Callable[[Path], T], *, what: str, remedy: str,
                    check: Callable[[T], str | None] | None = None,
                    keep: tuple[type[BaseException], ...] = ()) -> T:
    """``reader(path)``, or a :class:`DamagedFileError` that names the file, ``what`` it is and the ``remedy``.

    Any error the reader raises on bad bytes (a truncated zip, half a JSON document, a pickle cut
    short) becomes that one error, with the original as ``__cause__``. ``check`` may inspect what
    was read and return a problem (a wrong format number) to report the same way. A missing file
    (``FileNotFoundError``) and permission problems are not damage and pass through unchanged,
    as do the reader's own meaningful errors listed in ``keep``.
    """
    path = Path(path)
    try:
        value = reader(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError, DiskWriteError, DamagedFileError, *keep):
        raise
    except Exception as err:  # noqa: BLE001 - every parser has its own errors for bad bytes
        if _disk_error_in(err) is not None:
            raise  # a full disk while unpacking is no damage of the file read
        detail = " ".join(str(err).split())[:200] or "no details"
        raise DamagedFileError(path, what, remedy, f"{type(err).__name__}: {detail}") from err
    problem = check(value) if check is not None else None
    if problem:
        raise DamagedFileError(path, what, remedy, problem)
    return value


def read_json(path: Path) -> Any:
    """A UTF-8 JSON document (a reader for :func:`read_or_explain`)."""
    return json.loads(path.read_bytes().decode("utf-8"))


def read_torch(path: Path, map_location: Any = "cpu") -> Any:
    """A ``torch.save`` file, loaded with ``weights_only=True`` (a reader for :func:`read_or_explain`)."""
    import torch  # heavy: only the readers of tensors need it

    return torch.load(path, map_location=map_location, weights_only=True)


def format_problem(found: Any, expected: int, *, key: str = "format") -> str | None:
    """A ``check`` for :func:`read_or_explain`: None if ``found[key] == expected``, else the mismatch."""
    if not isinstance(found, Mapping):
        return f"it holds a {type(found).__name__}, not a dict"
    if found.get(key) != expected:
        return f"it has {key} {found.get(key)!r}, this version of tlcourse reads {key} {expected}"
    return None
