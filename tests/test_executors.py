"""Executors of `workbench compare`: local stages in parallel with their share of the devices, a failing stage
reported with its log and not blocking the stages that do not need it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import kill_when, read_yaml, run_workbench, write_yaml
from test_compare import results, small_comparison

from workbench.comparison.executors import device_shares


def test_parallel_stages_share_the_gpus_or_the_cores():
    envs, line = device_shares(2, ["0", "1", "2", "3"], 16)
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert line.startswith("each stage gets 2 of the 4 visible GPUs")
    envs, _ = device_shares(3, ["4", "6", "7"], 16)  # CUDA_VISIBLE_DEVICES as given, not 0..n-1
    assert envs == [{"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"}, {"CUDA_VISIBLE_DEVICES": "7"}]
    envs, line = device_shares(3, ["0"], 16)  # fewer GPUs than stages: they share, and the log says so
    assert envs == [{"CUDA_VISIBLE_DEVICES": "0"}] * 3 and "share 1 GPU(s)" in line
    envs, line = device_shares(3, [], 8)  # CPU: 8 cores / 3 stages = 2 threads each
    assert envs == [{"OMP_NUM_THREADS": "2"}] * 3 and "2 of the 8 CPU cores" in line
    assert device_shares(4, [], 2)[0] == [{"OMP_NUM_THREADS": "1"}] * 4  # never 0 threads


def test_parallel_stages_run_at_once_and_a_failure_blocks_only_what_needs_it(tmp_path, tiny_model):
    """sft, then dpo and bad (both need only sft) at once; bad fails with its log path, dpo still completes,
    after_bad (needs bad) is skipped. The command line's --max-parallel wins over the recipe's, said in the log."""
    path = small_comparison(tmp_path, tiny_model)
    write_yaml(path, {**read_yaml(path), "executor": {"kind": "local", "max_parallel": 1}}, sort_keys=False)
    out = tmp_path / "out"
    res = run_workbench(["compare", str(path), "--max-parallel", "2"], timeout=900)
    assert res.returncode == 1, res.stderr[-3000:]
    log = res.stdout
    assert "executor: the command line wins over the recipe's `executor` (max_parallel 1 -> 2)" in log
    assert "executor: local, up to 2 stages at once; each stage gets " in log and "(OMP_NUM_THREADS=" in log
    # bad started before dpo ended: one stage at a time would have ended dpo first
    assert log.index("bad (ppo): training in") < log.index("dpo: completed in")
    assert log.index("sft: completed in") < log.index("dpo (dpo): training in")  # dpo waited for sft
    got = results(out)
    assert got["sft"]["status"] == "ok" and got["dpo"]["status"] == "ok"
    bad_log = out / "seed-42" / "bad" / "stage.log"
    assert got["bad"]["status"] == "failed" and "the reward server is down" in got["bad"]["errors"][0]
    assert f"(log: {bad_log})" in got["bad"]["errors"][0] and bad_log.is_file()
    assert got["after_bad"]["status"] == "skipped" and "needs stage bad" in got["after_bad"]["errors"][0]
    # in parallel, each policy's evaluation is a process of its own, with its log, once its stage has ended
    for log_file in ("eval_shared.log", "eval_logs/sft.log", "eval_logs/dpo.log"):
        assert (out / "seed-42" / log_file).is_file()
    assert not list((out / "seed-42" / "eval_logs").glob("*.pkl"))  # each job's pickle is removed once it ends
    assert log.index("sft: completed in") < log.index("eval sft: started") < log.index("eval sft: done in")
    assert log.index("dpo: completed in") < log.index("eval dpo: started")
    assert "policies on 8 held-out prompts" in (out / "seed-42" / "eval_shared.log").read_text()
    assert got["sft"]["gold_reward_mean"] is not None and got["dpo"]["win_rate_vs_baseline"] is not None


def two_stage_comparison(tmp_path: Path, model: Path) -> Path:
    """The small comparison's sft and dpo only: the quickest pipeline with a stage that needs another."""
    data = read_yaml(small_comparison(tmp_path, model))
    data["stages"] = {k: v for k, v in data["stages"].items() if k in ("sft", "dpo")}
    return write_yaml(tmp_path / "two.yaml", data, sort_keys=False)


