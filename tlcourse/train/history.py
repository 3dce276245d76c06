"""The per-epoch record of a ``fit`` run: plain numbers, so it is JSON-serialisable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HISTORY_KEYS", "History", "improves"]

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr")


def improves(epoch: dict[str, Any], best: dict[str, Any] | None, min_delta: float = 0.0) -> bool:
    """Whether ``epoch`` beats ``best`` on validation: higher accuracy by more than ``min_delta``,
    or the same accuracy with a lower loss. The course's one rule for "a better epoch".

    On a small validation set many epochs tie on accuracy; the loss then says which one is more
    confident in its right answers.
    """
    if best is None:
        return True
    if epoch["val_acc"] > best["val_acc"] + min_delta:
        return True
    return epoch["val_acc"] == best["val_acc"] and epoch["val_loss"] < best["val_loss"]


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` run (plain numbers, JSON-serialisable): one dict per epoch
    with ``epoch`` (1-based), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``seconds`` and ``lr`` (the first parameter group's rate at the epoch's start)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    #: True when a callback (:class:`~tlcourse.train.tracking.EarlyStopping`) ended the run before
    #: its last epoch; False when it ran every epoch it was given (it hit the cap).
    stopped_early: bool = False

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def best_epoch(self) -> int | None:
        """The best epoch by :func:`improves`: the highest validation accuracy, a tie going to the
        lower validation loss, then to the earlier epoch."""
        best: dict[str, Any] | None = None
        for e in self.epochs:
            if best is None or improves(e, best):
                best = e
        return None if best is None else int(best["epoch"])

    @property
    def best_val_acc(self) -> float | None:
        """The highest validation accuracy of the run, or ``None`` before the first epoch."""
        return max((e["val_acc"] for e in self.epochs), default=None)

    def as_dict(self) -> dict[str, list[Any]]:
        """Column view: ``{"epoch": [1, 2, ...], "val_acc": [...], ...}`` (easy to plot)."""
        keys = list(self.epochs[0]) if self.epochs else list(HISTORY_KEYS)
        return {k: [e.get(k) for e in self.epochs] for k in keys}

    def to_json(self, indent: int | None = 2) -> str:
        """The history as JSON text, with the best epoch for a human reading the file."""
        return json.dumps({"epochs": self.epochs, "best_epoch": self.best_epoch,
                           "best_val_acc": self.best_val_acc, "stopped_early": self.stopped_early},
                          indent=indent)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Rebuild a ``History`` from :meth:`to_json`'s output."""
        raw = json.loads(text)
        return cls(epochs=list(raw["epochs"]), stopped_early=bool(raw.get("stopped_early", False)))
