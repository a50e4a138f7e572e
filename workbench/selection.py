"""Which sampled completions are kept: by score, among the completions the model finished.

A completion cut at `max_new_tokens` is never kept. Fine-tuning on it, or using it as the chosen side of a
preference pair, appends an EOS the model never sampled and teaches it to stop at the length cap. As the rejected
side (pairs' `rejected: any`) it teaches the opposite: that running on past the cap is worse than an answer that
ends. Rejection sampling and on-policy preference pairs select through these functions, so both skip and count
alike.
Pure functions over (prompt, [completion, score, finished]) groups; the rules on scores are in `losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from workbench import losses

Rule = Literal["best", "top_k", "threshold"]
Rejected = Literal["finished", "any"]


@dataclass(frozen=True)
class Candidate:
    """One sampled completion of a prompt."""

    completion: Any
    score: float
    finished: bool  # ended with an EOS the model sampled (False: cut at the length cap)


@dataclass(frozen=True)
class Group:
    """A prompt and its sampled completions, in sample order."""

    prompt: Any
    candidates: Sequence[Candidate]


def finished_indices(candidates: Sequence[Candidate]) -> list[int]:
    return [i for i, c in enumerate(candidates) if c.finished]


def pick(candidates: Sequence[Candidate], rule: Rule, top_k: int = 1, threshold: float | None = None) -> list[int]:
    """Indices of the kept completions of one prompt, best first, chosen among its finished ones."""
    done = finished_indices(candidates)
    if not done:
        return []
    scores = [candidates[i].score for i in done]
    if rule == "best":
        local = [losses.best_of_n(scores)]
    elif rule == "top_k":
        local = losses.top_k(scores, top_k)
    elif rule == "threshold":
        if threshold is None:
            raise ValueError("selection `threshold` needs a threshold")
        local = losses.above_threshold(scores, threshold)
    else:
        raise ValueError(f"unknown selection rule {rule!r}")
    return [done[i] for i in local]


def pick_pair(
    candidates: Sequence[Candidate], min_margin: float = 0.0, rejected: Rejected = "finished"
) -> tuple[int, int] | None:
    """(chosen, rejected): the best finished completion against the worst one (`rejected: finished`: the worst
    finished one; `any`: the worst of all, a completion cut at the cap included), or None unless best - worst >
    min_margin (a tie is never a preference)."""
    done = finished_indices(candidates)
    if rejected == "finished":
        found = losses.best_worst_pair([candidates[i].score for i in done], min_margin) if len(done) >= 2 else None
        return (done[found[0]], done[found[1]]) if found else None
    if not done:
        return None
    best = done[losses.best_of_n([candidates[i].score for i in done])]
    worst = min(range(len(candidates)), key=lambda i: (candidates[i].score, i))
    return (best, worst) if candidates[best].score - candidates[worst].score > min_margin else None


@dataclass
class SelectionCounts:
    """What selection kept and skipped, for the stage's report, the manifest and the metrics."""

    prompts: int = 0
    completions: int = 0
    unfinished: int = 0  # completions cut at the length cap: never kept
    skipped_no_finished: int = 0  # prompts without a finished completion
    skipped_below_threshold: int = 0  # prompts whose finished completions all score below the threshold
    selected_prompts: int = 0
    selected: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def select(
    groups: Sequence[Group], rule: Rule, top_k: int = 1, threshold: float | None = None
) -> tuple[list[tuple[int, int]], SelectionCounts]:
    """((group index, candidate index) of every kept completion, counts)."""
    counts = SelectionCounts(prompts=len(groups))
    kept: list[tuple[int, int]] = []
    for g, group in enumerate(groups):
        counts.completions += len(group.candidates)
        counts.unfinished += sum(not c.finished for c in group.candidates)
        picks = pick(group.candidates, rule, top_k, threshold)
        if not finished_indices(group.candidates):
            counts.skipped_no_finished += 1
        elif not picks:
            counts.skipped_below_threshold += 1
        else:
            counts.selected_prompts += 1
        kept.extend((g, i) for i in picks)
    counts.selected = len(kept)
    return kept, counts


@dataclass
class PairCounts:
    """Best-vs-worst pairs made and the prompts that gave none, by reason."""

    prompts: int = 0
    skipped_no_finished: int = 0  # no finished completion
    skipped_one_finished: int = 0  # one finished completion: nothing to compare it with
    skipped_small_margin: int = 0  # best (finished) - worst <= min_margin
    pairs: int = 0
    rejected_unfinished: int = 0  # pairs whose rejected side was cut at the cap (`rejected: any` only)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def select_pairs(
    groups: Sequence[Group], min_margin: float = 0.0, rejected: Rejected = "finished"
) -> tuple[list[tuple[int, int, int]], PairCounts]:
    """((group index, chosen index, rejected index) per pair, counts); the chosen side is always finished, the
    rejected side too unless `rejected: any`."""
    counts = PairCounts(prompts=len(groups))
    out: list[tuple[int, int, int]] = []
    for g, group in enumerate(groups):
        finished = len(finished_indices(group.candidates))
        pair = pick_pair(group.candidates, min_margin, rejected)
        if pair is not None:
            out.append((g, *pair))
            counts.rejected_unfinished += not group.candidates[pair[1]].finished
        elif finished == 0:
            counts.skipped_no_finished += 1
        elif finished == 1 and rejected == "finished":
            counts.skipped_one_finished += 1
        else:
            counts.skipped_small_margin += 1
    counts.pairs = len(out)
    return out, counts


def pair_row(group: Group, chosen: int, rejected: int) -> dict[str, Any]:
    """A preference row that a DPO recipe reads unchanged, with both scores and their difference (`score_margin`,
    not `margin`: the data layer would read a `margin` column as a reward model's per-pair margin)."""
    best, worst = group.candidates[chosen], group.candidates[rejected]
    return {
        "prompt": group.prompt,
        "chosen": best.completion,
        "rejected": worst.completion,
        "chosen_score": best.score,
        "rejected_score": worst.score,
        "score_margin": best.score - worst.score,
    }
