"""The standards every lesson keeps (issue 24): a parameters cell that shows the values in effect, a
main line a learner can read in one sitting, few package names to hold in mind, and an exercise
whose code the learner writes and the course checks."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tlcourse.courseware.course import notebooks, tlcourse_names

NOTEBOOKS = notebooks()
#: The most words of markdown before the Summary (appendix, exercises and solutions not counted).
MAX_MAIN_LINE_WORDS = 2500
#: The most ``tlcourse`` names (functions, classes, constants) one lesson's code uses.
MAX_NAMES = 25


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem[:2] for p in paths]


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_the_parameters_cell_shows_the_values_in_effect(path: Path) -> None:
    """The parameters cell holds the default profile's values: no "default" entry in PROFILES that would
    overrule it, and no None that means "see the profile" (a None that is itself a value, such as
    "None: every file", says so in its comment)."""
    nb = nbformat.read(path, as_version=4)
    cell = _parameters_cell(nb)
    unexplained = []
    for line in cell.source.splitlines():
        m = re.match(r"([A-Z_][A-Z0-9_]*)\s*=\s*None\b(.*)", line)
        if m and "None:" not in m.group(2):
            unexplained.append(m.group(1))
    assert not unexplained, f"{path.name}: {unexplained} are None in the parameters cell without saying what None means"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"[\"']default[\"']\s*:\s*dict\(", code), \
        f"{path.name}: PROFILES has a 'default' entry; the parameters cell is the default profile"


def main_line_words(nb: nbformat.NotebookNode) -> int:
    """Words of markdown before the Summary, without code blocks and HTML tags."""
    words = 0
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        if re.match(r"#+\s*(Summary|Exercises|Appendix|Solutions?)\b", cell.source.strip()):
            break
        text = re.sub(r"```.*?```", " ", cell.source, flags=re.S)
        words += len(re.sub(r"<[^>]+>", " ", text).split())
    return words


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_the_main_line_reads_in_one_sitting(path: Path) -> None:
    words = main_line_words(nbformat.read(path, as_version=4))
    assert words <= MAX_MAIN_LINE_WORDS, f"{path.name}: {words} words of markdown before the Summary"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_an_exercise_has_the_learner_write_code_that_is_checked(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    checked = [c for c in nb.cells if c.cell_type == "code" and "exercises.check(" in c.source]
    assert checked, f"{path.name}: no exercise cell calls exercises.check on the learner's code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_a_lesson_uses_few_package_names(path: Path) -> None:
    """Each name imported from ``tlcourse``, or read from one of its modules, is one more thing a
    learner holds in mind to read the lesson; plain PyTorch does where the helper adds nothing."""
    names = tlcourse_names(path)
    assert len(names) <= MAX_NAMES, f"{path.name} uses {len(names)} tlcourse names (at most {MAX_NAMES}): {sorted(names)}"


def test_names_are_counted_from_imports_and_module_attributes(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from tlcourse import evaluation, plots\nfrom tlcourse.tables import table\n"
        "import tlcourse.models as m\nfrom tlcourse.train import fit\nevaluation.accuracy_ci(1, 2)\nplots.forest([])\nm.build_backbone('x')\n"
        "evaluation.accuracy_ci(3, 4)\n%matplotlib inline")])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert tlcourse_names(path) == {"tlcourse.evaluation.accuracy_ci", "tlcourse.plots.forest",
                                    "tlcourse.tables.table", "tlcourse.models.build_backbone",
                                    "tlcourse.train.fit"}  # a function, though tlcourse.train.fit is a module too
