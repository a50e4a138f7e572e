"""What the TRL-backed methods share: training arguments, tracking callback, resume, export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.config import train_config_class
from workbench.launch import cpu_launched
from workbench.tracking import trainer_callback

if TYPE_CHECKING:
    from workbench.runner import RunContext

log = logging.getLogger("workbench")


def default_precision() -> dict[str, bool]:
    """bf16 where the GPU supports it, fp32 elsewhere (TRL's own default is bf16 everywhere)."""
    import torch

    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {"bf16": bf16, "fp16": False}


def training_args(ctx: RunContext, **method_fields: Any) -> Any:
    """The method's TRL config built from the recipe; must exist before ZeRO-3 models are created."""
    recipe = ctx.recipe
    fields: dict[str, Any] = {
        **({} if {"bf16", "fp16"} & set(recipe.train) else default_precision()),
        "logging_steps": 10,
        "save_strategy": "steps",
        **method_fields,
        **recipe.train,
        "output_dir": str(ctx.run_dir / "checkpoints"),
        "report_to": [],
        "run_name": recipe.tracking.name or ctx.run_dir.name,
        "seed": recipe.seed,
        "disable_tqdm": True,
    }
    if cpu_launched():  # keep the gloo state the launch path built (TrainingArguments would reset it)
        fields["accelerator_config"] = {**(fields.get("accelerator_config") or {}), "use_configured_state": True}
    return train_config_class(recipe.method)(**fields)


def callbacks(ctx: RunContext) -> list[Any]:
    return [trainer_callback(ctx.tracker)]


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint (one whose trainer_state.json was written), or None."""
    done = [p for p in checkpoint_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resume_from(ctx: RunContext) -> str | None:
    if not ctx.resume:
        return None
    found = newest_checkpoint(ctx.run_dir / "checkpoints")
    if found is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ctx.run_dir / "checkpoints")
    return str(found) if found else None


def export(trainer: Any, ctx: RunContext) -> Path:
    """model/: gathered weights as safetensors (ZeRO-3 included), tokenizer, merged LoRA on request."""
    model_dir = ctx.run_dir / "model"
    trainer.save_model(str(model_dir))
    if ctx.is_main:
        ctx.tokenizer.save_pretrained(str(model_dir))
        if ctx.recipe.model.lora is not None and ctx.recipe.model.merge_lora_on_export:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(str(model_dir / "merged"), safe_serialization=True)
            ctx.tokenizer.save_pretrained(str(model_dir / "merged"))
    trainer.accelerator.wait_for_everyone()
    return model_dir


def final_metrics(trainer: Any) -> dict[str, float]:
    """The last logged value of every metric, under W&B names."""
    from workbench.tracking import metric_name

    out: dict[str, float] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                out[metric_name(key)] = value
    return out
