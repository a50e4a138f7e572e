"""What the TRL-backed methods share: training arguments, tracking callback, resume, export."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.checkpoint import assert_finite_weights, completion_callback, nonfinite_callback
from workbench.config import train_config_class
from workbench.config.train_args import current_names
from workbench.errors import WorkbenchError
from workbench.launch import cpu_launched
from workbench.method_checks import refuse_method_problems
from workbench.models import load_reward_model, plain_loading
from workbench.tracking import trainer_callback

if TYPE_CHECKING:
    from workbench.context import RunContext

log = logging.getLogger("workbench")


def default_precision() -> dict[str, bool]:
    """bf16 where the GPU supports it, fp32 elsewhere (TRL's own default is bf16 everywhere)."""
    import torch

    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "fp16": False}


def training_args(ctx: RunContext, **method_fields: Any) -> Any:
    """The method's TRL config built from the recipe; must exist before ZeRO-3 models are created.

    First refuses the recipe with every problem `validate` lists for the method (workbench/method_checks.py)."""
    import torch

    recipe = ctx.recipe
    refuse_method_problems(recipe, ctx.world_size)
    train = dict(recipe.train)
    keep_secret_out_of_pickle(train)
    fields: dict[str, Any] = {
        **({} if {"bf16", "fp16"} & set(recipe.train) else default_precision()),
        "logging_steps": 10,
        "save_strategy": "steps",
        "include_num_input_tokens_seen": "non_padding",  # the run's cost in tokens, read by the evaluation
        "logging_nan_inf_filter": False,  # a NaN loss is logged as NaN (and stops the run), never hidden as 0.0
        "disable_tqdm": not sys.stderr.isatty(),  # bars on a terminal; else tracking prints a line per logging step
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinned memory only helps copies to a GPU
        **method_fields,
        **train,
        "save_total_limit": None,  # rotation happens after the new checkpoint is marked (checkpoint.rotate)
        "output_dir": str(ctx.run_dir / "checkpoints"),
        "report_to": [],
        "run_name": recipe.tracking.name or ctx.run_dir.name,
        "seed": recipe.seed,
    }
    if cpu_launched():  # keep the gloo state the launch path built (TrainingArguments would reset it)
        fields["accelerator_config"] = {**(fields.get("accelerator_config") or {}), "use_configured_state": True}
    cls = train_config_class(recipe.method)
    return cls(**current_names(cls, fields))


def keep_secret_out_of_pickle(train: dict[str, Any]) -> None:
    """The Trainer pickles its arguments into every checkpoint (`training_args.bin`): a hub token
    given in the recipe goes to the process environment (where huggingface_hub reads it) instead."""
    import os

    token = train.pop("hub_token", None)
    if token:
        os.environ.setdefault("HF_TOKEN", str(token))


def callbacks(ctx: RunContext) -> list[Any]:
    """Tracking, the non-finite guard (before the checkpoint marker, so a NaN save never happens), completion + rotation."""
    limit = ctx.recipe.train.get("save_total_limit")
    return [trainer_callback(ctx.tracker), nonfinite_callback(), completion_callback(limit)]


def resume_from(ctx: RunContext) -> str | None:
    """The checkpoint `--resume` continues from (the newest complete one), or None."""
    return str(ctx.resume_checkpoint) if ctx.resume_checkpoint else None


