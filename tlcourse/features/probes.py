"""Classifiers on extracted features: linear probes, logistic regression, nearest neighbours.

A linear classifier on a layer's features, a *linear probe*, is the head of the classic
frozen-backbone recipe minus the backbone; it also measures how general a layer's features are
for a new dataset (:func:`probe_accuracy_cv`). Cosine similarity between features gives image
retrieval (:func:`nearest_neighbours`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from tlcourse.cpu_threads import one_thread
from tlcourse.train import evaluate, train_one_epoch

__all__ = ["fit_logistic_regression", "nearest_neighbours", "probe_accuracy_cv", "train_linear_probe"]


def train_linear_probe(
    train_feats: torch.Tensor,
    train_y: torch.Tensor,
    val_feats: torch.Tensor,
    val_y: torch.Tensor,
    *,
    epochs: int = 25,
    lr: float = 1e-3,
    momentum: float = 0.9,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``nn.Linear`` on features with SGD and cross-entropy; evaluate after every epoch.

    The course's own loop (``tlcourse.train.train_one_epoch``) over a ``DataLoader`` of the
    feature vectors: the head is initialised after ``torch.manual_seed(seed)`` and the shuffle
    comes from ``RandomSampler(..., generator=torch.Generator().manual_seed(seed))``, so an image
    loop with that sampler visits the same batches with the same initial head, and the same seed
    gives the same result. It runs on one CPU thread: the matrices are far too small to split.

    Returns ``{"accuracy": final val accuracy, "best_accuracy", "seconds", "history": [per epoch
    dicts: epoch, train_loss, train_acc, val_loss, val_acc], "head": the trained nn.Linear}``.
    """
    x, y = train_feats.float(), train_y.long()
    vx, vy = val_feats.float(), val_y.long()
    if len(x) == 0:
        raise ValueError("No training features")
    n_classes = num_classes or int(max(y.max(), vy.max()) + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(x.shape[1], n_classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=batch_size,
                              sampler=RandomSampler(range(len(x)), generator=torch.Generator().manual_seed(seed)))
    val_loader = DataLoader(TensorDataset(vx, vy), batch_size=max(len(vx), 1))  # one batch: exact mean loss
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    with one_thread():
        for epoch in range(1, epochs + 1):
            fitted = train_one_epoch(head, train_loader, loss_fn, optimizer, "cpu")
            val = evaluate(head, val_loader, loss_fn, "cpu")
            history.append({"epoch": epoch, "train_loss": fitted.loss, "train_acc": fitted.accuracy,
                            "val_loss": val.loss, "val_acc": val.accuracy})
    return {"accuracy": history[-1]["val_acc"] if history else float("nan"),
            "best_accuracy": max((h["val_acc"] for h in history), default=float("nan")),
            "seconds": time.perf_counter() - start, "history": history, "head": head}


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _logistic_pipeline(C: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression  # heavy optional library
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardising puts every feature on the same scale, so one C (inverse L2 strength) suits
    # the small early stages and the wide final features alike, and lbfgs converges.
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))


def fit_logistic_regression(
    train_feats: Any,
    train_y: Any,
    val_feats: Any,
    val_y: Any,
    *,
    C: float = 1.0,
    max_iter: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Standardise + scikit-learn ``LogisticRegression`` (L2, lbfgs): a deterministic linear probe.

    Returns ``{"accuracy": on the validation features, "train_accuracy", "seconds", "pipeline"}``.
    """
    start = time.perf_counter()
    pipe = _logistic_pipeline(C, max_iter, seed).fit(_numpy(train_feats), _numpy(train_y))
    seconds = time.perf_counter() - start
    return {"accuracy": float(pipe.score(_numpy(val_feats), _numpy(val_y))),
            "train_accuracy": float(pipe.score(_numpy(train_feats), _numpy(train_y))),
            "seconds": seconds, "pipeline": pipe}


def probe_accuracy_cv(features: Any, labels: Any, *, folds: int = 5, C: float = 1.0, seed: int = 0,
                      max_iter: int = 2000) -> dict[str, Any]:
    """Stratified k-fold accuracy of :func:`fit_logistic_regression`'s pipeline on one feature set.

    On a small dataset one validation split is noisy; averaging over folds makes a per-layer
    comparison trustworthy. Returns ``{"mean", "std", "scores"}``.
    """
    from sklearn.model_selection import (  # heavy optional library
        StratifiedKFold,
        cross_val_score,
    )

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(_logistic_pipeline(C, max_iter, seed), _numpy(features), _numpy(labels), cv=cv)
    return {"mean": float(scores.mean()), "std": float(scores.std()), "scores": [float(s) for s in scores]}


def nearest_neighbours(queries: torch.Tensor, gallery: torch.Tensor, *, k: int = 5,
                       exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar gallery rows for each query row, by cosine similarity.

    Returns ``(indices (Q, k), similarities (Q, k))``, most similar first. With
    ``exclude_self=True`` (queries are the gallery itself) an item never retrieves itself.
    """
    q = nn.functional.normalize(queries.float(), dim=1)
    g = nn.functional.normalize(gallery.float(), dim=1)
    sims = q @ g.T
    if exclude_self:
        if sims.shape[0] != sims.shape[1]:
            raise ValueError("exclude_self needs the queries to be the gallery")
        sims.fill_diagonal_(-float("inf"))
    values, indices = sims.topk(k, dim=1)
    return indices, values
