"""Who may write a run directory, and how a run starts in one: fresh, resumed, or refused.

One writer at a time: `.lock` holds the writer's pid and host under an exclusive `flock`, which
the kernel releases when the process dies, so a lock left by a killed run is recognised as stale
and taken over. The start rules keep `--resume` honest: a finished run is left alone, a resume
with nothing to resume fails, a fresh run never deletes checkpoints unless told `--overwrite`,
and a resumed recipe must match the one the checkpoints were trained with.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench.checkpoint import checkpoints, newest_complete, remove_incomplete
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")
LOCK = ".lock"

# Recipe keys whose change on resume does not alter what is trained (prefix match on dotted keys).
SAFE_CHANGES = (
    "tracking.",
    "eval.",
    "train.logging_steps",
    "train.logging_first_step",
    "train.save_steps",
    "train.save_total_limit",
    "keep_checkpoints",
    "train.eval_steps",
    "train.per_device_eval_batch_size",
    "train.dataloader_num_workers",
    "train.disable_tqdm",
)


class RunLock:
    """An exclusive, crash-released lock on a run directory, recording pid and host for the error message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                os.close(fd)
                raise WorkbenchError(
                    f"{self.path.parent} is being written by another run (pid {holder.get('pid', '?')} on host "
                    f"{holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish, stop it, "
                    "or choose another output_dir"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its previous holder unlinked while we waited
                break
            os.close(fd)
        previous = read_holder(fd)
        if previous:
            self.took_over = previous
            log.warning(
                "taking over a stale lock on %s: pid %s on host %s held it and is gone (killed or crashed)",
                self.path.parent,
                previous.get("pid", "?"),
                previous.get("host", "?"),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_record()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # removed while held: the next writer makes a fresh file
        os.close(self.fd)
        self.fd = None


def holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


# ----------------------------------------------------------------------------------------------


@dataclass
class Start:
    """How this run begins: from a checkpoint or fresh; or not at all (already finished)."""

    checkpoint: Path | None = None
    finished: bool = False
    allowed_changes: dict[str, list[Any]] = field(default_factory=dict)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def decide_start(run_dir: Path, resolved: dict[str, Any], resume: bool, overwrite: bool, allow: list[str]) -> Start:
    """The start rules (call on the main process while holding the lock); `resolved` is the redacted resolved recipe."""
    import shutil

    ckpt_dir = run_dir / "checkpoints"
    if resume:
        manifest = read_manifest(run_dir)
        if manifest.get("status") == "completed":
            return Start(finished=True)
        found = newest_complete(ckpt_dir)
        if found is None and (run_dir / "samples").is_dir():  # sampling methods continue their samples/ stages
            log.info("resuming the samples in %s (no checkpoint yet)", run_dir / "samples")
            return Start()
        if found is None:
            raise WorkbenchError(
                f"nothing to resume in {run_dir}: there is no complete checkpoint in {ckpt_dir}; "
                "run without --resume to start from the beginning"
            )
        changes = recipe_changes(run_dir / "recipe.yaml", resolved)
        refused = {k: v for k, v in changes.items() if not is_safe(k) and k not in allow}
        if refused:
            listed = ", ".join(f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in sorted(refused.items()))
            raise WorkbenchError(
                f"the recipe differs from the one {run_dir} was trained with: {listed}; resuming would mix two "
                "trainings. Restore the old values, start a new output_dir, or allow them with --allow-changes "
                + " ".join(sorted(refused))
            )
        for stale in remove_incomplete(ckpt_dir):
            log.info("removed %s, left half-written by the stopped run", stale)
        log.info("resuming from %s", found)
        return Start(checkpoint=found, allowed_changes={k: v for k, v in changes.items() if not is_safe(k)})
    if checkpoints(ckpt_dir):
        if not overwrite:
            raise WorkbenchError(
                f"{ckpt_dir} holds checkpoints of an earlier run; continue it with --resume, or pass --overwrite "
                "to delete them and start from the beginning"
            )
        log.warning("--overwrite: removing the checkpoints of an earlier run in %s", ckpt_dir)
        shutil.rmtree(ckpt_dir)
    return Start()


def is_safe(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in SAFE_CHANGES)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def recipe_changes(saved: Path, resolved: dict[str, Any]) -> dict[str, list[Any]]:
    """Dotted keys whose value differs between the recipe saved in the run directory and this one: {key: [old, new]}."""
    if not saved.is_file():
        return {}
    old = flatten(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
    new = flatten(yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)))) or {})
    old.pop("output_dir", None), new.pop("output_dir", None)  # the same directory, however it was spelled
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def continue_command(argv: Sequence[str], launcher: str = "workbench", resume: bool = True) -> str:
    """The command line that continues an interrupted workbench command (`argv`: its arguments): `--resume` added
    for train and launch (compare resumes by itself), `--overwrite` dropped (it would delete the checkpoints to
    continue from), secrets redacted. `resume=False`: the command that starts over (no checkpoint to continue)."""
    from workbench.secrets import redact_argv

    args = [a for a in argv if a not in ("--overwrite", "--resume")]
    if args and args[0] in ("train", "launch") and resume:
        args.append("--resume")
    return f"{launcher} {shlex.join(redact_argv(args))}"
