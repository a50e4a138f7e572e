"""A swept comparison end to end: a DPO beta sweep and a control expand into ordinary stages, train, share one
cached set of reference log-probs, survive a kill -9 midway (finished points cached, the killed one resumed from
its checkpoint) and land in the report's frontier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import kill_when, read_yaml, run_ok, write_yaml

pytestmark = pytest.mark.slow
POINTS = ["dpo@beta=0.03", "dpo@beta=0.3", "dpo@beta=3.0"]


def swept_comparison(tmp_path: Path, model: Path) -> Path:
    train = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_steps": 2, "logging_steps": 1, "save_steps": 100}
    comparison = {
        "name": "swept",
        "output_dir": str(tmp_path / "out"),
        "baseline_stage": "sft",
        "control": True,
        "base": {
            "model": {"name_or_path": str(model), "dtype": "float32"},
            "data": {"sources": [{"synthetic": {"num_pairs": 64, "seed": 0}}], "eval_split": 0.25, "max_length": 48},
            "tracking": {"mode": "disabled"},
        },
        "eval": {
            "num_prompts": 6,
            "samples_per_prompt": 2,
            "bootstrap_samples": 40,
            "generation": {"max_new_tokens": 6, "batch_size": 16},
            "gold_reward": {"function": "workbench.data.synthetic:vowel_reward"},
        },
        "stages": {
            "sft": {"method": "sft", "train": train},
            "dpo": {
                "method": "dpo",
                "model_from": "sft",
                "train": {**train, "max_steps": 4, "save_steps": 2},
                "sweep": {"train.beta": [0.03, 0.3, 3.0]},
            },
        },
    }
    return write_yaml(tmp_path / "swept.yaml", comparison, sort_keys=False)


def test_a_swept_comparison_resumes_after_kill_and_reports_its_frontier(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # a cold cache of reference log-probs
    path = swept_comparison(tmp_path, tiny_model)
    out, seed = tmp_path / "out", tmp_path / "out" / "seed-42"
    listed = run_ok(["validate", str(path)]).stdout
    assert f"  dpo: sweep of train.beta, 3 stages: {', '.join(POINTS)}" in listed
    assert "  sft@control: the control, `sft` trained again with seed + 1000" in listed

    # killed while the second point trains, after its first checkpoint
    kill_when(["compare", str(path)], seed / POINTS[1] / "checkpoints" / "checkpoint-2" / ".complete", timeout=900)
    assert json.loads((seed / POINTS[1] / "stage.json").read_text())["status"] == "running"
    assert not (seed / POINTS[2]).exists()

    second = run_ok(["compare", str(path)], timeout=900).stdout
    for name in ("sft", "sft@control", POINTS[0]):
        assert f"{name} ({'dpo' if '@beta' in name else 'sft'}): cached" in second
    assert f"{POINTS[1]} (dpo): training" in second and f"{POINTS[2]} (dpo): training" in second
    assert "resum" in (seed / POINTS[1] / "stage.log").read_text().lower()

    manifests = {n: json.loads((seed / n / "manifest.json").read_text()) for n in ("sft", "sft@control", *POINTS)}
    assert read_yaml(seed / "sft@control" / "stage_recipe.yaml")["seed"] == 1042
    assert read_yaml(seed / "sft" / "stage_recipe.yaml")["seed"] == 42
    # one set of reference log-probs for the whole sweep: computed by the first point, read from the cache after
    assert manifests[POINTS[0]]["reference_forward_batches_before_training"] > 0
    assert [manifests[n]["reference_forward_batches_before_training"] for n in POINTS[1:]] == [0, 0]

    res = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert [res[n]["sweep"] for n in POINTS] == [{"train.beta": 0.03}, {"train.beta": 0.3}, {"train.beta": 3.0}]
    assert {res[n]["family"] for n in POINTS} == {"dpo"} and all(res[n]["status"] == "ok" for n in POINTS)
    assert res["sft@control"]["control"] == {
        "of": "sft",
        "seed_offset": 1000,
        "how": "trained again with the comparison's seed + 1000",
    }
    assert all(0 <= res[n]["lc_win_rate_vs_baseline"] <= 1 for n in POINTS)
    frontier = json.loads((out / "frontier.json").read_text())
    dpo = next(f for f in frontier["families"] if f["family"] == "dpo")
    assert sorted(p["name"] for p in dpo["points"]) == sorted(POINTS)
    assert [p["kl"] for p in dpo["points"]] == sorted(res[n]["kl_to_reference"] for n in POINTS)
    report = (out / "report.md").read_text()
    assert "Control `sft@control` (`sft` trained again with the comparison's seed + 1000)" in report
    assert "Holm-corrected across 3 policies at 5%" in report  # the control is no claim against the baseline


def test_control_of_a_model_baseline_samples_it_again_with_another_seed(tmp_path, tiny_model):
    """`control: true` with `eval.baseline` (a model, not a stage): the model is sampled again with eval.seed + 1000
    into seed-N/baseline@control/, judged against the baseline's own samples, and reported as a policy row."""
    import shutil

    from test_evaluate import VOWEL, hand_run

    from workbench.comparison.evaluation import evaluate_seed
    from workbench.comparison.types import Comparison, Outcome, Stage, StageRun
    from workbench.config import EvalConfig, GenerationConfig, RewardModelConfig
    from workbench.report import aggregate, write_outputs

    instruct = tmp_path / "instruct"
    shutil.copytree(tiny_model, instruct)
    gen = GenerationConfig(max_new_tokens=6)
    cfg = EvalConfig(baseline=str(instruct), num_prompts=6, samples_per_prompt=2, num_pairs=10, generation=gen,
                     gold_reward=RewardModelConfig(function=VOWEL), bootstrap_samples=40)  # fmt: skip
    stages = {"p1": Stage("p1", {})}
    base = {"model": {"name_or_path": str(instruct)}, "tracking": {"mode": "disabled"}}
    comparison = Comparison("m", tmp_path / "cmp", [0], base, stages, cfg, control=True)
    hand_run(tmp_path / "p1", tiny_model)
    runs = {
        "p1": StageRun(
            stages["p1"], 0, read_yaml(tmp_path / "p1" / "run" / "recipe.yaml"), tmp_path / "p1" / "run", status="completed"
        )
    }
    evaluate_seed(comparison, 0, runs)
    seed_dir = tmp_path / "cmp" / "seed-0"
    base_rows = [json.loads(line) for line in (seed_dir / "baseline" / "eval_samples.jsonl").read_text().splitlines()]
    control_rows = [json.loads(line) for line in (seed_dir / "baseline@control" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(control_rows) == len(base_rows) == 12
    assert [r["response"] for r in control_rows] != [r["response"] for r in base_rows]  # another sampling seed
    outcome = Outcome(comparison, {0: runs})
    outcome.results = aggregate(comparison, outcome.runs)
    write_outputs(comparison, outcome)
    res = {r["name"]: r for r in outcome.results}
    assert list(res) == ["p1", "baseline", "baseline@control"]
    assert res["baseline@control"]["control"] == {
        "of": "baseline",
        "seed_offset": 1000,
        "how": f"sampled again with evaluation seed {cfg.seed} + 1000",
    }
    assert res["baseline@control"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-4)  # the same model as its reference
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert f"Control `baseline@control` (`baseline` sampled again with evaluation seed {cfg.seed} + 1000)" in report


def test_the_reward_model_is_checked_on_the_baseline_models_samples_and_its_controls_pooled_by_prompt(tmp_path):
    """With `eval.baseline` and `control: true`, both sets of the instruct model's held-out responses feed the
    reward-vs-gold check: each prompt's 2 + 2 responses make 6 pairs (those across the two sets included)."""
    from workbench.comparison.types import Comparison, Stage, StageRun
    from workbench.config import EvalConfig, RewardModelConfig
    from workbench.data.pipeline import write_jsonl
    from workbench.report import reward_vs_gold

    cfg = EvalConfig(baseline="instruct", gold_reward=RewardModelConfig(function="workbench.data.synthetic:vowel_reward"))
    comparison = Comparison("m", tmp_path, [0], {}, {}, cfg, reward_stage="reward", control=True)
    # (prompt, gold, reward, tokens)
    rows = {
        "baseline": [(0, 0.9, 2.0, 10), (0, 0.1, 1.0, 20), (1, 0.5, 1.0, 5), (1, 0.4, 0.0, 6)],
        "baseline@control": [(0, 0.8, 0.5, 30), (0, 0.2, 3.0, 40), (1, 0.5, 1.0, 5), (1, 0.3, 0.5, 7)],
    }
    runs = {}
    for name, values in rows.items():
        run = StageRun(Stage(name, {}), 0, {}, tmp_path / name, status="completed")
        run.run_dir.mkdir()
        samples = [{"prompt_index": p, "gold": g, "reward": r, "num_tokens": n} for p, g, r, n in values]
        write_jsonl(run.run_dir / "eval_samples.jsonl", samples)
        run.evaluation = {"gold_reward_mean": 0.0}
        runs[name] = run
    check = reward_vs_gold(comparison, {0: runs})
    assert check["responses_of"] == ["baseline", "baseline@control"]
    # prompt 0: golds .9 .1 .8 .2, rewards 2 1 .5 3: (.9,.1) right, (.9,.8) right, (.9,.2) wrong, (.1,.8) wrong,
    # (.1,.2) right, (.8,.2) wrong -> 3 of 6; prompt 1: golds .5 .4 .5 .3, rewards 1 0 1 .5: the two .5s tie in gold
    # (no pair); (.5,.4) right, (.5,.3) right, (.4,.5) right, (.4,.3) wrong, (.5,.3) right -> 4 of 5
    assert check["num_pairs"] == 11 and check["num_prompts"] == 2
    assert check["accuracy"] == pytest.approx(7 / 11)
    # clustered by prompt: residuals 3 - 6 * 7/11 = -9/11 and 4 - 5 * 7/11 = +9/11, se = sqrt(2 * 162/121) / 11 = 18/121;
    # t(1 df) 12.706205
    assert check["accuracy_interval"] == pytest.approx([7 / 11 - 12.706205 * 18 / 121, 7 / 11 + 12.706205 * 18 / 121])
