"""What a run prints outside a terminal (a log file, CI, a comparison's stage log): no known third-party
noise, each remaining warning once, and progress lines with step/total, rate and ETA."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import REPO, kill_when, write_recipe

# Lines a run used to print again and again, none of which a user can act on.
NOISE = {
    "transformers' gradient_checkpointing deprecations": "is deprecated and will be removed in v6",
    "DeepSpeed's accelerator guess": "Setting accelerator to CPU",
    "torch's pin_memory warning": "'pin_memory' argument is set as true",
    "dataset-saving bars": "Saving the dataset",
    "accelerate's remainder note on resume": "drop the remainder yourself",
    "the Trainer's printed dicts": "{'loss'",
}


def console_of(args: list[str]) -> str:
    """What `workbench ARGS` prints, stdout and stderr in order, as a log file gets it; the run must succeed."""
    res = subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:]
    return res.stdout


PROGRESS = re.compile(r"^step (\d+)/(\d+) \| ([\d.]+) (it/s|s/it) \| ETA (\d+:\d\d) \| ")


@pytest.mark.slow
def test_a_resumed_run_prints_no_known_noise_each_warning_once_and_progress_with_step_total_rate_eta(tmp_path, tiny_model):
    """One epoch of about 72 training pairs in batches of 8. The first run is killed once checkpoint-3 is complete;
    the resume then crosses more checkpoints, the end of an epoch it skipped into, the final evaluation and the export, with gradient checkpointing on (every checkpoint used to print three FutureWarnings)."""
    path = write_recipe(
        tmp_path,
        tiny_model,
        "console",
        train__max_steps=-1,
        train__num_train_epochs=1,
        train__save_steps=3,
        train__logging_steps=2,
        train__gradient_checkpointing=True,
    )
    run = tmp_path / "console"
    kill_when(["train", str(path)], run / "checkpoints" / "checkpoint-3" / ".complete")
    out = console_of(["train", str(path), "--resume"])
    assert {name: out.count(text) for name, text in NOISE.items()} == dict.fromkeys(NOISE, 0)

    train_pairs = json.loads((run / "data_report.json").read_text())["split"]["train"]
    total = math.ceil(train_pairs / 8)  # one epoch in batches of 8
    progress = [m for m in map(PROGRESS.match, out.splitlines()) if m]
    steps = [int(m.group(1)) for m in progress]
    assert {4, 6, 8} <= set(steps) and max(steps) == total and {int(m.group(2)) for m in progress} == {total}
    assert all(float(m.group(3)) > 0 for m in progress)

    warned = Counter(line for line in out.splitlines() if "warning" in line.lower())
    assert [line for line, n in warned.items() if n > 1] == []


def test_progress_text_by_hand():
    from workbench.console import progress_text

    assert progress_text(40, 120, 2.0) == "step 40/120 | 2 it/s | ETA 0:40"  # 80 steps left at 2 a second
    assert progress_text(3, 10, 0.25) == "step 3/10 | 4 s/it | ETA 0:28"  # 7 steps left at 4 s each
    assert progress_text(7, 3700, 1.0) == "step 7/3700 | 1 it/s | ETA 1:01:33"
    assert progress_text(5, None, 0.5) == "step 5 | 2 s/it"
    assert progress_text(1, 10, None) == "step 1/10"


def test_each_warning_is_shown_once_even_after_the_filters_change():
    """Python's "once per location" forgets when any library changes the filters; ShowOnce does not."""
    import warnings

    from workbench.console import ShowOnce

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = ShowOnce(lambda message, category, *rest, **kw: shown.append((category, str(message))))
        for _ in range(3):
            warnings.warn("the same words", FutureWarning, stacklevel=1)
            warnings.filterwarnings("default")  # what catch_warnings and friends do, again and again
        warnings.warn("other words", FutureWarning, stacklevel=1)
        warnings.warn("the same words", UserWarning, stacklevel=1)
    assert shown == [(FutureWarning, "the same words"), (FutureWarning, "other words"), (UserWarning, "the same words")]


def test_checkpointing_reaches_trl_under_its_current_name_with_trls_default(tmp_path):
    """A recipe may say `gradient_checkpointing` (the name TRL documents); transformers deprecated it, so the
    config class gets `activation_checkpointing`, and TRL's own default (on) is kept when the recipe says nothing."""
    import warnings

    from trl import DPOConfig

    from workbench.config.train_args import current_names

    base = {"output_dir": str(tmp_path), "report_to": [], "bf16": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecation warning would fail the build
        off = DPOConfig(**current_names(DPOConfig, {**base, "gradient_checkpointing": False}))
        default = DPOConfig(**current_names(DPOConfig, base))
        kwargs = DPOConfig(**current_names(DPOConfig, {**base, "gradient_checkpointing_kwargs": {"use_reentrant": False}}))
    assert (off.activation_checkpointing, off.gradient_checkpointing) == (False, False)
    assert (default.activation_checkpointing, default.gradient_checkpointing) == (True, True)
    assert kwargs.activation_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_two_process_deepspeed_launch_prints_no_known_noise(tmp_path, tiny_model):
    """`workbench launch` with a CPU ZeRO-2 config: the launcher process (accelerate's, not ours) guessed the
    accelerator and printed torch's OMP_NUM_THREADS banner; DeepSpeed's gather called a deprecated torch API."""
    path = write_recipe(tmp_path, tiny_model, "zero2", train__max_steps=4, train__logging_steps=2)
    config = REPO / "accelerate_configs" / "cpu_zero2.yaml"
    out = console_of(["launch", str(path), "--accelerate-config", str(config)])
    noise = {
        **NOISE,
        "torch's OMP_NUM_THREADS banner": "Setting OMP_NUM_THREADS environment variable",
        "DeepSpeed's call of a deprecated gather": "`torch.distributed.all_gather_into_tensor` is deprecated",
    }
    assert {name: out.count(text) for name, text in noise.items()} == dict.fromkeys(noise, 0)
    assert [int(m.group(1)) for m in map(PROGRESS.match, out.splitlines()) if m][:2] == [2, 4]
