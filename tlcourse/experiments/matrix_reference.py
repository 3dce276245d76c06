"""The decision matrix at the textbook's scale: fair strategies, early stopping, resumable rows.

This module runs the matrix: at laptop scale inside notebook 04, and at the textbook's scale in
the *reference run* (``scripts/decision_matrix_reference.py``), the one the notebook and the
advisor quote as evidence; :mod:`tlcourse.experiments.decision_matrix` summarises and draws the rows. What
makes it fair:

* every trained strategy (``partial_ft``, ``full_ft``, ``scratch``) trains with the course's one
  recipe, :func:`tlcourse.recipes.train`: it stops early on a validation split (patience, maximum
  epochs) and keeps its best-validation weights; each row says how many epochs it used and whether
  it stopped on a plateau or ran into the maximum;
* the pretrained layers' learning rate is chosen once on validation (:func:`run_trained` with
  ``partial_ft`` over ``Scale.backbone_lrs``), not on test; the new head trains at 1e-3; a network
  from scratch warms up over 2 epochs to 1e-3 (3e-4 at batch 16 on the small quadrants), with more
  patience and a larger cap than a fine-tune;
* the probes' regularisation ``C`` is chosen on validation, and ``probe_early`` is the best
  earlier stage on validation (every stage is probed and kept, for the layer-wise picture);
* all trained strategies see the same augmentation, random horizontal flips. That is what makes
  ``partial_ft`` exact on cached activations: the frozen lower stages (BatchNorm in eval) are run
  once per image and once per mirrored image, and only the top stages train.

Test accuracy is measured once per run, and every row keeps its per-image results as a bit string
(:func:`bits`), so two strategies can be compared image by image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tlcourse import data, models, recipes, strategies
from tlcourse.experiments.reference_runs import (
    append_row,
    bits,
    read_rows,
    timed,
    unbits,
)
from tlcourse.features.extract import extract_activations
from tlcourse.runtime import device_settings, select_device

__all__ = [
    "REFERENCE_SCALE",
    "SMOKE_SCALE",
    "Scale",
    "TopStages",
    "add_activations",
    "append_row",
    "bits",
    "load_domain",
    "matrix_rows",
    "probe_stages",
    "run_probes",
    "run_trained",
    "read_rows",
    "stage_activations",
    "to_inputs",
    "timed",
    "unbits",
]


@dataclass(frozen=True)
class Scale:
    """Sizes and budgets of one decision-matrix run (the reference, or the smoke test of it)."""

    size: int = 96                      # input pixels (CIFAR-10's 32 px and MedMNIST's 28 px are upsampled)
    small: int = 40                     # training images per class, small quadrants
    large: int = 1000                   # training images per class, large quadrants (the textbook's line)
    val_per_class: int = 100            # validation images per class (early stopping, C, stage, rate)
    test_per_class: int | None = 500    # test images per class (None: the whole test split)
    seeds_small: int = 5
    seeds_large: int = 3
    max_epochs_small: int = 30
    max_epochs_large: int = 10
    patience_small: int = 4
    patience_large: int = 2
    scratch_warmup_epochs: int = 2      # from scratch: rates rise linearly over these epochs
    scratch_patience_small: int = 10    # from scratch: a random network sits at chance for its first epochs
    scratch_patience_large: int = 4
    scratch_max_epochs_small: int = 60  # ... and improves for longer (capped at 30 and 10 in a first rerun)
    scratch_max_epochs_large: int = 20
    scratch_batch_small: int = 16       # from scratch on 40 images/class: 5 steps an epoch, not 3
    scratch_lr_small: float = 3e-4      # ... at this rate (1e-3 was still creeping up at 40 epochs)
    batch_size: int = 32
    head_lr: float = 1e-3
    scratch_lr: float = 1e-3
    backbone_lrs: tuple[float, ...] = (1e-3, 1e-4, 1e-5)
    probe_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    partial_stages: int = 3
    similar_classes: tuple[str, str] = ("deer", "horse")
    backbone: str = models.DEFAULT_BACKBONE
    extra: Mapping[str, Any] = field(default_factory=dict)

    def n(self, size_name: str) -> int:
        """Training images per class for ``"small"`` or ``"large"``."""
        return self.small if size_name == "small" else self.large

    def seeds(self, size_name: str) -> list[int]:
        """The seeds of one size: 0, 1, ..."""
        return list(range(self.seeds_small if size_name == "small" else self.seeds_large))

    def budget(self, size_name: str, strategy: str = "full_ft") -> tuple[int, int]:
        """``(max_epochs, patience)`` of a trained strategy at one size (scratch gets more patience)."""
        small = size_name == "small"
        if strategy == "scratch":
            return (self.scratch_max_epochs_small, self.scratch_patience_small) if small else (
                self.scratch_max_epochs_large, self.scratch_patience_large)
        return (self.max_epochs_small, self.patience_small) if small else (self.max_epochs_large, self.patience_large)

    def lr_scratch(self, size_name: str) -> float:
        """The learning rate of training from scratch at one size."""
        return self.scratch_lr_small if size_name == "small" else self.scratch_lr

    def batch(self, size_name: str, strategy: str = "full_ft") -> int:
        """The batch size of a trained strategy at one size (scratch on small data: smaller batches)."""
        return self.scratch_batch_small if strategy == "scratch" and size_name == "small" else self.batch_size


REFERENCE_SCALE = Scale()
SMOKE_SCALE = Scale(size=64, small=4, large=8, val_per_class=4, test_per_class=8, seeds_small=1, seeds_large=1,
                    max_epochs_small=2, max_epochs_large=1, patience_small=1, patience_large=1, batch_size=8,
                    scratch_warmup_epochs=1, scratch_patience_small=1, scratch_patience_large=1, scratch_batch_small=8,
                    scratch_max_epochs_small=2, scratch_max_epochs_large=1,
                    backbone_lrs=(1e-4, 1e-5), probe_cs=(0.1, 1.0))


# --------------------------------------------------------------------------------------------
# Inputs and activations
# --------------------------------------------------------------------------------------------


def to_inputs(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
              chunk: int = 256) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, size, size)``, as TensorImages does in eval."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float().div_(255)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=size < x.shape[-1])
        out.append((x - m) / s)
    return torch.cat(out)


def stage_activations(model: nn.Module, x: torch.Tensor, cut: str | None, batch_size: int = 64,
                      device: str | torch.device | None = None, *, mirror: bool = False,
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Globally pooled output of every stage (``{stage: (N, C)}``) and the full map of stage ``cut``.

    One eval-mode float32 forward pass per batch on ``device`` (results on the CPU), through the
    course's one extraction loop (:func:`tlcourse.features.extract_activations`, eager PyTorch with
    this process's thread count, so the numbers do not depend on an engine); the pooled outputs
    feed the per-stage probes, the map of ``cut`` (the last frozen stage) feeds :class:`TopStages`.
    ``mirror=True`` also returns the map of every mirrored image: ``(pooled, (maps, flipped maps))``.
    """
    names = models.backbone_spec(model).stage_names
    settings = device_settings(select_device(device), inference=True, bf16=False, channels_last=False,
                               batch_size=batch_size)
    found = extract_activations(model, TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), names,
                                maps=[cut] if cut is not None else [], mirror=mirror, device=settings,
                                engine="eager", threads=torch.get_num_threads(), num_workers=0, progress=False)
    pooled = {name: found.plain[name] for name in names}
    maps = flipped = None
    if cut is not None:
        maps = pooled[cut]
        pooled[cut] = torch.cat([m.mean(dim=(-2, -1)) for m in maps.split(batch_size)])
        flipped = found.flipped[cut] if found.flipped is not None else None
    return pooled, ((maps, flipped) if mirror else maps)  # type: ignore[return-value]


