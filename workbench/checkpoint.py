"""Checkpoints are complete or absent: a marker is written only after every process has saved.

The Trainer writes `checkpoint-N/` piece by piece from every rank; a run killed in between
leaves a directory that must never be resumed from. The marker makes "complete" explicit and
lists every file with its size, so that resuming checks the contents, not the marker alone.
Old checkpoints are rotated only after the new one is marked, and each is unmarked before
its files go, so that at every instant the newest marked checkpoint is whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench")
MARKER = ".complete"


class NonFiniteError(WorkbenchError):
    """Training produced a NaN/inf loss, gradient or weight; nothing non-finite is saved."""


def inventory(checkpoint: Path) -> dict[str, int]:
    """Every file under the checkpoint (but the marker) with its size in bytes."""
    out = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name not in (MARKER, MARKER + ".tmp"):
            out[path.relative_to(checkpoint).as_posix()] = path.stat().st_size
    return out


def mark_complete(checkpoint: Path) -> None:
    """Write the marker (atomically, fsynced) listing the files the checkpoint holds now."""
    tmp = checkpoint / (MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"files": inventory(checkpoint)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / MARKER)


def unmark(checkpoint: Path) -> None:
    (checkpoint / MARKER).unlink(missing_ok=True)


def is_complete(checkpoint: Path) -> bool:
    return not problems(checkpoint)


def problems(checkpoint: Path) -> list[str]:
    """Why this checkpoint cannot be resumed from (empty when it can): no marker, or a listed file missing or resized."""
    marker = checkpoint / MARKER
    if not marker.is_file():
        return [f"{checkpoint.name} has no {MARKER} marker (it was being written when the run stopped)"]
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):  # an older workbench's marker: check the state file at least
        if any((checkpoint / name).is_file() for name in ("trainer_state.json", "ppo_state.json")):
            return []
        return [f"{checkpoint.name} has an old-style marker and no trainer state"]
    out = []
    for name, size in listed.items():
        path = checkpoint / name
        if not path.is_file():
            out.append(f"{checkpoint.name}/{name} is missing")
        elif path.stat().st_size != size:
            out.append(f"{checkpoint.name}/{name} has {path.stat().st_size} bytes, {size} when it was saved")
    return out


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Every `checkpoint-N` directory, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=step_of)


def newest_complete(checkpoint_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose marker exists and whose files are all there, or None."""
    for path in reversed(checkpoints(checkpoint_dir)):
        found = problems(path)
        if not found:
            return path
        if (path / MARKER).is_file():
            log.warning("not resuming from %s: %s", path, "; ".join(found[:3]))
    return None


def remove(checkpoint: Path) -> None:
    """Unmark first, then delete: a checkpoint being removed is never taken for a complete one."""
    unmark(checkpoint)
    shutil.rmtree(checkpoint, ignore_errors=True)


