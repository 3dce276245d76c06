"""Finding a course dataset on disk, or getting it: ``data/``, then the mirror, then the internet.

:func:`locate` finds a dataset by name in this order:

1. the project's ``data/`` folder (:func:`tlcourse.paths.data_dir`): an extracted folder, or the
   archive / ``.npz`` file, which is verified and extracted in place;
2. a mirror folder named by ``$TLCOURSE_MIRROR`` (a classroom share, an instructor's USB stick,
   ``../shared/datasets`` in CI): its file is verified by sha256, then extracted into ``data/``;
3. the dataset's canonical source on the internet, downloaded into ``data/``.

When all three fail, :class:`DatasetNotFoundError` says how to get out of it, in one message.
:func:`status` reports where each dataset is without reading it; :func:`stage` copies the
verified files into a folder (``data/`` or a classroom mirror).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torchvision.datasets.folder import IMG_EXTENSIONS

from tlcourse._io import atomic_copy
from tlcourse.data.archives import rename_into_place, safe_extract
from tlcourse.data.checksums import file_digest, sha256sum
from tlcourse.data.download import download_url
from tlcourse.data.registry import (
    DATASETS,
    ChecksumError,
    DatasetLayoutError,
    DatasetNotFoundError,
    DatasetSpec,
    DownloadError,
    dataset_spec,
)
from tlcourse.paths import MIRROR_ENV, data_dir, mirror_dir

__all__ = ["count_images", "locate", "stage", "status"]


def _verify_dataset_file(spec: DatasetSpec, path: Path) -> None:
    """Accept a file holding ``spec`` if it matches the mirror's sha256 or the source's checksum.

    A GitHub archive has no checksum to match; its images are counted after extraction.
    """
    if spec.source == "github" and path.name == spec.source_filename:
        return
    actual = sha256sum(path)
    if actual == spec.sha256 or (spec.url_sha256 is not None and actual == spec.url_sha256):
        return
    if spec.url_md5 is not None and file_digest(path, "md5") == spec.url_md5:
        return
    expected = " or ".join(
        f"{kind} {value}"
        for kind, value in (
            ("sha256", spec.sha256), ("sha256", spec.url_sha256), ("md5", spec.url_md5)
        )
        if value
    )
    raise ChecksumError(
        f"{path} is corrupt or a different file: its sha256 is {actual}, expected {expected}"
    )


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def count_images(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Number of image files (by extension, case-insensitive) in each class subfolder."""
    folder = Path(folder)
    return {
        sub.name: sum(1 for f in sub.iterdir() if _is_image_file(f))
        for sub in sorted(folder.iterdir())
        if sub.is_dir()
    }


def _check_class_counts(spec: DatasetSpec, root: Path) -> None:
    """Raise :class:`DatasetLayoutError` unless ``root`` holds exactly the expected images."""
    for split, expected in spec.class_counts.items():
        folder = root / split if split else root
        found = count_images(folder) if folder.is_dir() else {}
        if found != dict(expected):
            raise DatasetLayoutError(
                f"{spec.name}: expected {dict(expected)} images in {folder}, found {found}"
            )


def _find_verified_file(spec: DatasetSpec, folder: Path, problems: list[str]) -> Path | None:
    """The first accepted file for ``spec`` in ``folder`` that passes its checksum.

    A file that fails is reported (warning + ``problems``), never used.
    """
    for filename in spec.accepted_filenames:
        candidate = folder / filename
        if not candidate.is_file():
            continue
        try:
            _verify_dataset_file(spec, candidate)
        except ChecksumError as err:
            problem = f"{err}. {_damaged_remedy(folder)}"
            warnings.warn(f"Skipping {problem}", stacklevel=3)
            problems.append(problem)
            continue
        return candidate
    return None


