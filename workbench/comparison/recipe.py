"""Reading a comparison recipe: the typed schema (config/comparison.py), the stages it expands to, their run
order, and each stage's composed run recipe, all checked before anything runs."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workbench.comparison.types import BASELINE_ROW, CONTROL_SUFFIX, Comparison, Stage
from workbench.config import (
    METHODS,
    apply_override,
    build_dataclass,
    parse_override,
    read_yaml,
    recipe_from_dict,
    unknown_key_message,
)
from workbench.config.comparison import RECIPE_SECTIONS, ComparisonRecipe, StageSteering, stage_sections
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


def expand_stages(recipe: ComparisonRecipe, problems: list[str] | None = None) -> dict[str, Stage]:
    """The stages a recipe's `stages:` stands for, in the order written: one each, or one per point of its `sweep`
    (named `NAME@key=value`, family NAME); refused sweeps are added to `problems` and expand to nothing."""
    problems = [] if problems is None else problems
    steering = [f.name for f in dataclasses.fields(StageSteering) if f.name != "sweep"]
    stages: dict[str, Stage] = {}
    for name, cfg in recipe.stages.items():
        name = str(name)
        kwargs = {k: getattr(cfg, k) for k in steering}
        points = sweep_points(name, cfg.sweep, problems) if cfg.sweep is not None else [{}]
        for values in points:
            point = point_name(name, values) if values else name
            if point in stages:
                problems.append(f"`stages.{name}.sweep`: its point `{point}` clashes with another stage of that name")
                continue
            stages[point] = Stage(point, stage_sections(cfg), family=name, sweep=values, **kwargs)
    return stages


# Recipe keys a sweep may not vary, and why
NOT_SWEPT = {
    "method": "one stage is one method; write a stage per method",
    "seed": "the comparison sets it from `seeds:`",
    "output_dir": "the comparison sets it (OUTPUT_DIR/seed-S/STAGE)",
}


def flat_keys(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: `{train: {beta: [..]}}` (how `--set stages.X.sweep.train.beta=[..]` writes
    it) and `{train.beta: [..]}` are the same sweep."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def sweep_points(name: str, sweep: Any, problems: list[str]) -> list[dict[str, Any]]:
    """Every combination of a stage's swept values (itertools.product, keys and values in the order written), each
    point as {recipe key: value}; the keys are checked here by their section, the values when each point's recipe
    is composed and checked like any stage's."""
    where = f"stages.{name}.sweep"
    if not isinstance(sweep, dict) or not sweep:
        problems.append(f"`{where}` must map recipe keys to lists of values, e.g. {{train.beta: [0.03, 0.1, 0.3]}}")
        return []
    grid = flat_keys(sweep)
    found = []
    for key, values in grid.items():
        head = key.split(".")[0]
        if head not in RECIPE_SECTIONS:
            found.append(unknown_key_message(f"{where}.", head, RECIPE_SECTIONS) + " (a sweep key starts with a recipe section)")
        elif head in NOT_SWEPT:
            found.append(f"`{where}.{key}` cannot be swept: {NOT_SWEPT[head]}")
        elif not isinstance(values, list) or not values:
            found.append(f"`{where}.{key}` must be a non-empty list of values, got {values!r}")
    problems.extend(found)
    if found:
        return []
    return [dict(zip(grid, combination)) for combination in itertools.product(*grid.values())]


