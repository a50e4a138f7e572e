"""Per-device memory plan of a recipe under an accelerate / DeepSpeed launch, before anything is loaded.

Model shapes come from each model's `config.json`, instantiated on the meta device (no weights,
seconds for an 8B model). The accounting is a set of small pure functions over byte counts:

- model states: `deepspeed_states` (mixed-precision Adam under ZeRO-0/1/2/3 with offload and
  DeepSpeed's own buffers), `plain_states` (DDP or one process: torch AdamW in the weights' own
  dtype), `frozen_states` (references and reward models that only run forward);
- `activation_bytes`: the Korthikanti et al. per-layer estimate, adapted to gated MLPs and GQA;
- `kv_cache_bytes`: the generation cache of the online methods.

Which models a method holds, and where, follows the method modules as they are written today
(`model_roles`); the value model is one isolated rule (`value_role`) so a change of the PPO design
changes one function. Byte counts are per process (one GPU) unless a name says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config.methods import METHODS, reference_rule
from workbench.errors import WorkbenchError

GiB = 2**30
ADAM_STATE_BYTES = 12  # fp32 master weights (4) + two fp32 moments (4 + 4), per trainable parameter
FIT_RESERVE_FRACTION = 0.05  # CUDA context, allocator fragmentation and kernels' workspaces
FIT_RESERVE_MIN = GiB
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes NF4 with double quantization: 4 bits + an 8-bit absmax per 64 weights + an fp32 constant per 256 absmax
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES = 1 + 4 / 4096  # LLM.int8: one byte per weight + per-row fp32 scales (rows of ~4k)
DS_REDUCE_BUCKET_DEFAULT = 500_000_000  # deepspeed/runtime/zero/config.py: reduce_bucket_size


# ----------------------------------------------------------------------------------------------
# Inputs: the launch and each model's shape


@dataclass(frozen=True)
class Launch:
    """What the accelerate (and DeepSpeed) config decides about memory."""

    processes: int = 1
    machines: int = 1
    zero_stage: int | None = None  # None: no DeepSpeed (DDP or a single process)
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: str = "bf16"  # bf16 | fp16 | no
    zero3_init: bool = True
    reduce_bucket_size: int | None = DS_REDUCE_BUCKET_DEFAULT  # None: "auto" (the Trainer fills hidden_size**2)
    overlap_comm: bool | None = None  # None: DeepSpeed's default (on for ZeRO-3 only)
    contiguous_gradients: bool = True
    sub_group_size: int = 1_000_000_000  # ZeRO-3 steps the optimizer one sub-group at a time
    source: str = "no accelerate config: one process"
    precision_note: str = ""  # where mixed_precision comes from when it is a default that depends on the machine

    @property
    def deepspeed(self) -> bool:
        return self.zero_stage is not None

    @property
    def half(self) -> bool:
        return self.mixed_precision in ("bf16", "fp16")

    @property
    def processes_per_machine(self) -> int:
        return max(1, self.processes // max(1, self.machines))

    def describe(self) -> str:
        if self.deepspeed:
            off = [n for n, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
            engine = f"DeepSpeed ZeRO-{self.zero_stage}" + (f", {' + '.join(off)} offloaded to CPU" if off else "")
        else:
            engine = "DDP" if self.processes > 1 else "one process"
        note = f" ({self.precision_note})" if self.precision_note else ""
        return (
            f"{self.processes} process(es) on {self.machines} machine(s), {engine}, mixed precision {self.mixed_precision}{note}"
        )


@dataclass(frozen=True)
class Shape:
    """What the accounting needs from one model, read from its meta-device instance."""

    params: int  # unique parameters (tied embeddings counted once)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    largest_layer: int  # parameters of the largest module (DeepSpeed's own `model_to_params` rule)
    quantizable: int  # parameters in the decoder's Linear layers (what bitsandbytes quantizes)
    tied_embeddings: bool
    dtype: str | None  # the checkpoint's own dtype, from config.json


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def shape_of(model: Any, config: Any) -> Shape:
    """Shape of an instantiated (meta) model; counts exactly what `model.parameters()` yields."""
    import torch

    text = _text_config(config)
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not output and m.weight.ndim == 2
    )
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    inp = model.get_input_embeddings()
    tied = output is not None and output.weight is inp.weight
    return Shape(
        params=sum(p.numel() for p in model.parameters()),
        layers=int(text.num_hidden_layers),
        hidden=hidden,
        intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab=int(text.vocab_size),
        largest_layer=largest,
        quantizable=quantizable,
        tied_embeddings=tied,
        dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
    )


HEAD_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "token-cls": "AutoModelForTokenClassification",
}


def meta_model(name_or_path: str, head: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model on the meta device, its config) from config.json alone: no weights are read."""
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise WorkbenchError(
            f"cannot read the config.json of '{name_or_path}' ({str(exc).splitlines()[0]}); "
            "give a local model directory (or a hub id already in the cache)"
        ) from None
    if head != "causal-lm":
        config.num_labels = 1
    # torch's meta device, not accelerate's init_empty_weights: under transformers 5 the latter unties tied embeddings
    from workbench.models import plain_loading  # a meta model must not be built under zero.Init (collectives)

    with torch.device("meta"), plain_loading(), quiet():
        model = getattr(transformers, HEAD_CLASSES[head]).from_config(config, trust_remote_code=trust_remote_code)
    return model, config


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers' and peft's deprecation notes while building meta models are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@functools.lru_cache(maxsize=32)
def model_shape(name_or_path: str, head: str = "causal-lm", trust_remote_code: bool = False) -> Shape:
    model, config = meta_model(name_or_path, head, trust_remote_code)
    return shape_of(model, config)


