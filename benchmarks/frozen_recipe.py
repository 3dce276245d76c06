"""Benchmark: the classic 25-epoch frozen-backbone recipe, naive loop vs cached features.

The recipe (as in the classic Alien vs Predator / PyTorch transfer-learning tutorials): a
pretrained backbone with every layer frozen, a new linear head, SGD (lr 0.001, momentum 0.9),
batch size 32, 25 epochs, evaluated on the validation split after every epoch. Images go through
the default backbone's own eval preprocessing (resize, centre crop, its mean/std).

(a) naive: the frozen backbone runs on every image in every epoch (``tlcourse.train.train_one_epoch``
    and ``evaluate`` over the image loaders).
(b) cached: ``tlcourse.features.cached_features`` runs the backbone once over the training and the
    validation images (into an empty cache, so the one-time extraction and the save are counted),
    then ``train_linear_probe`` trains the same head on the vectors for 25 epochs.

Both routes start from the same head initialisation and visit the training images in the same
shuffled order, so they should reach the same accuracy; the only difference is float rounding.

The naive loop costs one full backbone pass over ~900 images per epoch. On a slow CPU 25 of them
can take most of an hour, so by default the naive route runs ``--naive-epochs 2`` epochs and its
25-epoch time is extrapolated linearly from the measured per-epoch times (every epoch does the
same work). Both the measured epochs and the extrapolation are reported; the accuracies are
compared epoch by epoch over the epochs the naive route actually ran. ``--naive-epochs 25`` runs
it in full.

    python -m benchmarks --only frozen_recipe [--naive-epochs 25]
    python -m benchmarks.frozen_recipe [--naive-epochs 25] [--epochs 25]

Writes ``build/benchmarks/frozen_recipe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from benchmarks.common import Section, machine, ratio, write_section
from tlcourse import data, features, models
from tlcourse.runtime import seed_everything
from tlcourse.train import evaluate, train_one_epoch


def run(naive_epochs: int = 2, epochs: int = 25, backbone: str = models.DEFAULT_BACKBONE, seed: int = 0,
        batch_size: int = 32, lr: float = 1e-3) -> Section:
    """Both routes of the recipe; the naive one runs ``naive_epochs`` epochs (extrapolated to ``epochs``)."""
    args = argparse.Namespace(backbone=backbone, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
    naive_epochs = max(1, min(naive_epochs, epochs))
    start_machine = machine()
    device = torch.device("cpu")
    seed_everything(args.seed)

    spec = models.backbone_spec(args.backbone)
    tf = spec.preprocessing().eval_transform()
    train_set = data.course_dataset("alien-vs-predator", "train", transform=tf)
    val_set = data.course_dataset("alien-vs-predator", "validation", transform=tf)
    n_classes = len(train_set.classes)
    print(f"{args.backbone}, {len(train_set)} train / {len(val_set)} validation images, "
          f"{torch.get_num_threads()} threads, preprocessing {tf}")

    # ---------------------------------------------------------------- (b) cached features
    backbone = models.build_backbone(args.backbone).eval()
    with tempfile.TemporaryDirectory() as cache:  # empty: the extraction is really paid for
        start = time.perf_counter()
        tr = features.cached_features(backbone, train_set, root=cache)  # the course's defaults
        va = features.cached_features(backbone, val_set, root=cache)
        extract_s = time.perf_counter() - start
        probe = features.train_linear_probe(tr.features, tr.labels, va.features, va.labels, epochs=args.epochs,
                                            lr=args.lr, momentum=0.9, batch_size=args.batch_size,
                                            num_classes=n_classes, seed=args.seed)
        start = time.perf_counter()
        again = features.cached_features(backbone, train_set, root=cache)
        hit_s = time.perf_counter() - start
        assert again.hit
    cached_total = extract_s + probe["seconds"]
    n_images = len(train_set) + len(val_set)
    print(f"cached: extraction {extract_s:.1f} s ({n_images / extract_s:.1f} img/s), head {probe['seconds']:.2f} s "
          f"for {args.epochs} epochs, val acc {probe['accuracy']:.4f}; reloading from cache {hit_s:.2f} s")

    # ---------------------------------------------------------------- (a) naive loop
    model = models.build_backbone(args.backbone)
    models.freeze_backbone(model)
    torch.manual_seed(args.seed)  # the same head initialisation as train_linear_probe
    models.replace_head(model, n_classes)
    # channels_last like the extraction, so the comparison measures caching and nothing else
    model.to(device, memory_format=torch.channels_last)
    sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed))  # the same order
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    val_loader = DataLoader(val_set, batch_size=64)
    optimizer = torch.optim.SGD(models.head_parameters(model), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    naive_history = []
    for epoch in range(1, naive_epochs + 1):
        start = time.perf_counter()
        tr_stats = train_one_epoch(model, train_loader, loss_fn, optimizer, device)
        va_stats = evaluate(model, val_loader, loss_fn, device)
        seconds = time.perf_counter() - start
        cached_acc = probe["history"][epoch - 1]["val_acc"]
        naive_history.append({"epoch": epoch, "seconds": seconds, "train_acc": tr_stats.accuracy,
                              "val_acc": va_stats.accuracy, "cached_val_acc": cached_acc})
        print(f"naive epoch {epoch}: {seconds:.1f} s, val acc {va_stats.accuracy:.4f} (cached route: {cached_acc:.4f})")
    per_epoch = sum(h["seconds"] for h in naive_history) / naive_epochs
    naive_total = per_epoch * args.epochs
    extrapolated = naive_epochs < args.epochs
    max_gap = max(abs(h["val_acc"] - h["cached_val_acc"]) for h in naive_history)

    result = {
        "recipe": {"backbone": args.backbone, "dataset": "alien-vs-predator train/validation",
                   "epochs": args.epochs, "optimizer": f"SGD lr {args.lr} momentum 0.9",
                   "batch_size": args.batch_size, "preprocessing": repr(tf), "seed": args.seed},
        "machine": {**start_machine, "threads": torch.get_num_threads(), "device": str(device)},
        "machine_end": machine(),
        "images": {"train": len(train_set), "validation": len(val_set)},
        "cached": {"extraction_seconds": extract_s, "extraction_images_per_s": n_images / extract_s,
                   "head_seconds": probe["seconds"], "total_seconds": cached_total,
                   "val_acc": probe["accuracy"], "cache_reload_seconds": hit_s,
                   "history": probe["history"]},
        "naive": {"epochs_run": naive_epochs, "measured_epoch_seconds": [h["seconds"] for h in naive_history],
                  "mean_epoch_seconds": per_epoch, "total_seconds": naive_total,
                  "total_is_extrapolated": extrapolated,
                  "val_acc_last_epoch_run": naive_history[-1]["val_acc"], "history": naive_history},
        "speedup": ratio(naive_total, cached_total),
        "max_val_acc_gap_over_epochs_run": max_gap,
    }
    return Section("frozen_recipe", result, markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=models.DEFAULT_BACKBONE)
    parser.add_argument("--epochs", type=int, default=25, help="epochs of the recipe")
    parser.add_argument("--naive-epochs", type=int, default=2,
                        help="epochs the naive loop actually runs (its 25-epoch time is extrapolated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    section = run(args.naive_epochs, args.epochs, args.backbone, args.seed, args.batch_size, args.lr)
    write_section(section, args.out)
    print(section.markdown)


def markdown(r: dict) -> str:
    c, n = r["cached"], r["naive"]
    how = (f"extrapolated: {n['epochs_run']} epochs measured, mean {n['mean_epoch_seconds']:.1f} s/epoch x {r['recipe']['epochs']}"
           if n["total_is_extrapolated"] else f"measured over all {n['epochs_run']} epochs")
    rows = "\n".join(f"| {h['epoch']} | {h['seconds']:.1f} | {h['val_acc']:.4f} | {h['cached_val_acc']:.4f} |"
                     for h in n["history"])
    return f"""# Frozen-backbone recipe: naive loop vs cached features

