"""Datasets for the course: a registry, lookup with checksums, safe extraction, subsets and splits.

Every notebook asks for a dataset by name, and :func:`locate` finds it in this order:

1. the project's ``data/`` folder (:func:`tlcourse.paths.data_dir`): an extracted folder, or the
   archive / ``.npz`` file, which is verified and extracted in place;
2. a mirror folder named by ``$TLCOURSE_MIRROR`` (a classroom share, an instructor's USB stick,
   ``../shared/datasets`` in CI): its file is verified by sha256, then extracted into ``data/``;
3. the dataset's canonical source on the internet, downloaded into ``data/``.

When all three fail, :class:`DatasetNotFoundError` says how to get out of it, in one message.

The dataset constructors (:func:`cifar10`, :func:`image_folder`, :func:`medmnist`) return plain
torch datasets with ``.classes`` and ``.targets``, so the notebooks can subsample them with
:func:`stratified_subset` or split them with :func:`stratified_split`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from tlcourse.paths import MIRROR_ENV, data_dir, mirror_dir

__all__ = [
    "DATASETS",
    "BadFile",
    "CheckedImageFolder",
    "ChecksumError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "EmptyClassWarning",
    "FolderScan",
    "ImageFolderError",
    "NpzImageDataset",
    "UnsafeArchiveError",
    "cifar10",
    "count_images",
    "download_url",
    "find_duplicates",
    "get_spec",
    "image_folder",
    "image_problem",
    "load_image_folder",
    "load_rgb",
    "locate",
    "medmnist",
    "SkippedFilesWarning",
    "safe_extract",
    "scan_image_folder",
    "sha256sum",
    "stage",
    "status",
    "stratified_split",
    "stratified_subset",
    "loader_throughput",
    "targets_of",
    "to_rgb",
    "verify_file",
]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DatasetNotFoundError(RuntimeError):
    """No usable copy of a dataset in ``data/``, in the mirror, or on the internet."""


class DownloadError(RuntimeError):
    """A download failed; nothing was left behind. ``reason`` is the cause in one line."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"Download of {url} failed: {reason}. If this machine is offline, set {MIRROR_ENV} "
            f"to a folder that has the dataset files (`python -m tlcourse stage` makes one)."
        )


class ChecksumError(RuntimeError):
    """A file's sha256/md5 differs from the expected one (a truncated or corrupt copy)."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class DatasetLayoutError(RuntimeError):
    """Extracted images are missing or their per-class counts differ from the expected ones."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What the course knows about one dataset: its files, checksums, sources and contents.

    ``filename``/``sha256`` describe the mirror's copy. ``source_filename`` is the name the
    canonical download is saved under; it is checked with ``url_md5``/``url_sha256`` when the
    source pins one. GitHub repository archives (``source="github"``) have no stable checksum,
    so their extracted content is checked against ``class_counts`` instead.
    """

    name: str
    kind: Literal["imagefolder", "npz"]
    filename: str
    sha256: str
    classes: tuple[str, ...]
    # split -> class -> number of images; the split "" means "no split folder" (brain-mri).
    # For the .npz datasets these are the counts of the mirror's copy (documentation only:
    # the file itself is checked by its checksum).
    class_counts: Mapping[str, Mapping[str, int]]
    description: str
    license: str
    url: str
    source_filename: str
    url_md5: str | None = None
    url_sha256: str | None = None
    source: Literal["file", "github"] = "file"
    folder: str | None = None  # top-level folder inside the mirror zip = extracted folder name
    source_folder: str | None = None  # folder the canonical archive extracts to, if different
    # github sources: our subfolder -> its path below the repository archive's top folder
    source_layout: Mapping[str, str] = field(default_factory=dict)
    alt_filenames: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        """The split folders of an image dataset (empty for a dataset without a split)."""
        return tuple(split for split in self.class_counts if split)

    @property
    def accepted_filenames(self) -> tuple[str, ...]:
        """Every file name that holds this dataset: the mirror's, the canonical one, aliases."""
        names = (self.filename, self.source_filename, *self.alt_filenames)
        return tuple(dict.fromkeys(names))

    @property
    def folder_names(self) -> tuple[str, ...]:
        """Extracted folders that count as this dataset being present in ``data/``."""
        return tuple(dict.fromkeys(f for f in (self.folder, self.source_folder) if f))


