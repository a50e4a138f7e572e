"""PPO end to end on CPU: the reward rises with finite KL (1 process, DDP, ZeRO-2), resume, export, guard rails."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, edit_yaml, kill_when, read_yaml, run_ok, run_workbench, shipped_recipe, write_yaml
from test_reward import reward_recipe
from test_train import read_metrics

pytestmark = pytest.mark.slow


def ppo_recipe(tmp_path, model, name, **train):
    recipe = shipped_recipe("ppo")
    recipe["model"]["name_or_path"] = str(model)
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(tmp_path / name)
    recipe["train"].update(train)
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


def scores(run) -> list[float]:
    return [m["train/objective/scores"] for m in read_metrics(run)]


def assert_learned(run):
    s = scores(run)
    assert len(s) == 30
    first, last = sum(s[:5]) / 5, sum(s[-5:]) / 5
    assert last > first + 0.04, (first, last)  # the vowel share of the responses clearly rises
    kls = [m["train/objective/kl"] for m in read_metrics(run)]
    assert all(k == k and abs(k) < 50 for k in kls)  # finite, bounded
    assert json.loads((run / "manifest.json").read_text())["export_check"]["ok"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("ppo")
    run_ok(["train", str(ppo_recipe(tmp, tiny_model, "single"))])
    return tmp / "single"


def test_ppo_raises_the_reward_single_process(single):
    assert_learned(single)
    keys = read_metrics(single)[0].keys()
    for key in (
        "train/loss",
        "train/objective/entropy",
        "train/objective/rlhf_reward",
        "train/policy/approxkl",
        "train/policy/clipfrac",
        "train/policy/entropy",
        "train/loss/policy",
        "train/loss/value",
        "train/val/clipfrac",
        "train/val/explained_variance",
        "train/response_length",
        "train/finished_share",
        "train/time/generate",
        "train/time/score",
        "train/time/learn",
        "train/generated_tokens_per_second",
        "train/learn_tokens_per_second",
    ):
        assert key in keys
    manifest = json.loads((single / "manifest.json").read_text())
    assert isinstance(manifest["diagnosis"], list)
    generation = json.loads((single / "generation_config.json").read_text())  # what sampling used, all of it
    assert generation["repetition_penalty"] == 1.0 and generation["top_k"] == 0 and generation["max_new_tokens"] == 12


def test_ppo_export_loads_as_a_policy_and_for_dpo(single, tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.config import load_recipe
    from workbench.validate import validate

    AutoModelForCausalLM.from_pretrained(single / "model")
    recipe = shipped_recipe("quickstart_dpo")
    recipe["model"]["name_or_path"] = str(single / "model")
    write_yaml(tmp_path / "dpo.yaml", recipe)
    assert load_recipe(tmp_path / "dpo.yaml").model.name_or_path == str(single / "model")
    _, problems = validate(str(tmp_path / "dpo.yaml"), [], None)
    assert problems == []


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["cpu_ddp", "cpu_zero2"])
def test_ppo_raises_the_reward_on_two_processes(tmp_path, tiny_model, config):
    # a linear decay halves the mean LR of the recipe's constant 1e-3, so the peak is doubled
    path = ppo_recipe(
        tmp_path,
        tiny_model,
        config,
        per_device_train_batch_size=16,
        warmup_steps=3,
        lr_scheduler_type="linear",
        learning_rate=2e-3,
    )
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / f"{config}.yaml")])
    assert json.loads((tmp_path / config / "manifest.json").read_text())["world_size"] == 2
    # one schedule for every launch: stepped once per optimizer step, warmup counted in updates, then a linear decay
    args = read_yaml(path)["train"]
    per_update = args["ppo_epochs"] * args["num_mini_batches"]
    warm, total, lr = 3 * per_update, 30 * per_update, args["learning_rate"]
    # the LR logged after update s, i.e. after k = s * per_update optimizer steps (by hand, not by transformers)
    expected = [lr * (k / warm if k < warm else (total - k) / (total - warm)) for k in (s * per_update for s in range(1, 31))]
    assert expected[0] == pytest.approx(lr / 3) and expected[14] == pytest.approx(lr * 30 / 54) and expected[-1] == 0.0
    assert [m["train/learning_rate"] for m in read_metrics(tmp_path / config)] == pytest.approx(expected, rel=1e-6)
    assert_learned(tmp_path / config)


def test_learn_time_counts_the_experience_pass_and_the_update(tiny_model):
    """train/time/learn is the whole learning phase: the no-grad policy/value/reference pass plus the clipped updates."""
    from ppo_fixed import fixed_rollouts, make_learner

    from workbench.sampling.logprobs import rollout_tensors

    learner, tokenizer = make_learner(tiny_model)
    prompts, responses, scores = fixed_rollouts()
    exp = learner.experience(rollout_tensors(prompts, responses, tokenizer.pad_token_id, learner.acc.device), scores, 0.05)
    exp.seconds = {"generate": 1.0, "score": 0.0, "learn": 1000.0}  # as the loop records it: the experience pass took 1000 s
    assert learner.update(1, exp, 0.05) is not None
    assert 1000.0 < exp.seconds["learn"] < 1000.0 + 600.0  # the update's own time is added, not a replacement


def run_fixed(tmp_path, tiny_model, out, config=None, *extra):
    import subprocess
    import sys

    cmd = [sys.executable, str(REPO / "tests" / "ppo_fixed.py"), str(tiny_model), str(out), *extra]
    if config:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "accelerate_configs" / f"{config}.yaml"),
            *cmd[1:],
        ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.distributed
def test_one_process_of_16_and_two_of_8_make_the_same_update(tmp_path, tiny_model):
    """Whitening, reward normalization and loss normalization use the whole global batch (per-process
    whitening moves the weights 4e-3 apart here)."""
    import torch

    run_fixed(tmp_path, tiny_model, tmp_path / "one.pt")
    run_fixed(tmp_path, tiny_model, tmp_path / "two.pt", "cpu_ddp")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert len(one["grads"]) == len(two["grads"]) == 2
    for a, b in zip(one["grads"], two["grads"]):
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert max(float((one["weights"][k] - two["weights"][k]).abs().max()) for k in one["weights"]) < 1e-5


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["cpu_ddp", "cpu_zero2", "cpu_zero3"])
def test_critic_warmup_leaves_the_actor_adam_state_fresh_on_two_processes(tmp_path, tiny_model, config):
    """One warm-up update, then one real one (one optimizer step each). ZeRO steps the actor's flat partition with
    zero gradients during warm-up (its Adam step count was 1 after the warm-up update, 2 after the real one): the
    actor must have no state after warm-up and be at Adam's step 1 after its first real update."""
    run_fixed(tmp_path, tiny_model, tmp_path / "x", config, "warmup")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"warmup-rank{rank}.json").read_text())
        assert set(result["after_1"]["actor"]) == {0} and set(result["after_1"]["critic"]) == {1}, result
        assert set(result["after_2"]["actor"]) == {1} and set(result["after_2"]["critic"]) == {2}, result


