"""Which models a method holds while it trains, and how each is trained, read from the method registry
(workbench/config/methods.py): policy, reference (the registry's reference rule), value model, reward model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.config.methods import METHODS, reference_rule


@dataclass
class Role:
    """One model a run holds: what it is, how it is trained, where it lives."""

    role: str  # policy | reference | reward | value
    name_or_path: str
    head: str = "causal-lm"
    training: str = "full"  # full | lora | frozen
    dtype: str = "auto"
    quantization: str | None = None
    lora: dict[str, Any] | None = None
    placement: str = "engine"  # engine: prepared by accelerate/DeepSpeed | plain: moved to the device as is | cpu | PPO_REFERENCE
    note: str = ""
    trust_remote_code: bool = False


PPO_REFERENCE = "zero3-engine"  # PPO's frozen reference (ppo_learner.frozen_engine): an engine under ZeRO-3 only


def train_settings(recipe: Any) -> dict[str, Any]:
    """The method's `train:` defaults updated with the recipe's values."""
    from workbench.config import train_config_class, train_field_defaults

    return {**train_field_defaults(train_config_class(recipe.method)), **recipe.train}


def checkpointing_on(train: dict[str, Any]) -> bool:
    value = train.get("activation_checkpointing")
    return bool(train.get("gradient_checkpointing") if value is None else value)


def value_role(recipe: Any, train: dict[str, Any]) -> Role | None:
    """PPO's value model as ppo_learner.py builds it: a value head on the policy's backbone (None: no extra
    model) by the rule of train_configs.ppo_value_head; otherwise a separate token-classification critic
    from the policy (or, with value_init: reward, the reward model), trained in the policy's engine,
    loaded in float32 when model.dtype is auto."""
    from workbench.train_configs import ppo_value_head

    rm = recipe.reward_model
    mode, init = train.get("value_model", "auto"), train.get("value_init", "policy")
    if ppo_value_head(mode, init, recipe.model.lora is not None, rm.name_or_path if rm is not None else None):
        return None
    source = (
        rm.name_or_path
        if train.get("value_init") == "reward" and rm is not None and rm.name_or_path
        else recipe.model.name_or_path
    )
    return Role(
        "value",
        source,
        head="token-cls",
        training="full",
        dtype="float32" if recipe.model.dtype == "auto" else recipe.model.dtype,
        note=f"full model from {source}, trained with the policy",
    )


REFERENCE_NOTES = {  # the reference kinds that hold no model of their own
    "none": "reference: none (train.beta is 0)",
    "adapters_disabled": "reference: the policy with its adapters disabled (no second copy)",
    "precomputed": "reference: log-probs precomputed with the initial policy before training (no reference model held)",
}


def model_roles(recipe: Any, train: dict[str, Any]) -> tuple[list[Role], list[str]]:
    """(models held during training, notes on models that are not held), from the method's registry entry."""
    m, spec = recipe.model, METHODS[recipe.method]
    policy = Role(
        spec.model_role,
        m.name_or_path,
        head="causal-lm" if spec.model_role == "policy" else "seq-cls",
        training=("lora" if m.lora is not None else "full") if spec.produces_model else "frozen",
        dtype=m.dtype,
        quantization=m.quantization,
        lora=m.lora,
        placement="engine" if spec.produces_model else "plain",
        note="" if spec.produces_model else "sampled from, never trained",
        trust_remote_code=m.trust_remote_code,
    )
    roles, notes = [policy], []
    if spec.reference != "none":
        choice = reference_rule(recipe, train)
        if choice.kind != "model":
            notes.append(REFERENCE_NOTES[choice.kind])
        elif spec.reference == "rollout":  # PPO's: its placement and note depend on the launch (plan_model)
            roles.append(Role("reference", choice.name_or_path or "", training="frozen", dtype=m.dtype, placement=PPO_REFERENCE))
        else:
            note = "separate frozen model" if choice.separate else "frozen copy of the policy"
            roles.append(Role("reference", choice.name_or_path or "", training="frozen", dtype=m.dtype, note=note))
    if spec.value_model:
        value = value_role(recipe, train)
        if value is None:
            notes.append("value: a value head on the policy's backbone (no second model)")
        else:
            roles.append(value)
    rm = recipe.reward_model
    if spec.needs_reward and rm is not None:
        if rm.name_or_path:
            on_cpu = spec.sampling == "best_of_n"  # scored where it was loaded, on the main process
            roles.append(
                Role(
                    "reward",
                    rm.name_or_path,
                    head="seq-cls",
                    training="frozen",
                    dtype=rm.dtype,
                    placement="cpu" if on_cpu else "plain",
                    note="scored on the CPU; main process only"
                    if on_cpu
                    else "frozen, a whole copy on each process's device (never partitioned)",
                )
            )
        else:
            notes.append(f"reward: Python function {rm.function} (no model)")
    return roles, notes
