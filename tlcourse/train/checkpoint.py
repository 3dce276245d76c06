"""Checkpoints: ``best.pt``/``last.pt``, safe loading, resume.

Checkpoints hold tensors, numbers, strings, lists and dicts only, so they load with
``torch.load(..., weights_only=True)``: unpickling anything else could run code. They are
written atomically (:func:`tlcourse._io.atomic_save`), so a run killed mid-save keeps its last
good checkpoint. :class:`Checkpoints` is the ``fit`` callback that writes them and resumes from
``last.pt``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlcourse._io import DamagedFileError, atomic_save, read_or_explain, remove_partial_files
from tlcourse.models import describe_state_dict, model_info
from tlcourse.train.callbacks import Callback, Run

__all__ = ["CHECKPOINT_FORMAT", "Checkpoints", "load_checkpoint", "save_checkpoint"]

#: Bumped when the layout of ``last.pt`` / ``best.pt`` changes.
CHECKPOINT_FORMAT = 1
def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save a checkpoint dict atomically: the file is either the old one or the new one."""
    return atomic_save(obj, path)


def _state_dict_mismatch(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between ``model``'s state_dict and ``state`` (empty if none)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    for k, v in own.items():
        other = state.get(k)
        if isinstance(other, torch.Tensor) and other.shape != v.shape and len(problems) < 5:
            problems.append(f"{k}: checkpoint {tuple(other.shape)} vs model {tuple(v.shape)}")
    return problems


def _describe_model(state: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """"a resnet18 with 5 outputs (62 tensors)", from saved info or guessed from the tensors."""
    guessed_backbone, guessed_outputs = describe_state_dict(state)
    backbone = info.get("backbone") or guessed_backbone or info.get("class") or "an unknown model"
    outputs = info.get("num_outputs") or guessed_outputs
    return f"{backbone}{f' with {outputs} outputs' if outputs else ''} ({len(state)} tensors)"


_DAMAGED_REMEDY = ("(A run killed by an older tool, a copy cut short?) Delete it, or point checkpoint_dir "
                   "to another folder.")


def _format_problem(ckpt: Any) -> str | None:
    """Why ``ckpt`` is no checkpoint this version reads (not a dict, another format); else None."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a dict"
    if "format" in ckpt and ckpt["format"] != CHECKPOINT_FORMAT:  # bare state_dicts carry none
        return f"it has format {ckpt['format']!r}; this version of tlcourse reads format {CHECKPOINT_FORMAT}"
    return None


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that name the file and say what to do."""
    try:
        return read_or_explain(
            path, lambda p: torch.load(p, map_location=map_location, weights_only=True),
            what="checkpoint", remedy=_DAMAGED_REMEDY, check=_format_problem)
    except DamagedFileError as err:
        cause = err.__cause__
        blocked = ([line.strip() for line in str(cause).splitlines() if "GLOBAL" in line]
                   if isinstance(cause, pickle.UnpicklingError) else [])
        if not blocked:
            raise
        raise ValueError(
            f"Refused to load checkpoint {path}: it holds Python objects other than tensors, "
            f"numbers, strings, lists and dicts, and unpickling those can run arbitrary code "
            f"({blocked[0]}). tlcourse never writes such files. Only if you fully trust its source, "
            "load it yourself with torch.load(path, weights_only=False) and save its state_dict."
        ) from cause


def load_checkpoint(path: str | os.PathLike[str], model: nn.Module | None = None, *,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``fit``/``save_checkpoint`` with ``weights_only=True``.

    With ``model``, its weights are replaced by the checkpoint's (``ckpt["model"]``, or the whole
    file if it is a bare state_dict). A file of another model raises ``ValueError`` naming both.
    To go back to the best epoch: ``load_checkpoint(Path(checkpoint_dir) / "best.pt", model)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    ckpt = _read(path, map_location)
    if model is None:
        return ckpt
    state = ckpt.get("model", ckpt)
    problems = _state_dict_mismatch(model, state)
    if problems:
        saved = ckpt.get("model_info")
        raise ValueError(
            f"Checkpoint {path} was written by a different model: it holds "
            f"{_describe_model(state, saved if isinstance(saved, dict) else {})}, but the model is "
            f"{_describe_model(model.state_dict(), model_info(model))}. Differences: "
            + "; ".join(problems)
            + ". Build the same backbone with the same number of classes to load it; for "
            "fit: delete it, or point checkpoint_dir to another folder "
            "(or pass resume=False to fit to start over)."
        )
    model.load_state_dict(state)
    return ckpt


class Checkpoints(Callback):
    """The ``fit`` callback that writes ``best.pt`` when validation accuracy improves and ``last.pt``
    after every epoch, and resumes from ``last.pt`` (same model and seed) when ``resume``."""

    order = 50  # after callbacks that change the model at epoch end: last.pt must see their changes

    def __init__(self, folder: str | os.PathLike[str], *, resume: bool = True,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.folder, self.resume, self.meta = Path(folder), resume, dict(meta or {})

    def on_fit_start(self, run: Run) -> None:
        if run.main:
            for name in ("last.pt", "best.pt"):
                remove_partial_files(self.folder, name)
        last = self.folder / "last.pt"
        if self.resume and last.exists():
            run.start_epoch = self._restore(last, run)
            done = run.start_epoch - 1
            left = "nothing left to train" if done >= run.epochs else f"continuing with epoch {run.start_epoch}"
            run.say(f"[fit] resumed from {last}: {done} epoch(s) already done, {left} "
                    "(pass resume=False or another checkpoint_dir to start over)")
        low, high = run.reduce([run.start_epoch], "min")[0], run.reduce([run.start_epoch], "max")[0]
        if low != high:
            raise ValueError(
                f"The ranks disagree on where to resume (epochs {int(low)} to {int(high)}): "
                "checkpoint_dir must be a folder every rank sees (a shared file system), or pass "
                "resume=False.")

    def on_epoch_end(self, run: Run) -> None:
        if not run.main:
            return
        core = run.core
        common = {"format": CHECKPOINT_FORMAT, "model": core.state_dict(), "epoch": run.epoch,
                  "meta": self.meta, "model_info": model_info(core)}
        if run.history.best_epoch == run.epoch:  # strictly better than every earlier epoch
            save_checkpoint({**common, "val_acc": run.history.epochs[-1]["val_acc"]}, self.folder / "best.pt")
        save_checkpoint({
            **common,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.settings.scaler.state_dict() if run.settings.scaler is not None else None,
            "history": [dict(e) for e in run.history.epochs],
            "seed": run.seed,
            "trainable": [n for n, p in core.named_parameters() if p.requires_grad],
        }, self.folder / "last.pt")

    def _restore(self, path: Path, run: Run) -> int:
        """Load ``last.pt`` into the run's model, optimizer, scheduler and scaler; the next epoch."""
        ckpt = load_checkpoint(path, run.core)
        if ckpt.get("seed") != run.seed:
            raise ValueError(
                f"Checkpoint {path} was written with seed={ckpt.get('seed')}, but fit got "
                f"seed={run.seed}. Pass the same seed to continue that run, or delete the checkpoint "
                "/ use another checkpoint_dir (or resume=False) to start a new one.")
        trainable = set(ckpt.get("trainable", [n for n, _ in run.core.named_parameters()]))
        for name, param in run.core.named_parameters():  # callbacks may have unfrozen some
            param.requires_grad_(name in trainable)
        try:
            run.optimizer.load_state_dict(ckpt["optimizer"])
            if run.scheduler is not None and ckpt.get("scheduler") is not None:
                run.scheduler.load_state_dict(ckpt["scheduler"])
            if run.settings.scaler is not None and ckpt.get("scaler"):
                run.settings.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError) as err:
            raise ValueError(
                f"Checkpoint {path} has an optimizer/scheduler state that does not fit the ones "
                f"given to fit ({err}). Use the same optimizer setup, or delete the checkpoint / "
                "use another checkpoint_dir.") from err
        run.history.epochs.extend(dict(e) for e in ckpt.get("history", []))
        return int(ckpt["epoch"]) + 1
