"""The GPU path of tlcourse.runtime and tlcourse.train, checked on the CPU: which settings each device gets
(``device_settings``, with CUDA faked by monkeypatching), and what ``fit`` then does to the model
and the batches (a model that records what it is fed, with the settings forced).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlcourse import models
from tlcourse.evaluation import accuracy_ci
from tlcourse.runtime import (
    CPU_CHANNELS_LAST,
    DeviceSettings,
    bf16_pays_off,
    device_settings,
    make_loader,
)
from tlcourse.train import evaluate, fit, load_checkpoint, train_one_epoch

CPU = torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA 'present' with bf16 support; returns a setter for bf16 support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    support = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: support["bf16"])
    return support


# ------------------------------------------------------------------------------ selection logic


def test_cuda_with_bf16_gets_bf16_channels_last_pinned(fake_cuda):
    s = device_settings("cuda")
    assert s.device == torch.device("cuda")
    assert (s.amp, s.amp_dtype, s.grad_scaler) == (True, torch.bfloat16, False)
    assert s.channels_last and s.pin_memory and s.non_blocking and s.cudnn_benchmark
    assert s.batch_size == 128


def test_older_cuda_gets_fp16_with_grad_scaler(fake_cuda):
    fake_cuda["bf16"] = False
    s = device_settings(torch.device("cuda", 1))
    assert s.device == torch.device("cuda", 1)
    assert (s.amp_dtype, s.grad_scaler) == (torch.float16, True)
    assert s.channels_last and s.pin_memory and s.non_blocking


def test_auto_picks_cuda_when_present(fake_cuda):
    assert device_settings().device.type == "cuda"
    assert device_settings("auto").amp_dtype == torch.bfloat16


def test_cpu_settings():
    s = device_settings("cpu")
    # float32 unless bf16 is asked for: the same on every CPU, whatever ran before.
    assert s == DeviceSettings(device=CPU, amp_dtype=None, grad_scaler=False, channels_last=CPU_CHANNELS_LAST,
                              non_blocking=False, pin_memory=False, batch_size=32, cudnn_benchmark=False)
    assert not s.amp
    assert device_settings("cpu", bf16=False).amp_dtype is None
    assert device_settings("cpu", bf16=True).amp_dtype == torch.bfloat16


def dense_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def depthwise_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_bf16_pays_off_for_dense_convolutions_only():
    assert bf16_pays_off(dense_net()) and bf16_pays_off(nn.Linear(3, 2))
    assert not bf16_pays_off(depthwise_net())
    assert bf16_pays_off(models.build_backbone("resnet18", pretrained=False))
    assert not bf16_pays_off(models.build_backbone("efficientnet_lite0", pretrained=False))


@pytest.mark.parametrize("capable", [True, False])
def test_precision_comes_from_the_arguments_never_from_the_cpu_or_earlier_calls(capable, monkeypatch):
    monkeypatch.setattr("tlcourse.runtime.cpu_supports_bf16", lambda: capable)
    s = device_settings("cpu")
    before = dataclasses.replace(s)
    for net in (depthwise_net(), dense_net()):  # preparing or training a model changes nothing
        s.prepare(net)
        for side in (8, 224):
            s.to_device(torch.zeros(1, 3, side, side))
            with s.autocast():
                assert not torch.is_autocast_enabled("cpu")
    assert s == before
    asked = device_settings("cpu", bf16=True)
    with asked.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert device_settings("cpu", inference=True).amp_dtype is None  # features stay float32


def test_fit_does_not_change_the_settings_it_is_given():
    settings = device_settings("cpu")
    before = dataclasses.replace(settings)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,))
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    model = nn.Sequential(dense_net(), nn.Linear(8, 2))
    fit(model, loader, loader, epochs=1, settings=settings, progress=False)
    assert settings == before and settings.amp_dtype is None


def test_mps_settings_use_no_channels_last():
    s = device_settings(torch.device("mps"))
    assert (s.amp_dtype, s.channels_last, s.pin_memory, s.non_blocking, s.batch_size) == (None, False, False, False, 64)


def test_overrides(fake_cuda):
    s = device_settings("cuda", channels_last=False, batch_size=7)
    assert not s.channels_last and s.batch_size == 7
    assert device_settings("cpu", channels_last=not CPU_CHANNELS_LAST).channels_last is not CPU_CHANNELS_LAST


def test_cuda_requested_but_absent_falls_back_to_cpu_settings(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="falling back to 'cpu'"):
        s = device_settings("cuda")
    assert s == device_settings("cpu")


def test_make_loader_pins_memory_only_where_settings_say(fake_cuda):
    ds = TensorDataset(torch.zeros(10, 3, 4, 4), torch.zeros(10, dtype=torch.long))
    assert make_loader(ds, device_settings("cuda")).pin_memory is True
    cpu_loader = make_loader(ds, device_settings("cpu"), shuffle=True)
    assert cpu_loader.pin_memory is False and cpu_loader.batch_size == 32
    assert make_loader(ds, device_settings("cpu"), batch_size=4).batch_size == 4


def test_loops_take_a_device_name_or_settings():
    model = nn.Linear(2, 2)
    loader = [(torch.ones(2, 2), torch.zeros(2, dtype=torch.long))]
    by_name = evaluate(model, loader, nn.CrossEntropyLoss(), "cpu")
    by_settings = evaluate(model, loader, nn.CrossEntropyLoss(), device_settings("cpu", channels_last=False))
    assert (by_name.loss, by_name.n) == (by_settings.loss, by_settings.n)


# ------------------------------------------------------------------ what fit does with settings


class Recorder(nn.Module):
    """Conv + BatchNorm + head that records, per forward, the input's memory format and dtype,
    the conv weight's memory format, and the autocast state."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        self.calls.append({
            "input_channels_last": x.is_contiguous(memory_format=torch.channels_last),
            "weight_channels_last": self.conv.weight.is_contiguous(memory_format=torch.channels_last),
            "input_dtype": x.dtype,
            "conv_dtype": h.dtype,
            "autocast": torch.is_autocast_enabled(x.device.type),
            "training": self.training,
        })
        return self.head(torch.relu(self.bn(h)).mean(dim=(2, 3)))