@functools.lru_cache(maxsize=32)
def lora_trainable_params(name_or_path: str, head: str, lora_json: str, trust_remote_code: bool = False) -> int:
    """Exact LoRA parameter count: peft applied to the meta-device model (its default r/alpha/targets as models.py)."""
    from peft import get_peft_model

    from workbench.config import ModelConfig
    from workbench.models import lora_config

    model, _ = meta_model(name_or_path, head, trust_remote_code)
    task = {"causal-lm": "CAUSAL_LM", "seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS"}[head]
    with quiet():
        peft_model = get_peft_model(model, lora_config(ModelConfig(lora=json.loads(lora_json)), task))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# Model states: pure byte accounting


@dataclass
class States:
    """Bytes one process holds for one model: on its GPU, and in CPU RAM (offload, CPU-resident models)."""

    params: float = 0
    grads: float = 0
    optimizer: float = 0
    buffers: float = 0  # DeepSpeed's working buffers (gradient reduce bucket, gathered ZeRO-3 layers)
    cpu: float = 0

    @property
    def device(self) -> float:
        return self.params + self.grads + self.optimizer + self.buffers


def deepspeed_states(
    frozen: int,
    trainable: int,
    launch: Launch,
    largest_layer: int,
    frozen_bytes: float | None = None,
    hidden: int | None = None,
) -> States:
    """One DeepSpeed engine's model states per process.

    Mixed precision: 16-bit weights and gradients on the GPU, fp32 gradients + fp32 master weights +
    two fp32 Adam moments for the optimizer (the 2 + 2 + 4 + 4 + 8 = 18 bytes of DeepSpeed's
    estimators). ZeRO-1 partitions the fp32 states, ZeRO-2 also the 16-bit gradients, ZeRO-3 also the
    16-bit weights. Offloading the optimizer moves the fp32 gradients, master weights and moments to
    CPU RAM (with ZeRO-2/3 gradients stream from the reduce bucket straight into them); offloading
    parameters (ZeRO-3) moves the 16-bit weight partition too. ZeRO-3 materializes fp32 gradients one
    optimizer sub-group (`sub_group_size`) at a time. Buffers follow the installed DeepSpeed:
    stage 1/2 keep one reduce bucket of `reduce_bucket_size` 16-bit elements (two with overlap_comm),
    stage 3 one reduce bucket plus DeepSpeed's own allowance for the largest layer gathered whole
    (4 bytes per parameter of it, as `estimate_zero3_model_states_mem_needs`). Frozen parameters
    (a LoRA base) are held at `frozen_bytes` (default: the engine's weight bytes) and partitioned only by ZeRO-3.
    """
    n, stage = launch.processes, launch.zero_stage or 0
    weight = 2 if launch.half else 4
    frozen_b = weight if frozen_bytes is None else frozen_bytes

    def part(x: float, from_stage: int) -> float:
        return x / n if stage >= from_stage else x

    s = States()
    s.params = part(frozen * frozen_b + trainable * weight, 3)
    s.grads = part(trainable * weight, 2)
    fp32_grads = part(trainable * 4, 1) if launch.half else 0
    if stage == 3 and not launch.offload_optimizer:  # stage3.py makes fp32 grads one sub-group at a time, at the step
        fp32_grads = min(fp32_grads, 4 * launch.sub_group_size)  # (offloaded: a full pinned CPU buffer)
    s.optimizer = part(trainable * ADAM_STATE_BYTES, 1)
    if launch.offload_optimizer and trainable:
        s.cpu += fp32_grads + s.optimizer
        fp32_grads, s.optimizer = 0, 0
        if stage >= 2:
            s.grads = 0
    s.grads += fp32_grads
    if launch.offload_params and stage == 3:
        s.cpu += s.params
        s.params = 0
    s.buffers = reduce_bucket_bytes(launch, hidden) if trainable else 0
    if stage == 3:
        s.buffers += 4 * largest_layer
    return s


