"""Comparison recipes on the typed schema of run recipes (workbench/config/comparison.py): unknown keys name the
closest valid key at their full path, values are type-checked, every field has its help text and default."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import write_yaml

from workbench.comparison import load_comparison
from workbench.config import Recipe
from workbench.config.comparison import ComparisonRecipe, StageConfig
from workbench.errors import RecipeError

BASE = {"model": {"name_or_path": "m"}, "data": {"sources": [{"synthetic": {"num_pairs": 8}}]}}


def problems_of(tmp_path, data: dict) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_comparison(write_yaml(tmp_path / "c.yaml", data, sort_keys=False))
    return info.value.problems


def comparison(tmp_path, data: dict):
    return load_comparison(write_yaml(tmp_path / "c.yaml", data, sort_keys=False))


def test_a_misspelt_stage_key_is_named_at_its_path_with_the_closest_key(tmp_path):
    stages = {"sft": {"method": "sft"}, "dpo": {"methd": "dpo", "modle_from": "sft"}}
    assert problems_of(tmp_path, {"base": BASE, "stages": stages}) == [
        "unknown key `stages.dpo.methd`; did you mean `method`?",
        "unknown key `stages.dpo.modle_from`; did you mean `model_from`?",
    ]


def test_a_stage_steering_value_of_the_wrong_type_is_refused(tmp_path):
    stages = {"sft": {"method": "sft", "evaluate": "no"}}
    assert problems_of(tmp_path, {"base": BASE, "stages": stages}) == ["`stages.sft.evaluate` must be true or false, got 'no'"]


def test_the_top_level_keeps_its_sentences(tmp_path):
    data = {"base": BASE, "seeds": [], "stages": {"a": "sft", "b": {"method": "sft"}}, "reward_stage": "rm", "eval": {"nm": 1}}
    found = problems_of(tmp_path, data)
    assert found[:2] == [
        "`seeds` must be a non-empty list of integers, got []",
        "`stages.a` must be a mapping (method, recipe, model_from, train, ...)",
    ]
    assert found[2].startswith("unknown key `eval.nm`; valid keys: baseline, batch_size,")
    assert found[3:] == ["`reward_stage: rm` is not a stage; stages: b"]


def test_empty_sections_take_their_defaults_and_a_stage_may_clear_a_base_section(tmp_path):
    base = {**BASE, "reward_model": {"function": "workbench.data.synthetic:vowel_reward"}}
    stages = {"sft": {"method": "sft", "reward_model": None}, "dpo": {"method": "dpo", "model_from": "sft"}}
    c = comparison(tmp_path, {"name": None, "eval": None, "base": base, "stages": stages})
    assert c.name == "c" and c.seeds == [42] and c.eval.num_prompts == 64
    assert c.stages["sft"].sections == {"method": "sft", "reward_model": None}  # given as null: kept, clears base's
    assert c.stages["dpo"].sections == {"method": "dpo"} and c.stages["dpo"].model_from == "sft"
    assert c.stages["dpo"].evaluate is True and c.stages["dpo"].upstream == ["sft"]


def test_every_field_has_help_and_a_stage_takes_every_recipe_section():
    for cls in (ComparisonRecipe, StageConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
    stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
    assert {f.name for f in dataclasses.fields(Recipe)} <= stage_fields
    assert stage_fields - {f.name for f in dataclasses.fields(Recipe)} == {
        "recipe",
        "model_from",
        "reward_from",
        "data_from",
        "accelerate_config",
        "evaluate",
    }
