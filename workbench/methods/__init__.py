"""One module per method, each exposing `run(ctx: RunContext) -> RunResult`."""

from __future__ import annotations

import importlib
from types import ModuleType

from workbench.errors import WorkbenchError

METHOD_MODULES = {
    "dpo": "workbench.methods.dpo",
    "reward": "workbench.methods.reward",
    "sft": "workbench.methods.sft",
    "rejection_sampling": "workbench.methods.rejection_sampling",
    "ppo": "workbench.methods.ppo",
    "kto": "workbench.methods.kto",
    "grpo": "workbench.methods.grpo",
    "rloo": "workbench.methods.rloo",
}


def get_method(name: str) -> ModuleType:
    if name not in METHOD_MODULES:
        available = ", ".join(sorted(METHOD_MODULES))
        raise WorkbenchError(f"method '{name}' is not available in this version of the workbench (available: {available})")
    return importlib.import_module(METHOD_MODULES[name])
