"""Running a comparison's stages: fingerprints (a stage reruns only when what it depends on changed), one
stage's run in its own process(es), and the tasks (every stage of every seed, and the evaluations) run through an
executor (comparison/executors.py) in dependency order with progress lines.

`run_stage` runs one StageRun here; `prepare_stage` / `record_stage` are its two halves around a job.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.cache import path_fingerprint
from workbench.checkpoint import newest_complete
from workbench.comparison.recipe import run_order, stage_needs, stage_recipe
from workbench.comparison.types import BASELINE_ROW, Comparison, StageRun
from workbench.config import dump_yaml, methods_where
from workbench.console import duration
from workbench.data.pipeline import read_json, write_json
from workbench.data.schema import stable_hash

POLICY_METHODS = methods_where(produces_policy=True)  # evaluated (evaluate.POLICY_METHODS, without importing torch)


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


def prepare_stage(run: StageRun, retry: bool = False) -> list[str]:
    """Get the stage's run directory ready and return its command: a run of the same fingerprint killed midway (or, on
    a `retry`, failed) resumes from its last complete checkpoint; anything else starts clean. Done by whoever starts
    the stage (here, or the controller before it submits a job), never by the job's nodes."""
    state_path = run.run_dir / "stage.json"
    previous = read_json(state_path)
    resume = previous.get("fingerprint") == run.fingerprint and (previous.get("status") == "running" or retry)
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
    return stage_command(run, recipe_path, resume)


def record_stage(run: StageRun, code: int, seconds: float, log_path: Path) -> None:
    """The stage's outcome from its exit code, on the run and in its stage.json (which `is_cached` reads)."""
    run.seconds = seconds
    if code == 0:
        run.status, run.error = "completed", None
    else:
        run.status, run.error = "failed", f"exit code {code}: {error_line(log_path)} (log: {log_path})"
    state = {"fingerprint": run.fingerprint, "status": run.status, "error": run.error, "seconds": run.seconds}
    write_json(run.run_dir / "stage.json", {**state, **({"exit_code": code} if code else {})})


def run_stage(run: StageRun, env: dict[str, str] | None = None, record: Callable[[], bool] = lambda: True) -> None:
    """Train one stage in its own process (or processes); a run of the same fingerprint killed midway resumes.
    `env`: the stage processes' environment (a parallel executor's share of the devices or cores), else ours.
    `record()` False once it ended: leave it `running` (interrupted: the next run resumes it), as Ctrl-C does here."""
    cmd = prepare_stage(run)
    log_path = run.run_dir / "stage.log"
    t0 = time.time()
    from workbench import stageproc

    if run.stage.accelerate_config or not stageproc.usable():
        with open(log_path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **({"env": env} if env is not None else {}))
            try:
                code = proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the stage too: let it record `interrupted`
                stageproc.wait_for_interrupted(proc.wait, proc.kill)
                raise
    else:  # the same command, forked from a process that has imported the libraries already
        code = stageproc.run(cmd[3:], log_path, env)
    if record():
        record_stage(run, code, time.time() - t0, log_path)


def stage_outcome(run: StageRun, job_error: str | None) -> tuple[str, str | None, bool]:
    """A stage job's outcome from what it left in stage.json: (completed | failed, error, worth one retry). A job that
    ended without recording one (killed, timed out, its node lost) is recorded failed here, with the job's own error."""
    state = read_json(run.run_dir / "stage.json")
    if state.get("fingerprint") == run.fingerprint and state.get("status") in ("completed", "failed"):
        run.status, run.error, run.seconds = state["status"], state.get("error"), state.get("seconds") or 0.0
        return run.status, run.error, state.get("exit_code") != 2  # exit 2: an error the user must fix; again fails alike
    run.status, run.error = "failed", job_error or "the job ended without recording the stage's outcome"
    write_json(run.run_dir / "stage.json", {"fingerprint": run.fingerprint, "status": "failed", "error": run.error})
    return "failed", run.error, True


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


