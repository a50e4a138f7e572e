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


# ----------------------------------------------------------------------------------------------
# Multiple comparisons


def t_pvalue(mean: float, stderr: float | None, df: float | None) -> float:
    """Two-sided p-value of "the mean is 0" from a t statistic on `df` degrees of freedom: below 0.05 exactly when
    the 95% t interval excludes zero. A zero standard error gives 0 (a nonzero mean) or 1 (a zero mean)."""
    from scipy.stats import t

    if stderr is None or math.isnan(stderr) or stderr == 0 or df is None or df < 1:
        return 0.0 if stderr == 0 and mean != 0 else 1.0
    return float(2 * t.sf(abs(mean) / stderr, df))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction of k p-values: (rejected at family-wise level `alpha`, adjusted p-values), in the
    order given. Sorted ascending, the i-th smallest (i from 0) is tested at alpha / (k - i) until the first that
    fails; the adjusted p-value is the running maximum of (k - i) p_(i), capped at 1."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: pvalues[i])
    rejected, adjusted = [False] * k, [1.0] * k
    running, stopped = 0.0, False
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        adjusted[i] = running
        stopped = stopped or pvalues[i] > alpha / (k - rank)
        rejected[i] = not stopped
    return rejected, adjusted


# ----------------------------------------------------------------------------------------------
# Prompt bootstrap: every policy is evaluated on the same prompts, so one draw of prompt indices serves all (paired)


def bootstrap_draws(num_prompts: int, reps: int, seed: int) -> list[list[int]]:
    """`reps` resamples of prompt indices 0..num_prompts-1 with replacement, the same for every policy."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, num_prompts, size=(reps, num_prompts)).tolist()


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap replicates (linear interpolation between order statistics)."""
    import numpy as np

    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------
# The reward-KL frontier and comparisons at matched KL


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear curve through the points (xs, ys), taken in order of x, at `x`; beyond either end the end
    segment is extended (a bootstrap resample may move an end point past a matched KL). Points at the same x are
    merged into their mean y; a single point is a constant."""
    merged: dict[float, list[float]] = {}
    for a, b in sorted(zip(xs, ys)):
        merged.setdefault(float(a), []).append(float(b))
    px = list(merged)
    py = [sum(v) / len(v) for v in merged.values()]
    if not px:
        raise ValueError("interpolate: no points")
    if len(px) == 1:
        return py[0]
    i = 1
    while i < len(px) - 1 and x > px[i]:
        i += 1
    x0, x1, y0, y1 = px[i - 1], px[i], py[i - 1], py[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float] | None:
    """The common part of two closed ranges (low, high), or None."""
    low, high = max(a[0], b[0]), min(a[1], b[1])
    return (low, high) if low <= high else None


def matched_grid(low: float, high: float, points: int = 5, skip_low: bool = False) -> list[float]:
    """`points` evenly spaced KLs from `low` to `high`, both ends included (`skip_low`: without `low`, where two
    frontiers anchored at the same point agree by construction)."""
    if high <= low:
        return [] if skip_low else [low]
    n = points + 1 if skip_low else points
    grid = [low + (high - low) * i / (n - 1) for i in range(n)]
    return grid[1:] if skip_low else grid


@dataclass(frozen=True)
class Frontier:
    """One family's points as per-prompt means ([point][prompt], every point on the same prompts), and the anchor
    every frontier shares when the baseline is the KL reference: the baseline's per-prompt reward at KL 0."""

    kl: Sequence[Sequence[float]]
    reward: Sequence[Sequence[float]]
    anchor: Sequence[float] | None = None

    def curve(self, draw: Sequence[int] | None = None) -> tuple[list[float], list[float]]:
        """(KLs, rewards) of its points (the anchor first, at KL 0): means over all prompts or over a resample."""

        def mean(row: Sequence[float]) -> float:
            picked = row if draw is None else [row[i] for i in draw]
            return sum(picked) / len(picked)

        xs, ys = [mean(k) for k in self.kl], [mean(r) for r in self.reward]
        if self.anchor is not None:
            xs, ys = [0.0, *xs], [mean(self.anchor), *ys]
        return xs, ys

    @property
    def measured(self) -> int:
        return len(self.kl)

    def kl_range(self) -> tuple[float, float]:
        xs, _ = self.curve()
        return min(xs), max(xs)


@dataclass(frozen=True)
class MatchedKL:
    """Frontier A minus frontier B in reward at the same KL, at each grid KL, with prompt-bootstrap intervals;
    `verdict`: `above` (every interval above 0), `below` (every one below 0) or `neither`."""

    grid: tuple[float, ...]
    difference: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    verdict: str
    at_point: bool  # A (or B) is a single point: compared at its KL only

    @property
    def kl_range(self) -> tuple[float, float]:
        return min(self.grid), max(self.grid)


