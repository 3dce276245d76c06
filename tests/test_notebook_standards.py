"""The standards every lesson keeps (issue 24): a parameters cell that shows the values in effect, a
main line a learner can read in one sitting, and an exercise whose code the learner writes and the
course checks. (How many package names each lesson uses: ``course.tlcourse_names``.)"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from tlcourse.courseware.course import notebooks

NOTEBOOKS = notebooks()
#: The most words of markdown before the Summary (appendix, exercises and solutions not counted).
MAX_MAIN_LINE_WORDS = 2500


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
