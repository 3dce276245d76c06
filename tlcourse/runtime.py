"""Where and how code runs: device, seeds, precision, memory format and CPU threads.

One settings object, :class:`DeviceSettings`, serves training, evaluation, feature extraction,
the notebooks and the benchmarks. Make one with :func:`device_settings`. The training loop
does not branch on the hardware; it asks the settings object to move a batch
(:meth:`DeviceSettings.to_device`), to run the forward pass (:meth:`DeviceSettings.autocast`)
and to take the optimizer step (:meth:`DeviceSettings.step`).

The CPU thread helpers live in :mod:`tlcourse.cpu_threads` and are re-exported here:
:func:`apply_thread_policy` (a notebook's setup), :func:`one_thread` (tiny tensor ops),
:func:`decoded_batches` (decoding beside an inference engine), :class:`ThreadChooser` (a long eager
extraction picks its thread count by timing) and :func:`engine_threads`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from tlcourse.cpu_threads import (
    LAST_EXTRACTION,
    ThreadChooser,
    apply_thread_policy,
    batches_on_one_thread,
    decoded_batches,
    engine_threads,
    one_thread,
)

__all__ = [
    "CPU_BF16_MIN_SIDE",
    "CPU_CHANNELS_LAST",
    "CPU_DECODE_AHEAD",
    "CPU_ENGINE",
    "CPU_ENGINE_BATCH",
    "CPU_INFERENCE_WORKERS",
    "ENGINES",
    "DeviceSettings",
    "LAST_EXTRACTION",
    "ThreadChooser",
    "WORKER_MIN_BATCHES",
    "apply_thread_policy",
    "batches_on_one_thread",
    "bf16_pays_off",
    "decoded_batches",
    "cpu_supports_bf16",
    "device_settings",
    "engine_threads",
    "epoch_seed",
    "make_loader",
    "one_thread",
    "seed_everything",
    "select_device",
]

#: Whether the CPU uses channels_last memory (NHWC); measured faster by ``benchmarks/``.
CPU_CHANNELS_LAST = True

#: The engines a frozen backbone's forward pass can run on.
ENGINES = ("eager", "onnxruntime")

#: The CPU's inference engine for frozen backbones (``tlcourse.features.engine``); eager
#: PyTorch stays the route on CUDA/MPS and the fallback when an export fails.
CPU_ENGINE = "onnxruntime"

#: CPU training on a bf16-capable CPU (:func:`cpu_supports_bf16`) runs under bf16 autocast for
#: models where it pays off (:func:`bf16_pays_off`: no depthwise convolutions) and image batches
#: at least this many pixels on a side; ``None``: never by default (``bf16=True`` asks for it).
#: Measured by ``python -m benchmarks --only training_steps`` on the course's 2-core CPU: ResNet-18
#: trains 1.4x faster in bf16 at 64 px and 3.2x at 224 px; EfficientNet-Lite0 0.6-1.0x (slower).
CPU_BF16_MIN_SIDE: int | None = 64

#: Decode the next batch on a background thread while ONNX Runtime computes this one (whose
#: threads then stop spinning between operators). Off: on the course's 2-core CPU it was no faster
#: at 224 px and slower at 160 px (``python -m benchmarks --only extraction`` has both rows); the
#: engine needs both cores. Turn it on where cores are to spare.
CPU_DECODE_AHEAD = False

#: ONNX Runtime runs a CPU batch in slices of this many images: the activations of a few images
#: stay in the cache (measured on 2 cores, Lite0: 79 -> 98 img/s at 224 px and 136 -> 160 at
#: 160 px, end to end, against whole batches of 16). ``None``: the whole batch at once.
CPU_ENGINE_BATCH: int | None = 4

#: DataLoader workers that decode images while a CPU inference engine computes; a worker costs
#: a process start, so loaders with fewer batches than ``WORKER_MIN_BATCHES`` decode in-process.
#: 0: on a 2-core CPU the engine on every core beat a decoding worker beside it (the
#: ``extraction`` benchmark has both rows); raise it on machines with cores to spare.
CPU_INFERENCE_WORKERS = 0
WORKER_MIN_BATCHES = 4


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
        threads: CPU threads for inference; ``None`` lets :class:`ThreadChooser` time it
            (eager) or :func:`engine_threads` choose it (ONNX Runtime).
        engine: ``"onnxruntime"`` (frozen-backbone inference on a CPU) or ``"eager"`` PyTorch.
        workers: DataLoader workers that decode while the model computes (inference loaders).
        bf16_min_side: bf16 autocast for 4-D batches whose smaller side is at least this many
            pixels (the CPU's size-dependent policy); ``None``: ``amp_dtype`` alone decides.
        decode_ahead: decode the next batch on a background thread while the inference engine
            computes this one (:func:`decoded_batches`).
        engine_batch: the inference engine's slice of a batch (``None``: the whole batch).
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    channels_last: bool = False
    non_blocking: bool = False
    pin_memory: bool = False
    batch_size: int = 32
    cudnn_benchmark: bool = False
    threads: int | None = None
    engine: str = "eager"
    workers: int = 0
    bf16_min_side: int | None = None
    decode_ahead: bool = False
    engine_batch: int | None = None
    scaler: torch.amp.GradScaler | None = field(default=None, repr=False, compare=False)
    _last_side: int = field(default=0, init=False, repr=False, compare=False)
    _bf16_model: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown engine {self.engine!r}; use one of {ENGINES}")
        if self.grad_scaler and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def amp(self) -> bool:
        """Whether autocast (mixed precision) is on for every batch (not the size-dependent bf16)."""
        return self.amp_dtype is not None

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the latest batch: ``amp_dtype``, else bf16 when the model given to
        :meth:`prepare` gains from it (:func:`bf16_pays_off`) and that batch's smaller side reaches
        ``bf16_min_side`` (the loops move a batch before its forward pass)."""
        if (self.amp_dtype is None and self.bf16_min_side is not None and self._bf16_model
                and self._last_side >= self.bf16_min_side):
            return torch.bfloat16
        return self.amp_dtype

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context the forward pass and the loss run in (mixed precision, or nothing)."""
        dtype = self.autocast_dtype()
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def to_device(self, batch: Any) -> Any:
        """A tensor on the device (channels_last for 4-D image batches when set); others as is.

        A 4-D batch's smaller side is remembered for the size-dependent bf16 policy.
        """
        if not isinstance(batch, torch.Tensor):
            return batch
        if batch.dim() == 4:
            self._last_side = int(min(batch.shape[-2:]))
        if self.channels_last and batch.dim() == 4:
            return batch.to(self.device, non_blocking=self.non_blocking, memory_format=torch.channels_last)
        return batch.to(self.device, non_blocking=self.non_blocking)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass and optimizer step, through the loss scaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place), in channels_last memory when set, and note
        whether the CPU's bf16 policy applies to it (:func:`bf16_pays_off`).

        A ``DistributedDataParallel`` model must be prepared before wrapping; here it is checked.
        """
        self._bf16_model = bf16_pays_off(model.module if isinstance(model, nn.parallel.DistributedDataParallel)
                                         else model)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            wrong = [n for n, p in model.module.named_parameters() if p.device != self.device]
            if wrong:
                raise ValueError(
                    f"The DistributedDataParallel model has parameters on another device than "
                    f"{self.device} (e.g. {wrong[0]}): prepare the model before wrapping it, "
                    "or use tlcourse.distributed.wrap."
                )
            return model
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def bf16_pays_off(model: nn.Module) -> bool:
    """Whether bf16 autocast speeds up training ``model`` on a CPU with native bf16: when it has
    no grouped (depthwise) convolutions.

    Dense convolutions become bf16 matrix products, about twice as fast; oneDNN's bf16 backward
    pass of a depthwise convolution is slower than float32 (measured: 1.7-3.7x slower), and
    depthwise-separable networks (EfficientNet, MobileNet) are mostly such layers.
    """
    return not any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules())


