"""The reliability battery: kill -9 at the moments that matter, two writers, orphans, NaN, secrets,
resume rules, config drift, a full disk, W&B environment precedence and DeepSpeed's build lock.

Every test here reproduced its fault before the fix (see the README's Reliability section).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, edit_yaml, quiet_recipe, run_ok, run_workbench, write_recipe, write_yaml
from test_train import read_metrics

from workbench.cli import main

CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


def marked(run: Path) -> list[Path]:
    return sorted((p for p in (run / "checkpoints").glob("checkpoint-*") if (p / ".complete").is_file()), key=step)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run directory (but the lock) by content: 'nothing changed' is checked byte for byte."""
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


# -- 1, 5, 6: atomic rotation, resume rules, config drift ------------------------------------------

# Loaded by the child Python at startup (sitecustomize): when anything deletes a checkpoint directory
# (rotation), one file goes (config.json, as rmtree would, in no particular order) and the process
# SIGKILLs itself: a kill -9 in the middle of rotation, every time (polling from outside lands ~20 ms
# late, after the window).
KILL_AT_ROTATION = """
import os, shutil, signal
_rmtree = shutil.rmtree
def rmtree(path, *args, **kwargs):
    if os.path.basename(str(path)).startswith("checkpoint-"):
        os.unlink(os.path.join(str(path), "config.json"))
        os.kill(os.getpid(), signal.SIGKILL)
    return _rmtree(path, *args, **kwargs)
shutil.rmtree = rmtree
"""


