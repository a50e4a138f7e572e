"""The shared evaluation: each metric on hand-made cases with known answers, and `workbench eval` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import run_ok, run_workbench, write_yaml

from workbench import metrics as M

VOWEL = "workbench.data.synthetic:vowel_reward"


# ----------------------------------------------------------------------------------------------
# Pure metrics, by hand


def test_win_rate_counts_ties_half():
    # 1 > 0 win, 2 = 2 tie, 3 < 4 loss, 3 > 1 win -> (1 + 0.5 + 0 + 1) / 4
    assert M.win_rate([1.0, 2.0, 3.0, 3.0], [0.0, 2.0, 4.0, 1.0]) == 0.625
    assert M.win_rate([0.3] * 5, [0.3] * 5) == 0.5


def test_distinct_2_by_hand():
    # bigrams (1,2) (2,3) (3,1) (1,2) | (2,3): 5 in all, 3 distinct
    assert M.distinct_n([[1, 2, 3, 1, 2], [2, 3]], 2) == pytest.approx(3 / 5)
    assert M.distinct_n([[7, 8, 9]], 2) == 1.0
    assert math.isnan(M.distinct_n([[1], []], 2))


def test_sequence_kl_by_hand():
    # log pi = (-1, -2), log ref = (-1.5, -1): k1 = 0.5 - 1 = -0.5
    # k3 = sum(e^d - 1 - d), d = ref - pi = (-0.5, 1): (0.606531 - 0.5) + (2.718282 - 2) = 0.824812
    k1, k3 = M.sequence_kl([-1.0, -2.0], [-1.5, -1.0])
    assert k1 == pytest.approx(-0.5)
    assert k3 == pytest.approx(0.824812, abs=1e-6)
    assert M.sequence_kl([-0.3, -4.0], [-0.3, -4.0]) == (0.0, 0.0)


def test_implicit_reward_accuracy_by_hand():
    # chosen: (-1 - -2) = 1 and (-3 - -3) = 0; rejected: (-2 - -1) = -1 and (-1 - -1) = 0 -> win, tie
    chosen = M.implicit_rewards([[-1.0], [-1.0, -2.0]], [[-2.0], [-1.5, -1.5]])
    rejected = M.implicit_rewards([[-2.0], [-1.0]], [[-1.0], [-1.0]])
    assert chosen == [1.0, 0.0] and rejected == [-1.0, 0.0]
    assert M.pairwise_accuracy(chosen, rejected) == 0.75


# ----------------------------------------------------------------------------------------------
# With models


def hand_run(tmp_path: Path, model: Path, method: str = "sft", **sections) -> Path:
    """A run directory as `workbench train` leaves it: recipe.yaml and model/ (here: the given model)."""
    run = tmp_path / "run"
    shutil.copytree(model, run / "model")
    recipe = {
        "method": method,
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sources": [{"synthetic": {"num_pairs": 200, "seed": 0}}], "eval_split": 0.2, "max_length": 48},
        "eval": {"num_prompts": 12, "samples_per_prompt": 2, "num_pairs": 20, "generation": {"max_new_tokens": 8}},
        "tracking": {"mode": "disabled"},
        "output_dir": str(run),
        **sections,
    }
    write_yaml(run / "recipe.yaml", recipe)
    return run


def test_policy_equal_to_reference_and_baseline(tmp_path, tiny_model):
    """The same weights as reference and baseline: KL exactly 0, preference accuracy 0.5 (all ties), win rate 0.5."""
    run = hand_run(
        tmp_path,
        tiny_model,
        eval={
            "num_prompts": 12,
            "samples_per_prompt": 2,
            "num_pairs": 20,
            "generation": {"max_new_tokens": 8},
            "gold_reward": {"function": VOWEL},
        },
    )
    res = run_ok(["eval", str(run)])
    assert "wrote" in res.stdout
    result = json.loads((run / "eval.json").read_text())
    m, details = result["metrics"], result["details"]
    assert m["kl_to_reference"] == 0.0 and m["kl_to_reference_k1"] == 0.0
    assert m["preference_accuracy"] == 0.5
    assert m["win_rate_vs_baseline"] == 0.5 and details["win_rate_judge"] == "gold"
    assert details["num_pairs"] == 20 and details["num_samples"] == 2 * details["num_prompts"]
    rows = [json.loads(line) for line in (run / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == details["num_samples"]
    from workbench.data.synthetic import vowel_share

    # gold is the rule applied to the decoded response; the means are over exactly these rows
    assert all(r["gold"] == vowel_share(r["response"]) for r in rows)
    assert m["gold_reward_mean"] == pytest.approx(sum(r["gold"] for r in rows) / len(rows))
    assert m["response_length_mean"] == pytest.approx(sum(r["num_tokens"] for r in rows) / len(rows))
    assert m["reward_mean"] is None  # no reward model configured, and none invented
    assert m["reward_mean_stderr"] is None
    # sample sizes, and standard errors clustered by prompt recomputed from the rows
    assert (m["num_prompts"], m["samples_per_prompt"], m["num_pairs"]) == (details["num_prompts"], 2, 20)
    assert [r["sample_index"] for r in rows[:4]] == [0, 1, 0, 1] and {r["prompt_index"] for r in rows[:2]} == {0}
    by_prompt: dict[int, list[float]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_index"], []).append(r["gold"])
    means = [sum(v) / len(v) for v in by_prompt.values()]
    k = len(means)
    sd = math.sqrt(sum((x - sum(means) / k) ** 2 for x in means) / (k - 1))
    assert m["gold_reward_mean_stderr"] == pytest.approx(sd / math.sqrt(k))
    # against itself: every sample ties the baseline's and has zero KL, so those errors are exactly 0
    assert all(r["win"] == 0.5 and r["kl_to_reference"] == 0.0 for r in rows)
    assert m["win_rate_vs_baseline_stderr"] == 0.0 and m["kl_to_reference_stderr"] == 0.0


def forward_sum(model, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt) from one unbatched forward pass: the independent check of the batched path."""
    import torch

    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)))


