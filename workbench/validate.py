"""`workbench validate`: resolve and check everything a run needs, without loading weights.

Reports every problem it finds (recipe keys, missing files and models, batch-size mismatches
with the accelerate / DeepSpeed config, unreadable data) and shows one tokenized pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from workbench.config import (
    Recipe,
    dump_yaml,
    load_recipe,
    resolved_dict,
    train_config_class,
    train_field_defaults,
)
from workbench.data.formatting import describe_pair, tokenize_pair
from workbench.data.pipeline import tokenization_settings
from workbench.data.sources import Loaded, load_source, looks_like_local_path
from workbench.errors import RecipeError, WorkbenchError
from workbench.launch import global_batch
from workbench.models import load_tokenizer, model_location_problem


def path_problems(recipe: Recipe) -> list[str]:
    problems = []
    for i, src in enumerate(recipe.data.sources):
        if src.path and looks_like_local_path(src.path) and not Path(src.path).expanduser().exists():
            problems.append(f"`data.sources.{i}.path`: '{src.path}' not found (relative to {Path.cwd()})")
    models = [("model.name_or_path", recipe.model.name_or_path), ("reference.name_or_path", recipe.reference.name_or_path)]
    if recipe.reward_model is not None:
        models.append(("reward_model.name_or_path", recipe.reward_model.name_or_path))
    for key, value in models:
        problem = model_location_problem(value) if value else None
        if problem:
            problems.append(f"`{key}`: {problem}")
    return problems


def example_pair(recipe: Recipe) -> str:
    """The first valid pair of the first source, tokenized and truncated as training will see it."""
    tokenizer = load_tokenizer(recipe.model)
    for item in load_source(recipe.data.sources[0], 0):
        if isinstance(item, Loaded):
            pair = tokenize_pair(tokenizer, item.row, tokenization_settings(recipe.data))
            return f"example pair ({item.source}:{item.line}):\n" + describe_pair(tokenizer, pair)
    raise WorkbenchError(f"`data.sources.0` ({recipe.data.sources[0].path}) has no valid pair")


def validate(path: str, overrides: Sequence[str], accelerate_config: str | None) -> tuple[str, list[str]]:
    """(printable report, problems). Problems include everything found, not just the first."""
    try:
        recipe = load_recipe(path, overrides)
    except RecipeError as exc:
        return f"{path}: recipe not valid", exc.problems
    problems = path_problems(recipe)
    sections = ["resolved recipe:", dump_yaml(resolved_dict(recipe))]
    try:
        gb = global_batch(recipe.train, train_field_defaults(train_config_class(recipe.method)), accelerate_config)
        source = f" (from {accelerate_config})" if accelerate_config else ""
        sections.append(f"global batch{source}: {gb.describe()}")
        problems.extend(gb.warnings)
    except WorkbenchError as exc:
        problems.append(str(exc))
    if recipe.method in ("kto", "grpo", "rloo"):  # TRL's own checks, and GRPO / RLOO's completions per step
        from workbench.online import validate_trl_method

        lines, more = validate_trl_method(recipe, gb.processes if "gb" in locals() else 1)
        sections.extend(lines)
        problems.extend(more)
    if recipe.method != "kto" and not any(p.startswith(("`model.", "`data.sources")) for p in problems):
        try:
            sections.append(example_pair(recipe))
        except WorkbenchError as exc:
            problems.append(str(exc))
    return "\n".join(sections), problems
