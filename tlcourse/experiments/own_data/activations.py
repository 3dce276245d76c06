"""Step 2 of ``fit``: one pass of a frozen backbone over every image and its mirror image, cached.

Each image is decoded and preprocessed once; the batch and its horizontal flip go through the
backbone together: :func:`tlcourse.features.cached_activations`, the course's one extraction
loop (ONNX Runtime on a CPU, eager PyTorch on the device ``fit`` was given) and its on-disk
activation cache. Out come, per image and per view:

- the pooled features of an earlier stage (``backbone_spec(model).early_stage``);
- the head's input (the last pooled features);
- for the main backbone, the unpooled activation of the stage below the two deepest ones, which
  the top-stage fine-tune trains on (notebook 05's recipe) and from which the last features are
  computed by running only the top stages (the same loop, over the cached maps).

The entry is a folder of raw arrays under a key of the backbone's weights, the preprocessing,
the stages and the folder's content fingerprint (every file's bytes), renamed into place when
complete: a re-run after an interruption loads it, a folder with one file added or changed never
reuses it. Each batch goes to disk as it comes, and the arrays come back memory-mapped, so
memory does not grow with the folder beyond what a step reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tlcourse.data import load_rgb
from tlcourse.features import (
    ActivationSet,
    ArrayRows,
    activation_key,
    cached_activations,
    engine_settings,
    extract_features,
    load_activations,
)
from tlcourse.features.activations import activation_path
from tlcourse.features.engine import release_sessions
from tlcourse.models import Preprocessing, backbone_spec
from tlcourse.runtime import device_settings
from tlcourse.stages import StageSplit

__all__ = ["PASS_FORMAT", "ImageFiles", "Views", "backbone_pass", "pass_is_cached"]

#: Bumped when the saved layout changes: older files are then computed again.
PASS_FORMAT = 3
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
    entry: ActivationSet | None = None  # the cache entry the views map, for :meth:`take`
    aliases: dict[str, str] = field(default_factory=dict)  # a view's name -> the entry's array name

    def take(self, name: str, index: Sequence[int] | torch.Tensor, *, flipped: bool = False) -> torch.Tensor:
        """Rows ``index`` of view ``name`` (of the mirror images with ``flipped``) as a new tensor,
        read from the cache file without mapping it: only these rows come into memory."""
        if self.entry is None:
            return (self.flipped if flipped else self.plain)[name][torch.as_tensor(index)]
        return self.entry.rows(self.aliases.get(name, name), index, "flipped" if flipped else "plain")


class ImageFiles(Dataset):
    """``(preprocessed image, label)`` of a list of files."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples, self.transform = list(samples), transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


def _stage_names(model: nn.Module, cut: StageSplit | None) -> tuple[str, list[str], list[str]]:
    """``(data id suffix, layers to extract, layers kept whole)`` of a pass."""
    early = backbone_spec(model).early_stage
    if cut is None:
        return "last", [early, LAST], []
    if cut.stage == early:
        raise ValueError(f"{backbone_spec(model).name}: the early stage {early} is the fine-tune's cut; "
                         "choose another early stage in its BackboneSpec")
    return f"lower={cut.stage}", [early, cut.stage], [cut.stage]


def _data_id(model: nn.Module, pre: Preprocessing, folder_key: str, cut: StageSplit | None) -> str:
    return f"own_data pass {PASS_FORMAT}|{repr(pre)}|{folder_key}|{_stage_names(model, cut)[0]}"


def _pass_path(model: nn.Module, pre: Preprocessing, folder_key: str, cache_dir: Path,
               cut: StageSplit | None) -> tuple[Path, str]:
    _, layers, maps = _stage_names(model, cut)
    key = activation_key(model, _data_id(model, pre, folder_key, cut), layers, maps=maps, mirror=True)
    return activation_path(cache_dir, model, key), key


def pass_is_cached(model: nn.Module, pre: Preprocessing, folder_key: str, cache_dir: Path,
                   cut: StageSplit | None = None) -> bool:
    """Whether :func:`backbone_pass` would load its result from disk."""
    path, key = _pass_path(model, pre, folder_key, cache_dir, cut)
    return load_activations(path, key) is not None


def _top_stages(cut: StageSplit, device: str | torch.device | None, progress: bool
                ) -> Callable[[ActivationSet], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]]:
    """The head's input of every image and its mirror image, computed from the cached lower
    activations by running only the top stages (eager, float32, through the one extraction loop,
    reading the maps from disk a batch at a time)."""
    settings = device_settings(device, inference=True, bf16=False, channels_last=False, batch_size=128)

    def derive(entry: ActivationSet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
        start = time.perf_counter()
        views = [extract_features(cut.pooled, ArrayRows(entry, cut.stage, view), device=settings, engine="eager",
                                  progress=progress, num_workers=0).features for view in ("plain", "flipped")]
        return {LAST: views[0]}, {LAST: views[1]}, {"top_seconds": time.perf_counter() - start}

    return derive


def backbone_pass(model: nn.Module, pre: Preprocessing, samples: Sequence[tuple[str, int]], folder_key: str,
                  cache_dir: Path, *, cut: StageSplit | None = None, batch_size: int = 8,
                  progress: bool = True, device: str | torch.device | None = "cpu",
                  on_rate: Callable[[float], None] | None = None) -> Views:
    """Features of ``samples`` and their mirror images (see the module docstring), from disk when there.

    ``cut`` (from :func:`tlcourse.stages.split_below_top`) asks for the unpooled lower activations too.
    On a GPU (``device``) the pass runs eager PyTorch there; on the CPU, ONNX Runtime. ``on_rate``
    gets the measured seconds per image (and its mirror image) after the first timed batch.
    """
    _, layers, maps = _stage_names(model, cut)
    settings = device_settings(device, inference=True)
    # Decoding in this process, or in one worker per core for heavy files (features.engine.decoding_plan)
    knobs = engine_settings(settings, workers=0)
    images = ImageFiles(samples, pre.eval_transform())
    try:
        entry = cached_activations(
            model, images, layers, batch_size=batch_size, data_id=_data_id(model, pre, folder_key, cut), root=cache_dir, maps=maps,
            mirror=True, derive=_top_stages(cut, device, progress) if cut is not None else None, on_rate=on_rate,
            device=settings, engine=knobs, progress=f"{backbone_spec(model).name} features" if progress else False)
    finally:
        release_sessions()  # the next backbone's ONNX Runtime arena does not come on top of this one's
    flipped = entry.flipped or {}
    if cut is not None:
        for view in (entry.plain, flipped):
            view[LOWER] = view.pop(cut.stage)
    top = float(entry.extra.get("top_seconds", 0.0))
    return Views(entry.plain, flipped, entry.seconds + top, entry.hit, entry.path, top, entry,
                 {LOWER: cut.stage} if cut is not None else {})
