"""The course runner and the environment report, on a tiny generated course."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tlcourse.courseware import course
from tlcourse.courseware.environment import report, report_text


@pytest.fixture
def tiny_course(tmp_path, monkeypatch):
    root = tmp_path / "course"
    (root / "notebooks").mkdir(parents=True)
    params = new_code_cell('PROFILE = "default"')
    params.metadata["tags"] = ["parameters"]
    body = new_code_cell('print("profile is", PROFILE)')
    nb = new_notebook(cells=[params, body])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / "01_tiny.ipynb")
    (root / "notebooks" / "scratch.ipynb").write_text("not a lesson")  # not NN_topic: ignored
    monkeypatch.setenv("TLCOURSE_ROOT", str(root))
    monkeypatch.delenv("TLCOURSE_BUILD_DIR", raising=False)
    return root


def _printed(path):
    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_run_course_executes_renders_and_times_each_notebook(tiny_course):
    assert [p.name for p in course.notebooks()] == ["01_tiny.ipynb"]
    rows = course.run_course("ci", html=True)
    assert [r["notebook"] for r in rows] == ["01_tiny"] and rows[0]["seconds"] > 0
    executed = tiny_course / "build" / "notebooks" / "01_tiny.ci.ipynb"
    assert "profile is ci" in _printed(executed)
    assert "profile is ci" in (tiny_course / "build" / "html" / "01_tiny.ci.html").read_text()
    summary = json.loads((tiny_course / "build" / "metrics" / "course-ci.json").read_text())
    assert summary == rows


def test_default_profile_injects_nothing_and_can_refresh_the_lesson(tiny_course):
    course.run_course("default", ["tiny"], html=False, update_notebooks=True)
    lesson = nbformat.read(tiny_course / "notebooks" / "01_tiny.ipynb", as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in lesson.cells)
    assert "profile is default" in _printed(tiny_course / "notebooks" / "01_tiny.ipynb")


def test_unknown_notebook_selection_is_an_error(tiny_course):
    with pytest.raises(ValueError, match="01_tiny"):
        course.run_course("ci", ["99"])


def test_environment_report_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("TLCOURSE_MIRROR", raising=False)
    info = report()
    assert {row["name"] for row in info["datasets"]} >= {"cifar10", "alien-vs-predator"}
    assert all(row["found"] is None for row in info["datasets"])
    text = report_text(info)
    assert "mirror ($TLCOURSE_MIRROR): not set" in text
    assert "python -m tlcourse stage" in text
    assert "efficientnet_lite0" in text and "torch " in text


def test_a_lesson_setup_prints_at_most_three_lines_and_no_path(capsys, monkeypatch):
    from tlcourse.courseware import course

    monkeypatch.delenv("TLCOURSE_PROFILE", raising=False)
    lesson = course.setup("default", {"default": {"EPOCHS": 2}}, {"EPOCHS": None}, device="cpu", threads=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert lesson.cfg["EPOCHS"] == 2 and 1 <= len(out) <= 3
    assert "profile default" in out[0] and "python -m tlcourse env" in out[-1]
    assert not any("/" in line.replace("python -m", "") for line in out[:-1])


def test_the_parameters_cell_holds_the_default_values_and_a_profile_says_what_it_changes(capsys, monkeypatch):
    from tlcourse.courseware import course

    monkeypatch.delenv("TLCOURSE_PROFILE", raising=False)
    profiles = {"ci": {"EPOCHS": 1, "SEEDS": [0, 1, 2]}, "gpu": {"EPOCHS": 10}}
    cell = {"EPOCHS": 4, "SEEDS": [0, 1, 2], "LR": 1e-3}
    lesson = course.setup("default", profiles, cell, device="cpu", threads=1)
    assert lesson.cfg == {"EPOCHS": 4, "SEEDS": [0, 1, 2]} and cell["EPOCHS"] == 4
    assert len(capsys.readouterr().out.strip().splitlines()) == 2, "the default profile changes nothing"
    lesson = course.setup("ci", profiles, cell, device="cpu", threads=1)
    out = capsys.readouterr().out.strip().splitlines()
    assert cell["EPOCHS"] == lesson.cfg["EPOCHS"] == 1, "the globals hold the values in effect"
    assert len(out) == 3 and out[-1] == "profile ci changes the parameters cell: EPOCHS=1"
    pinned = {"EPOCHS": 7, "SEEDS": [0], "PINNED": ["EPOCHS"]}
    assert course.setup("ci", profiles, pinned, device="cpu", threads=1, quiet=True).cfg == {"EPOCHS": 7, "SEEDS": [0, 1, 2]}
    with pytest.raises(ValueError, match="default, ci, gpu"):
        course.setup("huge", profiles, cell, device="cpu", threads=1)


def test_a_lessons_folder_is_created_under_the_build_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCOURSE_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("TLCOURSE_PROFILE", raising=False)  # make test sets it for the notebooks
    lesson = course.setup("default", {}, {"EPOCHS": 2}, device="cpu", threads=1, quiet=True)
    folder = lesson.folder("05_alien_vs_predator")
    assert folder == (tmp_path / "build" / "05_alien_vs_predator").resolve() and folder.is_dir()
