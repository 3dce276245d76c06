"""The CPU inference engine of a frozen backbone: its settings, and ONNX Runtime to run it.

:class:`EngineSettings` holds how feature extraction runs a frozen backbone's forward pass
(which engine, its threads and slices, who decodes the images); :func:`engine_settings` makes
them from the CPU policy below. Training never reads them: its settings are
:class:`tlcourse.runtime.DeviceSettings`.

A frozen backbone computes the same function on every batch, so its forward pass (up to the
requested stages, pooled) is exported to ONNX once per weights, layers and input size, kept under
``build/onnx/`` (written atomically, keyed like the feature cache) and run with ONNX Runtime,
whose CPU kernels beat eager PyTorch's float32 path. The export is checked against the eager
forward pass on the first batch. Anything that goes wrong (no onnxruntime, an operator the
exporter does not know, a mismatch) ends in :class:`EngineUnavailable`, and the caller falls back
to eager PyTorch with a one-line warning. A cached file ONNX Runtime cannot load is exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
import torch
from torch import nn

from tlcourse._io import atomic_path
from tlcourse.models import backbone_spec, state_dict_fingerprint
from tlcourse.paths import cache_dir
from tlcourse.runtime import DeviceSettings, select_device

__all__ = ["CPU_DECODE_AHEAD", "CPU_ENGINE", "CPU_ENGINE_BATCH", "CPU_INFERENCE_WORKERS", "ENGINES", "ENGINE_FORMAT",
           "PRECISIONS", "WORKER_MIN_BATCHES", "EngineSettings", "EngineUnavailable", "OnnxFeatures", "cpu_session",
           "engine_key", "engine_settings", "export_features", "int8_path", "onnx_path", "quantize_int8",
           "release_sessions"]

#: The engines a frozen backbone's forward pass can run on.
ENGINES = ("eager", "onnxruntime")

#: The numeric formats ONNX Runtime can run a frozen backbone in: ``"int8"`` is the float32 export
#: statically quantized by :func:`quantize_int8` (QDQ, per-channel weights, activations calibrated
#: on training images), which uses the CPU's int8 dot products (VNNI) where it has them.
PRECISIONS = ("float32", "int8")

#: The CPU's inference engine for frozen backbones; eager PyTorch stays the route on CUDA/MPS, in
#: bf16, and the fallback when an export fails.
CPU_ENGINE = "onnxruntime"

#: Decode the next batch on a background thread while ONNX Runtime computes this one (whose
#: threads then stop spinning between operators). Off: on the course's 2-core CPU it was no faster
#: at 224 px and slower at 160 px (``python -m benchmarks --only extraction`` has both rows); the
#: engine needs both cores. Turn it on where cores are to spare: ``engine_settings(decode_ahead=True)``.
CPU_DECODE_AHEAD = False

#: ONNX Runtime runs a CPU batch in slices of this many images, so the activations of a few
#: images stay in the cache; docs/performance.md has the measurement
#: (``python -m benchmarks --only extraction``). ``None``: the whole batch at once.
CPU_ENGINE_BATCH: int | None = 4

#: DataLoader workers that decode images while a CPU inference engine computes; a worker costs
#: a process start, so loaders with fewer batches than ``WORKER_MIN_BATCHES`` decode in-process.
#: 0: on a 2-core CPU the engine on every core beat a decoding worker beside it (the
#: ``extraction`` benchmark has both rows); ask for more with ``engine_settings(workers=N)``.
CPU_INFERENCE_WORKERS = 0
WORKER_MIN_BATCHES = 4

#: Image files at least this big on average (a phone's photo) take longer to decode, even in
#: draft mode, than the engine takes to compute their features, so their loaders
#: decode in one worker process per core while the engine keeps every core (:func:`decoding_plan`;
#: measured by ``python -m benchmarks --only headline``, section "Phone-sized photos").
HEAVY_DECODE_BYTES = 1 << 20

#: Bumped when the exported graph's meaning changes: older files are then ignored.
ENGINE_FORMAT = 1
#: The ONNX opset of the exports (every ONNX Runtime since 1.12 runs it).
OPSET = 17
#: Largest difference allowed between exported and eager features (absolute and relative).
TOLERANCE = 1e-4

#: Sessions kept in this process, ``{(file, its mtime, threads, spin): session}``: a notebook that
#: extracts train, validation and test splits loads the graph once. The oldest goes past the limit.
_SESSIONS: dict[tuple[str, int, int, bool], Any] = {}
_MAX_SESSIONS = 4

#: ``x -> {layer: pooled features}``: one forward pass of the backbone (``extract._capture``).
Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class EngineSettings:
    """How feature extraction runs a frozen backbone's forward pass (made by :func:`engine_settings`).

    Attributes:
        engine: ``"onnxruntime"`` (a CPU in float32) or ``"eager"`` PyTorch (anywhere).
        threads: CPU threads; ``None`` lets :func:`tlcourse.cpu_threads.engine_threads` choose
            them (ONNX Runtime) or :class:`tlcourse.cpu_threads.ThreadChooser` time them (eager).
        workers: DataLoader workers that decode while the engine computes.
        decode_ahead: decode the next batch on a background thread meanwhile instead.
        engine_batch: ONNX Runtime's slice of a batch (``None``: the whole batch).
        precision: ``"float32"`` or ``"int8"`` (ONNX Runtime only: the graph quantized by
            :func:`quantize_int8`, which needs calibration images; see :class:`OnnxFeatures`).
    """

    engine: str = "eager"
    threads: int | None = None
    workers: int = 0
    decode_ahead: bool = False
    engine_batch: int | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"Unknown engine {self.engine!r}; use one of {ENGINES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; use one of {PRECISIONS}")
        if self.precision == "int8" and self.engine != "onnxruntime":
            raise ValueError("precision='int8' runs on ONNX Runtime only: use engine='onnxruntime' (a CPU)")


def _workers_pay_off() -> bool:
    """A decoding worker helps with a spare core, and only where workers fork: other start
    methods pickle the dataset, which fails for classes defined in a notebook."""
    return (os.cpu_count() or 1) > 1 and multiprocessing.get_all_start_methods()[0] == "fork"


def engine_settings(
    device: str | torch.device | DeviceSettings | None = None,
    *,
    engine: str | None = None,
    threads: int | None = None,
    workers: int | None = None,
    decode_ahead: bool | None = None,
    engine_batch: int | None | EllipsisType = ...,
    precision: str = "float32",
) -> EngineSettings:
    """The inference engine's settings for ``device`` (a ``DeviceSettings`` brings its precision).

    Each argument left out follows the CPU policy: on a CPU in float32, :data:`CPU_ENGINE` in
    slices of :data:`CPU_ENGINE_BATCH` images (``engine_batch=...``), decoding ahead on a thread
    (:data:`CPU_DECODE_AHEAD`) or in :data:`CPU_INFERENCE_WORKERS` workers; eager PyTorch on a
    GPU, on MPS and in bf16 (ONNX Runtime runs only on the CPU, only in float32).
    ``precision="int8"`` asks for the statically quantized graph (ONNX Runtime on a CPU only).
    """
    settings = device if isinstance(device, DeviceSettings) else None
    if settings is not None:
        where = settings.device
    else:
        where = device if isinstance(device, torch.device) else select_device(device)  # type: ignore[arg-type]
    cpu = where.type == "cpu"
    float32 = settings is None or settings.amp_dtype is None  # a device name: its default, float32 on a CPU
    if engine is None:
        engine = CPU_ENGINE if cpu and float32 else "eager"
    if workers is None:
        workers = CPU_INFERENCE_WORKERS if cpu and _workers_pay_off() else 0
    on_engine = cpu and engine == "onnxruntime"
    if decode_ahead is None:
        decode_ahead = on_engine and CPU_DECODE_AHEAD and not workers
    if engine_batch is ...:
        engine_batch = CPU_ENGINE_BATCH if on_engine else None
    return EngineSettings(engine=engine, threads=threads, workers=int(workers), decode_ahead=bool(decode_ahead),
                          engine_batch=engine_batch, precision=precision)


def image_paths(data: Any) -> list[str]:
    """The files of an image dataset (an ``ImageFolder``-like ``samples`` list, possibly inside a
    ``Subset``), in order; ``[]`` when ``data`` does not say which files it reads."""
    indices = None
    if isinstance(getattr(data, "indices", None), Sequence) and hasattr(data, "dataset"):
        indices, data = list(data.indices), data.dataset
    samples = getattr(data, "samples", None)
    if not isinstance(samples, Sequence) or not samples or not isinstance(samples[0], tuple):
        return []
    paths = [str(sample[0]) for sample in samples]
    return [paths[i] for i in indices] if indices is not None else paths


def decoding_plan(paths: Sequence[str], batches: int, looked_at: int = 8) -> tuple[int, int | None]:
    """``(decoding workers, engine threads)`` for a pass over the image files ``paths`` in ``batches``.

    ``(0, None)`` (decode in this process; the engine's own thread policy) unless the files are
    heavy: ``looked_at`` evenly spaced ones average at least :data:`HEAVY_DECODE_BYTES`, the loader
    has at least :data:`WORKER_MIN_BATCHES` batches and workers fork. Then one worker per core, and
    the engine on every core too: decoding is the slow side, and the engine's threads idle while
    they wait for it (phone photos: 2 workers and 2 threads beat both 1 + 1 and in-process decoding).
    """
    if not paths or batches < WORKER_MIN_BATCHES or not _workers_pay_off():
        return 0, None
    picked = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(looked_at, len(paths))).round()]
    try:
        mean = sum(os.path.getsize(path) for path in picked) / len(picked)
    except OSError:
        return 0, None  # a missing file is the loader's to report, with its own message
    cores = os.cpu_count() or 1
    return (cores, cores) if mean >= HEAVY_DECODE_BYTES else (0, None)


class EngineUnavailable(RuntimeError):
    """ONNX Runtime cannot run this backbone here; the message says why."""


class _Traced(nn.Module):
    """The backbone's forward pass as a module returning a tuple (what the exporter traces)."""

    def __init__(self, model: nn.Module, forward: Forward, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model  # registers the weights, so they become the graph's constants
        self._forward, self.names = forward, list(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self._forward(x)
        return tuple(out[name] for name in self.names)


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "tlcourse_backbone", type(model).__name__))


def engine_key(model: nn.Module, names: Sequence[str], input_shape: Sequence[int]) -> str:
    """A hex digest of what the exported graph depends on: weights, layers, input size, versions.

    Registry backbones are identified by name and weights without the head (which the exported
    pass never reaches); any other module also by its ``repr`` (its architecture).
    """
    try:
        head = backbone_spec(model).head
        parts = [f"backbone={_model_name(model)}", state_dict_fingerprint(model, exclude=(head + ".",))]
    except ValueError:
        parts = [f"module={model!r}", state_dict_fingerprint(model)]
    parts += [f"layers={'|'.join(names)}", f"input={tuple(int(d) for d in input_shape)}",
              f"torch={torch.__version__}", f"opset={OPSET}", f"format={ENGINE_FORMAT}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def onnx_path(model: nn.Module, names: Sequence[str], input_shape: Sequence[int],
              root: str | os.PathLike[str] | None = None) -> Path:
    """Where the export of ``model``'s ``names`` for inputs of ``input_shape`` (C, H, W) is kept."""
    folder = Path(root) if root is not None else cache_dir() / "onnx"
    size = "x".join(str(int(d)) for d in input_shape[-2:])
    return folder / f"{_model_name(model)}--{size}--{engine_key(model, names, input_shape)[:24]}.onnx"


def export_features(model: nn.Module, forward: Forward, names: Sequence[str], example: torch.Tensor,
                    path: Path) -> Path:
    """Export ``forward``'s ``names`` outputs (traced on ``example``) to ``path`` atomically, with a
    dynamic batch size. The model is traced in eval mode; its previous mode is restored.
    """
    traced = _Traced(model, forward, names)
    was_training = model.training
    outputs = [f"out{i}" for i in range(len(traced.names))]
    dynamic = {name: {0: "batch"} for name in ["x", *outputs]}
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not the user's concern
            torch.onnx.export(traced.eval(), (example,), str(tmp), dynamo=False, input_names=["x"],
                              output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET)
    finally:
        model.train(was_training)
    return path


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise EngineUnavailable("onnxruntime is not installed") from err
    return onnxruntime


def cpu_session(source: str | os.PathLike[str] | bytes, *, threads: int = 1, spin: bool = True,
                quiet: bool = False) -> Any:
    """An ONNX Runtime session on the CPU for the graph ``source`` (a file, or its bytes), with the
    course's options: ``threads`` intra-op threads and one inter-op thread, every graph optimisation,
    idle threads spinning only if ``spin`` (off when a decoding thread or worker needs the core), and
    with ``quiet`` only errors logged. :class:`EngineUnavailable` when onnxruntime is not installed."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if quiet:
        options.log_severity_level = 3  # the optimiser lists every unused constant as a warning
    model = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxFeatures:
    """``x -> {layer: features}`` computed by ONNX Runtime: one exported graph per input size.

    Args:
        model: the frozen backbone (eval mode; its weights must not change while this lives).
        names: the layer names ``forward`` returns, in order.
        forward: the eager forward pass, traced for the export and used to check it.
        threads: ONNX Runtime's intra-op threads.
        spin: let idle engine threads spin; off when a decoding thread or worker needs a core too.
        batch: run a batch in slices of this many images (``None``: all at once); smaller
            slices keep the activations in the CPU cache (:data:`CPU_ENGINE_BATCH`).
        root: the folder of the exported files (default ``build/onnx``; ``$TLCOURSE_CACHE_DIR`` moves it).
        precision: ``"float32"`` (the export) or ``"int8"``: the export quantized by
            :func:`quantize_int8`, kept beside it (:func:`int8_path`) and made from
            ``calibration`` (normalised training images at the input size, (N, C, H, W)) the first
            time; without ``calibration`` and without a kept file, :class:`EngineUnavailable`.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], forward: Forward, *, threads: int,
                 spin: bool = True, batch: int | None = None,
                 root: str | os.PathLike[str] | None = None, precision: str = "float32",
                 calibration: torch.Tensor | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; use one of {PRECISIONS}")
        self.model, self.names, self.forward = model, list(names), forward
        self.threads, self.spin, self.batch, self.root = threads, spin, batch, root
        self.precision, self.calibration = precision, calibration
        self.sessions: dict[tuple[int, ...], Any] = {}
        self.exported: list[Path] = []  # the files exported (not loaded from the cache) by this object

    def _load(self, path: Path) -> Any | None:
        """A session on ``path``, or None when the file is missing or ONNX Runtime cannot read it."""
        try:
            key = (str(path), path.stat().st_mtime_ns, self.threads, self.spin)
        except OSError:
            return None
        if key in _SESSIONS:
            return _SESSIONS[key]
        try:
            session = cpu_session(path, threads=self.threads, spin=self.spin)
        except Exception:  # noqa: BLE001 - a damaged or foreign file: export it again
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        _SESSIONS[key] = session
        while len(_SESSIONS) > _MAX_SESSIONS:
            del _SESSIONS[next(iter(_SESSIONS))]
        return session

    def _made(self, path: Path, what: str) -> Any:
        """The session on a file this object has just written (kept in ``exported``); ``what`` names it
        in the error when ONNX Runtime cannot load it."""
        session = self._load(path)
        if session is None:
            raise EngineUnavailable(f"ONNX Runtime could not load {what}")
        self.exported.append(path)
        return session

    def session(self, x: torch.Tensor) -> Any:
        """The session for inputs shaped like ``x``: loaded from ``build/onnx`` or exported now."""
        shape = tuple(int(d) for d in x.shape[1:])
        if shape in self.sessions:
            return self.sessions[shape]
        _import_onnxruntime()  # before exporting: without it there is nothing to export for
        path = onnx_path(self.model, self.names, shape, self.root)
        session = self._load(path)
        if session is None:
            example = x.detach().float().contiguous()
            try:
                with torch.inference_mode(False), torch.no_grad():
                    example = example.clone()  # a normal tensor: the tracer cannot record inference tensors
                    export_features(self.model, self.forward, self.names, example, path)
            except Exception as err:  # noqa: BLE001 - any exporter failure means "run eagerly"
                raise EngineUnavailable(f"the ONNX export failed ({type(err).__name__}: {str(err)[:160]})") from err
            session = self._made(path, "the exported graph")
            self._check(session, example, path)
        if self.precision == "int8":
            session = self._int8_session(path, shape)
        self.sessions[shape] = session
        return session

    def _int8_session(self, path: Path, shape: tuple[int, ...]) -> Any:
        """The session of the int8 graph beside ``path``: loaded, or quantized now from ``calibration``."""
        quantized = int8_path(path)
        session = self._load(quantized)
        if session is not None:
            return session
        if self.calibration is None:
            raise EngineUnavailable(f"no int8 graph for inputs {shape} yet: pass calibration images (training "
                                    "images at this size) or make one with features.engine.quantize_int8")
        if tuple(self.calibration.shape[1:]) != shape:
            raise EngineUnavailable(f"calibration images are {tuple(self.calibration.shape[1:])}, the inputs {shape}: "
                                    "calibrate at the size you extract at")
        try:
            quantize_int8(path, self.calibration, quantized)
        except Exception as err:  # noqa: BLE001 - a quantizer failure means "run in float32"
            raise EngineUnavailable(f"int8 quantization failed ({type(err).__name__}: {str(err)[:160]})") from err
        return self._made(quantized, "the int8 graph")

    def _check(self, session: Any, example: torch.Tensor, path: Path) -> None:
        """Compare the new export with the eager pass on ``example``; a mismatch is not kept."""
        with torch.inference_mode():
            eager = self.forward(example)
        ours = self._run(session, example)
        for name in self.names:
            if not torch.allclose(ours[name], eager[name].float(), atol=TOLERANCE, rtol=TOLERANCE):
                diff = float((ours[name] - eager[name].float()).abs().max())
                with contextlib.suppress(OSError):
                    path.unlink()
                raise EngineUnavailable(f"the exported graph differs from eager PyTorch at {name!r} by {diff:.1e}")

    def _run(self, session: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        step = self.batch or len(array) or 1
        parts = [session.run(None, {"x": array[i:i + step]}) for i in range(0, len(array), step)]
        if len(parts) == 1:
            return {name: torch.from_numpy(out) for name, out in zip(self.names, parts[0], strict=True)}
        return {name: torch.from_numpy(np.concatenate([p[k] for p in parts])) for k, name in enumerate(self.names)}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer: (N, D) float32}`` for the batch ``x`` (N, C, H, W)."""
        return self._run(self.session(x), x)


def int8_path(source: str | os.PathLike[str]) -> Path:
    """Where :func:`quantize_int8` keeps the int8 version of the float32 graph ``source``."""
    source = Path(source)
    return source.with_name(f"{source.stem}.int8{source.suffix or '.onnx'}")


class _Calibration:
    """ONNX Runtime's calibration reader: ``{input: batch}`` for consecutive slices of ``images``."""

    def __init__(self, name: str, images: np.ndarray, batch: int) -> None:
        self.name, self.images, self.batch, self.start = name, images, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.images):
            return None
        part = self.images[self.start:self.start + self.batch]
        self.start += self.batch
        return {self.name: part}

    def rewind(self) -> None:
        self.start = 0


