"""Tiny networks and a two-class dataset shared by the tests: ``TinyNet`` and ``WithClasses`` for the
error paths (model/data mismatches, untrusted checkpoints, reproducibility, device fallback), and
``StagedNet``, a three-stage CNN registered as the backbone "staged" for the fine-tuning and recipe
tests. Each trains in milliseconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tlcourse import models


class WithClasses(Dataset):
    """Random 8x8 images with labels 0 and 1, and a ``.classes`` saying there are two."""

    classes = ["cat", "dog"]

    def __init__(self, n: int = 16) -> None:
        self.x = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(n) % 2

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


STAGES = ["stem", "block1", "block2"]


class StagedNet(nn.Module):
    """stem -> block1 -> block2 -> fc, each conv stage with its own BatchNorm; its backbone name is "staged"."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        self.tlcourse_backbone = "staged"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


def staged_net(monkeypatch: pytest.MonkeyPatch, num_classes: int = 2) -> StagedNet:
    """Register "staged" in tlcourse.models.BACKBONES for one test (``monkeypatch`` undoes it) and return a
    fresh StagedNet built after ``torch.manual_seed(0)``, so every test starts from the same weights."""
    spec = models.BackboneSpec(name="staged", family="test", arch="staged", head="fc",
                               stages=tuple((s, (s,)) for s in STAGES), feature_dim=8, description="test network")
    monkeypatch.setitem(models.BACKBONES, "staged", spec)
    torch.manual_seed(0)
    return StagedNet(num_classes)