@pytest.mark.distributed
@pytest.mark.parametrize("config", ["cpu_ddp", "cpu_zero2"])
def test_a_nan_on_one_process_undoes_the_update_on_every_process(tmp_path, tiny_model, config):
    run_fixed(tmp_path, tiny_model, tmp_path / "x", config, "nan")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"nan-rank{rank}.json").read_text())
        assert result == {"skipped": True, "max_diff": 0.0}


def test_killed_ppo_resumes_to_the_same_end(tmp_path, tiny_model):
    from safetensors.torch import load_file

    common = {"max_steps": 6, "save_steps": 2, "per_device_train_batch_size": 8}
    straight = ppo_recipe(tmp_path, tiny_model, "straight", **common)
    run_ok(["train", str(straight)])
    killed = ppo_recipe(tmp_path, tiny_model, "killed", **common)
    run = tmp_path / "killed"
    kill_when(["train", str(killed)], run / "checkpoints" / "checkpoint-2" / ".complete")
    run_ok(["train", str(killed), "--resume"])
    assert json.loads((run / "manifest.json").read_text())["resumed_from_step"] >= 2
    assert [m["step"] for m in read_metrics(run)] == list(range(1, 7))
    assert scores(run) == pytest.approx(scores(tmp_path / "straight"), abs=1e-6)
    a, b = load_file(tmp_path / "straight" / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_resuming_a_checkpoint_of_the_other_value_model_says_how(tmp_path, tiny_model):
    """A run started when `value_model: auto` meant a separate critic (its recipe.yaml says auto, its ppo_state.json
    records no kind): resumed now that auto means the value head, one sentence names the fix, and the fix resumes."""
    common = {"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 8, "value_model": "separate"}
    path = ppo_recipe(tmp_path, tiny_model, "old", **common)
    run = tmp_path / "old"
    kill_when(["train", str(path)], run / "checkpoints" / "checkpoint-2" / ".complete")
    state_path = run / "checkpoints" / "checkpoint-2" / "ppo_state.json"
    state = json.loads(state_path.read_text())
    assert state["value_model"] == "separate"
    auto = ppo_recipe(tmp_path, tiny_model, "old", **{**common, "value_model": "auto"})
    for recorded in (True, False):  # recorded in ppo_state.json, then read from the checkpoint's key names
        if not recorded:  # as an older workbench wrote it; the completeness marker lists the file's new size
            state_path.write_text(json.dumps({k: v for k, v in state.items() if k != "value_model"}))
            marker = state_path.parent / ".complete"
            listed = json.loads(marker.read_text())
            listed["files"]["ppo_state.json"] = state_path.stat().st_size
            marker.write_text(json.dumps(listed))
        (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("value_model: separate", "value_model: auto"))
        res = run_workbench(["train", str(auto), "--resume"])
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert (
            "was trained with a separate critic but train.value_model now resolves to a value head on the policy's "
            "backbone; resume with --set train.value_model=separate --allow-changes train.value_model"
        ) in res.stderr
    run_ok(["train", str(auto), "--resume", "--set", "train.value_model=separate", "--allow-changes", "train.value_model"])
    assert [m["step"] for m in read_metrics(run)] == [1, 2, 3, 4]


def test_non_finite_updates_stop_the_run_and_no_nan_weights_are_saved(tmp_path, tiny_model):
    # a learning rate this large makes the first update's loss non-finite
    path = ppo_recipe(
        tmp_path, tiny_model, "nan", max_steps=6, per_device_train_batch_size=8, learning_rate=1e30, max_nonfinite_updates=2
    )
    res = run_workbench(["train", str(path)])
    assert res.returncode == 2, res.stderr[-3000:]
    assert "PPO stopped: 2 updates in a row had a non-finite" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "nan" / "model").exists() and not list((tmp_path / "nan").glob("checkpoints/checkpoint-*"))
    assert json.loads((tmp_path / "nan" / "manifest.json").read_text())["status"] == "failed"


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("rm")
    run_ok(["train", str(reward_recipe(tmp, tiny_model, "rm", max_steps=4))])
    return tmp / "rm" / "model"


@pytest.mark.distributed
def test_ppo_under_zero3_with_a_trained_reward_model(tmp_path, tiny_model, trained_rm):
    """The reward model (and the critic initialized from it) load whole under ZeRO-3 (used to crash in its first forward)."""
    path = ppo_recipe(
        tmp_path, tiny_model, "zero3", max_steps=3, per_device_train_batch_size=8, save_steps=0, value_init="reward"
    )
    with edit_yaml(path) as recipe:
        recipe["reward_model"] = {"name_or_path": str(trained_rm)}
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_zero3.yaml")])
    manifest = json.loads((tmp_path / "zero3" / "manifest.json").read_text())
    assert manifest["reference"].endswith("sharded by a DeepSpeed ZeRO-3 inference engine")
    assert manifest["value_model"] == f"separate critic initialized from {trained_rm}"
    assert (
        manifest["world_size"] == 2 and manifest["export_check"]["ok"] and manifest["export_check"]["max_abs_logit_diff"] <= 1e-4
    )
    metrics = read_metrics(tmp_path / "zero3")
    assert [m["step"] for m in metrics] == [1, 2, 3] and metrics[0]["train/objective/kl"] == pytest.approx(0.0, abs=1e-6)
    for m in metrics:  # the time split of every update is logged; the reward model really scored
        assert m["train/time/generate"] > 0 and m["train/time/learn"] > 0 and m["train/time/score"] > 0
    scores = [m["train/objective/scores"] for m in metrics]
    assert all(abs(s) < 1e3 for s in scores) and len(set(scores)) == 3


@pytest.mark.distributed
def test_critic_warmup_under_zero3_leaves_the_policy_bitwise_unchanged(tmp_path, tiny_model):
    """Even with the value loss allowed into the backbone, warm-up updates train only the value head; under ZeRO-3 the
    exported policy after two warm-up updates is the starting model bit for bit (update 2 has a non-zero head)."""
    import torch
    from safetensors.torch import load_file

    path = ppo_recipe(
        tmp_path,
        tiny_model,
        "z3warm",
        max_steps=2,
        critic_warmup_steps=2,
        value_head_trains_backbone=True,
        per_device_train_batch_size=8,
        save_steps=0,
    )
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_zero3.yaml")])
    start, end = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "z3warm" / "model" / "model.safetensors")
    common = set(start) & set(end)
    assert len(common) >= len(start) - 1 and all(torch.equal(start[k], end[k]) for k in common)


