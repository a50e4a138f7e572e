"""workbench.health: every flag on a constructed case that triggers it and one that does not."""

from __future__ import annotations

import math

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
    assert "length-only" in H.weak_reward_model(0.7, 100, 0.75)["message"]
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


def test_ppo_negative_explained_variance_under_either_key_name():
    for key in ("train/val/explained_variance", "train/value/explained_variance", "train/explained_variance"):
        bad = H.training_flags("ppo", lines(key, [0.2, 0.1, -0.3, -0.5]))
        assert [f["code"] for f in bad] == ["value_not_learning"], key
        assert H.training_flags("ppo", lines(key, [-0.5, 0.0, 0.3, 0.6])) == []
    assert H.training_flags("ppo", []) == [] and H.training_flags("sft", lines("train/loss", [0.6931] * 4)) == []
