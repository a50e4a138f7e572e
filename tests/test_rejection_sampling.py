"""Generation, reward sources, selection and the rejection-sampling stages, on CPU with tiny models."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO, kill_when, run_ok
from test_train import read_metrics

from workbench.config import GenerationConfig, RewardModelConfig
from workbench.errors import WorkbenchError
from workbench.generation import cut_at_eos, generate
from workbench.methods.rejection_sampling import examples_fingerprint, read_jsonl, select
from workbench.scoring import checked_scores, reward_source


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 7], {2}) == ([5, 6], 2)
    assert cut_at_eos([5, 9, 2, 7], {2, 9}) == ([5], 9)  # which of several EOS ids ended it
    assert cut_at_eos([5, 6, 0, 0], {2}) == ([5, 6, 0, 0], None)  # pad sampled at the cap is kept


def test_selection_rules_on_hand_made_groups():
    from types import SimpleNamespace

    groups = [[{"score": s, "sample": i} for i, s in enumerate(g)] for g in ([0.1, 0.9, 0.5], [0.7, 0.2, 0.8])]
    best = select(groups, SimpleNamespace(selection="best"))
    assert [(r["score"]) for r in best] == [0.9, 0.8]
    top2 = select(groups, SimpleNamespace(selection="top_k", top_k=2))
    assert [r["score"] for r in top2] == [0.9, 0.5, 0.8, 0.7]
    over = select(groups, SimpleNamespace(selection="threshold", score_threshold=0.6))
    assert [r["score"] for r in over] == [0.9, 0.8, 0.7]


def test_generation_is_deterministic_and_resumable_by_batch(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    from workbench.data.formatting import tokenize_prompt

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts = [
        tokenize_prompt(tokenizer, [{"role": "user", "content": "Say something " * (i % 4 + 1)}], 64).prompt_ids
        for i in range(10)
    ]
    cfg = GenerationConfig(num_samples=2, max_new_tokens=8, batch_size=3)
    full = generate(model, tokenizer, prompts, cfg, seed=5)
    assert sorted((c.prompt_index, c.sample) for c in full) == [(i, s) for i in range(10) for s in range(2)]
    first = generate(model, tokenizer, prompts, cfg, seed=5, done_batches={1, 3})
    rest = generate(model, tokenizer, prompts, cfg, seed=5, done_batches={0, 2})
    assert sorted(first + rest, key=lambda c: (c.prompt_index, c.sample)) == sorted(
        full, key=lambda c: (c.prompt_index, c.sample)
    )
    shards = generate(model, tokenizer, prompts, cfg, seed=5, rank=0, world_size=2) + generate(
        model, tokenizer, prompts, cfg, seed=5, rank=1, world_size=2
    )
    assert sorted(shards, key=lambda c: (c.prompt_index, c.sample)) == sorted(full, key=lambda c: (c.prompt_index, c.sample))
    assert all(len(c.token_ids) <= 8 for c in full)


def test_reward_function_source_and_its_errors(tmp_path):
    fn = reward_source(RewardModelConfig(function="workbench.data.synthetic:vowel_reward"), 64)
    assert fn(["p", "p"], ["aaa", "bcd"]) == [1.0, 0.0]
    module = tmp_path / "my_rewards.py"
    module.write_text(
        "def bad(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n\ndef short(prompts, completions, **kw):\n    return [1.0]\n"
    )
    with pytest.raises(WorkbenchError, match="non-finite score for completion 0"):
        reward_source(RewardModelConfig(function=f"{module}:bad"), 64)(["p"], ["x"])
    with pytest.raises(WorkbenchError, match="expected 2 numbers"):
        reward_source(RewardModelConfig(function=f"{module}:short"), 64)(["p", "q"], ["x", "y"])
    with pytest.raises(WorkbenchError, match="has no function nope"):
        reward_source(RewardModelConfig(function="workbench.data.synthetic:nope"), 64)
    assert checked_scores("f", (1, 2), 2) == [1.0, 2.0]


def test_reward_model_source_scores_with_its_own_formatting_and_normalizes(tmp_path, tiny_model, tokenizer):
    import torch
    from transformers import AutoModelForSequenceClassification

    from workbench.data.formatting import TokenizationSettings, tokenize_sft
    from workbench.scoring import score_sequences

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.reward_mean, rm.config.reward_std = 0.5, 2.0
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    prompts = [[{"role": "user", "content": "Hi"}], "Plain prompt"]
    completions = ["aurora", "lynx"]
    raw = reward_source(RewardModelConfig(name_or_path=str(tmp_path / "rm")), 64)(prompts, completions)
    normalized = reward_source(RewardModelConfig(name_or_path=str(tmp_path / "rm"), normalize=True), 64)(prompts, completions)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    seqs = [
        (lambda t: t.prompt_ids + t.completion_ids)(
            tokenize_sft(tokenizer, {"prompt": p, "completion": c}, TokenizationSettings(64, 32))
        )
        for p, c in zip(prompts, completions)
    ]
    assert raw == pytest.approx(score_sequences(model, seqs, tokenizer.pad_token_id), abs=1e-6)
    assert normalized == pytest.approx([(r - 0.5) / 2.0 for r in raw], abs=1e-6)
    tokenizer_less = tmp_path / "plain"
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(tokenizer_less)
    tokenizer.save_pretrained(tokenizer_less)
    with pytest.raises(WorkbenchError, match="stores no reward_mean/reward_std"):
        reward_source(RewardModelConfig(name_or_path=str(tokenizer_less), normalize=True), 64)


def rs_recipe(tmp_path, model, name, **extra):
    recipe = yaml.safe_load((REPO / "recipes" / "rejection_sampling.yaml").read_text())
    recipe["model"]["name_or_path"] = str(model)
    recipe["data"]["sources"] = [{"synthetic": {"num_pairs": 160, "seed": 2}}]
    recipe["generation"] = {"num_samples": 4, "max_new_tokens": 12, "batch_size": 4}
    recipe["train"].update({"num_train_epochs": 1, "logging_steps": 1})
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(tmp_path / name)
    for key, value in extra.items():
        recipe[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def rs_run(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("rs")
    run_ok(["train", str(rs_recipe(tmp, tiny_model, "one"))])
    return tmp, tmp / "one"


@pytest.mark.slow
def test_stages_write_their_artifacts_and_metrics(rs_run):
    _, run = rs_run
    samples = run / "samples"
    rows = read_jsonl(samples / "generations.jsonl")
    prompts = {r["prompt_index"] for r in rows}
    assert len(rows) == 4 * len(prompts) and all(set(r) >= {"prompt_id", "prompt", "completion", "score"} for r in rows)
    selected = read_jsonl(samples / "selected.jsonl")
    assert len(selected) == len(prompts)
    by_prompt: dict[str, float] = {}
    for r in rows:
        by_prompt[r["prompt_id"]] = max(by_prompt.get(r["prompt_id"], -1.0), r["score"])
    assert all(s["score"] == by_prompt[s["prompt_id"]] for s in selected)  # best of n, exactly
    rs = read_metrics(run)[0]
    assert rs["step"] == 0 and rs["rs/selected"] == len(prompts)
    assert rs["rs/best_of_1"] == pytest.approx(rs["rs/reward_all_mean"])
    assert rs["rs/best_of_4"] == pytest.approx(rs["rs/reward_selected_mean"])
    assert rs["rs/best_of_1"] <= rs["rs/best_of_2"] <= rs["rs/best_of_4"]
    assert rs["rs/generation_tokens_per_second"] > 0


@pytest.mark.slow
def test_sft_stage_trains_on_exactly_the_selected_set(rs_run):
    from transformers import AutoModelForCausalLM

    _, run = rs_run
    manifest = json.loads((run / "manifest.json").read_text())
    selected = read_jsonl(run / "samples" / "selected.jsonl")
    assert manifest["sft_stage"] == {"examples": len(selected), "fingerprint": examples_fingerprint(selected)}
    assert manifest["status"] == "completed" and manifest["export_check"]["ok"]
    AutoModelForCausalLM.from_pretrained(run / "model")  # loads as a policy


@pytest.mark.slow
def test_pairs_load_in_a_dpo_recipe(rs_run):
    from workbench.config import load_recipe
    from workbench.data.pipeline import prepare

    tmp, run = rs_run
    pairs = read_jsonl(run / "samples" / "pairs.jsonl")
    assert pairs and all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    recipe = yaml.safe_load((REPO / "recipes" / "quickstart_dpo.yaml").read_text())
    recipe["data"]["sources"] = [{"path": str(run / "samples" / "pairs.jsonl")}]
    (tmp / "idpo.yaml").write_text(yaml.safe_dump(recipe))
    prepared = prepare(load_recipe(tmp / "idpo.yaml").data, seed=0)
    assert prepared.report["rows_read"] == len(pairs) and prepared.report["dropped"]["total"] == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_generate_every_prompt_exactly_once_and_the_same_samples(rs_run, tiny_model):
    tmp, single = rs_run
    path = rs_recipe(tmp, tiny_model, "two")
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_ddp.yaml")])
    one = read_jsonl(single / "samples" / "generations.jsonl")
    two = read_jsonl(tmp / "two" / "samples" / "generations.jsonl")
    keys = [(r["prompt_index"], r["sample"]) for r in two]
    assert len(keys) == len(set(keys)) == len(one)
    assert [(r["prompt_id"], r["completion"], r["score"]) for r in two] == [
        (r["prompt_id"], r["completion"], r["score"]) for r in one
    ]


@pytest.mark.slow
def test_killed_during_generation_a_rerun_continues_without_loss_or_duplicates(rs_run, tiny_model):
    tmp, single = rs_run
    path = rs_recipe(tmp, tiny_model, "killed")
    run = tmp / "killed"
    part = run / "samples" / "generations.part0-of1.jsonl"
    kill_when(["train", str(path)], lambda: part.is_file() and len(part.read_text().splitlines()) >= 40)  # mid-generation
    assert not (run / "samples" / "generations.done").exists()
    run_ok(["train", str(path)])
    again = read_jsonl(run / "samples" / "generations.jsonl")
    one = read_jsonl(single / "samples" / "generations.jsonl")
    assert [(r["prompt_index"], r["sample"], r["completion"], r["score"]) for r in again] == [
        (r["prompt_index"], r["sample"], r["completion"], r["score"]) for r in one
    ]


@pytest.mark.slow
def test_sft_method_learns_completions_only(tmp_path, tiny_model):
    from workbench.data.formatting import TokenizedSFT
    from workbench.methods.sft import sft_dataset

    ex = TokenizedSFT([1, 2, 3], [7, 8], False, False, (3, 2))
    assert sft_dataset([ex], completion_only=True)[0] == {"input_ids": [1, 2, 3, 7, 8], "labels": [-100, -100, -100, 7, 8]}
    assert sft_dataset([ex], completion_only=False)[0]["labels"] == [1, 2, 3, 7, 8]
    recipe = yaml.safe_load((REPO / "recipes" / "sft.yaml").read_text())
    recipe["model"]["name_or_path"] = str(tiny_model)
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(tmp_path / "sft")
    recipe["train"]["logging_steps"] = 1
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(recipe))
    run_ok(["train", str(tmp_path / "sft.yaml")])
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "sft") if "train/loss" in m]
    assert losses[-1] < losses[0] - 1.0  # it learns the responses
    report = json.loads((tmp_path / "sft" / "data_report.json").read_text())
    assert report["kind"] == "sft" and report["split"]["train"] + report["split"]["eval"] == 512
