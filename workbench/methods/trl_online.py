"""What GRPO and RLOO share: TRL's online trainers fed the data layer's prompts and the workbench's reward source.

- Prompts come from the shared data layer (pairs' prompts or prompt-only data) and are tokenized by it
  (`data/formatting.py`: chat template, long prompts keep their end), not by TRL.
- The reward is the recipe's `reward_model:` (a function or a reward-model directory, with `normalize`)
  through `workbench/scoring.py`, with the same output check as rejection sampling and PPO; completions
  reach it as text, as in those methods.
- Sampling settings come from `generation:` or TRL's own `train:` names (`workbench/sampling/settings.py`).
- Training arguments, tracking, resume and the checked export are `methods/hf.py`'s, as for DPO or SFT.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from workbench.config import reference_rule
from workbench.data.schema import text_of
from workbench.methods import hf
from workbench.models import apply_lora, load_causal_lm
from workbench.sampling.settings import trl_generation_fields
from workbench.scoring import reward_source

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult

log = logging.getLogger("workbench")


class DataLayerPrompts:
    """Mixin for TRL's GRPOTrainer / RLOOTrainer: prompt ids from the data layer; generated tokens counted."""

    workbench_max_prompt_length = 512
    workbench_generated_tokens = 0  # this process's sampled tokens

    def _tokenize_prompts(self, prompts: list[Any]) -> tuple[list[list[int]], None, dict[str, Any]]:
        from workbench.data.formatting import tokenize_prompt

        tokenizer = self.processing_class  # type: ignore[attr-defined]
        ids = [tokenize_prompt(tokenizer, p, self.workbench_max_prompt_length).prompt_ids for p in prompts]
        return ids, None, {}

    def _generate(self, prompts: list[Any]) -> Any:
        out = super()._generate(prompts)  # type: ignore[misc]
        self.workbench_generated_tokens += sum(len(ids) for ids in out[1])  # out[1]: completion ids
        return out


def reward_model_for_trl(ctx: RunContext, device: Any) -> Any:
    """The recipe's reward source as a TRL reward function.

    A reward model is scored through `scoring.reward_source`, which loads it whole (never partitioned by
    ZeRO-3's init) and places it on this process's device: the same path as PPO.
    """
    recipe = ctx.recipe
    source = reward_source(recipe.reward_model, recipe.data.max_length, device)

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c if isinstance(c, str) else text_of(c) for c in completions]  # TRL passes messages for chat data
        return source(prompts, texts)

    return reward  # TRL logs it as rewards/reward/...


def online_args(ctx: RunContext) -> Any:
    """TRL's config from `train:` plus the `generation:` settings it does not set itself (a recipe whose settings
    conflict is refused in `hf.training_args`, with the list `validate` reports: `online.online_problems`)."""
    fields = trl_generation_fields(ctx.recipe.generation, ctx.recipe.train)[0]
    # TRL counts prompt + completion tokens itself; the Trainer's own count looks for input_ids it never gets
    return hf.training_args(ctx, include_num_input_tokens_seen="no", **fields)


def prompt_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [r["prompt"] for r in rows]})


def run_online(ctx: RunContext, trainer_class: type) -> RunResult:
    """Train with `trainer_class` (TRL's GRPOTrainer or RLOOTrainer) and export the policy."""
    import torch

    from workbench.context import RunResult

    recipe = ctx.recipe
    args = online_args(ctx)
    model = load_causal_lm(recipe.model, ctx.tokenizer)
    if recipe.model.lora is not None:
        model = apply_lora(model, recipe.model, task_type="CAUSAL_LM")
    reward = reward_model_for_trl(ctx, args.device)
    eval_rows = ctx.data.eval if args.eval_strategy != "no" else []

    class Trainer(DataLayerPrompts, trainer_class):  # type: ignore[misc, valid-type]
        workbench_max_prompt_length = ctx.data.settings.max_prompt_length if ctx.data.settings else 512

    trainer = Trainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=prompt_dataset(ctx.data.train),
        eval_dataset=prompt_dataset(eval_rows) if eval_rows else None,
        processing_class=ctx.tokenizer,
        callbacks=hf.callbacks(ctx),
    )
    ctx.tracker.update_manifest(reference=reference_rule(recipe, {"beta": args.beta}).describe())
    hf.train(trainer, ctx)
    model_dir = hf.export(trainer, ctx)
    generated = trainer.accelerator.reduce(torch.tensor(trainer.workbench_generated_tokens, device=args.device), "sum")
    return RunResult(
        ctx.run_dir, model_dir, hf.final_metrics(trainer), train_tokens=hf.tokens_seen(trainer), generated_tokens=int(generated)
    )
