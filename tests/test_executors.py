"""Executors of `workbench compare`: local stages in parallel with their share of the devices, a failing stage
reported with its log and not blocking the stages that do not need it."""

from __future__ import annotations

from conftest import read_yaml, run_workbench, write_yaml
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
    assert "evaluating 2 policies on 8 held-out prompts" in log  # the evaluation ran once the stages had ended