def quantize_int8(source: str | os.PathLike[str], calibration: torch.Tensor | np.ndarray,
                  out: str | os.PathLike[str] | None = None, *, per_channel: bool = True, batch: int = 16,
                  activations: str = "uint8") -> Path:
    """Statically quantize the float32 ONNX graph ``source`` to int8; returns the new file.

    ONNX Runtime's ``quantize_static`` in QDQ format: weights int8 per output channel, activations
    with ranges calibrated (min-max) on ``calibration``. ``activations="uint8"`` (asymmetric) runs
    ONNX Runtime's fast u8s8 kernels (VNNI); ``"int8"`` (symmetric) stays closer to float32 but
    was slower than float32 on the course's 2-core CPU (``python -m benchmarks --only headline``
    reports both against float32). Whether the features still serve is for the probe's accuracy
    to say, not their distance to float32's. ``calibration``: the graph's input exactly as the
    caller feeds it: normalised *training* images (N, C, H, W) at the input size, a few dozen to a
    few hundred (test images would leak into the model). The graph is first shape-inferred and
    optimised (``quant_pre_process``) when that works. ``out`` defaults to :func:`int8_path`;
    written atomically. The result is a different model: compare its accuracy with the float32
    graph's on the same test images (``tlcourse.evaluation.paired_comparison``) before using it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be 'uint8' or 'int8', got {activations!r}")
    source = Path(source)
    out = Path(out) if out is not None else int8_path(source)
    images = calibration.detach().float().cpu().numpy() if isinstance(calibration, torch.Tensor) else calibration
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration must be a non-empty batch of images (N, C, H, W), got shape {images.shape}")
    name = cpu_session(source, quiet=True).get_inputs()[0].name
    with atomic_path(out) as tmp:
        prepared = tmp.with_name(tmp.name + ".pre.onnx")
        try:
            try:
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                model_input = prepared
            except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not a requirement
                model_input = source
            quantize_static(str(model_input), str(tmp), _Calibration(name, images, batch),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"ActivationSymmetric": activations == "int8"})
        finally:
            with contextlib.suppress(OSError):
                prepared.unlink()
    return out


def release_sessions() -> int:
    """Drop the sessions this process keeps (their memory arenas go with them); returns how many.

    For a long process that extracts with several backbones one after the other
    (``python -m tlcourse fit`` probes Lite0, then Lite1 and Lite2): the next backbone's arena
    then does not come on top of the previous ones'.
    """
    count = len(_SESSIONS)
    _SESSIONS.clear()
    return count
