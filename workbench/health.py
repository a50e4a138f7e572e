"""Health checks on a policy's evaluation and its training log: degenerate solutions the averages hide.

Each check is a pure function returning a flag `{code, message}` or None. Every flag's code and message
template live in FLAGS, so the manifest, results.json, report.md and the console show one wording. The
comparison attaches the flags of each policy to its row in results.json and the report puts them next to
the policy; flags a run computed itself at its end (PPO's diagnosis) are read from its manifest, not redone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from workbench.stats import Estimate, within_noise_of_half

Flag = dict[str, str]
LN2 = math.log(2.0)
# The manifest key under which a run records the flags it computed at its end (one list of flags).
MANIFEST_FLAGS = "diagnosis"

# code -> message template (str.format fields filled by the check that raises it)
FLAGS: dict[str, str] = {
    # from the evaluation
    "length_cap": "only {share:.0%} of responses end before the{cap} cap (threshold {threshold:.0%}): "
    "the policy runs on until cut off, so its scores are of truncated text",
    "kl_blowup": "KL to the reference {kl:.1f} nats per response exceeds {threshold:g} (`eval.kl_warning`)",
    "diversity_collapse": "distinct-2 {distinct_2:.2f} is below half the baseline's {baseline:.2f}: responses repeat each other",
    "reward_hacking": "reward vs baseline {reward.mean:+.3f} [{reward.low:+.3f}, {reward.high:+.3f}] while gold reward "
    "{gold.mean:+.3f} [{gold.low:+.3f}, {gold.high:+.3f}]: the policy exploits the reward model",
    "no_change": "every paired difference from `{baseline}` is exactly 0 ({metrics}): the policy is unchanged; did it "
    "train? (check its stage's learning rate and steps, and its metrics.jsonl)",
    "weak_reward_model": "reward model held-out accuracy {accuracy:.3f} on {num_pairs} pairs is within noise of 0.5 "
    "(±{half:.3f}): rewards from it are close to random",
    "reward_model_length_only": "reward model held-out accuracy {accuracy:.3f} is no better than the length-only rule's "
    "{length_baseline:.3f} on the same pairs: it may only reward length",
    "length_bias": "win rate {raw:.2f} but {lc:.2f} with length controlled (raw − LC {gap:+.2f} [{low:+.2f}, {high:+.2f}], "
    "95% prompt bootstrap): the judge's verdicts move with response length, so part of this win rate is length, not content",
    "control_differs": "the control (`{baseline}` {how}) differs from `{baseline}` by {d[difference]:+.3f} "
    "[{d[low]:+.3f}, {d[high]:+.3f}] in {metric}, beyond its interval: the intervals understate the noise (they hold the "
    "training run fixed); compare with several `seeds` before trusting a verdict",
    # about the comparison as a whole
    "budget_mismatch": "training budgets differ by more than {factor:g}×: {what} from {low:,.0f} (`{low_name}`) to "
    "{high:,.0f} (`{high_name}`), {ratio:.1f}×; a lead may come from the budget rather than the method",
    "eval_shortfall": "`eval.{key}` asks for {requested} but the data's eval split gives only {got}: the evaluation uses "
    "{got} (raise `data.eval_split` or lower `eval.{key}`)",
    # from the training log
    "dpo_stuck": "DPO loss ends at {end:.4f}, within {tolerance} of ln 2 = {ln2:.4f}: the margins stayed at zero "
    "(learning rate or beta too small, or identical chosen/rejected)",
    "chosen_logps_falling": "chosen log-probs fell by {drop:.2f} nats during training while the margin grew by {growth:.2f}: "
    "the preferred responses became less likely, a sign of over-optimization",
    # PPO's end-of-run diagnosis (written to its manifest)
    "value_not_learning": "explained variance ends at {ev:.2f} (< 0): the critic predicts returns worse than their mean "
    "(raise train.critic_learning_rate, add train.critic_warmup_steps)",
    "finished_collapse": "the share of responses that end on their own fell from {start:.2f} to {end:.2f}: the policy learned "
    "to run to the length cap (set train.missing_eos_penalty)",
    "short_responses": "responses shrank from {start:.1f} to {end:.1f} tokens and {finished:.0%} end on their own: the policy "
    "learned that stopping early pays (a KL penalty summed over the response, or a share-type reward, rewards short answers): "
    "read samples; try train.kl_in: loss with train.kl_estimator: k2 (a per-token KL mean in the loss, whose gradient is the "
    "KL's) or a lower train.kl_coef",
    "entropy_collapse": "reward rose while entropy collapsed ({start:.2f} -> {end:.2f} nats per token): likely reward hacking "
    "or a degenerate policy (read samples; raise train.kl_coef or lower train.learning_rate)",
    "kl_high": "sequence KL to the reference ended at {kl:.3g} nats (> train.diagnose_kl {limit:g}) together with {codes}: "
    "the policy left the reference to exploit the reward; raise train.kl_coef or set train.target_kl",
    "kl_without_gain": "sequence KL to the reference ended at {kl:.3g} nats (> train.diagnose_kl {limit:g}) while the reward "
    "moved {delta:+.3g} (within noise, 2 x {se:.2g}): the policy drifts without learning the reward; lower "
    "train.learning_rate or raise train.kl_coef, and check the reward function",
}


def flag(code: str, **fields: Any) -> Flag:
    """The flag `code` with its message made from FLAGS[code] (the one wording of that flag)."""
    return {"code": code, "message": FLAGS[code].format(**fields)}


def length_cap(finished_share: float | None, max_new_tokens: int | None = None, threshold: float = 0.5) -> Flag | None:
    """Most responses hit the generation cap: the policy never ends its answer, a degenerate solution."""
    if finished_share is None or finished_share >= threshold:
        return None
    return flag("length_cap", share=finished_share, cap=f" {max_new_tokens}-token" if max_new_tokens else "", threshold=threshold)


def kl_blowup(kl: float | None, threshold: float) -> Flag | None:
    """KL to the reference above the configured limit (`eval.kl_warning`): the policy left the reference far behind."""
    if kl is None or kl <= threshold:
        return None
    return flag("kl_blowup", kl=kl, threshold=threshold)


def diversity_collapse(distinct_2: float | None, baseline_distinct_2: float | None) -> Flag | None:
    """Distinct bigrams below half the baseline's: the policy repeats itself (mode collapse)."""
    if distinct_2 is None or not baseline_distinct_2 or distinct_2 >= 0.5 * baseline_distinct_2:
        return None
    return flag("diversity_collapse", distinct_2=distinct_2, baseline=baseline_distinct_2)


