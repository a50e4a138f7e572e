"""The comparison's shared evaluation: every trained policy of a seed on one set of held-out prompts, the
reward stage's model on the held-out pairs, and a baseline given as a model; cached by fingerprint."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from workbench.cache import path_fingerprint
from workbench.comparison.types import BASELINE_METHOD, BASELINE_ROW, Comparison, Stage, StageRun
from workbench.config import EvalConfig, recipe_from_dict
from workbench.console import duration
from workbench.data.pipeline import read_json, write_json
from workbench.data.schema import stable_hash
from workbench.errors import WorkbenchError


def eval_config(comparison: Comparison, runs: dict[str, StageRun]) -> EvalConfig:
    """The comparison's evaluation: the baseline stage's policy as win-rate baseline and KL reference, the reward stage's model as reward."""
    cfg = comparison.eval
    changes: dict[str, Any] = {}
    base = runs.get(comparison.baseline_stage or "")
    if base is not None and base.ok:
        changes["baseline"] = cfg.baseline or str(base.model_dir)
        changes["reference"] = cfg.reference or str(base.model_dir)
    rm = runs.get(comparison.reward_stage or "")
    if cfg.reward_model is None and rm is not None and rm.ok:
        from workbench.config import RewardModelConfig

        changes["reward_model"] = RewardModelConfig(name_or_path=str(rm.model_dir), normalize=True)
    return dataclasses.replace(cfg, **changes)


def base_data(run: StageRun, runs: dict[str, StageRun]) -> dict[str, Any]:
    """The data the evaluation holds out prompts and pairs from: the stage's own, or, for a stage trained on an earlier
    stage's output (`data_from`, e.g. on-policy pairs), the data that chain started from, not the pairs' eval split."""
    while run.stage.data_from:
        run = runs[run.stage.data_from]
    return run.recipe["data"]


def eval_fingerprint(comparison: Comparison, run: StageRun, cfg: EvalConfig, inputs_fp: str, runs: dict[str, StageRun]) -> str:
    """The policy, the evaluation settings and inputs, and the baseline, reference and reward model it is judged
    with: stages by their fingerprints, model directories by their files (a model replaced in place re-evaluates)."""
    related: dict[str, Any] = {n: runs[n].fingerprint for n in (comparison.baseline_stage, comparison.reward_stage) if n in runs}
    for key in ("baseline", "reference"):
        if getattr(cfg, key):
            related[f"eval.{key}"] = path_fingerprint(getattr(cfg, key))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in REPORT_ONLY}
    return stable_hash([run.fingerprint, settings, inputs_fp, related])[:16]


# Evaluation settings that only the report reads: changing them rewrites the report, not the evaluations.
REPORT_ONLY = ("bootstrap_samples",)


def shared_scorers(cache: dict[str, dict[str, Any]], cfg: EvalConfig, reward_model: Any, max_length: int) -> dict[str, Any]:
    """The evaluation's scorers with this reward model, loaded once per distinct (reward model, gold scorer)."""
    from workbench import evaluate as ev

    cfg = dataclasses.replace(cfg, reward_model=reward_model)
    key = stable_hash(
        [
            dataclasses.asdict(reward_model) if reward_model else None,
            dataclasses.asdict(cfg.gold_reward) if cfg.gold_reward else None,
        ]
    )
    if key not in cache:
        cache[key] = ev.scorers_for(cfg, None, max_length)
    return cache[key]


def evaluate_reward_model(
    comparison: Comparison,
    runs: dict[str, StageRun],
    cfg: EvalConfig,
    inputs: Any,
    seed: int,
    scorer_sets: dict[str, dict[str, Any]] | None = None,
) -> None:
    """The reward stage's model on the same held-out pairs: reward_eval.json in its run directory (cached by fingerprint)."""
    from workbench import evaluate as ev

    run = runs.get(comparison.reward_stage or "")
    if run is None or not run.ok or cfg.reward_model is None or not inputs.pairs:
        return
    fp = stable_hash([run.fingerprint, dataclasses.asdict(cfg.reward_model), inputs.fingerprint])[:16]
    path = run.run_dir / "reward_eval.json"
    saved = read_json(path)
    if saved.get("fingerprint") == fp and saved.get("inputs_fingerprint") == inputs.fingerprint:
        return
    t0 = time.time()
    scorers = shared_scorers({} if scorer_sets is None else scorer_sets, cfg, cfg.reward_model, inputs.max_length)
    result = ev.reward_model_metrics(scorers["reward"], inputs)
    write_json(
        path, {"fingerprint": fp, "inputs_fingerprint": inputs.fingerprint, **result}
    )  # which pairs: the report counts them once
    print(
        f"[seed {seed}] {run.stage.name}: reward model held-out accuracy {result['accuracy']:.3f} on {result['num_pairs']} pairs "
        f"(length-only rule {result['length_baseline_accuracy']:.3f}), {time.time() - t0:.0f}s",
        flush=True,
    )


