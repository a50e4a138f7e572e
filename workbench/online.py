"""Settings of the TRL-backed online methods (GRPO, RLOO): the batch they imply, and what they refuse.

Their sampling settings are the workbench's `generation:` block mapped onto TRL's own fields, next to every
other sampler's in `workbench/sampling/settings.py`. Pure functions: validate uses them without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.config import methods_where
from workbench.sampling.settings import GENERATION_TO_TRL, trl_generation_fields

ONLINE_METHODS = methods_where(sampling="trl")  # TRL's online trainers: `generation:` maps onto their fields


@dataclass
class OnlineBatch:
    """What one optimizer step and one generation round of GRPO / RLOO hold (TRL counts completions)."""

    per_device: int  # completions per process per micro-batch
    accumulation: int
    processes: int
    num_generations: int
    generation_batch: int  # completions generated per round, all processes

    @property
    def completions_per_step(self) -> int:
        return self.per_device * self.accumulation * self.processes

    @property
    def prompts_per_generation(self) -> float:
        return self.generation_batch / self.num_generations

    def describe(self) -> str:
        return (
            f"{self.per_device} (completions per device) x {self.accumulation} (accumulation) x {self.processes} (processes) "
            f"= {self.completions_per_step} completions per optimizer step; each generation round samples "
            f"{self.generation_batch} completions = {self.prompts_per_generation:g} prompts x {self.num_generations} generations"
        )

    def problems(self) -> list[str]:
        out = []
        if self.num_generations < 2:
            out.append(f"`num_generations` is {self.num_generations}: GRPO / RLOO need at least 2 completions per prompt")
        elif self.generation_batch % self.num_generations:
            out.append(
                f"{self.generation_batch} completions per generation round are not whole groups of num_generations={self.num_generations}; "
                "make per_device_train_batch_size x gradient_accumulation_steps x processes a multiple of it"
            )
        if self.generation_batch % (self.per_device * self.processes):
            out.append(
                f"`train.generation_batch_size` ({self.generation_batch}) must be a multiple of per_device_train_batch_size x "
                f"processes ({self.per_device} x {self.processes})"
            )
        return out


def online_batch(train: dict[str, Any], defaults: dict[str, Any], processes: int) -> OnlineBatch:
    """The batch TRL will form from the (effective) `train:` fields on `processes` processes."""

    def get(key: str) -> Any:
        return train.get(key, defaults.get(key))

    per_device = int(get("per_device_train_batch_size"))
    accumulation = int(get("gradient_accumulation_steps") or 1)
    steps = get("steps_per_generation")
    generation_batch = get("generation_batch_size")
    if generation_batch is None:
        generation_batch = per_device * processes * int(steps or accumulation)
    return OnlineBatch(per_device, accumulation, processes, int(get("num_generations")), int(generation_batch))


# TRL's messages for prompt groups that do not fit its batches: validate reports the workbench's instead, which count
# the processes the run will have (TRL's config, built in validate's one process, counts one)
TRL_GROUP_MESSAGES = ("must be divisible by num_generations", "must be divisible by the number of generations")


def trl_one_process_fields(train: dict[str, Any], defaults: dict[str, Any], processes: int) -> dict[str, Any]:
    """The `train:` fields for TRL's config built in validate's one process, so that its checks see the batches of
    `processes` processes: the generation batch made explicit, the eval batch scaled by the processes."""
    if processes == 1:
        return train
    out = dict(train)
    if out.get("generation_batch_size") is None:
        out.pop("steps_per_generation", None)
        out["generation_batch_size"] = online_batch(train, defaults, processes).generation_batch
    out["per_device_eval_batch_size"] = (
        train.get("per_device_eval_batch_size", defaults["per_device_eval_batch_size"]) * processes
    )
    return out


def online_problems(recipe: Any, train: dict[str, Any], processes: int) -> list[str]:
    """What GRPO / RLOO (TRL's trainer, or the workbench's mapping onto it) refuse before the first step, on
    `processes` processes: sampling settings, the reference, whole prompt groups, reward weights, reference syncing.
    `train` holds the recipe's `train:` values over the method's defaults."""
    fields, problems = trl_generation_fields(recipe.generation, recipe.train)
    ref = recipe.reference
    if ref.name_or_path or ref.precompute_log_probs:
        problems.append(
            f"`reference` is not used by method {recipe.method}: TRL's trainer keeps a frozen copy of the initial policy "
            "(or disables the LoRA adapters) as its reference; remove the `reference:` settings"
        )
    effective = {**train, **fields, **recipe.train}
    problems.extend(online_batch(effective, {}, processes).problems())
    generations = effective.get("num_generations_eval") or effective["num_generations"]
    eval_batch = effective["per_device_eval_batch_size"] * processes
    if str(effective.get("eval_strategy") or "no") != "no" and generations and eval_batch % generations:
        problems.append(
            f"`train.per_device_eval_batch_size` x processes ({effective['per_device_eval_batch_size']} x {processes}) must be "
            f"a multiple of the generations per eval prompt ({generations}); TRL evaluates whole groups"
        )
    weights = effective.get("reward_weights")
    if weights is not None and len(weights) != 1:
        problems.append(
            f"`train.reward_weights` has {len(weights)} weights, but {recipe.method} gets one reward function (the recipe's "
            "`reward_model`); remove it"
        )
    if effective.get("sync_ref_model"):
        if not effective.get("beta"):
            problems.append("`train.sync_ref_model: true` needs `train.beta` > 0 (with beta 0 there is no reference to sync)")
        if recipe.model.lora is not None:
            problems.append(
                "`train.sync_ref_model: true` cannot be used with `model.lora` (the reference is the base with adapters disabled)"
            )
    return problems


def validate_trl_method(recipe: Any, processes: int) -> tuple[list[str], list[str]]:
    """(report lines, problems) for `workbench validate` of a TRL-backed method: sampling settings mapped,
    declared choices of the `train:` values, and for GRPO / RLOO the completions per step. TRL's own checks
    run once, in `validate.check_recipe`, on the `train:` values with the mapped sampling fields; the settings
    a run refuses are `online_problems`, in the one list of `workbench/method_checks.py`."""
    from workbench.config import train_config_class, train_field_defaults

    lines: list[str] = []
    problems: list[str] = []
    fields: dict[str, Any] = {}
    if recipe.method in ONLINE_METHODS:
        fields = trl_generation_fields(recipe.generation, recipe.train)[0]
        lines.append(
            "sampling (TRL fields): "
            + ", ".join(f"{k}={v}" for k, v in {**fields, **recipe.train}.items() if k in dict(GENERATION_TO_TRL).values())
        )
    cls = train_config_class(recipe.method)
    for key, value in recipe.train.items():
        choices = declared_choices(cls, key)
        if isinstance(value, str) and choices and value not in choices:
            problems.append(f"`train.{key}` must be one of {', '.join(choices)} ({cls.__name__}), got {value!r}")
    if recipe.method in ONLINE_METHODS:
        batch = online_batch({**fields, **recipe.train}, train_field_defaults(cls), processes)
        lines.append(f"completions per step: {batch.describe()}")
    return lines, problems


def declared_choices(cls: type, name: str) -> list[str]:
    """The values a TRL config field declares (its `choices` metadata, or the "Supported values are 'a', 'b'" of its help)."""
    import dataclasses
    import re

    found = [f for f in dataclasses.fields(cls) if f.name == name]
    if not found:
        return []
    meta = found[0].metadata
    if meta.get("choices"):
        return [str(c) for c in meta["choices"]]
    match = re.search(r"Supported values are ([^.]*)\.", meta.get("help", ""))
    return re.findall(r"'([\w-]+)'", match.group(1)) if match else []
