"""The environment report that opens every notebook.

One function, so every notebook's first cell says the same things: versions, the device the
course will train on, which datasets and pretrained weights are here, and what to do about
anything missing.
"""

from __future__ import annotations

import platform
import sys
from typing import Any

import timm
import torch
import torchvision

from tlcourse import data, models
from tlcourse.paths import data_dir, mirror_dir
from tlcourse.runtime import select_device


def report() -> dict[str, Any]:
    """Versions, device, and what data and weights are present, as plain data."""
    chosen = select_device()
    if chosen.type == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif chosen.type == "mps":
        device = "mps (Apple GPU)"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "device": device,
        "data_dir": str(data_dir()),
        "mirror": str(mirror_dir()) if mirror_dir() else None,
        "datasets": data.status(),
        "weights": models.weights_status(),
    }


def report_text(info: dict[str, Any] | None = None) -> str:
    """:func:`report` as readable text, with a next step for anything missing."""
    info = info or report()
    lines = [
        f"Python {info['python']} on {info['platform']}",
        f"torch {info['torch']}, torchvision {info['torchvision']}, timm {info['timm']}",
        f"device: {info['device']}",
        f"data folder: {info['data_dir']}",
        f"mirror ($TLCOURSE_MIRROR): {info['mirror'] or 'not set'}",
        "datasets:",
    ]
    missing = []
    for row in info["datasets"]:
        where = row.get("found")
        lines.append(f"  {'ok ' if where else '-- '} {row['name']:<18} {where or 'not here yet (downloads on first use)'}")
        if not where:
            missing.append(row["name"])
    lines.append("pretrained weights:")
    for row in info["weights"]:
        lines.append(f"  {'ok ' if row['present'] else '-- '} {row['backbone']:<18} {row['note']}")
    if missing:
        lines.append(
            "Missing datasets download on first use when you are online. Offline, set TLCOURSE_MIRROR to a "
            "folder holding the course files, or run `python -m tlcourse stage` on a connected machine first."
        )
    return "\n".join(lines)