def evaluate_seed(comparison: Comparison, seed: int, runs: dict[str, StageRun]) -> None:
    """The shared evaluation of every trained policy of one seed, on one set of prompts and baseline samples."""
    from workbench import evaluate as ev
    from workbench.models import load_tokenizer

    policies = [r for r in runs.values() if r.ok and r.method in ev.POLICY_METHODS and r.stage.evaluate]
    if not policies:
        return
    cfg = eval_config(comparison, runs)
    data = base_data(policies[0], runs)
    first = recipe_from_dict({**policies[0].recipe, "data": data, "train": {}}, source=f"stage {policies[0].stage.name}")
    tokenizer = load_tokenizer(dataclasses.replace(first.model, name_or_path=str(policies[0].model_dir)))
    inputs = ev.eval_inputs(dataclasses.replace(first, eval=cfg), tokenizer)
    print(
        f"[seed {seed}] evaluating {len(policies)} policies on {len(inputs.prompts)} held-out prompts x "
        f"{cfg.samples_per_prompt} samples and {len(inputs.pairs)} held-out pairs",
        flush=True,
    )
    for f in inputs.shortfalls:
        print(f"[seed {seed}] ⚠ {f['message']}", flush=True)
    scorer_sets: dict[str, dict[str, Any]] = {}  # each reward model / function loaded once per seed
    evaluate_reward_model(comparison, runs, cfg, inputs, seed, scorer_sets)
    shared = ev.Shared()
    for i, run in enumerate(policies, 1):
        fp = eval_fingerprint(comparison, run, cfg, inputs.fingerprint, runs)
        saved = read_json(run.run_dir / "eval.json")
        if saved.get("details", {}).get("eval_fingerprint") == fp:
            run.evaluation = saved["metrics"]
            print(f"[seed {seed}] eval {i}/{len(policies)} {run.stage.name}: evaluation cached", flush=True)
            continue
        recipe = recipe_from_dict({**run.recipe, "train": {}}, source=f"stage {run.stage.name}")
        scorers = shared_scorers(scorer_sets, cfg, cfg.reward_model or recipe.reward_model, inputs.max_length)
        t0 = time.time()
        try:
            run.evaluation = ev.evaluate_run(run.run_dir, inputs=inputs, cfg=cfg, fingerprint=fp, scorers=scorers, shared=shared)
        except WorkbenchError as exc:
            run.status, run.error = "failed", f"evaluation: {exc}"
            print(f"[seed {seed}] {run.stage.name}: evaluation failed - {exc}", flush=True)
            continue
        print(f"[seed {seed}] eval {i}/{len(policies)} {run.stage.name}: evaluated in {duration(time.time() - t0)}", flush=True)
    if comparison.external_baseline:
        runs[BASELINE_ROW] = evaluate_baseline_model(comparison, seed, runs, cfg, inputs, tokenizer, first, scorer_sets, shared)
        if comparison.control_name:  # the baseline model sampled again with another seed, judged against its first samples
            runs[comparison.control_name] = evaluate_baseline_model(
                comparison, seed, runs, cfg, inputs, tokenizer, first, scorer_sets, shared, control=True
            )


def evaluate_baseline_model(
    comparison: Comparison,
    seed: int,
    runs: dict[str, StageRun],
    cfg: EvalConfig,
    inputs: Any,
    tokenizer: Any,
    recipe: Any,
    scorer_sets: dict[str, dict[str, Any]],
    shared: Any,
    control: bool = False,
) -> StageRun:
    """`eval.baseline`, a model rather than a stage, evaluated like a policy (its reward, KL, length, ...) into
    seed-N/baseline/, so the report has its row and pairs every policy's responses with its own. `control`: the same
    model sampled with `eval.seed` + CONTROL_SEED_OFFSET into seed-N/baseline@control/, its win rate against the
    baseline's own samples."""
    from workbench import evaluate as ev

    model = str(cfg.baseline)
    name = comparison.control_name if control else BASELINE_ROW
    out = comparison.output_dir / f"seed-{seed}" / name
    recipe_dict = {"method": BASELINE_METHOD, "model": {"name_or_path": model}}
    stage = Stage(name, {}, control_of=BASELINE_ROW if control else None)
    run = StageRun(stage, seed, recipe_dict, out, status="completed")
    run.fingerprint = stable_hash([model, path_fingerprint(model)])[:16]
    scorers = shared_scorers(scorer_sets, cfg, cfg.reward_model or recipe.reward_model, inputs.max_length)
    baseline = None
    if control:  # the baseline's samples at the evaluation's own seed, then this row's with another
        baseline = shared.baselines.get((model, id(scorers))) or ev.baseline_samples(model, tokenizer, inputs, cfg, scorers)
        cfg = dataclasses.replace(cfg, seed=cfg.seed + stage.seed_offset)
    fp = eval_fingerprint(comparison, run, cfg, inputs.fingerprint, runs)
    saved = read_json(out / "eval.json")
    if saved.get("details", {}).get("eval_fingerprint") == fp:
        run.evaluation = saved["metrics"]
        print(f"[seed {seed}] {name} ({model}): evaluation cached", flush=True)
        return run
    t0 = time.time()
    try:
        run.evaluation = ev.evaluate_model(
            model,
            out,
            name=name,
            method=BASELINE_METHOD,
            reference=cfg.reference or ev.policy_reference(recipe, cfg),
            tokenizer=tokenizer,
            inputs=inputs,
            cfg=cfg,
            scorers=scorers,
            shared=shared,
            baseline=baseline,
            fingerprint=fp,
            own_samples=control,
        )
    except WorkbenchError as exc:
        run.status, run.error = "failed", f"evaluation: {exc}"
        print(f"[seed {seed}] {name}: evaluation failed - {exc}", flush=True)
        return run
    print(f"[seed {seed}] {name} ({model}): evaluated in {duration(time.time() - t0)}", flush=True)
    return run