def value_label(value: Any) -> str:
    """A swept value as it appears in a stage name (and so a directory name): YAML's spelling, `/` and spaces as `_`."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "+".join(value_label(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", repr(value) if isinstance(value, float) else str(value))


def point_name(family: str, values: dict[str, Any]) -> str:
    """`dpo@beta=0.1`: each swept key by its last component (the full dotted key when two share it), joined by commas."""
    last = [k.rsplit(".", 1)[-1] for k in values]
    parts = [f"{k if last.count(k.rsplit('.', 1)[-1]) > 1 else k.rsplit('.', 1)[-1]}={value_label(v)}" for k, v in values.items()]
    return f"{family}@{','.join(parts)}"


def family_problems(recipe: ComparisonRecipe, stages: dict[str, Stage]) -> list[str]:
    """A reference to a swept stage must name one of its points; naming the family is ambiguous."""
    families: dict[str, list[str]] = {}
    for stage in stages.values():
        if stage.sweep:
            families.setdefault(stage.family, []).append(stage.name)
    # a whole sweep shares its references: each is reported once, at the stage written
    refs = [(f"stages.{s.family}.{k}", getattr(s, k)) for s in stages.values() for k in upstream_keys()]
    refs += [(key, getattr(recipe, key)) for key in ("baseline_stage", "reward_stage")]
    problems: list[str] = []
    for where, ref in dict.fromkeys(refs):
        if ref in families:
            problems.append(f"`{where}: {ref}` names a swept stage; name one of its points: {', '.join(families[ref])}")
    return problems


def upstream_keys() -> list[str]:
    """The stage keys that name another stage (`model_from`, `reward_from`, ...): the fields ending in `_from`."""
    return [f.name for f in dataclasses.fields(StageSteering) if f.name.endswith("_from")]


def with_control(comparison: Comparison) -> None:
    """`control: true` with a baseline stage: that stage again with another seed, right after it (BASELINE@control).
    A baseline given as `eval.baseline` is sampled again in the evaluation instead (comparison/evaluation.py)."""
    base = comparison.baseline_stage
    if not comparison.control or not base:
        return
    stages: dict[str, Stage] = {}
    for name, stage in comparison.stages.items():
        stages[name] = stage
        if name == base:
            control = dataclasses.replace(
                stage, name=f"{base}{CONTROL_SUFFIX}", family=f"{base}{CONTROL_SUFFIX}", control_of=base
            )
            stages[control.name] = control
    comparison.stages = stages


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
    stages = expand_stages(recipe, problems)
    family = family_problems(recipe, stages)
    problems.extend(family or order_problems(stages))
    problems.extend(eval_sampling_problems(recipe.eval.generation))
    for key in ("baseline_stage", "reward_stage"):
        if getattr(recipe, key) is not None and getattr(recipe, key) not in stages and not family:
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
    if recipe.control and recipe.baseline_stage is None and not recipe.eval.baseline:
        problems.append("`control: true` repeats the baseline, but there is none: set `baseline_stage` (or `eval.baseline`)")
    if recipe.eval.bootstrap_samples < 40:
        problems.append(
            f"`eval.bootstrap_samples: {recipe.eval.bootstrap_samples}` is too few for a 95% interval; use at least 40 (default 200)"
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
        control=recipe.control,
        executor=recipe.executor,
    )
    with_control(comparison)
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
    for key, value in stage.sweep.items():  # a sweep point's values, set as `--set` would set them
        apply_override(recipe, key.split("."), copy.deepcopy(value))
    share_reference_log_probs(recipe, stage)
    seed_dir = comparison.output_dir / f"seed-{seed}"
    recipe["output_dir"] = str(seed_dir / stage.name)
    recipe["seed"] = seed + stage.seed_offset
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


def share_reference_log_probs(recipe: dict[str, Any], stage: Stage) -> None:
    """A sweep point of a method whose precomputed reference log-probs are cached by content (DPO) precomputes them
    unless its recipe says otherwise, so the points of a sweep compute them once. Not with LoRA or a separate
    reference model: the reference is then no copy of the starting policy."""
    spec = METHODS.get(recipe.get("method"))
    reference = recipe.get("reference") or {}
    if not stage.sweep or spec is None or not spec.shares_reference_cache or "precompute_log_probs" in reference:
        return
    if reference.get("name_or_path") or (recipe.get("model") or {}).get("lora"):
        return
    recipe["reference"] = {**reference, "precompute_log_probs": True}


def checkable_recipe(comparison: Comparison, stage: Stage, seed: int, reward_too: bool = False) -> dict[str, Any]:
    """The stage's recipe as `validate` and `plan` check it before anything ran: a stage that starts from an earlier
    stage's model is checked on the model its chain starts from (the same architecture, already on disk); with
    `reward_too` (the memory plan, which reads its config) so is a reward model an earlier stage will train."""
    data = stage_recipe(comparison, stage, seed)
    if stage.model_from:
        data.setdefault("model", {})["name_or_path"] = origin_model(comparison, stage, seed)
    reward = (data.get("reward_model") or {}).get("name_or_path")
    upstream = {str(comparison.output_dir / f"seed-{seed}" / name / "model"): s for name, s in comparison.stages.items()}
    if reward_too and reward in upstream:
        data["reward_model"]["name_or_path"] = origin_model(comparison, upstream[reward], seed)
    return data


def origin_model(comparison: Comparison, stage: Stage, seed: int) -> str | None:
    """The model a stage's chain of `model_from` starts from (on disk before anything runs)."""
    while stage.model_from:
        stage = comparison.stages[stage.model_from]
    return (stage_recipe(comparison, stage, seed).get("model") or {}).get("name_or_path")


def stage_lines(comparison: Comparison) -> list[str]:
    """The expanded stages in run order, each sweep's points under its family and the control named (validate, plan)."""
    lines, done = [], set()
    for stage in comparison.stages.values():
        if stage.sweep and stage.family not in done:
            done.add(stage.family)
            points = [s for s in comparison.stages.values() if s.family == stage.family]
            keys = ", ".join(stage.sweep)
            lines.append(f"  {stage.family}: sweep of {keys}, {len(points)} stages: {', '.join(s.name for s in points)}")
        elif stage.control_of:
            lines.append(f"  {stage.name}: the control, `{stage.control_of}` trained again with seed + {stage.seed_offset}")
        elif not stage.sweep:
            lines.append(f"  {stage.name}")
    return lines


def check_stage_recipes(comparison: Comparison) -> None:
    """Every stage recipe of the first seed is validated; all problems are reported together (a problem every point
    of a sweep shares once, at the stage written)."""
    links = link_problems(comparison)
    if links:  # a stage reading what an earlier stage does not make cannot be composed
        raise RecipeError(comparison.source, links)
    found: dict[str, list[str]] = {}
    for stage in comparison.stages.values():
        mine = found.setdefault(stage.name, [])
        try:
            recipe_from_dict(stage_recipe(comparison, stage, comparison.seeds[0]), source=f"stage {stage.name}")
        except RecipeError as exc:
            mine.extend(exc.problems)
        except WorkbenchError as exc:
            mine.append(str(exc))
        if stage.accelerate_config and not Path(stage.accelerate_config).is_file():
            mine.append(f"accelerate_config: {stage.accelerate_config} not found")
    problems = stage_problems(comparison, found)
    if problems:
        raise RecipeError(comparison.source, problems)


def stage_problems(comparison: Comparison, found: dict[str, list[str]]) -> list[str]:
    """Each stage's problems as `stages.NAME: problem`; one every point of a sweep has is said once, at the stage
    written (`stages.dpo: ...`), not once per point."""
    problems: list[str] = []
    for stage in comparison.stages.values():
        points = [s.name for s in comparison.stages.values() if s.sweep and s.family == stage.family]
        for p in found.get(stage.name, []):
            shared = len(points) > 1 and all(p in found.get(n, []) for n in points)
            line = f"stages.{stage.family if shared else stage.name}: {p}"
            if line not in problems:
                problems.append(line)
    return problems