def kill_at_rotation(args: list[str], tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_AT_ROTATION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=REPO, env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.slow
def test_kill_during_rotation_then_resume_rules(tmp_path, tiny_model, capsys):
    """kill -9 the moment the Trainer starts deleting checkpoint-2 (save_total_limit=1): checkpoint-4 must be
    marked and whole. Then: drift is refused naming the keys, an allowed change is recorded, a finished run is
    left alone, a fresh run does not delete checkpoints, and --resume with nothing to resume fails."""
    path = quiet_recipe(tmp_path, tiny_model, "rot", max_steps=6, save_steps=2, save_total_limit=1)
    run = tmp_path / "rot"
    ckpt4 = run / "checkpoints" / "checkpoint-4"
    kill_at_rotation(["train", str(path)], tmp_path)
    assert ckpt4.is_dir(), "the run was not killed at the rotation after checkpoint-4"
    found = marked(run)
    assert found, "no complete checkpoint survived the kill"
    newest = found[-1]
    assert step(newest) == 4
    missing = [f for f in CHECKPOINT_FILES if not (newest / f).is_file()]
    assert missing == [], f"{newest.name} is marked complete but lacks {missing}"

    # 6: a changed learning rate and batch size are refused, naming both keys; nothing is touched
    before = snapshot(run)
    code = main(
        ["train", str(path), "--resume", "--set", "train.learning_rate=0.5", "--set", "train.per_device_train_batch_size=4"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "train.learning_rate" in err and "train.per_device_train_batch_size" in err and "--allow-changes" in err
    assert snapshot(run) == before

    # 6: an explicitly allowed change is applied and recorded
    run_ok(["train", str(path), "--resume", "--set", "train.max_steps=8", "--allow-changes", "train.max_steps"])
    record = manifest(run)
    assert record["status"] == "completed" and record["resumed_from_step"] == 4
    assert record["allowed_changes"] == {"train.max_steps": [6, 8]}
    assert [m["step"] for m in read_metrics(run) if "train/loss" in m] == list(range(1, 9))
    assert [step(p) for p in marked(run)] == [8]  # rotation kept one, the newest

    # 5: resuming a finished run says so and changes nothing (not even one more step)
    before = snapshot(run)
    assert main(["train", str(path), "--resume", "--set", "train.max_steps=8", "--allow-changes", "train.max_steps"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert snapshot(run) == before

    # 5: a fresh run into a directory holding checkpoints is refused unless --overwrite
    code = main(["train", str(path)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert snapshot(run) == before

    # 5: --resume with nothing to resume fails with a sentence
    empty = quiet_recipe(tmp_path, tiny_model, "empty", max_steps=2)
    code = main(["train", str(empty), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and "Traceback" not in err


def test_marked_checkpoint_with_a_missing_file_is_not_resumed(tmp_path):
    """Contents are verified, not the marker alone: a marked checkpoint that lost a file is skipped."""
    from workbench.checkpoint import mark_complete, newest_complete, problems, rotate

    root = tmp_path / "checkpoints"
    for n in (2, 4):
        (root / f"checkpoint-{n}").mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            (root / f"checkpoint-{n}" / name).write_bytes(b"x" * n)
        mark_complete(root / f"checkpoint-{n}")
    (root / "checkpoint-4" / "optimizer.pt").unlink()
    assert problems(root / "checkpoint-4") == ["checkpoint-4/optimizer.pt is missing"]
    (root / "checkpoint-2" / "scheduler.pt").write_bytes(b"xxx")
    assert problems(root / "checkpoint-2") == ["checkpoint-2/scheduler.pt has 3 bytes, 2 when it was saved"]
    assert newest_complete(root) is None
    (root / "checkpoint-2" / "scheduler.pt").write_bytes(b"xx")
    assert newest_complete(root) == root / "checkpoint-2"
    (root / "checkpoint-6").mkdir()  # half-written: never rotated away in favour of, never resumed
    assert rotate(root, 1) == [] and sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    mark_complete(root / "checkpoint-6")  # now whole: the broken checkpoint-4 goes, checkpoint-2 stays as the best
    assert rotate(root, 1, best=str(root / "checkpoint-2")) == [root / "checkpoint-4"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-6"]


def test_compare_resumes_only_a_stage_with_a_checkpoint(tmp_path, monkeypatch):
    """A comparison stage killed before its first checkpoint is started over, not `--resume`d (which would fail)."""
    from workbench.comparison import run as compare

    commands = []
    monkeypatch.setenv("WORKBENCH_FRESH_STAGE_PROCESSES", "1")  # the command as a fresh process gets it (forked: the same argv)

    class Finished:  # a stage process that ends at once
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(compare.subprocess, "Popen", Finished)

    class Stage:
        accelerate_config = None

    class StageRun:
        def __init__(self, run_dir):
            self.stage, self.recipe, self.run_dir, self.fingerprint = Stage(), {"method": "dpo"}, run_dir, "f"
            self.status = self.error = self.seconds = None

    for name, has_checkpoint in (("early", False), ("late", True)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "stage.json").write_text(json.dumps({"fingerprint": "f", "status": "running"}))
        if has_checkpoint:
            from workbench.checkpoint import mark_complete

            (run_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
            mark_complete(run_dir / "checkpoints" / "checkpoint-2")
        compare.run_stage(StageRun(run_dir))
    assert "--resume" not in commands[0] and "--resume" in commands[1]


# -- 2: secrets ----------------------------------------------------------------------------------


def test_secret_on_the_command_line_is_refused_without_echoing_it(tmp_path, tiny_model, capsys):
    path = quiet_recipe(tmp_path, tiny_model, "sec", max_steps=1)
    secret = "hf_cmdline_secret_value_123456"
    for verb in (["train", str(path)], ["launch", str(path), "--accelerate-config", "accelerate_configs/cpu_ddp.yaml"]):
        code = main([*verb, "--set", f"train.hub_token={secret}"])
        out = capsys.readouterr()
        assert code == 2 and "environment" in out.err
        assert secret not in out.err + out.out
    assert not (tmp_path / "sec").exists()


def test_argv_redaction():
    from workbench.secrets import REDACTED, redact_argv

    argv = ["train", "r.yaml", "--set", "train.hub_token=abc", "--set", "train.learning_rate=1", "--api-key", "xyz"]
    assert redact_argv(argv) == [
        "train",
        "r.yaml",
        "--set",
        f"train.hub_token={REDACTED}",
        "--set",
        "train.learning_rate=1",
        "--api-key",
        REDACTED,
    ]


# -- 3: non-finite losses ------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_nothing_non_finite_is_saved(tmp_path, tiny_model):
    from safetensors.torch import load_file

    path = quiet_recipe(tmp_path, tiny_model, "nan", learning_rate=1e30, max_steps=4, save_steps=1)
    with edit_yaml(path) as data:
        data["keep_checkpoints"] = 0  # applies only to a completed run: a failed one keeps what it can resume from
    res = run_workbench(["train", str(path)])
    run = tmp_path / "nan"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "step 2" in res.stderr and "not finite" in res.stderr
    record = manifest(run)
    assert record["status"] == "failed" and "step 2" in record["error"]
    assert not (run / "model").exists() and "checkpoints_pruned" not in record
    saved = sorted((run / "checkpoints").glob("checkpoint-*"), key=step)
    assert [step(p) for p in saved] == [1]  # the last finite state, and nothing after
    for ckpt in saved:
        weights = load_file(ckpt / "model.safetensors")
        assert all(bool(t.isfinite().all()) for t in weights.values())
    losses = [m["train/loss"] for m in read_metrics(run) if "train/loss" in m]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # step 1 is normal


def test_export_refuses_non_finite_weights_and_removes_a_half_written_model(tmp_path):
    import torch

    from workbench.checkpoint import NonFiniteError, assert_finite_weights
    from workbench.methods.hf import removed_on_failure

    model = torch.nn.Linear(2, 2)
    assert_finite_weights(model, "model/", 3)  # finite: no error
    with torch.no_grad():
        model.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"at step 3: the model weights hold NaN/inf \(weight\), so model/ was not written"):
        assert_finite_weights(model, "model/", 3)
    out = tmp_path / "model"
    with pytest.raises(OSError), removed_on_failure(out, is_main=True):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("write failed")
    assert not out.exists()


@pytest.mark.parametrize("margin", [float("nan"), "inf", "-Infinity"])
def test_non_finite_margin_is_an_invalid_row(margin):
    from workbench.config import SourceConfig
    from workbench.data.sources import to_preference

    row = {"prompt": "p", "chosen": "a", "rejected": "b", "margin": margin}
    assert to_preference(row, "preference", SourceConfig(path="x.jsonl")) == f"field 'margin' is not finite (got {margin!r})"
    assert to_preference({**row, "margin": "0.5"}, "preference", SourceConfig(path="x.jsonl"))["margin"] == 0.5


# -- 4: one writer, no orphans -------------------------------------------------------------------


HOLD_LOCK = "import sys, time; from workbench.rundir import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"


def test_run_directory_lock_refuses_a_live_writer_and_takes_over_a_dead_ones(tmp_path, caplog):
    from workbench.errors import WorkbenchError
    from workbench.rundir import RunLock

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkbenchError, match=rf"being written by another run \(pid {holder.pid} on host "):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # the killed holder's lock is stale
    assert lock.took_over["pid"] == holder.pid
    assert f"taking over a stale lock on {tmp_path}: pid {holder.pid}" in caplog.text
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def rank_pids(marker: str, exclude: int) -> list[int]:
    """Live `workbench train` processes whose command line names `marker` (the ranks of one run)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != exclude:
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                status = (proc / "stat").read_text().split()[2]
            except OSError:
                continue
            if marker.encode() in cmd and b"train" in cmd and b"accelerate.commands.launch" not in cmd and status != "Z":
                out.append(int(proc.name))
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_killed_launcher_takes_its_ranks_along_and_a_second_writer_is_refused(tmp_path, tiny_model):
    path = quiet_recipe(tmp_path, tiny_model, "orph", max_steps=10_000, save_steps=2)
    run = tmp_path / "orph"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "workbench", "launch", str(path), "--accelerate-config", "accelerate_configs/cpu_ddp.yaml"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ranks: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "checkpoints" / "checkpoint-2" / ".complete").exists():
            time.sleep(0.2)
        assert (run / "checkpoints" / "checkpoint-2" / ".complete").exists()
        ranks = rank_pids(str(path), exclude=launcher.pid)
        assert len(ranks) == 2, ranks

        faults = []
        # a second writer on the live run's directory is refused and deletes nothing
        second = run_workbench(["train", str(path), "--overwrite"], timeout=120)
        if second.returncode != 2 or "being written by another run" not in second.stderr:
            faults.append(f"second writer not refused: exit {second.returncode}, {second.stderr[-300:]}")
        if not (run / "checkpoints" / "checkpoint-2" / ".complete").exists():
            faults.append("the second writer deleted the live run's checkpoint")

        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 20
        while time.time() < deadline and [p for p in ranks if p in rank_pids(str(path), -1)]:
            time.sleep(0.2)
        alive = [p for p in ranks if p in rank_pids(str(path), -1)]
        if alive:
            faults.append(f"ranks {alive} kept training 20 s after their launcher was killed")
        record = manifest(run)
        if record["status"] != "failed" or "SIGTERM" not in record.get("error", ""):
            faults.append(f"manifest left {record['status']!r}")
        assert faults == []
    finally:
        for pid in [launcher.pid, *ranks]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# -- 8: disk full --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only): room for one checkpoint of the tiny model, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a size-limited filesystem (the injected-ENOSPC test covers the rest)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_keeps_the_last_checkpoint_and_fails_with_one_message(tmp_path, tiny_model, small_disk):
    path = quiet_recipe(tmp_path, tiny_model, "full", max_steps=8, save_steps=2)
    with edit_yaml(path) as data:
        data["output_dir"] = str(small_disk / "run")
    res = run_workbench(["train", str(path)])
    run = small_disk / "run"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is full" in errors[0] and "checkpoint-2" in errors[0], res.stderr[-3000:]
    record = manifest(run)
    assert record["status"] == "failed" and "is full" in record["error"]
    kept = marked(run)
    assert [step(p) for p in kept] == [2]
    from workbench.checkpoint import problems

    assert problems(kept[0]) == []
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]  # the half-written one is gone


def test_enospc_at_the_write_layer_fails_the_run_with_one_sentence(tmp_path, tiny_model, monkeypatch, capsys):
    """Without root: the same failure injected where checkpoints are written (torch.save raises ENOSPC)."""
    import errno

    import torch

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        calls["n"] += 1
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    path = quiet_recipe(tmp_path, tiny_model, "enospc", max_steps=6, save_steps=2)
    code = main(["train", str(path)])
    err = capsys.readouterr().err
    run = tmp_path / "enospc"
    assert code == 2 and err.count("error:") == 1 and "is full" in err and "checkpoint-2, is intact" in err
    assert manifest(run)["status"] == "failed"
    assert [step(p) for p in marked(run)] == [2] and not (run / "checkpoints" / "checkpoint-4").exists()


# Loaded by every child Python (sitecustomize); only in the rank-1 process (RANK=1, set by the launcher) does
# torch.save raise ENOSPC, and only for that rank's own file of checkpoint-4 (its RNG state).
ENOSPC_ON_RANK_1 = """
import errno, os
if os.environ.get("RANK") == "1":
    import torch
    _save = torch.save
    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f) and os.path.basename(str(f)).startswith("rng_state"):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return _save(obj, f, *args, **kwargs)
    torch.save = save
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_enospc_on_rank_1_fails_the_run_with_the_disk_full_cause(tmp_path, tiny_model):
    """A full disk seen by a rank other than 0: rank 0 is stopped by the launcher (SIGTERM), yet the run says
    once that the disk is full, keeps checkpoint-2 whole, and the manifest records the full disk as the cause."""
    from workbench.checkpoint import problems

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(ENOSPC_ON_RANK_1)
    path = quiet_recipe(tmp_path, tiny_model, "enospc2", max_steps=6, save_steps=2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "workbench", "launch", str(path), "--accelerate-config", "accelerate_configs/cpu_ddp.yaml"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    run = tmp_path / "enospc2"
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert out.count("is full (no space left on device)") == 1, out[-3000:]
    assert "checkpoint-2, is intact" in out and "stopped because rank 1 failed" in out
    assert "Traceback" not in out.split("is full (no space left on device)")[0][-2000:]
    kept = marked(run)
    assert [step(p) for p in kept] == [2] and problems(kept[0]) == []
    assert not (run / "checkpoints" / "checkpoint-4").exists()
    record = manifest(run)
    assert record["status"] == "failed" and "is full" in record["error"], record.get("error")


# -- 9: W&B environment precedence ---------------------------------------------------------------


def test_wandb_environment_wins_over_the_recipe_and_the_manifest_says_so(tmp_path, monkeypatch):
    from workbench.config import recipe_from_dict
    from workbench.tracking import Tracker

    base = {
        "method": "dpo",
        "model": {"name_or_path": "m"},
        "data": {"sources": [{"path": "x.jsonl"}]},
        "tracking": {"mode": "offline", "project": "p"},
    }
    for var in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)

    monkeypatch.setenv("WANDB_MODE", "disabled")  # the recipe says offline
    tracker = Tracker(recipe_from_dict({**base, "output_dir": str(tmp_path / "a")}), tmp_path / "a")
    tracker.start()
    tracker.finish("completed")
    assert not (tmp_path / "a" / "wandb").exists()
    assert manifest(tmp_path / "a")["wandb"] == {"mode": "disabled", "mode_source": "env WANDB_MODE"}

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    tracker = Tracker(recipe_from_dict({**base, "output_dir": str(tmp_path / "b")}), tmp_path / "b")
    tracker.start()
    tracker.finish("completed")
    assert list((tmp_path / "wandb-home").glob("wandb/offline-run-*"))
    assert not (tmp_path / "b" / "wandb").exists()
    record = manifest(tmp_path / "b")["wandb"]
    assert record["project"] == "from-env" and record["project_source"] == "env WANDB_PROJECT"
    assert record["dir_source"] == "env WANDB_DIR" and record["dir"].startswith(str(tmp_path / "wandb-home"))


def test_wandb_mode_sources(monkeypatch):
    from workbench.tracking import wandb_mode_source

    for var in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert wandb_mode_source("offline") == ("offline", "recipe tracking.mode")
    assert wandb_mode_source("auto") == ("offline", "auto: no WANDB_API_KEY")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert wandb_mode_source("online") == ("disabled", "env WANDB_DISABLED")


# -- 10: DeepSpeed's extension build lock --------------------------------------------------------


def test_stale_deepspeed_build_lock_fails_with_the_fix_instead_of_hanging(tmp_path, tiny_model):
    ext = tmp_path / "ext"
    lock = ext / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")  # what a first launch killed mid-build leaves behind
    path = quiet_recipe(tmp_path, tiny_model, "ds", max_steps=1)
    env = {
        "TORCH_EXTENSIONS_DIR": str(ext),
        "ACCELERATE_USE_DEEPSPEED": "true",
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29577",
        "CUDA_VISIBLE_DEVICES": "",
    }
    try:
        res = run_workbench(["train", str(path)], env=env, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the launch waited on the stale lock (no output) instead of failing")
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{lock} is a stale build lock" in res.stderr and f"rm {lock}" in res.stderr
    assert "Traceback" not in res.stderr


EXTENSION_DIR_PROBE = """
import sys
from workbench.cli import main
from workbench.launch import extension_build_dir
main(["validate", "no-such-recipe.yaml"])  # any command: the CLI's start-up is what is tested
print("DIR", extension_build_dir("deepspeed_shm_comm"))
"""


def test_deepspeed_extensions_are_built_per_environment_and_a_users_own_dir_is_kept(tmp_path):
    """Two virtual environments shared ~/.cache/torch_extensions/py311_cpu and rebuilt DeepSpeed's shm extension
    for each other, silently once a .so existed. Each environment (its prefix, torch and DeepSpeed versions) now
    builds in a directory of its own; a TORCH_EXTENSIONS_DIR the user set is used as it is."""
    import site
    import venv

    other = tmp_path / "other-venv"
    venv.EnvBuilder(with_pip=False).create(other)
    (site_dir,) = (other / "lib").glob("python3*/site-packages")
    (site_dir / "main-env.pth").write_text("\n".join([*site.getsitepackages(), str(REPO)]) + "\n")
    pythons = {"main": sys.executable, "other": str(other / "bin" / "python")}

    def build_dir(python: str, **env: str) -> str:
        full = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
        full.update(PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(tmp_path / "cache"), **env)  # torch creates the directory
        res = subprocess.run([python, "-c", EXTENSION_DIR_PROBE], cwd=tmp_path, capture_output=True, text=True, env=full)
        lines = [line for line in res.stdout.splitlines() if line.startswith("DIR ")]
        assert lines, res.stderr[-3000:]
        return lines[0][4:]

    main, again, theirs = build_dir(pythons["main"]), build_dir(pythons["main"]), build_dir(pythons["other"])
    assert main == again  # the same environment finds its build again
    assert main != theirs and Path(main).parent.parent == Path(theirs).parent.parent  # one each, side by side
    assert Path(main).name == Path(theirs).name == "deepspeed_shm_comm"
    assert Path(main).parent.parent == tmp_path / "cache" / "torch_extensions"  # under torch's own root
    for python in pythons.values():
        assert build_dir(python, TORCH_EXTENSIONS_DIR=str(tmp_path / "mine")) == str(tmp_path / "mine" / "deepspeed_shm_comm")


def test_the_extensions_directory_is_keyed_by_prefix_python_torch_and_deepspeed(tmp_path):
    from workbench.launch import environment_extensions_dir

    base = {"prefix": "/envs/a", "python": "3.11.7", "torch": "2.13.0+cpu", "deepspeed": "0.19.8"}
    first = environment_extensions_dir(tmp_path, **base)
    assert first.parent == tmp_path and first.name.startswith("a-py311-")
    assert environment_extensions_dir(tmp_path, **base) == first
    for key, value in [("prefix", "/envs/b"), ("python", "3.12.1"), ("torch", "2.13.0+cu128"), ("deepspeed", "0.19.9")]:
        assert environment_extensions_dir(tmp_path, **{**base, key: value}) != first, key


def test_build_lock_owner_is_found_while_it_builds(tmp_path):
    from workbench.launch import lock_owners

    lock = tmp_path / "lock"
    code = f"import os, time; fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL); print('ok', flush=True); time.sleep(60)"
    builder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "ok"
        assert lock_owners(lock) == [builder.pid]
    finally:
        builder.kill()
        builder.wait()
    assert lock_owners(lock) == []


# -- disk hygiene: checkpoints a completed run no longer needs -----------------------------------------


def test_prune_after_export_keeps_the_newest_complete_and_counts_the_bytes(tmp_path):
    from workbench.checkpoint import mark_complete, prune_after_export

    ckpts = tmp_path / "checkpoints"
    sizes = {2: 100, 4: 250, 6: 40, 8: 7}
    for n, size in sizes.items():
        d = ckpts / f"checkpoint-{n}"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "weights.bin").write_bytes(b"x" * size)
        if n != 8:  # checkpoint-8 was cut short: never complete, never kept
            mark_complete(d)
    marker_bytes = {n: sum(f.stat().st_size for f in (ckpts / f"checkpoint-{n}").rglob("*") if f.is_file()) for n in sizes}
    out = prune_after_export(ckpts, keep=1)
    assert [p.name for p in ckpts.iterdir()] == ["checkpoint-6"]
    assert out == {"removed": 3, "kept": 1, "freed_bytes": marker_bytes[2] + marker_bytes[4] + marker_bytes[8]}
    assert marker_bytes[8] == 7 and marker_bytes[2] > 100  # the completion marker's bytes count too
    assert prune_after_export(ckpts, keep=0) == {"removed": 1, "kept": 0, "freed_bytes": marker_bytes[6]}
    assert list(ckpts.iterdir()) == []


@pytest.mark.parametrize("keep", [1, 0])
def test_keep_checkpoints_prunes_only_after_a_completed_export(tmp_path, tiny_model, keep):
    path = quiet_recipe(tmp_path, tiny_model, f"keep{keep}", max_steps=4, save_steps=2)
    with edit_yaml(path) as data:
        data["keep_checkpoints"] = keep
    run_ok(["train", str(path)])
    run = tmp_path / f"keep{keep}"
    assert [p.name for p in (run / "checkpoints").glob("checkpoint-*")] == (["checkpoint-4"] if keep else [])
    record = manifest(run)
    assert record["status"] == "completed" and record["export_check"]["ok"]
    pruned = record["checkpoints_pruned"]
    assert pruned["removed"] == 2 - keep and pruned["kept"] == keep and pruned["freed_bytes"] > 1000
    assert (run / "model" / "model.safetensors").is_file()
    # A completed run is still recognised as finished (nothing is retrained or changed).
    before = snapshot(run)
    res = run_ok(["train", str(path), "--resume"])
    assert "already finished" in res.stderr and snapshot(run) == before


def test_a_negative_keep_checkpoints_is_refused():
    from workbench.config import recipe_from_dict
    from workbench.errors import RecipeError

    with pytest.raises(RecipeError) as err:
        recipe_from_dict({"model": {"name_or_path": "m"}, "data": {"sources": [{"path": "d.jsonl"}]}, "keep_checkpoints": -1})
    assert err.value.problems == [
        "`keep_checkpoints` must be 0 or more (the newest N kept after the run completes; unset keeps all), got -1"
    ]


# -- a W&B service inherited from a parent -----------------------------------------------------------

# A parent process that used W&B and lives on (a comparison that logged an evaluation, a notebook, a test
# runner): wandb puts its service's address in WANDB_SERVICE, which every child process inherits.
WANDB_SERVICE_HOST = """
import os, sys, time, wandb
wandb.init(mode="offline", dir=sys.argv[1], project="host").finish()
print(os.environ["WANDB_SERVICE"], flush=True)
time.sleep(900)
"""


@pytest.mark.slow
def test_a_run_killed_under_a_parents_wandb_service_resumes(tmp_path, tiny_model):
    """kill -9 of a training run whose W&B service was inherited from a living parent: the service outlived the
    run and kept its run id "in use", so `--resume` failed ('run ID ... is in use') for as long as the parent
    lived. Each run now starts a W&B service of its own, which dies with it."""
    (tmp_path / "host").mkdir()
    host = subprocess.Popen([sys.executable, "-c", WANDB_SERVICE_HOST, str(tmp_path / "host")], stdout=subprocess.PIPE, text=True)
    try:
        token = host.stdout.readline().strip()
        assert token, "the host process did not start a W&B service"
        env = {**os.environ, "WANDB_SERVICE": token}
        env.pop("WANDB_MODE", None)
        path = write_recipe(tmp_path, tiny_model, name="shared", train__max_steps=6)
        run = tmp_path / "shared"
        proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", str(path)], cwd=REPO, env=env)
        deadline = time.time() + 300
        while time.time() < deadline and not (run / "checkpoints" / "checkpoint-2" / ".complete").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert manifest(run)["status"] == "running"
        first_id = manifest(run)["wandb"]["id"]
        res = run_workbench(["train", str(path), "--resume"], env={"WANDB_SERVICE": token})
        assert res.returncode == 0, res.stderr[-3000:]
        assert "is in use" not in res.stderr
        record = manifest(run)
        assert record["status"] == "completed" and record["resumed_from_step"] >= 2
        assert record["wandb"]["id"] == first_id  # the same W&B run, continued
    finally:
        host.kill()
        host.wait()


# -- Ctrl-C ------------------------------------------------------------------------------------------


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} existed"
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_records_interrupted_with_the_last_checkpoint_and_prints_the_command_that_continues(tmp_path, tiny_model):
    """A real SIGINT (what Ctrl-C sends) to a training run once checkpoint-4 is complete: the manifest said
    `failed: KeyboardInterrupt:`; it says `interrupted`, names the last complete checkpoint, and the printed
    command continues the run from it."""
    path = quiet_recipe(tmp_path, tiny_model, "ctrl-c", max_steps=40, save_steps=2)
    run = tmp_path / "ctrl-c"
    args = ["train", str(path), "--set", "train.logging_steps=5"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(run / "checkpoints" / "checkpoint-4" / ".complete", proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    record = manifest(run)
    assert record["status"] == "interrupted" and "error" not in record
    last = marked(run)[-1]
    assert record["last_checkpoint"] == str(last) and 4 <= step(last) < 40
    command = f"workbench train {path} --set train.logging_steps=5 --resume"
    assert record["resume_command"] == command
    assert out.rstrip().splitlines()[-1] == (
        f"interrupted: {run} keeps its last complete checkpoint, {last.name}; continue with: {command}"
    )
    assert "Traceback" not in out and "KeyboardInterrupt" not in out

    res = run_workbench(shlex.split(command)[1:])  # the printed command, as the user would paste it
    assert res.returncode == 0, res.stderr[-3000:]
    record = manifest(run)
    assert record["status"] == "completed" and record["resumed_from_step"] == step(last)


def test_the_command_that_continues_an_interrupted_one():
    from workbench.rundir import continue_command

    assert continue_command(["train", "r.yaml", "--set", "a=1", "--overwrite"]) == "workbench train r.yaml --set a=1 --resume"
    assert continue_command(["train", "r.yaml", "--resume"]) == "workbench train r.yaml --resume"
    assert (
        continue_command(["launch", "my r.yaml", "--accelerate-config", "c.yaml", "--allow-changes", "train.max_steps"])
        == "workbench launch 'my r.yaml' --accelerate-config c.yaml --allow-changes train.max_steps --resume"
    )
    assert continue_command(["compare", "c.yaml", "--set", "stages.dpo.train.beta=0.3"]) == (
        "workbench compare c.yaml --set stages.dpo.train.beta=0.3"  # compare resumes by itself
    )
    assert continue_command(["train", "r.yaml", "--set", "train.hub_token=abc"]) == (
        "workbench train r.yaml --set 'train.hub_token=***REDACTED***' --resume"
    )
    assert continue_command(["train", "r.yaml"], launcher="accelerate launch --config_file c.yaml -m workbench") == (
        "accelerate launch --config_file c.yaml -m workbench train r.yaml --resume"
    )


@pytest.mark.slow
def test_ctrl_c_in_a_comparison_says_which_stage_stopped_and_the_rerun_continues_it(tmp_path, tiny_model):
    """Ctrl-C in a terminal signals the whole process group: `workbench compare` and the stage process it forked.
    The stage records `interrupted`; compare says which stage stopped, what it kept, and the command that
    continues; that command resumes the stage from its checkpoint."""
    comparison = {
        "name": "ctrl-c",
        "output_dir": str(tmp_path / "cmp"),
        "seeds": [1],
        "base": {
            "model": {"name_or_path": str(tiny_model), "dtype": "float32"},
            "data": {"sources": [{"synthetic": {"num_pairs": 96, "seed": 0}}], "eval_split": 0.25, "max_length": 48},
            "tracking": {"mode": "disabled"},
        },
        "stages": {
            "sft": {
                "method": "sft",
                "evaluate": False,
                "train": {"per_device_train_batch_size": 8, "max_steps": 40, "save_steps": 4},
            }
        },
    }
    path = tmp_path / "cmp.yaml"
    write_yaml(path, comparison)
    stage = tmp_path / "cmp" / "seed-1" / "sft"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "compare", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
    )
    try:
        wait_for(stage / "checkpoints" / "checkpoint-4" / ".complete", proc)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-3000:]
    record = manifest(stage)
    last = marked(stage)[-1]
    assert record["status"] == "interrupted" and record["last_checkpoint"] == str(last)
    lines = out.rstrip().splitlines()
    assert lines[-2].endswith(f"sft: interrupted (its last complete checkpoint, {last.name}, is kept)")
    assert lines[-1].startswith(f"interrupted; continue with: workbench compare {path} (")
    assert "Traceback" not in out

    res = run_workbench(["compare", str(path)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert manifest(stage)["status"] == "completed" and manifest(stage)["resumed_from_step"] == step(last)