def _damaged_remedy(folder: Path) -> str:
    """What to do about a corrupt dataset file in ``folder`` (the mirror, or ``data/``)."""
    mirror = mirror_dir()
    if mirror is not None and folder.resolve() == mirror.resolve():
        return (f"The mirror's copy is damaged: stage the mirror again (`python -m tlcourse stage "
                f"--to {mirror}` on a machine with a good copy), or unset {MIRROR_ENV}")
    return "Delete it; it is fetched again from the mirror or the internet"


def _install_github_archive(spec: DatasetSpec, archive: Path, root: Path) -> Path:
    """Rearrange a GitHub repository archive into the mirror's layout ``root/<folder>/...``.

    The archive has no stable checksum (GitHub regenerates it), so the per-class image counts
    are the check that we got the right data.
    """
    assert spec.folder is not None
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=root) as staging:
        repository = safe_extract(archive, Path(staging) / "repository")
        assembled = Path(staging) / spec.folder
        assembled.mkdir()
        for ours, theirs in spec.source_layout.items():
            source = repository / theirs
            if not source.is_dir():
                raise DatasetLayoutError(
                    f"{spec.name}: the archive from {spec.url} has no folder {theirs!r}; "
                    f"the repository may have changed"
                )
            os.rename(source, assembled / ours)
        _check_class_counts(spec, assembled)
        final = root / spec.folder
        rename_into_place(assembled, final)
    return final


def _install(spec: DatasetSpec, file: Path, root: Path) -> Path:
    """Turn a verified dataset file into the usable path (extracting archives into ``root``)."""
    if spec.kind == "npz":
        return file  # MedMNIST files are read in place, wherever they are.
    try:
        if spec.source == "github" and file.name == spec.source_filename:
            return _install_github_archive(spec, file, root)
        extracted = safe_extract(file, root)
    except FileExistsError:
        # Another process (a second notebook kernel) finished the same extraction first.
        for folder in spec.folder_names:
            if (root / folder).is_dir():
                return root / folder
        raise
    if extracted.name == spec.folder:
        try:
            _check_class_counts(spec, extracted)
        except DatasetLayoutError:
            shutil.rmtree(extracted)
            raise
    return extracted


def _find_in_data_dir(spec: DatasetSpec, root: Path, problems: list[str]) -> Path | None:
    """An already extracted folder, or a verified file that gets extracted in place."""
    for folder in spec.folder_names:
        if (root / folder).is_dir():
            return root / folder
    if not root.is_dir():
        return None
    file = _find_verified_file(spec, root, problems)
    return _install(spec, file, root) if file is not None else None


def _not_found_message(spec: DatasetSpec, root: Path, problems: Sequence[str]) -> str:
    """The one message that lists the three ways to get a dataset, plus what went wrong."""
    reasons = "\n".join(f"  - {problem}" for problem in problems) or "  - (no details)"
    return (
        f"Dataset {spec.name!r} was not found in {root}, nor in a mirror, and could not be "
        f"downloaded.\nWhy:\n{reasons}\n"
        f"Three ways out:\n"
        f"  1. Put {spec.filename} (sha256 {spec.sha256}) into {root}\n"
        f"  2. Set {MIRROR_ENV} to a folder that contains {spec.filename} (e.g. a classroom "
        f"copy; `python -m tlcourse stage --to PATH` makes one)\n"
        f"  3. Connect to the internet, and it downloads from {spec.url}"
    )


