"""One launch path: in-process, under `accelerate launch`, or `workbench launch` doing that launch for you.

Also reads accelerate / DeepSpeed configs to compute the effective global batch and flag
settings that disagree with the recipe.
"""

from __future__ import annotations

import json
import os
import signal
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

    if launched():
        die_with_launcher()
    if not cpu_launched():
        return PartialState()
    if deepspeed_requested():
        import deepspeed

        check_extension_build("deepspeed_shm_comm")
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
    recipe: str,
    accelerate_config: str,
    overrides: list[str],
    resume: bool = False,
    extra: list[str] | None = None,
    machine_flags: list[str] | None = None,
    command: list[str] | None = None,
) -> int:
    """Run `accelerate launch --config_file CFG -m workbench train RECIPE` and return its exit code.
    `command`: the `workbench launch` arguments, which an interrupted rank 0 repeats as the command that continues.

    The launcher dies with us (parent-death signal), and each rank watches its own parent, so a
    killed `workbench launch` leaves no rank training as an orphan.
    """
    from workbench.secrets import redact_argv

    acc = read_accelerate_config(accelerate_config)  # a clear error before spawning anything
    cmd = launch_command(recipe, accelerate_config, overrides, resume, machine_flags) + list(extra or [])
    print("launching:", " ".join(redact_argv(cmd[1:])), flush=True)
    env = launch_env(acc, dict(os.environ), command)
    # its own process group: a Ctrl-C in the terminal reaches the launcher once, passed on by us (a second SIGINT
    # would cut short the launcher's shutdown of the ranks, which are recording `interrupted`)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=parent_death_signal(signal.SIGTERM), process_group=0)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()


def launch_env(acc: dict[str, Any], environ: dict[str, str], command: list[str] | None = None) -> dict[str, str]:
    """The launcher's environment. Besides the launch markers, it states what the launcher would otherwise guess
    and announce (accelerate's launcher is not our process, so workbench.console's filters do not reach it): the
    CPU as DeepSpeed's accelerator when the config says `use_cpu`, and torch's own one OpenMP thread per process
    when a machine runs several. A value the user set is kept."""
    env = {**environ, "WORKBENCH_LAUNCHED": "1"}
    if command is not None:
        env[COMMAND_ENV] = json.dumps(command)
    if acc.get("use_cpu"):
        env.setdefault("DS_ACCELERATOR", "cpu")
    per_machine = int(acc.get("num_processes") or 1) // max(int(acc.get("num_machines") or 1), 1)
    if per_machine > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------------------------
# the command this process runs, as the user typed it (for the command that continues it)

COMMAND_ENV = "WORKBENCH_COMMAND"  # `workbench launch` hands its own arguments to the ranks it starts


def invocation(argv: list[str]) -> tuple[str, list[str]]:
    """(launcher, workbench arguments) of the command the user ran: `workbench launch ...` for its ranks,
    the `accelerate launch ... -m workbench` line (read from the launcher process) under a plain accelerate
    launch, else `workbench` and `argv`."""
    given = os.environ.get(COMMAND_ENV)
    if given:
        return "workbench", list(json.loads(given))
    if "LOCAL_RANK" in os.environ:
        return accelerate_prefix(), argv
    return "workbench", argv


def accelerate_prefix() -> str:
    """The launcher's command line up to `-m workbench`, from /proc (the rank's parent runs `accelerate launch`)."""
    import shlex

    try:
        parts = [p.decode() for p in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if p]
    except OSError:
        parts = []
    for i in range(len(parts) - 1):
        if parts[i] == "-m" and parts[i + 1] == "workbench":
            return shlex.join(parts[: i + 2])
    return "accelerate launch [the same options] -m workbench"


# ----------------------------------------------------------------------------------------------
# ranks die with their launcher


def launched() -> bool:
    return "LOCAL_RANK" in os.environ or os.environ.get("WORKBENCH_LAUNCHED") == "1"


def parent_death_signal(sig: int) -> Any:
    """A preexec function asking Linux to send `sig` to the child when its parent dies (no-op elsewhere)."""

    def preexec() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    return preexec


