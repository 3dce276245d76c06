"""Shared helpers of the benchmark suite: machine info, ratios, tables, result files, peak memory."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlcourse.paths import build_dir


def out_dir() -> Path:
    """``build/benchmarks/`` (follows ``TLCOURSE_BUILD_DIR``), created on demand."""
    path = build_dir() / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    """What the numbers depend on: versions, threads, cores and the load right now."""
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def ratio(slow_seconds: float, fast_seconds: float) -> float:
    """How many times faster ``fast`` is than ``slow`` (seconds for the same work)."""
    if slow_seconds <= 0 or fast_seconds <= 0:
        raise ValueError(f"times must be positive, got {slow_seconds} and {fast_seconds}")
    return slow_seconds / fast_seconds


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of ``rows`` (dicts); numbers right-aligned, floats to 3 digits."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                   for r in rows if r.get(c) is not None) for c in columns]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Section:
    """One benchmark's result: a name, its JSON-able data and its markdown report."""

    name: str
    data: dict[str, Any]
    markdown: str


def write_section(section: Section, folder: Path | None = None) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` into ``folder`` (default ``build/benchmarks``)."""
    folder = folder or out_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{section.name}.json").write_text(json.dumps(section.data, indent=2, default=str))
    (folder / f"{section.name}.md").write_text(section.markdown)
    return folder / f"{section.name}.md"


# --------------------------------------------------------------------------------------------
# Peak memory of a subprocess
# --------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """A finished subprocess: exit code, wall time and its peak memory, measured two ways."""

    returncode: int
    seconds: float
    maxrss_mb: float  # wait4's ru_maxrss: the largest single process among it and its waited-for descendants
    tree_peak_mb: float  # psutil, polled: the largest sum of RSS over the process tree at one moment
    output: str
    timed_out: bool = False


def _tree_rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


# Linux keeps a process's peak RSS across fork and exec: a child forked from this (large, torch
# holding) process would report at least our own RSS. So a small launcher process runs the
# command and reports the command's wait4 rusage; the command is forked from the launcher.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _kill_tree(proc: Any) -> None:
    """Kill a process and its descendants (a hung notebook kernel included)."""
    import psutil

    for p in [proc, *proc.children(recursive=True)]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 poll_s: float = 0.2, timeout_s: float | None = None) -> Measured:
    """Run ``cmd``, returning its wall time and peak resident memory.

    ``maxrss_mb`` comes from ``os.wait4``'s ``ru_maxrss`` (KiB on Linux, bytes on macOS): the peak
    of the largest single process among the command and the descendants it waited for (for
    ``python -m tlcourse course``, the Jupyter kernel). ``tree_peak_mb`` polls the tree with psutil
    every ``poll_s`` and keeps the largest sum, so it counts concurrent processes (DataLoader
    workers) together but can miss a peak shorter than ``poll_s``. Past ``timeout_s`` the whole
    tree is killed and ``timed_out`` is set.
    """
    import psutil

    fd, name = tempfile.mkstemp(prefix="maxrss-")
    os.close(fd)
    report = Path(name)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(report), *cmd],
                            env=dict(env) if env is not None else None, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    watched, peak, timed_out = psutil.Process(proc.pid), 0, False
    while True:
        finished, status = os.waitpid(proc.pid, os.WNOHANG)
        if finished:
            break
        try:
            peak = max(peak, _tree_rss(watched))
        except psutil.NoSuchProcess:
            pass
        if not timed_out and timeout_s is not None and time.perf_counter() - start > timeout_s:
            timed_out = True
            _kill_tree(watched)
        time.sleep(poll_s)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # wait4 reaped it; tell Popen
    reader.join(timeout=5)
    maxrss = int(report.read_text() or 0)
    report.unlink()
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return Measured(proc.returncode, seconds, maxrss / scale, peak / 2**20, "".join(chunks), timed_out)
