"""Wall time and peak resident memory of each notebook, and of the whole course, for one profile.

Each notebook runs in its own ``python -m tlcourse course --notebooks NN --profile P --no-html``
subprocess, in lesson order, with ``TLCOURSE_BUILD_DIR`` pointing at a fresh folder
(``build/benchmarks/course-<profile>/``, emptied first): executed notebooks, metrics and the
feature cache go there, so ``notebooks/*.ipynb`` and the project's own ``build/`` are never
touched, and caches start cold as in a first ``make course``. Later notebooks may reuse what
earlier ones cached, as they do in a full run.

Peak memory is measured two ways (:func:`benchmarks.common.run_measured`): ``os.wait4``'s
``ru_maxrss`` (the largest single process: the Jupyter kernel) and the psutil-polled peak of the
summed RSS of the whole process tree (papermill + kernel + any DataLoader workers).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from benchmarks.common import Section, machine, md_table, out_dir, run_measured
from tlcourse.courseware.course import notebooks
from tlcourse.paths import project_root

#: Goals: the whole ``ci`` course in 10 minutes; no notebook above 4 GB in the default profile.
CI_COURSE_SECONDS = 600
MAX_RSS_MB = 4096


#: A notebook still running after this is killed and reported (a cell can hang, e.g. a widget
#: cell waiting on its kernel): 5 minutes per ci notebook, 30 per default-profile notebook.
TIMEOUT_S = {"ci": 300, "default": 1800, "gpu": 1800}


def run(profile: str = "ci", selected: list[str] | None = None) -> Section:
    start_machine = machine()
    build = out_dir() / f"course-{profile}"
    shutil.rmtree(build, ignore_errors=True)
    env = {**os.environ, "TLCOURSE_BUILD_DIR": str(build)}
    rows: list[dict[str, Any]] = []
    for path in notebooks():
        number = path.stem[:2]
        if selected and not any(s in path.stem for s in selected):
            continue
        cmd = [sys.executable, "-m", "tlcourse", "course", "--notebooks", number, "--profile", profile, "--no-html"]
        m = run_measured(cmd, env=env, cwd=project_root(), timeout_s=TIMEOUT_S[profile])
        rows.append({"notebook": path.stem, "seconds": round(m.seconds, 1), "ok": m.returncode == 0,
                     "timed_out": m.timed_out,
                     "peak_rss_mb_wait4": round(m.maxrss_mb), "peak_tree_rss_mb_psutil": round(m.tree_peak_mb)})
        print(f"[notebooks] {path.stem} ({profile}): {m.seconds:.1f} s, rc {m.returncode}, "
              f"peak {m.maxrss_mb:.0f} MB (tree {m.tree_peak_mb:.0f} MB)", flush=True)
        if m.returncode != 0:
            rows[-1]["error_tail"] = m.output[-2000:]
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_mb_wait4"] for r in rows), default=0)
    goals = {"total_seconds": round(total, 1), "peak_rss_mb": peak, "all_ok": all(r["ok"] for r in rows)}
    if profile == "ci":
        goals["ci_course_within_10_min"] = total <= CI_COURSE_SECONDS
    goals["every_notebook_below_4_GB"] = peak <= MAX_RSS_MB
    result = {"profile": profile, "rows": rows, "goals": goals, "build_dir": str(build),
              "machine_start": start_machine, "machine_end": machine()}
    m0 = start_machine
    table_rows = [{k: v for k, v in r.items() if k != "error_tail"} for r in rows]
    md = f"""# Notebooks: wall time and peak memory, `{profile}` profile

One `python -m tlcourse course --notebooks NN --profile {profile} --no-html` subprocess per notebook, cold
build folder; torch {m0['torch']}, {m0['cpu_count']} CPUs, load average {m0['load_average']} at the start and
{result['machine_end']['load_average']} at the end. Peak RSS: `os.wait4` ru_maxrss (largest single
process, the kernel) and the psutil-polled peak of the whole process tree's summed RSS (every 0.2 s).

{md_table(table_rows)}
Whole course: **{total:.0f} s** ({total / 60:.1f} min); largest peak RSS {peak} MB. Goals: {goals}.
"""
    return Section(f"notebooks-{profile}", result, md)
