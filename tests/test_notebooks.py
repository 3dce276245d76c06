"""Every notebook in notebooks/ is a lesson that CI executes and checks.

New notebooks are picked up automatically. Each one must:
- be well-formed for learners and instructors (objectives, a ``parameters`` cell, slide metadata,
  a summary, then 3 to 5 exercises with collapsed ``<details>`` solutions and at least one
  ``tlcourse.exercises.check`` call) and carry the outputs of a real run, in order, with no errors;
- run end to end with its ``ci`` profile under papermill;
- record its key results with ``tlcourse.results.record`` and meet the thresholds it declares in
  its notebook metadata under ``tlcourse.checks``.

nbval (``pytest --nbval-lax notebooks``) additionally re-runs each notebook and compares the
cells marked ``# NBVAL_CHECK_OUTPUT`` with their committed outputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from tlcourse.course import execute_notebook, notebooks
from tlcourse.results import check_metrics, load_metrics, metrics_path
from tlcourse.slides import exercises_start

NOTEBOOKS = notebooks()
#: A cell of a ci-profile run that takes longer than this fails, naming the cell, instead of
#: hanging CI (the slowest ci cell takes about a minute on a quiet 2-core machine).
CELL_TIMEOUT = 900


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_course_has_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no NN_topic.ipynb lessons"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_structure(path: Path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    first = cells[0]
    assert first.cell_type == "markdown" and "learning objectives" in first.source.lower(), \
        "the first cell states the learning objectives"
    tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code", "exactly one code cell tagged 'parameters'"
    assert "PROFILE" in tagged[0].source
    assert all("slideshow" in c.metadata for c in cells), "every cell has slideshow metadata"
    assert cells[0].metadata["slideshow"]["slide_type"] == "slide"
    assert nb.metadata.get("tlcourse", {}).get("checks"), "metadata.tlcourse.checks declares thresholds for CI"
    if path.stem[:2] in ("01", "02", "03", "04", "05", "06"):  # the lessons that compare models report intervals
        assert nb.metadata["tlcourse"].get("intervals"), "metadata.tlcourse.intervals names the recorded 95% intervals"
    # It ends with a summary, then 3 to 5 exercises, each with a collapsed solution, and at least
    # one answer checked by tlcourse.exercises.check (tests/test_slides.py checks the slide metadata).
    start = exercises_start(cells)
    assert start is not None, "the notebook ends with a markdown cell headed '## Exercises'"
    before = " ".join(c.source.lower() for c in cells[max(0, start - 2):start + 1] if c.cell_type == "markdown")
    assert "## summary" in before, "a '## Summary' section comes right before the exercises"
    exercise_list = re.findall(r"^\d+\.\s", cells[start].source, flags=re.M)
    assert 3 <= len(exercise_list) <= 5, f"3 to 5 numbered exercises (found {len(exercise_list)})"
    section = "\n".join(c.source for c in cells[start:])
    solutions = re.findall(r"<details\b[^>]*>", section)
    assert len(solutions) >= len(exercise_list), "every exercise has a solution in a <details> block"
    assert not [s for s in solutions if re.search(r"\bopen\b", s)], "solutions start collapsed (no <details open>)"
    assert re.search(r"\bcheck\(", section), "at least one exercise gives feedback with tlcourse.exercises.check(...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_outputs_come_from_one_clean_run(path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, "every code cell has been executed"
    assert counts == list(range(1, len(code) + 1)), "cells were executed once, top to bottom"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "committed outputs contain errors"
    # the committed run is the default profile (the one learners see)
    params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    assert 'PROFILE = "default"' in params.source
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_ci_profile_and_meets_its_thresholds(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A build folder of its own (metrics, feature caches, checkpoints), inherited by the kernel:
    # only this run's results count, and nbval may run the same notebook at the same time in
    # another pytest-xdist worker. Datasets in data/ are shared (their extraction is atomic).
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    metrics_file = metrics_path(path.stem)
    assert metrics_file.is_relative_to(tmp_path.resolve())
    executed = tmp_path / path.name
    seconds = execute_notebook(path, executed, profile="ci", progress=False, cell_timeout=CELL_TIMEOUT)
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    record = json.loads(metrics_file.read_text())
    assert record.get("profile") == "ci", "the notebook records which profile produced its results"
    checks = nbformat.read(path, as_version=4).metadata["tlcourse"]["checks"]
    failures = check_metrics(load_metrics(path.stem), checks)
    assert not failures, f"{path.name} ({seconds:.0f} s): " + "; ".join(failures)
    # Results are reported with their 95% intervals (tlcourse.evaluation), recorded as such.
    recorded = load_metrics(path.stem)
    for key in nbformat.read(path, as_version=4).metadata["tlcourse"].get("intervals", []):
        interval = recorded.get(key)
        assert isinstance(interval, dict), f"{path.name} did not record the interval {key}"
        assert interval["low"] <= interval["value"] <= interval["high"] and interval["low"] < interval["high"], \
            f"{path.name}: {key} = {interval} is not an interval around its value"


def _code_lines(source: str) -> int:
    """Lines of code in a cell: not blank, not only a comment, not an IPython magic."""
    return sum(1 for line in source.splitlines()
               if line.strip() and not line.strip().startswith(("#", "%")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_reads_as_a_lesson(path: Path):
    """A short setup before the first section, and cells of one idea each."""
    cells = nbformat.read(path, as_version=4).cells
    first_section = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## "))
    setup = [c for c in cells[:first_section]
             if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert sum(_code_lines(c.source) for c in setup) <= 12, "setup before the first section: at most 12 lines"
    long = [_code_lines(c.source) for c in cells if c.cell_type == "code"
            and _code_lines(c.source) > 15 and not re.search(r"^(def|class) ", c.source, flags=re.M)]
    assert not long, f"code cells over 15 lines that define nothing being taught: {long}"


def test_notebook_02_teaches_the_package_loop_inline():
    """The loop notebook 02 writes by hand is the package's, line for line (d2l's #@save idea)."""
    import inspect
    import textwrap

    from tlcourse.train import loops

    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem.startswith("02")), as_version=4)
    for function in (loops.train_one_epoch, loops.evaluate):
        cell = next((c for c in nb.cells if c.cell_type == "code"
                     and re.search(rf"^def {function.__name__}\(", c.source, flags=re.M)), None)
        assert cell is not None, f"notebook 02 defines {function.__name__} inline"
        inline = re.search(rf"^def {function.__name__}\(.*?(?=^\S|\Z)", cell.source + "\n",
                           flags=re.M | re.S).group(0).strip()
        assert inline == textwrap.dedent(inspect.getsource(function)).strip(), \
            f"notebook 02's {function.__name__} differs from tlcourse.train.loops.{function.__name__}"
