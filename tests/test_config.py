"""Recipes: typed sections, unknown keys with suggestions, type and choice errors, overrides."""

from __future__ import annotations

import pytest
from conftest import write_yaml

from workbench.cli import main
from workbench.config import apply_override, load_recipe, parse_override, recipe_from_dict, resolved_dict
from workbench.errors import RecipeError

BASE = {"method": "dpo", "model": {"name_or_path": "m"}, "data": {"sources": [{"path": "d.jsonl"}]}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(data)
    return info.value.problems


def test_unknown_train_key_names_closest_field():
    problems = problems_of({**BASE, "train": {"learning_rat": 1e-5}})
    assert problems == [
        "unknown key `train.learning_rat`; did you mean `learning_rate`? (fields of workbench.train_configs.DPOTrainConfig)"
    ]


def test_every_problem_is_reported_not_just_the_first():
    data = {
        "method": "dpo",
        "model": {"name_or_path": "m", "dtyp": "auto"},
        "data": {"sources": [{"path": "d.jsonl", "format": "hh"}], "dedup": "exactt", "eval_split": "lots"},
        "train": {"beta": "high", "output_dir": "x"},
        "trackin": {},
    }
    problems = problems_of(data)
    assert len(problems) == 7
    assert "unknown key `model.dtyp`; did you mean `dtype`?" in problems
    assert "unknown key `trackin`; did you mean `tracking`?" in problems
    assert any(p.startswith("`data.sources.0.format` must be one of 'auto'") for p in problems)
    assert "`data.dedup` must be one of 'none', 'exact', 'near', got 'exactt'; did you mean 'exact'?" in problems
    assert "`data.eval_split` must be a number, got 'lots'" in problems
    assert "`train.beta` must be a number, got 'high'" in problems
    assert any(p.startswith("`train.output_dir` is set by the workbench") for p in problems)


def test_wrong_method_and_missing_pieces():
    problems = problems_of({"method": "ppo2", "data": {}})
    assert problems[0].startswith("`method` must be one of 'sft', 'reward', 'dpo'")
    assert "`model.name_or_path` is required: a model directory or hub id" in problems
    assert "`data.sources` needs at least one source, e.g. [{path: data.jsonl}]" in problems


def test_reward_source_required_for_rejection_sampling():
    problems = problems_of({**BASE, "method": "rejection_sampling"})
    assert problems == ["`reward_model` needs exactly one of `name_or_path` or `function` for method rejection_sampling"]


def test_lora_fields_checked_against_peft():
    problems = problems_of({**BASE, "model": {"name_or_path": "m", "lora": {"rank": 8, "lora_alpha": 16}}})
    assert problems == ["unknown key `model.lora.rank`; did you mean `r`?"]


def test_yaml_scientific_notation_is_a_number():
    recipe = recipe_from_dict({**BASE, "train": {"learning_rate": "5e-6"}})
    assert recipe.train["learning_rate"] == 5e-6


def test_overrides_are_yaml_typed_and_nested(tmp_path):
    path = tmp_path / "r.yaml"
    write_yaml(path, BASE)
    recipe = load_recipe(
        path,
        [
            "train.learning_rate=1e-5",
            "train.loss_type=[ipo]",
            "data.sources.0.weight=0.5",
            "data.dedup=near",
            "tracking.tags=[a, b]",
            "seed=7",
        ],
    )
    assert recipe.train == {"learning_rate": 1e-5, "loss_type": ["ipo"]}
    assert recipe.data.sources[0].weight == 0.5
    assert recipe.data.dedup == "near"
    assert recipe.tracking.tags == ["a", "b"]
    assert recipe.seed == 7


def test_one_value_where_a_list_is_expected_suggests_the_list(tmp_path):
    """`--set train.loss_type=ipo`: DPO's loss_type is a list of losses; the problem says how to write one."""
    path = tmp_path / "r.yaml"
    write_yaml(path, BASE)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.loss_type=ipo"])
    assert info.value.problems == ["`train.loss_type` must be a list, got 'ipo'; did you mean [ipo]?"]


def test_override_errors_name_the_key():
    with pytest.raises(RecipeError, match="not key=value"):
        parse_override("train.learning_rate")
    tree = {"data": {"sources": [{"path": "x"}]}}
    with pytest.raises(RecipeError, match="`data.sources.3.path`: `3` is not an index of a 1-item list"):
        apply_override(tree, ["data", "sources", "3", "path"], "y")


def test_resolved_recipe_fills_every_default():
    resolved = resolved_dict(recipe_from_dict({**BASE, "train": {"beta": 0.3}}))
    assert resolved["train"]["beta"] == 0.3
    assert resolved["train"]["loss_type"] == ["sigmoid"]  # TRL's default, written out
    assert resolved["data"]["on_invalid"] == "error"
    assert resolved["data"]["sources"][0]["format"] == "auto"
    assert "output_dir" not in resolved["train"]
    assert resolved["tracking"]["mode"] == "auto"


def test_cli_prints_one_message_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    write_yaml(path, {**BASE, "train": {"learning_rat": 1}})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean `learning_rate`?" in err
    assert "Traceback" not in err


def test_invalid_yaml_names_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("method: dpo\nmodel: {name_or_path: m\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: 1 problem" in err and "not valid YAML at line 3" in err
