"""tlcourse.courseware.exercises.check: immediate, friendly feedback on the notebooks' exercises."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tlcourse.courseware import exercises
from tlcourse.courseware.course import notebooks
from tlcourse.courseware.exercises import check


def test_a_correct_answer_is_praised(capsys):
    assert check("01.4", {"alien": 100, "predator": 98}) is True
    assert "correct" in capsys.readouterr().out


def test_a_wrong_answer_says_what_is_off_and_gives_the_hint(capsys):
    assert check("01.4", {"alien": 100, "predator": 100}) is False
    out = capsys.readouterr().out
    assert "not yet" in out and "'predator': 100 is too high" in out
    assert "Hint:" in out and "sha256sum" in out


def test_the_placeholder_is_not_yet_without_giving_the_hint_away(capsys):
    assert check("01.4", ...) is False
    out = capsys.readouterr().out
    assert "replace the `...`" in out and "Hint" not in out


@pytest.mark.parametrize("answer", [0.5, np.float32(0.5), torch.tensor(0.5), 0.5 + 1e-9])
def test_numbers_match_within_tolerance_whatever_their_type(answer):
    assert check("frac", answer, expected=0.5, quiet=True)


def test_tolerance_can_be_widened():
    assert not check("speed", 104, expected=100, quiet=True)
    assert check("speed", 104, expected=100, rel_tol=0.05, quiet=True)


def test_sets_ignore_order_and_count_missing_and_extra_items(capsys):
    assert check("s", ["b", "a"], expected={"a", "b"}, quiet=True)
    assert not check("s", ["a", "c"], expected={"a", "b"})
    assert "1 missing and 1 that should not be there" in capsys.readouterr().out


def test_sequences_are_checked_item_by_item(capsys):
    assert check("seq", np.array([1.0, 2.0]), expected=[1, 2], quiet=True)
    assert not check("seq", [1, 3], expected=[1, 2])
    assert "item 1: 3 is too high" in capsys.readouterr().out
    assert not check("seq", [1], expected=[1, 2], quiet=True)


def test_strings_ignore_case_and_spaces():
    assert check("word", "  Predator ", expected="predator", quiet=True)
    assert not check("word", "alien", expected="predator", quiet=True)


def test_a_callable_decides_and_may_explain(capsys):
    in_range = lambda x: (0 <= x <= 1, "an agreement is a fraction between 0 and 1")  # noqa: E731
    assert check("agreement", 0.3, expected=in_range, quiet=True)
    assert not check("agreement", 30, expected=in_range)
    assert "a fraction between 0 and 1" in capsys.readouterr().out


def test_a_broken_answer_gets_feedback_not_a_traceback(capsys):
    assert check("01.4", 42) is False
    assert "expected a dict" in capsys.readouterr().out
    assert check("boom", 1, expected=lambda x: 1 / 0) is False
    assert "could not check this answer (ZeroDivisionError" in capsys.readouterr().out


def test_an_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="01.4"):
        check("no-such-exercise", 1)


def test_the_backbone_exercise_follows_the_registry():
    assert check("01.5", ["resnet18", "resnet50", "vgg19"], quiet=True)
    assert not check("01.5", ["efficientnet_lite0"], quiet=True)


def test_every_check_in_a_notebook_names_a_registered_exercise():
    import nbformat

    used = {name for path in notebooks() for cell in nbformat.read(path, as_version=4).cells
            if cell.cell_type == "code"
            for name, rest in re.findall(r"""check\(\s*["']([^"']+)["']\s*,([^\n]*)""", cell.source)
            if "expected=" not in rest}
    assert used <= set(exercises.EXERCISES), f"unregistered: {sorted(used - set(exercises.EXERCISES))}"