def metrics(out: Path) -> dict[str, dict]:
    keep = ("status", "gold_reward_mean", "win_rate_vs_baseline", "kl_to_reference", "preference_accuracy", "num_pairs")
    return {name: {k: r.get(k) for k in keep} for name, r in results(out).items()}


def test_submitit_local_jobs_give_the_local_results_and_survive_a_controller_kill(tmp_path, tiny_model):
    """Stages and evaluations as submitit jobs on this machine: the controller is killed (-9) once the dpo job is
    submitted; `compare` again attaches to that job (recorded in jobs.json), reuses sft, and the results equal the
    local executor's (same seeds). `--status` reports each stage without submitting anything."""
    path = two_stage_comparison(tmp_path, tiny_model)
    local = run_workbench(["compare", str(path), "--set", f"output_dir={tmp_path / 'local'}"], timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]

    out = tmp_path / "jobs"
    args = ["compare", str(path), "--set", f"output_dir={out}", "--executor", "submitit_local"]
    jobs = out / "jobs.json"
    kill_when(args, lambda: jobs.is_file() and "seed-42/dpo" in jobs.read_text(), timeout=600)
    dpo_job = json.loads(jobs.read_text())["jobs"]["seed-42/dpo"]["job_id"]
    status = run_workbench([*args, "--status"])
    assert status.returncode == 0 and "seed-42/sft" in status.stdout and "completed" in status.stdout
    assert f"job {dpo_job} running or queued (job log: " in status.stdout
    assert not (out / "seed-42" / "dpo" / "eval.json").exists()  # --status submitted nothing

    again = run_workbench([*args, "--resume"], timeout=900)
    assert again.returncode == 0, again.stderr[-3000:] + again.stdout[-3000:]
    assert "sft (sft): cached" in again.stdout and f"dpo (dpo): attached to job {dpo_job}" in again.stdout
    assert metrics(out) == metrics(tmp_path / "local")
    recorded = json.loads(jobs.read_text())["jobs"]
    assert recorded["seed-42/dpo"]["state"] == "done" and recorded["seed-42/dpo:eval"]["state"] == "done"


def test_a_two_node_zero3_stage_becomes_this_sbatch_script(tmp_path):
    """submitit's own generator, nothing submitted: 2 nodes x 1 task (each node's `workbench launch` starts its 4
    processes), 4 GPUs per node, the recipe's partition / account / time / extra options, afterok on the upstream
    jobs, and the job's launch line takes the machine rank and main address from the Slurm environment."""
    from workbench.comparison.jobs import node_command, sbatch_script, slurm_parameters, stage_shape
    from workbench.comparison.types import Stage, StageRun
    from workbench.config.comparison import ExecutorConfig, SlurmConfig

    acc = write_yaml(tmp_path / "zero3.yaml", {"distributed_type": "DEEPSPEED", "num_machines": 2, "num_processes": 8})
    run = StageRun(Stage("ppo", {"method": "ppo"}, accelerate_config=str(acc)), 42, {}, tmp_path / "seed-42" / "ppo")
    slurm = SlurmConfig(
        partition="gpu",
        account="align",
        qos="high",
        time_min=720,
        extra_sbatch={"mem": 0, "exclusive": True},
        setup=["module load cuda/12.4"],
    )
    cfg = ExecutorConfig(kind="slurm", slurm=slurm)
    assert stage_shape(run, gpus_without_config=1) == (2, 4)
    params = slurm_parameters(cfg, "quickstart-seed-42-ppo", 2, 4, ["1001", "1002"])
    script = sbatch_script(params, tmp_path / "jobs").splitlines()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=align",
        "#SBATCH --qos=high",
        "#SBATCH --time=720",
        "#SBATCH --dependency=afterok:1001:1002",
        "#SBATCH --job-name=quickstart-seed-42-ppo",
        "#SBATCH --mem=0",
        "#SBATCH --exclusive",
    ):
        assert line in script, (line, script)
    assert script.index("module load cuda/12.4") < script.index("# command")  # the recipe's setup lines, before the job
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in script)
    # on node 1 of 2 (as submitit.JobEnvironment reads SLURM_NODEID / SLURM_JOB_NODELIST), through launch's checks
    cmd = ["python", "-m", "workbench", "launch", "r.yaml", "--accelerate-config", str(acc)]
    assert node_command(cmd, 1, 2, "gpu-17", 21001) == [
        *cmd,
        "--machine-rank",
        "1",
        "--main-process-ip",
        "gpu-17",
        "--main-process-port",
        "21001",
    ]
    assert node_command(cmd, 0, 1, "gpu-17", 21001) == cmd  # one node: the command as it is