def reduce_bucket_bytes(launch: Launch, hidden: int | None = None) -> float:
    """DeepSpeed's gradient reduce bucket: `reduce_bucket_size` 16-bit elements allocated whole when
    contiguous_gradients is on (its default); ZeRO-1/2 keep a second one with overlap_comm (stage_1_and_2.py
    setup_buckets), ZeRO-3 one (stage3.py). Not in DeepSpeed's estimators; 1 GB at the default 5e8."""
    stage = launch.zero_stage or 0
    if stage == 0 or not launch.contiguous_gradients:
        return 0
    elements = launch.reduce_bucket_size if launch.reduce_bucket_size is not None else (hidden or 0) ** 2
    weight = 2 if launch.half else 4
    return elements * weight * (2 if stage < 3 and launch.overlap_comm else 1)


def plain_states(frozen: int, trainable: int, weight_bytes: float, trainable_bytes: float, launch: Launch) -> States:
    """A trained model outside DeepSpeed (one process or DDP): torch AdamW keeps its two moments in
    the parameters' own dtype and there is no master copy; autocast leaves the weights as loaded.
    DDP adds gradient buckets as large as the gradients (accelerate's default gradient_as_bucket_view=False)."""
    s = States()
    s.params = frozen * weight_bytes + trainable * trainable_bytes
    s.grads = trainable * trainable_bytes * (2 if launch.processes > 1 else 1)
    s.optimizer = trainable * trainable_bytes * 2
    return s


def frozen_states(
    params: int, bytes_per_param: float, launch: Launch, partitioned: bool, largest_layer: int, on_cpu: bool = False
) -> States:
    """A model that only runs forward: weights alone; ZeRO-3 partitions it when it is wrapped in an engine."""
    if on_cpu:
        return States(cpu=params * bytes_per_param)
    if partitioned and launch.zero_stage == 3:
        shard = params * bytes_per_param / launch.processes
        gathered = 2 * largest_layer * bytes_per_param  # the largest layer gathered whole (and its prefetch)
        return States(cpu=shard, buffers=gathered) if launch.offload_params else States(params=shard, buffers=gathered)
    return States(params=params * bytes_per_param)


# ----------------------------------------------------------------------------------------------
# Activations and KV cache