def reward_hacking(reward_diff: Estimate | None, gold_diff: Estimate | None) -> Flag | None:
    """The pipeline's reward rises clearly (interval above zero) while the gold reward falls: the reward model is exploited."""
    if reward_diff is None or gold_diff is None or not reward_diff.low > 0 or not gold_diff.mean < 0:
        return None
    return flag("reward_hacking", reward=reward_diff, gold=gold_diff)


def no_change(differences: Mapping[str, Estimate | None], baseline: str) -> Flag | None:
    """Every paired difference from the baseline (KL among them) is exactly 0 with no spread: each response is scored,
    measured and as long as the baseline's own, so the policy did not move (not a difference within noise)."""
    present = {name: d for name, d in differences.items() if d is not None}
    if "KL" not in present or any((d.mean, d.low, d.high) != (0.0, 0.0, 0.0) for d in present.values()):
        return None
    return flag("no_change", baseline=baseline, metrics=", ".join(present))


def weak_reward_model(accuracy: float | None, num_pairs: int, length_baseline: float | None) -> Flag | None:
    """The reward model's held-out accuracy is within noise of a coin, or no better than "the longer wins"."""
    if accuracy is None or num_pairs <= 0:
        return None
    if within_noise_of_half(accuracy, num_pairs):
        return flag("weak_reward_model", accuracy=accuracy, num_pairs=num_pairs, half=1.96 * math.sqrt(0.25 / num_pairs))
    if length_baseline is not None and accuracy <= length_baseline:
        return flag("reward_model_length_only", accuracy=accuracy, length_baseline=length_baseline)
    return None