{r['recipe']['backbone']}, Alien vs Predator ({r['images']['train']} train / {r['images']['validation']} validation),
{r['recipe']['epochs']} epochs, {r['recipe']['optimizer']}, batch {r['recipe']['batch_size']}, {r['machine']['threads']} CPU threads, torch {r['machine']['torch']},
load average {r['machine']['load_average']} at the start, {r['machine_end']['load_average']} at the end.
Naive route: {how}.

| route | total seconds | validation accuracy |
|---|---:|---:|
| naive (backbone every epoch) | {n['total_seconds']:.0f} ({how}) | {n['val_acc_last_epoch_run']:.4f} after epoch {n['epochs_run']} |
| cached (extraction {c['extraction_seconds']:.0f} s + head {c['head_seconds']:.2f} s) | {c['total_seconds']:.0f} | {c['val_acc']:.4f} after epoch {r['recipe']['epochs']} |

**Speed-up: {r['speedup']:.1f}x** (goal >= 20x: {'met' if r['speedup'] >= 20 else 'not met'}; accuracy within 1 point over the
epochs both routes ran: {'met' if r['max_val_acc_gap_over_epochs_run'] <= 0.01 else 'not met'}) (extraction {c['extraction_images_per_s']:.1f} img/s; reloading the cached features takes {c['cache_reload_seconds']:.2f} s).

Per epoch, naive vs cached validation accuracy (largest gap {r['max_val_acc_gap_over_epochs_run']:.4f}):

| epoch | naive seconds | naive val acc | cached val acc |
|---:|---:|---:|---:|
{rows}
"""


if __name__ == "__main__":
    main()