def test_preference_accuracy_and_kl_measured_exactly(tmp_path, tiny_model, tokenizer):
    """Policy != reference: the batched log-probs equal unbatched forwards, and the metrics follow from them."""
    from workbench.config import ModelConfig
    from workbench.evaluate import eval_inputs, log_probs, quality_metrics, run_recipe, sample_responses
    from workbench.models import load_causal_lm
    from workbench.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    run = hand_run(tmp_path, tiny_model)
    recipe = run_recipe(run)
    inputs = eval_inputs(recipe, tokenizer)
    policy = load_causal_lm(ModelConfig(name_or_path=str(other), dtype="float32"), tokenizer)
    reference = load_causal_lm(ModelConfig(name_or_path=str(tiny_model), dtype="float32"), tokenizer)
    samples = sample_responses(policy, tokenizer, inputs, recipe.eval)
    pol, ref = (
        log_probs(policy, tokenizer, inputs, samples, recipe.eval),
        log_probs(reference, tokenizer, inputs, samples, recipe.eval),
    )

    wins = 0.0
    for k, pair in enumerate(inputs.pairs):
        c = forward_sum(policy, pair.prompt_ids, pair.chosen_ids) - forward_sum(reference, pair.prompt_ids, pair.chosen_ids)
        r = forward_sum(policy, pair.prompt_ids, pair.rejected_ids) - forward_sum(reference, pair.prompt_ids, pair.rejected_ids)
        assert sum(pol.chosen[k]) - sum(ref.chosen[k]) == pytest.approx(c, abs=1e-4)
        wins += 1.0 if c > r else 0.5 if c == r else 0.0
    eos = tokenizer.eos_token_id
    kl_by_hand = [
        forward_sum(policy, inputs.prompt_ids[p], ids) - forward_sum(reference, inputs.prompt_ids[p], ids)
        for p, ids in zip(samples.prompt_index, samples.sampled_ids(eos))
    ]
    m = quality_metrics(samples, pol, ref, None, None)
    assert m["preference_accuracy"] == wins / len(inputs.pairs)
    assert m["kl_to_reference_k1"] == pytest.approx(sum(kl_by_hand) / len(kl_by_hand), abs=1e-4)
    assert m["kl_to_reference"] > 0 and m["win_rate_vs_baseline"] is None


