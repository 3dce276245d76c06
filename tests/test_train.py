"""Behaviour of tlcourse.train: the loops learn, runs repeat, checkpoints survive, errors explain.

Everything runs on the CPU with a tiny CNN and generated 8x8 images, so the file takes seconds.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlcourse import runtime
from tlcourse.runtime import amp_settings, seed_everything, select_device
from tlcourse.train import (
    EpochStats,
    History,
    checked_loss,
    evaluate,
    fit,
    load_checkpoint,
    save_checkpoint,
    set_train_mode,
    train_one_epoch,
)

NUM_CLASSES = 3
CPU = torch.device("cpu")


class ColourImages(Dataset):
    """3 classes of noisy 8x8 RGB images: class c is brighter in channel c. Random flips as augmentation."""

    def __init__(self, n: int, seed: int, augment: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.images = torch.randn(n, 3, 8, 8, generator=g) * 0.5
        self.images[torch.arange(n), self.labels] += 1.5
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.augment and torch.rand(()) < 0.5:  # uses the global torch RNG, as torchvision does
            image = image.flip(-1)
        return image, self.labels[i]


class TinyNet(nn.Module):
    """Conv + BatchNorm + dropout + linear head: enough moving parts to exercise the loops."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
        )
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_model(seed: int = 0, num_classes: int = NUM_CLASSES) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes)


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    train_loader = DataLoader(ColourImages(96, seed=1, augment=True), batch_size=16, shuffle=True)
    val_loader = DataLoader(ColourImages(48, seed=2), batch_size=24)
    return train_loader, val_loader


def run(loaders, model=None, **kwargs) -> tuple[TinyNet, History]:
    model = model if model is not None else make_model()
    kwargs = {"epochs": 3, "lr": 0.05, "progress": False, "device": "cpu", **kwargs}
    history = fit(model, *loaders, **kwargs)
    return model, history


def without_seconds(history: History) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history.epochs]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------------------------- learning


def test_fit_learns_separable_data(loaders):
    model = make_model()
    untrained = evaluate(model, loaders[1], nn.CrossEntropyLoss(), CPU)
    assert untrained.accuracy < 0.9  # so the accuracy below comes from training
    _, history = run(loaders, model, epochs=4)
    assert len(history) == 4
    assert history.epochs[-1]["val_acc"] > 0.9
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert set(history.epochs[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr"}
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]


def test_loops_return_epoch_stats(loaders):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    stats = train_one_epoch(model, loaders[0], nn.CrossEntropyLoss(), optimizer, CPU)
    assert isinstance(stats, EpochStats)
    assert stats.n == 96 and 0.0 <= stats.accuracy <= 1.0 and stats.loss > 0 and stats.seconds >= 0
    val = evaluate(model, loaders[1], nn.CrossEntropyLoss(), CPU)
    assert val.n == 48
    assert not model.training  # evaluation leaves the model in eval mode


def test_evaluate_computes_no_gradients(loaders):
    model = make_model()
    evaluate(model, loaders[1], nn.CrossEntropyLoss(), CPU)
    assert all(p.grad is None for p in model.parameters())


def test_batch_scheduler_is_stepped_every_batch(loaders):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    train_one_epoch(model, loaders[0], nn.CrossEntropyLoss(), optimizer, CPU, scheduler)
    assert scheduler.last_epoch == len(loaders[0])  # 6 batches, 6 steps


def test_progress_bars_do_not_break_training(loaders, capsys):
    _, history = run(loaders, epochs=1, progress=True)
    assert len(history) == 1
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.out + captured.err  # the per-epoch summary line


# ------------------------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_runs_and_other_seeds_differ(loaders):
    a, ha = run(loaders, seed=7)
    b, hb = run(loaders, seed=7)
    c, hc = run(loaders, seed=8)
    assert without_seconds(ha) == without_seconds(hb)
    assert_same_weights(a, b)
    assert not weights_equal(a, c)
    assert without_seconds(ha) != without_seconds(hc)


@pytest.mark.parametrize("with_scheduler", [False, True], ids=["default-sgd", "adam-onecycle-per-batch"])
def test_resumed_run_equals_uninterrupted_run(loaders, tmp_path, with_scheduler):
    def setup(model: nn.Module) -> dict:
        if not with_scheduler:
            return {}
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=3 * len(loaders[0]))
        return {"optimizer": optimizer, "scheduler": scheduler, "scheduler_step": "batch"}

    straight = make_model()
    _, h_straight = run(loaders, straight, epochs=3, checkpoint_dir=tmp_path / "a", **setup(straight))

    first = make_model()
    _, h_first = run(loaders, first, epochs=2, checkpoint_dir=tmp_path / "b", **setup(first))
    assert len(h_first) == 2
    # A new process would build a new model: a different init proves the weights come from last.pt.
    resumed = make_model(seed=123)
    _, h_resumed = run(loaders, resumed, epochs=3, checkpoint_dir=tmp_path / "b", **setup(resumed))

    assert [e["epoch"] for e in h_resumed.epochs] == [1, 2, 3]
    assert without_seconds(h_resumed) == without_seconds(h_straight)
    assert_same_weights(resumed, straight)
    # fit leaves the LAST epoch's weights in the model, the same ones last.pt holds.
    last = load_checkpoint(tmp_path / "b" / "last.pt")
    assert last["epoch"] == 3
    for k, v in resumed.state_dict().items():
        assert torch.equal(last["model"][k], v)


