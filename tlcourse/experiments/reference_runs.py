"""What every reference run shares: an append-only progress file, a runner that skips finished
work, and the ``meta`` block (command, hardware, versions, date) its committed result carries.

A reference run answers a question a laptop lesson cannot: it runs in the background for an hour
or more, so it must survive an interruption. Each finished unit of work (one seed of one
strategy, say) becomes one JSON line in a progress file (:func:`append_row`); a restarted run
reads that file and redoes only what is missing (:class:`Runner`). Per-image test results are kept
as hex bit strings (:func:`bits`), so two strategies can be compared image by image afterwards.
Every reference run's command line starts from :func:`reference_arguments`, finds its progress
file and runner with :func:`open_runner` and opens its ``meta`` with :func:`run_meta`.

Used by :mod:`~tlcourse.experiments.matrix_reference` (notebook 04), :mod:`~tlcourse.experiments.bf16_parity`
and the other reference runs under ``scripts/``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tlcourse._io import atomic_write_text
from tlcourse.paths import build_dir
from tlcourse.runtime import select_device

__all__ = ["PACKAGES", "RESULTS", "Runner", "append_row", "bits", "command_line", "csv_text", "deadline_at",
           "hardware", "log", "open_runner", "progress_path", "read_rows", "reference_arguments", "run_meta", "timed",
           "unbits", "write_result"]

#: The packages whose versions a result file records.
PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "scipy", "statsmodels")
#: Where the committed results of the reference runs live.
RESULTS = Path(__file__).parent / "results"


def bits(correct: torch.Tensor | Sequence[bool]) -> str:
    """Per-image correctness packed into a hex string (4 test images per character, first image first)."""
    flags = correct.tolist() if hasattr(correct, "tolist") else list(correct)
    if not flags:
        return ""
    value = int("".join("1" if bool(c) else "0" for c in flags), 2)
    return f"{value:0{(len(flags) + 3) // 4}x}"


def unbits(text: str, n: int) -> list[bool]:
    """The inverse of :func:`bits`: ``n`` per-image booleans."""
    if n == 0:
        return []
    binary = f"{int(text, 16):0{n}b}"
    if len(binary) != n:
        raise ValueError(f"{text!r} does not hold {n} per-image results")
    return [c == "1" for c in binary]


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one JSON line to ``path`` and flush it to disk before returning.

    One ``write`` of a whole line with ``O_APPEND``: an interrupted run leaves at most one torn last
    line, which :func:`read_rows` skips, so a restart redoes only that run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(dict(row), default=float) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows :func:`append_row` wrote (none if the file does not exist); a torn last line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def csv_text(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """``rows`` as CSV text: a header of ``fields``, then one line a row (keys not in ``fields`` left out)."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def write_result(path: Path, doc: Mapping[str, Any], table: str) -> Path:
    """A reference run's result: ``doc`` as JSON at ``path`` and ``table`` (CSV text) beside it as ``.csv``,
    each replaced atomically, so a reader never sees half a file; returns the CSV's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1, default=float))
    return atomic_write_text(path.with_suffix(".csv"), table)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds it took)``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def log(msg: str) -> None:
    """One progress line with the UTC time, flushed (a background run's log is read while it runs)."""
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


def deadline_at(hhmm: str | None) -> float | None:
    """The epoch time of the next ``HH:MM`` UTC (today, or tomorrow if it has passed); ``None`` stays ``None``."""
    if not hhmm:
        return None
    try:
        hh, mm = (int(v) for v in hhmm.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    except ValueError as e:
        raise ValueError(f"--deadline takes a UTC time as HH:MM, for example 23:30 (got {hhmm!r})") from e
    return (at if at > now else at + dt.timedelta(days=1)).timestamp()


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run, with the mirror as a placeholder instead of this machine's path."""
    mirror = "TLCOURSE_MIRROR=<mirror> " if os.environ.get("TLCOURSE_MIRROR") else ""
    return mirror + "python " + shlex.join([script, *argv])


def reference_arguments(parser: argparse.ArgumentParser, name: str, result: str, *,
                        smoke: str = "the same code path at a tiny scale (seconds)",
                        threads: str | None = "torch CPU threads (1: best on a shared 2-core CPU)",
                        device: str | None = None, deadline: bool = True) -> argparse.ArgumentParser:
    """Add the options every reference run shares to ``parser`` and return it: ``--out`` (default
    ``RESULTS / result``), ``--progress`` (default :func:`progress_path`'s, under ``build/<name>/``) and
    ``--smoke`` (help ``smoke``); ``--threads`` (help ``threads``; ``None``: no such option), ``--device``
    (auto/cpu/cuda/mps, help ``device``; ``None``: no such option) and ``--deadline`` unless ``deadline=False``."""
    parser.add_argument("--out", type=Path, default=RESULTS / result)
    parser.add_argument("--progress", type=Path, default=None,
                        help=f"append-only progress file (default: build/{name}/<out stem>.jsonl)")
    parser.add_argument("--smoke", action="store_true", help=smoke)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=1, help=threads)
    if device is not None:
        parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help=device)
    if deadline:
        parser.add_argument("--deadline", default=None,
                            help="UTC time HH:MM; runs whose measured duration would end after it are skipped and listed")
    return parser


