"""`workbench compare`: the quickstart pipeline end to end, stage caching, failure isolation, recipe checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import read_yaml, run_ok, run_workbench, write_yaml

DPO_SWEEP = ["dpo@beta=0.5", "dpo@beta=2.0", "dpo@beta=8.0"]
PPO_SWEEP = ["ppo@kl_coef=0.01", "ppo@kl_coef=0.05", "ppo@kl_coef=0.2"]
POLICIES = ["sft", *DPO_SWEEP, "dpo_rpo", "rejection_sampling", *PPO_SWEEP, "grpo", "kto"]
DPO = "dpo@beta=2.0"  # the quickstart's DPO setting before the sweep


def results(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / "results.json").read_text())}


def wandb_run_record(run_dir: Path) -> dict:
    """The run record (group, job type, ...) of the first offline W&B run in `run_dir`."""
    log = sorted(run_dir.glob("wandb/offline-run-*/*.wandb"))[0]
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(log)], capture_output=True, text=True, timeout=120, check=True
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return next(r["run"] for r in records if r.get("type") == "run")


@pytest.mark.slow
def test_quickstart_comparison_end_to_end(tmp_path, tiny_model):
    """The README's main job: every aligned policy beats SFT on the gold rule (a DPO sweep's weakest regularisation
    aside), the sweeps trace frontiers (KL falls as beta / kl_coef grow); report, plots, CSV and W&B are written; a
    rerun skips every stage; changing KTO reruns KTO alone."""
    out = tmp_path / "quickstart"
    args = ["compare", "recipes/quickstart.yaml", "--set", f"base.model.name_or_path={tiny_model}", "--set", f"output_dir={out}"]
    first = run_ok(args, timeout=1200)
    res = results(out)
    assert list(res) == POLICIES and all(r["status"] == "ok" for r in res.values())
    sft = res["sft"]
    # the baseline against itself: identical samples and log-probs
    assert sft["win_rate_vs_baseline"] == 0.5 and sft["kl_to_reference"] == 0.0 and sft["preference_accuracy"] == 0.5
    for name in POLICIES[1:]:
        assert res[name]["kl_to_reference"] > 0 and res[name]["train_tokens"] > 0 and res[name]["peak_memory_mb"] > 0
    for sweep in (DPO_SWEEP, PPO_SWEEP):  # stronger regularisation, closer to the reference
        kls = [res[n]["kl_to_reference"] for n in sweep]
        assert kls == sorted(kls, reverse=True), kls
    for name in [n for n in POLICIES[1:] if n != DPO_SWEEP[0]]:  # beta 0.5 drifts far (KL ~12) and loses gold reward
        assert res[name]["gold_reward_mean"] > sft["gold_reward_mean"], (
            name,
            res[name]["gold_reward_mean"],
            sft["gold_reward_mean"],
        )
    assert all(res[n]["generated_tokens"] > 0 for n in PPO_SWEEP)
    assert all(json.loads((out / "seed-42" / n / "manifest.json").read_text())["reference_forward_batches_before_training"] == 0
               for n in DPO_SWEEP[1:])  # fmt: skip  # the sweep's reference log-probs: computed once, then cached
    frontier = json.loads((out / "frontier.json").read_text())
    families = {f["family"]: [p["name"] for p in f["points"]] for f in frontier["families"]}
    assert sorted(families["dpo"]) == sorted(DPO_SWEEP) and sorted(families["ppo"]) == sorted(PPO_SWEEP)
    assert any({m["a"], m["b"]} == {"ppo", "grpo"} for m in frontier["matched_kl"])
    assert res["grpo"]["lc_win_rate_vs_baseline"] is not None
    assert res["rejection_sampling"]["generated_tokens"] > 0

    # enough evidence, stated: 64 distinct held-out prompts x 4 samples for every policy
    for r in res.values():
        assert (r["num_prompts"], r["samples_per_prompt"]) == (64, 4) and r["num_pairs"] > 64
        # a length-capped policy is flagged, and only then
        assert ("length_cap" in [f["code"] for f in r["health"]]) == (r["finished_share"] < 0.5), r["name"]
    rows = [json.loads(line) for line in (out / "seed-42" / DPO / "eval_samples.jsonl").read_text().splitlines()]
    assert len(rows) == 256 and len({r["prompt_index"] for r in rows}) == 64
    means = [sum(r["gold"] for r in rows if r["prompt_index"] == p) / 4 for p in range(64)]
    m = sum(means) / 64
    assert res[DPO]["gold_reward_mean_stderr"] == pytest.approx((sum((x - m) ** 2 for x in means) / 63) ** 0.5 / 8)
    d = res[DPO]["vs_baseline"]["gold_reward_mean"]
    assert d["low"] < d["difference"] < d["high"] and d["difference"] == pytest.approx(
        res[DPO]["gold_reward_mean"] - sft["gold_reward_mean"]
    )
    report = (out / "report.md").read_text()
    assert report.split("\n")[2] == "## Findings" and "64 held-out prompts × 4 samples" in report
    assert "## Reward model (`reward`)" in report and "length-only rule" in report
    # the RM against the gold on SFT's held-out responses: recomputed from its eval_samples by hand
    sft_rows = [json.loads(line) for line in (out / "seed-42" / "sft" / "eval_samples.jsonl").read_text().splitlines()]
    pairs = [
        (a, b)
        for a in sft_rows
        for b in sft_rows
        if a["prompt_index"] == b["prompt_index"] and a["sample_index"] < b["sample_index"] and a["gold"] != b["gold"]
    ]
    agree = [
        0.5 if a["reward"] == b["reward"] else float((a["reward"] - b["reward"]) * (a["gold"] - b["gold"]) > 0) for a, b in pairs
    ]
    check = json.loads((out / "reward_vs_gold.json").read_text())
    assert check["num_pairs"] == len(pairs) > 64 and check["accuracy"] == pytest.approx(sum(agree) / len(pairs))
    assert f"of {len(pairs)} pairs of responses to the same prompt whose gold rewards differ" in report
    assert "### At matched KL" in report and "Holm-corrected across 10 policies at 5%" in report
    pngs = ["reward_vs_kl.png", "win_rate.png", "difference_vs_baseline.png", "response_lengths.png", "best_of_n.png"]
    pngs.append("reward_margins.png")
    for png in pngs:
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| reward | reward | completed |" in report  # the reward model's cost is in the stage table
    best_gold = max(res.values(), key=lambda r: r["gold_reward_mean"])["name"]
    gold_row = next(line for line in report.splitlines() if line.startswith(f"| {best_gold} "))
    assert f"**{res[best_gold]['gold_reward_mean']:.3f} ± {res[best_gold]['gold_reward_mean_stderr']:.3f}**" in gold_row
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + len(POLICIES) and "win_rate_vs_baseline" in rows[0]

    # W&B: one run per stage, grouped by the comparison, job type = method; a summary run with the table
    record = wandb_run_record(out / "seed-42" / DPO)
    assert record["run_group"] == "quickstart" and record["job_type"] == "dpo"
    assert wandb_run_record(out / "seed-42" / "reward")["job_type"] == "reward"
    assert list(out.glob("wandb/offline-run-*/files/media/table/results_*.table.json"))

    stages = len(POLICIES) + 1  # every policy and the reward model
    again = run_ok(args, timeout=600)
    assert again.stdout.count(": cached, fingerprint") == stages and again.stdout.count("evaluation cached") == len(POLICIES)
    same = {n: {k: v for k, v in r.items() if k != "per_seed"} for n, r in results(out).items()}
    assert same == {n: {k: v for k, v in r.items() if k != "per_seed"} for n, r in res.items()}
    assert all(s["status"] == "cached" for r in results(out).values() for s in r["per_seed"])

    changed = run_ok([*args, "--set", "stages.kto.train.beta=1.0"], timeout=600)
    assert "kto (kto): training" in changed.stdout and changed.stdout.count(": cached, fingerprint") == stages - 1
    assert changed.stdout.count("evaluation cached") == len(POLICIES) - 1
    assert results(out)["kto"]["gold_reward_mean"] != res["kto"]["gold_reward_mean"]
    assert first.stdout.count("training in") == stages


BOOM = """
def boom(prompts, completions, **kwargs):
    raise RuntimeError("the reward server is down")
