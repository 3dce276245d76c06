"""Capture what layers of a model compute, with forward hooks: the one place the package hooks.

Every reader of intermediate activations (stage feature maps, a feature extractor's pooled
vectors, BatchNorm input statistics, Grad-CAM's activation) goes through :func:`capture`, in the
spirit of timm's ``FeatureHooks``: name the layers, run the model, get ``{name: tensor}``. The
hooks are always removed afterwards, so a model never keeps a stray hook.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Self

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Capture", "capture"]

#: A model's layers: module paths (``["layer3", "fc"]``), or ``{name: module path or module}``.
Layers = Sequence[str] | Mapping[str, str | nn.Module]


class _StopForward(Exception):
    """Raised by a hook once every requested layer has run: the rest of the network is skipped."""


class Capture:
    """Forward hooks that record, per forward pass, the output (or input) of named layers.

    Use it as a function, ``capture(model, ["layer3"])(x)``, which attaches the hooks for one
    forward pass, or as a context manager that keeps them for many::

        with capture(model, layers, pool=global_pool) as run:
            for x in batches:
                features = run(x)  # {name: tensor}

    Inside the ``with`` block, ``model(x)`` also fills :attr:`outputs` (the model's own output
    is then yours, as Grad-CAM needs).

    Args:
        layers: module paths, or ``{name: module path or module}`` to choose the keys.
        inputs: record the (first) input of these layers instead of their output (``True``: of
            all of them), e.g. the pooled vector a classifier head receives.
        pool: applied to each recorded tensor inside its hook (global pooling, per-channel
            statistics), so a big feature map is never kept.
        stop_after: when called, end the forward pass once every layer has been recorded, so a
            shallow layer does not pay for the layers above it.
        detach: record tensors without their autograd graph. ``False`` keeps it: the recorded
            tensor is the one the rest of the network uses (a leaf that requires grad when
            nothing below it does), so ``torch.autograd.grad(output, recorded)`` works, even
            on a frozen model (Grad-CAM).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Layers,
        *,
        inputs: bool | Collection[str] = False,
        pool: Callable[[Any], torch.Tensor] | None = None,
        stop_after: bool = True,
        detach: bool = True,
    ) -> None:
        self.model = model
        named = layers.items() if isinstance(layers, Mapping) else ((name, name) for name in layers)
        self.modules: dict[str, nn.Module] = {
            name: target if isinstance(target, nn.Module) else model.get_submodule(target)
            for name, target in named
        }
        if not self.modules:
            raise ValueError("capture needs at least one layer")
        self.of_input = set(self.modules) if inputs is True else set(inputs or ())
        unknown = self.of_input - set(self.modules)
        if unknown:
            raise ValueError(f"inputs names layers that are not captured: {sorted(unknown)}")
        self.pool = pool
        self.stop_after = stop_after
        self.detach = detach
        #: What the latest forward pass recorded, ``{name: tensor}``.
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = []
        self._running = False

    # ---------------------------------------------------------------- recording

    def _keep(self, value: Any) -> tuple[Any, Any]:
        """``(what the network goes on with, what is recorded)`` for one layer's tensor."""
        if isinstance(value, torch.Tensor) and not self.detach and torch.is_grad_enabled() \
                and not value.requires_grad:
            # Nothing below requires grad (a frozen backbone): a fresh leaf that does, so the
            # gradient of the model's output still reaches the recorded tensor.
            value = value.detach().requires_grad_(True)
        recorded = self.pool(value) if self.pool is not None else value
        if self.detach and isinstance(recorded, torch.Tensor):
            recorded = recorded.detach()
        return value, recorded

    def _record(self, name: str, value: Any) -> Any:
        value, self.outputs[name] = self._keep(value)
        if self.stop_after and self._running and len(self.outputs) == len(self.modules):
            raise _StopForward
        return value

    def _output_hook(self, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            return self._record(name, output)
        return hook

    def _input_hook(self, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            first = self._record(name, args[0])
            return (first, *args[1:])
        return hook

    # ---------------------------------------------------------------- attaching

    def attach(self) -> None:
        """Register the hooks (done by ``with`` and by a call outside ``with``)."""
        if self._handles:
            return
        for name, module in self.modules.items():
            if name in self.of_input:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(name)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(name)))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Self:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---------------------------------------------------------------- running

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run ``model(*args, **kwargs)`` and return ``{name: tensor}`` in the order asked for.

        With ``stop_after`` the forward pass ends as soon as the last requested layer has run.
        """
        attached_here = not self._handles
        self.attach()
        self.outputs.clear()
        self._running = True
        try:
            self.model(*args, **kwargs)
        except _StopForward:
            pass
        finally:
            self._running = False
            if attached_here:
                self.remove()
        missing = [name for name in self.modules if name not in self.outputs]
        if missing:
            raise ValueError(f"The layer(s) {missing} did not run in the forward pass")
        return {name: self.outputs[name] for name in self.modules}

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)


#: ``capture(model, layers, ...)`` is how the course spells it: the class, used as a function.
capture = Capture
