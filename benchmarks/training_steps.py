"""Training-step throughput on the CPU: float32 vs bf16 autocast, by input size.

    python -m benchmarks --only training_steps [--quick]

The default backbone with a fresh 2-class head, every layer trainable, AdamW, batch 32,
channels_last, random images at 64, 128 and 224 px. Each step goes through the course's own
``train_one_epoch`` with a forced ``DeviceSettings`` (``amp_dtype`` None or bfloat16), so it times
what ``fit`` runs. The two precisions alternate round by round, so a change in the machine's load
hits both. This measures ``runtime.CPU_BF16_MIN_SIDE``: bf16 becomes the default from the size
where it is faster.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks.common import Section, machine, md_table, ratio
from tlcourse import models, runtime
from tlcourse.train import train_one_epoch

SIZES = (64, 128, 224)


def step_rate(model: nn.Module, settings: runtime.DeviceSettings, size: int, batch: int, steps: int) -> float:
    """Images per second of ``steps`` training steps (after one warm-up step) at ``size`` px."""
    g = torch.Generator().manual_seed(size)
    batches = [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 2, (batch,), generator=g))
               for _ in range(steps)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = nn.CrossEntropyLoss()
    train_one_epoch(model, batches[:1], loss, optimizer, settings)  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    train_one_epoch(model, batches, loss, optimizer, settings)
    return batch * steps / (time.perf_counter() - start)


def run(sizes: Sequence[int] = SIZES, batch: int = 32, steps: int = 4, rounds: int = 2) -> Section:
    """fp32 vs bf16 training steps at every size, ``rounds`` alternating rounds each."""
    base = runtime.device_settings("cpu", bf16=False)
    modes = {"fp32": base, "bf16": dataclasses.replace(base, amp_dtype=torch.bfloat16)}
    rows: list[dict[str, Any]] = []
    for size in sizes:
        rates: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for mode, settings in modes.items():
                torch.manual_seed(0)
                model = settings.prepare(models.build_backbone(models.DEFAULT_BACKBONE, num_classes=2))
                rates[mode].append(step_rate(model, settings, size, batch, steps))
        best = {m: max(v) for m, v in rates.items()}
        rows.append({"size": size, "fp32_img_per_s": round(best["fp32"], 1), "bf16_img_per_s": round(best["bf16"], 1),
                     "bf16_speedup": round(ratio(1 / best["fp32"], 1 / best["bf16"]), 2)})
        print(f"[training_steps] {size}px: fp32 {best['fp32']:.1f} img/s, bf16 {best['bf16']:.1f} img/s", flush=True)
    faster = [r["size"] for r in rows if r["bf16_speedup"] >= 1.1]
    info: dict[str, Any] = {
        "machine": machine(), "batch": batch, "steps": steps, "rounds": rounds, "rows": rows,
        "cpu_supports_bf16": runtime.cpu_supports_bf16(), "policy_min_side": runtime.CPU_BF16_MIN_SIDE,
        "bf16_faster_from": min(faster) if faster else None,
    }
    text = (f"# Training steps on the CPU: float32 vs bf16 autocast\n\n`{models.DEFAULT_BACKBONE}`, all layers "
            f"trainable, AdamW, batch {batch}, channels_last, {steps} timed steps, best of {rounds} alternating "
            f"rounds; {info['machine']['torch_threads']} threads, load average {info['machine']['load_average']}. "
            f"Native bf16 on this CPU: {info['cpu_supports_bf16']}.\n\n{md_table(rows)}\n"
            f"bf16 at least 1.1x faster from: {info['bf16_faster_from']} px. The course's default "
            f"(`runtime.CPU_BF16_MIN_SIDE`): bf16 autocast from {runtime.CPU_BF16_MIN_SIDE} px on CPUs with native bf16.\n")
    return Section("training_steps", info, text)