def length_bias(raw: float, lc: float, gap_low: float, gap_high: float, min_gap: float = 0.02) -> Flag | None:
    """The raw and the length-controlled win rate disagree beyond noise: the bootstrap interval of raw - LC excludes 0,
    and by at least `min_gap` (a fit's rounding on near-identical resamples is no disagreement)."""
    if math.isnan(gap_low) or math.isnan(gap_high) or gap_low <= 0 <= gap_high or abs(raw - lc) < min_gap:
        return None
    return flag("length_bias", raw=raw, lc=lc, gap=raw - lc, low=gap_low, high=gap_high)


def control_differs(difference: Mapping[str, float] | None, baseline: str, how: str, metric: str) -> Flag | None:
    """The control (the baseline again with another seed) is no baseline by its interval: the noise is larger than the
    intervals say. `difference`: its paired difference from the baseline (difference, low, high)."""
    if not difference or difference["low"] <= 0 <= difference["high"]:
        return None
    return flag("control_differs", baseline=baseline, how=how, d=difference, metric=metric)


# ----------------------------------------------------------------------------------------------
# About the comparison as a whole


def budget_mismatch(budgets: Mapping[str, float | None], what: str, factor: float = 2.0) -> Flag | None:
    """The largest of the policies' training budgets (e.g. tokens) over `factor` times the smallest: an unequal race."""
    known = {name: float(v) for name, v in budgets.items() if v is not None and v > 0}
    if len(known) < 2:
        return None
    low_name, high_name = min(known, key=known.__getitem__), max(known, key=known.__getitem__)
    ratio = known[high_name] / known[low_name]
    if ratio <= factor:
        return None
    return flag(
        "budget_mismatch",
        factor=factor,
        what=what,
        low=known[low_name],
        low_name=low_name,
        high=known[high_name],
        high_name=high_name,
        ratio=ratio,
    )


def eval_shortfalls(requested: Mapping[str, int], got: Mapping[str, Any]) -> list[Flag]:
    """Fewer held-out prompts or pairs than `eval.<key>` asked for (the evaluation took what the split had); a key
    with none held out at all (the pairs of prompt-only data) was not needed and is not flagged."""
    return [
        flag("eval_shortfall", key=key, requested=n, got=got[key])
        for key, n in requested.items()
        if isinstance(got.get(key), int) and 0 < got[key] < n
    ]


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
    return flag("dpo_stuck", end=end, tolerance=tolerance, ln2=LN2)


def chosen_logps_falling(chosen_logps: Sequence[float], margins: Sequence[float], min_drop: float = 1.0) -> Flag | None:
    """Chosen log-probs fall (by more than `min_drop` nats) while the margins grow: the policy wins by pushing both down."""
    if len(chosen_logps) < 2 or len(margins) < 2:
        return None
    drop = _head(chosen_logps) - _tail(chosen_logps)
    growth = _tail(margins) - _head(margins)
    if drop <= min_drop or growth <= 0:
        return None
    return flag("chosen_logps_falling", drop=drop, growth=growth)


def training_flags(method: str, lines: Sequence[Mapping[str, Any]], loss_types: Sequence[str] = ("sigmoid",)) -> list[Flag]:
    """The flags that a stage's metrics.jsonl supports, by method (PPO judges its own run: see ppo_diagnosis)."""
    found: list[Flag | None] = []
    if method == "dpo":
        if list(loss_types) == ["sigmoid"]:  # other losses (IPO, hinge, + sft) do not start at ln 2
            found.append(dpo_stuck(series(lines, "train/loss")))
        found.append(chosen_logps_falling(series(lines, "train/logps/chosen"), series(lines, "train/rewards/margins")))
    return [f for f in found if f is not None]


