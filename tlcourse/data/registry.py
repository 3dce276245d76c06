"""The course's datasets by name: what each one is, where it comes from, and how to check it.

:data:`DATASETS` maps a name to its :class:`DatasetSpec` (files, checksums, sources, classes and
per-class counts); :func:`dataset_spec` looks one up. The errors that the rest of
:mod:`tlcourse.data` raises live here too, so every layer can raise them without importing the
layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tlcourse.paths import MIRROR_ENV

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "ChecksumError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "UnsafeArchiveError",
    "dataset_spec",
]


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


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; a ValueError lists the known names for a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {known}.") from None

