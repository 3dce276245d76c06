"""The one training loop every recipe shares (:func:`train`, on top of ``fit``), its result type
(:class:`RecipeResult`) and the linear probe on cached features (:func:`linear_probe`).

Every strategy that trains layers (the top stages on cached activations, the whole network, a
network from scratch) runs :func:`train`: ``fit`` with :class:`~tlcourse.train.EarlyStopping`
and :class:`~tlcourse.train.KeepBest`, on whatever device it is given, then one scoring pass
on held-out data. What differs between strategies is only what trains (the module and its
parameter groups, with their learning rates) and the BatchNorm policy, and those are
arguments, never side effects of another choice.

Read it from a notebook with ``recipes.train??``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlcourse.features import fit_logistic_regression
from tlcourse.runtime import DeviceSettings, device_settings, seed_everything
from tlcourse.train import Callback, EarlyStopping, History, KeepBest, fit, set_bn_policy

__all__ = ["Data", "RecipeResult", "TensorBatches", "as_batches", "labels_of", "linear_probe", "probabilities", "train"]

#: The regularisation strengths a linear probe chooses among, on validation (smaller: stronger).
PROBE_CS = (0.01, 0.1, 1.0, 10.0)

#: What a recipe trains or scores on: ``(inputs, labels)`` tensors, or any iterable of such
#: batches (a ``DataLoader`` over image files, with its own augmentation).
Data = tuple[torch.Tensor, torch.Tensor] | Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class RecipeResult:
    """What one training run gives back: enough to compare it, pair it and tell how it ended."""

    model: Any  # the network with the best validation epoch's weights (eval mode), or a probe's pipeline
    val_accuracy: float  # of the best epoch (what the run was chosen by)
    epochs: int  # epochs run (0 for a probe, which is solved, not trained in epochs)
    best_epoch: int
    stopped_early: bool  # True: validation reached a plateau; False: the epoch cap ended the run
    collapsed: bool  # predicts one class for every validation image: not a model to score
    seconds: float
    device: str
    history: History
    correct: torch.Tensor | None = None  # per held-out image, for paired tests (with ``test``)
    accuracy: float | None = None  # on the held-out images (with ``test``)
    extra: dict[str, Any] = field(default_factory=dict)


class TensorBatches:
    """Batches of in-memory tensors (decoded images or cached activations), optionally shuffled
    and with a random half of each batch mirrored (flip augmentation).

    ``flipped`` holds the mirror images' tensors (for activations, where mirroring the input is
    not mirroring the map); without it a batch is flipped along its last axis. ``fit`` re-seeds
    :attr:`generator` every epoch, so order and flips repeat with the seed and survive a resume.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool = False,
                 flip: bool = False, flipped: torch.Tensor | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        self.x, self.y, self.batch_size, self.shuffle, self.flip, self.flipped = x, y, batch_size, shuffle, flip, flipped
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            xb = self.x[idx]
            if self.flip:
                coin = torch.rand(len(idx), generator=self.generator) < 0.5
                other = self.flipped[idx] if self.flipped is not None else xb.flip(-1)
                xb = torch.where(coin.view(-1, *([1] * (xb.ndim - 1))), other, xb)
            yield xb, self.y[idx]