def manifest_flags(manifest: Mapping[str, Any]) -> list[Flag]:
    """The flags a run recorded in its manifest at its end (PPO's diagnosis), exactly as written there."""
    return [
        {"code": str(f["code"]), "message": str(f["message"])}
        for f in manifest.get(MANIFEST_FLAGS) or []
        if isinstance(f, Mapping) and "code" in f and "message" in f
    ]


def run_flags(
    method: str, manifest: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], loss_types: Sequence[str] = ("sigmoid",)
) -> list[Flag]:
    """Every training-health flag of one run: those it recorded itself, then those its metrics.jsonl supports."""
    return [*manifest_flags(manifest), *training_flags(method, lines, loss_types)]


# ----------------------------------------------------------------------------------------------
# PPO's end-of-run diagnosis, from its per-update history (one dict of metrics per update)
#
# Sequence KL alone is not a finding: reaching a high reward from a near-uniform (e.g. random tiny)
# model needs a large KL (benchmarks/ppo_vs_grpo.py: >= ~18 nats for vowel share 0.94; TRL GRPO ends
# at 40-75), so a fixed KL limit flags every run that learned. KL is reported when it comes with a sign
# that it bought nothing (no reward gain) or bought a degenerate policy (entropy, length or finished
# share collapsing), each with the knob to turn.

PPO_SCORES, PPO_KL, PPO_ENTROPY = "train/objective/scores", "train/objective/kl", "train/policy/entropy"
PPO_EV, PPO_FINISHED, PPO_LENGTH = "train/val/explained_variance", "train/finished_share", "train/response_length"
PPO_HISTORY_KEYS = (PPO_SCORES, PPO_KL, PPO_ENTROPY, PPO_EV, PPO_FINISHED, PPO_LENGTH)


