"""GRPO and RLOO (TRL's online trainers) as workbench methods: sampling settings, batch, reward checks, real runs."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, edit_yaml, kill_when, run_ok, run_workbench, write_yaml
from test_train import read_metrics

from workbench.config import GenerationConfig, RewardModelConfig
from workbench.errors import WorkbenchError
from workbench.online import online_batch
from workbench.sampling.settings import trl_generation_fields
from workbench.scoring import checked_scores, reward_source


def online_recipe(tmp_path, model, name, method="grpo", **train):
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "reward_model": {"function": "workbench.data.synthetic:vowel_reward"},
        "data": {"sources": [{"synthetic": {"num_pairs": 48, "seed": 0}}], "eval_split": 0.0, "max_length": 48},
        "generation": {"max_new_tokens": 6},
        "train": {
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "beta": 0.04,
            "max_steps": 4,
            "logging_steps": 1,
            "save_steps": 2,
            **train,
        },
        "tracking": {"project": "wb-tests", "mode": "disabled"},
        "output_dir": str(tmp_path / name),
        "seed": 3,
    }
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


def reward_model_dir(tmp_path, tiny_model, mean=0.0, std=1.0):
    """A sequence-classification reward model on the tiny backbone, with the stats `normalize` reads."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.reward_mean, rm.config.reward_std = mean, std
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def use_reward_model(path, rm_dir):
    with edit_yaml(path) as recipe:
        recipe["reward_model"] = {"name_or_path": str(rm_dir), "normalize": True}


# ----------------------------------------------------------------------------------------------
# Pure parts


