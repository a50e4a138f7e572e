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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from workbench import losses
from workbench.checkpoint import mark_complete
from workbench.config import ModelConfig, train_config_class, train_field_defaults
from workbench.errors import WorkbenchError
from workbench.generation import GenerationStats, generate
from workbench.logprobs import response_logprobs, rollout_tensors
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


def save_checkpoint(accelerator: Any, ctx: RunContext, step: int, controller: Any, position: int, tokens: dict[str, int]) -> None:
    path = ctx.run_dir / "checkpoints" / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    if ctx.is_main:
        ctx.tracker.flush()
        state = {"step": step, "kl": controller.state_dict(), "position": position, "tokens": tokens}
        (path / "ppo_state.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()
    if ctx.is_main:
        mark_complete(path)
    accelerator.wait_for_everyone()


@dataclass
class Rollout:
    """One update's experience: tensors (B, R) over response tokens, plus what was logged about it."""

    batch: dict[str, Any]
    old_logprobs: Any
    old_values: Any
    advantages: Any
    returns: Any
    kl: Any
    scores: Any
    entropy: Any
    seconds: dict[str, float]
    generation_tokens_per_second: float


class PPOLoop:
    """State shared by the steps of one PPO run (models, optimizer, reward, data order, KL controller)."""

    def __init__(self, ctx: RunContext):
        import torch
        from accelerate import Accelerator
        from transformers import get_scheduler

        self.ctx, self.args, recipe = ctx, ppo_args(ctx), ctx.recipe
        args = self.args
        self.accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is not None:  # no Trainer to fill DeepSpeed's "auto" batch fields
            micro = max(1, args.per_device_train_batch_size // (args.num_mini_batches * args.gradient_accumulation_steps))
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
            plugin.deepspeed_config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
        model, self.reference = build_models(ctx, args)
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
        total = args.max_steps * args.ppo_epochs * args.num_mini_batches
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=total)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.score = reward_source(recipe.reward_model, recipe.data.max_length)
        self.controller = losses.AdaptiveKLController(args.kl_coef, args.target_kl or 1.0, args.kl_horizon)
        self.tokenized = [t.prompt_ids for t in ctx.data.tokenized["train"]]
        self.order = torch.randperm(len(self.tokenized), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
        self.global_batch = args.per_device_train_batch_size * self.accelerator.num_processes
        self.seed = recipe.seed if recipe.generation.seed is None else recipe.generation.seed
        self.start, self.position = 0, 0
        self.tokens = {"train": 0, "generated": 0}  # all processes, for the run's cost

    def resume(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "ppo_state.json").read_text())
        self.start, self.position = state["step"], state["position"]
        self.controller.load_state_dict(state["kl"])
        self.tokens = state.get("tokens", self.tokens)

    def rollout(self, step: int) -> Rollout:
        """Generate for this process's prompts, score, and compute KL, rewards, values and advantages."""
        import torch

        acc, args, tok = self.accelerator, self.args, self.ctx.tokenizer
        picks = [self.order[(self.position + i) % len(self.order)] for i in range(self.global_batch)]
        self.position += self.global_batch
        mine = picks[acc.process_index :: acc.num_processes]
        policy = acc.unwrap_model(self.model).policy
        stats = GenerationStats()
        t0 = time.perf_counter()
        with gathered_for_generation(policy, acc):
            seed = self.seed + step * 1000 + acc.process_index
            completions = generate(
                policy, tok, [self.tokenized[i] for i in mine], self.ctx.recipe.generation, seed, num_samples=1, stats=stats
            )
        completions.sort(key=lambda c: c.prompt_index)
        t1 = time.perf_counter()
        texts = [tok.decode(c.token_ids, skip_special_tokens=True) for c in completions]
        raw = self.score([self.ctx.data.train[i]["prompt"] for i in mine], texts)
        if args.missing_eos_penalty is not None:
            raw = [s - (0.0 if c.finished else args.missing_eos_penalty) for s, c in zip(raw, completions)]
        t2 = time.perf_counter()
        responses = [c.token_ids + ([tok.eos_token_id] if c.finished else []) for c in completions]
        batch = rollout_tensors([self.tokenized[i] for i in mine], responses, tok.pad_token_id, acc.device)
        mask = batch["response_mask"]
        with torch.no_grad():
            logits, values = self.model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
            old_logprobs = response_logprobs(logits, batch) * mask
            old_values = response_values(values, batch) * mask
            entropy = losses.masked_mean(losses.entropy_from_logits(logits[:, batch["prompt_width"] - 1 : -1].float()), mask)
            ref_logprobs = response_logprobs(reference_logits(self.reference, policy, batch), batch) * mask
            kl = losses.kl_per_token(old_logprobs, ref_logprobs, args.kl_estimator) * mask  # (B, R)
            scores = torch.tensor(raw, device=acc.device, dtype=torch.float32)
            rewards = losses.shaped_rewards(scores, kl, mask, self.controller.value)
            if args.whiten_rewards:
                rewards = losses.masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = losses.gae(rewards, old_values, mask, args.gamma, args.lam)
            advantages = losses.masked_whiten(advantages, mask)
        seconds = {"generation": t1 - t0, "scoring": t2 - t1, "training": 0.0}
        return Rollout(
            batch, old_logprobs, old_values, advantages, returns, kl, scores, entropy, seconds, stats.tokens_per_second
        )

    def optimize(self, step: int, ro: Rollout) -> dict[str, float] | None:
        """`ppo_epochs` passes of clipped policy + value losses over mini-batches; None if a loss was not finite."""
        import torch

        acc, args = self.accelerator, self.args
        t0 = time.perf_counter()
        acc_metrics: dict[str, list[float]] = {k: [] for k in ("policy", "value", "clipfrac", "approxkl", "vclipfrac")}
        rng = torch.Generator().manual_seed(self.ctx.recipe.seed + step)
        size = ro.batch["input_ids"].shape[0]
        mb_size = max(1, size // args.num_mini_batches)
        micro_size = max(1, mb_size // args.gradient_accumulation_steps)
        for _ in range(args.ppo_epochs):
            perm = torch.randperm(size, generator=rng)
            for mb_start in range(0, mb_size * args.num_mini_batches, mb_size):
                mb_rows = perm[mb_start : mb_start + mb_size]
                for mc_start in range(0, len(mb_rows), micro_size):
                    rows = mb_rows[mc_start : mc_start + micro_size].to(acc.device)
                    values = self.micro_step(ro, rows)
                    if values is None:
                        self.optimizer.zero_grad()
                        return None
                    for key, value in zip(acc_metrics, values):
                        acc_metrics[key].append(value)
        ro.seconds["training"] = time.perf_counter() - t0
        return {key: sum(v) / len(v) for key, v in acc_metrics.items()}

    def micro_step(self, ro: Rollout, rows: Any) -> tuple[float, ...] | None:
        """One forward/backward on a micro-batch (optimizer step when accumulation completes)."""
        import torch

        acc, args = self.accelerator, self.args
        mb = select_rows(ro.batch, rows)
        with acc.accumulate(self.model):
            logits, values = self.model(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
            m = mb["response_mask"]
            new_logprobs = response_logprobs(logits, mb) * m
            pg_loss, clipfrac, approxkl = losses.clipped_policy_loss(
                new_logprobs, ro.old_logprobs[rows], ro.advantages[rows], m, args.cliprange
            )
            vf_loss, vclipfrac = losses.clipped_value_loss(
                response_values(values, mb), ro.old_values[rows], ro.returns[rows], m, args.cliprange_value
            )
            loss = pg_loss + args.vf_coef * vf_loss
            if not bool(acc.reduce(torch.isfinite(loss).float(), "min")):
                return None
            acc.backward(loss)
            if acc.sync_gradients and args.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        return float(pg_loss), float(vf_loss), float(clipfrac), float(approxkl), float(vclipfrac)

    def metrics(self, ro: Rollout, opt: dict[str, float], mean_kl: float) -> dict[str, float]:
        acc = self.accelerator
        mean_score = float(acc.gather(ro.scores).mean())
        mask = ro.batch["response_mask"]
        return {
            "train/objective/scores": mean_score,
            "train/objective/kl": mean_kl,
            "train/objective/entropy": float(acc.reduce(ro.entropy, "mean")),
            "train/objective/rlhf_reward": mean_score - self.controller.value * mean_kl,
            "train/policy/approxkl": opt["approxkl"],
            "train/policy/clipfrac": opt["clipfrac"],
            "train/loss/policy": opt["policy"],
            "train/loss/value": opt["value"],
            "train/val/clipfrac": opt["vclipfrac"],
            "train/val/explained_variance": float(losses.explained_variance(ro.old_values, ro.returns, mask)),
            "train/response_length": float(acc.reduce(mask.sum(1).mean(), "mean")),
            "train/kl_coef": self.controller.value,
            "train/generation_tokens_per_second": ro.generation_tokens_per_second,
            "train/training_tokens_per_second": float(ro.batch["attention_mask"].sum())
            * self.args.ppo_epochs
            / max(ro.seconds["training"], 1e-9),
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            **{f"train/time/{k}_seconds": v for k, v in ro.seconds.items()},
        }

    def count_tokens(self, ro: Rollout) -> None:
        mask = ro.batch["attention_mask"]
        self.tokens["train"] += int(self.accelerator.reduce(mask.sum(), "sum")) * self.args.ppo_epochs
        self.tokens["generated"] += int(self.accelerator.reduce(ro.batch["response_mask"].sum(), "sum"))

    def train(self) -> None:
        import torch

        args, nonfinite = self.args, 0
        for step in range(self.start + 1, args.max_steps + 1):
            ro = self.rollout(step)
            if not bool(self.accelerator.reduce(torch.isfinite(ro.kl.sum()).float(), "min")):
                nonfinite = guard_nonfinite(nonfinite, args, step, "KL")
                continue
            opt = self.optimize(step, ro)
            if opt is None:
                nonfinite = guard_nonfinite(nonfinite, args, step, "loss")
                continue
            nonfinite = 0
            self.count_tokens(ro)
            mean_kl = float(self.accelerator.reduce(ro.kl.sum(1).mean(), "mean"))  # sequence KL
            if args.target_kl is not None:
                self.controller.update(mean_kl, self.global_batch)
            if step % args.logging_steps == 0 or step == args.max_steps:
                self.ctx.tracker.log(self.metrics(ro, opt, mean_kl), step=step)
            if args.save_steps and step % args.save_steps == 0:
                save_checkpoint(self.accelerator, self.ctx, step, self.controller, self.position, self.tokens)


def run(ctx: RunContext) -> RunResult:
    from workbench.runner import RunResult

    loop = PPOLoop(ctx)
    if ctx.resume_checkpoint:
        loop.resume(Path(ctx.resume_checkpoint))
    loop.train()
    model_dir = export_policy(loop.model, loop.accelerator, ctx)
    return RunResult(ctx.run_dir, model_dir, {}, train_tokens=loop.tokens["train"], generated_tokens=loop.tokens["generated"])


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
