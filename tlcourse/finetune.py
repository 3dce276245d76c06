"""Fine-tuning recipes: gradual unfreezing, BatchNorm drift, and small in-memory image sets.

Notebook 02 teaches each idea inline once and then calls the version here:

- :class:`GradualUnfreezing` is an ``on_epoch_end`` callback for :func:`tlcourse.train.fit`: the
  head trains alone first, then deeper stages join at set epochs (ULMFiT's "gradual unfreezing",
  or the classic "unfreeze layer3 at epoch 5").
- :func:`bn_running_stats` and :func:`bn_drift` measure how far BatchNorm running statistics
  moved during training. A frozen layer's statistics should not move at all; they do when the
  layer is left in train mode (see :func:`tlcourse.train.set_train_mode`).
- :func:`trainable_stages` says which backbone stages are being trained right now.
- :func:`load_images` and :class:`TensorImages` decode a small subset once into a uint8 tensor,
  then resize, augment and normalise on tensors. On a CPU this takes JPEG decoding out of every
  epoch, and it makes comparing input resolutions cheap: same pixels, different ``size``.

Freezing itself (``freeze_backbone``, ``unfreeze``), parameter groups (``param_groups``) and the
BatchNorm-in-eval rule (``set_train_mode``) live in :mod:`tlcourse.models` and
:mod:`tlcourse.train`; this module builds on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset

from tlcourse.models import get_spec, stage_modules, unfreeze

__all__ = [
    "GradualUnfreezing",
    "TensorImages",
    "bn_drift",
    "bn_running_stats",
    "drift_by_stage",
    "load_images",
    "trainable_stages",
]


# --------------------------------------------------------------------------------------------
# Which stages train
# --------------------------------------------------------------------------------------------


def trainable_stages(model: nn.Module) -> list[str]:
    """Names of the backbone stages (shallow to deep) with at least one trainable parameter."""
    return [
        name
        for name, modules in stage_modules(model)
        if any(p.requires_grad for m in modules for p in m.parameters())
    ]


class GradualUnfreezing:
    """An ``on_epoch_end`` callback that unfreezes backbone stages at set epochs.

    ``schedule`` maps an epoch (1-based, as in ``fit``'s history) to the stages to unfreeze
    **after** that epoch has ended, e.g. ``{2: ["blocks.6", "head_conv"], 4: ["blocks.5"]}``:
    epochs 1-2 train what was trainable at the start (typically the head alone, after
    ``freeze_backbone``), epochs 3-4 add the two deepest stages, epochs 5+ add ``blocks.5``.
    A value may also be an int, "the deepest *n* stages" (see :func:`tlcourse.models.unfreeze`).

    Why gradual: a freshly initialised head produces large, random gradients. Letting them flow
    into pretrained layers in the first steps damages features that took ImageNet to learn.
    Training the head first, then opening the backbone from the top, keeps the useful
    features while the head settles.

    Each call applies every entry up to ``epoch`` (not only the one *at* ``epoch``), so the
    callback holds no state that a resumed ``fit`` could lose: after a resume from
    ``last.pt`` the same stages are trainable as in an uninterrupted run.

    Pair it with an optimizer that already holds the frozen parameters (``fit``'s default SGD
    does; frozen parameters have no gradient, so SGD skips them until they are unfrozen).
    ``log`` lists ``(epoch, stages)`` for every epoch at which this call unfroze something new.
    """

    def __init__(self, schedule: Mapping[int, Sequence[str] | int]) -> None:
        bad = [e for e in schedule if not isinstance(e, int) or isinstance(e, bool) or e < 1]
        if bad:
            raise ValueError(f"Schedule epochs must be ints >= 1 (fit counts epochs from 1), got {bad}")
        self.schedule = {int(e): schedule[e] for e in sorted(schedule)}
        self.log: list[tuple[int, list[str]]] = []

    def stages_at(self, model: nn.Module, epoch: int) -> list[str]:
        """The stages that should be trainable once ``epoch`` has ended, shallow to deep."""
        names = get_spec(model).stage_names
        wanted: set[str] = set()
        for at, stages in self.schedule.items():
            if at > epoch:
                break
            if isinstance(stages, int):
                if not 0 <= stages <= len(names):
                    raise ValueError(f"{get_spec(model).name} has {len(names)} stages; cannot unfreeze {stages}")
                wanted.update(names[len(names) - stages:])
            else:
                unknown = [s for s in stages if s not in names]
                if unknown:
                    raise ValueError(f"Unknown stage(s) {unknown}; the stages are {names}")
                wanted.update(stages)
        return [n for n in names if n in wanted]

    def __call__(self, epoch: int, stats: Mapping[str, Any], model: nn.Module) -> None:
        before = set(trainable_stages(model))
        stages = self.stages_at(model, epoch)
        if stages:
            unfreeze(model, stages)
        new = [s for s in stages if s not in before]
        if new:
            self.log.append((epoch, new))

    def __repr__(self) -> str:
        return f"GradualUnfreezing({self.schedule})"


# --------------------------------------------------------------------------------------------
# BatchNorm running statistics
# --------------------------------------------------------------------------------------------


def bn_running_stats(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of every BatchNorm layer's ``running_mean`` and ``running_var``, by layer name.

    Take one before and one after training and compare them with :func:`bn_drift`.
    """
    stats = {}
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm) and module.running_mean is not None:
            stats[name] = {
                "running_mean": module.running_mean.detach().cpu().clone(),
                "running_var": module.running_var.detach().cpu().clone(),
            }
    return stats


