"""Runs across several machines: the launch values checked before anything starts, a roll call of
the machines (who joined, same recipe, same code) before the launcher runs, the same comparison
again inside the process group, and a check that the run directory and the cache are shared.

One `workbench launch` runs on every machine; each starts accelerate (torchrun underneath) for its
own processes. Without the roll call a missing machine leaves the others waiting in torch's
rendezvous for ten minutes and then failing without naming it; a machine with another recipe or
another checkout trains something else in lockstep with the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.rundir import flatten

log = logging.getLogger("workbench")

ROLL_CALL_PREFIX = "workbench/roll-call/"


@dataclass
class NodePlan:
    """Where this machine stands in the run: the values accelerate gets, after the CLI flags."""

    num_machines: int
    num_processes: int  # all machines together, as accelerate counts them
    machine_rank: int
    main_process_ip: str | None
    main_process_port: int

    @property
    def is_main_machine(self) -> bool:
        return self.machine_rank == 0

    def accelerate_flags(self) -> list[str]:
        """The values passed to `accelerate launch` (they take precedence over the config file)."""
        flags = ["--num_machines", str(self.num_machines), "--num_processes", str(self.num_processes)]
        flags += ["--machine_rank", str(self.machine_rank), "--main_process_port", str(self.main_process_port)]
        if self.main_process_ip:
            flags += ["--main_process_ip", self.main_process_ip]
        return flags


def _int_value(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise WorkbenchError(f"{where}: {key} must be an integer, got {value!r}") from None
    return value


def node_plan(
    acc: dict[str, Any],
    where: str,
    machine_rank: int | None = None,
    main_process_ip: str | None = None,
    main_process_port: int | None = None,
) -> NodePlan:
    """The accelerate config's machine values, overridden by the CLI flags, each checked."""
    machines = _int_value(acc.get("num_machines") or 1, "num_machines", where)
    processes = _int_value(acc.get("num_processes") or 1, "num_processes", where)
    rank = machine_rank if machine_rank is not None else _int_value(acc.get("machine_rank") or 0, "machine_rank", where)
    ip = main_process_ip or acc.get("main_process_ip")
    port = (
        main_process_port
        if main_process_port is not None
        else _int_value(acc.get("main_process_port") or 29500, "main_process_port", where)
    )
    if machines < 1:
        raise WorkbenchError(f"{where}: num_machines must be at least 1, got {machines}")
    if processes < machines or processes % machines:
        raise WorkbenchError(
            f"{where}: num_processes={processes} is not a multiple of num_machines={machines}; num_processes counts the "
            f"processes of all machines together (e.g. {machines * max(1, processes // machines)} for "
            f"{max(1, processes // machines)} per machine)"
        )
    if not 0 <= rank < machines:
        raise WorkbenchError(
            f"--machine-rank {rank} is out of range: {where} has num_machines={machines}, so ranks are 0 to {machines - 1} (0 on the main node)"
        )
    if not 0 < port < 65536:
        raise WorkbenchError(f"--main-process-port {port} is not a TCP port (1-65535)")
    if machines > 1 and not ip:
        raise WorkbenchError(f"{where} runs on {machines} machines: pass --main-process-ip with the address of machine 0")
    if machines > 1 and acc.get("distributed_type") == "DEEPSPEED":
        launcher = (acc.get("deepspeed_config") or {}).get("deepspeed_multinode_launcher")
        if launcher != "standard":
            raise WorkbenchError(
                f"{where}: set deepspeed_config.deepspeed_multinode_launcher: standard (got {launcher!r}); workbench launch "
                "starts one launcher per machine, DeepSpeed's pdsh/ssh launcher would start them all from one"
            )
    return NodePlan(machines, processes, rank, ip, port)


