"""Tests for tlcourse.evaluation: published known answers for the intervals, hand-computed exact
McNemar p-values and t-intervals, the split protocol's properties, and verdict sentences whose
numbers must be the ones computed. All data is generated; everything runs in well under a second.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from math import comb

import numpy as np
import pytest

from tlcourse.evaluation import (
    Split,
    accuracy_ci,
    compare,
    compare_seeds,
    describe,
    paired_comparison,
    seeds_ci,
    seeds_comparison,
    three_way_split,
    verdict,
)

NUM = r"-?\d+\.\d"


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two models with the given paired 2x2 table."""
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return a, b


# ----------------------------------------------------------------------------- split

def _labels() -> np.ndarray:
    return np.repeat(np.arange(5), [100, 60, 40, 20, 5])  # imbalanced, one small class


def test_split_disjoint_complete_and_stratified() -> None:
    y = _labels()
    s = three_way_split(y, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert isinstance(s, Split)
    parts = [set(s.train), set(s.val), set(s.test)]
    assert sum(map(len, parts)) == len(y)
    assert set().union(*parts) == set(range(len(y)))
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    total = Counter(y.tolist())
    for idx, frac in ((s.val, 0.2), (s.test, 0.2), (s.train, 0.6)):
        counts = Counter(y[idx].tolist())
        assert set(counts) == set(total)  # every class in every part
        for cls in (0, 1, 2, 3):  # large enough classes keep their proportion within rounding
            assert abs(counts[cls] - frac * total[cls]) <= 1


def test_split_seed_determinism_and_variation() -> None:
    y = _labels()
    a = three_way_split(y, val_fraction=0.25, test_fraction=0.1, seed=7)
    assert a == three_way_split(list(y), val_fraction=0.25, test_fraction=0.1, seed=7)
    assert a != three_way_split(y, val_fraction=0.25, test_fraction=0.1, seed=8)


def test_split_without_test_and_string_labels() -> None:
    y = ["cat"] * 30 + ["dog"] * 12 + ["eel"] * 2
    s = three_way_split(y, val_fraction=0.25, seed=1)
    assert s.test == []
    assert sorted(s.train + s.val) == list(range(len(y)))
    assert {y[i] for i in s.val} == {y[i] for i in s.train} == {"cat", "dog", "eel"}


def test_split_tiny_class_error_names_class_and_count() -> None:
    y = [0] * 20 + [1] * 20 + [2] * 2
    with pytest.raises(ValueError, match=r"class 2 has only 2 image"):
        three_way_split(y, val_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match=r"class 'rare' has only 1 image"):
        three_way_split(["a"] * 9 + ["rare"], val_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="leave images to train"):
        three_way_split([0, 1] * 10, val_fraction=0.5, test_fraction=0.5, seed=0)


# ----------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("count, n, low, high", [
    # Newcombe (1998), Stat Med 17:857, Table I, Wilson score method (method 3)
    (0, 10, 0.0000, 0.2775),
    (10, 10, 0.7225, 1.0000),
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
])
def test_wilson_published_values(count: int, n: int, low: float, high: float) -> None:
    e = accuracy_ci(count, n)
    assert e.value == pytest.approx(count / n) and e.n == n
    assert e.low == pytest.approx(low, abs=5e-5) and e.high == pytest.approx(high, abs=5e-5)


def test_accuracy_ci_from_bools_matches_count() -> None:
    correct = np.array([True] * 81 + [False] * 182)
    assert accuracy_ci(correct) == accuracy_ci(81, 263) == accuracy_ci(correct.astype(int).tolist())
    with pytest.raises(ValueError):
        accuracy_ci(5)  # count without n
    with pytest.raises(ValueError):
        accuracy_ci(np.array([0.9, 0.8]))  # accuracies, not per-image results


# ----------------------------------------------------------------------------- paired

