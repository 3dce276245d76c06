"""Callbacks that watch validation: stop on a plateau, and keep the best epoch's weights; and one
that watches the clock (``Deadline``: stop before an epoch would end after a time limit).

A fixed number of epochs is either too few (the model still improves) or too many (it
overfits, and the last epoch is not the best). These two callbacks let ``fit`` train "until
validation stops improving" and hand back the best epoch, as fastai's ``EarlyStoppingCallback``
and ``SaveModelCallback`` do. "Better" is :func:`tlcourse.train.history.improves` everywhere.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from tlcourse.train.callbacks import Callback, Run
from tlcourse.train.checkpoint import load_checkpoint
from tlcourse.train.history import improves

__all__ = ["Deadline", "EarlyStopping", "KeepBest"]


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


class Deadline(Callback):
    """End the run after an epoch when the next one would end after ``at`` (a ``time.perf_counter()`` time).

    The next epoch is assumed to take as long as the slowest one so far, so a run stops early
    rather than late; with :class:`KeepBest` the best epoch so far is what comes back. ``hit`` says
    whether the clock ended the run (``fit FOLDER`` keeps its budget with it).
    """

    order = 70  # after EarlyStopping: a plateau that ends the run is reported as a plateau

    def __init__(self, at: float) -> None:
        self.at, self.hit = at, False

    def on_fit_start(self, run: Run) -> None:
        self.slowest, self.started = 0.0, time.perf_counter()

    def on_epoch_end(self, run: Run) -> None:
        now = time.perf_counter()
        self.slowest, self.started = max(self.slowest, now - self.started), now
        if not run.stop and run.epoch < run.epochs and now + self.slowest > self.at:
            run.stop, self.hit = True, True
