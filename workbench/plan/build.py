"""The per-device plan: each role's bytes under the launch, activations and KV cache of its batches, the phases' peak,
and the changes that would make a plan that does not fit fit."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.methods import METHODS
from workbench.plan.activations import activation_bytes, kv_cache_bytes
from workbench.plan.launch import Launch, detected_device_memory, launch_from_config
from workbench.plan.roles import PPO_REFERENCE, Role, checkpointing_on, model_roles, train_settings
from workbench.plan.shapes import Shape, lora_trainable_params, model_shape
from workbench.plan.states import DTYPE_BYTES, INT8_BYTES, NF4_BYTES, States, deepspeed_states, frozen_states, plain_states

GiB = 2**30
FIT_RESERVE_FRACTION = 0.05  # CUDA context, allocator fragmentation and kernels' workspaces
FIT_RESERVE_MIN = GiB


@dataclass
class ModelPlan:
    role: str
    name_or_path: str
    params: int
    trainable_params: int
    states: States
    training: str
    placement: str
    weight_dtype: str
    note: str = ""
    load_cpu: float = 0  # CPU RAM while from_pretrained materializes it, before the device holds it


@dataclass
class Plan:
    method: str
    launch: Launch
    models: list[ModelPlan]
    notes: list[str]
    activations_bytes_per_device: float
    activations_without_checkpointing: float
    activations_with_checkpointing: float
    gradient_checkpointing: bool
    micro_batch_rows: int
    seq_len: int
    kv_cache_bytes_per_device: float
    generation_gather_bytes: float  # ZeRO-3: the policy gathered whole for generation
    generation_concurrent: bool  # generation happens while the training states are held
    device_memory: float | None = None
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def states_bytes(self) -> float:
        return sum(m.states.device for m in self.models)

    @property
    def phases(self) -> dict[str, float]:
        train = self.states_bytes + self.activations_bytes_per_device
        generation = self.kv_cache_bytes_per_device + self.generation_gather_bytes
        if not generation:
            return {"train": train}
        return {"train": train, "generation": generation + (self.states_bytes if self.generation_concurrent else 0)}

    @property
    def total_bytes_per_device(self) -> float:
        return max(self.phases.values())

    @property
    def cpu_bytes_per_process(self) -> float:
        return sum(m.states.cpu for m in self.models)

    @property
    def cpu_peak_bytes_per_machine(self) -> float:
        """max(loading: every process materializes its models on the CPU first, steady state: offload and CPU models)."""
        load = sum(m.load_cpu for m in self.models) + sum(m.states.cpu for m in self.models if m.placement == "cpu")
        return max(load, self.cpu_bytes_per_process) * self.launch.processes_per_machine

    @property
    def usable_device_memory(self) -> float | None:
        if self.device_memory is None:
            return None
        return self.device_memory - max(FIT_RESERVE_MIN, FIT_RESERVE_FRACTION * self.device_memory)

    @property
    def fits(self) -> bool | None:
        usable = self.usable_device_memory
        return None if usable is None else self.total_bytes_per_device <= usable

    def to_json(self) -> dict[str, Any]:
        models = [
            {
                "role": m.role,
                "name_or_path": m.name_or_path,
                "params": m.params,
                "trainable_params": m.trainable_params,
                "training": m.training,
                "placement": m.placement,
                "weight_dtype": m.weight_dtype,
                "bytes_per_device": {
                    "params": int(m.states.params),
                    "grads": int(m.states.grads),
                    "optimizer": int(m.states.optimizer),
                    "buffers": int(m.states.buffers),
                    "total": int(m.states.device),
                },
                "cpu_bytes_per_process": int(m.states.cpu),
                "note": m.note,
            }
            for m in self.models
        ]
        return {
            "method": self.method,
            "launch": {**dataclasses.asdict(self.launch), "description": self.launch.describe()},
            "models": models,
            "notes": self.notes,
            "micro_batch_rows": self.micro_batch_rows,
            "seq_len": self.seq_len,
            "gradient_checkpointing": self.gradient_checkpointing,
            "activations_bytes_per_device": int(self.activations_bytes_per_device),
            "activations_bytes_per_device_without_checkpointing": int(self.activations_without_checkpointing),
            "activations_bytes_per_device_with_checkpointing": int(self.activations_with_checkpointing),
            "kv_cache_bytes_per_device": int(self.kv_cache_bytes_per_device),
            "generation_gather_bytes_per_device": int(self.generation_gather_bytes),
            "phases_bytes_per_device": {k: int(v) for k, v in self.phases.items()},
            "total_bytes_per_device": int(self.total_bytes_per_device),
            "cpu_bytes_per_process": int(self.cpu_bytes_per_process),
            "cpu_bytes_per_machine": int(self.cpu_bytes_per_process * self.launch.processes_per_machine),
            "cpu_peak_bytes_per_machine": int(self.cpu_peak_bytes_per_machine),
            "device_memory_bytes": int(self.device_memory) if self.device_memory is not None else None,
            "usable_device_memory_bytes": int(self.usable_device_memory) if self.usable_device_memory is not None else None,
            "fits": self.fits,
            "suggestions": self.suggestions,
        }


def weight_dtype(role: Role, shape: Shape) -> str:
    """`auto` is the checkpoint's own dtype (float32 when config.json declares none), as models.py resolves it."""
    if role.dtype != "auto":
        return role.dtype
    return shape.dtype if shape.dtype in DTYPE_BYTES else "float32"


