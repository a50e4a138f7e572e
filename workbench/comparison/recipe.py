"""Reading a comparison recipe: the typed schema (config/comparison.py), the stages it expands to, their run
order, and each stage's composed run recipe, all checked before anything runs."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.comparison.types import BASELINE_ROW, Comparison, Stage
from workbench.config import METHODS, apply_override, build_dataclass, parse_override, read_yaml, recipe_from_dict
from workbench.config.comparison import ComparisonRecipe, StageSteering, stage_sections
from workbench.errors import RecipeError, WorkbenchError
from workbench.method_checks import eval_sampling_problems


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def shape_problems(data: dict[str, Any]) -> list[str]:
    """`seeds` and `stages` in the words that show what they hold; a value refused here is dropped, so the typed
    check does not report it again. Top-level keys left empty in the YAML (`eval:`) take their defaults."""
    problems = []
    seeds = data.get("seeds", [42])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        problems.append(f"`seeds` must be a non-empty list of integers, got {seeds!r}")
        data.pop("seeds", None)
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        problems.append("`stages` must be a mapping of stage name -> stage (e.g. sft: {method: sft})")
        data.pop("stages", None)
    else:
        for name in [n for n, raw in stages.items() if not isinstance(raw, dict)]:
            problems.append(f"`stages.{name}` must be a mapping (method, recipe, model_from, train, ...)")
            del stages[name]
    for key in [k for k, v in data.items() if v is None]:
        del data[key]
    return problems


def expand_stages(recipe: ComparisonRecipe) -> dict[str, Stage]:
    """The stages a recipe's `stages:` stands for, in the order written: one each (the place a stage that
    stands for several, such as a sweep, would expand)."""
    steering = [f.name for f in dataclasses.fields(StageSteering)]
    return {
        str(name): Stage(str(name), stage_sections(cfg), **{k: getattr(cfg, k) for k in steering})
        for name, cfg in recipe.stages.items()
    }


def order_problems(stages: dict[str, Stage]) -> list[str]:
    """Every stage reads only stages written before it, so the written order runs each after what it reads."""
    problems, seen = [], set()
    for stage in stages.values():
        problems.extend(
            f"`stages.{stage.name}`: `{ref}` is not an earlier stage (stages run in the order written)"
            for ref in stage.upstream
            if ref not in seen
        )
        seen.add(stage.name)
    return problems


def stage_needs(comparison: Comparison) -> dict[str, list[str]]:
    """The one dependency graph: each stage -> the stages it reads, `Stage.upstream` and the reward stage that
    `stage_recipe` wires into a method needing a reward (which executors must wait for, and fingerprints include)."""
    graph = {}
    for stage in comparison.stages.values():
        implicit = implicit_reward_stage(comparison, stage, composed_sections(comparison, stage))
        graph[stage.name] = list(dict.fromkeys([*stage.upstream, *([implicit] if implicit and implicit != stage.name else [])]))
    return graph


def run_order(comparison: Comparison) -> list[Stage]:
    """The order the stages run in: as written, except that a stage comes after every stage it reads (`order_problems`
    checked the written order for `Stage.upstream`; the wired reward stage may still move a stage later)."""
    graph, placed, order = stage_needs(comparison), set(), []
    while len(order) < len(graph):
        ready = next((n for n in graph if n not in placed and all(u in placed for u in graph[n])), None)
        if ready is None:
            left = [n for n in graph if n not in placed]
            raise RecipeError(
                comparison.source, [f"stages {', '.join(left)} read each other (through `reward_stage`); break the loop"]
            )
        placed.add(ready)
        order.append(comparison.stages[ready])
    return order


def load_comparison(path: str | Path, overrides: Sequence[str] = ()) -> Comparison:
    """Read and check a comparison recipe; every stage's recipe is composed and validated before anything runs."""
    data = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    source = str(path)
    problems = shape_problems(data)
    recipe: ComparisonRecipe = build_dataclass(ComparisonRecipe, data, "", problems)
    stages = expand_stages(recipe)
    problems.extend(order_problems(stages))
    problems.extend(eval_sampling_problems(recipe.eval.generation))
    for key in ("baseline_stage", "reward_stage"):
        if getattr(recipe, key) is not None and getattr(recipe, key) not in stages:
            problems.append(f"`{key}: {getattr(recipe, key)}` is not a stage; stages: {', '.join(stages)}")
    if recipe.baseline_stage is not None and recipe.eval.baseline:
        problems.append(
            f"`baseline_stage: {recipe.baseline_stage}` and `eval.baseline: {recipe.eval.baseline}` both name the win-rate "
            "baseline; keep one (a stage's policy, or a model directory / hub id)"
        )
    elif recipe.eval.baseline and BASELINE_ROW in stages:
        problems.append(
            f"a stage is named `{BASELINE_ROW}`, the report's row of `eval.baseline`; rename the stage, or make it the "
            f"baseline with `baseline_stage: {BASELINE_ROW}` instead of `eval.baseline`"
        )
    if problems:
        raise RecipeError(source, problems)
    comparison = Comparison(
        name=recipe.name or Path(path).stem,
        output_dir=Path(recipe.output_dir or f"runs/{Path(path).stem}"),
        seeds=recipe.seeds,
        base=recipe.base,
        stages=stages,
        eval=recipe.eval,
        baseline_stage=recipe.baseline_stage,
        reward_stage=recipe.reward_stage,
        source=source,
        executor=recipe.executor,
    )
    check_stage_recipes(comparison)
    run_order(comparison)  # a loop through `reward_stage` is refused here, before anything runs
    return comparison