def progress_path(args: argparse.Namespace, name: str) -> Path:
    """``--progress``, or by default ``build/<name>/<stem of --out>.jsonl`` (one progress file per result file)."""
    return args.progress or build_dir() / name / f"{args.out.stem}.jsonl"


def open_runner(args: argparse.Namespace, name: str,
                describe: Callable[[dict[str, Any]], str] | None = None) -> Runner:
    """Start a reference run from its parsed :func:`reference_arguments`: torch's CPU threads set to
    ``--threads``, and the :class:`Runner` of its progress file (:func:`progress_path`) with ``--deadline``."""
    torch.set_num_threads(args.threads)
    return Runner(progress_path(args, name), deadline_at(args.deadline), describe=describe)


def run_meta(script: str, argv: Sequence[str], threads: int, device: str | torch.device, runner: Runner,
             seconds: float) -> dict[str, Any]:
    """The ``meta`` fields every reference run's result carries, in this order: the command that reproduces
    it, when it was written, the hardware, this session's wall-clock seconds and all runs' seconds."""
    return dict(command=command_line(script, argv), written=f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                hardware=hardware(threads, device), wall_seconds_this_session=round(seconds),
                run_seconds_total=round(sum(r["seconds"] for r in runner.rows)))


def hardware(threads: int, device: str | torch.device = "cpu") -> dict[str, Any]:
    """CPU, cores, threads, GPU, Python, platform and package versions, for a result's ``meta``."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = platform.processor()
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    where = select_device(device)
    gpu = torch.cuda.get_device_name() if where.type == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "gpu": gpu, "device": str(where),
            "python": platform.python_version(), "platform": platform.platform(), "packages": versions,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "note": "CPU shared with other jobs during the run; seconds are wall-clock, not comparable"}


class Runner:
    """Runs keyed jobs once: finished keys come from the progress file, new rows are appended to it.

    ``run(key, kind, job, fields)`` returns the stored row when ``key`` is done, else calls ``job()``
    (a dict of results), appends ``fields + results + key + seconds`` and returns it. With a
    ``deadline`` (epoch seconds), a job whose kind has taken longer than the time left is skipped and
    listed in ``skipped``, so a run can be told to stop in time and resumed later.
    """

    def __init__(self, progress: str | os.PathLike[str], deadline: float | None = None,
                 describe: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.progress, self.deadline, self.describe = Path(progress), deadline, describe
        self.rows = read_rows(self.progress)
        self.done = {tuple(r["key"]): r for r in self.rows}
        self.durations: dict[str, list[float]] = {}
        self.skipped: list[list[Any]] = []
        for r in self.rows:
            self.durations.setdefault(r["kind_key"], []).append(r["seconds"])

    def run(self, key: list[Any], kind_key: str, job: Callable[[], dict[str, Any]],
            fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        if tuple(key) in self.done:
            return self.done[tuple(key)]
        past = self.durations.get(kind_key)
        if self.deadline is not None and past and time.time() + max(past) > self.deadline:
            self.skipped.append(list(key))
            log(f"SKIP {key}: {max(past):.0f} s would end after the deadline")
            return None
        out, seconds = timed(job)
        row = dict(fields or {}, **out, key=list(key), kind_key=kind_key, seconds=round(seconds, 2))
        append_row(self.progress, row)
        self.rows.append(row)
        self.done[tuple(key)] = row
        self.durations.setdefault(kind_key, []).append(seconds)
        log(f"{' '.join(map(str, key))}: " + (self.describe(row) if self.describe else "done") + f" ({seconds:.0f} s)")
        return row

    def eta(self, remaining_kinds: Sequence[str]) -> str:
        """When the remaining jobs (their kinds, in order) should end, from the measured durations."""
        if not remaining_kinds:
            return "now"
        left = 0.0
        for kind in remaining_kinds:
            past = self.durations.get(kind)
            if not past:
                return "unknown (not every kind of run measured yet)"
            left += sum(past) / len(past)
        end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=left)
        return f"{end:%H:%M} UTC ({left / 60:.0f} min left)"