def locate(
    name: str, *, download: bool = True, timeout: float = 10.0, progress: bool = True
) -> Path:
    """Find (and if needed extract or download) a dataset, and return its usable path.

    Looks in ``data/``, then the mirror, then downloads from the canonical source (see the
    module docstring). Returns the extracted folder for image datasets (``data/brain-mri``,
    ``data/cifar10-jpg`` or ``data/cifar-10-batches-py``) and the ``.npz`` file for MedMNIST.
    Raises :class:`DatasetNotFoundError` when all three fail.
    """
    spec = dataset_spec(name)
    root = data_dir()
    problems: list[str] = []

    found = _find_in_data_dir(spec, root, problems)
    if found is not None:
        return found

    mirror = mirror_dir()
    if mirror is not None:
        mirror_file = _find_verified_file(spec, mirror, problems)
        if mirror_file is not None:
            root.mkdir(parents=True, exist_ok=True)
            return _install(spec, mirror_file, root)
        if not (mirror / spec.filename).exists():
            problems.append(f"{MIRROR_ENV}={mirror} has no {spec.filename}")
    else:
        problems.append(f"{MIRROR_ENV} is not set")

    if not download:
        problems.append("downloading is turned off (download=False)")
    else:
        try:
            root.mkdir(parents=True, exist_ok=True)
            archive = download_url(
                spec.url, root / spec.source_filename, sha256=spec.url_sha256,
                md5=spec.url_md5, timeout=timeout, progress=progress,
            )
            installed = _install(spec, archive, root)
            if spec.source == "github":
                archive.unlink()  # the repository archive also holds unrelated files
            return installed
        except DownloadError as err:
            problems.append(f"download from {spec.url} failed: {err.reason}")
        except DatasetLayoutError as err:
            problems.append(f"the download does not have the expected images: {err}")
    raise DatasetNotFoundError(_not_found_message(spec, root, problems))


def status() -> list[dict[str, Any]]:
    """Where each dataset is: ``found`` is "data", "mirror" or None, with its ``path`` and ``url``.

    Only checks that files exist (cheap); :func:`locate` verifies checksums when it uses them.
    """
    root, mirror = data_dir(), mirror_dir()
    rows = []
    for spec in DATASETS.values():
        found: str | None = None
        path: Path | None = None
        in_data = [root / f for f in spec.folder_names] + [root / f for f in spec.accepted_filenames]
        in_mirror = [mirror / f for f in spec.accepted_filenames] if mirror is not None else []
        for where, candidates in (("data", in_data), ("mirror", in_mirror)):
            existing = [c for c in candidates if c.exists()]
            if existing:
                found, path = where, existing[0]
                break
        rows.append({"name": spec.name, "found": found, "path": path, "url": spec.url})
    return rows


def _stage_one(
    spec: DatasetSpec, dest: Path, *, download: bool, timeout: float, progress: bool
) -> Path:
    problems: list[str] = []
    present = _find_verified_file(spec, dest, problems)
    if present is not None:
        return present
    for folder in (data_dir(), mirror_dir()):
        if folder is None or not folder.is_dir() or folder.resolve() == dest.resolve():
            continue
        source = _find_verified_file(spec, folder, problems)
        if source is not None:
            return atomic_copy(source, dest / source.name)
    if mirror_dir() is None:
        problems.append(f"{MIRROR_ENV} is not set")
    if download:
        try:
            return download_url(
                spec.url, dest / spec.source_filename, sha256=spec.url_sha256,
                md5=spec.url_md5, timeout=timeout, progress=progress,
            )
        except DownloadError as err:
            problems.append(f"download from {spec.url} failed: {err.reason}")
    else:
        problems.append("downloading is turned off (download=False)")
    raise DatasetNotFoundError(_not_found_message(spec, data_dir(), problems))


def stage(
    names: Iterable[str] | None,
    dest: str | os.PathLike[str],
    *,
    download: bool = True,
    timeout: float = 10.0,
    progress: bool = True,
) -> list[Path]:
    """Copy each dataset's verified file into ``dest`` and return the staged files.

    ``dest`` is the project's ``data/`` or a folder to hand out as a classroom mirror. The file
    comes from ``data/`` or the mirror (checked by checksum), else from the canonical source.
    Files already in ``dest`` with the right checksum are kept as they are. ``names`` of None
    (or empty) means every dataset.
    """
    specs = [dataset_spec(name) for name in (names or DATASETS)]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [
        _stage_one(spec, dest, download=download, timeout=timeout, progress=progress)
        for spec in specs
    ]
