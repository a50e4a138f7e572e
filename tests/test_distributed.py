"""Real 2-process runs through every shipped CPU accelerate config (gloo): DDP, ZeRO-2, ZeRO-3."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, run_workbench
from test_train import read_metrics, write_recipe

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CPU_CONFIGS = ("cpu_ddp", "cpu_zero2", "cpu_zero3")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("dist")
    out = {}
    for name in CPU_CONFIGS:
        path = write_recipe(tmp, tiny_model, name=name, train__max_steps=2, train__per_device_train_batch_size=4)
        res = run_workbench(
            [
                "launch",
                str(path),
                "--accelerate-config",
                str(REPO / "accelerate_configs" / f"{name}.yaml"),
                "--set",
                "tracking.mode=disabled",
            ]
        )
        assert res.returncode == 0, f"{name}:\n{res.stderr[-4000:]}"
        out[name] = tmp / name
    return out


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_two_processes_train_and_export(runs, name):
    run = runs[name]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 2
    losses = [m["train/loss"] for m in read_metrics(run) if "train/loss" in m]
    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert (run / "model" / "model.safetensors").is_file()


def test_same_losses_and_weights_whatever_the_distribution(runs):
    from transformers import AutoModelForCausalLM

    curves = {name: [m["train/loss"] for m in read_metrics(run) if "train/loss" in m] for name, run in runs.items()}
    for name in CPU_CONFIGS[1:]:
        assert curves[name] == pytest.approx(curves["cpu_ddp"], abs=2e-3), name
    ddp = AutoModelForCausalLM.from_pretrained(runs["cpu_ddp"] / "model")
    zero3 = AutoModelForCausalLM.from_pretrained(runs["cpu_zero3"] / "model")  # gathered from shards on save
    assert max((a - b).abs().max().item() for a, b in zip(ddp.parameters(), zero3.parameters())) < 1e-4