def _exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p by hand: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2)."""
    k, m = min(b, c), b + c
    return min(1.0, 2 * sum(comb(m, i) for i in range(k + 1)) / 2 ** m)


@pytest.mark.parametrize("a_only, b_only, expected", [(1, 4, 0.375), (0, 5, 0.0625), (3, 3, 1.0)])
def test_exact_mcnemar_small_cases(a_only: int, b_only: int, expected: float) -> None:
    assert _exact_mcnemar(a_only, b_only) == pytest.approx(expected)
    c = paired_comparison(*_pairs(20, a_only, b_only, 7))
    assert (c.a_only, c.b_only, c.n) == (a_only, b_only, 20 + a_only + b_only + 7)
    assert c.p_value == pytest.approx(expected)
    assert c.diff == pytest.approx((a_only - b_only) / c.n)


def test_paired_interval_published_value() -> None:
    # Cavo et al. (2012) table in Fagerland, Lydersen & Laake (2017), "Statistical Analysis of
    # Contingency Tables", ch. 8: Newcombe square-and-add -0.0621 (95% CI -0.1186 to -0.0046).
    c = paired_comparison(*_pairs(59, 6, 16, 80))
    assert c.diff == pytest.approx(-0.0621, abs=5e-5)
    assert c.low == pytest.approx(-0.1186, abs=5e-5) and c.high == pytest.approx(-0.0046, abs=5e-5)


def test_paired_comparison_is_antisymmetric_and_checks_lengths() -> None:
    a, b = _pairs(150, 12, 3, 35)
    ab, ba = paired_comparison(a, b), paired_comparison(b, a)
    assert ba.diff == pytest.approx(-ab.diff) and ba.p_value == pytest.approx(ab.p_value)
    assert (ba.low, ba.high) == pytest.approx((-ab.high, -ab.low))
    with pytest.raises(ValueError, match="same images"):
        paired_comparison(a, b[:-1])


# ----------------------------------------------------------------------------- seeds

def test_seeds_t_interval_by_hand() -> None:
    e = seeds_ci([0.90, 0.92, 0.94])
    # mean 0.92, sd = sqrt((0.02^2 + 0 + 0.02^2) / 2) = 0.02, t_{0.975, 2} = 4.302653
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (e.value, e.std, e.n) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    assert e.low == pytest.approx(0.92 - half, abs=1e-6) and e.high == pytest.approx(0.92 + half, abs=1e-6)


def test_one_seed_has_no_interval() -> None:
    e = seeds_ci([0.91])
    assert e.value == pytest.approx(0.91) and e.n == 1
    assert math.isnan(e.low) and math.isnan(e.high)
    assert describe("ResNet", e) == "ResNet: 91.0% (one seed, no interval)"
    text = compare_seeds("A", [0.91], "B", [0.85, 0.86])
    assert text.startswith("one seed, no interval") and "5.5 points" in text


def test_welch_matches_scipy_and_hand_formula() -> None:
    from scipy import stats
    a, b = [0.90, 0.91, 0.92], [0.85, 0.86, 0.88]
    c = seeds_comparison(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue)
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert (c.low, c.high) == pytest.approx((c.diff - half, c.diff + half))


# ----------------------------------------------------------------------------- verdicts

def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(NUM, text)]


def test_verdict_clear_difference_uses_computed_numbers() -> None:
    a, b = _pairs(150, 30, 5, 15)  # A right on 30 images B missed, B on 5 only
    c = paired_comparison(a, b)
    text = compare("fine-tuned", a, "linear probe", b)
    assert text == verdict("fine-tuned", "linear probe", c)
    assert text.startswith("fine-tuned is better than linear probe by 12.5 points (95% CI ")
    assert _numbers(text)[:3] == [round(100 * c.diff, 1), round(100 * c.low, 1), round(100 * c.high, 1)]
    assert f"exact McNemar p={c.p_value:.3g}" in text or "p<0.001" in text
    # the same models named the other way round: the winner still comes first, numbers positive
    assert compare("linear probe", b, "fine-tuned", a) == text


def test_verdict_tie_within_noise() -> None:
    a, b = _pairs(150, 6, 4, 40)
    c = paired_comparison(a, b)
    assert c.low < 0 < c.high
    assert compare("A", a, "B", b) == (
        f"no measurable difference between A and B at this size "
        f"(95% CI {100 * c.low:.1f} to {100 * c.high:.1f} points, exact McNemar p={c.p_value:.3g})")


def test_seed_verdicts_both_ways() -> None:
    clear = compare_seeds("A", [0.90, 0.91, 0.92], "B", [0.85, 0.86, 0.88])
    c = seeds_comparison([0.90, 0.91, 0.92], [0.85, 0.86, 0.88])
    assert clear == (f"A is better than B by {100 * c.diff:.1f} points (95% CI {100 * c.low:.1f} to "
                     f"{100 * c.high:.1f}, Welch t-test p={c.p_value:.3g}, 3 vs 3 seeds)")
    tie = compare_seeds("A", [0.90, 0.93, 0.87], "B", [0.89, 0.91, 0.90])
    assert tie.startswith("no measurable difference between A and B at this size (95% CI ")
    # two seed Estimates go through the same Welch comparison
    assert compare("A", seeds_ci([0.90, 0.91, 0.92]), "B", seeds_ci([0.85, 0.86, 0.88])) == clear
    with pytest.raises(TypeError):
        compare("A", accuracy_ci(90, 100), "B", accuracy_ci(80, 100))


def test_describe_formats() -> None:
    e = accuracy_ci(195, 200)
    assert describe("A", e) == f"A: 97.5% (95% CI {100 * e.low:.1f} to {100 * e.high:.1f}, n=200)"
    s = seeds_ci([0.90, 0.92, 0.94])
    assert describe("B", s) == (f"B: 92.0% (95% CI {100 * s.low:.1f} to {100 * s.high:.1f}, "
                                "n=3 seeds, sd 2.0 points)")


def test_verdict_needs_the_interval_and_the_test_to_agree():
    """5 of 200 images right only for A: Newcombe's interval excludes 0 but exact McNemar gives
    p = 2 * 0.5**5 = 0.0625. The verdict must not call a winner the test does not support."""
    a, b = np.ones(200, bool), np.ones(200, bool)
    b[:5] = False
    c = paired_comparison(a, b)
    assert c.low > 0 and c.p_value == pytest.approx(0.0625)
    assert compare("A", a, "B", b).startswith("no measurable difference between A and B")
    b[5] = False  # one more: p = 2 * 0.5**6 = 0.03125, and both agree
    assert compare("A", a, "B", b).startswith("A is better than B by 3.0 points")


def test_measurable_is_the_rule_every_verdict_uses():
    from tlcourse.evaluation import measurable, seeds_comparison

    clear = seeds_comparison([0.85, 0.86, 0.84], [0.75, 0.77, 0.79])
    close = seeds_comparison([0.78, 0.79, 0.80], [0.75, 0.77, 0.79])
    assert measurable(clear) and "is better than" in verdict("a", "b", clear)
    assert not measurable(close) and verdict("a", "b", close).startswith("no measurable difference")
    assert not measurable(seeds_comparison([0.9], [0.5]))  # one seed: no interval, no verdict


def test_the_detectable_difference_shrinks_with_test_images_and_seeds():
    from tlcourse.evaluation import detectable_over_seeds, detectable_paired

    big, small = detectable_paired(2000, accuracy=0.9), detectable_paired(200, accuracy=0.9)
    assert 0.02 < big < 0.03 and small == pytest.approx(big * 10 ** 0.5, rel=1e-3), "1/sqrt(n): 10x the images"
    assert detectable_paired(2000, discordant=0.05) < big, "models that share their errors can be told apart sooner"
    assert detectable_over_seeds(10, seed_sd=0.01) < detectable_over_seeds(3, seed_sd=0.01) < 0.04
    assert math.isnan(detectable_over_seeds(2, seed_sd=0.01)), "no interval from fewer than 3 seeds"
    with pytest.raises(ValueError):
        detectable_paired(0)


def test_two_seeds_give_no_interval_and_no_verdict():
    from tlcourse.evaluation import describe, measurable, seeds_ci, seeds_comparison

    e = seeds_ci([0.747, 0.30])
    assert math.isnan(e.low) and describe("scratch", e) == "scratch: 52.3% (2 seeds, no interval)"
    c = seeds_comparison([0.90, 0.91], [0.50, 0.52])
    assert math.isnan(c.low) and not measurable(c)
    assert compare_seeds("A", [0.90, 0.91], "B", [0.50, 0.52]).startswith("fewer than 3 seeds, no interval")