def bn_drift(
    before: Mapping[str, Mapping[str, torch.Tensor]],
    after: Mapping[str, Mapping[str, torch.Tensor]],
    eps: float = 1e-5,
) -> dict[str, float]:
    """How far each layer's running mean moved, in units of its old running standard deviation.

    For each layer: the mean over channels of ``|mean_after - mean_before| / sqrt(var_before + eps)``.
    0.0 means untouched; 0.5 means the average channel's centre moved half a standard deviation,
    a change every later layer sees.
    """
    missing = set(before) ^ set(after)
    if missing:
        raise ValueError(f"The two snapshots cover different BatchNorm layers: {sorted(missing)[:5]}")
    drift = {}
    for name, old in before.items():
        new = after[name]
        shift = (new["running_mean"] - old["running_mean"]).abs() / (old["running_var"] + eps).sqrt()
        drift[name] = float(shift.mean())
    return drift


def drift_by_stage(model: nn.Module, drift: Mapping[str, float]) -> dict[str, float]:
    """Average :func:`bn_drift`'s per-layer values over each backbone stage, shallow to deep.

    Stages without BatchNorm layers are left out; layers outside every stage (none in the
    registry's backbones) are ignored.
    """
    out = {}
    for stage, paths in get_spec(model).stages:
        values = [v for name, v in drift.items() if any(name == p or name.startswith(p + ".") for p in paths)]
        if values:
            out[stage] = sum(values) / len(values)
    return out


# --------------------------------------------------------------------------------------------
# Small image sets held in memory
# --------------------------------------------------------------------------------------------


def load_images(dataset: Dataset, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``dataset[i]`` for each index once: a ``(N, 3, H, W)`` uint8 tensor and int64 labels.

    The dataset must return PIL images (or HxWx3 uint8 arrays) of one size, as CIFAR-10 does.
    """
    indices = range(len(dataset)) if indices is None else indices  # type: ignore[arg-type]
    images, labels = [], []
    for i in indices:
        image, label = dataset[int(i)]
        array = torch.from_numpy(np.array(image.convert("RGB") if hasattr(image, "convert") else image))
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != torch.uint8:
            raise ValueError(f"Item {i} is not an RGB uint8 image (got {tuple(array.shape)} {array.dtype})")
        images.append(array.permute(2, 0, 1))
        labels.append(int(label))
    if not images:
        raise ValueError("No images to load")
    return torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.int64)


class TensorImages(Dataset):
    """Images kept as uint8 tensors, resized, augmented and normalised when an item is read.

    Args:
        images: ``(N, 3, H, W)`` uint8, e.g. from :func:`load_images`.
        targets: ``(N,)`` class indices.
        size: the side length the network sees. Upsampling 32 px CIFAR images to a size nearer
            the pretraining resolution lets pretrained filters find objects of familiar scale.
        mean, std: the backbone's normalisation (``get_spec(model).preprocessing()``).
        train: random crop after 4 px (scaled) reflection padding, and horizontal flips, the
            classic CIFAR augmentation; off for evaluation.

    ``.targets`` is a list, so :func:`tlcourse.data.targets_of` works on it.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        self.images = images
        self.targets = [int(t) for t in targets]
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < x.shape[-1])[0]
        if self.train:
            # Random draws use the global torch RNG, which fit re-seeds every epoch.
            pad = max(1, self.size // 8)
            x = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
            top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            x = x[:, top:top + self.size, left:left + self.size]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return (x - self.mean) / self.std, self.targets[i]
