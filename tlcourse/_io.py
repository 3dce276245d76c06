"""Atomic file writes: the one place where the package replaces a file on disk.

A file written in place and cut short (Ctrl-C, a kernel restart, a full disk, a killed job)
loses the last good copy. Every writer in ``tlcourse`` therefore writes a temporary file in the
target's folder, flushes it to disk, then ``os.replace``-s it over the target, which is atomic
on POSIX and Windows: readers see the old file or the new one, never half of one. Two processes
writing the same file both leave a complete file (the later one wins).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_copy", "atomic_path", "atomic_save", "atomic_write", "atomic_write_text",
           "remove_partial_files"]

PARTIAL_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    For writers that need a file name rather than a file object (``zipfile``, ``shutil``,
    ``torch.onnx.export``). On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb+") as f:  # make the bytes durable before the rename
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


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


def remove_partial_files(folder: str | os.PathLike[str], name: str) -> None:
    """Delete the temporary files that killed writes of ``folder/name`` left behind.

    They are never read (the target itself is intact); they only clutter the folder.
    """
    for partial in Path(folder).glob(f".{name}.*{PARTIAL_SUFFIX}"):
        with contextlib.suppress(OSError):
            partial.unlink()