def rotate(checkpoint_dir: Path, keep: int | None, best: str | None = None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (and the best one, for load_best_model_at_end); remove
    older ones and incomplete ones older than those kept."""
    if not keep or keep < 1:
        return []
    complete = [p for p in checkpoints(checkpoint_dir) if is_complete(p)]
    if not complete:
        return []
    kept = complete[-keep:] + [p for p in complete if best and p.resolve() == Path(best).resolve()]
    oldest_kept = step_of(complete[-keep:][0])
    gone = [p for p in checkpoints(checkpoint_dir) if p not in kept and step_of(p) < oldest_kept]
    for path in gone:
        remove(path)
    return gone


def prune_after_export(checkpoint_dir: Path, keep: int) -> dict[str, int]:
    """A completed run's disk hygiene: keep only the newest `keep` complete checkpoints (0: none); returns
    how many directories were removed and the bytes freed."""
    every = checkpoints(checkpoint_dir)
    complete = [p for p in every if is_complete(p)]
    kept = complete[-keep:] if keep > 0 else []
    gone = [p for p in every if p not in kept]
    freed = sum(f.stat().st_size for p in gone for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    for path in gone:
        remove(path)
    return {"removed": len(gone), "freed_bytes": freed, "kept": len(kept)}


def remove_incomplete(checkpoint_dir: Path) -> list[Path]:
    """Delete checkpoints left half-written by a stopped run (they would otherwise mix with a rewrite)."""
    gone = [p for p in checkpoints(checkpoint_dir) if not is_complete(p)]
    for path in gone:
        remove(path)
    return gone


def completion_callback(save_total_limit: int | None = None) -> Any:
    """A TrainerCallback that marks a checkpoint complete once all processes saved it, then rotates old ones.

    The Trainer's own rotation (`save_total_limit`) runs before the new checkpoint is marked, so
    the training arguments hand it None and the limit is applied here instead.
    """
    from transformers import TrainerCallback

    class CheckpointCompletion(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    mark_complete(path)
                    rotate(Path(args.output_dir), save_total_limit, state.best_model_checkpoint)
            PartialState().wait_for_everyone()

    return CheckpointCompletion()


# ----------------------------------------------------------------------------------------------
# never save a non-finite tensor


def nonfinite_tensors(named: Any) -> list[str]:
    """Names of the tensors (from (name, tensor) pairs) holding a NaN or inf; ZeRO-3 shards are checked locally."""
    import torch

    bad = []
    for name, tensor in named:
        data = getattr(tensor, "ds_tensor", None)
        data = tensor.detach() if data is None else data.detach()
        if data.numel() and data.is_floating_point() and not bool(torch.isfinite(data).all()):
            bad.append(name)
    return bad


def any_rank(flag: bool) -> bool:
    """True when `flag` is True on any process (every process must take the same branch)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    box = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.all_reduce(box)
    return bool(box.item() > 0)


def assert_finite_weights(model: Any, where: str, step: int | None) -> None:
    """Raise NonFiniteError before `where` is written if any weight is NaN/inf on any process (call on every rank)."""
    bad = nonfinite_tensors(model.named_parameters())
    if any_rank(bool(bad)):
        at = f" at step {step}" if step is not None else ""
        names = f" ({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''})" if bad else ""
        raise NonFiniteError(
            f"training stopped{at}: the model weights hold NaN/inf{names}, so {where} was not written; "
            "lower train.learning_rate or check the data, then resume from the last checkpoint with --resume"
        )


def nonfinite_callback() -> Any:
    """A TrainerCallback that stops at the first non-finite gradient norm (or logged loss) and checks weights before every save."""
    from transformers import TrainerCallback

    class NonFiniteGuard(TrainerCallback):
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import math

            norm = grad_norm(kwargs.get("model"), kwargs.get("optimizer"))
            if any_rank(norm is not None and not math.isfinite(norm)):
                raise NonFiniteError(
                    f"training stopped at step {state.global_step + 1}: the loss or its gradient is not finite "
                    f"(gradient norm {norm}); nothing from this step was saved. Lower train.learning_rate "
                    f"(now {args.learning_rate:g}) or check the data, then resume from the last checkpoint with --resume"
                )

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            import math

            loss = (logs or {}).get("loss")
            if isinstance(loss, float) and not math.isfinite(loss):
                raise NonFiniteError(
                    f"training stopped at step {state.global_step}: the training loss is {loss}; "
                    f"lower train.learning_rate (now {args.learning_rate:g}) or check the data"
                )

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if control.should_save and kwargs.get("model") is not None:
                assert_finite_weights(kwargs["model"], f"checkpoint-{state.global_step}", state.global_step)

    return NonFiniteGuard()


def grad_norm(model: Any, optimizer: Any) -> float | None:
    """The global gradient norm: DeepSpeed's own when it holds the gradients, else over `p.grad` (synced by DDP)."""
    import torch

    inner = getattr(optimizer, "optimizer", optimizer)
    ds_norm = getattr(inner, "_global_grad_norm", None)
    if ds_norm is not None:
        return float(ds_norm)
    if model is None:
        return None
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