def test_eval_refuses_what_it_cannot_evaluate(tmp_path, tiny_model):
    run = hand_run(tmp_path, tiny_model, method="reward")
    res = run_workbench(["eval", str(run)])
    assert res.returncode == 2 and "is a `reward` run" in res.stderr and "Traceback" not in res.stderr
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("method: reward", "method: dpo"))
    res = run_workbench(["eval", str(run), "--set", "data.eval_split=0.0"])
    assert res.returncode == 2 and "data.eval_split" in res.stderr
    res = run_workbench(["eval", str(tmp_path / "nowhere")])
    assert res.returncode == 2 and "not a run directory" in res.stderr


@pytest.mark.parametrize(
    ("setting", "sentence"),
    [
        ("temperature=0", "set `eval.generation.temperature` > 0"),
        ("top_p=0.9", "set `eval.generation.top_p: 1.0`"),
        ("top_k=20", "set `eval.generation.top_k: 0`"),
    ],
    ids=["greedy", "top_p", "top_k"],
)
def test_eval_refuses_sampling_its_log_probs_do_not_model(tmp_path, tiny_model, setting, sentence):
    """Greedy decoding has no log-probs (KL NaN); top-p / top-k samples are not drawn from the distribution the KL uses."""
    run = hand_run(
        tmp_path,
        tiny_model,
        eval={"num_prompts": 4, "samples_per_prompt": 1, "num_pairs": 4, "generation": {"max_new_tokens": 4}},
    )
    res = run_workbench(["eval", str(run), "--set", f"eval.generation.{setting}"])
    assert res.returncode == 2, (res.stdout + res.stderr)[-2000:]
    assert sentence in res.stderr and "1 problem" in res.stderr and "Traceback" not in res.stderr
    assert not (run / "eval.json").exists()


def test_no_nan_reaches_the_metrics():
    """A response set without a bigram has no distinct-2 (None, not NaN); a non-finite measurement is refused."""
    from workbench.errors import WorkbenchError
    from workbench.evaluate import LogProbs, Samples, quality_metrics, refuse_non_finite

    samples = Samples([0, 1], [[5], []], [True, True], ["a", ""])
    lp = LogProbs([[-1.0, -0.5], [-0.2]], [], [])
    m = quality_metrics(samples, lp, lp, None, None)
    assert m["distinct_2"] is None and m["kl_to_reference"] == 0.0
    one_prompt = quality_metrics(Samples([0, 0], [[5, 6], [7]], [True, False], ["a", "b"]), lp, lp, None, None)
    assert one_prompt["kl_to_reference_stderr"] is None and one_prompt["finished_share"] == 0.5  # one cluster: no spread
    refuse_non_finite(m, "policy")  # every value finite or None
    with pytest.raises(WorkbenchError, match=r"non-finite kl_to_reference, kl_to_reference_stderr"):
        refuse_non_finite({**m, "kl_to_reference": math.inf, "kl_to_reference_stderr": math.nan}, "policy")


def test_quickstart_evaluates_64_distinct_held_out_prompts(tokenizer):
    """The README's comparison has enough evidence: 64 distinct prompts unseen in training, and over 64 held-out pairs."""
    import dataclasses

    from workbench.comparison.recipe import load_comparison, stage_recipe
    from workbench.config import SyntheticSpec, recipe_from_dict
    from workbench.data.synthetic import generate
    from workbench.evaluate import eval_inputs

    comparison = load_comparison("recipes/quickstart.yaml")
    recipe = recipe_from_dict({**stage_recipe(comparison, comparison.stages["sft"], 42), "train": {}}, source="test")
    inputs = eval_inputs(dataclasses.replace(recipe, eval=comparison.eval), tokenizer)
    assert len(inputs.prompts) == 64 == len({tuple(p) for p in inputs.prompt_ids}) and len(inputs.pairs) > 64
    train_prompts = {r["prompt"] for r in generate(recipe.data.sources[0].synthetic)} - {p for p, _, _ in inputs.pair_texts}
    assert not set(inputs.prompts) & train_prompts  # held out by prompt
    # one topic per prompt (the default) keeps the original 80 prompts
    one = list(generate(SyntheticSpec(num_pairs=400, seed=0)))
    assert len({r["prompt"] for r in one}) <= 80 and not any(" and " in r["prompt"] for r in one)