# ----------------------------------------------------------------------------------------------
# Tasks: every stage of every seed and the evaluations, run by an executor in dependency order


@dataclass
class Task:
    """One thing an executor runs: a stage of a seed (`train`), a seed's evaluation in this process (`evaluate`), or,
    as jobs, the evaluation's shared part (`eval_setup`) and each policy's or the baseline model's evaluation.
    `needs`: task key -> `ok` (must succeed first) or `any` (must have ended)."""

    key: str
    kind: str  # train | evaluate | eval_setup | eval_policy | eval_baseline
    seed: int
    run: StageRun | None = None
    needs: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""
    state: str = "waiting"  # waiting | active | done | failed | skipped
    attempts: int = 0
    job: dict[str, Any] | None = None  # the executor's record of the attempt under way (job id, logs)
    error: str | None = None
    prefix: str = ""  # the progress prefix of its start line, repeated on its end line
    seconds: float = 0.0  # how long its last attempt ran, where the executor measures it

    @property
    def name(self) -> str:
        """How the log names it: the stage, `eval STAGE`, `eval setup`."""
        if self.kind == "train":
            return self.run.stage.name if self.run else self.key
        if self.kind in ("eval_policy", "eval_baseline"):
            return f"eval {self.key.split('/')[-1].removesuffix(':eval')}"
        return self.kind.replace("_", " ")


FINAL = ("done", "failed", "skipped")


def evaluation_name(task: Task) -> str | None:
    """What an evaluation task evaluates: its stage, the `eval.baseline` model, or nothing (the shared part)."""
    if task.run is not None:
        return task.run.stage.name
    return BASELINE_ROW if task.kind == "eval_baseline" else None


def train_key(seed: int, stage: str) -> str:
    return f"seed-{seed}/{stage}"


def plan(comparison: Comparison, jobs: bool) -> tuple[dict[int, dict[str, StageRun]], list[Task]]:
    """Every seed's stage runs (recipes and fingerprints, nothing run) and the tasks that run them, in run order; each
    seed's evaluation after its stages: in this process (`jobs` False), or as jobs of its own."""
    graph = stage_needs(comparison)
    runs: dict[int, dict[str, StageRun]] = {}
    tasks: list[Task] = []
    for seed in comparison.seeds:
        seed_runs: dict[str, StageRun] = {}
        for stage in run_order(comparison):
            recipe = stage_recipe(comparison, stage, seed)
            run = StageRun(stage, seed, recipe, Path(recipe["output_dir"]))
            run.fingerprint = stage_fingerprint(run, {u: seed_runs[u].fingerprint for u in graph[stage.name]})
            seed_runs[stage.name] = run
            needs = {train_key(seed, u): "ok" for u in graph[stage.name]}
            tasks.append(Task(train_key(seed, stage.name), "train", seed, run, needs, run.fingerprint))
        runs[seed] = seed_runs
        if jobs:
            tasks += evaluation_tasks(comparison, seed, seed_runs)
        else:
            every = {train_key(seed, n): "any" for n in seed_runs}
            tasks.append(Task(f"seed-{seed}:evaluate", "evaluate", seed, needs=every))
    return runs, tasks


