"""Measure training-step time on the CPU: channels_last vs contiguous (NCHW) memory format.

    python -m benchmarks.channels_last --sizes 32 64 224 --batch 32 --steps 5 --rounds 3

Both variants live in the same process and are timed alternately (A B A B ...) after a warm-up,
so drift in the machine's load hits both alike. Prints the median seconds per training step
(forward + backward + SGD step) of each variant and their ratio, and the same for the fastest
round (the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from tlcourse.models import build_backbone


def steps(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, backbone {args.backbone}, "
          f"batch {args.batch}")
    print(f"{'size':>5} {'contiguous s/step':>18} {'channels_last s/step':>21} {'cl/contig':>10}")
    for size in args.sizes:
        torch.manual_seed(0)
        base = build_backbone(args.backbone, 10, pretrained=False).train()
        variants: dict[str, tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor, list[float]]] = {}
        for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            model = copy.deepcopy(base).to(memory_format=fmt)
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            x = torch.randn(args.batch, 3, size, size).contiguous(memory_format=fmt)
            y = torch.randint(0, 10, (args.batch,))
            steps(model, opt, x, y, 2)  # warm-up
            variants[name] = (model, opt, x, y, [])
        for _ in range(args.rounds):
            for model, opt, x, y, times in variants.values():
                times.append(steps(model, opt, x, y, args.steps))
        med = {name: statistics.median(v[4]) for name, v in variants.items()}
        low = {name: min(v[4]) for name, v in variants.items()}
        print(f"{size:>5} {med['contiguous']:>18.4f} {med['channels_last']:>21.4f} "
              f"{med['channels_last'] / med['contiguous']:>10.2f}   min: {low['contiguous']:.4f} vs "
              f"{low['channels_last']:.4f} ({low['channels_last'] / low['contiguous']:.2f})   rounds: "
              + "  ".join(f"{n}={[round(t, 3) for t in v[4]]}" for n, v in variants.items()), flush=True)


if __name__ == "__main__":
    main()
