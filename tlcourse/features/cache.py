"""The feature cache: extracted features on disk, under a key of everything they depend on.

The key hashes the backbone's name and weights (not its head), the preprocessing, the layer and
the images themselves. Change any of them and the key changes, so a stale file is never
returned. Files are written atomically, so two processes filling one key both leave a complete
file, and an unreadable file is simply extracted again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from tlcourse._io import DamagedFileError, atomic_save, read_or_explain, read_torch
from tlcourse.features.engine import EngineSettings
from tlcourse.features.extract import POOLED, extract_stage_features, has_backbone_spec
from tlcourse.models import backbone_spec, build_backbone, state_dict_fingerprint
from tlcourse.paths import cache_dir
from tlcourse.runtime import DeviceSettings

__all__ = [
    "CACHE_FORMAT",
    "FeatureSet",
    "backbone_fingerprint",
    "cache_key",
    "cached_features",
    "cached_stage_features",
    "dataset_fingerprint",
]

#: Bumped when the cache file layout or the meaning of a key changes: old files are then ignored.
CACHE_FORMAT = 2


# --------------------------------------------------------------------------------------------
# Fingerprints: everything the features depend on
# --------------------------------------------------------------------------------------------


def backbone_fingerprint(model: nn.Module) -> str:
    """A fingerprint of every parameter and buffer that shapes the features (not the head's).

    The head does not change the features, so a backbone with a freshly replaced head keeps its
    cache; retrained or differently initialised backbone weights get a new fingerprint.
    """
    exclude = (backbone_spec(model).head + ".",) if has_backbone_spec(model) else ()
    return state_dict_fingerprint(model, exclude=exclude)


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(str(t.dtype).encode())
    h.update(str(t.numel()).encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def _file_entry(path: str | os.PathLike[str], content: bool) -> str:
    if content:
        with open(path, "rb") as f:
            return f"{path}:{hashlib.file_digest(f, 'sha256').hexdigest()}"
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def dataset_fingerprint(dataset: Dataset, *, content: bool = False) -> str:
    """A hash of what a dataset holds, without decoding an image.

    - image folders (``.samples``): every file's path, label, size and modification time (or its
      SHA-256 with ``content=True``, slower but blind to ``touch``);
    - in-memory arrays (MedMNIST's npz, torchvision's CIFAR-10 ``.data``, ``TensorDataset``):
      the bytes of the arrays and the labels;
    - ``Subset`` / ``ConcatDataset``: their parts and the chosen indices.

    Other datasets raise ``TypeError``: pass ``dataset_id=`` to :func:`cached_features` instead.
    """
    h = hashlib.sha256()
    if isinstance(dataset, Subset):
        h.update(b"subset")
        h.update(dataset_fingerprint(dataset.dataset, content=content).encode())
        h.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
    elif isinstance(dataset, ConcatDataset):
        h.update(b"concat")
        for part in dataset.datasets:
            h.update(dataset_fingerprint(part, content=content).encode())
    elif isinstance(dataset, TensorDataset):
        h.update(b"tensors")
        for t in dataset.tensors:
            _hash_tensor(h, t)
    elif hasattr(dataset, "samples"):
        h.update(b"files")
        for path, target in dataset.samples:
            h.update(f"{_file_entry(path, content)}:{target}\n".encode())
    elif isinstance(getattr(dataset, "images", None), np.ndarray) or isinstance(getattr(dataset, "data", None), np.ndarray):
        arrays = getattr(dataset, "images", None)
        arrays = arrays if isinstance(arrays, np.ndarray) else dataset.data  # type: ignore[attr-defined]
        h.update(b"arrays")
        h.update(str((arrays.shape, arrays.dtype)).encode())
        h.update(np.ascontiguousarray(arrays).tobytes())
        h.update(np.asarray(dataset.targets, dtype=np.int64).tobytes())  # type: ignore[attr-defined]
    else:
        raise TypeError(f"Cannot fingerprint a {type(dataset).__name__}; pass dataset_id= to identify its contents")
    return h.hexdigest()


class _Transformed(Dataset):
    """Applies ``transform`` to the images of a dataset that yields untransformed ones."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.dataset[i]
        return self.transform(x), y


def _transforms_of(dataset: Dataset) -> list[str]:
    """The repr of every transform applied between the files and the model, outermost last."""
    found = []
    while True:
        for attr in ("transform", "target_transform"):
            t = getattr(dataset, attr, None)
            if t is not None:
                found.append(f"{attr}={t!r}")
        if isinstance(dataset, (Subset, _Transformed)):
            dataset = dataset.dataset
        else:
            break
    return found[::-1]


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "tlcourse_backbone", type(model).__name__))


