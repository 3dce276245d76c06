"""``fit``: the epoch driver. It repeats the loops of :mod:`tlcourse.train.loops` and lets
callbacks (:mod:`tlcourse.train.callbacks`) do everything else.

Each epoch is re-seeded from ``(seed, epoch)``: the shuffle order, augmentation and dropout of
epoch *k* are then the same whether the run went straight through or resumed from a checkpoint,
so a resumed run ends bit-identical to an uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from tqdm.auto import tqdm

from tlcourse.data import dataset_num_classes
from tlcourse.runtime import DeviceSettings, device_settings, epoch_seed, seed_everything
from tlcourse.train.callbacks import Callback, EpochEnd, EpochEndFunction, Run
from tlcourse.train.checkpoint import Checkpoints
from tlcourse.train.history import History
from tlcourse.train.loops import evaluate, train_one_epoch

__all__ = ["checked_loss", "fit"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def checked_loss(loss_fn: LossFn, num_classes: int | None) -> LossFn:
    """``loss_fn`` that first checks the labels fit the model's head, with a readable error.

    Otherwise CrossEntropyLoss fails with "Target N is out of bounds" on the CPU, or a
    device-side assert on a GPU. A head with more outputs than the dataset's classes is refused
    too: it trains without error but can predict classes that do not exist. On a GPU only the
    first batch is checked (reading the labels back would stall every step).
    """
    seen = [False]

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not seen[0] and not targets.dtype.is_floating_point and outputs.ndim == 2 and targets.numel():
            seen[0] = targets.device.type != "cpu"
            _check_labels(outputs.shape[1], int(targets.max()), num_classes)
        return loss_fn(outputs, targets)

    return loss


def _check_labels(num_outputs: int, max_label: int, num_classes: int | None) -> None:
    if num_classes is not None and num_outputs != num_classes:
        raise ValueError(
            f"The model's head has {num_outputs} outputs but the dataset has {num_classes} "
            f"classes. Give the model a head that matches the dataset with "
            f"replace_head(model, {num_classes}) from tlcourse.models before training.")
    if max_label >= num_outputs:
        raise ValueError(
            f"The model's head has {num_outputs} outputs but the data has labels up to "
            f"{max_label} (at least {max_label + 1} classes). Give the model a head that matches "
            "the dataset with replace_head(model, num_classes) from tlcourse.models before training.")


def _check_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, step: str) -> None:
    if step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', not {step!r}.")
    if scheduler is not None and getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise ValueError("The scheduler was built for another optimizer: pass that optimizer to fit "
                         "too (fit(..., optimizer=opt, scheduler=sched)).")
    if step == "batch" and isinstance(scheduler, ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau needs the validation loss: use scheduler_step='epoch'.")


def _warn_untrained_params(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Warn when a trainable parameter is missing from the optimizer: it would never change.
    Checked before every epoch, because a callback may unfreeze layers between epochs."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        warnings.warn(
            f"{len(missing)} trainable parameter(s) (e.g. {missing[0]!r}) are not in the optimizer "
            "and will not be updated. Build the optimizer over all the parameters you will "
            "unfreeze (frozen ones are skipped because their grad stays None), or let fit build it.",
            UserWarning, stacklevel=4)


def _reseed(run: Run) -> None:
    """Pin this epoch's shuffle, augmentation and dropout to ``(seed, epoch, rank)``."""
    seed = epoch_seed(run.seed, run.epoch, run.rank)
    seed_everything(seed)
    generator = getattr(run.train_loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _bar(loader: Iterable[Any], run: Run, part: str) -> Iterable[Any]:
    return tqdm(loader, desc=f"epoch {run.epoch}/{run.epochs} {part}", leave=False,
                disable=not (run.progress and run.main))


def _run_epoch(run: Run, callbacks: Sequence[Callback], loss_fn: LossFn, batch_scheduler: Any) -> None:
    """One epoch: train, validate, step an epoch scheduler, record, tell the callbacks."""
    _reseed(run)
    for cb in callbacks:
        cb.on_epoch_start(run)
    lr = float(run.optimizer.param_groups[0]["lr"])
    train = train_one_epoch(run.model, _bar(run.train_loader, run, "train"), loss_fn, run.optimizer,
                            run.settings, batch_scheduler)
    for cb in callbacks:
        train = cb.after_train(run, train)
    val = evaluate(run.model, _bar(run.val_loader, run, "val"), loss_fn, run.settings)
    for cb in callbacks:
        val = cb.after_eval(run, val)
    if run.scheduler is not None and batch_scheduler is None:
        if isinstance(run.scheduler, ReduceLROnPlateau):
            run.scheduler.step(val.loss)
        else:
            run.scheduler.step()
    run.history.epochs.append({"epoch": run.epoch, "train_loss": train.loss, "train_acc": train.accuracy,
                               "val_loss": val.loss, "val_acc": val.accuracy,
                               "seconds": train.seconds + val.seconds, "lr": lr})
    if run.progress:
        run.say(f"epoch {run.epoch}/{run.epochs}  train loss {train.loss:.4f} acc {train.accuracy:.3f}  "
                f"val loss {val.loss:.4f} acc {val.accuracy:.3f}  ({train.seconds + val.seconds:.1f}s)")
    for cb in callbacks:
        cb.on_epoch_end(run)


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: LossFn | None = None,
    scheduler: LRScheduler | ReduceLROnPlateau | None = None,
    scheduler_step: Literal["epoch", "batch"] = "epoch",
    device: str | torch.device | None = None,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_epoch_end: EpochEnd | None = None,
    settings: DeviceSettings | None = None,
    callbacks: Sequence[Callback] = (),
) -> History:
    """Train ``model`` for ``epochs`` epochs, validating after each; return the ``History``.

    The default optimizer is SGD with momentum 0.9 at ``lr`` over all parameters (frozen ones get
    no gradient and stay put, so a callback can unfreeze them later). ``scheduler_step`` is
    ``"epoch"`` (``StepLR``, ``ReduceLROnPlateau``) or ``"batch"`` (``OneCycleLR``).
    ``checkpoint_dir`` adds :class:`Checkpoints` (``best.pt``, ``last.pt``, resume from
    ``last.pt`` unless ``resume=False``); ``on_epoch_end(epoch, stats, model)`` and
    ``callbacks`` plug in more (gradual unfreezing, :class:`tlcourse.experiments.distributed.Distributed`).
    ``settings`` (:func:`tlcourse.runtime.device_settings`) overrides ``device``; fit does not
    change it. The model ends in eval mode with the last epoch's weights, or the best epoch's
    with :class:`~tlcourse.train.tracking.KeepBest`; :class:`~tlcourse.train.tracking.EarlyStopping`
    ends the run on a plateau. Seed before building the model: ``seed`` covers the run, not the
    initial weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}.")
    seed_everything(seed)
    settings = device_settings(settings or device)
    settings.prepare(model)
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    _check_scheduler(scheduler, optimizer, scheduler_step)
    run = Run(model=model, optimizer=optimizer, settings=settings, train_loader=train_loader,
              val_loader=val_loader, epochs=epochs, seed=seed, history=History(),
              scheduler=scheduler, progress=progress)
    extra = [EpochEndFunction(on_epoch_end)] if on_epoch_end is not None else []
    if checkpoint_dir is not None:
        extra.append(Checkpoints(checkpoint_dir, resume=resume, meta=meta))
    everyone = sorted([*callbacks, *extra], key=lambda cb: cb.order)
    loss = checked_loss(loss_fn or nn.CrossEntropyLoss(), dataset_num_classes(train_loader))
    with _cudnn_benchmark(settings.cudnn_benchmark):
        for cb in everyone:
            cb.on_fit_start(run)
        for epoch in range(run.start_epoch, epochs + 1):
            if run.stop:  # a callback ended the run (early stopping, or a resumed run that had stopped)
                break
            run.epoch = epoch
            _warn_untrained_params(model, optimizer)  # a callback may have unfrozen layers since
            _run_epoch(run, everyone, loss, scheduler if scheduler_step == "batch" else None)
        for cb in everyone:
            cb.on_fit_end(run)
    model.eval()
    return run.history
