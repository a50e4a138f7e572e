"""Per-device memory plan of a recipe under an accelerate / DeepSpeed launch, before anything is loaded.

Model shapes come from each model's `config.json`, instantiated on the meta device (no weights,
seconds for an 8B model). The accounting is a set of small pure functions over byte counts:

- model states: `deepspeed_states` (mixed-precision Adam under ZeRO-0/1/2/3 with offload and
  DeepSpeed's own buffers), `plain_states` (DDP or one process: torch AdamW in the weights' own
  dtype), `frozen_states` (references and reward models that only run forward);
- `activation_bytes`: the Korthikanti et al. per-layer estimate, adapted to gated MLPs and GQA;
- `kv_cache_bytes`: the generation cache of the online methods.

Which models a method holds, and where, follows the method registry and its reference rule
(`model_roles`); the value model is one isolated rule (`value_role`) so a change of the PPO design
changes one function. Byte counts are per process (one GPU) unless a name says otherwise.

One module per concern: `launch` (the launch from an accelerate config or the environment, precision,
device memory), `shapes`, `states` (per-role bytes), `activations` (and the KV cache), `roles`,
`build` (the plan, and the changes that make it fit), `render`; everything is re-exported here, and the
uses of the plan by other verbs (`launch_check`, the manifest's `planned_memory`) live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.plan.activations import activation_bytes, kv_cache_bytes, layer_activation_elements
from workbench.plan.build import (
    FIT_RESERVE_FRACTION,
    FIT_RESERVE_MIN,
    GiB,
    ModelPlan,
    Plan,
    build_plan,
    candidate_changes,
    load_cpu_bytes,
    make_plan,
    placement_under,
    plan_model,
    rows_and_seq,
    suggestions,
    weight_dtype,
)
from workbench.plan.launch import (
    DS_REDUCE_BUCKET_DEFAULT,
    GPU_DEFAULT_PRECISION,
    Launch,
    detected_device_memory,
    launch_from_config,
    launch_from_mapping,
    parse_bytes,
    precision_note,
    resolve_precision,
    running_launch,
)
from workbench.plan.render import format_plan, gib, human_count, plan_total_line
from workbench.plan.roles import PPO_REFERENCE, REFERENCE_NOTES, Role, checkpointing_on, model_roles, train_settings, value_role
from workbench.plan.shapes import Shape, lora_trainable_params, meta_model, model_shape, shape_of
from workbench.plan.states import (
    ADAM_STATE_BYTES,
    DTYPE_BYTES,
    INT8_BYTES,
    NF4_BYTES,
    States,
    deepspeed_states,
    frozen_states,
    plain_states,
    reduce_bucket_bytes,
)

__all__ = [
    "ADAM_STATE_BYTES",
    "DS_REDUCE_BUCKET_DEFAULT",
    "DTYPE_BYTES",
    "FIT_RESERVE_FRACTION",
    "FIT_RESERVE_MIN",
    "GPU_DEFAULT_PRECISION",
    "GiB",
    "INT8_BYTES",
    "Launch",
    "ModelPlan",
    "NF4_BYTES",
    "PPO_REFERENCE",
    "Plan",
    "REFERENCE_NOTES",
    "Role",
    "Shape",
    "States",
    "WorkbenchError",
    "activation_bytes",
    "build_plan",
    "candidate_changes",
    "checkpointing_on",
    "deepspeed_states",
    "detected_device_memory",
    "format_plan",
    "frozen_states",
    "gib",
    "human_count",
    "kv_cache_bytes",
    "launch_check",
    "launch_from_config",
    "launch_from_mapping",
    "layer_activation_elements",
    "load_cpu_bytes",
    "lora_trainable_params",
    "make_plan",
    "meta_model",
    "model_roles",
    "model_shape",
    "parse_bytes",
    "placement_under",
    "plain_states",
    "plan_model",
    "plan_total_line",
    "planned_memory",
    "planned_peak_mb",
    "planned_vs_measured",
    "precision_note",
    "reduce_bucket_bytes",
    "resolve_precision",
    "rows_and_seq",
    "running_launch",
    "shape_of",
    "suggestions",
    "train_settings",
    "value_role",
    "weight_dtype",
]


def launch_check(recipe: Any, accelerate_config: str | Path, force: bool) -> str | None:
    """Why `workbench launch` should refuse (the plan exceeds the visible device), or None."""
    device = detected_device_memory()
    if device is None:
        return None
    plan = make_plan(recipe, accelerate_config, device)
    if plan.fits or force:
        return None
    return (
        f"the memory plan needs {gib(plan.total_bytes_per_device)} GiB per device but this GPU has {gib(device)} GiB "
        f"(usable {gib(plan.usable_device_memory or 0)}); see `workbench plan` for what to change, or pass --force to launch anyway"
    )


def planned_peak_mb(recipe: Any) -> float | None:
    """The plan's per-device total in MiB for the manifest; None if it cannot be planned."""
    try:
        plan = build_plan(recipe, running_launch(recipe.method, recipe.train))
    except Exception:  # never fail a finished run for its plan
        return None
    return round(plan.total_bytes_per_device / 2**20, 1)


def planned_vs_measured(measured_kind: str) -> str:
    """Whether the manifest's measured `peak_memory_mb` (runner.peak_memory_mb's kind) counts what the plan counts."""
    if measured_kind == "cuda_max_allocated":
        return (
            "comparable: peak_memory_mb is the CUDA allocator's peak of tensors on the device, which the plan counts "
            "(neither includes the CUDA context nor the allocator's cached blocks)"
        )
    return (
        f"not comparable: peak_memory_mb is {measured_kind}, the CPU process's peak resident set (Python, libraries and "
        "data included), while planned_device_memory_mb counts the model states, activations and caches one device holds"
    )


def planned_memory(recipe: Any, measured_kind: str) -> dict[str, Any]:
    """The manifest's plan fields, set beside the measured peak with what the two may be compared for."""
    return {"planned_device_memory_mb": planned_peak_mb(recipe), "planned_vs_measured": planned_vs_measured(measured_kind)}
