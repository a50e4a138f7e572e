"""Selection rules and the best-of-n curve against values worked out by hand."""

from __future__ import annotations

import pytest

from workbench.losses import (
    above_threshold,
    best_of_n,
    best_of_n_curve,
    best_worst_pair,
    expected_best_of_n,
    powers_of_two_upto,
    top_k,
)


def test_best_of_n_takes_the_first_of_ties():
    assert best_of_n([0.2, 0.9, 0.1, 0.9]) == 1


def test_top_k_and_threshold():
    scores = [0.5, 0.9, 0.1, 0.7]
    assert top_k(scores, 2) == [1, 3]
    assert top_k(scores, 10) == [1, 3, 0, 2]
    assert above_threshold(scores, 0.5) == [1, 3, 0]
    assert above_threshold(scores, 0.95) == []


def test_best_worst_pair_skips_ties_and_small_gaps():
    assert best_worst_pair([0.3, 0.8, 0.1]) == (1, 2)
    assert best_worst_pair([0.4, 0.4]) is None
    assert best_worst_pair([0.5, 0.55], min_gap=0.1) is None


def test_expected_best_of_n_by_hand():
    """Scores {1, 2, 3}. n=1: mean = 2. n=2: the 3 pairs {1,2},{1,3},{2,3} have maxima 2, 3, 3 -> 8/3.
    n=3: the one subset has maximum 3."""
    assert expected_best_of_n([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    assert expected_best_of_n([3.0, 1.0, 2.0], 2) == pytest.approx(8 / 3)
    assert expected_best_of_n([3.0, 1.0, 2.0], 3) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        expected_best_of_n([1.0], 2)


def test_best_of_n_curve_averages_prompts():
    """Prompt A {0, 1}: n=1 -> 0.5, n=2 -> 1. Prompt B {2, 2}: 2 and 2. Means: 1.25 and 1.5."""
    assert best_of_n_curve([[0.0, 1.0], [2.0, 2.0]], [1, 2]) == {1: pytest.approx(1.25), 2: pytest.approx(1.5)}
    assert powers_of_two_upto(8) == [1, 2, 4, 8]
    assert powers_of_two_upto(6) == [1, 2, 4, 6]
