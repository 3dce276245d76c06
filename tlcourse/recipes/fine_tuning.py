"""The named transfer strategies, each a few lines on the one loop :func:`~tlcourse.recipes.core.train`.

What differs between them is only what trains and how, and each of those is an explicit argument:

* which stages train (``train_stages``, or the stages above ``cut``), the rest frozen;
* the learning rates: ``backbone_lr`` for pretrained layers, ``head_lr`` for the new head
  (discriminative rates are never implied by another choice);
* the BatchNorm policy ``bn`` (:data:`tlcourse.train.BN_POLICIES`);
* for :func:`gradual_unfreezing`, the ``schedule`` (which stages join after which epoch),
  independent of the rates.

Every recipe returns a :class:`~tlcourse.recipes.core.RecipeResult`; ``options`` are ``train``'s
``max_epochs``, ``patience``, ``batch_size``, ``seed``, ``device`` and ``test``. A result whose
model predicts one class for every validation image is ``collapsed``: :func:`compare_seeds` and
:func:`compare_paired` leave such runs out (or refuse them), so they are never scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tlcourse import models
from tlcourse.evaluation import PairedComparison, SeedComparison, paired_comparison, seeds_comparison
from tlcourse.finetune import GradualUnfreezing, trainable_stages
from tlcourse.recipes.core import Data, RecipeResult, train
from tlcourse.stages import split_at

__all__ = ["TopStages", "compare_paired", "compare_seeds", "from_scratch", "full_fine_tune", "gradual_unfreezing",
           "partial_fine_tune", "scored", "top_stage_fine_tune", "top_stages"]


class TopStages(nn.Module):
    """The stages above ``cut`` plus the head: input = ``cut``'s output.

    With the lower stages frozen and their BatchNorm in eval mode, ``TopStages(model, cut)(map)``
    equals ``model(x)`` for ``map`` = stage ``cut``'s output on ``x``, so training on cached maps is
    training the partially frozen network, only faster. A timm EfficientNet-Lite runs its stage
    modules and ``forward_head``; any other registry backbone (ResNet, VGG) runs the upper part of
    :func:`tlcourse.stages.split_at`.
    """

    def __init__(self, model: nn.Module, cut: str) -> None:
        super().__init__()
        spec = models.backbone_spec(model)
        self.model = model
        self.upper = split_at(model, cut).upper if spec.family != "timm-lite" else None
        names = spec.stage_names
        self.paths = [p for name, paths in spec.stages[names.index(cut) + 1:] for p in paths]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upper is not None:
            return self.upper(x)
        for path in self.paths:
            x = self.model.get_submodule(path)(x)
        return self.model.forward_head(x)


def _trainable(model: nn.Module, train_stages: Sequence[str] | int) -> list[str]:
    """Freeze the backbone, then unfreeze ``train_stages`` (names, or a count of the deepest)."""
    models.freeze_backbone(model)
    return models.unfreeze(model, list(train_stages) if not isinstance(train_stages, int) else train_stages)


def _result(r: RecipeResult, model: nn.Module, **extra: Any) -> RecipeResult:
    """``r`` with what the recipe trained in ``extra``: its arguments, stages and trainable parameters."""
    r.extra.update(extra, stages=trainable_stages(model), trainable=models.count_parameters(model))
    return r


def top_stages(model: nn.Module, cut: str, backbone_lr: float, head_lr: float,
               train_stages: Sequence[str] | None = None) -> tuple[TopStages, list[dict[str, Any]]]:
    """``(module, parameter groups)`` that train ``model`` above ``cut`` on ``cut``'s cached output.

    ``train_stages`` (default: every stage above ``cut``) train at ``backbone_lr``, the head at
    ``head_lr``; ``[]`` trains the head alone on frozen features (a frozen extractor).
    """
    names = models.backbone_spec(model).stage_names
    above = names[names.index(cut) + 1:]
    stages = above if train_stages is None else list(train_stages)
    if not set(stages) <= set(above):
        raise ValueError(f"Stages {sorted(set(stages) - set(above))} are below the cut {cut!r}: cache a lower stage")
    _trainable(model, stages)
    return TopStages(model, cut), models.param_groups(model, backbone_lr=backbone_lr, head_lr=head_lr)


def top_stage_fine_tune(model: nn.Module, cut: str, train_data: Data, val: Data, *, backbone_lr: float,
                        head_lr: float, train_stages: Sequence[str] | None = None, flipped: torch.Tensor | None = None,
                        bn: str = "frozen-eval", **options: Any) -> RecipeResult:
    """Train the stages above ``cut`` (or ``train_stages`` of them; ``[]``: the head alone) on cached
    activations of stage ``cut``, the lower stages frozen.

    ``flipped``: the activations of the mirrored images (flip augmentation: each epoch a random half
    of every batch comes from them). Exact only when the cached stages ran in eval mode.
    """
    module, groups = top_stages(model, cut, backbone_lr, head_lr, train_stages)
    r = train(module, groups, train_data, val, flip=flipped is not None, flipped=flipped, bn=bn, **options)
    return _result(r, model, recipe="top_stage_fine_tune", cut=cut, backbone_lr=backbone_lr, head_lr=head_lr, bn=bn)


def partial_fine_tune(model: nn.Module, train_data: Data, val: Data, *, train_stages: Sequence[str] | int,
                      backbone_lr: float, head_lr: float, bn: str = "frozen-eval", flip: bool = True,
                      **options: Any) -> RecipeResult:
    """Train ``train_stages`` (names, or a count of the deepest) and the head on images, the rest frozen.

    ``bn``: ``"frozen-eval"`` keeps the frozen stages' BatchNorm on its pretrained statistics,
    ``"eval"`` every BatchNorm, ``"train"`` none. ``flip``: mirror a random half of each batch
    (tensors only; a loader brings its own augmentation).
    """
    _trainable(model, train_stages)
    groups = models.param_groups(model, backbone_lr=backbone_lr, head_lr=head_lr)
    r = train(model, groups, train_data, val, flip=flip, bn=bn, **options)
    return _result(r, model, recipe="partial_fine_tune", backbone_lr=backbone_lr, head_lr=head_lr, bn=bn)


def full_fine_tune(model: nn.Module, train_data: Data, val: Data, *, backbone_lr: float, head_lr: float,
                   bn: str = "frozen-eval", flip: bool = True, **options: Any) -> RecipeResult:
    """Every stage trains (at ``backbone_lr``) with the head (at ``head_lr``): :func:`partial_fine_tune`
    with all stages."""
    r = partial_fine_tune(model, train_data, val, train_stages=models.backbone_spec(model).stage_names,
                          backbone_lr=backbone_lr, head_lr=head_lr, bn=bn, flip=flip, **options)
    r.extra["recipe"] = "full_fine_tune"
    return r


def from_scratch(model: nn.Module, train_data: Data, val: Data, *, lr: float, warmup_epochs: int = 2,
                 bn: str = "train", flip: bool = True, **options: Any) -> RecipeResult:
    """A randomly initialised network, every layer at ``lr`` after a linear warm-up of
    ``warmup_epochs`` (random layers are fragile in their first steps). Give it more ``patience``
    than a fine-tune: it improves slowly. A run that ends predicting one class is ``collapsed``.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    r = train(model, [{"params": list(model.parameters()), "lr": lr}], train_data, val, flip=flip, bn=bn,
              warmup_epochs=warmup_epochs, **options)
    return _result(r, model, recipe="from_scratch", lr=lr, warmup_epochs=warmup_epochs, bn=bn)


