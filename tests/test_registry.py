"""The method registry (workbench/config/methods.py) agrees with the recipe schema, the method modules and the
shipped recipes; the reference rule gives each method the reference its trainer uses."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from pathlib import Path

import pytest
from conftest import REPO, read_yaml

from workbench.config import METHODS, Recipe, recipe_from_dict, reference_rule, type_hints
from workbench.data.schema import KIND_FIELDS


def test_the_recipe_schema_offers_exactly_the_registered_methods_in_order():
    assert typing.get_args(type_hints(Recipe)["method"]) == tuple(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_registered_method_has_its_module_train_config_and_data_kind(name):
    spec = METHODS[name]
    assert spec.name == name
    run = importlib.import_module(spec.module).run
    assert list(inspect.signature(run).parameters) == ["ctx"]
    module, cls_name = spec.train_config
    assert dataclasses.is_dataclass(getattr(importlib.import_module(module), cls_name))
    assert spec.data_kind in KIND_FIELDS
    assert spec.summary and "\n" not in spec.summary


def shipped_methods() -> dict[str, list[str]]:
    """method -> the shipped recipes (and comparison stages) that run it."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        data = read_yaml(path)
        for where, method in recipe_methods(path, data):
            found.setdefault(method, []).append(where)
    return found


def recipe_methods(path: Path, data: dict) -> list[tuple[str, str]]:
    if "stages" not in data:
        return [(path.name, data.get("method", "dpo"))]
    out = []
    for name, stage in data["stages"].items():
        method = stage.get("method") or (data.get("base") or {}).get("method")
        if method is None and stage.get("recipe"):
            method = read_yaml(REPO / stage["recipe"]).get("method")
        out.append((f"{path.name}:stages.{name}", method or "dpo"))
    return out


def test_the_shipped_recipes_run_registered_methods_and_every_method_has_one():
    found = shipped_methods()
    assert set(found) <= set(METHODS), sorted(set(found) - set(METHODS))
    plain = {m for m, where in found.items() if any(":" not in w for w in where)}
    assert plain == set(METHODS), f"no shipped recipe for {sorted(set(METHODS) - plain)}"


def recipe(method: str, lora: bool = False, reference: dict | None = None) -> Recipe:
    data = {
        "method": method,
        "model": {"name_or_path": "base", **({"lora": {"r": 4}} if lora else {})},
        "reference": reference or {},
        "data": {"sources": [{"path": "x.jsonl"}]},
    }
    if METHODS[method].needs_reward:
        data["reward_model"] = {"function": "m:f"}
    return recipe_from_dict(data)


REFERENCES = [
    # (method, LoRA, reference section, train values) -> what the manifest says
    ("dpo", False, {}, {}, "frozen copy of base"),
    ("dpo", False, {"name_or_path": "ref"}, {}, "separate model ref"),
    ("dpo", True, {"name_or_path": "ref"}, {}, "separate model ref"),
    ("dpo", True, {}, {}, "policy base with adapters disabled"),
    ("kto", False, {"precompute_log_probs": True}, {}, "precomputed log-probs of the initial policy"),
    ("kto", True, {"precompute_log_probs": True}, {}, "policy base with adapters disabled"),
    ("ppo", False, {}, {}, "frozen copy of base"),
    ("ppo", False, {"name_or_path": "ref"}, {}, "frozen copy of ref"),
    ("ppo", True, {"name_or_path": "ref"}, {}, "policy base with adapters disabled"),
    ("grpo", False, {}, {"beta": 0.0}, "none (beta 0: no KL term)"),
    ("grpo", True, {}, {"beta": 0.0}, "none (beta 0: no KL term)"),
    ("rloo", False, {}, {"beta": 0.05}, "frozen copy of base"),
    ("rloo", True, {}, {"beta": 0.05}, "policy base with adapters disabled"),
]


@pytest.mark.parametrize("method, lora, reference, train, expected", REFERENCES)
def test_the_reference_rule(method, lora, reference, train, expected):
    assert reference_rule(recipe(method, lora, reference), train).describe() == expected


def test_methods_without_a_reference_get_none():
    for name in ("sft", "reward", "rejection_sampling"):
        assert reference_rule(recipe(name), {"beta": 0.1}).kind == "none"
