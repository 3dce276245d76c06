"""The torch datasets of the course: course data by name, your own folder by path, and more.

- :func:`course_dataset` ("alien-vs-predator", "brain-mri") and :func:`folder_dataset` (any
  ``path/<class>/<image>`` folder of yours) are the pair to reach for; both return a
  :class:`~tlcourse.data.CheckedImageFolder`.
- :func:`cifar10` and :func:`medmnist` read the course's other datasets, whichever copy
  :func:`~tlcourse.data.locate` found.
- :func:`load_images` and :class:`TensorImages` decode a small subset once into a uint8 tensor,
  then resize, augment and normalise on tensors: on a CPU this takes decoding out of every epoch.

Every dataset here has ``.classes`` and ``.targets``, so :func:`tlcourse.data.stratified_subset`
and :func:`tlcourse.data.stratified_split` work on it without loading an image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision.datasets import CIFAR10, ImageFolder

from tlcourse._io import read_or_explain
from tlcourse.data.fetch import locate
from tlcourse.data.folders import CheckedImageFolder
from tlcourse.data.images import Transform, load_rgb
from tlcourse.data.registry import (
    CIFAR10_CLASSES,
    DATASETS,
    DatasetLayoutError,
    dataset_spec,
)

__all__ = [
    "NpzImageDataset",
    "TensorImages",
    "cifar10",
    "course_dataset",
    "dataset_num_classes",
    "folder_dataset",
    "load_images",
    "medmnist",
]


def course_dataset(
    name: str, split: str | None = None, transform: Transform | None = None
) -> CheckedImageFolder:
    """A course image dataset by name, as a :class:`CheckedImageFolder` loading RGB images.

    ``split`` is "train" or "validation" for alien-vs-predator, and None for brain-mri (which has
    no split; use :func:`tlcourse.data.stratified_split`). The dataset is found (or fetched) by
    :func:`tlcourse.data.locate`; brain-mri's empty files are skipped and listed in a
    :class:`~tlcourse.data.SkippedFilesWarning`.
    """
    spec = dataset_spec(name)
    if spec.kind != "imagefolder":
        raise ValueError(f"{name!r} is not an image-folder dataset; use medmnist({name!r})")
    if spec.splits and split not in spec.splits:
        raise ValueError(f"{name!r} needs split= one of {spec.splits}, got {split!r}")
    if not spec.splits and split is not None:
        raise ValueError(f"{name!r} has no split folders; call it with split=None")
    root = locate(name)
    return CheckedImageFolder(root / split if split else root, transform=transform)


def folder_dataset(
    path: str | os.PathLike[str], transform: Transform | None = None, *, warn: bool = True
) -> CheckedImageFolder:
    """Your own ``path/<class>/<image>`` folder as a dataset, with every check of
    :class:`CheckedImageFolder`: bad files skipped and reported, odd images made RGB, clear
    errors for a folder laid out wrongly. Use it instead of ``torchvision.datasets.ImageFolder``.
    """
    return CheckedImageFolder(path, transform=transform, warn=warn)


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


def _read_arrays(path: Path, keys: Sequence[str]) -> tuple[list[str], tuple[np.ndarray, ...] | None]:
    """An ``.npz`` file's array names, and the ``keys`` arrays read now (None if one is missing)."""
    with np.load(path, allow_pickle=False) as arrays:
        if any(key not in arrays.files for key in keys):
            return sorted(arrays.files), None
        return sorted(arrays.files), tuple(arrays[key] for key in keys)


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
        keys = (f"{split}_images", f"{split}_labels")
        files, arrays = read_or_explain(
            path, lambda p: _read_arrays(p, keys), what="MedMNIST .npz file",
            remedy="Delete it; tlcourse.data.locate fetches it again (if it came from $TLCOURSE_MIRROR, "
                   "stage the mirror again with `python -m tlcourse stage --to MIRROR`).")
        if arrays is None:
            missing = [key for key in keys if key not in files]
            raise ValueError(f"{path} has no {missing}; it has {files}")
        images, labels = arrays
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
    spec = dataset_spec(name)
    if spec.kind != "npz":
        raise ValueError(f"{name!r} is not a MedMNIST dataset; use course_dataset({name!r})")
    if split not in spec.splits:
        raise ValueError(f"{name!r} split must be one of {spec.splits}, got {split!r}")
    return NpzImageDataset(locate(name), split=split, transform=transform, classes=spec.classes)


def load_images(dataset: Dataset, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``dataset[i]`` for each index once: a ``(N, 3, H, W)`` uint8 tensor and int64 labels.

    The dataset must return PIL images (or HxWx3 uint8 arrays) of one size, as CIFAR-10 does.
    """
    indices = range(len(dataset)) if indices is None else indices  # type: ignore[arg-type]
    images, labels = [], []
    for i in indices:
        image, label = dataset[int(i)]
        array = torch.from_numpy(np.array(image.convert("RGB") if hasattr(image, "convert") else image))
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != torch.uint8:
            raise ValueError(f"Item {i} is not an RGB uint8 image (got {tuple(array.shape)} {array.dtype})")
        images.append(array.permute(2, 0, 1))
        labels.append(int(label))
    if not images:
        raise ValueError("No images to load")
    return torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.int64)


class TensorImages(Dataset):
    """Images kept as uint8 tensors, resized, augmented and normalised when an item is read.

    Args:
        images: ``(N, 3, H, W)`` uint8, e.g. from :func:`load_images`.
        targets: ``(N,)`` class indices.
        size: the side length the network sees. Upsampling 32 px CIFAR images to a size nearer
            the pretraining resolution lets pretrained filters find objects of familiar scale.
        mean, std: the backbone's normalisation (its ``preprocessing()``).
        train: random crop after 4 px (scaled) reflection padding, and horizontal flips, the
            classic CIFAR augmentation; off for evaluation.

    ``.targets`` is a list, so :func:`tlcourse.data.targets_of` works on it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        self.images = images
        self.targets = [int(t) for t in targets]
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < x.shape[-1])[0]
        if self.train:
            # Random draws use the global torch RNG, which fit re-seeds every epoch.
            pad = max(1, self.size // 8)
            x = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
            top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            x = x[:, top:top + self.size, left:left + self.size]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.targets[i]


def dataset_num_classes(loader: Any) -> int | None:
    """The number of classes of a loader's (or dataset's) data, from its ``.classes``; None if
    it does not say (a plain ``TensorDataset``). Looks through ``Subset`` and ``ConcatDataset``."""
    dataset = getattr(loader, "dataset", loader)
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if isinstance(dataset, ConcatDataset) and dataset.datasets:
        dataset = dataset.datasets[0]
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    try:
        return len(classes) if classes is not None and len(classes) > 0 else None
    except TypeError:
        return None
