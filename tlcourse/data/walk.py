"""Walking the class folders of an image folder once: links followed, nothing seen twice.

:class:`TreeWalk` does the walking for :func:`tlcourse.data.scan_image_folder`: it follows links
but enters each real folder once and counts each real file once, checks every counted file with
:func:`tlcourse.data.image_problem`, and reports every entry it leaves out as a :class:`BadFile`
(bad images, hidden folders, cycles, duplicate and broken links).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tlcourse.data.images import image_problem

__all__ = ["BadFile", "TreeWalk", "is_dir", "is_hidden"]


@dataclass(frozen=True)
class BadFile:
    """A file (or folder) an image folder leaves out, and why."""

    path: Path
    reason: str


_JUNK_FOLDERS = ("__MACOSX",)  # macOS zip metadata


def is_hidden(name: str) -> bool:
    """Whether a folder is tool clutter, not data: ``.ipynb_checkpoints``, ``__MACOSX``..."""
    return name.startswith(".") or name in _JUNK_FOLDERS


def _contains(folder: str, path: str) -> bool:
    """Whether the resolved ``path`` is the resolved ``folder`` or lies inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``, following a link; False when the file system will not say."""
    try:
        return entry.is_dir()
    except OSError:
        return False


class TreeWalk:
    """Every file below the class folders of one image folder, each real file and folder once,
    checked with :func:`image_problem`.

    Links are followed, to files and folders, also outside the image folder. Folders are told
    apart by their resolved path, so a folder is entered once and a link back to a folder that
    contains it (a cycle) is never followed. Whatever lies inside the image folder, or physically
    inside a class folder, counts at its own place with that class, never through a link. A file
    outside reached by several links counts once, for the first link in walk order (classes
    sorted, then files before subfolders, each sorted by name). Every link not followed and every
    file not counted is a :class:`BadFile` with the reason.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.bad: list[BadFile] = []
        self.samples: list[tuple[str, int]] = []  # (path as walked, label) of usable images
        self._class_of: dict[str, str] = {}  # resolved class folder -> its class name
        self._own_place: dict[str, Path] = {}  # resolved file or folder -> its path (no link)
        self._entered: dict[str, Path] = {}  # resolved folder -> the path it was scanned as
        self._counted: dict[str, Path] = {}  # resolved file -> the path it was counted as

    def keep_classes(self, names: list[str]) -> list[str]:
        """The class folders among ``names``: a link to the image folder or above is a cycle,
        not a class; a second name for a class folder is a class of its own, left empty."""
        kept = []
        for name in names:
            path, real = self.root / name, os.path.realpath(self.root / name)
            if _contains(real, self.real_root):
                self.bad.append(BadFile(path, f"link to {self._shown(real)}, which contains it: "
                                              "a cycle (not a class, not followed)"))
                continue
            kept.append(name)
            if real in self._class_of:
                self.bad.append(BadFile(path, f"link to the folder of class {self._class_of[real]!r} "
                                              "(scanned once, for that class)"))
            else:
                self._class_of[real] = name
        self._map_own_places()
        return kept

    def _map_own_places(self) -> None:
        """Record every file and folder physically inside a class folder (no link followed)."""
        for real_class, name in self._class_of.items():
            pending = [(real_class, self.root / name)]
            while pending:
                real, path = pending.pop()
                self._own_place[real] = path
                try:
                    entries = list(os.scandir(real))
                except OSError:
                    continue
                for entry in entries:
                    if entry.is_symlink():
                        continue
                    inner = os.path.join(real, entry.name)
                    if not entry.is_dir(follow_symlinks=False):
                        self._own_place[inner] = path / entry.name
                    elif not is_hidden(entry.name) and inner not in self._class_of:
                        pending.append((inner, path / entry.name))

    def walk_class(self, name: str, label: int) -> None:
        """Check the files of one class folder (nothing for a second name of another's)."""
        path, real = self.root / name, os.path.realpath(self.root / name)
        if self._class_of.get(real) == name:
            self._entered[real] = path
            self._walk(path, real, label, (self.real_root, real))

    def _walk(self, folder: Path, real: str, label: int, stack: tuple[str, ...]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            self.bad.append(BadFile(folder, f"folder cannot be read ({err.strerror or err})"))
            return
        folders = [e for e in entries if is_dir(e)]
        self.bad += [BadFile(Path(e.path), "hidden folder (skipped with everything in it)")
                     for e in folders if is_hidden(e.name)]
        for entry in entries:
            if not is_dir(entry):
                self._file(Path(entry.path), real, label, entry.is_symlink())
        for entry in folders:
            if not is_hidden(entry.name):
                self._folder(Path(entry.path), real, label, stack, entry.is_symlink())

    def _file(self, path: Path, real_folder: str, label: int, is_link: bool) -> None:
        if not is_link:
            real = os.path.join(real_folder, path.name)
        else:
            try:
                real = os.path.realpath(path, strict=True)
            except OSError:  # dangling, or links pointing at each other
                self.bad.append(BadFile(path, "broken link (what it points to does not exist)"))
                return
        if not self._first_time(path, real, is_link, self._counted, "file",
                                "it counts where it is, not twice", " (one file is one sample)"):
            return
        problem = image_problem(path)
        if problem is None:
            self.samples.append((str(path), label))
        else:
            self.bad.append(BadFile(path, problem))

    def _folder(self, path: Path, real_folder: str, label: int, stack: tuple[str, ...],
                is_link: bool) -> None:
        if not is_link:
            real = os.path.join(real_folder, path.name)
            other = self._class_of.get(real)
            if other is not None:
                self.bad.append(BadFile(path, f"also the folder of class {other!r} (through a link); "
                                              "scanned once, for that class"))
                return
        else:
            real = os.path.realpath(path)
            if any(_contains(real, folder) for folder in stack):
                self.bad.append(BadFile(path, f"link to {self._shown(real)}, which contains it: "
                                              "a cycle (not followed)"))
                return
        if self._first_time(path, real, is_link, self._entered, "folder",
                            "it is scanned where it is (not followed)", ", already scanned (not followed)"):
            self._walk(path, real, label, (*stack, real))

    def _first_time(self, path: Path, real: str, is_link: bool, seen: dict[str, Path], kind: str,
                    where_it_counts: str, already: str) -> bool:
        """Whether ``path`` (a ``kind``, "file" or "folder", resolved to ``real``) is the first way
        to it: then it is recorded in ``seen`` (real -> path) and True comes back. False, with the
        reason in ``bad``, for a link to something of this image folder (``where_it_counts`` says
        where it counts instead) or for a second way to what ``seen`` holds (``already`` follows).
        """
        if is_link and (real in self._own_place or _contains(self.real_root, real)):
            self.bad.append(BadFile(path, f"link to {self._shown(real)}, a {kind} of this image folder: "
                                          f"{where_it_counts}"))
            return False
        first = seen.get(real)
        if first is not None:
            self.bad.append(BadFile(path, f"same {kind} as {self._relative(first)}{already}"))
            return False
        seen[real] = path
        return True

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _shown(self, real: str) -> str:
        """A resolved path as the user knows it: below the image folder if it is in there."""
        if real in self._own_place:
            return self._relative(self._own_place[real])
        if real == self.real_root:
            return f"the image folder {self.root}"
        if _contains(self.real_root, real):
            return Path(os.path.relpath(real, self.real_root)).as_posix()
        return real
