"""A model that does not fit its data or its checkpoint: a head with the wrong number of outputs,
a checkpoint of another backbone or class count, inputs too small for the backbone. Each is a
clear error naming both sides and the fix, raised before anything changes. fit's label check
(labels beyond the head) is in tests/test_train.py::test_wrong_class_count_names_the_fix.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyNet, WithClasses
from torch.utils.data import DataLoader, Subset

from tlcourse import models
from tlcourse.models import model_info
from tlcourse.train import fit, load_checkpoint, save_checkpoint


def test_head_with_more_outputs_than_classes_stops_fit_before_training():
    # Labels 0/1 fit a 3-output head, so only the dataset's .classes can reveal the mistake.
    model = TinyNet(num_classes=3)
    before = {k: v.clone() for k, v in model.named_parameters()}
    loader = DataLoader(Subset(WithClasses(), range(12)), batch_size=4)
    with pytest.raises(ValueError, match=r"head has 3 outputs but the dataset has 2 classes.*replace_head\(model, 2\)"):
        fit(model, loader, loader, epochs=1, device="cpu", progress=False)
    # Raised at the first batch's outputs, before the loss and the first optimizer step.
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_check_head_names_both_counts_and_the_fix():
    model = models.build_backbone("resnet18", pretrained=False)  # ImageNet's 1000 outputs
    with pytest.raises(ValueError, match=r"\(fc\) has 1000 outputs, but the dataset has 2 classes \(cat, dog\).*replace_head\(model, 2\)"):
        models.check_head(model, WithClasses())
    models.replace_head(model, 2)
    assert models.check_head(model, WithClasses()) == 2
    assert models.check_head(model, 2) == 2
    with pytest.raises(ValueError, match="has 2 outputs, but the dataset has 5 classes"):
        models.check_head(model, 5)


def test_checkpoint_from_another_backbone_names_both(tmp_path):
    resnet = models.build_backbone("resnet18", 2, pretrained=False)
    path = save_checkpoint({"model": resnet.state_dict(), "model_info": model_info(resnet)}, tmp_path / "best.pt")
    lite = models.build_backbone("efficientnet_lite0", 2, pretrained=False)
    with pytest.raises(ValueError, match=r"(?s)holds resnet18 with 2 outputs.*the model is efficientnet_lite0 with 2 outputs.*missing keys"):
        load_checkpoint(path, lite)


def test_checkpoint_with_another_class_count_names_both(tmp_path):
    five = models.build_backbone("resnet18", 5, pretrained=False)
    path = save_checkpoint(five.state_dict(), tmp_path / "bare_state_dict.pt")  # no model_info: guessed
    two = models.build_backbone("resnet18", 2, pretrained=False)
    before = two.fc.weight.clone()
    with pytest.raises(ValueError, match=r"(?s)holds resnet18 with 5 outputs.*model is resnet18 with 2 outputs.*fc\.weight: checkpoint \(5, 512\) vs model \(2, 512\)"):
        load_checkpoint(path, two)
    assert torch.equal(two.fc.weight, before)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_input_too_small_for_the_backbone_says_the_minimum(name):
    # Measured: VGG-19 crashes inside max_pool2d below 32x32 ("Output size is too small");
    # ResNet and EfficientNet-Lite silently run on a feature map made of padding.
    model = models.build_backbone(name, 2, pretrained=False).eval()
    with pytest.raises(ValueError, match=rf"{name} got 8x8 inputs, but needs at least 32x32.*eval_transform"):
        model(torch.randn(1, 3, 8, 8))
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)  # the minimum itself works
