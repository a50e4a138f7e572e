"""Small pure functions for evaluation metrics, shared by every method and tested by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pairwise_accuracy(first: Sequence[float], second: Sequence[float]) -> float:
    """Share of pairs where `first` beats `second`; ties count half (the same rule as a win rate)."""
    if len(first) != len(second):
        raise ValueError(f"pairwise_accuracy: {len(first)} vs {len(second)} scores")
    if not first:
        return float("nan")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(first, second))
    return wins / len(first)


def length_baseline_accuracy(chosen_lengths: Sequence[int], rejected_lengths: Sequence[int]) -> float:
    """Accuracy of the rule "the longer response is better" (ties half): what a reward model must beat."""
    return pairwise_accuracy([float(x) for x in chosen_lengths], [float(x) for x in rejected_lengths])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation."""
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
