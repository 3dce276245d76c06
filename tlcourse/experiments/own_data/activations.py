"""Step 2 of ``fit``: one pass of a frozen backbone over every image and its mirror image, cached.

Each image is decoded and preprocessed once; the batch and its horizontal flip go through the
backbone together (on a CPU through ONNX Runtime, :class:`tlcourse.features.OnnxFeatures`, with
eager PyTorch as the fallback). Out come, per image and per view:

- the pooled features of an earlier stage (``backbone_spec(model).early_stage``);
- the head's input (the last pooled features);
- for the main backbone, the unpooled activation of the stage below the two deepest ones, which
  the top-stage fine-tune trains on (notebook 05's recipe) and from which the last features are
  computed by running only the top stages.

The result is saved under a key of the backbone's weights, the preprocessing, the stages and the
folder's content fingerprint (every file's bytes), written atomically: a re-run after an
interruption loads it, and a folder with one file added or changed never reuses it.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from tlcourse._io import DamagedFileError, atomic_save, read_or_explain, read_torch
from tlcourse.cpu_threads import ThreadChooser, decoded_batches, engine_threads
from tlcourse.data import load_rgb
from tlcourse.features import EngineUnavailable, OnnxFeatures, backbone_fingerprint, engine_settings
from tlcourse.features.engine import release_sessions
from tlcourse.features.extract import global_pool
from tlcourse.hooks import capture
from tlcourse.models import Preprocessing, backbone_spec, head_of, stage_layers
from tlcourse.runtime import device_settings
from tlcourse.stages import StageSplit

__all__ = ["PASS_FORMAT", "ImageFiles", "Views", "backbone_pass", "pass_is_cached"]

#: Bumped when the saved layout changes: older files are then computed again.
PASS_FORMAT = 2
LOWER, LAST = "lower", "pooled"


@dataclass
class Views:
    """Features of every image (``plain``) and of its mirror image (``flipped``), ``{name: (N, ...)}``.

    Names: the early stage's name, ``"pooled"`` (the head's input) and, for the main backbone,
    ``"lower"`` (the unpooled activation the top stages start from).
    """

    plain: dict[str, torch.Tensor]
    flipped: dict[str, torch.Tensor]
    seconds: float  # the extraction's seconds (when it was computed, also when loaded from disk)
    hit: bool  # loaded from disk
    path: Path
    top_seconds: float = 0.0  # seconds the top stages took on every image and its mirror (main backbone)


class ImageFiles(Dataset):
    """``(preprocessed image, label)`` of a list of files."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


