"""Errors a user can fix: the CLI prints them as one message, without a traceback."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A problem in the user's recipe, data or environment, with the fix in the message."""


class RecipeError(WorkbenchError):
    """One or more problems in a recipe; every problem is listed, not just the first."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source}: {len(self.problems)} {noun}:\n{lines}")


class DataError(WorkbenchError):
    """Bad input data, named by file and line."""
