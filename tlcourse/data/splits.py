"""Choosing items of a dataset by label: balanced subsets, stratified splits, duplicate files.

All of it works on the labels (:func:`targets_of` reads them without loading an image), so it
is instant even for CIFAR-10, and it is seeded, so a notebook gets the same items on every run.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from tlcourse.data.checksums import sha256sum

__all__ = ["find_duplicates", "stratified_split", "stratified_subset", "targets_of"]


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