def composed_sections(comparison: Comparison, stage: Stage) -> dict[str, Any]:
    """The stage's recipe file, then `base`, then its own sections, before the comparison sets its links."""
    recipe = read_yaml(stage.recipe) if stage.recipe else {}
    return deep_merge(deep_merge(recipe, comparison.base), stage.sections)


def implicit_reward_stage(comparison: Comparison, stage: Stage, recipe: dict[str, Any]) -> str | None:
    """`reward_stage`, for a stage whose method needs a reward and which names neither `reward_from` nor a
    `reward_model` in its composed recipe; else None."""
    spec = METHODS.get(recipe.get("method"))
    if stage.reward_from is None and spec is not None and spec.needs_reward and not recipe.get("reward_model"):
        return comparison.reward_stage
    return None


def stage_method(comparison: Comparison, stage: Stage) -> str:
    return composed_sections(comparison, stage).get("method", "dpo")


def data_from_file(comparison: Comparison, stage: Stage) -> str | None:
    """The file name in its `data_from` stage's directory that `stage` trains on (None without data_from)."""
    if not stage.data_from:
        return None
    return METHODS[stage_method(comparison, comparison.stages[stage.data_from])].writes_data


def link_problems(comparison: Comparison) -> list[str]:
    """`data_from` names a stage whose method writes data (the registry's `writes_data`); `model_from` and
    `reward_from` name one that exports a model."""
    writers = [name for name, spec in METHODS.items() if spec.writes_data]
    problems = []
    for stage in comparison.stages.values():
        for key in ("model_from", "reward_from", "data_from"):
            source = comparison.stages.get(getattr(stage, key) or "")
            if source is None:  # unset, or not an earlier stage (order_problems said so)
                continue
            method = stage_method(comparison, source)
            spec = METHODS.get(method)
            if spec is None:  # an unknown method: the stage's own recipe check names it
                continue
            if key == "data_from" and spec.writes_data is None:
                problems.append(
                    f"`stages.{stage.name}.data_from: {source.name}`: stage `{source.name}` is a `method: {method}` stage, "
                    f"which writes no data; name a stage whose method writes data ({', '.join(writers)})"
                )
            elif key != "data_from" and not spec.produces_model:
                problems.append(
                    f"`stages.{stage.name}.{key}: {source.name}`: stage `{source.name}` (`method: {method}`) writes "
                    f"{spec.writes_data}, not a model; read it with `data_from: {source.name}`, or name a stage that trains one"
                )
    return problems


def stage_recipe(comparison: Comparison, stage: Stage, seed: int) -> dict[str, Any]:
    """The stage's recipe: its recipe file, then `base`, then its own sections; run dir, seed, tracking and links set."""
    recipe = composed_sections(comparison, stage)
    seed_dir = comparison.output_dir / f"seed-{seed}"
    recipe["output_dir"] = str(seed_dir / stage.name)
    recipe["seed"] = seed
    tracking = recipe.setdefault("tracking", {}) or {}
    tracking.update(group=comparison.name, job_type=recipe.get("method", "dpo"), name=f"{comparison.name}-{stage.name}-s{seed}")
    recipe["tracking"] = tracking
    if stage.model_from:
        recipe.setdefault("model", {})["name_or_path"] = str(seed_dir / stage.model_from / "model")
    reward_from = stage.reward_from or implicit_reward_stage(comparison, stage, recipe)
    if reward_from:
        rm = {k: v for k, v in (recipe.get("reward_model") or {}).items() if k != "function"}
        recipe["reward_model"] = {"normalize": True, **rm, "name_or_path": str(seed_dir / reward_from / "model")}
    written = data_from_file(comparison, stage)
    if written:  # the data-writing stage's file, read with the base's data settings
        recipe.setdefault("data", {})["sources"] = [{"path": str(seed_dir / str(stage.data_from) / written)}]
    return recipe


def check_stage_recipes(comparison: Comparison) -> None:
    """Every stage recipe of the first seed is validated; all problems are reported together."""
    problems = link_problems(comparison)
    if problems:  # a stage reading what an earlier stage does not make cannot be composed
        raise RecipeError(comparison.source, problems)
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
