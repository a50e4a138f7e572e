"""`workbench compare RECIPE`: run several alignment methods from one base and one dataset, evaluate
them the same way, and write the comparison report.

A comparison recipe:

```yaml
name: quickstart
output_dir: runs/quickstart
seeds: [42]
base:                      # recipe sections every stage shares (model, data, generation, tracking, ...)
  model: {name_or_path: runs/tiny-model}
  data: {sources: [{synthetic: {task: vowels}}], eval_split: 0.2, split_by: prompt}
baseline_stage: sft        # the win-rate baseline and the reference of every KL
reward_stage: reward       # the pipeline's reward model (eval `reward_mean`; RS / PPO reward by default)
eval: {gold_reward: {function: workbench.data.synthetic:vowel_reward}}
stages:                    # run in this order; each is a normal recipe (inline, or `recipe: FILE` + overrides)
  sft: {method: sft, train: {...}}
  reward: {method: reward}
  dpo: {method: dpo, model_from: sft}
  rs: {method: rejection_sampling, model_from: sft}
  ppo: {method: ppo, model_from: sft, accelerate_config: accelerate_configs/zero3.yaml}
```

Each stage runs as its own `workbench train` (or `workbench launch` with its accelerate config)
process in OUTPUT_DIR/seed-S/STAGE; on a CPU machine that process is forked from one that imported
the libraries once (workbench.stageproc), instead of a fresh interpreter per stage. A stage is skipped when its fingerprint (resolved recipe,
upstream fingerprints, input files, accelerate config) matches a completed run; a changed stage
reruns with everything downstream of it. A failed stage is recorded; stages that do not depend on
it still run, and the report says what failed and why.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.cache import path_fingerprint
from workbench.checkpoint import newest_complete
from workbench.config import (
    METHODS,
    EvalConfig,
    apply_override,
    build_dataclass,
    dump_yaml,
    parse_override,
    read_yaml,
    recipe_from_dict,
    unknown_key_message,
)
from workbench.console import duration
from workbench.data.pipeline import read_json, write_json
from workbench.data.schema import stable_hash
from workbench.errors import RecipeError, WorkbenchError
from workbench.method_checks import eval_sampling_problems

log = logging.getLogger("workbench")

# Keys of a stage that steer the comparison; every other key is a recipe section.
STAGE_KEYS = ("recipe", "model_from", "reward_from", "accelerate_config", "evaluate")
TOP_KEYS = ("name", "output_dir", "seeds", "base", "baseline_stage", "reward_stage", "eval", "stages")
# The report's row of a baseline given as a model (`eval.baseline`) rather than a stage, and its method column.
BASELINE_ROW = "baseline"
BASELINE_METHOD = "base model"


@dataclass
class Stage:
    name: str
    sections: dict[str, Any]  # recipe sections given inline (merged over the recipe file and `base`)
    recipe: str | None = None
    model_from: str | None = None
    reward_from: str | None = None
    accelerate_config: str | None = None
    evaluate: bool = True

    @property
    def upstream(self) -> list[str]:
        return [s for s in (self.model_from, self.reward_from) if s]


@dataclass
class Comparison:
    name: str
    output_dir: Path
    seeds: list[int]
    base: dict[str, Any]
    stages: dict[str, Stage]
    eval: EvalConfig
    baseline_stage: str | None = None
    reward_stage: str | None = None
    source: str = "comparison"

    @property
    def external_baseline(self) -> bool:
        """The win-rate baseline is a model given as `eval.baseline`, evaluated as its own report row."""
        return not self.baseline_stage and bool(self.eval.baseline)

    @property
    def baseline_name(self) -> str | None:
        """The report's baseline row: the baseline stage, or `baseline` for `eval.baseline`; None without one."""
        return BASELINE_ROW if self.external_baseline else self.baseline_stage


