"""Shared fixtures: offline environment, a tiny model built once, the real data in ../shared/data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# The environment wins over recipes for W&B (as with the HF Trainer): clear it so each test's recipe
# decides, and with no API key `mode: auto` means offline.
for _var in ("WANDB_MODE", "WANDB_DISABLED", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
    os.environ.pop(_var, None)
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISABLE_TQDM", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_TEST = SHARED_DATA / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
LLMBAR = SHARED_DATA / "llmbar"


def need_shared() -> None:
    if not HH_TEST.is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (shared/ sits beside the checkout in CI)")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbench.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_model: Path):
    from workbench.config import ModelConfig
    from workbench.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(tiny_model)))


def run_workbench(args: list[str], cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """Run the real CLI in a subprocess (as users and accelerate do)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def kill_when(args: list[str], ready, timeout: float = 300) -> None:  # noqa: ANN001 - a path or a predicate
    """Start `workbench ARGS`, SIGKILL it as soon as `ready` (a path that must exist, or a predicate) holds."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    check = ready if callable(ready) else ready.exists
    while time.time() < deadline and not check() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def run_ok(args: list[str], **kwargs):
    """Run the CLI and fail the test with the end of its stderr unless it exits 0."""
    res = run_workbench(args, **kwargs)
    assert res.returncode == 0, res.stderr[-4000:]
    return res