class ScriptedJobs:
    """An executor whose jobs end as scripted (key -> outcomes of successive attempts), one poll after they start;
    it records what ran when, so the scheduling of `run_tasks` can be checked without training anything."""

    retries = 1
    scheduler_dependencies = False

    def __init__(self, capacity, outcomes):
        self.capacity, self.outcomes, self.log, self.active, self.alone = capacity, outcomes, [], set(), {}

    def decide(self, task, progress):
        return False

    def start(self, task, after, progress, alone=False):
        self.active.add(task.key)
        self.log.append(("start", task.key, len(self.active)))
        self.alone[task.key] = alone

    def poll(self, task):
        self.active.discard(task.key)
        status = self.outcomes.get(task.key, ["completed"]).pop(0) if self.outcomes.get(task.key) else "completed"
        return status, None if status == "completed" else f"{task.key} broke", True

    def settled(self, task, progress):
        self.log.append((task.state, task.key))

    def cancel(self, tasks):
        pass

    def wait(self):
        pass

    def interrupted(self, active):
        pass


def test_the_task_loop_keeps_the_cap_retries_a_failed_job_once_and_skips_only_what_needs_a_failure(capsys):
    from workbench.comparison.run import Progress, Task, run_tasks

    tasks = [
        Task("sft", "eval_setup", 42),
        Task("reward", "eval_setup", 42),
        Task("dpo", "eval_setup", 42, needs={"sft": "ok"}),
        Task("ppo", "eval_setup", 42, needs={"sft": "ok", "reward": "ok"}),
        Task("after_ppo", "eval_setup", 42, needs={"ppo": "ok"}),
        Task("report", "eval_setup", 42, needs={"dpo": "any", "after_ppo": "any"}),
    ]
    # reward fails once and succeeds when resubmitted; ppo fails twice: failed after one retry
    jobs = ScriptedJobs(2, {"reward": ["failed", "completed"], "ppo": ["failed", "failed"]})
    run_tasks(tasks, jobs, Progress(6))
    state = {t.key: t.state for t in tasks}
    assert state == {"sft": "done", "reward": "done", "dpo": "done", "ppo": "failed", "after_ppo": "skipped", "report": "done"}
    assert max(n for kind, *rest in jobs.log if kind == "start" for n in rest[1:]) <= 2  # never more than 2 at once
    starts = [key for kind, key, *_ in jobs.log if kind == "start"]
    assert starts.count("reward") == 2 and starts.count("ppo") == 2 and "after_ppo" not in starts
    assert [t.attempts for t in tasks if t.key in ("reward", "ppo")] == [2, 2]
    assert "reward broke; submitting it once more" in capsys.readouterr().out
    assert next(t for t in tasks if t.key == "after_ppo").error == "needs eval setup, which failed (ppo broke)"