def evaluation_tasks(comparison: Comparison, seed: int, runs: dict[str, StageRun]) -> list[Task]:
    """A seed's evaluation as jobs: the shared part (inputs, the reward model's held-out accuracy, the baseline's
    samples and the reference's log-probs of the pairs, on disk) once the baseline and reward stages and the first
    policy (whose data the held-out inputs come from) have ended, then
    each policy's evaluation once it and the shared part are done, and the `eval.baseline` model's."""
    policies = [r for r in runs.values() if r.method in POLICY_METHODS and r.stage.evaluate]
    if not policies:
        return []
    related = {n: runs[n].fingerprint for n in (comparison.baseline_stage, comparison.reward_stage) if n in runs}
    settings = stable_hash([related, dataclasses.asdict(comparison.eval)])[:16]
    # the held-out inputs come from the first policy's data (evaluation.seed_eval): it must have ended first
    waits = [*related, policies[0].stage.name]
    setup = Task(f"seed-{seed}:eval-setup", "eval_setup", seed, needs={train_key(seed, n): "any" for n in waits})
    setup.fingerprint = settings
    tasks = [setup]
    for run in policies:
        key = train_key(seed, run.stage.name)
        needs = {key: "ok", setup.key: "ok"}
        tasks.append(Task(f"{key}:eval", "eval_policy", seed, run, needs, stable_hash([run.fingerprint, settings])[:16]))
    if comparison.external_baseline:
        tasks.append(Task(f"{train_key(seed, BASELINE_ROW)}:eval", "eval_baseline", seed, None, {setup.key: "ok"}, settings))
    return tasks


def readiness(task: Task, tasks: dict[str, Task], started_is_enough: bool) -> str:
    """`blocked` (a task it needs to succeed did not), `ready`, or `wait`. With `started_is_enough` (a scheduler that
    holds a job until its `ok` needs succeed, as Slurm's afterok does) a need already under way is enough."""
    needs = [(tasks[k], how) for k, how in task.needs.items()]
    if any(how == "ok" and t.state in ("failed", "skipped") for t, how in needs):
        return "blocked"
    ok_states = ("done", "active") if started_is_enough else ("done",)
    if all((t.state in ok_states) if how == "ok" else (t.state in FINAL) for t, how in needs):
        return "ready"
    return "wait"


def dependents(task: Task, tasks: list[Task]) -> list[Task]:
    """Every task that needs `task`, directly or through others."""
    found: dict[str, Task] = {}
    frontier = [task.key]
    while frontier:
        key = frontier.pop()
        for t in tasks:
            if key in t.needs and t.key not in found:
                found[t.key] = t
                frontier.append(t.key)
    return list(found.values())


def run_tasks(tasks: list[Task], executor: Any, progress: Progress) -> None:
    """Run every task through `executor` in order, each once what it needs has ended: at most `executor.capacity` at
    once, a task whose needs failed skipped (the others still run), a failed job retried `executor.retries` times.

    The executor: `capacity` (None: no cap), `retries`, `scheduler_dependencies`, `decide(task, progress)` (settle a
    task without running it, e.g. cached: True), `start(task, after, progress, alone)` (`alone`: nothing else runs
    or could start until it ends, so it may take the whole machine), `poll(task)` -> None while it runs,
    else (completed | failed, error, worth a retry), `settled(task, progress)`, `cancel(tasks)`, `wait()`,
    `interrupted(active tasks)`."""
    by_key = {t.key: t for t in tasks}
    try:
        while not all(t.state in FINAL for t in tasks):
            for task in [t for t in tasks if t.state == "active"]:
                outcome = executor.poll(task)
                if outcome is not None:
                    settle(task, *outcome, tasks, by_key, executor, progress)
            skip_blocked(tasks, by_key, executor, progress)  # first: what a skip makes ready counts for `alone`
            for task in [t for t in tasks if t.state == "waiting"]:
                verdict = readiness(task, by_key, executor.scheduler_dependencies)
                if verdict == "wait" or executor.decide(task, progress):
                    continue
                if executor.capacity is not None and sum(t.state == "active" for t in tasks) >= executor.capacity:
                    break  # in order: a later task does not overtake one waiting for room
                task.attempts += 1
                after = [by_key[k] for k, how in task.needs.items() if how == "ok" and by_key[k].state == "active"]
                alone = not any(t.state == "active" for t in tasks) and not any(
                    t is not task and t.state == "waiting" and readiness(t, by_key, executor.scheduler_dependencies) == "ready"
                    for t in tasks
                )
                task.state = "active"
                executor.start(task, after, progress, alone)
            if any(t.state == "active" for t in tasks):
                executor.wait()
    except KeyboardInterrupt:
        executor.interrupted([t for t in tasks if t.state == "active"])
        raise