def test_resume_false_starts_over(loaders, tmp_path):
    run(loaders, epochs=2, checkpoint_dir=tmp_path)
    _, history = run(loaders, epochs=1, checkpoint_dir=tmp_path, resume=False)
    assert len(history) == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


# ---------------------------------------------------------------------------------- checkpoints


def test_best_checkpoint_reloads_with_weights_only(loaders, tmp_path):
    meta = {"num_classes": NUM_CLASSES, "class_names": ["red", "green", "blue"]}
    _, history = run(loaders, epochs=3, checkpoint_dir=tmp_path, meta=meta)
    raw = torch.load(tmp_path / "best.pt", weights_only=True)  # no custom classes were pickled
    assert raw["epoch"] == history.best_epoch
    assert raw["val_acc"] == history.best_val_acc
    assert raw["meta"] == meta
    torch.load(tmp_path / "last.pt", weights_only=True)

    fresh = make_model(seed=99)
    load_checkpoint(tmp_path / "best.pt", fresh)
    stats = evaluate(fresh, loaders[1], nn.CrossEntropyLoss(), CPU)
    assert stats.accuracy == pytest.approx(history.best_val_acc)


def test_resume_from_another_model_explains_what_to_do(loaders, tmp_path):
    run(loaders, epochs=1, checkpoint_dir=tmp_path)
    other = make_model(num_classes=4)  # a different head: shapes do not match
    with pytest.raises(ValueError, match=r"(?s)last\.pt.*different model.*head\.weight.*[Dd]elete it.*checkpoint_dir"):
        run(loaders, other, epochs=2, checkpoint_dir=tmp_path)


def test_corrupt_checkpoint_gives_clear_error(loaders, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint, maybe a half-copied file")
    with pytest.raises(ValueError, match=r"(?s)Could not read checkpoint .*last\.pt.*[Dd]elete it"):
        run(loaders, epochs=1, checkpoint_dir=tmp_path)


def test_resume_with_another_seed_is_refused(loaders, tmp_path):
    run(loaders, epochs=1, checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="seed=0.*seed=1"):
        run(loaders, epochs=2, checkpoint_dir=tmp_path, seed=1)


def test_atomic_save_keeps_old_checkpoint_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def save_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # part of the new file reaches the disk...
        raise OSError("disk full")  # ...then the write dies

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()

    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_history_is_json_serialisable(loaders):
    _, history = run(loaders, epochs=2)
    restored = History.from_json(history.to_json())
    assert restored.epochs == history.epochs
    json.dumps(history.as_dict())
    columns = history.as_dict()
    assert columns["epoch"] == [1, 2] and len(columns["val_acc"]) == 2
    assert history.best_val_acc == max(columns["val_acc"])
    assert history.epochs[history.best_epoch - 1]["val_acc"] == history.best_val_acc


# ---------------------------------------------------------------------------------- wrong usage


def test_wrong_class_count_names_the_fix(loaders):
    two_class_model = make_model(num_classes=2)  # the data has labels 0, 1, 2
    with pytest.raises(ValueError, match=r"head has 2 outputs but the data has labels up to 2.*replace_head\(model, num_classes\)"):
        run(loaders, two_class_model, epochs=1)
    with pytest.raises(ValueError, match="head has 2 outputs"):
        evaluate(two_class_model, loaders[1], checked_loss(nn.CrossEntropyLoss(), None), CPU)


def test_bad_scheduler_step_is_rejected(loaders):
    with pytest.raises(ValueError, match="scheduler_step"):
        run(loaders, epochs=1, scheduler_step="step")


def test_plateau_scheduler_gets_the_validation_loss(loaders):
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    _, history = run(loaders, model, epochs=2, optimizer=optimizer, scheduler=scheduler)
    assert scheduler.best == pytest.approx(min(e["val_loss"] for e in history.epochs))


# ------------------------------------------------------------------------ BatchNorm when frozen


class TwoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen_bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 1)
        self.trainable_bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trainable_bn(self.conv(self.frozen_bn(x))))


