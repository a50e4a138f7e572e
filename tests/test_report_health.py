"""workbench.health: every flag on a constructed case that triggers it and one that does not."""

from __future__ import annotations

import math

import pytest

from workbench import health as H
from workbench.stats import Estimate


def est(mean: float, low: float, high: float) -> Estimate:
    return Estimate(mean, (high - low) / 4, low, high, 64, 256)


def test_length_cap():
    f = H.length_cap(0.01, max_new_tokens=16)
    assert f["code"] == "length_cap" and "1%" in f["message"] and "16-token" in f["message"]
    assert H.length_cap(0.5) is None and H.length_cap(0.97) is None and H.length_cap(None) is None


def test_kl_blowup_uses_the_configured_threshold():
    assert H.kl_blowup(25.0, 20.0)["code"] == "kl_blowup"
    assert H.kl_blowup(25.0, 30.0) is None and H.kl_blowup(0.0, 20.0) is None


def test_diversity_collapse_is_relative_to_the_baseline():
    assert H.diversity_collapse(0.2, 0.5)["code"] == "diversity_collapse"
    assert H.diversity_collapse(0.3, 0.5) is None and H.diversity_collapse(0.2, None) is None


def test_reward_hacking_needs_reward_up_and_gold_down():
    assert H.reward_hacking(est(0.5, 0.3, 0.7), est(-0.05, -0.1, 0.0))["code"] == "reward_hacking"
    assert H.reward_hacking(est(0.5, 0.3, 0.7), est(0.05, 0.01, 0.09)) is None  # both rise: fine
    assert H.reward_hacking(est(0.1, -0.1, 0.3), est(-0.05, -0.1, 0.0)) is None  # reward rise within noise
    assert H.reward_hacking(est(0.5, 0.3, 0.7), None) is None  # no gold scorer


def test_weak_reward_model():
    # 100 pairs: within noise of 0.5 means |acc - 0.5| <= 0.098
    assert H.weak_reward_model(0.55, 100, 0.5)["code"] == "weak_reward_model"
    length_only = H.weak_reward_model(0.7, 100, 0.75)
    assert length_only["code"] == "reward_model_length_only" and "length-only rule's 0.750" in length_only["message"]
    assert H.weak_reward_model(0.8, 100, 0.6) is None and H.weak_reward_model(None, 0, None) is None


def lines(key: str, values: list[float]) -> list[dict]:
    return [{"step": i + 1, key: v} for i, v in enumerate(values)]


def test_dpo_stuck_at_ln2():
    stuck = H.training_flags("dpo", lines("train/loss", [0.6932, 0.6931, 0.6930, 0.6931]))
    assert [f["code"] for f in stuck] == ["dpo_stuck"]
    assert H.training_flags("dpo", lines("train/loss", [0.69, 0.5, 0.3, 0.2])) == []
    # an RPO-style loss (sigmoid + sft) is not judged against ln 2
    assert H.training_flags("dpo", lines("train/loss", [0.6931] * 4), loss_types=["sigmoid", "sft"]) == []
    assert abs(H.LN2 - math.log(2)) < 1e-12


def test_chosen_logps_falling_while_margins_grow():
    falling = [{"step": i, "train/logps/chosen": -10.0 - 2 * i, "train/rewards/margins": 0.5 * i} for i in range(8)]
    # head (first 2) mean -11, tail (last 2) mean -23: a 12-nat drop; margins 0.25 -> 3.25
    assert [f["code"] for f in H.training_flags("dpo", falling, ["ipo"])] == ["chosen_logps_falling"]
    rising = [{"step": i, "train/logps/chosen": -10.0 + 0.1 * i, "train/rewards/margins": 0.5 * i} for i in range(8)]
    assert H.training_flags("dpo", rising, ["ipo"]) == []
    shrinking = [{"step": i, "train/logps/chosen": -10.0 - 2 * i, "train/rewards/margins": -0.5 * i} for i in range(8)]
    assert H.training_flags("dpo", shrinking, ["ipo"]) == []


def test_ppo_flags_are_those_of_its_manifest_as_written():
    """PPO judges its run at its end (ppo_diagnosis, written to the manifest); the report had a second explained-variance
    check on metrics.jsonl with other numbers and advice. Now the manifest's flags are the only ones, word for word."""
    negative_ev = lines("train/val/explained_variance", [0.2, 0.1, -0.3, -0.5])
    assert H.training_flags("ppo", negative_ev) == []
    written = [H.flag("value_not_learning", ev=-0.4), H.flag("entropy_collapse", start=6.0, end=0.5)]
    assert H.run_flags("ppo", {"status": "completed", H.MANIFEST_FLAGS: written}, negative_ev) == written
    assert written[0]["message"].startswith("explained variance ends at -0.40 (< 0)")
    assert H.run_flags("ppo", {}, negative_ev) == [] and H.training_flags("sft", lines("train/loss", [0.6931] * 4)) == []
    stuck = lines("train/loss", [0.6931] * 4)  # a DPO run: its log's flags after those of its manifest
    assert [f["code"] for f in H.run_flags("dpo", {H.MANIFEST_FLAGS: written[:1]}, stuck)] == ["value_not_learning", "dpo_stuck"]


