"""The comparison's shared evaluation: every trained policy of a seed on one set of held-out prompts, the
reward stage's model on the held-out pairs, and a baseline given as a model; cached by fingerprint."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
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


def scorer_key(cfg: EvalConfig, reward_model: Any) -> str:
    """Which scorers judge a policy: its reward model and the gold scorer (policies with the same key share them)."""
    return stable_hash(
        [
            dataclasses.asdict(reward_model) if reward_model else None,
            dataclasses.asdict(cfg.gold_reward) if cfg.gold_reward else None,
        ]
    )


def shared_scorers(cache: dict[str, dict[str, Any]], cfg: EvalConfig, reward_model: Any, max_length: int) -> dict[str, Any]:
    """The evaluation's scorers with this reward model, loaded once per distinct (reward model, gold scorer)."""
    from workbench import evaluate as ev

    cfg = dataclasses.replace(cfg, reward_model=reward_model)
    key = scorer_key(cfg, reward_model)
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


@dataclass
class SeedEval:
    """What a seed's evaluations share: the settings, the held-out inputs and the tokenizer they are read with."""

    policies: list[StageRun]
    cfg: EvalConfig
    first: Any  # the first policy's Recipe: the data the inputs come from
    tokenizer: Any
    inputs: Any


def seed_eval(comparison: Comparison, runs: dict[str, StageRun]) -> SeedEval | None:
    """The seed's evaluation settings and held-out inputs; None when it has no policy to evaluate."""
    from workbench import evaluate as ev
    from workbench.models import load_tokenizer

    policies = [r for r in runs.values() if r.ok and r.method in ev.POLICY_METHODS and r.stage.evaluate]
    if not policies:
        return None
    cfg = eval_config(comparison, runs)
    data = base_data(policies[0], runs)
    first = recipe_from_dict({**policies[0].recipe, "data": data, "train": {}}, source=f"stage {policies[0].stage.name}")
    tokenizer = load_tokenizer(dataclasses.replace(first.model, name_or_path=str(policies[0].model_dir)))
    inputs = ev.eval_inputs(dataclasses.replace(first, eval=cfg), tokenizer)
    return SeedEval(policies, cfg, first, tokenizer, inputs)


def begin_seed_eval(
    comparison: Comparison, seed: int, runs: dict[str, StageRun], what: str = ""
) -> tuple[SeedEval, dict[str, dict[str, Any]]] | None:
    """A seed's evaluation begins: its settings and inputs, said on the console with any shortfall, and the reward
    stage's held-out accuracy; the scorers loaded so far (each reward model / function once per seed)."""
    setup = seed_eval(comparison, runs)
    if setup is None:
        return None
    cfg, inputs = setup.cfg, setup.inputs
    print(
        f"[seed {seed}] evaluating {len(setup.policies)} policies on {len(inputs.prompts)} held-out prompts x "
        f"{cfg.samples_per_prompt} samples and {len(inputs.pairs)} held-out pairs{what}",
        flush=True,
    )
    for f in inputs.shortfalls:
        print(f"[seed {seed}] ⚠ {f['message']}", flush=True)
    scorer_sets: dict[str, dict[str, Any]] = {}
    evaluate_reward_model(comparison, runs, cfg, inputs, seed, scorer_sets)
    return setup, scorer_sets


def evaluate_seed(comparison: Comparison, seed: int, runs: dict[str, StageRun]) -> None:
    """The shared evaluation of every trained policy of one seed, on one set of prompts and baseline samples."""
    from workbench import evaluate as ev

    begun = begin_seed_eval(comparison, seed, runs)
    if begun is None:
        return
    setup, scorer_sets = begun
    policies, cfg, inputs = setup.policies, setup.cfg, setup.inputs
    shared = ev.Shared()
    for i, run in enumerate(policies, 1):
        evaluate_policy(comparison, runs, run, setup, scorer_sets, shared, f"eval {i}/{len(policies)} ")
    if comparison.external_baseline:
        runs[BASELINE_ROW] = evaluate_baseline_model(
            comparison, seed, runs, cfg, inputs, setup.tokenizer, setup.first, scorer_sets, shared
        )
        if comparison.control_name:  # the baseline model sampled again with another seed, judged against its first samples
            runs[comparison.control_name] = evaluate_baseline_model(
                comparison, seed, runs, cfg, inputs, setup.tokenizer, setup.first, scorer_sets, shared, control=True
            )