def layer_activation_elements(shape: Shape, tokens: int, seq: int, eager_attention: bool) -> float:
    """Elements one decoder layer keeps for backward, for `tokens` = rows x seq tokens.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1)
    count 34*s*b*h + 5*a*s^2*b bytes per layer for GPT in 16-bit. The same accounting for a decoder
    without dropout, with RMSNorm, grouped-query attention and a gated MLP keeps, per token:
    QKV input h, Q q_dim, K and V 2*kv_dim, attention output q_dim; MLP input h, gate, up, act(gate)
    and act(gate)*up 4*I; two norm inputs 2h. With I=4h, kv=q=h and GELU (h+2I) this is their
    34-bytes-minus-dropout count. Eager attention also keeps the softmax output, a*s^2 per row;
    SDPA / flash attention recompute it.
    """
    q_dim, kv_dim = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_token = 4 * shape.hidden + 2 * q_dim + 2 * kv_dim + 4 * shape.intermediate
    elements = tokens * per_token
    if eager_attention:
        elements += (tokens // max(seq, 1)) * shape.heads * seq * seq
    return elements


def activation_bytes(
    shape: Shape,
    rows: int,
    seq: int,
    checkpointing: bool,
    elem_bytes: int = 2,
    logits: bool = True,
    eager_attention: bool = False,
) -> float:
    """Activations of one forward+backward over `rows` sequences of `seq` tokens.

    Without checkpointing every layer keeps `layer_activation_elements`; with it, only each layer's
    input (h per token) is kept and one layer at a time is recomputed. Causal LMs also keep the
    logits (16-bit) and their fp32 copy for the log-softmax of the loss: rows*seq*vocab*(elem+4).
    """
    tokens = rows * seq
    layer = layer_activation_elements(shape, tokens, seq, eager_attention) * elem_bytes
    if checkpointing:
        body = shape.layers * tokens * shape.hidden * elem_bytes + layer
    else:
        body = shape.layers * layer
    head = tokens * shape.vocab * (elem_bytes + 4) if logits else 0
    return body + head


def kv_cache_bytes(shape: Shape, rows: int, seq: int, elem_bytes: int = 2) -> float:
    """Generation cache: keys and values of every layer for `rows` sequences of up to `seq` tokens."""
    return 2 * shape.layers * rows * seq * shape.kv_heads * shape.head_dim * elem_bytes


# ----------------------------------------------------------------------------------------------
# Which models a method holds


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
        head="causal-lm" if spec.produces_policy else "seq-cls",
        training="lora" if m.lora is not None else "full",
        dtype=m.dtype,
        quantization=m.quantization,
        lora=m.lora,
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


# ----------------------------------------------------------------------------------------------
# The plan


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


PPO_REFERENCE = "zero3-engine"  # PPO's frozen reference (ppo_learner.frozen_engine): an engine under ZeRO-3 only


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
    if spec.sampling == "best_of_n":
        return micro, seq, gen.batch_size * gen.num_samples, prompt + gen.max_new_tokens
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
    separate_phases = spec.sampling == "best_of_n"  # best-of-n generates with a plain copy, then fine-tunes
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


# ----------------------------------------------------------------------------------------------
# Launch from an accelerate config; precision; device memory


def resolve_precision(method: str, recipe_train: dict[str, Any], accelerate_mixed: str | None, use_cpu: bool = False) -> str:
    """bf16 | fp16 | no, as the run will use it: the recipe's explicit `train.bf16/fp16` first; the
    TRL-backed methods default to bf16 on GPUs (hf.default_precision); PPO follows the accelerate config."""
    if use_cpu:
        return "no"
    if recipe_train.get("bf16"):
        return "bf16"
    if recipe_train.get("fp16"):
        return "fp16"
    if not METHODS[method].hf_trainer or "bf16" in recipe_train or "fp16" in recipe_train:
        return accelerate_mixed or "no"
    return "bf16"


GPU_DEFAULT_PRECISION = "the default of TRL-backed methods on a bf16-capable GPU; without one the run trains in float32"


def precision_note(method: str, recipe_train: dict[str, Any], precision: str) -> str:
    """Says so when `resolve_precision` gave the GPU default (hf.default_precision), which a CPU run does not use."""
    explicit = not METHODS[method].hf_trainer or {"bf16", "fp16"} & set(recipe_train)
    return GPU_DEFAULT_PRECISION if precision == "bf16" and not explicit else ""


def launch_from_config(path: str | Path | None, method: str, train: dict[str, Any]) -> Launch:
    # `train`: the recipe's own `train:` values (explicit precision), not the class defaults
    """The memory-relevant settings of an accelerate config (and its DeepSpeed JSON, when it names one)."""
    from workbench.launch import read_accelerate_config

    if path is None:
        precision = resolve_precision(method, train, None)
        return Launch(mixed_precision=precision, precision_note=precision_note(method, train, precision))
    return launch_from_mapping(read_accelerate_config(path), Path(path).parent, method, train, str(path))


def launch_from_mapping(acc: dict[str, Any], base: Path, method: str, train: dict[str, Any], source: str) -> Launch:
    """`launch_from_config` on an accelerate config already read (`base`: where a named DeepSpeed JSON is relative to)."""
    from workbench.launch import deepspeed_settings

    processes = int(acc.get("num_processes") or 1)
    machines = int(acc.get("num_machines") or 1)
    use_cpu = bool(acc.get("use_cpu"))
    mixed = str(acc.get("mixed_precision") or "no")
    if acc.get("distributed_type") != "DEEPSPEED":
        precision = resolve_precision(method, train, mixed, use_cpu)
        note = precision_note(method, train, precision)
        return Launch(processes, machines, mixed_precision=precision, source=source, precision_note=note)
    ds = deepspeed_settings(acc, base)
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", ds.get("zero_stage", 0)) or 0)
    off_opt = (zero.get("offload_optimizer") or {}).get("device", ds.get("offload_optimizer_device", "none"))
    off_par = (zero.get("offload_param") or {}).get("device", ds.get("offload_param_device", "none"))
    for key in ("bf16", "fp16"):
        if isinstance(ds.get(key), dict) and ds[key].get("enabled") is True:
            mixed = key
    bucket = zero.get("reduce_bucket_size", DS_REDUCE_BUCKET_DEFAULT)
    precision = resolve_precision(method, train, mixed, use_cpu)
    return Launch(
        processes,
        machines,
        zero_stage=stage,
        offload_optimizer=off_opt not in (None, "none"),
        offload_params=off_par not in (None, "none"),
        mixed_precision=precision,
        precision_note=precision_note(method, train, precision),
        zero3_init=bool(ds.get("zero3_init_flag", True)),
        reduce_bucket_size=None if bucket == "auto" else int(float(bucket)),
        overlap_comm=zero.get("overlap_comm") if isinstance(zero.get("overlap_comm"), bool) else (True if stage == 3 else None),
        contiguous_gradients=zero.get("contiguous_gradients", True) is not False,
        sub_group_size=int(float(zero.get("sub_group_size", 1e9))),
        source=source,
    )


UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12}
UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(text: str) -> float:
    """'80GiB' -> 85899345920; '80GB' -> 8e10 (SI); a bare number is bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in UNITS:
        raise WorkbenchError(f"--device-memory '{text}' is not a size; write e.g. 80GiB, 24GB or 40000000000")
    return float(match.group(1)) * UNITS[unit]


def detected_device_memory() -> float | None:
    """Total memory of GPU 0 when one is visible (checked without initializing CUDA when there is none)."""
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # a broken driver is not the plan's business
        return None
    return None


# ----------------------------------------------------------------------------------------------
# What to change when it does not fit


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


# ----------------------------------------------------------------------------------------------
# Printing


def gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_plan(plan: Plan) -> str:
    """The per-device table (GiB), then activations, generation, total, CPU RAM and the fit verdict."""
    lines = [f"memory plan: {plan.method}, {plan.launch.describe()}", "per device (GiB):"]
    header = f"  {'role':<10} {'params':>9} {'trainable':>10} {'weights':>8} {'grads':>8} {'optim':>8} {'buffers':>8} {'total':>8}  {'CPU':>7}  dtype / note"
    lines.append(header)
    for m in plan.models:
        s = m.states
        lines.append(
            f"  {m.role:<10} {human_count(m.params):>9} {human_count(m.trainable_params):>10} {gib(s.params):>8} {gib(s.grads):>8} "
            f"{gib(s.optimizer):>8} {gib(s.buffers):>8} {gib(s.device):>8}  {gib(s.cpu):>7}  {m.weight_dtype}; {m.note or m.training}"
        )
    ck = "on" if plan.gradient_checkpointing else "off"
    lines.append(
        f"  activations ({plan.micro_batch_rows} rows x {plan.seq_len} tokens, checkpointing {ck}): {gib(plan.activations_bytes_per_device)}"
        f"  [without checkpointing {gib(plan.activations_without_checkpointing)}, with {gib(plan.activations_with_checkpointing)}]"
    )
    if plan.kv_cache_bytes_per_device:
        lines.append(
            f"  generation KV cache: {gib(plan.kv_cache_bytes_per_device)}"
            + (f", gathered/inference weights: {gib(plan.generation_gather_bytes)}" if plan.generation_gather_bytes else "")
        )
    phases = ", ".join(f"{k} {gib(v)}" for k, v in plan.phases.items())
    lines.append(f"  total per device: {gib(plan.total_bytes_per_device)} GiB (peak of phases: {phases})")
    cpu = plan.cpu_bytes_per_process
    lines.append(
        f"  CPU RAM: {gib(cpu)} GiB per process while training; peak per machine (loading included) {gib(plan.cpu_peak_bytes_per_machine)} GiB"
    )
    for note in plan.notes:
        lines.append(f"  note: {note}")
    if plan.device_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"device memory {gib(plan.device_memory)} GiB (usable {gib(plan.usable_device_memory or 0)} after a reserve for the CUDA context): {verdict}"
        )
        for s in plan.suggestions:
            total = s.get("total_bytes_per_device")
            lines.append(f"  try: {s['change']}" + (f" -> {gib(total)} GiB" if total is not None else ""))
    return "\n".join(lines)


def plan_total_line(recipe: Any, accelerate_config: str | Path | None) -> str:
    """One line for `workbench validate`; a model that cannot be shaped says why instead."""
    try:
        plan = make_plan(recipe, accelerate_config)
    except Exception as exc:  # validate reports, never crashes, on a model it cannot shape
        return f"memory plan: not available ({type(exc).__name__}: {exc})"
    verdict = (
        ""
        if plan.fits is None
        else f", {'fits' if plan.fits else 'does NOT fit'} in this GPU's {gib(plan.device_memory or 0)} GiB"
    )
    return f"memory plan: {gib(plan.total_bytes_per_device)} GiB per device ({plan.launch.describe()}{verdict}); details: workbench plan"


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


def running_launch(method: str, train: dict[str, Any]) -> Launch:
    """The launch this process runs under, read from the environment accelerate launch sets."""
    import os

    import torch

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        return Launch(processes, mixed_precision="no", source="environment")
    stage = None
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if file:  # the DeepSpeed JSON decides; read it as an accelerate config naming it
            acc = {
                "distributed_type": "DEEPSPEED",
                "num_processes": processes,
                "deepspeed_config": {"deepspeed_config_file": file},
            }
            acc["mixed_precision"] = os.environ.get("ACCELERATE_MIXED_PRECISION")
            return launch_from_mapping(acc, Path.cwd(), method, train, "environment")
        stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    return Launch(
        processes,
        max(1, processes // int(os.environ.get("LOCAL_WORLD_SIZE", processes) or processes)),
        zero_stage=stage,
        offload_optimizer=os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none") not in ("none", ""),
        offload_params=os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none") not in ("none", ""),
        mixed_precision=resolve_precision(method, train, os.environ.get("ACCELERATE_MIXED_PRECISION")),
        overlap_comm=True if stage == 3 else None,
        source="environment",
    )