@pytest.mark.distributed
def test_ppo_under_zero3_with_the_default_value_head(tmp_path, tiny_model):
    """The default value head on the policy's backbone trains inside the ZeRO-3 engine; the manifest counts whole
    models, not this process's shards (it logged 0 and 0 under ZeRO-3)."""
    from transformers import AutoModelForCausalLM

    path = ppo_recipe(tmp_path, tiny_model, "z3head", max_steps=2, per_device_train_batch_size=8, save_steps=0)
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_zero3.yaml")])
    manifest = json.loads((tmp_path / "z3head" / "manifest.json").read_text())
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    hidden = policy.config.hidden_size
    assert manifest["value_model"] == "value head on the policy's backbone" and manifest["world_size"] == 2
    assert (manifest["policy_parameters"], manifest["value_parameters"]) == (policy.num_parameters(), hidden + 1)
    assert manifest["export_check"]["ok"]
    metrics = read_metrics(tmp_path / "z3head")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["train/loss/value"] > 0 for m in metrics)


def test_ppo_with_lora_uses_the_base_as_reference_and_saves_the_adapter(tmp_path, tiny_model):
    path = ppo_recipe(tmp_path, tiny_model, "lora", max_steps=3, per_device_train_batch_size=8, save_steps=0)
    with edit_yaml(path) as recipe:
        recipe["model"]["lora"] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    run_ok(["train", str(path)])
    run = tmp_path / "lora"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["reference"] == "policy base with adapters disabled" and manifest["export_check"]["ok"]
    # the critic is a value head on the policy's backbone, not a second backbone copy
    assert manifest["value_model"] == "value head on the policy's backbone" and manifest["value_parameters"] == 64 + 1
    kls = [m["train/objective/kl"] for m in read_metrics(run)]
    # adapters start as a no-op, then move away (k1, the default estimator, is unbiased but can be negative on a batch)
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and abs(kls[-1]) > 1e-4
    assert (run / "model" / "adapter_model.safetensors").is_file()


