"""Step 1 of ``fit``: read the learner's folder, refuse what cannot work, carve the splits.

Two layouts are understood:

- ``FOLDER/<class>/<image>``: no split given; train / validation / test are carved from it,
  stratified and seeded;
- ``FOLDER/train/<class>/...`` with ``val/`` or ``validation/`` and/or ``test/`` beside it.
  Without ``test/`` the given validation folder is the test set and a validation split is
  carved from ``train/``; without a validation folder it is carved from ``train/`` too.

Every file is checked by :func:`tlcourse.data.scan_image_folder` (bad files are skipped and
listed). Before any model runs, :func:`read_folder` refuses with :class:`FolderRefused` a folder
with fewer than two usable classes, a class with too few images to split, and classes in
``val/`` or ``test/`` that ``train/`` lacks. Byte-identical files are found here; a test image
that also sits in train or validation leaves the test set, and extra copies inside the training
pool leave it before validation is carved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tlcourse.data import BadFile, ImageFolderError, find_duplicates, scan_image_folder
from tlcourse.evaluation import three_way_split
from tlcourse.features import dataset_fingerprint

__all__ = ["MIN_PER_CLASS_FLAT", "MIN_PER_CLASS_TRAIN", "FolderRefused", "UserData", "read_folder"]

#: Images a class needs in a folder without a split: two to train on, one each for validation and test, and one spare.
MIN_PER_CLASS_FLAT = 5
#: Images a class needs in a given ``train/`` folder, from which validation is carved.
MIN_PER_CLASS_TRAIN = 3
VAL_NAMES = ("val", "validation")
SPLITS = ("train", "val", "test")


class FolderRefused(ValueError):
    """The folder cannot be used as it is; the message says why and what to do."""


@dataclass
class UserData:
    """The learner's images, checked and split: what every later step works on.

    ``samples`` lists ``(path, label)`` of every image used, and ``split[i]`` says where image
    ``i`` belongs ("train", "val" or "test"). ``dropped`` lists images left out, with a reason.
    """

    root: Path
    layout: str  # "flat" or "split"
    classes: list[str]
    samples: list[tuple[str, int]]
    split: list[str]
    bad: list[BadFile] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def indices(self, part: str) -> list[int]:
        """Positions in ``samples`` of the images of one split."""
        return [i for i, s in enumerate(self.split) if s == part]

    def labels(self, part: str) -> list[int]:
        """The labels of one split, in the order of :meth:`indices`."""
        return [self.samples[i][1] for i in self.indices(part)]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: images}}``."""
        return {part: {c: self.labels(part).count(k) for k, c in enumerate(self.classes)} for part in SPLITS}

    def fingerprint(self) -> str:
        """A hash of every used file's path, bytes (SHA-256) and label, and of the split.

        Adding, removing or changing one file changes it, so nothing computed from another
        version of the folder is ever reused.
        """
        return dataset_fingerprint(_Files(self.samples), content=True) + ":" + "".join(s[1] for s in self.split)


@dataclass
class _Files:
    """What :func:`tlcourse.features.dataset_fingerprint` reads from an image folder."""

    samples: list[tuple[str, int]]


def _split_folders(root: Path) -> dict[str, Path] | None:
    """``{"train": ..., "val": ..., "test": ...}`` of a split layout, or None for a flat one."""
    train = root / "train"
    vals = [root / n for n in VAL_NAMES if (root / n).is_dir()]
    test = root / "test"
    if not train.is_dir() or not (vals or test.is_dir()):
        return None
    if len(vals) > 1:
        raise FolderRefused(f"{root} has both val/ and validation/: keep one of them")
    found = {"train": train, "test": test} if test.is_dir() else {"train": train}
    if vals:
        found["val"] = vals[0]
    return found


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[BadFile]]:
    """Class names, usable samples and skipped files of one ``<class>/<image>`` folder."""
    try:
        scan = scan_image_folder(folder)
    except ImageFolderError as err:
        raise FolderRefused(f"Nothing to learn from: {err}") from None
    return scan.classes, scan.samples, scan.bad


def _too_small(counts: dict[str, int], minimum: int, where: str) -> None:
    small = {c: n for c, n in counts.items() if n < minimum}
    if small:
        shown = ", ".join(f"{c!r}: {n}" for c, n in small.items())
        raise FolderRefused(
            f"Too few images to split in {where} ({shown}): each class needs at least {minimum} usable images "
            f"(to train on, to choose on and to test on). Add images to these classes, or delete or merge them.")


