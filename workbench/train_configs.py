"""`train:` classes for the methods the workbench owns, extending TRL's so field names carry over."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import SFTConfig


@dataclass
class RejectionSamplingConfig(SFTConfig):
    """SFTConfig (for the fine-tuning stage) plus how completions are selected."""

    selection: Literal["best", "top_k", "threshold"] = field(
        default="best",
        metadata={"help": "best: best-of-n per prompt; top_k: the k best; threshold: every sample scoring >= score_threshold."},
    )
    top_k: int = field(default=1, metadata={"help": "Completions kept per prompt with selection: top_k."})
    score_threshold: float | None = field(default=None, metadata={"help": "Minimum score with selection: threshold."})
    write_pairs: bool = field(
        default=True, metadata={"help": "Also write best-vs-worst pairs (samples/pairs.jsonl) that a DPO recipe reads unchanged."}
    )
    min_pair_gap: float = field(default=0.0, metadata={"help": "A pair is written only when best - worst > this."})
