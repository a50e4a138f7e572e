"""Recipe loading: YAML file -> `--set` overrides -> typed, checked `Recipe`; the resolved view."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from workbench.config.checks import (
    build_dataclass,
    check_train_section,
    cross_checks,
    plain_train_defaults,
    plain_value,
)
from workbench.config.methods import METHODS
from workbench.config.schema import WORKBENCH_OWNED_TRAIN_KEYS, Recipe
from workbench.errors import RecipeError

# ----------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a", "b", "0", "c"], YAML-typed value)."""
    if "=" not in text:
        raise RecipeError("--set", [f"`{text}` is not key=value (e.g. --set train.learning_rate=1e-5)"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise RecipeError("--set", [f"`{text}`: the value is not valid YAML ({exc.problem})"]) from None
    if isinstance(value, str):
        value = _coerce_float_string(value)
    return key.strip().split("."), value


def _coerce_float_string(value: str) -> Any:
    """YAML 1.1 reads `1e-5` as a string; users mean a number."""
    try:
        return float(value) if any(c in value for c in "eE") and value.strip()[0] in "+-.0123456789" else value
    except ValueError:
        return value


def apply_override(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set tree[k1][k2]... = value, creating mappings and indexing lists by number."""
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError("--set", [f"`{'.'.join(keys)}`: `{key}` is not an index of a {len(node)}-item list"])
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise RecipeError("--set", [f"`{'.'.join(keys[:i])}` is not a mapping, cannot set `{key}` in it"])
        if last:
            node[key] = value
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]


def _fix_yaml_floats(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str):
        return _coerce_float_string(node)
    return node


# ----------------------------------------------------------------------------------------------
# Loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found; pass the path to a .yaml recipe"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise RecipeError(str(path), [f"not valid YAML at {where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), ["a recipe must be a mapping of sections (method, model, data, train, ...)"])
    return data


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Build and validate a Recipe; raise one RecipeError listing every problem."""
    problems: list[str] = []
    data = _fix_yaml_floats(data)
    train = data.get("train") or {}
    recipe = build_dataclass(Recipe, {k: v for k, v in data.items() if k != "train"}, "", problems)
    if not isinstance(train, dict):
        problems.append("`train` must be a mapping of training-argument fields")
    elif recipe.method in METHODS:
        recipe.train = check_train_section(recipe.method, train, problems)
    problems.extend(cross_checks(recipe))
    if problems:
        raise RecipeError(source, problems)
    return recipe


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe file, apply `--set` overrides, validate, return the typed recipe."""
    data = read_yaml(path)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return recipe_from_dict(data, source=str(path))


# ----------------------------------------------------------------------------------------------
# Resolved view and effective values


def resolved_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe with every default filled in (train: the method class's defaults + overrides)."""
    out = dataclasses.asdict(recipe)
    train = {}
    if recipe.method in METHODS:
        train = {k: v for k, v in plain_train_defaults(recipe.method).items() if k not in WORKBENCH_OWNED_TRAIN_KEYS}
    train.update(recipe.train)
    out["train"] = {k: plain_value(v) for k, v in sorted(train.items())}
    return out


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
