"""Several machines, simulated on one: two `workbench launch` "nodes" (num_machines 2, machine_rank 0/1,
main_process_ip 127.0.0.1, gloo) against one node with two processes; kill -9 of both nodes and resume;
the launch values, the roll call (missing machines, another recipe) and the shared-directory checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, edit_yaml, read_yaml, write_recipe, write_yaml
from test_train import read_metrics

from workbench.checkpoint import newest_complete, step_of
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.multinode import NodePlan, fingerprint_mismatch, node_plan, port_in_use, roll_call

CONFIGS = REPO / "accelerate_configs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- launch values ---------------------------------------------------------------------------


def test_the_flags_override_the_config_and_reach_accelerate():
    acc = read_yaml(CONFIGS / "multi_node_zero3.yaml")
    plan = node_plan(acc, "multi_node_zero3.yaml", machine_rank=1, main_process_ip="10.1.2.3", main_process_port=29555)
    assert plan == NodePlan(2, 16, 1, "10.1.2.3", 29555)
    assert plan.accelerate_flags() == [
        "--num_machines", "2", "--num_processes", "16", "--machine_rank", "1",
        "--main_process_port", "29555", "--main_process_ip", "10.1.2.3",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "flags", "message"),
    [
        ({"num_processes": 3}, {}, "cfg.yaml: num_processes=3 is not a multiple of num_machines=2;"),
        ({}, {"machine_rank": 2}, "--machine-rank 2 is out of range: cfg.yaml has num_machines=2, so ranks are 0 to 1"),
        ({"main_process_ip": None}, {}, "cfg.yaml runs on 2 machines: pass --main-process-ip"),
        ({}, {"main_process_port": 70000}, "--main-process-port 70000 is not a TCP port"),
        ({"deepspeed_config": {"zero_stage": 3}}, {}, "cfg.yaml: set deepspeed_config.deepspeed_multinode_launcher: standard"),
    ],
)
def test_launch_values_are_checked_with_one_sentence(changes, flags, message):
    acc = {**read_yaml(CONFIGS / "cpu_2node_zero3.yaml"), **changes}
    with pytest.raises(WorkbenchError) as err:
        node_plan(acc, "cfg.yaml", **flags)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_busy_port_on_the_main_node_is_refused_before_launch(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model)
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["launch", str(recipe), "--accelerate-config", str(CONFIGS / "cpu_2node_zero2.yaml"), "--machine-rank", "0"]
        assert main([*args, "--main-process-ip", "127.0.0.1", "--main-process-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: port {port} is already in use on this machine (the main node); pass another --main-process-port, "
        "the same on every machine, or stop the process holding it"
    )


# ---- roll call (real TCP store, two "machines" as threads) -----------------------------------


def _info(host: str, lr: float = 1e-3) -> dict:
    return {"host": host, "recipe": {"train": {"learning_rate": lr}, "seed": 3}, "code": {"workbench_source": "abc"}}


def _both(port: int, infos: list[dict], timeout: float = 20) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None, None]

    def one(rank: int) -> None:
        try:
            roll_call(NodePlan(2, 2, rank, "127.0.0.1", port), infos[rank], timeout)
        except BaseException as exc:  # noqa: BLE001
            errors[rank] = exc

    threads = [threading.Thread(target=one, args=(rank,)) for rank in (1, 0)]  # the worker may come first
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    return errors


def test_roll_call_passes_then_frees_the_port_for_torch():
    port = free_port()
    assert _both(port, [_info("a"), _info("b")]) == [None, None]
    assert not port_in_use(port)  # torch's rendezvous store binds it next


def test_roll_call_names_the_other_recipe_on_every_machine():
    errors = _both(free_port(), [_info("node-a"), _info("node-b", lr=2e-3)])
    expected = (
        "machine 1 (host node-b) does not run the same job as machine 0 (host node-a): recipe train.learning_rate: "
        "0.002 there vs 0.001 on machine 0; start every machine with the same recipe, --set overrides and workbench checkout"
    )
    assert [str(e) for e in errors] == [expected, expected]


def test_fingerprint_names_a_different_checkout():
    other = _info("b")
    other["code"] = {"workbench_source": "def"}
    assert 'code version workbench_source: "def" there vs "abc" on machine 0' in fingerprint_mismatch([_info("a"), other])
    assert fingerprint_mismatch([_info("a"), _info("b"), _info("c")]) is None  # hosts may differ


def test_a_machine_that_never_joins_is_named(tmp_path, tiny_model, capsys):
    port = free_port()
    recipe = write_recipe(tmp_path, tiny_model)
    args = ["launch", str(recipe), "--accelerate-config", str(CONFIGS / "cpu_2node_zero2.yaml"), "--main-process-ip", "127.0.0.1"]
    start = time.monotonic()
    assert main([*args, "--machine-rank", "0", "--main-process-port", str(port), "--join-timeout", "2"]) == 2
    assert time.monotonic() - start < 30
    assert capsys.readouterr().err.strip() == (
        f"error: machine rank(s) 1 of 2 never joined at 127.0.0.1:{port} within 2 s; start `workbench launch` with "
        "--machine-rank 1 (same recipe, config and --main-process-ip) on that node, or check that it can reach this address"
    )
    assert main([*args, "--machine-rank", "1", "--main-process-port", str(port), "--join-timeout", "2"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .startswith(f"error: machine 1: the main node did not answer at 127.0.0.1:{port} within 2 s;")
    )


# ---- real two-node runs ----------------------------------------------------------------------


def start_node(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """One simulated machine: `workbench launch` and every process it starts."""
    return subprocess.Popen(
        [sys.executable, "-m", "workbench", *args],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )


def kill_machine(proc: subprocess.Popen) -> None:
    """kill -9 of every process of the machine at once (torchrun puts its workers in sessions of their own)."""
    import psutil

    root = psutil.Process(proc.pid)
    tree = [root, *root.children(recursive=True)]
    # workers first: a worker whose launcher dies first gets SIGTERM from the kernel (its parent-death
    # signal) and could record `failed` before its own SIGKILL lands
    for p in reversed(tree):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()


def two_nodes(tmp: Path, recipe: Path, config: str, tag: str, extra=(), envs=(None, None), kill_after: Path | None = None):
    """Both machines' `workbench launch`; wait for both (or kill -9 both once `kill_after` exists)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        args = ["launch", str(recipe), "--accelerate-config", str(CONFIGS / config), "--machine-rank", str(rank)]
        args += ["--main-process-ip", "127.0.0.1", "--main-process-port", str(port), "--join-timeout", "120", *extra]
        procs.append(start_node(args, tmp / f"{tag}-node{rank}.log", envs[rank]))
    if kill_after is not None:
        deadline = time.time() + 600
        while not kill_after.exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.05)
        for proc in procs:
            kill_machine(proc)
        return
    for rank, proc in enumerate(procs):
        assert proc.wait(timeout=900) == 0, (tmp / f"{tag}-node{rank}.log").read_text()[-4000:]


