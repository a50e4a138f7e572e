"""Stages and evaluations as jobs through submitit: on Slurm (`executor.kind: slurm`), or through submitit's
LocalExecutor on this machine (`submitit_local`, the same path without a cluster).

One job per stage and seed, sized from the stage's accelerate config (num_machines nodes, one `workbench launch`
per node with its num_processes / num_machines GPUs); on Slurm a job waits for what it needs with `afterok:`. On
each node the job's function takes the machine rank and the main address from submitit.JobEnvironment and runs
`workbench launch --machine-rank ... --main-process-ip ... --main-process-port ...`, so the node goes through
launch's own checks. The controller records every job in OUTPUT_DIR/jobs.json (atomically): `compare` started
again attaches to jobs still running, skips finished stages, resubmits a failed job once; `compare --status`
prints where each stage stands without submitting anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from workbench.comparison.evaluation import evaluation_job
from workbench.comparison.run import (
    FINAL,
    Progress,
    Task,
    decide_cached,
    evaluation_name,
    is_cached,
    plan,
    prepare_stage,
    record_stage,
    stage_outcome,
    train_ended,
    train_started,
)
from workbench.comparison.types import Comparison, StageRun
from workbench.config.comparison import ExecutorConfig
from workbench.data.pipeline import read_json, write_json
from workbench.errors import WorkbenchError

# ----------------------------------------------------------------------------------------------
# What a job asks for, and the sbatch script submitit makes of it


def stage_shape(run: StageRun, gpus_without_config: int) -> tuple[int, int]:
    """(nodes, GPUs per node) of a stage's job: its accelerate config's num_machines and num_processes / num_machines
    (0 GPUs when it says `use_cpu`), else one node with `gpus_without_config`."""
    if not run.stage.accelerate_config:
        return 1, gpus_without_config
    from workbench.config import read_yaml

    acc = read_yaml(run.stage.accelerate_config)
    nodes = int(acc.get("num_machines") or 1)
    processes = int(acc.get("num_processes") or 1)
    if processes % nodes:
        raise WorkbenchError(
            f"{run.stage.accelerate_config}: num_processes {processes} is not a multiple of num_machines {nodes}; "
            "a job gives every node the same number of GPUs"
        )
    return nodes, 0 if acc.get("use_cpu") else processes // nodes


def slurm_parameters(cfg: ExecutorConfig, name: str, nodes: int, gpus: int, after: list[str]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one job: one task per node (the node's `workbench launch` starts its
    processes), its GPUs, the recipe's sbatch options, and `afterok:` on the jobs it needs."""
    s = cfg.slurm
    params: dict[str, Any] = {"job_name": name, "nodes": nodes, "ntasks_per_node": 1, "time": s.time_min}
    params.update({k: v for k, v in (("partition", s.partition), ("account", s.account), ("qos", s.qos)) if v})
    if gpus:
        params["gpus_per_node"] = gpus
    if s.cpus_per_task:
        params["cpus_per_task"] = s.cpus_per_task
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    if s.setup:
        params["setup"] = list(s.setup)
    if s.extra_sbatch:
        params["additional_parameters"] = dict(s.extra_sbatch)
    return params


def sbatch_script(params: dict[str, Any], folder: Path) -> str:
    """The sbatch script submitit writes for these parameters (its own generator, as SlurmExecutor calls it; nothing
    is submitted, and no Slurm is needed)."""
    import shlex

    from submitit.slurm import slurm

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return slurm._make_sbatch_string(command=command, folder=folder, **params)


def node_command(cmd: list[str], node: int, num_nodes: int, main_host: str, port: int) -> list[str]:
    """The stage's command on one node: a multi-node `workbench launch` gets this node's rank and the main
    node's address and port (launch checks them as it does on the command line)."""
    if num_nodes == 1:
        return list(cmd)
    if "launch" not in cmd:
        raise WorkbenchError(f"a stage on {num_nodes} nodes needs an accelerate_config (it runs `workbench launch`)")
    return [*cmd, "--machine-rank", str(node), "--main-process-ip", main_host, "--main-process-port", str(port)]


def main_port(configured: int | None, job_id: str) -> int:
    """The main node's port: the recipe's, else 20000 + the job id modulo 20000 (two jobs sharing a node differ)."""
    return configured or 20000 + int(str(job_id).split("_")[0]) % 20000


# ----------------------------------------------------------------------------------------------
# The jobs' functions (what runs on the nodes)


def stage_job(run: StageRun, cmd: list[str], env: dict[str, str], port: int | None) -> int:
    """One stage on one node of its job; node 0 writes stage.log and records the outcome in stage.json."""
    import submitit

    job = submitit.JobEnvironment()
    argv = node_command(cmd, job.node, job.num_nodes, job.hostnames[0], main_port(port, job.job_id))
    log_path = run.run_dir / ("stage.log" if job.node == 0 else f"stage.node-{job.node}.log")
    t0 = time.time()
    with open(log_path, "a", encoding="utf-8") as out:
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    if job.node == 0:
        record_stage(run, code, time.time() - t0, log_path)
    return code