def gradual_unfreezing(model: nn.Module, schedule: Mapping[int, Sequence[str]], train_data: Data, val: Data, *,
                       backbone_lr: float, head_lr: float, cut: str | None = None, flipped: torch.Tensor | None = None,
                       flip: bool = True, bn: str = "frozen-eval", **options: Any) -> RecipeResult:
    """The head trains alone first; after epoch ``e`` the stages ``schedule[e]`` join (at ``backbone_lr``).

    The schedule and the rates are independent arguments: compare it with :func:`partial_fine_tune`
    (or :func:`top_stage_fine_tune`) over the same stages at the same rates to isolate the schedule.
    With ``cut``, the data are cached activations of stage ``cut`` (every scheduled stage above it).
    """
    joining = [s for stages in schedule.values() for s in stages]
    if cut is not None:
        module, groups = top_stages(model, cut, backbone_lr, head_lr, joining)
        data_options: dict[str, Any] = dict(flip=flipped is not None, flipped=flipped)
    else:
        _trainable(model, joining)
        module, groups, data_options = model, models.param_groups(model, backbone_lr, head_lr), dict(flip=flip)
    models.freeze_backbone(model)  # the optimizer holds every joining parameter; they wait, frozen, for their epoch
    callback = GradualUnfreezing(schedule, model=model)
    r = train(module, groups, train_data, val, bn=bn, callbacks=[callback], **data_options, **options)
    return _result(r, model, recipe="gradual_unfreezing", schedule={int(e): list(s) for e, s in schedule.items()},
                   unfrozen=callback.log, cut=cut, backbone_lr=backbone_lr, head_lr=head_lr, bn=bn)


def scored(results: Sequence[RecipeResult]) -> list[RecipeResult]:
    """The runs that may be scored: ``collapsed`` ones (one class for every image) are left out."""
    return [r for r in results if not r.collapsed]


def compare_seeds(a: Sequence[RecipeResult], b: Sequence[RecipeResult]) -> SeedComparison:
    """Test accuracy of recipe ``a`` minus ``b`` over seeds (:func:`tlcourse.evaluation.seeds_comparison`),
    collapsed runs left out; raises when a side has no scoreable run."""
    a, b = scored(a), scored(b)
    if not a or not b:
        raise ValueError("Every run of one side collapsed to one class: there is nothing to compare; train it "
                         "again (a warm-up, a lower rate, more patience) before comparing")
    return seeds_comparison([r.accuracy for r in a], [r.accuracy for r in b])


def compare_paired(a: RecipeResult, b: RecipeResult) -> PairedComparison:
    """Two runs on the same test images (:func:`tlcourse.evaluation.paired_comparison`); refuses a collapsed run."""
    if a.collapsed or b.collapsed:
        raise ValueError("A collapsed run (one class for every validation image) is not a model to score; "
                         "leave it out of the comparison and report it as collapsed")
    if a.correct is None or b.correct is None:
        raise ValueError("Both runs need per-image results: pass test=... to the recipes")
    return paired_comparison(a.correct, b.correct)
