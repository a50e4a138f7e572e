"""The comparison report from a finished comparison directory built by hand: sample sizes, clustered errors
recomputed from eval_samples.jsonl, paired differences, health flags next to their policy, the reward model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from workbench import health as H
from workbench.comparison.types import Comparison, Outcome, Stage, StageRun
from workbench.config import EvalConfig, GenerationConfig
from workbench.report import aggregate, fmt, report_markdown, write_outputs

PROMPTS, SAMPLES = 4, 2
SFT_GOLD = [[0.30, 0.40], [0.50, 0.60], [0.20, 0.20], [0.70, 0.50]]  # [prompt][sample]
DPO_SHIFT = [0.10, 0.12, 0.08, 0.10]  # per prompt: mean 0.1, sd 0.01633
PPO_SHIFT = [0.10, -0.10, 0.05, -0.05]  # mean 0: within noise
# PPO's per-update history: reward up, entropy 6 -> 0.5, KL 0 -> 40, explained variance 0 -> -2 (20 updates)
PPO_HISTORY = [
    {
        H.PPO_SCORES: 0.4 + 0.5 * i / 19,
        H.PPO_KL: 40.0 * i / 19,
        H.PPO_ENTROPY: 6.0 - 5.5 * i / 19,
        H.PPO_EV: -2.0 * i / 19,
        H.PPO_FINISHED: 0.4,
        H.PPO_LENGTH: 12.0,
    }
    for i in range(20)
]


def write_stage(
    root: Path,
    name: str,
    method: str,
    gold: list[list[float]],
    finished: bool,
    manifest: dict | None = None,
    seed: int = 1,
    baseline: list[list[float]] = SFT_GOLD,
    kl: float | None = None,
    **extra,
) -> StageRun:
    """A stage's run directory as the comparison leaves it; `gold[prompt][sample]`, wins against `baseline`'s gold,
    KL `kl` for every response (default: 0 for sft, else 1 + prompt index); `manifest` entries over the defaults."""
    run_dir = root / f"seed-{seed}" / name
    run_dir.mkdir(parents=True)
    rows = []
    for p, row in enumerate(gold):
        for s, g in enumerate(row):
            rows.append(
                {
                    "prompt_index": p,
                    "sample_index": s,
                    "num_tokens": 16 if not finished else 6 + p,
                    "finished": finished,
                    "gold": g,
                    "reward": 2 * g,
                    "kl_to_reference": kl if kl is not None else 0.0 if name == "sft" else 1.0 + p,
                    "win": 1.0 if g > baseline[p][s] else 0.5 if g == baseline[p][s] else 0.0,
                }
            )
    (run_dir / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in extra.pop("metrics", [])))
    manifest = {"status": "completed", "wall_seconds": 12.0, "cost": {"train_tokens": 3000}, **(manifest or {})}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    n = len(rows)
    evaluation = {
        "name": name,
        "method": method,
        "gold_reward_mean": sum(r["gold"] for r in rows) / n,
        "reward_mean": sum(r["reward"] for r in rows) / n,
        "win_rate_vs_baseline": sum(r["win"] for r in rows) / n,
        "kl_to_reference": sum(r["kl_to_reference"] for r in rows) / n,
        "response_length_mean": sum(r["num_tokens"] for r in rows) / n,
        "finished_share": sum(r["finished"] for r in rows) / n,
        "distinct_2": 0.8,
        "preference_accuracy": 0.5 if name == "sft" else 0.7,
        "num_prompts": len(gold),
        "samples_per_prompt": len(gold[0]),
        "num_pairs": 50,
        "wall_seconds": manifest["wall_seconds"],
        **{k: manifest["cost"].get(k) for k in ("train_tokens", "generated_tokens")},
    }
    recipe = {"method": method, "train": {}, **extra}
    run = StageRun(Stage(name, {}), seed, recipe, run_dir, status="completed")
    run.evaluation = evaluation
    return run


@pytest.fixture(scope="module")
def finished_comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Comparison, Outcome]:
    tmp_path = tmp_path_factory.mktemp("comparison")
    stages = {n: Stage(n, {}) for n in ("sft", "rm", "dpo", "ppo")}
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=16))
    comparison = Comparison(
        "hand", tmp_path, [1], {"tracking": {"mode": "disabled"}}, stages, cfg, baseline_stage="sft", reward_stage="rm"
    )
    rm_dir = tmp_path / "seed-1" / "rm"
    rm_dir.mkdir(parents=True)
    margins = [0.5] * 26 + [-0.5] * 24  # accuracy 0.52 on 50 pairs: a coin
    (rm_dir / "reward_eval.json").write_text(
        json.dumps({"accuracy": 0.52, "length_baseline_accuracy": 0.6, "num_pairs": 50, "margins": margins})
    )
    (rm_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval/accuracy": 0.55}) + "\n")
    rm = StageRun(stages["rm"], 1, {"method": "reward"}, rm_dir, status="completed")
    dpo_gold = [[g + DPO_SHIFT[p] for g in row] for p, row in enumerate(SFT_GOLD)]
    ppo_gold = [[g + PPO_SHIFT[p] for g in row] for p, row in enumerate(SFT_GOLD)]
    ev_lines = [{"step": i, "train/val/explained_variance": v} for i, v in enumerate([0.1, -0.2, -0.4, -0.6])]
    diagnosis = H.ppo_diagnosis(PPO_HISTORY, 0, 10.0, 16)  # what PPO wrote to its manifest at the end of its run
    runs = {
        1: {
            "sft": write_stage(tmp_path, "sft", "sft", SFT_GOLD, True),
            "rm": rm,
            "dpo": write_stage(tmp_path, "dpo", "dpo", dpo_gold, True),
            "ppo": write_stage(
                tmp_path,
                "ppo",
                "ppo",
                ppo_gold,
                False,
                manifest={"diagnosis": diagnosis},
                metrics=ev_lines,
                reward_model={"name_or_path": str(rm_dir / "model")},
            ),
        }
    }
    outcome = Outcome(comparison, runs)
    outcome.results = aggregate(comparison, runs)
    write_outputs(comparison, outcome)
    return comparison, outcome


def test_results_carry_sizes_clustered_errors_and_paired_intervals(finished_comparison):
    comparison, _ = finished_comparison
    res = {r["name"]: r for r in json.loads((comparison.output_dir / "results.json").read_text())}
    assert all((r["num_prompts"], r["samples_per_prompt"], r["num_pairs"]) == (4, 2, 50) for r in res.values())
    # clustered stderr of sft's gold reward, recomputed from eval_samples.jsonl: prompt means 0.35, 0.55, 0.2, 0.6
    rows = [
        json.loads(line) for line in (comparison.output_dir / "seed-1" / "sft" / "eval_samples.jsonl").read_text().splitlines()
    ]
    means = [sum(r["gold"] for r in rows if r["prompt_index"] == p) / SAMPLES for p in range(PROMPTS)]
    assert means == pytest.approx([0.35, 0.55, 0.2, 0.6])
    m = sum(means) / 4
    assert res["sft"]["gold_reward_mean_stderr"] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in means) / 3) / 2)
    # dpo - sft per prompt: 0.10, 0.12, 0.08, 0.10 -> mean 0.1, se 0.016330 / 2, t(3) = 3.182446
    d = res["dpo"]["vs_baseline"]["gold_reward_mean"]
    assert d["difference"] == pytest.approx(0.1) and d["stderr"] == pytest.approx(0.0081650, abs=1e-6)
    assert d["low"] == pytest.approx(0.1 - 3.182446 * 0.0081650, abs=1e-5)
    assert res["ppo"]["vs_baseline"]["gold_reward_mean"]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert "vs_baseline" in res["sft"] and res["sft"]["vs_baseline"] == {}
    assert res["ppo"]["finished_share"] == 0.0 and res["dpo"]["finished_share"] == 1.0


def test_health_flags_sit_next_to_their_policy(finished_comparison):
    comparison, _ = finished_comparison
    res = {r["name"]: r for r in json.loads((comparison.output_dir / "results.json").read_text())}
    manifest = json.loads((comparison.output_dir / "seed-1" / "ppo" / "manifest.json").read_text())
    assert [f["code"] for f in manifest["diagnosis"]] == ["value_not_learning", "entropy_collapse", "kl_high"]
    # PPO's own end-of-run diagnosis, word for word as in its manifest, and no second explained-variance check
    assert res["ppo"]["health"] == [
        {"code": "length_cap", "message": res["ppo"]["health"][0]["message"]},
        *manifest["diagnosis"],
        {"code": "weak_reward_model", "message": res["ppo"]["health"][-1]["message"]},
    ]
    assert res["dpo"]["health"] == [] and res["sft"]["health"] == []  # dpo trained without the reward model
    report = (comparison.output_dir / "report.md").read_text()
    assert report.startswith("# Comparison: hand\n\n## Findings")
    assert "4 held-out prompts × 2 samples" in report and "50 held-out preference pairs" in report
    beat = next(line for line in report.splitlines() if line.startswith("- **Beat `sft`**"))
    noise = next(line for line in report.splitlines() if line.startswith("- **Within noise**"))
    assert "`dpo` +0.100 [+0.074, +0.126]" in beat and "`ppo`" in noise and "ppo" not in beat
    assert "- ⚠ `ppo` — **length_cap**: only 0% of responses end before the 16-token cap" in report
    assert "| ppo ⚠ | ppo | 4 × 2, 50 |" in report and "| dpo | dpo | 4 × 2, 50 |" in report
    assert "## Reward model (`rm`)" in report and "| 50 | 0.520 | 0.600 | 0.5 ± 0.139 | 0.550 |" in report
    assert "48% of pairs ranked the wrong way" in report
    # the baseline's own zero KL is not "best"; dpo's 2.500 is
    sft_row = next(line for line in report.splitlines() if line.startswith("| sft |"))
    assert "**0.000" not in sft_row and "**2.500 ±" in next(line for line in report.splitlines() if line.startswith("| dpo |"))
    for png in ("reward_vs_kl.png", "win_rate.png", "difference_vs_baseline.png", "response_lengths.png", "reward_margins.png"):
        assert (comparison.output_dir / png).read_bytes()[:4] == b"\x89PNG"
    csv_head, ppo_row = (comparison.output_dir / "results.csv").read_text().splitlines()[0::3][:2]
    assert "gold_reward_mean_stderr" in csv_head
    assert ppo_row.endswith("length_cap value_not_learning entropy_collapse kl_high weak_reward_model")
    assert report.count("**value_not_learning**") == 1 and "**entropy_collapse**: reward rose while entropy" in report


def test_integers_print_as_integers():
    assert fmt(3000.0) == "3,000" and fmt(16.0) == "16" and fmt(12) == "12" and fmt(0.5) == "0.500"
    assert fmt(0.25, 0.01) == "0.250 ± 0.010" and fmt(None) == "-" and fmt(float("nan")) == "-"


# ----------------------------------------------------------------------------------------------
# Several seeds: verdicts that account for the seed-to-seed variance


def seeded_comparison(root: Path, shifts: list[list[float]]) -> tuple[Comparison, Outcome, dict[str, dict]]:
    """sft and dpo on len(shifts) seeds with one sample per prompt; dpo's gold is sft's plus shifts[seed][prompt]."""
    base = [[0.1 * (p % 5)] for p in range(len(shifts[0]))]
    seeds = list(range(1, len(shifts) + 1))
    stages = {n: Stage(n, {}) for n in ("sft", "dpo")}
    comparison = Comparison("seeds", root, seeds, {"tracking": {"mode": "disabled"}}, stages, EvalConfig(), baseline_stage="sft")
    runs = {}
    for seed, shift in zip(seeds, shifts):
        gold = [[g + shift[p] for g in row] for p, row in enumerate(base)]
        runs[seed] = {
            "sft": write_stage(root, "sft", "sft", base, True, seed=seed, baseline=base),
            "dpo": write_stage(root, "dpo", "dpo", gold, True, seed=seed, baseline=base),
        }
    outcome = Outcome(comparison, runs)
    outcome.results = aggregate(comparison, runs)
    return comparison, outcome, {r["name"]: r for r in outcome.results}


def verdict_line(report: str, start: str) -> str:
    return next((line for line in report.splitlines() if line.startswith(start)), "")


E32 = [0.02 if p % 2 == 0 else -0.02 for p in range(32)]  # a prompt effect on the difference, mean 0


def test_two_seeds_of_opposite_sign_are_no_winner(tmp_path):
    """Issue 25 item 5: +0.5 on one seed, -0.3 on the other, 32 prompts. Seeds pooled in prompt clusters gave
    `dpo +0.100 [+0.093, +0.107]` under Beat; the seed variance component (0.32, from the seed means) now enters
    the interval, on t with Satterthwaite's ~1 df, and a method whose seeds disagree in sign is named as such, never a
    winner."""
    comparison, outcome, res = seeded_comparison(tmp_path, [[0.5 + e for e in E32], [-0.3 + e for e in E32]])
    d = res["dpo"]["vs_baseline"]["gold_reward_mean"]
    se = math.sqrt(0.0128 / 31 / 32 + 0.32 / 2)  # s^2(prompt means) / 32 + seed component / 2
    assert d["difference"] == pytest.approx(0.1) and d["stderr"] == pytest.approx(se)
    ms_seed, ms_prompt = 32 * 0.32, 2 * 0.0128 / 31
    q = t_ppf((ms_seed + ms_prompt) ** 2 / (ms_seed**2 + ms_prompt**2 / 31))  # df 1.00016: 12.70
    assert (d["low"], d["high"]) == pytest.approx((0.1 - q * se, 0.1 + q * se), abs=1e-6)
    assert d["interval"] == "seeds and prompts" and d["per_seed"] == pytest.approx([0.5, -0.3])
    report = report_markdown(comparison, outcome, {})
    assert verdict_line(report, "- **Beat `sft`**").endswith("none")
    assert "`dpo` +0.100 [-4.981, +5.181] (seeds +0.500, -0.300)" in verdict_line(report, "- **Seeds disagree**")
    assert "seed variance component" in report and "Satterthwaite degrees of freedom" in report


def t_ppf(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def test_three_seeds_that_agree_beat_the_baseline(tmp_path):
    """+0.10, +0.12, +0.11 on 32 prompts: seed component 0.0001; MS_seed 0.0032 (2 df), MS_prompt 3 x 0.0128 / 31
    (31 df): Satterthwaite df 3.8, t 2.83: [+0.091, +0.129], above zero."""
    _, outcome, res = seeded_comparison(tmp_path, [[m + e for e in E32] for m in (0.10, 0.12, 0.11)])
    d = res["dpo"]["vs_baseline"]["gold_reward_mean"]
    se = math.sqrt(0.0128 / 31 / 32 + 0.0001 / 3)
    ms_seed, ms_prompt = 32 * 0.0001, 3 * 0.0128 / 31
    df = (ms_seed + ms_prompt) ** 2 / (ms_seed**2 / 2 + ms_prompt**2 / 31)  # 3.811
    assert d["stderr"] == pytest.approx(se) and d["low"] == pytest.approx(0.11 - t_ppf(df) * se, abs=1e-6)
    report = report_markdown(outcome.comparison, outcome, {})
    assert "`dpo` +0.110 [+0.091, +0.129]" in verdict_line(report, "- **Beat `sft`**")
    assert "Seeds disagree" not in report


def test_an_interval_above_zero_with_one_seed_below_is_no_winner(tmp_path):
    """Five seeds: four +0.5 and one -0.01. Seed means 0.5 x 4, -0.01: mean 0.398, sd 0.228, t(4): [+0.115, +0.681]
    lies above zero, but one seed lost: listed as seeds disagree."""
    _, outcome, res = seeded_comparison(tmp_path, [[m + e for e in E32[:4]] for m in (0.5, 0.5, 0.5, 0.5, -0.01)])
    d = res["dpo"]["vs_baseline"]["gold_reward_mean"]
    assert d["low"] > 0 and d["per_seed"] == pytest.approx([0.5, 0.5, 0.5, 0.5, -0.01])
    report = report_markdown(outcome.comparison, outcome, {})
    assert verdict_line(report, "- **Beat `sft`**").endswith("none") and "`dpo`" in verdict_line(report, "- **Seeds disagree**")


# ----------------------------------------------------------------------------------------------
# The reward model's coin test counts distinct held-out pairs


def rm_seeds(root: Path, fingerprints: list[str], num_pairs: int = 100, right: int = 56) -> tuple[Comparison, dict]:
    """A reward stage and a PPO policy trained on it, per seed; each seed's reward model ranks `right` of the same
    `num_pairs` held-out pairs right (which ones differs by seed), its pairs named by `fingerprints[seed]`."""
    seeds = list(range(1, len(fingerprints) + 1))
    stages = {n: Stage(n, {}) for n in ("sft", "rm", "ppo")}
    comparison = Comparison("rm", root, seeds, {}, stages, EvalConfig(), baseline_stage="sft", reward_stage="rm")
    runs: dict[int, dict] = {}
    for seed, fp in zip(seeds, fingerprints):
        rm_dir = root / f"seed-{seed}" / "rm"
        rm_dir.mkdir(parents=True)
        margins = [0.5 if (i + 7 * seed) % num_pairs < right else -0.5 for i in range(num_pairs)]
        saved = {"accuracy": right / num_pairs, "length_baseline_accuracy": 0.5, "num_pairs": num_pairs, "margins": margins}
        (rm_dir / "reward_eval.json").write_text(json.dumps({**saved, "inputs_fingerprint": fp}))
        runs[seed] = {
            "sft": write_stage(root, "sft", "sft", SFT_GOLD, True, seed=seed),
            "rm": StageRun(stages["rm"], seed, {"method": "reward"}, rm_dir, status="completed"),
            "ppo": write_stage(
                root, "ppo", "ppo", SFT_GOLD, True, seed=seed, reward_model={"name_or_path": str(rm_dir / "model")}
            ),
        }
    return comparison, runs


def test_the_coin_test_counts_each_held_out_pair_once(tmp_path):
    """Issue 25 item 6: 3 seeds on the same 100 pairs counted n = 300, so accuracy 0.56 (within 0.098 of a coin on
    100 pairs, beyond 0.057 on 300) was flagged with 1 seed and not with 3. Each pair's accuracy is now averaged over
    the seeds and n is the 100 distinct pairs."""
    from workbench.report import reward_model_summary

    comparison, runs = rm_seeds(tmp_path, ["same", "same", "same"])
    rm = reward_model_summary(comparison, runs)
    assert (rm["num_pairs"], rm["num_seeds"]) == (100, 3) and rm["accuracy"] == pytest.approx(0.56)
    res = {r["name"]: r for r in aggregate(comparison, runs)}
    weak = [f for f in res["ppo"]["health"] if f["code"] == "weak_reward_model"]
    assert len(weak) == 1 and "0.560 on 100 pairs is within noise of 0.5 (±0.098)" in weak[0]["message"]
    # seeds evaluated on different pairs: those are distinct pairs, and they add up
    other, other_runs = rm_seeds(tmp_path / "other", ["a", "b", "c"])
    assert reward_model_summary(other, other_runs)["num_pairs"] == 300
    assert not [f for r in aggregate(other, other_runs) for f in r["health"] if f["code"] == "weak_reward_model"]
    # the report's table: 100 distinct pairs, a coin's 95% band for 100 pairs, each seed's margins in the quantiles
    report = report_markdown(comparison, Outcome(comparison, runs, list(res.values())), {}, rm)
    assert "| 100 (each scored by 3 seeds' models) | 0.560 | 0.500 | 0.5 ± 0.098 | - |" in report
    assert "44% of the 300 scored pairs ranked the wrong way" in report
    # each pair's accuracy is its mean over the seeds (pairs ranked right by one seed of two count 0.5)
    two = rm_seeds(tmp_path / "two", ["x", "x"], num_pairs=10, right=5)
    assert reward_model_summary(*two)["accuracy"] == pytest.approx(0.5) and reward_model_summary(*two)["num_pairs"] == 10


def test_every_seed_is_evaluated_on_the_same_held_out_pairs(tmp_path, tokenizer):
    """The split is by content (a stable hash of the prompt or pair), not by seed: the seeds' held-out pairs are the
    same, reward_eval.json records them by fingerprint, and the report counts them once."""
    import dataclasses

    from workbench.comparison.evaluation import evaluate_reward_model
    from workbench.comparison.recipe import load_comparison, stage_recipe
    from workbench.config import RewardModelConfig, recipe_from_dict
    from workbench.evaluate import eval_inputs
    from workbench.report import reward_model_summary

    quick = load_comparison("recipes/quickstart.yaml")
    comparison = dataclasses.replace(
        quick, seeds=[1, 2, 3], output_dir=tmp_path, eval=dataclasses.replace(quick.eval, num_pairs=40)
    )
    cfg = dataclasses.replace(comparison.eval, reward_model=RewardModelConfig(function="workbench.data.synthetic:vowel_reward"))
    runs: dict[int, dict] = {}
    for seed in comparison.seeds:
        recipe = recipe_from_dict({**stage_recipe(comparison, comparison.stages["sft"], seed), "train": {}}, source="test")
        inputs = eval_inputs(dataclasses.replace(recipe, eval=cfg), tokenizer)
        stage = comparison.stages["reward"]
        runs[seed] = {
            "reward": StageRun(stage, seed, {"method": "reward"}, tmp_path / f"seed-{seed}" / "reward", status="completed")
        }
        runs[seed]["reward"].run_dir.mkdir(parents=True)
        evaluate_reward_model(comparison, runs[seed], cfg, inputs, seed)
    saved = [json.loads((tmp_path / f"seed-{s}" / "reward" / "reward_eval.json").read_text()) for s in comparison.seeds]
    assert len({s["inputs_fingerprint"] for s in saved}) == 1 and saved[0]["inputs_fingerprint"] == inputs.fingerprint
    assert all(s["num_pairs"] == 40 and s["margins"] == saved[0]["margins"] for s in saved)
    rm = reward_model_summary(comparison, runs)
    assert (rm["num_pairs"], rm["num_seeds"]) == (40, 3) and rm["accuracy"] == pytest.approx(saved[0]["accuracy"])


# ----------------------------------------------------------------------------------------------
# Findings that do not mislead (issue 30 item 3)


def one_seed(root: Path, policies: dict[str, dict], **cfg) -> tuple[dict[str, dict], str]:
    """`sft` (the baseline) and the given policies (write_stage keyword arguments) on seed 1: results and report.md."""
    stages = {n: Stage(n, {}) for n in ("sft", *policies)}
    comparison = Comparison("f", root, [1], {}, stages, EvalConfig(**cfg), baseline_stage="sft")
    runs = {1: {"sft": write_stage(root, "sft", "sft", SFT_GOLD, True)}}
    for name, kw in policies.items():
        runs[1][name] = write_stage(root, name, kw.pop("method", "dpo"), **{"finished": True, **kw})
    outcome = Outcome(comparison, runs)
    outcome.results = aggregate(comparison, runs)
    return {r["name"]: r for r in outcome.results}, report_markdown(comparison, outcome, {})


DPO_GOLD = [[g + DPO_SHIFT[p] for g in row] for p, row in enumerate(SFT_GOLD)]


def test_a_policy_that_did_not_move_reads_unchanged(tmp_path):
    """Its responses are the baseline's (KL 0, every paired difference exactly 0): it read "within noise"."""
    res, report = one_seed(tmp_path, {"dpo": {"gold": DPO_GOLD}, "idle": {"gold": SFT_GOLD, "kl": 0.0}})
    assert [f["code"] for f in res["idle"]["health"]] == ["no_change"] and res["dpo"]["health"] == []
    assert res["idle"]["health"][0]["message"].startswith(
        "every paired difference from `sft` is exactly 0 (reward, gold reward, KL, length): the policy is unchanged"
    )
    assert verdict_line(report, "- **Unchanged** (did it train?)").endswith(": `idle`")
    assert verdict_line(report, "- **Within noise**").endswith("none") and "- ⚠ `idle` — **no_change**" in report
    # a policy that moved a little (KL 0.01 per response) is not unchanged, even with the same gold scores
    res, _ = one_seed(tmp_path / "moved", {"nudged": {"gold": SFT_GOLD, "kl": 0.01}})
    assert res["nudged"]["health"] == []


