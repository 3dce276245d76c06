"""Run a frozen backbone once over a dataset and keep one vector per image and layer.

The final pooled features (``layer=None``, the vectors the head classifies) or a stage's
feature map, global-average pooled (``layer="blocks.3"``). Several layers come out of one
forward pass (:func:`extract_stage_features`), and the forward stops after the deepest stage
asked for. Device, precision and batch size follow ``runtime.device_settings(..., inference=True)``;
the engine follows :func:`tlcourse.features.engine_settings`: on a CPU the pass runs on ONNX Runtime
(:mod:`tlcourse.features.engine`, exported once per weights, layers and input size), with the
images decoded in the same process (``engine.CPU_INFERENCE_WORKERS`` and ``CPU_DECODE_AHEAD`` say
why); eager PyTorch runs on CUDA/MPS, in bf16, and whenever the export fails (with a one-line
warning saying why). Both functions return an :class:`Extraction`: it unpacks as
``features, labels`` and carries a :class:`ExtractionReport` of how the pass ran.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tlcourse.cpu_threads import ThreadChooser, decoded_batches, engine_threads
from tlcourse.features.engine import (
    WORKER_MIN_BATCHES,
    EngineSettings,
    EngineUnavailable,
    OnnxFeatures,
    decoding_plan,
    engine_settings,
    image_paths,
)
from tlcourse.hooks import capture
from tlcourse.models import backbone_spec, head_of, stage_layers
from tlcourse.runtime import DeviceSettings, device_settings

__all__ = ["HEAP_MMAP_THRESHOLD", "POOLED", "Activations", "Extraction", "ExtractionReport", "Sink", "bound_heap",
           "extract_activations", "extract_features", "extract_stage_features"]

#: The name of the "layer" that is the head's input (the final pooled features).
POOLED = "pooled"

T = TypeVar("T")


@dataclass(frozen=True)
class ExtractionReport:
    """How one extraction ran: the engine, the decoding workers, decoding ahead, the threads used,
    and the samples/s of each thread count timed (eager PyTorch only; empty otherwise)."""

    engine: str
    workers: int
    decode_ahead: bool
    threads: int
    rates: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Extraction(Generic[T]):
    """What an extraction returns: unpacks as ``features, labels``; ``.report`` says how it ran."""

    features: T
    labels: torch.Tensor
    report: ExtractionReport

    def __iter__(self) -> Iterator[Any]:
        yield self.features
        yield self.labels

    def __getitem__(self, index: int) -> Any:
        return (self.features, self.labels)[index]


#: Batches after the warm-up one that time a pass for ``on_rate`` (one batch's time is noisy).
RATE_BATCHES = 3

#: Allocations at least this large get their own memory mapping (returned to the system when freed).
HEAP_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def bound_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; True when it was set.

    glibc raises the threshold to the size of the largest mapped block freed so far (up to 32 MB).
    After an eager PyTorch pass (the advisor's similarity score, a fine-tune) has freed a large
    activation, a pass's per-batch buffers (a decoded batch of 8 images at 224 px is 4.8 MB) come
    from the heap instead, and the heap grew with every batch: memory grew with the folder
    (``python -m benchmarks.fit_memory``). A fixed threshold keeps such buffers in their own
    mappings, which go back to the system when freed. A no-op (False) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False


def global_pool(x: Any) -> torch.Tensor:
    """Global average pooling: (N, C, H, W) -> (N, C), (N, L, C) -> (N, C); vectors pass through."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if x.dim() == 4:
        return x.float().mean(dim=(2, 3))
    if x.dim() == 3:  # token sequences (N, L, C): average the tokens
        return x.float().mean(dim=1)
    return x.float().flatten(1)


def has_backbone_spec(model: nn.Module) -> bool:
    """Whether ``model`` is a registry backbone (or recognised as one)."""
    try:
        backbone_spec(model)
    except ValueError:
        return False
    return True


def _model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):  # create_feature_extractor returns {name: tensor}
        if len(out) != 1:
            raise ValueError(f"The model returns {len(out)} outputs; ask for one layer")
        out = next(iter(out.values()))
    return global_pool(out)


