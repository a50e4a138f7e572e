"""The shared rollout path and PPO's learner on fixed rollouts: sampled distribution, EOS ids, generation
settings, the non-finite guard, gradient checkpointing, LR schedule (fast, one process)."""

from __future__ import annotations

import math

import pytest
from ppo_fixed import fixed_rollouts, make_learner, one_update

from workbench.config import GenerationConfig


def load(tiny_model, tokenizer):
    from workbench.models import load_policy

    return load_policy(str(tiny_model), tokenizer).eval()


def test_generation_ignores_sampling_settings_from_the_checkpoint(tiny_model, tokenizer):
    from workbench.sampling.generation import generate

    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, batch_size=8)
    prompts = [tokenizer("hello there")["input_ids"], tokenizer("a b c d")["input_ids"]] * 8
    clean = generate(load(tiny_model, tokenizer), tokenizer, prompts, cfg, seed=3)
    model = load(tiny_model, tokenizer)
    gc = model.generation_config  # what a checkpoint's generation_config.json may carry
    gc.typical_p, gc.repetition_penalty, gc.no_repeat_ngram_size, gc.min_new_tokens = 0.2, 1.5, 2, 4
    gc.suppress_tokens = list(range(10, 40))
    dirty = generate(model, tokenizer, prompts, cfg, seed=3)
    assert [c.token_ids for c in dirty] == [c.token_ids for c in clean]
    assert model.generation_config.typical_p == 0.2  # the model's own config is left as it was


def test_each_response_keeps_the_eos_id_that_ended_it(tiny_model, tokenizer):
    from workbench.sampling.generation import generate
    from workbench.sampling.logprobs import completion_batch

    model = load(tiny_model, tokenizer)
    eos_list = [tokenizer.eos_token_id, *range(20, 28)]  # a 9-id EOS list, as some chat models ship
    model.generation_config.eos_token_id = eos_list
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, batch_size=32)
    prompts = [tokenizer("hello")["input_ids"]] * 32
    made = generate(model, tokenizer, prompts, cfg, seed=0)
    ended = [c for c in made if c.finished]
    assert ended and all(c.eos_id in eos_list for c in ended)
    assert any(c.eos_id != tokenizer.eos_token_id for c in ended)  # the case the old code got wrong
    assert all(c.eos_id is None and len(c.token_ids) == 16 for c in made if not c.finished)
    batch = completion_batch(prompts, made, tokenizer.pad_token_id, "cpu")
    p = batch["prompt_width"]
    for row, c in enumerate(made):  # the token trained on at the end is the one sampled
        n = int(batch["response_mask"][row].sum())
        assert batch["input_ids"][row, p : p + n].tolist() == c.token_ids + ([c.eos_id] if c.finished else [])


@pytest.mark.parametrize("setting", [{"top_p": 0.9}, {"top_k": 20}, {"temperature": 0.0}])
def test_ppo_refuses_sampling_it_cannot_model(setting):
    from workbench.errors import WorkbenchError
    from workbench.sampling.settings import PPO_SAMPLING, refuse_sampling

    with pytest.raises(WorkbenchError, match="generation"):
        refuse_sampling(GenerationConfig(**setting), PPO_SAMPLING)


def test_one_refusal_names_every_unmodelled_setting_under_its_own_key():
    """PPO's rollouts and the evaluation (run and comparison recipes) refuse through the same sentences."""
    from workbench.errors import RecipeError
    from workbench.sampling.settings import EVAL_SAMPLING, eval_sampling_problems, refuse_sampling
    from workbench.sampling.settings import unmodelled_sampling_problems as unmodelled_sampling

    bad = GenerationConfig(temperature=0.0, top_k=5, top_p=0.5)
    fixes = [p.split("; set ")[1] for p in unmodelled_sampling(bad, "PPO")]
    assert fixes == ["`generation.temperature` > 0 (1.0 is usual)", "`generation.top_k: 0`", "`generation.top_p: 1.0`"]
    problems = eval_sampling_problems(bad)
    assert [p.split("; set ")[1] for p in problems] == [f.replace("`generation.", "`eval.generation.") for f in fixes]
    assert all(p.startswith("evaluation ") for p in problems)
    assert unmodelled_sampling(GenerationConfig(temperature=0.7), "PPO") == []
    with pytest.raises(RecipeError, match="run/recipe.yaml: 3 problems"):
        refuse_sampling(bad, EVAL_SAMPLING, "run/recipe.yaml")


