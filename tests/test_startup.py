"""Lazy imports: `--help` imports no ML library, and `train` imports only its own method's module
(no other method, no comparison, report or plotting code). Checked on the modules a fresh
interpreter holds, not on time, so the test cannot be flaky on a loaded machine."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, write_yaml

HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "deepspeed", "wandb", "accelerate", "matplotlib")
OTHER_CODE = ("workbench.comparison", "workbench.report", "workbench.evaluate", "workbench.sampling.logprobs", "matplotlib")


def modules_after(code: str, *args: str, cwd=REPO) -> tuple[int, list[str], str]:
    probe = (
        "import json, sys\nfrom workbench.cli import main\n"
        "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('MODULES', json.dumps(sorted(sys.modules)))\nsys.exit(code)\n"
    )
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, capture_output=True, text=True, env=env)
    modules = json.loads(res.stdout.rsplit("MODULES", 1)[1]) if "MODULES" in res.stdout else []
    return res.returncode, modules, res.stdout[-1500:] + res.stderr[-1500:]


def test_help_imports_no_ml_library():
    code, modules, out = modules_after("", "--help")
    assert code == 0, out
    assert [m for m in HEAVY if m in modules] == []


def test_train_imports_only_its_own_method(tmp_path, tiny_model):
    recipe = tmp_path / "sft.yaml"
    write_yaml(
        recipe,
        {
            "method": "sft",
            "model": {"name_or_path": str(tiny_model)},
            "data": {"sources": [{"synthetic": {"task": "vowels", "num_pairs": 16}}], "max_length": 48, "eval_split": 0},
            "train": {"max_steps": 1, "per_device_train_batch_size": 4, "save_steps": 1000},
            "tracking": {"mode": "disabled"},
            "output_dir": str(tmp_path / "run"),
        },
    )
    code, modules, out = modules_after("", "train", str(recipe))
    assert code == 0, out
    methods = sorted(m for m in modules if m.startswith("workbench.methods."))
    assert methods == ["workbench.methods.hf", "workbench.methods.sft"]
    assert [m for m in OTHER_CODE if m in modules] == []
    assert not [
        m for m in modules if m.startswith("trl.trainer.") and m.endswith("_trainer") and "sft" not in m and "base" not in m
    ]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "completed"


def test_version_prints_the_installed_package_version_without_ml_libraries():
    from importlib import metadata

    from conftest import run_workbench

    code, modules, out = modules_after("", "--version")
    assert code == 0, out
    assert [m for m in HEAVY if m in modules] == []
    assert run_workbench(["--version"]).stdout == f"workbench {metadata.version('workbench')}\n"


def test_help_texts_show_what_each_verb_takes(capsys):
    import pytest

    from workbench.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "e.g. stages.NAME.train.learning_rate=1e-5" in text  # a comparison's keys live under stages.NAME
    with pytest.raises(SystemExit):
        main(["tiny-model", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "out_dir where to write the model and its tokenizer" in text
    assert "--seed SEED seed of the random weights (default 0)" in text


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`workbench ... | head` closes the pipe early: Python raised BrokenPipeError with a traceback."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench", "tiny-model", str(tmp_path / "m")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before anything is printed
    err = proc.stderr.read()
    assert proc.wait() == 0, err[-2000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err
