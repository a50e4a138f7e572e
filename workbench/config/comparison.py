"""Comparison recipe schema: the typed sections of a `workbench compare` recipe, every default with its help text.

The same machinery as run recipes (`build_dataclass`: unknown keys name the closest valid key). A stage is
the keys that steer the comparison plus any run-recipe section (`method`, `model`, `train`, ...), kept as
given and checked as a recipe once the stage's recipe is composed (workbench/comparison/recipe.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.config.schema import EvalConfig, Recipe, _help


class Unset:
    """A stage section the stage does not set (distinct from one it sets to null)."""

    def __repr__(self) -> str:
        return "unset"


UNSET: Any = Unset()
RECIPE_SECTIONS = tuple(f.name for f in dataclasses.fields(Recipe))


@dataclass
class StageSteering:
    """The keys of a stage that steer the comparison (the rest of a stage is recipe sections)."""

    recipe: str | None = _help(
        "A run recipe file the stage starts from; `base` and the stage's own sections are merged over it.", default=None
    )
    model_from: str | None = _help(
        "An earlier stage whose trained model this stage starts from (its `model.name_or_path`).", default=None
    )
    reward_from: str | None = _help(
        "An earlier stage whose reward model this stage trains against; unset: `reward_stage` for methods that need a reward.",
        default=None,
    )
    data_from: str | None = _help(
        "An earlier stage that writes data (`method: pairs`) whose output becomes this stage's `data.sources` (its "
        "pairs.jsonl); the other `data` settings (max_length, eval_split, ...) stay the base's.",
        default=None,
    )
    accelerate_config: str | None = _help(
        "Launch the stage with this accelerate config (`workbench launch`); unset: one process (`workbench train`).",
        default=None,
    )
    evaluate: bool = _help("Evaluate the stage's policy in the shared evaluation (policies only).", default=True)
    sweep: dict[str, Any] | None = _help(
        "Recipe keys to sweep, each with its list of values (`{train.beta: [0.03, 0.1, 0.3]}`; several keys: their grid): "
        "the stage becomes one stage per point, named `NAME@beta=0.1`.",
        default=None,
    )


# A stage: the steering keys, then every run-recipe section (free mappings here, checked as a recipe once composed).
StageConfig = dataclasses.make_dataclass(
    "StageConfig",
    [
        (name, Any, field(default=UNSET, metadata={"help": f"The stage's recipe section `{name}` (see the run recipe)."}))
        for name in RECIPE_SECTIONS
    ],
    bases=(StageSteering,),
)
StageConfig.__module__ = __name__
StageConfig.__doc__ = "One stage of a comparison: steering keys and run-recipe sections."


def stage_sections(stage: Any) -> dict[str, Any]:
    """The recipe sections a stage sets, as given."""
    return {name: getattr(stage, name) for name in RECIPE_SECTIONS if getattr(stage, name) is not UNSET}


@dataclass
class SlurmConfig:
    """How `executor.kind: slurm` asks for its jobs (sbatch options through submitit); nodes, tasks and GPUs come from
    each stage's accelerate config."""

    partition: str | None = _help("sbatch --partition of every job; unset: the cluster's default partition.", default=None)
    account: str | None = _help("sbatch --account charged for the jobs; unset: your default account.", default=None)
    qos: str | None = _help("sbatch --qos of every job; unset: the default quality of service.", default=None)
    time_min: int = _help(
        "Time limit of each job in minutes (sbatch --time); a job past it is killed and resubmitted once, resuming from "
        "its last complete checkpoint.",
        default=24 * 60,
    )
    cpus_per_task: int | None = _help("sbatch --cpus-per-task (one task per node); unset: the cluster's default.", default=None)
    gpus: int = _help(
        "GPUs of a job whose stage has no accelerate_config (one process) and of each evaluation job; 0 on CPU partitions.",
        default=1,
    )
    main_process_port: int | None = _help(
        "Port of a multi-node stage's main node; unset: 20000 + the job id modulo 20000, so two jobs sharing a node differ.",
        default=None,
    )
    extra_sbatch: dict[str, Any] = _help(
        "Further sbatch options, written as given (e.g. {mem: 0, exclusive: true, constraint: a100}).", default_factory=dict
    )
    setup: list[str] = _help(
        "Shell lines each job runs before the workbench starts (module load ..., source .venv/bin/activate).",
        default_factory=list,
    )
    folder: str | None = _help("Where submitit writes job scripts, pickles and job logs; unset: OUTPUT_DIR/jobs.", default=None)
    poll_s: float = _help("Seconds between two looks at the jobs' states (sacct) while `compare` waits.", default=30.0)


@dataclass
class ExecutorConfig:
    """Where and how the stages run: one after another here, several at once here, or as cluster jobs."""

    kind: Literal["local", "slurm", "submitit_local"] = _help(
        "local: stage processes on this machine; slurm: one Slurm job per stage and seed and per evaluation, through "
        "submitit; submitit_local: the same jobs through submitit's LocalExecutor on this machine (one node per job), to "
        "try the Slurm path without a cluster.",
        default="local",
    )
    max_parallel: int | None = _help(
        "Stages (or jobs) running at once; local: each gets its share of the GPUs or CPU cores, said in the log. "
        "Unset: 1 for local, no limit for slurm, 2 for submitit_local.",
        default=None,
    )
    slurm: SlurmConfig = _help("sbatch options of the jobs (slurm and submitit_local).", default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {self.max_parallel}")

    @property
    def parallel(self) -> int | None:
        """The cap on stages or jobs at once (None: no cap)."""
        if self.max_parallel is not None:
            return self.max_parallel
        return {"local": 1, "submitit_local": 2}.get(self.kind)


def _default_seeds() -> list[int]:
    return [42]


@dataclass
class ComparisonRecipe:
    """A comparison: stages trained from one base and one dataset per seed, evaluated the same way."""

    name: str | None = _help("The comparison's name (W&B group, report title); unset: the recipe file's name.", default=None)
    output_dir: str | None = _help("Where every seed's stages and the report go; unset: runs/<recipe file name>.", default=None)
    seeds: list[int] = _help("Training seeds: every stage trains once per seed.", default_factory=_default_seeds)
    base: dict[str, Any] = _help(
        "Recipe sections every stage shares (model, data, generation, tracking, ...).", default_factory=dict
    )
    baseline_stage: str | None = _help(
        "The stage whose policy is the win-rate baseline and the reference of every KL.", default=None
    )
    reward_stage: str | None = _help(
        "The stage whose reward model gives the evaluation's `reward_mean` and the reward of methods that need one.",
        default=None,
    )
    eval: EvalConfig = _help("The shared evaluation of every policy.", default_factory=EvalConfig)
    control: bool = _help(
        "Also train the baseline stage again with another seed (or, for `eval.baseline`, sample it again with another "
        "seed), reported as the policy `BASELINE@control`: its difference from the baseline shows the noise.",
        default=False,
    )
    stages: dict[str, StageConfig] = _help(  # type: ignore[valid-type]
        "Stage name -> stage, run in the order written (a stage reads only earlier stages).", default_factory=dict
    )
    executor: ExecutorConfig = _help(
        "Where the stages run (`compare --executor` / `--max-parallel` win over it).", default_factory=ExecutorConfig
    )
