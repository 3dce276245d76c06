"""Training: the loop the course teaches, and ``fit``, the epoch driver built on it.

- :mod:`~tlcourse.train.loops`: ``train_one_epoch`` and ``evaluate``, short enough to read in
  one screen (notebook 02 writes them inline first);
- :mod:`~tlcourse.train.fit`: ``fit``, which repeats them and calls the callbacks;
- :mod:`~tlcourse.train.callbacks`: the ``Callback`` protocol and the ``Run`` state;
- :mod:`~tlcourse.train.tracking`: ``EarlyStopping`` and ``KeepBest`` (the best validation epoch), ``Deadline``;
- :mod:`~tlcourse.train.history`: ``History``, the per-epoch record;
- :mod:`~tlcourse.train.checkpoint`: ``best.pt``/``last.pt`` and resume.

Device, seeds and mixed precision come from :mod:`tlcourse.runtime`; multi-process training
is a callback in :mod:`tlcourse.experiments.distributed`, which imports this package (never the reverse).
"""

from tlcourse.train.callbacks import Callback, EpochEndFunction, Run
from tlcourse.train.checkpoint import CHECKPOINT_FORMAT, Checkpoints, load_checkpoint, save_checkpoint
from tlcourse.train.fit import checked_loss, fit
from tlcourse.train.history import History, improves
from tlcourse.train.loops import (
    BN_POLICIES,
    EpochStats,
    Meter,
    evaluate,
    set_bn_policy,
    set_train_mode,
    train_one_epoch,
)
from tlcourse.train.tracking import Deadline, EarlyStopping, KeepBest

__all__ = [
    "BN_POLICIES",
    "CHECKPOINT_FORMAT",
    "Callback",
    "Checkpoints",
    "Deadline",
    "EarlyStopping",
    "EpochEndFunction",
    "EpochStats",
    "History",
    "KeepBest",
    "Meter",
    "Run",
    "checked_loss",
    "evaluate",
    "fit",
    "improves",
    "load_checkpoint",
    "save_checkpoint",
    "set_bn_policy",
    "set_train_mode",
    "train_one_epoch",
]
