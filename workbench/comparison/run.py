"""Running a comparison's stages: fingerprints (a stage reruns only when what it depends on changed), one
stage's run in its own process(es), and every stage of one seed in dependency order with progress lines.

`run_stage` is the one function that runs one StageRun: an executor (local parallel, a cluster) would call it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.cache import path_fingerprint
from workbench.checkpoint import newest_complete
from workbench.comparison.recipe import run_order, stage_recipe
from workbench.comparison.types import Comparison, StageRun
from workbench.config import dump_yaml
from workbench.console import duration
from workbench.data.pipeline import read_json, write_json
from workbench.data.schema import stable_hash


def stage_fingerprint(run: StageRun, upstream: dict[str, str]) -> str:
    """What the stage's result depends on; upstream stages enter by their fingerprints, not their paths' contents."""
    recipe = run.recipe
    inputs = {}
    for src in (recipe.get("data") or {}).get("sources") or []:
        if isinstance(src, dict) and src.get("path") and not run.stage.data_from:
            inputs[src["path"]] = path_fingerprint(src["path"])
    model = (recipe.get("model") or {}).get("name_or_path")
    if model and not run.stage.model_from:
        inputs[model] = path_fingerprint(model)
    from importlib import metadata

    return stable_hash(
        {
            "recipe": recipe,
            "upstream": upstream,
            "inputs": inputs,
            "accelerate_config": path_fingerprint(run.stage.accelerate_config) if run.stage.accelerate_config else None,
            "workbench": metadata.version("workbench"),
        }
    )[:16]


def is_cached(run: StageRun) -> bool:
    state = read_json(run.run_dir / "stage.json")
    manifest = read_json(run.run_dir / "manifest.json")
    return (
        state.get("fingerprint") == run.fingerprint
        and state.get("status") == "completed"
        and manifest.get("status") == "completed"
        and run.output.exists()
    )


def stage_command(run: StageRun, recipe_path: Path, resume: bool) -> list[str]:
    if run.stage.accelerate_config:
        cmd = [sys.executable, "-m", "workbench", "launch", str(recipe_path), "--accelerate-config", run.stage.accelerate_config]
    else:
        cmd = [sys.executable, "-m", "workbench", "train", str(recipe_path)]
    return cmd + (["--resume"] if resume else [])


def error_line(log_path: Path) -> str:
    """The most telling line of a failed stage's log: its `error:` message, else the last line."""
    if not log_path.is_file():  # the stage process died before it could open its log
        return "no output (the stage process ended before writing its log)"
    lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error:" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else "no output").strip()[:500]


def clear_stage_dir(run: StageRun, same: bool) -> None:
    """A changed stage starts clean (no stale eval.json, samples or checkpoints); the same stage killed before any
    checkpoint keeps its samples/, where its method continues generating (they carry their own fingerprint)."""
    for path in run.run_dir.iterdir():
        if same and path.name == "samples":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_stage(run: StageRun) -> None:
    """Train one stage in its own process (or processes); a run of the same fingerprint killed midway resumes."""
    state_path = run.run_dir / "stage.json"
    previous = read_json(state_path)
    resume = previous.get("fingerprint") == run.fingerprint and previous.get("status") == "running"
    # a stage killed before its first checkpoint starts again, keeping only its samples/ (clear_stage_dir)
    resume = resume and (
        newest_complete(run.run_dir / "checkpoints") is not None
        or read_json(run.run_dir / "manifest.json").get("status") == "completed"
    )
    if not resume and run.run_dir.exists():
        clear_stage_dir(run, same=previous.get("fingerprint") == run.fingerprint)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run.run_dir / "stage_recipe.yaml"
    recipe_path.write_text(dump_yaml(run.recipe), encoding="utf-8")
    write_json(state_path, {"fingerprint": run.fingerprint, "status": "running"})
    log_path = run.run_dir / "stage.log"
    t0 = time.time()
    cmd = stage_command(run, recipe_path, resume)
    from workbench import stageproc

    if run.stage.accelerate_config or not stageproc.usable():
        with open(log_path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                code = proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the stage too: let it record `interrupted`
                stageproc.wait_for_interrupted(proc.wait, proc.kill)
                raise
    else:  # the same command, forked from a process that has imported the libraries already
        code = stageproc.run(cmd[3:], log_path)
    run.seconds = time.time() - t0
    if code == 0:
        run.status = "completed"
    else:
        run.status, run.error = "failed", f"exit code {code}: {error_line(log_path)} (log: {log_path})"
    write_json(state_path, {"fingerprint": run.fingerprint, "status": run.status, "error": run.error, "seconds": run.seconds})


@dataclass
class Progress:
    """Where the comparison stands: stage i of n, time since it began, and an ETA from previous runs' durations."""

    total: int
    started: float = field(default_factory=time.time)
    done: int = 0

    def prefix(self, seed: int) -> str:
        return f"[seed {seed} | stage {self.done + 1}/{self.total} | {duration(time.time() - self.started)}]"

    def eta(self, run: StageRun) -> str:
        """The stage's duration last time it trained (any fingerprint), when this directory has one."""
        previous = read_json(run.run_dir / "stage.json").get("seconds")
        return f" (last run took {duration(previous)}; ETA ~{duration(previous)})" if isinstance(previous, (int, float)) else ""


def train_seed(comparison: Comparison, seed: int, progress: Progress | None = None) -> dict[str, StageRun]:
    """Every stage of one seed, in order; a stage whose upstream failed is skipped, the others still run."""
    progress = progress or Progress(len(comparison.stages))
    runs: dict[str, StageRun] = {}
    for stage in run_order(comparison):
        recipe = stage_recipe(comparison, stage, seed)
        run = StageRun(stage, seed, recipe, Path(recipe["output_dir"]))
        runs[stage.name] = run
        broken = [u for u in stage.upstream if not runs[u].ok]
        prefix = progress.prefix(seed)
        progress.done += 1
        if broken:
            run.status, run.error = "skipped", f"needs stage {broken[0]}, which {runs[broken[0]].status}"
            print(f"{prefix} {stage.name}: skipped ({run.error})", flush=True)
            continue
        run.fingerprint = stage_fingerprint(run, {u: runs[u].fingerprint for u in stage.upstream})
        if is_cached(run):
            run.status = "cached"
            print(f"{prefix} {stage.name} ({run.method}): cached, fingerprint {run.fingerprint}", flush=True)
            continue
        print(f"{prefix} {stage.name} ({run.method}): training in {run.run_dir} ...{progress.eta(run)}", flush=True)
        try:
            run_stage(run)
        except KeyboardInterrupt:
            last = read_json(run.run_dir / "manifest.json").get("last_checkpoint")
            kept = f"its last complete checkpoint, {Path(last).name}, is kept" if last else "it had no complete checkpoint"
            print(f"{prefix} {stage.name}: interrupted ({kept})", flush=True)
            raise
        print(
            f"{prefix} {stage.name}: {run.status} in {duration(run.seconds)} (total {duration(time.time() - progress.started)})"
            + (f" - {run.error}" if run.error else ""),
            flush=True,
        )
    return runs