def test_set_train_mode_keeps_frozen_batchnorm_in_eval():
    model = TwoBN()
    model.frozen_bn.requires_grad_(False)
    model.eval()
    kept = set_train_mode(model)
    assert kept == ["frozen_bn"]
    assert model.training and model.trainable_bn.training and model.conv.training
    assert not model.frozen_bn.training


def test_frozen_batchnorm_running_stats_do_not_drift(loaders):
    model = TwoBN()
    model.frozen_bn.requires_grad_(False)
    frozen_before = model.frozen_bn.running_mean.clone()
    trainable_before = model.trainable_bn.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    train_one_epoch(model, loaders[0], nn.CrossEntropyLoss(), optimizer, CPU)
    assert torch.equal(model.frozen_bn.running_mean, frozen_before)
    assert not torch.equal(model.trainable_bn.running_mean, trainable_before)


def test_on_epoch_end_can_unfreeze_layers(loaders):
    model = make_model()
    model.features.requires_grad_(False)
    conv_start = model.features[0].weight.detach().clone()
    seen = []

    def unfreeze_after_first_epoch(epoch: int, stats: dict, m: nn.Module) -> None:
        seen.append((epoch, stats["val_acc"]))
        if epoch == 1:
            assert torch.equal(m.features[0].weight, conv_start)  # still frozen in epoch 1
            m.features.requires_grad_(True)

    _, history = run(loaders, model, epochs=2, on_epoch_end=unfreeze_after_first_epoch)
    assert seen == [(e["epoch"], e["val_acc"]) for e in history.epochs]
    # The default optimizer covers all parameters, so the unfrozen conv trained in epoch 2.
    assert not torch.equal(model.features[0].weight, conv_start)


def test_user_optimizer_missing_unfrozen_params_warns(loaders):
    model = make_model()
    optimizer = torch.optim.SGD(model.head.parameters(), lr=0.05)  # features are trainable too
    with pytest.warns(UserWarning, match="not in the optimizer"):
        run(loaders, model, epochs=1, optimizer=optimizer)


# ------------------------------------------------------------------------------- device and AMP


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps"])
def test_select_device_falls_back_to_cpu_with_a_warning(no_accelerators, name):
    with pytest.warns(UserWarning, match=r"not available.*falling back to 'cpu'"):
        device = select_device(name)
    assert device == CPU


def test_select_device_auto_picks_the_best_available(no_accelerators, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing automatically is silent
        assert select_device() == CPU
        assert select_device("auto") == CPU
        assert select_device("cpu") == CPU
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert select_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device().type == "cuda"


def test_select_device_rejects_typos():
    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        select_device("gpu")


def test_amp_settings_per_device(monkeypatch):
    assert amp_settings(CPU) == (False, None)
    assert amp_settings(torch.device("mps")) == (False, None)
    cuda = torch.device("cuda")  # constructing a device object needs no GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp_settings(cuda) == (True, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert amp_settings(cuda) == (True, torch.float16)


def test_seed_everything_repeats_random_draws():
    import random

    import numpy as np

    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_evaluate_numbers_equal_a_plain_python_loop(loaders):
    """The loops keep their sums on the device (no GPU sync per batch); the numbers must be
    exactly those of the textbook loop with loss.item() * batch_size in Python floats."""
    model = make_model()
    stats = evaluate(model, loaders[1], nn.CrossEntropyLoss(), CPU)
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loaders[1]:
            out = model(x.contiguous(memory_format=torch.channels_last) if runtime.CPU_CHANNELS_LAST else x)
            total += nn.functional.cross_entropy(out, y).item() * len(y)
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    assert (stats.loss, stats.accuracy, stats.n) == (total / n, correct / n, n)