def test_log_probs_entropy_and_kl_are_those_of_the_tempered_distribution(tiny_model):
    import torch

    from workbench.sampling.logprobs import rollout_tensors

    learner, tok = make_learner(tiny_model, temperature=0.5)
    prompts, responses, scores = fixed_rollouts(8)
    batch = rollout_tensors(prompts, responses, tok.pad_token_id, "cpu")
    exp = learner.experience(batch, scores, kl_coef=0.05)
    with torch.no_grad():
        logits = learner.unwrapped.policy(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    p, r = batch["prompt_width"], batch["response_mask"].shape[1]
    z = logits[:, p - 1 : p - 1 + r] / 0.5
    expected = torch.log_softmax(z, -1).gather(-1, batch["input_ids"][:, p : p + r, None]).squeeze(-1) * batch["response_mask"]
    assert float((exp.old_logprobs - expected).abs().max()) < 1e-5
    untempered = torch.log_softmax(z * 0.5, -1).gather(-1, batch["input_ids"][:, p : p + r, None]).squeeze(-1)
    assert float(((exp.old_logprobs - untempered) * batch["response_mask"]).abs().max()) > 0.05
    probs = torch.softmax(z, -1)
    entropy = -(probs * torch.log_softmax(z, -1)).sum(-1) * batch["response_mask"]
    assert float((exp.entropy - entropy).abs().max()) < 1e-4
    assert float(exp.kl.abs().max()) < 1e-6  # the reference is the same tempered distribution before training


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_kept_positions_give_the_whole_forwards_logprobs_entropy_and_values(tiny_model, value_model):
    """The learner's forwards keep only the R + 1 last positions (`logits_to_keep`) and never build a (B, R, V)
    log-softmax: log-probs, entropies and values equal those of a whole forward and log_softmax(logits / T)."""
    import torch

    from workbench.methods.ppo_learner import response_values
    from workbench.sampling.logprobs import logprobs_and_entropy, model_inputs, rollout_tensors

    learner, tok = make_learner(tiny_model, value_model=value_model, per_device_train_batch_size=8)
    model = learner.unwrapped
    if value_model == "shared":  # the new head starts at zero: give it weights so the values mean something
        torch.nn.init.normal_(model.value_head.weight, std=1.0)
    prompts, responses, _ = fixed_rollouts(8)
    batch = rollout_tensors(prompts, responses, tok.pad_token_id, "cpu")
    with torch.no_grad():
        whole_logits, whole_values = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        kept_logits, kept_values = model(**model_inputs(batch))
    p, r, m = batch["prompt_width"], batch["response_mask"].shape[1], batch["response_mask"]
    assert kept_logits.shape[1] == kept_values.shape[1] == r + 1 < whole_logits.shape[1]
    z = whole_logits[:, p - 1 : p - 1 + r] / 0.7
    expected_lp = torch.log_softmax(z, -1).gather(-1, batch["input_ids"][:, p:, None]).squeeze(-1)
    expected_entropy = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
    lp, entropy = logprobs_and_entropy(kept_logits, batch, 0.7)
    assert float(((lp - expected_lp) * m).abs().max()) < 1e-5
    assert float(((entropy - expected_entropy) * m).abs().max()) < 1e-5
    expected_values = whole_values[:, p - 1 : p - 1 + r]
    assert float(((response_values(kept_values, batch) - expected_values) * m).abs().max()) < 1e-5
    assert float((expected_values * m).abs().max()) > 1e-3  # not trivially zero


def test_a_non_finite_update_is_undone_exactly(tiny_model, monkeypatch):
    import torch

    from workbench import losses

    learner, tok = make_learner(tiny_model, ppo_epochs=2, num_mini_batches=2, per_device_train_batch_size=8)
    assert one_update(learner, tok, list(range(8)), step=1) is not None  # optimizer state exists
    before = {k: v.clone() for k, v in learner.unwrapped.state_dict().items()}
    opt_before = {k: v["exp_avg"].clone() for k, v in enumerate(learner.optimizer.state_dict()["state"].values())}
    lr_before = learner.scheduler.state_dict()
    real, calls = losses.clipped_value_loss, []

    def nan_on_third(*a, **kw):  # three mini-batches go fine (two optimizer steps applied), the fourth is NaN
        calls.append(1)
        loss, frac = real(*a, **kw)
        return (loss * float("nan") if len(calls) == 4 else loss), frac

    monkeypatch.setattr(losses, "clipped_value_loss", nan_on_third)
    assert one_update(learner, tok, list(range(8)), step=2) is None
    assert len(calls) == 4
    after = learner.unwrapped.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    opt_after = {k: v["exp_avg"] for k, v in enumerate(learner.optimizer.state_dict()["state"].values())}
    assert all(torch.equal(opt_before[k], opt_after[k]) for k in opt_before)
    assert learner.scheduler.state_dict() == lr_before


def test_gradient_checkpointing_recomputes_in_the_learning_phase(tiny_model):
    counts = {}
    for on in (False, True):
        learner, tok = make_learner(tiny_model, gradient_checkpointing=on, ppo_epochs=1, per_device_train_batch_size=8)
        layer = learner.unwrapped.policy.model.layers[0].mlp  # inside the checkpointed layer
        calls = []
        handle = layer.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))  # recompute may stop early
        one_update(learner, tok, list(range(8)))
        handle.remove()
        counts[on] = len(calls)
    # one experience forward + one training forward; with checkpointing the backward runs the layer again
    assert counts == {False: 2, True: 3}


