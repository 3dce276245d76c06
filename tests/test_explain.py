"""Grad-CAM (tlcourse.explain) on tiny hand-built models whose right answer is known."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from tlcourse.explain import gradcam, gradcam_grid, overlay, resolve_layer
from tlcourse.models import build_backbone, freeze_backbone


class HalfMasks(nn.Module):
    """A fixed 'conv layer' with two channels: the image's left half and its right half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        left, right = x.clone(), x.clone()
        left[..., w:] = 0
        right[..., :w] = 0
        return torch.cat([left, right], dim=1)


class LeftVsRight(nn.Module):
    """Class 0 scores the left-half channel, class 1 the right-half channel (global average pooling).

    Grad-CAM for class 0 must therefore light up the left half, and for class 1 the right half.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = HalfMasks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def test_gradcam_highlights_the_half_that_drives_the_chosen_class():
    model = LeftVsRight()
    x = torch.ones(1, 1, 8, 8)
    left, _ = gradcam(model, x, layer="features", class_index=0)
    right, _ = gradcam(model, x, layer="features", class_index=1)
    assert left.shape == (1, 8, 8)
    assert left[0, :, :3].min() > 0.9 and left[0, :, 5:].max() < 0.1
    assert right[0, :, 5:].min() > 0.9 and right[0, :, :3].max() < 0.1


def test_gradcam_explains_the_predicted_class_by_default():
    model = LeftVsRight()
    x = torch.zeros(2, 1, 8, 8)
    x[0, :, :, :4] = 1.0  # bright left: predicted class 0
    x[1, :, :, 4:] = 1.0  # bright right: predicted class 1
    cams, logits = gradcam(model, x, layer="features")
    assert logits.argmax(1).tolist() == [0, 1]
    assert cams[0, :, :3].mean() > cams[0, :, 5:].mean()
    assert cams[1, :, 5:].mean() > cams[1, :, :3].mean()


def test_gradcam_works_on_a_frozen_backbone_and_restores_its_mode():
    torch.manual_seed(0)
    model = build_backbone("efficientnet_lite0", num_classes=2, pretrained=False)
    freeze_backbone(model)
    for p in model.parameters():  # even the head frozen: nothing requires grad
        p.requires_grad_(False)
    model.train()
    cams, logits = gradcam(model, torch.randn(2, 3, 64, 64))
    assert cams.shape == (2, 64, 64) and logits.shape == (2, 2)
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0 + 1e-6
    assert model.training, "the model's train/eval mode is restored"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradient is accumulated"


def test_the_default_layer_is_the_deepest_convolutional_stage():
    model = build_backbone("efficientnet_lite0", num_classes=2, pretrained=False)
    assert resolve_layer(model) is model.bn2  # head_conv = conv_head + bn2 (with its activation)
    assert resolve_layer(model, "blocks.6") is model.blocks[6]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten())
    assert resolve_layer(plain) is plain[2]


def test_a_layer_without_spatial_maps_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="spatial"):
        gradcam(model, torch.randn(1, 3, 2, 2), layer=model[1])


def test_overlay_and_grid_return_images_and_a_figure():
    images = torch.rand(3, 3, 16, 16)
    cams = torch.rand(3, 16, 16)
    blended = overlay(images[0], cams[0])
    assert blended.shape == (16, 16, 3) and blended.min() >= 0 and blended.max() <= 1
    with pytest.raises(ValueError, match="differ in size"):
        overlay(images[0], torch.rand(8, 8))
    fig = gradcam_grid(images, cams, titles=["a", "b", "c"], colors=["green", "red", "green"], ncols=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
