"""PPO for RLHF, ours (TRL removed its PPO trainer): actor-critic on accelerate + DeepSpeed.

One update = rollout (shared generation) -> score (shared reward source) -> per-token KL to the
frozen reference -> shaped rewards -> GAE -> `ppo_epochs` passes of clipped policy and value
losses over mini-batches. The math lives in `workbench/losses.py`. Policy and value model are
wrapped in one module so accelerate / DeepSpeed prepare a single engine.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from workbench import losses
from workbench.checkpoint import mark_complete
from workbench.config import ModelConfig, train_config_class, train_field_defaults
from workbench.errors import WorkbenchError
from workbench.generation import GenerationStats, generate
from workbench.methods import hf
from workbench.models import apply_lora, load_causal_lm
from workbench.scoring import reward_source

if TYPE_CHECKING:
    from workbench.runner import RunContext, RunResult

log = logging.getLogger("workbench")
DATA_KIND = "prompt"


def ppo_args(ctx: RunContext) -> SimpleNamespace:
    return SimpleNamespace(**{**train_field_defaults(train_config_class("ppo")), **ctx.recipe.train})


def build_models(ctx: RunContext, args: SimpleNamespace) -> tuple[Any, Any]:
    """(policy + value wrapper, frozen reference)."""
    import torch
    from transformers import AutoModelForTokenClassification

    from workbench.models import torch_dtype

    recipe = ctx.recipe
    policy = load_causal_lm(recipe.model, ctx.tokenizer)
    reference = None  # under LoRA: the policy with its adapters disabled, no second copy
    if recipe.model.lora is not None:
        policy = apply_lora(policy, recipe.model, task_type="CAUSAL_LM")
    else:
        with hf.plain_loading():  # never partitioned: the frozen reference is not wrapped in a DeepSpeed engine
            reference = load_causal_lm(
                ModelConfig(name_or_path=recipe.reference.name_or_path or recipe.model.name_or_path, dtype=recipe.model.dtype),
                ctx.tokenizer,
            )
        reference.eval().requires_grad_(False)
    rm = recipe.reward_model
    value_from = (
        rm.name_or_path if args.value_init == "reward" and rm is not None and rm.name_or_path else recipe.model.name_or_path
    )
    value = AutoModelForTokenClassification.from_pretrained(
        value_from, num_labels=1, dtype=torch_dtype("float32" if recipe.model.dtype == "auto" else recipe.model.dtype)
    )
    value.config.pad_token_id = ctx.tokenizer.pad_token_id
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        value.gradient_checkpointing_enable()

    class PolicyAndValue(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy, self.value = policy, value

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any) -> tuple[Any, Any]:
            logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            values = self.value(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.squeeze(-1)
            return logits, values  # (B, L, V), (B, L)

    ref_kind = (
        f"frozen copy of {reference.config._name_or_path}" if reference is not None else "policy base with adapters disabled"
    )
    ctx.tracker.update_manifest(reference=ref_kind, value_model=f"initialized from {value_from}")
    return PolicyAndValue(), reference


def rollout_tensors(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device: Any) -> dict[str, Any]:
    """[left-padded prompt | right-padded response] with masks and the position ids generation used."""
    import torch

    from workbench.batching import left_pad

    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(1, max(len(r) for r in responses))
    r_ids = [r + [pad_id] * (width - len(r)) for r in responses]
    r_mask = [[1] * len(r) + [0] * (width - len(r)) for r in responses]
    ids = torch.tensor([a + b for a, b in zip(p_ids, r_ids)], device=device)
    attention = torch.tensor([a + b for a, b in zip(p_mask, r_mask)], device=device)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
        "response_mask": torch.tensor(r_mask, device=device, dtype=torch.float32),  # (B, R)
        "prompt_width": len(p_ids[0]),
    }


def response_logprobs(logits: Any, batch: dict[str, Any]) -> Any:
    """log pi(response token | everything before it), (B, R)."""
    import torch

    p = batch["prompt_width"]
    r = batch["response_mask"].shape[1]
    step_logits = logits[:, p - 1 : p - 1 + r].float()  # position t predicts token t + 1
    targets = batch["input_ids"][:, p : p + r]
    return torch.log_softmax(step_logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def response_values(values: Any, batch: dict[str, Any]) -> Any:
    """V(state before each response token), (B, R)."""
    p = batch["prompt_width"]
    return values[:, p - 1 : p - 1 + batch["response_mask"].shape[1]].float()


def reference_logits(reference: Any, policy: Any, batch: dict[str, Any]) -> Any:
    """The frozen reference's logits: a separate model, or the LoRA policy with its adapters disabled."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    if reference is not None:
        return reference(**kwargs).logits
    with policy.disable_adapter():
        return policy(**kwargs).logits


def select_rows(batch: dict[str, Any], rows: Any) -> dict[str, Any]:
    return {k: (v[rows] if hasattr(v, "shape") else v) for k, v in batch.items()}


