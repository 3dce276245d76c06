"""Every notebook in notebooks/ is a lesson that CI executes and checks.

New notebooks are picked up automatically. Each one must:
- be well-formed for learners and instructors (objectives, a ``parameters`` cell, slide metadata,
  a summary, then 3 to 5 exercises with collapsed ``<details>`` solutions and at least one
  ``tlcourse.courseware.exercises.check`` call) and carry the outputs of a real run, in order, with no errors;
- run end to end with its ``ci`` profile under papermill;
- record its key results with ``tlcourse.courseware.results.record`` and meet the thresholds it declares in
  its notebook metadata under ``tlcourse.checks``;
- in that same ci run, give the committed outputs of the cells marked ``# NBVAL_CHECK_OUTPUT``,
  compared as ``pytest --nbval-lax`` compares them (so the notebook executes once, not twice).
"""

from __future__ import annotations

import difflib
import json
import re
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

from tlcourse.courseware.course import execute_notebook, notebooks
from tlcourse.courseware.results import check_metrics, load_metrics, metrics_path
from tlcourse.courseware.slides import exercises_start

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
    # one answer checked by tlcourse.courseware.exercises.check (tests/test_slides.py checks the slide metadata).
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
    assert re.search(r"\bcheck\(", section), "at least one exercise gives feedback with tlcourse.courseware.exercises.check(...)"


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
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
):
    # A build folder of its own (metrics, checkpoints), inherited by the kernel: only this run's
    # results count, and another pytest-xdist worker may run the same notebook at the same time
    # (with another backbone). Datasets in data/ are shared (extraction is atomic), and so are the
    # content-keyed caches (``shared_cache``).
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
    # The marked cells give their committed (default-profile) outputs in this ci run, as nbval checked.
    differences = marked_output_differences(nbformat.read(path, as_version=4), nb)
    assert not differences, f"{path.name}: outputs differ from the committed ones\n" + "\n".join(differences)


# ---------------------------------------------------------------- the cells marked NBVAL_CHECK_OUTPUT
# Compared as nbval 0.11 compares them under --nbval-lax (nbval/plugin.py: find_comment_markers,
# find_metadata_tags, coalesce_streams, IPyNbCell.compare_outputs), without running nbval: only
# cells marked to check, each stream merged per name, every output field and MIME type except
# those below, in order per key.

