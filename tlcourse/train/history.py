"""The per-epoch record of a ``fit`` run: plain numbers, so it is JSON-serialisable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HISTORY_KEYS", "History"]

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "lr")


@dataclass
class History:
    """Per-epoch metrics of a ``fit`` run (plain numbers, JSON-serialisable): one dict per epoch
    with ``epoch`` (1-based), ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``seconds`` and ``lr`` (the first parameter group's rate at the epoch's start)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the highest validation accuracy; the earliest on a tie."""
        if not self.epochs:
            return None
        return int(max(self.epochs, key=lambda e: (e["val_acc"], -e["epoch"]))["epoch"])

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
                           "best_val_acc": self.best_val_acc}, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Rebuild a ``History`` from :meth:`to_json`'s output."""
        return cls(epochs=list(json.loads(text)["epochs"]))
