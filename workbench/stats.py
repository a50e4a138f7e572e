"""Uncertainty of evaluation metrics: standard errors clustered by prompt, paired differences, intervals.

Why clustered: the samples of one prompt share that prompt's difficulty, so they are not independent
draws. Treating 8 samples of 64 prompts as 512 independent values understates the error whenever
prompts differ; the honest unit is the prompt. Every function here first averages within a prompt,
then measures the spread of those per-prompt means (the cluster-robust standard error of a mean
with equal cluster sizes).

Intervals use Student's t with (number of prompts - 1) degrees of freedom: the variance is estimated
from the per-prompt means, so with few prompts the normal quantile (1.96) would be too narrow.

Several seeds evaluated on the same prompts: a seed's effect shifts every prompt alike, so pooling the
seeds inside prompt clusters hides it. seed_and_prompt_mean adds the between-seed variance component
(seeds x prompts, crossed random effects) and uses t on the Satterthwaite degrees of freedom of the mean
squares behind it: near seeds - 1 when the seeds disagree, near prompts - 1 when they agree, so a second
seed that agrees never makes a verdict harder to reach than one seed did.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

# Which error an Estimate's interval carries (Estimate.interval)
PROMPTS = "prompts"  # clustered by prompt, t on prompts - 1 df
SEEDS_AND_PROMPTS = "seeds and prompts"  # + the between-seed variance component, t on Satterthwaite df
SEEDS = "seeds"  # seeds on different prompts: the t interval over the seed means, seeds - 1 df


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error (clustered by prompt, with the seed variance where `interval` says so), a 95%
    t interval, and with several seeds the mean of each seed."""

    mean: float
    stderr: float
    low: float
    high: float
    num_clusters: int
    num_values: int
    interval: str = PROMPTS
    per_seed: tuple[float, ...] = ()
    df: float | None = None  # degrees of freedom of the t interval (None: not computed)

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


def t_quantile(df: float, q: float = 0.975) -> float:
    """Quantile of Student's t with `df` degrees of freedom (the 95% two-sided interval uses q = 0.975; df may be
    fractional, as Satterthwaite's are)."""
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
    return Estimate(mean, stderr, mean - half, mean + half, k, len(values), df=k - 1 if k > 1 else None)


