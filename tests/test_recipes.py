"""The shared recipe: early stopping and the best epoch through fit, explicit BatchNorm policies,
batches of cached tensors that repeat with the seed, and the device reaching every step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_models import STAGES, StagedNet, staged_net
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


# ---------------------------------------------------------------- the named strategies (recipes.fine_tuning)


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> StagedNet:
    """A fresh two-class StagedNet, registered as the backbone "staged" for the test (as in test_finetune)."""
    return staged_net(monkeypatch)


def images(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randn(n, 3, 8, 8, generator=g) + 1.5 * y[:, None, None, None].float(), y


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def moved(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    """The top-level modules with a parameter or buffer that changed."""
    return {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


BUDGET = dict(max_epochs=2, patience=5, batch_size=8, seed=0)


def test_partial_fine_tune_trains_only_the_named_stages_and_keeps_frozen_batchnorm_still(staged):
    before = snapshot(staged)
    r = recipes.partial_fine_tune(staged, images(), images(seed=1), train_stages=["block2"], backbone_lr=0.01,
                                  head_lr=0.01, bn="frozen-eval", test=images(seed=2), **BUDGET)
    assert moved(before, staged) == {"block2", "fc"}, "frozen stages (weights and running statistics) stay put"
    assert r.extra["stages"] == ["block2"] and r.extra["recipe"] == "partial_fine_tune"
    assert len(r.correct) == 32 and r.epochs == 2 and not r.stopped_early


def test_batchnorm_policy_is_an_argument_train_lets_frozen_statistics_move(staged):
    before = snapshot(staged)
    recipes.partial_fine_tune(staged, images(), images(seed=1), train_stages=[], backbone_lr=0.01, head_lr=0.01,
                              bn="train", **BUDGET)
    assert moved(before, staged) == {"stem", "block1", "block2", "fc"}  # running statistics drift, weights do not
    assert all(torch.equal(before[k], v) for k, v in staged.state_dict().items() if k.endswith("weight")
               and not k.startswith("fc"))


def test_discriminative_rates_are_explicit_a_zero_backbone_rate_leaves_the_backbone(staged):
    before = snapshot(staged)
    r = recipes.full_fine_tune(staged, images(), images(seed=1), backbone_lr=0.0, head_lr=0.01, bn="eval", **BUDGET)
    assert moved(before, staged) == {"fc"} and r.extra["stages"] == STAGES
    before = snapshot(staged)
    recipes.full_fine_tune(staged, images(), images(seed=1), backbone_lr=0.01, head_lr=0.01, **BUDGET)
    assert moved(before, staged) == {"stem", "block1", "block2", "fc"}


def test_top_stage_fine_tune_on_cached_maps_is_the_frozen_network(staged):
    x, y = images()
    staged.eval()
    with torch.inference_mode():
        maps = staged.block1(staged.stem(x))
    module, groups = recipes.top_stages(staged, "block1", backbone_lr=1e-4, head_lr=1e-3)
    with torch.inference_mode():
        assert torch.allclose(module(maps), staged(x), atol=1e-6)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    before = snapshot(staged)
    r = recipes.top_stage_fine_tune(staged, "block1", (maps, y), (maps, y), train_stages=[], backbone_lr=0.01,
                                    head_lr=0.01, flipped=maps.flip(-1), **BUDGET)
    assert moved(before, staged) == {"fc"} and r.extra["stages"] == []  # train_stages=[]: a frozen extractor
    with pytest.raises(ValueError, match="below the cut"):
        recipes.top_stages(staged, "block1", 1e-4, 1e-3, train_stages=["stem"])


@pytest.mark.parametrize(("after", "joins"), [(1, True), (5, False)])
def test_gradual_unfreezing_follows_its_schedule_at_the_rates_it_is_given(staged, after, joins):
    before = snapshot(staged)
    r = recipes.gradual_unfreezing(staged, {after: ["block2"]}, images(), images(seed=1), backbone_lr=0.01,
                                   head_lr=0.01, bn="eval", **BUDGET)
    assert r.extra["unfrozen"] == ([(1, ["block2"])] if joins else [])
    assert r.extra["stages"] == (["block2"] if joins else []) and r.extra["backbone_lr"] == 0.01
    # the best epoch's weights are kept: block2 has moved when an epoch after it joined was the best
    assert ("block2" in moved(before, staged)) is (joins and r.best_epoch > after)
    assert "block1" not in moved(before, staged) and "fc" in moved(before, staged)


def test_from_scratch_warms_the_rate_up_linearly(staged):
    r = recipes.from_scratch(staged, images(), images(seed=1), lr=0.08, warmup_epochs=2, **BUDGET)
    # 4 batches an epoch, 8 warm-up steps: the rate starts at lr/8 and reaches lr * 5/8 by epoch 2
    assert [round(e["lr"], 6) for e in r.history.epochs] == [0.01, 0.05]
    assert r.extra["warmup_epochs"] == 2 and r.extra["recipe"] == "from_scratch"


def test_collapsed_runs_are_never_scored():
    good = recipes.RecipeResult(None, 0.9, 3, 2, True, False, 1.0, "cpu", None, torch.tensor([True, True, False]), 2 / 3)
    other = dataclasses.replace(good, correct=torch.tensor([True, False, False]), accuracy=1 / 3)
    dead = dataclasses.replace(good, collapsed=True, accuracy=0.5)
    assert recipes.scored([good, dead, other]) == [good, other]
    c = recipes.compare_seeds([good, dead], [other])
    assert c.n_a == 1 and c.mean_a == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="collapsed"):
        recipes.compare_seeds([dead], [good])
    with pytest.raises(ValueError, match="collapsed"):
        recipes.compare_paired(good, dead)
    assert recipes.compare_paired(good, other).diff == pytest.approx(1 / 3)


def test_a_named_recipe_trains_and_scores_on_the_device_it_is_given(staged):
    spy = Spy(device=torch.device("cpu"))
    r = recipes.partial_fine_tune(staged, images(), images(seed=1), train_stages=["block2"], backbone_lr=0.01,
                                  head_lr=0.01, device=spy, test=images(seed=2), **BUDGET)
    # 2 epochs x (4 training + 1 validation batches), the collapse check and the test pass, inputs and labels
    assert spy.moved >= 2 * 2 * 5 and spy.prepared >= 1 and r.device == "cpu"
