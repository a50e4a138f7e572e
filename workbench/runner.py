"""`workbench train`: the steps every method shares, around the method's own `run(ctx)`.

recipe -> distributed init -> tracker -> tokenizer -> data layer (saved into the run dir) ->
method -> manifest status. The same code runs in one process or under `accelerate launch`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.checkpoint import newest_complete, step_of
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
    resume_checkpoint: Path | None = None


@dataclass
class RunResult:
    run_dir: Path
    model_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    train_tokens: int | None = None  # tokens through forward + backward, all processes
    generated_tokens: int | None = None  # tokens sampled during the run (rejection sampling, PPO)


def train(recipe: Recipe, resume: bool = False) -> RunResult:
    """Run one recipe end to end; the manifest ends `completed` or `failed`."""
    from transformers import set_seed

    state = init_distributed_state()
    from workbench.multinode import prepare_machines

    prepare_machines(state, recipe)  # same recipe and code on every process; shared run dir and cache across machines
    set_seed(recipe.seed)
    method = get_method(recipe.method)
    run_dir = Path(recipe.output_dir)
    checkpoint = resume_point(run_dir, resume) if state.is_main_process else None
    checkpoint = state_broadcast(state, checkpoint)
    tracker = Tracker(recipe, run_dir, is_main=state.is_main_process, world_size=state.num_processes)
    tracker.start(resume_step=step_of(checkpoint) if checkpoint else None)
    state.wait_for_everyone()
    try:
        tokenizer = load_tokenizer(recipe.model)
        prepared = prepare(recipe.data, recipe.data_seed, tokenizer, kind=getattr(method, "DATA_KIND", "preference"))
        if state.is_main_process:
            save(prepared, run_dir)
        tracker.update_manifest(data={"fingerprints": prepared.report["fingerprints"], "split": prepared.report["split"]})
        state.wait_for_everyone()
        ctx = RunContext(recipe, run_dir, tracker, tokenizer, prepared, state.is_main_process, state.num_processes, checkpoint)
        result = method.run(ctx)
    except BaseException as exc:
        tracker.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    cost = run_cost(result, state)
    from workbench.plan import planned_peak_mb

    cost["planned_peak_memory_mb"] = planned_peak_mb(recipe) if state.is_main_process else None  # beside peak_memory_mb
    tracker.update_manifest(cost=cost)
    tracker.summary({**result.metrics, **{f"cost/{k}": v for k, v in cost.items() if isinstance(v, (int, float))}})
    tracker.finish("completed")
    return result


def resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from; a fresh start clears what an earlier run left in the directory."""
    import shutil

    checkpoints = run_dir / "checkpoints"
    if resume:
        found = newest_complete(checkpoints)
        if found is None:
            log.warning("--resume: no complete checkpoint in %s; starting from the beginning", checkpoints)
        else:
            log.info("resuming from %s", found)
        return found
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        log.warning("fresh start: removing checkpoints of an earlier run in %s (use --resume to continue it)", checkpoints)
        shutil.rmtree(checkpoints)
    return None


def state_broadcast(state: Any, value: Path | None) -> Path | None:
    """Rank 0 decides; every rank gets the same answer."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [str(value) if value else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0]) if box[0] else None


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
