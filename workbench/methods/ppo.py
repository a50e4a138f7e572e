"""PPO for RLHF, ours (TRL removed its PPO trainer): actor-critic on accelerate + DeepSpeed.

One update = rollout (workbench/sampling/: generate -> score) -> one no-grad forward of policy, value model
and reference -> per-token KL -> shaped rewards -> GAE -> `ppo_epochs` passes of clipped policy and value
losses over mini-batches. This module is the run loop; models, experience and the updates are in
`methods/ppo_learner.py`, the math in `losses.py`. Design choices and their reasons: docs/ppo.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from workbench import losses
from workbench.checkpoint import mark_complete
from workbench.config import train_config_class, train_field_defaults
from workbench.errors import WorkbenchError
from workbench.health import MANIFEST_FLAGS, PPO_HISTORY_KEYS, ppo_diagnosis
from workbench.method_checks import ppo_kl_estimator, ppo_mixed_precision, refuse_method_problems
from workbench.methods import hf
from workbench.methods.ppo_learner import Experience, Learner, build_models
from workbench.sampling.generation import sample_and_score
from workbench.sampling.logprobs import completion_batch
from workbench.sampling.settings import hf_generation_config
from workbench.scoring import reward_source

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult

log = logging.getLogger("workbench")


def ppo_args(ctx: RunContext) -> SimpleNamespace:
    """`train:` over PPOConfig's defaults, refused with every problem `validate` lists (workbench/method_checks.py)."""
    refuse_method_problems(ctx.recipe, ctx.world_size)
    return SimpleNamespace(**{**train_field_defaults(train_config_class("ppo")), **ctx.recipe.train})


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
            "value_model": value_kind(loop.learner.unwrapped),
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
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=ppo_mixed_precision(vars(args))
        )
        model, reference, described = build_models(recipe, ctx.tokenizer, args)
        self.learner = Learner(accelerator, model, reference, args, recipe.seed, recipe.generation.temperature)
        if self.learner.reference is not None and self.learner.reference is not reference:
            described["reference"] += ", sharded by a DeepSpeed ZeRO-3 inference engine"
        numel = lambda m: sum(getattr(p, "ds_numel", p.numel()) for p in m.parameters())  # noqa: E731  (ZeRO-3: shards hold 0)
        counts = {"policy_parameters": numel(model.policy), "value_parameters": numel(model.value or model.value_head)}
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
        estimator = ppo_kl_estimator(args.kl_estimator, args.kl_in)
        ctx.tracker.update_manifest(**described, **counts, kl_estimator=estimator, mixed_precision=accelerator.mixed_precision)

    def resume(self, checkpoint: Path) -> None:
        state = json.loads((checkpoint / "ppo_state.json").read_text())
        now = value_kind(self.learner.unwrapped)
        refuse_other_value_model(checkpoint, state.get("value_model"), now)
        try:
            self.learner.acc.load_state(str(checkpoint))
        except RuntimeError as e:  # an unrecorded kind in a format whose keys we do not read (DeepSpeed's)
            if "value_head." in str(e) or "value.model" in str(e):
                refuse_other_value_model(checkpoint, "separate" if now == "head" else "head", now)
            raise
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
        self.ctx.tracker.begin_progress(args.max_steps, self.start)
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


HISTORY_KEYS = PPO_HISTORY_KEYS  # per update, kept for the end-of-run diagnosis (workbench/health.py)


def run(ctx: RunContext) -> RunResult:
    from workbench.context import RunResult

    loop = PPOLoop(ctx)
    if ctx.resume_checkpoint:
        loop.resume(Path(ctx.resume_checkpoint))
    loop.train()
    findings = ppo_diagnosis(
        loop.history, loop.args.critic_warmup_steps, loop.args.diagnose_kl, ctx.recipe.generation.max_new_tokens
    )
    for f in findings:
        log.warning("PPO diagnosis: %s: %s", f["code"], f["message"])
    ctx.tracker.update_manifest(**{MANIFEST_FLAGS: findings})  # the report shows these flags as written
    model_dir = export_policy(loop.learner, ctx)
    return RunResult(ctx.run_dir, model_dir, {}, train_tokens=loop.tokens["train"], generated_tokens=loop.tokens["generated"])


VALUE_KINDS = {"head": ("a value head on the policy's backbone", "shared"), "separate": ("a separate critic", "separate")}


def value_kind(model: Any) -> str:
    """ "head" or "separate": the resolved value model, recorded in ppo_state.json so a resume can check it."""
    return "head" if model.value is None else "separate"


def checkpoint_value_kind(checkpoint: Path) -> str | None:
    """The value model a checkpoint's weights hold, from its key names (accelerate's model.safetensors); None: unknown."""
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if any(k.startswith("value_head.") for k in keys):
        return "head"
    return "separate" if any(k.startswith("value.") for k in keys) else None


def refuse_other_value_model(checkpoint: Path, recorded: str | None, now: str) -> None:
    """One sentence instead of a state-dict traceback when a checkpoint holds the other kind of value model (a run
    started when `value_model: auto` meant a separate critic, resumed after it came to mean a value head)."""
    was = recorded or checkpoint_value_kind(checkpoint)
    if was is None or was == now:
        return
    setting = VALUE_KINDS[was][1]
    raise WorkbenchError(
        f"{checkpoint} was trained with {VALUE_KINDS[was][0]} but train.value_model now resolves to {VALUE_KINDS[now][0]}; "
        f"resume with --set train.value_model={setting} --allow-changes train.value_model"
    )


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
