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
the libraries once (workbench.stageproc), instead of a fresh interpreter per stage. A stage is skipped
when its fingerprint (resolved recipe, upstream fingerprints, input files, accelerate config) matches a
completed run; a changed stage reruns with everything downstream of it. A failed stage is recorded;
stages that do not depend on it still run, and the report says what failed and why.

The package: `types` (plain data), `recipe` (reading and checking a comparison recipe, the stages and
their order), `run` (fingerprints, running one stage, every stage of a seed), `evaluation` (the shared
evaluation of a seed's policies).
"""

from __future__ import annotations

import os

from workbench.comparison.recipe import load_comparison, stage_recipe
from workbench.comparison.types import BASELINE_METHOD, BASELINE_ROW, Comparison, Outcome, Stage, StageRun

__all__ = [
    "BASELINE_METHOD",
    "BASELINE_ROW",
    "Comparison",
    "Outcome",
    "Stage",
    "StageRun",
    "compare",
    "load_comparison",
]


def compare(comparison: Comparison, executor: str | None = None, max_parallel: int | None = None) -> Outcome:
    """Train every stage of every seed, evaluate the policies, and write the report; the stages run through the
    executor of the recipe's `executor` (`executor` / `max_parallel`, from the command line, win over it)."""
    from workbench import stageproc
    from workbench.comparison.executors import LocalExecutor, executor_config
    from workbench.comparison.run import Progress, plan, run_tasks
    from workbench.report import aggregate, write_outputs

    os.environ.setdefault("WANDB_SILENT", "true")  # the stage logs and the report say what W&B would
    comparison.output_dir.mkdir(parents=True, exist_ok=True)
    cfg = executor_config(comparison, executor, max_parallel)
    outcome = Outcome(comparison)
    progress = Progress(len(comparison.seeds) * len(comparison.stages))
    outcome.runs, tasks = plan(comparison, jobs=cfg.kind != "local" or (cfg.parallel or 1) > 1)
    if cfg.kind == "local":
        runner = LocalExecutor(comparison, outcome.runs, cfg.parallel or 1)
    else:
        from workbench.comparison.jobs import JobExecutor

        runner = JobExecutor(comparison, cfg, outcome.runs)
    if cfg.kind == "local" and stageproc.usable():
        stageproc.prepare(
            [stage_recipe(comparison, s, comparison.seeds[0]).get("method", "dpo") for s in comparison.stages.values()]
        )
    try:
        run_tasks(tasks, runner, progress)
    finally:
        stageproc.stop()
    if hasattr(runner, "collect"):
        runner.collect(tasks)
    outcome.results = aggregate(comparison, outcome.runs)
    write_outputs(comparison, outcome)
    return outcome
