"""Pairwise Bradley-Terry reward models on TRL's RewardTrainer, fed by the shared data layer.

Decoder backbones (a causal LM given a scalar head) and encoder backbones (BERT-like: no chat
template, no EOS) both get their token ids from `data/formatting.py`, which keeps the end of long
dialogues. The export keeps the head and pad token and stores the reward mean/std measured on the
training data in its config, so later stages can normalize scores.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from trl import RewardTrainer

from workbench.batch_order import ResumableLengthGrouping
from workbench.methods import hf
from workbench.metrics import length_baseline_accuracy, mean_std, pairwise_accuracy
from workbench.models import apply_lora, load_reward_model
from workbench.packing import backbone, packed_calls
from workbench.scoring import score_sequences

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult
    from workbench.data.formatting import TokenizedPair

log = logging.getLogger("workbench")


def full_sequences(pairs: list[TokenizedPair]) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt + chosen, prompt + rejected) token ids of each pair."""
    return [p.prompt_ids + p.chosen_ids for p in pairs], [p.prompt_ids + p.rejected_ids for p in pairs]


def reward_dataset(pairs: list[TokenizedPair], margins: list[float] | None) -> Any:
    from datasets import Dataset

    chosen, rejected = full_sequences(pairs)
    columns: dict[str, Any] = {
        "chosen_ids": chosen,
        "rejected_ids": rejected,
        "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected)],  # for group_by_length: the padded width
    }
    if margins is not None:
        columns["margin"] = margins
    return Dataset.from_dict(columns)


class LengthGroupedRewardTrainer(ResumableLengthGrouping, RewardTrainer):
    """RewardTrainer that keeps the `length` column, read by `train_sampling_strategy: group_by_length`,
    and with `packing` runs the backbone padding-free (the score head still pools the padded layout)."""

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        if not getattr(self.args, "packing", False):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with packed_calls(backbone(self.accelerator.unwrap_model(model))):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "length" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "length"]


def margins_of(rows: list[dict[str, Any]]) -> list[float] | None:
    return [float(r["margin"]) for r in rows] if rows and "margin" in rows[0] else None


def pair_scores(model: Any, pairs: list[TokenizedPair], pad_id: int, batch_size: int) -> tuple[list[float], list[float]]:
    chosen, rejected = full_sequences(pairs)
    scores = score_sequences(model, chosen + rejected, pad_id, batch_size)
    return scores[: len(pairs)], scores[len(pairs) :]


def eval_metrics(chosen: list[float], rejected: list[float], pairs: list[TokenizedPair]) -> dict[str, float]:
    """Held-out metrics beside TRL's own: ties-half accuracy, reward spread, and the length baseline."""
    mean, std = mean_std(chosen + rejected)
    return {
        "eval/accuracy_ties_half": pairwise_accuracy(chosen, rejected),
        "eval/reward_mean": mean,
        "eval/reward_std": std,
        "eval/chosen_reward_mean": mean_std(chosen)[0],
        "eval/rejected_reward_mean": mean_std(rejected)[0],
        "eval/length_baseline_accuracy": length_baseline_accuracy(
            [len(p.chosen_ids) for p in pairs], [len(p.rejected_ids) for p in pairs]
        ),
    }


def run(ctx: RunContext) -> RunResult:
    from workbench.context import RunResult

    recipe = ctx.recipe
    args = hf.training_args(ctx, max_length=recipe.data.max_length)
    model = load_reward_model(recipe.model, ctx.tokenizer)
    if recipe.model.lora is not None:
        model = apply_lora(model, recipe.model, task_type="SEQ_CLS")
    train_pairs = ctx.data.tokenized["train"]
    eval_pairs = ctx.data.tokenized.get("eval") or []
    trainer = LengthGroupedRewardTrainer(
        model=model,
        args=args,
        train_dataset=reward_dataset(train_pairs, margins_of(ctx.data.train)),
        eval_dataset=reward_dataset(eval_pairs, margins_of(ctx.data.eval)) if eval_pairs else None,
        processing_class=ctx.tokenizer,
        callbacks=hf.callbacks(ctx),
    )
    hf.train(trainer, ctx)
    pad_id = ctx.tokenizer.pad_token_id
    extra: dict[str, float] = {}
    if eval_pairs and hf.evaluate_at_end(trainer, ctx):
        chosen, rejected = pair_scores(trainer.model, eval_pairs, pad_id, args.per_device_eval_batch_size)
        extra = eval_metrics(chosen, rejected, eval_pairs)
        ctx.tracker.log(extra, step=trainer.state.global_step)
    config = trainer.accelerator.unwrap_model(trainer.model).config
    if args.reward_stats_pairs > 0:
        stats_batch = args.reward_stats_batch_size or args.per_device_eval_batch_size
        chosen, rejected = pair_scores(trainer.model, train_pairs[: args.reward_stats_pairs], pad_id, stats_batch)
        reward_mean, reward_std = mean_std(chosen + rejected)
        config.reward_mean, config.reward_std = reward_mean, reward_std
        extra.update({"train/reward_mean": reward_mean, "train/reward_std": reward_std})
    config.pad_token_id = pad_id
    model_dir = hf.export(trainer, ctx, head="reward")
    metrics = {**hf.final_metrics(trainer), **extra}
    return RunResult(ctx.run_dir, model_dir, metrics, train_tokens=hf.tokens_seen(trainer))