def _dedupe(data_paths: list[str], parts: list[str]) -> tuple[set[int], list[list[str]], list[tuple[str, str]]]:
    """Which images to drop so that no file appears twice, test copies of training images first."""
    groups = [[str(p) for p in g] for g in find_duplicates(data_paths)]
    where = {p: i for i, p in enumerate(data_paths)}
    drop: set[int] = set()
    reasons: list[tuple[str, str]] = []
    for group in groups:
        members = [where[p] for p in group if p in where]
        in_pool = [i for i in members if parts[i] != "test"]
        keep = in_pool[0] if in_pool else members[0]  # a copy in the training pool wins over a test copy
        for i in members:
            if i != keep:
                drop.add(i)
                why = "test copy of a training image" if parts[i] == "test" and parts[keep] != "test" else "extra copy"
                reasons.append((data_paths[i], f"{why} (same bytes as {data_paths[keep]})"))
    return drop, groups, reasons


def read_folder(root: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.2,
                test_fraction: float = 0.2) -> UserData:
    """Scan ``root`` (either layout), refuse what cannot be trained, drop duplicates, carve splits.

    Raises :class:`FolderRefused` (a ``ValueError``) with what to do, before any model is built.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FolderRefused(f"{root} is not a folder")
    folders = _split_folders(root)
    bad: list[BadFile] = []
    if folders is None:
        classes, samples, bad = _scan(root)
        parts = ["pool"] * len(samples)
        layout = "flat"
    else:
        layout = "split"
        classes, samples, bad = _scan(folders["train"])
        parts = ["pool"] * len(samples)
        index = {c: k for k, c in enumerate(classes)}
        for part in ("val", "test"):
            if part not in folders:
                continue
            names, found, skipped = _scan(folders[part]) if any(folders[part].iterdir()) else ([], [], [])
            used = sorted({names[y] for _, y in found})
            missing = [c for c in used if c not in index]
            if missing:
                raise FolderRefused(
                    f"{folders[part]} has classes that {folders['train']} lacks: {', '.join(map(repr, missing))}. "
                    "A model cannot predict a class it never saw: add training images of these classes, "
                    "or move these folders out of the validation/test folder.")
            bad += skipped
            target = "test" if part == "test" or "test" not in folders else "given_val"
            samples += [(p, index[names[y]]) for p, y in found]
            parts += [target] * len(found)
    drop, groups, dropped = _dedupe([p for p, _ in samples], parts)
    keep = [i for i in range(len(samples)) if i not in drop]
    samples, parts = [samples[i] for i in keep], [parts[i] for i in keep]
    pool = [i for i, p in enumerate(parts) if p == "pool"]
    pool_counts = {c: 0 for c in classes}
    for i in pool:
        pool_counts[classes[samples[i][1]]] += 1
    has_test = any(p in ("test", "given_val") for p in parts)
    if layout == "flat":
        _too_small(pool_counts, MIN_PER_CLASS_FLAT, str(root))
    else:
        _too_small(pool_counts, MIN_PER_CLASS_TRAIN, str(folders["train"]))  # type: ignore[index]
    given = {"pool": "train", "given_val": "test", "test": "test"}
    if folders is not None and "val" in folders and "test" in folders:  # all three given: used as they are
        split = [{"pool": "train", "given_val": "val", "test": "test"}[p] for p in parts]
    else:
        carve = three_way_split([samples[i][1] for i in pool], val_fraction=val_fraction,
                                test_fraction=None if has_test else test_fraction, seed=seed)
        split = [given[p] for p in parts]
        for part, positions in (("val", carve.val), ("test", carve.test)):
            for j in positions:
                split[pool[j]] = part
    data = UserData(root=root, layout=layout, classes=classes, samples=samples, split=split, bad=bad,
                    duplicates=groups, dropped=dropped)
    data.notes.append(_describe_split(data, folders))
    return data


def _describe_split(data: UserData, folders: dict[str, Path] | None) -> str:
    """One sentence saying where train, validation and test came from, with their sizes."""
    n = {part: len(data.indices(part)) for part in SPLITS}
    sizes = f"train {n['train']}, validation {n['val']}, test {n['test']} images"
    if folders is None:
        return f"no split given: carved {sizes} (stratified, seeded)"
    if "test" in folders and "val" in folders:
        return f"split as given: {sizes}"
    if "test" in folders:
        return f"test/ is the test set; validation carved from train/: {sizes}"
    return f"{folders['val'].name}/ is the test set (no test/ given); validation carved from train/: {sizes}"
