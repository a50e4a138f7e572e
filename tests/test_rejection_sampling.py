"""Generation, reward sources, selection and the rejection-sampling stages, on CPU with tiny models."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, adapted_recipe, kill_when, run_ok, shipped_recipe, write_yaml
from test_train import read_metrics

from workbench.config import GenerationConfig, RewardModelConfig
from workbench.errors import WorkbenchError
from workbench.methods.rejection_sampling import examples_fingerprint, read_jsonl
from workbench.sampling.generation import cut_at_eos, generate
from workbench.scoring import checked_scores, reward_source
from workbench.selection import Candidate, Group, pair_row, pick, pick_pair, select, select_pairs


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 7], {2}) == ([5, 6], 2)
    assert cut_at_eos([5, 9, 2, 7], {2, 9}) == ([5], 9)  # which of several EOS ids ended it
    assert cut_at_eos([5, 6, 0, 0], {2}) == ([5, 6, 0, 0], None)  # pad sampled at the cap is kept


def hand_groups():
    """Scores, and F / U for finished / cut at the cap; hand-worked selections in the tests below."""
    spec = [
        [(0.1, "F"), (0.9, "U"), (0.5, "F")],  # the best score is cut at the cap: never kept
        [(0.7, "F"), (0.2, "F"), (0.8, "F")],
        [(0.95, "U"), (0.99, "U")],  # nothing finished: skipped, counted
        [(0.6, "U"), (0.3, "F")],  # one finished: a selection, no pair
        [(0.4, "F"), (0.4, "F")],  # a tie: a selection, no pair
    ]
    return [Group(f"p{g}", [Candidate(f"c{g}{i}", s, f == "F") for i, (s, f) in enumerate(row)]) for g, row in enumerate(spec)]


def test_selection_rules_keep_finished_completions_only():
    groups = hand_groups()
    best, counts = select(groups, "best")
    assert best == [(0, 2), (1, 2), (3, 1), (4, 0)]  # first on ties
    assert counts.to_dict() == {
        "prompts": 5,
        "completions": 12,
        "unfinished": 4,
        "skipped_no_finished": 1,
        "skipped_below_threshold": 0,
        "selected_prompts": 4,
        "selected": 4,
    }
    top2, counts = select(groups, "top_k", top_k=2)
    assert top2 == [(0, 2), (0, 0), (1, 2), (1, 0), (3, 1), (4, 0), (4, 1)]
    assert (counts.selected, counts.skipped_no_finished) == (7, 1)
    over, counts = select(groups, "threshold", threshold=0.45)
    assert over == [(0, 2), (1, 2), (1, 0)]  # 0.9 and 0.6 are above it but cut; p3 and p4 have nothing finished >= 0.45
    assert (counts.selected, counts.selected_prompts, counts.skipped_no_finished, counts.skipped_below_threshold) == (3, 2, 1, 2)


def test_pairs_are_best_vs_worst_finished_with_a_margin_and_counted():
    groups = hand_groups()
    pairs, counts = select_pairs(groups)
    assert pairs == [(0, 2, 0), (1, 2, 1)]  # p0: 0.5 vs 0.1 (0.9 cut); p1: 0.8 vs 0.2
    assert counts.to_dict() == {
        "prompts": 5,
        "skipped_no_finished": 1,
        "skipped_one_finished": 1,
        "skipped_small_margin": 1,
        "pairs": 2,
        "rejected_unfinished": 0,
    }
    pairs, counts = select_pairs(groups, min_margin=0.5)  # p0's margin 0.4 is too small, p1's 0.6 is not
    assert pairs == [(1, 2, 1)] and counts.skipped_small_margin == 2
    assert pair_row(groups[1], 2, 1) == {
        "prompt": "p1",
        "chosen": "c12",
        "rejected": "c11",
        "chosen_score": 0.8,
        "rejected_score": 0.2,
        "score_margin": pytest.approx(0.6),
    }
    assert pick_pair([Candidate("a", 1.0, False), Candidate("b", 0.0, True)]) is None
    assert pick(groups[2].candidates, "best") == [] and pick(groups[0].candidates, "top_k", top_k=5) == [2, 0]


def test_pairs_may_reject_a_response_cut_at_the_cap_but_never_choose_one():
    """`rejected: any`: the best finished response against the worst of all. p5 (0.7 F, 0.1 U, 0.4 F) rejects its cut
    0.1 where `finished` rejects 0.4; p3's only finished response (0.3) is its worst, so no pair (margin 0)."""
    groups = [
        *hand_groups(),
        Group("p5", [Candidate("c50", 0.7, True), Candidate("c51", 0.1, False), Candidate("c52", 0.4, True)]),
    ]
    pairs, counts = select_pairs(groups, rejected="any")
    assert pairs == [(0, 2, 0), (1, 2, 1), (5, 0, 1)]
    assert counts.to_dict() == {
        "prompts": 6,
        "skipped_no_finished": 1,
        "skipped_one_finished": 0,
        "skipped_small_margin": 2,
        "pairs": 3,
        "rejected_unfinished": 1,
    }
    assert select_pairs(groups)[0] == [(0, 2, 0), (1, 2, 1), (5, 0, 2)]
    assert select_pairs(groups, min_margin=0.55, rejected="any")[0] == [(1, 2, 1), (5, 0, 1)]  # 0.6 and 0.6 > 0.55
    # one finished response beats a cut one: a pair only with `any`
    one = [Candidate("a", 0.2, False), Candidate("b", 0.9, True)]
    assert pick_pair(one) is None and pick_pair(one, rejected="any") == (1, 0)
    assert pick_pair([Candidate("a", 0.9, False), Candidate("b", 0.2, True)], rejected="any") is None  # never chosen


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
    shipped = shipped_recipe("rejection_sampling")
    sections = {
        "data": {**shipped["data"], "sources": [{"synthetic": {"num_pairs": 160, "seed": 2}}]},
        "generation": {"num_samples": 4, "max_new_tokens": 12, "batch_size": 4},
        "train": {**shipped["train"], "num_train_epochs": 1, "logging_steps": 1},
        **extra,
    }
    return adapted_recipe(tmp_path, "rejection_sampling", model, name, **sections)