def matched_kl(a: Frontier, b: Frontier, draws: Sequence[Sequence[int]], points: int = 5) -> MatchedKL | None:
    """A's reward minus B's at the same KL where both are defined, each frontier piecewise-linear through its points.

    Two frontiers (2+ measured points each): over the overlap of their KL ranges (`points` KLs, the ends included;
    KL 0 left out when both share the anchor, where they agree by construction). A single point against a frontier:
    at the point's KL, when the frontier's range holds it. None when there is no overlap (two single points never
    overlap). Each bootstrap draw recomputes every point's mean KL and reward from the resampled prompts and
    interpolates again at the same grid KLs; the interval is the 95% percentile interval of those differences."""
    if a.measured < 2 and b.measured < 2:
        return None
    if a.measured < 2 or b.measured < 2:
        single, other = (a, b) if a.measured < 2 else (b, a)
        x = single.curve()[0][-1]
        low, high = other.kl_range()
        if not low <= x <= high:
            return None
        grid = [x]
    else:
        both = overlap(a.kl_range(), b.kl_range())
        if both is None:
            return None
        grid = matched_grid(*both, points=points, skip_low=a.anchor is not None and b.anchor is not None and both[0] == 0.0)
        if not grid:
            return None

    def differences(draw: Sequence[int] | None) -> list[float]:
        (ax, ay), (bx, by) = a.curve(draw), b.curve(draw)
        if a.measured < 2:  # a single point moves with the resample: compare at its own KL
            return [ay[-1] - interpolate(bx, by, ax[-1])]
        if b.measured < 2:
            return [interpolate(ax, ay, bx[-1]) - by[-1]]
        return [interpolate(ax, ay, x) - interpolate(bx, by, x) for x in grid]

    point = differences(None)
    replicates = [differences(d) for d in draws]
    bounds = [percentile_interval([r[j] for r in replicates]) for j in range(len(grid))] if replicates else []
    lows = tuple(lo for lo, _ in bounds) or tuple(float("nan") for _ in grid)
    highs = tuple(hi for _, hi in bounds) or tuple(float("nan") for _ in grid)
    verdict = "above" if all(lo > 0 for lo in lows) else "below" if all(hi < 0 for hi in highs) else "neither"
    return MatchedKL(tuple(grid), tuple(point), lows, highs, verdict, a.measured < 2 or b.measured < 2)


# ----------------------------------------------------------------------------------------------
# Length-controlled win rate (AlpacaEval 2 style)

LC_C = 1.0  # inverse L2 strength of the logistic fit (scikit-learn's C); the intercept is not penalised


def lc_win_rate(
    wins: Sequence[float], length_differences: Sequence[float], prompts: Sequence[Hashable], c: float = LC_C
) -> float:
    """The win rate the policy would have if its responses were as long as the baseline's.

    A logistic model of the win (1, 0; a tie is two rows of weight 1/2, one each way) on tanh(Δlen / sd(Δlen)) plus one
    term per prompt, fitted by scikit-learn (lbfgs, L2 with C = `c`), predicted at Δlen = 0 for every prompt and
    averaged over prompts. A policy that wins only by being longer gets about 0.5; one whose wins do not depend on
    length keeps its win rate."""
    from threadpoolctl import threadpool_limits

    if not (len(wins) == len(length_differences) == len(prompts)):
        raise ValueError(f"lc_win_rate: {len(wins)} wins, {len(length_differences)} length differences, {len(prompts)} prompts")
    with threadpool_limits(1):  # a small fit: threads only contend (the machine's cores are the trainers')
        return _lc_fit(wins, length_differences, prompts, c)


def _lc_fit(wins: Sequence[float], length_differences: Sequence[float], prompts: Sequence[Hashable], c: float) -> float:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    w = np.asarray(wins, dtype=float)
    if np.all(w == w[0]):
        return float(w[0])  # one outcome throughout: nothing for length to explain
    d = np.asarray(length_differences, dtype=float)
    sd = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    labels = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    onehot = np.zeros((len(w), len(labels)))
    onehot[np.arange(len(w)), [labels[p] for p in prompts]] = 1.0
    design = np.column_stack([x, onehot])
    ties = (w > 0) & (w < 1)
    rows = np.concatenate([design, design[ties]])
    y = np.concatenate([(w >= 0.5).astype(float), np.zeros(int(ties.sum()))])  # a tie: once won, once lost
    weight = np.concatenate([np.where(ties, 0.5, 1.0), np.full(int(ties.sum()), 0.5)])
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(rows, y, sample_weight=weight)
    at_zero = np.column_stack([np.zeros(len(labels)), np.eye(len(labels))])
    return float(model.predict_proba(at_zero)[:, 1].mean())


