"""What a model's weights say about it: which backbone, how many outputs, and a fingerprint.

Checkpoints record :func:`model_info` so a mismatch can be explained later;
:func:`describe_state_dict` guesses the same from bare tensors; :func:`state_dict_fingerprint`
tells whether two models hold identical weights (the feature cache's key, the check that
distributed ranks ended equal).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tlcourse.models.registry import BACKBONES

__all__ = ["describe_state_dict", "model_info", "state_dict_fingerprint"]


def describe_state_dict(state: object) -> tuple[str | None, int | None]:
    """Guess ``(backbone name, number of outputs)`` from a state_dict's head tensor.

    Used to explain a checkpoint that does not fit a model. The backbone is a registry name, or
    several joined by " or " when their heads look alike (the EfficientNet-Lites); None when no
    registry head is found.
    """
    if not isinstance(state, dict):
        return None, None
    names: list[str] = []
    outputs: int | None = None
    for spec in BACKBONES.values():
        weight = state.get(f"{spec.head}.weight")
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[1] == spec.feature_dim:
            names.append(spec.name)
            outputs = int(weight.shape[0])
    return (" or ".join(names) or None), outputs


def model_info(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint records about its model, so a mismatch can be explained later:
    the class name, the registry backbone (if built by ``build_backbone``) and the head size."""
    backbone, outputs = describe_state_dict(model.state_dict())
    return {
        "class": type(model).__name__,
        "backbone": getattr(model, "tlcourse_backbone", None) or backbone,
        "num_outputs": outputs,
    }


def state_dict_fingerprint(model_or_state: nn.Module | Mapping[str, torch.Tensor], *,
                           exclude: Sequence[str] = ()) -> str:
    """A SHA-256 of a model's weights and buffers: names, dtypes, shapes and values.

    The memory format does not count (a channels_last copy has the same fingerprint), and a
    ``DistributedDataParallel`` wrapper is looked through. Entries whose name starts with one
    of the ``exclude`` prefixes are left out (the feature cache leaves out the head, which does
    not change the features). Non-tensor entries are skipped with a warning.
    """
    if isinstance(model_or_state, nn.parallel.DistributedDataParallel):
        model_or_state = model_or_state.module
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        if any(name.startswith(prefix) for prefix in exclude):
            continue
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            warnings.warn(f"state_dict_fingerprint: {name} is not a tensor; skipped", stacklevel=2)
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