def _as_loader(data: DataLoader | Dataset, settings: DeviceSettings, workers: int,
               num_workers: int | None) -> tuple[Iterable[Any], int | None]:
    """``data`` itself when it is a DataLoader, else an in-order loader of it; and the engine
    threads its decoding asks for (``None``: the engine's own policy).

    ``num_workers=None`` follows the engine's ``workers``, except for loaders too short to repay a
    worker process's start, and for heavy image files (:func:`~tlcourse.features.engine.decoding_plan`).
    """
    if isinstance(data, DataLoader):
        return data, None
    threads = None
    if num_workers is None:
        batches = -(-len(data) // settings.batch_size)  # type: ignore[arg-type]
        num_workers = workers if batches >= WORKER_MIN_BATCHES else 0
        if num_workers == 0 and settings.device.type == "cpu":
            num_workers, threads = decoding_plan(image_paths(data), batches)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=settings.pin_memory)
    return loader, threads


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _engine_features(engine: OnnxFeatures, inputs: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """The engine's features of a batch, or None (after a one-line warning) when it cannot run."""
    try:
        return engine(inputs)
    except Exception as err:  # noqa: BLE001 - whatever failed, eager PyTorch computes the same features
        reason = str(err) if isinstance(err, EngineUnavailable) else f"ONNX Runtime failed ({type(err).__name__}: {err})"
        warnings.warn(f"Feature extraction falls back to eager PyTorch: {reason}", RuntimeWarning, stacklevel=3)
        return None


def _engine_of(settings: DeviceSettings, engine: EngineSettings | str | None, threads: int | None) -> EngineSettings:
    """The engine settings of an extraction: given, named, or the CPU policy; ``threads`` wins."""
    if not isinstance(engine, EngineSettings):
        engine = engine_settings(settings, engine=engine)
    return dataclasses.replace(engine, threads=threads) if threads is not None else engine


#: ``sink(plain, flipped, labels)``: receives each batch's activations (``flipped`` is None without a mirror).
Sink = Callable[[dict[str, torch.Tensor], "dict[str, torch.Tensor] | None", torch.Tensor], None]


@dataclass(frozen=True)
class Activations:
    """What :func:`extract_activations` returns: ``{name: (N, ...)}`` of every image (``plain``)
    and of its mirror image (``flipped``, None without ``mirror``), the labels, how the pass ran
    and its seconds. With a ``sink`` the batches went there, and ``plain``/``flipped`` are empty."""

    plain: dict[str, torch.Tensor]
    flipped: dict[str, torch.Tensor] | None
    labels: torch.Tensor
    report: ExtractionReport
    seconds: float


def _pooled_except(maps: set[str], run: Callable[[torch.Tensor], dict[str, Any]]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``run`` with every output globally pooled except the layers in ``maps`` (kept whole, float)."""
    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: (v[0] if isinstance(v, (tuple, list)) else v).float() if name in maps else global_pool(v)
                for name, v in run(x).items()}
    return forward


def _targets(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """``{name: module}`` whose output (a stage) or input (``"pooled"``: the head) is recorded."""
    targets: dict[str, nn.Module] = dict(stage_layers(model, [n for n in names if n != POOLED]))
    if POOLED in names:
        targets[POOLED] = head_of(model)
    return targets


@contextlib.contextmanager
def _capture(model: nn.Module, layers: Sequence[str | None],
             maps: Collection[str] = ()) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """A function ``x -> {layer: features}`` for one forward pass each: global-average pooled, except
    the stages in ``maps``, kept as whole feature maps (float).

    ``None`` (or ``"pooled"``) is the input of the model's head for a registry backbone, and the
    model's own output for any other module (for example ``nn.Sequential(*children[:-1])``).
    The forward stops once every requested layer has run.
    """
    names = [POOLED if layer is None else layer for layer in layers]
    if not has_backbone_spec(model):
        if maps:
            raise ValueError("Whole feature maps come from the stages of a registry backbone "
                             "(tlcourse.models.build_backbone)")
        if any(n != POOLED for n in names):
            raise ValueError("Stage features need a registry backbone (tlcourse.models.build_backbone)")
        yield lambda x: {POOLED: _model_output(model, x)}
        return
    if POOLED in maps:
        raise ValueError("Whole feature maps come from the stages of a registry backbone (tlcourse.models.build_backbone)")
    targets = _targets(model, names)
    with capture(model, targets, inputs={POOLED} & set(targets), pool=None if maps else global_pool,
                 stop_after=True) as run:
        yield _pooled_except(set(maps), run) if maps else run


def extract_activations(
    model: nn.Module,
    data: DataLoader | Dataset,
    layers: Sequence[str | None],
    *,
    maps: Sequence[str] = (),
    mirror: bool = False,
    sink: Sink | None = None,
    on_rate: Callable[[float], None] | None = None,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool | str = True,
    threads: int | None = None,
) -> Activations:
    """The course's one frozen-backbone pass: activations of several layers of every image.

    ``layers`` holds stage names and/or ``None`` (the head's input, keyed ``"pooled"``); each is
    global-average pooled to one vector per image, except the stages named in ``maps``, kept as
    whole feature maps (float32). ``mirror=True`` sends every batch together with its horizontal
    flip (one decode, two views) and returns the flip's activations as ``flipped``. ``sink``
    receives each batch instead of memory (the disk cache writes it to a file, so memory does
    not grow with the dataset); ``on_rate`` gets the seconds per image of the :data:`RATE_BATCHES`
    batches after the warm-up one (fewer in a shorter pass; the first batch when there is only
    one), waiting for their decoding included, to announce the pass's length.

    The model runs in eval mode under ``torch.inference_mode`` on ``device`` (moved there, and
    back to where it was afterwards) with the device's settings (channels_last, autocast).
    ``engine``: an :class:`EngineSettings`, an engine's name or ``None`` (the CPU policy of
    :func:`engine_settings` for ``device``): on a CPU in float32, ONNX Runtime in slices of
    ``engine.engine_batch`` images while a background thread decodes the next batch
    (``engine.decode_ahead``) or ``engine.workers`` DataLoader workers decode (``num_workers=None``;
    an explicit count wins); eager PyTorch on CUDA/MPS, in bf16 and as the fallback, its CPU thread
    count chosen by timing the first batches (:class:`~tlcourse.cpu_threads.ThreadChooser`) unless
    ``threads`` (or ``engine.threads``) fixes it. ``progress`` may be a progress bar's label.
    """
    start = time.perf_counter()
    settings = device_settings(device, inference=True, batch_size=batch_size)
    knobs = _engine_of(settings, engine, threads)
    cpu = settings.device.type == "cpu"
    chooser = ThreadChooser(knobs.threads, cpu=cpu)
    loader, plan_threads = _as_loader(data, settings, knobs.workers, num_workers)
    workers = int(getattr(loader, "num_workers", 0))
    names = [POOLED if name is None else name for name in layers]
    whole = set(maps)
    unknown = whole - set(names)
    if unknown:
        raise ValueError(f"maps names layers that are not extracted: {sorted(unknown)}; add them to layers")
    plain: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    flipped: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels: list[torch.Tensor] = []
    was_training = model.training
    home = next(iter(model.parameters()), torch.empty(0)).device
    settings.prepare(model.eval())
    use_engine = cpu and knobs.engine == "onnxruntime" and settings.amp_dtype is None
    ahead = use_engine and knobs.decode_ahead and workers == 0
    onnx: OnnxFeatures | None = None
    total = _length(loader)
    try:
        with torch.inference_mode(), settings.autocast(), _capture(model, layers, whole) as run, \
                decoded_batches(loader, ahead=ahead) as batches:
            if use_engine:
                onnx = OnnxFeatures(model, names, run, threads=engine_threads(workers, knobs.threads or plan_threads),
                                    spin=workers == 0 and not ahead, batch=knobs.engine_batch)
            desc = progress if isinstance(progress, str) else "features"
            done_at = time.perf_counter()  # the end of the warm-up batch: the timed batches include their decoding
            timed = min(RATE_BATCHES, total - 1) if total is not None and total > 1 else RATE_BATCHES
            seen = 0  # images in the timed batches so far
            for step, (inputs, targets) in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False,
                                                          total=total)):
                x = torch.cat([inputs, inputs.flip(-1)]) if mirror else inputs
                found = _engine_features(onnx, x) if onnx is not None else None
                if found is None:
                    onnx = None
                    chooser.before_batch()
                    found = run(settings.to_device(x))
                half = len(inputs)
                view = {name: found[name][:half].float().cpu() for name in names}
                mirrored = {name: found[name][half:].float().cpu() for name in names} if mirror else None
                target = torch.as_tensor(targets).long().cpu()
                labels.append(target)
                if sink is not None:
                    sink(view, mirrored, target)
                else:
                    for name in names:
                        plain[name].append(view[name])
                        if mirrored is not None:
                            flipped[name].append(mirrored[name])
                if onnx is None:
                    chooser.after_batch(len(x))
                seen += half if step >= 1 else 0
                if on_rate is not None and (step == timed or total == 1):
                    on_rate((time.perf_counter() - done_at) / max(1, seen or half))
                if step == 0:
                    done_at = time.perf_counter()
    finally:
        eager_threads = chooser.restore()
        model.train(was_training)
        if home != settings.device:
            model.to(home)
    if onnx is not None:
        report = ExtractionReport("onnxruntime", workers, ahead, onnx.threads)
    else:
        report = ExtractionReport("eager", workers, ahead, eager_threads, dict(chooser.rates))
    if not labels:
        raise ValueError("No samples to extract features from (empty dataset or loader)")
    if sink is not None:
        return Activations({}, {} if mirror else None, torch.cat(labels), report, time.perf_counter() - start)
    return Activations({n: torch.cat(v) for n, v in plain.items()},
                       {n: torch.cat(v) for n, v in flipped.items()} if mirror else None,
                       torch.cat(labels), report, time.perf_counter() - start)


def extract_stage_features(
    model: nn.Module,
    data: DataLoader | Dataset,
    layers: Sequence[str | None],
    *,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> Extraction[dict[str, torch.Tensor]]:
    """Features of several layers from one pass over ``data``: ``({layer: (N, D)}, labels (N,))``.

    ``layers`` holds stage names (``backbone_spec(model).stage_names``) and/or ``None`` for the
    final pooled features (keyed ``"pooled"``). Stage feature maps are global-average pooled, so
    each image gives one vector per stage. The pass is :func:`extract_activations` (device,
    engine, threads as there); the returned :class:`Extraction` unpacks as ``features, labels``;
    its ``report`` records how the pass ran.
    """
    found = extract_activations(model, data, layers, batch_size=batch_size, device=device, engine=engine,
                                num_workers=num_workers, progress=progress, threads=threads)
    return Extraction(found.plain, found.labels, found.report)


def extract_features(
    model: nn.Module,
    data: DataLoader | Dataset,
    *,
    layer: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | DeviceSettings | None = None,
    engine: EngineSettings | str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> Extraction[torch.Tensor]:
    """Features (N, D) float32 and labels (N,) int64 of every sample in ``data`` (in order).

    ``layer=None`` gives the final pooled features, the vectors the head classifies; a stage name
    (e.g. ``"blocks.3"``) gives that stage's feature map, global-average pooled to one vector per
    image. ``data`` is a Dataset (batched here, in order) or a DataLoader (used as it is).
    ``engine`` as in :func:`extract_stage_features`; the result unpacks as ``features, labels``
    and carries ``.report``.
    """
    found = extract_stage_features(model, data, [layer], batch_size=batch_size, device=device, engine=engine,
                                   num_workers=num_workers, progress=progress, threads=threads)
    return Extraction(found.features[POOLED if layer is None else layer], found.labels, found.report)
