"""PPO for RLHF, ours (TRL removed its PPO trainer): actor-critic on accelerate + DeepSpeed.

One update = rollout (workbench/rollout.py: generate -> score) -> one no-grad forward of policy,
value model and reference -> per-token KL -> shaped rewards -> GAE -> `ppo_epochs` passes of
clipped policy and value losses over mini-batches. The math lives in `workbench/losses.py`.

Design choices (after OpenRLHF, "The N+ implementation details of RLHF with PPO" and TRL's
removed PPOTrainer):
- Sampled distribution: every log-prob (rollout, ratio, reference, entropy, KL) is taken from
  logits / temperature, the distribution generation sampled; top_k / top_p are refused because a
  truncated distribution has -inf log-probs for tokens the new policy may move into. Generation uses
  a complete GenerationConfig built from the recipe (nothing inherited from the checkpoint), written
  to `generation_config.json` in the run dir. A response keeps the EOS id that actually ended it.
- Frozen models: a reward model is a whole plain copy on every process under every launch config
  (never created inside ZeRO-3's partitioned init, which left it with size-0 weights). The reference
  is loaded whole, then under ZeRO-3 wrapped in a DeepSpeed inference engine sharded like the policy
  (a plain copy otherwise); under LoRA it is the policy with its adapters disabled. The value model is
  trained, so it is part of the prepared engine and sharded like the policy under ZeRO-3.
- Value model: a separate critic (AutoModelForTokenClassification, from the policy or the reward
  model) for full fine-tuning; under LoRA by default a value head on the policy's own backbone
  (one forward for both, no second backbone copy; the value loss also trains the shared adapters).
- Actor and critic are two parameter groups of one AdamW (own learning rates, no weight decay) with
  their own gradient clipping, so a huge value loss cannot clip the policy's gradient to nothing.
  Under DeepSpeed the engine owns clipping: `max_grad_norm` is its `gradient_clipping` (one norm).
- Rewards: the score (optionally minus the leave-one-out mean of its prompt's other samples, and
  normalized by the running mean/std of all scores) on the last token; KL either as a per-token
  reward penalty (k1/k3) or as a loss term. Advantages (and rewards, when whitened) are whitened with
  statistics of the whole global batch; losses are token sums over the global mini-batch's token
  count, so 1 process x 16 rows and 2 processes x 8 rows give the same update.
- Dropout is disabled (on-policy log-probs must be deterministic); models are in train mode while
  learning so gradient checkpointing engages.
- The LR schedule is stepped by us once per optimizer step (accelerate would step it once per
  process under DDP but not under DeepSpeed); warmup is given in updates.
- Non-finite guard: each micro-batch's loss is checked on every process and the flag summed over
  all of them before any backward; a bad update is undone (weights, optimizer and scheduler restored
  from a snapshot taken before it: in memory, or an accelerate state directory under DeepSpeed).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from workbench import losses
from workbench.checkpoint import mark_complete
from workbench.config import ModelConfig, train_config_class, train_field_defaults
from workbench.errors import WorkbenchError
from workbench.generation import hf_generation_config
from workbench.methods import hf
from workbench.models import apply_lora, load_causal_lm, plain_loading
from workbench.rollout import completion_batch, logprobs_and_entropy, refuse_unmodelled_sampling, sample_and_score
from workbench.scoring import reward_source

if TYPE_CHECKING:
    from workbench.runner import RunContext, RunResult

log = logging.getLogger("workbench")
DATA_KIND = "prompt"


def ppo_args(ctx: RunContext) -> SimpleNamespace:
    args = SimpleNamespace(**{**train_field_defaults(train_config_class("ppo")), **ctx.recipe.train})
    if args.per_device_train_batch_size % args.num_generations:
        raise WorkbenchError(
            f"train.num_generations ({args.num_generations}) must divide train.per_device_train_batch_size ({args.per_device_train_batch_size})"
        )
    if args.score_baseline == "prompt" and args.num_generations < 2:
        raise WorkbenchError("train.score_baseline: prompt needs train.num_generations >= 2 (samples of the same prompt)")
    return args


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

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any) -> tuple[Any, Any]:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if self.value is None:
            out = self.policy(**kw, output_hidden_states=True)
            return out.logits, self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)
        return self.policy(**kw).logits, self.value(**kw).logits.squeeze(-1)  # (B, L, V), (B, L)

    def critic_parameters(self) -> list[Any]:
        part = self.value_head if self.value is None else self.value
        return [p for p in part.parameters() if p.requires_grad]

    def actor_parameters(self) -> list[Any]:
        return [p for p in self.policy.parameters() if p.requires_grad]


def build_models(recipe: Any, tokenizer: Any, args: SimpleNamespace) -> tuple[PolicyAndValue, Any, dict[str, str]]:
    """(policy + value, frozen reference or None under LoRA, what was built for the manifest)."""
    from transformers import AutoModelForTokenClassification

    from workbench.models import torch_dtype

    policy = load_causal_lm(recipe.model, tokenizer)
    reference = None  # under LoRA: the policy with its adapters disabled, no second copy
    if recipe.model.lora is not None:
        policy = apply_lora(policy, recipe.model, task_type="CAUSAL_LM")
    else:
        with plain_loading():  # frozen: a whole copy per process, never partitioned
            reference = load_causal_lm(
                ModelConfig(name_or_path=recipe.reference.name_or_path or recipe.model.name_or_path, dtype=recipe.model.dtype),
                tokenizer,
            )
        reference.eval().requires_grad_(False)
        disable_dropout(reference)
    shared = args.value_model == "shared" or (args.value_model == "auto" and recipe.model.lora is not None)
    value, described = None, "value head on the policy's backbone"
    if not shared:
        rm = recipe.reward_model
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
    ref_kind = (
        f"frozen copy of {reference.config._name_or_path}" if reference is not None else "policy base with adapters disabled"
    )
    return model, reference, {"reference": ref_kind, "value_model": described}


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
    """The frozen reference's logits: a separate model, or the LoRA policy with its adapters disabled."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    if reference is not None:
        return reference(**kwargs).logits
    with policy.disable_adapter():
        return policy(**kwargs).logits


