"""Tracker: one metrics line per step (merging late logs), resume truncation, redaction, metric names."""

from __future__ import annotations

import json

from workbench.config import recipe_from_dict
from workbench.tracking import REDACTED, Tracker, metric_name, redact

RECIPE = {
    "method": "dpo",
    "model": {"name_or_path": "m"},
    "data": {"sources": [{"path": "d.jsonl"}]},
    "tracking": {"mode": "disabled"},
}


def lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_one_line_per_step_even_when_a_step_is_logged_after_a_flush(tmp_path):
    tracker = Tracker(recipe_from_dict(RECIPE), tmp_path / "run")
    tracker.start()
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log({"train/lr": 0.1}, step=1)
    tracker.log({"train/loss": 0.5}, step=2)
    tracker.flush()  # a checkpoint at step 2
    tracker.log({"eval/accuracy": 0.75}, step=2)  # the final evaluation at the same step
    tracker.log({"train/loss": 0.25}, step=3)
    tracker.finish("completed")
    assert lines(tmp_path / "run") == [
        {"step": 1, "train/loss": 1.0, "train/lr": 0.1},
        {"step": 2, "train/loss": 0.5, "eval/accuracy": 0.75},
        {"step": 3, "train/loss": 0.25},
    ]


def test_resume_keeps_lines_up_to_the_checkpoint_and_a_fresh_start_clears_them(tmp_path):
    run = tmp_path / "run"
    first = Tracker(recipe_from_dict(RECIPE), run)
    first.start()
    for step in range(1, 6):
        first.log({"train/loss": float(step)}, step=step)
    first.finish("failed")
    resumed = Tracker(recipe_from_dict(RECIPE), run)
    resumed.start(resume_step=3)
    resumed.log({"train/loss": 40.0}, step=4)
    resumed.finish("completed")
    assert [(m["step"], m["train/loss"]) for m in lines(run)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert json.loads((run / "manifest.json").read_text())["resumed_from_step"] == 3
    fresh = Tracker(recipe_from_dict(RECIPE), run)
    fresh.start()
    fresh.finish("completed")
    assert lines(run) == []


def test_redaction_by_name_and_by_value(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    data = {
        "hub_token": "x",
        "pad_token": "<pad>",
        "max_new_tokens": 5,
        "api_key": "k",
        "nested": [{"password": "p"}],
        "note": "uses hf_abcdefghijklmnop here",
    }
    assert redact(data) == {
        "hub_token": REDACTED,
        "pad_token": "<pad>",
        "max_new_tokens": 5,
        "api_key": REDACTED,
        "nested": [{"password": REDACTED}],
        "note": f"uses {REDACTED} here",
    }


def test_metric_names():
    assert metric_name("loss") == "train/loss"
    assert metric_name("rewards/accuracies") == "train/rewards/accuracies"
    assert metric_name("eval_rewards/accuracies") == "eval/rewards/accuracies"
    assert metric_name("train_loss") == "train/summary/loss"  # the end-of-run summary never collides with train/loss
