"""Reproducibility on the CPU: the same seed gives the same features and the same logistic
regression accuracy, another seed other features. fit() with seeds:
tests/test_train.py::test_same_seed_gives_identical_runs_and_other_seeds_differ.
"""

from __future__ import annotations

import torch
from tiny_models import TinyNet
from torch.utils.data import DataLoader, Dataset

from tlcourse.runtime import seed_everything


class Flips(Dataset):
    """Random-flip augmentation drawn from the global torch RNG, as torchvision's transforms do."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.y = torch.arange(60) % 3
        self.x = torch.randn(60, 3, 8, 8, generator=g) * 0.8
        self.x[torch.arange(60), self.y, :, :4] += 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x), self.y[i]


def features_then_logistic_regression(seed: int) -> tuple[torch.Tensor, float]:
    from sklearn.linear_model import LogisticRegression

    seed_everything(seed)
    extractor = TinyNet().features.eval()  # random init and augmentation both use the seed
    feats, labels = [], []
    with torch.inference_mode():
        for x, y in DataLoader(Flips(), batch_size=16, shuffle=True):
            feats.append(extractor(x))
            labels.append(y)
    X, y = torch.cat(feats).numpy(), torch.cat(labels).numpy()
    clf = LogisticRegression(max_iter=500, random_state=seed).fit(X[:40], y[:40])
    return torch.cat(feats), float(clf.score(X[40:], y[40:]))


def test_same_seed_gives_the_same_features_and_accuracy():
    features_a, accuracy_a = features_then_logistic_regression(seed=5)
    features_b, accuracy_b = features_then_logistic_regression(seed=5)
    assert torch.equal(features_a, features_b)
    assert accuracy_a == accuracy_b
    features_c, _ = features_then_logistic_regression(seed=6)
    assert not torch.equal(features_a, features_c)  # so the seed is what makes them equal
