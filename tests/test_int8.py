"""int8 static quantization of an exported frozen backbone (tlcourse.features.engine).

A tiny convolutional net on generated images: the quantized file is smaller, stays close to
float32 where the calibration covered the inputs, is kept beside the float32 export and is
reused without calibration; without calibration and without a kept file the engine refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tlcourse.features import engine

pytest.importorskip("onnxruntime.quantization")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _engine(model: nn.Module, root: Path, **kw: object) -> engine.OnnxFeatures:
    return engine.OnnxFeatures(model, ["pooled"], lambda x: {"pooled": model(x)}, threads=1, root=root, **kw)


@pytest.fixture
def model() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def test_int8_is_smaller_close_to_float32_and_kept(model: Net, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    calibration, x = torch.randn(32, 3, 16, 16, generator=gen), torch.randn(8, 3, 16, 16, generator=gen)
    ref = _engine(model, tmp_path)(x)["pooled"]
    q = _engine(model, tmp_path, precision="int8", calibration=calibration)
    got = q(x)["pooled"]
    fp32_file = next(p for p in tmp_path.glob("*.onnx") if ".int8" not in p.name)
    int8_file = engine.int8_path(fp32_file)
    assert int8_file.exists() and q.exported == [int8_file]
    assert int8_file.stat().st_size < fp32_file.stat().st_size
    cosine = torch.nn.functional.cosine_similarity(got, ref).min()
    assert cosine > 0.98, cosine
    assert not torch.equal(got, ref)  # it really is another model
    again = _engine(model, tmp_path, precision="int8")  # no calibration needed: the kept file is used
    assert torch.equal(again(x)["pooled"], got) and again.exported == []


def test_int8_without_calibration_or_file_refuses(model: Net, tmp_path: Path) -> None:
    with pytest.raises(engine.EngineUnavailable, match="calibration"):
        _engine(model, tmp_path, precision="int8")(torch.randn(2, 3, 16, 16))
    with pytest.raises(engine.EngineUnavailable, match="calibrate at the size"):
        _engine(model, tmp_path, precision="int8", calibration=torch.randn(4, 3, 8, 8))(torch.randn(2, 3, 16, 16))


def test_quantize_reads_the_input_name_and_checks_calibration(model: Net, tmp_path: Path) -> None:
    src = tmp_path / "net.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(src), dynamo=False, input_names=["image"],
                      output_names=["f"], dynamic_axes={"image": {0: "n"}}, opset_version=17)
    out = engine.quantize_int8(src, np.random.default_rng(0).normal(size=(8, 3, 16, 16)), activations="int8")
    assert out == tmp_path / "net.int8.onnx" and out.exists()
    with pytest.raises(ValueError, match="N, C, H, W"):
        engine.quantize_int8(src, np.zeros((3, 16, 16)))
    with pytest.raises(ValueError, match="activations"):
        engine.quantize_int8(src, np.zeros((1, 3, 16, 16)), activations="fp8")


def test_settings_accept_int8_only_on_onnxruntime() -> None:
    assert engine.engine_settings("cpu", precision="int8").precision == "int8"
    assert engine.engine_settings("cpu").precision == "float32"
    with pytest.raises(ValueError, match="ONNX Runtime only"):
        engine.engine_settings("cpu", engine="eager", precision="int8")
    with pytest.raises(ValueError, match="Unknown precision"):
        engine.EngineSettings(engine="onnxruntime", precision="fp16")