def test_every_flag_message_is_its_template_filled_in():
    """One wording per code: a check's message is FLAGS[code] with its numbers, whoever shows it."""
    f = H.ppo_diagnosis([{H.PPO_EV: -1.0, H.PPO_SCORES: 0.5}] * 5, 0, 10.0)[0]
    assert f == {"code": "value_not_learning", "message": H.FLAGS["value_not_learning"].format(ev=-1.0)}
    assert H.weak_reward_model(0.55, 100, 0.5)["message"] == H.FLAGS["weak_reward_model"].format(
        accuracy=0.55, num_pairs=100, half=0.098
    )
    with pytest.raises(KeyError):
        H.flag("not_a_flag")


# PPO's end-of-run diagnosis on hand-built per-update histories (first and last fifth compared)


def history(n=20, **trend):
    """n per-update rows of a healthy run that learned (reward 0.4 -> 0.9, KL 0 -> 40 nats); each key in `trend`
    moves linearly from its (start, end) instead."""
    base = {
        H.PPO_SCORES: (0.4, 0.9),
        H.PPO_KL: (0.0, 40.0),
        H.PPO_ENTROPY: (6.0, 3.0),
        H.PPO_EV: (0.0, 0.5),
        H.PPO_FINISHED: (0.4, 0.4),
        H.PPO_LENGTH: (12.0, 12.0),
        **{getattr(H, k): v for k, v in trend.items()},
    }
    return [{k: a + (b - a) * i / (n - 1) for k, (a, b) in base.items()} for i in range(n)]


def codes(h, warmup=0, kl_limit=10.0, cap=None):
    return [f["code"] for f in H.ppo_diagnosis(h, warmup, kl_limit, cap)]


def test_ppo_diagnosis_leaves_a_high_kl_that_bought_a_clear_gain_alone():
    assert codes(history()) == []  # KL 40 > 10, but the reward rose well beyond noise with a healthy policy
    assert codes(history(3, PPO_KL=(0.0, 100.0), PPO_SCORES=(0.4, 0.4))) == []  # too short to judge


def test_ppo_diagnosis_kl_without_gain():
    assert codes(history(PPO_SCORES=(0.4, 0.4))) == ["kl_without_gain"]
    assert codes(history(PPO_SCORES=(0.4, 0.4), PPO_KL=(0.0, 8.0))) == []  # under the limit: nothing to say
    # a noisy reward: 0.3 / 0.5 alternating, the last fifth 0.02 higher: gain 0.02 against a standard error of
    # sqrt(2 x var / 4) with var = 4 x 0.1^2 / 3 (sample variance of each window of 4): 0.0816
    noisy = history(PPO_SCORES=(0.4, 0.4))
    for i, row in enumerate(noisy):
        row[H.PPO_SCORES] = (0.5 if i % 2 else 0.3) + (0.02 if i >= 16 else 0.0)
    gain, se = H.reward_gain(noisy[:4], noisy[-4:])
    assert gain == pytest.approx(0.02) and se == pytest.approx(math.sqrt(2 * (0.04 / 3) / 4))
    assert codes(noisy) == ["kl_without_gain"]


def test_ppo_diagnosis_value_not_learning_counts_after_warmup():
    assert codes(history(PPO_EV=(0.0, -2.0))) == ["value_not_learning"]
    h = history(PPO_EV=(-3.0, 0.5))
    assert codes(h, warmup=0) == [] and codes(history(PPO_EV=(0.5, -3.0)), warmup=19) == ["value_not_learning"]


def test_ppo_diagnosis_finished_collapse_with_the_kl_it_came_with():
    assert codes(history(PPO_FINISHED=(0.6, 0.0))) == ["finished_collapse", "kl_high"]
    assert codes(history(PPO_FINISHED=(0.6, 0.0), PPO_KL=(0.0, 5.0))) == ["finished_collapse"]
    assert codes(history(PPO_FINISHED=(0.1, 0.0))) == []  # never ended on their own: nothing collapsed


def test_ppo_diagnosis_short_responses():
    """The first_half route: responses that ran to the 16-token cap shrink to a few tokens that all end on their own."""
    short = history(PPO_LENGTH=(16.0, 2.0), PPO_FINISHED=(0.0, 1.0), PPO_ENTROPY=(6.7, 2.0))
    assert codes(short, cap=16) == ["short_responses", "kl_high"]
    assert codes(short) == ["short_responses", "kl_high"]  # cap unknown: a final 3.1 tokens is under the 4-token floor
    flags = H.ppo_diagnosis(short, 0, 10.0, 16)
    # windows of 4 of a line from 16 to 2 over 20 updates: means 14.89 and 3.11 tokens, finished 0.92 at the end
    assert "14.9 to 3.1 tokens and 92% end" in flags[0]["message"] and "short_responses" in flags[1]["message"]
    assert codes(history(PPO_LENGTH=(16.0, 2.0), PPO_FINISHED=(0.0, 0.7)), cap=16) == []  # shorter, but not ending early
    assert codes(history(PPO_LENGTH=(16.0, 9.0), PPO_FINISHED=(0.0, 1.0)), cap=16) == []  # ending, but not collapsed


