"""Step 3 of ``fit``: the candidate strategies, each trained on train and scored on validation.

- **probes** (:func:`probe_candidates`): :func:`tlcourse.recipes.linear_probe` on cached features of
  the last layer (``probe_last``) or an earlier stage (``probe_early``), then the same trained on
  the images and their mirror images (flip augmentation), then with flip test-time augmentation
  (the probabilities of an image and its mirror averaged);
- **top-stage fine-tune** (:func:`top_stage_finetune`): the two deepest stages and a new head
  trained on cached lower-stage activations with flip augmentation (``partial_ft``);
- **full fine-tune** (:func:`full_finetune`): every layer, on decoded images with random crops
  and flips, when the budget allows (``full_ft``).

The fine-tunes are the course's recipes, :func:`tlcourse.recipes.top_stage_fine_tune` on the
cached maps and :func:`tlcourse.recipes.full_fine_tune` on decoded images; both stop early on the
validation part and keep the best epoch, on the device ``fit`` was given.

Every candidate keeps its validation probabilities (to choose with) and its test probabilities
(stored unread: only the chosen one, and the textbook's strategy for the paired comparison, are
scored on test, once, after the choice). A probe's classifier is folded into one linear layer,
so the deployed network is the backbone with that layer as its head.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tlcourse import recipes
from tlcourse.evaluation import accuracy_ci
from tlcourse.experiments.own_data.activations import LAST, LOWER, ImageFiles, Views
from tlcourse.models import Preprocessing, backbone_spec, build_backbone
from tlcourse.stages import stage_below_top
from tlcourse.train import Deadline

__all__ = ["FT_EPOCHS", "Candidate", "fold_probe", "full_finetune", "probe_candidates", "top_stage_finetune"]

#: The most epochs of the top-stage fine-tune, and the epochs without improvement that end it.
FT_EPOCHS, FT_PATIENCE = 8, 3
#: The learning rates of the pretrained layers and of the new head. Both 1e-3: the decision
#: matrix's reference run chose the backbone rate on validation among 1e-3, 1e-4 and 1e-5 in both
#: domains (``tlcourse/experiments/results/04_decision_matrix_reference.json``, ``meta.lr_sweep``).
BACKBONE_LR, HEAD_LR = 1e-3, 1e-3


def _budget_note(callbacks: Sequence[Deadline], epochs: int) -> str:
    """A name's note when the budget's deadline ended a fine-tune."""
    return f" (the budget ended it after {epochs} epoch{'s' * (epochs != 1)})" if any(cb.hit for cb in callbacks) else ""


@dataclass
class Candidate:
    """One strategy's result on validation, and what is needed to deploy it."""

    name: str
    strategy: str  # a tlcourse.strategies key: probe_last, probe_early, partial_ft, full_ft
    backbone: str
    layer: str  # "pooled" (the last features), a stage name, or "network" (fine-tuned)
    flip_augmentation: bool
    tta: bool
    seconds: float  # its own training time plus its share of the extraction
    val_proba: torch.Tensor
    test_proba: torch.Tensor  # stored unread until a candidate is chosen
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # a probe's folded head, or a state_dict
    resumed: bool = False

    def val_correct(self, y_val: Sequence[int]) -> np.ndarray:
        """Per-image correctness on the validation split."""
        return (self.val_proba.argmax(1).numpy() == np.asarray(y_val))

    def val_accuracy(self, y_val: Sequence[int]) -> float:
        return float(self.val_correct(y_val).mean())

    def slug(self) -> str:
        """A file name for this candidate."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def trained_weights(self) -> int:
        """How many numbers the candidate learned: a probe's head, or a fine-tune's state_dict."""
        return sum(t.numel() for t in self.weights.values())

    def as_dict(self, y_val: Sequence[int]) -> dict[str, Any]:
        """The plain facts that go into report.json."""
        ci = accuracy_ci(self.val_correct(y_val))
        return {"name": self.name, "strategy": self.strategy, "backbone": self.backbone, "layer": self.layer,
                "flip_augmentation": self.flip_augmentation, "tta": self.tta, "val_accuracy": ci.value,
                "val_accuracy_ci": [ci.low, ci.high], "n_val": ci.n, "seconds": round(self.seconds, 2),
                "trained_weights": self.trained_weights(), "resumed": self.resumed}


def fold_probe(pipeline: Any) -> dict[str, torch.Tensor]:
    """The standardise + logistic-regression pipeline as one linear layer: same probabilities.

    ``(x - mean) / scale`` then ``coef @ . + intercept`` is ``(coef / scale) @ x + (intercept -
    coef @ (mean / scale))``. A two-class model has one logit ``z`` for class 1; the logits
    ``[0, z]`` give the same softmax probabilities.
    """
    scaler, lr = pipeline[0], pipeline[-1]
    coef = torch.as_tensor(lr.coef_, dtype=torch.float64) / torch.as_tensor(scaler.scale_, dtype=torch.float64)
    bias = torch.as_tensor(lr.intercept_, dtype=torch.float64) - coef @ torch.as_tensor(scaler.mean_, dtype=torch.float64)
    if coef.shape[0] == 1:
        coef, bias = torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros_like(bias), bias])
    return {"weight": coef.float(), "bias": bias.float()}


def _proba(head: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (x.double() @ head["weight"].double().T + head["bias"].double()).softmax(1).float()


def probe_candidates(backbone: str, views: Views, y: torch.Tensor, parts: dict[str, list[int]], *,
                     seed: int) -> list[Candidate]:
    """Logistic-regression probes on the last and the early stage: plain, + flip augmentation, + flip TTA."""
    early = next(n for n in views.plain if n not in (LAST, LOWER))
    tr, va, te = (torch.as_tensor(parts[p]) for p in ("train", "val", "test"))
    found = []
    for layer, strategy in ((LAST, "probe_last"), (early, "probe_early")):
        X, Xf = views.plain[layer], views.flipped[layer]
        where = "last layer" if layer == LAST else f"stage {layer}"
        for flip in (False, True):
            X_fit = torch.cat([X[tr], Xf[tr]]) if flip else X[tr]
            y_fit = torch.cat([y[tr], y[tr]]) if flip else y[tr]
            fitted = recipes.linear_probe((X_fit, y_fit), (X[va], y[va]), seed=seed)  # C chosen on validation
            head = fold_probe(fitted.model)
            share = views.seconds / 2 * (2 if flip else 1)  # the mirror half of the pass is the flip's
            variants = [(False, f"{backbone} probe, {where}" + (" + flip augmentation" if flip else ""))]
            if flip:
                variants.append((True, f"{backbone} probe, {where} + flip augmentation + flip TTA"))
            for tta, name in variants:
                val = (_proba(head, X[va]) + _proba(head, Xf[va])) / 2 if tta else _proba(head, X[va])
                test = (_proba(head, X[te]) + _proba(head, Xf[te])) / 2 if tta else _proba(head, X[te])
                found.append(Candidate(name, strategy, backbone, layer, flip, tta, share + fitted.seconds,
                                       val, test, head))
    return found


def top_stage_finetune(backbone: str, views: Views, y: torch.Tensor, parts: dict[str, list[int]], num_classes: int,
                       *, epochs: int = FT_EPOCHS, seed: int = 0, progress: bool = True,
                       device: str | torch.device | None = "cpu", deadline: float | None = None) -> list[Candidate]:
    """The two deepest stages and a new head trained on the cached lower activations: the course's
    one recipe, :func:`tlcourse.recipes.top_stage_fine_tune` (each image or its mirror at random;
    BatchNorm keeps its ImageNet statistics, since a user's folder gives few, small batches). Two
    candidates: without and with flip TTA. ``deadline`` (``time.perf_counter()``): no epoch starts
    that would end after it (:class:`tlcourse.train.Deadline`), and the best epoch so far is kept.
    """
    torch.manual_seed(seed)
    clock = [Deadline(deadline)] if deadline is not None else []
    model = build_backbone(backbone, num_classes=num_classes)
    cut = stage_below_top(model, 2)
    tr, va, te = (torch.as_tensor(parts[p]) for p in ("train", "val", "test"))
    r = recipes.top_stage_fine_tune(model, cut, (views.take(LOWER, tr), y[tr]), (views.take(LOWER, va), y[va]),
                                    backbone_lr=BACKBONE_LR, head_lr=HEAD_LR, flipped=views.take(LOWER, tr, flipped=True),
                                    bn="eval", max_epochs=epochs, patience=FT_PATIENCE, seed=seed, device=device,
                                    callbacks=clock)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # scored a part and a view at a time: only one of them is in memory
    p_va, p_vaf, p_te, p_tef = (recipes.probabilities(r.model, views.take(LOWER, part, flipped=f), device)
                                for part, f in ((va, False), (va, True), (te, False), (te, True)))
    r.model.cpu()
    seconds = r.seconds + views.seconds
    names = backbone_spec(model).stage_names
    name = (f"{backbone} fine-tune {' + '.join(names[names.index(cut) + 1:])} + head (cached {cut})"
            + _budget_note(clock, r.epochs))
    return [Candidate(name, "partial_ft", backbone, "network", True, False, seconds, p_va, p_te, state),
            Candidate(name + " + flip TTA", "partial_ft", backbone, "network", True, True, seconds,
                      (p_va + p_vaf) / 2, (p_te + p_tef) / 2, state)]


def full_finetune(backbone: str, pre: Preprocessing, samples: Sequence[tuple[str, int]], parts: dict[str, list[int]],
                  num_classes: int, *, epochs: int = 3, seed: int = 0, batch_size: int = 16,
                  progress: bool = True, device: str | torch.device | None = "cpu",
                  deadline: float | None = None) -> Candidate:
    """Every layer trained with :func:`tlcourse.recipes.full_fine_tune` on decoded images (random resized
    crops and flips), BatchNorm keeping its ImageNet statistics; ``deadline`` as in :func:`top_stage_finetune`.

    Costs a forward and a backward pass of the whole network per image and epoch: on a CPU only
    for small folders or large budgets (``fit`` estimates the cost first).
    """
    torch.manual_seed(seed)
    clock = [Deadline(deadline)] if deadline is not None else []
    model = build_backbone(backbone, num_classes=num_classes)
    images = {part: ImageFiles([samples[i] for i in parts[part]], pre.train_transform() if part == "train"
                               else pre.eval_transform()) for part in ("train", "val", "test")}
    train = DataLoader(images["train"], batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val, test = (DataLoader(images[part], batch_size=32) for part in ("val", "test"))
    r = recipes.full_fine_tune(model, train, val, backbone_lr=BACKBONE_LR, head_lr=HEAD_LR, bn="eval",
                               max_epochs=epochs, patience=FT_PATIENCE, seed=seed, device=device, callbacks=clock)
    probs = {part: recipes.probabilities(model, loader, device) for part, loader in (("val", val), ("test", test))}
    model.cpu()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = f"{backbone} full fine-tune ({r.epochs} epochs)" + _budget_note(clock, r.epochs)
    return Candidate(name, "full_ft", backbone, "network", True, False,
                     r.seconds, probs["val"], probs["test"], state)