def die_with_launcher(poll_s: float = 0.5, grace_s: float = 10.0) -> None:
    """In a launched rank: when the parent (accelerate's launcher) is gone, SIGTERM ourselves (the run is
    marked failed), then SIGKILL after a grace period. Uses the parent-death signal and a watcher thread."""
    import threading
    import time

    parent = os.getppid()
    parent_death_signal(signal.SIGTERM)()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="workbench-parent-watch", daemon=True).start()


# ----------------------------------------------------------------------------------------------
# DeepSpeed's one-time extension build and its lock


def environment_extensions_dir(root: Path, prefix: str, python: str, torch: str | None, deepspeed: str | None) -> Path:
    """ROOT/<env name>-pyXY-<hash>: a build directory of this environment's own (its prefix, Python, torch and
    DeepSpeed versions). Environments sharing one directory rebuild each other's extensions, since each build
    records the other's paths and flags."""
    import hashlib

    key = hashlib.sha256(json.dumps([prefix, python, torch, deepspeed]).encode()).hexdigest()[:10]
    major, minor = python.split(".")[:2]
    return root / f"{Path(prefix).name.lstrip('.') or 'env'}-py{major}{minor}-{key}"


def keep_extensions_per_environment() -> None:
    """Point TORCH_EXTENSIONS_DIR (where torch JIT-builds DeepSpeed's ops) at this environment's own directory
    under torch's usual root, unless the user set it. Reads versions from package metadata: no import."""
    import platform
    from importlib import metadata

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")  # torch's root: user_cache_dir
    root = Path(os.path.realpath(Path(cache) / "torch_extensions"))
    prefix = os.path.realpath(sys.prefix)
    where = environment_extensions_dir(root, prefix, platform.python_version(), version("torch"), version("deepspeed"))
    os.environ["TORCH_EXTENSIONS_DIR"] = str(where)


def extension_build_dir(name: str) -> Path:
    """Where torch builds (and locks) a JIT extension: TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/pyXY_cpu/NAME."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False))


def lock_owners(lock: Path) -> list[int]:
    """Pids of the processes holding `lock` open (torch's FileBaton keeps its fd open while it builds)."""
    owners = []
    target = os.path.realpath(lock)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.path.realpath(fd) == target:
                    owners.append(int(proc.name))
                    break
        except OSError:
            continue
    return owners


def check_extension_build(name: str) -> None:
    """Say when DeepSpeed is about to build its extension (minutes, silently otherwise), and refuse to wait
    forever on a lock whose builder is gone (a killed first launch): torch would wait on it with no output."""
    import deepspeed.ops
    from deepspeed.git_version_info import installed_ops

    if not deepspeed.ops.__compatible_ops__.get(name, False) or installed_ops.get(name, False):
        return  # DeepSpeed will not JIT-build it here
    build = extension_build_dir(name)
    lock = build / "lock"
    if lock.exists():
        owners = lock_owners(lock) if Path("/proc").is_dir() else [0]
        if not owners:  # a builder closes its lock an instant before deleting it: look again
            import time

            time.sleep(1.0)
            owners = lock_owners(lock) if lock.exists() else [0]
        if not owners:
            raise WorkbenchError(
                f"{lock} is a stale build lock: the process that was building DeepSpeed's {name} extension is gone "
                f"(killed), and every launch would wait on it forever; delete it (rm {lock}) and launch again"
            )
        if os.environ.get("RANK", "0") == "0":
            print(f"waiting for DeepSpeed's {name} extension, being built by pid {owners[0]} ({build})", flush=True)
    elif not any(build.glob("*.so")) and os.environ.get("RANK", "0") == "0":
        print(f"building DeepSpeed's {name} extension in {build} (once per environment; it takes minutes)", flush=True)


def world_size() -> int:
    """Processes in this run (1 outside a launcher)."""
    from accelerate import PartialState

    return PartialState().num_processes if PartialState._shared_state else int(os.environ.get("WORLD_SIZE", "1"))