def _with_mirror(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate a batch followed by its mirror images: one decode, two views."""
    x = torch.stack([b[0] for b in batch])
    return torch.cat([x, x.flip(-1)]), torch.tensor([b[1] for b in batch])


def _pass_key(model: nn.Module, pre: Preprocessing, names: Sequence[str], folder_key: str) -> str:
    h = hashlib.sha256()
    for part in (str(PASS_FORMAT), backbone_spec(model).name, backbone_fingerprint(model), repr(pre),
                 ",".join(names), folder_key):
        h.update(part.encode() + b"\n")
    return h.hexdigest()


def _forward(model: nn.Module, early: str, cut: StageSplit | None) -> tuple[Any, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """The hooks and ``x -> {name: tensor}`` for one forward pass that stops as early as it can."""
    targets: dict[str, Any] = dict(stage_layers(model, [early]))
    if cut is not None:
        targets[LOWER] = stage_layers(model, [cut.stage])[cut.stage]
    else:
        targets[LAST] = head_of(model)
    hooks = capture(model, targets, inputs={LAST} & set(targets), stop_after=True)

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = hooks(x)
        return {name: (v if name == LOWER else global_pool(v)) for name, v in out.items()}

    return hooks, run


def _load(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return read_or_explain(path, read_torch, what="cached features", remedy="They are computed again.",
                               check=lambda e: None if isinstance(e, dict) and e.get("key") == key else "another key")
    except (DamagedFileError, OSError):
        return None


def _top_features(cut: StageSplit, acts: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """The head's input computed from cached lower activations (only the top stages run)."""
    home = next(cut.pooled.parameters()).device
    cut.pooled.eval().to(device)
    try:
        with torch.inference_mode():
            return torch.cat([cut.pooled(acts[i:i + batch_size].to(device)).float().cpu()
                              for i in range(0, len(acts), batch_size)])
    finally:
        cut.pooled.to(home)


def _pass_path(model: nn.Module, pre: Preprocessing, folder_key: str, cache_dir: Path,
               cut: StageSplit | None) -> tuple[Path, str, list[str]]:
    names = [backbone_spec(model).early_stage, LOWER if cut is not None else LAST]
    key = _pass_key(model, pre, names, folder_key)
    return cache_dir / f"{backbone_spec(model).name}-{pre.crop}px-{key[:20]}.pt", key, names


def pass_is_cached(model: nn.Module, pre: Preprocessing, folder_key: str, cache_dir: Path,
                   cut: StageSplit | None = None) -> bool:
    """Whether :func:`backbone_pass` would load its result from disk."""
    path, key, _ = _pass_path(model, pre, folder_key, cache_dir, cut)
    return _load(path, key) is not None


def backbone_pass(model: nn.Module, pre: Preprocessing, samples: Sequence[tuple[str, int]], folder_key: str,
                  cache_dir: Path, *, cut: StageSplit | None = None, batch_size: int = 8,
                  progress: bool = True, device: str | torch.device | None = "cpu") -> Views:
    """Features of ``samples`` and their mirror images (see the module docstring), from disk when there.

    ``cut`` (from :func:`tlcourse.stages.split_below_top`) asks for the unpooled lower activations too.
    On a GPU (``device``) the pass runs eager PyTorch there; on the CPU, ONNX Runtime.
    """
    path, key, names = _pass_path(model, pre, folder_key, cache_dir, cut)
    early = names[0]
    entry = _load(path, key)
    if entry is not None:
        return Views(entry["plain"], entry["flipped"], float(entry["seconds"]), True, path, float(entry["top_seconds"]))
    start = time.perf_counter()
    loader = DataLoader(ImageFiles(samples, pre.eval_transform()), batch_size=batch_size, collate_fn=_with_mirror)
    plain: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    flipped: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    was_training = model.training
    model.eval()
    hooks, run = _forward(model, early, cut)
    settings = device_settings(device, inference=True)
    knobs = engine_settings(settings, workers=0)  # the loader below decodes in this process
    home = next(model.parameters()).device
    model.to(settings.device)
    engine: OnnxFeatures | None = None
    if knobs.engine == "onnxruntime":
        engine = OnnxFeatures(model, names, run, threads=engine_threads(0, knobs.threads), spin=not knobs.decode_ahead,
                              batch=knobs.engine_batch)
    eager_threads = ThreadChooser(knobs.threads)  # made before decoded_batches holds torch at one thread
    try:
        with torch.inference_mode(), hooks, decoded_batches(loader, ahead=knobs.decode_ahead) as batches:
            for x, _ in tqdm(batches, total=len(loader), desc=f"{backbone_spec(model).name} features", disable=not progress, leave=False):
                out = None
                if engine is not None:
                    try:
                        out = engine(x)
                    except (EngineUnavailable, RuntimeError) as err:
                        warnings.warn(f"ONNX Runtime unavailable, running eager PyTorch: {err}", RuntimeWarning, stacklevel=2)
                        engine = None
                if out is None:
                    eager_threads.before_batch()
                    out = {n: v.cpu() for n, v in run(settings.to_device(x)).items()}
                    eager_threads.after_batch(len(x))
                half = len(x) // 2
                for n in names:
                    plain[n].append(out[n][:half].float())
                    flipped[n].append(out[n][half:].float())
    finally:
        eager_threads.restore()
        model.train(was_training)
        model.to(home)
        engine = None
        release_sessions()  # the next backbone's ONNX Runtime arena does not come on top of this one's
    views = {n: torch.cat(v) for n, v in plain.items()}, {n: torch.cat(v) for n, v in flipped.items()}
    top_start = time.perf_counter()
    if cut is not None:
        for v in views:
            v[LAST] = _top_features(cut, v[LOWER], settings.device)
    top_seconds = time.perf_counter() - top_start
    seconds = time.perf_counter() - start
    atomic_save({"key": key, "plain": views[0], "flipped": views[1], "seconds": seconds, "top_seconds": top_seconds},
                path)
    return Views(views[0], views[1], seconds, False, path, top_seconds)
