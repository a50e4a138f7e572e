"""Stage processes for `workbench compare`: each stage still trains in a process of its own (a crash, a
leak or global state of one method cannot touch the next), but the process is forked from a server
that has imported torch, transformers, TRL and the methods once, instead of a fresh interpreter that
spends several seconds of CPU importing them again for every stage.

The server is multiprocessing's `forkserver`: it only imports (never computes), so no thread pool or
device state is inherited; the child gets the caller's working directory and environment, writes its
output to the stage log, and runs exactly `workbench train RECIPE [--resume]`. A stage whose `workbench
compare` died (kill -9 included) stops itself and records `failed`, instead of training on as an orphan.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Imported once by the server; what `workbench train` imports before its first training step.
BASE_PRELOAD = ("workbench.quiet", "workbench.cli", "workbench.runner", "workbench.validate", "wandb")

_context: Any = None


def preload_modules(methods: Sequence[str]) -> list[str]:
    """The server's imports: the train path, the modules of the methods the comparison runs, and DeepSpeed
    (which accelerate imports when training starts)."""
    import importlib.util

    from workbench.config.methods import METHODS

    modules = [*BASE_PRELOAD, *(METHODS[m].module for m in dict.fromkeys(methods) if m in METHODS)]
    return modules + (["deepspeed"] if importlib.util.find_spec("deepspeed") is not None else [])


def usable() -> bool:
    """Forked stages on CPU machines only: a process that has touched the CUDA driver (as importing the libraries
    may) cannot hand a working CUDA to a forked child, and on a GPU the import time is small beside training."""
    if os.environ.get("WORKBENCH_FRESH_STAGE_PROCESSES") == "1":
        return False
    import torch

    return not torch.cuda.is_available()


def prepare(methods: Sequence[str]) -> None:
    """Name the server's imports; it starts with the first stage that trains (none when every stage is cached)."""
    global _context
    if _context is not None:
        return
    import multiprocessing as mp

    context = mp.get_context("forkserver")
    context.set_forkserver_preload(preload_modules(methods))
    _context = context


def run(argv: Sequence[str], log_path: str | Path, environ: dict[str, str] | None = None) -> int:
    """`workbench ARGV` in a child forked from the server, output appended to `log_path`; its exit code.
    `environ`: the child's environment (default: ours)."""
    if _context is None:
        prepare(())
    owner_gone, owner = _context.Pipe(duplex=False)  # the child sees EOF on it once this process is gone
    env = dict(os.environ if environ is None else environ)
    proc = _context.Process(target=_child, args=(list(argv), str(log_path), os.getcwd(), env, owner_gone))
    proc.start()
    owner_gone.close()
    try:
        proc.join()
    except KeyboardInterrupt:  # Ctrl-C reached the stage too: let it record `interrupted` before the pipe closes
        wait_for_interrupted(proc.join, proc.kill)
        raise
    finally:
        owner.close()
    return proc.exitcode if proc.exitcode is not None else 1


INTERRUPT_GRACE_S = 60.0


def wait_for_interrupted(wait: Any, kill: Any, grace_s: float = INTERRUPT_GRACE_S) -> None:
    """After Ctrl-C: give the stage (which got the same SIGINT) `grace_s` to record `interrupted` and stop, then
    kill it; a second Ctrl-C stops waiting at once."""
    import subprocess

    try:
        wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill()


def stop() -> None:
    """Stop the server and wait for it, so that it and the stages it forked count in this process's resource usage."""
    global _context
    from multiprocessing import forkserver

    stop_server = getattr(forkserver._forkserver, "_stop", None)  # no public stop; the server also ends with us
    if _context is not None and stop_server is not None:
        stop_server()
    _context = None


def _child(argv: list[str], log_path: str, cwd: str, environ: dict[str, str], owner_gone: Any) -> None:
    """The stage process: the caller's cwd and environment, stdout/stderr to the log, then the CLI."""
    threading.Thread(target=_stop_with_owner, args=(owner_gone,), daemon=True).start()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    _follow_thread_count(environ)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.argv = [sys.executable, "-m", "workbench", *argv]  # what the manifest records as the command
    from workbench.cli import main

    code = 1
    try:
        code = main(argv)
    finally:
        _teardown_wandb()
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(code)


def _follow_thread_count(environ: dict[str, str]) -> None:
    """torch read OMP_NUM_THREADS when the server imported it; a child given another count (a parallel executor's
    share of the cores) sets it, as a fresh interpreter would have."""
    wanted = environ.get("OMP_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0 and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != int(wanted):
            torch.set_num_threads(int(wanted))


def _stop_with_owner(owner_gone: Any) -> None:
    """The stage's parent is the server, not `workbench compare`: when compare dies (kill -9, SIGTERM), nothing
    else would stop the stage, which would train on holding its run directory's lock. EOF on the pipe whose other
    end only compare held means it is gone: SIGTERM ourselves, so the run records `failed` and stops."""
    try:
        owner_gone.recv()
    except EOFError:
        os.kill(os.getpid(), signal.SIGTERM)
    except OSError as exc:  # the pipe itself broke (e.g. its fd was closed in the stage): stop watching, keep training
        print(f"warning: cannot watch `workbench compare` any more ({exc}); this stage will not stop with it", file=sys.stderr)


def _teardown_wandb() -> None:
    """A multiprocessing child skips atexit hooks: close W&B's service connection explicitly."""
    if "wandb" in sys.modules:
        try:
            sys.modules["wandb"].teardown()
        except Exception as exc:  # noqa: BLE001 - a teardown problem must not change the stage's result
            print(f"warning: closing W&B's service connection failed: {exc}", file=sys.stderr)
