"""The training loop the course teaches: one epoch of training, one pass of evaluation.

Read this file top to bottom from notebook 02: it is the whole recipe. ``fit``
(:mod:`tlcourse.train.fit`) repeats these two functions for several epochs and plugs
checkpoints, schedules, early stopping, gradual unfreezing and multi-process training in around
them. Where batches go and whether the forward pass runs in mixed precision come from one
settings object (:class:`tlcourse.runtime.DeviceSettings`); the one branch is the loss scaler
that float16 on an older GPU needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from tlcourse.runtime import DeviceSettings, device_settings

__all__ = ["BN_POLICIES", "EpochStats", "Meter", "evaluate", "set_bn_policy", "set_train_mode", "train_one_epoch"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochStats:
    """One pass over a loader: mean loss per sample, top-1 accuracy in [0, 1], samples, seconds."""

    loss: float
    accuracy: float
    n: int
    seconds: float


class Meter:
    """Sums of loss x batch size, right answers and samples, kept on the device.

    Reading them once per epoch, not every batch, spares a GPU-to-CPU wait per step.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.n, self.start = 0, time.perf_counter()

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.ndim == outputs.ndim:  # soft targets: compare with their most likely class
            targets = targets.argmax(dim=1)
        self.loss += loss.detach().double() * len(targets)
        self.correct += (outputs.detach().argmax(dim=1) == targets).sum()
        self.n += len(targets)

    def stats(self) -> EpochStats:
        if self.n == 0:
            raise ValueError("The loader yielded no samples (drop_last=True with a tiny dataset?).")
        return EpochStats(float(self.loss) / self.n, int(self.correct) / self.n, self.n,
                          time.perf_counter() - self.start)


#: The BatchNorm policies :func:`set_bn_policy` knows: layers whose parameters are all frozen keep
#: their statistics (the course's default), every layer keeps them, or every layer updates them
#: (plain ``model.train()``, the trap notebook 02 measures).
BN_POLICIES = ("frozen-eval", "eval", "train")


def set_bn_policy(model: nn.Module, policy: str) -> nn.Module:
    """Choose how ``model``'s BatchNorm layers behave in training (one of :data:`BN_POLICIES`).

    :func:`set_train_mode`, which every training epoch calls, reads the choice. ``"eval"`` suits a
    few small batches, whose statistics are noisier than the pretrained ones.
    """
    if policy not in BN_POLICIES:
        raise ValueError(f"Unknown BatchNorm policy {policy!r}; use one of {BN_POLICIES}.")
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.bn_policy = policy  # type: ignore[assignment]
    return model


def set_train_mode(model: nn.Module) -> list[str]:
    """Put ``model`` in training mode, except BatchNorm layers whose parameters are all frozen.

    A BatchNorm layer in train mode normalises with the batch's statistics and updates its
    running ones even when its weight and bias are frozen: the "frozen" features would drift
    towards the new data. Keeping such layers in eval mode makes frozen really frozen.
    :func:`set_bn_policy` chooses another rule. Returns the names of the layers kept in eval mode.
    """
    model.train()
    kept = []
    for name, module in model.named_modules():
        if not isinstance(module, _BatchNorm):
            continue
        policy = getattr(module, "bn_policy", "frozen-eval")
        params = list(module.parameters(recurse=False))
        frozen = bool(params) and not any(p.requires_grad for p in params)
        if policy == "eval" or (policy == "frozen-eval" and frozen):
            module.eval()
            kept.append(name)
    return kept


def train_one_epoch(model: nn.Module, loader: Batches, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    device: str | torch.device | DeviceSettings,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> EpochStats:
    """One epoch of training: forward, loss, backward and optimizer step for every batch.

    ``device`` may be a :class:`DeviceSettings` (mixed precision, channels_last). ``scheduler``
    is stepped after every batch, as ``OneCycleLR`` expects. Wrap ``loader`` in ``tqdm`` for a
    progress bar.
    """
    settings = device_settings(device)
    set_train_mode(model)
    meter = Meter(settings.device)
    for inputs, targets in loader:
        inputs, targets = settings.to_device(inputs), settings.to_device(targets)
        with settings.autocast():
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        if settings.scaler is None:
            loss.backward()
            optimizer.step()
        else:  # float16: scale the loss up so small gradients do not round to zero
            settings.scaler.scale(loss).backward()
            settings.scaler.step(optimizer)
            settings.scaler.update()
        if scheduler is not None:
            scheduler.step()
        meter.add(loss, outputs, targets)
    return meter.stats()


def evaluate(model: nn.Module, loader: Batches, loss_fn: LossFn,
             device: str | torch.device | DeviceSettings) -> EpochStats:
    """Mean loss and accuracy over ``loader`` in eval mode, without gradients.

    Eval mode makes BatchNorm use its running statistics and turns dropout off;
    ``torch.inference_mode`` skips autograd's bookkeeping. The model stays in eval mode.
    """
    settings = device_settings(device)
    model.eval()
    meter = Meter(settings.device)
    with torch.inference_mode():
        for inputs, targets in loader:
            inputs, targets = settings.to_device(inputs), settings.to_device(targets)
            with settings.autocast():
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
            meter.add(loss, outputs, targets)
    return meter.stats()