def test_warmup_and_schedule_count_updates(tiny_model):
    learner, tok = make_learner(
        tiny_model, warmup_steps=2, max_steps=4, ppo_epochs=1, num_mini_batches=2, per_device_train_batch_size=8
    )
    lrs = []
    for step in (1, 2, 3):
        one_update(learner, tok, list(range(8)), step=step)
        lrs.append(learner.scheduler.get_last_lr()[0])
    # 2 optimizer steps per update, warmup over 2 updates = 4 steps, then constant 1e-3
    assert lrs == pytest.approx([0.5e-3, 1e-3, 1e-3])
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3) and not math.isnan(lrs[0])


@pytest.mark.parametrize("value_model", ["separate", "shared"])
def test_a_huge_value_loss_does_not_clip_the_policy_gradient(tiny_model, value_model):
    """Actor and critic are clipped separately: on the same rollouts, a value loss weighted 1e6 leaves the gradient the
    policy's weights step with exactly as it was; clipped together it would shrink to the value gradient's direction.
    The shared head gets non-zero weights: at zero, d(value loss)/d(hidden) is 0 and the check would be vacuous."""
    import torch

    from workbench.sampling.logprobs import rollout_tensors

    grads = {}
    for vf_coef in (0.1, 1e6):
        learner, tok = make_learner(
            tiny_model, value_model=value_model, vf_coef=vf_coef, ppo_epochs=1, per_device_train_batch_size=8
        )
        if value_model == "shared":
            torch.manual_seed(1)
            torch.nn.init.normal_(learner.unwrapped.value_head.weight, std=1.0)
        actor = {id(p) for p in learner.actor_params}
        seen = []
        learner.optimizer.optimizer.register_step_pre_hook(
            lambda opt, *a, seen=seen, actor=actor: seen.append(
                [p.grad.clone() for g in opt.param_groups for p in g["params"] if id(p) in actor]
            )
        )
        prompts, responses, scores = fixed_rollouts(8)
        batch = rollout_tensors(prompts, responses, tok.pad_token_id, "cpu")
        exp = learner.experience(batch, scores, kl_coef=0.0)
        assert learner.update(1, exp, kl_coef=0.0) is not None
        assert float(exp.old_values.abs().max()) > 1e-3  # the value head's gradient is not trivially zero
        grads[vf_coef] = seen[0]
    norm = sum(float(g.pow(2).sum()) for g in grads[0.1]) ** 0.5
    assert norm > 0 and all(torch.allclose(a, b, rtol=1e-5, atol=1e-9) for a, b in zip(grads[0.1], grads[1e6]))


@pytest.mark.parametrize("trains_backbone", [False, True])
def test_critic_warmup_leaves_the_policy_bitwise_unchanged(tiny_model, trains_backbone):
    """During critic_warmup_steps only the value head learns, even when the value loss may otherwise train the backbone."""
    import torch

    learner, tok = make_learner(
        tiny_model, critic_warmup_steps=2, value_head_trains_backbone=trains_backbone, per_device_train_batch_size=8
    )
    model = learner.unwrapped
    torch.manual_seed(1)
    torch.nn.init.normal_(model.value_head.weight, std=1.0)  # so the value loss has a gradient for the backbone
    policy0 = {k: v.clone() for k, v in model.policy.state_dict().items()}
    head0 = model.value_head.weight.clone()
    for step in (1, 2):
        assert one_update(learner, tok, list(range(8)), step=step) is not None
    assert all(torch.equal(policy0[k], v) for k, v in model.policy.state_dict().items())
    assert not torch.equal(head0, model.value_head.weight)
    assert one_update(learner, tok, list(range(8)), step=3) is not None  # warm-up over: the policy learns
    assert not all(torch.equal(policy0[k], v) for k, v in model.policy.state_dict().items())


@pytest.mark.parametrize("lora", [None, {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}])
def test_the_value_head_reads_the_last_hidden_state_without_keeping_every_layers(tiny_model, lora):
    """The head's input is the LM head's input (final-normed, only the kept positions): values equal those from
    `output_hidden_states` within 1e-6, but the policy is never asked for every layer's hidden states."""
    import torch

    from workbench.sampling.logprobs import model_inputs, rollout_tensors

    learner, tok = make_learner(tiny_model, lora=lora, per_device_train_batch_size=8)
    model = learner.unwrapped
    torch.manual_seed(1)
    torch.nn.init.normal_(model.value_head.weight, std=1.0)
    prompts, responses, _ = fixed_rollouts(8)
    batch = rollout_tensors(prompts, responses, tok.pad_token_id, "cpu")
    asked = []
    handle = model.policy.register_forward_pre_hook(lambda m, a, kw: asked.append(dict(kw)), with_kwargs=True)
    with torch.no_grad():
        whole = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[1]
        kept = model(**model_inputs(batch))[1]
    handle.remove()
    assert asked and not any(kw.get("output_hidden_states") for kw in asked)
    with torch.no_grad():
        hidden = model.policy(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            output_hidden_states=True,
        ).hidden_states[-1]  # (B, L, H)
        expected = model.value_head(hidden).squeeze(-1)
    assert float(expected.abs().max()) > 1e-3
    assert float((whole - expected).abs().max()) < 1e-6
    assert float((kept - expected[:, -kept.shape[1] :]).abs().max()) < 1e-6
