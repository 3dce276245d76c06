"""How features plug into ``fit``: a :class:`Callback` gets told about each step of the run.

``fit`` itself only repeats :func:`~tlcourse.train.loops.train_one_epoch` and
:func:`~tlcourse.train.loops.evaluate`. Everything else (checkpoints and resume, gradual
unfreezing, multi-process training) is a callback that reads and changes the shared
:class:`Run`. fastai's callbacks and Lightning's hooks work the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tlcourse.runtime import DeviceSettings
from tlcourse.train.history import History
from tlcourse.train.loops import EpochStats

__all__ = ["Callback", "EpochEndFunction", "Run"]


def _same(values: Sequence[float], op: str) -> list[float]:
    return [float(v) for v in values]


@dataclass
class Run:
    """The state of one ``fit`` run that callbacks read and change."""

    model: nn.Module  # what trains (maybe wrapped, e.g. by DistributedDataParallel)
    optimizer: torch.optim.Optimizer
    settings: DeviceSettings
    train_loader: Iterable[Any]
    val_loader: Iterable[Any]
    epochs: int
    seed: int
    history: History
    scheduler: Any = None
    progress: bool = True
    epoch: int = 0  # the current epoch, 1-based
    start_epoch: int = 1  # a resume moves it on
    rank: int = 0  # this process's rank in a multi-process run
    stop: bool = False  # a callback sets it to end the run after this epoch (early stopping)
    #: ``reduce(values, op)`` combines numbers over the processes ("sum", "min", "max");
    #: the identity in a single process. A multi-process callback replaces it.
    reduce: Callable[[Sequence[float], str], list[float]] = field(default=_same)

    @property
    def core(self) -> nn.Module:
        """The model without a wrapper: what checkpoints hold, loadable anywhere."""
        return getattr(self.model, "module", self.model)

    @property
    def main(self) -> bool:
        """Whether this process shows progress and writes files (rank 0)."""
        return self.rank == 0

    def say(self, message: str) -> None:
        """Print a line from the main process only, without breaking progress bars."""
        if self.main:
            tqdm.write(message)


class Callback:
    """Base class for ``fit`` callbacks: override the events you need.

    Callbacks run in ascending ``order`` (ties in the order given). ``after_train`` and
    ``after_eval`` may return changed statistics (a multi-process run sums them over ranks).
    """

    order = 0

    def on_fit_start(self, run: Run) -> None:
        """Before the first epoch (resume, set-up)."""

    def on_epoch_start(self, run: Run) -> None:
        """At the start of every epoch, after re-seeding."""

    def after_train(self, run: Run, stats: EpochStats) -> EpochStats:
        """After the epoch's training pass."""
        return stats

    def after_eval(self, run: Run, stats: EpochStats) -> EpochStats:
        """After the epoch's validation pass."""
        return stats

    def on_epoch_end(self, run: Run) -> None:
        """After the epoch is in ``run.history`` (``run.history.epochs[-1]``); set ``run.stop``
        to end the run here."""

    def on_fit_end(self, run: Run) -> None:
        """After the last epoch."""


EpochEnd = Callable[[int, Mapping[str, Any], nn.Module], None]


class EpochEndFunction(Callback):
    """Wraps a plain ``function(epoch, stats, model)`` as an ``on_epoch_end`` callback."""

    def __init__(self, function: EpochEnd) -> None:
        self.function = function

    def on_epoch_end(self, run: Run) -> None:
        self.function(run.epoch, dict(run.history.epochs[-1]), run.model)
