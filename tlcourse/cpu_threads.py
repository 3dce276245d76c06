"""CPU threads: how many torch uses, where decoding runs, and how a long loop picks its count.

:func:`apply_thread_policy` (a notebook's setup), :func:`one_thread` (tiny tensor ops),
:func:`batches_on_one_thread` and :func:`decoded_batches` (decoding beside an inference engine),
:func:`engine_threads` (ONNX Runtime's threads next to decoding workers) and
:class:`ThreadChooser` (a long eager extraction times its first batches). This module is their
home; :mod:`tlcourse.runtime` re-exports the two a notebook's setup uses (:func:`apply_thread_policy`,
:func:`one_thread`). The settings that choose between them are
:class:`tlcourse.features.EngineSettings`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

__all__ = ["ThreadChooser", "apply_thread_policy", "batches_on_one_thread", "decoded_batches", "engine_threads",
           "one_thread"]


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's CPU thread count for a notebook or script, and return it.

    ``threads`` wins when given. Otherwise all cores, unless the machine is already busy (the
    1-minute load average is at least the core count): then one thread, because threads of one
    process that wait for each other on a shared CPU are far slower than one thread alone.
    """
    if threads is None:
        cores = os.cpu_count() or 1
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= cores
        threads = 1 if busy else cores
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny tensor ops (a linear head, per-image transforms) on one thread, then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def batches_on_one_thread(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches, each decoded and transformed on one CPU thread.

    Per-image transforms are tiny tensor ops: split over threads while another process keeps a
    core busy, the threads wait for each other (measured: 5.6 ms per Alien vs Predator photo on
    one thread, 98 ms on two). The forward pass that consumes the batch keeps its own thread count.
    """
    batches = iter(loader)
    while True:
        with one_thread():
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


_END = object()


def _ahead(batches: Iterator[Any], pool: ThreadPoolExecutor) -> Generator[Any, None, None]:
    pending = pool.submit(next, batches, _END)
    while (batch := pending.result()) is not _END:
        pending = pool.submit(next, batches, _END)  # the next batch decodes while the caller computes
        yield batch


@contextlib.contextmanager
def decoded_batches(loader: Iterable[Any], *, ahead: bool) -> Iterator[Iterator[Any]]:
    """The loader's batches for an inference engine, decoded on one CPU thread.

    ``ahead=False``: :func:`batches_on_one_thread`. ``ahead=True``: a background thread decodes the
    next batch while the caller computes with an engine that has its own threads (ONNX Runtime);
    torch runs on one thread inside the block, so the decoding thread's tensor ops stay on one
    core, and an eager forward pass in the block must set its thread count itself
    (:class:`ThreadChooser` does). Decoding errors reach the caller at the batch they belong to.
    """
    if not ahead:
        yield batches_on_one_thread(loader)
        return
    with one_thread(), ThreadPoolExecutor(1, thread_name_prefix="tlcourse-decode") as pool:
        batches = _ahead(iter(loader), pool)
        try:
            yield batches
        finally:
            batches.close()


def engine_threads(workers: int, threads: int | None = None) -> int:
    """Intra-op threads of a CPU inference engine: ``threads`` when given, else one per core
    left after the decoding ``workers`` (at least one), so decoding and compute never queue
    for the same core."""
    if threads is not None:
        return max(1, int(threads))
    return max(1, (os.cpu_count() or 1) - max(0, int(workers)))


class ThreadChooser:
    """Chooses the CPU thread count of a long loop by timing its first batches.

    The first batch warms up; the next runs with every thread, the one after with one; the rest
    use the faster. A fixed ``threads`` skips the trials. :meth:`restore` puts back the
    process's previous setting and returns the choice; :meth:`best` and :attr:`rates`
    (samples/s by thread count timed) keep it for the caller's report.
    """

    def __init__(self, threads: int | None, cpu: bool = True) -> None:
        self.previous = torch.get_num_threads()
        self.fixed = threads
        self.trials = [self.previous, 1] if threads is None and cpu and self.previous > 1 else []
        self.rates: dict[int, float] = {}
        self._batches = 0
        self._now: tuple[int, float] | None = None

    def best(self) -> int:
        """The fixed count, else the fastest timed one (the current setting before any timing)."""
        if self.fixed is not None:
            return self.fixed
        return max(self.rates, key=self.rates.__getitem__) if self.rates else self.previous

    def before_batch(self) -> None:
        trial = self._batches > 0 and bool(self.trials)
        n = self.trials[0] if trial else self.best()
        torch.set_num_threads(n)
        self._now = (n, time.perf_counter()) if trial else None
        self._batches += 1

    def after_batch(self, samples: int) -> None:
        if self._now is not None:
            n, start = self._now
            self.rates[n] = samples / max(time.perf_counter() - start, 1e-9)
            self.trials.pop(0)

    def restore(self) -> int:
        """Put back the thread count the process had before, and return the count chosen."""
        torch.set_num_threads(self.previous)
        return self.best()