# ----------------------------------------------------------------------------------------------
# The controller


def jobs_path(comparison: Comparison) -> Path:
    return comparison.output_dir / "jobs.json"


def job_folder(comparison: Comparison, cfg: ExecutorConfig) -> Path:
    return Path(cfg.slurm.folder) if cfg.slurm.folder else comparison.output_dir / "jobs"


def attach(kind: str, folder: Path, job_id: str) -> Any:
    """A submitit job object for a job submitted by an earlier controller."""
    if kind == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder, job_id)
    from submitit.local.local import LocalJob

    return LocalJob(folder, job_id)


def job_running(kind: str, job: Any) -> bool:
    """Still queued or running. A local job of an earlier controller has no process object here: its id is its
    pid, and it runs while that process lives."""
    if kind != "slurm" and getattr(job, "_process", None) is None:
        try:
            os.kill(int(job.job_id), 0)
        except (OSError, ValueError):
            return False
        return not job.paths.result_pickle.exists()
    return not job.done()


def job_error(job: Any) -> str | None:
    """Why a finished job failed (its exception, or its state), with its log; None when it succeeded."""
    try:
        failure = job.exception()
    except Exception as exc:  # noqa: BLE001 - an unreadable result is a failure, said as such
        failure = exc
    if failure is None:
        return None
    text = str(failure).strip().splitlines()
    return f"job {job.job_id}: {(text[-1] if text else type(failure).__name__)[:300]} (log: {job.paths.stderr})"