def port_in_use(port: int) -> bool:
    """Whether something on this machine already listens on `port` (as the rendezvous store will)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the store sets it too: TIME_WAIT is no conflict
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def check_port_free(plan: NodePlan) -> None:
    """Only the main machine listens (torch's rendezvous store), so only there can the port be checked."""
    if plan.is_main_machine and port_in_use(plan.main_process_port):
        raise WorkbenchError(
            f"port {plan.main_process_port} is already in use on this machine (the main node); pass another "
            "--main-process-port, the same on every machine, or stop the process holding it"
        )


def source_hash() -> str:
    """A hash of the installed workbench source: two checkouts that differ by a line differ here."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_version() -> dict[str, Any]:
    from workbench import __version__
    from workbench.tracking import package_versions

    return {"workbench": __version__, "workbench_source": source_hash(), **package_versions()}


def fingerprint(recipe: Any) -> dict[str, Any]:
    """What every machine must agree on (the resolved recipe, secrets redacted, and the code), plus its host."""
    from workbench.config import resolved_dict
    from workbench.tracking import redact

    return {"host": socket.gethostname(), "recipe": redact(resolved_dict(recipe)), "code": code_version()}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint_mismatch(prints: list[dict[str, Any]], unit: str = "machine") -> str | None:
    """None when all agree with the first; else one sentence naming who differs and where."""
    first = prints[0]
    for index, other in enumerate(prints[1:], start=1):
        diffs = []
        for part, label in (("recipe", "recipe"), ("code", "code version")):
            a, b = flatten(first[part]), flatten(other[part])
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    diffs.append(f"{label} {key}: {_short(b.get(key))} there vs {_short(a.get(key))} on {unit} 0")
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            return (
                f"{unit} {index} (host {other['host']}) does not run the same job as {unit} 0 (host {first['host']}): "
                f"{shown}; start every machine with the same recipe, --set overrides and workbench checkout"
            )
    return None


def roll_call(plan: NodePlan, info: dict[str, Any], timeout_s: float) -> None:
    """Before accelerate starts: every machine checks in at the main node's port with its fingerprint.

    Names the machines that never joined (after `timeout_s`) and any machine whose recipe or code
    differs, on every machine; then the main node closes the store and the port is free for torch.
    """
    from torch.distributed import TCPStore

    wait = timedelta(seconds=timeout_s)
    where = f"{plan.main_process_ip}:{plan.main_process_port}"
    try:
        store = TCPStore(plan.main_process_ip, plan.main_process_port, None, plan.is_main_machine, wait, wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for the same two causes
        if plan.is_main_machine:
            raise WorkbenchError(f"cannot listen on {where} on the main node ({exc}); pass another --main-process-port") from None
        raise WorkbenchError(
            f"machine {plan.machine_rank}: the main node did not answer at {where} within {timeout_s:g} s; start "
            "`workbench launch ... --machine-rank 0` there, and check --main-process-ip/--main-process-port and the firewall"
        ) from None
    keys = [f"{ROLL_CALL_PREFIX}{rank}" for rank in range(plan.num_machines)]
    store.set(keys[plan.machine_rank], json.dumps(info, default=str))
    try:
        store.wait(keys, wait)
    except Exception:  # noqa: BLE001 - a timeout, whatever torch calls it
        missing = [rank for rank, key in enumerate(keys) if not store.check([key])]
        raise WorkbenchError(
            f"machine rank(s) {', '.join(map(str, missing))} of {plan.num_machines} never joined at {where} within "
            f"{timeout_s:g} s; start `workbench launch` with --machine-rank {missing[0]} (same recipe, config and "
            "--main-process-ip) on that node, or check that it can reach this address"
        ) from None
    prints = [json.loads(store.get(key)) for key in keys]
    store.add(f"{ROLL_CALL_PREFIX}done", 1)
    if plan.is_main_machine:  # keep the store up until every machine has read every fingerprint
        deadline = time.monotonic() + timeout_s
        while store.add(f"{ROLL_CALL_PREFIX}done", 0) < plan.num_machines and time.monotonic() < deadline:
            time.sleep(0.05)
    del store
    problem = fingerprint_mismatch(prints)
    if problem:
        raise WorkbenchError(problem)


def machines_in_run(state: Any) -> int:
    """Machines in this launched run: all processes over the processes of one machine."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes) or state.num_processes)
    return max(1, state.num_processes // max(1, local))


def check_same_job(state: Any, recipe: Any) -> None:
    """Inside the process group: every process gathers every fingerprint, all raise the same error.

    Catches what the roll call cannot, for runs started with plain `accelerate launch` or torchrun.
    """
    if state.num_processes == 1:
        return
    from accelerate.utils import gather_object

    prints = gather_object([fingerprint(recipe)])
    problem = fingerprint_mismatch(prints, unit="process")
    if problem:
        raise WorkbenchError(problem)


def visible_to_all(state: Any, directory: Path) -> bool:
    """Whether a file global rank 0 writes in `directory` is seen by every process (a shared filesystem)."""
    from accelerate.utils import broadcast_object_list, gather_object

    box = [uuid.uuid4().hex if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    probe = directory / f".shared-probe-{box[0]}"
    if state.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text(socket.gethostname())
    state.wait_for_everyone()
    seen = gather_object([probe.is_file()])
    state.wait_for_everyone()
    if state.is_main_process:
        probe.unlink(missing_ok=True)
    return all(seen)


def prepare_machines(state: Any, recipe: Any) -> None:
    """Right after the process group is up: same job everywhere; with several machines, a shared run
    directory (an error otherwise) and a shared cache (else the run's own `.cache`, said in the log)."""
    check_same_job(state, recipe)
    if machines_in_run(state) == 1:
        return
    from workbench.cache import cache_root

    run_dir = Path(recipe.output_dir).resolve()
    if not visible_to_all(state, run_dir):
        raise WorkbenchError(
            f"output_dir {run_dir} is not on a filesystem shared by all machines (a file written there by machine 0 is "
            "not seen by the others); point output_dir at the shared filesystem"
        )
    root = cache_root()
    if not visible_to_all(state, root):
        fallback = run_dir / ".cache"
        os.environ["WORKBENCH_CACHE"] = str(fallback)
        if state.is_main_process:
            log.warning(
                "WORKBENCH_CACHE %s is not shared by all machines; this run caches in %s instead "
                "(set WORKBENCH_CACHE to a shared directory to reuse the cache across runs)",
                root,
                fallback,
            )


def launch_flags(
    accelerate_config: str | Path,
    recipe: Any,
    machine_rank: int | None,
    main_process_ip: str | None,
    main_process_port: int | None,
    join_timeout_s: float,
) -> list[str]:
    """For `workbench launch`: check the machine values, hold the roll call, return accelerate's flags.

    A one-machine launch without multi-machine flags gets no flags (the config file speaks alone).
    """
    from workbench.launch import read_accelerate_config

    acc = read_accelerate_config(accelerate_config)
    plan = node_plan(acc, str(accelerate_config), machine_rank, main_process_ip, main_process_port)
    if plan.num_machines == 1 and machine_rank is None and main_process_ip is None and main_process_port is None:
        return []
    if plan.num_machines > 1:
        check_port_free(plan)
        roll_call(plan, fingerprint(recipe), join_timeout_s)
    return plan.accelerate_flags()
