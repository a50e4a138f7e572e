"""`workbench train`: the steps every method shares, around the method's own `run(ctx)`.

recipe -> distributed init -> tracker -> tokenizer -> data layer (saved into the run dir) ->
method -> manifest status. The same code runs in one process or under `accelerate launch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.config import Recipe
from workbench.data.pipeline import Prepared, prepare, save
from workbench.launch import init_distributed_state
from workbench.methods import get_method
from workbench.models import load_tokenizer
from workbench.tracking import Tracker

log = logging.getLogger("workbench")


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
    resume: bool = False


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def train(recipe: Recipe, resume: bool = False) -> RunResult:
    """Run one recipe end to end; the manifest ends `completed` or `failed`."""
    from transformers import set_seed

    state = init_distributed_state()
    set_seed(recipe.seed)
    method = get_method(recipe.method)
    run_dir = Path(recipe.output_dir)
    tracker = Tracker(recipe, run_dir, is_main=state.is_main_process, world_size=state.num_processes)
    tracker.start()
    try:
        tokenizer = load_tokenizer(recipe.model)
        prepared = prepare(recipe.data, recipe.data_seed, tokenizer)
        if state.is_main_process:
            save(prepared, run_dir)
        tracker.update_manifest(data={"fingerprints": prepared.report["fingerprints"], "split": prepared.report["split"]})
        state.wait_for_everyone()
        ctx = RunContext(recipe, run_dir, tracker, tokenizer, prepared, state.is_main_process, state.num_processes, resume)
        result = method.run(ctx)
    except BaseException as exc:
        tracker.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    tracker.summary(result.metrics)
    tracker.finish("completed")
    return result
