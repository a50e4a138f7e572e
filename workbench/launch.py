"""One launch path: in-process, under `accelerate launch`, or `workbench launch` doing that launch for you.

Also reads accelerate / DeepSpeed configs to compute the effective global batch and flag
settings that disagree with the recipe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import WorkbenchError


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def cpu_launched() -> bool:
    """Several processes on a machine without a GPU (gloo)."""
    import torch

    return "LOCAL_RANK" in os.environ and not torch.cuda.is_available()


def init_distributed_state() -> Any:
    """Create accelerate's process state correctly for this machine, before any model is built.

    On GPUs accelerate does the right thing by itself. Without a GPU, a launched process must use
    gloo: DeepSpeed needs `deepspeed.init_distributed(dist_backend="gloo")` first (ZeRO-3 shards
    parameters as models are created), and plain DDP needs the CPU state; otherwise every process
    silently believes it is alone.
    """
    from accelerate import PartialState

    if not cpu_launched():
        return PartialState()
    if deepspeed_requested():
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        return PartialState(backend="gloo")
    return PartialState(cpu=True, backend="gloo")


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"accelerate config '{path}' not found; the shipped ones are in accelerate_configs/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise WorkbenchError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise WorkbenchError(f"{path}: an accelerate config must be a mapping")
    return data


def deepspeed_settings(acc: dict[str, Any], base: Path) -> dict[str, Any]:
    """The DeepSpeed fields that matter for batch size, from the accelerate config or its JSON file."""
    ds = dict(acc.get("deepspeed_config") or {})
    file = ds.get("deepspeed_config_file")
    if file:
        fpath = Path(file) if Path(file).is_absolute() else base / file
        if not fpath.is_file():
            fpath = Path(file)
        try:
            ds.update(json.loads(fpath.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkbenchError(f"deepspeed_config_file '{file}' cannot be read: {exc}") from None
    return ds


@dataclass
class GlobalBatch:
    micro: int
    accumulation: int
    processes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.micro * self.accumulation * self.processes

    def describe(self) -> str:
        return f"{self.micro} (micro batch) x {self.accumulation} (accumulation) x {self.processes} (processes) = {self.total} pairs per optimizer step"


def _explicit_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def global_batch(train: dict[str, Any], train_defaults: dict[str, Any], accelerate_config: str | Path | None) -> GlobalBatch:
    """micro x accumulation x processes, flagging where the accelerate/DeepSpeed config disagrees."""
    micro = int(train.get("per_device_train_batch_size", train_defaults.get("per_device_train_batch_size", 8)))
    accum = int(train.get("gradient_accumulation_steps", train_defaults.get("gradient_accumulation_steps", 1)))
    if accelerate_config is None:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        return GlobalBatch(micro, accum, processes)
    acc = read_accelerate_config(accelerate_config)
    processes = int(acc.get("num_processes") or 1)
    gb = GlobalBatch(micro, accum, processes)
    if acc.get("distributed_type") == "DEEPSPEED":
        ds = deepspeed_settings(acc, Path(accelerate_config).parent)
        ds_accum = _explicit_int(ds.get("gradient_accumulation_steps"))
        if ds_accum is not None and ds_accum != accum:
            gb.warnings.append(
                f"mismatch: the DeepSpeed config sets gradient_accumulation_steps={ds_accum} but the recipe uses "
                f"train.gradient_accumulation_steps={accum}; remove it from the DeepSpeed config (or set it to 'auto')"
            )
        ds_micro = _explicit_int(ds.get("train_micro_batch_size_per_gpu"))
        if ds_micro is not None and ds_micro != micro:
            gb.warnings.append(
                f"mismatch: the DeepSpeed config sets train_micro_batch_size_per_gpu={ds_micro} but the recipe uses "
                f"train.per_device_train_batch_size={micro}; use 'auto' in the DeepSpeed config"
            )
        ds_total = _explicit_int(ds.get("train_batch_size"))
        if ds_total is not None and ds_total != gb.total:
            gb.warnings.append(
                f"mismatch: the DeepSpeed config sets train_batch_size={ds_total} but micro x accumulation x processes = {gb.total}"
            )
    machines = int(acc.get("num_machines") or 1)
    if machines > 1 and processes % machines:
        gb.warnings.append(
            f"num_processes={processes} is not a multiple of num_machines={machines} (num_processes counts all machines)"
        )
    return gb


def launch_command(
    recipe: str, accelerate_config: str, overrides: list[str], resume: bool = False, machine_flags: list[str] | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(accelerate_config),
        *(machine_flags or []),  # multi-machine values (workbench.multinode.launch_flags)
        "-m",
        "workbench",
        "train",
        str(recipe),
    ]
    for text in overrides:
        cmd += ["--set", text]
    if resume:
        cmd.append("--resume")
    return cmd


def launch(
    recipe: str, accelerate_config: str, overrides: list[str], resume: bool = False, machine_flags: list[str] | None = None
) -> int:
    """Run `accelerate launch --config_file CFG -m workbench train RECIPE` and return its exit code."""
    read_accelerate_config(accelerate_config)  # a clear error before spawning anything
    cmd = launch_command(recipe, accelerate_config, overrides, resume, machine_flags)
    print("launching:", " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd)


def world_size() -> int:
    """Processes in this run (1 outside a launcher)."""
    from accelerate import PartialState

    return PartialState().num_processes if PartialState._shared_state else int(os.environ.get("WORLD_SIZE", "1"))
