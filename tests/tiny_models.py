"""A tiny network and a two-class dataset shared by the error-path tests (model/data mismatches,
untrusted checkpoints, reproducibility, device fallback): small enough to train in milliseconds."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


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
