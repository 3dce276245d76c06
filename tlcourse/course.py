"""Run the course: execute every notebook with papermill, then render it to HTML.

``python -m tlcourse course`` (and ``make course``) calls :func:`run_course`. The executed
notebooks land in ``build/notebooks/``, their HTML in ``build/html/``, and the wall time and peak
memory of each run in ``build/metrics/course-<profile>.json``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tlcourse.paths import build_dir, project_root


def notebooks(folder: Path | None = None) -> list[Path]:
    """The course notebooks, in lesson order (``NN_topic.ipynb``)."""
    folder = folder or project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def execute_notebook(
    path: Path,
    output: Path,
    *,
    profile: str = "default",
    kernel_name: str = "python3",
    progress: bool = True,
    cell_timeout: float | None = None,
) -> float:
    """Execute one notebook with papermill into ``output``; returns the wall time in seconds.

    The default profile injects nothing, so the executed notebook is exactly the lesson as a
    learner sees it; other profiles are injected as ``PROFILE = "<name>"`` after the parameters cell.
    ``cell_timeout`` (seconds) turns a cell that never finishes into an error naming that cell,
    instead of a run that hangs (CI uses it; ``None`` waits forever).
    """
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    env_profile = os.environ.pop("TLCOURSE_PROFILE", None)  # the notebook's own PROFILE decides
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path),
            str(output),
            parameters={} if profile == "default" else {"PROFILE": profile},
            kernel_name=kernel_name,
            cwd=str(path.parent),
            progress_bar=progress,
            execution_timeout=None if cell_timeout is None else int(cell_timeout),
        )
    finally:
        if env_profile is not None:
            os.environ["TLCOURSE_PROFILE"] = env_profile
    return time.perf_counter() - start


def render_html(notebook: Path, output: Path) -> Path:
    """Render an executed notebook to a standalone HTML page (images embedded)."""
    from nbconvert import HTMLExporter
    import nbformat

    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nbformat.read(notebook, as_version=4))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    return output


def _children_peak_rss_mb() -> float:
    # ru_maxrss of finished children is in KiB on Linux (bytes on macOS)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_course(
    profile: str = "default",
    selected: Sequence[str] | None = None,
    *,
    html: bool = True,
    update_notebooks: bool = False,
) -> list[dict[str, Any]]:
    """Execute the selected notebooks (all by default) and return one summary row per notebook.

    ``update_notebooks=True`` copies each executed notebook back over the lesson, which is how the
    committed outputs are refreshed (only meaningful with the default profile).
    """
    out = build_dir()
    rows = []
    paths = notebooks()
    if selected:
        paths = [p for p in paths if any(s in p.stem for s in selected)]
        if not paths:
            raise ValueError(f"No notebook matches {list(selected)}; the notebooks are {[p.stem for p in notebooks()]}")
    for path in paths:
        executed = out / "notebooks" / (path.name if profile == "default" else f"{path.stem}.{profile}.ipynb")
        print(f"[tlcourse] executing {path.name} ({profile} profile) -> {executed}", flush=True)
        seconds = execute_notebook(path, executed, profile=profile)
        row: dict[str, Any] = {"notebook": path.stem, "profile": profile, "seconds": round(seconds, 1),
                               "peak_rss_mb_so_far": round(_children_peak_rss_mb(), 1)}
        if html:
            row["html"] = str(render_html(executed, out / "html" / f"{executed.stem}.html"))
        if update_notebooks:
            shutil.copyfile(executed, path)
        rows.append(row)
        print(f"[tlcourse] {path.name}: {seconds:.1f} s", flush=True)
    summary = out / "metrics" / f"course-{profile}.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(rows, indent=2))
    return rows
