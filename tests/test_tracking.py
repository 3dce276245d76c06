"""fit can stop and restore: EarlyStopping ends a run on a plateau, KeepBest hands back the best epoch,
Deadline ends it before the clock runs out.

Scripted validation results (a callback that rewrites the epoch's statistics) make the plateau and
the best epoch known in advance, so each test says exactly which epoch must win.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn

from tlcourse.train import Callback, Deadline, EarlyStopping, History, KeepBest, fit, improves
from tlcourse.train.loops import EpochStats


def data(n: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)
    return [(x[:8], y[:8]), (x[8:], y[8:])]


class Scripted(Callback):
    """Replaces epoch k's validation (accuracy, loss) with ``script[k - 1]`` and records the weights."""

    order = -10

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script, self.weights = script, {}

    def after_eval(self, run, stats: EpochStats) -> EpochStats:
        acc, loss = self.script[run.epoch - 1]
        self.weights[run.epoch] = run.core.weight.detach().clone()
        return dataclasses.replace(stats, accuracy=acc, loss=loss)


def train(script, *callbacks, epochs=None, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    scripted = Scripted(script)
    history = fit(model, data(), data(), epochs=epochs or len(script), lr=0.5, progress=False, device="cpu",
                  callbacks=[scripted, *callbacks], **kwargs)
    return model, history, scripted


def test_improves_is_higher_accuracy_or_the_same_accuracy_with_a_lower_loss():
    best = {"val_acc": 0.8, "val_loss": 0.5}
    assert improves({"val_acc": 0.81, "val_loss": 9.0}, best)
    assert improves({"val_acc": 0.8, "val_loss": 0.4}, best)
    assert not improves({"val_acc": 0.8, "val_loss": 0.5}, best)
    assert not improves({"val_acc": 0.805, "val_loss": 0.1}, best, min_delta=0.01)
    assert improves({"val_acc": 0.0, "val_loss": 9.0}, None)


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement():
    script = [(0.5, 1.0), (0.7, 0.9), (0.6, 0.8), (0.7, 0.95), (0.65, 0.7), (0.9, 0.1), (0.95, 0.1)]
    _, history, _ = train(script, EarlyStopping(patience=3))
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4, 5]  # epochs 3-5 did not beat epoch 2
    assert history.stopped_early and history.best_epoch == 2


def test_a_run_that_keeps_improving_uses_every_epoch_and_says_it_hit_the_cap():
    _, history, _ = train([(0.5, 1.0), (0.6, 0.9), (0.7, 0.8)], EarlyStopping(patience=1))
    assert len(history) == 3 and not history.stopped_early


def test_min_delta_treats_a_tiny_gain_as_no_gain():
    script = [(0.70, 1.0), (0.705, 0.5), (0.709, 0.4), (0.9, 0.1)]
    _, history, _ = train(script, EarlyStopping(patience=2, min_delta=0.01))
    assert len(history) == 3 and history.stopped_early


def test_keep_best_restores_the_best_epoch_with_ties_going_to_the_lower_loss():
    script = [(0.5, 1.0), (0.8, 0.6), (0.8, 0.4), (0.7, 0.3)]
    model, history, scripted = train(script, KeepBest())
    assert history.best_epoch == 3 and len(history) == 4
    assert torch.equal(model.weight, scripted.weights[3])
    assert not torch.equal(model.weight, scripted.weights[4])  # so the restore did something


def test_without_keep_best_the_model_keeps_the_last_epoch():
    model, _, scripted = train([(0.5, 1.0), (0.8, 0.6), (0.7, 0.3)])
    assert torch.equal(model.weight, scripted.weights[3])


def test_early_stopping_and_keep_best_survive_a_resume(tmp_path):
    script = [(0.5, 1.0), (0.9, 0.5), (0.6, 0.8), (0.7, 0.7), (0.6, 0.9), (0.95, 0.1)]
    straight, h_straight, s_straight = train(script, EarlyStopping(2), KeepBest(tmp_path / "a"),
                                             checkpoint_dir=tmp_path / "a")
    # the same run, interrupted after epoch 3 and resumed from its checkpoint
    train(script[:3], EarlyStopping(2), KeepBest(tmp_path / "b"), epochs=3, checkpoint_dir=tmp_path / "b")
    resumed, h_resumed, _ = train(script, EarlyStopping(2), KeepBest(tmp_path / "b"), epochs=len(script),
                                  checkpoint_dir=tmp_path / "b")
    assert [e["epoch"] for e in h_resumed.epochs] == [e["epoch"] for e in h_straight.epochs] == [1, 2, 3, 4]
    assert h_resumed.stopped_early and h_straight.stopped_early
    assert torch.equal(resumed.weight, straight.weight)
    assert torch.equal(straight.weight, s_straight.weights[2])


def test_keep_best_after_a_resume_without_its_folder_says_what_to_pass(tmp_path):
    train([(0.9, 0.1), (0.5, 1.0)], epochs=2, checkpoint_dir=tmp_path)
    with pytest.raises(RuntimeError, match="KeepBest\\(folder="):
        train([(0.9, 0.1), (0.5, 1.0), (0.4, 1.0)], KeepBest(), epochs=3, checkpoint_dir=tmp_path)


def test_patience_below_one_is_refused():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)


def test_history_records_a_stop_in_its_json():
    h = History(epochs=[{"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}], stopped_early=True)
    assert History.from_json(h.to_json()).stopped_early


class Slow(Callback):
    """Each epoch takes ``seconds`` (a sleep after its training pass)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def after_train(self, run, stats: EpochStats) -> EpochStats:
        time.sleep(self.seconds)
        return stats


def test_deadline_ends_the_run_before_an_epoch_would_end_after_it_and_keeps_the_best_so_far():
    script = [(0.5, 1.0), (0.7, 0.9), (0.8, 0.8), (0.9, 0.7), (0.95, 0.6), (0.99, 0.5)]
    start = time.perf_counter()
    clock = Deadline(start + 0.75)  # room for 2 epochs of 0.3 s, not for a third
    model, history, scripted = train(script, Slow(0.3), KeepBest(), clock)
    assert len(history.epochs) == 2 and clock.hit and not history.stopped_early
    assert time.perf_counter() - start < 0.75
    assert torch.equal(model.weight, scripted.weights[2])  # the best epoch the clock allowed


def test_deadline_far_away_or_a_last_epoch_does_not_count_as_hit():
    clock = Deadline(time.perf_counter() + 60)
    _, history, _ = train([(0.5, 1.0), (0.6, 0.9)], clock)
    assert len(history.epochs) == 2 and not clock.hit
    late = Deadline(time.perf_counter() - 1)  # already past: one epoch runs (fit trains at least once)
    _, history, _ = train([(0.5, 1.0), (0.6, 0.9)], late)
    assert len(history.epochs) == 1 and late.hit