@dataclass(frozen=True)
class LengthControlled:
    """The LC win rate and the raw one with 95% prompt-bootstrap intervals, and the interval of raw - LC."""

    lc: float
    lc_low: float
    lc_high: float
    raw: float
    raw_low: float
    raw_high: float
    gap_low: float  # raw - LC
    gap_high: float

    @property
    def gap(self) -> float:
        return self.raw - self.lc


def length_controlled(
    wins: Sequence[float],
    length_differences: Sequence[float],
    prompts: Sequence[int],
    draws: Sequence[Sequence[int]],
    c: float = LC_C,
) -> LengthControlled:
    """lc_win_rate and the raw win rate (mean of the per-prompt means) on every prompt, then on each bootstrap draw.
    `prompts`: each row's prompt as a position 0..P-1, the positions the draws hold (a prompt drawn twice enters as
    two prompts)."""
    groups: list[list[int]] = [[] for _ in range(max(prompts) + 1)]
    for i, p in enumerate(prompts):
        groups[p].append(i)

    from threadpoolctl import threadpool_limits

    def estimate(draw: Sequence[int]) -> tuple[float, float]:
        rows = [(i, copy) for copy, g in enumerate(draw) for i in groups[g]]
        w = [wins[i] for i, _ in rows]
        lc = _lc_fit(w, [length_differences[i] for i, _ in rows], [copy for _, copy in rows], c)
        raw = sum(cluster_means(w, [copy for _, copy in rows])) / len(draw)
        return lc, raw

    with threadpool_limits(1):  # small fits: threads only contend
        lc, raw = estimate(range(len(groups)))
        pairs = [estimate(d) for d in draws]
    lc_low, lc_high = percentile_interval([p[0] for p in pairs])
    raw_low, raw_high = percentile_interval([p[1] for p in pairs])
    gap_low, gap_high = percentile_interval([p[1] - p[0] for p in pairs])
    return LengthControlled(lc, lc_low, lc_high, raw, raw_low, raw_high, gap_low, gap_high)


def group_agreement(group: Sequence[tuple[float, float, float]]) -> tuple[int, float, float]:
    """One prompt's responses, each (gold, judge, length): (pairs whose gold scores differ, how many of them the
    judge orders as the gold does, how many the length rule (longer is better) does), ties counted half."""
    n, judge, length = 0, 0.0, 0.0
    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            (ga, ja, la), (gb, jb, lb) = group[i], group[j]
            if ga == gb:
                continue
            sign = 1.0 if ga > gb else -1.0
            n += 1
            judge += 0.5 if ja == jb else float((ja - jb) * sign > 0)
            length += 0.5 if la == lb else float((la - lb) * sign > 0)
    return n, judge, length


def order_agreement(groups: Sequence[Sequence[tuple[float, float, float]]]) -> tuple[int, float, float]:
    """Responses to one prompt per group: over every pair whose gold scores differ, the share a judge orders as the
    gold does and the share the length rule does (group_agreement). A proxy reward model's agreement with the gold
    on fresh, on-policy responses, beside the rule it must beat."""
    counts = [group_agreement(g) for g in groups]
    n = sum(c[0] for c in counts)
    return n, (sum(c[1] for c in counts) / n if n else math.nan), (sum(c[2] for c in counts) / n if n else math.nan)


def clustered_share(hits: Sequence[float], totals: Sequence[float], level: float = 0.95) -> Estimate:
    """sum(hits) / sum(totals) over clusters (a prompt's pairs of responses share responses, so they are not
    independent), with the linearised cluster-robust standard error sqrt(k/(k-1) * sum((h - r t)^2)) / sum(t) and
    a t interval on k - 1 degrees of freedom, k the clusters with a total."""
    kept = [(h, t) for h, t in zip(hits, totals) if t > 0]
    k, total = len(kept), sum(t for _, t in kept)
    ratio = sum(h for h, _ in kept) / total if total else math.nan
    if k < 2:
        return Estimate(ratio, math.nan, math.nan, math.nan, k, int(total))
    stderr = math.sqrt(k / (k - 1) * sum((h - ratio * t) ** 2 for h, t in kept)) / total
    half = t_quantile(k - 1, 0.5 + level / 2) * stderr
    return Estimate(ratio, stderr, ratio - half, ratio + half, k, int(total))