LOUD_SHIFT = [0.15, -0.10, 0.05, -0.05]  # mean +0.0125: the highest gold mean, within noise


def test_nobody_is_crowned_when_nothing_beat_the_baseline(tmp_path):
    loud = [[g + LOUD_SHIFT[p] for g in row] for p, row in enumerate(SFT_GOLD)]
    res, report = one_seed(tmp_path, {"ppo": {"gold": loud, "finished": False}})
    assert res["ppo"]["gold_reward_mean"] > res["sft"]["gold_reward_mean"] and res["ppo"]["health"]
    assert verdict_line(report, "- **Beat `sft`**").endswith("none") and "The highest" not in report
    # a flagged policy that does beat the baseline with the highest mean is still called out
    _, report = one_seed(tmp_path / "beat", {"dpo": {"gold": DPO_GOLD, "finished": False}})
    assert "⚠ The highest gold reward belongs to `dpo`, which is flagged below" in report


def test_findings_say_what_is_compared_and_warn_of_unequal_budgets(tmp_path):
    ppo_cost = {"wall_seconds": 60.0, "cost": {"train_tokens": 3000, "generated_tokens": 20000}}
    _, report = one_seed(tmp_path, {"dpo": {"gold": DPO_GOLD}, "ppo": {"gold": SFT_GOLD, "manifest": ppo_cost}})
    assert (
        "What is compared: 1 seed (1). Each policy is trained by its own stage with its method's own settings "
        "(`stages.NAME.train`: learning rate, steps and batch differ per method). Training budget of each policy's "
        "own stage (the baseline `sft` not counted): `dpo` 3,000 train tokens, - generated, 12 s; "
        "`ppo` 3,000 train tokens, 20,000 generated, 60 s." in report
    )
    assert (
        "⚠ **budget_mismatch**: training budgets differ by more than 2×: tokens (trained + generated) from 3,000 "
        "(`dpo`) to 23,000 (`ppo`), 7.7×" in report
    )
    assert "wall seconds from 12 (`dpo`) to 60 (`ppo`), 5.0×" in report
    _, report = one_seed(tmp_path / "equal", {"dpo": {"gold": DPO_GOLD}, "kto": {"gold": SFT_GOLD}})
    assert "budget_mismatch" not in report and "`kto` 3,000 train tokens, - generated, 12 s." in report


def test_fewer_held_out_prompts_than_asked_is_said(tmp_path):
    """`eval.num_prompts: 16` on a split of 4 distinct prompts evaluated 4 without a word."""
    _, report = one_seed(tmp_path, {"dpo": {"gold": DPO_GOLD}}, num_prompts=16, num_pairs=50)
    assert (
        "⚠ **eval_shortfall**: `eval.num_prompts` asks for 16 but the data's eval split gives only 4: the evaluation "
        "uses 4 (raise `data.eval_split` or lower `eval.num_prompts`)" in report
    )
    assert "`eval.num_pairs`" not in report  # 50 asked, 50 held out
    _, report = one_seed(tmp_path / "enough", {"dpo": {"gold": DPO_GOLD}}, num_prompts=4, num_pairs=50)
    assert "eval_shortfall" not in report
