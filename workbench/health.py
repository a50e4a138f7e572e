"""Health checks on a policy's evaluation and its training log: degenerate solutions the averages hide.

Each check is a pure function returning a flag `{code, message}` or None. The comparison attaches
the flags of each policy to its row in results.json and the report puts them next to the policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.stats import Estimate, within_noise_of_half

Flag = dict[str, str]
LN2 = math.log(2.0)
# Metric names the training logs use for the same quantity (PPO's name has changed over versions).
EXPLAINED_VARIANCE_KEYS = ("train/val/explained_variance", "train/value/explained_variance", "train/explained_variance")


def flag(code: str, message: str) -> Flag:
    return {"code": code, "message": message}


def length_cap(finished_share: float | None, max_new_tokens: int | None = None, threshold: float = 0.5) -> Flag | None:
    """Most responses hit the generation cap: the policy never ends its answer, a degenerate solution."""
    if finished_share is None or finished_share >= threshold:
        return None
    cap = f" {max_new_tokens}-token" if max_new_tokens else ""
    return flag(
        "length_cap",
        f"only {finished_share:.0%} of responses end before the{cap} cap (threshold {threshold:.0%}): "
        "the policy runs on until cut off, so its scores are of truncated text",
    )


def kl_blowup(kl: float | None, threshold: float) -> Flag | None:
    """KL to the reference above the configured limit (`eval.kl_warning`): the policy left the reference far behind."""
    if kl is None or kl <= threshold:
        return None
    return flag("kl_blowup", f"KL to the reference {kl:.1f} nats per response exceeds {threshold:g} (`eval.kl_warning`)")


def diversity_collapse(distinct_2: float | None, baseline_distinct_2: float | None) -> Flag | None:
    """Distinct bigrams below half the baseline's: the policy repeats itself (mode collapse)."""
    if distinct_2 is None or not baseline_distinct_2 or distinct_2 >= 0.5 * baseline_distinct_2:
        return None
    return flag(
        "diversity_collapse",
        f"distinct-2 {distinct_2:.2f} is below half the baseline's {baseline_distinct_2:.2f}: responses repeat each other",
    )


def reward_hacking(reward_diff: Estimate | None, gold_diff: Estimate | None) -> Flag | None:
    """The pipeline's reward rises clearly (interval above zero) while the gold reward falls: the reward model is exploited."""
    if reward_diff is None or gold_diff is None or not reward_diff.low > 0 or not gold_diff.mean < 0:
        return None
    return flag(
        "reward_hacking",
        f"reward vs baseline {reward_diff.mean:+.3f} [{reward_diff.low:+.3f}, {reward_diff.high:+.3f}] while gold reward "
        f"{gold_diff.mean:+.3f} [{gold_diff.low:+.3f}, {gold_diff.high:+.3f}]: the policy exploits the reward model",
    )


def weak_reward_model(accuracy: float | None, num_pairs: int, length_baseline: float | None) -> Flag | None:
    """The reward model's held-out accuracy is within noise of a coin, or no better than "the longer wins"."""
    if accuracy is None or num_pairs <= 0:
        return None
    if within_noise_of_half(accuracy, num_pairs):
        return flag(
            "weak_reward_model",
            f"reward model held-out accuracy {accuracy:.3f} on {num_pairs} pairs is within noise of 0.5 "
            f"(±{1.96 * math.sqrt(0.25 / num_pairs):.3f}): rewards from it are close to random",
        )
    if length_baseline is not None and accuracy <= length_baseline:
        return flag(
            "weak_reward_model",
            f"reward model held-out accuracy {accuracy:.3f} is no better than the length-only rule's {length_baseline:.3f} "
            "on the same pairs: it may only reward length",
        )
    return None


# ----------------------------------------------------------------------------------------------
# From the training log (metrics.jsonl lines)


def series(lines: Sequence[Mapping[str, Any]], *keys: str) -> list[float]:
    """The logged values of the first of `keys` present in the log, in step order."""
    for key in keys:
        values = [
            float(line[key]) for line in lines if isinstance(line.get(key), (int, float)) and not isinstance(line.get(key), bool)
        ]
        if values:
            return values
    return []


def _tail(values: Sequence[float], share: float = 0.25) -> float:
    """Mean of the last `share` of the values (at least one): the end of training, less noisy than the last log."""
    n = max(1, math.ceil(len(values) * share))
    return sum(values[-n:]) / n


def _head(values: Sequence[float], share: float = 0.25) -> float:
    n = max(1, math.ceil(len(values) * share))
    return sum(values[:n]) / n


def dpo_stuck(losses: Sequence[float], tolerance: float = 0.01) -> Flag | None:
    """The sigmoid DPO loss ends at ln 2 (0.693): chosen and rejected never separated, nothing was learned."""
    if len(losses) < 2:
        return None
    end = _tail(losses)
    if abs(end - LN2) > tolerance:
        return None
    return flag(
        "dpo_stuck",
        f"DPO loss ends at {end:.4f}, within {tolerance} of ln 2 = {LN2:.4f}: the margins stayed at zero "
        "(learning rate or beta too small, or identical chosen/rejected)",
    )


def chosen_logps_falling(chosen_logps: Sequence[float], margins: Sequence[float], min_drop: float = 1.0) -> Flag | None:
    """Chosen log-probs fall (by more than `min_drop` nats) while the margins grow: the policy wins by pushing both down."""
    if len(chosen_logps) < 2 or len(margins) < 2:
        return None
    drop = _head(chosen_logps) - _tail(chosen_logps)
    growth = _tail(margins) - _head(margins)
    if drop <= min_drop or growth <= 0:
        return None
    return flag(
        "chosen_logps_falling",
        f"chosen log-probs fell by {drop:.2f} nats during training while the margin grew by {growth:.2f}: "
        "the preferred responses became less likely, a sign of over-optimization",
    )


def negative_explained_variance(explained_variance: Sequence[float]) -> Flag | None:
    """PPO's value head explains less than nothing at the end of training: its advantages are noise."""
    if not explained_variance:
        return None
    end = _tail(explained_variance)
    if end >= 0:
        return None
    return flag(
        "value_not_learning",
        f"PPO value explained variance ends at {end:.2f} (< 0): the critic predicts returns worse than their mean, "
        "so advantages are noise (raise vf_coef or value learning rate, or lower the KL noise)",
    )


def training_flags(method: str, lines: Sequence[Mapping[str, Any]], loss_types: Sequence[str] = ("sigmoid",)) -> list[Flag]:
    """The flags that a stage's metrics.jsonl supports, by method."""
    found: list[Flag | None] = []
    if method == "dpo":
        if list(loss_types) == ["sigmoid"]:  # other losses (IPO, hinge, + sft) do not start at ln 2
            found.append(dpo_stuck(series(lines, "train/loss")))
        found.append(chosen_logps_falling(series(lines, "train/logps/chosen"), series(lines, "train/rewards/margins")))
    if method == "ppo":
        found.append(negative_explained_variance(series(lines, *EXPLAINED_VARIANCE_KEYS)))
    return [f for f in found if f is not None]
