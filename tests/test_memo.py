"""Memoised checks (cache.memo_json): `validate` answers from disk what it computed before, so a
second validate of a recipe imports neither trl nor torch, and prints exactly what the first did.
Also `workbench validate` on a comparison recipe checks every stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, edit_yaml, shipped_recipe, write_yaml

from workbench import cache
from workbench.cli import main


@pytest.fixture()
def memo_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WORKBENCH_NO_MEMO", raising=False)
    return tmp_path / "cache"


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def test_memo_computes_once_per_key(memo_dir):
    compute, calls = counting({"a": [1, 2.5, None, "x"]})
    assert cache.memo_json("ns", ["k", 1], compute) == {"a": [1, 2.5, None, "x"]}
    assert cache.memo_json("ns", ["k", 1], compute) == {"a": [1, 2.5, None, "x"]}
    assert len(calls) == 1
    cache.memo_json("ns", ["k", 2], compute)
    assert len(calls) == 2
    assert len(list((memo_dir / "ns").glob("*.json"))) == 2


def test_memo_recomputes_a_corrupt_entry_and_skips_values_json_changes(memo_dir):
    compute, calls = counting(["ok"])
    cache.memo_json("ns", "key", compute)
    (entry,) = (memo_dir / "ns").glob("*.json")
    entry.write_text('{"value": ["o')  # cut by a full disk or a kill
    assert cache.memo_json("ns", "key", compute) == ["ok"]
    assert len(calls) == 2 and json.loads(entry.read_text()) == {"value": ["ok"]}
    tuple_compute, tuple_calls = counting((1, 2))  # a tuple reads back as a list: never stored
    assert cache.memo_json("ns", "tuple", tuple_compute) == (1, 2)
    assert cache.memo_json("ns", "tuple", tuple_compute) == (1, 2)
    assert len(tuple_calls) == 2


def test_inputs_holding_a_secret_are_never_stored(memo_dir):
    compute, calls = counting(["`train.hub_token: hf_abc` is not valid"])
    for _ in range(2):
        cache.memo_json("ns", ["train-args", "dpo", {"hub_token": "hf_abc", "learning_rate": 1e-4}], compute)
    assert len(calls) == 2 and not (memo_dir / "ns").exists()
    cache.memo_json("ns", ["train-args", "dpo", {"hub_token": None, "pad_token": "<pad>"}], compute)
    assert len(list((memo_dir / "ns").glob("*.json"))) == 1


def test_memo_key_includes_the_environment(memo_dir, monkeypatch):
    compute, calls = counting(3)
    cache.memo_json("ns", "key", compute)
    monkeypatch.setattr(cache, "environment_key", lambda: "another version of trl")
    cache.memo_json("ns", "key", compute)
    monkeypatch.setenv("WORKBENCH_NO_MEMO", "1")
    cache.memo_json("ns", "key", compute)
    assert len(calls) == 3


def test_environment_key_follows_library_versions(monkeypatch):
    from importlib import metadata

    before = cache.environment_key()
    cache.environment_key.cache_clear()
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "trl" else real(name))
    try:
        assert cache.environment_key() != before
    finally:
        cache.environment_key.cache_clear()


def test_second_validate_imports_neither_trl_nor_torch_and_prints_the_same(tmp_path, tiny_model):
    recipe = tmp_path / "dpo.yaml"
    write_yaml(
        recipe,
        {
            "method": "dpo",
            "model": {"name_or_path": str(tiny_model), "lora": {"r": 4}},
            "data": {"sources": [{"synthetic": {"task": "vowels", "num_pairs": 64}}], "max_length": 64},
            "train": {"learning_rate": 1e-4, "lr_scheduler_type": "cosine", "loss_type": ["sigmoid"]},
            "output_dir": str(tmp_path / "run"),
        },
    )
    probe = (
        "import sys; from workbench.cli import main; code = main(['validate', sys.argv[1]]); "
        "print('IMPORTED', sorted(m for m in ('trl', 'torch', 'transformers', 'peft') if m in sys.modules)); sys.exit(code)"
    )
    env = {"WORKBENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    runs = [
        subprocess.run([sys.executable, "-c", probe, str(recipe)], cwd=REPO, capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    first, second = (r.stdout.rsplit("IMPORTED", 1) for r in runs)
    assert first[0] == second[0]  # the same report, plan line and example pair included
    assert "example pair" in second[0] and "memory plan:" in second[0] and "recipe OK" in second[0]
    assert "'trl'" in first[1] and "'torch'" in first[1]
    assert second[1].strip() == "[]"

    # Editing what none of those verdicts read (data amounts and split, tracking, output, seed) keeps them warm;
    # a new `train:` value is built by TRL again.
    with edit_yaml(recipe) as edited:
        edited["data"].update(eval_split=0.25, sources=[{"synthetic": {"task": "vowels", "num_pairs": 96}}])
        edited.update(seed=7, output_dir=str(tmp_path / "elsewhere"), tracking={"mode": "disabled"})
    third = subprocess.run([sys.executable, "-c", probe, str(recipe)], cwd=REPO, capture_output=True, text=True, env=env)
    assert third.returncode == 0 and third.stdout.rsplit("IMPORTED", 1)[1].strip() == "[]", third.stdout[-1500:]
    edited["train"]["learning_rate"] = 2e-4
    write_yaml(recipe, edited)
    fourth = subprocess.run([sys.executable, "-c", probe, str(recipe)], cwd=REPO, capture_output=True, text=True, env=env)
    assert fourth.returncode == 0 and "'trl'" in fourth.stdout.rsplit("IMPORTED", 1)[1]


def test_a_bad_train_value_is_reported_again_from_the_memo(tmp_path, tiny_model, capsys, memo_dir):
    recipe = tmp_path / "dpo.yaml"
    write_yaml(
        recipe,
        {
            "method": "dpo",
            "model": {"name_or_path": str(tiny_model)},
            "data": {"sources": [{"synthetic": {"task": "vowels", "num_pairs": 32}}], "max_length": 64},
            "train": {"lr_scheduler_type": "cosinee"},
            "output_dir": str(tmp_path / "run"),
        },
    )
    errors = []
    for _ in range(2):
        assert main(["validate", str(recipe)]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1]
    assert "`train.lr_scheduler_type: cosinee`" in errors[0] and "did you mean 'cosine'" in errors[0]


def test_validate_checks_every_stage_of_a_comparison(tmp_path, tiny_model, capsys):
    data = shipped_recipe("quickstart")
    data["base"]["model"]["name_or_path"] = str(tiny_model)
    data["output_dir"] = str(tmp_path / "cmp")
    path = tmp_path / "cmp.yaml"
    write_yaml(path, data, sort_keys=False)
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    # 8 stages written, DPO's and PPO's swept over 3 values each: 12 checked
    assert len(data["stages"]) == 8 and out.count("\nstage ") == 12
    assert "stage ppo@kl_coef=0.05 (ppo): OK" in out and "stage grpo (grpo): OK" in out
    assert "completions per step: 32" in out  # GRPO's own line, per stage

    data["stages"]["dpo"]["train"]["lr_scheduler_type"] = "cosinee"
    data["stages"]["kto"]["train"]["per_device_train_batch_size"] = 0
    write_yaml(path, data, sort_keys=False)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages.dpo: `train.lr_scheduler_type: cosinee`" in err
    assert "stages.kto: `train.per_device_train_batch_size: 0` must be at least 1" in err