#: What nbval leaves out of a comparison (``IPyNbFile.skip_compare`` without ``--nbdime``): fields
#: that change from run to run, widget model ids, and images (bytes differ between library builds).
NOT_COMPARED = frozenset({"metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                          "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg"})
_CHECK_COMMENTS = {"NBVAL_CHECK_OUTPUT": True, "NBVAL_IGNORE_OUTPUT": False, "PYTEST_VALIDATE_IGNORE_OUTPUT": False}
_CHECK_TAGS = {"nbval-check-output": True, "nbval-ignore-output": False, "pytest-validate-ignore-output": False}
#: nbval's rule for a carriage return: the text before it on its line was overwritten (progress bars).
_OVERWRITTEN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)


def is_checked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbval-lax compares this cell: its last check/ignore marker comment (else its last such
    tag) says check, and the committed cell was executed."""
    verdict = None
    for tag in cell.metadata.get("tags", []):
        verdict = _CHECK_TAGS.get(tag, verdict)
    for line in cell.source.splitlines():
        if line.strip().startswith("#"):
            verdict = _CHECK_COMMENTS.get(line.strip().lstrip("#").strip(), verdict)
    return cell.cell_type == "code" and bool(verdict) and cell.execution_count is not None


def comparable_outputs(outputs: list) -> dict[str, list]:
    """A cell's outputs as nbval compares them: field or MIME type -> its values in order, with each
    stream (keyed by its name, e.g. ``stdout``) merged into one text and overwritten lines dropped."""
    flat: dict[str, list] = defaultdict(list)
    streams: dict[str, str] = {}
    for output in outputs:
        if output.output_type == "stream":
            streams[output.name] = streams.get(output.name, "") + output.text
            continue
        for key, value in output.items():
            if key == "data":
                for mime, content in value.items():
                    if mime not in NOT_COMPARED:
                        flat[mime].append(content)
            elif key not in NOT_COMPARED:
                flat[key].append(value)
    for name, text in streams.items():
        flat[name].append(_OVERWRITTEN.sub("", text))
    return dict(flat)


def _diff(expected: object, got: object) -> str:
    lines = difflib.unified_diff(str(expected).splitlines(), str(got).splitlines(),
                                 "committed", "this run", lineterm="", n=2)
    return "\n".join("      " + line for line in lines)


def marked_output_differences(committed: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> list[str]:
    """For each marked cell whose outputs in ``executed`` differ from ``committed``: a readable diff."""
    ran = [c for c in executed.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    assert len(ran) == len(committed.cells), "the executed notebook has other cells than the committed one"
    code_cells = [c for c in committed.cells if c.cell_type == "code"]
    found = []
    for cell, run in zip(committed.cells, ran):
        if not is_checked(cell):
            continue
        assert run.source == cell.source, "the executed notebook's cells are not the committed ones"
        expected, got = comparable_outputs(cell.outputs), comparable_outputs(run.outputs)
        if expected == got:
            continue
        first_line = next((line for line in cell.source.splitlines() if not line.startswith("#")), "")
        lines = [f"  code cell {code_cells.index(cell)} ({first_line.strip()[:60]!r}):"]
        for key in sorted(expected.keys() | got.keys()):
            want, have = expected.get(key, []), got.get(key, [])
            if want == have:
                continue
            if len(want) != len(have):
                lines.append(f"    {key}: {len(want)} output(s) committed, {len(have)} in this run")
            for a, b in zip(want + [""] * (len(have) - len(want)), have + [""] * (len(want) - len(have))):
                if a != b:
                    lines.append(f"    {key}:\n{_diff(a, b)}")
        found.append("\n".join(lines))
    return found


def _with_output(cell_outputs: list) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nshow()", execution_count=1)
    cell.outputs = cell_outputs
    return nbformat.v4.new_notebook(cells=[cell])


def test_marked_cells_are_compared_as_nbval_lax_compares_them():
    stream, display = nbformat.v4.new_output, nbformat.v4.new_output
    committed = _with_output([stream("stream", name="stdout", text="a\nb\n"),
                              display("display_data", data={"text/plain": "T", "image/png": "AAAA"})])
    same = _with_output([stream("stream", name="stdout", text="a\n"),  # split and overwritten streams,
                         stream("stream", name="stdout", text="50%\rb\n"),  # another image, other metadata
                         display("display_data", data={"text/plain": "T", "image/png": "BBBB"}, metadata={"x": 1})])
    assert marked_output_differences(committed, same) == []
    changed = _with_output([stream("stream", name="stdout", text="a\nc\n"),
                            display("display_data", data={"text/plain": "T"}),
                            stream("stream", name="stderr", text="warning\n")])
    (report,) = marked_output_differences(committed, changed)
    assert "code cell 0 ('show()')" in report and "-b\n      +c" in report
    assert "stderr: 0 output(s) committed, 1 in this run" in report and "+warning" in report
    assert "text/plain" not in report and "image/png" not in report, "equal or ignored fields are not reported"
    # Unmarked, ignored (the last marker wins) or never-executed cells are not compared.
    for source, count in (("show()", 1), ("# NBVAL_CHECK_OUTPUT\n# NBVAL_IGNORE_OUTPUT\nshow()", 1),
                          ("# NBVAL_CHECK_OUTPUT\nshow()", None)):
        cell = nbformat.v4.new_code_cell(source, execution_count=count)
        assert not is_checked(cell), source
    tagged = nbformat.v4.new_code_cell("show()", execution_count=1, metadata={"tags": ["nbval-check-output"]})
    assert is_checked(tagged)


def test_a_changed_output_of_a_marked_cell_is_reported():
    """The comparison the ci run makes can fail: each committed notebook against itself passes, and
    with a line added to a marked cell's output the report names that cell and shows the line."""
    marked_somewhere = False
    for path in NOTEBOOKS:
        committed = nbformat.read(path, as_version=4)
        assert marked_output_differences(committed, committed) == [], path.name
        altered = nbformat.from_dict(json.loads(json.dumps(committed)))
        cell = next((c for c in altered.cells if is_checked(c) and c.outputs), None)
        if cell is None:  # notebooks 04 and 06 mark no cell
            continue
        marked_somewhere = True
        output = cell.outputs[-1]
        if output.output_type == "stream":
            output.text += "an extra line\n"
        else:
            output.data["text/plain"] += "\nan extra line"
        (report,) = marked_output_differences(committed, altered)
        assert "+an extra line" in report, path.name
    assert marked_somewhere, "no notebook marks a cell with # NBVAL_CHECK_OUTPUT any more"


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


def test_notebook_05_shows_and_runs_the_packages_top_stage_recipe():
    """Notebook 05 fine-tunes with the course's one top-stage recipe, shows its source once, and writes
    no training loop of its own (a private copy is how the course's recipes drifted apart). Article 002's
    baseline, an SGD head on fixed features, is written out: it is that article's recipe, run as published."""
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem.startswith("05")), as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "recipes.top_stage_fine_tune(" in code, "05 trains its top stages with recipes.top_stage_fine_tune"
    assert "getsource(recipes.top_stage_fine_tune)" in code, "05 shows the recipe's source"
    assert not re.search(r"^\s*def (train|train_one_epoch|fit)\(", code, flags=re.M), "05 defines no loop of its own"