def test_generation_block_maps_to_trl_fields_and_a_conflict_is_refused():
    fields, problems = trl_generation_fields(GenerationConfig(max_new_tokens=16, num_samples=8), {})
    assert fields == {"num_generations": 8, "max_completion_length": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    assert problems == []
    # train: sets TRL's own name; the untouched generation default does not compete with it
    fields, problems = trl_generation_fields(GenerationConfig(), {"num_generations": 6})
    assert "num_generations" not in fields and problems == []
    # both set, and different: refused, naming both keys
    _, problems = trl_generation_fields(GenerationConfig(max_new_tokens=16), {"max_completion_length": 32})
    assert (
        len(problems) == 1
        and "`generation.max_new_tokens` (16)" in problems[0]
        and "`train.max_completion_length` (32)" in problems[0]
    )
    # both set to the same value: one setting, no problem
    assert trl_generation_fields(GenerationConfig(max_new_tokens=32), {"max_completion_length": 32})[1] == []
    assert "temperature must be > 0" in trl_generation_fields(GenerationConfig(temperature=0.0, num_samples=1), {})[1][0]


def test_completions_per_step_and_whole_groups():
    batch = online_batch({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "num_generations": 4}, {}, 2)
    assert batch.completions_per_step == 32  # 8 x 2 x 2
    assert batch.generation_batch == 32 and batch.prompts_per_generation == 8 and batch.problems() == []
    assert "= 32 completions per optimizer step" in batch.describe() and "8 prompts x 4 generations" in batch.describe()
    odd = online_batch({"per_device_train_batch_size": 4, "num_generations": 3}, {"gradient_accumulation_steps": 1}, 2)
    assert "8 completions per generation round are not whole groups of num_generations=3" in odd.problems()[0]
    assert "at least 2" in online_batch({"per_device_train_batch_size": 4, "num_generations": 1}, {}, 1).problems()[0]


BAD_REWARDS = """
def raises(prompts, completions, **kw):
    raise KeyError("score")

def short(prompts, completions, **kw):
    return [1.0] * (len(completions) - 1)

def text(prompts, completions, **kw):
    return [0.5] + ["high"] * (len(completions) - 1)

def none(prompts, completions, **kw):
    return [0.1, 0.2, None]

def nan(prompts, completions, **kw):
    return [0.0, 0.0, float("nan")]

def scalar(prompts, completions, **kw):
    return 1.0
"""


@pytest.mark.parametrize(
    "name,message",
    [
        ("raises", "raised KeyError on a batch of 3 completions: 'score'"),
        ("short", "returned 2 scores for 3 completions"),
        ("text", "returned a non-number for completion 1 (str 'high')"),
        ("none", "returned a non-number for completion 2 (NoneType None)"),
        ("nan", "returned a non-finite score for completion 2 (nan)"),
        ("scalar", "returned float 1.0, expected a list of 3 numbers"),
    ],
)
def test_one_check_of_reward_function_output_names_the_function_and_first_bad_index(tmp_path, name, message):
    """The check every online method (RS, PPO, GRPO, RLOO) gets through `reward_source`."""
    module = tmp_path / "bad_rewards.py"
    module.write_text(BAD_REWARDS)
    spec = f"{module}:{name}"
    with pytest.raises(WorkbenchError) as info:
        reward_source(RewardModelConfig(function=spec), 64)(["p"] * 3, ["a", "b", "c"])
    text = str(info.value)
    assert text.startswith(f"reward source {spec} ") and message in text and "\n" not in text


def test_numpy_and_tensor_scores_are_accepted():
    import numpy as np
    import torch

    assert checked_scores("f", np.array([1.0, 2.5]), 2) == [1.0, 2.5]
    assert checked_scores("f", torch.tensor([0.5, -1.0]), 2) == [0.5, -1.0]
    with pytest.raises(WorkbenchError, match="non-number for completion 0"):
        checked_scores("f", [True, 1.0], 2)


# ----------------------------------------------------------------------------------------------
# Real runs on the tiny model


@pytest.mark.slow
def test_grpo_trains_logs_exports_and_resumes(tmp_path, tiny_model):
    path = online_recipe(tmp_path, tiny_model, "grpo", max_steps=4)
    run = tmp_path / "grpo"
    kill_when(["train", str(path)], run / "checkpoints" / "checkpoint-2" / ".complete")  # kill -9 once step 2 is saved
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"
    run_ok(["train", str(path), "--resume"])  # continues from step 2
    metrics = [m for m in read_metrics(run) if "train/loss" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for key in ("train/reward", "train/kl", "train/completions/mean_length", "train/clip_ratio/region_mean", "train/entropy"):
        assert all(math.isfinite(m[key]) for m in metrics), key
    assert all(math.isfinite(m["train/loss"]) for m in metrics)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"]
    assert manifest["reference"].startswith("frozen copy of")
    # generation counted: steps 3-4 after the resume, 8 completions each
    expected = round(sum(m["train/completions/mean_length"] * 8 for m in metrics[2:]))
    assert manifest["cost"]["generated_tokens"] == expected > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert all(p.isfinite().all() for p in model.parameters())


@pytest.mark.slow
def test_rloo_scores_with_a_normalized_reward_model_directory(tmp_path, tiny_model):
    """The reward is the trained reward model through scoring.py: normalized by the mean/std stored in it."""
    path = online_recipe(tmp_path, tiny_model, "rloo", method="rloo", max_steps=2, save_steps=100)
    use_reward_model(path, reward_model_dir(tmp_path, tiny_model, mean=100.0, std=1e-3))  # normalized: hugely negative
    run_ok(["train", str(path)])
    metrics = [m for m in read_metrics(tmp_path / "rloo") if "train/reward" in m]
    assert len(metrics) == 2 and all(m["train/reward"] < -5e4 for m in metrics)  # (raw - 100) / 1e-3
    assert json.loads((tmp_path / "rloo" / "manifest.json").read_text())["export_check"]["ok"]


@pytest.mark.slow
def test_a_bad_reward_function_stops_grpo_with_one_sentence(tmp_path, tiny_model):
    module = tmp_path / "bad_rewards.py"
    module.write_text(BAD_REWARDS)
    path = online_recipe(tmp_path, tiny_model, "bad", max_steps=1)
    res = run_workbench(["train", str(path), "--set", f"reward_model.function={module}:text"])
    assert res.returncode != 0
    assert f"reward source {module}:text returned a non-number for completion 1 (str 'high'); return floats" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_knows_the_online_methods(tmp_path, tiny_model):
    from workbench.validate import validate

    path = online_recipe(tmp_path, tiny_model, "v")
    report, problems = validate(str(path), [], str(REPO / "accelerate_configs" / "cpu_ddp.yaml"))
    assert problems == []
    assert "8 (completions per device) x 1 (accumulation) x 2 (processes) = 16 completions per optimizer step" in report
    assert "max_completion_length=6" in report and "num_generations=4" in report
    _, problems = validate(
        str(path),
        ["train.num_generations=3", "generation.num_samples=5", "train.loss_type=ppo", "train.num_generation=2"],
        str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
    )
    text = "\n".join(problems)
    assert "unknown key `train.num_generation`; did you mean `num_generations`?" in text
    _, problems = validate(
        str(path),
        ["train.num_generations=3", "generation.num_samples=5", "train.loss_type=ppo"],
        str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
    )
    text = "\n".join(problems)
    assert "`generation.num_samples` (5) and `train.num_generations` (3)" in text
    assert "`train.loss_type` must be one of grpo, dr_grpo, dapo" in text and "got 'ppo'" in text
    assert "16 completions per generation round are not whole groups of num_generations=3" in text
    _, problems = validate(str(path), ["method=rloo", "reward_model=null"], None)
    assert any("`reward_model` needs exactly one of" in p and "rloo" in p for p in problems)


def test_validate_counts_the_processes_of_the_launch_for_whole_groups(tmp_path, tiny_model):
    """2 completions per device and 4 per prompt: one process cannot form a group (one sentence, naming the
    recipe's 4, not TRL's default 8), two processes can (TRL's own check, built in validate's one process,
    refused it); the eval batch likewise (2 per device x 2 processes = one group of 4)."""
    from workbench.validate import validate

    path = online_recipe(tmp_path, tiny_model, "v", per_device_train_batch_size=2)
    _, problems = validate(str(path), [], None)
    assert problems == [
        "2 completions per generation round are not whole groups of num_generations=4; make "
        "per_device_train_batch_size x gradient_accumulation_steps x processes a multiple of it"
    ]
    ddp = str(REPO / "accelerate_configs" / "cpu_ddp.yaml")
    assert validate(str(path), [], ddp)[1] == []
    evals = ["data.eval_split=0.5", "train.eval_strategy=steps", "train.eval_steps=2", "train.per_device_eval_batch_size=2"]
    assert validate(str(path), evals, ddp)[1] == []
    assert any(
        "(2 x 1) must be a multiple of the generations per eval prompt (4)" in p for p in validate(str(path), evals, None)[1]
    )
