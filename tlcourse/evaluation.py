"""Evaluation that is measured, not recited.

The protocol the course follows: choose on validation, report once on test, give every number a
95% interval, compare two models on the *same* test images with a paired test, compare training
recipes over several seeds, and let the verdict sentences be generated from those numbers so a
notebook can never claim more than its data shows. The statistics come from statsmodels and
scipy; this module only chooses the methods, checks the inputs and words the results:

* one accuracy: Wilson score interval (statsmodels ``proportion_confint(method="wilson")``);
* two models on the same images: exact McNemar test (statsmodels ``mcnemar(exact=True)``) and
  Newcombe's (1998) square-and-add interval for the paired difference (his method 10), built from
  the two statsmodels Wilson intervals and the phi correlation of the paired table;
* several seeds: mean with sample std (ddof=1) and a Student t interval (scipy); two recipes:
  Welch's t-test and its interval (scipy ``ttest_ind(equal_var=False)``); no interval, and so no
  verdict, from fewer than :data:`MIN_SEEDS` seeds;
* before running: the smallest difference a design can detect (statsmodels ``power``):
  :func:`detectable_paired` for two models on the same test images, :func:`detectable_over_seeds`
  for two recipes over seeds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped]
from statsmodels.stats.contingency_tables import mcnemar  # type: ignore[import-untyped]
from statsmodels.stats.power import NormalIndPower, TTestIndPower  # type: ignore[import-untyped]
from statsmodels.stats.proportion import proportion_confint  # type: ignore[import-untyped]

__all__ = [
    "MIN_SEEDS", "Estimate", "PairedComparison", "SeedComparison", "Split", "accuracy_ci", "compare",
    "compare_seeds", "describe", "detectable_over_seeds", "detectable_paired", "measurable", "paired_comparison", "seeds_ci", "seeds_comparison", "three_way_split", "verdict",
]

#: The fewest training seeds an interval over seeds is computed from (two seeds give a t interval
#: so wide, and a spread so unreliable, that printing it teaches noise).
MIN_SEEDS = 3


# --------------------------------------------------------------------------- split protocol

@dataclass(frozen=True)
class Split:
    """Sorted, disjoint index lists: fit on ``train``, choose on ``val``, report once on ``test``."""

    train: list[int]
    val: list[int]
    test: list[int]


def _take(count: int, fraction: float, keep: int) -> int:
    """How many of ``count`` images go to a part of ``fraction``: at least 1, leaving ``keep``."""
    return min(max(1, math.floor(count * fraction + 0.5)), count - keep)


def three_way_split(targets: Sequence[Hashable] | Any, *, val_fraction: float,
                    test_fraction: float | None = None, seed: int) -> Split:
    """Stratified, seeded train/validation/test indices for a dataset's labels ``targets``.

    For datasets that ship only train and test: with ``test_fraction=None`` the test part is empty
    (use the dataset's own test split) and validation is carved from ``targets``. Fractions are of
    the whole of ``targets``, rounded per class, and every class gets at least one image in every
    part, so a class needs as many images as there are parts; if one has fewer, ValueError names it.
    The same ``seed`` always gives the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 or None, got {test_fraction}")
    if val_fraction + (test_fraction or 0.0) >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave images to train on, "
                         f"got {val_fraction} + {test_fraction}")
    labels = np.asarray(targets.tolist() if hasattr(targets, "tolist") else list(targets))
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("targets must be a non-empty 1-d sequence of class labels")
    parts = 2 if test_fraction is None else 3
    classes, counts = np.unique(labels, return_counts=True)
    for cls, count in zip(classes.tolist(), counts.tolist()):
        if count < parts:
            raise ValueError(f"class {cls!r} has only {count} image(s); splitting into {parts} parts "
                             f"(train, val{', test' if parts == 3 else ''}) needs at least {parts} per class")
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for cls in classes:
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = 0 if test_fraction is None else _take(len(idx), test_fraction, keep=2)
        n_val = _take(len(idx), val_fraction, keep=n_test + 1)
        test += idx[:n_test].tolist()
        val += idx[n_test:n_test + n_val].tolist()
        train += idx[n_test + n_val:].tolist()
    return Split(sorted(train), sorted(val), sorted(test))


# --------------------------------------------------------------------------- one accuracy

