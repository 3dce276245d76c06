"""Does bf16 autocast on the CPU train as well as float32, and how much faster? One command
(``scripts/bf16_parity.py`` calls :func:`main`):

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/bf16_parity.py \\
        --out tlcourse/experiments/results/bf16_parity.json

Two trainings on Alien vs Predator at 224 px, every layer trainable, AdamW with a cosine schedule,
each in float32 and in bf16 autocast with the same seeds and batches:

* ResNet-18, dense convolutions: the kind of network for which bf16 pays off on a CPU with
  native bf16 (``runtime.bf16_pays_off``), with bf16 asked for (``device_settings(bf16=True)``). Its
  weights start random (its ImageNet weights need a download this machine cannot make); from
  random weights every layer moves far, the harder test of bf16's rounding.
* EfficientNet-Lite0 from its ImageNet weights: a real short fine-tune, with bf16 asked for
  (``device_settings(bf16=True)``), although it does not pay off for this depthwise network.

Both are scored on the 200 held-out validation images: accuracy with a Wilson interval, a paired
McNemar comparison per seed, and a Welch interval over seeds. Each finished run is appended to a
progress file, so an interrupted run continues; ``--smoke`` runs the same code in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from tlcourse import data, evaluation, models, runtime
from tlcourse._io import atomic_write_text
from tlcourse.experiments.reference_runs import (
    append_row,
    bits,
    command_line,
    progress_path,
    read_rows,
    reference_arguments,
    unbits,
)
from tlcourse.train import fit

__all__ = ["PRECISIONS", "RUNS", "main", "run_one", "summarise"]
PRECISIONS = ("fp32", "bf16")
#: backbone -> (ImageNet weights, epochs): from scratch needs more epochs than a fine-tune.
RUNS = {"resnet18": (False, 5), "efficientnet_lite0": (True, 2)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference_arguments(p, "bf16_parity", "bf16_parity.json", threads=None, deadline=False)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--backbones", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--size", type=int, default=224)
    return p.parse_args(argv)


def settings_for(precision: str) -> runtime.DeviceSettings:
    """CPU settings in float32 (``"fp32"``) or under bf16 autocast (``"bf16"``), asked for explicitly."""
    return runtime.device_settings("cpu", bf16=precision == "bf16")


def load(backbone: str, size: int, smoke: bool) -> dict[str, Any]:
    """Alien vs Predator decoded once (uint8, resized and cropped to ``size``), train and validation,
    with the backbone's normalisation."""
    spec = models.backbone_spec(backbone).preprocessing()
    from torchvision import transforms

    crop = transforms.Compose([transforms.Resize(round(size * spec.resize / spec.crop)), transforms.CenterCrop(size)])
    out: dict[str, Any] = {"mean": spec.mean, "std": spec.std}
    for split in ("train", "validation"):
        ds = data.course_dataset("alien-vs-predator", split, transform=crop)
        idx = list(range(0, len(ds), max(1, len(ds) // 24))) if smoke else None
        out[split] = data.load_images(ds, idx)
    return out


def run_one(d: dict[str, Any], backbone: str, precision: str, seed: int, epochs: int, size: int) -> dict[str, Any]:
    """Train once and score the held-out images; the row keeps per-image correctness for paired tests."""
    train = data.TensorImages(*d["train"], size=size, mean=d["mean"], std=d["std"], train=True)
    val = data.TensorImages(*d["validation"], size=size, mean=d["mean"], std=d["std"])
    torch.manual_seed(seed)
    model = models.build_backbone(backbone, num_classes=2, pretrained=RUNS[backbone][0])
    settings = settings_for(precision)
    train_loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, batch_size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3 if not RUNS[backbone][0] else 3e-4)
    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=epochs, seed=seed, settings=settings, progress=False,
                  optimizer=optimizer, scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs))
    seconds = time.perf_counter() - start
    dtype = settings.amp_dtype
    correct = []
    model.eval()
    with torch.inference_mode():
        for x, y in val_loader:
            with settings.autocast():
                correct.append(model(settings.to_device(x)).argmax(1) == y)
    hits = torch.cat(correct)
    return {"key": [backbone, precision, seed], "backbone": backbone, "pretrained": RUNS[backbone][0],
            "epochs": epochs, "precision": precision, "seed": seed, "autocast": str(dtype),
            "accuracy": float(hits.float().mean()), "n": len(hits), "correct": bits(hits),
            "seconds": round(seconds, 1), "train_img_per_s": round(epochs * len(train) / seconds, 1),
            "val_acc_by_epoch": [round(e["val_acc"], 4) for e in history.epochs]}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed Wilson intervals and paired tests, Welch over seeds, speed, and the verdict sentence
    (the rows of one backbone)."""
    by = {(r["precision"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows if all((p, r["seed"]) in by for p in PRECISIONS)})
    per_seed = []
    for s in seeds:
        a, b = by["bf16", s], by["fp32", s]
        ca, cb = unbits(a["correct"], a["n"]), unbits(b["correct"], b["n"])
        pair = evaluation.paired_comparison(ca, cb)
        est = {p: evaluation.accuracy_ci(unbits(by[p, s]["correct"], by[p, s]["n"])) for p in PRECISIONS}
        per_seed.append({"seed": s, **{f"{p}_acc": round(est[p].value, 4) for p in PRECISIONS},
                         **{f"{p}_ci": [round(est[p].low, 4), round(est[p].high, 4)] for p in PRECISIONS},
                         "diff": round(pair.diff, 4), "diff_ci": [round(pair.low, 4), round(pair.high, 4)],
                         "mcnemar_p": round(pair.p_value, 4),
                         "verdict": evaluation.verdict("bf16", "float32", pair),
                         "speedup": round(b["seconds"] / a["seconds"], 2)})
    over = evaluation.seeds_comparison([by["bf16", s]["accuracy"] for s in seeds],
                                       [by["fp32", s]["accuracy"] for s in seeds])
    speedups = [p["speedup"] for p in per_seed]
    # the control: how far two seeds of the same precision land apart on the same images
    same = {p: [evaluation.paired_comparison(unbits(by[p, a]["correct"], by[p, a]["n"]),
                                             unbits(by[p, b]["correct"], by[p, b]["n"]))
                for i, a in enumerate(seeds) for b in seeds[i + 1:]] for p in PRECISIONS}
    return {"seeds": seeds, "per_seed": per_seed,
            "accuracy_range": {p: [min(by[p, s]["accuracy"] for s in seeds), max(by[p, s]["accuracy"] for s in seeds)]
                               for p in PRECISIONS} if seeds else {},
            "seed_pairs_max_abs_diff": {p: max((abs(c.diff) for c in same[p]), default=None) for p in PRECISIONS},
            "over_seeds": {"diff": over.diff, "ci": [over.low, over.high], "p": over.p_value,
                           "mean_bf16": over.mean_a, "mean_fp32": over.mean_b},
            "verdict_over_seeds": evaluation.verdict("bf16", "float32", over),
            "speedup_min": min(speedups, default=None), "speedup_max": max(speedups, default=None)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison and write its JSON; ``--smoke`` runs it in seconds."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    epochs = {b: (1 if args.smoke else RUNS[b][1]) for b in args.backbones}
    if args.smoke:
        args.seeds, args.size = 1, 64
    progress = progress_path(args, "bf16_parity")
    rows = read_rows(progress)
    done = {tuple(r["key"]) for r in rows}
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    for backbone in args.backbones:
        d = None
        for seed in range(args.seeds):
            for precision in PRECISIONS:
                if (backbone, precision, seed) in done:
                    continue
                d = d or load(backbone, args.size, args.smoke)
                row = run_one(d, backbone, precision, seed, epochs[backbone], args.size)
                append_row(progress, row)
                rows.append(row)
                print(f"[bf16_parity] {backbone} seed {seed} {precision}: {row['accuracy']:.3f} in {row['seconds']} s "
                      f"({row['train_img_per_s']} img/s, autocast {row['autocast']})", flush=True)
    rows = [r for r in rows if r["seed"] < args.seeds and r["backbone"] in args.backbones]
    result = {"meta": {"command": command_line("scripts/bf16_parity.py", argv),
                       "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "runs": {b: {"pretrained": RUNS[b][0], "epochs": epochs[b]} for b in args.backbones},
                       "size": args.size,
                       "optimizer": "AdamW (lr 1e-3 from scratch, 3e-4 fine-tuning), cosine schedule, batch 32, "
                                    "flips and crops (TensorImages train=True)",
                       "data": "Alien vs Predator: train split to train, the 200 validation images held out",
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu_supports_bf16": runtime.cpu_supports_bf16(), "platform": platform.platform(),
                       "wall_seconds_this_call": round(time.perf_counter() - started, 1),
                       "training_seconds_total": round(sum(r["seconds"] for r in rows), 1), "smoke": args.smoke,
                       "load_average_at_end": list(os.getloadavg())},
              "rows": rows,
              "summary": {b: summarise([r for r in rows if r["backbone"] == b]) for b in args.backbones}}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    for b in args.backbones:
        print(f"{b}: {result['summary'][b]['verdict_over_seeds']}")
    return result


if __name__ == "__main__":
    main()
