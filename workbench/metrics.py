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


def win_rate(policy_scores: Sequence[float], baseline_scores: Sequence[float]) -> float:
    """Share of prompts where the policy's response outscores the baseline's; ties count half."""
    return pairwise_accuracy(policy_scores, baseline_scores)


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of all sequences: 1.0 = no n-gram repeats anywhere (diversity)."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def sequence_kl(logprobs: Sequence[float], ref_logprobs: Sequence[float]) -> tuple[float, float]:
    """KL(pi || ref) of one sequence sampled from pi, as (k1, k3) sums over its tokens.

    k1 = sum(log pi - log ref) is unbiased but noisy and can be negative; k3 = sum(r - 1 - log r)
    with r = ref / pi is also unbiased per token given the prefix, never negative, and of lower variance.
    """
    if len(logprobs) != len(ref_logprobs):
        raise ValueError(f"sequence_kl: {len(logprobs)} vs {len(ref_logprobs)} token log-probs")
    k1 = sum(lp - rp for lp, rp in zip(logprobs, ref_logprobs))
    k3 = sum(math.exp(rp - lp) - 1.0 - (rp - lp) for lp, rp in zip(logprobs, ref_logprobs))
    return k1, k3


def implicit_rewards(logprobs: Sequence[Sequence[float]], ref_logprobs: Sequence[Sequence[float]]) -> list[float]:
    """log pi(y|x) - log pi_ref(y|x) per sequence: DPO's implicit reward (without beta, which does not change ranks)."""
    return [sum(a) - sum(b) for a, b in zip(logprobs, ref_logprobs)]