def evaluate_policy(
    comparison: Comparison,
    runs: dict[str, StageRun],
    run: StageRun,
    setup: SeedEval,
    scorer_sets: dict[str, dict[str, Any]],
    shared: Any,
    label: str = "",
) -> None:
    """One policy's shared evaluation into its eval.json (cached by fingerprint); a failure is the run's, named."""
    from workbench import evaluate as ev

    seed, cfg, inputs = run.seed, setup.cfg, setup.inputs
    fp = eval_fingerprint(comparison, run, cfg, inputs.fingerprint, runs)
    saved = read_json(run.run_dir / "eval.json")
    if saved.get("details", {}).get("eval_fingerprint") == fp:
        run.evaluation = saved["metrics"]
        print(f"[seed {seed}] {label}{run.stage.name}: evaluation cached", flush=True)
        return
    recipe = recipe_from_dict({**run.recipe, "train": {}}, source=f"stage {run.stage.name}")
    scorers = shared_scorers(scorer_sets, cfg, cfg.reward_model or recipe.reward_model, inputs.max_length)
    t0 = time.time()
    try:
        run.evaluation = ev.evaluate_run(run.run_dir, inputs=inputs, cfg=cfg, fingerprint=fp, scorers=scorers, shared=shared)
    except WorkbenchError as exc:
        run.status, run.error = "failed", f"evaluation: {exc}"
        print(f"[seed {seed}] {run.stage.name}: evaluation failed - {exc}", flush=True)
        return
    print(f"[seed {seed}] {label}{run.stage.name}: evaluated in {duration(time.time() - t0)}", flush=True)


def baseline_run(comparison: Comparison, seed: int, cfg: EvalConfig, control: bool = False) -> StageRun:
    """`eval.baseline` as the report's row: a completed run in seed-N/baseline/, fingerprinted by the model's files
    (`control`: the row of its control, seed-N/baseline@control/)."""
    model = str(cfg.baseline)
    name = str(comparison.control_name) if control else BASELINE_ROW
    recipe = {"method": BASELINE_METHOD, "model": {"name_or_path": model}}
    stage = Stage(name, {}, control_of=BASELINE_ROW if control else None)
    run = StageRun(stage, seed, recipe, comparison.output_dir / f"seed-{seed}" / name, status="completed")
    run.fingerprint = stable_hash([model, path_fingerprint(model)])[:16]
    return run


def run_eval_config(run: StageRun, cfg: EvalConfig) -> EvalConfig:
    """The evaluation settings of one row: the `eval.baseline` model's control samples with another sampling seed."""
    if run.method == BASELINE_METHOD and run.stage.control_of:
        return dataclasses.replace(cfg, seed=cfg.seed + run.stage.seed_offset)
    return cfg


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
    run = baseline_run(comparison, seed, cfg, control)
    name, out = run.stage.name, run.run_dir
    scorers = shared_scorers(scorer_sets, cfg, cfg.reward_model or recipe.reward_model, inputs.max_length)
    baseline = None
    if control:  # the baseline's samples at the evaluation's own seed, then this row's with another
        baseline = shared.baselines.get((model, id(scorers))) or ev.baseline_samples(model, tokenizer, inputs, cfg, scorers)
        cfg = run_eval_config(run, cfg)
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


# ----------------------------------------------------------------------------------------------
# The evaluation as jobs: the shared part on disk, then one job per policy; the controller reads the files


def shared_path(comparison: Comparison, seed: int) -> Path:
    return comparison.output_dir / f"seed-{seed}" / "eval_shared.json"


def shared_fingerprint(comparison: Comparison, runs: dict[str, StageRun], setup: SeedEval) -> str:
    """What the shared part depends on: the inputs, the settings, the baseline and reward stages."""
    related = {n: runs[n].fingerprint for n in (comparison.baseline_stage, comparison.reward_stage) if n in runs}
    return stable_hash([setup.inputs.fingerprint, dataclasses.asdict(setup.cfg), related])[:16]


def policy_reward_model(run: StageRun, cfg: EvalConfig) -> Any:
    """The reward model a policy's samples are scored with: the comparison's, else its own recipe's."""
    return cfg.reward_model or recipe_from_dict({**run.recipe, "train": {}}, source=f"stage {run.stage.name}").reward_model