def cache_key(
    model: nn.Module,
    dataset: Dataset,
    *,
    layer: str | None = None,
    transform: Any = None,
    dataset_id: str | None = None,
    content: bool = False,
) -> str:
    """The cache key of ``model``'s ``layer`` features on ``dataset`` (a hex digest).

    It hashes the backbone's name and weights, the repr of every transform on the way from the
    files to the model (the dataset's own and ``transform``), the layer and the dataset's contents.
    A ``transforms.Lambda`` has an uninformative repr: give such a pipeline a distinct
    ``dataset_id`` yourself.
    """
    extra = [f"extra={transform!r}"] if transform is not None else []
    parts = {
        "format": str(CACHE_FORMAT),
        "model": _model_name(model),
        "weights": backbone_fingerprint(model),
        "layer": POOLED if layer is None else layer,
        "transforms": "|".join(_transforms_of(dataset) + extra),
        "data": dataset_id if dataset_id is not None else dataset_fingerprint(dataset, content=content),
    }
    h = hashlib.sha256()
    for k, v in parts.items():
        h.update(f"{k}={v}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The disk cache
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """Features of one layer for one dataset, and where they came from."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    layer: str
    key: str
    path: Path
    hit: bool  # loaded from the cache (True) or extracted now (False)
    seconds: float  # time to load, or to extract and save
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _cache_path(root: Path, model: nn.Module, layer: str, key: str) -> Path:
    return root / f"{_model_name(model)}--{layer.replace('/', '_')}--{key[:24]}.pt"


def _load(path: Path, key: str) -> dict[str, Any] | None:
    """The cached entry, or None when the file is missing, damaged or holds another key.

    A damaged entry (a crash mid-write by an older version, a copy cut short) is only a cache:
    the features are extracted again and the file is replaced atomically.
    """
    if not path.is_file():
        return None
    try:
        return read_or_explain(
            path, read_torch, what="feature cache entry", remedy="It is extracted again.",
            check=lambda e: None if isinstance(e, dict) and e.get("meta", {}).get("key") == key
            and e["meta"].get("format", CACHE_FORMAT) == CACHE_FORMAT else "another key or format")
    except (DamagedFileError, OSError):
        return None


def cached_stage_features(
    model: nn.Module | str,
    dataset: Dataset,
    layers: Sequence[str | None],
    *,
    transform: Any = None,
    root: str | os.PathLike[str] | None = None,
    dataset_id: str | None = None,
    content: bool = False,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, FeatureSet]:
    """:func:`cached_features` for several layers: the missing ones come from a single pass.

    Each layer is its own cache entry, so asking later for a subset of these layers (or one more)
    reuses what is there.
    """
    model = build_backbone(model) if isinstance(model, str) else model
    root = Path(root) if root is not None else cache_dir() / "features"
    data = _Transformed(dataset, transform) if transform is not None else dataset
    names = [POOLED if name is None else name for name in layers]
    result: dict[str, FeatureSet] = {}
    missing: list[str] = []
    for name in names:
        key = cache_key(model, dataset, layer=name, transform=transform, dataset_id=dataset_id, content=content)
        path = _cache_path(root, model, name, key)
        start = time.perf_counter()
        entry = _load(path, key)
        if entry is None:
            missing.append(name)
            result[name] = FeatureSet(torch.empty(0), torch.empty(0), name, key, path, False, 0.0)
            continue
        result[name] = FeatureSet(entry["features"], entry["labels"], name, key, path, True,
                                  time.perf_counter() - start, entry["meta"])
    if missing:
        start = time.perf_counter()
        feats, labels = extract_stage_features(
            model, data, [None if n == POOLED else n for n in missing], batch_size=batch_size,
            device=device, engine=engine, num_workers=num_workers, progress=progress)
        seconds = time.perf_counter() - start
        for name in missing:
            fs = result[name]
            meta = {"key": fs.key, "model": _model_name(model), "layer": name, "n": len(labels),
                    "dim": int(feats[name].shape[1]), "extract_seconds": seconds,
                    "transforms": "|".join(_transforms_of(data)), "format": CACHE_FORMAT}
            atomic_save({"features": feats[name], "labels": labels, "meta": meta}, fs.path)
            result[name] = FeatureSet(feats[name], labels, name, fs.key, fs.path, False, seconds, meta)
    return result


def cached_features(
    model: nn.Module | str,
    dataset: Dataset,
    *,
    layer: str | None = None,
    transform: Any = None,
    root: str | os.PathLike[str] | None = None,
    dataset_id: str | None = None,
    content: bool = False,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``model`` on ``dataset``, from the disk cache when they are there.

    Args:
        model: a backbone (``nn.Module``) or a registry name, built with its ImageNet weights.
        dataset: yields ``(image, label)``; its own ``transform`` is part of the key.
        layer: ``None`` for the final pooled features, or a stage name.
        transform: optional, applied to what ``dataset`` yields (use it when the dataset yields
            PIL images); part of the key too.
        root: the cache folder (default ``build/features``; ``$TLCOURSE_CACHE_DIR`` moves it).
        dataset_id: identifies the contents yourself, for datasets :func:`dataset_fingerprint`
            does not know.
        content: fingerprint image files by their SHA-256 instead of size + mtime.
        device, engine: where and how a missing entry is extracted
            (:func:`~tlcourse.features.extract_features`); they do not change the key.

    Returns:
        a :class:`FeatureSet`; ``.hit`` says whether it came from the cache.
    """
    return cached_stage_features(
        model, dataset, [layer], transform=transform, root=root, dataset_id=dataset_id, content=content,
        batch_size=batch_size, device=device, engine=engine, num_workers=num_workers, progress=progress,
    )[POOLED if layer is None else layer]
