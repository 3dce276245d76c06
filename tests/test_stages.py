"""Splitting a backbone at a stage (tlcourse.stages): cached lower stages, trainable top."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tlcourse.models import backbone_spec, build_backbone
from tlcourse.stages import split_at, split_below_top


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=2)
    model.tlcourse_backbone = name
    return model.eval()


@pytest.fixture(scope="module")
def lite() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0", num_classes=2, pretrained=False).eval()


@pytest.mark.parametrize("name, cached, top", [
    ("efficientnet_lite0", "blocks.5", ["blocks.6", "head_conv"]),
    ("resnet18", "layer2", ["layer3", "layer4"]),
    ("vgg19", "block4", ["block5", "fc"]),
])
def test_upper_of_lower_is_the_whole_model(name, cached, top, lite):
    model = lite if name == "efficientnet_lite0" else _torchvision(name)
    split = split_below_top(model, 2)
    assert (split.stage, split.top) == (cached, top)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        activation = split.lower(x)
        assert torch.allclose(split.upper(activation), model(x), atol=1e-5)
        assert split.pooled(activation).shape == (2, backbone_spec(name).feature_dim)
    assert list(split.top_modules(model)) == [*top, "head"]


def test_the_parts_share_the_models_parameters(lite):
    split = split_at(lite, "blocks.5")
    model_params = {id(p) for p in lite.parameters()}
    upper = list(split.upper.parameters())
    assert upper and all(id(p) in model_params for p in upper)
    assert not {id(p) for p in split.lower.parameters()} & {id(p) for p in upper}, "no stage is in both parts"
    head = lite.get_submodule("classifier")
    before = head.weight.detach().clone()
    optimizer = torch.optim.SGD(upper, lr=0.1)
    split.upper(torch.randn(2, 192, 2, 2)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, head.weight), "training the upper part trains the model"


def test_dropout_follows_the_mode_of_the_part():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, drop_rate=0.5)
    model.tlcourse_backbone = "efficientnet_lite0"  # its F.dropout(training=self.training) is traced per mode
    split = split_at(model, "blocks.6")
    a = torch.randn(4, 320, 2, 2)
    with torch.no_grad():
        split.upper.train()
        assert not torch.equal(split.upper(a), split.upper(a))
        split.upper.eval()
        assert torch.equal(split.upper(a), split.upper(a))
        model.train()  # the parts follow the model's own mode too
        assert not torch.equal(split.upper(a), split.upper(a))
        model.eval()
        assert torch.equal(split.upper(a), split.upper(a))


def test_unknown_or_deepest_stages_are_refused(lite):
    with pytest.raises(ValueError, match="its stages are"):
        split_at(lite, "layer3")
    with pytest.raises(ValueError, match="nothing above it"):
        split_at(lite, "head_conv")
    with pytest.raises(ValueError, match="top_stages"):
        split_below_top(lite, 0)