def train(trainer: Any, ctx: RunContext) -> None:
    """`trainer.train`, from the checkpoint `--resume` names. Without bars the Trainer would print each log as a
    dict; the tracker prints it as a progress line (step/total, rate, ETA) instead."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume_from(ctx))


def evaluate_at_end(trainer: Any, ctx: RunContext) -> bool:
    """Evaluate the final model on the eval split unless the recipe turned evaluation off (`eval_strategy: "no"`);
    no second pass when the trainer has just evaluated at the final step. True when final eval metrics exist."""
    if str(ctx.recipe.train.get("eval_strategy", "")).lower() == "no":
        return False
    step = trainer.state.global_step
    if not any("eval_loss" in entry and entry.get("step") == step for entry in trainer.state.log_history):
        trainer.evaluate()
    return True


def export(trainer: Any, ctx: RunContext, head: str = "causal-lm") -> Path:
    """model/: gathered weights as safetensors (ZeRO-3 included), tokenizer, merged LoRA on request; then checked."""
    model_dir = ctx.run_dir / "model"
    assert_finite_weights(trainer.model, "model/", trainer.state.global_step)
    lora = ctx.recipe.model.lora is not None
    with removed_on_failure(model_dir, ctx.is_main):
        trainer.save_model(str(model_dir / "adapter" if lora and head == "reward" else model_dir))
        if ctx.is_main:
            ctx.tokenizer.save_pretrained(str(model_dir))
            if lora and head == "reward":
                merge_reward_adapter(trainer.accelerator.unwrap_model(trainer.model).config, ctx, model_dir)
            elif lora and ctx.recipe.model.merge_lora_on_export:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                merged.save_pretrained(str(model_dir / "merged"), safe_serialization=True)
                ctx.tokenizer.save_pretrained(str(model_dir / "merged"))
    trainer.accelerator.wait_for_everyone()
    check_export(trainer.model, trainer.accelerator, ctx, model_dir, head)
    return model_dir


def merge_reward_adapter(trained_config: Any, ctx: RunContext, model_dir: Path) -> None:
    """A LoRA reward model is exported whole: model/ = the base with the adapter merged in and the trained
    one-label head, with the config the training set (reward mean/std, pad id), so every scorer loads it
    as a plain sequence-classification model (an adapter directory would reload with a two-label head and
    without the stats). The adapter stays in model/adapter/."""
    from peft import PeftModel

    with plain_loading():
        base = load_reward_model(ctx.recipe.model, ctx.tokenizer, frozen=True)
        merged = PeftModel.from_pretrained(base, str(model_dir / "adapter")).merge_and_unload()
    for key in ("reward_mean", "reward_std", "pad_token_id"):
        if getattr(trained_config, key, None) is not None:
            setattr(merged.config, key, getattr(trained_config, key))
    merged.save_pretrained(str(model_dir), safe_serialization=True)


@contextlib.contextmanager
def removed_on_failure(model_dir: Path, is_main: bool) -> Iterator[None]:
    """A half-written model/ is deleted, never left looking like an export (used by every method's export)."""
    import shutil

    try:
        yield
    except BaseException:
        if is_main:
            shutil.rmtree(model_dir, ignore_errors=True)
        raise


def export_probe(ctx: RunContext) -> list[int]:
    """A fixed input for the export check: the first training record's prompt and (chosen) response."""
    record = ctx.data.tokenized["train"][0]
    response = getattr(record, "chosen_ids", None) or getattr(record, "completion_ids", None) or []
    return (record.prompt_ids + response)[:64]


def check_export(model: Any, accelerator: Any, ctx: RunContext, model_dir: Path, head: str = "causal-lm") -> None:
    """Reload model/ and compare its logits on a fixed input with the trained model's; fail loudly if they differ.

    The trained model's forward runs on every rank (ZeRO-3 gathers its shards collectively); the
    main process reloads the export as a plain full model and compares.
    """
    import torch

    ids = torch.tensor([export_probe(ctx)], device=accelerator.device)
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits.float().cpu()
    model.train(was_training)
    if ctx.is_main:
        with plain_loading():
            is_peft = ctx.recipe.model.lora is not None and head != "reward"  # a LoRA reward model is exported merged
            reloaded = load_export(model_dir, head, is_peft=is_peft, dtype=dtype)
        with torch.no_grad():
            again = reloaded.to(accelerator.device)(input_ids=ids).logits.float().cpu()
        diff = float((trained - again).abs().max())
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        ctx.tracker.update_manifest(export_check={"max_abs_logit_diff": diff, "tolerance": tolerance, "ok": diff <= tolerance})
        del reloaded
    accelerator.wait_for_everyone()
    check = ctx.tracker.manifest.get("export_check") if ctx.is_main else None
    if check is not None and not check["ok"]:
        raise WorkbenchError(
            f"export check failed: {model_dir} gives logits {check['max_abs_logit_diff']:.3g} away from the trained model's (tolerance {check['tolerance']})"
        )


def load_export(model_dir: Path, head: str, is_peft: bool, dtype: Any) -> Any:
    if is_peft:
        from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        cls = AutoPeftModelForSequenceClassification if head == "reward" else AutoPeftModelForCausalLM
    else:
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        cls = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    return cls.from_pretrained(str(model_dir), dtype=dtype).eval()


def tokens_seen(trainer: Any) -> int | None:
    """Non-padding input tokens the trainer consumed (all processes), when it counted them."""
    return int(trainer.state.num_input_tokens_seen) or None


def final_metrics(trainer: Any) -> dict[str, float]:
    """The last logged value of every metric, under W&B names."""
    from workbench.tracking import metric_name

    out: dict[str, float] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                out[metric_name(key)] = value
    return out
