"""Training: the loop the course teaches, and ``fit``, the epoch driver built on it.

- :mod:`~tlcourse.train.loops`: ``train_one_epoch`` and ``evaluate``, short enough to read in
  one screen (notebook 02 writes them inline first);
- :mod:`~tlcourse.train.fit`: ``fit``, which repeats them and calls the callbacks;
- :mod:`~tlcourse.train.callbacks`: the ``Callback`` protocol and the ``Run`` state;
- :mod:`~tlcourse.train.history`: ``History``, the per-epoch record;
- :mod:`~tlcourse.train.checkpoint`: ``best.pt``/``last.pt`` and resume.

Device, seeds and mixed precision come from :mod:`tlcourse.runtime`; multi-process training
is a callback in :mod:`tlcourse.distributed`, which imports this package (never the reverse).
"""

from tlcourse.train.callbacks import Callback, EpochEndFunction, Run
from tlcourse.train.checkpoint import CHECKPOINT_FORMAT, Checkpoints, load_checkpoint, save_checkpoint
from tlcourse.train.fit import checked_loss, fit
from tlcourse.train.history import History
from tlcourse.train.loops import EpochStats, Meter, evaluate, set_train_mode, train_one_epoch

__all__ = [
    "CHECKPOINT_FORMAT",
    "Callback",
    "Checkpoints",
    "EpochEndFunction",
    "EpochStats",
    "History",
    "Meter",
    "Run",
    "checked_loss",
    "evaluate",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
    "set_train_mode",
    "train_one_epoch",
]
