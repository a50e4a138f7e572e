"""KTO as a workbench method: unpaired data in the data layer, balanced class weights, real runs."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_ok, write_yaml
from test_train import read_metrics

from workbench.config import DataConfig, SourceConfig, SyntheticSpec
from workbench.data.pipeline import prepare
from workbench.errors import DataError
from workbench.methods.kto import class_weights, mismatched_completions


def test_class_weights_balance_the_two_classes():
    # KTO paper Eq. 8: lambda_D * n_D / (lambda_U * n_U) = 1, the larger class weighted down
    assert class_weights(30, 10) == pytest.approx({"desirable_weight": 1 / 3, "undesirable_weight": 1.0})
    assert class_weights(10, 40) == pytest.approx({"desirable_weight": 1.0, "undesirable_weight": 0.25})
    assert class_weights(7, 7) == {"desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert class_weights(5, 0) == {"desirable_weight": 1.0, "undesirable_weight": 1.0}


def test_kl_completions_are_the_batch_rotated_by_one():
    assert mismatched_completions({"completion_ids": [[1], [2, 2], [3]]}) == {"KL_completion_ids": [[3], [1], [2, 2]]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unpaired_rows_and_pairs_become_labeled_records(tmp_path):
    rows = [
        {"prompt": "p1", "completion": "good", "label": True},
        {"prompt": "p2", "completion": "bad", "label": 0},
        {"prompt": "p3", "completion": "fine", "label": 1},
        {"prompt": "p4", "completion": "meh", "label": False},
    ]
    data = DataConfig(sources=[SourceConfig(path=str(write_jsonl(tmp_path / "u.jsonl", rows)))], eval_split=0.0)
    prepared = prepare(data, 0, kind="unpaired")
    assert [(r["prompt"], r["completion"], r["label"]) for r in prepared.train] == [
        ("p1", "good", True),
        ("p2", "bad", False),
        ("p3", "fine", True),
        ("p4", "meh", False),
    ]
    pairs = DataConfig(sources=[SourceConfig(synthetic=SyntheticSpec(num_pairs=10))], eval_split=0.0)
    records = prepare(pairs, 0, kind="unpaired").train
    assert len(records) == 20 and sum(r["label"] for r in records) == 10
    first = next(iter(prepare(pairs, 0, kind="preference").train))
    assert [(r["completion"], r["label"]) for r in records if r["line"] == first["line"]] == [
        (first["chosen"], True),
        (first["rejected"], False),
    ]


@pytest.mark.parametrize("label", ["yes", 2, None, 0.5])
def test_a_label_that_is_not_boolean_or_0_1_is_an_error_naming_file_and_line(tmp_path, label):
    rows = [{"prompt": "p1", "completion": "a", "label": True}, {"prompt": "p2", "completion": "b", "label": label}]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:2: field 'label' must be true/false or 1/0, got {label!r}"):
        prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0), 0, kind="unpaired")


def test_unpaired_data_is_refused_where_pairs_are_needed(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "p", "completion": "a", "label": True}])
    with pytest.raises(DataError, match="has no chosen/rejected for a preference method"):
        prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0), 0, kind="preference")
    prompts = prepare(DataConfig(sources=[SourceConfig(path=str(path))], eval_split=0.0), 0, kind="prompt").train
    assert [r["prompt"] for r in prompts] == ["p"]


def kto_recipe(tmp_path, model, name, source, **train):
    recipe = {
        "method": "kto",
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "data": {"sources": [source], "eval_split": 0.0, "max_length": 48},
        "train": {
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 8,
            "max_steps": 3,
            "logging_steps": 1,
            "save_steps": 100,
            **train,
        },
        "tracking": {"project": "wb-tests", "mode": "disabled"},
        "output_dir": str(tmp_path / name),
        "seed": 3,
    }
    return write_yaml(tmp_path / f"{name}.yaml", recipe)


@pytest.mark.slow
def test_kto_on_unpaired_data_balances_classes_and_exports(tmp_path, tiny_model):
    rows = [
        {"prompt": f"Say something about item {i}.", "completion": f"answer {i} aeiou", "label": i % 4 != 0} for i in range(40)
    ]
    path = kto_recipe(tmp_path, tiny_model, "kto", {"path": str(write_jsonl(tmp_path / "u.jsonl", rows))})
    run_ok(["train", str(path)])
    run = tmp_path / "kto"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kto_classes"] == {
        "desirable": 30,
        "undesirable": 10,
        "desirable_weight": pytest.approx(1 / 3),
        "undesirable_weight": 1.0,
    }
    assert manifest["export_check"]["ok"] and manifest["status"] == "completed"
    metrics = [m for m in read_metrics(run) if "train/loss" in m]
    assert len(metrics) == 3 and all(math.isfinite(m["train/loss"]) and math.isfinite(m["train/kl"]) for m in metrics)
    # step 1: policy == reference, so every log-ratio and the KL estimate are 0 and each example's loss is
    # 1 - sigmoid(0) = 0.5, times its class weight; the first batch is the first 8 records of the seeded shuffle
    from datasets import Dataset

    first = Dataset.from_dict({"label": [r["label"] for r in rows]}).shuffle(seed=3)["label"][:8]
    expected = sum(0.5 * (1 / 3 if label else 1.0) for label in first) / 8
    assert metrics[0]["train/loss"] == pytest.approx(expected, abs=1e-5)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "model") is not None


@pytest.mark.slow
def test_kto_with_one_class_only_warns_with_the_counts(tmp_path, tiny_model):
    rows = [{"prompt": f"Item {i}?", "completion": f"answer {i}", "label": 1} for i in range(16)]
    path = kto_recipe(tmp_path, tiny_model, "one", {"path": str(write_jsonl(tmp_path / "u.jsonl", rows))}, max_steps=1)
    res = run_ok(["train", str(path)])
    assert "KTO data has 16 desirable and 0 undesirable examples" in res.stderr


def test_a_pairs_two_halves_land_in_the_split_dpo_puts_the_pair_in():
    data = DataConfig(sources=[SourceConfig(synthetic=SyntheticSpec(num_pairs=60))], eval_split=0.3, split_by="pair")
    pairs = prepare(data, 0, kind="preference")
    records = prepare(data, 0, kind="unpaired")
    assert len(records.train) == 2 * len(pairs.train) and len(records.eval) == 2 * len(pairs.eval) > 0
    assert sorted(r["line"] for r in records.eval) == sorted(2 * [p["line"] for p in pairs.eval])
