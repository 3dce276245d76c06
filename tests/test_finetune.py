"""Behaviour of tlcourse.finetune: unfreezing on schedule, BatchNorm drift, in-memory images.

A tiny three-stage CNN is registered as a backbone for each test, so the registry-driven helpers
(``unfreeze``, ``trainable_stages``, ``set_train_mode``) work on it exactly as on EfficientNet;
the data are generated 8x8 images. The whole file runs in a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import STAGES, StagedNet, staged_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlcourse.data import TensorImages, load_images
from tlcourse.finetune import (
    GradualUnfreezing,
    bn_drift,
    bn_running_stats,
    trainable_stages,
)
from tlcourse.models import freeze_backbone, param_groups, unfreeze
from tlcourse.train import fit, set_train_mode, train_one_epoch

NUM_CLASSES = 3


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> StagedNet:
    """A fresh StagedNet, registered in tlcourse.models.BACKBONES for the test."""
    return staged_net(monkeypatch, NUM_CLASSES)


def colour_loader(n: int = 24, seed: int = 0, batch_size: int = 8) -> DataLoader:
    """Class c is brighter in channel c; images far from zero mean, so BatchNorm statistics move."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    images = torch.randn(n, 3, 8, 8, generator=g) * 2 + 3
    images[torch.arange(n), labels] += 2
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)


# -------------------------------------------------------------------------- which stages train


def test_trainable_stages_follow_freezing(staged):
    assert trainable_stages(staged) == STAGES
    freeze_backbone(staged)
    assert trainable_stages(staged) == []
    unfreeze(staged, ["block2"])
    assert trainable_stages(staged) == ["block2"]


def test_schedule_unfreezes_the_right_stages_after_the_right_epochs(staged):
    freeze_backbone(staged)
    schedule = GradualUnfreezing({2: ["block2"], 3: ["block1"]})
    seen = []
    for epoch in range(1, 5):
        seen.append(trainable_stages(staged))  # what epoch `epoch` trains
        schedule(epoch, {}, staged)
    assert seen == [[], [], ["block2"], ["block1", "block2"]]
    assert schedule.log == [(2, ["block2"]), (3, ["block1"])]
    assert staged.fc.weight.requires_grad  # the head is never frozen by the schedule


def test_schedule_accepts_a_count_of_deepest_stages(staged):
    freeze_backbone(staged)
    schedule = GradualUnfreezing({1: 1, 2: 3})
    schedule(1, {}, staged)
    assert trainable_stages(staged) == ["block2"]
    schedule(2, {}, staged)
    assert trainable_stages(staged) == STAGES


def test_schedule_applies_every_earlier_entry_so_a_late_start_catches_up(staged):
    freeze_backbone(staged)
    GradualUnfreezing({1: ["block2"], 2: ["block1"]})(5, {}, staged)
    assert trainable_stages(staged) == ["block1", "block2"]


@pytest.mark.parametrize("schedule", [{0: ["block2"]}, {1.5: ["block2"]}, {True: ["block2"]}])
def test_schedule_rejects_epochs_fit_never_reports(schedule):
    with pytest.raises(ValueError, match="epochs"):
        GradualUnfreezing(schedule)


def test_schedule_rejects_unknown_stages(staged):
    with pytest.raises(ValueError, match="layer3"):
        GradualUnfreezing({1: ["layer3"]})(1, {}, staged)


def test_schedule_inside_fit_trains_frozen_stages_only_after_their_epoch(staged):
    freeze_backbone(staged)
    loader = colour_loader()
    snapshots = {}

    def spy(epoch, stats, model):
        snapshots[epoch] = {n: p.detach().clone() for n, p in model.named_parameters()}
        schedule(epoch, stats, model)

    schedule = GradualUnfreezing({2: ["block2"]})
    start = {n: p.detach().clone() for n, p in staged.named_parameters()}
    fit(staged, loader, loader, epochs=3, lr=0.05, progress=False, device="cpu", on_epoch_end=spy)
    # block2 stays put during epochs 1-2 and moves in epoch 3; block1 never moves.
    assert torch.equal(snapshots[2]["block2.0.weight"], start["block2.0.weight"])
    assert not torch.equal(snapshots[3]["block2.0.weight"], snapshots[2]["block2.0.weight"])
    assert torch.equal(snapshots[3]["block1.0.weight"], start["block1.0.weight"])
    assert not torch.equal(snapshots[1]["fc.weight"], start["fc.weight"])


