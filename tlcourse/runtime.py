"""Where and how code runs: device, seeds, precision, memory format and CPU threads.

One settings object, :class:`DeviceSettings`, says where and in which precision a model runs, for
training, evaluation and feature extraction alike. Make one with :func:`device_settings`. The
training loop asks it to move a batch (:meth:`DeviceSettings.to_device`) and to run the forward
pass (:meth:`DeviceSettings.autocast`); precision is decided when the settings are made, from the
arguments given, never from what ran before. How a frozen backbone's forward pass runs on a CPU
(ONNX Runtime or eager, decoding workers, threads) is the feature extractor's own business:
:class:`tlcourse.features.EngineSettings`.

Two CPU thread helpers a notebook's setup uses are re-exported here from :mod:`tlcourse.cpu_threads`
(their home, where the extraction's thread helpers live too): :func:`apply_thread_policy` and
:func:`one_thread` (tiny tensor ops).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tlcourse.cpu_threads import apply_thread_policy, one_thread

__all__ = [
    "CPU_CHANNELS_LAST",
    "DeviceSettings",
    "apply_thread_policy",
    "bf16_pays_off",
    "cpu_supports_bf16",
    "device_settings",
    "epoch_seed",
    "make_loader",
    "one_thread",
    "seed_everything",
    "select_device",
]

#: Whether the CPU uses channels_last memory (NHWC); measured faster by ``benchmarks/``.
CPU_CHANNELS_LAST = True


# --------------------------------------------------------------------------------------------
# Device and seeds
# --------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``cuda`` if present, else ``mps`` (Apple silicon), else ``cpu``.

    ``preferred`` may be ``None``/``"auto"`` (choose as above), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or ``"mps"``. Asking for a device that is missing warns and returns the CPU,
    so the same notebook runs everywhere. A name that is no device at all raises ``ValueError``.
    """
    if preferred is None or str(preferred).lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(preferred)
    except RuntimeError as err:
        raise ValueError(
            f"Unknown device {preferred!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from err
    missing = None
    if device.type == "cuda" and not torch.cuda.is_available():
        missing = "CUDA is not available (no NVIDIA GPU or a CPU-only PyTorch build)"
    elif device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        missing = f"only {torch.cuda.device_count()} CUDA device(s) exist"
    elif device.type == "mps" and not _mps_available():
        missing = "MPS is not available (it needs Apple silicon and macOS 12.3+)"
    if missing:
        warnings.warn(f"Device {preferred!r} was requested but {missing}; falling back to 'cpu'.",
                      UserWarning, stacklevel=2)
        return torch.device("cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU) with ``seed``.

    On the CPU this makes a run repeatable. It does not turn on deterministic algorithms, which
    make some GPU kernels raise: the course prefers speed to bit-exact repeats on a GPU.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy only takes 32-bit seeds
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of ``epoch`` (1-based) of a run started with ``seed``.

    A hash of the pair, so neighbouring seeds do not share epochs. In a distributed run each
    ``rank`` other than 0 gets its own stream; rank 0 gets the single-process seed.
    """
    key = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), read from the CPU flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def amp_settings(device: torch.device) -> tuple[bool, torch.dtype | None]:
    """Mixed precision on ``device`` as ``(enabled, dtype)``: bf16 on Ampere and newer GPUs,
    fp16 (with loss scaling) on older ones, float32 on the CPU and MPS."""
    if device.type == "cuda":
        return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return False, None


# --------------------------------------------------------------------------------------------
# The settings object
# --------------------------------------------------------------------------------------------


@dataclass
class DeviceSettings:
    """How models run on one device; the loops and the feature extractor ask it, never branch.

    Attributes:
        device: where the model and the batches go.
        amp_dtype: the autocast dtype, or ``None`` for float32.
        grad_scaler: scale the loss (fp16 only, whose small gradients would underflow).
        channels_last: NHWC memory for the model and every 4-D batch.
        non_blocking: asynchronous host-to-device copies (with pinned memory).
        pin_memory: what loaders built by :func:`make_loader` use.
        batch_size: a starting batch size for this device and purpose.
        cudnn_benchmark: let cuDNN time its algorithms for fixed input shapes.

    The CPU inference engine's knobs are not here: :class:`tlcourse.features.EngineSettings`.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    channels_last: bool = False
    non_blocking: bool = False
    pin_memory: bool = False
    batch_size: int = 32
    cudnn_benchmark: bool = False
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.grad_scaler and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def amp(self) -> bool:
        """Whether the forward pass runs under autocast (mixed precision)."""
        return self.amp_dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass and the loss run in (mixed precision, or nothing)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Any) -> Any:
        """A tensor on the device (channels_last for 4-D image batches when set); others as is."""
        if not isinstance(batch, torch.Tensor):
            return batch
        if self.channels_last and batch.dim() == 4:
            return batch.to(self.device, non_blocking=self.non_blocking, memory_format=torch.channels_last)
        return batch.to(self.device, non_blocking=self.non_blocking)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place), in channels_last memory when set.

        A ``DistributedDataParallel`` model must be prepared before wrapping; here it is checked.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            wrong = [n for n, p in model.module.named_parameters() if p.device != self.device]
            if wrong:
                raise ValueError(
                    f"The DistributedDataParallel model has parameters on another device than "
                    f"{self.device} (e.g. {wrong[0]}): prepare the model before wrapping it, "
                    "or use tlcourse.experiments.distributed.wrap."
                )
            return model
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def bf16_pays_off(model: nn.Module) -> bool:
    """Whether ``device_settings(..., bf16=True)`` is worth asking for when training ``model`` on
    a CPU with native bf16 (:func:`cpu_supports_bf16`): when it has no grouped (depthwise)
    convolutions.

    Dense convolutions become bf16 matrix products, several times faster; oneDNN's bf16 backward
    pass of a depthwise convolution is slower than float32, and depthwise-separable networks
    (EfficientNet, MobileNet) are mostly such layers. The README's Performance section has the
    measurements (``python -m benchmarks --only training_steps``).
    """
    return not any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules())