def settle(
    task: Task,
    status: str,
    error: str | None,
    retry: bool,
    tasks: list[Task],
    by_key: dict[str, Task],
    executor: Any,
    progress: Progress,
) -> None:
    """A task's run ended: done; or back to waiting (a job that ended because what it needs failed, or one retry);
    or failed, with the jobs waiting on it cancelled (they come back here and are skipped)."""
    task.job = {**(task.job or {}), "state": status}
    if status == "completed":
        task.state, task.error = "done", None
        executor.settled(task, progress)
        return
    if any(how == "ok" and by_key[k].state != "done" for k, how in task.needs.items()):
        task.state = "waiting"  # it never ran: what it needs failed, or is being run again
        task.attempts -= 1
        return
    waiting_on_it = [t for t in dependents(task, tasks) if t.state == "active"]
    executor.cancel(waiting_on_it)
    if retry and task.attempts <= executor.retries:
        task.state, task.error = "waiting", error
        print(f"{task.prefix or f'[seed {task.seed}]'} {task.name}: failed - {error}; submitting it once more", flush=True)
        return
    task.state, task.error = "failed", error
    executor.settled(task, progress)


def skip_blocked(tasks: list[Task], by_key: dict[str, Task], executor: Any, progress: Progress) -> None:
    """Skip every waiting task whose `ok` need failed or was skipped, and what that blocks in turn."""
    while blocked := [
        t for t in tasks if t.state == "waiting" and readiness(t, by_key, executor.scheduler_dependencies) == "blocked"
    ]:
        for task in blocked:
            skip(task, by_key, executor, progress)


def skip(task: Task, by_key: dict[str, Task], executor: Any, progress: Progress) -> None:
    """A task whose `ok` need failed or was skipped: skipped, saying which; a stage's run says so in the report."""
    broken = next(by_key[k] for k, how in task.needs.items() if how == "ok" and by_key[k].state in ("failed", "skipped"))
    task.state = "skipped"
    if task.kind == "train" and task.run is not None:
        needed = broken.run.stage.name if broken.run else broken.key
        task.run.status, task.run.error = (
            "skipped",
            f"needs stage {needed}, which {broken.run.status if broken.run else broken.state}",
        )
        task.error = task.run.error
        prefix = progress.prefix(task.seed)
        progress.done += 1
        print(f"{prefix} {task.run.stage.name}: skipped ({task.run.error})", flush=True)
    else:
        task.error = f"needs {broken.name}, which {broken.state}" + (f" ({broken.error})" if broken.error else "")
    executor.settled(task, progress)


def train_started(task: Task, progress: Progress, how: str = "training") -> None:
    """The start line of a stage: where it stands, where it trains and the ETA from its last run."""
    run = task.run
    task.prefix = progress.prefix(task.seed)
    progress.done += 1
    print(f"{task.prefix} {run.stage.name} ({run.method}): {how} in {run.run_dir} ...{progress.eta(run)}", flush=True)


def train_ended(task: Task, progress: Progress) -> None:
    run = task.run
    print(
        f"{task.prefix} {run.stage.name}: {run.status} in {duration(run.seconds)} (total {duration(time.time() - progress.started)})"
        + (f" - {run.error}" if run.error else ""),
        flush=True,
    )


def decide_cached(task: Task, progress: Progress) -> bool:
    """A stage whose run of the same fingerprint completed: reused, said in the log."""
    run = task.run
    if not is_cached(run):
        return False
    run.status, task.state = "cached", "done"
    prefix = progress.prefix(task.seed)
    progress.done += 1
    print(f"{prefix} {run.stage.name} ({run.method}): cached, fingerprint {run.fingerprint}", flush=True)
    return True
