"""The activation cache: a whole frozen-backbone pass (several layers, whole feature maps, mirror
images) on disk as raw arrays, written a batch at a time, renamed into place when complete and
memory-mapped back, so a pass over a large folder never holds its maps in memory.

:func:`cached_activations` runs :func:`tlcourse.features.extract.extract_activations` once per key
(:func:`activation_key`) and returns an :class:`ActivationSet`; :mod:`tlcourse.features.cache`
keeps pooled features of one layer in a single file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlcourse._io import DamagedFileError, atomic_write_text, read_or_explain
from tlcourse.features.cache import _model_name, backbone_fingerprint
from tlcourse.features.engine import EngineSettings
from tlcourse.features.extract import POOLED, extract_activations
from tlcourse.paths import cache_dir
from tlcourse.runtime import DeviceSettings

__all__ = ["ACTIVATIONS_FORMAT", "ActivationSet", "ArrayRows", "activation_key", "activation_path",
           "cached_activations", "load_activations"]


# --------------------------------------------------------------------------------------------
# The activation cache: several layers, whole feature maps, mirror images; on disk, memory-mapped
# --------------------------------------------------------------------------------------------

#: Bumped when the activation cache's layout changes: older entries are then computed again.
ACTIVATIONS_FORMAT = 1
_META = "meta.json"


@dataclass
class ActivationSet:
    """Activations of one pass, ``{name: (N, ...)}`` of every image (``plain``) and of its mirror image
    (``flipped``; None without a mirror), memory-mapped from the entry's files: only what is read
    comes into memory. ``extra`` holds the numbers saved with them (e.g. seconds)."""

    plain: dict[str, torch.Tensor]
    flipped: dict[str, torch.Tensor] | None
    labels: torch.Tensor
    key: str
    path: Path  # the entry's folder
    hit: bool  # loaded from disk (True) or extracted now (False)
    seconds: float  # the extraction's seconds (also when loaded: the seconds it took then)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, name: str, index: Sequence[int] | torch.Tensor, view: str = "plain") -> torch.Tensor:
        """Rows ``index`` of array ``name`` (of ``view``) as a new tensor, read from the entry's file
        without mapping it, so only the rows asked for come into memory (indexing the memory-mapped
        tensor would also keep every page it touched resident)."""
        return _read_rows(self.path / f"{view}--{name}.bin", self.extra["_arrays"][f"{view}--{name}"], index)


def _read_rows(path: Path, spec: Mapping[str, Any], index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of the raw array file ``path`` (shape and dtype in ``spec``), one read per row."""
    shape, dtype = tuple(int(s) for s in spec["shape"]), np.dtype(spec["dtype"])
    rows = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
    out = np.empty((len(rows), *shape[1:]), dtype=dtype)
    size = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    flat = out.reshape(len(rows), size // dtype.itemsize).view(np.uint8)
    with open(path, "rb") as f:
        for k, i in enumerate(rows):
            if not 0 <= i < shape[0]:
                raise IndexError(f"row {i} of {path.name}, which has {shape[0]} rows")
            if os.preadv(f.fileno(), [memoryview(flat[k])], i * size) != size:
                raise OSError(f"{path} is shorter than its recorded shape; delete the entry to compute it again")
    return torch.from_numpy(out)


class _ArrayWriter:
    """Appends each batch's arrays to raw files in ``folder`` (plain writes: the page cache holds
    them, not this process's memory); :meth:`meta` records their dtypes and shapes."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.files, self.shapes = folder, {}, {}

    def add(self, name: str, t: torch.Tensor) -> None:
        a = t.detach().cpu().contiguous().numpy()
        if name not in self.files:
            self.files[name] = open(self.folder / f"{name}.bin", "wb")  # noqa: SIM115 - closed in close()
            self.shapes[name] = [0, *a.shape[1:]], str(a.dtype)
        self.files[name].write(a.tobytes())
        self.shapes[name][0][0] += len(a)

    def __call__(self, plain: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor] | None,
                 labels: torch.Tensor | None) -> None:
        for view, arrays in (("plain", plain), ("flipped", flipped or {})):
            for name, t in arrays.items():
                self.add(f"{view}--{name}", t)
        if labels is not None:
            self.add("labels", labels)

    def close(self) -> dict[str, Any]:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        return {name: {"shape": shape, "dtype": dtype} for name, (shape, dtype) in self.shapes.items()}


def _mapped(folder: Path, name: str, spec: Mapping[str, Any]) -> torch.Tensor:
    """One array of an entry as a tensor over a copy-on-write memory map (the file is never changed)."""
    shape = tuple(int(s) for s in spec["shape"])
    if shape[0] == 0:
        return torch.from_numpy(np.zeros(shape, dtype=spec["dtype"]))
    array = np.memmap(folder / f"{name}.bin", dtype=spec["dtype"], mode="c", shape=shape)
    return torch.from_numpy(array)


class ArrayRows(Dataset):
    """``(row i of an entry's array, label)`` read with plain file reads, so that a pass over a large
    array (for example the top stages over cached lower activations) does not map it into memory."""

    def __init__(self, entry: ActivationSet, name: str, view: str = "plain") -> None:
        self.spec = entry.extra["_arrays"][f"{view}--{name}"]
        self.path = entry.path / f"{view}--{name}.bin"
        self.labels = entry.labels

    def __len__(self) -> int:
        return int(self.spec["shape"][0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return _read_rows(self.path, self.spec, [i])[0], int(self.labels[i])


def load_activations(path: str | os.PathLike[str], key: str) -> ActivationSet | None:
    """The entry in folder ``path`` when it is complete and holds ``key``, else None (it is computed again)."""
    folder = Path(path)
    try:
        meta = read_or_explain(folder / _META, lambda p: json.loads(p.read_text()), what="activation cache entry",
                               remedy="It is computed again.",
                               check=lambda m: None if isinstance(m, dict) and m.get("key") == key
                               and m.get("format") == ACTIVATIONS_FORMAT else "another key or format")
        arrays = meta["arrays"]
        for name, spec in arrays.items():
            size = int(np.prod(spec["shape"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
            if (folder / f"{name}.bin").stat().st_size != size:
                return None
        views = {view: {n.split("--", 1)[1]: _mapped(folder, n, s) for n, s in arrays.items()
                        if n.startswith(view + "--")} for view in ("plain", "flipped")}
        labels = _mapped(folder, "labels", arrays["labels"]).clone()
    except (DamagedFileError, OSError, KeyError, ValueError, TypeError):
        return None
    extra = dict(meta.get("extra", {}), _arrays=arrays)
    return ActivationSet(views["plain"], views["flipped"] if meta["mirror"] else None, labels, key, folder, True,
                         float(meta["seconds"]), extra)


def activation_key(model: nn.Module, data_id: str, layers: Sequence[str | None], *, maps: Sequence[str] = (),
                   mirror: bool = False) -> str:
    """The key of an activation entry: the backbone's name and weights, what the data is (``data_id``:
    the files' fingerprint and the preprocessing), the layers, which stay whole maps, and the mirror."""
    h = hashlib.sha256()
    names = [POOLED if n is None else n for n in layers]
    for part in (f"format={ACTIVATIONS_FORMAT}", _model_name(model), backbone_fingerprint(model), data_id,
                 ",".join(names), ",".join(sorted(maps)), f"mirror={mirror}"):
        h.update(part.encode() + b"\n")
    return h.hexdigest()


def activation_path(root: str | os.PathLike[str], model: nn.Module, key: str) -> Path:
    """The folder of an activation entry under ``root``."""
    return Path(root) / f"{_model_name(model)}-{key[:20]}"


def cached_activations(
    model: nn.Module,
    data: DataLoader | Dataset,
    layers: Sequence[str | None],
    *,
    data_id: str,
    root: str | os.PathLike[str] | None = None,
    maps: Sequence[str] = (),
    mirror: bool = False,
    derive: Callable[[ActivationSet], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]]
    | None = None,
    on_rate: Callable[[float], None] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool | str = True,
) -> ActivationSet:
    """:func:`~tlcourse.features.extract_activations` of ``data``, from disk when the entry is there.

    The entry (a folder under ``root``, default ``build/activations``; ``$TLCOURSE_CACHE_DIR`` moves it) is keyed by
    :func:`activation_key`; ``data_id`` must identify the images and their preprocessing. Each
    batch goes straight to the entry's files, so memory does not grow with the dataset, and the
    result is memory-mapped from them. ``derive(entry)`` (optional) computes more arrays from the
    fresh entry before it is kept: ``(plain, flipped, extra numbers)`` are saved with it. The folder
    is written under a temporary name and renamed when complete, so an interrupted or concurrent
    run never leaves a half entry that is read; a damaged entry is computed again.
    """
    root = Path(root) if root is not None else cache_dir() / "activations"
    key = activation_key(model, data_id, layers, maps=maps, mirror=mirror)
    final = activation_path(root, model, key)
    found = load_activations(final, key)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".part-", dir=root))
    try:
        writer = _ArrayWriter(tmp)
        try:
            run = extract_activations(model, data, layers, maps=maps, mirror=mirror, sink=writer, on_rate=on_rate,
                                      batch_size=batch_size, device=device, engine=engine, num_workers=num_workers,
                                      progress=progress)
        finally:
            arrays = writer.close()
        meta: dict[str, Any] = {"key": key, "format": ACTIVATIONS_FORMAT, "model": _model_name(model),
                                "mirror": mirror, "seconds": run.seconds, "arrays": arrays, "extra": {},
                                "engine": run.report.engine}
        atomic_write_text(tmp / _META, json.dumps(meta))
        if derive is not None:
            entry = load_activations(tmp, key)
            assert entry is not None  # written just above
            plain, flipped, extra = derive(entry)
            del entry
            more = _ArrayWriter(tmp)
            more(plain, flipped, None)
            meta["arrays"].update(more.close())
            meta["extra"] = extra
            atomic_write_text(tmp / _META, json.dumps(meta))
        if final.exists():  # a damaged entry, or a concurrent run's: ours replaces it
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if load_activations(final, key) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    entry = load_activations(final, key)
    if entry is None:
        raise OSError(f"The activation cache entry {final} could not be read back; check the disk and run again.")
    entry.hit = False
    return entry
