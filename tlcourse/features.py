"""Feature extraction: run a frozen backbone once, keep its features, train small models on them.

When the backbone is frozen, its output for a given image never changes. Running it in every
epoch (what many tutorials do) recomputes the same numbers again and again; the expensive part of
"training" is then only the forward pass. This module does it once:

1. :func:`extract_features` runs the backbone in inference mode and returns one vector per image:
   the pooled features the head would see (``layer=None``) or a stage's feature map, global-average
   pooled (``layer="blocks.3"``). Several stages come out of one forward pass
   (:func:`extract_stage_features`), and the forward stops after the deepest stage asked for.
2. :func:`cached_features` keeps the result on disk, under a key made of everything the numbers
   depend on: the backbone's weights, the preprocessing, the layer and the images themselves.
   Change any of them and the key changes, so a stale file is never returned.
3. :func:`train_linear_probe` (torch) and :func:`fit_logistic_regression` (scikit-learn) train a
   linear classifier on the cached vectors in well under a second per epoch.

A linear classifier on the features of each stage, a *linear probe*, also measures how general
those features are for a new dataset (:func:`probe_accuracy_cv`), and cosine similarity between
features gives image retrieval (:func:`nearest_neighbours`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from tlcourse.paths import build_dir
from tlcourse.train import save_checkpoint

__all__ = [
    "FeatureSet",
    "InferenceSettings",
    "cache_key",
    "cached_features",
    "cached_stage_features",
    "dataset_fingerprint",
    "extract_features",
    "extract_stage_features",
    "fit_logistic_regression",
    "inference_settings",
    "nearest_neighbours",
    "probe_accuracy_cv",
    "train_linear_probe",
    "weights_fingerprint",
]

#: Bumped when the cache file layout or the meaning of a key changes: old files are then ignored.
CACHE_FORMAT = 1

#: The name of the "layer" that is the head's input (the final pooled features).
POOLED = "pooled"


# --------------------------------------------------------------------------------------------
# Devices: how to run inference fast on each kind of hardware
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InferenceSettings:
    """How :func:`extract_features` runs on one device."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # bfloat16 on CUDA: half the memory traffic, same range as fp32
    non_blocking: bool  # host->GPU copies overlap with compute (needs pinned memory)
    pin_memory: bool
    batch_size: int
    threads: int | None = None  # CPU threads; None: time a batch with all and with one, keep the faster


def inference_settings(device: str | torch.device | None = None, batch_size: int | None = None,
                       threads: int | None = None) -> InferenceSettings:
    """Pick the inference settings for ``device`` (``None``: CUDA if present, else CPU).

    On a CPU, float32 with channels_last is the fast path: bfloat16 autocast is only faster on
    CPUs with AMX/AVX-512-BF16, and is slower elsewhere. On CUDA, bfloat16 autocast and
    asynchronous copies from pinned memory. Features always come back as float32 on the CPU.
    The CPU batch is 16: EfficientNet-Lite0's activations then stay in the CPU caches, and
    ``benchmarks/`` measured 52 img/s at batch 16 against 38 at 32 and 32 at 64 (2 cores, 224 px).

    ``threads=None`` (the default) lets the extraction choose the CPU thread count by timing
    (see :class:`_ThreadChooser`): when other processes keep a core busy, one thread can beat
    all of them by 2x (``benchmarks/`` measured 27 vs 11 img/s on a loaded 2-core machine),
    while on an idle machine all threads win.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    cuda = device.type == "cuda"
    return InferenceSettings(
        device=device,
        autocast_dtype=torch.bfloat16 if cuda else None,
        non_blocking=cuda,
        pin_memory=cuda,
        batch_size=batch_size or (256 if cuda else 16),
        threads=threads,
    )


#: How the last extraction ran: ``{"threads": used, "rates": {threads: samples/s timed}}``.
LAST_EXTRACTION: dict[str, Any] = {}


class _ThreadChooser:
    """Chooses the CPU thread count of an extraction by timing it on the first batches.

    The first batch warms up (and runs with the current setting); the next one runs with every
    thread, the one after with a single thread; the rest use the faster. A fixed ``threads``
    skips the trials. :meth:`restore` puts back the process's previous setting.
    """

    def __init__(self, threads: int | None, cpu: bool = True) -> None:
        self.previous = torch.get_num_threads()
        self.fixed = threads
        self.trials = [self.previous, 1] if threads is None and cpu and self.previous > 1 else []
        self.rates: dict[int, float] = {}
        self._batches = 0
        self._now: tuple[int, float] | None = None

    def best(self) -> int:
        """The fixed count, else the fastest timed one (the current setting before any timing)."""
        if self.fixed is not None:
            return self.fixed
        return max(self.rates, key=self.rates.__getitem__) if self.rates else self.previous

    def before_batch(self) -> None:
        trial = self._batches > 0 and bool(self.trials)
        n = self.trials[0] if trial else self.best()
        torch.set_num_threads(n)
        self._now = (n, time.perf_counter()) if trial else None
        self._batches += 1

    def after_batch(self, samples: int) -> None:
        if self._now is not None:
            n, start = self._now
            self.rates[n] = samples / max(time.perf_counter() - start, 1e-9)
            self.trials.pop(0)

    def restore(self) -> None:
        LAST_EXTRACTION.clear()
        LAST_EXTRACTION.update(threads=self.best(), rates=dict(self.rates))
        torch.set_num_threads(self.previous)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook once the deepest stage needed has run: the rest of the network is skipped."""


