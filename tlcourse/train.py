"""Training: the classic PyTorch loops (``train_loop`` / ``test_loop``) and ``fit`` built on them.

Read top to bottom, this module is the recipe the notebooks teach inline once:

1. pick a device (``select_device``) and seed everything (``seed_everything``);
2. one pass over the training data (``train_loop``) and one over the validation data
   (``test_loop``), each returning an ``EpochStats``;
3. ``fit`` repeats 2 for a number of epochs, keeps a ``History``, writes checkpoints
   (``best.pt``, ``last.pt``) and resumes from ``last.pt`` after an interruption.

Two choices shape everything below:

- **Reproducible on CPU.** ``fit`` re-seeds the random number generators at the start of every
  epoch from ``(seed, epoch)``. The shuffle order, augmentation and dropout of epoch *k* are then
  the same whether the run went straight through or was resumed from a checkpoint.
- **Checkpoints load with ``torch.load(..., weights_only=True)``.** Pickle can run arbitrary code,
  so a course that hands checkpoints around must not unpickle them. Everything saved is therefore
  tensors, numbers, strings, lists and dicts only.

On a GPU, ``fit`` and the loops follow :func:`device_settings`: mixed precision, channels_last
memory, pinned memory and asynchronous copies. Under ``torchrun`` with
``DistributedDataParallel`` (see :mod:`tlcourse.distributed` and ``scripts/finetune_ddp.py``),
``fit`` shards nothing itself but cooperates: it calls ``set_epoch`` on a ``DistributedSampler``,
all-reduces the epoch's metrics over the ranks, shows progress and writes checkpoints on rank 0
only, and waits for them before returning.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from tlcourse import distributed as _dist

__all__ = [
    "CPU_CHANNELS_LAST",
    "EpochStats",
    "History",
    "TrainSettings",
    "amp_settings",
    "device_settings",
    "make_loader",
    "epoch_seed",
    "fit",
    "dataset_num_classes",
    "load_checkpoint",
    "model_info",
    "prepare_model",
    "save_checkpoint",
    "seed_everything",
    "select_device",
    "set_train_mode",
    "test_loop",
    "train_loop",
]

#: Bumped when the layout of ``last.pt`` / ``best.pt`` changes.
CHECKPOINT_FORMAT = 1

EpochCallback = Callable[[int, dict[str, Any], nn.Module], None]


# --------------------------------------------------------------------------------------------
# Device and seeds
# --------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to train on: ``cuda`` if present, else ``mps`` (Apple silicon), else ``cpu``.

    ``preferred`` may be ``None`` or ``"auto"`` (choose as above), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"mps"``. A notebook's parameters cell can ask for ``"cuda"`` on a laptop
    without one: instead of crashing, this warns (``UserWarning``) and returns the CPU, so the
    same notebook runs everywhere, only slower.

    Raises:
        ValueError: ``preferred`` is not a device name at all (a typo such as ``"gpu"``).
    """
    if preferred is None or str(preferred).lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    try:
        device = torch.device(preferred)
    except RuntimeError as err:
        raise ValueError(
            f"Unknown device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from err

    if device.type == "cuda":
        if not torch.cuda.is_available():
            warnings.warn(
                f"Device {preferred!r} was requested but CUDA is not available "
                "(no NVIDIA GPU or a CPU-only PyTorch build); falling back to 'cpu'.",
                UserWarning,
                stacklevel=2,
            )
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            warnings.warn(
                f"Device {preferred!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist; falling back to 'cpu'.",
                UserWarning,
                stacklevel=2,
            )
            return torch.device("cpu")
    elif device.type == "mps" and not _mps_available():
        warnings.warn(
            f"Device {preferred!r} was requested but MPS is not available "
            "(it needs Apple silicon and macOS 12.3+); falling back to 'cpu'.",
            UserWarning,
            stacklevel=2,
        )
        return torch.device("cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU) with ``seed``.

    On the CPU this makes a run repeatable. It does not call
    ``torch.use_deterministic_algorithms(True)``: that would make some GPU kernels raise, and
    the course prefers speed on the GPU to bit-for-bit repeatability there.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy only takes 32-bit seeds
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed ``fit`` uses for ``epoch`` (1-based) of a run started with ``seed``.

    A hash of the pair rather than ``seed + epoch``, so runs with neighbouring seeds do not
    share epochs (seed 0 epoch 2 would otherwise equal seed 1 epoch 1). In a distributed run
    every ``rank`` other than 0 gets its own stream (its shard is augmented and dropped out
    independently of the others); rank 0 gets the single-process seed.
    """
    key = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def amp_settings(device: torch.device) -> tuple[bool, torch.dtype | None]:
    """Whether to use mixed precision on ``device``, and in which dtype: ``(enabled, dtype)``.

    - CUDA with bfloat16 support (Ampere and newer): ``(True, torch.bfloat16)``. bf16 has
      float32's range, so no loss scaling is needed.
    - Older CUDA GPUs: ``(True, torch.float16)``. fp16 gradients can underflow to zero, so
      ``fit`` pairs this with a ``torch.amp.GradScaler``.
    - CPU and MPS: ``(False, None)``; full float32, where autocast would gain little.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, torch.bfloat16
        return True, torch.float16
    return False, None


#: Whether training on the CPU uses channels_last memory (NHWC) by default; chosen by measurement.
#: See :func:`device_settings` for the numbers.
CPU_CHANNELS_LAST = True


@dataclass(frozen=True)
class TrainSettings:
    """How ``fit``, ``train_loop`` and ``test_loop`` run on one device (see :func:`device_settings`).

    Attributes:
        device: where the model and the batches go.
        amp_dtype: the autocast dtype (``torch.bfloat16`` or ``torch.float16``), or ``None`` for
            plain float32.
        grad_scaler: scale the loss with a ``torch.amp.GradScaler`` (float16 only: its gradients
            would otherwise underflow to zero).
        channels_last: convert the model and every 4-D input batch to channels_last (NHWC) memory.
        non_blocking: copy batches to the device asynchronously (useful with pinned memory), and
            keep the running loss/accuracy on the device instead of synchronising every batch.
        pin_memory: what DataLoaders built by :func:`make_loader` should use for ``pin_memory``.
        batch_size: a starting batch size for training a course backbone at 224 px on this
            device (per process in a distributed run); :func:`make_loader` uses it by default.
        cudnn_benchmark: let cuDNN time its convolution algorithms for the input shapes once
            (fast for fixed-size images; ``fit`` restores the previous setting when it returns).
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    grad_scaler: bool
    channels_last: bool
    non_blocking: bool
    pin_memory: bool
    batch_size: int
    cudnn_benchmark: bool

    @property
    def amp(self) -> bool:
        """Whether autocast (mixed precision) is on."""
        return self.amp_dtype is not None


def device_settings(
    device: str | torch.device | None = None,
    *,
    channels_last: bool | None = None,
    batch_size: int | None = None,
) -> TrainSettings:
    """The training settings for ``device`` (``None``/``"auto"``: see :func:`select_device`).

    ============  =====================  =============  ==========================  ==========
    device        mixed precision        channels_last  pin_memory / non_blocking   batch size
    ============  =====================  =============  ==========================  ==========
    CUDA          bf16 (Ampere+), else   yes            yes                         128
                  fp16 + GradScaler
    CPU           no (float32)           yes (below)    no                          32
    MPS           no (float32)           no             no                          64
    ============  =====================  =============  ==========================  ==========

    **channels_last on the CPU** (``CPU_CHANNELS_LAST``) was measured, not assumed: training
    steps (forward + backward + SGD) of ``build_backbone("efficientnet_lite0", 10)``, both memory
    formats in the same process, timed alternately after a warm-up
    (``python -m benchmarks.channels_last --sizes 32 64 --batch 32 --steps 2 --rounds 10``, and
    ``--sizes 224 --batch 16 --steps 1 --rounds 6``; torch 2.14.1, 2 CPU cores; seconds per step,
    median of the rounds; ratio = channels_last / contiguous, median and fastest round)::

        size  batch  contiguous  channels_last  ratio (median, fastest)
          32     32       0.986          0.447  0.45  0.31
          64     32       3.485          1.985  0.57  0.57
         224     16       8.031          3.385  0.42  0.53

    The machine was shared and single rounds varied up to 5x; earlier, shorter runs gave ratios
    of 0.50 and 1.25 at 32 px, 0.65 and 0.68 at 64 px, 0.60 at 224 px. channels_last won every
    comparison but one, by 1.5-2x, so it is the CPU default too. On CUDA it is what tensor cores
    want under autocast. MPS gains little from it and has had bugs with it, so it stays off there.
    Results on the CPU stay reproducible run to run (and across a resume) with either format.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``, or ``None``.
        channels_last: override the default memory format choice.
        batch_size: override the recommended batch size.
    """
    device = device if isinstance(device, torch.device) else select_device(device)
    amp_enabled, amp_dtype = amp_settings(device)
    cuda = device.type == "cuda"
    if channels_last is None:
        channels_last = cuda or (device.type == "cpu" and CPU_CHANNELS_LAST)
    default_batch = {"cuda": 128, "mps": 64}.get(device.type, 32)
    return TrainSettings(
        device=device,
        amp_dtype=amp_dtype if amp_enabled else None,
        grad_scaler=amp_enabled and amp_dtype == torch.float16,
        channels_last=bool(channels_last),
        non_blocking=cuda,
        pin_memory=cuda,
        batch_size=int(batch_size or default_batch),
        cudnn_benchmark=cuda,
    )


def make_loader(
    dataset: Dataset,
    settings: TrainSettings,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` for ``dataset`` that follows ``settings``: pinned memory on CUDA (so the
    copies can be asynchronous), the settings' batch size unless ``batch_size`` is given, and
    ``persistent_workers`` off (so ``fit``'s per-epoch re-seeding reaches the workers).

    Pass a ``generator`` with ``shuffle=True`` to give the loader its own shuffle stream (``fit``
    re-seeds it every epoch), or a ``sampler`` such as a ``DistributedSampler`` (then no
    ``shuffle``; :func:`tlcourse.distributed.train_loader` builds that case). Other keyword
    arguments go to ``DataLoader``.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size or settings.batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=settings.pin_memory,
        drop_last=drop_last,
        generator=generator,
        **kwargs,
    )


def _settings_for(device: torch.device, settings: TrainSettings | None) -> TrainSettings:
    if settings is None:
        return device_settings(device)
    if settings.device != device:
        raise ValueError(f"settings are for {settings.device}, but device is {device}.")
    return settings


def _autocast(settings: TrainSettings) -> contextlib.AbstractContextManager[Any]:
    if settings.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device.type, dtype=settings.amp_dtype)


def prepare_model(model: nn.Module, settings: TrainSettings) -> nn.Module:
    """Move ``model`` to the settings' device, in channels_last memory when they say so.

    In place (the same parameter objects, so an optimizer built before still holds them);
    returns ``model``. A ``DistributedDataParallel`` wrapper must be prepared *before* wrapping
    (:func:`tlcourse.distributed.wrap` does it): here it is only checked.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        wrong = [n for n, p in model.module.named_parameters() if p.device != settings.device]
        if wrong:
            raise ValueError(
                f"The DistributedDataParallel model has parameters on another device than "
                f"{settings.device} (e.g. {wrong[0]}): move the model (tlcourse.train.prepare_model) "
                "before wrapping it, or use tlcourse.distributed.wrap."
            )
        return model
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------


@dataclass
class EpochStats:
    """What one pass over a loader measured.

    Attributes:
        loss: mean loss per sample.
        accuracy: fraction of samples whose top-1 prediction is right, in [0, 1].
        n: number of samples seen.
        seconds: wall-clock time of the pass.
    """

    loss: float
    accuracy: float
    n: int
    seconds: float


def set_train_mode(model: nn.Module) -> list[str]:
    """Put ``model`` in training mode, except BatchNorm layers whose parameters are all frozen.

    Why: a BatchNorm layer in train mode normalises with the current batch's statistics and
    updates its running mean/variance, even when its weight and bias have
    ``requires_grad=False``. Freezing a pretrained backbone would then still let its running
    statistics drift towards the new (small) dataset, which silently changes the "frozen"
    features and often hurts accuracy. Keeping those layers in eval mode makes frozen really
    frozen. A BatchNorm layer without parameters (``affine=False``) has nothing to say whether
    it is frozen, so it follows the model into train mode.

    Returns:
        The names of the BatchNorm layers kept in eval mode (handy to print in a notebook).
    """
    model.train()
    kept_in_eval = []
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                kept_in_eval.append(name)
    return kept_in_eval


def _check_num_classes(
    outputs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None
) -> None:
    """Raise a readable error when labels do not fit the model's head.

    CrossEntropyLoss would otherwise fail with "Target N is out of bounds" on the CPU, or a
    device-side assert on the GPU that poisons the whole CUDA context. When the dataset's class
    count is known (``num_classes``), a head with *more* outputs is refused too: it trains
    without any error, but can predict classes that do not exist (a forgotten
    ``replace_head`` leaves ImageNet's 1000).
    """
    if targets.dtype.is_floating_point or outputs.ndim != 2 or targets.numel() == 0:
        return  # soft targets (mixup, label smoothing by hand) carry no class index
    num_outputs = outputs.shape[1]
    if num_classes is not None and num_outputs != num_classes:
        raise ValueError(
            f"The model's head has {num_outputs} outputs but the dataset has {num_classes} "
            f"classes. Give the model a head that matches the dataset with "
            f"replace_head(model, {num_classes}) from tlcourse.models before training."
        )
    max_label = int(targets.max())
    if max_label >= num_outputs:
        raise ValueError(
            f"The model's head has {num_outputs} outputs but the data has labels up to "
            f"{max_label} (at least {max_label + 1} classes). Give the model a head that matches "
            "the dataset with replace_head(model, num_classes) from tlcourse.models "
            "before training."
        )


def _count_correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The number of right top-1 predictions, as a tensor on the outputs' device (no sync)."""
    if targets.ndim == outputs.ndim:  # soft targets: compare with their most likely class
        targets = targets.argmax(dim=1)
    return (outputs.argmax(dim=1) == targets).sum()


def _to_device(batch: Any, settings: TrainSettings) -> Any:
    """A batch on the device: asynchronous from pinned memory on CUDA, and 4-D image batches in
    channels_last memory when the settings say so (a no-op when it is already there)."""
    if not isinstance(batch, torch.Tensor):
        return batch
    if settings.channels_last and batch.dim() == 4:
        return batch.to(settings.device, non_blocking=settings.non_blocking,
                        memory_format=torch.channels_last)
    return batch.to(settings.device, non_blocking=settings.non_blocking)


class _Running:
    """Sum of loss x batch size, correct predictions and samples, kept on the device.

    ``loss.item()`` every batch would make the CPU wait for the GPU each step; these sums are
    read once per epoch (and for the progress bar: every batch on the CPU, where reading is
    free, every ``sync_every`` batches on a GPU). Float64 sums of the float32 batch losses give
    exactly the numbers the per-batch ``loss.item() * batch_size`` in Python used to.
    """

    def __init__(self, settings: TrainSettings) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=settings.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=settings.device)
        self.n = 0
        self.sync_every = 25 if settings.non_blocking else 1

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        batch_size = targets.shape[0]
        self.loss += loss.detach().double() * batch_size
        self.correct += _count_correct(outputs.detach(), targets)
        self.n += batch_size

    def show(self, bar: Any, step: int, progress: bool) -> None:
        if progress and step % self.sync_every == 0:
            bar.set_postfix(loss=f"{float(self.loss) / self.n:.4f}")

    def stats(self, start: float) -> EpochStats:
        return EpochStats(loss=float(self.loss) / self.n, accuracy=int(self.correct) / self.n,
                          n=self.n, seconds=time.perf_counter() - start)


def train_loop(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    scheduler: LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = True,
    desc: str = "train",
    num_classes: int | None = None,
    settings: TrainSettings | None = None,
) -> EpochStats:
    """One epoch of training: forward, loss, backward, optimizer step for every batch.

    Args:
        model: already on ``device``. Put in train mode with :func:`set_train_mode`, so frozen
            BatchNorm layers keep their running statistics.
        loader: yields ``(inputs, targets)`` batches; targets are class indices (or soft
            targets of the outputs' shape).
        loss_fn: returns the batch *mean* (``reduction="mean"``, the default), as
            ``nn.CrossEntropyLoss()`` does.
        optimizer: updates the parameters.
        device: where the batches go.
        scheduler: stepped after **every batch**, as ``OneCycleLR`` expects. An epoch-based
            scheduler (``StepLR``, ``CosineAnnealingLR`` counted in epochs) must not be passed
            here: step it yourself after the epoch, or let ``fit(scheduler_step="epoch")`` do it.
        scaler: a ``torch.amp.GradScaler`` for float16 autocast on CUDA; when ``None`` and
            fp16 is used, one is created for this epoch. Unused on CPU.
        progress: show a tqdm progress bar with the running loss.
        desc: the progress bar's label.
        num_classes: the dataset's number of classes, when known: the model's output count
            must equal it (``fit`` passes it from the dataset's ``.classes``).
        settings: how batches are moved and computed (autocast, channels_last, non_blocking);
            default ``device_settings(device)``. The model itself is not converted here:
            ``fit`` does that (:func:`prepare_model`).

    Raises:
        ValueError: the loader is empty, or a label does not fit the model's head.
    """
    settings = _settings_for(device, settings)
    set_train_mode(model)
    if scaler is None and settings.grad_scaler:
        scaler = torch.amp.GradScaler(device.type)

    running = _Running(settings)
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for step, (inputs, host_targets) in enumerate(bar):
        inputs, targets = _to_device(inputs, settings), _to_device(host_targets, settings)
        with _autocast(settings):
            outputs = model(inputs)
            _check_num_classes(outputs, host_targets, num_classes)  # host copy: no GPU sync
            loss = loss_fn(outputs, targets)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        running.add(loss, outputs, targets)
        running.show(bar, step, progress)

    if running.n == 0:
        raise ValueError("The training loader yielded no samples (is drop_last=True with a tiny dataset?).")
    return running.stats(start)


def test_loop(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    progress: bool = True,
    desc: str = "eval",
    num_classes: int | None = None,
    settings: TrainSettings | None = None,
) -> EpochStats:
    """One pass over ``loader`` in eval mode without gradients: mean loss and accuracy.

    Leaves the model in eval mode (BatchNorm uses running statistics, dropout is off).
    ``torch.inference_mode`` skips autograd bookkeeping entirely, so evaluation is faster and
    lighter than with ``torch.no_grad``. ``settings`` as in :func:`train_loop`. In a
    distributed run this measures the local shard only; ``fit`` sums the ranks' counts.

    Raises:
        ValueError: the loader is empty, or a label does not fit the model's head.
    """
    settings = _settings_for(device, settings)
    model.eval()
    running = _Running(settings)
    start = time.perf_counter()
    with torch.inference_mode():
        bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
        for step, (inputs, host_targets) in enumerate(bar):
            inputs, targets = _to_device(inputs, settings), _to_device(host_targets, settings)
            with _autocast(settings):
                outputs = model(inputs)
                _check_num_classes(outputs, host_targets, num_classes)
                loss = loss_fn(outputs, targets)
            running.add(loss, outputs, targets)
            running.show(bar, step, progress)
    if running.n == 0:
        raise ValueError("The evaluation loader yielded no samples.")
    return running.stats(start)


# The name follows the PyTorch tutorials; this stops pytest collecting it as a test when a test
# module does `from tlcourse.train import test_loop`.
test_loop.__test__ = False  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr")


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` run; plain numbers only, so it is JSON-serialisable.

    Attributes:
        epochs: one dict per epoch with the keys ``epoch`` (1-based), ``train_loss``,
            ``train_acc``, ``val_loss``, ``val_acc``, ``seconds`` (train + validation wall
            time) and ``lr`` (the first parameter group's learning rate at the start of the
            epoch).
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def best_epoch(self) -> int | None:
        """The (1-based) epoch with the highest validation accuracy; the earliest on a tie."""
        if not self.epochs:
            return None
        best = max(self.epochs, key=lambda e: (e["val_acc"], -e["epoch"]))
        return int(best["epoch"])

    @property
    def best_val_acc(self) -> float | None:
        """The highest validation accuracy of the run, or ``None`` before the first epoch."""
        return max((e["val_acc"] for e in self.epochs), default=None)

    def as_dict(self) -> dict[str, list[Any]]:
        """Column view: ``{"epoch": [1, 2, ...], "val_acc": [...], ...}`` (easy to plot)."""
        keys = list(self.epochs[0]) if self.epochs else list(HISTORY_KEYS)
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def to_json(self, indent: int | None = 2) -> str:
        """The history as JSON text (epochs plus the best epoch, for a human reading the file)."""
        return json.dumps(
            {"epochs": self.epochs, "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc},
            indent=indent,
        )

    @classmethod
    def from_json(cls, text: str) -> History:
        """Rebuild a ``History`` from :meth:`to_json`'s output."""
        return cls(epochs=list(json.loads(text)["epochs"]))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save ``obj`` with ``torch.save`` atomically: the file is either the old one or the new one.

    Writing straight to ``path`` and being killed halfway (Ctrl-C, a notebook kernel restart,
    a preempted cloud machine) would leave a truncated file and lose the last good checkpoint.
    So: write a temporary file in the same folder, flush and fsync it to disk, then
    ``os.replace`` it over ``path``, which is atomic on POSIX and Windows.

    Keep ``obj`` to tensors, numbers, strings, lists and dicts so that
    ``torch.load(..., weights_only=True)`` can read it back.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    return path


def _remove_partial_checkpoints(folder: Path) -> None:
    """Delete the temporary files of saves that were killed mid-write (see save_checkpoint).

    They are never read (the checkpoint itself is intact), only clutter the folder.
    """
    for name in ("last.pt", "best.pt"):
        for partial in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                partial.unlink()


def _state_dict_mismatch(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between ``model``'s state_dict and ``state`` (empty if none)."""
    own = model.state_dict()
    problems = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    for k, v in own.items():
        other = state.get(k)
        if isinstance(other, torch.Tensor) and other.shape != v.shape:
            problems.append(f"{k}: checkpoint {tuple(other.shape)} vs model {tuple(v.shape)}")
            if len(problems) >= 5:
                break
    return problems


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about its model, so a mismatch can be explained later:
    the class name, the registry backbone (if built by ``build_backbone``) and the head size."""
    from tlcourse.models import describe_state_dict

    backbone, outputs = describe_state_dict(model.state_dict())
    return {
        "class": type(model).__name__,
        "backbone": getattr(model, "tlcourse_backbone", None) or backbone,
        "num_outputs": outputs,
    }


def _describe_model(state: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """"a resnet18 with 5 outputs (62 tensors)", from saved info or guessed from the tensors."""
    from tlcourse.models import describe_state_dict

    guessed_backbone, guessed_outputs = describe_state_dict(state)
    backbone = info.get("backbone") or guessed_backbone or info.get("class") or "an unknown model"
    outputs = info.get("num_outputs") or guessed_outputs
    head = f" with {outputs} outputs" if outputs else ""
    return f"{backbone}{head} ({len(state)} tensors)"


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


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by ``fit``/``save_checkpoint``, with ``weights_only=True``.

    When ``model`` is given, its weights are replaced by the checkpoint's (``ckpt["model"]``,
    or the whole file if it is a bare state_dict). To go back to the best epoch after ``fit``::

        load_checkpoint(Path(checkpoint_dir) / "best.pt", model)

    Returns:
        The checkpoint dict (``best.pt``: ``model``, ``epoch``, ``val_acc``, ``meta``;
        ``last.pt`` adds ``optimizer``, ``scheduler``, ``history``, ``seed``...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable checkpoint; it holds pickled Python objects
            that could run code (refused, never executed); or it was written for a model with
            different layers/shapes than ``model`` (the message names both models).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line]
        if not blocked:  # not a pickle of objects at all: a damaged file
            raise ValueError(
                f"Could not read checkpoint {path} ({type(err).__name__}: {err}). "
                "Delete it, or point checkpoint_dir to another folder."
            ) from err
        # weights_only=True refuses any pickled object other than tensors and plain containers.
        # Such an object could run code while loading: this is exactly what must not happen.
        raise ValueError(
            f"Refused to load checkpoint {path}: it holds Python objects other than tensors, "
            f"numbers, strings, lists and dicts, and unpickling those can run arbitrary code "
            f"({blocked[0]}). tlcourse never writes such files. Only if you fully trust its source, "
            "load it yourself with torch.load(path, weights_only=False) and save its state_dict."
        ) from err
    except Exception as err:  # truncated file, not a torch file
        raise ValueError(
            f"Could not read checkpoint {path} ({type(err).__name__}: {err}). "
            "Delete it, or point checkpoint_dir to another folder."
        ) from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"Checkpoint {path} holds a {type(ckpt).__name__}, not a dict.")
    if model is not None:
        state = ckpt.get("model", ckpt)
        problems = _state_dict_mismatch(model, state)
        if problems:
            saved = ckpt.get("model_info")
            saved_info: dict[str, Any] = saved if isinstance(saved, dict) else {}
            raise ValueError(
                f"Checkpoint {path} was written by a different model: it holds "
                f"{_describe_model(state, saved_info)}, but the model is "
                f"{_describe_model(model.state_dict(), model_info(model))}. Differences: "
                + "; ".join(problems)
                + ". Build the same backbone with the same number of classes to load it; for "
                "fit: delete it, or point checkpoint_dir to another folder "
                "(or pass resume=False to fit to start over)."
            )
        model.load_state_dict(state)
    return ckpt


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def _check_scheduler(
    scheduler: LRScheduler | None, optimizer: torch.optim.Optimizer, scheduler_step: str
) -> None:
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}.")
    if scheduler is None:
        return
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError(
            "The scheduler was built for another optimizer: pass that optimizer to fit too "
            "(fit(..., optimizer=opt, scheduler=sched))."
        )
    if scheduler_step == "batch" and isinstance(scheduler, ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau needs the validation loss: use scheduler_step='epoch'.")


def _warn_untrained_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Warn when a trainable parameter is missing from the optimizer: it would never change."""
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_optimizer]
    if missing:
        warnings.warn(
            f"{len(missing)} trainable parameter(s) (e.g. {missing[0]!r}) are not in the optimizer "
            "and will not be updated. Build the optimizer over all the parameters you will "
            "unfreeze (frozen ones are skipped because their grad stays None), or let fit build it.",
            UserWarning,
            stacklevel=4,
        )


def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scheduler: LRScheduler | None = None,
    scheduler_step: Literal["epoch", "batch"] = "epoch",
    device: str | torch.device | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    settings: TrainSettings | None = None,
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each, and return the ``History``.

    Args:
        model: the network; it is moved to ``device``.
        train_loader, val_loader: yield ``(inputs, targets)`` batches.
        epochs: the total number of epochs of the run (a resumed run continues up to it).
        optimizer: defaults to SGD with momentum 0.9 at ``lr`` (the classic PyTorch
            fine-tuning recipe) over **all** parameters. Frozen parameters get no gradient, and
            SGD skips parameters whose grad is None, so they are not touched; including them
            lets ``on_epoch_end`` unfreeze layers later without rebuilding the optimizer.
        lr: learning rate of the default optimizer (ignored when ``optimizer`` is given).
        loss_fn: defaults to ``nn.CrossEntropyLoss()``.
        scheduler: an LR scheduler built on ``optimizer``.
        scheduler_step: ``"epoch"`` steps it after each epoch (``StepLR``,
            ``CosineAnnealingLR(T_max=epochs)``; ``ReduceLROnPlateau`` gets the validation
            loss); ``"batch"`` steps it after each batch (``OneCycleLR`` with
            ``total_steps=epochs * len(train_loader)``).
        device: ``None`` picks cuda > mps > cpu (see :func:`select_device`). On CUDA, training
            uses autocast (bf16, or fp16 with a GradScaler), channels_last memory and
            asynchronous copies; see :func:`device_settings`.
        seed: seeds everything at the start, and each epoch is re-seeded with
            ``epoch_seed(seed, epoch)`` so that shuffling, augmentation and dropout of an epoch
            do not depend on whether the run was resumed. The model's initial weights are
            *not* covered: seed before building the model. (DataLoaders with their own
            ``generator`` are re-seeded too; ``persistent_workers=True`` is not reproducible
            across a resume.)
        checkpoint_dir: when given, ``best.pt`` is written whenever validation accuracy improves
            (model weights, ``epoch``, ``val_acc``, ``meta``) and ``last.pt`` after every epoch
            (model, optimizer, scheduler, scaler, epoch, history, seed, trainable parameters).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists. The checkpoint must
            come from the same model architecture and seed, else ``ValueError``.
        meta: extra JSON-like data for both checkpoints, e.g.
            ``{"num_classes": 10, "class_names": [...], "backbone": "resnet18"}``.
        progress: tqdm bars per epoch and one summary line per epoch.
        on_epoch_end: ``callback(epoch, stats, model)`` called after each epoch with the
            history entry (a copy). It may change the model, e.g. unfreeze a block for gradual
            unfreezing; it runs before ``last.pt`` is written, so a resume sees its changes
            (which parameters are trainable is saved and restored).
        settings: override :func:`device_settings` (e.g. ``device_settings("cpu",
            channels_last=False)``); its device wins over ``device``.

    Distributed (``torchrun`` + ``DistributedDataParallel``, see :mod:`tlcourse.distributed`):
    pass the DDP-wrapped model (prepared with :func:`prepare_model` before wrapping) and a train
    loader with a ``DistributedSampler``; every rank calls ``fit`` with the same arguments. Then
    ``fit`` calls ``sampler.set_epoch(epoch)`` every epoch; re-seeds each rank with its own
    :func:`epoch_seed`; copies rank 0's BatchNorm statistics to the other ranks after each
    training epoch (so every rank validates, and ends with, the weights rank 0 saves); sums
    loss x n, correct and n over the ranks (all-reduce), so the history holds the metrics of the
    whole training set and the whole validation set: exact when each rank validates its own
    disjoint shard (``tlcourse.distributed.eval_loader``, no padding), and still exact (with n
    counted once per rank) when every rank validates the full set. Only rank 0 shows progress
    and writes ``best.pt``/``last.pt`` (of the unwrapped model, so they load without DDP); every
    rank reads ``last.pt`` to resume (the folder must be shared) and they check that they agree;
    a barrier at the end makes the files complete on disk when ``fit`` returns on any rank.
    DDP fixes the set of trainable parameters when it wraps the model, so unfreezing layers in
    ``on_epoch_end`` is not supported under DDP (gradual unfreezing stays a one-device recipe).

    Returns:
        The ``History``. The model is left on ``device``, in eval mode, with the **last**
        epoch's weights; restore the best ones with
        ``load_checkpoint(Path(checkpoint_dir) / "best.pt", model)``.

    Raises:
        ValueError: bad arguments, a label that does not fit the model's head (or, when the
            dataset has ``.classes``, a head with another number of outputs; checked on the
            first batch, before any weight changes), or a ``last.pt`` that belongs to another
            model or seed.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}.")
    seed_everything(seed)
    if settings is None:
        device = device if isinstance(device, torch.device) else select_device(device)
        settings = device_settings(device)
    device = settings.device
    prepare_model(model, settings)
    core = _dist.unwrap(model)  # what checkpoints hold: loads without DDP
    rank, world = _dist.rank(), _dist.world_size()
    progress = progress and rank == 0
    cudnn_before = torch.backends.cudnn.benchmark
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    try:
        return _fit_epochs(
            model, core, train_loader, val_loader, epochs=epochs, optimizer=optimizer, lr=lr,
            loss_fn=loss_fn, scheduler=scheduler, scheduler_step=scheduler_step, settings=settings,
            seed=seed, checkpoint_dir=checkpoint_dir, resume=resume, meta=meta, progress=progress,
            on_epoch_end=on_epoch_end, rank=rank, world=world,
        )
    finally:
        torch.backends.cudnn.benchmark = cudnn_before


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler (a ``DistributedSampler`` reshuffles with it)."""
    seen = set()
    for sampler in (getattr(loader, "sampler", None),
                    getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if sampler is not None and id(sampler) not in seen and callable(getattr(sampler, "set_epoch", None)):
            seen.add(id(sampler))
            sampler.set_epoch(epoch)


def _global_stats(stats: EpochStats, world: int, settings: TrainSettings) -> EpochStats:
    """``stats`` summed over the ranks (the slowest rank's time); itself when not distributed."""
    if world == 1:
        return stats
    loss_sum, correct, n, seconds = _dist.all_reduce(
        [stats.loss * stats.n, round(stats.accuracy * stats.n), stats.n], device=settings.device
    ) + _dist.all_reduce([stats.seconds], op="max", device=settings.device)
    n_total = int(round(n))
    return EpochStats(loss=loss_sum / n_total, accuracy=round(correct) / n_total, n=n_total, seconds=seconds)


def _warn_if_val_not_covered(val_loader: Any, n: int, world: int) -> None:
    try:
        size = len(val_loader.dataset)
    except (AttributeError, TypeError):
        return
    if n not in (size, world * size):
        warnings.warn(
            f"The ranks validated {n} samples in all, but the validation set has {size}: a "
            "DistributedSampler pads (or drops) samples so that every rank gets the same number, "
            "which biases the metrics. Use tlcourse.distributed.eval_loader (disjoint shards, "
            "no padding) or give every rank the full validation set.",
            UserWarning,
            stacklevel=4,
        )


def _fit_epochs(
    model: nn.Module,
    core: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    val_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None,
    lr: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    scheduler: LRScheduler | None,
    scheduler_step: str,
    settings: TrainSettings,
    seed: int,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool,
    meta: dict[str, Any] | None,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    rank: int,
    world: int,
) -> History:
    device = settings.device
    main = rank == 0

    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        _warn_untrained_params(model, optimizer)
    _check_scheduler(scheduler, optimizer, scheduler_step)
    loss_fn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type) if settings.grad_scaler else None

    num_classes = dataset_num_classes(train_loader)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and main:
        _remove_partial_checkpoints(ckpt_dir)
    history = History()
    start_epoch = 1
    if ckpt_dir is not None and resume and (ckpt_dir / "last.pt").exists():
        start_epoch = _resume(ckpt_dir / "last.pt", core, optimizer, scheduler, scaler, seed, history)
        # Say so: a learner who re-runs a cell must not mistake a resumed run for a fresh one.
        done = start_epoch - 1
        left = "nothing left to train" if done >= epochs else f"continuing with epoch {start_epoch}"
        if main:
            print(f"[fit] resumed from {ckpt_dir / 'last.pt'}: {done} epoch(s) already done, {left} "
                  f"(pass resume=False or another checkpoint_dir to start over)")
    if world > 1:
        lowest, highest = _dist.all_reduce([start_epoch], op="min", device=device) + _dist.all_reduce(
            [start_epoch], op="max", device=device)
        if lowest != highest:
            raise ValueError(
                f"The ranks disagree on where to resume (epochs {int(lowest)} to {int(highest)}): "
                "checkpoint_dir must be a folder every rank sees (a shared file system), or pass "
                "resume=False."
            )
    best_val_acc = history.best_val_acc if history.best_val_acc is not None else -1.0

    for epoch in range(start_epoch, epochs + 1):
        # Re-seed from (seed, epoch): the DataLoader draws its shuffle order and worker seeds from
        # the global torch RNG when its iterator is created, so this pins epoch `epoch` to the
        # same batches and augmentations whether or not earlier epochs ran in this process.
        seed_everything(epoch_seed(seed, epoch, rank))
        generator = getattr(train_loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(epoch_seed(seed, epoch, rank))
        _set_sampler_epoch(train_loader, epoch)  # DistributedSampler: this epoch's shuffle
        _set_sampler_epoch(val_loader, epoch)

        lr_now = float(optimizer.param_groups[0]["lr"])
        train = train_loop(
            model, train_loader, loss_fn, optimizer, device,
            scheduler=scheduler if scheduler_step == "batch" else None,
            scaler=scaler, progress=progress, desc=f"epoch {epoch}/{epochs} train",
            num_classes=num_classes, settings=settings,
        )
        if world > 1:
            _dist.broadcast_buffers(core)  # BatchNorm statistics: rank 0's, as in the checkpoint
        val = test_loop(
            model, val_loader, loss_fn, device, progress=progress,
            desc=f"epoch {epoch}/{epochs} val", num_classes=num_classes, settings=settings,
        )
        train, val = _global_stats(train, world, settings), _global_stats(val, world, settings)
        if world > 1 and epoch == start_epoch:
            _warn_if_val_not_covered(val_loader, val.n, world)
        if scheduler is not None and scheduler_step == "epoch":
            if isinstance(scheduler, ReduceLROnPlateau):
                scheduler.step(val.loss)
            else:
                scheduler.step()

        stats = {
            "epoch": epoch,
            "train_loss": train.loss,
            "train_acc": train.accuracy,
            "val_loss": val.loss,
            "val_acc": val.accuracy,
            "seconds": train.seconds + val.seconds,
            "lr": lr_now,
        }
        history.epochs.append(stats)
        if progress:
            tqdm.write(
                f"epoch {epoch}/{epochs}  train loss {train.loss:.4f} acc {train.accuracy:.3f}  "
                f"val loss {val.loss:.4f} acc {val.accuracy:.3f}  ({stats['seconds']:.1f}s)"
            )

        if ckpt_dir is not None and main and val.accuracy > best_val_acc:
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": core.state_dict(),
                    "epoch": epoch,
                    "val_acc": val.accuracy,
                    "meta": dict(meta or {}),
                    "model_info": model_info(core),
                },
                ckpt_dir / "best.pt",
            )
        best_val_acc = max(best_val_acc, val.accuracy)

        if on_epoch_end is not None:
            on_epoch_end(epoch, dict(stats), model)
            _warn_untrained_params(model, optimizer)

        if ckpt_dir is not None and main:
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "epoch": epoch,
                    "history": [dict(e) for e in history.epochs],
                    "seed": seed,
                    "trainable": [n for n, p in core.named_parameters() if p.requires_grad],
                    "meta": dict(meta or {}),
                    "model_info": model_info(core),
                },
                ckpt_dir / "last.pt",
            )
    if world > 1:
        _dist.barrier()  # rank 0's checkpoints are on disk before fit returns anywhere
    model.eval()
    return history


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    seed: int,
    history: History,
) -> int:
    """Restore a run from ``last.pt`` into the given objects; return the next epoch to train."""
    ckpt = load_checkpoint(path, model)  # raises ValueError for another model or a bad file
    if ckpt.get("seed") != seed:
        raise ValueError(
            f"Checkpoint {path} was written with seed={ckpt.get('seed')}, but fit got seed={seed}. "
            "Pass the same seed to continue that run, or delete the checkpoint / use another "
            "checkpoint_dir (or resume=False) to start a new one."
        )
    # Restore which parameters were trainable: on_epoch_end may have unfrozen some.
    if "trainable" in ckpt:
        trainable = set(ckpt["trainable"])
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"Checkpoint {path} has an optimizer/scheduler state that does not fit the ones given "
            f"to fit ({err}). Use the same optimizer setup, or delete the checkpoint / use another "
            "checkpoint_dir."
        ) from err
    history.epochs.extend(dict(e) for e in ckpt.get("history", []))
    return int(ckpt["epoch"]) + 1
