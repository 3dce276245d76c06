"""Surgery on a registry backbone: its head, freezing, stages and optimizer parameter groups.

Every helper asks the registry where the head and the stages are, so the same call works on
EfficientNet-Lite, ResNet and VGG.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from tlcourse.data import dataset_num_classes
from tlcourse.hooks import capture
from tlcourse.models.registry import backbone_spec

__all__ = [
    "backbone_parameters",
    "check_head",
    "check_input_size",
    "count_parameters",
    "freeze_backbone",
    "head_of",
    "head_parameters",
    "num_outputs",
    "param_groups",
    "replace_head",
    "stage_layers",
    "stage_modules",
    "stage_outputs",
    "unfreeze",
]


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear layer (``fc`` on ResNet, ``classifier[6]`` on VGG, ``classifier`` on EfficientNet)."""
    return model.get_submodule(backbone_spec(model).head)  # type: ignore[return-value]


def num_outputs(model: nn.Module) -> int:
    """How many classes the model's head predicts."""
    return head_of(model).out_features


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the ImageNet classifier for a fresh ``nn.Linear(feature_dim, num_classes)``.

    The new layer is trainable even if the rest of the model is frozen. Returns the new head.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    old = head_of(model)
    head = nn.Linear(old.in_features, num_classes)
    head.to(old.weight.device)
    parent_path, _, child = backbone_spec(model).head.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, head)
    return head


def _class_names(dataset: Any) -> list[Any]:
    """The first ``.classes`` found walking down ``.dataset`` links (for error messages)."""
    while hasattr(dataset, "dataset") and not hasattr(dataset, "classes"):
        dataset = dataset.dataset
    return list(getattr(dataset, "classes", []))


def check_head(model: nn.Module, dataset_or_num_classes: object) -> int:
    """Raise a ValueError unless the model's head has one output per class of the dataset.

    ``dataset_or_num_classes`` is a dataset with ``.classes`` (ImageFolder, CIFAR10, a Subset
    of one...) or an int. Returns the number of classes. Call it before training: a head left
    with ImageNet's 1000 outputs trains without complaint but can predict classes that do not
    exist.
    """
    if isinstance(dataset_or_num_classes, int) and not isinstance(dataset_or_num_classes, bool):
        num_classes, names = dataset_or_num_classes, ""
    else:
        counted = dataset_num_classes(dataset_or_num_classes)
        if counted is None:
            raise ValueError(
                f"Cannot tell how many classes a {type(dataset_or_num_classes).__name__} has "
                "(it has no .classes): pass the number of classes instead."
            )
        num_classes, classes = counted, _class_names(dataset_or_num_classes)
        names = f" ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})"
    outputs = num_outputs(model)
    if outputs != num_classes:
        raise ValueError(
            f"The model's head ({backbone_spec(model).head}) has {outputs} outputs, but the dataset has "
            f"{num_classes} classes{names}. Give it a matching head first: "
            f"replace_head(model, {num_classes})."
        )
    return num_classes


def check_input_size(model: nn.Module, args: tuple[Any, ...]) -> None:
    """Refuse an input smaller than the backbone's minimum, with the fix in the message.

    Registered by ``build_backbone`` as a forward pre-hook, so it guards every call
    (``model(x)``, training, ``stage_outputs``, feature extraction).
    """
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return
    spec = backbone_spec(model)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if min(height, width) < spec.min_input:
        crop = spec.preprocessing().crop
        raise ValueError(
            f"{spec.name} got {height}x{width} inputs, but needs at least "
            f"{spec.min_input}x{spec.min_input} (it shrinks images {spec.min_input}-fold; "
            f"its pretrained weights expect {crop}x{crop}). Resize the images first, e.g. with "
            f"backbone_spec({spec.name!r}).preprocessing().eval_transform()."
        )


# --------------------------------------------------------------------------------------------
# Freezing and parameter groups
# --------------------------------------------------------------------------------------------


def head_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The head's parameters."""
    return head_of(model).parameters()


def backbone_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Every parameter that is not in the head."""
    head_ids = {id(p) for p in head_of(model).parameters()}
    return (p for p in model.parameters() if id(p) not in head_ids)


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Freeze everything but the head (``requires_grad = False``), for feature extraction."""
    for p in backbone_parameters(model):
        p.requires_grad_(False)
    for p in head_parameters(model):
        p.requires_grad_(True)
    return model


def stage_modules(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The backbone's stages, shallow to deep, as ``(stage name, [modules])``."""
    return [(name, [model.get_submodule(p) for p in paths]) for name, paths in backbone_spec(model).stages]


def unfreeze(model: nn.Module, stages: int | Sequence[str] | str = "all") -> list[str]:
    """Make stages trainable again, deepest first; returns the names of the stages unfrozen.

    ``stages`` is a count of the deepest stages (``unfreeze(model, 2)``), a list of stage names
    (``unfreeze(model, ["layer4"])``), or ``"all"``. The head is always left trainable.
    """
    spec = backbone_spec(model)
    names = spec.stage_names
    if stages == "all":
        chosen = names
    elif isinstance(stages, int):
        if not 0 <= stages <= len(names):
            raise ValueError(f"{spec.name} has {len(names)} stages; cannot unfreeze {stages}")
        chosen = names[len(names) - stages:]
    else:
        unknown = [s for s in stages if s not in names]
        if unknown:
            raise ValueError(f"Unknown stage(s) {unknown} for {spec.name}; its stages are {names}")
        chosen = list(stages)
    lookup = dict(stage_modules(model))
    for name in chosen:
        for module in lookup[name]:
            for p in module.parameters():
                p.requires_grad_(True)
    for p in head_parameters(model):
        p.requires_grad_(True)
    return chosen


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def param_groups(model: nn.Module, backbone_lr: float, head_lr: float,
                 weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups with one learning rate for the backbone and another for the head.

    Pretrained layers already hold useful features, so they get a smaller learning rate than the
    freshly initialised head (e.g. ``head_lr = 10 * backbone_lr``). Frozen parameters are left
    out; an empty group is dropped.
    """
    groups = [
        {"params": [p for p in backbone_parameters(model) if p.requires_grad], "lr": backbone_lr, "name": "backbone"},
        {"params": [p for p in head_parameters(model) if p.requires_grad], "lr": head_lr, "name": "head"},
    ]
    groups = [g | {"weight_decay": weight_decay} for g in groups if g["params"]]
    if not groups:
        raise ValueError("The model has no trainable parameters: call unfreeze(model, ...) or replace_head first")
    return groups


# --------------------------------------------------------------------------------------------
# Stage outputs
# --------------------------------------------------------------------------------------------


def stage_layers(model: nn.Module, stages: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """``{stage name: the module whose output is the stage's output}`` (its last module).

    Raises a ValueError naming the known stages when one is unknown.
    """
    spec = backbone_spec(model)
    wanted = list(stages) if stages is not None else spec.stage_names
    unknown = [s for s in wanted if s not in spec.stage_names]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} for {spec.name}; its stages are {spec.stage_names}")
    lookup = dict(stage_modules(model))
    return {name: lookup[name][-1] for name in wanted}


def stage_outputs(model: nn.Module, x: torch.Tensor, stages: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` and return the output feature map of each requested stage.

    Forward hooks capture the last module of each stage, so this works for every registry entry
    without tracing. The whole model runs (``tlcourse.features`` stops after the deepest stage).
    Use it for features from earlier layers (a linear probe per stage).
    """
    return capture(model, stage_layers(model, stages), stop_after=False, detach=False)(x)
