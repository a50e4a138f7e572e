"""The matched-KL and length-control statistics (workbench/stats.py) against hand-computed values: piecewise-linear
interpolation of a frontier, the paired prompt bootstrap, the length-controlled win rate, Holm's correction."""

from __future__ import annotations

import math

import pytest

from workbench import health as H
from workbench import stats as S


def test_interpolation_is_piecewise_linear_through_the_sorted_points():
    xs, ys = [3.0, 1.0, 2.0], [5.0, 1.0, 3.0]  # given out of order: (1, 1), (2, 3), (3, 5)
    assert S.interpolate(xs, ys, 1.5) == pytest.approx(2.0)
    assert S.interpolate(xs, ys, 2.25) == pytest.approx(3.5)
    assert S.interpolate(xs, ys, 3.0) == pytest.approx(5.0)
    assert S.interpolate(xs, ys, 4.0) == pytest.approx(7.0)  # beyond the end: the end segment extended
    assert S.interpolate(xs, ys, 0.0) == pytest.approx(-1.0)
    assert S.interpolate([1.0, 1.0, 3.0], [0.0, 2.0, 3.0], 2.0) == pytest.approx(2.0)  # same KL: mean 1, then 1 -> 3
    assert S.interpolate([2.0], [7.0], 9.0) == 7.0


def test_overlap_and_the_matched_grid():
    assert S.overlap((0.0, 2.0), (1.0, 3.0)) == (1.0, 2.0)
    assert S.overlap((0.0, 1.0), (2.0, 3.0)) is None
    assert S.matched_grid(1.0, 2.0, points=5) == pytest.approx([1.0, 1.25, 1.5, 1.75, 2.0])
    assert S.matched_grid(0.0, 2.0, points=4, skip_low=True) == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert S.matched_grid(1.0, 1.0) == [1.0]


def test_bootstrap_draws_are_seeded_and_shared():
    draws = S.bootstrap_draws(5, 3, seed=7)
    assert len(draws) == 3 and all(len(d) == 5 and all(0 <= i < 5 for i in d) for d in draws)
    assert draws == S.bootstrap_draws(5, 3, seed=7) and draws != S.bootstrap_draws(5, 3, seed=8)
    assert S.percentile_interval([float(i) for i in range(101)]) == pytest.approx((2.5, 97.5))


def frontier(points: list[tuple[float, float]], prompts: int = 4, noise: float = 0.0, anchor: float | None = None) -> S.Frontier:
    """A frontier whose every point has per-prompt means spread symmetrically around (kl, reward)."""
    spread = [noise * (i - (prompts - 1) / 2) for i in range(prompts)]
    return S.Frontier(
        [[kl + s for s in spread] for kl, _ in points],
        [[reward + s for s in spread] for _, reward in points],
        None if anchor is None else [anchor] * prompts,
    )


def test_matched_kl_difference_over_the_overlap_by_hand():
    a = frontier([(1.0, 1.0), (3.0, 3.0)])  # reward = KL
    b = frontier([(2.0, 0.0), (4.0, 1.0)])  # reward = (KL - 2) / 2
    m = S.matched_kl(a, b, S.bootstrap_draws(4, 50, seed=0), points=3)
    assert m.grid == pytest.approx((2.0, 2.5, 3.0)) and m.kl_range == pytest.approx((2.0, 3.0))
    assert m.difference == pytest.approx((2.0, 2.25, 2.5))  # x - (x - 2) / 2
    assert m.low == pytest.approx(m.difference) and m.high == pytest.approx(m.difference)  # prompts agree: no spread
    assert m.verdict == "above" and not m.at_point
    assert S.matched_kl(b, a, [], points=3).difference == pytest.approx((-2.0, -2.25, -2.5))
    assert S.matched_kl(b, a, S.bootstrap_draws(4, 50, seed=0), points=3).verdict == "below"


