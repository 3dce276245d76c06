"""Image folders laid out as ``root/<class>/<image>``, checked file by file before training.

:func:`scan_image_folder` opens every file below the class folders and reports each one it leaves
out (:class:`BadFile`, listed once in a :class:`SkippedFilesWarning`); :class:`CheckedImageFolder`
is a torchvision ``ImageFolder`` built on that scan, loading every image as upright RGB.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision.datasets import ImageFolder

from tlcourse.data.images import Transform, load_rgb
from tlcourse.data.walk import BadFile, TreeWalk, is_dir, is_hidden

__all__ = [
    "BadFile",
    "CheckedImageFolder",
    "EmptyClassWarning",
    "FolderScan",
    "ImageFolderError",
    "SkippedFilesWarning",
    "scan_image_folder",
]


class ImageFolderError(ValueError):
    """An image folder cannot be used for classification as it is; the message says why and how."""


class SkippedFilesWarning(UserWarning):
    """Some files of an image folder are not usable images and were left out (each is listed)."""


class EmptyClassWarning(UserWarning):
    """A class folder has no usable image; it keeps its label, but nothing can be learned for it."""


@dataclass
class FolderScan:
    """What :func:`scan_image_folder` found: the usable images and the files it left out.

    Attributes:
        root: the scanned folder.
        classes: the class folder names, sorted (a class's label is its index here).
        samples: ``(path, label)`` of every usable image, as ``ImageFolder.samples``.
        bad: every file or folder left out, with its reason.
        empty_classes: class folders without a single usable image.
    """

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    bad: list[BadFile]
    empty_classes: list[str]

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.classes)}

    def counts(self) -> dict[str, int]:
        """Usable images per class."""
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.samples:
            counts[self.classes[label]] += 1
        return counts

    def bad_summary(self, limit: int = 50) -> str:
        """The skipped files grouped by reason, each named by its path below ``root``."""
        by_reason: dict[str, list[str]] = defaultdict(list)
        for bad in self.bad:
            try:
                shown = bad.path.relative_to(self.root).as_posix()
            except ValueError:
                shown = str(bad.path)
            by_reason[bad.reason].append(shown)
        lines = []
        for reason, paths in by_reason.items():
            more = f" ... and {len(paths) - limit} more (all in .skipped)" if len(paths) > limit else ""
            lines.append(f"  - {reason}: {', '.join(paths[:limit])}{more}")
        return "\n".join(lines)

    def warn(self, stacklevel: int = 2) -> None:
        """Show the skipped files and empty classes as warnings (a notebook displays them)."""
        if self.bad:
            n_files = len(self.samples) + len(self.bad)
            warnings.warn(
                f"{self.root}: skipped {len(self.bad)} of {n_files} entries that are not usable "
                f"images (the dataset leaves them out; fix or delete them to silence this):\n"
                + self.bad_summary(),
                SkippedFilesWarning,
                stacklevel=stacklevel + 1,
            )
        for name in self.empty_classes:
            warnings.warn(
                f"{self.root}: class folder {name!r} has no usable image. It keeps label "
                f"{self.classes.index(name)} so that labels match your other splits, but the model "
                f"will never see an example of it: add images to {self.root / name} or delete "
                "the folder.",
                EmptyClassWarning,
                stacklevel=stacklevel + 1,
            )


def _layout_help(root: Path) -> str:
    return (
        f"An image folder needs one subfolder per class, named after the class:\n"
        f"    {root}/\n"
        f"        cat/    0001.jpg  0002.jpg ...\n"
        f"        dog/    0001.jpg  0002.jpg ...\n"
        "The folder names become the labels (sorted: cat = 0, dog = 1)."
    )


def scan_image_folder(root: str | os.PathLike[str]) -> FolderScan:
    """Check every file of a ``root/<class>/<image>`` folder and say which are usable images.

    Every file below a class folder is opened and decoded (whatever its extension: PNGs named
    ``.jpg`` are fine). Left out, each with a reason in ``.bad``: empty files, files that are
    not images (``.txt``, ``.DS_Store``, ``Thumbs.db``), corrupt or truncated images, images
    above ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression bombs), files next to the class folders,
    and hidden folders (``.ipynb_checkpoints``, ``__MACOSX``) with everything in them. GIFs are
    usable; their first frame is the image.

    Links to files and folders are followed, also to places outside ``root``, but one real
    folder is scanned once and one real file is one sample, so the same image never lands in
    both a train and a test split. Left out and reported: a link to a folder that contains it
    (a cycle, reported once), a link to a file or folder inside ``root`` (it counts at its own
    place, with the class it sits in), a second link to the same outside file or folder (the
    first one in sorted walk order keeps it), and a broken link. A class folder that is a link
    to another class folder keeps its label but stays empty.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ImageFolderError: images but no class folders, or fewer than two classes with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder. {_layout_help(root)}")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    bad: list[BadFile] = [
        BadFile(Path(e.path), "hidden folder, not a class (skipped with everything in it)")
        for e in entries if is_dir(e) and is_hidden(e.name)
    ]
    loose = [Path(e.path) for e in entries if not is_dir(e)]
    walk = TreeWalk(root)
    classes = walk.keep_classes([e.name for e in entries if is_dir(e) and not is_hidden(e.name)])
    if not classes:
        found = f"{len(loose)} file(s) directly in it" if loose else "nothing in it"
        raise ImageFolderError(f"{root} has no class folders ({found}). {_layout_help(root)}")
    bad += [BadFile(path, "not inside a class folder (ignored)") for path in loose]

    for label, name in enumerate(classes):
        walk.walk_class(name, label)
    bad += walk.bad
    samples = walk.samples

    scan = FolderScan(root=root, classes=classes, samples=samples, bad=bad, empty_classes=[])
    counts = scan.counts()
    scan.empty_classes = [name for name, n in counts.items() if n == 0]
    with_images = [name for name, n in counts.items() if n > 0]
    if len(with_images) < 2:
        if len(classes) == 1:
            what = f"only one class folder, {classes[0]!r}"
        else:
            shown = ", ".join(f"{name!r}: {n}" for name, n in counts.items())
            what = f"usable images in fewer than two classes ({shown})"
        skipped = f"\nLeft out:\n{scan.bad_summary()}" if bad else ""
        raise ImageFolderError(
            f"{root} has {what}. Classification needs at least 2 classes, each a folder with "
            f"images. {_layout_help(root)}{skipped}"
        )
    return scan


