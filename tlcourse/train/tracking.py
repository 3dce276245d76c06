"""Callbacks that watch validation: stop on a plateau, and keep the best epoch's weights.

A fixed number of epochs is either too few (the model still improves) or too many (it
overfits, and the last epoch is not the best). These two callbacks let ``fit`` train "until
validation stops improving" and hand back the best epoch, as fastai's ``EarlyStoppingCallback``
and ``SaveModelCallback`` do. "Better" is :func:`tlcourse.train.history.improves` everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tlcourse.train.callbacks import Callback, Run
from tlcourse.train.checkpoint import load_checkpoint
from tlcourse.train.history import improves

__all__ = ["EarlyStopping", "KeepBest"]


class EarlyStopping(Callback):
    """End the run when validation has not improved for ``patience`` epochs in a row.

    ``min_delta`` is the accuracy gain (a fraction, 0.01 = one point) that counts as
    improving. After ``fit``, ``history.stopped_early`` says whether the run stopped on a
    plateau (True) or used every epoch it was given (False: give it more epochs).
    """

    order = 60  # after Checkpoints (50): a resumed run's history is restored first

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, not {patience}.")
        self.patience, self.min_delta = patience, min_delta

    def on_fit_start(self, run: Run) -> None:
        self.best: dict[str, Any] | None = None
        self.waited = 0
        for epoch in run.history.epochs:  # resumed epochs count, so a resume stops where a straight run would
            self._see(run, epoch)

    def on_epoch_end(self, run: Run) -> None:
        self._see(run, run.history.epochs[-1])

    def _see(self, run: Run, epoch: dict[str, Any]) -> None:
        if improves(epoch, self.best, self.min_delta):
            self.best, self.waited = epoch, 0
        else:
            self.waited += 1
        if self.waited >= self.patience:
            run.stop = run.history.stopped_early = True


class KeepBest(Callback):
    """At the end of ``fit``, load the weights of the best validation epoch into the model.

    The best weights are kept in memory (on the CPU). With ``folder`` (the ``checkpoint_dir``
    given to ``fit``), a run resumed after the best epoch reads them from ``best.pt`` instead.
    """

    order = 60

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def on_fit_start(self, run: Run) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, run: Run) -> None:
        if run.history.best_epoch == run.epoch:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in run.core.state_dict().items()}

    def on_fit_end(self, run: Run) -> None:
        if self.state is not None:
            run.core.load_state_dict(self.state)
        elif self.folder is not None and (self.folder / "best.pt").exists():
            load_checkpoint(self.folder / "best.pt", run.core, map_location="cpu")
        elif run.history.epochs:
            raise RuntimeError("KeepBest has no best weights to restore: after a resume, pass the run's "
                               "checkpoint_dir as KeepBest(folder=...).")
