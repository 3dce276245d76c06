"""Immediate feedback on the exercises at the end of each notebook.

An exercise with a checkable answer is registered here under an id (``"01.4"``: notebook 01,
exercise 4). In the notebook a learner writes their answer and calls

    exercises.check("01.4", my_answer)

which prints a friendly message (correct, or not yet plus a hint) and returns ``True``/``False``.
What counts as correct depends on the expected value:

- a number: equal within ``rel_tol``/``abs_tol`` (numpy and torch scalars are fine);
- a set: the same items, in any order (the message says how many are missing or unexpected);
- a mapping: the same keys, each value checked by these rules;
- a list or tuple: the same length, item by item;
- a string: equal, ignoring case and surrounding spaces;
- a callable: ``expected(answer)`` returns a bool, or ``(bool, message)``, for answers that
  depend on the machine (a measured speed) or have many right forms.

A notebook may also check against an expected value of its own: ``check("my-own", x, expected=3)``.
The registered answers are the solutions: reading this file is the same as opening the collapsed
solution cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tlcourse.models import BACKBONES


@dataclass(frozen=True)
class Exercise:
    """A checkable exercise: what a correct answer looks like, and a hint for a wrong one."""

    expected: Any
    hint: str = ""
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9


def _imagenet_stats_backbones(answer: Any) -> tuple[bool, str]:
    # Computed when checked, so it stays right whichever optional backbones are installed.
    imagenet = (0.485, 0.456, 0.406)
    expected = {name for name, spec in BACKBONES.items()
                if tuple(round(m, 3) for m in spec.preprocessing().mean) == imagenet}
    return _compare(set(answer), expected, Exercise(expected))


EXERCISES: dict[str, Exercise] = {
    "01.1": Exercise(
        expected=((0 - 0.485) / 0.229, (1 - 0.485) / 0.229),
        hint="Normalize computes (x - mean) / std per channel; the red channel's ImageNet mean is 0.485 "
             "and its std 0.229.",
        abs_tol=0.01,
    ),
    "01.4": Exercise(
        expected={"alien": 100, "predator": 98},
        hint="Hash every training file with data.sha256sum, keep the validation images whose hash is "
             "not among them, then count the kept targets per class (np.bincount).",
    ),
    "03.1": Exercise(
        expected=False,
        hint="A new file changes the dataset fingerprint (paths, sizes, mtimes), so the cache key is new "
             "and the first call extracts the features again: it is not a cache hit.",
    ),
    "05.1": Exercise(
        expected=25 * (694 + 200),
        hint="Each of the 25 epochs runs every training image (694) and every validation image (200) "
             "through the backbone once.",
    ),
    "04.1": Exercise(
        expected="large_dissimilar",
        hint="Compare each number with its boundary: 1000 images per class (at or above is large) and a "
             "similarity of 0.5 (at or above is similar); advisor.recommend(n, similarity).quadrant agrees.",
    ),
    "01.5": Exercise(
        expected=_imagenet_stats_backbones,
        hint="Loop over models.BACKBONES and compare each spec.preprocessing().mean with the ImageNet "
             "mean (0.485, 0.456, 0.406); the section 3 table shows the values.",
    ),
}


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, AttributeError):
        return None


def _compare(answer: Any, expected: Any, exercise: Exercise) -> tuple[bool, str]:
    """(correct?, why not) for one answer against one expected value."""
    if callable(expected):
        verdict = expected(answer)
        return verdict if isinstance(verdict, tuple) else (bool(verdict), "")
    if isinstance(expected, bool) or expected is None:
        return answer == expected, f"expected {expected!r}"
    if isinstance(expected, (int, float)):
        number = _as_number(answer)
        if number is None:
            return False, f"expected a number, got {_describe(answer)}"
        if math.isclose(number, expected, rel_tol=exercise.rel_tol, abs_tol=exercise.abs_tol):
            return True, ""
        return False, f"{number:g} is {'too high' if number > expected else 'too low'}"
    if isinstance(expected, str):
        ok = isinstance(answer, str) and answer.strip().lower() == expected.strip().lower()
        return ok, "" if ok else f"{_describe(answer)} is not the answer"
    if isinstance(expected, (set, frozenset)):
        try:
            items = set(answer)
        except TypeError:
            return False, f"expected a collection of items, got {_describe(answer)}"
        missing, extra = expected - items, items - expected
        if not missing and not extra:
            return True, ""
        parts = ([f"{len(missing)} missing"] if missing else []) + ([f"{len(extra)} that should not be there"] if extra else [])
        return False, " and ".join(parts)
    if isinstance(expected, Mapping):
        if not isinstance(answer, Mapping):
            return False, f"expected a dict with keys {sorted(expected)}, got {_describe(answer)}"
        if set(answer) != set(expected):
            return False, f"expected the keys {sorted(expected)}, got {sorted(answer)}"
        for key, value in expected.items():
            ok, why = _compare(answer[key], value, exercise)
            if not ok:
                return False, f"{key!r}: {why}"
        return True, ""
    if isinstance(expected, (list, tuple)):
        try:
            sequence = list(answer)
        except TypeError:
            return False, f"expected {len(expected)} items, got {_describe(answer)}"
        if len(sequence) != len(expected):
            return False, f"expected {len(expected)} items, got {len(sequence)}"
        for i, (a, e) in enumerate(zip(sequence, expected)):
            ok, why = _compare(a, e, exercise)
            if not ok:
                return False, f"item {i}: {why}"
        return True, ""
    return answer == expected, ""


def check(
    name: str,
    answer: Any,
    *,
    expected: Any = None,
    hint: str = "",
    rel_tol: float | None = None,
    abs_tol: float | None = None,
    quiet: bool = False,
) -> bool:
    """Check ``answer`` to the exercise ``name``; print feedback and return whether it is correct.

    ``expected``, ``hint`` and the tolerances override (or, for an unregistered name, supply)
    the registered exercise. An answer still set to ``...`` (the placeholder) is "not yet".
    """
    if expected is None and name not in EXERCISES:
        raise KeyError(f"No exercise {name!r}: the registered ones are {sorted(EXERCISES)} "
                       "(or pass expected=... yourself)")
    base = EXERCISES.get(name, Exercise(expected))
    exercise = Exercise(
        expected=base.expected if expected is None else expected,
        hint=hint or base.hint,
        rel_tol=base.rel_tol if rel_tol is None else rel_tol,
        abs_tol=base.abs_tol if abs_tol is None else abs_tol,
    )
    if answer is Ellipsis:
        ok, why = False, "replace the `...` with your answer, then run the cell again"
    else:
        try:
            ok, why = _compare(answer, exercise.expected, exercise)
        except Exception as err:  # a learner's half-finished answer should get feedback, not a traceback
            ok, why = False, f"could not check this answer ({type(err).__name__}: {err})"
    if not quiet:
        if ok:
            print(f"✅ Exercise {name}: correct. Well done!")
        else:
            message = f"❌ Exercise {name}: not yet" + (f" ({why})." if why else ".")
            if exercise.hint and answer is not Ellipsis:
                message += f"\n   Hint: {exercise.hint}"
            print(message)
    return bool(ok)


