"""How fast a ``DataLoader`` delivers a dataset, for choosing batch size, workers and pinning."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from torch.utils.data import DataLoader, Dataset

__all__ = ["loader_throughput"]


def loader_throughput(
    dataset: Dataset,
    batch_sizes: Iterable[int] = (16, 64),
    workers: Iterable[int] = (0, 1, 2),
    pin_memory: Iterable[bool] = (False,),
) -> list[dict[str, Any]]:
    """Images per second of one pass over ``dataset`` for each DataLoader setting (no model).

    One row per combination of batch size, ``num_workers`` and ``pin_memory``, in that order:
    ``{"batch_size", "num_workers", "pin_memory", "images", "seconds", "images_per_s"}``. Each
    pass builds a fresh loader, so worker start-up is counted, as it is in every epoch unless
    ``persistent_workers=True``. Notebook 01 and ``benchmarks/loaders.py`` use it.
    """
    rows = []
    for batch_size in batch_sizes:
        for num_workers in workers:
            for pin in pin_memory:
                loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
                start = time.perf_counter()
                n = sum(len(y) for _, y in loader)
                seconds = time.perf_counter() - start
                rows.append({"batch_size": batch_size, "num_workers": num_workers, "pin_memory": pin,
                             "images": n, "seconds": round(seconds, 3),
                             "images_per_s": round(n / seconds, 1) if seconds > 0 else float("inf")})
    return rows
