"""The comparison's plain data: stages, the comparison, one stage's run for one seed, the outcome.

Imported by the runner, the report and validate alike; nothing here runs, loads or imports a library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.config import EvalConfig
    from workbench.config.comparison import ExecutorConfig

# The report's row of a baseline given as a model (`eval.baseline`) rather than a stage, and its method column.
BASELINE_ROW = "baseline"
BASELINE_METHOD = "base model"
# `control: true`: the baseline again as the row BASELINE@control, trained (a stage) or sampled (`eval.baseline`)
# with the comparison's seed (or `eval.seed`) plus this offset.
CONTROL_SUFFIX = "@control"
CONTROL_SEED_OFFSET = 1000


@dataclass
class Stage:
    name: str
    sections: dict[str, Any]  # recipe sections given inline (merged over the recipe file and `base`)
    recipe: str | None = None
    model_from: str | None = None
    reward_from: str | None = None
    data_from: str | None = None
    accelerate_config: str | None = None
    evaluate: bool = True
    family: str = ""  # the written stage a sweep point (or a control) comes from; its own name otherwise
    sweep: dict[str, Any] = field(default_factory=dict)  # a sweep point's values: recipe key -> value
    control_of: str | None = None  # a control: the baseline it repeats with another seed

    def __post_init__(self) -> None:
        self.family = self.family or self.name

    @property
    def seed_offset(self) -> int:
        """Added to the comparison's seed when the stage trains (a control's other seed)."""
        return CONTROL_SEED_OFFSET if self.control_of else 0

    @property
    def upstream(self) -> list[str]:
        """The earlier stages this one reads: the one place a stage's dependencies are named."""
        return [s for s in (self.model_from, self.reward_from, self.data_from) if s]


@dataclass
class Comparison:
    name: str
    output_dir: Path
    seeds: list[int]
    base: dict[str, Any]
    stages: dict[str, Stage]
    eval: EvalConfig
    baseline_stage: str | None = None
    reward_stage: str | None = None
    source: str = "comparison"
    control: bool = False
    executor: ExecutorConfig | None = None  # unset: local, one stage at a time

    @property
    def external_baseline(self) -> bool:
        """The win-rate baseline is a model given as `eval.baseline`, evaluated as its own report row."""
        return not self.baseline_stage and bool(self.eval.baseline)

    @property
    def baseline_name(self) -> str | None:
        """The report's baseline row: the baseline stage, or `baseline` for `eval.baseline`; None without one."""
        return BASELINE_ROW if self.external_baseline else self.baseline_stage

    @property
    def control_name(self) -> str | None:
        """The report's row of the control (`control: true`): the baseline's name + @control."""
        return f"{self.baseline_name}{CONTROL_SUFFIX}" if self.control and self.baseline_name else None


@dataclass
class StageRun:
    """One stage for one seed: its composed recipe and where it stands."""

    stage: Stage
    seed: int
    recipe: dict[str, Any]
    run_dir: Path
    fingerprint: str = ""
    status: str = "pending"  # pending | cached | completed | failed | skipped
    error: str | None = None
    seconds: float = 0.0
    evaluation: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.recipe["method"]

    @property
    def model_dir(self) -> Path:
        return self.run_dir / "model"

    @property
    def output(self) -> Path:
        """What the stage leaves for later stages: its model, or the data file its method writes (the registry says which)."""
        from workbench.config import METHODS

        spec = METHODS.get(self.method)
        return self.run_dir / spec.writes_data if spec is not None and spec.writes_data else self.model_dir

    @property
    def ok(self) -> bool:
        return self.status in ("cached", "completed")


@dataclass
class Outcome:
    comparison: Comparison
    runs: dict[int, dict[str, StageRun]] = field(default_factory=dict)  # seed -> stage -> run
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[StageRun]:
        return [r for runs in self.runs.values() for r in runs.values() if r.status in ("failed", "skipped")]
