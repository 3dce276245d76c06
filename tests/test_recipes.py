"""The shared recipe: early stopping and the best epoch through fit, explicit BatchNorm policies,
batches of cached tensors that repeat with the seed, and the device reaching every step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tlcourse import recipes
from tlcourse.runtime import DeviceSettings
from tlcourse.train import set_bn_policy, set_train_mode


def toy(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randn(n, 4, generator=g) + 2.0 * y[:, None].float(), y


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


@dataclasses.dataclass
class Spy(DeviceSettings):
    """CPU settings that count the tensors they move and the models they prepare."""

    moved: int = 0
    prepared: int = 0

    def to_device(self, batch):
        self.moved += isinstance(batch, torch.Tensor)
        return super().to_device(batch)

    def prepare(self, model):
        self.prepared += 1
        return super().prepare(model)


def test_the_recipe_learns_and_scores_once_on_test():
    torch.manual_seed(0)
    model = bn_net()
    r = recipes.train(model, [{"params": list(model.parameters()), "lr": 0.05}], toy(), toy(seed=1),
                      max_epochs=6, patience=2, batch_size=16, test=toy(seed=2))
    assert r.val_accuracy > 0.9 and r.accuracy > 0.9 and not r.collapsed
    assert r.best_epoch <= r.epochs <= 6 and r.seconds > 0 and r.device == "cpu"
    assert r.correct.dtype == torch.bool and len(r.correct) == 64


def test_a_run_that_predicts_one_class_is_reported_as_collapsed():
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([5.0, 0.0]))
    r = recipes.train(model, [{"params": list(model.parameters()), "lr": 0.0}], toy(), toy(seed=1),
                      max_epochs=2, patience=1)
    assert r.collapsed and r.val_accuracy == 0.5


def test_the_recipe_runs_every_batch_and_the_model_on_the_device_it_is_given():
    spy = Spy(device=torch.device("cpu"))
    model = bn_net()
    r = recipes.train(model, [{"params": list(model.parameters()), "lr": 0.05}], toy(), toy(seed=1),
                      max_epochs=2, patience=5, batch_size=16, device=spy, test=toy(seed=2))
    # 2 epochs x (4 train + 1 validation batches) x (inputs, labels), then one validation and one test pass
    assert spy.prepared >= 1 and spy.moved >= 2 * 2 * 5 + 2
    assert r.device == "cpu"


def test_batches_repeat_with_the_generator_and_mirror_about_half():
    x = torch.arange(40.0).view(10, 1, 1, 4)
    batches = recipes.TensorBatches(x, torch.arange(10), batch_size=4, shuffle=True, flip=True)
    batches.generator.manual_seed(3)
    first = [b[0] for b in batches]
    batches.generator.manual_seed(3)
    again = [b[0] for b in batches]
    assert len(batches) == 3 and all(torch.equal(a, b) for a, b in zip(first, again))
    flat = torch.cat(first)
    mirrored = sum(bool((row[0, 0, 0] > row[0, 0, -1]).item()) for row in flat)
    assert 0 < mirrored < 10  # a coin per image, not per batch or never
    given = recipes.TensorBatches(x, torch.arange(10), batch_size=10, flip=True, flipped=-x)
    assert {float(v) for v in next(iter(given))[0].flatten()} <= {float(v) for v in torch.cat([x, -x]).flatten()}


def test_batches_refuse_inputs_and_labels_of_different_lengths():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        recipes.TensorBatches(torch.zeros(3, 1), torch.zeros(2), batch_size=2)


@pytest.mark.parametrize(("policy", "frozen", "in_train_mode"), [
    ("frozen-eval", True, False), ("frozen-eval", False, True),
    ("eval", False, False), ("eval", True, False),
    ("train", True, True), ("train", False, True),
])
def test_batchnorm_policy_decides_which_layers_update_their_statistics(policy, frozen, in_train_mode):
    model = set_bn_policy(bn_net(), policy)
    model[1].requires_grad_(not frozen)
    kept = set_train_mode(model)
    assert model[1].training is in_train_mode and (kept == []) is in_train_mode
    before = model[1].running_mean.clone()
    model(torch.randn(8, 4) + 3)
    assert torch.equal(model[1].running_mean, before) is (not in_train_mode)


def test_an_unknown_batchnorm_policy_is_refused():
    with pytest.raises(ValueError, match="frozen-eval"):
        set_bn_policy(bn_net(), "sometimes")


def test_probabilities_come_back_on_the_cpu_in_order_with_the_model_in_eval_mode():
    model = bn_net().train()
    x = toy()[0]
    out = recipes.probabilities(model, x, "cpu", batch_size=10)
    assert out.shape == (64, 2) and out.device.type == "cpu" and not model.training
    assert torch.allclose(out.sum(1), torch.ones(64)) and torch.allclose(out, model(x).softmax(1), atol=1e-6)
    batches = recipes.TensorBatches(x, torch.zeros(64), batch_size=7)
    assert torch.allclose(recipes.probabilities(model, batches), out, atol=1e-6)


def test_the_linear_probe_chooses_c_on_validation_and_scores_test_once():
    x, y = toy(80)
    noisy = torch.cat([x, torch.randn(80, 20, generator=torch.Generator().manual_seed(1)) * 3], dim=1)
    r = recipes.linear_probe((noisy[:40], y[:40]), (noisy[40:60], y[40:60]), cs=(1e-4, 1.0), test=(noisy[60:], y[60:]))
    assert r.extra["C"] in (1e-4, 1.0) and r.val_accuracy >= 0.8 and len(r.correct) == 20
    assert r.accuracy == float(r.correct.float().mean()) and (r.epochs, r.stopped_early) == (0, False)
    # the C reported is the one that did best on validation
    fits = {c: recipes.fit_logistic_regression(noisy[:40], y[:40], noisy[40:60], y[40:60], C=c)["accuracy"]
            for c in (1e-4, 1.0)}
    assert fits[r.extra["C"]] == max(fits.values())


def test_a_probe_that_sees_no_signal_is_flagged_when_it_predicts_one_class():
    y = torch.tensor([0] * 30 + [1] * 10)
    r = recipes.linear_probe((torch.zeros(40, 3), y), (torch.zeros(20, 3), y[:20]), cs=(1.0,))
    assert r.collapsed
