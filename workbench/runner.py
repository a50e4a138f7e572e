"""`workbench train`: the steps every method shares, around the method's own `run(ctx)`.

recipe -> distributed init -> tracker -> tokenizer -> data layer (saved into the run dir) ->
method -> manifest status. The same code runs in one process or under `accelerate launch`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from workbench.checkpoint import newest_complete, prune_after_export, remove_incomplete, step_of
from workbench.config import METHODS, Recipe, resolved_dict
from workbench.context import RunContext, RunResult
from workbench.data.pipeline import prepare, save
from workbench.errors import WorkbenchError
from workbench.launch import init_distributed_state
from workbench.methods import get_method
from workbench.models import load_tokenizer
from workbench.rundir import RunLock, Start, decide_start
from workbench.tracking import Tracker, redact

log = logging.getLogger("workbench")


def train(
    recipe: Recipe,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: list[str] | None = None,
    command: list[str] | None = None,
) -> RunResult:
    """Run one recipe end to end; the manifest ends `completed`, `failed` or `interrupted` (Ctrl-C).

    The main process holds the run directory's lock for the whole run and decides how the run
    starts (fresh, resumed, already finished, or refused); every process gets its answer.
    `command`: the workbench arguments of this run, for the command an interruption prints.
    """
    from transformers import set_seed

    state = init_distributed_state()
    from workbench.multinode import prepare_machines

    prepare_machines(state, recipe)  # same recipe and code on every process; shared run dir and cache across machines
    set_seed(recipe.seed)
    method = get_method(recipe.method)
    run_dir = Path(recipe.output_dir)
    lock, start, error = None, Start(), None
    if state.is_main_process:
        try:
            lock = RunLock(run_dir).acquire()
            start = decide_start(run_dir, redact(resolved_dict(recipe)), resume, overwrite, list(allow_changes or []))
        except WorkbenchError as exc:
            error = str(exc)
    start, error = state_broadcast(state, (start, error))
    try:
        if error:
            raise WorkbenchError(error)
        if start.finished:
            log.info("already finished: %s completed earlier; nothing was changed", run_dir)
            model_dir = run_dir / "model"
            return RunResult(run_dir, model_dir if model_dir.is_dir() else None, already_finished=True)
        return run_locked(recipe, method, run_dir, state, start, lock, command)
    finally:
        if lock is not None:
            lock.release()


def run_locked(
    recipe: Recipe, method: Any, run_dir: Path, state: Any, start: Start, lock: RunLock | None, command: list[str] | None = None
) -> RunResult:
    checkpoint = start.checkpoint
    tracker = Tracker(recipe, run_dir, is_main=state.is_main_process, world_size=state.num_processes)
    extra: dict[str, Any] = {}
    if start.allowed_changes:
        extra["allowed_changes"] = start.allowed_changes
    if lock is not None and lock.took_over:
        extra["stale_lock_taken_over"] = lock.took_over
    previous_term = on_sigterm(terminated)
    try:
        if state.is_main_process:
            clear_peer_notes(run_dir)  # a note left by an earlier attempt is not this run's cause
        tracker.start(extra, resume_step=step_of(checkpoint) if checkpoint else None)
        state.wait_for_everyone()
        tokenizer = load_tokenizer(recipe.model)
        prepared = prepare(recipe.data, recipe.data_seed, tokenizer, kind=METHODS[recipe.method].data_kind)
        if state.is_main_process:
            save(prepared, run_dir)
        tracker.update_manifest(data={"fingerprints": prepared.report["fingerprints"], "split": prepared.report["split"]})
        state.wait_for_everyone()
        ctx = RunContext(recipe, run_dir, tracker, tokenizer, prepared, state.is_main_process, state.num_processes, checkpoint)
        result = method.run(ctx)
        cost = run_cost(result, state)
        from workbench.plan import planned_memory

        cost.update(planned_memory(recipe, cost["peak_memory_kind"]) if state.is_main_process else {})  # labelled
        tracker.update_manifest(cost=cost)
        tracker.summary({**result.metrics, **{f"cost/{k}": v for k, v in cost.items() if isinstance(v, (int, float))}})
        tracker.finish("completed")
    except BaseException as exc:
        on_sigterm(signal.SIG_IGN)  # the launcher's SIGTERM must not cut the failure record short
        previous_int = on_signal(signal.SIGINT, signal.SIG_IGN)  # nor a second Ctrl-C (or the launcher passing it on)
        try:
            if isinstance(exc, KeyboardInterrupt):
                raise interrupt(tracker, run_dir, command) from None
            error = fail(tracker, run_dir, exc, rank=state.process_index)
        finally:
            on_signal(signal.SIGINT, previous_int)
        if error is exc:
            raise
        raise error from None
    finally:
        on_sigterm(previous_term)
    if recipe.keep_checkpoints is not None and result.model_dir is not None:
        state.wait_for_everyone()  # every process is done with the checkpoints
        if state.is_main_process:
            prune_checkpoints(tracker, run_dir, recipe.keep_checkpoints)
    return result


def prune_checkpoints(tracker: Tracker, run_dir: Path, keep: int) -> None:
    """After `completed` is recorded (a failure here never turns a finished run into a failed one): the
    checkpoints beyond the newest `keep`; the manifest records what was freed, or why nothing was."""
    try:
        tracker.update_manifest(checkpoints_pruned=prune_after_export(run_dir / "checkpoints", keep))
    except OSError as exc:
        log.warning("the run completed, but removing its old checkpoints failed: %s", exc)
        tracker.update_manifest(checkpoints_pruned={"error": str(exc)})


def on_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler where Python allows it (the main thread); return the previous one."""
    return on_signal(signal.SIGTERM, handler)


