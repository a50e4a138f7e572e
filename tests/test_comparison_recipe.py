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
        "sweep",
    }


# ----------------------------------------------------------------------------------------------
# Sweeps: one stage, one point per combination of swept values


DPO_SWEEP = {
    "method": "dpo",
    "model_from": "sft",
    "sweep": {"train.beta": [0.03, 0.1], "train.loss_type": [["sigmoid"], ["ipo"]]},
}


def test_a_sweep_expands_into_its_grid_in_the_order_written(tmp_path):
    from workbench.comparison.recipe import stage_lines, stage_recipe

    stages = {"sft": {"method": "sft"}, "dpo": DPO_SWEEP, "kto": {"method": "kto", "model_from": "sft"}}
    c = comparison(tmp_path, {"base": BASE, "baseline_stage": "sft", "stages": stages})
    points = [
        "dpo@beta=0.03,loss_type=sigmoid",
        "dpo@beta=0.03,loss_type=ipo",
        "dpo@beta=0.1,loss_type=sigmoid",
        "dpo@beta=0.1,loss_type=ipo",
    ]
    assert list(c.stages) == ["sft", *points, "kto"]
    point = c.stages["dpo@beta=0.1,loss_type=ipo"]
    assert point.family == "dpo" and point.sweep == {"train.beta": 0.1, "train.loss_type": ["ipo"]} and point.model_from == "sft"
    assert c.stages["kto"].family == "kto" and c.stages["kto"].sweep == {}
    recipe = stage_recipe(c, point, 42)
    assert recipe["train"]["beta"] == 0.1 and recipe["train"]["loss_type"] == ["ipo"]
    assert recipe["output_dir"].endswith("seed-42/dpo@beta=0.1,loss_type=ipo")
    assert recipe["reference"] == {"precompute_log_probs": True}  # the points share one cached set of reference log-probs
    assert "precompute_log_probs" not in (stage_recipe(c, c.stages["kto"], 42).get("reference") or {})  # no sweep: as written
    assert stage_lines(c) == ["  sft", f"  dpo: sweep of train.beta, train.loss_type, 4 stages: {', '.join(points)}", "  kto"]


def test_a_sweep_keeps_an_explicit_reference_setting_and_accepts_nested_keys(tmp_path):
    from workbench.comparison.recipe import stage_recipe

    dpo = {"method": "dpo", "reference": {"precompute_log_probs": False}, "sweep": {"train": {"beta": [0.5]}}}
    c = comparison(tmp_path, {"base": BASE, "stages": {"dpo": dpo}})
    assert list(c.stages) == ["dpo@beta=0.5"]
    assert stage_recipe(c, c.stages["dpo@beta=0.5"], 1)["reference"] == {"precompute_log_probs": False}


def test_point_names_use_the_last_key_component_unless_two_share_it():
    from workbench.comparison.recipe import point_name

    assert point_name("ppo", {"train.kl_coef": 0.01}) == "ppo@kl_coef=0.01"
    assert point_name("p", {"train.temperature": 0.7, "generation.temperature": 1.0, "train.beta": True}) == (
        "p@train.temperature=0.7,generation.temperature=1.0,beta=true"
    )
    assert point_name("p", {"model.name_or_path": "org/model a"}) == "p@name_or_path=org_model_a"


def test_refused_sweeps_name_the_key_and_the_fix(tmp_path):
    stages = {
        "a": {"method": "dpo", "sweep": {"train.beta": []}},
        "b": {"method": "dpo", "sweep": {"trian.beta": [1]}},
        "c": {"method": "dpo", "sweep": {"seed": [1, 2]}},
        "d": {"method": "dpo", "sweep": [0.1]},
    }
    assert problems_of(tmp_path, {"base": BASE, "stages": stages}) == [
        "`stages.d.sweep` must be a mapping, got [0.1]",
        "`stages.a.sweep.train.beta` must be a non-empty list of values, got []",
        "unknown key `stages.b.sweep.trian`; did you mean `train`? (a sweep key starts with a recipe section)",
        "`stages.c.sweep.seed` cannot be swept: the comparison sets it from `seeds:`",
    ]
    # a misspelt key inside a section is found like `--set` finds it, once for the whole sweep
    stages = {"e": {"method": "dpo", "sweep": {"train.bta": [0.1, 0.2]}}}
    assert problems_of(tmp_path, {"base": BASE, "stages": stages}) == [
        "stages.e: unknown key `train.bta`; did you mean `beta`? (fields of workbench.train_configs.DPOTrainConfig)",
    ]


def test_naming_a_swept_stage_instead_of_one_of_its_points_is_refused(tmp_path):
    stages = {
        "sft": {"method": "sft", "sweep": {"train.learning_rate": [0.1, 0.2]}},
        "dpo": {"method": "dpo", "model_from": "sft"},
        "ppo": {"method": "kto", "model_from": "sft@learning_rate=0.2", "sweep": {"train.beta": [0.1, 0.2]}},
    }
    assert problems_of(tmp_path, {"base": BASE, "baseline_stage": "sft", "stages": stages}) == [
        "`stages.dpo.model_from: sft` names a swept stage; name one of its points: sft@learning_rate=0.1, sft@learning_rate=0.2",
        "`baseline_stage: sft` names a swept stage; name one of its points: sft@learning_rate=0.1, sft@learning_rate=0.2",
    ]
    stages["dpo"]["model_from"] = "sft@learning_rate=0.1"
    c = comparison(tmp_path, {"base": BASE, "baseline_stage": "sft@learning_rate=0.1", "stages": stages})
    assert c.stages["ppo@beta=0.2"].upstream == ["sft@learning_rate=0.2"]


def test_plan_of_a_comparison_has_every_point_on_models_on_disk(tmp_path, tiny_model):
    from workbench.validate import stage_plans

    base = {**BASE, "model": {"name_or_path": str(tiny_model)}}
    stages = {
        "sft": {"method": "sft"},
        "rm": {"method": "reward"},
        "ppo": {"method": "ppo", "model_from": "sft", "sweep": {"train.kl_coef": [0.01, 0.1]}},
    }
    path = write_yaml(tmp_path / "c.yaml", {"base": base, "reward_stage": "rm", "stages": stages}, sort_keys=False)
    plans = stage_plans(str(path), [], None, None)  # the reward model rm will train is planned on rm's starting model
    assert list(plans) == ["sft", "rm", "ppo@kl_coef=0.01", "ppo@kl_coef=0.1"]
    reward = next(m for m in plans["ppo@kl_coef=0.1"].models if m.role == "reward")
    assert reward.name_or_path == str(tiny_model) and plans["ppo@kl_coef=0.1"].method == "ppo"


def test_validate_says_a_problem_every_point_shares_once_at_the_swept_stage(tmp_path):
    from workbench.validate import validate

    base = {**BASE, "model": {"name_or_path": str(tmp_path / "missing")}}
    stages = {"dpo": {"method": "dpo", "sweep": {"train.beta": [0.1, 0.2, 0.4]}}}
    text, problems = validate(str(write_yaml(tmp_path / "c.yaml", {"base": base, "stages": stages})), [], None)
    assert len(problems) == 1 and problems[0].startswith(
        f"stages.dpo: `model.name_or_path`: model '{tmp_path / 'missing'}' not found"
    )
    assert "  dpo: sweep of train.beta, 3 stages: dpo@beta=0.1, dpo@beta=0.2, dpo@beta=0.4" in text