def _window_mean(rows: Sequence[Mapping[str, float]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if key in r]
    return sum(values) / len(values) if values else None


def _window_var(rows: Sequence[Mapping[str, float]], key: str) -> float:
    values = [float(r[key]) for r in rows if key in r]
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def reward_gain(first: Sequence[Mapping[str, float]], last: Sequence[Mapping[str, float]]) -> tuple[float, float]:
    """(mean score of the last window - of the first, its standard error from the update-to-update spread)."""
    s0, s1 = _window_mean(first, PPO_SCORES), _window_mean(last, PPO_SCORES)
    if s0 is None or s1 is None:
        return 0.0, 0.0
    se = math.sqrt(_window_var(first, PPO_SCORES) / len(first) + _window_var(last, PPO_SCORES) / len(last))
    return s1 - s0, se


def value_not_learning(after_warmup: Sequence[Mapping[str, float]]) -> Flag | None:
    """Explained variance below 0 at the end (after critic warm-up): the advantages are noise."""
    ev = _window_mean(after_warmup, PPO_EV)
    if ev is None or ev >= 0:
        return None
    return flag("value_not_learning", ev=ev)


def finished_collapse(first: Sequence[Mapping[str, float]], last: Sequence[Mapping[str, float]]) -> Flag | None:
    """The share of responses that end on their own fell below half its start: the policy runs to the length cap."""
    f0, f1 = _window_mean(first, PPO_FINISHED), _window_mean(last, PPO_FINISHED)
    if f0 is None or f1 is None or f0 < 0.2 or f1 >= 0.5 * f0:
        return None
    return flag("finished_collapse", start=f0, end=f1)


def _short_collapse(last: Sequence[Mapping[str, float]], cap: float | None) -> bool:
    """Final responses at most a quarter of the length cap (or 4 tokens when the cap is unknown): a clear collapse."""
    l1 = _window_mean(last, PPO_LENGTH)
    return l1 is not None and l1 <= (0.25 * cap if cap else 4.0)


def short_responses(
    first: Sequence[Mapping[str, float]], last: Sequence[Mapping[str, float]], cap: float | None = None
) -> Flag | None:
    """Responses shrank below half their starting length while nearly all of them end on their own: stopping early pays.

    Only when responses were already ending on their own at the start (finished share >= 0.5), or they end at a
    quarter of the cap `cap` or less: a policy that starts out running to the cap and learns to stop at a
    reasonable length is healthy, not short.
    """
    l0, l1 = _window_mean(first, PPO_LENGTH), _window_mean(last, PPO_LENGTH)
    f0, f1 = _window_mean(first, PPO_FINISHED), _window_mean(last, PPO_FINISHED)
    if l0 is None or l1 is None or f0 is None or f1 is None or l1 >= 0.5 * l0 or f1 < 0.9:
        return None
    if f0 < 0.5 and not _short_collapse(last, cap):
        return None
    return flag("short_responses", start=l0, end=l1, finished=f1)


def entropy_collapse(first: Sequence[Mapping[str, float]], last: Sequence[Mapping[str, float]]) -> Flag | None:
    """Reward rose while the policy's entropy fell below a quarter of its start: likely reward hacking or a degenerate policy."""
    s0, s1 = _window_mean(first, PPO_SCORES), _window_mean(last, PPO_SCORES)
    e0, e1 = _window_mean(first, PPO_ENTROPY), _window_mean(last, PPO_ENTROPY)
    if None in (s0, s1, e0, e1) or not s1 > s0 or not e0 > 0 or e1 >= 0.25 * e0:  # type: ignore[operator]
        return None
    return flag("entropy_collapse", start=e0, end=e1)


def kl_finding(
    last: Sequence[Mapping[str, float]], gain: tuple[float, float] | None, degenerate: Sequence[Flag], kl_limit: float
) -> Flag | None:
    """A final sequence KL above `kl_limit` that bought no reward gain (within 2 standard errors), or came with a
    degeneration flag; a high KL that bought a clear gain with a healthy policy is what learning costs.
    `gain` None: too few updates for a noise estimate, so no kl_without_gain."""
    kl = _window_mean(last, PPO_KL)
    if kl is None or kl <= kl_limit:
        return None
    if degenerate:
        return flag("kl_high", kl=kl, limit=kl_limit, codes=", ".join(f["code"] for f in degenerate))
    if gain is None:
        return None
    delta, se = gain
    if delta <= 2 * se:
        return flag("kl_without_gain", kl=kl, limit=kl_limit, delta=delta, se=se)
    return None


MIN_NOISE_WINDOW = 3  # updates per window below which the update-to-update spread is no noise estimate


def ppo_diagnosis(
    history: Sequence[Mapping[str, float]], warmup: int, kl_limit: float, max_new_tokens: int | None = None
) -> list[Flag]:
    """Short end-of-run findings from PPO's per-update metrics (first and last fifth compared, windows of at least
    3 updates once there are 6); [] under 4 updates. With 4-5 updates a reward gain has no noise estimate, so
    kl_without_gain is not judged. `max_new_tokens`: the length cap, for short_responses."""
    n = len(history)
    if n < 4:
        return []
    k = max(1, n // 5)
    if k < MIN_NOISE_WINDOW and n >= 2 * MIN_NOISE_WINDOW:
        k = MIN_NOISE_WINDOW
    first, last = history[:k], history[-k:]
    short = short_responses(first, last, max_new_tokens)
    degenerate = [f for f in (finished_collapse(first, last), short, entropy_collapse(first, last)) if f]
    # a response that merely got shorter is no degeneration to blame a high KL on; a collapse to a few tokens is
    blamed = [f for f in degenerate if f is not short or _short_collapse(last, max_new_tokens)]
    found = [value_not_learning(history[warmup:][-k:] or last), *degenerate]
    gain = reward_gain(first, last) if k >= MIN_NOISE_WINDOW else None
    found.append(kl_finding(last, gain, blamed, kl_limit))
    return [f for f in found if f is not None]
