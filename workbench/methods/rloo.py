"""RLOO on TRL's RLOOTrainer: REINFORCE with each completion's baseline the mean reward of the other
completions of its prompt (leave-one-out).

Prompts, reward, sampling settings, tracking and export are shared with GRPO (`methods/trl_online.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.methods.trl_online import run_online

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult


def run(ctx: RunContext) -> RunResult:
    from trl import RLOOTrainer

    return run_online(ctx, RLOOTrainer)
