"""One module per method, each exposing `run(ctx: RunContext) -> RunResult`; the registry
(workbench/config/methods.py) names them, and they are imported only when their method runs."""

from __future__ import annotations

import importlib
from types import ModuleType

from workbench.config.methods import METHODS
from workbench.errors import WorkbenchError

METHOD_MODULES = {name: spec.module for name, spec in METHODS.items()}


def get_method(name: str) -> ModuleType:
    if name not in METHOD_MODULES:
        available = ", ".join(sorted(METHOD_MODULES))
        raise WorkbenchError(f"method '{name}' is not available in this version of the workbench (available: {available})")
    return importlib.import_module(METHOD_MODULES[name])
