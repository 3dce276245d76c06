"""Step 3 of ``fit``: the candidate strategies, each trained on train and scored on validation.

- **probes** (:func:`probe_candidates`): scikit-learn logistic regression on cached features of
  the last layer (``probe_last``) or an earlier stage (``probe_early``), then the same trained on
  the images and their mirror images (flip augmentation), then with flip test-time augmentation
  (the probabilities of an image and its mirror averaged);
- **top-stage fine-tune** (:func:`top_stage_finetune`): notebook 05's recipe, the two deepest
  stages and a new head trained on cached lower-stage activations (``partial_ft``);
- **full fine-tune** (:func:`full_finetune`): every layer, on decoded images with random crops
  and flips, when the budget allows (``full_ft``).

Every candidate keeps its validation probabilities (to choose with) and its test probabilities
(stored unread: only the chosen one, and the textbook's strategy for the paired comparison, are
scored on test, once, after the choice). A probe's classifier is folded into one linear layer,
so the deployed network is the backbone with that layer as its head.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tlcourse.evaluation import accuracy_ci
from tlcourse.features import fit_logistic_regression
from tlcourse.models import Preprocessing, backbone_spec, build_backbone, freeze_backbone
from tlcourse.own_data.activations import LAST, LOWER, ImageFiles, Views
from tlcourse.stages import split_below_top

__all__ = ["FT_EPOCHS", "Candidate", "fold_probe", "full_finetune", "probe_candidates", "top_stage_finetune"]

#: Epochs of the top-stage fine-tune (notebook 05's default profile).
FT_EPOCHS = 8
#: Peak learning rates of the top stages, shallow to deep, then the fresh head (notebook 05).
TOP_LRS = (5e-4, 1e-3, 1e-2)


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

    def as_dict(self, y_val: Sequence[int]) -> dict[str, Any]:
        """The plain facts that go into report.json."""
        ci = accuracy_ci(self.val_correct(y_val))
        return {"name": self.name, "strategy": self.strategy, "backbone": self.backbone, "layer": self.layer,
                "flip_augmentation": self.flip_augmentation, "tta": self.tta, "val_accuracy": ci.value,
                "val_accuracy_ci": [ci.low, ci.high], "n_val": ci.n, "seconds": round(self.seconds, 2),
                "resumed": self.resumed}


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
            fitted = fit_logistic_regression(X_fit, y_fit, X[va], y[va], seed=seed)
            head = fold_probe(fitted["pipeline"])
            share = views.seconds / 2 * (2 if flip else 1)  # the mirror half of the pass is the flip's
            variants = [(False, f"{backbone} probe, {where}" + (" + flip augmentation" if flip else ""))]
            if flip:
                variants.append((True, f"{backbone} probe, {where} + flip augmentation + flip TTA"))
            for tta, name in variants:
                val = (_proba(head, X[va]) + _proba(head, Xf[va])) / 2 if tta else _proba(head, X[va])
                test = (_proba(head, X[te]) + _proba(head, Xf[te])) / 2 if tta else _proba(head, X[te])
                found.append(Candidate(name, strategy, backbone, layer, flip, tta, share + fitted["seconds"],
                                       val, test, head))
    return found


def _probabilities(upper: nn.Module, acts: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    upper.eval()
    with torch.inference_mode():
        return torch.cat([upper(acts[i:i + batch_size]).float().softmax(1) for i in range(0, len(acts), batch_size)])


def _train_mode_keep_bn(module: nn.Module) -> None:
    """Train mode, but BatchNorm keeps its ImageNet statistics (small batches, few images)."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def top_stage_finetune(backbone: str, views: Views, y: torch.Tensor, parts: dict[str, list[int]], num_classes: int,
                       *, epochs: int = FT_EPOCHS, seed: int = 0, progress: bool = True) -> list[Candidate]:
    """Notebook 05's recipe: the two deepest stages and a new head, on the cached lower activations.

    Discriminative peak learning rates (:data:`TOP_LRS`), AdamW with a one-cycle schedule, label
    smoothing 0.1, a coin flip per image and epoch picks its mirror image. Two candidates: without
    and with flip TTA.
    """
    torch.manual_seed(seed)
    model = build_backbone(backbone, num_classes=num_classes)
    cut = split_below_top(model, 2)
    freeze_backbone(model)
    groups = [{"params": [p for m in mods for p in m.parameters()], "lr": lr}
              for mods, lr in zip(cut.top_modules(model).values(), TOP_LRS)]
    for p in (p for g in groups for p in g["params"]):
        p.requires_grad_(True)
    A, Af = views.plain[LOWER], views.flipped[LOWER]
    tr = torch.as_tensor(parts["train"])
    batch = 32
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups], pct_start=0.2,
                                                    total_steps=epochs * -(-len(tr) // batch))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc=f"{backbone} top-stage fine-tune", disable=not progress, leave=False):
        _train_mode_keep_bn(cut.upper)
        order, flip = torch.randperm(len(tr), generator=generator), torch.rand(len(tr), generator=generator) < 0.5
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            a = torch.where(flip[idx].view(-1, 1, 1, 1), Af[tr[idx]], A[tr[idx]])
            loss = nn.functional.cross_entropy(cut.upper(a), y[tr[idx]], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start + views.seconds
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    va, te = (torch.as_tensor(parts[p]) for p in ("val", "test"))
    p_va, p_vaf = _probabilities(cut.upper, A[va]), _probabilities(cut.upper, Af[va])
    p_te, p_tef = _probabilities(cut.upper, A[te]), _probabilities(cut.upper, Af[te])
    name = f"{backbone} fine-tune {' + '.join(cut.top)} + head (cached {cut.stage})"
    return [Candidate(name, "partial_ft", backbone, "network", True, False, seconds, p_va, p_te, state),
            Candidate(name + " + flip TTA", "partial_ft", backbone, "network", True, True, seconds,
                      (p_va + p_vaf) / 2, (p_te + p_tef) / 2, state)]


def full_finetune(backbone: str, pre: Preprocessing, samples: Sequence[tuple[str, int]], parts: dict[str, list[int]],
                  num_classes: int, *, epochs: int = 3, seed: int = 0, batch_size: int = 16,
                  progress: bool = True) -> Candidate:
    """Every layer trained on decoded images (random resized crops and flips), lower rates below the head.

    Costs a forward and a backward pass of the whole network per image and epoch: on a CPU only
    for small folders or large budgets (``fit`` estimates the cost first).
    """
    torch.manual_seed(seed)
    model = build_backbone(backbone, num_classes=num_classes)
    head = backbone_spec(model).head
    head_params = list(model.get_submodule(head).parameters())
    others = [p for n, p in model.named_parameters() if not n.startswith(head + ".")]
    optimizer = torch.optim.AdamW([{"params": others, "lr": 1e-4}, {"params": head_params, "lr": 1e-3}],
                                  weight_decay=0.01)
    train = DataLoader(ImageFiles([samples[i] for i in parts["train"]], pre.train_transform()), batch_size=batch_size,
                       shuffle=True, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc=f"{backbone} full fine-tune", disable=not progress, leave=False):
        _train_mode_keep_bn(model)
        for x, labels in train:
            loss = nn.functional.cross_entropy(model(x), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    probs = {}
    with torch.inference_mode():
        for part in ("val", "test"):
            loader = DataLoader(ImageFiles([samples[i] for i in parts[part]], pre.eval_transform()), batch_size=32)
            probs[part] = torch.cat([model(x).float().softmax(1) for x, _ in loader])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Candidate(f"{backbone} full fine-tune ({epochs} epochs)", "full_ft", backbone, "network", True, False,
                     time.perf_counter() - start, probs["val"], probs["test"], state)
