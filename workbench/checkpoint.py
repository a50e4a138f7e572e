"""Checkpoints are complete or absent: a marker is written only after every process has saved.

The Trainer writes `checkpoint-N/` piece by piece from every rank; a run killed in between
leaves a directory that must never be resumed from. The marker makes "complete" explicit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MARKER = ".complete"


def mark_complete(checkpoint: Path) -> None:
    tmp = checkpoint / (MARKER + ".tmp")
    tmp.write_text("ok\n")
    os.replace(tmp, checkpoint / MARKER)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / MARKER).is_file()


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


def newest_complete(checkpoint_dir: Path) -> Path | None:
    """The newest `checkpoint-N` whose marker exists, or None."""
    found = [p for p in checkpoint_dir.glob("checkpoint-*") if p.name.rsplit("-", 1)[-1].isdigit() and is_complete(p)]
    return max(found, key=step_of, default=None)


def completion_callback() -> Any:
    """A TrainerCallback that marks a checkpoint complete once all processes finished saving it."""
    from transformers import TrainerCallback

    class CheckpointCompletion(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from accelerate import PartialState

            PartialState().wait_for_everyone()
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    mark_complete(path)
            PartialState().wait_for_everyone()

    return CheckpointCompletion()