def _same_counts(classes: Sequence[str], n: int) -> dict[str, int]:
    return {c: n for c in classes}


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            name="cifar10",
            kind="imagefolder",
            filename="cifar10-jpg.zip",
            sha256="ca5f7ef0a5aa229efb0aa75c1fd22219a87f61b16a7b954c45cbed42948c42b4",
            folder="cifar10-jpg",
            classes=CIFAR10_CLASSES,
            class_counts={
                "train": _same_counts(CIFAR10_CLASSES, 5000),
                "test": _same_counts(CIFAR10_CLASSES, 1000),
            },
            # torchvision's own source and checksum; it extracts to cifar-10-batches-py, which
            # torchvision.datasets.CIFAR10(root=data_dir()) reads.
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            url_md5="c58f30108f718f92721af3b95e74349a",
            source_filename="cifar-10-python.tar.gz",
            source_folder="cifar-10-batches-py",
            description="60,000 32x32 colour photos in 10 classes (the mirror is a JPEG re-encoding)",
            license="CIFAR-10 terms (free for research and teaching; cite Krizhevsky 2009)",
        ),
        DatasetSpec(
            name="alien-vs-predator",
            kind="imagefolder",
            filename="alien-vs-predator.zip",
            sha256="2fe87d99767af4812e825cda58ac4b492b3048d8ca17b9cc2dafef091c26b027",
            folder="alien-vs-predator",
            classes=("alien", "predator"),
            class_counts={
                "train": {"alien": 347, "predator": 347},
                "validation": {"alien": 100, "predator": 100},
            },
            url="https://github.com/deepsense-ai/Keras-PyTorch-AvP-transfer-learning"
            "/archive/refs/heads/master.zip",
            source="github",
            source_filename="Keras-PyTorch-AvP-transfer-learning-master.zip",
            source_layout={"train": "data/train", "validation": "data/validation"},
            description="894 photos of aliens and predators from films and fan art",
            license="as published by deepsense.ai (public GitHub repo); for teaching use",
        ),
        DatasetSpec(
            name="brain-mri",
            kind="imagefolder",
            filename="brain-mri.zip",
            sha256="4c843281264ab267e0f4cbf1ae17c263756dd3ebe3003fb4fb3d3cf3d51dc7c3",
            folder="brain-mri",
            # ImageFolder sorts class folders, so "no" is 0 and "yes" (tumour) is 1.
            classes=("no", "yes"),
            class_counts={"": {"no": 98, "yes": 155}},
            url="https://github.com/MohamedAliHabib/Brain-Tumor-Detection"
            "/archive/refs/heads/master.zip",
            source="github",
            source_filename="Brain-Tumor-Detection-master.zip",
            source_layout={"yes": "yes", "no": "no"},
            description="253 brain MRI slices, tumour yes/no; mixed sizes, modes and extensions",
            license="as published on Kaggle (navoneel) and GitHub; for teaching use",
        ),
        DatasetSpec(
            name="breastmnist",
            kind="npz",
            filename="breastmnist.npz",
            sha256="5e68d79723fb3a63a399b0a66b66451799fc2eb3651f469cec0b679cfd743b68",
            classes=("malignant", "normal/benign"),
            class_counts={
                "train": {"malignant": 147, "normal/benign": 399},
                "val": {"malignant": 21, "normal/benign": 57},
                "test": {"malignant": 42, "normal/benign": 114},
            },
            url="https://zenodo.org/records/10519652/files/breastmnist.npz?download=1",
            url_md5="750601b1f35ba3300ea97c75c52ff8f6",
            source_filename="breastmnist.npz",
            description="780 breast ultrasound images, 28x28 grey (MedMNIST v2)",
            license="CC BY 4.0",
        ),
        DatasetSpec(
            name="pneumoniamnist",
            kind="npz",
            filename="pneumoniamnist-balanced.npz",
            sha256="f36c2b3e34de9d60c5c734118bc6daff281eaf76b67a57d26ad958da948274b0",
            classes=("normal", "pneumonia"),
            # The mirror's balanced copy; the canonical file has 4708/524/624 images, unbalanced.
            class_counts={
                "train": {"normal": 1214, "pneumonia": 1214},
                "val": {"normal": 135, "pneumonia": 135},
                "test": {"normal": 234, "pneumonia": 234},
            },
            url="https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1",
            url_md5="28209eda62fecd6e6a2d98b1501bb15f",
            source_filename="pneumoniamnist.npz",
            alt_filenames=("pneumoniamnist.npz",),
            description="chest X-rays, 28x28 grey, normal vs pneumonia (MedMNIST v2)",
            license="CC BY 4.0",
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a ValueError lists the known names for a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {known}.") from None


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------

_CHUNK = 1 << 20


def _hexdigest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256sum(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file as lowercase hex, read in chunks so large archives fit in memory."""
    return _hexdigest(Path(path), "sha256")


def verify_file(
    path: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None
) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given sha256 and/or md5.

    At least one checksum must be given: silently "verifying" against nothing would hide bugs.
    """
    if sha256 is None and md5 is None:
        raise ValueError("verify_file needs a sha256 or an md5 to check against")
    path = Path(path)
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = _hexdigest(path, algorithm)
        if actual != expected.lower():
            raise ChecksumError(
                f"{path} is corrupt or a different file: its {algorithm} is {actual}, "
                f"expected {expected}"
            )


def _verify_dataset_file(spec: DatasetSpec, path: Path) -> None:
    """Accept a file holding ``spec`` if it matches the mirror's sha256 or the source's checksum.

    A GitHub archive has no checksum to match; its images are counted after extraction.
    """
    if spec.source == "github" and path.name == spec.source_filename:
        return
    actual = sha256sum(path)
    if actual == spec.sha256 or (spec.url_sha256 is not None and actual == spec.url_sha256):
        return
    if spec.url_md5 is not None and _hexdigest(path, "md5") == spec.url_md5:
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


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


def _check_host_resolves(url: str, timeout: float) -> None:
    """Fail within ``timeout`` when the host name cannot be resolved.

    urllib's timeout covers connecting and reading but not the DNS lookup, which on a machine
    with a broken network can hang for half a minute. Skipped behind a proxy, where the proxy
    resolves names.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.scheme in urllib.request.getproxies():
        return
    outcome: dict[str, OSError] = {}

    def resolve() -> None:
        try:
            socket.getaddrinfo(parts.hostname, None)
        except OSError as err:
            outcome["error"] = err

    # A daemon thread, so a lookup that never returns cannot keep the interpreter alive.
    resolver = threading.Thread(target=resolve, daemon=True)
    resolver.start()
    resolver.join(timeout)
    if resolver.is_alive():
        raise TimeoutError(f"could not resolve {parts.hostname} within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.strip().isdigit() else None


def _copy_with_progress(
    source: BinaryIO, target: BinaryIO, total: int | None, progress: bool, label: str
) -> int:
    """Copy a response body into a file in chunks, showing a byte progress bar; returns bytes."""
    from tqdm.auto import tqdm

    received = 0
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
    ) as bar:
        while chunk := source.read(_CHUNK):
            target.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _describe_failure(err: BaseException, timeout: float) -> str:
    """One line for a network error, instead of a socket traceback."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s" + (f" ({err})" if str(err) else "")
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name, no network? ({err})"
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused ({err})"
    return f"{type(err).__name__}: {err}"


def download_url(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 10.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` all or nothing, and return ``dest``.

    The body streams into ``<dest>.part`` in the same folder and is renamed into place only
    after its length (when the server sent a Content-Length) and checksum check out, so an
    interrupted or corrupt download never appears under the final name. On any failure the
    partial file is deleted and :class:`DownloadError` explains why in one line.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        _check_host_resolves(url, timeout)
        request = urllib.request.Request(url, headers={"User-Agent": "tlcourse"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected = _content_length(response)
            with open(partial, "wb") as file:
                received = _copy_with_progress(response, file, expected, progress, dest.name)
        # http.client returns a short body without complaint when the server closes early.
        if expected is not None and received != expected:
            raise DownloadError(
                url, f"the transfer was cut off after {received} of {expected} bytes"
            )
        if sha256 is not None or md5 is not None:
            verify_file(partial, sha256=sha256, md5=md5)
        os.replace(partial, dest)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    except ChecksumError as err:
        partial.unlink(missing_ok=True)
        raise DownloadError(url, f"the downloaded file failed its checksum: {err}") from None
    except (OSError, http.client.HTTPException) as err:
        partial.unlink(missing_ok=True)
        raise DownloadError(url, _describe_failure(err, timeout)) from None
    except BaseException:
        # KeyboardInterrupt and the like: still never leave a partial file behind.
        partial.unlink(missing_ok=True)
        raise
    return dest


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


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
        raise ValueError(f"{archive} is neither a zip nor a tar archive ({err})") from None
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


def _rename_into_place(source: Path, target: Path) -> None:
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
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        else:
            with tarfile.open(archive) as tf:
                # The "data" filter is a second guard behind the checks above.
                tf.extractall(staging, filter="data")
        for top in top_level:
            _rename_into_place(staging / top, dest / top)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    if len(top_level) == 1 and (dest / top_level[0]).is_dir():
        return dest / top_level[0]
    return dest


# --------------------------------------------------------------------------------------------
# Locating datasets: data/ -> mirror -> download
# --------------------------------------------------------------------------------------------


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
            warnings.warn(f"Skipping {err}", stacklevel=3)
            problems.append(str(err))
            continue
        return candidate
    return None


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
        _rename_into_place(assembled, final)
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
    spec = get_spec(name)
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


def _copy_atomically(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` via a ``.part`` file, so a half copy never looks finished."""
    partial = target.with_name(target.name + ".part")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


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
            return _copy_atomically(source, dest / source.name)
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
    specs = [get_spec(name) for name in (names or DATASETS)]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [
        _stage_one(spec, dest, download=download, timeout=timeout, progress=progress)
        for spec in specs
    ]


# --------------------------------------------------------------------------------------------
# Datasets for the notebooks
# --------------------------------------------------------------------------------------------

Transform = Callable[[Image.Image], Any]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any mode to 8-bit RGB without silently changing what it shows.

    - grey (``L``, ``1``), ``CMYK``, ``YCbCr``: Pillow's conversion (CMYK JPEGs from Photoshop
      are un-inverted by Pillow when they are read);
    - 16-bit grey (``I;16``, and ``I`` with values above 255, as 16-bit PNGs open): scaled
      from 0..65535 to 0..255. Pillow's own conversion clips at 255, which turns most of a
      16-bit scan white;
    - float (``F``): values in 0..1 are scaled to 0..255, others clipped;
    - transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour): composited onto
      white, as a browser shows it. Dropping the alpha channel would reveal whatever colour
      happens to be stored under the transparent pixels (often black).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and pixels.max(initial=0) > 255):
            pixels = pixels / 257.0  # 65535 / 257 = 255
        elif mode == "F" and pixels.max(initial=0) <= 1.0:
            pixels = pixels * 255.0
        grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open any image as upright RGB: brain-mri mixes L, RGBA and palette files, phones store
    photos sideways with an EXIF "rotate me" tag, and models want 3 channels.

    A GIF gives its first frame. See :func:`to_rgb` for how each mode becomes RGB.
    """
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; _refuse_huge refuses instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(path)
    with opened:
        _refuse_huge(opened)
        # Phones save the sensor's orientation plus a tag saying how to turn it; without this a
        # portrait photo reaches the model lying on its side.
        upright = ImageOps.exif_transpose(opened)
        return to_rgb(upright)


# --------------------------------------------------------------------------------------------
# Checked image folders: every bad file reported, every odd image converted
# --------------------------------------------------------------------------------------------


class ImageFolderError(ValueError):
    """An image folder cannot be used for classification as it is; the message says why and how."""


class SkippedFilesWarning(UserWarning):
    """Some files of an image folder are not usable images and were left out (each is listed)."""


class EmptyClassWarning(UserWarning):
    """A class folder has no usable image; it keeps its label, but nothing can be learned for it."""


@dataclass(frozen=True)
class BadFile:
    """A file (or folder) an image folder leaves out, and why."""

    path: Path
    reason: str


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


def _refuse_huge(image: Image.Image) -> None:
    """Raise ``Image.DecompressionBombError`` above ``Image.MAX_IMAGE_PIXELS`` (Pillow only warns
    between 1x and 2x the limit, and decoding such a file can take gigabytes of memory)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height:,} pixels is more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit:,}"
        )


def image_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a usable image (one line), or None when it decodes.

    The whole file is decoded, so a truncated or corrupt file is caught here rather than in the
    middle of an epoch. JPEGs are decoded at 1/8 scale (``Image.draft``), which still reads
    every byte but is several times faster.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            # Pillow warns for 1x..2x its pixel limit; _refuse_huge turns that into a refusal.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _refuse_huge(image)
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
    except UnidentifiedImageError:
        return "not an image (Pillow cannot read this kind of file)"
    except Image.DecompressionBombError as err:
        return (
            f"too large to decode safely, a possible decompression bomb ({err}); shrink it, or "
            f"raise PIL.Image.MAX_IMAGE_PIXELS (now {Image.MAX_IMAGE_PIXELS:,}) if you trust it"
        )
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        return f"corrupt or truncated image ({type(err).__name__}: {err})"
    return None


_JUNK_FOLDERS = ("__MACOSX",)  # macOS zip metadata


def _is_hidden(name: str) -> bool:
    # .ipynb_checkpoints (Jupyter), .DS_Store folders' kin, __MACOSX (macOS zips)
    return name.startswith(".") or name in _JUNK_FOLDERS


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

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ImageFolderError: images but no class folders, or fewer than two classes with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder. {_layout_help(root)}")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir() and not _is_hidden(e.name)]
    bad: list[BadFile] = [
        BadFile(Path(e.path), "hidden folder, not a class (skipped with everything in it)")
        for e in entries if e.is_dir() and _is_hidden(e.name)
    ]
    loose = [Path(e.path) for e in entries if not e.is_dir()]
    if not class_dirs:
        found = f"{len(loose)} file(s) directly in it" if loose else "nothing in it"
        raise ImageFolderError(f"{root} has no class folders ({found}). {_layout_help(root)}")
    bad += [BadFile(path, "not inside a class folder (ignored)") for path in loose]

    classes = [e.name for e in class_dirs]
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for folder, dirnames, filenames in os.walk(root / name, followlinks=True):
            hidden = sorted(d for d in dirnames if _is_hidden(d))
            bad += [BadFile(Path(folder, d), "hidden folder (skipped with everything in it)") for d in hidden]
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for filename in sorted(filenames):
                path = Path(folder, filename)
                problem = image_problem(path)
                if problem is None:
                    samples.append((str(path), label))
                else:
                    bad.append(BadFile(path, problem))

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


def load_image_folder(
    path: str | os.PathLike[str], transform: Transform | None = None, *, warn: bool = True
) -> CheckedImageFolder:
    """Your own ``path/<class>/<image>`` folder as a dataset, with every check of
    :class:`CheckedImageFolder`: bad files skipped and reported, odd images made RGB, clear
    errors for a folder laid out wrongly. Use it instead of ``torchvision.datasets.ImageFolder``.
    """
    return CheckedImageFolder(path, transform=transform, warn=warn)


def image_folder(
    name: str, split: str | None = None, transform: Transform | None = None
) -> CheckedImageFolder:
    """A :class:`CheckedImageFolder` over a located image dataset, loading every image as RGB.

    ``split`` is "train" or "validation" for alien-vs-predator, and None for brain-mri (which has
    no split; use :func:`stratified_split`). brain-mri's 49 empty files are skipped and listed in
    a :class:`SkippedFilesWarning`.
    """
    spec = get_spec(name)
    if spec.kind != "imagefolder":
        raise ValueError(f"{name!r} is not an image-folder dataset; use medmnist({name!r})")
    if spec.splits and split not in spec.splits:
        raise ValueError(f"{name!r} needs split= one of {spec.splits}, got {split!r}")
    if not spec.splits and split is not None:
        raise ValueError(f"{name!r} has no split folders; call it with split=None")
    root = locate(name)
    return CheckedImageFolder(root / split if split else root, transform=transform)


def cifar10(split: str = "train", transform: Transform | None = None) -> Dataset:
    """CIFAR-10 from whichever copy :func:`locate` found: JPEG folders or torchvision's arrays."""
    if split not in ("train", "test"):
        raise ValueError(f"cifar10 split must be 'train' or 'test', got {split!r}")
    root = locate("cifar10")
    if root.name == DATASETS["cifar10"].source_folder:
        return CIFAR10(root=str(root.parent), train=split == "train", transform=transform,
                       download=False)
    dataset = ImageFolder(str(root / split), transform=transform, loader=load_rgb)
    # Labels must mean the same whichever copy is used; sorted folder names give CIFAR's order.
    if tuple(dataset.classes) != CIFAR10_CLASSES:
        raise DatasetLayoutError(f"{root / split} has classes {dataset.classes}, expected CIFAR-10's")
    return dataset


class NpzImageDataset(Dataset):
    """One split of a MedMNIST-style ``.npz`` file: ``(PIL RGB image, int label)`` pairs.

    Reads ``<split>_images`` (N, H, W) or (N, H, W, C) uint8 and ``<split>_labels`` shaped (N,)
    or (N, 1) (the official files use (N, 1), some copies (N,)).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str = "train",
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        with np.load(path) as arrays:
            keys = (f"{split}_images", f"{split}_labels")
            missing = [key for key in keys if key not in arrays.files]
            if missing:
                raise ValueError(f"{path} has no {missing}; it has {sorted(arrays.files)}")
            images, labels = arrays[keys[0]], arrays[keys[1]]
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{path}: expected {len(images)} single labels for {split}, got shape {labels.shape}"
            )
        self.images: np.ndarray = images
        self.targets: list[int] = [int(label) for label in labels]
        n_classes = max(self.targets, default=-1) + 1
        self.classes: list[str] = list(classes) if classes else [str(i) for i in range(n_classes)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def medmnist(name: str, split: str = "train", transform: Transform | None = None) -> NpzImageDataset:
    """A MedMNIST dataset ("breastmnist" or "pneumoniamnist"), split "train", "val" or "test"."""
    spec = get_spec(name)
    if spec.kind != "npz":
        raise ValueError(f"{name!r} is not a MedMNIST dataset; use image_folder({name!r})")
    if split not in spec.splits:
        raise ValueError(f"{name!r} split must be one of {spec.splits}, got {split!r}")
    return NpzImageDataset(locate(name), split=split, transform=transform, classes=spec.classes)


# --------------------------------------------------------------------------------------------
# Subsets, splits, duplicates
# --------------------------------------------------------------------------------------------


def targets_of(dataset: Dataset) -> list[int]:
    """The integer label of every item, without loading a single image.

    Works for ImageFolder, torchvision's CIFAR10, :class:`NpzImageDataset` (all have
    ``.targets``), and for Subset / ConcatDataset of those.
    """
    if isinstance(dataset, Subset):
        parent = targets_of(dataset.dataset)
        return [parent[int(i)] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [t for part in dataset.datasets for t in targets_of(part)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no .targets to read labels from")
    return [int(t) for t in targets]


def _indices_by_class(targets: Sequence[int]) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, target in enumerate(targets):
        by_class[int(target)].append(index)
    return dict(sorted(by_class.items()))


def stratified_subset(targets: Sequence[int], n_per_class: int, seed: int) -> list[int]:
    """``n_per_class`` random indices of every class, the same for the same seed, sorted.

    Raises ValueError naming the class when it has fewer than ``n_per_class`` items.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label, indices in _indices_by_class(targets).items():
        if len(indices) < n_per_class:
            raise ValueError(
                f"class {label} has only {len(indices)} items, fewer than n_per_class={n_per_class}"
            )
        chosen.extend(int(i) for i in rng.choice(indices, size=n_per_class, replace=False))
    return sorted(chosen)


def stratified_split(
    targets: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into (train, val) with each class in the same proportion in both parts.

    Every class gets at least one item in each part, so a class needs two or more items. The
    parts are disjoint, sorted, cover every index, and are the same for the same seed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label, indices in _indices_by_class(targets).items():
        if len(indices) < 2:
            raise ValueError(f"class {label} has {len(indices)} item(s); a split needs at least 2")
        n_val = min(max(round(len(indices) * val_fraction), 1), len(indices) - 1)
        shuffled = [int(i) for i in rng.permutation(indices)]
        val.extend(shuffled[:n_val])
        train.extend(shuffled[n_val:])
    return sorted(train), sorted(val)


def find_duplicates(
    paths: Iterable[str | os.PathLike[str]], *, skip_empty: bool = True
) -> list[list[Path]]:
    """Groups (two or more) of byte-identical files among ``paths``, sorted.

    Files are grouped by size first, so only same-size files are hashed. Folders are skipped,
    and so are empty files unless ``skip_empty=False``: they hold no image, and the brain-mri
    mirror has 49 of them (ignored by ImageFolder), which would otherwise form one big group.
    """
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in {Path(p) for p in paths}:
        if path.is_file():
            by_size[path.stat().st_size].append(path)
    if skip_empty:
        by_size.pop(0, None)
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for same_size in by_size.values():
        if len(same_size) > 1:
            for path in same_size:
                by_hash[sha256sum(path)].append(path)
    groups = [sorted(group) for group in by_hash.values() if len(group) > 1]
    return sorted(groups)


def loader_throughput(
    dataset: Dataset,
    batch_sizes: Iterable[int] = (16, 64),
    workers: Iterable[int] = (0, 1, 2),
    pin_memory: Iterable[bool] = (False,),
) -> list[dict[str, Any]]:
    """Images per second of one pass over ``dataset`` for each DataLoader setting (no model).

    One row per combination of batch size, ``num_workers`` and ``pin_memory``, in that order:
    ``{"batch_size", "num_workers", "pin_memory", "images", "seconds", "images_per_s"}``. Each
    pass builds a fresh loader, so worker start-up is counted, as it is in every epoch unless
    ``persistent_workers=True``. Notebook 01 and ``benchmarks/loaders.py`` use it.
    """
    rows = []
    for batch_size in batch_sizes:
        for num_workers in workers:
            for pin in pin_memory:
                loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
                start = time.perf_counter()
                n = sum(len(y) for _, y in loader)
                seconds = time.perf_counter() - start
                rows.append({"batch_size": batch_size, "num_workers": num_workers, "pin_memory": pin,
                             "images": n, "seconds": round(seconds, 3),
                             "images_per_s": round(n / seconds, 1) if seconds > 0 else float("inf")})
    return rows
