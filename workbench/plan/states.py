"""Model states, pure byte accounting: the bytes one process holds for one model under DeepSpeed, DDP (or one
process), or frozen, on its device and in CPU RAM."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.plan.launch import Launch

ADAM_STATE_BYTES = 12  # fp32 master weights (4) + two fp32 moments (4 + 4), per trainable parameter
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes NF4 with double quantization: 4 bits + an 8-bit absmax per 64 weights + an fp32 constant per 256 absmax
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES = 1 + 4 / 4096  # LLM.int8: one byte per weight + per-row fp32 scales (rows of ~4k)


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