class CheckedImageFolder(ImageFolder):
    """An ``ImageFolder`` that checks its files first (:func:`scan_image_folder`) and loads
    every image as upright RGB (:func:`load_rgb`).

    Bad files are left out and listed once in a :class:`SkippedFilesWarning`; they stay
    available as ``.skipped``. A class folder without usable images keeps its label (so that
    the labels of a train and a validation folder agree) and is named in an
    :class:`EmptyClassWarning`. ``.classes``, ``.class_to_idx``, ``.samples``, ``.targets``
    work as in torchvision.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        target_transform: Callable[[int], Any] | None = None,
        *,
        warn: bool = True,
    ) -> None:
        self.scan = scan_image_folder(root)
        if warn:
            self.scan.warn(stacklevel=3)
        super().__init__(str(root), transform=transform, target_transform=target_transform, loader=load_rgb)

    @property
    def skipped(self) -> list[BadFile]:
        """The files left out, with their reasons."""
        return list(self.scan.bad)

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        return list(self.scan.classes), self.scan.class_to_idx

    def make_dataset(self, directory: Any, class_to_idx: Any, extensions: Any = None,
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        return list(self.scan.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, _ = self.samples[index]
        try:
            return super().__getitem__(index)
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            raise OSError(
                f"Could not read {path} ({type(err).__name__}: {err}). It was a good image when the "
                "folder was scanned, so it changed since: create the dataset again to skip it."
            ) from err