def on_signal(signum: int, handler: Any) -> Any:
    """Install a handler for `signum` where Python allows it (the main thread); return the previous one."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signum)
    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    return previous


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, recorded: the message says what is kept and the command that continues (empty off rank 0)."""


def interrupt(tracker: Tracker, run_dir: Path, command: list[str] | None) -> Interrupted:
    """Record `interrupted` (rank 0) with the last complete checkpoint and the command that continues from it, or
    that starts over when there is none; half-written checkpoints go first, as in `fail`."""
    import sys

    from workbench.launch import invocation
    from workbench.rundir import continue_command

    if not tracker.is_main:
        return Interrupted("")
    for stale in remove_incomplete(run_dir / "checkpoints"):
        log.info("removed %s, left half-written by the interruption", stale)
    last = newest_complete(run_dir / "checkpoints")
    launcher, argv = invocation(list(sys.argv[1:] if command is None else command))
    again = continue_command(argv, launcher, resume=last is not None)
    tracker.update_manifest(last_checkpoint=str(last) if last else None, resume_command=again)
    try:
        tracker.finish("interrupted")
    except OSError as exc:
        log.error("could not record the interruption in %s/manifest.json: %s", run_dir, exc)
    return Interrupted(interrupted_line(tracker.manifest, run_dir))


def interrupted_line(manifest: dict[str, Any], run_dir: Path) -> str:
    """What an interrupted run says last: what it keeps, and the command to paste."""
    last = manifest.get("last_checkpoint")
    if last:
        return f"interrupted: {run_dir} keeps its last complete checkpoint, {Path(last).name}; continue with: {manifest['resume_command']}"
    return f"interrupted before {run_dir} had a complete checkpoint; start again with: {manifest.get('resume_command')}"


class Terminated(WorkbenchError):
    """SIGTERM: the launcher (or a failing peer's launcher) is stopping this process."""


def terminated(signum: int, frame: Any) -> None:
    raise Terminated(
        "stopped by SIGTERM: the launcher is gone, another process of the run failed, or the job was cancelled; continue with --resume"
    )


