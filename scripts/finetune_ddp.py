"""Full-size fine-tuning on several GPUs (or CPU processes) with DistributedDataParallel.

The course's CIFAR-10 fine-tuning at full size: all 50,000 training images at the backbone's own
input size (224 px for the default EfficientNet-Lite0), validated on the 10,000 test images,
with the same ``tlcourse.train.fit`` the notebooks use. Launch one process per GPU::

    torchrun --standalone --nproc_per_node=4 scripts/finetune_ddp.py --epochs 3 --checkpoint-dir checkpoints/ddp

Offline, on a machine whose hostname does not resolve, add ``--local-addr=127.0.0.1`` (torchrun
otherwise hands the workers the hostname as MASTER_ADDR and they wait for it until timing out).

``--batch-size`` is per process (default: ``device_settings``' recommendation, 128 on a GPU); the
global batch is N times larger, so raise ``--lr`` with it (linear scaling) if you change N a lot.
On CUDA: NCCL, bf16 autocast, channels_last, pinned memory. On a CPU: gloo, float32.

Smaller runs:

    --subset 200 --image-size 64 --epochs 1          # 200 training images (and 100 validation)
    --synthetic --model tiny --image-size 16         # generated data, no dataset needed (tests)

Each rank writes ``--out-dir/rank{R}.json`` (SHA-256 of its initial and final weights, the
training-set indices it was given each epoch (synthetic data only), its history, timings) and
``--out-dir/rank{R}.pt`` (its final state_dict), so the ranks can be compared afterwards; rank
0 also prints whether all ranks ended with identical weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tlcourse import data, models, runtime, train
from tlcourse.experiments import distributed


class SyntheticImages(Dataset):
    """Generated images (class ``c`` brighter in channel ``c % 3`` and in a row band), with
    CIFAR-10's 10 classes; records every index it serves, so a run can show which samples each
    rank trained on (with ``num_workers=0``)."""

    def __init__(self, n: int, size: int, seed: int, num_classes: int = 10) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = (torch.arange(n) % num_classes).tolist()
        labels = torch.tensor(self.targets)
        self.images = torch.randn(n, 3, size, size, generator=g) * 0.5
        self.images[torch.arange(n), labels % 3] += 1.0
        band = (labels * size) // num_classes
        for i in range(n):
            self.images[i, :, band[i] : band[i] + max(1, size // num_classes)] += 1.0
        self.classes = [f"class{c}" for c in range(num_classes)]
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.seen.append(int(index))
        return self.images[index], self.targets[index]


class TinyNet(nn.Module):
    """Two conv + BatchNorm blocks and a linear head: a few thousand weights, for fast tests."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true", help="generated data instead of CIFAR-10")
    p.add_argument("--synthetic-size", type=int, default=256, help="synthetic training images (validation: a quarter)")
    p.add_argument("--model", choices=["backbone", "tiny"], default="backbone")
    p.add_argument("--backbone", default=models.DEFAULT_BACKBONE)
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random initial weights")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: the backbone's own, 224; synthetic: 32)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on this many CIFAR-10 images (stratified); validate on half as many")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: device_settings')")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=None,
                   help="DataLoader workers per process (default: 0 synthetic, else min(4, CPUs / processes))")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (CUDA only)")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="best.pt / last.pt (rank 0 writes; resumable)")
    p.add_argument("--out-dir", type=Path, default=None, help="per-rank results: rank{R}.json and rank{R}.pt")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def build_data(args: argparse.Namespace, size: int) -> tuple[Any, Any]:
    if args.synthetic:
        n = args.synthetic_size
        return SyntheticImages(n, size, seed=args.seed), SyntheticImages(max(n // 4, 10), size, seed=args.seed + 1)
    pre = models.backbone_spec(args.backbone).preprocessing()
    if size != pre.crop:  # same resize/crop ratio and normalisation at another size
        pre = dataclasses.replace(pre, resize=round(size * pre.resize / pre.crop), crop=size)
    with distributed.main_first():  # rank 0 extracts the dataset once, the others find it
        train_set = data.cifar10("train", transform=pre.train_transform())
        val_set = data.cifar10("test", transform=pre.eval_transform())
    if args.subset:
        per_class = max(args.subset // 10, 1)
        train_set = Subset(train_set, data.stratified_subset(data.targets_of(train_set), per_class, seed=args.seed))
        val_per_class = max(per_class // 2, 1)
        val_set = Subset(val_set, data.stratified_subset(data.targets_of(val_set), val_per_class, seed=args.seed))
    return train_set, val_set


def build_model(args: argparse.Namespace) -> nn.Module:
    runtime.seed_everything(args.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    if args.model == "tiny":
        return TinyNet(10)
    return models.build_backbone(args.backbone, 10, pretrained=args.pretrained)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    ctx = distributed.init_from_env(args.device)
    try:
        settings = runtime.device_settings(ctx.device, batch_size=args.batch_size)
        size = args.image_size or (32 if args.synthetic else models.backbone_spec(args.backbone).preprocessing().crop)
        workers = args.num_workers
        if workers is None:
            workers = 0 if args.synthetic else min(4, max((os.cpu_count() or 1) // ctx.world_size - 1, 0))
        distributed.print0(
            f"[ddp] {ctx.world_size} process(es), backend {ctx.backend or 'none'}, device {ctx.device.type}, "
            f"{'bf16' if settings.amp_dtype == torch.bfloat16 else 'fp16' if settings.amp else 'fp32'}, "
            f"channels_last={settings.channels_last}, batch {settings.batch_size}/process "
            f"(global {settings.batch_size * ctx.world_size}), {size} px, "
            f"{'synthetic data' if args.synthetic else 'CIFAR-10'}, model {args.model if args.model == 'tiny' else args.backbone}"
        )
        train_set, val_set = build_data(args, size)
        model = build_model(args)
        ddp_model = distributed.wrap(model, settings, sync_batchnorm=args.sync_bn)
        initial = models.state_dict_fingerprint(ddp_model)
        train_dl = distributed.train_loader(train_set, settings, seed=args.seed, num_workers=workers)
        val_dl = distributed.eval_loader(val_set, settings, batch_size=2 * settings.batch_size, num_workers=workers)
        distributed.print0(f"[ddp] {len(train_set)} training images ({len(train_dl)} steps/epoch/process), "
                           f"{len(val_set)} validation images")

        seen_by_epoch: list[list[int]] = []

        def record(epoch: int, stats: dict[str, Any], m: nn.Module) -> None:
            if isinstance(train_set, SyntheticImages):
                seen_by_epoch.append(list(train_set.seen))
                train_set.seen.clear()

        fit_start = time.perf_counter()
        history = train.fit(
            ddp_model, train_dl, val_dl, epochs=args.epochs, lr=args.lr, settings=settings,
            seed=args.seed, checkpoint_dir=args.checkpoint_dir, progress=args.progress,
            on_epoch_end=record, callbacks=[distributed.Distributed()],
            meta={"num_classes": 10, "backbone": args.backbone if args.model == "backbone" else "tiny",
                  "image_size": size, "world_size": ctx.world_size},
        )
        fit_seconds = time.perf_counter() - fit_start
        final = models.state_dict_fingerprint(ddp_model)

        hashes = [final]
        if distributed.is_distributed():
            hashes = [""] * ctx.world_size
            torch.distributed.all_gather_object(hashes, final)
        if args.out_dir is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            core = distributed.unwrap(ddp_model)
            state = {k: v.detach().cpu().contiguous() for k, v in core.state_dict().items()}
            train.save_checkpoint(state, args.out_dir / f"rank{ctx.rank}.pt")
            report = {
                "rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend,
                "device": str(ctx.device), "initial_sha256": initial, "final_sha256": final,
                "train_indices": seen_by_epoch, "train_size": len(train_set), "val_size": len(val_set),
                "history": history.epochs, "fit_seconds": fit_seconds,
                "seconds": time.perf_counter() - started,
            }
            (args.out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(report, indent=1))
        last = history.epochs[-1]
        distributed.print0(
            f"[ddp] done: fit {fit_seconds:.1f}s, script {time.perf_counter() - started:.1f}s; "
            f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, val acc {last['val_acc']:.3f} "
            f"(over {ctx.world_size} rank(s)); identical weights on all ranks: {len(set(hashes)) == 1}"
        )
        return 0 if len(set(hashes)) == 1 else 1
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
