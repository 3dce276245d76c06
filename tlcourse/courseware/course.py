"""Set up a lesson, and run the course: execute every notebook with papermill, render it to HTML.

A notebook's first code cell after its parameters calls :func:`setup`: profile, device, CPU
threads, seed and the environment report in one line. ``python -m tlcourse course`` (and
``make course``) calls :func:`run_course`. The executed
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
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from tlcourse.courseware.results import PROFILE_ENV
from tlcourse.paths import build_dir, project_root
from tlcourse.runtime import DeviceSettings, apply_thread_policy, device_settings, seed_everything


@dataclass
class Lesson:
    """What :func:`setup` chose for a notebook: its profile's knobs, device and threads.

    ``lesson["EPOCHS"]`` reads a knob; ``results`` collects the numbers the notebook records
    at its end.
    """

    profile: str
    cfg: dict[str, Any]
    settings: DeviceSettings
    threads: int
    seed: int
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.settings.device

    def folder(self, name: str) -> Path:
        """``build/<name>`` (or under ``$TLCOURSE_BUILD_DIR``), created: where the lesson writes its files."""
        path = build_dir() / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __getitem__(self, knob: str) -> Any:
        return self.cfg[knob]


def setup(profile: str, profiles: Mapping[str, Mapping[str, Any]], params: MutableMapping[str, Any] | None = None, *,
          device: str | None = None, threads: int | None = None, seed: int = 0, quiet: bool = False) -> Lesson:
    """Apply a notebook's profile, device, CPU-thread policy and seed; print where it runs.

    The parameters cell holds the values of the default profile, so a learner sees the values in
    effect; ``profiles`` holds only what the other profiles (``ci``, ``gpu``) change, and a third
    printed line lists those changes. Names injected by papermill (listed in ``PINNED``) keep their
    injected value under any profile. ``params`` (pass ``globals()``) is updated to the values in
    effect, and ``Lesson.cfg`` holds them too. ``$TLCOURSE_PROFILE`` overrides ``profile``.

    (Older notebooks put a ``"default"`` entry in ``profiles`` and ``None`` in the parameters cell
    for "take it from the profile"; that still works: a value that is not ``None`` wins.)
    """
    profile = os.environ.get(PROFILE_ENV, profile)
    if profile not in profiles and profile != "default":
        raise ValueError(f"Unknown profile {profile!r}; this notebook has profiles: "
                         f"{', '.join(dict.fromkeys(['default', *profiles]))}")
    params = {} if params is None else params
    knobs = [k for table in profiles.values() for k in table]
    cfg = {k: params[k] for k in dict.fromkeys(knobs) if params.get(k) is not None}
    pinned, old_style, changed = set(params.get("PINNED", ())), "default" in profiles, []
    for key, value in profiles.get(profile, {}).items():
        if key in pinned or (old_style and params.get(key) is not None):
            continue
        if not old_style and cfg.get(key) != value:
            changed.append(f"{key}={value!r}")
        cfg[key] = value
    if not old_style:
        params.update(cfg)
    settings = device_settings(device)
    wanted = threads if threads is not None else cfg.get("THREADS")
    used = apply_thread_policy(wanted or None) if settings.device.type == "cpu" else torch.get_num_threads()
    seed_everything(seed)
    if not quiet:  # at most three lines; `python -m tlcourse env` (environment.report_text) prints the full report
        print(f"profile {profile}, device {settings.device}, {used} CPU thread(s), seed {seed}")
        print(f"torch {torch.__version__.split('+')[0]}; the full environment report: python -m tlcourse env")
        if changed:
            print(f"profile {profile} changes the parameters cell: {', '.join(changed)}")
    return Lesson(profile=profile, cfg=cfg, settings=settings, threads=used, seed=seed)


def notebooks(folder: Path | None = None) -> list[Path]:
    """The course notebooks, in lesson order (``NN_topic.ipynb``)."""
    folder = folder or project_root() / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def injected_parameters(profile: str = "default", parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`execute_notebook` injects after the parameters cell: ``PROFILE`` unless it is the
    default, the ``parameters``, and ``PINNED`` naming them so that no profile overrides them."""
    return {**({} if profile == "default" else {"PROFILE": profile}), **(parameters or {}),
            **({"PINNED": sorted(parameters)} if parameters else {})}


def execute_notebook(
    path: Path,
    output: Path,
    *,
    profile: str = "default",
    kernel_name: str = "python3",
    progress: bool = True,
    cell_timeout: float | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> float:
    """Execute one notebook with papermill into ``output``; returns the wall time in seconds.

    The default profile injects nothing, so the executed notebook is exactly the lesson as a
    learner sees it; other profiles are injected as ``PROFILE = "<name>"`` after the parameters cell.
    ``cell_timeout`` (seconds) turns a cell that never finishes into an error naming that cell,
    instead of a run that hangs (CI uses it; ``None`` waits forever). ``parameters`` are
    injected too (for example ``{"BACKBONE": "resnet18"}``), and listed in ``PINNED`` so that no
    profile overrides them (:func:`setup`).
    """
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    env_profile = os.environ.pop("TLCOURSE_PROFILE", None)  # the notebook's own PROFILE decides
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path),
            str(output),
            parameters=injected_parameters(profile, parameters),
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
    import nbformat
    from nbconvert import HTMLExporter

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


def tlcourse_names(notebook: Path) -> set[str]:
    """The ``tlcourse`` names a notebook's code uses: each name imported from the package, and each
    attribute read from an imported ``tlcourse`` module (``data.course_dataset``), as dotted paths.

    A learner has to hold these in their head to read the lesson; the course keeps them few.
    """
    import ast
    import importlib
    import inspect
    import json

    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    tree = ast.parse(code)
    modules: dict[str, str] = {}  # alias -> module path
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tlcourse":
            parent = importlib.import_module(node.module or "tlcourse")
            for a in node.names:
                path = f"{node.module}.{a.name}"
                try:  # a submodule, unless the package's attribute of that name is something else (a function)
                    is_module = inspect.ismodule(importlib.import_module(path)) and inspect.ismodule(
                        getattr(parent, a.name, None))
                except ImportError:
                    is_module = False
                if is_module:
                    modules[a.asname or a.name] = path
                else:
                    names.add(path)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tlcourse" and a.asname:
                    modules[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            names.add(f"{modules[node.value.id]}.{node.attr}")
    return names
