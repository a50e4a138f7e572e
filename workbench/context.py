"""What a method receives and returns: the one interface between `runner` (the steps every method shares)
and the method modules, in a module of its own so that methods never import the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.config import Recipe
    from workbench.data.pipeline import Prepared
    from workbench.tracking import Tracker


@dataclass
class RunContext:
    """What a method receives: the recipe, its run directory, tracker, tokenizer and prepared data."""

    recipe: Recipe
    run_dir: Path
    tracker: Tracker
    tokenizer: Any
    data: Prepared
    is_main: bool
    world_size: int
    resume_checkpoint: Path | None = None


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    train_tokens: int | None = None  # tokens through forward + backward, all processes
    generated_tokens: int | None = None  # tokens sampled during the run (rejection sampling, PPO)
    already_finished: bool = False  # --resume of a completed run: nothing was done