"""


def small_comparison(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "bad_reward.py").write_text(BOOM)
    train = {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_steps": 3, "logging_steps": 1, "save_steps": 100}
    comparison = {
        "name": "small",
        "output_dir": str(tmp_path / "out"),
        "baseline_stage": "sft",
        "base": {
            "model": {"name_or_path": str(model), "dtype": "float32"},
            "data": {"sources": [{"synthetic": {"num_pairs": 96, "seed": 0}}], "eval_split": 0.25, "max_length": 48},
            "generation": {"max_new_tokens": 8, "batch_size": 16},
            "tracking": {"mode": "disabled"},
        },
        "eval": {
            "num_prompts": 8,
            "generation": {"max_new_tokens": 8},
            "gold_reward": {"function": "workbench.data.synthetic:vowel_reward"},
        },
        "stages": {
            "sft": {"method": "sft", "train": train},
            "dpo": {"method": "dpo", "model_from": "sft", "train": {**train, "max_steps": 2}},
            "bad": {
                "method": "ppo",
                "model_from": "sft",
                "reward_model": {"function": f"{tmp_path / 'bad_reward.py'}:boom"},
                "train": {"max_steps": 1, "per_device_train_batch_size": 4},
            },
            "after_bad": {"method": "dpo", "model_from": "bad", "train": {**train, "max_steps": 1}},
        },
    }
    return write_yaml(tmp_path / "small.yaml", comparison, sort_keys=False)


def started(out: Path, stage: str) -> str:
    return (
        json.loads((out / "seed-42" / stage / "manifest.json").read_text())["started_at"]
        + (out / "seed-42" / stage / "stage.json").read_text()
    )


def test_failed_stage_is_reported_and_a_changed_stage_reruns_downstream(tmp_path, tiny_model):
    path = small_comparison(tmp_path, tiny_model)
    out = tmp_path / "out"
    first = run_workbench(["compare", str(path)], timeout=900)
    assert first.returncode == 1, first.stderr[-3000:]
    res = results(out)
    assert res["sft"]["status"] == "ok" and res["dpo"]["status"] == "ok"
    assert res["bad"]["status"] == "failed" and "the reward server is down" in res["bad"]["errors"][0]
    assert res["after_bad"]["status"] == "skipped" and "needs stage bad" in res["after_bad"]["errors"][0]
    report = (out / "report.md").read_text()
    assert "## Failed or skipped stages" in report and "the reward server is down" in report
    # where it is: stage i/n with the elapsed time
    assert "[seed 42 | stage 1/4 | 0:" in first.stdout and "| stage 4/4 |" in first.stdout
    # sample sizes, and the clustered stderr recomputed from the samples (one sample per prompt: the plain sd / sqrt(n))
    assert (res["dpo"]["num_prompts"], res["dpo"]["samples_per_prompt"]) == (8, 1) and res["dpo"]["num_pairs"] > 0
    assert f"evaluating 2 policies on 8 held-out prompts x 1 samples and {res['dpo']['num_pairs']} held-out pairs" in first.stdout
    rows = [json.loads(line) for line in (out / "seed-42" / "dpo" / "eval_samples.jsonl").read_text().splitlines()]
    gold = [r["gold"] for r in rows]
    assert len(gold) == 8 and len({r["prompt_index"] for r in rows}) == 8
    mean = sum(gold) / 8
    assert res["dpo"]["gold_reward_mean_stderr"] == pytest.approx((sum((g - mean) ** 2 for g in gold) / 7) ** 0.5 / 8**0.5)
    # 8 new tokens are too few for a barely trained policy to finish: flagged, next to the policy
    assert res["dpo"]["finished_share"] < 0.5 and "length_cap" in [f["code"] for f in res["dpo"]["health"]]
    assert f"| dpo ⚠ | dpo | 8 × 1, {res['dpo']['num_pairs']} |" in report and "- ⚠ `dpo` — **length_cap**" in report
    before = {s: started(out, s) for s in ("sft", "dpo")}

    # a change to `sft` reruns it and `dpo`, which starts from it
    second = run_workbench(["compare", str(path), "--set", "stages.sft.train.max_steps=4"], timeout=900)
    assert second.returncode == 1
    assert "sft (sft): training" in second.stdout and "dpo (dpo): training" in second.stdout
    assert "(last run took" in second.stdout and "; ETA ~" in second.stdout  # an ETA from the stage's previous run
    assert all(started(out, s) != before[s] for s in ("sft", "dpo"))
    assert results(out)["sft"]["train_tokens"] > res["sft"]["train_tokens"]  # 4 steps instead of 3

    # a change to `dpo` alone leaves `sft` (and its evaluation) as they were
    after = {s: started(out, s) for s in ("sft", "dpo")}
    third = run_workbench(
        ["compare", str(path), "--set", "stages.sft.train.max_steps=4", "--set", "stages.dpo.train.beta=0.5"], timeout=900
    )
    assert "sft (sft): cached" in third.stdout and "dpo (dpo): training" in third.stdout
    assert started(out, "sft") == after["sft"] and started(out, "dpo") != after["dpo"]


def test_comparison_recipe_problems_are_reported_before_anything_runs(tmp_path, tiny_model):
    path = small_comparison(tmp_path, tiny_model)
    data = read_yaml(path)
    data["stages"]["dpo"]["train"]["betta"] = 0.1
    data["stages"]["dpo"]["model_from"] = "sfft"
    data["seeds"] = "42"
    data["baseline"] = "sft"
    write_yaml(path, data, sort_keys=False)
    res = run_workbench(["compare", str(path)])
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for text in ("`sfft` is not an earlier stage", "`seeds` must be a non-empty list", "did you mean `baseline_stage`?"):
        assert text in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
    del data["seeds"], data["baseline"]
    data["stages"]["dpo"]["model_from"] = "sft"
    write_yaml(path, data, sort_keys=False)
    res = run_workbench(["compare", str(path)])
    assert res.returncode == 2 and "stages.dpo" in res.stderr and "did you mean `beta`?" in res.stderr


def test_results_aggregate_over_seeds(tmp_path):
    """Two seeds: each metric is the mean, `_std` the sample std (n - 1), per-seed values kept; a failed seed is reported."""
    from workbench.comparison.types import Comparison, Stage, StageRun
    from workbench.config import EvalConfig
    from workbench.report import aggregate, best_rows

    stages = {"sft": Stage("sft", {}), "dpo": Stage("dpo", {}, model_from="sft"), "rm": Stage("rm", {})}
    comparison = Comparison("c", tmp_path, [1, 2], {}, stages, EvalConfig(), baseline_stage="sft")

    def run(name, method, seed, gold, status="completed"):
        r = StageRun(stages[name], seed, {"method": method}, tmp_path / f"seed-{seed}" / name, status=status)
        r.evaluation = None if gold is None else {"gold_reward_mean": gold, "kl_to_reference": 2.0 * seed}
        r.error = "boom" if status == "failed" else None
        return r

    runs = {
        1: {"sft": run("sft", "sft", 1, 0.4), "dpo": run("dpo", "dpo", 1, 0.5), "rm": run("rm", "reward", 1, None)},
        2: {
            "sft": run("sft", "sft", 2, 0.6),
            "dpo": run("dpo", "dpo", 2, None, status="failed"),
            "rm": run("rm", "reward", 2, None),
        },
    }
    res = {r["name"]: r for r in aggregate(comparison, runs)}
    assert list(res) == ["sft", "dpo"]  # the reward model is not a policy
    # 0.4 and 0.6: sd = sqrt((0.1^2 + 0.1^2) / (2 - 1)) = 0.141421 (the population std would say 0.1)
    assert res["sft"]["gold_reward_mean"] == pytest.approx(0.5) and res["sft"]["gold_reward_mean_std"] == pytest.approx(
        0.141421, abs=1e-6
    )
    assert res["sft"]["num_seeds"] == 2 and res["dpo"]["num_seeds"] == 1
    assert res["sft"]["kl_to_reference"] == pytest.approx(3.0) and res["sft"]["status"] == "ok"
    assert res["dpo"]["status"] == "failed" and res["dpo"]["errors"] == ["seed 2: boom"]
    assert res["dpo"]["gold_reward_mean"] == 0.5 and res["dpo"]["gold_reward_mean_std"] is None  # one seed: no spread
    assert [s["seed"] for s in res["dpo"]["per_seed"]] == [1, 2]
    assert best_rows(list(res.values()), "kl_to_reference") == {"dpo"}  # lower is better for KL
    assert best_rows(list(res.values()), "kl_to_reference", baseline="sft") == set()  # the baseline's own 0 wins nothing
    assert best_rows(list(res.values()), "gold_reward_mean") == {"sft", "dpo"}  # ties are all marked


def test_shared_evaluation_equals_separate_evaluations(tmp_path, tiny_model):
    """A comparison evaluates its policies with one Shared (baseline samples, the reference's pair log-probs): every
    metric equals a separate evaluation of the same policy, and the baseline policy reads exactly 0.5 / 0.0."""
    import dataclasses

    from test_evaluate import VOWEL, hand_run

    from workbench import evaluate as ev
    from workbench.tiny import build_tiny_model

    eval_section = {
        "num_prompts": 8,
        "samples_per_prompt": 2,
        "num_pairs": 12,
        "generation": {"max_new_tokens": 6},
        "gold_reward": {"function": VOWEL},
    }
    base = hand_run(tmp_path / "base", tiny_model, eval=eval_section)
    others = [
        hand_run(tmp_path / f"p{seed}", build_tiny_model(tmp_path / f"m{seed}", seed=seed), eval=eval_section) for seed in (1, 2)
    ]
    # as in a comparison: the baseline stage's policy is every policy's win-rate baseline and KL reference
    cfg = dataclasses.replace(ev.run_recipe(base).eval, baseline=str(base / "model"), reference=str(base / "model"))

    alone = {}
    for run in others:
        alone[run.parent.name] = ev.evaluate_run(run, cfg=cfg)
        shutil.move(run / "eval.json", run / "eval_alone.json")
    shared, scorers = ev.Shared(), ev.scorers_for(cfg, None, 48)  # loaded once, as compare does
    together = {run.parent.name: ev.evaluate_run(run, cfg=cfg, scorers=scorers, shared=shared) for run in [base, *others]}
    assert list(shared.reference_pairs) == [str(base / "model")] and len(shared.baselines) == 1
    for name, metrics in alone.items():
        assert together[name] == metrics, name
        assert metrics["kl_to_reference"] > 0 and metrics["preference_accuracy"] != 0.5
    b = together["base"]
    assert (b["win_rate_vs_baseline"], b["kl_to_reference"], b["preference_accuracy"]) == (0.5, 0.0, 0.5)


def test_stage_process_runs_the_cli_in_the_callers_directory_with_its_log_and_exit_code(tmp_path, monkeypatch):
    """A forked stage process: the caller's working directory and environment, output into the stage log, the CLI's
    exit code (2 for an error a user can fix, with its message in the log)."""
    from workbench import stageproc

    monkeypatch.chdir(tmp_path)
    stageproc.prepare([])
    try:
        assert stageproc.run(["tiny-model", "made/tiny"], tmp_path / "ok.log") == 0
        assert (tmp_path / "made" / "tiny" / "config.json").is_file()
        assert "wrote tiny model" in (tmp_path / "ok.log").read_text()
        assert stageproc.run(["validate", "missing.yaml"], tmp_path / "bad.log") == 2
        assert "missing.yaml: recipe not valid" in (tmp_path / "bad.log").read_text()
    finally:
        stageproc.stop()


def test_a_forked_stage_stops_and_records_failed_when_compare_is_killed(tmp_path, tiny_model):
    """kill -9 of the process that forked a stage (as `workbench compare` does): the stage, whose parent is the
    fork server, must not train on as an orphan holding its run directory's lock; it stops and says so."""
    import os
    import signal
    import sys
    import time

    from conftest import write_recipe

    path = write_recipe(tmp_path, tiny_model, name="stage", tracking__mode="disabled", train__max_steps=100000)
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; from workbench import stageproc; stageproc.prepare(['dpo']); "
         "sys.exit(stageproc.run(['train', sys.argv[1]], sys.argv[2]))", str(path), str(tmp_path / "stage.log")],
    )  # fmt: skip
    run = tmp_path / "stage"
    deadline = time.time() + 300
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
        assert owner.poll() is None and time.time() < deadline, (tmp_path / "stage.log").read_text()[-3000:]
        time.sleep(0.5)
    stage_pid = json.loads((run / ".lock").read_text())["pid"]
    assert stage_pid != owner.pid
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            os.kill(stage_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.kill(stage_pid, signal.SIGKILL)
        raise AssertionError("the stage kept training after its owner was killed")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "SIGTERM" in manifest["error"], manifest.get("error")


def test_error_line_of_a_stage_names_its_error_or_says_it_wrote_nothing(tmp_path):
    from workbench.comparison.run import error_line

    log = tmp_path / "stage.log"
    log.write_text("loading\nerror: recipe.yaml: 1 problem\n  - unknown key\nbye\n")
    assert error_line(log) == "error: recipe.yaml: 1 problem"
    assert error_line(tmp_path / "missing.log") == "no output (the stage process ended before writing its log)"


def test_a_model_baseline_is_evaluated_as_its_own_row_and_named_in_the_report(tmp_path, tiny_model, capsys):
    """`eval.baseline` a model directory, not a stage (the SmolLM2 recipe's instruct model): the report named the
    baseline `None` and left the paired-difference column '-'. Now the model is evaluated as itself into
    seed-N/baseline (win rate 0.5, KL 0 to itself), each policy's difference is paired with its responses, the
    report names it, and a second evaluation finds it cached."""
    from test_evaluate import VOWEL, hand_run

    from workbench.comparison.evaluation import evaluate_seed
    from workbench.comparison.types import Comparison, Outcome, Stage, StageRun
    from workbench.config import EvalConfig, GenerationConfig, RewardModelConfig
    from workbench.report import aggregate, write_outputs
    from workbench.tiny import build_tiny_model

    instruct = tmp_path / "instruct"
    shutil.copytree(tiny_model, instruct)
    cfg = EvalConfig(
        baseline=str(instruct),
        reference=str(instruct),
        num_prompts=6,
        samples_per_prompt=2,
        num_pairs=10,
        generation=GenerationConfig(max_new_tokens=6),
        gold_reward=RewardModelConfig(function=VOWEL),
    )
    stages = {n: Stage(n, {}) for n in ("p1", "p2")}
    base = {"model": {"name_or_path": str(instruct)}, "tracking": {"mode": "disabled"}}
    comparison = Comparison("m", tmp_path / "cmp", [0], base, stages, cfg)
    assert comparison.baseline_name == "baseline" and comparison.external_baseline

    def policy_runs() -> dict:
        runs = {}
        for seed, name in enumerate(stages, 1):
            run = tmp_path / name / "run"
            if not run.exists():
                hand_run(tmp_path / name, build_tiny_model(tmp_path / f"m{seed}", seed=seed))
            recipe = read_yaml(run / "recipe.yaml")
            runs[name] = StageRun(stages[name], 0, recipe, run, status="completed")
        return runs

    runs = policy_runs()
    evaluate_seed(comparison, 0, runs)
    assert (tmp_path / "cmp" / "seed-0" / "baseline" / "eval_samples.jsonl").is_file()
    outcome = Outcome(comparison, {0: runs})
    outcome.results = aggregate(comparison, outcome.runs)
    write_outputs(comparison, outcome)
    res = {r["name"]: r for r in outcome.results}
    assert list(res) == ["p1", "p2", "baseline"]
    b = res["baseline"]
    assert (b["method"], b["win_rate_vs_baseline"], b["kl_to_reference"], b["preference_accuracy"]) == (
        "base model",
        0.5,
        0.0,
        0.5,
    )
    assert b["vs_baseline"] == {}
    for name in ("p1", "p2"):  # paired on the same (prompt, sample): the mean difference is the difference of the means
        d = res[name]["vs_baseline"]["gold_reward_mean"]
        assert d["difference"] == pytest.approx(res[name]["gold_reward_mean"] - b["gold_reward_mean"], abs=1e-9)
        assert d["low"] < d["difference"] < d["high"]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "None" not in report
    assert "differences are paired with `baseline`'s response" in report
    assert f"`baseline` is the model `{instruct}` (`eval.baseline`), evaluated as is." in report
    assert "| Δ gold reward vs baseline [95% CI] |" in report and "| baseline ⚠ | base model | 6 × 2, 10 |" in report
    cost = report.split("## Cost of training")[1].split("Every stage")[0]
    assert "| p1 ⚠ | sft |" in cost and "baseline" not in cost  # the base model was not trained here
    capsys.readouterr()
    evaluate_seed(comparison, 0, policy_runs())
    out = capsys.readouterr().out
    assert f"[seed 0] baseline ({instruct}): evaluation cached" in out and "p1: evaluation cached" in out
    # the baseline model replaced in place (same path): every win rate and KL was judged against the old one
    weights = instruct / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    evaluate_seed(comparison, 0, policy_runs())
    out = capsys.readouterr().out
    assert "eval 1/2 p1: evaluated" in out and f"[seed 0] baseline ({instruct}): evaluated" in out


def test_fewer_held_out_prompts_than_asked_is_said_on_the_console(tmp_path, tiny_model, capsys):
    """`eval.num_prompts: 500` on a split with fewer distinct prompts evaluated what there was without a word; now
    `compare` and `workbench eval` say so, in the wording of the report's eval_shortfall flag."""
    from test_evaluate import hand_run

    from workbench.comparison.evaluation import evaluate_seed
    from workbench.comparison.types import Comparison, Stage, StageRun
    from workbench.config import EvalConfig, GenerationConfig

    cfg = EvalConfig(num_prompts=500, samples_per_prompt=1, num_pairs=5, generation=GenerationConfig(max_new_tokens=4))
    stages = {"p": Stage("p", {})}
    comparison = Comparison("short", tmp_path / "cmp", [0], {"tracking": {"mode": "disabled"}}, stages, cfg)
    run = hand_run(tmp_path / "p", tiny_model)
    runs = {"p": StageRun(stages["p"], 0, read_yaml(run / "recipe.yaml"), run, status="completed")}
    evaluate_seed(comparison, 0, runs)
    out = capsys.readouterr().out
    n = runs["p"].evaluation["num_prompts"]
    message = (
        f"`eval.num_prompts` asks for 500 but the data's eval split gives only {n}: the evaluation uses {n} "
        "(raise `data.eval_split` or lower `eval.num_prompts`)"
    )
    assert 0 < n < 500 and f"[seed 0] ⚠ {message}" in out and "eval.num_pairs" not in out  # 5 pairs asked, 5 given
    res = run_ok(["eval", str(run), "--set", "eval.num_prompts=500", "--set", "eval.samples_per_prompt=1"])
    assert message in res.stderr


def test_a_baseline_named_twice_or_clashing_with_a_stage_is_a_recipe_error(tmp_path):
    from workbench.comparison import load_comparison
    from workbench.errors import RecipeError

    path = tmp_path / "c.yaml"
    stages = {"baseline": {"method": "sft"}, "dpo": {"method": "dpo"}}
    write_yaml(path, {"stages": stages, "baseline_stage": "dpo", "eval": {"baseline": "m"}})
    with pytest.raises(RecipeError, match=r"`baseline_stage: dpo` and `eval.baseline: m` both name the win-rate baseline"):
        load_comparison(path)
    write_yaml(path, {"stages": stages, "eval": {"baseline": "m"}})
    with pytest.raises(RecipeError, match=r"a stage is named `baseline`, the report's row of `eval.baseline`"):
        load_comparison(path)
