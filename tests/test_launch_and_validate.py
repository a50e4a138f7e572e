"""Shipped accelerate configs, global batch arithmetic and mismatches, `workbench validate`, tiny-model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, read_yaml, write_yaml

from workbench.cli import main
from workbench.launch import global_batch, launch_command, read_accelerate_config
from workbench.tiny import build_tiny_model, weights_digest

CONFIGS = sorted((REPO / "accelerate_configs").glob("*.yaml"))


def test_every_shipped_config_parses_as_an_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    names = {p.stem for p in CONFIGS}
    assert {
        "single_gpu",
        "multi_gpu_ddp",
        "zero1",
        "zero2",
        "zero3",
        "zero3_offload",
        "multi_node_zero3",
        "cpu_ddp",
        "cpu_zero2",
        "cpu_zero3",
    } <= names
    for path in CONFIGS:
        cfg = load_config_from_file(str(path))  # accelerate's own parser: rejects unknown fields
        raw = read_accelerate_config(path)
        assert cfg.num_processes == raw["num_processes"]
        if raw["distributed_type"] == "DEEPSPEED":
            stage = raw["deepspeed_config"]["zero_stage"]
            assert cfg.deepspeed_config["zero_stage"] == stage
            assert (stage == 3) == bool(raw["deepspeed_config"].get("zero3_save_16bit_model")), path.name


def test_global_batch_reads_processes_from_the_config():
    gb = global_batch(
        {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}, {}, REPO / "accelerate_configs" / "zero3.yaml"
    )
    assert (gb.micro, gb.accumulation, gb.processes, gb.total, gb.warnings) == (4, 2, 8, 64, [])
    gb = global_batch(
        {},
        {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1},
        REPO / "accelerate_configs" / "multi_node_zero3.yaml",
    )
    assert gb.total == 8 * 16


def test_global_batch_flags_deepspeed_mismatches(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "train_batch_size": 16}))
    acc = tmp_path / "acc.yaml"
    write_yaml(
        acc, {"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"deepspeed_config_file": "ds.json"}}
    )
    gb = global_batch({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}, {}, acc)
    assert gb.total == 8
    assert len(gb.warnings) == 3
    assert gb.warnings[0].startswith("mismatch: the DeepSpeed config sets gradient_accumulation_steps=4")
    auto = tmp_path / "auto.json"
    auto.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}))
    write_yaml(
        acc, {"distributed_type": "DEEPSPEED", "num_processes": 2, "deepspeed_config": {"deepspeed_config_file": "auto.json"}}
    )
    assert global_batch({"per_device_train_batch_size": 4}, {}, acc).warnings == []


def test_launch_command_runs_accelerate_with_the_recipe():
    cmd = launch_command("r.yaml", "accelerate_configs/cpu_ddp.yaml", ["seed=1"], resume=True)
    assert cmd[1:] == [
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate_configs/cpu_ddp.yaml",
        "-m",
        "workbench",
        "train",
        "r.yaml",
        "--set",
        "seed=1",
        "--resume",
    ]


def recipe_file(tmp_path: Path, model: Path, **extra) -> Path:
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": "Describe the sea " * 20 + f"now {i}.", "chosen": "aurora piano", "rejected": "rhythm lynx"})
            + "\n"
            for i in range(5)
        )
    )
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(model)},
        "data": {"sources": [{"path": str(data)}], "max_length": 32, "max_prompt_length": 16},
        "train": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    return write_yaml(tmp_path / "recipe.yaml", recipe)


def test_validate_prints_batch_and_a_decoded_truncated_pair(tmp_path, tiny_model, capsys):
    path = recipe_file(tmp_path, tiny_model)
    assert main(["validate", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_zero2.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        "global batch (from" in out and "4 (micro batch) x 2 (accumulation) x 2 (processes) = 16 pairs per optimizer step" in out
    )
    assert "prompt   (16 tokens, no loss, start cut)" in out
    assert "chosen   (3 tokens, in loss): 'aurora piano<|end|>'" in out
    assert "loss mask (chosen sequence): " + "0" * 16 + "1" * 3 in out
    assert not (tmp_path / "run").exists()  # validate writes nothing


def test_validate_reports_every_problem(tmp_path, capsys):
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": str(tmp_path / "no-model")},
        "data": {"sources": [{"path": "missing.jsonl"}, {"path": "also-missing.parquet"}]},
    }
    path = tmp_path / "r.yaml"
    write_yaml(path, recipe)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problems:" in err
    assert "`data.sources.0.path`: 'missing.jsonl' not found" in err
    assert "`data.sources.1.path`: 'also-missing.parquet' not found" in err
    assert f"`model.name_or_path`: model '{tmp_path / 'no-model'}' not found" in err


def test_tiny_model_is_deterministic_and_loads(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert weights_digest(again) == weights_digest(tiny_model) != weights_digest(other)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in tiny_model.glob("*.safetensors")) == ["model.safetensors"]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert (
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
        == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    )
    assert model.config.pad_token_id == tok.pad_token_id and tok.eos_token == "<|end|>"
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


@pytest.mark.parametrize(
    "requested,stored,expected", [("auto", "bfloat16", "bfloat16"), ("auto", None, "float32"), ("float32", "bfloat16", "float32")]
)
def test_dtype_resolution(requested, stored, expected):
    from workbench.models import resolve_dtype

    assert resolve_dtype(requested, stored) == expected


def test_loading_bf16_weights_as_fp16_warns(caplog):
    from workbench.models import resolve_dtype

    with caplog.at_level("WARNING", logger="workbench"):
        assert resolve_dtype("float16", "bfloat16") == "float16"
    assert "bf16 weights loaded as fp16 overflow" in caplog.text


def test_qlora_is_refused_clearly_without_cuda():
    from workbench.config import ModelConfig
    from workbench.errors import WorkbenchError
    from workbench.models import quantization_config

    with pytest.raises(WorkbenchError, match=r"QLoRA\) needs a CUDA GPU"):
        quantization_config(ModelConfig(name_or_path="m", quantization="4bit", lora={"r": 8}))


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid_and_documents_its_launch(recipe):
    from workbench.comparison import load_comparison
    from workbench.config import load_recipe

    if "stages" in read_yaml(recipe):  # a comparison: every stage recipe is checked too
        output_dir = str(load_comparison(recipe).output_dir)
    else:
        output_dir = load_recipe(recipe).output_dir  # keys and types checked against the real TRL / peft classes
    header = recipe.read_text().splitlines()[:12]
    assert any("workbench " in line for line in header if line.startswith("#")), "header comment gives the launch command"
    assert output_dir.startswith("runs/")


def test_missing_relative_model_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch, capsys):
    from workbench.models import model_location_problem

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert model_location_problem("runs/tiny-model").startswith("model 'runs/tiny-model' not found")
    assert model_location_problem("Qwen/Qwen2.5-0.5B") is None  # a hub id: checked when loaded
    recipe = {
        "method": "dpo",
        "model": {"name_or_path": "runs/tiny-model"},
        "data": {"sources": [{"synthetic": {"num_pairs": 4}}]},
        "tracking": {"mode": "disabled"},
    }
    write_yaml(tmp_path / "r.yaml", recipe)
    assert main(["train", "r.yaml"]) == 2
    err = capsys.readouterr().err
    assert "model 'runs/tiny-model' not found" in err and "workbench tiny-model" in err and "Traceback" not in err
    assert main(["data", "inspect", "x.jsonl", "--format", "hh"]) == 2
    assert "`--format` must be one of" in capsys.readouterr().err


def test_the_launcher_is_told_what_it_would_guess_and_the_users_values_are_kept():
    from workbench.launch import COMMAND_ENV, launch_env

    cpu = {"use_cpu": True, "num_processes": 2, "num_machines": 1}
    env = launch_env(cpu, {"PATH": "/bin"}, ["launch", "r.yaml"])
    assert env["DS_ACCELERATOR"] == "cpu" and env["OMP_NUM_THREADS"] == "1" and env["WORKBENCH_LAUNCHED"] == "1"
    assert json.loads(env[COMMAND_ENV]) == ["launch", "r.yaml"]
    mine = launch_env(cpu, {"DS_ACCELERATOR": "xpu", "OMP_NUM_THREADS": "4"})
    assert (mine["DS_ACCELERATOR"], mine["OMP_NUM_THREADS"]) == ("xpu", "4")
    gpus = launch_env({"num_processes": 8, "num_machines": 8}, {})  # one process per machine: torch sets nothing
    assert "DS_ACCELERATOR" not in gpus and "OMP_NUM_THREADS" not in gpus and COMMAND_ENV not in gpus