def device_settings(
    device: str | torch.device | DeviceSettings | None = None,
    *,
    inference: bool = False,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    bf16: bool | None = None,
    threads: int | None = None,
    engine: str | None = None,
    workers: int | None = None,
) -> DeviceSettings:
    """The settings for ``device`` (``None``/``"auto"``: :func:`select_device`).

    CUDA: bf16 autocast (fp16 with a loss scaler before Ampere), channels_last, pinned memory
    and asynchronous copies, cuDNN benchmark. CPU: channels_last; training runs float32, with
    bf16 autocast for inputs of at least :data:`CPU_BF16_MIN_SIDE` px where
    :func:`cpu_supports_bf16` and for models where :func:`bf16_pays_off` (``bf16=True``: always,
    ``False``: never); inference runs float32
    on :data:`CPU_ENGINE` in slices of :data:`CPU_ENGINE_BATCH` images, decoding ahead on a thread
    (:data:`CPU_DECODE_AHEAD`) or in :data:`CPU_INFERENCE_WORKERS` workers (``bf16=True`` means
    eager bf16 autocast).
    MPS: float32. ``inference=True`` gives the batch size for forward passes only (no loss
    scaler). A ``DeviceSettings`` passed in is returned as it is, with ``batch_size`` and
    ``threads`` applied when given.
    """
    if isinstance(device, DeviceSettings):
        changes = {k: v for k, v in (("batch_size", batch_size), ("threads", threads)) if v is not None}
        return dataclasses.replace(device, **changes) if changes else device
    device = device if isinstance(device, torch.device) else select_device(device)
    cuda, cpu = device.type == "cuda", device.type == "cpu"
    amp_dtype = amp_settings(device)[1]
    if cpu and bf16:
        amp_dtype = torch.bfloat16
    bf16_min_side = None
    if cpu and bf16 is None and not inference and cpu_supports_bf16() and CPU_BF16_MIN_SIDE is not None:
        bf16_min_side = CPU_BF16_MIN_SIDE
    if engine is None:
        engine = CPU_ENGINE if cpu and inference and amp_dtype is None else "eager"
    if workers is None:
        workers = CPU_INFERENCE_WORKERS if cpu and inference and _workers_pay_off() else 0
    cpu_engine = cpu and inference and engine == "onnxruntime"
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
        threads=threads,
        engine=engine,
        workers=int(workers),
        bf16_min_side=bf16_min_side,
        decode_ahead=cpu_engine and CPU_DECODE_AHEAD and not workers,
        engine_batch=CPU_ENGINE_BATCH if cpu_engine else None,
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


def _workers_pay_off() -> bool:
    """A decoding worker helps with a spare core, and only where workers fork: other start
    methods pickle the dataset, which fails for classes defined in a notebook."""
    return (os.cpu_count() or 1) > 1 and multiprocessing.get_all_start_methods()[0] == "fork"