def naive_stderr(values: Sequence[float]) -> float:
    """sd / sqrt(n) treating every value as independent: what clustering corrects (kept for comparison)."""
    return sample_std(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def paired_difference(
    policy: Sequence[float],
    baseline: Sequence[float],
    clusters: Sequence[Hashable],
    level: float = 0.95,
    seeds: Sequence[Hashable] | None = None,
) -> Estimate:
    """policy - baseline on the same (seed, prompt, sample index), clustered by prompt, with a t interval; with
    `seeds` (one label per value) the seed variance enters as in seed_and_prompt_mean.

    Pairing removes the prompt's own difficulty from the comparison, so the interval is usually far
    narrower than that of two independent means.
    """
    if not (len(policy) == len(baseline) == len(clusters)):
        raise ValueError(f"paired_difference: {len(policy)} policy, {len(baseline)} baseline values, {len(clusters)} labels")
    differences = [a - b for a, b in zip(policy, baseline)]
    if seeds is None:
        return clustered_mean(differences, clusters, level)
    return seed_and_prompt_mean(differences, seeds, clusters, level)


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


# ----------------------------------------------------------------------------------------------
# Several seeds


def seed_prompt_table(
    values: Sequence[float], seeds: Sequence[Hashable], prompts: Sequence[Hashable]
) -> list[list[float]] | None:
    """Mean of each (seed, prompt) cell: rows are seeds, columns prompts (first-appearance order); None unless every
    seed has every prompt (prompts crossed with seeds)."""
    if not (len(values) == len(seeds) == len(prompts)):
        raise ValueError(f"seed_prompt_table: {len(values)} values, {len(seeds)} seed and {len(prompts)} prompt labels")
    cells: dict[Hashable, dict[Hashable, list[float]]] = {}
    columns: dict[Hashable, None] = {}
    for v, s, p in zip(values, seeds, prompts):
        cells.setdefault(s, {}).setdefault(p, []).append(v)
        columns.setdefault(p)
    if any(len(row) != len(columns) for row in cells.values()):
        return None
    return [[sum(row[p]) / len(row[p]) for p in columns] for row in cells.values()]


def mean_squares(table: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(MS_seed, MS_prompt, MS_residual) of a seeds x prompts table of means (two-way ANOVA without replication),
    on (seeds - 1), (prompts - 1) and (seeds - 1)(prompts - 1) degrees of freedom."""
    k, m = len(table), len(table[0])
    rows = [sum(r) / m for r in table]
    cols = [sum(r[j] for r in table) / k for j in range(m)]
    grand = sum(rows) / k
    resid = sum((table[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(k) for j in range(m)) / ((k - 1) * (m - 1))
    return m * sample_std(rows) ** 2, k * sample_std(cols) ** 2, resid


def seed_variance_component(table: Sequence[Sequence[float]]) -> float:
    """Variance of the seeds' effects beyond what prompt-level noise explains, from a seeds x prompts table of means:
    max(0, s^2(seed means) - MS_residual / prompts), the two-way crossed random-effects (ANOVA) estimator."""
    k, m = len(table), len(table[0])
    if k < 2 or m < 2:
        return 0.0
    ms_seed, _, resid = mean_squares(table)
    return max(0.0, (ms_seed - resid) / m)


def satterthwaite_df(terms: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a variance estimated as a sum of mean-square terms
    (coefficient x mean square, its df): (sum)^2 / sum(term^2 / df)."""
    total = sum(v for v, _ in terms)
    return total * total / sum(v * v / df for v, df in terms)


def seed_and_prompt_mean(
    values: Sequence[float], seeds: Sequence[Hashable], prompts: Sequence[Hashable], level: float = 0.95
) -> Estimate:
    """The mean over seeds and prompts with an interval that holds across seeds as well as prompts.

    Seeds share the held-out prompts, so the variance of the mean is s^2(prompt means) / prompts (seeds pooled per
    prompt, as with one seed) plus the seed variance component / seeds, i.e. (MS_seed + MS_prompt - MS_resid) /
    (seeds x prompts); t on the Satterthwaite df of those terms (only MS_prompt's when the component is 0). Seeds on
    different prompts are independent replicates: the t interval over their means. One seed: clustered_mean."""
    distinct = list(dict.fromkeys(seeds))
    if len(distinct) < 2:
        return clustered_mean(values, prompts, level)
    table = seed_prompt_table(values, seeds, prompts)
    if table is None:
        est = clustered_mean(values, seeds, level)
        return replace(est, interval=SEEDS, per_seed=tuple(cluster_means(values, seeds)))
    k, m = len(table), len(table[0])
    cols = [sum(r[j] for r in table) / k for j in range(m)]
    mean = sum(cols) / m
    per_seed = tuple(sum(r) / m for r in table)
    if m < 2:  # one prompt: nothing but the seeds to learn the spread from
        est = clustered_mean(values, seeds, level)
        return replace(est, interval=SEEDS, per_seed=per_seed)
    ms_seed, ms_prompt, resid = mean_squares(table)
    if seed_variance_component(table) > 0:
        terms = [(ms_seed, k - 1), (ms_prompt, m - 1), (-resid, (k - 1) * (m - 1))]
    else:
        terms = [(ms_prompt, m - 1)]
    variance = sum(v for v, _ in terms) / (k * m)
    stderr = math.sqrt(variance)
    # never below the fewest df of a term (Satterthwaite's approximation can dip under it when MS_resid is subtracted)
    df = max(satterthwaite_df(terms), float(min(df for _, df in terms))) if variance > 0 else float(m - 1)
    half = t_quantile(df, 0.5 + level / 2) * stderr
    return Estimate(mean, stderr, mean - half, mean + half, m, len(values), SEEDS_AND_PROMPTS, per_seed, df)


def sign_of_every(values: Sequence[float]) -> int:
    """1 when every value is above zero, -1 when every value is below, else 0 (e.g. seeds that disagree)."""
    if values and all(v > 0 for v in values):
        return 1
    if values and all(v < 0 for v in values):
        return -1
    return 0


def replicate_means(replicates: Sequence[Sequence[float]]) -> list[float]:
    """Each unit's mean over replicates (e.g. each held-out pair's accuracy over the seeds' reward models): the
    replicates of one unit are not independent evidence, so the unit, not unit x replicate, is what is counted."""
    if not replicates:
        return []
    n = len(replicates[0])
    if any(len(r) != n for r in replicates):
        raise ValueError(f"replicate_means: replicates of {sorted({len(r) for r in replicates})} units")
    return [sum(r[i] for r in replicates) / len(replicates) for i in range(n)]