def test_a_policy_that_learns_to_stop_before_the_cap_is_healthy():
    """Starts running to the 64-token cap (finished 0.05), learns to stop at ~20 tokens (finished 1.0) while the reward
    rises: no short_responses, and so no kl_high for its KL of 40 that bought a clear gain."""
    learned_to_stop = history(PPO_LENGTH=(64.0, 20.0), PPO_FINISHED=(0.05, 1.0))
    assert codes(learned_to_stop, cap=64) == [] and codes(learned_to_stop) == []


def test_shorter_responses_alone_do_not_make_a_high_kl_degenerate():
    """Responses that already ended on their own halve (40 -> 17 of a 64 cap, windows 38.2 -> 18.8): reported, but a KL
    that bought a clear gain is not blamed on it; a collapse to a quarter of the cap (16) or less is."""
    halved = history(PPO_LENGTH=(40.0, 17.0), PPO_FINISHED=(0.9, 1.0))
    assert codes(halved, cap=64) == ["short_responses"]
    collapsed = history(PPO_LENGTH=(40.0, 3.0), PPO_FINISHED=(0.9, 1.0))
    assert codes(collapsed, cap=64) == ["short_responses", "kl_high"]


def test_few_updates_give_no_noise_free_gain():
    """With 6-14 updates the windows hold 3 updates, so a reward that only alternates (0.3 / 0.5) is within its noise;
    with 4-5 updates there is no noise estimate and kl_without_gain is not judged at all."""
    noisy = history(8, PPO_SCORES=(0.4, 0.4))
    for i, row in enumerate(noisy):
        row[H.PPO_SCORES] = 0.3 if i % 2 == 0 else 0.5  # first window 0.3 0.5 0.3, last 0.5 0.3 0.5
    gain, se = H.reward_gain(noisy[:3], noisy[-3:])
    assert gain == pytest.approx(0.2 / 3) and se == pytest.approx(math.sqrt(2 * (0.04 / 3) / 3))
    assert codes(noisy) == ["kl_without_gain"]  # windows of 1 (0.3 vs 0.5) read this as a clear gain
    assert codes(history(5, PPO_SCORES=(0.4, 0.4))) == []  # windows of 1, se 0: a flat reward cannot be judged
    assert codes(history(5, PPO_SCORES=(0.4, 0.4), PPO_ENTROPY=(6.0, 0.5))) == []  # nor a dip read as no gain


def test_ppo_diagnosis_entropy_collapse_needs_the_reward_to_rise():
    assert codes(history(PPO_ENTROPY=(6.0, 0.5))) == ["entropy_collapse", "kl_high"]
    # the reward fell: no hacking to report, but the KL spent on nothing is
    assert codes(history(PPO_ENTROPY=(6.0, 0.5), PPO_SCORES=(0.4, 0.3))) == ["kl_without_gain"]
    assert codes(history(PPO_ENTROPY=(6.0, 2.0))) == []  # a third of its start: sharper, not collapsed


def test_no_change_needs_every_difference_exactly_zero_kl_included():
    zero = Estimate(0.0, 0.0, 0.0, 0.0, 4, 8)
    f = H.no_change({"reward": zero, "KL": zero, "length": None}, "sft")
    assert f["code"] == "no_change" and "from `sft` is exactly 0 (reward, KL)" in f["message"]
    assert H.no_change({"reward": zero, "KL": est(0.001, -0.001, 0.003)}, "sft") is None  # it moved a little
    assert H.no_change({"reward": zero}, "sft") is None  # without KL, equal scores are no proof of the same policy


def test_budget_mismatch_over_twice():
    f = H.budget_mismatch({"dpo": 3000.0, "ppo": 23000.0, "kto": 4000.0, "rs": None}, "tokens")
    assert f["code"] == "budget_mismatch" and "tokens from 3,000 (`dpo`) to 23,000 (`ppo`), 7.7×" in f["message"]
    assert H.budget_mismatch({"dpo": 3000.0, "kto": 6000.0}, "tokens") is None  # exactly 2x: not over
    assert H.budget_mismatch({"dpo": 3000.0, "rs": 0.0}, "tokens") is None  # nothing recorded to compare with


def test_eval_shortfalls():
    flags = H.eval_shortfalls({"num_prompts": 16, "num_pairs": 256}, {"num_prompts": 8, "num_pairs": 256})
    assert [f["message"][:45] for f in flags] == ["`eval.num_prompts` asks for 16 but the data's"]
    assert "gives only 8: the evaluation uses 8" in flags[0]["message"]
    assert H.eval_shortfalls({"num_prompts": 16, "num_pairs": 256}, {"num_prompts": 16, "num_pairs": 0}) == []  # no pairs