def prepare_shared(comparison: Comparison, seed: int, runs: dict[str, StageRun]) -> None:
    """The part of a seed's evaluation every policy shares, computed once and written to seed-N/eval_shared.json: the
    reward stage's held-out accuracy, the baseline's scored samples (per set of scorers) and the reference's
    log-probs of the held-out pairs. Policy evaluation jobs read it instead of computing it again."""
    from workbench import evaluate as ev

    begun = begin_seed_eval(comparison, seed, runs, " (the shared part, for the policies' evaluation jobs)")
    if begun is None:
        return
    setup, scorer_sets = begun
    cfg, inputs = setup.cfg, setup.inputs
    out: dict[str, Any] = {"fingerprint": shared_fingerprint(comparison, runs, setup), "baselines": {}, "reference_pairs": {}}
    if cfg.baseline:  # every policy's win-rate baseline: its scored samples, once per set of scorers
        for run in setup.policies:
            rm = policy_reward_model(run, cfg)
            key = scorer_key(cfg, rm)
            scorers = shared_scorers(scorer_sets, cfg, rm, inputs.max_length)
            if key not in out["baselines"] and ev.judge_of(cfg, scorers) is not None:
                samples = ev.baseline_samples(cfg.baseline, setup.tokenizer, inputs, cfg, scorers)
                out["baselines"][key] = dataclasses.asdict(samples)
    if cfg.reference and inputs.pairs:
        pairs = ev.pair_log_probs(cfg.reference, setup.tokenizer, inputs, cfg)
        out["reference_pairs"][cfg.reference] = {"chosen": pairs.chosen, "rejected": pairs.rejected}
    write_json(shared_path(comparison, seed), out)


def load_shared(comparison: Comparison, runs: dict[str, StageRun], setup: SeedEval, scorers: dict[str, Any], key: str) -> Any:
    """An `evaluate.Shared` holding what `prepare_shared` wrote for these scorers (empty when it is stale or absent)."""
    from workbench import evaluate as ev

    shared = ev.Shared()
    saved = read_json(shared_path(comparison, setup.policies[0].seed))
    if saved.get("fingerprint") != shared_fingerprint(comparison, runs, setup):
        return shared
    if key in saved["baselines"] and setup.cfg.baseline:
        shared.baselines[(setup.cfg.baseline, id(scorers))] = ev.Samples(**saved["baselines"][key])
    for reference, pairs in saved["reference_pairs"].items():
        shared.reference_pairs[reference] = ev.LogProbs([], pairs["chosen"], pairs["rejected"])
    return shared


def evaluate_one(comparison: Comparison, seed: int, runs: dict[str, StageRun], name: str) -> None:
    """One policy's evaluation (or, for `baseline`, the `eval.baseline` model's) with the shared part from disk:
    the body of its job. Raises the evaluation's error, so the job fails with it."""
    setup = seed_eval(comparison, runs)
    if setup is None:
        raise WorkbenchError(f"seed {seed} has no trained policy to evaluate")
    scorer_sets: dict[str, dict[str, Any]] = {}
    if name == BASELINE_ROW:
        rm = setup.cfg.reward_model or setup.first.reward_model
        scorers = shared_scorers(scorer_sets, setup.cfg, rm, setup.inputs.max_length)
        shared = load_shared(comparison, runs, setup, scorers, scorer_key(setup.cfg, rm))
        run = evaluate_baseline_model(
            comparison, seed, runs, setup.cfg, setup.inputs, setup.tokenizer, setup.first, scorer_sets, shared
        )
        if comparison.control_name and run.status != "failed":  # its control in the same job, from its samples
            run = evaluate_baseline_model(
                comparison, seed, runs, setup.cfg, setup.inputs, setup.tokenizer, setup.first, scorer_sets, shared, True
            )
    else:
        run = runs[name]
        rm = policy_reward_model(run, setup.cfg)
        scorers = shared_scorers(scorer_sets, setup.cfg, rm, setup.inputs.max_length)
        shared = load_shared(comparison, runs, setup, scorers, scorer_key(setup.cfg, rm))
        evaluate_policy(comparison, runs, run, setup, scorer_sets, shared)
    if run.status == "failed":
        raise WorkbenchError(run.error or f"evaluating {name} failed")


