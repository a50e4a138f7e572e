"""Comparison recipe schema: the typed sections of a `workbench compare` recipe, every default with its help text.

The same machinery as run recipes (`build_dataclass`: unknown keys name the closest valid key). A stage is
the keys that steer the comparison plus any run-recipe section (`method`, `model`, `train`, ...), kept as
given and checked as a recipe once the stage's recipe is composed (workbench/comparison/recipe.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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
