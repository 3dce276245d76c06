"""tlcourse.hooks.capture: the one forward-hook helper (stage maps, pooled inputs, Grad-CAM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlcourse.hooks import capture


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_call_returns_the_layers_in_order_and_removes_its_hooks():
    model, x = net(), torch.randn(2, 3, 8, 8)
    out = capture(model, ["2", "0"])(x)
    assert list(out) == ["2", "0"]
    assert out["0"].shape == (2, 4, 8, 8) and out["2"].shape == (2, 6, 4, 4)
    torch.testing.assert_close(out["2"], model[:3](x))
    assert hook_count(model) == 0


def test_stop_after_skips_the_layers_above_the_last_requested_one():
    model, x = net(), torch.randn(2, 3, 8, 8)
    ran = []
    model[5].register_forward_hook(lambda *a: ran.append(1))
    capture(model, {"early": "0"})(x)
    assert ran == []
    capture(model, {"early": "0"}, stop_after=False)(x)
    assert ran == [1]


def test_inputs_and_pool_give_the_vector_the_head_receives():
    model, x = net(), torch.randn(2, 3, 8, 8)
    out = capture(model, {"pooled": model[5], "mid": "2"}, inputs={"pooled"},
                  pool=lambda t: t.flatten(1) if t.dim() == 2 else t.mean(dim=(2, 3)))(x)
    torch.testing.assert_close(out["pooled"], model[:5](x))
    torch.testing.assert_close(out["mid"], model[:3](x).mean(dim=(2, 3)))


def test_the_context_manager_keeps_hooks_for_many_forwards_and_never_stops_model_calls():
    model = net()
    with capture(model, ["0"]) as run:
        a = run(torch.ones(1, 3, 8, 8))["0"]
        b = run(torch.zeros(1, 3, 8, 8))["0"]
        logits = model(torch.ones(1, 3, 8, 8))  # the caller's own forward runs to the end
        assert logits.shape == (1, 2)
        torch.testing.assert_close(run.outputs["0"], a)
        assert hook_count(model) == 1
    assert not torch.equal(a, b) and hook_count(model) == 0


def test_detach_false_lets_gradients_reach_a_frozen_layer():
    model, x = net(), torch.randn(2, 3, 8, 8)
    for p in model.parameters():
        p.requires_grad_(False)
    with capture(model, ["2"], detach=False, stop_after=False) as hooks:
        score = model(x)[:, 0].sum()
        (grad,) = torch.autograd.grad(score, hooks.outputs["2"])
    assert grad.shape == (2, 6, 4, 4) and grad.abs().sum() > 0
    assert not capture(model, ["2"])(x)["2"].requires_grad


def test_mistakes_are_reported():
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)  # forward never calls unused

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    partial = Partial()
    with pytest.raises(ValueError, match="did not run"):
        capture(partial, ["unused"])(torch.randn(1, 2))
    assert hook_count(partial) == 0
    model = net()
    with pytest.raises(ValueError, match="not captured"):
        capture(model, ["0"], inputs={"1"})
    with pytest.raises(AttributeError):
        capture(model, ["nope"])
