"""Training-step throughput on the CPU: float32 vs bf16 autocast, by input size.

    python -m benchmarks --only training_steps [--quick]

The default backbone (depthwise-separable) and ResNet-18 (dense convolutions) with a fresh 2-class
head, every layer trainable, AdamW, batch 32, channels_last, random images at 64, 128 and 224 px. Each step goes through the course's own
``train_one_epoch`` with a forced ``DeviceSettings`` (``amp_dtype`` None or bfloat16), so it times
what ``fit`` runs. The two precisions alternate round by round, so a change in the machine's load
hits both. This measures the advice behind ``runtime.bf16_pays_off``: ask for bf16
(``device_settings(bf16=True)``) for the models where it is faster. One depthwise and one dense
convolution timed alone show why the two kinds of network differ.
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
#: A depthwise-separable network (the course default) and a dense one. Speed does not depend on the
#: weights, so ResNet-18 runs with random ones (its ImageNet weights need a download).
BACKBONES = (models.DEFAULT_BACKBONE, "resnet18")


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


def build(backbone: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build_backbone(backbone, num_classes=2, pretrained=backbone == models.DEFAULT_BACKBONE)


def conv_backward_ms(groups: int, channels: int, side: int, *, batch: int = 32, repeats: int = 3) -> dict[str, float]:
    """Forward + backward of one 3x3 convolution (``groups=channels``: depthwise), fp32 vs bf16, in ms."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        def once(dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                y = conv(x)
            y.float().sum().backward()
        once()
        start = time.perf_counter()
        for _ in range(repeats):
            once()
        out[f"{name}_ms"] = round(1000 * (time.perf_counter() - start) / repeats, 1)
    out["bf16_speedup"] = round(out["fp32_ms"] / out["bf16_ms"], 2)
    return out


def run(sizes: Sequence[int] = SIZES, batch: int = 32, steps: int = 4, rounds: int = 2,
        backbones: Sequence[str] = BACKBONES, side: int = 56) -> Section:
    """fp32 vs bf16 training steps per backbone and size, ``rounds`` alternating rounds each, and
    the course's advice for each backbone (bf16 where :func:`runtime.bf16_pays_off` on a CPU with
    native bf16: :func:`runtime.cpu_supports_bf16`)."""
    base = runtime.device_settings("cpu", bf16=False)
    modes = {"fp32": base, "bf16": dataclasses.replace(base, amp_dtype=torch.bfloat16)}
    rows: list[dict[str, Any]] = []
    for backbone in backbones:
        for size in sizes:
            rates: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(rounds):
                for mode, settings in modes.items():
                    model = settings.prepare(build(backbone))
                    rates[mode].append(step_rate(model, settings, size, batch, steps))
            best = {m: max(v) for m, v in rates.items()}
            advice = runtime.bf16_pays_off(build(backbone)) and runtime.cpu_supports_bf16()
            rows.append({"backbone": backbone, "size": size, "fp32_img_per_s": round(best["fp32"], 1),
                         "bf16_img_per_s": round(best["bf16"], 1),
                         "bf16_speedup": round(ratio(1 / best["fp32"], 1 / best["bf16"]), 2),
                         "course_advice": "bf16" if advice else "fp32"})
            print(f"[training_steps] {backbone} {size}px: fp32 {best['fp32']:.1f} img/s, bf16 {best['bf16']:.1f} img/s",
                  flush=True)
    convs = [{"layer": f"depthwise 3x3, 96 channels, {side} px", **conv_backward_ms(96, 96, side, batch=batch)},
             {"layer": f"dense 3x3, 64 channels, {side} px", **conv_backward_ms(1, 64, side, batch=batch)}]
    faster = {b: [r["size"] for r in rows if r["backbone"] == b and r["bf16_speedup"] >= 1.1] for b in backbones}
    info: dict[str, Any] = {
        "machine": machine(), "batch": batch, "steps": steps, "rounds": rounds, "rows": rows, "convolutions": convs,
        "cpu_supports_bf16": runtime.cpu_supports_bf16(),
        "bf16_faster_from": {b: min(v) if v else None for b, v in faster.items()},
    }
    text = (f"# Training steps on the CPU: float32 vs bf16 autocast\n\nEvery layer trainable, AdamW, batch {batch}, "
            f"channels_last, {steps} timed steps, best of {rounds} alternating rounds; "
            f"{info['machine']['torch_threads']} threads, load average {info['machine']['load_average']}. "
            f"Native bf16 on this CPU: {info['cpu_supports_bf16']}. `course_advice`: what the course advises "
            f"asking for (`runtime.device_settings(bf16=True)` where `runtime.bf16_pays_off` and the CPU has native "
            f"bf16; the default is float32).\n\n{md_table(rows)}\n"
            f"bf16 at least 1.1x faster from (px): {info['bf16_faster_from']}.\n\nWhy the depthwise-separable network does not gain: one convolution, forward + "
            f"backward, batch {batch}:\n\n{md_table(convs)}\n")
    return Section("training_steps", info, text)
