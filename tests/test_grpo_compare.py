"""A comparison with GRPO and KTO stages gives them policy rows with the metrics every policy gets (RLOO shares
GRPO's code path, `methods/trl_online.py`, and is run in test_grpo.py and the distributed tests)."""

from __future__ import annotations

import json

import pytest
from conftest import read_yaml, run_ok, write_yaml

pytestmark = pytest.mark.slow

SMALL = {"max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 100, "learning_rate": 1e-3}


def test_comparison_rows_for_grpo_and_kto(tmp_path, tiny_model):
    comparison = {
        "name": "mini",
        "output_dir": str(tmp_path / "mini"),
        "seeds": [1],
        "baseline_stage": "kto",
        "reward_stage": "reward",
        "base": {
            "model": {"name_or_path": str(tiny_model), "dtype": "float32"},
            "data": {
                "sources": [{"synthetic": {"num_pairs": 96, "seed": 0}}],
                "eval_split": 0.25,
                "split_by": "prompt",
                "max_length": 48,
            },
            "generation": {"max_new_tokens": 6},
            "tracking": {"mode": "disabled"},
        },
        "eval": {
            "num_prompts": 6,
            "num_pairs": 8,
            "generation": {"max_new_tokens": 6},
            "gold_reward": {"function": "workbench.data.synthetic:vowel_reward"},
        },
        "stages": {
            "reward": {"method": "reward", "train": SMALL},
            "kto": {"method": "kto", "train": SMALL},
            "grpo": {"method": "grpo", "train": {**SMALL, "num_generations": 4}},  # reward: the reward stage
        },
    }
    path = tmp_path / "mini.yaml"
    write_yaml(path, comparison, sort_keys=False)  # stages run in order: reward first
    run_ok(["compare", str(path)], timeout=1200)
    out = tmp_path / "mini"
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert sorted(rows) == ["grpo", "kto"] and all(r["status"] == "ok" for r in rows.values())
    # the baseline's row has every metric but the length-controlled win rate (against itself it is undefined)
    lc = {"lc_win_rate_vs_baseline", "lc_win_rate_vs_baseline_low", "lc_win_rate_vs_baseline_high", "length_control"}
    keys = set(rows["kto"])
    assert not keys & lc
    for name in ("grpo",):
        assert set(rows[name]) == keys | lc
        for metric in ("reward_mean", "gold_reward_mean", "win_rate_vs_baseline", "kl_to_reference", "preference_accuracy"):
            assert isinstance(rows[name][metric], float), (name, metric)
        assert rows[name]["generated_tokens"] > 0 and rows[name]["train_tokens"] > 0
    # the online stages were scored by the reward stage's model, normalized by its stored statistics
    recipe = read_yaml(out / "seed-1" / "grpo" / "recipe.yaml")
    assert (
        recipe["reward_model"]["name_or_path"] == str(out / "seed-1" / "reward" / "model") and recipe["reward_model"]["normalize"]
    )
    csv_names = [line.split(",")[0] for line in (out / "results.csv").read_text().splitlines()[1:]]
    assert sorted(csv_names) == ["grpo", "kto"]
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in ("grpo", "kto"))
