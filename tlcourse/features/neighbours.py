"""Near-duplicate images found with the course's own embeddings.

Byte hashing (:func:`tlcourse.data.find_duplicates`) only finds *identical files*. The same photo
resized, re-encoded or lightly cropped hashes differently, yet a frozen backbone maps it to almost
the same vector. :func:`near_duplicates` lists the pairs whose pooled features have a cosine
similarity at or above a threshold; :func:`duplicate_groups` joins pairs that share an image, and
:func:`keep_one_per_group` gives the indices to keep so that no two kept images are such a pair.
Run it on the whole dataset *before* splitting it, or between the parts of a given split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["NEAR_DUPLICATE", "NearDuplicate", "duplicate_groups", "keep_one_per_group", "near_duplicates"]

#: The course's one near-duplicate standard: a centred cosine similarity of the pooled features at
#: or above this. Notebook 03 introduces it by looking at the pairs just above and just below it;
#: ``python -m tlcourse fit`` and every notebook use it.
NEAR_DUPLICATE = 0.85


@dataclass(frozen=True)
class NearDuplicate:
    """Row ``i`` of the first feature set and row ``j`` of the second (or the same) set."""

    i: int
    j: int
    similarity: float


def near_duplicates(
    features: torch.Tensor,
    other: torch.Tensor | None = None,
    *,
    threshold: float = NEAR_DUPLICATE,
    center: bool = True,
    chunk: int = 4096,
) -> list[NearDuplicate]:
    """Pairs of rows whose cosine similarity is at least ``threshold``, most similar first.

    With ``other=None`` the rows of ``features`` are compared with each other and each unordered
    pair is listed once (``i < j``); an image never pairs with itself. With ``other`` given,
    every row of ``features`` is compared with every row of ``other`` (for example validation
    against training images), and ``i`` indexes ``features``, ``j`` indexes ``other``.
    Identical images give a similarity of 1 (up to float rounding).

    ``center=True`` first subtracts the mean vector of all rows (both sets). The pooled features
    of a ReLU network are all non-negative and share a large common component, which pushes
    every cosine towards 1; without it a threshold separates copies from look-alikes poorly.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity between -1 and 1, got {threshold}")
    if features.dim() != 2 or (other is not None and other.dim() != 2):
        raise ValueError("features must be (N, D) matrices: one pooled vector per image")
    if other is not None and features.shape[1] != other.shape[1]:
        raise ValueError(f"feature dimensions differ: {features.shape[1]} vs {other.shape[1]}")
    a, b = features.float(), None if other is None else other.float()
    if center:
        mean = (a if b is None else torch.cat([a, b])).mean(dim=0)
        a, b = a - mean, None if b is None else b - mean
    a = nn.functional.normalize(a, dim=1)
    b = a if b is None else nn.functional.normalize(b, dim=1)
    pairs: list[NearDuplicate] = []
    for start in range(0, len(a), chunk):
        sims = a[start:start + chunk] @ b.T
        if other is None:  # keep j > i only: each pair once, never an image with itself
            rows = torch.arange(start, start + len(sims)).unsqueeze(1)
            sims = sims.masked_fill(torch.arange(len(b)).unsqueeze(0) <= rows, -2.0)
        for i, j in (sims >= threshold).nonzero().tolist():
            pairs.append(NearDuplicate(start + i, j, float(sims[i, j])))
    return sorted(pairs, key=lambda p: (-p.similarity, p.i, p.j))


def duplicate_groups(pairs: Iterable[NearDuplicate]) -> list[list[int]]:
    """Connected groups (two or more indices, sorted) of a within-set pair list, sorted.

    Two pairs that share an image join one group: three copies of a photo form one group even
    if one of the three pairs falls just below the threshold.
    """
    parent: dict[int, int] = {}

    def root(k: int) -> int:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for p in pairs:
        parent[root(p.i)] = root(p.j)
    groups: dict[int, list[int]] = {}
    for k in parent:
        groups.setdefault(root(k), []).append(k)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def keep_one_per_group(n: int, pairs: Iterable[NearDuplicate]) -> list[int]:
    """Indices ``0..n-1`` to keep: every image outside a group, and the first index of each group."""
    drop = {k for group in duplicate_groups(pairs) for k in group[1:]}
    bad = [k for k in drop if not 0 <= k < n]
    if bad:
        raise ValueError(f"pair indices {sorted(bad)[:5]} are outside 0..{n - 1}")
    return [k for k in range(n) if k not in drop]
