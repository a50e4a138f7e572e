"""workbench.stats: clustered standard errors, paired differences and seed spread, by hand."""

from __future__ import annotations

import math

import pytest

from workbench import stats as S


def test_cluster_means_keep_first_appearance_order():
    assert S.cluster_means([1.0, 2.0, 10.0, 3.0], ["a", "a", "b", "a"]) == [2.0, 10.0]
    with pytest.raises(ValueError):
        S.cluster_means([1.0], ["a", "b"])


def test_clustering_changes_the_stderr_by_more_than_two():
    # two prompts, four samples each: prompt a always scores 1, prompt b always 0
    values = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    clusters = [0, 0, 0, 0, 1, 1, 1, 1]
    # naive: sd = sqrt(8 * 0.25 / 7) = 0.534522, / sqrt(8) = 0.188982
    assert S.naive_stderr(values) == pytest.approx(0.188982, abs=1e-6)
    # clustered: prompt means (1, 0), sd = 0.707107, / sqrt(2) = 0.5
    est = S.clustered_mean(values, clusters)
    assert est.mean == 0.5 and est.stderr == pytest.approx(0.5)
    assert est.stderr / S.naive_stderr(values) == pytest.approx(2.645751, abs=1e-6)  # > 2
    # t with 1 degree of freedom: 12.706205 * 0.5
    assert est.high - est.mean == pytest.approx(6.353102, abs=1e-5)
    assert (est.num_clusters, est.num_values) == (2, 8)


def test_clustered_mean_of_independent_prompts_matches_the_plain_stderr():
    # one sample per prompt: clustering changes nothing
    values = [1.0, 2.0, 3.0, 4.0]
    est = S.clustered_mean(values, [0, 1, 2, 3])
    # sd = sqrt(5/3) = 1.290994, / 2 = 0.645497; t(3, 0.975) = 3.182446
    assert est.stderr == pytest.approx(0.645497, abs=1e-6) == S.naive_stderr(values)
    assert (est.low, est.high) == pytest.approx((2.5 - 3.182446 * 0.645497, 2.5 + 3.182446 * 0.645497), abs=1e-5)


def test_unequal_cluster_sizes_weigh_prompts_equally():
    # prompt a: (0, 0, 0) -> 0, prompt b: (3,) -> 3: mean of prompt means 1.5, not 0.75
    est = S.clustered_mean([0.0, 0.0, 0.0, 3.0], ["a", "a", "a", "b"])
    assert est.mean == 1.5 and est.stderr == pytest.approx(1.5)


def test_paired_difference_by_hand():
    # differences (1, 2 | 0, 1 | 3, 3): prompt means 1.5, 0.5, 3 -> mean 5/3
    policy = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    baseline = [2.0, 2.0, 5.0, 5.0, 4.0, 5.0]
    est = S.paired_difference(policy, baseline, ["a", "a", "b", "b", "c", "c"])
    assert est.mean == pytest.approx(5 / 3)
    # sd of (1.5, 0.5, 3) = sqrt(((-1/6)^2 + (-7/6)^2 + (4/3)^2) / 2) = 1.258306; / sqrt(3) = 0.726483
    assert est.stderr == pytest.approx(0.726483, abs=1e-6)
    # t(2, 0.975) = 4.302653
    assert est.low == pytest.approx(5 / 3 - 4.302653 * 0.726483, abs=1e-5)
    assert not est.excludes_zero  # 1.67 +- 3.13
    tight = S.paired_difference([1.1, 1.2, 1.3, 1.4], [0.0, 0.0, 0.0, 0.0], [0, 1, 2, 3])
    assert tight.excludes_zero and tight.mean == pytest.approx(1.25)
    with pytest.raises(ValueError):
        S.paired_difference([1.0], [1.0, 2.0], [0])


def test_pairing_removes_the_prompt_effect():
    # prompts differ a lot (0 vs 10) but the policy is always exactly 1 above the baseline
    baseline = [0.0, 0.5, 10.0, 10.5]
    policy = [b + 1.0 for b in baseline]
    clusters = [0, 0, 1, 1]
    assert S.paired_difference(policy, baseline, clusters).stderr == 0.0
    assert S.clustered_mean(policy, clusters).stderr == pytest.approx(5.0)


def test_win_indicators_and_seed_spread():
    assert S.win_indicators([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == [1.0, 0.5, 0.0]
    mean, std, n = S.seed_spread([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4) and std == pytest.approx(math.sqrt(5 / 3))  # n - 1, not the population 1.118
    assert math.isnan(S.seed_spread([0.7])[1])
    assert S.t_quantile(10) == pytest.approx(2.228139, abs=1e-6)


def test_within_noise_of_half():
    # 100 pairs: 1.96 * sqrt(0.25 / 100) = 0.098
    assert S.within_noise_of_half(0.59, 100) and not S.within_noise_of_half(0.61, 100)
    assert not S.within_noise_of_half(0.39, 100) and S.within_noise_of_half(0.9, 0)