def test_adaptive_kl_eos_penalty_accumulation_and_checkpointing_in_the_loop(tmp_path, tiny_model):
    path = ppo_recipe(
        tmp_path,
        tiny_model,
        "knobs",
        max_steps=3,
        per_device_train_batch_size=8,
        save_steps=0,
        target_kl=0.001,
        kl_coef=0.05,
        kl_estimator="k3",  # never negative: k1's sampled mean can fall below the target by noise alone (-0.02 seen)
        kl_horizon=100,
        missing_eos_penalty=1.0,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
    )
    run_ok(["train", str(path)])
    metrics = read_metrics(tmp_path / "knobs")
    coefs = [m["train/kl_coef"] for m in metrics]
    # update 1: policy == reference, KL 0 < target, error clipped to -0.2: 0.05 x (1 - 0.2 x 8 / 100) = 0.0492;
    # updates 2, 3: KL far above the 0.001 target, error clipped to +0.2: x 1.016 each
    assert coefs == pytest.approx([0.0492, 0.0492 * 1.016, 0.0492 * 1.016**2], rel=1e-6)
    # 12-token responses rarely end on their own: the penalty pulls scores below the plain vowel share
    assert all(m["train/objective/scores"] < 0.5 for m in metrics) and min(m["train/objective/scores"] for m in metrics) < 0.0
