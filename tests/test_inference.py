"""Predictions, test-time augmentation and model bundles (tlcourse.inference), on tiny models and
generated images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tlcourse.inference import (
    export_bundle,
    export_onnx,
    load_bundle,
    main,
    onnx_metadata,
    predict,
    predict_in_subprocess,
    predict_proba,
    tta_views,
)
from tlcourse.models import Preprocessing, build_backbone

PRE = Preprocessing(resize=72, crop=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


class LeftBright(nn.Module):
    """Logits (left-half mean, right-half mean): a model that is not flip-invariant at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean(dim=(1, 2, 3)), x[..., w:].mean(dim=(1, 2, 3))], dim=1) * 10


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0", num_classes=2, pretrained=False).eval()


@pytest.fixture()
def image_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGB"]):
        array = rng.integers(0, 256, size=(90 + 10 * i, 80, 3), dtype=np.uint8)
        image = Image.fromarray(array).convert(mode)
        paths.append(tmp_path / f"img{i}.{'png' if mode == 'L' else 'jpg'}")
        image.save(paths[-1])
    return paths


def test_hflip_tta_averages_an_image_and_its_mirror():
    x = torch.zeros(1, 1, 2, 4)
    x[..., :2] = 1.0  # bright left half
    views = tta_views(x, "hflip")
    assert len(views) == 2 and torch.equal(views[1][..., 2:], x[..., :2])
    plain = predict_proba(LeftBright(), x)
    tta = predict_proba(LeftBright(), x, tta="hflip")
    assert plain[0, 0] > 0.99, "without TTA the left-bright image is class 0"
    assert torch.allclose(tta, torch.full_like(tta, 0.5)), "with a flip the two halves weigh the same"
    with pytest.raises(ValueError, match="Unknown test-time augmentation"):
        tta_views(x, "rotate")


def test_predict_proba_rows_are_probabilities_and_mode_is_restored(tiny_model):
    tiny_model.train()
    probs = predict_proba(tiny_model, torch.randn(5, 3, 64, 64), batch_size=2)
    assert probs.shape == (5, 2)
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    assert tiny_model.training
    tiny_model.eval()


def test_predict_reads_a_file_with_the_given_preprocessing(tiny_model, image_files):
    p = predict(tiny_model, image_files[1], preprocessing=PRE, class_names=["alien", "predator"])  # a grey PNG
    assert p.label in ("alien", "predator") and p.label == ["alien", "predator"][p.index]
    assert p.confidence == pytest.approx(max(p.probabilities.values()))
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    x = PRE.eval_transform()(Image.open(image_files[1]).convert("RGB")).unsqueeze(0)
    assert p.probabilities["alien"] == pytest.approx(float(predict_proba(tiny_model, x)[0, 0]), abs=1e-7)
    with pytest.raises(ValueError, match="class names"):
        predict(tiny_model, image_files[0], preprocessing=PRE, class_names=["a", "b", "c"])


def test_the_bundle_states_its_preprocessing_and_loads_safely(tiny_model, tmp_path):
    path = export_bundle(tiny_model, tmp_path / "m.pt", class_names=["alien", "predator"], preprocessing=PRE,
                         tta="hflip", meta={"val_acc": 0.5})
    raw = torch.load(path, weights_only=True)  # plain data only: the safe loader accepts it
    assert raw["preprocessing"] == {"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                                    "interpolation": "bilinear"}
    assert raw["class_names"] == ["alien", "predator"] and raw["tta"] == "hflip"
    bundle = load_bundle(path)
    assert bundle.preprocessing == PRE and bundle.meta == {"val_acc": 0.5}
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key


def test_export_refuses_mismatched_class_names(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="2 outputs"):
        export_bundle(tiny_model, tmp_path / "m.pt", class_names=["only-one"], preprocessing=PRE)


def test_load_refuses_files_that_are_not_bundles(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a tlcourse model bundle"):
        load_bundle(tmp_path / "plain.pt")


def test_a_fresh_process_gives_identical_predictions(tiny_model, image_files, tmp_path):
    path = export_bundle(tiny_model, tmp_path / "m.pt", class_names=["alien", "predator"], preprocessing=PRE,
                         tta="hflip")
    here = [predict(tiny_model, f, preprocessing=PRE, class_names=["alien", "predator"], tta="hflip").as_dict()
            for f in image_files]
    there = predict_in_subprocess(path, image_files)
    assert [t["path"] for t in there] == [str(f) for f in image_files]
    assert [t["label"] for t in there] == [h["label"] for h in here]
    for t, h in zip(there, here):
        for name in ("alien", "predator"):
            assert t["probabilities"][name] == pytest.approx(h["probabilities"][name], abs=1e-6)


def test_the_command_line_prints_usage_without_arguments():
    done = subprocess.run([sys.executable, "-m", "tlcourse.inference"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_the_command_line_predicts_with_the_onnx_file_and_the_bundle_each_line_naming_its_runtime(
        tiny_model, image_files, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    names = ["alien", "predator"]
    bundle = export_bundle(tiny_model, tmp_path / "m.pt", class_names=names, preprocessing=PRE, tta="hflip")
    onnx_file = export_onnx(tiny_model, tmp_path / "m.onnx", 64, class_names=names, preprocessing=PRE, tta="hflip")
    files = [str(f) for f in image_files]
    assert main(["--onnx", str(onnx_file), "--bundle", str(bundle), *files]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["runtime"], r["path"]) for r in rows] == [("bundle", f) for f in files] + [("onnx", f) for f in files]
    here = [predict(tiny_model, f, preprocessing=PRE, class_names=names, tta="hflip").as_dict() for f in files]
    for runtime in ("bundle", "onnx"):
        there = [r for r in rows if r["runtime"] == runtime]
        assert [t["label"] for t in there] == [h["label"] for h in here]
        assert max(abs(t["probabilities"][n] - h["probabilities"][n]) for t, h in zip(there, here) for n in names) < 1e-4
    assert main(["--onnx", str(onnx_file), files[0]]) == 0  # the ONNX file alone
    assert [json.loads(line)["runtime"] for line in capsys.readouterr().out.splitlines()] == ["onnx"]


def test_the_onnx_export_predicts_like_pytorch_and_states_its_preprocessing(tiny_model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export_onnx(tiny_model, tmp_path / "sub" / "model.onnx", 64, class_names=["alien", "predator"],
                       preprocessing=PRE, tta="hflip")
    assert path.is_file() and not [p for p in path.parent.iterdir() if p != path], "written atomically, no leftovers"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's: the batch axis is free
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        expected = tiny_model(x)
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    facts = onnx_metadata(session)
    assert facts == onnx_metadata(path)
    assert facts["class_names"] == ["alien", "predator"] and facts["tta"] == "hflip" and facts["image_size"] == 64
    assert facts["preprocessing"] == {"resize": 72, "crop": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
                                      "interpolation": "bilinear"}
    assert facts["backbone"] == "efficientnet_lite0"
    assert not tiny_model.training, "the model's mode is restored"


def test_a_failed_onnx_export_leaves_no_file(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match="test-time augmentation"):
        export_onnx(LeftBright(), target, 8, tta="five-crop")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_an_adaptive_pool_onnx_cannot_express_is_exported_as_its_equivalent(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(196, 2)).eval()
    path = export_onnx(model, tmp_path / "pool.onnx", 11)  # a 5x5 map pooled to 7x7, as VGG-19's at 160 px
    assert isinstance(model[1], nn.AdaptiveAvgPool2d), "the model is restored after the export"
    x = torch.randn(3, 3, 11, 11)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max() < 1e-5
