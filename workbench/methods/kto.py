"""KTO on TRL's KTOTrainer: each completion judged alone, desirable or undesirable.

Data comes from the shared data layer as `unpaired` records: preference pairs become two records
(chosen desirable, rejected undesirable) and unpaired sources give {prompt, completion, label} with
a true/false or 1/0 label. The desirable / undesirable loss weights are set so the classes balance
(KTO paper, Eq. 8: lambda_D n_D / (lambda_U n_U) in [1, 4/3]; we take 1) unless `train:` sets them.
The reference is chosen as for DPO. Tracking, resume and the checked export are `methods/hf.py`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from trl import KTOTrainer

from workbench.methods import hf
from workbench.methods.dpo import policy_and_reference

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult
    from workbench.data.formatting import TokenizedSFT

log = logging.getLogger("workbench")


def class_weights(num_desirable: int, num_undesirable: int) -> dict[str, float]:
    """Loss weights with lambda_D * n_D == lambda_U * n_U, the larger class weighted down (both <= 1)."""
    if num_desirable == 0 or num_undesirable == 0:
        return {"desirable_weight": 1.0, "undesirable_weight": 1.0}
    if num_desirable >= num_undesirable:
        return {"desirable_weight": num_undesirable / num_desirable, "undesirable_weight": 1.0}
    return {"desirable_weight": 1.0, "undesirable_weight": num_desirable / num_undesirable}


def weights_for(labels: list[bool], train: dict[str, Any]) -> dict[str, float]:
    """The weights this run uses: the recipe's own when it sets either, else balanced; one class only warns with the counts."""
    desirable = sum(labels)
    undesirable = len(labels) - desirable
    if desirable == 0 or undesirable == 0:
        log.warning(
            "KTO data has %d desirable and %d undesirable examples: with one class only, KTO cannot contrast the two "
            "and trains toward (or away from) these completions alone; add examples of the other class",
            desirable,
            undesirable,
        )
    if "desirable_weight" in train or "undesirable_weight" in train:
        return {}
    return class_weights(desirable, undesirable)


def mismatched_completions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """KTO's KL term pairs each prompt with another example's completion: completions rotated by one within the batch."""
    completions = batch["completion_ids"]
    return {"KL_completion_ids": completions[-1:] + completions[:-1]}


def kto_dataset(examples: list[TokenizedSFT], rows: list[dict[str, Any]], seed: int) -> Any:
    """Pre-tokenized (data layer) records, shuffled once: KTO reads them in order (its KL pairs are neighbours)."""
    from datasets import Dataset

    dataset = Dataset.from_dict(
        {
            "prompt_ids": [e.prompt_ids for e in examples],
            "completion_ids": [e.completion_ids for e in examples],
            "label": [bool(r["label"]) for r in rows],
        }
    )
    return dataset.shuffle(seed=seed).flatten_indices()


class PretokenizedKTOTrainer(KTOTrainer):
    """KTOTrainer that takes the data layer's token ids as they are (its truncation keeps prompt ends)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.calculate_KL:
            dataset = dataset.map(mismatched_completions, batched=True, batch_size=args.per_device_train_batch_size)
        return dataset


def run(ctx: RunContext) -> RunResult:
    from workbench.context import RunResult

    recipe = ctx.recipe
    labels = [bool(r["label"]) for r in ctx.data.train]
    weights = weights_for(labels, recipe.train)
    args = hf.training_args(
        ctx, max_length=recipe.data.max_length, precompute_ref_log_probs=recipe.reference.precompute_log_probs, **weights
    )
    ctx.tracker.update_manifest(
        kto_classes={
            "desirable": sum(labels),
            "undesirable": len(labels) - sum(labels),
            "desirable_weight": args.desirable_weight,
            "undesirable_weight": args.undesirable_weight,
        }
    )
    model, ref = policy_and_reference(ctx, args)
    evals = ctx.data.tokenized.get("eval") or []
    trainer = PretokenizedKTOTrainer(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=kto_dataset(ctx.data.tokenized["train"], ctx.data.train, recipe.seed),
        eval_dataset=kto_dataset(evals, ctx.data.eval, recipe.seed) if evals else None,
        processing_class=ctx.tokenizer,
        callbacks=hf.callbacks(ctx),
    )
    hf.train(trainer, ctx)
    if evals:
        trainer.evaluate()
    model_dir = hf.export(trainer, ctx)
    return RunResult(ctx.run_dir, model_dir, hf.final_metrics(trainer), train_tokens=hf.tokens_seen(trainer))
