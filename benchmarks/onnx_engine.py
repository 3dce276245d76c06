"""Would ONNX Runtime beat eager PyTorch for the frozen backbone's forward pass on this CPU?

    python -m benchmarks.onnx_engine [--size 224] [--batch 16] [--rounds 3]

ONNX Runtime is the course's CPU engine (:mod:`tlcourse.features.engine`); the session here is the
engine's :func:`~tlcourse.features.engine.cpu_session` with as many threads as torch uses, so the
numbers are those of the engine's session options. ``TLCOURSE_EXTRA_PATH`` names a folder appended to
``sys.path`` (after the course's packages, so its own copy of numpy never shadows the course's), for
an environment without onnxruntime, e.g. ``pip install --target /tmp/ort onnxruntime``. Without
onnxruntime it reports that and exits cleanly.

The default backbone without its head (the pooled features) is exported once with
``torch.onnx.export`` and run on the same random batch as the course's own forward pass
(channels_last, ``inference_mode``), alternating the two engines round by round. Writes
``build/benchmarks/onnx_engine.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.common import Section, machine, md_table, write_section
from benchmarks.extraction import headless
from tlcourse import models
from tlcourse.features import engine


def _import_onnxruntime() -> Any | None:
    extra = os.environ.get("TLCOURSE_EXTRA_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def _images_per_s(fn: Callable[[], Any], batch: int, repeats: int = 4) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch * repeats / (time.perf_counter() - start)


def run(size: int = 224, batch: int = 16, rounds: int = 3) -> Section:
    ort = _import_onnxruntime()
    info: dict[str, Any] = {"machine": machine(), "size": size, "batch": batch}
    if ort is None:
        info["skipped"] = "onnxruntime is not installed (see the module docstring)"
        return Section("onnx_engine", info, f"# ONNX Runtime vs eager PyTorch\n\nSkipped: {info['skipped']}.\n")

    torch.manual_seed(0)
    body = headless(models.build_backbone(models.DEFAULT_BACKBONE)).eval()
    x = torch.randn(batch, 3, size, size)
    onnx_file = io.BytesIO()
    start = time.perf_counter()
    torch.onnx.export(body, (x,), onnx_file, dynamo=False, input_names=["x"], output_names=["features"],
                      dynamic_axes={"x": {0: "n"}, "features": {0: "n"}}, opset_version=17)
    export_s = time.perf_counter() - start
    # The engine's own session options, so this times what `tlcourse.features.engine` runs.
    session = engine.cpu_session(onnx_file.getvalue(), threads=torch.get_num_threads())

    body = body.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_np = x.numpy()

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return body(x_cl)

    def onnx() -> Any:
        return session.run(None, {"x": x_np})[0]

    difference = float(abs(torch.from_numpy(onnx()) - eager()).max())
    rows = []
    for r in range(rounds):
        rows.append({"round": r + 1, "eager_img_per_s": round(_images_per_s(eager, batch), 1),
                     "onnxruntime_img_per_s": round(_images_per_s(onnx, batch), 1)})
    eager_best = max(row["eager_img_per_s"] for row in rows)
    onnx_best = max(row["onnxruntime_img_per_s"] for row in rows)
    info.update(rows=rows, export_seconds=round(export_s, 2), max_abs_difference=difference,
                onnxruntime=ort.__version__, speedup_best_rounds=round(onnx_best / eager_best, 2))
    text = (f"# ONNX Runtime vs eager PyTorch, forward pass only\n\n"
            f"`{models.DEFAULT_BACKBONE}` without its head, {size} px, batch {batch}, "
            f"{torch.get_num_threads()} threads, onnxruntime {ort.__version__}, torch {torch.__version__}; "
            f"load average {info['machine']['load_average']}. Export: {export_s:.1f} s. Largest feature "
            f"difference: {difference:.1e}.\n\n{md_table(rows)}\n\n"
            f"Best rounds: **{info['speedup_best_rounds']}x** for ONNX Runtime.\n")
    return Section("onnx_engine", info, text)


def main(argv: Sequence[str] | None = None) -> Section:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    section = run(args.size, args.batch, args.rounds)
    path = write_section(section)
    print(section.markdown, f"\n-> {path}", sep="")
    return section


if __name__ == "__main__":
    main()
