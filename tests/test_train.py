"""`workbench train` end to end: run directory, metrics == W&B history, ln 2 at step 1, secrets, failures."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from conftest import edit_yaml, read_yaml, run_ok, write_recipe

from workbench.cli import main

SECRET = "wb-secret-0123456789abcdef"
HF_SECRET = "hf_secret_value_987654321"


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def wandb_records(run: Path) -> list[dict]:
    (log,) = run.glob("wandb/offline-run-*/*.wandb")
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model) -> Path:
    tmp = tmp_path_factory.mktemp("dpo")
    path = write_recipe(tmp, tiny_model, train__hub_token=HF_SECRET)
    path.write_text(path.read_text().replace("project: wb-tests", "project: wb-tests\n  tags: [" + SECRET + "]"))
    run_ok(["train", str(path)], env={"WANDB_API_KEY": SECRET, "HF_TOKEN": HF_SECRET})
    return tmp / "run"


def test_run_directory_has_every_record(dpo_run):
    names = {p.name for p in dpo_run.iterdir()}
    assert {"recipe.yaml", "manifest.json", "metrics.jsonl", "data_report.json", "data", "checkpoints", "model"} <= names
    manifest = json.loads((dpo_run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["world_size"] == 1 and manifest["method"] == "dpo"
    assert manifest["reference"].startswith("frozen copy of")
    assert manifest["versions"]["trl"] and manifest["versions"]["torch"].startswith("2.")
    cost = manifest["cost"]
    assert cost["planned_device_memory_mb"] > 0 and cost["peak_memory_mb"] > 0 and cost["peak_memory_kind"] == "cpu_max_rss"
    assert cost["planned_vs_measured"].startswith("not comparable: peak_memory_mb is cpu_max_rss")  # labelled, on a CPU
    report = json.loads((dpo_run / "data_report.json").read_text())
    assert manifest["data"]["fingerprints"] == report["fingerprints"]
    resolved = read_yaml(dpo_run / "recipe.yaml")
    assert resolved["train"]["beta"] == 0.1 and resolved["train"]["max_steps"] == 4  # defaults filled, overrides kept
    assert sorted(p.name for p in (dpo_run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_prepared_splits_are_what_the_report_says(dpo_run):
    from datasets import load_from_disk

    report = json.loads((dpo_run / "data_report.json").read_text())
    train, evals = load_from_disk(str(dpo_run / "data" / "train")), load_from_disk(str(dpo_run / "data" / "eval"))
    assert (len(train), len(evals)) == (report["split"]["train"], report["split"]["eval"])
    assert len(train) + len(evals) == 96
    assert not set(train["pair_id"]) & set(evals["pair_id"])


def test_first_step_loss_is_ln2_and_metrics_use_shared_names(dpo_run):
    metrics = read_metrics(dpo_run)
    train_lines = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3, 4]
    assert train_lines[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    for key in ("train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen", "train/logps/rejected"):
        assert key in train_lines[0]
    eval_lines = [m for m in metrics if "eval/rewards/accuracies" in m]
    assert len(eval_lines) == 1 and 0.0 <= eval_lines[0]["eval/rewards/accuracies"] <= 1.0


def test_metrics_jsonl_holds_exactly_what_wandb_got(dpo_run):
    history = [r["history"]["item"] for r in wandb_records(dpo_run) if r.get("type") == "history"]
    sent = [{k: v for k, v in h.items() if not k.startswith("_")} for h in history]
    logged = [{k: v for k, v in m.items() if k != "step"} for m in read_metrics(dpo_run)]
    assert [h["_step"] for h in history] == [m["step"] for m in read_metrics(dpo_run)]
    assert len(sent) == len(logged)
    for a, b in zip(sent, logged):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k]) for k in a)


def test_secrets_never_reach_records_or_wandb(dpo_run):
    texts = [(dpo_run / name).read_text() for name in ("recipe.yaml", "manifest.json", "metrics.jsonl")]
    texts.append(json.dumps(wandb_records(dpo_run)))
    for text in texts:
        assert SECRET not in text and HF_SECRET not in text
    resolved = read_yaml(dpo_run / "recipe.yaml")
    assert resolved["train"]["hub_token"] == "***REDACTED***"
    assert resolved["tracking"]["tags"] == ["***REDACTED***"]


def test_no_file_of_the_run_holds_a_secret(dpo_run):
    """Byte for byte, every file: pickled training arguments in checkpoints and model/, W&B run files and logs."""
    files = [p for p in dpo_run.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "debug.log" for p in files)
    leaks = [str(p.relative_to(dpo_run)) for p in files if any(s.encode() in p.read_bytes() for s in (SECRET, HF_SECRET))]
    assert leaks == []


def test_exported_model_loads_and_differs_from_the_start(dpo_run, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(dpo_run / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert trained.config.pad_token_id == AutoTokenizer.from_pretrained(dpo_run / "model").pad_token_id
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), start.parameters()))


def test_bad_data_fails_the_run_with_one_message_before_the_run_starts(tmp_path, tiny_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p"}\n')
    path = write_recipe(tmp_path, tiny_model, name="failing")
    with edit_yaml(path) as recipe:
        recipe["data"]["sources"] = [{"path": str(bad)}]
        recipe["tracking"]["mode"] = "disabled"
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: missing field 'chosen' (columns found: prompt)." in err and "Traceback" not in err
    assert not (tmp_path / "failing").exists()  # checked before the tracker: no empty W&B run, no manifest


@pytest.mark.slow
def test_lora_run_saves_adapter_and_merged_model(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = write_recipe(tmp_path, tiny_model, name="lora", train__max_steps=2, tracking__mode="disabled")
    with edit_yaml(path) as recipe:
        recipe["model"]["lora"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
        recipe["model"]["merge_lora_on_export"] = True
    run_ok(["train", str(path)])
    run = tmp_path / "lora"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["reference"] == "policy base with adapters disabled"
    losses = [m["train/loss"] for m in read_metrics(run) if "train/loss" in m]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert (run / "model" / "adapter_model.safetensors").is_file() and not (run / "model" / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapted = PeftModel.from_pretrained(base, run / "model").merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(run / "model" / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
    # The shared evaluation takes the adapter directory as the policy (its tokenizer, the adapter on its base).
    run_ok(
        [
            "eval",
            str(run),
            "--set",
            "eval.num_prompts=4",
            "--set",
            "eval.num_pairs=4",
            "--set",
            "eval.generation.max_new_tokens=4",
        ]
    )
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert metrics["kl_to_reference"] > 0 and 0.0 <= metrics["preference_accuracy"] <= 1.0