def save_checkpoint(accelerator: Any, ctx: RunContext, step: int, controller: Any, position: int) -> None:
    path = ctx.run_dir / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    if ctx.is_main:
        ctx.tracker.flush()
        (path / "ppo_state.json").write_text(json.dumps({"step": step, "kl": controller.state_dict(), "position": position}))
    accelerator.wait_for_everyone()
    if ctx.is_main:
        mark_complete(path)
    accelerator.wait_for_everyone()


def run(ctx: RunContext) -> RunResult:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    from workbench.runner import RunResult

    args = ppo_args(ctx)
    recipe = ctx.recipe
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
    ds_plugin = accelerator.state.deepspeed_plugin
    micro = max(1, args.per_device_train_batch_size // (args.num_mini_batches * args.gradient_accumulation_steps))
    if ds_plugin is not None:
        ds_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
        ds_plugin.deepspeed_config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    model, reference = build_models(ctx, args)
    if reference is not None:
        reference.to(accelerator.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=args.max_steps * args.ppo_epochs * args.num_mini_batches,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    score = reward_source(recipe.reward_model, recipe.data.max_length)
    controller = losses.AdaptiveKLController(args.kl_coef, args.target_kl or 1.0, args.kl_horizon)
    prompts = ctx.data.train
    tokenized = [t.prompt_ids for t in ctx.data.tokenized["train"]]
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
    global_batch = args.per_device_train_batch_size * accelerator.num_processes
    start, position = 0, 0
    if ctx.resume_checkpoint:
        accelerator.load_state(str(ctx.resume_checkpoint))
        state = json.loads((Path(ctx.resume_checkpoint) / "ppo_state.json").read_text())
        start, position = state["step"], state["position"]
        controller.load_state_dict(state["kl"])
    eos_id = ctx.tokenizer.eos_token_id
    nonfinite = 0
    gen_cfg = recipe.generation
    seed = recipe.seed if gen_cfg.seed is None else gen_cfg.seed
    for step in range(start + 1, args.max_steps + 1):
        picks = [order[(position + i) % len(order)] for i in range(global_batch)]
        position += global_batch
        mine = picks[accelerator.process_index :: accelerator.num_processes]
        unwrapped = accelerator.unwrap_model(model)
        stats = GenerationStats()
        t_gen = time.perf_counter()
        with gathered_for_generation(unwrapped.policy, accelerator):
            completions = generate(
                unwrapped.policy,
                ctx.tokenizer,
                [tokenized[i] for i in mine],
                gen_cfg,
                seed + step * 1000 + accelerator.process_index,
                num_samples=1,
                stats=stats,
            )
        completions.sort(key=lambda c: c.prompt_index)
        responses = [c.token_ids + ([eos_id] if c.finished else []) for c in completions]
        texts = [ctx.tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        t_score = time.perf_counter()
        generation_seconds = t_score - t_gen
        raw_scores = score([prompts[i]["prompt"] for i in mine], texts)
        if args.missing_eos_penalty is not None:
            raw_scores = [s - (0.0 if c.finished else args.missing_eos_penalty) for s, c in zip(raw_scores, completions)]
        batch = rollout_tensors([tokenized[i] for i in mine], responses, ctx.tokenizer.pad_token_id, accelerator.device)
        mask = batch["response_mask"]
        t_train = time.perf_counter()
        scoring_seconds = t_train - t_score
        with torch.no_grad():
            logits, values = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
            old_logprobs = response_logprobs(logits, batch) * mask
            old_values = response_values(values, batch) * mask
            entropy = losses.masked_mean(losses.entropy_from_logits(logits[:, batch["prompt_width"] - 1 : -1].float()), mask)
            ref_logits = reference_logits(reference, accelerator.unwrap_model(model).policy, batch)
            ref_logprobs = response_logprobs(ref_logits, batch) * mask
            kl = losses.kl_per_token(old_logprobs, ref_logprobs, args.kl_estimator) * mask  # (B, R)
            scores = torch.tensor(raw_scores, device=accelerator.device, dtype=torch.float32)
            rewards = losses.shaped_rewards(scores, kl, mask, controller.value)
            if args.whiten_rewards:
                rewards = losses.masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = losses.gae(rewards, old_values, mask, args.gamma, args.lam)
            advantages = losses.masked_whiten(advantages, mask)
        if not bool(accelerator.reduce(torch.isfinite(kl.sum()).float(), "min")):
            nonfinite = guard_nonfinite(nonfinite, args, step, "KL")
            continue
        metrics_acc: dict[str, list[float]] = {k: [] for k in ("policy", "value", "clipfrac", "approxkl", "vclipfrac")}
        rng = torch.Generator().manual_seed(recipe.seed + step)
        size = len(mine)
        bad_update = False
        for _ in range(args.ppo_epochs):
            perm = torch.randperm(size, generator=rng)
            mb_size = max(1, size // args.num_mini_batches)
            for mb_start in range(0, mb_size * args.num_mini_batches, mb_size):
                mb_rows = perm[mb_start : mb_start + mb_size]
                micro_size = max(1, len(mb_rows) // args.gradient_accumulation_steps)
                for mc_start in range(0, len(mb_rows), micro_size):
                    rows = mb_rows[mc_start : mc_start + micro_size].to(accelerator.device)
                    mb = select_rows(batch, rows)
                    with accelerator.accumulate(model):
                        logits, values = model(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
                        m = mb["response_mask"]
                        new_logprobs = response_logprobs(logits, mb) * m
                        new_values = response_values(values, mb)
                        pg_loss, clipfrac, approxkl = losses.clipped_policy_loss(
                            new_logprobs, old_logprobs[rows], advantages[rows], m, args.cliprange
                        )
                        vf_loss, vclipfrac = losses.clipped_value_loss(
                            new_values, old_values[rows], returns[rows], m, args.cliprange_value
                        )
                        loss = pg_loss + args.vf_coef * vf_loss
                        if not bool(accelerator.reduce(torch.isfinite(loss).float(), "min")):
                            bad_update = True
                            optimizer.zero_grad()
                            break
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and args.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    for key, value in (
                        ("policy", pg_loss),
                        ("value", vf_loss),
                        ("clipfrac", clipfrac),
                        ("approxkl", approxkl),
                        ("vclipfrac", vclipfrac),
                    ):
                        metrics_acc[key].append(float(value))
                if bad_update:
                    break
            if bad_update:
                break
        if bad_update:
            nonfinite = guard_nonfinite(nonfinite, args, step, "loss")
            continue
        nonfinite = 0
        train_seconds = time.perf_counter() - t_train
        seq_kl = (kl.sum(1)).mean()
        mean_kl = float(accelerator.reduce(seq_kl, "mean"))
        if args.target_kl is not None:
            controller.update(mean_kl, global_batch)
        if step % args.logging_steps == 0 or step == args.max_steps:
            gathered_scores = accelerator.gather(scores)
            metrics = {
                "train/objective/scores": float(gathered_scores.mean()),
                "train/objective/kl": mean_kl,
                "train/objective/entropy": float(accelerator.reduce(entropy, "mean")),
                "train/objective/rlhf_reward": float(gathered_scores.mean()) - controller.value * mean_kl,
                "train/policy/approxkl": sum(metrics_acc["approxkl"]) / len(metrics_acc["approxkl"]),
                "train/policy/clipfrac": sum(metrics_acc["clipfrac"]) / len(metrics_acc["clipfrac"]),
                "train/loss/policy": sum(metrics_acc["policy"]) / len(metrics_acc["policy"]),
                "train/loss/value": sum(metrics_acc["value"]) / len(metrics_acc["value"]),
                "train/val/clipfrac": sum(metrics_acc["vclipfrac"]) / len(metrics_acc["vclipfrac"]),
                "train/val/explained_variance": float(losses.explained_variance(old_values, returns, mask)),
                "train/response_length": float(accelerator.reduce(mask.sum(1).mean(), "mean")),
                "train/kl_coef": controller.value,
                "train/generation_tokens_per_second": stats.tokens_per_second,
                "train/training_tokens_per_second": float(batch["attention_mask"].sum())
                * args.ppo_epochs
                / max(train_seconds, 1e-9),
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/time/generation_seconds": generation_seconds,
                "train/time/scoring_seconds": scoring_seconds,
                "train/time/training_seconds": train_seconds,
            }
            ctx.tracker.log(metrics, step=step)
        if args.save_steps and step % args.save_steps == 0:
            save_checkpoint(accelerator, ctx, step, controller, position)
    return RunResult(ctx.run_dir, export_policy(model, accelerator, ctx), {})


def guard_nonfinite(count: int, args: SimpleNamespace, step: int, what: str) -> int:
    """Skip an update whose loss or KL is not finite; stop after `max_nonfinite_updates` in a row."""
    count += 1
    log.warning("update %d: non-finite %s, update skipped (%d in a row); the last good weights are kept", step, what, count)
    if count >= args.max_nonfinite_updates:
        raise WorkbenchError(
            f"PPO stopped: {count} updates in a row had a non-finite {what}; lower the learning rate or check the reward (the last good state is in checkpoints/)"
        )
    return count


class gathered_for_generation:
    """Under ZeRO-3, gather the policy's parameters once per rollout (not per generated token)."""

    def __init__(self, policy: Any, accelerator: Any):
        self.policy, self.accelerator, self.ctx = policy, accelerator, None

    def __enter__(self) -> None:
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            self.ctx = deepspeed.zero.GatheredParameters(list(self.policy.parameters()), modifier_rank=None)
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def export_policy(model: Any, accelerator: Any, ctx: RunContext) -> Path:
    """model/: the policy alone, gathered from every process, loadable with from_pretrained."""
    model_dir = ctx.run_dir / "model"
    state = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if ctx.is_main:
        policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
        unwrapped.policy.save_pretrained(str(model_dir), state_dict=policy_state, safe_serialization=True)
        ctx.tokenizer.save_pretrained(str(model_dir))
        bad = [k for k, v in policy_state.items() if not bool(v.isfinite().all())]
        if bad:
            raise WorkbenchError(f"refusing to keep a policy with non-finite weights ({bad[0]}, ...)")
    accelerator.wait_for_everyone()
    with gathered_for_generation(unwrapped.policy, accelerator):
        hf.check_export(unwrapped.policy, accelerator, ctx, model_dir)
    return model_dir
