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
pool leave it before validation is carved. A folder that ``fit`` wrote (it carries
:data:`FIT_MARKER`) is never data: an ``--out`` inside FOLDER is skipped, and FOLDER itself
being one is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tlcourse.data import BadFile, ImageFolderError, find_duplicates, scan_image_folder
from tlcourse.evaluation import three_way_split
from tlcourse.features import dataset_fingerprint

__all__ = ["FIT_MARKER", "MIN_PER_CLASS_FLAT", "MIN_PER_CLASS_TRAIN", "TEST_FRACTION", "FolderRefused", "UserData",
           "check_folder", "is_fit_output", "read_folder"]

#: Images a class needs in a folder without a split: two to train on, one each for validation and test, and one spare.
MIN_PER_CLASS_FLAT = 5
#: Images a class needs in a given ``train/`` folder, from which validation is carved.
MIN_PER_CLASS_TRAIN = 3
#: The file ``fit`` writes into its output folder, so that a scan never reads that folder as a class.
FIT_MARKER = ".tlcourse-fit-output"
#: The share of a folder without a split that is carved for testing.
TEST_FRACTION = 0.2
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
    fit_outputs: list[str] = field(default_factory=list)  # folders fit wrote inside root, left out

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


def is_fit_output(folder: Path) -> bool:
    """True for a folder that ``fit`` wrote its report, model and caches into."""
    return (folder / FIT_MARKER).is_file()


class _FitOutputs:
    """Which paths below ``root`` lie in a folder that ``fit`` wrote (each folder checked once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.known: dict[Path, bool] = {}
        self.found: set[Path] = set()

    def holds(self, path: Path) -> bool:
        for folder in [path, *path.parents]:
            if folder == self.root or self.root not in folder.parents:
                return False
            if folder not in self.known:
                self.known[folder] = is_fit_output(folder)
            if self.known[folder]:
                self.found.add(folder)
                return True
        return False


def check_folder(root: Path) -> Path:
    """``root``, or a refusal when it does not exist, is a file, or is (inside) an output folder of ``fit``."""
    if not root.exists():
        raise FolderRefused(f"There is no folder {root}: check the spelling (a relative path starts from "
                            f"{Path.cwd()}).")
    if not root.is_dir():
        raise FolderRefused(f"{root} is a file: FOLDER must be the folder that holds one subfolder of images "
                            "per class (FOLDER/<class>/<image>).")
    written = next((f for f in [root, *root.parents] if is_fit_output(f)), None)
    if written is not None:
        raise FolderRefused(f"{written} is an output folder of fit (a report, a model and caches), not a folder of "
                            "images: pass the folder your images are in, FOLDER/<class>/<image>.")
    return root


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


def _scan(folder: Path, outputs: _FitOutputs) -> tuple[list[str], list[tuple[str, int]], list[BadFile]]:
    """Class names, usable samples and skipped files of one ``<class>/<image>`` folder.

    Folders that ``fit`` wrote (an ``--out`` inside FOLDER) are left out: as a class, with the
    files in them, and with the other classes' labels renumbered.
    """
    try:
        scan = scan_image_folder(folder)
    except ImageFolderError as err:
        raise FolderRefused(f"Nothing to learn from: {err}") from None
    classes = [c for c in scan.classes if not outputs.holds(folder / c)]
    label = {scan.classes.index(c): k for k, c in enumerate(classes)}
    samples = [(p, label[y]) for p, y in scan.samples if y in label and not outputs.holds(Path(p))]
    bad = [b for b in scan.bad if not outputs.holds(b.path)]
    if len(samples) < len(scan.samples) and len({y for _, y in samples}) < 2:
        raise FolderRefused(f"Nothing to learn from: {folder} has usable images in fewer than two classes once "
                            f"fit's output folder is left out. Classification needs at least 2 classes, each a "
                            "folder with images.")
    return classes, samples, bad


def _too_small(counts: dict[str, int], minimum: int, where: Path, bad: list[BadFile]) -> None:
    small = {c: n for c, n in counts.items() if n < minimum}
    if small:
        shown = ", ".join(f"{c!r}: {n}" for c, n in small.items())
        raise FolderRefused(
            f"Too few images to split in {where} ({shown}): each class needs at least {minimum} usable images "
            f"(to train on, to choose on and to test on). Add images to these classes, or delete or merge them."
            + "".join(_unusable(c, where / c, bad) for c in small))


def _unusable(name: str, folder: Path, bad: list[BadFile]) -> str:
    """" 'notes' also holds 3 unusable file(s), e.g. a.txt: not an image." for a class folder, or ""."""
    inside = [b for b in bad if folder in b.path.parents]
    if not inside:
        return ""
    return f" {name!r} also holds {len(inside)} unusable file(s), e.g. {inside[0].path.name}: {inside[0].reason}."


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
                test_fraction: float = TEST_FRACTION) -> UserData:
    """Scan ``root`` (either layout), refuse what cannot be trained, drop duplicates, carve splits.

    Raises :class:`FolderRefused` (a ``ValueError``) with what to do, before any model is built.
    """
    root = Path(root).expanduser().resolve()
    check_folder(root)
    outputs = _FitOutputs(root)
    folders = _split_folders(root)
    bad: list[BadFile] = []
    if folders is None:
        classes, samples, bad = _scan(root, outputs)
        parts = ["pool"] * len(samples)
        layout = "flat"
    else:
        layout = "split"
        classes, samples, bad = _scan(folders["train"], outputs)
        parts = ["pool"] * len(samples)
        index = {c: k for k, c in enumerate(classes)}
        for part in ("val", "test"):
            if part not in folders:
                continue
            names, found, skipped = _scan(folders[part], outputs) if any(folders[part].iterdir()) else ([], [], [])
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
        _too_small(pool_counts, MIN_PER_CLASS_FLAT, root, bad)
    else:
        _too_small(pool_counts, MIN_PER_CLASS_TRAIN, folders["train"], bad)  # type: ignore[index]
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
                    duplicates=groups, dropped=dropped, fit_outputs=sorted(str(f) for f in outputs.found))
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
