"""On-policy preference pairs: `generation.num_samples` responses per training prompt from `model`, scored by the
reward source; each prompt's best finished response against its worst (finished, or any with `train.rejected: any`),
when best - worst > `train.min_margin`.

Writes OUTPUT_DIR/pairs.jsonl, preference rows that a DPO, reward or KTO recipe reads unchanged (a comparison
stage reads them with `data_from`), and trains nothing. Generation and scoring are the samples stages rejection
sampling uses (methods/samples.py: batched, resumable, fingerprinted); the choice is `selection.select_pairs`,
so the chosen side of every pair is a response the model ended itself, and every skipped prompt is counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench import selection
from workbench.config import METHODS
from workbench.data.pipeline import read_json, read_jsonl, write_json, write_jsonl
from workbench.errors import WorkbenchError
from workbench.method_checks import effective_train, refuse_method_problems
from workbench.methods.samples import as_groups, draw_samples, generated_tokens, group_by_prompt, pair_rows
from workbench.metrics import mean_std

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult

OUTPUT = str(METHODS["pairs"].writes_data)  # pairs.jsonl, where `data_from` finds it


def average(values: list[float]) -> float | None:
    return mean_std(values)[0] if values else None


def pairs_report(
    rows: list[dict[str, Any]], pairs: list[dict[str, Any]], counts: selection.PairCounts, min_margin: float
) -> dict[str, Any]:
    """What the step made and skipped, for data_report.json, the manifest and the metrics."""
    return {
        "min_margin": min_margin,
        "completions": len(rows),
        "unfinished": sum(not r["finished"] for r in rows),
        **counts.to_dict(),
        "score_mean": average([r["score"] for r in rows]),
        "chosen_score_mean": average([p["chosen_score"] for p in pairs]),
        "rejected_score_mean": average([p["rejected_score"] for p in pairs]),
        "margin_mean": average([p["score_margin"] for p in pairs]),
    }


def no_pairs_message(counts: selection.PairCounts, min_margin: float, cap: int) -> str:
    return (
        f"pairs made no pair: of {counts.prompts} prompts, {counts.skipped_no_finished} have no response that ended before "
        f"`generation.max_new_tokens` ({cap}), {counts.skipped_one_finished} only one, and {counts.skipped_small_margin} "
        f"no best - worst above `train.min_margin` ({min_margin}); raise max_new_tokens or num_samples, or lower min_margin"
    )


def run(ctx: RunContext) -> RunResult:
    from workbench.context import RunResult

    refuse_method_problems(ctx.recipe, ctx.world_size)  # before any generation
    train = effective_train(ctx.recipe)
    min_margin, rejected = float(train["min_margin"]), train["rejected"]
    samples, metrics = draw_samples(ctx, "pairs")
    rows = read_jsonl(samples / "generations.jsonl")
    grouped = group_by_prompt(rows)
    groups = as_groups(grouped)
    made, counts = selection.select_pairs(groups, min_margin, rejected)
    pairs = pair_rows(grouped, groups, made)
    report = {**pairs_report(rows, pairs, counts, min_margin), "rejected": rejected}
    if ctx.is_main:
        write_jsonl(ctx.run_dir / OUTPUT, pairs)
        data_report = ctx.run_dir / "data_report.json"
        write_json(data_report, {**read_json(data_report), "pairs": report})
    ctx.tracker.update_manifest(pairs=report)
    metrics.update({f"pairs/{k}": float(v) for k, v in report.items() if isinstance(v, (int, float))})
    metrics["pairs/finished_share"] = 1 - report["unfinished"] / len(rows)
    ctx.tracker.log(metrics, step=0)
    if not pairs:
        raise WorkbenchError(no_pairs_message(counts, min_margin, ctx.recipe.generation.max_new_tokens))
    return RunResult(ctx.run_dir, None, metrics, generated_tokens=generated_tokens(samples))
