"""The reference run of notebook 04's decision matrix, at the textbook's scale, in one command.

    TLCOURSE_MIRROR=/work/shared/datasets python scripts/decision_matrix_reference.py \\
        --out tlcourse/experiments/results/04_decision_matrix_reference.json

Five strategies (two probes, partial and full fine-tuning, from scratch) in four quadrants:
similar = two CIFAR-10 classes, dissimilar = PneumoniaMNIST, each at "small" and "large" (>= 1000
images per class) training sizes, several seeds. Fair budgets: early stopping on a validation
split, learning rate and probe C chosen on validation, test scored once (see
``tlcourse.experiments.matrix_reference``). Every finished run is appended to a progress file, so an
interrupted run continues where it stopped; ``--smoke`` runs the same code at a tiny scale.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcourse import models, strategies
from tlcourse.experiments import decision_matrix
from tlcourse.experiments import matrix_reference as ref
from tlcourse.runtime import select_device

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "tlcourse/experiments/results/04_decision_matrix_reference.json")
    p.add_argument("--progress", type=Path, default=None,
                   help="append-only progress file (default: build/decision_matrix_reference/<out stem>.jsonl)")
    p.add_argument("--smoke", action="store_true", help="the same code path at a tiny scale (seconds)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: best on a shared 2-core CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where every run trains and extracts (auto: the GPU when there is one)")
    p.add_argument("--deadline", default=None,
                   help="UTC time HH:MM; runs whose measured duration would end after it are skipped and listed")
    return p.parse_args(argv)


class Runner:
    """Runs keyed jobs once: finished keys come from the progress file, new rows are appended to it."""

    def __init__(self, progress: Path, deadline: float | None) -> None:
        self.progress, self.deadline = progress, deadline
        self.rows = ref.read_rows(progress)
        self.done = {tuple(r["key"]) for r in self.rows}
        self.durations: dict[str, list[float]] = {}
        self.skipped: list[list[Any]] = []
        for r in self.rows:
            self.durations.setdefault(r["kind_key"], []).append(r["seconds"])

    def run(self, key: list[Any], kind_key: str, job: Any, fields: dict[str, Any]) -> dict[str, Any] | None:
        if tuple(key) in self.done:
            return next(r for r in self.rows if tuple(r["key"]) == tuple(key))
        past = self.durations.get(kind_key)
        if self.deadline is not None and past and time.time() + max(past) > self.deadline:
            self.skipped.append(key)
            log(f"SKIP {key}: {max(past):.0f} s would end after the deadline")
            return None
        out, seconds = ref.timed(job)
        row = dict(fields, **out, key=key, kind_key=kind_key, seconds=seconds)
        ref.append_row(self.progress, row)
        self.rows.append(row)
        self.done.add(tuple(key))
        self.durations.setdefault(kind_key, []).append(seconds)
        if "stages" in out:
            out_acc = {st["stage"]: round(st["accuracy"], 3) for st in out["stages"]}
            log(f"{' '.join(map(str, key))}: per-stage test accuracy {out_acc}")
        epochs = "" if "epochs_used" not in out else f", {out['epochs_used']} epochs, plateau {out['stopped_on_plateau']}"
        log(f"{' '.join(map(str, key))}: test {out.get('accuracy', float('nan')):.3f}{epochs} ({seconds:.0f} s)")
        return row


def eta(runner: Runner, remaining: list[tuple[str, str, int]]) -> str:
    """Expected end time of the remaining subsets, from the measured durations of each kind of run."""
    if not remaining:
        return "now"
    left = 0.0
    for size_name, domain, _ in remaining:
        quadrant = f"{size_name}_{domain}"
        for kind in [f"probes-{size_name}"] + [f"{s}-{quadrant}" for s in strategies.TRAINED]:
            past = runner.durations.get(kind)
            if not past:
                return "unknown (not every kind of run measured yet)"
            left += sum(past) / len(past)
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=left)
    return f"{end:%H:%M} UTC ({left / 60:.0f} min left)"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def hardware(threads: int, device: str) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    versions = {}
    for pkg in ("torch", "timm", "numpy", "scikit-learn", "scipy", "statsmodels"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name() if select_device(device).type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "gpu": gpu, "device": str(select_device(device)),
            "python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "note": "CPU shared with other jobs during the run; seconds are wall-clock, not comparable"}


def plan(scale: ref.Scale) -> list[tuple[str, str, int]]:
    """(size, domain, seed) in run order: seed-major, so any prefix is a balanced matrix."""
    out = []
    for seed in range(max(scale.seeds_small, scale.seeds_large)):
        for size_name in ("small", "large"):
            if seed in scale.seeds(size_name):
                out += [(size_name, domain, seed) for domain in ("similar", "dissimilar")]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = ref.SMOKE_SCALE if args.smoke else ref.REFERENCE_SCALE
    torch.set_num_threads(args.threads)
    progress = args.progress or REPO / "build/decision_matrix_reference" / f"{args.out.stem}.jsonl"
    deadline = None
    if args.deadline:
        hh, mm = (int(v) for v in args.deadline.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hh, minute=mm, second=0).timestamp()
    runner = Runner(progress, deadline)
    t0 = time.time()
    log(f"scale: {ref.scale_dict(scale)}; {len(runner.done)} runs already in {progress}")
    domains = {}
    for name in ("similar", "dissimilar"):
        d, sec = ref.timed(lambda n=name: ref.load_domain(n, scale))
        _, sec2 = ref.timed(lambda d=d: ref.add_activations(d, scale, device=args.device))
        domains[name] = d
        log(f"{name}: {len(d['x'])} training-pool images, {len(d['val_y'])} validation, {len(d['test_y'])} test; "
            f"decoded in {sec:.0f} s, activations in {sec2:.0f} s")
    last = models.backbone_spec(scale.backbone).stage_names[-1]

    # 1. The pretrained layers' learning rate, chosen once per domain on validation (partial_ft, large, seed 0).
    chosen_lr = {}
    for name, d in domains.items():
        idx = d["subsets"]["large", 0]
        vals = {}
        for lr in scale.backbone_lrs:
            row = runner.run(["sweep", name, lr], "sweep", partial(ref.run_trained, "partial_ft", d, idx, "large", scale, 0, lr,
                                                                    device=args.device),
                             dict(kind="lr_sweep", domain=name, backbone_lr=lr))
            vals[lr] = (row["val_accuracy"], -abs(np.log10(lr) + 4)) if row else (-1, 0)
        chosen_lr[name] = max(vals, key=lambda lr: vals[lr])
        log(f"{name}: backbone learning rate {chosen_lr[name]:g} (validation accuracy by rate: "
            + ", ".join(f"{lr:g}: {v[0]:.3f}" for lr, v in vals.items()) + ")")

    # 2. The matrix, seed-major.
    steps = plan(scale)
    for k, (size_name, domain, seed) in enumerate(steps):
        d, quadrant = domains[domain], f"{size_name}_{domain}"
        idx = d["subsets"][size_name, seed]
        base = dict(kind="matrix", quadrant=quadrant, domain=domain, dataset=d["dataset"],
                    n_per_class=scale.n(size_name), seed=seed, size=scale.size)
        runner.run(["probes", quadrant, seed], f"probes-{size_name}",
                   partial(ref.run_probes, d, idx, scale, seed), dict(base, kind="stage_probes"))
        for strategy in strategies.TRAINED:
            runner.run([strategy, quadrant, seed], f"{strategy}-{quadrant}",
                       partial(ref.run_trained, strategy, d, idx, size_name, scale, seed, chosen_lr[domain],
                               device=args.device),
                       dict(base, strategy=strategy))
        log(f"progress: {k + 1}/{len(steps)} subsets in {(time.time() - t0) / 60:.1f} min this session; "
            f"ETA {eta(runner, steps[k + 1:])}")
        write_final(args, scale, runner, chosen_lr, last, time.time() - t0, complete=False)
    write_final(args, scale, runner, chosen_lr, last, time.time() - t0, complete=True)
    log(f"done: {args.out}")
    return 0


def write_final(args: argparse.Namespace, scale: ref.Scale, runner: Runner, chosen_lr: dict[str, float],
                last: str, seconds: float, *, complete: bool) -> None:
    rows, stage_rows = ref.matrix_rows(runner.rows, last)
    sweep = [{k: r[k] for k in ("domain", "backbone_lr", "val_accuracy", "epochs_used", "stopped_on_plateau",
                                "seconds")} for r in runner.rows if r.get("kind") == "lr_sweep"]
    meta = dict(
        kind="decision_matrix_reference", complete=complete and not runner.skipped,
        command="TLCOURSE_MIRROR=<mirror> python " + " ".join(shlex.quote(a) for a in
                                                               ["scripts/decision_matrix_reference.py", *sys.argv[1:]]),
        written=f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", hardware=hardware(args.threads, args.device),
        wall_seconds_this_session=round(seconds), run_seconds_total=round(sum(r["seconds"] for r in runner.rows)),
        backbone=scale.backbone, size=scale.size, small=scale.small, large=scale.large,
        seeds={"small": scale.seeds("small"), "large": scale.seeds("large")}, scale=ref.scale_dict(scale),
        backbone_lr=chosen_lr, lr_sweep=sweep, cut_stage=ref.cut_stage(scale), last_stage=last,
        skipped=runner.skipped, smoke=args.smoke,
        budget=("trained strategies: Adam, batch %d, random horizontal flips, early stopping on validation accuracy "
                "(patience %d of at most %d epochs small, %d of %d large), best-validation weights restored; head "
                "lr %g, pretrained layers at the rate chosen on validation, scratch all at %g; probes: standardised "
                "logistic regression, C from %s chosen on validation; probe_early = the best earlier stage on "
                "validation" % (scale.batch_size, scale.patience_small, scale.max_epochs_small, scale.patience_large,
                                scale.max_epochs_large, scale.head_lr, scale.scratch_lr, list(scale.probe_cs))),
        data=("similar: CIFAR-10 %s (32 px upsampled to %d; validation carved from CIFAR's train split, test from "
              "its test split); dissimilar: PneumoniaMNIST, the course mirror's balanced copy (1214 training images "
              "per class; the official file has 1,214 normal and 3,494 pneumonia), 28 px upsampled to %d, validation "
              "from its val split, test = its test split" % ("/".join(scale.similar_classes), scale.size, scale.size)),
        test_per_class=scale.test_per_class, val_per_class=scale.val_per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    decision_matrix.save_results(rows, args.out, meta, extra={"stage_probes": stage_rows})


if __name__ == "__main__":
    sys.exit(main())