def saved_evaluation(comparison: Comparison, runs: dict[str, StageRun], run: StageRun) -> dict[str, Any] | None:
    """The metrics of `run`'s eval.json when they are current, without loading a model or the data: its recorded
    inputs fingerprint stands for the inputs (they derive from the stages' recipes, which the fingerprints cover)."""
    saved = read_json(run.run_dir / "eval.json")
    details = saved.get("details") or {}
    inputs_fp = details.get("inputs_fingerprint")
    cfg = run_eval_config(run, eval_config(comparison, runs))
    if inputs_fp and details.get("eval_fingerprint") == eval_fingerprint(comparison, run, cfg, inputs_fp, runs):
        return saved["metrics"]
    return None


def reward_evaluation_current(comparison: Comparison, runs: dict[str, StageRun]) -> bool:
    """The reward stage's reward_eval.json is current (or there is none to write)."""
    run = runs.get(comparison.reward_stage or "")
    cfg = eval_config(comparison, runs)
    if run is None or not run.ok or cfg.reward_model is None:
        return True
    saved = read_json(run.run_dir / "reward_eval.json")
    inputs_fp = saved.get("inputs_fingerprint")
    return (
        bool(inputs_fp)
        and saved.get("fingerprint") == stable_hash([run.fingerprint, dataclasses.asdict(cfg.reward_model), inputs_fp])[:16]
    )


def collect(comparison: Comparison, seed: int, runs: dict[str, StageRun], errors: dict[str, str]) -> None:
    """After the evaluation jobs: each evaluated policy's metrics from its eval.json, a failed evaluation as the run's
    failure (`errors`: stage name -> why its evaluation did not finish), and the `eval.baseline` row."""
    for name, error in errors.items():
        run = runs[name] if name != BASELINE_ROW else baseline_run(comparison, seed, eval_config(comparison, runs))
        run.status, run.error = "failed", f"evaluation: {error}"
        if name == BASELINE_ROW:
            runs[BASELINE_ROW] = run
    from workbench.config import methods_where

    policies = methods_where(produces_policy=True)
    for run in [r for r in runs.values() if r.ok and r.method in policies and r.stage.evaluate and r.stage.name not in errors]:
        run.evaluation = saved_evaluation(comparison, runs, run)
    cfg = eval_config(comparison, runs)
    if comparison.external_baseline and BASELINE_ROW not in errors and any(r.evaluation for r in runs.values()):
        for control in [False] + ([True] if comparison.control_name else []):
            run = baseline_run(comparison, seed, cfg, control)
            run.evaluation = saved_evaluation(comparison, runs, run)
            runs[run.stage.name] = run


# ----------------------------------------------------------------------------------------------
# Evaluation as tasks of their own (Slurm or submitit jobs, or processes of a parallel local executor)


def fresh_runs(runs: dict[str, StageRun]) -> dict[str, StageRun]:
    """The seed's runs with each stage's outcome as its stage.json says now (the controller's copy was pickled
    when the job was submitted, possibly before the stages it waits for had ended)."""
    for run in runs.values():
        state = read_json(run.run_dir / "stage.json")
        if state.get("fingerprint") == run.fingerprint and state.get("status") in ("completed", "failed"):
            run.status = "cached" if run.status == "cached" else state["status"]
    return runs


def evaluation_job(comparison: Comparison, seed: int, runs: dict[str, StageRun], kind: str, name: str | None) -> None:
    """A seed's evaluation job: the shared part (`eval_setup`), or one policy's / the baseline model's."""
    runs = fresh_runs(runs)
    if kind == "eval_setup":
        prepare_shared(comparison, seed, runs)
    else:
        evaluate_one(comparison, seed, runs, name)


def collect_tasks(comparison: Comparison, runs_by_seed: dict[int, dict[str, StageRun]], tasks: list[Any]) -> None:
    """Once every evaluation task has ended: each seed's evaluation from the files they wrote (nothing loaded)."""
    for seed, runs in runs_by_seed.items():
        errors = {}
        for t in tasks:  # an evaluation that failed, or never ran although its stage is fine
            evaluation_of_a_fine_stage = t.kind in ("eval_policy", "eval_baseline") and (t.run is None or t.run.ok)
            if t.seed == seed and evaluation_of_a_fine_stage and t.state != "done":
                errors[t.run.stage.name if t.run else BASELINE_ROW] = t.error or t.state
        if any(t.seed == seed and t.kind == "eval_setup" and t.state == "failed" for t in tasks):
            setup = next(t for t in tasks if t.seed == seed and t.kind == "eval_setup")
            print(f"[seed {seed}] eval setup: failed - {setup.error}", flush=True)
        collect(comparison, seed, runs, {k: v for k, v in errors.items() if k in runs or k == BASELINE_ROW})
