"""Small pure functions for the math the workbench owns (selection, best-of-n, PPO), tested by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from math import comb
from typing import Any


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


# ----------------------------------------------------------------------------------------------
# PPO / RLHF math (torch). Shapes: (batch, T) per-token tensors; `mask` is 1 on response tokens.


def masked_mean(x: Any, mask: Any, dim: int | None = None) -> Any:
    """Mean of x over the positions where mask is 1."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: Any, mask: Any, unbiased: bool = True) -> Any:
    """Variance of x over masked positions (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(
    x: Any, mask: Any, shift_mean: bool = True, eps: float = 1e-8, reduce_sum: Callable[[Any], Any] | None = None
) -> Any:
    """(x - mean) / std over masked positions; with shift_mean=False the mean is added back (reward whitening).

    `reduce_sum` sums a tensor over every process, so the mean and (Bessel-corrected) variance are
    those of the whole global batch, not of this process's share.
    """
    import torch

    total = reduce_sum or (lambda t: t)
    sums = total(torch.stack([(x * mask).sum(), mask.sum()]).double())
    n = sums[1].clamp(min=1)
    mean = sums[0] / n
    sq = total(((x.double() - mean) ** 2 * mask).sum())
    var = sq / (n - 1).clamp(min=1)
    white = ((x.double() - mean) * torch.rsqrt(var + eps)).to(x.dtype)
    return (white if shift_mean else white + mean.to(x.dtype)) * mask


def kl_per_token(logprobs: Any, ref_logprobs: Any, estimator: str = "k1") -> Any:
    """Per-token KL(pi || pi_ref) estimate from samples of pi.

    k1 = log pi - log pi_ref (unbiased, can be negative); k2 = (log pi - log pi_ref)^2 / 2 (biased, never
    negative; as a loss term its expected gradient is exactly KL(pi || pi_ref)'s); k3 = (r - 1) - log r with
    r = pi_ref / pi (unbiased, never negative, lower variance; as a loss term its expected gradient is
    KL(pi_ref || pi)'s). As a loss term k1 has none: E[d log pi] = 0.
    """
    import torch

    log_ratio = logprobs - ref_logprobs  # (batch, T)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2 or k3)")


def last_token_index(mask: Any) -> Any:
    """(batch,) index of the last 1 in each row of mask (0 for an empty row)."""
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).max(dim=1).values.long()


def shaped_rewards(scores: Any, kl: Any, mask: Any, kl_coef: float) -> Any:
    """Per-token rewards: -kl_coef * KL on every response token, plus the sequence score on the last one."""
    import torch

    rewards = -kl_coef * kl * mask  # (batch, T)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards


def gae(rewards: Any, values: Any, mask: Any, gamma: float, lam: float) -> tuple[Any, Any]:
    """Generalized advantage estimation over response tokens. Returns (advantages, returns), both (batch, T).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A
    zero past the last response token; returns = A + V.
    """
    import torch

    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def token_mean(x: Any, mask: Any, num_tokens: Any = None) -> Any:
    """Sum of x over masked positions divided by `num_tokens` (default: the masked count here).

    Passing the token count of the whole global mini-batch makes the loss of a shard a fixed share
    of the global loss, so splitting rows over processes or micro-batches does not change the update.
    """
    return (x * mask).sum() / (mask.sum().clamp(min=1) if num_tokens is None else num_tokens)


def clipped_policy_loss(
    logprobs: Any, old_logprobs: Any, advantages: Any, mask: Any, cliprange: float, num_tokens: Any = None
) -> tuple[Any, Any, Any]:
    """PPO's clipped surrogate. Returns (loss, clip fraction, approx KL = mean 0.5 * (log ratio)^2)."""
    import torch

    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = token_mean(torch.max(unclipped, clipped), mask, num_tokens)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def clipped_value_loss(
    values: Any, old_values: Any, returns: Any, mask: Any, cliprange_value: float, num_tokens: Any = None
) -> tuple[Any, Any]:
    """Value loss with the new values kept within cliprange_value of the old. Returns (loss, clip fraction)."""
    import torch

    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * token_mean(torch.max(loss_unclipped, loss_clipped), mask, num_tokens)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac


def entropy_from_logits(logits: Any) -> Any:
    """Per-position entropy of the softmax distribution: logsumexp(z) - sum softmax(z) * z. (..., V) -> (...)."""
    import torch

    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: Any, returns: Any, mask: Any) -> Any:
    """1 - Var(returns - values) / Var(returns) over masked positions (1: perfect value function)."""
    return 1.0 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


class AdaptiveKLController:
    """kl_coef that steers the measured KL toward a target (Ziegler et al. 2019): a proportional
    controller with the error clipped to +-20%, scaled by the samples seen over a horizon."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], int(state["horizon"])


def leave_one_out_baseline(scores: Any, group_size: int) -> Any:
    """Each score minus the mean of the other samples of the same prompt (RLOO's baseline), (N,) -> (N,).

    Rows are grouped consecutively, `group_size` per prompt; with group_size 1 the scores are returned as they are.
    """
    if group_size <= 1:
        return scores
    groups = scores.view(-1, group_size)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1)


class RunningMoments:
    """Running mean and standard deviation of every score seen (Chan et al.'s parallel merge), for reward normalization."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0  # var: population variance of everything seen

    def update(self, values: Sequence[float]) -> None:
        n = len(values)
        if n == 0:
            return
        batch_mean = sum(values) / n
        batch_var = sum((v - batch_mean) ** 2 for v in values) / n
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return self.var**0.5

    def normalize(self, values: Sequence[float], eps: float = 1e-8) -> list[float]:
        return [(v - self.mean) / max(self.std, eps) for v in values]

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], int(state["count"])
