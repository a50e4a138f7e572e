"""SFT on TRL's SFTTrainer, on tokens from the shared data layer: loss on completions only by default.

Also the fine-tuning stage of rejection sampling (`train_on`), so both export the same way and
load as a policy everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trl import SFTTrainer

from workbench.data.formatting import TokenizedSFT
from workbench.methods import hf
from workbench.models import apply_lora, load_causal_lm

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult


def sft_dataset(examples: list[TokenizedSFT], completion_only: bool) -> Any:
    from datasets import Dataset

    ids = [e.prompt_ids + e.completion_ids for e in examples]
    labels = [([-100] * len(e.prompt_ids) if completion_only else e.prompt_ids) + e.completion_ids for e in examples]
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def train_on(ctx: RunContext, train: list[TokenizedSFT], evals: list[TokenizedSFT], **method_fields: Any) -> RunResult:
    """Fine-tune the recipe's model on tokenized (prompt, completion) examples and export it."""
    from workbench.context import RunResult

    recipe = ctx.recipe
    args = hf.training_args(ctx, max_length=recipe.data.max_length, **method_fields)
    completion_only = args.completion_only_loss is not False
    model = load_causal_lm(recipe.model, ctx.tokenizer)
    if recipe.model.lora is not None:
        model = apply_lora(model, recipe.model, task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(train, completion_only),
        eval_dataset=sft_dataset(evals, completion_only) if evals else None,
        processing_class=ctx.tokenizer,
        callbacks=hf.callbacks(ctx),
    )
    hf.train(trainer, ctx)
    if evals:
        hf.evaluate_at_end(trainer, ctx)
    model_dir = hf.export(trainer, ctx)
    return RunResult(ctx.run_dir, model_dir, hf.final_metrics(trainer), train_tokens=hf.tokens_seen(trainer))


def run(ctx: RunContext) -> RunResult:
    return train_on(ctx, ctx.data.tokenized["train"], ctx.data.tokenized.get("eval") or [])