def test_a_task_that_nothing_could_run_beside_takes_the_whole_machine():
    """The first stage every other needs, and the last that waits on all, run alone; two ready at once do not."""
    from workbench.comparison.run import Progress, Task, run_tasks

    tasks = [
        Task("pairs", "eval_setup", 0),
        Task("dpo", "eval_setup", 0, needs={"pairs": "ok"}),
        Task("kto", "eval_setup", 0, needs={"pairs": "ok"}),
        Task("report", "eval_setup", 0, needs={"dpo": "any", "kto": "any"}),
    ]
    jobs = ScriptedJobs(2, {})
    run_tasks(tasks, jobs, Progress(4))
    assert jobs.alone == {"pairs": True, "dpo": False, "kto": False, "report": True}

    # a fails: t (needs it ended) is ready, y (needs it to succeed) is skipped, which makes z (needs y ended) ready in
    # the same pass, so t is not alone: z starts beside it
    tasks = [
        Task("a", "eval_setup", 0),
        Task("t", "eval_setup", 0, needs={"a": "any"}),
        Task("y", "eval_setup", 0, needs={"a": "ok"}),
        Task("z", "eval_setup", 0, needs={"y": "any"}),
    ]
    jobs = ScriptedJobs(2, {"a": ["failed"]})
    jobs.retries = 0
    run_tasks(tasks, jobs, Progress(4))
    assert jobs.alone == {"a": True, "t": False, "z": False}
    assert [t.state for t in tasks] == ["failed", "done", "skipped", "done"]


def test_the_slurm_example_comparison_reads_and_runs_its_rl_stages_after_sft_and_reward():
    from conftest import REPO

    from workbench.comparison import load_comparison
    from workbench.comparison.recipe import stage_needs

    comparison = load_comparison(REPO / "examples" / "slurm" / "comparison.yaml")
    assert comparison.executor.kind == "slurm" and comparison.executor.parallel is None  # no cap on jobs
    assert (comparison.executor.slurm.partition, comparison.executor.slurm.time_min) == ("gpu", 240)
    assert stage_needs(comparison) == {
        "sft": [],
        "reward": [],
        "dpo": ["sft"],
        "ppo": ["sft", "reward"],
        "grpo": ["sft", "reward"],
    }


def test_a_forked_stage_takes_its_share_of_the_cores_as_torch_threads():
    """torch read OMP_NUM_THREADS once, in the stage server; a forked stage given its share sets torch's threads."""
    import torch

    from workbench.stageproc import _follow_thread_count

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _follow_thread_count({"OMP_NUM_THREADS": "1"})
        assert torch.get_num_threads() == 1
        _follow_thread_count({})  # not given: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ctrl_c_cancels_the_jobs_only_when_the_user_says_so_at_a_terminal(tmp_path, tiny_model, capsys, monkeypatch):
    from submitit.local.local import LocalJob

    from workbench.comparison import load_comparison
    from workbench.comparison.executors import executor_config
    from workbench.comparison.jobs import JobExecutor
    from workbench.comparison.run import plan

    comparison = load_comparison(two_stage_comparison(tmp_path, tiny_model))
    runs, tasks = plan(comparison, jobs=True)
    executor = JobExecutor(comparison, executor_config(comparison, "submitit_local", None), runs)
    cancelled = []

    class Job(LocalJob):  # a real submitit job object of a job that is not ours to stop: record the cancel
        def cancel(self, check=True):
            cancelled.append(self.job_id)

    task = next(t for t in tasks if t.key == "seed-42/dpo")
    executor.jobs[task.key] = Job(tmp_path / "jobs", "4242")
    executor.interrupted([task])  # pytest's stdin is not a terminal
    assert "left job(s) 4242 running; `workbench compare` started again attaches to them" in capsys.readouterr().out
    assert cancelled == []
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "y" if "cancel the 1 submitted job(s) (4242)?" in prompt else "n")
    executor.interrupted([task])
    assert cancelled == ["4242"] and "cancelled job(s) 4242" in capsys.readouterr().out