def placement_under(role: Role, launch: Launch) -> tuple[str, str]:
    """(placement, note) of a role under `launch`: PPO's reference is a sharded inference engine under ZeRO-3 and a
    whole plain copy otherwise, and its note says which."""
    if role.placement != PPO_REFERENCE:
        return role.placement, role.note
    if launch.zero_stage == 3:
        return "engine", "frozen copy; a DeepSpeed inference engine sharded like the policy (ZeRO-3)"
    return "plain", "frozen copy, whole on each process's device in its load dtype (sharded only under ZeRO-3)"


def plan_model(role: Role, launch: Launch) -> ModelPlan:
    """Parameter counts and per-process bytes of one role."""
    placement, note = placement_under(role, launch)
    shape = model_shape(role.name_or_path, role.head, role.trust_remote_code)
    dtype = weight_dtype(role, shape)
    wbytes = DTYPE_BYTES[dtype]
    total = shape.params
    trainable = 0
    if role.training == "full":
        trainable = total
    elif role.training == "lora":
        trainable = lora_trainable_params(
            role.name_or_path, role.head, json.dumps(role.lora or {}, sort_keys=True), role.trust_remote_code
        )
    frozen = total  # the frozen part of the base (LoRA adapters are extra parameters)
    if role.training == "full":
        frozen = 0
    frozen_bytes: float | None = None
    if role.quantization:
        # quantized Linear weights; peft's prepare_model_for_kbit_training upcasts the rest to float32
        qbytes = NF4_BYTES if role.quantization == "4bit" else INT8_BYTES
        frozen_bytes = (shape.quantizable * qbytes + (total - shape.quantizable) * 4) / total
    if role.training != "frozen":
        if launch.deepspeed:
            states = deepspeed_states(frozen, trainable, launch, shape.largest_layer, frozen_bytes, shape.hidden)
        else:
            # peft keeps LoRA adapters in float32 (autocast_adapter_dtype)
            t_bytes = 4 if role.training == "lora" else wbytes
            states = plain_states(frozen, trainable, frozen_bytes if frozen_bytes is not None else wbytes, t_bytes, launch)
    else:
        engine_cast = placement == "engine" and launch.deepspeed and launch.half
        states = frozen_states(
            total,
            2 if engine_cast else wbytes,
            launch,
            partitioned=placement == "engine",
            largest_layer=shape.largest_layer,
            on_cpu=placement == "cpu",
        )
    shown_dtype = (
        ("bfloat16" if launch.mixed_precision == "bf16" else "float16")
        if (launch.deepspeed and launch.half and placement == "engine")
        else dtype
    )
    if role.quantization:
        shown_dtype = f"{role.quantization} base + {shown_dtype}"
    params = total + (trainable if role.training == "lora" else 0)
    return ModelPlan(
        role.role,
        role.name_or_path,
        params,
        trainable,
        states,
        role.training,
        placement,
        shown_dtype,
        note,
        load_cpu_bytes(total, shape.largest_layer, wbytes, placement, launch),
    )


def load_cpu_bytes(params: int, largest_layer: int, load_bytes: float, placement: str, launch: Launch) -> float:
    """CPU RAM one process needs while loading a model: the whole model in its load dtype, except that
    ZeRO-3's zero.Init creates an engine's models already partitioned (one layer at a time). This is the
    `4 * num_gpus_per_node` (fp32 load) term of DeepSpeed's estimators."""
    if placement == "cpu":
        return 0  # counted as the model's steady CPU state
    if placement == "engine" and launch.zero_stage == 3 and launch.zero3_init:
        return largest_layer * load_bytes
    return params * load_bytes


