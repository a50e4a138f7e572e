"""Uncertainty of evaluation metrics: standard errors clustered by prompt, paired differences, intervals.

Why clustered: the samples of one prompt share that prompt's difficulty, so they are not independent
draws. Treating 8 samples of 64 prompts as 512 independent values understates the error whenever
prompts differ; the honest unit is the prompt. Every function here first averages within a prompt,
then measures the spread of those per-prompt means (the cluster-robust standard error of a mean
with equal cluster sizes).

Intervals use Student's t with (number of prompts - 1) degrees of freedom: the variance is estimated
from the per-prompt means, so with few prompts the normal quantile (1.96) would be too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error clustered by prompt, and a 95% t interval."""

    mean: float
    stderr: float
    low: float
    high: float
    num_clusters: int
    num_values: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def cluster_means(values: Sequence[float], clusters: Sequence[Hashable]) -> list[float]:
    """Mean of the values of each cluster, in order of first appearance."""
    if len(values) != len(clusters):
        raise ValueError(f"cluster_means: {len(values)} values vs {len(clusters)} cluster labels")
    sums: dict[Hashable, list[float]] = {}
    for v, c in zip(values, clusters):
        acc = sums.setdefault(c, [0.0, 0.0])
        acc[0] += v
        acc[1] += 1.0
    return [s / n for s, n in sums.values()]


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1 in the denominator); nan with fewer than two values."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile(df: int, q: float = 0.975) -> float:
    """Quantile of Student's t with `df` degrees of freedom (the 95% two-sided interval uses q = 0.975)."""
    from scipy.stats import t

    return float(t.ppf(q, df)) if df >= 1 else float("nan")


def clustered_mean(values: Sequence[float], clusters: Sequence[Hashable], level: float = 0.95) -> Estimate:
    """Mean of the per-cluster means, its standard error sd(cluster means) / sqrt(clusters), and a t interval.

    With equal samples per prompt the mean equals the plain mean of all values.
    """
    means = cluster_means(values, clusters)
    k = len(means)
    if k == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, nan, 0, 0)
    mean = sum(means) / k
    stderr = sample_std(means) / math.sqrt(k) if k > 1 else float("nan")
    half = t_quantile(k - 1, 0.5 + level / 2) * stderr if k > 1 else float("nan")
    return Estimate(mean, stderr, mean - half, mean + half, k, len(values))


def naive_stderr(values: Sequence[float]) -> float:
    """sd / sqrt(n) treating every value as independent: what clustering corrects (kept for comparison)."""
    return sample_std(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def paired_difference(
    policy: Sequence[float], baseline: Sequence[float], clusters: Sequence[Hashable], level: float = 0.95
) -> Estimate:
    """policy - baseline on the same (prompt, sample index), clustered by prompt, with a t interval.

    Pairing removes the prompt's own difficulty from the comparison, so the interval is usually far
    narrower than that of two independent means.
    """
    if not (len(policy) == len(baseline) == len(clusters)):
        raise ValueError(f"paired_difference: {len(policy)} policy, {len(baseline)} baseline values, {len(clusters)} labels")
    return clustered_mean([a - b for a, b in zip(policy, baseline)], clusters, level)


def win_indicators(policy: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """1 where the policy's response scores higher than the baseline's to the same (prompt, sample), 0.5 ties, else 0."""
    if len(policy) != len(baseline):
        raise ValueError(f"win_indicators: {len(policy)} vs {len(baseline)} scores")
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(policy, baseline)]


def seed_spread(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with n - 1, number of seeds) of one metric over seeds."""
    n = len(values)
    return (sum(values) / n if n else float("nan")), sample_std(values), n


def within_noise_of_half(rate: float, n: int, z: float = 1.96) -> bool:
    """Whether an accuracy on n independent pairs is indistinguishable from a coin (|rate - 0.5| <= z * sqrt(0.25 / n))."""
    if n <= 0 or math.isnan(rate):
        return True
    return abs(rate - 0.5) <= z * math.sqrt(0.25 / n)
