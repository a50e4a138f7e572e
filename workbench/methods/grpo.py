"""GRPO on TRL's GRPOTrainer: group-relative advantages over `num_generations` completions per prompt.

Prompts, reward, sampling settings, tracking and export are shared with RLOO (`methods/trl_online.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workbench.methods.trl_online import run_online

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult


def run(ctx: RunContext) -> RunResult:
    from trl import GRPOTrainer

    return run_online(ctx, GRPOTrainer)