def _pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling: (N, C, H, W) -> (N, C). Vectors pass through unchanged."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if x.dim() == 4:
        return x.float().mean(dim=(2, 3))
    if x.dim() == 3:  # token sequences (N, L, C): average the tokens
        return x.float().mean(dim=1)
    return x.float().flatten(1)


def _has_spec(model: nn.Module) -> bool:
    from tlcourse.models import get_spec

    try:
        get_spec(model)
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def _capture(model: nn.Module, layers: Sequence[str | None]):
    """Hooks that store the pooled output of each requested layer in a dict, per forward pass.

    ``None`` (or ``"pooled"``) is the input of the model's head for a registry backbone, and the
    model's own output for any other module (for example ``nn.Sequential(*children[:-1])``).
    When only stages are requested, the deepest one raises :class:`_StopForward`: a truncated
    forward that does not pay for the layers above it.
    """
    from tlcourse.models import get_spec, head_of, stage_modules

    captured: dict[str, torch.Tensor] = {}
    handles = []
    names = [POOLED if layer is None else layer for layer in layers]
    stages = [n for n in names if n != POOLED]
    if stages:
        if not _has_spec(model):
            raise ValueError("Stage features need a registry backbone (tlcourse.models.build_backbone)")
        spec = get_spec(model)
        order = spec.stage_names
        unknown = [s for s in stages if s not in order]
        if unknown:
            raise ValueError(f"Unknown stage(s) {unknown} for {spec.name}; its stages are {order}")
        deepest = max(stages, key=order.index)
        stop = POOLED not in names
        lookup = dict(stage_modules(model))
        for name in stages:
            def hook(_m, _i, out, name=name):
                captured[name] = _pool(out)
                if stop and name == deepest:
                    raise _StopForward
            handles.append(lookup[name][-1].register_forward_hook(hook))
    if POOLED in names and _has_spec(model):
        handles.append(head_of(model).register_forward_pre_hook(
            lambda _m, args: captured.__setitem__(POOLED, _pool(args[0]))))
    output_is_feature = POOLED in names and not _has_spec(model)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured.clear()
        try:
            out = model(x)
            if output_is_feature:
                if isinstance(out, dict):  # create_feature_extractor returns {name: tensor}
                    if len(out) != 1:
                        raise ValueError(f"The model returns {len(out)} outputs; ask for one layer")
                    out = next(iter(out.values()))
                captured[POOLED] = _pool(out)
        except _StopForward:
            pass
        return {n: captured[n] for n in names}

    try:
        yield run
    finally:
        for h in handles:
            h.remove()


