"""The launch as the memory plan sees it: processes, ZeRO stage, offload and precision, read from an accelerate
(and DeepSpeed) config or from the environment `accelerate launch` sets; the device memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config.methods import METHODS
from workbench.errors import WorkbenchError

DS_REDUCE_BUCKET_DEFAULT = 500_000_000  # deepspeed/runtime/zero/config.py: reduce_bucket_size


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
