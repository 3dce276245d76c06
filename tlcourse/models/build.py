"""Building a registry backbone: the architecture, its pretrained weights and a fresh head."""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn

from tlcourse.models.registry import DEFAULT_BACKBONE, backbone_spec
from tlcourse.models.surgery import check_input_size, replace_head
from tlcourse.models.weights import (
    WeightsUnavailableError,
    lite_state_dict,
    offline_message,
    torchvision_weights_ready,
)

__all__ = ["build_backbone"]


def build_backbone(name: str = DEFAULT_BACKBONE, num_classes: int | None = None, *,
                   pretrained: bool = True) -> nn.Module:
    """Build a registry backbone, with ImageNet weights when ``pretrained``.

    With ``num_classes`` the 1000-class ImageNet head is replaced by a fresh linear layer.
    Raises :class:`WeightsUnavailableError` with instructions when the weights cannot be had.
    Every call is guarded against inputs smaller than the backbone accepts (:func:`check_input_size`).
    """
    spec = backbone_spec(name)
    if spec.family == "timm-lite":
        import timm  # heavy optional library: only the EfficientNet-Lite entries need it

        model = timm.create_model(spec.arch, pretrained=False)
        if pretrained:
            model.load_state_dict(lite_state_dict(spec, model))
    else:
        builder = getattr(tvm, spec.arch)
        if pretrained:
            torchvision_weights_ready(spec)
            try:
                model = builder(weights=spec.weights())
            except OSError as exc:  # URLError, socket errors: never a raw socket traceback
                raise WeightsUnavailableError(offline_message(spec, reason=str(exc))) from None
        else:
            model = builder(weights=None)
    model.tlcourse_backbone = spec.name  # lets backbone_spec(model) find the entry again
    model.register_forward_pre_hook(check_input_size)
    if num_classes is not None:
        replace_head(model, num_classes)
    return model