def _as_loader(data: DataLoader | Dataset, settings: InferenceSettings, num_workers: int) -> DataLoader | Iterable:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=settings.batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=settings.pin_memory)


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _fetch_on_one_thread(loader: Iterable) -> Iterator[Any]:
    """The loader's batches, each decoded and transformed with one CPU thread.

    Per-image transforms are tiny tensor ops: split over threads while another process keeps a
    core busy, the threads wait for each other. With one busy process on a 2-core machine we
    measured 6-10 ms per Alien vs Predator image with two threads and 2-3 ms with one (the same
    on an idle machine). The forward pass then runs with the thread count chosen for it.
    """
    batches = iter(loader)
    while True:
        with _one_thread():
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def extract_stage_features(
    model: nn.Module,
    data: DataLoader | Dataset,
    layers: Sequence[str | None],
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of several layers from one pass over ``data``: ``({layer: (N, D)}, labels (N,))``.

    ``layers`` holds stage names (``get_spec(model).stage_names``) and/or ``None`` for the final
    pooled features (keyed ``"pooled"``). Stage feature maps are global-average pooled, so each
    image gives one vector per stage. The model runs in eval mode under ``torch.inference_mode``
    (no autograd bookkeeping) with channels_last memory (faster convolutions on CPU and GPU);
    its previous train/eval mode is restored afterwards. On a CPU, ``threads=None`` picks the
    thread count by timing the first batches (:func:`inference_settings`); the process's setting
    is restored afterwards.
    """
    settings = inference_settings(device, batch_size, threads)
    chooser = _ThreadChooser(settings.threads, cpu=settings.device.type == "cpu")
    loader = _as_loader(data, settings, num_workers)
    was_training = model.training
    model.eval().to(settings.device, memory_format=torch.channels_last)
    outputs: dict[str, list[torch.Tensor]] = {POOLED if l is None else l: [] for l in layers}
    labels: list[torch.Tensor] = []
    autocast = (torch.autocast(settings.device.type, dtype=settings.autocast_dtype)
                if settings.autocast_dtype is not None else contextlib.nullcontext())
    try:
        with torch.inference_mode(), autocast, _capture(model, layers) as run:
            for inputs, targets in tqdm(_fetch_on_one_thread(loader), desc="features", disable=not progress,
                                        leave=False, total=_length(loader)):
                chooser.before_batch()
                x = inputs.to(settings.device, non_blocking=settings.non_blocking)
                x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
                for name, feats in run(x).items():
                    outputs[name].append(feats.float().cpu())
                labels.append(torch.as_tensor(targets).long().cpu())
                chooser.after_batch(len(labels[-1]))
    finally:
        chooser.restore()
        model.train(was_training)
    if not labels:
        raise ValueError("No samples to extract features from (empty dataset or loader)")
    return {n: torch.cat(v) for n, v in outputs.items()}, torch.cat(labels)


def extract_features(
    model: nn.Module,
    data: DataLoader | Dataset,
    *,
    layer: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of every sample in ``data`` (in order).

    ``layer=None`` gives the final pooled features, the vectors the head classifies; a stage name
    (e.g. ``"blocks.3"``) gives that stage's feature map, global-average pooled to one vector per
    image. ``data`` is a Dataset (batched here, in order) or a DataLoader (used as it is).
    """
    feats, labels = extract_stage_features(model, data, [layer], batch_size=batch_size, device=device,
                                           num_workers=num_workers, progress=progress, threads=threads)
    return feats[POOLED if layer is None else layer], labels


# --------------------------------------------------------------------------------------------
# Cache keys: everything the features depend on
# --------------------------------------------------------------------------------------------


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(str(t.dtype).encode())
    h.update(str(t.numel()).encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer that shapes the features (the head is left out).

    The head does not change the features, so a backbone with a freshly replaced head keeps its
    cache; retrained or differently initialised backbone weights get a new fingerprint.
    """
    head = None
    if _has_spec(model):
        from tlcourse.models import get_spec

        head = get_spec(model).head + "."
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if head is not None and name.startswith(head):
            continue
        h.update(name.encode())
        _hash_tensor(h, tensor)
    return h.hexdigest()


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
        arrays = arrays if isinstance(arrays, np.ndarray) else dataset.data
        h.update(b"arrays")
        h.update(str((arrays.shape, arrays.dtype)).encode())
        h.update(np.ascontiguousarray(arrays).tobytes())
        h.update(np.asarray(getattr(dataset, "targets"), dtype=np.int64).tobytes())
    else:
        raise TypeError(f"Cannot fingerprint a {type(dataset).__name__}; pass dataset_id= to identify its contents")
    return h.hexdigest()


def _transforms_of(dataset: Dataset) -> list[str]:
    """The repr of every transform applied between the files and the model, outermost last."""
    found = []
    while True:
        for attr in ("transform", "target_transform"):
            t = getattr(dataset, attr, None)
            if t is not None:
                found.append(f"{attr}={t!r}")
        if isinstance(dataset, Subset):
            dataset = dataset.dataset
        elif isinstance(dataset, _Transformed):
            dataset = dataset.dataset
        else:
            break
    return found[::-1]


class _Transformed(Dataset):
    """Applies ``transform`` to the images of a dataset that yields untransformed ones."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.dataset[i]
        return self.transform(x), y


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
    parts = {
        "format": str(CACHE_FORMAT),
        "model": _model_name(model),
        "weights": weights_fingerprint(model),
        "layer": POOLED if layer is None else layer,
        "transforms": "|".join(_transforms_of(dataset) + ([f"extra={transform!r}"] if transform is not None else [])),
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
    safe_layer = layer.replace("/", "_")
    return root / f"{_model_name(model)}--{safe_layer}--{key[:24]}.pt"


def _load(path: Path, key: str) -> dict[str, Any] | None:
    """The cached entry, or None when the file is missing, unreadable or holds another key."""
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a file cut short by a crash (from a writer that did not write atomically)
        return None
    if not isinstance(entry, dict) or entry.get("meta", {}).get("key") != key:
        return None
    return entry


def _resolve_model(model: nn.Module | str) -> nn.Module:
    if isinstance(model, str):
        from tlcourse.models import build_backbone

        return build_backbone(model)
    return model


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
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, FeatureSet]:
    """:func:`cached_features` for several layers: the missing ones come from a single pass.

    Each layer is its own cache entry, so asking later for a subset of these layers (or one more)
    reuses what is there.
    """
    model = _resolve_model(model)
    root = Path(root) if root is not None else build_dir() / "features"
    data = _Transformed(dataset, transform) if transform is not None else dataset
    names = [POOLED if l is None else l for l in layers]
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
            device=device, num_workers=num_workers, progress=progress)
        seconds = time.perf_counter() - start
        for name in missing:
            fs = result[name]
            meta = {"key": fs.key, "model": _model_name(model), "layer": name, "n": int(len(labels)),
                    "dim": int(feats[name].shape[1]), "extract_seconds": seconds,
                    "transforms": "|".join(_transforms_of(data)), "format": CACHE_FORMAT}
            # atomic (temp file + os.replace): two processes filling one key both leave a complete file
            save_checkpoint({"features": feats[name], "labels": labels, "meta": meta}, fs.path)
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
    device: str | torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> FeatureSet:
    """Features of ``model`` on ``dataset``, from the disk cache when they are there.

    Args:
        model: a backbone (``nn.Module``) or a registry name, built with its ImageNet weights.
        dataset: yields ``(image, label)``; its own ``transform`` is part of the key.
        layer: ``None`` for the final pooled features, or a stage name.
        transform: optional, applied to what ``dataset`` yields (use it when the dataset yields
            PIL images); part of the key too.
        root: the cache folder (default ``build/features``).
        dataset_id: identifies the contents yourself, for datasets :func:`dataset_fingerprint`
            does not know.
        content: fingerprint image files by their SHA-256 instead of size + mtime.

    Returns:
        a :class:`FeatureSet`; ``.hit`` says whether it came from the cache.
    """
    return cached_stage_features(
        model, dataset, [layer], transform=transform, root=root, dataset_id=dataset_id, content=content,
        batch_size=batch_size, device=device, num_workers=num_workers, progress=progress,
    )[POOLED if layer is None else layer]


# --------------------------------------------------------------------------------------------
# Classifiers on features
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_thread():
    """Run tiny tensor ops on one thread.

    A batch of 32 vectors times a (1280 x 2) matrix is far too small to split across threads. On a
    busy CPU (other processes, a shared machine) the threads then mostly wait for each other: on
    a loaded 2-core machine we measured 5 epochs on 694 vectors taking 16 s with two threads and
    0.2 s with one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _accuracy_and_loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        logits = head(x)
        return float((logits.argmax(1) == y).float().mean()), float(nn.functional.cross_entropy(logits, y))


def train_linear_probe(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    val_feats: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int = 25,
    lr: float = 1e-3,
    momentum: float = 0.9,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``nn.Linear`` on features with SGD and cross-entropy; evaluate after every epoch.

    This is exactly the head of the classic frozen-backbone recipe, minus the backbone: the
    head is initialised after ``torch.manual_seed(seed)`` and each epoch's shuffle is the order a
    ``RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))`` yields. A DataLoader
    loop over images with that sampler therefore visits the same batches with the same initial
    head. The same seed gives the same result.

    Returns ``{"accuracy": final val accuracy, "best_accuracy", "seconds", "history": [per epoch
    dicts: epoch, train_loss, train_acc, val_loss, val_acc], "head": the trained nn.Linear}``.
    """
    x, y = train_feats.float(), train_y.long()
    vx, vy = val_feats.float(), val_y.long()
    if len(x) == 0:
        raise ValueError("No training features")
    n_classes = num_classes or int(max(y.max(), vy.max()) + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sampler = RandomSampler(range(len(x)), generator=torch.Generator().manual_seed(seed))
    history = []
    start = time.perf_counter()
    with _one_thread():
        history = _train_head(head, optimizer, sampler, x, y, vx, vy, epochs, batch_size)
    seconds = time.perf_counter() - start
    return {"accuracy": history[-1]["val_acc"] if history else float("nan"),
            "best_accuracy": max((h["val_acc"] for h in history), default=float("nan")),
            "seconds": seconds, "history": history, "head": head}


def _train_head(head, optimizer, sampler, x, y, vx, vy, epochs: int, batch_size: int) -> list[dict[str, Any]]:
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.tensor(list(sampler))
        total, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            logits = head(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        val_acc, val_loss = _accuracy_and_loss(head, vx, vy)
        history.append({"epoch": epoch, "train_loss": total / len(x), "train_acc": correct / len(x),
                        "val_loss": val_loss, "val_acc": val_acc})
    return history


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _logistic_pipeline(C: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardising puts every feature on the same scale, so one C (inverse L2 strength) suits
    # the small early stages and the 1280-dimensional final features alike, and lbfgs converges.
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def fit_logistic_regression(
    train_feats: Any,
    train_y: Any,
    val_feats: Any,
    val_y: Any,
    *,
    C: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Standardise + scikit-learn ``LogisticRegression`` (L2, lbfgs): a deterministic linear probe.

    Returns ``{"accuracy": on the validation features, "train_accuracy", "seconds", "pipeline"}``.
    """
    start = time.perf_counter()
    pipe = _logistic_pipeline(C, max_iter, seed).fit(_numpy(train_feats), _numpy(train_y))
    seconds = time.perf_counter() - start
    return {"accuracy": float(pipe.score(_numpy(val_feats), _numpy(val_y))),
            "train_accuracy": float(pipe.score(_numpy(train_feats), _numpy(train_y))),
            "seconds": seconds, "pipeline": pipe}


def probe_accuracy_cv(features: Any, labels: Any, *, folds: int = 5, C: float = 1.0, seed: int = 0,
                      max_iter: int = 2000) -> dict[str, Any]:
    """Stratified k-fold accuracy of :func:`fit_logistic_regression`'s pipeline on one feature set.

    On a small dataset one validation split is noisy (one image of 50 is two points); averaging
    over folds makes a per-layer comparison trustworthy. Returns ``{"mean", "std", "scores"}``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(_logistic_pipeline(C, max_iter, seed), _numpy(features), _numpy(labels), cv=cv)
    return {"mean": float(scores.mean()), "std": float(scores.std()), "scores": [float(s) for s in scores]}


def nearest_neighbours(queries: torch.Tensor, gallery: torch.Tensor, *, k: int = 5,
                       exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar gallery rows for each query row, by cosine similarity.

    Returns ``(indices (Q, k), similarities (Q, k))``, most similar first. With
    ``exclude_self=True`` (queries are the gallery itself) an item never retrieves itself.
    """
    q = nn.functional.normalize(queries.float(), dim=1)
    g = nn.functional.normalize(gallery.float(), dim=1)
    sims = q @ g.T
    if exclude_self:
        if sims.shape[0] != sims.shape[1]:
            raise ValueError("exclude_self needs the queries to be the gallery")
        sims.fill_diagonal_(-float("inf"))
    values, indices = sims.topk(k, dim=1)
    return indices, values