@pytest.fixture(scope="module")
def rs_run(tmp_path_factory, rs_model):
    tmp = tmp_path_factory.mktemp("rs")
    run_ok(["train", str(rs_recipe(tmp, rs_model, "one"))])
    return tmp, tmp / "one"


def groups_by_prompt(rows):
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r["prompt_id"], []).append(r)
    return out


@pytest.mark.slow
def test_only_finished_completions_are_selected_and_prompts_without_one_are_counted(rs_run):
    """A completion cut at max_new_tokens would be fine-tuned with an EOS the model never sampled."""
    _, run = rs_run
    samples = run / "samples"
    groups = groups_by_prompt(read_jsonl(samples / "generations.jsonl"))
    finished = {pid: [r for r in g if r["finished"]] for pid, g in groups.items()}
    no_finished = sorted(pid for pid, f in finished.items() if not f)
    assert 0 < len(no_finished) < len(groups)  # the model makes both kinds of prompt
    cut = {(r["prompt_id"], r["completion"]) for g in groups.values() for r in g if not r["finished"]}
    selected = read_jsonl(samples / "selected.jsonl")
    assert [s for s in selected if (s["prompt_id"], s["completion"]) in cut] == []
    assert sorted(s["prompt_id"] for s in selected) == sorted(pid for pid, f in finished.items() if f)
    assert all(s["score"] == max(r["score"] for r in finished[s["prompt_id"]]) for s in selected)  # best finished one
    counts = json.loads((run / "manifest.json").read_text())["selection"]
    assert counts["skipped_no_finished"] == len(no_finished)
    assert counts["selected"] == len(selected) and counts["prompts"] == len(groups)
    assert counts["unfinished"] == sum(not r["finished"] for g in groups.values() for r in g)
    assert json.loads((samples / "selection_report.json").read_text())["skipped_no_finished"] == len(no_finished)
    assert read_metrics(run)[0]["rs/skipped_no_finished"] == len(no_finished)
    pairs = read_jsonl(samples / "pairs.jsonl")  # both sides finished: DPO appends an EOS to each
    assert [p for p in pairs if (p["prompt_id"], p["chosen"]) in cut or (p["prompt_id"], p["rejected"]) in cut] == []
    two = [pid for pid, f in finished.items() if len({r["score"] for r in f}) >= 2]
    assert sorted(p["prompt_id"] for p in pairs) == sorted(two)
    assert counts["pairs"]["pairs"] == len(pairs)
    assert counts["pairs"]["skipped_no_finished"] == len(no_finished)