def test_matched_kl_pairs_the_prompts_of_every_policy():
    # the same prompt-level noise in both frontiers: each resample moves both alike, so the difference is exact
    a = frontier([(1.0, 2.0), (3.0, 4.0)], noise=1.0)
    b = frontier([(1.0, 1.0), (3.0, 3.0)], noise=1.0)
    m = S.matched_kl(a, b, S.bootstrap_draws(4, 200, seed=1), points=3)
    assert m.low == pytest.approx((1.0, 1.0, 1.0)) and m.high == pytest.approx((1.0, 1.0, 1.0)) and m.verdict == "above"
    # noise in one frontier only: the intervals widen and hold the difference
    c = frontier([(1.0, 1.5), (3.0, 3.5)], prompts=4)
    c = S.Frontier(c.kl, [[r + e for r, e in zip(row, (-3.0, 3.0, -3.0, 3.0))] for row in c.reward])
    m = S.matched_kl(c, b, S.bootstrap_draws(4, 200, seed=1), points=3)
    assert m.difference == pytest.approx((0.5, 0.5, 0.5))
    assert all(lo < 0.5 < hi for lo, hi in zip(m.low, m.high)) and m.verdict == "neither"


def test_a_single_point_is_compared_at_its_kl_and_no_overlap_gives_none():
    curve = frontier([(1.0, 1.0), (3.0, 5.0)])  # reward = 2 KL - 1
    point = frontier([(2.0, 2.0)])
    m = S.matched_kl(point, curve, S.bootstrap_draws(4, 20, seed=0))
    assert m.at_point and m.grid == (2.0,) and m.difference == pytest.approx((2.0 - 3.0,)) and m.verdict == "below"
    assert S.matched_kl(frontier([(5.0, 2.0)]), curve, []) is None  # outside the frontier's KL range
    assert S.matched_kl(point, frontier([(1.0, 1.0)]), []) is None  # two single points never overlap
    assert S.matched_kl(curve, frontier([(4.0, 0.0), (6.0, 1.0)]), []) is None


def test_anchored_frontiers_start_at_the_baseline_and_skip_kl_zero():
    a = frontier([(1.0, 2.0), (2.0, 4.0)], anchor=0.0)  # (0, 0) -> (1, 2) -> (2, 4): reward = 2 KL
    b = frontier([(2.0, 2.0), (4.0, 4.0)], anchor=0.0)  # (0, 0) -> (2, 2) -> (4, 4): reward = KL
    assert a.kl_range() == (0.0, 2.0) and a.curve() == ([0.0, 1.0, 2.0], [0.0, 2.0, 4.0])
    m = S.matched_kl(a, b, [], points=2)  # KL 0 left out: both frontiers pass through the baseline there
    assert m.grid == pytest.approx((1.0, 2.0)) and m.difference == pytest.approx((1.0, 2.0))
    # a single measured point is still compared at its own KL, not along its line from the anchor
    assert S.matched_kl(frontier([(1.0, 3.0)], anchor=0.0), b, []).grid == (1.0,)


# ----------------------------------------------------------------------------------------------
# Length-controlled win rate


def longer_wins() -> tuple[list[float], list[float], list[int]]:
    """20 prompts x 5 responses: a response wins exactly when it is longer than the baseline's (raw win rate 0.8)."""
    wins, lengths, prompts = [], [], []
    for p in range(20):
        for d in (6, 4, 2, -3, 5):
            lengths.append(d + p % 3)
            wins.append(1.0 if d + p % 3 > 0 else 0.0)
            prompts.append(p)
    return wins, lengths, prompts


def wins_regardless_of_length() -> tuple[list[float], list[float], list[int]]:
    """20 prompts x 5 responses: 4 of 5 win, the loser's length difference rotating through -4..4 (no correlation)."""
    wins, lengths, prompts = [], [], []
    for p in range(20):
        for j in range(5):
            lengths.append((-4, -2, 0, 2, 4)[(j + p) % 5])
            wins.append(0.0 if j == p % 5 else 1.0)
            prompts.append(p)
    return wins, lengths, prompts


