"""Say where it is: one line per logging step off a terminal, and the user's `disable_tqdm` honoured."""

from __future__ import annotations

from types import SimpleNamespace

from workbench.config import recipe_from_dict
from workbench.tracking import step_line


def test_step_line():
    line = step_line(10, {"train/loss": 0.69314, "train/rewards/margins": 0.0123, "eval/x": 1.0}, 60, width=2)
    assert line == "step 10/60 | loss 0.6931 | rewards/margins 0.0123"
    assert step_line(3, {"train/objective/kl": 2.0}) == "step 3 | objective/kl 2"


def test_disable_tqdm_follows_the_terminal_unless_the_recipe_sets_it(tmp_path, monkeypatch):
    import sys

    from workbench.methods.hf import training_args

    def args(train: dict):
        recipe = recipe_from_dict(
            {"method": "sft", "model": {"name_or_path": "x"}, "data": {"sources": [{"path": "x.jsonl"}]}, "train": train},
            source="test",
        )
        return training_args(SimpleNamespace(recipe=recipe, run_dir=tmp_path, world_size=1))

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert args({}).disable_tqdm is True  # not a terminal: no bars, a line per logging step
    assert args({"disable_tqdm": False}).disable_tqdm is False  # the user's choice wins
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert args({}).disable_tqdm is False  # a terminal: progress bars
    assert args({"disable_tqdm": True}).disable_tqdm is True