@dataclass
class StageRun:
    """One stage for one seed: its composed recipe and where it stands."""

    stage: Stage
    seed: int
    recipe: dict[str, Any]
    run_dir: Path
    fingerprint: str = ""
    status: str = "pending"  # pending | cached | completed | failed | skipped
    error: str | None = None
    seconds: float = 0.0
    evaluation: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.recipe["method"]

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "completed")


# ----------------------------------------------------------------------------------------------
# Reading a comparison recipe


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_comparison(path: str | Path, overrides: Sequence[str] = ()) -> Comparison:
    """Read and check a comparison recipe; every stage's recipe is composed and validated before anything runs."""
    data = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    source = str(path)
    problems = [unknown_key_message("", k, TOP_KEYS) for k in data if k not in TOP_KEYS]
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        problems.append("`stages` must be a mapping of stage name -> stage (e.g. sft: {method: sft})")
        stages_raw = {}
    stages: dict[str, Stage] = {}
    for name, raw in stages_raw.items():
        if not isinstance(raw, dict):
            problems.append(f"`stages.{name}` must be a mapping (method, recipe, model_from, train, ...)")
            continue
        stage = Stage(
            str(name), {k: v for k, v in raw.items() if k not in STAGE_KEYS}, **{k: raw[k] for k in STAGE_KEYS if k in raw}
        )
        for ref in stage.upstream:
            if ref not in stages:
                problems.append(f"`stages.{name}`: `{ref}` is not an earlier stage (stages run in the order written)")
        stages[stage.name] = stage
    seeds = data.get("seeds", [42])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append(f"`seeds` must be a non-empty list of integers, got {seeds!r}")
        seeds = [42]
    base = data.get("base") or {}
    if not isinstance(base, dict):
        problems.append("`base` must be a mapping of recipe sections (model, data, generation, tracking, ...)")
        base = {}
    eval_cfg = build_dataclass(EvalConfig, data.get("eval") or {}, "eval.", problems)
    problems.extend(eval_sampling_problems(eval_cfg.generation))
    for key in ("baseline_stage", "reward_stage"):
        if data.get(key) is not None and data[key] not in stages:
            problems.append(f"`{key}: {data[key]}` is not a stage; stages: {', '.join(stages)}")
    if data.get("baseline_stage") is not None and eval_cfg.baseline:
        problems.append(
            f"`baseline_stage: {data['baseline_stage']}` and `eval.baseline: {eval_cfg.baseline}` both name the win-rate "
            "baseline; keep one (a stage's policy, or a model directory / hub id)"
        )
    elif eval_cfg.baseline and BASELINE_ROW in stages:
        problems.append(
            f"a stage is named `{BASELINE_ROW}`, the report's row of `eval.baseline`; rename the stage, or make it the "
            f"baseline with `baseline_stage: {BASELINE_ROW}` instead of `eval.baseline`"
        )
    if problems:
        raise RecipeError(source, problems)
    comparison = Comparison(
        name=str(data.get("name") or Path(path).stem),
        output_dir=Path(data.get("output_dir") or f"runs/{Path(path).stem}"),
        seeds=seeds,
        base=base,
        stages=stages,
        eval=eval_cfg,
        baseline_stage=data.get("baseline_stage"),
        reward_stage=data.get("reward_stage"),
        source=source,
    )
    check_stage_recipes(comparison)
    return comparison


def stage_recipe(comparison: Comparison, stage: Stage, seed: int) -> dict[str, Any]:
    """The stage's recipe: its recipe file, then `base`, then its own sections; run dir, seed, tracking and links set."""
    recipe = read_yaml(stage.recipe) if stage.recipe else {}
    recipe = deep_merge(deep_merge(recipe, comparison.base), stage.sections)
    seed_dir = comparison.output_dir / f"seed-{seed}"
    recipe["output_dir"] = str(seed_dir / stage.name)
    recipe["seed"] = seed
    tracking = recipe.setdefault("tracking", {}) or {}
    tracking.update(group=comparison.name, job_type=recipe.get("method", "dpo"), name=f"{comparison.name}-{stage.name}-s{seed}")
    recipe["tracking"] = tracking
    if stage.model_from:
        recipe.setdefault("model", {})["name_or_path"] = str(seed_dir / stage.model_from / "model")
    reward_from = stage.reward_from
    spec = METHODS.get(recipe.get("method"))
    if reward_from is None and spec is not None and spec.needs_reward and not recipe.get("reward_model"):
        reward_from = comparison.reward_stage
    if reward_from:
        rm = {k: v for k, v in (recipe.get("reward_model") or {}).items() if k != "function"}
        recipe["reward_model"] = {"normalize": True, **rm, "name_or_path": str(seed_dir / reward_from / "model")}
    return recipe


