"""The statistics behind each table cell (harness/report/stats.py) against hand-computed values, scipy and
brute-force enumeration of the sign-flip null distribution."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from adamole_bench.harness.report.stats import (
    MONTE_CARLO_DRAWS,
    most_common,
    normal_interval,
    sign_flip_pvalue,
    t_interval,
    weighted_sign_flip_pvalue,
    wilson_interval,
)


def test_wilson_interval_matches_hand_values():
    # 32 of 50 right (COPA's share of "A" labels): centre (p + z²/2n)/(1 + z²/n), half z·√(p(1-p)/n + z²/4n²)/(1 + z²/n).
    assert wilson_interval(32 / 50, 50) == pytest.approx((0.50141, 0.75861), abs=1e-5)
    assert wilson_interval(0.5, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    # No success at all: the interval is [0, z²/(n + z²)], not the empty [0, 0] of p ± z·stderr.
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 1.959964**2 / (10 + 1.959964**2)), abs=1e-6)
    assert wilson_interval(1.0, 10)[1] == pytest.approx(1.0)
    # A fractional count (half of 51 docs: what `list tasks` quotes for a task of 51 eval docs), by the same formula.
    assert wilson_interval(0.5, 51) == pytest.approx((0.36767, 0.63233), abs=1e-5)


def test_t_interval_and_normal_interval():
    low, high = t_interval([0.60, 0.64, 0.62])  # mean 0.62, sd 0.02, t(0.975, 2 df) = 4.302653
    assert (low, high) == pytest.approx((0.62 - 4.302653 * 0.02 / math.sqrt(3), 0.62 + 4.302653 * 0.02 / math.sqrt(3)), abs=1e-6)
    assert normal_interval(0.5, 0.01) == pytest.approx((0.5 - 1.959964 * 0.1, 0.5 + 1.959964 * 0.1), abs=1e-6)
    assert t_interval([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7), abs=1e-15)  # seeds that agree: a zero-width interval, not nan
    assert normal_interval(0.99, 0.01) == pytest.approx((0.99 - 0.1959964, 1.0), abs=1e-6)  # clipped to [0, 1]


def test_one_seed_sign_flip_test_is_exact_mcnemar():
    rng = np.random.default_rng(1)
    for _ in range(20):
        differences = rng.choice([-1, 0, 0, 1], size=int(rng.integers(5, 400)), p=[0.3, 0.2, 0.2, 0.3])
        wins, losses = int((differences > 0).sum()), int((differences < 0).sum())
        assert sign_flip_pvalue(differences) == pytest.approx(stats.binomtest(wins, wins + losses, 0.5).pvalue, rel=1e-12)
    # The case: base always "A" (right on the 32 A docs), a trained model always "B" (right on the other 18).
    assert sign_flip_pvalue([1] * 32 + [-1] * 18) == pytest.approx(stats.binomtest(32, 50).pvalue) == pytest.approx(0.0649, abs=1e-4)
    assert sign_flip_pvalue([0, 0, 0]) == 1.0


def _brute_force(differences):
    nonzero = [d for d in differences if d]
    observed = abs(sum(nonzero))
    flips = list(itertools.product((-1, 1), repeat=len(nonzero)))
    return sum(abs(sum(s * d for s, d in zip(signs, nonzero))) >= observed for signs in flips) / len(flips)


@pytest.mark.parametrize(
    "differences", [[1, 2, 3, -1, 0, 2, 2, -3, 1, 1, 1, 2], [2, 2, 2, -1, 3, 3, 1, 1, 2, 2, 3, -2, 1, 1], [1, -1, 2, -2], [3, 3, 3, 3, 3]]
)
def test_several_seed_sign_flip_test_equals_enumeration(differences):
    assert sign_flip_pvalue(differences) == pytest.approx(_brute_force(differences), rel=1e-9)


def test_sign_flip_test_on_a_large_eval_set_matches_the_normal_approximation():
    # 3 × 3 seeds on HellaSwag-sized data: integer differences in -9..9 on 10,000 docs, with a small shift.
    rng = np.random.default_rng(0)
    differences = np.concatenate([rng.integers(-9, 10, size=10000), np.full(400, 4)])
    z = abs(differences.sum()) / math.sqrt((differences**2).sum())  # the CLT limit of the same null distribution
    assert sign_flip_pvalue(differences) == pytest.approx(2 * stats.norm.sf(z), abs=2e-3)


def test_weighted_test_agrees_with_the_exact_test_where_both_apply():
    differences = np.array([1] * 32 + [-1] * 18 + [0] * 10, dtype=float)
    exact = stats.binomtest(32, 50).pvalue
    monte_carlo = weighted_sign_flip_pvalue(differences, np.full(len(differences), 0.25))
    assert abs(monte_carlo - exact) < 4 * math.sqrt(exact * (1 - exact) / MONTE_CARLO_DRAWS)
    assert weighted_sign_flip_pvalue(differences, np.ones(len(differences))) == monte_carlo  # seeded: reproducible
    assert weighted_sign_flip_pvalue(np.zeros(4), np.ones(4)) == 1.0


def test_most_common():
    assert most_common(["B", "B", "A", "B"]) == ("B", 0.75)
    assert most_common([]) == (None, None)