@dataclass(frozen=True)
class Estimate:
    """A number with its interval: ``value`` in ``[low, high]`` at ``level``, from ``n`` images.

    For an estimate over seeds (:func:`seeds_ci`), ``n`` is the number of seeds, ``values`` holds
    them and ``std`` is their sample standard deviation; with one seed the bounds are NaN.
    """

    value: float
    low: float
    high: float
    n: int
    level: float = 0.95
    std: float = math.nan
    values: tuple[float, ...] = ()

    @property
    def over_seeds(self) -> bool:
        """True for a mean over training seeds, False for an accuracy over test images."""
        return len(self.values) > 0


def _as_correct(correct: Any, what: str = "correct") -> np.ndarray:
    """Per-image correctness (bools or 0/1, list, numpy or torch) as a 1-d bool array."""
    if hasattr(correct, "detach"):  # a torch tensor, possibly on the GPU
        correct = correct.detach().cpu().numpy()
    arr = np.asarray(correct)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-d array of per-image correctness")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must hold booleans or 0/1 per image, not scores or accuracies "
                             "(for accuracies over seeds use seeds_ci / compare_seeds)")
        arr = arr.astype(bool)
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def accuracy_ci(correct: int | Any, n: int | None = None, level: float = 0.95) -> Estimate:
    """Accuracy with its Wilson score interval (statsmodels), from a count or per-image bools.

    ``accuracy_ci(81, 263)`` or ``accuracy_ci(preds == labels)``. Wilson rather than the normal
    approximation because it stays inside [0, 1] and keeps its coverage at 0/n and n/n.
    """
    _check_level(level)
    if isinstance(correct, (int, np.integer)) and not isinstance(correct, (bool, np.bool_)):
        if n is None:
            raise ValueError("accuracy_ci(count) needs n, the number of images")
        count, total = int(correct), int(n)
    else:
        arr = _as_correct(correct)
        if n is not None and n != arr.size:
            raise ValueError(f"n={n} but {arr.size} per-image results were given")
        count, total = int(arr.sum()), int(arr.size)
    if total <= 0 or not 0 <= count <= total:
        raise ValueError(f"need 0 <= correct <= n and n > 0, got {count} of {total}")
    low, high = proportion_confint(count, total, alpha=1.0 - level, method="wilson")
    return Estimate(count / total, max(0.0, float(low)), min(1.0, float(high)), total, level)


# --------------------------------------------------------------------------- two models, same images

@dataclass(frozen=True)
class PairedComparison:
    """Accuracy of A minus accuracy of B on the same ``n`` images, with interval and McNemar p.

    ``a_only``/``b_only``: images only A / only B got right (the discordant pairs the test uses).
    """

    diff: float
    low: float
    high: float
    p_value: float
    n: int
    a_only: int
    b_only: int
    level: float = 0.95


def paired_comparison(correct_a: Any, correct_b: Any, level: float = 0.95) -> PairedComparison:
    """Compare two models scored on the same images: exact McNemar p and a paired interval.

    The interval is Newcombe's (1998, Stat Med 17:2635, method 10) square-and-add interval: the
    two Wilson intervals (statsmodels) combined with the phi correlation of the paired table, so
    it accounts for the pairing, stays inside [-1, 1] and needs no random resampling.
    """
    _check_level(level)
    a, b = _as_correct(correct_a, "correct_a"), _as_correct(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"paired comparison needs the same images: {a.size} vs {b.size} results")
    n = int(a.size)
    both, a_only = int((a & b).sum()), int((a & ~b).sum())
    b_only, neither = int((~a & b).sum()), int((~a & ~b).sum())
    p_value = float(mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue)
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = proportion_confint(both + a_only, n, alpha=1.0 - level, method="wilson")
    l2, u2 = proportion_confint(both + b_only, n, alpha=1.0 - level, method="wilson")
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    # Newcombe's phi: 0 for an empty margin; a positive association is corrected down by n/2.
    if margins == 0:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    else:
        phi = min(cross, 0) / math.sqrt(margins)
    dl, du = p1 - l1, u2 - p2  # distances below A's estimate / above B's
    el, eu = u1 - p1, p2 - l2
    diff = p1 - p2
    low = diff - math.sqrt(max(0.0, dl * dl - 2 * phi * dl * du + du * du))
    high = diff + math.sqrt(max(0.0, el * el - 2 * phi * el * eu + eu * eu))
    return PairedComparison(diff, max(-1.0, low), min(1.0, high), p_value, n, a_only, b_only, level)


# --------------------------------------------------------------------------- several seeds

