"""Executors: what runs a comparison's tasks (comparison/run.py `run_tasks` decides when; an executor decides where).

`LocalExecutor` runs stages as processes of this machine: one at a time (today's behaviour, in this thread), or up
to `max_parallel` at once, each in a thread of its own with its share of the GPUs or CPU cores. The Slurm executor
(and submitit's LocalExecutor, to try it without a cluster) is comparison/jobs.py's JobExecutor, with the same
methods.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from workbench.comparison.run import (
    Progress,
    Task,
    decide_cached,
    error_line,
    evaluation_name,
    run_stage,
    train_ended,
    train_started,
)
from workbench.comparison.types import Comparison, StageRun
from workbench.config.comparison import ExecutorConfig
from workbench.console import duration
from workbench.data.pipeline import read_json


def device_shares(slots: int, gpus: Sequence[str], cores: int) -> tuple[list[dict[str, str]], str]:
    """Each of `slots` parallel stages' environment overrides, and the log line saying so: on GPUs, its own
    contiguous share of `gpus` (CUDA_VISIBLE_DEVICES; stages share GPUs only when there are fewer GPUs than slots),
    else its share of the CPU cores as torch threads (OMP_NUM_THREADS)."""
    if gpus:
        if len(gpus) >= slots:
            per = len(gpus) // slots
            groups = [list(gpus[i * per : (i + 1) * per]) for i in range(slots)]
            how = f"each stage gets {per} of the {len(gpus)} visible GPUs"
        else:
            groups = [[gpus[i % len(gpus)]] for i in range(slots)]
            how = f"{slots} stages share {len(gpus)} GPU(s), one GPU each, round robin (they compete for its memory)"
        envs = [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
        return envs, f"{how}: " + "; ".join(
            f"slot {i + 1}: CUDA_VISIBLE_DEVICES={e['CUDA_VISIBLE_DEVICES']}" for i, e in enumerate(envs)
        )
    threads = max(1, cores // slots)
    envs = [{"OMP_NUM_THREADS": str(threads)} for _ in range(slots)]
    return envs, f"each stage gets {threads} of the {cores} CPU cores (OMP_NUM_THREADS={threads}, torch threads)"


def visible_gpus() -> list[str]:
    """The GPUs stages may use: CUDA_VISIBLE_DEVICES as set, else every GPU torch sees; none on a CPU machine."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def evaluation_log(comparison: Comparison, task: Task) -> Path:
    """Where an evaluation task's process writes: seed-N/eval_logs/NAME.log, the shared part seed-N/eval_shared.log."""
    name = evaluation_name(task)
    seed_dir = comparison.output_dir / f"seed-{task.seed}"
    return seed_dir / "eval_logs" / f"{name}.log" if name else seed_dir / "eval_shared.log"


def interrupted_line(task: Task) -> str:
    """What Ctrl-C left of a training stage: its last complete checkpoint, kept for the next run to resume from."""
    run = task.run
    last = read_json(run.run_dir / "manifest.json").get("last_checkpoint")
    kept = f"its last complete checkpoint, {Path(last).name}, is kept" if last else "it had no complete checkpoint"
    return f"{task.prefix} {run.stage.name}: interrupted ({kept})"


