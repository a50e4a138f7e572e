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


# Several seeds: the seed-to-seed variance of a difference enters its interval


def by_cells(table: list[list[list[float]]]) -> tuple[list[float], list[str], list[int]]:
    """values, seed labels and prompt labels of a [seed][prompt][sample] table."""
    values, seeds, prompts = [], [], []
    for s, row in enumerate(table):
        for p, cell in enumerate(row):
            values += cell
            seeds += [f"s{s}"] * len(cell)
            prompts += [p] * len(cell)
    return values, seeds, prompts


def test_seed_prompt_table_by_hand():
    values, seeds, prompts = by_cells([[[0.5, 1.5], [2.0, 2.0], [3.0, 3.0]], [[3.0, 3.0], [4.0, 4.0], [7.0, 9.0]]])
    assert S.seed_prompt_table(values, seeds, prompts) == [[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]]
    # seed s1 lacks prompt 2: the prompts are not crossed with the seeds
    assert S.seed_prompt_table(values[:-2], seeds[:-2], prompts[:-2]) is None


def test_seed_variance_component_by_hand():
    # rows (seeds) [1, 2, 3] and [3, 4, 8]: seed means 2 and 5, prompt means 2, 3, 5.5, grand mean 3.5
    # residuals y - seed - prompt + grand: (0.5, 0.5, -1 | -0.5, -0.5, 1), sum of squares 3 on (2-1)(3-1) = 2 df: MS 1.5
    # s^2(seed means) = 4.5; minus MS_resid / prompts = 0.5: 4.0
    assert S.seed_variance_component([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]]) == pytest.approx(4.0)
    # seeds that agree (means 2 and 2) leave nothing beyond the prompt-level noise: 0, never negative
    assert S.seed_variance_component([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]]) == 0.0


def satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance terms (value, its df): (sum v)^2 / sum v^2 / df."""
    return sum(v for v, _ in terms) ** 2 / sum(v * v / df for v, df in terms)


def t975(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def test_seed_and_prompt_interval_by_hand():
    """Variance of the mean: s^2(prompt means) / prompts + seed component / seeds = (MS_seed + MS_prompt - MS_resid) /
    (seeds x prompts); Student-t on the Satterthwaite df of those mean squares (seeds - 1, prompts - 1, residual df)."""
    values, seeds, prompts = by_cells([[[0.5, 1.5], [2.0, 2.0], [3.0, 3.0]], [[3.0, 3.0], [4.0, 4.0], [7.0, 9.0]]])
    est = S.seed_and_prompt_mean(values, seeds, prompts)
    # s^2(prompt means 2, 3, 5.5) = (2.25 + 0.25 + 4) / 2 = 3.25; seed component 4.0
    se = math.sqrt(3.25 / 3 + 4.0 / 2)  # 1.755942
    assert est.mean == pytest.approx(3.5) and est.stderr == pytest.approx(se)
    # MS_seed = 3 x 4.5 = 13.5 (1 df), MS_prompt = 2 x 3.25 = 6.5 (2 df), MS_resid 1.5 (2 df): df 342.25 / 204.5
    df = satterthwaite([(13.5, 1), (6.5, 2), (-1.5, 2)])
    assert df == pytest.approx(1.673594, abs=1e-6) and est.df == pytest.approx(df)
    assert est.high - est.mean == pytest.approx(t975(df) * se, abs=1e-6)
    assert est.interval == S.SEEDS_AND_PROMPTS and est.per_seed == pytest.approx((2.0, 5.0))
    assert (est.num_clusters, est.num_values) == (3, 12)
    # the same as the two-way random-effects ANOVA: (MS_seed + MS_prompt - MS_resid) / (seeds x prompts)
    assert est.stderr**2 == pytest.approx((3 * 4.5 + 2 * 3.25 - 1.5) / 6)


def test_seeds_that_agree_keep_the_prompt_error_and_the_prompt_df():
    """A second seed that agrees must not make a verdict harder to reach than one seed: with no seed variance beyond
    the prompt noise the interval is the prompt-clustered one (t on prompts - 1), not t on seeds - 1 = 1."""
    values, seeds, prompts = by_cells([[[1.0], [2.0], [3.0]], [[2.0], [1.0], [3.0]]])
    est = S.seed_and_prompt_mean(values, seeds, prompts)
    pooled = S.clustered_mean(values, prompts)  # prompt means 1.5, 1.5, 3: se 0.5
    assert est.stderr == pytest.approx(pooled.stderr) == pytest.approx(0.5)
    assert est.df == 2 and est.high - est.mean == pytest.approx(4.302653 * 0.5, abs=1e-5)


def test_one_seed_is_the_prompt_clustered_interval():
    values, seeds, prompts = by_cells([[[1.0, 2.0], [0.0, 1.0], [5.0, 5.0]]])
    assert S.seed_and_prompt_mean(values, seeds, prompts) == S.clustered_mean(values, prompts)
    assert S.clustered_mean(values, prompts).interval == S.PROMPTS


def test_seeds_on_different_prompts_use_the_t_interval_over_seed_means():
    # seed s0 on prompts 0, 1 (means 1, 3), seed s1 on prompts 2, 3 (means 5, 7): independent replicates
    est = S.seed_and_prompt_mean([1.0, 3.0, 5.0, 7.0], ["s0", "s0", "s1", "s1"], [0, 1, 2, 3])
    # seed means 2 and 6: sd 2.828427, / sqrt(2) = 2
    assert est.mean == 4.0 and est.stderr == pytest.approx(2.0) and est.interval == S.SEEDS
    assert est.low == pytest.approx(4.0 - 12.706205 * 2.0, abs=1e-5) and est.per_seed == (2.0, 6.0)


def test_the_issue_example_two_seeds_of_opposite_sign():
    """Issue 25 item 5: 32 prompts, the method +0.5 on one seed and -0.3 on the other (plus a prompt effect of
    +-0.02). Pooled by prompt the interval was [+0.093, +0.107]; with the seed component it spans zero widely."""
    e = [0.02 if p % 2 == 0 else -0.02 for p in range(32)]
    values, seeds, prompts = by_cells([[[0.5 + x] for x in e], [[-0.3 + x] for x in e]])
    est = S.seed_and_prompt_mean(values, seeds, prompts)
    # prompt means 0.1 +- 0.02: s^2 = 32 x 0.0004 / 31; seed means 0.5, -0.3: s^2 0.32, residuals 0
    se = math.sqrt(0.0128 / 31 / 32 + 0.32 / 2)
    assert est.mean == pytest.approx(0.1) and est.stderr == pytest.approx(se)
    # MS_seed = 32 x 0.32 (1 df) dominates MS_prompt = 2 x 0.0128 / 31 (31 df): df ~ 1
    df = satterthwaite([(32 * 0.32, 1), (2 * 0.0128 / 31, 31)])
    assert est.df == pytest.approx(df) and 1.0 < df < 1.0002
    assert (est.low, est.high) == pytest.approx((0.1 - t975(df) * se, 0.1 + t975(df) * se), abs=1e-6)
    assert S.clustered_mean(values, prompts).excludes_zero  # what the report used to say
    assert S.sign_of_every(est.per_seed) == 0


def test_sign_of_every_and_replicate_means():
    assert S.sign_of_every([0.2, 0.1]) == 1 and S.sign_of_every([-0.2, -0.1]) == -1
    assert S.sign_of_every([0.2, -0.1]) == 0 and S.sign_of_every([0.2, 0.0]) == 0 and S.sign_of_every([]) == 0
    # three seeds' outcomes on the same 2 pairs: per-pair means over seeds
    assert S.replicate_means([[1.0, 0.0], [1.0, 0.5], [0.0, 1.0]]) == pytest.approx([2 / 3, 0.5])
    with pytest.raises(ValueError):
        S.replicate_means([[1.0, 0.0], [1.0]])


def test_order_agreement_counts_pairs_whose_gold_differs_with_ties_of_the_judge_half():
    # prompt 1: gold 0.9 > 0.5 > 0.1; the judge orders (a, b) right, (a, c) right, (b, c) wrong; length: a 10, b 30, c 20
    # prompt 2: gold tie (skipped); prompt 3: gold 0.2 < 0.6, the judge ties (half), length 5 < 8 (right)
    groups = [
        [(0.9, 2.0, 10.0), (0.5, 1.0, 30.0), (0.1, 1.5, 20.0)],
        [(0.3, 1.0, 4.0), (0.3, 2.0, 9.0)],
        [(0.2, 1.0, 5.0), (0.6, 1.0, 8.0)],
    ]
    n, judge, length = S.order_agreement(groups)
    assert n == 4
    assert judge == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    # length: (a, b) a shorter but better: wrong; (a, c) wrong; (b, c) b longer and better: right; prompt 3 right
    assert length == pytest.approx((0 + 0 + 1 + 1) / 4)
    assert S.order_agreement([[(0.1, 1.0, 1.0)]])[0] == 0


def test_a_share_over_prompts_gets_a_cluster_robust_interval():
    # prompt hits / totals: 3/6, 4/5, 1/1 -> 8/12; residuals h - r t: 3 - 4 = -1, 4 - 10/3 = 2/3, 1 - 2/3 = 1/3
    # se = sqrt(3/2 * (1 + 4/9 + 1/9)) / 12 = sqrt(7/3) / 12 = 0.127294; t(2 df) 4.302653
    est = S.clustered_share([3, 4, 1, 0], [6, 5, 1, 0])  # a prompt with no pair does not count
    assert est.mean == pytest.approx(8 / 12) and (est.num_clusters, est.num_values) == (3, 12)
    assert est.stderr == pytest.approx(math.sqrt(7 / 3) / 12)
    assert est.high - est.mean == pytest.approx(4.302653 * math.sqrt(7 / 3) / 12, abs=1e-6)
    assert math.isnan(S.clustered_share([1], [2]).stderr)  # one prompt: no spread to measure