def rows_and_seq(recipe: Any, train: dict[str, Any], processes: int = 1) -> tuple[int, int, int, int]:
    """(training rows per micro batch, training sequence length, generation rows, generation sequence length).

    Generation rows are the sequences one generate call holds, every sample of its prompts: PPO and rejection
    sampling batch `generation.batch_size` prompts x their samples; TRL's GRPO / RLOO generate one generation
    batch per process in one call (it counts completions).
    """
    from workbench.config import effective_max_prompt_length
    from workbench.online import online_batch, trl_generation_fields

    spec, micro = METHODS[recipe.method], int(train.get("per_device_train_batch_size", 8))
    seq = recipe.data.max_length
    prompt = effective_max_prompt_length(recipe.data)
    gen = recipe.generation
    if spec.data_kind == "preference":
        return 2 * micro, seq, 0, 0  # chosen and rejected in one forward
    if spec.sampling == "rollout":
        rows = max(1, micro // (int(train["num_mini_batches"]) * int(train["gradient_accumulation_steps"])))
        samples = int(train["num_generations"])
        prompts = max(1, micro // samples)  # per process per rollout
        return rows, prompt + gen.max_new_tokens, min(gen.batch_size, prompts) * samples, prompt + gen.max_new_tokens
    if spec.sampling == "trl":  # TRL's fields as the run sets them: `generation:` mapped, unless `train:` sets them
        effective = {**train, **trl_generation_fields(gen, recipe.train)[0]}
        new = int(effective["max_completion_length"])
        gen_rows = online_batch(effective, {}, processes).generation_batch // processes
        return micro, prompt + new, gen_rows, prompt + new
    if spec.sampling == "best_of_n":  # then fine-tuning (rejection sampling), or nothing trained (pairs)
        train_rows, train_seq = (micro, seq) if spec.produces_model else (0, 0)
        return train_rows, train_seq, gen.batch_size * gen.num_samples, prompt + gen.max_new_tokens
    return micro, seq, 0, 0


def build_plan(recipe: Any, launch: Launch, device_memory: float | None = None) -> Plan:
    """The per-device plan for `recipe` under `launch`, without suggestions."""
    train, spec = train_settings(recipe), METHODS[recipe.method]
    roles, notes = model_roles(recipe, train)
    models = [plan_model(r, launch) for r in roles]
    value = next((m for m in models if m.role == "value"), None)  # None: a value head on the policy's backbone
    if launch.deepspeed and value is not None:  # one engine for policy and value: one set of buffers
        policy = models[0]
        policy.states.buffers = max(policy.states.buffers, value.states.buffers)
        value.states.buffers = 0
        value.note += " (in the policy's DeepSpeed engine)"
    rows, seq, gen_rows, gen_seq = rows_and_seq(recipe, train, launch.processes)
    elem = 2 if launch.half else 4
    eager = recipe.model.attn_implementation == "eager"
    trained = [r for r in roles if r.training != "frozen"]
    act = {}
    for ckpt in (False, True):
        act[ckpt] = sum(
            activation_bytes(
                model_shape(r.name_or_path, r.head, r.trust_remote_code), rows, seq, ckpt, elem, r.head == "causal-lm", eager
            )
            for r in trained
        )
    ckpt = checkpointing_on(train)
    kv = gather = 0.0
    separate_phases = spec.sampling == "best_of_n" and spec.produces_model  # generates with a plain copy, then fine-tunes
    concurrent = not separate_phases
    if gen_rows:
        policy = roles[0]
        shape = model_shape(policy.name_or_path, policy.head, policy.trust_remote_code)
        # the cache takes the generating weights' dtype: 16-bit inside a mixed-precision DeepSpeed engine, else as loaded
        in_engine = launch.deepspeed and launch.half and not separate_phases
        gen_elem = 2 if in_engine else DTYPE_BYTES[weight_dtype(policy, shape)]
        kv = kv_cache_bytes(shape, gen_rows, gen_seq, gen_elem)
        if separate_phases:
            gather = models[0].params * DTYPE_BYTES[weight_dtype(policy, shape)]  # a plain inference copy, its own stage
            notes.append("rejection sampling: generation (a plain copy of the policy) and SFT are separate phases")
        elif launch.zero_stage == 3:
            gather = models[0].params * elem * (1 - 1 / launch.processes)
            notes.append("ZeRO-3: the policy's weights are gathered whole for generation")
    return Plan(
        recipe.method,
        launch,
        models,
        notes,
        act[ckpt],
        act[False],
        act[True],
        ckpt,
        rows,
        seq,
        kv,
        gather,
        concurrent,
        device_memory,
    )


def candidate_changes(recipe: Any, train: dict[str, Any], launch: Launch) -> list[tuple[str, Any, Launch]]:
    """(what to change, changed recipe, changed launch), in the order a user would try them."""
    out: list[tuple[str, Any, Launch]] = []

    def with_train(**values: Any) -> Any:
        return dataclasses.replace(recipe, train={**recipe.train, **values})

    if not checkpointing_on(train):
        out.append(("train.gradient_checkpointing=true", with_train(gradient_checkpointing=True), launch))
    micro = int(train.get("per_device_train_batch_size", 8))
    while micro > 1:
        micro //= 2
        out.append(
            (
                f"train.per_device_train_batch_size={micro} (raise gradient_accumulation_steps to keep the global batch)",
                with_train(per_device_train_batch_size=micro),
                launch,
            )
        )
    if (
        METHODS[recipe.method].reference == "offline"
        and recipe.model.lora is None
        and not recipe.reference.name_or_path
        and not recipe.reference.precompute_log_probs
    ):
        ref = dataclasses.replace(recipe.reference, precompute_log_probs=True)
        out.append(("reference.precompute_log_probs=true", dataclasses.replace(recipe, reference=ref), launch))
    stage = launch.zero_stage
    if launch.processes > 1 and (stage or 0) < 3:
        for s in (2, 3):
            if (stage or 0) < s:
                out.append(
                    (
                        f"DeepSpeed ZeRO-{s} (accelerate_configs/zero{s}.yaml)",
                        recipe,
                        dataclasses.replace(launch, zero_stage=s, overlap_comm=True if s == 3 else None),
                    )
                )
    if not launch.offload_optimizer:
        s = max(stage or 0, 2)
        out.append(
            (
                f"offload the optimizer to CPU (ZeRO-{s}, offload_optimizer_device: cpu)",
                recipe,
                dataclasses.replace(launch, zero_stage=s, offload_optimizer=True),
            )
        )
    if not launch.offload_params:
        out.append(
            (
                "ZeRO-3 with optimizer and parameters offloaded (accelerate_configs/zero3_offload.yaml)",
                recipe,
                dataclasses.replace(launch, zero_stage=3, offload_optimizer=True, offload_params=True, overlap_comm=True),
            )
        )
    if recipe.model.lora is None:
        lora = dataclasses.replace(recipe.model, lora={"r": 16})
        out.append(("model.lora={r: 16} (LoRA)", dataclasses.replace(recipe, model=lora), launch))
    return out


def suggestions(recipe: Any, launch: Launch, usable: float) -> list[dict[str, Any]]:
    """Each single change re-planned; if none fits alone, the changes applied one after another."""
    train = train_settings(recipe)
    found = []
    for what, r, lnch in candidate_changes(recipe, train, launch):
        total = build_plan(r, lnch).total_bytes_per_device
        found.append({"change": what, "total_bytes_per_device": int(total), "fits": total <= usable})
    if any(f["fits"] for f in found):
        return [f for f in found if f["fits"]]
    r, lnch, applied = recipe, launch, []
    for what, _, _ in candidate_changes(recipe, train, launch):
        options = {w: (rr, ll) for w, rr, ll in candidate_changes(r, train_settings(r), lnch)}
        if what not in options:
            continue
        r, lnch = options[what]
        applied.append(what)
        total = build_plan(r, lnch).total_bytes_per_device
        if total <= usable:
            return [{"change": " + ".join(applied), "total_bytes_per_device": int(total), "fits": True}]
    return [{"change": "none of " + ", ".join(f["change"] for f in found) + " fits; use more or larger devices", "fits": False}]


def make_plan(recipe: Any, accelerate_config: str | Path | None = None, device_memory: float | None = None) -> Plan:
    """The plan the CLI prints: the launch from the accelerate config, fit and suggestions when the device memory is known."""
    launch = launch_from_config(accelerate_config, recipe.method, recipe.train)
    if device_memory is None:
        device_memory = detected_device_memory()
    plan = build_plan(recipe, launch, device_memory)
    if plan.fits is False and plan.usable_device_memory is not None:
        plan.suggestions = suggestions(recipe, launch, plan.usable_device_memory)
    return plan