def test_a_policy_that_wins_only_by_being_longer_has_lc_win_rate_about_one_half():
    wins, lengths, prompts = longer_wins()
    assert sum(wins) / len(wins) == 0.8
    assert S.lc_win_rate(wins, lengths, prompts) == pytest.approx(0.5, abs=0.05)


def test_a_policy_that_wins_regardless_of_length_keeps_its_win_rate():
    assert S.lc_win_rate(*wins_regardless_of_length()) == pytest.approx(0.8, abs=0.01)


def test_a_tie_counts_half_each_way_and_one_outcome_needs_no_fit():
    # two ties and one win, one loss: symmetric data, so the LC rate is the raw rate, 0.5
    assert S.lc_win_rate([0.5, 0.5, 1.0, 0.0], [1, -1, 1, -1], [0, 0, 1, 1]) == pytest.approx(0.5, abs=1e-6)
    assert S.lc_win_rate([1.0, 1.0, 1.0], [3, -1, 2], [0, 1, 2]) == 1.0
    with pytest.raises(ValueError):
        S.lc_win_rate([1.0], [1, 2], [0])


def test_length_controlled_intervals_and_the_length_bias_flag():
    draws = S.bootstrap_draws(20, 60, seed=3)
    biased = S.length_controlled(*longer_wins(), draws)
    assert biased.raw == pytest.approx(0.8) and biased.lc == pytest.approx(0.5, abs=0.05)
    assert (
        biased.lc_low <= biased.lc <= biased.lc_high and biased.raw_low == pytest.approx(0.8) == biased.raw_high
    )  # 4 of 5 in every prompt
    assert biased.gap_low > 0  # raw - LC excludes 0
    flag = H.length_bias(biased.raw, biased.lc, biased.gap_low, biased.gap_high)
    assert (
        flag is not None and flag["code"] == "length_bias" and "win rate 0.80 but 0.53 with length controlled" in flag["message"]
    )
    fair = S.length_controlled(*wins_regardless_of_length(), draws)
    assert fair.raw == pytest.approx(0.8) and fair.lc == pytest.approx(0.8, abs=0.01)
    assert H.length_bias(fair.raw, fair.lc, fair.gap_low, fair.gap_high) is None
    assert H.length_bias(0.8, 0.5, math.nan, math.nan) is None


# ----------------------------------------------------------------------------------------------
# Multiple comparisons


def test_holm_by_hand():
    # sorted: 0.005 vs 0.05/4 = 0.0125 rejected (adj 0.02); 0.01 vs 0.05/3 rejected (adj 0.03);
    # 0.03 vs 0.05/2 = 0.025 kept (adj 0.06), and so is everything after it (0.04: adj max(0.06, 0.04) = 0.06)
    rejected, adjusted = S.holm([0.01, 0.04, 0.03, 0.005])
    assert rejected == [True, False, False, True]
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # one p-value: Holm is the plain test
    assert S.holm([0.049]) == ([True], [pytest.approx(0.049)])
    # step-down stops at the first failure even if a later p-value would pass its own threshold
    assert S.holm([0.02, 0.02, 0.02])[0] == [False, False, False]
    assert S.holm([0.6, 0.9])[1] == pytest.approx([1.0, 1.0])  # capped at 1
    assert S.holm([]) == ([], [])


def test_t_pvalue_matches_the_95_percent_interval():
    # t = 2.228 on 10 degrees of freedom is the 97.5% quantile: p = 0.05
    assert S.t_pvalue(2.228, 1.0, 10) == pytest.approx(0.05, abs=2e-4)
    assert S.t_pvalue(-2.228, 1.0, 10) == pytest.approx(0.05, abs=2e-4)
    assert S.t_pvalue(0.0, 1.0, 10) == pytest.approx(1.0)
    assert S.t_pvalue(0.3, 0.0, 10) == 0.0 and S.t_pvalue(0.0, 0.0, 10) == 1.0