def check_stage_recipes(comparison: Comparison) -> None:
    """Every stage recipe of the first seed is validated; all problems are reported together."""
    problems: list[str] = []
    for stage in comparison.stages.values():
        try:
            recipe_from_dict(stage_recipe(comparison, stage, comparison.seeds[0]), source=f"stage {stage.name}")
        except RecipeError as exc:
            problems.extend(f"stages.{stage.name}: {p}" for p in exc.problems)
        except WorkbenchError as exc:
            problems.append(f"stages.{stage.name}: {exc}")
        if stage.accelerate_config and not Path(stage.accelerate_config).is_file():
            problems.append(f"stages.{stage.name}.accelerate_config: {stage.accelerate_config} not found")
    if problems:
        raise RecipeError(comparison.source, problems)


# ----------------------------------------------------------------------------------------------
# Fingerprints


def stage_fingerprint(run: StageRun, upstream: dict[str, str]) -> str:
    """What the stage's result depends on; upstream stages enter by their fingerprints, not their paths' contents."""
    recipe = run.recipe
    inputs = {}
    for src in (recipe.get("data") or {}).get("sources") or []:
        if isinstance(src, dict) and src.get("path"):
            inputs[src["path"]] = path_fingerprint(src["path"])
    model = (recipe.get("model") or {}).get("name_or_path")
    if model and not run.stage.model_from:
        inputs[model] = path_fingerprint(model)
    from importlib import metadata

    return stable_hash(
        {
            "recipe": recipe,
            "upstream": upstream,
            "inputs": inputs,
            "accelerate_config": path_fingerprint(run.stage.accelerate_config) if run.stage.accelerate_config else None,
            "workbench": metadata.version("workbench"),
        }
    )[:16]


# ----------------------------------------------------------------------------------------------
# Running stages


def is_cached(run: StageRun) -> bool:
    state = read_json(run.run_dir / "stage.json")
    manifest = read_json(run.run_dir / "manifest.json")
    return (
        state.get("fingerprint") == run.fingerprint
        and state.get("status") == "completed"
        and manifest.get("status") == "completed"
        and run.model_dir.is_dir()
    )


def stage_command(run: StageRun, recipe_path: Path, resume: bool) -> list[str]:
    if run.stage.accelerate_config:
        cmd = [sys.executable, "-m", "workbench", "launch", str(recipe_path), "--accelerate-config", run.stage.accelerate_config]
    else:
        cmd = [sys.executable, "-m", "workbench", "train", str(recipe_path)]
    return cmd + (["--resume"] if resume else [])


def error_line(log_path: Path) -> str:
    """The most telling line of a failed stage's log: its `error:` message, else the last line."""
    if not log_path.is_file():  # the stage process died before it could open its log
        return "no output (the stage process ended before writing its log)"
    lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error:" in line:
            return line.strip()[:500]
    return (lines[-1] if lines else "no output").strip()[:500]