def _as_values(values: Iterable[float], what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be a non-empty list of finite numbers, got {out}")
    return out


def seeds_ci(values: Iterable[float], level: float = 0.95) -> Estimate:
    """Mean over training seeds with sample std (ddof=1) and a Student t interval (scipy).

    Seeds measure how much a result moves when only the randomness changes. With fewer than
    :data:`MIN_SEEDS` values the bounds and std are NaN and :func:`describe` says "no interval".
    """
    _check_level(level)
    vals = _as_values(values, "values")
    mean = float(np.mean(vals))
    if len(vals) < MIN_SEEDS:
        return Estimate(mean, math.nan, math.nan, len(vals), level, math.nan, vals)
    std = float(np.std(vals, ddof=1))
    half = float(stats.t.ppf((1.0 + level) / 2.0, len(vals) - 1)) * std / math.sqrt(len(vals))
    return Estimate(mean, mean - half, mean + half, len(vals), level, std, vals)


@dataclass(frozen=True)
class SeedComparison:
    """Mean of A minus mean of B over seeds, Welch interval and p (NaN with fewer than 2 seeds)."""

    diff: float
    low: float
    high: float
    p_value: float
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    level: float = 0.95


def seeds_comparison(values_a: Iterable[float], values_b: Iterable[float],
                     level: float = 0.95) -> SeedComparison:
    """Welch's t-test and interval (scipy ``ttest_ind(equal_var=False)``) between two seed lists.

    Welch because two recipes need not vary equally across seeds. With fewer than :data:`MIN_SEEDS`
    seeds on either side, or no spread on both, the interval and p-value are NaN, never a guess.
    """
    _check_level(level)
    a, b = _as_values(values_a, "values_a"), _as_values(values_b, "values_b")
    mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
    low = high = p_value = math.nan
    if min(len(a), len(b)) >= MIN_SEEDS and (np.std(a) > 0 or np.std(b) > 0):
        with warnings.catch_warnings():
            # scipy warns about "catastrophic cancellation" when one side has no spread (e.g. a
            # strategy at exactly chance on every seed); Welch's test is well defined there.
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            result = stats.ttest_ind(a, b, equal_var=False)
        ci = result.confidence_interval(confidence_level=level)
        low, high, p_value = float(ci.low), float(ci.high), float(result.pvalue)
    return SeedComparison(mean_a - mean_b, low, high, p_value, len(a), len(b), mean_a, mean_b, level)


# --------------------------------------------------------------------------- design: what a run can detect

def detectable_paired(n_test: int, *, accuracy: float = 0.85, discordant: float | None = None,
                      level: float = 0.95, power: float = 0.8) -> float:
    """The smallest accuracy difference two models scored on the same ``n_test`` images can detect
    (two-sided, at ``level``, with probability ``power``).

    Per image the difference is -1, 0 or +1; its variance is about the share of images on which
    the two models disagree, ``discordant``. Without a measured value it is taken as
    ``2 * accuracy * (1 - accuracy)``: models that err independently, the pessimistic case (models
    fine-tuned from the same weights share most of their errors). statsmodels' normal power
    solves for the effect size of a one-sample test on those per-image differences.
    """
    _check_level(level)
    if n_test < 1:
        raise ValueError(f"n_test must be at least 1, got {n_test}")
    disc = 2 * accuracy * (1 - accuracy) if discordant is None else discordant
    effect = NormalIndPower().solve_power(nobs1=n_test, alpha=1 - level, power=power, ratio=0)
    return float(effect * math.sqrt(disc))


def detectable_over_seeds(seeds: int, *, seed_sd: float, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest difference in mean accuracy two recipes, each run with ``seeds`` seeds, can
    detect when one run's accuracy varies by ``seed_sd`` between seeds (statsmodels' two-sample
    t-test power; NaN below :data:`MIN_SEEDS`, where the course gives no interval at all)."""
    _check_level(level)
    if seeds < MIN_SEEDS:
        return math.nan
    effect = TTestIndPower().solve_power(nobs1=seeds, alpha=1 - level, power=power, ratio=1.0)
    return float(effect * seed_sd)


# --------------------------------------------------------------------------- verdict sentences

def _pts(fraction: float) -> str:
    """A fraction as percentage points with one decimal, never "-0.0"."""
    return f"{round(100.0 * fraction, 1) + 0.0:.1f}"


def _p(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3g}"


def _level(level: float) -> str:
    return f"{100.0 * level:g}%"


def measurable(comparison: PairedComparison | SeedComparison) -> bool:
    """The course's one rule for a difference it reports: the interval excludes 0 and the test
    agrees (p below 1 - level). Over seeds it also needs an interval: :data:`MIN_SEEDS` or more
    seeds on each side and some spread. The interval and the test are computed differently and can disagree at the
    edge; a verdict must not contradict either."""
    c = comparison
    if isinstance(c, SeedComparison) and (min(c.n_a, c.n_b) < MIN_SEEDS or math.isnan(c.low)):
        return False
    return (c.low > 0 or c.high < 0) and c.p_value < 1 - c.level


def verdict(name_a: str, name_b: str, comparison: PairedComparison | SeedComparison) -> str:
    """The sentence a notebook prints for a comparison, with every number taken from it.

    "A is better than B by x points (95% CI lo to hi, <test> p=...)" when the difference is
    :func:`measurable`, else "no measurable difference between A and B at this size (95% CI lo to
    hi points, <test> p=...)".
    """
    c = comparison
    if isinstance(c, SeedComparison):
        test = f"Welch t-test {{p}}, {c.n_a} vs {c.n_b} seeds"
        if min(c.n_a, c.n_b) < MIN_SEEDS:
            few = "one seed" if min(c.n_a, c.n_b) == 1 else f"fewer than {MIN_SEEDS} seeds"
            return (f"{few}, no interval: {name_a} {_pts(c.mean_a)}% vs {name_b} {_pts(c.mean_b)}% "
                    f"({name_a} minus {name_b} = {_pts(c.diff)} points); run more seeds before "
                    "calling a winner")
        if math.isnan(c.low):
            return (f"no spread across seeds, no interval: {name_a} {_pts(c.mean_a)}% vs {name_b} "
                    f"{_pts(c.mean_b)}% ({c.n_a} vs {c.n_b} seeds)")
    else:
        test = "exact McNemar {p}"
    lvl = _level(c.level)
    if measurable(c):
        win, lose, sign = (name_a, name_b, 1.0) if c.low > 0 else (name_b, name_a, -1.0)
        lo, hi = sorted((sign * c.low, sign * c.high))
        return (f"{win} is better than {lose} by {_pts(sign * c.diff)} points "
                f"({lvl} CI {_pts(lo)} to {_pts(hi)}, {test.format(p=_p(c.p_value))})")
    return (f"no measurable difference between {name_a} and {name_b} at this size "
            f"({lvl} CI {_pts(c.low)} to {_pts(c.high)} points, {test.format(p=_p(c.p_value))})")


def compare(name_a: str, a: Estimate | Sequence[bool] | Any, name_b: str, b: Estimate | Sequence[bool] | Any,
            level: float = 0.95) -> str:
    """Verdict for two models: per-image correctness on the same images, or two seed Estimates.

    Per-image results go through :func:`paired_comparison` (exact McNemar); two :func:`seeds_ci`
    Estimates through :func:`seeds_comparison` (Welch). Two accuracies from :func:`accuracy_ci`
    are refused: on the same images they must be compared paired, from the per-image results.
    """
    if isinstance(a, Estimate) or isinstance(b, Estimate):
        if not (isinstance(a, Estimate) and isinstance(b, Estimate) and a.over_seeds and b.over_seeds):
            raise TypeError("compare() takes two per-image correctness arrays (paired, same images) "
                            "or two Estimates from seeds_ci; image accuracies cannot be paired")
        return verdict(name_a, name_b, seeds_comparison(a.values, b.values, level))
    return verdict(name_a, name_b, paired_comparison(a, b, level))


def compare_seeds(name_a: str, values_a: Iterable[float], name_b: str, values_b: Iterable[float],
                  level: float = 0.95) -> str:
    """Verdict for two training recipes from their per-seed accuracies (Welch t-test)."""
    return verdict(name_a, name_b, seeds_comparison(values_a, values_b, level))


def describe(name: str, estimate: Estimate) -> str:
    """One line for one result: "A: 97.5% (95% CI 95.1 to 98.8, n=200)".

    Over seeds: "A: 91.2% (95% CI 90.1 to 92.3, n=3 seeds, sd 0.4 points)", or
    "A: 91.2% (one seed, no interval)" (or "2 seeds, no interval": fewer than :data:`MIN_SEEDS`).
    """
    e = estimate
    if e.over_seeds and e.n < MIN_SEEDS:
        return f"{name}: {_pts(e.value)}% ({'one seed' if e.n == 1 else f'{e.n} seeds'}, no interval)"
    tail = f"n={e.n} seeds, sd {_pts(e.std)} points" if e.over_seeds else f"n={e.n}"
    return f"{name}: {_pts(e.value)}% ({_level(e.level)} CI {_pts(e.low)} to {_pts(e.high)}, {tail})"


# --------------------------------------------------------------------------- tables