def _without_annotations(source: str) -> str:
    """``source``'s syntax tree with every type annotation removed: what the code does, not how it is typed."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.returns = None
        elif isinstance(node, ast.arg):
            node.annotation = None
    return ast.dump(tree)


def _inline_function(source: str, name: str) -> str | None:
    """The top-level ``def name(...)`` of a cell, up to the next top-level statement."""
    found = re.search(rf"^def {name}\(.*?(?=^\S|\Z)", source + "\n", flags=re.M | re.S)
    return found.group(0).strip() if found else None


def _source(function) -> str:
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(function))


NOTEBOOK_02_INLINE = [("tlcourse.train.loops", "train_one_epoch"), ("tlcourse.train.loops", "evaluate"),
                      ("tlcourse.recipes", "full_fine_tune")]


@pytest.mark.parametrize(("module", "name"), NOTEBOOK_02_INLINE)
def test_notebook_02_writes_the_package_loop_and_recipe_inline(module, name):
    """Notebook 02's training loop and baseline recipe are the package's, statement for statement and with the
    same docstring; only the annotations may differ (the lesson types them with plain PyTorch/typing names)."""
    import importlib

    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem.startswith("02")), as_version=4)
    inline = next((f for c in nb.cells if c.cell_type == "code" for f in [_inline_function(c.source, name)] if f), None)
    assert inline is not None, f"notebook 02 defines {name} inline"
    package = _source(getattr(importlib.import_module(module), name))
    assert _without_annotations(inline) == _without_annotations(package), \
        f"notebook 02's {name} differs from {module}.{name} (beyond its type annotations)"


def test_the_inline_comparison_ignores_types_but_not_code():
    """The check above must fail when a statement, an argument or a default changes."""
    from tlcourse.train import loops

    package = _source(loops.train_one_epoch)
    retyped = re.sub(r"loader: Batches", "loader: list", package)
    assert retyped != package and _without_annotations(retyped) == _without_annotations(package)
    for old, new in (("optimizer.step()", "pass"), ("set_train_mode(model)", "model.train()"),
                     ("scheduler: torch.optim.lr_scheduler.LRScheduler | None = None",
                      "scheduler: torch.optim.lr_scheduler.LRScheduler | None = 1")):
        assert old in package, old
        assert _without_annotations(package.replace(old, new)) != _without_annotations(package), old


MACHINE_PATH = re.compile(r"(?<![\w$~.:/])/(?:work|root|home|tmp|Users|private|mnt|var/folders)/[^\s'\"<>]*"
                          r"|\b[A-Z]:\\\\[^\s'\"<>]*")


def machine_paths(notebook: nbformat.NotebookNode) -> list[str]:
    """Absolute paths of the machine that ran ``notebook``, as its outputs show them."""
    found = []
    for i, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [v for k, v in output.get("data", {}).items() if k.startswith("text/")]
            found += [f"cell {i}: {m}" for text in texts for m in MACHINE_PATH.findall("".join(text))]
    return found


def test_machine_paths_are_found_where_they_are():
    cell = nbformat.v4.new_code_cell("print(p)", outputs=[nbformat.v4.new_output(
        "stream", name="stdout", text="reading /home/ana/course/build/x and data/y, https://example.org/tmp/z\n")])
    assert machine_paths(nbformat.v4.new_notebook(cells=[cell])) == ["cell 0: /home/ana/course/build/x"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_outputs_name_no_machine_path(path: Path):
    """Learners read these outputs in JupyterLab, on slides and on the site, on other machines."""
    found = machine_paths(nbformat.read(path, as_version=4))
    assert not found, f"{path.name} shows absolute paths of the machine that ran it: {found[:5]}"


def test_one_near_duplicate_standard_for_the_lessons_and_fit():
    """Notebook 03 introduces the threshold; its parameter is the package's, which fit uses."""
    from tlcourse import features
    from tlcourse.experiments.own_data import pipeline

    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem.startswith("03")), as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    value = re.search(r"^NEAR_DUP_COSINE = ([0-9.]+)", params.source, flags=re.M)
    assert value and float(value.group(1)) == features.NEAR_DUPLICATE == pipeline.NEAR_DUPLICATE
    other = [p.name for p in NOTEBOOKS if re.search(r"threshold=0\.\d", "".join(
        c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code"))]
    assert not other, f"notebooks with a threshold of their own: {other}"


def _notebook_function(prefix: str, name: str, namespace: dict) -> object:
    """Define notebook ``prefix``'s inline ``def name`` in ``namespace`` and return it."""
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.stem.startswith(prefix)), as_version=4)
    inline = next((f for c in nb.cells if c.cell_type == "code" for f in [_inline_function(c.source, name)] if f), None)
    assert inline is not None, f"notebook {prefix} defines {name} inline"
    exec(compile(inline, f"notebook {prefix}: {name}", "exec"), namespace)  # noqa: S102 - the course's own cell
    return namespace[name]


def test_notebook_05_writes_out_the_packages_grad_cam_and_probabilities():
    """05 writes Grad-CAM and its probability helper out (its 25-name budget); they compute what
    ``explain.gradcam`` and ``recipes.probabilities`` compute, on a small CNN in train mode."""
    import torch
    from torch import nn

    from tlcourse import explain, recipes

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(5, 3, 12, 12)
    namespace = {"torch": torch, "nn": nn, "device": torch.device("cpu")}
    cams = _notebook_function("05", "gradcam", namespace)(net.train(), x, "3")
    expected, _ = explain.gradcam(net.train(), x, layer="3")
    assert cams.shape == (5, 12, 12) and torch.allclose(cams, expected, atol=1e-6)
    probs = _notebook_function("05", "proba", namespace)(net.train(), x, batch_size=2)
    assert torch.allclose(probs, recipes.probabilities(net.train(), x, "cpu", batch_size=2), atol=1e-6)


def test_notebook_03s_identical_files_groups_as_the_package_does(tmp_path):
    """03 groups byte-identical files with a few lines of hashlib (05 writes the same loop inline);
    ``data.find_duplicates`` is the package's version. Same groups on copies, near-copies and empty files."""
    import hashlib

    from tlcourse import data

    files = {"a.jpg": b"one", "b.jpg": b"one", "c.jpg": b"two", "d.jpg": b"onE", "e.jpg": b"", "f.jpg": b"",
             "sub/g.jpg": b"two", "h.jpg": b"three"}
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    paths = sorted(tmp_path / name for name in files)
    identical_files = _notebook_function("03", "identical_files", {"hashlib": hashlib, "Path": Path})
    assert identical_files(paths) == data.find_duplicates(paths) == [
        [tmp_path / "a.jpg", tmp_path / "b.jpg"], [tmp_path / "c.jpg", tmp_path / "sub/g.jpg"]]