def loaders(n: int = 48) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 8, 8, generator=g) * 0.5
    images[torch.arange(n), labels] += 1.5
    ds = TensorDataset(images, labels)
    return DataLoader(ds, batch_size=16, shuffle=True), DataLoader(ds, batch_size=24)


def forced(**changes) -> DeviceSettings:
    return dataclasses.replace(device_settings("cpu"), **changes)


@pytest.mark.parametrize("channels_last", [True, False])
def test_fit_follows_channels_last_setting(channels_last):
    torch.manual_seed(0)
    model = Recorder()
    fit(model, *loaders(), epochs=1, progress=False, settings=forced(channels_last=channels_last))
    assert model.calls and {c["training"] for c in model.calls} == {True, False}  # train and val
    assert all(c["input_channels_last"] is channels_last for c in model.calls)
    assert all(c["weight_channels_last"] is channels_last for c in model.calls)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last


def test_cpu_default_is_the_measured_choice():
    torch.manual_seed(0)
    model = Recorder()
    fit(model, *loaders(), epochs=1, progress=False, device="cpu")
    assert all(c["input_channels_last"] is CPU_CHANNELS_LAST for c in model.calls)


def test_train_one_epoch_converts_batches_but_leaves_the_model_alone():
    torch.manual_seed(0)
    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, loaders()[0], nn.CrossEntropyLoss(), opt, forced(channels_last=True))
    assert all(c["input_channels_last"] and not c["weight_channels_last"] for c in model.calls)


def test_bf16_autocast_path_runs_and_learns():
    torch.manual_seed(0)
    model = Recorder()
    history = fit(model, *loaders(), epochs=4, lr=0.1, progress=False,
                  settings=forced(amp_dtype=torch.bfloat16, non_blocking=True))
    assert all(c["autocast"] and c["conv_dtype"] == torch.bfloat16 for c in model.calls)
    assert all(c["input_dtype"] == torch.float32 for c in model.calls)  # autocast casts inside
    assert model.conv.weight.dtype == torch.float32  # master weights stay float32
    assert history.epochs[-1]["val_acc"] > 0.8


def test_bf16_and_fp32_fine_tunes_reach_the_same_accuracy():
    """A short fine-tune in bf16 autocast lands inside the float32 run's confidence interval."""
    g = torch.Generator().manual_seed(1)
    n = 240
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 8, 8, generator=g)
    images[torch.arange(n), labels] += 0.12  # learnable, but not perfectly: accuracy below 1
    train = DataLoader(TensorDataset(images[:160], labels[:160]), batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(images[160:], labels[160:]), batch_size=40)
    results = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = Recorder()
        fit(model, train, val, epochs=3, lr=0.05, progress=False, settings=forced(amp_dtype=dtype))
        correct = []
        model.eval()
        with torch.no_grad():
            for x, y in val:
                correct.append(model(x).argmax(1) == y)
        results[dtype] = accuracy_ci(torch.cat(correct).numpy())
    fp32, bf16 = results[None], results[torch.bfloat16]
    assert 0.5 < fp32.value < 1.0  # it learned something, and the task is not trivial
    assert fp32.low <= bf16.value <= fp32.high and bf16.low <= fp32.value <= bf16.high


def test_fp16_path_uses_a_grad_scaler_and_checkpoints_it(tmp_path, monkeypatch):
    created = []
    real_scaler = torch.amp.GradScaler

    def recording_scaler(*args, **kwargs):
        created.append(real_scaler(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", recording_scaler)
    torch.manual_seed(0)
    model = Recorder()
    fit(model, *loaders(), epochs=1, lr=0.1, progress=False, checkpoint_dir=tmp_path,
        settings=forced(amp_dtype=torch.float16, grad_scaler=True))
    assert len(created) == 1 and created[0].get_scale() > 0
    assert all(c["conv_dtype"] == torch.float16 for c in model.calls)
    assert load_checkpoint(tmp_path / "last.pt")["scaler"]  # saved for a resume


def test_non_blocking_bookkeeping_gives_the_same_numbers():
    """The GPU path keeps the running sums on the device; the numbers must not change."""
    runs = []
    for non_blocking in (False, True):
        torch.manual_seed(0)
        model = Recorder()
        h = fit(model, *loaders(), epochs=2, progress=True, settings=forced(non_blocking=non_blocking))
        runs.append([{k: v for k, v in e.items() if k != "seconds"} for e in h.epochs])
    assert runs[0] == runs[1]


def test_fit_restores_cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    torch.manual_seed(0)
    fit(Recorder(), *loaders(), epochs=1, progress=False, settings=forced(cudnn_benchmark=True))
    assert torch.backends.cudnn.benchmark == before


def test_settings_device_wins_over_device_argument():
    torch.manual_seed(0)
    model = Recorder()
    fit(model, *loaders(), epochs=1, progress=False, device="cuda", settings=forced())  # no warning, no GPU needed
    assert model.conv.weight.device == CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_run():
    torch.manual_seed(0)
    model = Recorder()
    s = device_settings("cuda")
    history = fit(model, *loaders(), epochs=3, lr=0.1, progress=False, settings=s)
    assert model.conv.weight.is_cuda
    assert all(c["input_channels_last"] and c["conv_dtype"] == s.amp_dtype for c in model.calls)
    assert history.epochs[-1]["val_acc"] > 0.8