#: The stages above a cut plus the head, trained on the cut's cached output: the recipe's class.
TopStages = recipes.TopStages


def cut_stage(scale: Scale) -> str:
    """The deepest frozen stage of ``partial_ft`` (its output is what TopStages trains on)."""
    names = models.backbone_spec(scale.backbone).stage_names
    return names[len(names) - scale.partial_stages - 1]


# --------------------------------------------------------------------------------------------
# Probes on every stage, C and stage chosen on validation
# --------------------------------------------------------------------------------------------


def probe_stages(train: Mapping[str, torch.Tensor], train_y: torch.Tensor, val: Mapping[str, torch.Tensor],
                 val_y: torch.Tensor, test: Mapping[str, torch.Tensor], test_y: torch.Tensor, *,
                 cs: Sequence[float], seed: int, stages: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """A linear probe per stage (:func:`tlcourse.recipes.linear_probe`: ``C`` chosen on validation);
    test scored once per stage.

    Returns one dict per stage: ``stage, C, val_accuracy, accuracy, n_test, correct`` (bit string).
    """
    out = []
    for stage in stages or list(train):
        r = recipes.linear_probe((train[stage], train_y), (val[stage], val_y), cs=cs, seed=seed,
                                 test=(test[stage], test_y))
        out.append({"stage": stage, "C": r.extra["C"], "val_accuracy": r.val_accuracy, "accuracy": r.accuracy,
                    "n_test": len(test_y), "correct": bits(r.correct)})
    return out


def choose_probes(stage_rows: Sequence[Mapping[str, Any]], last: str) -> dict[str, Mapping[str, Any]]:
    """``{"probe_last": the last stage's probe, "probe_early": the best earlier stage on validation}``.

    Validation ties go to the deeper stage (fewer surprises: closer to the usual last-layer probe).
    """
    by_stage = {r["stage"]: r for r in stage_rows}
    earlier = [r for r in stage_rows if r["stage"] != last]
    order = [r["stage"] for r in stage_rows]
    early = max(earlier, key=lambda r: (r["val_accuracy"], order.index(r["stage"])))
    return {"probe_last": by_stage[last], "probe_early": early}


def scale_dict(scale: Scale) -> dict[str, Any]:
    """The scale as plain JSON-ready data (for ``meta``)."""
    return json.loads(json.dumps(asdict(scale), default=list))


# --------------------------------------------------------------------------------------------
# The two domains and one run of each kind (the script and notebook 04 share them)
# --------------------------------------------------------------------------------------------


def two_classes(ds: Any, names: list[str]) -> tuple[list[int], list[int]]:
    """Indices of ``ds`` in the classes ``names`` and their labels 0..k-1."""
    wanted, targets = [ds.classes.index(n) for n in names], data.targets_of(ds)
    keep = [i for i, t in enumerate(targets) if t in wanted]
    return keep, [wanted.index(targets[i]) for i in keep]


def pick(labels: list[int], n_per_class: int | None, seed: int) -> list[int]:
    """A stratified subset (positions into ``labels``), or all when ``n_per_class`` is None/too big."""
    if n_per_class is None or n_per_class >= min(np.bincount(labels)):
        return list(range(len(labels)))
    return data.stratified_subset(labels, n_per_class, seed)


def dataset_name(name: str, scale: Scale) -> str:
    """How rows name a domain's dataset: ``"CIFAR-10 deer/horse"`` or PneumoniaMNIST's mirror copy."""
    return "CIFAR-10 " + "/".join(scale.similar_classes) if name == "similar" else "PneumoniaMNIST (mirror's balanced copy)"


def load_domain(name: str, scale: Scale) -> dict[str, Any]:
    """Decode, upsample and normalise one domain's training pool, validation and test images.

    ``"similar"``: two CIFAR-10 classes, validation carved from the train split; ``"dissimilar"``:
    PneumoniaMNIST with its own val split. Subsets: ``subsets[size, seed]`` (positions in ``x``).
    """
    if name == "similar":
        train, test = data.cifar10("train"), data.cifar10("test")
        classes = list(scale.similar_classes)
        tr_idx, tr_y = two_classes(train, classes)
        val_pos = pick(tr_y, scale.val_per_class, 10_000)          # validation: carved from CIFAR's train split
        rest = sorted(set(range(len(tr_idx))) - set(val_pos))
        val_idx, val_y = [tr_idx[i] for i in val_pos], [tr_y[i] for i in val_pos]
        tr_idx, tr_y = [tr_idx[i] for i in rest], [tr_y[i] for i in rest]
        val_ds = train
        te_idx, te_y = two_classes(test, classes)
    else:
        train, val_ds, test = (data.medmnist("pneumoniamnist", s) for s in ("train", "val", "test"))
        classes = list(train.classes)
        tr_idx, tr_y = two_classes(train, classes)
        v_idx, v_y = two_classes(val_ds, classes)
        val_pos = pick(v_y, scale.val_per_class, 10_000)
        val_idx, val_y = [v_idx[i] for i in val_pos], [v_y[i] for i in val_pos]
        te_idx, te_y = two_classes(test, classes)
    subsets = {}
    for size_name in ("small", "large"):
        for seed in scale.seeds(size_name):
            subsets[size_name, seed] = data.stratified_subset(tr_y, scale.n(size_name), seed + (0 if size_name == "large" else 500))
    pool = sorted({i for s in subsets.values() for i in s})
    position = {i: p for p, i in enumerate(pool)}
    te_pos = pick(te_y, scale.test_per_class, 0)
    pre = models.backbone_spec(scale.backbone).preprocessing()
    prep = lambda ds, idx: to_inputs(data.load_images(ds, idx)[0], scale.size, pre.mean, pre.std)  # noqa: E731
    return dict(
        name=name, dataset=dataset_name(name, scale), classes=classes, available_per_class=np.bincount(tr_y).tolist(),
        x=prep(train, [tr_idx[i] for i in pool]), y=torch.tensor([tr_y[i] for i in pool]),
        val_x=prep(val_ds, val_idx), val_y=torch.tensor(val_y),
        test_x=prep(test, [te_idx[i] for i in te_pos]), test_y=torch.tensor([te_y[i] for i in te_pos]),
        subsets={k: [position[i] for i in v] for k, v in subsets.items()})


def add_activations(d: dict[str, Any], scale: Scale, device: str | torch.device | None = None) -> None:
    """Per-stage pooled features (probes) and the cut stage's maps, plain and mirrored (partial_ft):
    one pass over the training pool with its mirror images, one over validation, one over test."""
    model = models.build_backbone(scale.backbone)
    cut = cut_stage(scale)
    d["pooled"], (d["maps"], d["maps_flipped"]) = stage_activations(model, d["x"], cut, device=device, mirror=True)
    d["val_pooled"], d["val_maps"] = stage_activations(model, d["val_x"], cut, device=device)
    d["test_pooled"], d["test_maps"] = stage_activations(model, d["test_x"], cut, device=device)


def run_probes(d: dict[str, Any], idx: list[int], scale: Scale, seed: int) -> dict[str, Any]:
    """A probe on every stage (C chosen on validation); probe_last/probe_early are picked from them later."""
    stages = list(d["pooled"])
    return {"stages": probe_stages({s: d["pooled"][s][idx] for s in stages}, d["y"][idx], d["val_pooled"],
                                   d["val_y"], d["test_pooled"], d["test_y"], cs=scale.probe_cs, seed=seed)}


def run_trained(strategy: str, d: dict[str, Any], idx: list[int], size_name: str, scale: Scale,
                seed: int, backbone_lr: float, device: str | torch.device | None = None) -> dict[str, Any]:
    """Train one strategy with its recipe (:mod:`tlcourse.recipes`: early stopping, best epoch kept); test once.

    Returns the row's measured fields. ``partial_ft`` is :func:`~tlcourse.recipes.top_stage_fine_tune`
    on cached activations with their mirror images as flip augmentation; ``full_ft`` and ``scratch``
    (:func:`~tlcourse.recipes.full_fine_tune`, :func:`~tlcourse.recipes.from_scratch`) train on decoded
    images flipped at random.
    """
    if strategy not in strategies.TRAINED:
        raise ValueError(f"{strategy!r} is not a trained strategy (partial_ft, full_ft, scratch)")
    model = models.build_backbone(scale.backbone, 2, pretrained=strategy != "scratch")
    max_epochs, patience = scale.budget(size_name, strategy)
    budget = dict(max_epochs=max_epochs, patience=patience, batch_size=scale.batch(size_name, strategy), seed=seed,
                  device=device)
    images = dict(train_data=(d["x"][idx], d["y"][idx]), val=(d["val_x"], d["val_y"]), test=(d["test_x"], d["test_y"]))
    if strategy == "partial_ft":
        r = recipes.top_stage_fine_tune(model, cut_stage(scale), (d["maps"][idx], d["y"][idx]), (d["val_maps"], d["val_y"]),
                                        flipped=d["maps_flipped"][idx], test=(d["test_maps"], d["test_y"]),
                                        backbone_lr=backbone_lr, head_lr=scale.head_lr, **budget)
    elif strategy == "full_ft":
        r = recipes.full_fine_tune(model, **images, backbone_lr=backbone_lr, head_lr=scale.head_lr, **budget)
    else:
        r = recipes.from_scratch(model, **images, lr=scale.lr_scratch(size_name), warmup_epochs=scale.scratch_warmup_epochs,
                                 **budget)
    history = [{"epoch": e["epoch"], "train_accuracy": e["train_acc"], "val_accuracy": e["val_acc"],
                "val_loss": e["val_loss"]} for e in r.history.epochs]
    return dict(accuracy=r.accuracy, n_test=len(r.correct), correct=bits(r.correct),
                epochs_used=r.epochs, best_epoch=r.best_epoch, max_epochs=max_epochs,
                patience=patience, stopped_on_plateau=r.stopped_early, val_accuracy=r.val_accuracy,
                train_accuracy=history[r.best_epoch - 1]["train_accuracy"], collapsed=r.collapsed,
                device=r.device, backbone_lr=None if strategy == "scratch" else backbone_lr,
                lr=scale.lr_scratch(size_name) if strategy == "scratch" else scale.head_lr,
                trainable=models.count_parameters(model), history=history)


def matrix_rows(progress_rows: Sequence[Mapping[str, Any]], last: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(rows in decision_matrix's format, per-stage probe rows)`` from the progress rows.

    A ``stage_probes`` row becomes one ``probe_last`` and one ``probe_early`` row
    (:func:`choose_probes`) plus one row per stage; a trained strategy's row is kept as it is.
    """
    rows, stage_rows = [], []
    drop = ("key", "kind_key", "kind", "stages")
    for r in progress_rows:
        if r.get("kind") == "stage_probes":
            base = {k: v for k, v in r.items() if k not in drop and k != "seconds"}
            per = r["seconds"] / max(1, len(r["stages"]))
            stage_rows += [dict(base, **s) for s in r["stages"]]
            for strategy, s in choose_probes(r["stages"], last).items():
                rows.append(dict(base, strategy=strategy, stage=s["stage"], C=s["C"], val_accuracy=s["val_accuracy"],
                                 accuracy=s["accuracy"], n_test=s["n_test"], correct=s["correct"], seconds=per))
        elif r.get("kind") == "matrix":
            rows.append({k: v for k, v in r.items() if k not in drop})
    order = {s: i for i, s in enumerate(strategies.STRATEGIES)}
    rows.sort(key=lambda r: (strategies.QUADRANTS.index(r["quadrant"]), order[r["strategy"]], r["seed"]))
    return rows, stage_rows

