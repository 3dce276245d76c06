"""Split a backbone at one of its stages: run the frozen lower part once, train the top on its output.

Fine-tuning only the top stages of a network on a CPU is cheap if the frozen stages below them
run once: cache their output (the *activation* of the split stage) for every image, and every
epoch afterwards runs only the top of the network, forward and backward. That needs the network
cut in two at a stage boundary, for any architecture of the registry, without writing its forward
pass by hand (``nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:6])`` for one
EfficientNet, ``model.layer3`` for a ResNet, ``model.features[:28]`` for VGG-19).

:func:`split_at` does it with ``torch.fx``: it traces the model once in training and once in eval
mode (dropout written as ``F.dropout(x, training=self.training)`` is baked into a trace), with the
last module of the split stage kept whole, and cuts each graph at that module's output:

- ``lower``: images -> the split stage's activation;
- ``upper``: activation -> logits (everything the model does after the stage: the top stages,
  pooling, flattening, dropout, the head);
- ``pooled``: activation -> the head's input (the pooled feature vector a linear head classifies).

The three parts share their modules and parameters with the model (nothing is copied), so
training ``upper`` trains the model, and ``upper(lower(x))`` equals ``model(x)``. Stage names and
the head come from :func:`tlcourse.models.backbone_spec`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from tlcourse.models import backbone_spec

__all__ = ["StageSplit", "split_at", "split_below_top", "stage_below_top"]


class _Tracer(fx.Tracer):
    """An fx tracer that keeps ``boundary`` (and timm's untraceable layers) as single calls."""

    def __init__(self, boundary: str) -> None:
        leaves: tuple[type, ...] = ()
        functions: tuple[Callable[..., Any], ...] = ()
        if "timm" in sys.modules:  # timm's Conv2dSame & co. cannot be traced through (notebook 03)
            from timm.layers import get_notrace_functions, get_notrace_modules

            leaves = tuple(get_notrace_modules())
            functions = tuple(f for f in get_notrace_functions() if callable(f))
        super().__init__(autowrap_functions=functions)
        self.boundary = boundary
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (module_qualified_name == self.boundary or isinstance(m, self.leaves)
                or super().is_leaf_module(m, module_qualified_name))


class _ByMode(nn.Module):
    """Two traces of the same part, one per mode; ``forward`` runs the one of the current mode.

    The mode is read from the model's own modules that the part runs (its first module that is not
    a BatchNorm), so ``model.eval()`` and ``part.eval()`` both switch it, and BatchNorm layers set
    to eval mode on purpose while training do not.
    """

    def __init__(self, train_graph: fx.GraphModule, eval_graph: fx.GraphModule) -> None:
        super().__init__()
        self.train_graph = train_graph
        self.eval_graph = eval_graph
        leaves = [m for m in eval_graph.modules() if not list(m.children())
                  and not isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._mode_of = leaves[:1]  # a plain list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self._mode_of[0].training if self._mode_of else self.training
        return (self.train_graph if training else self.eval_graph)(x)


def _call_node(graph: fx.Graph, target: str) -> fx.Node:
    found = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(found) != 1:
        raise ValueError(f"Cannot split the model at {target!r}: the traced forward calls it {len(found)} times")
    return found[0]


def _set_output(graph: fx.Graph, node: fx.Node) -> None:
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (node,)


def _start_at(graph: fx.Graph, node: fx.Node) -> None:
    """Make ``node``'s output the graph's input: a new placeholder replaces it."""
    old_inputs = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(next(iter(graph.nodes))):
        activation = graph.placeholder("activation")
    node.replace_all_uses_with(activation)
    graph.erase_node(node)
    graph.eliminate_dead_code()
    for old in old_inputs:
        if old.users:
            raise ValueError("The model's input is used after the split stage; it cannot be split there")
        graph.erase_node(old)


def _part(model: nn.Module, boundary: str, head: str, part: str) -> _ByMode:
    graphs = []
    was_training = model.training
    try:
        for mode in (True, False):
            model.train(mode)
            traced = fx.GraphModule(model, _Tracer(boundary).trace(model))  # dead-code removal needs a module
            graph = traced.graph
            cut = _call_node(graph, boundary)
            if part == "lower":
                _set_output(graph, cut)
                graph.eliminate_dead_code()
            else:
                if part == "pooled":
                    _set_output(graph, _call_node(graph, head).args[0])
                _start_at(graph, cut)
            graph.lint()
            # a fresh module from the cut graph holds only the modules it calls (shared, not copied)
            graphs.append(fx.GraphModule(traced, graph, class_name=f"{part.capitalize()}Part"))
    finally:
        model.train(was_training)
    return _ByMode(*graphs).train(was_training)


@dataclass
class StageSplit:
    """A model cut after ``stage``: ``upper(lower(x)) == model(x)``; see :func:`split_at`."""

    stage: str  # the stage whose output is cached
    top: list[str]  # the stages above it, shallow to deep (fine-tuned on the cache)
    lower: nn.Module  # images -> activation
    upper: nn.Module  # activation -> logits
    pooled: nn.Module  # activation -> the head's input features

    def top_modules(self, model: nn.Module) -> dict[str, list[nn.Module]]:
        """``{stage name: its modules}`` for the top stages, then ``{"head": [the head]}``."""
        spec = backbone_spec(model)
        lookup = {name: [model.get_submodule(p) for p in paths] for name, paths in spec.stages}
        return {**{name: lookup[name] for name in self.top}, "head": [model.get_submodule(spec.head)]}


def split_at(model: nn.Module, stage: str) -> StageSplit:
    """Cut a registry backbone after ``stage`` (one of ``backbone_spec(model).stage_names``).

    Call it after the head is replaced (the parts run whatever modules the model holds when the
    split is made; replacing the head later is not seen by them).
    """
    spec = backbone_spec(model)
    names = spec.stage_names
    if stage not in names:
        raise ValueError(f"Unknown stage {stage!r} for {spec.name}; its stages are {names}")
    if stage == names[-1]:
        raise ValueError(f"{stage!r} is the deepest stage of {spec.name}: there is nothing above it to train")
    boundary = dict(spec.stages)[stage][-1]  # the stage's last module: its output is the stage's output
    parts = {part: _part(model, boundary, spec.head, part) for part in ("lower", "upper", "pooled")}
    return StageSplit(stage=stage, top=names[names.index(stage) + 1:], **parts)


def stage_below_top(model: nn.Module | str, top_stages: int = 2) -> str:
    """The name of the stage below the ``top_stages`` deepest ones (the one whose output is cached).

    EfficientNet-Lite: ``blocks.5`` (``blocks.6`` and ``head_conv`` train above it); ResNet:
    ``layer2`` (``layer3``, ``layer4``); VGG-19: ``block4`` (``block5``, ``fc``).
    """
    names = backbone_spec(model).stage_names
    if not 1 <= top_stages < len(names):
        raise ValueError(f"top_stages must be between 1 and {len(names) - 1}, got {top_stages}")
    return names[-top_stages - 1]


def split_below_top(model: nn.Module, top_stages: int = 2) -> StageSplit:
    """:func:`split_at` the stage below the ``top_stages`` deepest ones (:func:`stage_below_top`).

    EfficientNet-Lite: cache ``blocks.5``, train ``blocks.6`` and ``head_conv``; ResNet: cache
    ``layer2``, train ``layer3`` and ``layer4``; VGG-19: cache ``block4``, train ``block5`` and
    ``fc`` (the head is always trained).
    """
    return split_at(model, stage_below_top(model, top_stages))
