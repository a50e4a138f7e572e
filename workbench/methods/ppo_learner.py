"""PPO's learner: policy + value module, frozen reference, experience and clipped updates (design: docs/ppo.md).

Kept apart from the run loop so tests can drive it with fixed rollouts, without a run directory.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from workbench import losses
from workbench.config import ModelConfig, reference_rule
from workbench.errors import WorkbenchError
from workbench.method_checks import ppo_batch_problems, ppo_kl_estimator, ppo_measured_kl
from workbench.models import apply_lora, load_causal_lm, plain_loading
from workbench.sampling.logprobs import logprobs_and_entropy, model_inputs
from workbench.train_configs import ppo_value_head


def disable_dropout(model: Any) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _module_base() -> type:
    import torch

    return torch.nn.Module


class PolicyAndValue(_module_base()):  # type: ignore[misc]
    """Policy and value model as one module, so accelerate / DeepSpeed prepare one engine.

    `value` is a separate critic, or None for a value head on the policy's last hidden state.
    """

    def __init__(self, policy: Any, value: Any | None) -> None:
        import torch

        super().__init__()
        self.policy, self.value = policy, value
        if value is None:
            self.value_head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: Any, attention_mask: Any, position_ids: Any, logits_to_keep: int = 0, value_grad: bool = False
    ) -> tuple[Any, Any]:
        """(logits, values) at the last `logits_to_keep` positions (0: all): (B, K, V), (B, K).

        `value_grad`: let the value head's loss reach the shared backbone (otherwise only the head learns from it)."""
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        if self.value is None:
            out, hidden = last_hidden_state(self.policy, kw, logits_to_keep)  # hidden: (B, K, H)
            if not value_grad:
                hidden = hidden.detach()
            return out.logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return self.policy(**kw, logits_to_keep=logits_to_keep).logits, self.value(**kw).logits[:, keep].squeeze(-1)

    def critic_parameters(self) -> list[Any]:
        part = self.value_head if self.value is None else self.value
        return [p for p in part.parameters() if p.requires_grad]

    def actor_parameters(self) -> list[Any]:
        return [p for p in self.policy.parameters() if p.requires_grad]


