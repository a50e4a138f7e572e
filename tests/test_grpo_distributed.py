"""GRPO, RLOO and KTO in 2 real CPU processes (gloo), one method per shipped config: DDP, ZeRO-2, ZeRO-3.

The ZeRO-3 run scores with a reward-model directory: the reward model must be a full frozen copy on
each process (not partitioned by ZeRO-3's init), or scoring fails or scores garbage.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, edit_yaml, run_workbench
from test_grpo import online_recipe, reward_model_dir, use_reward_model
from test_train import read_metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def kto_pairs_recipe(tmp_path, model):
    path = online_recipe(tmp_path, model, "kto", max_steps=2)
    with edit_yaml(path) as recipe:
        recipe.update(method="kto", generation={})
        recipe.pop("reward_model")
        recipe["train"] = {
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "max_steps": 2,
            "logging_steps": 1,
            "save_steps": 100,
        }
    return path


@pytest.mark.parametrize("config,method", [("cpu_ddp", "rloo"), ("cpu_zero2", "kto"), ("cpu_zero3", "grpo")])
def test_two_processes_train_and_export(tmp_path, tiny_model, config, method):
    if method == "kto":
        path = kto_pairs_recipe(tmp_path, tiny_model)
    else:
        path = online_recipe(
            tmp_path, tiny_model, method, method=method, max_steps=2, save_steps=100, per_device_train_batch_size=4
        )
        if config == "cpu_zero3":
            use_reward_model(path, reward_model_dir(tmp_path, tiny_model, mean=0.0, std=1.0))
    res = run_workbench(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / f"{config}.yaml")])
    assert res.returncode == 0, res.stderr[-4000:]
    run = tmp_path / method
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"] and manifest["cost"]["processes"] == 2
    losses = [m["train/loss"] for m in read_metrics(run) if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if method != "kto":
        rewards = [m["train/reward"] for m in read_metrics(run) if "train/reward" in m]
        assert len(rewards) == 2 and all(math.isfinite(r) and r != 0.0 for r in rewards)