def response_values(values: Any, batch: dict[str, Any]) -> Any:
    """V(state before each response token), (B, R)."""
    p = batch["prompt_width"]
    return values[:, p - 1 : p - 1 + batch["response_mask"].shape[1]].float()


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
            logits, values = self.model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
            old_logprobs, entropy = logprobs_and_entropy(logits, batch, temp)
            del logits
            ref_logprobs, _ = logprobs_and_entropy(
                reference_logits(self.reference, self.unwrapped.policy, batch), batch, temp, False
            )
            old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
            old_values = response_values(values, batch) * mask
            kl = losses.kl_per_token(old_logprobs, ref_logprobs, args.kl_estimator) * mask  # (B, R)
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
        snap = None
        if self.deepspeed and scratch is not None:
            self.snapshot(scratch)
            (scratch / "ppo_scheduler.json").write_text(json.dumps(self.scheduler.state_dict()))
            snap = scratch
        elif not self.deepspeed:
            snap = self.snapshot(None)
        t0 = time.perf_counter()
        self.model.train()
        size = exp.batch["input_ids"].shape[0]
        mb_size = max(1, size // args.num_mini_batches)
        micro_size = max(1, mb_size // args.gradient_accumulation_steps)
        rng = torch.Generator().manual_seed(self.seed + step)
        acc_metrics: dict[str, list[float]] = {
            k: [] for k in ("policy", "value", "kl_loss", "loss", "clipfrac", "approxkl", "vclipfrac")
        }
        actor_on = step > args.critic_warmup_steps
        for _ in range(args.ppo_epochs):
            perm = torch.randperm(size, generator=rng)
            for mb_start in range(0, mb_size * args.num_mini_batches, mb_size):
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
        self.model.eval()
        exp.seconds["learn"] = time.perf_counter() - t0
        return {key: sum(v) / len(v) for key, v in acc_metrics.items()}

    def micro_step(self, exp: Experience, rows: Any, num_tokens: Any, kl_coef: float, actor_on: bool) -> tuple[float, ...] | None:
        """One forward/backward on a micro-batch (optimizer and LR step when accumulation completes)."""
        import torch

        acc, args = self.acc, self.args
        mb = select_rows(exp.batch, rows)
        m = mb["response_mask"]
        with acc.accumulate(self.model):
            logits, values = self.model(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
            new_logprobs, _ = logprobs_and_entropy(logits, mb, self.temperature, with_entropy=False)
            new_logprobs = new_logprobs * m
            pg_loss, clipfrac, approxkl = losses.clipped_policy_loss(
                new_logprobs, exp.old_logprobs[rows], exp.advantages[rows], m, args.cliprange, num_tokens
            )
            kl_loss = torch.zeros_like(pg_loss)
            if args.kl_in == "loss" and kl_coef:
                kl_loss = losses.token_mean(
                    losses.kl_per_token(new_logprobs, exp.ref_logprobs[rows], args.kl_estimator), m, num_tokens
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
            float(clipfrac),
            float(approxkl),
            float(vclipfrac),
        )


def save_checkpoint(loop: PPOLoop, step: int) -> None:
    acc, ctx = loop.learner.acc, loop.ctx
    path = ctx.run_dir / "checkpoints" / f"checkpoint-{step}"
    acc.save_state(str(path))
    if ctx.is_main:
        ctx.tracker.flush()
        state = {
            "step": step,
            "kl": loop.controller.state_dict(),
            "position": loop.position,
            "tokens": loop.tokens,
            "scheduler": loop.learner.scheduler.state_dict(),
            "moments": loop.learner.moments.state_dict(),
            "history": loop.history,
        }
        (path / "ppo_state.json").write_text(json.dumps(state))
    acc.wait_for_everyone()
    if ctx.is_main:
        mark_complete(path)
    acc.wait_for_everyone()


class PPOLoop:
    """One PPO run: data order, rollouts, the learner, KL controller, logging and checkpoints."""

    def __init__(self, ctx: RunContext):
        from accelerate import Accelerator

        self.ctx, self.args, recipe = ctx, ppo_args(ctx), ctx.recipe
        args = self.args
        refuse_unmodelled_sampling(recipe.generation, "PPO")
        accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps)
        model, reference, described = build_models(recipe, ctx.tokenizer, args)
        self.learner = Learner(accelerator, model, reference, args, recipe.seed, recipe.generation.temperature)
        if self.learner.reference is not None and self.learner.reference is not reference:
            described["reference"] += ", sharded by a DeepSpeed ZeRO-3 inference engine"
        counts = {
            "policy_parameters": sum(p.numel() for p in model.policy.parameters()),
            "value_parameters": sum(p.numel() for p in (model.value or model.value_head).parameters()),
        }
        self.score = reward_source(recipe.reward_model, recipe.data.max_length, accelerator.device)
        self.controller = losses.AdaptiveKLController(args.kl_coef, args.target_kl or 1.0, args.kl_horizon)
        self.tokenized = [t.prompt_ids for t in ctx.data.tokenized["train"]]
        import torch

        self.order = torch.randperm(len(self.tokenized), generator=torch.Generator().manual_seed(recipe.seed)).tolist()
        self.prompts_per_process = args.per_device_train_batch_size // args.num_generations
        self.seed = recipe.seed if recipe.generation.seed is None else recipe.generation.seed
        self.start, self.position = 0, 0
        self.tokens = {"train": 0, "generated": 0}  # all processes, for the run's cost
        self.history: list[dict[str, float]] = []  # per update, for the end-of-run diagnosis
        gen = hf_generation_config(recipe.generation, args.num_generations, ctx.tokenizer.pad_token_id, set())
        if ctx.is_main:
            gen_dict = gen.to_diff_dict()
            gen_dict.pop("eos_token_id", None)  # the policy's EOS ids are added at generation time
            (ctx.run_dir / "generation_config.json").write_text(json.dumps(gen_dict, indent=2, sort_keys=True))
        ctx.tracker.update_manifest(**described, **counts)

    def resume(self, checkpoint: Path) -> None:
        self.learner.acc.load_state(str(checkpoint))
        state = json.loads((checkpoint / "ppo_state.json").read_text())
        self.start, self.position = state["step"], state["position"]
        self.controller.load_state_dict(state["kl"])
        self.tokens = state.get("tokens", self.tokens)
        if "scheduler" in state:
            self.learner.scheduler.load_state_dict(state["scheduler"])
            self.learner.moments.load_state_dict(state["moments"])
            self.history = state["history"]

    def rollout(self, step: int) -> Experience:
        """Generate for this process's prompts, score, and turn it into experience."""
        acc, args, tok = self.learner.acc, self.args, self.ctx.tokenizer
        global_prompts = self.prompts_per_process * acc.num_processes
        picks = [self.order[(self.position + i) % len(self.order)] for i in range(global_prompts)]
        self.position += global_prompts
        mine = picks[acc.process_index :: acc.num_processes]
        policy = self.learner.unwrapped.policy
        with gathered_for_generation(policy, acc):
            samples = sample_and_score(
                policy,
                tok,
                [self.tokenized[i] for i in mine],
                [self.ctx.data.train[i]["prompt"] for i in mine],
                self.ctx.recipe.generation,
                self.seed + step * 1000 + acc.process_index,
                self.score,
                num_samples=args.num_generations,
            )
        raw = samples.scores
        if args.missing_eos_penalty is not None:
            raw = [s - (0.0 if c.finished else args.missing_eos_penalty) for s, c in zip(raw, samples.completions)]
        t0 = time.perf_counter()
        batch = completion_batch([self.tokenized[i] for i in mine], samples.completions, tok.pad_token_id, acc.device)
        exp = self.learner.experience(batch, raw, self.controller.value)
        exp.seconds = {**samples.seconds, "learn": time.perf_counter() - t0}
        exp.batch["finished"] = [c.finished for c in samples.completions]
        return exp

    def metrics(self, exp: Experience, opt: dict[str, float], mean_kl: float) -> dict[str, float]:
        import torch

        acc = self.learner.acc
        mean = lambda t: float(acc.reduce(t, "mean")) if acc.num_processes > 1 else float(t)  # noqa: E731
        mask = exp.batch["response_mask"]
        mean_score = float((acc.gather(exp.scores) if acc.num_processes > 1 else exp.scores).mean())
        finished = torch.tensor([float(f) for f in exp.batch["finished"]], device=acc.device).mean()
        seconds = exp.seconds
        tokens = float(mask.sum()) * acc.num_processes
        coef = self.controller.value
        return {
            "train/loss": opt["loss"],
            "train/objective/scores": mean_score,
            "train/objective/kl": mean_kl,
            "train/objective/entropy": mean(losses.masked_mean(exp.entropy, mask)),
            "train/objective/rlhf_reward": mean_score - coef * mean_kl,
            "train/policy/approxkl": opt["approxkl"],
            "train/policy/clipfrac": opt["clipfrac"],
            "train/policy/entropy": mean(losses.masked_mean(exp.entropy, mask)),
            "train/loss/policy": opt["policy"],
            "train/loss/value": opt["value"],
            "train/loss/kl": opt["kl_loss"],
            "train/val/clipfrac": opt["vclipfrac"],
            "train/val/explained_variance": float(losses.explained_variance(exp.old_values, exp.returns, mask)),
            "train/response_length": mean(mask.sum(1).mean()),
            "train/finished_share": mean(finished),
            "train/kl_coef": coef,
            "train/reward_running_mean": self.learner.moments.mean,
            "train/reward_running_std": self.learner.moments.std,
            "train/learning_rate": self.learner.scheduler.get_last_lr()[0],
            "train/time/generate": seconds["generate"],
            "train/time/score": seconds["score"],
            "train/time/learn": seconds["learn"],
            "train/generated_tokens_per_second": tokens / max(seconds["generate"], 1e-9),
            "train/learn_tokens_per_second": float(exp.batch["attention_mask"].sum())
            * acc.num_processes
            * self.args.ppo_epochs
            / max(seconds["learn"], 1e-9),
        }

    def count_tokens(self, exp: Experience) -> None:
        acc = self.learner.acc
        red = (lambda t: int(acc.reduce(t, "sum"))) if acc.num_processes > 1 else int
        self.tokens["train"] += red(exp.batch["attention_mask"].sum()) * self.args.ppo_epochs
        self.tokens["generated"] += red(exp.batch["response_mask"].sum())

    def train(self) -> None:
        import torch

        args, acc, nonfinite = self.args, self.learner.acc, 0
        scratch = self.ctx.run_dir / "checkpoints" / ".before-update" if self.learner.deepspeed else None
        for step in range(self.start + 1, args.max_steps + 1):
            exp = self.rollout(step)
            bad_kl = self.learner.reduce_sum((~torch.isfinite(exp.kl.sum())).float().reshape(1))
            opt = None if float(bad_kl.sum()) > 0 else self.learner.update(step, exp, self.controller.value, scratch)
            if opt is None:
                nonfinite = guard_nonfinite(nonfinite, args, step, "KL" if float(bad_kl.sum()) > 0 else "loss")
                continue
            nonfinite = 0
            self.count_tokens(exp)
            seq_kl = exp.kl.sum(1).mean()
            mean_kl = float(acc.reduce(seq_kl, "mean")) if acc.num_processes > 1 else float(seq_kl)
            if args.target_kl is not None:
                self.controller.update(mean_kl, args.per_device_train_batch_size * acc.num_processes)
            metrics = self.metrics(exp, opt, mean_kl)
            self.history.append({k: metrics[k] for k in HISTORY_KEYS})
            if step % args.logging_steps == 0 or step == args.max_steps:
                self.ctx.tracker.log(metrics, step=step)
            if args.save_steps and step % args.save_steps == 0:
                save_checkpoint(self, step)
        if scratch is not None and self.ctx.is_main:
            shutil.rmtree(scratch, ignore_errors=True)


HISTORY_KEYS = (
    "train/objective/scores",
    "train/objective/kl",
    "train/policy/entropy",
    "train/val/explained_variance",
    "train/finished_share",
)


def diagnose(history: list[dict[str, float]], warmup: int, kl_limit: float) -> list[dict[str, str]]:
    """Short end-of-run findings when the training signals look unhealthy (pure: per-update metrics in, messages out)."""
    if len(history) < 4:
        return []
    k = max(1, len(history) // 5)
    first, last = history[:k], history[-k:]
    avg = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    out = []
    after = history[warmup:][-k:] or last
    if avg(after, "train/val/explained_variance") < 0:
        out.append(
            {
                "code": "value_not_learning",
                "message": "explained variance is below 0 at the end: the critic predicts returns worse than their mean (raise critic_learning_rate, add critic_warmup_steps)",
            }
        )
    if avg(last, "train/objective/kl") > kl_limit:
        out.append(
            {
                "code": "kl_high",
                "message": f"sequence KL to the reference ended at {avg(last, 'train/objective/kl'):.3g} (> {kl_limit}): raise kl_coef or set target_kl",
            }
        )
    f0, f1 = avg(first, "train/finished_share"), avg(last, "train/finished_share")
    if f0 >= 0.2 and f1 < 0.5 * f0:
        out.append(
            {
                "code": "finished_collapse",
                "message": f"the share of responses that end on their own fell from {f0:.2f} to {f1:.2f}: the policy learned to run to the length cap (set missing_eos_penalty)",
            }
        )
    s0, s1 = avg(first, "train/objective/scores"), avg(last, "train/objective/scores")
    e0, e1 = avg(first, "train/policy/entropy"), avg(last, "train/policy/entropy")
    if s1 > s0 and e0 > 0 and e1 < 0.25 * e0:
        out.append(
            {
                "code": "entropy_collapse",
                "message": f"reward rose while entropy collapsed ({e0:.2f} -> {e1:.2f}): likely reward hacking or a degenerate policy",
            }
        )
    return out


def run(ctx: RunContext) -> RunResult:
    from workbench.runner import RunResult

    loop = PPOLoop(ctx)
    if ctx.resume_checkpoint:
        loop.resume(Path(ctx.resume_checkpoint))
    loop.train()
    findings = diagnose(loop.history, loop.args.critic_warmup_steps, loop.args.diagnose_kl)
    for f in findings:
        log.warning("PPO diagnosis: %s", f["message"])
    ctx.tracker.update_manifest(diagnosis=findings)
    model_dir = export_policy(loop.learner, ctx)
    return RunResult(ctx.run_dir, model_dir, {}, train_tokens=loop.tokens["train"], generated_tokens=loop.tokens["generated"])


def guard_nonfinite(count: int, args: SimpleNamespace, step: int, what: str) -> int:
    """Count an undone update whose loss or KL was not finite; stop after `max_nonfinite_updates` in a row."""
    count += 1
    log.warning("update %d: non-finite %s on some process; the update was undone (%d in a row)", step, what, count)
    if count >= args.max_nonfinite_updates:
        raise WorkbenchError(
            f"PPO stopped: {count} updates in a row had a non-finite {what} (train.max_nonfinite_updates); lower train.learning_rate or check the reward (the last good state is in checkpoints/)"
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


def export_policy(learner: Learner, ctx: RunContext) -> Path:
    """model/: the policy alone, gathered from every process, loadable with from_pretrained."""
    accelerator, model = learner.acc, learner.model
    model_dir = ctx.run_dir / "model"
    state = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if ctx.is_main:
        policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
        bad = [k for k, v in policy_state.items() if not bool(v.isfinite().all())]
        if bad:
            raise WorkbenchError(f"refusing to save a policy with non-finite weights ({bad[0]}, ...)")
        unwrapped.policy.save_pretrained(str(model_dir), state_dict=policy_state, safe_serialization=True)
        ctx.tokenizer.save_pretrained(str(model_dir))
    accelerator.wait_for_everyone()
    with gathered_for_generation(unwrapped.policy, accelerator):
        hf.check_export(unwrapped.policy, accelerator, ctx, model_dir)
    return model_dir