class Wrapped(nn.Module):
    """A module fit trains that holds the backbone (as TopStages holds it above a cut)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_schedule_acts_on_the_backbone_it_is_given_inside_another_module(staged):
    freeze_backbone(staged)
    loader = colour_loader()
    schedule = GradualUnfreezing({1: ["block2"]}, model=staged)
    start = staged.block2[0].weight.detach().clone()
    fit(Wrapped(staged), loader, loader, epochs=2, lr=0.05, progress=False, device="cpu", callbacks=[schedule])
    assert schedule.log == [(1, ["block2"])] and trainable_stages(staged) == ["block2"]
    assert not torch.equal(staged.block2[0].weight, start)
    with pytest.raises(ValueError, match="not registered|tlcourse_backbone|backbone"):
        GradualUnfreezing({1: ["block2"]})(1, {}, Wrapped(staged))  # without model=, the wrapper is no backbone


def test_schedule_survives_a_resumed_fit(staged, tmp_path):
    """Stop after epoch 2, resume in a fresh process (fresh model, fresh callback): same result."""
    loader = colour_loader()

    def run(model, epochs):
        return fit(model, loader, loader, epochs=epochs, lr=0.05, progress=False, device="cpu",
                   checkpoint_dir=tmp_path / "ckpt", on_epoch_end=GradualUnfreezing({2: ["block2"], 3: ["block1"]}))

    freeze_backbone(staged)
    run(staged, 2)
    assert trainable_stages(staged) == ["block2"]

    torch.manual_seed(0)
    resumed = StagedNet(NUM_CLASSES)
    freeze_backbone(resumed)  # as a learner re-running the notebook would
    history = run(resumed, 4)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]
    assert trainable_stages(resumed) == ["block1", "block2"]

    torch.manual_seed(0)
    straight = StagedNet(NUM_CLASSES)
    freeze_backbone(straight)
    fit(straight, loader, loader, epochs=4, lr=0.05, progress=False, device="cpu",
        on_epoch_end=GradualUnfreezing({2: ["block2"], 3: ["block1"]}))
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


# -------------------------------------------------------------------------- BatchNorm drift


def test_bn_drift_is_zero_for_identical_snapshots(staged):
    snapshot = bn_running_stats(staged)
    assert set(snapshot) == {"stem.1", "block1.1", "block2.1"}
    assert all(v == 0.0 for v in bn_drift(snapshot, bn_running_stats(staged)).values())


def test_bn_drift_is_in_units_of_the_old_standard_deviation():
    before = {"bn": {"running_mean": torch.zeros(2), "running_var": torch.tensor([4.0, 1.0])}}
    after = {"bn": {"running_mean": torch.tensor([1.0, -1.0]), "running_var": torch.ones(2)}}
    assert bn_drift(before, after, eps=0.0)["bn"] == pytest.approx((1 / 2 + 1 / 1) / 2)


def test_bn_drift_needs_snapshots_of_the_same_layers(staged):
    snapshot = bn_running_stats(staged)
    with pytest.raises(ValueError, match="stem.1"):
        bn_drift(snapshot, {k: v for k, v in snapshot.items() if k != "stem.1"})


def test_frozen_bn_left_in_train_mode_drifts_even_without_gradients(staged):
    """The bug set_train_mode prevents: requires_grad=False does not stop running statistics."""
    freeze_backbone(staged)
    before = bn_running_stats(staged)
    staged.train()  # the naive loop
    with torch.no_grad():
        for x, _ in colour_loader():
            staged(x)
    drift = bn_drift(before, bn_running_stats(staged))
    assert min(drift.values()) > 0.01  # every layer moved, though nothing was trained


def test_set_train_mode_keeps_frozen_bn_still_and_lets_trained_bn_move(staged):
    freeze_backbone(staged)
    unfreeze(staged, ["block2"])
    before = bn_running_stats(staged)
    loader = colour_loader()
    optimizer = torch.optim.SGD(param_groups(staged, backbone_lr=0.01, head_lr=0.1), lr=0.01)
    train_one_epoch(staged, loader, nn.CrossEntropyLoss(), optimizer, torch.device("cpu"))
    drift = bn_drift(before, bn_running_stats(staged))
    assert drift["stem.1"] == 0.0 and drift["block1.1"] == 0.0
    assert drift["block2.1"] > 0.0
    assert set_train_mode(staged) == ["stem.1", "block1.1"]


# -------------------------------------------------------------------------- in-memory images


class PilImages(torch.utils.data.Dataset):
    def __init__(self, n: int = 6) -> None:
        self.arrays = [np.full((8, 8, 3), 40 * i, dtype=np.uint8) for i in range(n)]

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int):
        return Image.fromarray(self.arrays[i]), i % 2


def test_load_images_decodes_the_chosen_items_once():
    images, labels = load_images(PilImages(), [1, 4])
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert images[0].unique().tolist() == [40] and images[1].unique().tolist() == [160]
    assert labels.tolist() == [1, 0]


def test_tensor_images_resize_and_normalise():
    images = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    ds = TensorImages(images, [0, 1], size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    x, y = ds[1]
    assert x.shape == (3, 16, 16) and y == 1
    assert torch.allclose(x, torch.ones_like(x))  # white is +1 under mean = std = 0.5
    assert ds.targets == [0, 1]


def test_tensor_images_augment_only_for_training():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 3, 8, 8)
    ev = TensorImages(images, [0, 1], size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    tr = TensorImages(images, [0, 1], size=8, mean=(0.0,) * 3, std=(1.0,) * 3, train=True)
    torch.manual_seed(0)
    assert all(torch.equal(ev[0][0], ev[0][0]) for _ in range(3))
    assert torch.equal(ev[0][0], images[0].float() / 255)
    views = [tr[0][0] for _ in range(10)]
    assert all(v.shape == (3, 8, 8) for v in views)
    assert any(not torch.equal(v, views[0]) for v in views[1:])


def test_tensor_images_reject_float_images():
    with pytest.raises(ValueError, match="uint8"):
        TensorImages(torch.zeros(1, 3, 8, 8), [0], size=8, mean=(0.0,) * 3, std=(1.0,) * 3)
