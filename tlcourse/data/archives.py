"""Unpacking zip and tar archives safely: nothing lands outside the target, nothing half-done.

:func:`safe_extract` refuses members that would escape the extraction folder (absolute paths,
``..``, links pointing outside) before writing a byte, then moves whole folders into place with
one rename each. Files are placed atomically by :mod:`tlcourse._io`; a folder needs a rename,
which :func:`rename_into_place` does without ever merging into an existing one.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from tlcourse._io import DamagedFileError, read_or_explain
from tlcourse.data.registry import UnsafeArchiveError

_REMEDY = ("Delete it and get it again (a copy from $TLCOURSE_MIRROR: stage the mirror again with "
           "`python -m tlcourse stage --to MIRROR` on a machine with a good copy).")

__all__ = ["rename_into_place", "safe_extract"]


def _escapes(relative: str) -> bool:
    """Whether a normalised archive path leaves the extraction folder."""
    return relative == ".." or relative.startswith("../")


def _normalised_member_name(name: str) -> str:
    """An archive member's path relative to the extraction folder; refuses absolute paths."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    relative = posixpath.normpath(posix)
    if _escapes(relative):
        raise UnsafeArchiveError(f"archive member {name!r} escapes the extraction folder")
    return relative


def _check_link(member: str, target: str, *, relative_to_member: bool) -> None:
    """Refuse a link whose target resolves outside the extraction folder."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise UnsafeArchiveError(f"archive link {member!r} points to an absolute path {target!r}")
    base = posixpath.dirname(member) if relative_to_member else ""
    if _escapes(posixpath.normpath(posixpath.join(base, target))):
        raise UnsafeArchiveError(f"archive link {member!r} -> {target!r} escapes the folder")


def _safe_member_names(archive: Path) -> list[str]:
    """Every member's normalised path, after refusing anything unsafe; bad bytes: DamagedFileError."""
    return read_or_explain(archive, _member_names, what="archive", remedy=_REMEDY,
                           keep=(UnsafeArchiveError,))


def _member_names(archive: Path) -> list[str]:
    """Every member's normalised path, after refusing anything unsafe (nothing is written)."""
    names: list[str] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                relative = _normalised_member_name(info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    target = zf.read(info).decode("utf-8", errors="replace")
                    _check_link(relative, target, relative_to_member=True)
                names.append(relative)
        return names
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as err:
        raise DamagedFileError(archive, "archive", _REMEDY,
                               f"it is neither a zip nor a tar archive: {err}") from None
    with tf:
        for member in tf.getmembers():
            relative = _normalised_member_name(member.name)
            if member.issym():
                _check_link(relative, member.linkname, relative_to_member=True)
            elif member.islnk():
                _check_link(relative, member.linkname, relative_to_member=False)
            elif not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"archive member {member.name!r} is a device or fifo")
            names.append(relative)
    return names


def _extract_all(archive: Path, staging: Path) -> None:
    """Unpack every member of an already checked archive into ``staging``."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
    else:
        with tarfile.open(archive) as tf:
            # The "data" filter is a second guard behind the checks above.
            tf.extractall(staging, filter="data")


def rename_into_place(source: Path, target: Path) -> None:
    """Atomic rename that never merges: a target created meanwhile raises FileExistsError."""
    try:
        os.rename(source, target)
    except OSError as err:
        # Linux refuses to rename onto a non-empty folder with ENOTEMPTY, not EEXIST.
        if target.exists():
            raise FileExistsError(f"{target} already exists; not overwriting it") from err
        raise


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Extract a zip or tar archive into ``dest`` safely and atomically.

    Every member is checked before anything is written: an absolute path, a ``..`` that
    escapes, or a link pointing outside raises :class:`UnsafeArchiveError`. The archive is then
    unpacked into a hidden temporary folder inside ``dest`` (the same filesystem) and each
    top-level entry is renamed into place, so an interrupted extraction never leaves a half
    folder under the final name. An existing entry of the same name raises FileExistsError.

    Returns the archive's single top-level folder (the usual case, e.g. ``dest/brain-mri``),
    or ``dest`` when the archive has several top-level entries.
    """
    archive, dest = Path(archive), Path(dest)
    names = _safe_member_names(archive)
    top_level = sorted({name.split("/")[0] for name in names if name != "."})
    dest.mkdir(parents=True, exist_ok=True)
    clashes = [top for top in top_level if (dest / top).exists()]
    if clashes:
        raise FileExistsError(f"{dest / clashes[0]} already exists; not overwriting it")

    staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".partial", dir=dest))
    try:
        read_or_explain(archive, lambda path: _extract_all(path, staging), what="archive", remedy=_REMEDY,
                        keep=(UnsafeArchiveError,))
        for top in top_level:
            rename_into_place(staging / top, dest / top)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if len(top_level) == 1 and (dest / top_level[0]).is_dir():
        return dest / top_level[0]
    return dest