def as_batches(data: Data, batch_size: int, **options: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """:class:`TensorBatches` of ``(inputs, labels)`` tensors with ``options``; a loader as it is."""
    return TensorBatches(*data, batch_size=batch_size, **options) if isinstance(data, tuple) else data


def labels_of(data: Data) -> torch.Tensor:
    """All labels of ``data``, in order, on the CPU."""
    return data[1].cpu() if isinstance(data, tuple) else torch.cat([torch.as_tensor(y) for _, y in data])


def probabilities(model: nn.Module, x: torch.Tensor | Data, device: str | torch.device | DeviceSettings | None = None,
                  batch_size: int = 128) -> torch.Tensor:
    """Class probabilities of ``model`` (in eval mode) for a tensor of inputs or a ``Data``, computed
    on ``device`` and returned on the CPU."""
    settings = device_settings(device)
    if isinstance(x, torch.Tensor):
        inputs: Iterable[torch.Tensor] = (x[i:i + batch_size] for i in range(0, len(x), batch_size))
    else:
        inputs = (batch[0] for batch in as_batches(x, batch_size))
    model.eval()
    with torch.inference_mode(), settings.autocast():
        return torch.cat([model(settings.to_device(b)).float().softmax(1).cpu() for b in inputs])


def train(module: nn.Module, groups: Sequence[dict[str, Any]], train: Data, val: Data, *, max_epochs: int,
          patience: int, batch_size: int = 32, flip: bool = False, flipped: torch.Tensor | None = None,
          bn: str = "frozen-eval", seed: int = 0, device: str | torch.device | DeviceSettings | None = None,
          test: Data | None = None, warmup_epochs: int = 0, callbacks: Sequence[Callback] = ()) -> RecipeResult:
    """Adam on ``groups`` (each with its own ``lr``) until validation accuracy has not improved for
    ``patience`` epochs or ``max_epochs`` ran out; the best epoch's weights are kept.

    Tensors are batched by :class:`TensorBatches` (``flip``: a random half mirrored, from
    ``flipped`` when given); a loader is used as it is. ``bn`` is the BatchNorm policy
    (:func:`tlcourse.train.set_bn_policy`). ``warmup_epochs`` raises every rate linearly from
    near 0 over that many epochs; ``callbacks`` join fit's (gradual unfreezing). With ``test``,
    the kept model is scored once on it (``accuracy`` and per-image ``correct``).
    """
    seed_everything(seed)
    settings = device_settings(device)
    set_bn_policy(module, bn)
    train_batches = as_batches(train, batch_size, shuffle=True, flip=flip, flipped=flipped)
    val_batches = as_batches(val, 128)
    optimizer = torch.optim.Adam(groups)
    steps = warmup_epochs * len(train_batches)  # type: ignore[arg-type]
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / steps)) if steps else None
    start = time.perf_counter()
    history = fit(module, train_batches, val_batches, epochs=max_epochs, optimizer=optimizer, scheduler=warmup,
                  scheduler_step="batch", seed=seed, settings=settings, progress=False,
                  callbacks=[EarlyStopping(patience), KeepBest(), *callbacks])
    seconds = time.perf_counter() - start
    best = history.epochs[history.best_epoch - 1]
    result = RecipeResult(module, best["val_acc"], len(history), history.best_epoch, history.stopped_early,
                          probabilities(module, val_batches, settings).argmax(1).unique().numel() == 1, seconds,
                          str(settings.device), history)
    if test is not None:
        result.correct = probabilities(module, test, settings).argmax(1) == labels_of(test)
        result.accuracy = float(result.correct.float().mean())
    return result


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
                 cs: Sequence[float] = PROBE_CS, seed: int = 0,
                 test: tuple[torch.Tensor, torch.Tensor] | None = None) -> RecipeResult:
    """A standardised logistic regression on cached features, its strength ``C`` chosen on
    validation (a tie goes to the ``C`` nearest 1). ``extra["C"]`` says which; with ``test``, the
    chosen probe is scored once on it. The backbone stays frozen, so there are no epochs to run.
    """
    start = time.perf_counter()
    fits = {c: fit_logistic_regression(*train, *val, C=c, seed=seed) for c in cs}
    best = max(cs, key=lambda c: (fits[c]["accuracy"], -abs(math.log10(c))))
    pipe = fits[best]["pipeline"]
    collapsed = len(set(pipe.predict(val[0].numpy()).tolist())) == 1
    result = RecipeResult(pipe, fits[best]["accuracy"], 0, 0, False, collapsed, time.perf_counter() - start, "cpu",
                          History(), extra={"C": best})
    if test is not None:
        result.correct = torch.as_tensor(pipe.predict(test[0].numpy())) == test[1].cpu()
        result.accuracy = float(result.correct.float().mean())
    return result