@pytest.mark.slow
def test_stages_write_their_artifacts_and_metrics(rs_run):
    _, run = rs_run
    samples = run / "samples"
    rows = read_jsonl(samples / "generations.jsonl")
    prompts = {r["prompt_index"] for r in rows}
    assert len(rows) == 4 * len(prompts) and all(set(r) >= {"prompt_id", "prompt", "completion", "score"} for r in rows)
    selected = read_jsonl(samples / "selected.jsonl")
    assert len(selected) == len({r["prompt_index"] for r in rows if r["finished"]})  # one per prompt with a finished one
    rs = read_metrics(run)[0]
    assert rs["step"] == 0 and rs["rs/selected"] == len(selected)
    assert rs["rs/best_of_1"] == pytest.approx(rs["rs/reward_all_mean"])
    assert rs["rs/reward_selected_mean"] == pytest.approx(sum(s["score"] for s in selected) / len(selected))
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
    recipe = shipped_recipe("quickstart_dpo")
    recipe["data"]["sources"] = [{"path": str(run / "samples" / "pairs.jsonl")}]
    write_yaml(tmp / "idpo.yaml", recipe)
    prepared = prepare(load_recipe(tmp / "idpo.yaml").data, seed=0)
    assert prepared.report["rows_read"] == len(pairs) and prepared.report["dropped"]["total"] == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_generate_every_prompt_exactly_once_and_the_same_samples(rs_run, rs_model):
    tmp, single = rs_run
    path = rs_recipe(tmp, rs_model, "two")
    run_ok(["launch", str(path), "--accelerate-config", str(REPO / "accelerate_configs" / "cpu_ddp.yaml")])
    one = read_jsonl(single / "samples" / "generations.jsonl")
    two = read_jsonl(tmp / "two" / "samples" / "generations.jsonl")
    keys = [(r["prompt_index"], r["sample"]) for r in two]
    assert len(keys) == len(set(keys)) == len(one)
    assert [(r["prompt_id"], r["completion"], r["score"]) for r in two] == [
        (r["prompt_id"], r["completion"], r["score"]) for r in one
    ]


@pytest.mark.slow
def test_killed_during_generation_a_rerun_continues_without_loss_or_duplicates(rs_run, rs_model):
    tmp, single = rs_run
    path = rs_recipe(tmp, rs_model, "killed")
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
    recipe = shipped_recipe("sft")
    recipe["model"]["name_or_path"] = str(tiny_model)
    recipe["tracking"] = {"mode": "disabled"}
    recipe["output_dir"] = str(tmp_path / "sft")
    recipe["train"]["logging_steps"] = 1
    write_yaml(tmp_path / "sft.yaml", recipe)
    run_ok(["train", str(tmp_path / "sft.yaml")])
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "sft") if "train/loss" in m]
    assert losses[-1] < losses[0] - 1.0  # it learns the responses
    report = json.loads((tmp_path / "sft" / "data_report.json").read_text())
    assert report["kind"] == "sft" and report["split"]["train"] + report["split"]["eval"] == 512