class LocalExecutor:
    """Stages as processes of this machine, `max_parallel` at once. One at a time, a seed's evaluation runs in this
    process once its stages have ended (as `compare` always did); in parallel, each policy's evaluation is a task of
    its own, a process beside the stages still training, started in order once its stage and the shared part are
    done and a slot is free (a current eval.json counts as done). A task that runs alone (nothing else could start
    until it ends, e.g. the first stage every other needs) gets the whole machine rather than its share."""

    retries = 0
    scheduler_dependencies = False

    def __init__(self, comparison: Comparison, runs: dict[int, dict[str, StageRun]], max_parallel: int = 1) -> None:
        self.comparison, self.runs, self.capacity = comparison, runs, max_parallel
        self.finished: dict[str, tuple[str, str | None, bool]] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.event = threading.Event()
        self.stopping = False
        self.free: list[int] = list(range(max_parallel))
        self.slot: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen] = {}  # evaluation processes under way
        self.envs: list[dict[str, str] | None] = [None]
        self.whole: dict[str, str] | None = None  # a task alone on the machine: every device or core
        if max_parallel > 1:
            overrides, line = device_shares(max_parallel, visible_gpus(), len(os.sched_getaffinity(0)))
            self.envs = [{**os.environ, **o} for o in overrides]
            self.whole = {**os.environ, **device_shares(1, visible_gpus(), len(os.sched_getaffinity(0)))[0][0]}
            print(f"executor: local, up to {max_parallel} stages at once; {line}", flush=True)

    def decide(self, task: Task, progress: Progress) -> bool:
        """A cached stage, or a policy's evaluation whose eval.json is current, is done without running."""
        if task.kind == "train":
            return decide_cached(task, progress)
        if task.kind == "eval_policy":
            from workbench.comparison.evaluation import saved_evaluation

            runs = self.runs[task.seed]
            if saved_evaluation(self.comparison, runs, task.run) is not None:
                task.state = "done"
                print(f"[seed {task.seed}] {task.name}: evaluation cached", flush=True)
                return True
        return False

    def start(self, task: Task, after: list[Task], progress: Progress, alone: bool = False) -> None:
        if task.kind == "evaluate":
            from workbench.comparison.evaluation import evaluate_seed

            evaluate_seed(self.comparison, task.seed, self.runs[task.seed])
            self.finished[task.key] = ("completed", None, False)
            return
        if task.kind == "train":
            train_started(task, progress)
        if self.capacity == 1:  # in this thread, exactly as `compare` always ran a stage (Ctrl-C included)
            run_stage(task.run)
            self.finished[task.key] = (task.run.status, task.run.error, False)
            return
        slot = self.free.pop(0)
        self.slot[task.key] = slot
        env = self.whole if alone else self.envs[slot]
        if task.kind != "train":
            print(f"[seed {task.seed}] {task.name}: started, log {evaluation_log(self.comparison, task)}", flush=True)
        target = self._train if task.kind == "train" else self._evaluate
        thread = threading.Thread(target=target, args=(task, env), name=task.key, daemon=True)
        self.threads[task.key] = thread
        thread.start()

    def _train(self, task: Task, env: dict[str, str] | None) -> None:
        try:
            run_stage(task.run, env, record=lambda: not self.stopping)
            outcome = (task.run.status, task.run.error, False)
        except Exception as exc:  # noqa: BLE001 - the stage fails, named; the comparison goes on
            outcome = ("failed", f"{type(exc).__name__}: {exc}", False)
        self.finished[task.key] = outcome
        self.event.set()

    def _evaluate(self, task: Task, env: dict[str, str] | None) -> None:
        """An evaluation task in a process of its own with its share of the devices (comparison/evaljob.py)."""
        log = evaluation_log(self.comparison, task)
        job = log.with_suffix(".pkl")
        t0 = time.time()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(job, "wb") as f:
                pickle.dump((self.comparison, task.seed, self.runs[task.seed], task.kind, evaluation_name(task)), f)
            with open(log, "w", encoding="utf-8") as out:
                cmd = [sys.executable, "-m", "workbench.comparison.evaljob", str(job)]
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                self.procs[task.key] = proc
                code = proc.wait()
            said = error_line(log).removeprefix("error: ")
            outcome = ("completed", None, False) if code == 0 else ("failed", f"exit code {code}: {said} (log: {log})", False)
        except Exception as exc:  # noqa: BLE001 - the evaluation fails, named; the comparison goes on
            outcome = ("failed", f"{type(exc).__name__}: {exc}", False)
        finally:
            job.unlink(missing_ok=True)
            self.procs.pop(task.key, None)
            task.seconds = time.time() - t0
        self.finished[task.key] = outcome
        self.event.set()

    def poll(self, task: Task) -> tuple[str, str | None, bool] | None:
        outcome = self.finished.pop(task.key, None)
        if outcome is not None and task.key in self.slot:
            self.free.append(self.slot.pop(task.key))
            self.free.sort()
            self.threads.pop(task.key).join()
        return outcome

    def settled(self, task: Task, progress: Progress) -> None:
        if task.kind == "train" and task.state != "skipped":
            train_ended(task, progress)
        elif task.kind != "train" and task.state == "done" and task.kind != "evaluate":
            print(f"[seed {task.seed}] {task.name}: done in {duration(task.seconds)}", flush=True)
        elif task.kind != "train" and task.state == "failed":
            print(f"[seed {task.seed}] {task.name}: failed - {task.error}", flush=True)

    def collect(self, tasks: list[Task]) -> None:
        """With evaluation tasks (max_parallel > 1): each seed's evaluation from the files their processes wrote."""
        if any(t.kind != "train" and t.kind != "evaluate" for t in tasks):
            from workbench.comparison.evaluation import collect_tasks

            collect_tasks(self.comparison, self.runs, tasks)

    def cancel(self, tasks: list[Task]) -> None:
        """Nothing waits here on a stage that failed: a local stage starts only once its needs have succeeded."""

    def wait(self) -> None:
        if self.finished:
            return
        self.event.wait(timeout=1.0)
        self.event.clear()

    def interrupted(self, active: list[Task]) -> None:
        """Ctrl-C reached every stage process too: each records `interrupted` and stops; wait for them, then say
        what each kept."""
        self.stopping = True
        for proc in list(self.procs.values()):  # Ctrl-C may have reached this process alone
            proc.terminate()
        deadline = time.time() + 90
        for task in active:
            thread = self.threads.get(task.key)
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.time()))
        for task in active:
            if task.kind == "train":
                print(interrupted_line(task), flush=True)


def executor_config(comparison: Comparison, kind: str | None, max_parallel: int | None) -> ExecutorConfig:
    """The recipe's `executor`, with `compare --executor` / `--max-parallel` over it (said in the log when they change it)."""
    import dataclasses

    cfg = comparison.executor or ExecutorConfig()
    changes = {k: v for k, v in (("kind", kind), ("max_parallel", max_parallel)) if v is not None and getattr(cfg, k) != v}
    if changes:
        said = ", ".join(f"{k} {getattr(cfg, k)} -> {v}" for k, v in changes.items())
        print(f"executor: the command line wins over the recipe's `executor` ({said})", flush=True)
        cfg = dataclasses.replace(cfg, **changes)
    return cfg