def device_settings(
    device: str | torch.device | DeviceSettings | None = None,
    *,
    inference: bool = False,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    bf16: bool | None = None,
) -> DeviceSettings:
    """The settings for ``device`` (``None``/``"auto"``: :func:`select_device`).

    ``bf16`` is the precision, decided here and nowhere else. ``None`` (the default) is the
    device's default: on CUDA, bf16 autocast (fp16 with a loss scaler before Ampere); on the CPU
    and MPS, float32. ``True`` asks for bf16 autocast (on a CPU it pays off for dense networks on
    CPUs with native bf16: :func:`bf16_pays_off`, :func:`cpu_supports_bf16`); ``False`` forces
    float32. CUDA also gets channels_last, pinned memory, asynchronous copies and cuDNN benchmark;
    the CPU gets channels_last. ``inference=True`` gives the batch size for forward passes only
    (and no loss scaler); which engine runs them on a CPU is :func:`tlcourse.features.engine_settings`'
    choice. A ``DeviceSettings`` passed in is returned as it is, with ``batch_size`` applied when
    given (a new object: the one passed in is never changed).
    """
    if isinstance(device, DeviceSettings):
        return dataclasses.replace(device, batch_size=batch_size) if batch_size is not None else device
    device = device if isinstance(device, torch.device) else select_device(device)
    cuda, cpu = device.type == "cuda", device.type == "cpu"
    amp_dtype = amp_settings(device)[1]
    if bf16 is not None:
        amp_dtype = torch.bfloat16 if bf16 else None
    if channels_last is None:
        channels_last = cuda or (cpu and CPU_CHANNELS_LAST)
    if inference:
        default_batch = {"cuda": 256, "mps": 64}.get(device.type, 16)
    else:
        default_batch = {"cuda": 128, "mps": 64}.get(device.type, 32)
    return DeviceSettings(
        device=device,
        amp_dtype=amp_dtype,
        grad_scaler=not inference and amp_dtype == torch.float16,
        channels_last=bool(channels_last),
        non_blocking=cuda,
        pin_memory=cuda,
        batch_size=int(batch_size or default_batch),
        cudnn_benchmark=cuda,
    )


def make_loader(
    dataset: Dataset,
    settings: DeviceSettings,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    sampler: Sampler[int] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` that follows ``settings`` (batch size, pinned memory on CUDA).

    Workers are not persistent, so ``fit``'s per-epoch re-seeding reaches them. Other keyword
    arguments (``num_workers``, ``generator``, ``drop_last``...) go to ``DataLoader``.
    """
    return DataLoader(dataset, batch_size=batch_size or settings.batch_size,
                      shuffle=shuffle if sampler is None else False, sampler=sampler,
                      pin_memory=settings.pin_memory, **kwargs)