def last_hidden_state(policy: Any, kwargs: dict[str, Any], logits_to_keep: int) -> tuple[Any, Any]:
    """(the policy's output, the input of its output embedding): the final-normed last hidden state at the kept
    positions only, (B, K, H), without `output_hidden_states` holding every layer's (B, L, H) for the whole pass.

    A pre-hook on `get_output_embeddings()` (found through peft's wrappers too) records what the LM head is given."""
    captured: list[Any] = []

    def record(module: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        captured.append(args[0] if args else next(iter(kw.values())))

    handle = policy.get_output_embeddings().register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = policy(**kwargs, logits_to_keep=logits_to_keep)
    finally:
        handle.remove()
    return out, captured[-1]


def build_models(recipe: Any, tokenizer: Any, args: SimpleNamespace) -> tuple[PolicyAndValue, Any, dict[str, str]]:
    """(policy + value, frozen reference or None under LoRA, what was built for the manifest)."""
    from transformers import AutoModelForTokenClassification

    from workbench.models import torch_dtype

    policy = load_causal_lm(recipe.model, tokenizer)
    choice = reference_rule(recipe, vars(args))
    reference = None  # under LoRA: the policy with its adapters disabled, no second copy
    if recipe.model.lora is not None:
        policy = apply_lora(policy, recipe.model, task_type="CAUSAL_LM")
    if choice.kind == "model":
        with plain_loading():  # frozen: a whole copy per process, never partitioned
            reference = load_causal_lm(ModelConfig(name_or_path=choice.name_or_path or "", dtype=recipe.model.dtype), tokenizer)
        reference.eval().requires_grad_(False)
        disable_dropout(reference)
    rm = recipe.reward_model
    shared = ppo_value_head(args.value_model, args.value_init, recipe.model.lora is not None, rm and rm.name_or_path)
    value, described = None, "value head on the policy's backbone"
    if not shared:
        value_from = (
            rm.name_or_path if args.value_init == "reward" and rm is not None and rm.name_or_path else recipe.model.name_or_path
        )
        dtype = torch_dtype("float32" if recipe.model.dtype == "auto" else recipe.model.dtype)
        value = AutoModelForTokenClassification.from_pretrained(value_from, num_labels=1, dtype=dtype)
        value.config.pad_token_id = tokenizer.pad_token_id
        described = f"separate critic initialized from {value_from}"
    model = PolicyAndValue(policy, value)
    disable_dropout(model)
    if args.gradient_checkpointing:
        for part in (policy, value):
            if part is not None:
                part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                part.config.use_cache = False
    return model, reference, {"reference": choice.describe(), "value_model": described}


def frozen_engine(model: Any, accelerator: Any) -> Any:
    """Under ZeRO-3 a frozen model becomes a DeepSpeed inference engine sharded like the policy; otherwise a plain copy on the device.

    Every process must then call it the same number of times (it gathers shards collectively).
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return model.to(accelerator.device)
    import deepspeed

    config = copy.deepcopy(plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["zero_optimization"] = {**config["zero_optimization"], "stage": 3}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval returns None
    return engine


def reference_logits(reference: Any, policy: Any, batch: dict[str, Any]) -> Any:
    """The frozen reference's logits at the positions predicting response tokens: a separate model, or the LoRA
    policy with its adapters disabled."""
    kwargs = model_inputs(batch)
    if reference is not None:
        return reference(**kwargs).logits
    with policy.disable_adapter():
        return policy(**kwargs).logits


def response_values(values: Any, batch: dict[str, Any]) -> Any:
    """V(state before each response token), (B, R), from values at all positions or only the last R + 1."""
    r = batch["response_mask"].shape[1]
    start = values.shape[1] - (r + 1)
    return values[:, start : start + r].float()


def select_rows(batch: dict[str, Any], rows: Any) -> dict[str, Any]:
    return {k: (v[rows] if hasattr(v, "shape") else v) for k, v in batch.items()}


@dataclass
class Experience:
    """One update's experience on this process: tensors (B, R) over response tokens."""

    batch: dict[str, Any]
    old_logprobs: Any
    ref_logprobs: Any
    old_values: Any
    advantages: Any
    returns: Any
    kl: Any
    entropy: Any
    scores: Any  # (B,) raw scores, before normalization and baseline
    seconds: dict[str, float] = field(default_factory=dict)


class Learner:
    """Everything in PPO that touches gradients: experience from rollouts, and the clipped updates.

    Built from models and arguments alone (no run directory), so tests can feed it fixed rollouts.
    """

    def __init__(
        self, accelerator: Any, model: PolicyAndValue, reference: Any, args: SimpleNamespace, seed: int, temperature: float
    ):
        import torch
        from transformers import get_scheduler

        self.acc, self.args, self.seed, self.temperature = accelerator, args, seed, temperature
        self.kl_estimator = ppo_kl_estimator(args.kl_estimator, args.kl_in)  # of the loss term (kl_in: loss)
        self.measured_kl = ppo_measured_kl(args.kl_estimator, args.kl_in)  # of the reward penalty and the logged KL
        self.deepspeed = accelerator.state.deepspeed_plugin is not None
        if self.deepspeed:  # no Trainer to fill DeepSpeed's "auto" fields
            ds = accelerator.state.deepspeed_plugin.deepspeed_config
            micro = max(1, args.per_device_train_batch_size // (args.num_mini_batches * args.gradient_accumulation_steps))
            ds["train_micro_batch_size_per_gpu"] = micro
            ds["gradient_accumulation_steps"] = args.gradient_accumulation_steps
            ds["gradient_clipping"] = args.max_grad_norm or 0.0
        self.actor_params, self.critic_params = model.actor_parameters(), model.critic_parameters()
        optimizer = torch.optim.AdamW(
            [
                {"params": self.actor_params, "lr": args.learning_rate},
                {"params": self.critic_params, "lr": args.critic_learning_rate or args.learning_rate},
            ],
            weight_decay=0.0,
        )
        steps_per_update = args.ppo_epochs * args.num_mini_batches
        warmup = args.warmup_steps or int(args.warmup_ratio * args.max_steps)
        kind = "constant_with_warmup" if args.lr_scheduler_type == "constant" and warmup else args.lr_scheduler_type
        self.scheduler = get_scheduler(  # stepped by us once per optimizer step, on the base optimizer
            kind,
            optimizer,
            num_warmup_steps=warmup * steps_per_update,
            num_training_steps=args.max_steps * steps_per_update,
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.reference = frozen_engine(reference, accelerator) if reference is not None else None
        self.moments = losses.RunningMoments()

    def reduce_sum(self, t: Any) -> Any:
        return self.acc.reduce(t, "sum") if self.acc.num_processes > 1 else t

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.acc.unwrap_model(self.model)

    def experience(self, batch: dict[str, Any], scores: list[float], kl_coef: float) -> Experience:
        """Old log-probs, values, reference log-probs, KL, rewards and global-whitened advantages (no grad)."""
        import torch

        args, acc, temp = self.args, self.acc, self.temperature
        mask = batch["response_mask"]
        self.model.eval()
        with torch.no_grad():
            logits, values = self.model(**model_inputs(batch))  # (B, R + 1, V), (B, R + 1)
            old_logprobs, entropy = logprobs_and_entropy(logits, batch, temp)
            del logits
            policy = self.unwrapped.policy if self.reference is None else None  # unwrapping is not free
            ref_logprobs, _ = logprobs_and_entropy(reference_logits(self.reference, policy, batch), batch, temp, False)
            old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
            old_values = response_values(values, batch) * mask
            kl = losses.kl_per_token(old_logprobs, ref_logprobs, self.measured_kl) * mask  # (B, R)
            raw = torch.tensor(scores, device=acc.device, dtype=torch.float32)
            shaped = losses.leave_one_out_baseline(raw, args.num_generations) if args.score_baseline == "prompt" else raw
            if args.reward_normalization == "running":
                everyone = acc.gather(shaped) if acc.num_processes > 1 else shaped
                self.moments.update(everyone.tolist())
                shaped = (shaped - self.moments.mean) / max(self.moments.std, 1e-8)
            rewards = losses.shaped_rewards(shaped, kl, mask, kl_coef if args.kl_in == "reward" else 0.0)
            if args.whiten_rewards:
                rewards = losses.masked_whiten(rewards, mask, shift_mean=False, reduce_sum=self.reduce_sum)
            advantages, returns = losses.gae(rewards, old_values, mask, args.gamma, args.lam)
            advantages = losses.masked_whiten(advantages, mask, reduce_sum=self.reduce_sum)
        return Experience(batch, old_logprobs, ref_logprobs, old_values, advantages, returns, kl, entropy * mask, raw)

    def optimizer_state_keys(self, group: int) -> tuple[Any, list[Any]]:
        """(the optimizer that holds Adam's state, the tensors it keys the state of parameter group `group` by:
        0 the actor, 1 the critic). Without DeepSpeed those are the parameters; ZeRO steps flat fp32 partitions."""
        base, owner = self.optimizer, None
        while hasattr(base, "optimizer"):  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> the torch one
            owner, base = base, base.optimizer
        if hasattr(owner, "sub_group_to_group_id"):  # ZeRO-3: partitions per sub-group, put in the groups only to step
            group_of = owner.sub_group_to_group_id
            return base, [flat for sub, flat in enumerate(owner.fp32_partitioned_groups_flat) if group_of[sub] == group]
        if hasattr(owner, "single_partition_of_fp32_groups"):  # ZeRO-1/2: one partition per group
            return base, [owner.single_partition_of_fp32_groups[group]]
        return base, list(base.param_groups[group]["params"])

    def forget_actor_state(self) -> None:
        """Drop the actor's optimizer state, so its first update after critic warm-up is a fresh Adam's.

        Without DeepSpeed the actor has none then (its gradients are None during warm-up); ZeRO steps the actor's
        flat partition with zero gradients, which advances Adam's step count and decays its moments."""
        base, keys = self.optimizer_state_keys(0)
        for key in keys:
            base.state.pop(key, None)

    # -- the update, undone as a whole when any process sees a non-finite loss -------------------

    def snapshot(self, scratch: Path | None) -> Any:
        if self.deepspeed:
            if scratch is None:
                raise WorkbenchError("internal: a DeepSpeed PPO update needs a scratch directory for its snapshot")
            self.acc.save_state(str(scratch))
            return scratch
        import torch

        def to_cpu(x: Any) -> Any:  # a copy in host memory, so the snapshot costs no accelerator memory
            if isinstance(x, torch.Tensor):
                return x.detach().to("cpu", copy=True)
            if isinstance(x, dict):
                return {k: to_cpu(v) for k, v in x.items()}
            if isinstance(x, list):
                return [to_cpu(v) for v in x]
            return copy.deepcopy(x)

        return to_cpu(self.unwrapped.state_dict()), to_cpu(self.optimizer.state_dict()), to_cpu(self.scheduler.state_dict())

    def restore(self, snap: Any) -> None:
        import torch

        self.optimizer.zero_grad()
        if self.deepspeed:
            self.acc.load_state(str(snap))
            sched = json.loads((Path(snap) / "ppo_scheduler.json").read_text())
            self.scheduler.load_state_dict(sched)
            return
        weights, opt, sched = snap
        with torch.no_grad():
            for k, v in self.unwrapped.state_dict().items():
                v.copy_(weights[k])
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(sched)

    def update(self, step: int, exp: Experience, kl_coef: float, scratch: Path | None = None) -> dict[str, float] | None:
        """`ppo_epochs` passes over mini-batches; None (and nothing changed) when any loss on any process was non-finite."""
        import torch

        acc, args = self.acc, self.args
        size = exp.batch["input_ids"].shape[0]
        for problem in ppo_batch_problems(size, args.num_mini_batches, args.gradient_accumulation_steps):
            raise WorkbenchError(problem)  # validate refuses such sizes; never drop rows or leave gradients here
        snap = None
        if self.deepspeed and scratch is not None:
            self.snapshot(scratch)
            (scratch / "ppo_scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
            snap = scratch
        elif not self.deepspeed:
            snap = self.snapshot(None)
        t0 = time.perf_counter()
        self.model.train()
        mb_size = size // args.num_mini_batches
        micro_size = mb_size // args.gradient_accumulation_steps
        rng = torch.Generator().manual_seed(self.seed + step)
        acc_metrics: dict[str, list[float]] = {
            k: [] for k in ("policy", "value", "kl_loss", "loss", "clipfrac", "approxkl", "vclipfrac")
        }
        actor_on = step > args.critic_warmup_steps
        for _ in range(args.ppo_epochs):
            perm = torch.randperm(size, generator=rng)
            for mb_start in range(0, size, mb_size):
                mb_rows = perm[mb_start : mb_start + mb_size].to(acc.device)
                mb_tokens = self.reduce_sum(exp.batch["response_mask"][mb_rows].sum()).clamp(min=1)
                scale = acc.num_processes * args.gradient_accumulation_steps  # DDP averages, accumulation divides
                for mc_start in range(0, len(mb_rows), micro_size):
                    values = self.micro_step(exp, mb_rows[mc_start : mc_start + micro_size], mb_tokens / scale, kl_coef, actor_on)
                    if values is None:
                        if snap is not None:
                            self.restore(snap)
                        self.model.eval()
                        return None
                    for key, value in zip(acc_metrics, values):
                        acc_metrics[key].append(value)
        if not actor_on:
            self.forget_actor_state()
        self.model.eval()
        exp.seconds["learn"] = exp.seconds.get("learn", 0.0) + time.perf_counter() - t0  # after the loop's experience pass
        return {key: sum(v) / len(v) for key, v in acc_metrics.items()}

    def micro_step(self, exp: Experience, rows: Any, num_tokens: Any, kl_coef: float, actor_on: bool) -> tuple[float, ...] | None:
        """One forward/backward on a micro-batch (optimizer and LR step when accumulation completes)."""
        import torch

        acc, args = self.acc, self.args
        mb = select_rows(exp.batch, rows)
        m = mb["response_mask"]
        with acc.accumulate(self.model):
            # the value loss reaches the shared backbone only when asked and never while the actor is off
            value_grad = bool(args.value_head_trains_backbone) and actor_on
            logits, values = self.model(**model_inputs(mb), value_grad=value_grad)  # (b, R + 1, V), (b, R + 1)
            new_logprobs, _ = logprobs_and_entropy(logits, mb, self.temperature, with_entropy=False)
            new_logprobs = new_logprobs * m
            pg_loss, clipfrac, approxkl = losses.clipped_policy_loss(
                new_logprobs, exp.old_logprobs[rows], exp.advantages[rows], m, args.cliprange, num_tokens
            )
            kl_loss = torch.zeros_like(pg_loss)
            if args.kl_in == "loss" and kl_coef:
                kl_loss = losses.token_mean(
                    losses.kl_per_token(new_logprobs, exp.ref_logprobs[rows], self.kl_estimator), m, num_tokens
                )
            vf_loss, vclipfrac = losses.clipped_value_loss(
                response_values(values, mb), exp.old_values[rows], exp.returns[rows], m, args.cliprange_value, num_tokens
            )
            actor_loss = (pg_loss + kl_coef * kl_loss) * float(actor_on)
            loss = actor_loss + args.vf_coef * vf_loss
            bad = self.reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1))
            if float(bad.sum()) > 0:  # some process saw a non-finite loss: every process stops here
                self.optimizer.zero_grad()
                return None
            acc.backward(loss)
            if not actor_on and not self.deepspeed:  # no actor gradient (not zeros): AdamW leaves its state alone
                for p in self.actor_params:  # (DDP has reduced them already; ZeRO's are dropped in forget_actor_state)
                    p.grad = None
            if (
                acc.sync_gradients and args.max_grad_norm and not self.deepspeed
            ):  # separately: a huge value loss cannot starve the policy
                acc.clip_grad_norm_(self.actor_params, args.max_grad_norm)
                acc.clip_grad_norm_(self.critic_params, args.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad()
        total = float(loss.detach()) / float(m.sum().clamp(min=1)) * float(num_tokens)
        share = float(num_tokens) / float(m.sum().clamp(min=1))  # back to a per-token mean over this shard
        return (
            float(pg_loss.detach()) * share,
            float(vf_loss.detach()) * share,
            float(kl_loss.detach()) * share,
            total,
            float(clipfrac.detach()),
            float(approxkl.detach()),
            float(vclipfrac.detach()),
        )
