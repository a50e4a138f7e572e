"""DPO: loss types by name (step-1 values by hand), cached reference log-probs, kill-and-resume."""

from __future__ import annotations

import json
import math

import pytest
from conftest import kill_when, quiet_recipe, run_ok
from test_train import read_metrics

pytestmark = pytest.mark.slow


def train_losses(run) -> list[float]:
    return [m["train/loss"] for m in read_metrics(run) if "train/loss" in m]


@pytest.mark.parametrize(
    "loss_type,expected",
    [
        # policy == reference at step 1, so every pair's log-ratio difference d is 0:
        ("hinge", 1.0),  # relu(1 - beta * 0) = 1
        ("ipo", 25.0),  # (0 - 1 / (2 * beta))^2 with beta = 0.1 -> 5^2 = 25
    ],
)
def test_loss_type_is_selected_by_name(tmp_path, tiny_model, loss_type, expected):
    path = quiet_recipe(tmp_path, tiny_model, loss_type, loss_type=[loss_type], beta=0.1, max_steps=1)
    run_ok(["train", str(path)])
    assert train_losses(tmp_path / loss_type)[0] == pytest.approx(expected, rel=1e-5)


def test_cached_reference_log_probs_are_reused_across_a_beta_sweep(tmp_path, tiny_model):
    env = {"WORKBENCH_CACHE": str(tmp_path / "cache")}
    first = quiet_recipe(tmp_path, tiny_model, "first", beta=0.1, max_steps=3)
    second = quiet_recipe(tmp_path, tiny_model, "second", beta=0.3, max_steps=3)
    uncached = quiet_recipe(tmp_path, tiny_model, "uncached", beta=0.3, max_steps=3)
    for path in (first, second):
        run_ok(["train", str(path), "--set", "reference.precompute_log_probs=true"], env=env)
    run_ok(["train", str(uncached)], env=env)
    manifest = {n: json.loads((tmp_path / n / "manifest.json").read_text()) for n in ("first", "second", "uncached")}
    assert manifest["first"]["reference_forward_batches_before_training"] > 0
    assert manifest["second"]["reference_forward_batches_before_training"] == 0  # read from the cache
    assert manifest["second"]["reference"] == "precomputed log-probs of the initial policy"
    assert train_losses(tmp_path / "second") == pytest.approx(train_losses(tmp_path / "uncached"), abs=1e-5)
    assert train_losses(tmp_path / "first")[0] == pytest.approx(math.log(2), abs=1e-5)


def test_killed_run_resumes_to_the_same_end(tmp_path, tiny_model):
    from safetensors.torch import load_file

    common = {"max_steps": 8, "save_steps": 2, "logging_steps": 1}
    straight = quiet_recipe(tmp_path, tiny_model, "straight", **common)
    run_ok(["train", str(straight)])

    killed = quiet_recipe(tmp_path, tiny_model, "killed", **common)
    run = tmp_path / "killed"
    kill_when(["train", str(killed)], run / "checkpoints" / "checkpoint-4" / ".complete")
    assert (run / "checkpoints" / "checkpoint-4" / ".complete").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # killed, never finished

    run_ok(["train", str(killed), "--resume"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed_from_step"] >= 4
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == list(range(1, 9))
    assert train_losses(run) == pytest.approx(train_losses(tmp_path / "straight"), abs=1e-6)
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
