"""Small pure functions for the methods we own (selection rules, best-of-n, ...), tested by hand."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import comb


def best_of_n(scores: Sequence[float]) -> int:
    """Index of the highest score (the first one on ties)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores, best first (earlier index first on ties)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def above_threshold(scores: Sequence[float], threshold: float) -> list[int]:
    """Indices of the scores >= threshold, best first."""
    return [i for i in top_k(scores, len(scores)) if scores[i] >= threshold]


def best_worst_pair(scores: Sequence[float], min_gap: float = 0.0) -> tuple[int, int] | None:
    """(best, worst) indices for a preference pair, or None when the best does not beat the worst by more than min_gap."""
    best = best_of_n(scores)
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    return (best, worst) if scores[best] - scores[worst] > min_gap else None


def expected_best_of_n(scores: Sequence[float], n: int) -> float:
    """E[max of n samples drawn without replacement from `scores`], exactly (the unbiased best-of-n estimate).

    With s_(1) <= ... <= s_(N), the i-th smallest is the maximum of C(i-1, n-1) of the C(N, n) subsets.
    """
    ordered = sorted(scores)
    if not 1 <= n <= len(ordered):
        raise ValueError(f"n={n} must be between 1 and {len(ordered)}")
    return sum(s * comb(i, n - 1) for i, s in enumerate(ordered)) / comb(len(ordered), n)


def powers_of_two_upto(limit: int) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= 2
    return out if out[-1] == limit else [*out, limit]


def best_of_n_curve(scores_per_prompt: Iterable[Sequence[float]], ns: Sequence[int]) -> dict[int, float]:
    """Mean over prompts of the expected best-of-n reward, for each n."""
    groups = [list(s) for s in scores_per_prompt]
    return {n: sum(expected_best_of_n(g, n) for g in groups) / len(groups) for n in ns}