def run_stage(run: StageRun) -> None:
    """Train one stage in its own process (or processes); a run of the same fingerprint killed midway resumes."""
    state_path = run.run_dir / "stage.json"
    previous = read_json(state_path)
    resume = previous.get("fingerprint") == run.fingerprint and previous.get("status") == "running"
    # a stage killed before its first checkpoint starts over (--resume would fail: nothing to resume)
    resume = resume and (
        newest_complete(run.run_dir / "checkpoints") is not None
        or read_json(run.run_dir / "manifest.json").get("status") == "completed"
    )
    if not resume and run.run_dir.exists():
        shutil.rmtree(run.run_dir)  # a changed stage starts clean: no stale eval.json, samples or checkpoints
    run.run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run.run_dir / "stage_recipe.yaml"
    recipe_path.write_text(dump_yaml(run.recipe), encoding="utf-8")
    write_json(state_path, {"fingerprint": run.fingerprint, "status": "running"})
    log_path = run.run_dir / "stage.log"
    t0 = time.time()
    cmd = stage_command(run, recipe_path, resume)
    from workbench import stageproc

    if run.stage.accelerate_config or not stageproc.usable():
        with open(log_path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                code = proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the stage too: let it record `interrupted`
                stageproc.wait_for_interrupted(proc.wait, proc.kill)
                raise
    else:  # the same command, forked from a process that has imported the libraries already
        code = stageproc.run(cmd[3:], log_path)
    run.seconds = time.time() - t0
    if code == 0:
        run.status = "completed"
    else:
        run.status, run.error = "failed", f"exit code {code}: {error_line(log_path)} (log: {log_path})"
    write_json(state_path, {"fingerprint": run.fingerprint, "status": run.status, "error": run.error, "seconds": run.seconds})


@dataclass
class Progress:
    """Where the comparison stands: stage i of n, time since it began, and an ETA from previous runs' durations."""

    total: int
    started: float = field(default_factory=time.time)
    done: int = 0

    def prefix(self, seed: int) -> str:
        return f"[seed {seed} | stage {self.done + 1}/{self.total} | {duration(time.time() - self.started)}]"

    def eta(self, run: StageRun) -> str:
        """The stage's duration last time it trained (any fingerprint), when this directory has one."""
        previous = read_json(run.run_dir / "stage.json").get("seconds")
        return f" (last run took {duration(previous)}; ETA ~{duration(previous)})" if isinstance(previous, (int, float)) else ""


def train_seed(comparison: Comparison, seed: int, progress: Progress | None = None) -> dict[str, StageRun]:
    """Every stage of one seed, in order; a stage whose upstream failed is skipped, the others still run."""
    progress = progress or Progress(len(comparison.stages))
    runs: dict[str, StageRun] = {}
    for stage in comparison.stages.values():
        recipe = stage_recipe(comparison, stage, seed)
        run = StageRun(stage, seed, recipe, Path(recipe["output_dir"]))
        runs[stage.name] = run
        broken = [u for u in stage.upstream if not runs[u].ok]
        prefix = progress.prefix(seed)
        progress.done += 1
        if broken:
            run.status, run.error = "skipped", f"needs stage {broken[0]}, which {runs[broken[0]].status}"
            print(f"{prefix} {stage.name}: skipped ({run.error})", flush=True)
            continue
        run.fingerprint = stage_fingerprint(run, {u: runs[u].fingerprint for u in stage.upstream})
        if is_cached(run):
            run.status = "cached"
            print(f"{prefix} {stage.name} ({run.method}): cached, fingerprint {run.fingerprint}", flush=True)
            continue
        print(f"{prefix} {stage.name} ({run.method}): training in {run.run_dir} ...{progress.eta(run)}", flush=True)
        try:
            run_stage(run)
        except KeyboardInterrupt:
            last = read_json(run.run_dir / "manifest.json").get("last_checkpoint")
            kept = f"its last complete checkpoint, {Path(last).name}, is kept" if last else "it had no complete checkpoint"
            print(f"{prefix} {stage.name}: interrupted ({kept})", flush=True)
            raise
        print(
            f"{prefix} {stage.name}: {run.status} in {duration(run.seconds)} (total {duration(time.time() - progress.started)})"
            + (f" - {run.error}" if run.error else ""),
            flush=True,
        )
    return runs


# ----------------------------------------------------------------------------------------------
# Evaluating


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


def eval_fingerprint(comparison: Comparison, run: StageRun, cfg: EvalConfig, inputs_fp: str, runs: dict[str, StageRun]) -> str:
    """The policy, the evaluation settings and inputs, and the baseline, reference and reward model it is judged
    with: stages by their fingerprints, model directories by their files (a model replaced in place re-evaluates)."""
    related: dict[str, Any] = {n: runs[n].fingerprint for n in (comparison.baseline_stage, comparison.reward_stage) if n in runs}
    for key in ("baseline", "reference"):
        if getattr(cfg, key):
            related[f"eval.{key}"] = path_fingerprint(getattr(cfg, key))
    return stable_hash([run.fingerprint, dataclasses.asdict(cfg), inputs_fp, related])[:16]


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
    first = recipe_from_dict({**policies[0].recipe, "train": {}}, source=f"stage {policies[0].stage.name}")
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
) -> StageRun:
    """`eval.baseline`, a model rather than a stage, evaluated like a policy (its reward, KL, length, ...) into
    seed-N/baseline/, so the report has its row and pairs every policy's responses with its own."""
    from workbench import evaluate as ev

    model = str(cfg.baseline)
    out = comparison.output_dir / f"seed-{seed}" / BASELINE_ROW
    recipe_dict = {"method": BASELINE_METHOD, "model": {"name_or_path": model}}
    run = StageRun(Stage(BASELINE_ROW, {}), seed, recipe_dict, out, status="completed")
    run.fingerprint = stable_hash([model, path_fingerprint(model)])[:16]
    fp = eval_fingerprint(comparison, run, cfg, inputs.fingerprint, runs)
    saved = read_json(out / "eval.json")
    if saved.get("details", {}).get("eval_fingerprint") == fp:
        run.evaluation = saved["metrics"]
        print(f"[seed {seed}] {BASELINE_ROW} ({model}): evaluation cached", flush=True)
        return run
    t0 = time.time()
    try:
        run.evaluation = ev.evaluate_model(
            model,
            out,
            name=BASELINE_ROW,
            method=BASELINE_METHOD,
            reference=cfg.reference or ev.policy_reference(recipe, cfg),
            tokenizer=tokenizer,
            inputs=inputs,
            cfg=cfg,
            scorers=shared_scorers(scorer_sets, cfg, cfg.reward_model or recipe.reward_model, inputs.max_length),
            shared=shared,
            fingerprint=fp,
        )
    except WorkbenchError as exc:
        run.status, run.error = "failed", f"evaluation: {exc}"
        print(f"[seed {seed}] {BASELINE_ROW}: evaluation failed - {exc}", flush=True)
        return run
    print(f"[seed {seed}] {BASELINE_ROW} ({model}): evaluated in {duration(time.time() - t0)}", flush=True)
    return run


# ----------------------------------------------------------------------------------------------
# The whole comparison


@dataclass
class Outcome:
    comparison: Comparison
    runs: dict[int, dict[str, StageRun]] = field(default_factory=dict)  # seed -> stage -> run
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[StageRun]:
        return [r for runs in self.runs.values() for r in runs.values() if r.status in ("failed", "skipped")]


def compare(comparison: Comparison) -> Outcome:
    from workbench.report import aggregate, write_outputs

    os.environ.setdefault("WANDB_SILENT", "true")  # the stage logs and the report say what W&B would
    comparison.output_dir.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(comparison)
    progress = Progress(len(comparison.seeds) * len(comparison.stages))
    from workbench import stageproc

    if stageproc.usable():
        stageproc.prepare(
            [stage_recipe(comparison, s, comparison.seeds[0]).get("method", "dpo") for s in comparison.stages.values()]
        )
    try:
        for seed in comparison.seeds:
            outcome.runs[seed] = train_seed(comparison, seed, progress)
            evaluate_seed(comparison, seed, outcome.runs[seed])
    finally:
        stageproc.stop()
    outcome.results = aggregate(comparison, outcome.runs)
    write_outputs(comparison, outcome)
    return outcome