def fail(tracker: Tracker, run_dir: Path, exc: BaseException, rank: int = 0) -> BaseException:
    """Record the failure (freeing half-written checkpoints first, so a full disk still takes the manifest) and
    return the exception to raise: the original one, or one sentence for a full disk.

    Only rank 0 writes the manifest, and when another rank fails first rank 0 sees only the aftermath (SIGTERM
    from the launcher, a closed connection). So a failing rank leaves its cause in a note, and rank 0 records
    the first note's cause; rank 0 then points at the peer's message instead of repeating it."""
    disk_full = is_disk_full(exc, run_dir)
    message = disk_full_message(run_dir) if disk_full else f"{type(exc).__name__}: {exc}"
    if not tracker.is_main:
        if not isinstance(exc, Terminated):  # stopped because of someone else: not a cause
            write_peer_note(run_dir, rank, message)
        return WorkbenchError(message) if disk_full else exc
    for stale in remove_incomplete(run_dir / "checkpoints"):
        log.info("removed %s, left half-written by the failure", stale)
    peer = None if disk_full else first_peer_note(run_dir)
    if peer is not None:
        message = peer[1]
        if "is full (no space left on device)" in message:
            message = disk_full_message(run_dir)  # re-read now that the half-written checkpoint is gone
    try:
        tracker.finish("failed", error=message)
    except OSError as again:
        log.error("could not record the failure in %s/manifest.json: %s", run_dir, again)
    if peer is not None:
        return WorkbenchError(
            f"stopped because rank {peer[0]} failed (its error is above and recorded in {run_dir}/manifest.json); "
            "fix that, then continue with --resume"
        )
    return WorkbenchError(message) if disk_full else exc


PEER_NOTE = ".failed-rank-"


def write_peer_note(run_dir: Path, rank: int, message: str) -> None:
    """Best effort: on a full disk even this one line may not fit; rank 0 then falls back to its own
    free-space check (`is_disk_full`) or the error it saw."""
    try:
        (run_dir / f"{PEER_NOTE}{rank}").write_text(message.replace("\n", " ") + "\n")
    except OSError as again:
        log.warning("could not leave this rank's error for rank 0 in %s: %s", run_dir, again)


def first_peer_note(run_dir: Path) -> tuple[int, str] | None:
    """(rank, message) of the earliest non-empty note another rank left in this run, or None."""
    notes = []
    for path in run_dir.glob(f"{PEER_NOTE}*"):
        try:
            text, when = path.read_text().strip(), path.stat().st_mtime
            rank = int(path.name[len(PEER_NOTE) :])
        except (OSError, ValueError):
            continue
        if text:
            notes.append((when, rank, text))
    if not notes:
        return None
    _, rank, text = min(notes)
    return rank, text


def clear_peer_notes(run_dir: Path) -> None:
    for path in run_dir.glob(f"{PEER_NOTE}*"):
        path.unlink(missing_ok=True)


def is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """ENOSPC anywhere in the exception chain; torch and safetensors report it in their own words
    ("file write failed", "unexpected pos"), so a write error on a filesystem left with no room counts too."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(run_dir if run_dir.exists() else run_dir.parent).free
    except OSError:
        free = None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if ("write failed" in text or "unexpected pos" in text) and free is not None and free < 64 * 2**20:
            return True
        seen = seen.__cause__ or seen.__context__
    return free is not None and free < 2**20


def disk_full_message(run_dir: Path) -> str:
    last = newest_complete(run_dir / "checkpoints")
    kept = f"the last complete checkpoint, {last.name}, is intact" if last else "no complete checkpoint was written yet"
    return (
        f"the disk holding {run_dir} is full (no space left on device); {kept}. "
        "Free space or move output_dir to a larger disk, then continue with --resume"
    )


def state_broadcast(state: Any, value: Any) -> Any:
    """Rank 0 decides; every rank gets the same (picklable) answer."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def peak_memory_mb() -> tuple[float, str]:
    """This process's peak memory: CUDA allocator peak on a GPU, else the process's peak resident set."""
    import resource
    import sys

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "cpu_max_rss"


def run_cost(result: RunResult, state: Any) -> dict[str, Any]:
    """What the run cost: tokens trained on and sampled, and the peak memory of the busiest process."""
    peak, kind = peak_memory_mb()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        peak = max(gather_object([peak]))
    return {
        "train_tokens": result.train_tokens,
        "generated_tokens": result.generated_tokens,
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": kind,
        "processes": state.num_processes,
    }
