"""Peak memory, wall time and budget of ``python -m tlcourse fit`` on CIFAR cat/dog folders (issue 28).

Each size runs ``/usr/bin/time -v python -m tlcourse fit FOLDER --out OUT`` in a fresh process, one at
a time, with a fresh output folder (no cached pass); the folders come from
:func:`benchmarks.fit_folders.cifar_fit_folder`. A row gives the images, the wall time (process start
included), the peak resident memory, the time ``fit`` announced before its pass, the budget, and the
chosen candidate, so memory that grows with the folder, and a run that overshoots both its budget and
its announced time by more than 10%, are visible side by side.

    python -m benchmarks.fit_memory 1000 4000 10000 [--budget 60] [--work /tmp/fit-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.fit_folders import cifar_fit_folder

__all__ = ["announced_seconds", "measure", "parse_time_v", "table"]

_ANNOUNCED = re.compile(r"this run: about (\d+) s")


def parse_time_v(text: str) -> dict[str, float]:
    """Wall seconds and peak RSS (GB) from GNU time's ``-v`` report."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if wall is None or rss is None:
        raise ValueError("no GNU time -v report in the output: is /usr/bin/time GNU time?")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return {"wall_s": round(seconds, 1), "peak_rss_gb": round(int(rss.group(1)) * 1024 / 1e9, 2)}


def announced_seconds(decisions: Sequence[str]) -> float | None:
    """The run length ``fit`` announced before its first backbone pass, or None (a cached pass)."""
    for line in decisions:
        found = _ANNOUNCED.search(line)
        if found:
            return float(found.group(1))
    return None


def measure(n_images: int, work: Path, *, budget: float = 60.0, nice: int = 10) -> dict[str, Any]:
    """One fresh ``fit`` run on an ``n_images`` CIFAR cat/dog folder under ``work``; returns its row."""
    folder = cifar_fit_folder(n_images, work / f"cifar-{n_images}")
    out = work / f"out-{n_images}"
    shutil.rmtree(out, ignore_errors=True)
    command = ["nice", "-n", str(nice), "/usr/bin/time", "-v", sys.executable, "-m", "tlcourse", "fit", str(folder),
               "--out", str(out), "--budget", str(budget)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fit failed on {n_images} images:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"images": n_images, **parse_time_v(done.stderr), "announced_s": announced_seconds(report["decisions"]),
            "budget_s": budget, "fit_seconds": round(report["seconds"], 1), "chosen": report["chosen"],
            "skipped": [s["stage"] for s in report["skipped_stages"]], "command": " ".join(command)}


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| images | wall (s) | peak RSS (GB) | announced (s) | budget (s) | chosen |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['images']:,} | {r['wall_s']:.0f} | {r['peak_rss_gb']:.2f} | {r['announced_s'] or '-'} | "
              f"{r['budget_s']:g} | {r['chosen']} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fit_memory", description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", type=int, help="folder sizes in images, e.g. 1000 4000 10000")
    parser.add_argument("--budget", type=float, default=60.0, help="fit's --budget (default 60, fit's own default)")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fit-memory",
                        help="where the folders and outputs go")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        rows.append(measure(n, args.work, budget=args.budget))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
