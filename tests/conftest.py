"""Shared fixtures: offline environment, a tiny model built once, the real data in ../shared/data, recipe files."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

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


@pytest.fixture(scope="session")
def rs_model(tmp_path_factory, tiny_model):
    """The tiny model with its EOS row of the LM head scaled up, so that, within 12 new tokens, some prompts get
    several finished completions, some one and some none (the untrained model almost never ends): rejection
    sampling's and the pairs step's tests."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("rs-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= 30.0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------------------
# Recipe files: every test writes and edits its recipes (and other YAML configs) through these


def write_yaml(path: Path, data: dict[str, Any], sort_keys: bool = True) -> Path:
    """`data` (a run or comparison recipe, an accelerate config) as a YAML file at `path`; returns `path`.
    A comparison keeps `sort_keys=False`: its stages run in the order written."""
    path.write_text(yaml.safe_dump(data, sort_keys=sort_keys))
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def shipped_recipe(name: str) -> dict[str, Any]:
    """recipes/NAME.yaml as a dict, to adapt to a test (the tiny model, a temporary output_dir)."""
    return read_yaml(REPO / "recipes" / f"{name}.yaml")


def adapted_recipe(tmp_path: Path, shipped: str, model: Path, name: str, **sections: Any) -> Path:
    """recipes/SHIPPED.yaml on `model`, tracking off, its output in tmp_path/NAME, `sections` replacing whole sections."""
    recipe = shipped_recipe(shipped)
    recipe["model"]["name_or_path"] = str(model)
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(tmp_path / name)
    recipe.update(sections)
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


@contextmanager
def edit_yaml(path: Path) -> Iterator[dict[str, Any]]:
    """The YAML file at `path` as a dict to change inside the block; written back when the block ends."""
    data = read_yaml(path)
    yield data
    write_yaml(path, data)


def write_recipe(tmp_path: Path, model: Path, name: str = "run", train: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """The tests' base run recipe (DPO on `model`, synthetic pairs) at tmp_path/NAME.yaml, writing to tmp_path/NAME.
    `train` updates its train section; each `section__field=value` sets one field."""
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sources": [{"synthetic": {"num_pairs": 96, "seed": 0}}], "eval_split": 0.25, "max_length": 48},
        "train": {
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "max_steps": 4,
            "logging_steps": 1,
            "save_steps": 2,
            "gradient_checkpointing": False,
        },
        "tracking": {"project": "wb-tests", "mode": "offline"},
        "output_dir": str(tmp_path / name),
        "seed": 3,
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        recipe[section][field] = value
    recipe["train"].update(train or {})
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


def quiet_recipe(tmp_path: Path, model: Path, name: str, **train: Any) -> Path:
    """`write_recipe` with tracking disabled and `train` over its train section."""
    return write_recipe(tmp_path, model, name, train=train, tracking__mode="disabled")


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
