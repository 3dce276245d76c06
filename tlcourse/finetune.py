"""Fine-tuning recipes: gradual unfreezing and BatchNorm drift.

Notebook 02 teaches each idea inline once and then calls the version here:

- :class:`GradualUnfreezing` is a callback for :func:`tlcourse.train.fit`: the
  head trains alone first, then deeper stages join at set epochs (ULMFiT's "gradual unfreezing",
  or the classic "unfreeze layer3 at epoch 5").
- :func:`bn_running_stats` and :func:`bn_drift` measure how far BatchNorm running statistics
  moved during training. A frozen layer's statistics should not move at all; they do when the
  layer is left in train mode (see :func:`tlcourse.train.set_train_mode`).
- :func:`trainable_stages` says which backbone stages are being trained right now.

Freezing itself (``freeze_backbone``, ``unfreeze``), parameter groups (``param_groups``) and the
BatchNorm-in-eval rule (``set_train_mode``) live in :mod:`tlcourse.models` and
:mod:`tlcourse.train`; this module builds on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlcourse.models import backbone_spec, stage_modules, unfreeze
from tlcourse.train import Callback, Run

__all__ = [
    "GradualUnfreezing",
    "bn_drift",
    "bn_running_stats",
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


class GradualUnfreezing(Callback):
    """A ``fit`` callback that unfreezes backbone stages at set epochs.

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
    ``model``: the backbone whose stages it unfreezes, when ``fit`` trains a module around it (the
    top stages on cached activations, :class:`tlcourse.recipes.TopStages`); default: fit's model.
    """

    def __init__(self, schedule: Mapping[int, Sequence[str] | int], model: nn.Module | None = None) -> None:
        bad = [e for e in schedule if not isinstance(e, int) or isinstance(e, bool) or e < 1]
        if bad:
            raise ValueError(f"Schedule epochs must be ints >= 1 (fit counts epochs from 1), got {bad}")
        self.schedule = {int(e): schedule[e] for e in sorted(schedule)}
        self.log: list[tuple[int, list[str]]] = []
        self.model = model

    def stages_at(self, model: nn.Module, epoch: int) -> list[str]:
        """The stages that should be trainable once ``epoch`` has ended, shallow to deep."""
        names = backbone_spec(model).stage_names
        wanted: set[str] = set()
        for at, stages in self.schedule.items():
            if at > epoch:
                break
            if isinstance(stages, int):
                if not 0 <= stages <= len(names):
                    raise ValueError(f"{backbone_spec(model).name} has {len(names)} stages; cannot unfreeze {stages}")
                wanted.update(names[len(names) - stages:])
            else:
                unknown = [s for s in stages if s not in names]
                if unknown:
                    raise ValueError(f"Unknown stage(s) {unknown}; the stages are {names}")
                wanted.update(stages)
        return [n for n in names if n in wanted]

    def on_epoch_end(self, run: Run) -> None:
        self(run.epoch, run.history.epochs[-1], self.model if self.model is not None else run.model)

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


