"""bench/validity.py's interval for a loss to the baseline: the spread over a set's items."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from validity import difference_interval  # noqa: E402


def test_an_equal_difference_on_every_item_has_no_spread():
    mean, low, high = difference_interval(np.full(10, 0.7), np.full(10, 0.8))
    np.testing.assert_allclose([mean, low, high], [-0.1, -0.1, -0.1])


def test_a_shift_larger_than_the_items_spread_is_clear_and_a_small_one_is_not():
    rng = np.random.default_rng(0)
    theirs = rng.uniform(0.4, 0.9, 40)
    mean, low, high = difference_interval(theirs - 0.1 + rng.normal(0, 0.05, 40), theirs)
    assert low < mean < high < 0
    assert -0.15 < mean < -0.05
    # The same shift on 10 items whose differences spread ten times wider: within the spread.
    mean, low, high = difference_interval(theirs[:10] - 0.1 + rng.normal(0, 0.5, 10), theirs[:10])
    assert low < 0 < high


def test_items_either_method_does_not_score_are_left_out():
    ours = np.array([0.5, np.nan, 0.7, 0.9])
    theirs = np.array([0.4, 0.6, np.nan, 0.7])
    mean, _, _ = difference_interval(ours, theirs)
    np.testing.assert_allclose(mean, 0.15)
    assert all(np.isnan(difference_interval(ours[:3], theirs[:3])))


def test_the_interval_is_the_same_for_the_same_seed():
    rng = np.random.default_rng(1)
    ours, theirs = rng.uniform(size=20), rng.uniform(size=20)
    assert difference_interval(ours, theirs, seed=3) == difference_interval(ours, theirs, seed=3)