def one_node(recipe: Path, config: str, env: dict | None = None) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "workbench", "launch", str(recipe), "--accelerate-config", str(CONFIGS / config)],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-4000:]


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in read_metrics(run) if "train/loss" in m}


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_two_nodes_equal_one_node_and_survive_kill_9_of_both(tmp_path, tiny_model, stage):
    """8 steps of 2 x 4 pairs: one node x 2 processes, uninterrupted, against two nodes x 1 process
    killed (kill -9 of every process on both machines) once the step-2 checkpoint is complete, and resumed on both.

    Under ZeRO-2 the reference log-probs are precomputed and each "machine" has its own WORKBENCH_CACHE,
    as node-local disks would: the run must fall back to a cache inside the shared run directory.
    """
    envs: tuple = (None, None)
    if stage == 2:
        envs = ({"WORKBENCH_CACHE": str(tmp_path / "cache-node0")}, {"WORKBENCH_CACHE": str(tmp_path / "cache-node1")})
    for name in ("single", "multi"):
        path = write_recipe(tmp_path, tiny_model, name=name, train__per_device_train_batch_size=4, train__max_steps=8)
        with edit_yaml(path) as recipe:
            recipe["reference"] = {"precompute_log_probs": stage == 2}
    single, multi = tmp_path / "single.yaml", tmp_path / "multi.yaml"

    one_node(single, f"cpu_zero{stage}.yaml", env={"WORKBENCH_CACHE": str(tmp_path / "cache-single")})
    run = tmp_path / "multi"
    two_nodes(
        tmp_path,
        multi,
        f"cpu_2node_zero{stage}.yaml",
        "killed",
        envs=envs,
        kill_after=run / "checkpoints" / "checkpoint-2" / ".complete",
    )
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # killed, not finished
    resume_from = newest_complete(run / "checkpoints")
    assert 2 <= step_of(resume_from) < 8  # the kill lands somewhere in steps 3-8, depending on the machine's load
    shards = sorted(p.name for p in (resume_from / f"global_step{step_of(resume_from)}").glob("*optim_states.pt"))
    assert [s.split("_mp_")[0] for s in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"]  # every rank wrote its own shard

    two_nodes(tmp_path, multi, f"cpu_2node_zero{stage}.yaml", "resumed", extra=["--resume"], envs=envs)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 2
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == list(range(1, 9))  # rank 0 alone, cut back on resume
    expected, got = losses(tmp_path / "single"), losses(run)
    assert got == pytest.approx(expected, abs=1e-5) and got[8] != pytest.approx(got[1], abs=1e-4)
    a, b = weights(tmp_path / "single"), weights(run)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1  # one W&B run, continued on resume, written by rank 0 only
    if stage == 2:
        assert any((run / ".cache" / "dpo-pairs").iterdir())
        for node_cache in (tmp_path / "cache-node0", tmp_path / "cache-node1"):  # no dataset cached on a node's own disk
            assert not (node_cache / "dpo-pairs").exists() or not any((node_cache / "dpo-pairs").iterdir())
        assert "is not shared by all machines; this run caches in" in (tmp_path / "killed-node0.log").read_text()


@pytest.mark.slow
@pytest.mark.distributed
def test_plain_accelerate_launch_with_another_recipe_on_one_node_stops_both(tmp_path, tiny_model):
    """Without `workbench launch` (no roll call) the processes compare fingerprints once the group is up."""
    config = read_yaml(CONFIGS / "cpu_ddp.yaml")
    config.update(num_machines=2, num_processes=2, main_process_port=free_port())
    write_yaml(tmp_path / "ddp2.yaml", config)
    recipe = write_recipe(tmp_path, tiny_model)
    procs = []
    for rank, lr in ((0, "0.001"), (1, "0.002")):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "ddp2.yaml")]
        cmd += ["--machine_rank", str(rank), "-m", "workbench", "train", str(recipe), "--set", f"train.learning_rate={lr}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] != [0, 0]
    for out in outputs:
        assert "error: process 1 (host " in out, out[-3000:]
        assert "recipe train.learning_rate: 0.002 there vs 0.001 on process 0;" in out
    assert not (tmp_path / "run" / "manifest.json").exists()  # stopped before anything was written


@pytest.mark.slow
@pytest.mark.distributed
def test_ppo_on_two_nodes_equals_one_node(tmp_path, tiny_model):
    """3 PPO updates (rollout, reward, GAE, clipped losses) under ZeRO-2: 2 nodes x 1 process = 1 node x 2."""
    from test_ppo import ppo_recipe, scores

    common = {"max_steps": 3, "save_steps": 3, "per_device_train_batch_size": 8}
    one_node(ppo_recipe(tmp_path, tiny_model, "single", **common), "cpu_zero2.yaml")
    two_nodes(tmp_path, ppo_recipe(tmp_path, tiny_model, "multi", **common), "cpu_2node_zero2.yaml", "ppo")
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert json.loads((multi / "manifest.json").read_text())["world_size"] == 2
    assert len(scores(multi)) == 3 and scores(multi) == pytest.approx(scores(single), abs=1e-5)
    kls = [[m["train/objective/kl"] for m in read_metrics(run)] for run in (single, multi)]
    assert kls[1] == pytest.approx(kls[0], abs=1e-5)
    a, b = weights(single), weights(multi)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