class JobExecutor:
    """Each task a submitit job; the controller only submits, polls and records (jobs.json)."""

    retries = 1

    def __init__(self, comparison: Comparison, cfg: ExecutorConfig, runs: dict[int, dict[str, StageRun]]) -> None:
        self.comparison, self.cfg, self.runs = comparison, cfg, runs
        self.kind = cfg.kind
        self.capacity = cfg.parallel
        self.scheduler_dependencies = self.kind == "slurm"
        self.folder = job_folder(comparison, cfg)
        self.records: dict[str, dict[str, Any]] = read_json(jobs_path(comparison)).get("jobs", {})
        self.jobs: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        if self.kind == "submitit_local" and (self.capacity or 1) > 1:
            from workbench.comparison.executors import device_shares, visible_gpus

            if not visible_gpus():
                overrides, line = device_shares(self.capacity, [], len(os.sched_getaffinity(0)))
                self.env = overrides[0]
                print(f"executor: submitit_local, up to {self.capacity} jobs at once; {line}", flush=True)
        print(f"executor: {self.kind}, job scripts and logs in {self.folder}, job ids in {jobs_path(comparison)}", flush=True)

    # -- bookkeeping
    def save(self) -> None:
        write_json(jobs_path(self.comparison), {"executor": self.kind, "folder": str(self.folder), "jobs": self.records})

    def decide(self, task: Task, progress: Progress) -> bool:
        """Cached stages are done; a job an earlier controller submitted for this same task is attached to while it
        runs (its attempts carried over, so a failed job is resubmitted once in all)."""
        if task.kind == "train" and decide_cached(task, progress):
            return True
        record = self.records.get(task.key)
        if not record or record.get("fingerprint") != task.fingerprint:
            return False
        task.attempts = max(task.attempts, int(record.get("attempts", 0)))
        job = attach(record["executor"], Path(record["folder"]), record["job_id"])
        if record.get("state") in FINAL or not job_running(record["executor"], job):
            if task.kind == "train" and record.get("state") not in FINAL:  # it ended while no controller watched
                self.jobs[task.key] = job
                task.state, task.job = "active", record
                if task.run is not None:
                    task.prefix = progress.prefix(task.seed)
                    progress.done += 1
                return True
            return False
        self.jobs[task.key], task.state, task.job = job, "active", record
        if task.kind == "train":
            train_started(task, progress, how=f"attached to job {record['job_id']}, training")
        else:
            print(f"[seed {task.seed}] {task.name}: attached to job {record['job_id']}", flush=True)
        return True

    def executor_for(self, task: Task, after: list[Task]) -> tuple[Any, dict[str, Any]]:
        import submitit

        gpus = self.cfg.slurm.gpus
        nodes, gpus = stage_shape(task.run, gpus) if task.kind == "train" else (1, gpus)
        name = f"{self.comparison.name}-{task.key}".replace("/", "-").replace(":", "-")
        if self.kind == "slurm":
            executor = submitit.SlurmExecutor(folder=self.folder)
            params = slurm_parameters(self.cfg, name, nodes, gpus, [t.job["job_id"] for t in after if t.job])
        else:
            if nodes > 1:
                raise WorkbenchError(f"stage {task.name} runs on {nodes} nodes; submitit_local has one: use kind slurm")
            executor = submitit.LocalExecutor(folder=self.folder)
            params = {"timeout_min": self.cfg.slurm.time_min, "gpus_per_node": gpus if visible_gpus_here() else 0}
        executor.update_parameters(**params)
        return executor, params

    def start(self, task: Task, after: list[Task], progress: Progress, alone: bool = False) -> None:
        executor, _ = self.executor_for(task, after)
        if task.kind == "train":
            cmd = prepare_stage(task.run, retry=task.attempts > 1)
            job = executor.submit(stage_job, task.run, cmd, self.env, self.cfg.slurm.main_process_port)
            train_started(task, progress, how=f"job {job.job_id}")
        else:
            job = executor.submit(
                evaluation_job, self.comparison, task.seed, self.runs[task.seed], task.kind, evaluation_name(task)
            )
            print(f"[seed {task.seed}] {task.name}: job {job.job_id}", flush=True)
        self.jobs[task.key] = job
        task.job = {
            "job_id": str(job.job_id),
            "executor": self.kind,
            "folder": str(self.folder),
            "fingerprint": task.fingerprint,
            "attempts": task.attempts,
            "log": str(job.paths.stdout),
            "state": "submitted",
        }
        self.records[task.key] = task.job
        self.save()

    def poll(self, task: Task) -> tuple[str, str | None, bool] | None:
        job = self.jobs[task.key]
        if job_running(self.kind if task.job is None else task.job["executor"], job):
            return None
        error = job_error(job) if job.paths.result_pickle.exists() or self.kind == "slurm" else "the job's process ended"
        if task.kind == "train":
            status, error, retry = stage_outcome(task.run, error)
        else:
            status, retry = ("completed", False) if error is None else ("failed", True)
        self.records[task.key] = {**self.records[task.key], "state": "done" if status == "completed" else status}
        self.save()
        return status, error, retry

    def settled(self, task: Task, progress: Progress) -> None:
        if task.key in self.records:
            self.records[task.key]["state"] = task.state
            self.save()
        if task.kind == "train" and task.state != "skipped":
            train_ended(task, progress)
        elif task.kind != "train" and task.state == "failed":
            print(f"[seed {task.seed}] {task.name}: failed - {task.error}", flush=True)

    def cancel(self, tasks: list[Task]) -> None:
        for task in tasks:
            job = self.jobs.get(task.key)
            if job is not None:
                job.cancel(check=False)

    def wait(self) -> None:
        time.sleep(self.cfg.slurm.poll_s if self.kind == "slurm" else 1.0)

    def interrupted(self, active: list[Task]) -> None:
        """Ctrl-C: cancel the submitted jobs only when the user says so at a terminal; otherwise they go on, and
        `compare` started again attaches to them."""
        if not active:
            return
        ids = ", ".join(str(self.jobs[t.key].job_id) for t in active if t.key in self.jobs)
        answer = ""
        if sys.stdin.isatty():
            try:
                answer = input(f"\ncancel the {len(active)} submitted job(s) ({ids})? [y/N] ").strip().lower()
            except (EOFError, KeyboardInterrupt):
                answer = ""
        if answer in ("y", "yes"):
            self.cancel(active)
            print(f"cancelled job(s) {ids}", flush=True)
        else:
            print(f"left job(s) {ids} running; `workbench compare` started again attaches to them", flush=True)

    def collect(self, tasks: list[Task]) -> None:
        """Once every job is in: each seed's evaluation from the files the jobs wrote (the controller loads nothing)."""
        from workbench.comparison.evaluation import collect_tasks

        collect_tasks(self.comparison, self.runs, tasks)


def visible_gpus_here() -> bool:
    from workbench.comparison.executors import visible_gpus

    return bool(visible_gpus())


# ----------------------------------------------------------------------------------------------
# compare --status


def status_lines(comparison: Comparison) -> list[str]:
    """Where each stage and evaluation of the comparison stands, from its files and jobs.json; submits nothing."""
    records = read_json(jobs_path(comparison)).get("jobs", {})
    _, tasks = plan(comparison, jobs=True)
    lines = []
    for task in tasks:
        record = records.get(task.key)
        if task.kind == "train" and is_cached(task.run):
            state = "completed"
        elif task.kind == "train" and read_json(task.run.run_dir / "stage.json").get("fingerprint") != task.fingerprint:
            state = "not started" if not record else f"job {record['job_id']} of another version of the stage"
        elif record:
            job = attach(record["executor"], Path(record["folder"]), record["job_id"])
            running = job_running(record["executor"], job)
            state = f"job {record['job_id']} " + ("running or queued" if running else record.get("state", "ended"))
            if task.kind == "train" and not running:
                saved = read_json(task.run.run_dir / "stage.json")
                state = f"job {record['job_id']} {saved.get('status', 'ended')}" + (
                    f": {saved['error']}" if saved.get("error") else ""
                )
            state += f" (job log: {record.get('log')})"
        else:
            state = "not started"
        lines.append(f"{task.key:<40} {state}")
    return lines
