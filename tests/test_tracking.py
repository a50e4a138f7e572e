"""Tracker: one metrics line per step (merging late logs), resume truncation, redaction, metric names."""

from __future__ import annotations

import json

import pytest

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


# ----------------------------------------------------------------------------------------------
# tracking.mode auto with a W&B key that cannot be used: offline, one sentence, seconds


def closed_port_url() -> str:
    """An http URL on this machine where nothing listens: connecting is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def start_auto(tmp_path, monkeypatch, caplog, key: str, base_url: str | None = None):
    import logging
    import time

    monkeypatch.setenv("WANDB_API_KEY", key)
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    tracker = Tracker(recipe_from_dict({**RECIPE, "tracking": {"mode": "auto"}}), tmp_path / "run")
    caplog.set_level(logging.WARNING, logger="workbench")
    t0 = time.time()
    tracker.start()
    elapsed = time.time() - t0
    tracker.finish("completed")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    said = [r.getMessage() for r in caplog.records if r.name == "workbench" and "W&B" in r.getMessage()]
    return elapsed, manifest["wandb"], said


def test_auto_with_a_malformed_key_falls_back_to_offline_in_one_sentence(tmp_path, monkeypatch, caplog):
    elapsed, wandb_info, said = start_auto(tmp_path, monkeypatch, caplog, "not-a-key")
    assert wandb_info["mode"] == "offline"
    assert "WANDB_API_KEY" in wandb_info["mode_source"] and "40+ characters" in wandb_info["mode_source"]
    assert len(said) == 1 and "\n" not in said[0] and "offline" in said[0] and "wandb sync" in said[0]
    assert "not-a-key" not in said[0]  # the key itself is never printed
    assert elapsed < 30


def test_auto_with_a_wellformed_key_and_no_server_falls_back_to_offline_in_seconds(tmp_path, monkeypatch, caplog):
    url = closed_port_url()
    elapsed, wandb_info, said = start_auto(tmp_path, monkeypatch, caplog, "a" * 40, base_url=url)
    assert wandb_info["mode"] == "offline"
    assert url.split("//")[1] in wandb_info["mode_source"]
    assert len(said) == 1 and "offline" in said[0] and url.split("//")[1] in said[0]
    assert elapsed < 30


def test_auto_with_a_wellformed_key_on_a_machine_without_network(tmp_path, monkeypatch, caplog):
    """The default W&B server, as a user without network has it (this test machine has no route to it)."""
    from workbench.tracking import server_problem, wandb_base_url

    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    if server_problem(wandb_base_url(), timeout=3.0) is None:
        pytest.skip(f"{wandb_base_url()} is reachable from this machine")
    elapsed, wandb_info, said = start_auto(tmp_path, monkeypatch, caplog, "a" * 40)
    assert wandb_info["mode"] == "offline" and len(said) == 1
    assert elapsed < 30
