"""Rejection sampling (best-of-n), ours: generate -> score -> select -> SFT, as resumable stages.

Generation and scoring are the shared samples stages (methods/samples.py: resumable, fingerprinted);
selection writes selected.jsonl and pairs.jsonl beside them. Selection and pairs take finished completions
only (workbench/selection.py): a completion cut at the length cap would be fine-tuned with an EOS the model
never sampled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import losses, selection
from workbench.data.formatting import tokenize_sft
from workbench.data.pipeline import read_jsonl, write_jsonl
from workbench.data.schema import stable_hash
from workbench.errors import WorkbenchError
from workbench.method_checks import refuse_method_problems
from workbench.methods.samples import as_groups, ctx_wait, draw_samples, generated_tokens, group_by_prompt, pair_rows
from workbench.metrics import mean_std

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult


# ----------------------------------------------------------------------------------------------
# Stage 3: select


def stage_select(ctx: RunContext, samples: Path, args: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """selected.jsonl and pairs.jsonl, from finished completions only; (metrics, the selection report)."""
    rows = read_jsonl(samples / "generations.jsonl")
    grouped = group_by_prompt(rows)
    groups = as_groups(grouped)
    picks, counts = selection.select(groups, args.selection, args.top_k, args.score_threshold)
    kept = [grouped[g][i] for g, i in picks]
    report: dict[str, Any] = {"rule": args.selection, **counts.to_dict()}
    metrics: dict[str, float] = {
        "rs/selected": float(counts.selected),
        "rs/skipped_no_finished": float(counts.skipped_no_finished),
        "rs/unfinished": float(counts.unfinished),
    }
    if args.selection == "threshold":
        metrics["rs/skipped_below_threshold"] = float(counts.skipped_below_threshold)
    pairs: list[dict[str, Any]] = []
    if args.write_pairs:
        made, pair_counts = selection.select_pairs(groups, args.min_pair_gap)
        pairs = pair_rows(grouped, groups, made)
        report["pairs"] = pair_counts.to_dict()
        metrics["rs/pairs"] = float(len(pairs))
    if ctx.is_main:
        fields = ("prompt_id", "sample", "prompt", "completion", "score")
        write_jsonl(samples / "selected.jsonl", [{k: r[k] for k in fields} for r in kept])
        if args.write_pairs:
            write_jsonl(samples / "pairs.jsonl", pairs)
        (samples / "selection_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not kept:
        cap = ctx.recipe.generation.max_new_tokens
        raise WorkbenchError(
            f"rejection sampling kept no completion: of {counts.prompts} prompts, {counts.skipped_no_finished} have no completion "
            f"that ended before `generation.max_new_tokens` ({cap}) and {counts.skipped_below_threshold} none scoring at least "
            "`train.score_threshold`; raise max_new_tokens or num_samples, or lower the threshold"
        )
    all_mean, all_std = mean_std([r["score"] for r in rows])
    sel_mean, sel_std = mean_std([r["score"] for r in kept])
    n = ctx.recipe.generation.num_samples
    curve = losses.best_of_n_curve([[r["score"] for r in g] for g in grouped], losses.powers_of_two_upto(n))
    metrics.update(
        {
            "rs/reward_all_mean": all_mean,
            "rs/reward_all_std": all_std,
            "rs/reward_selected_mean": sel_mean,
            "rs/reward_selected_std": sel_std,
            "rs/finished_share": sum(r["finished"] for r in rows) / len(rows),
            **{f"rs/best_of_{k}": v for k, v in curve.items()},
        }
    )
    return metrics, report


# ----------------------------------------------------------------------------------------------


def examples_fingerprint(rows: list[dict[str, Any]]) -> str:
    """Identifies the exact (prompt, completion) set the fine-tuning stage trained on."""
    return stable_hash(sorted(stable_hash([r["prompt"], r["completion"]]) for r in rows))[:16]


def run(ctx: RunContext) -> RunResult:
    from types import SimpleNamespace

    from workbench.config import train_config_class, train_field_defaults
    from workbench.methods import sft

    refuse_method_problems(ctx.recipe, ctx.world_size)  # before hours of generation, not at the fine-tuning stage
    args = SimpleNamespace(**{**train_field_defaults(train_config_class("rejection_sampling")), **ctx.recipe.train})
    samples, metrics = draw_samples(ctx, "rs")
    selected_metrics, report = stage_select(ctx, samples, args)
    metrics.update(selected_metrics)
    ctx.tracker.update_manifest(selection=report)
    ctx.tracker.log(metrics, step=0)
    ctx_wait()
    selected = read_jsonl(samples / "selected.jsonl")
    examples = [
        tokenize_sft(ctx.tokenizer, {"prompt": r["prompt"], "completion": r["completion"]}, ctx.data.settings) for r in selected
    ]
    ctx.tracker.update_manifest(sft_stage={"examples": len(examples), "fingerprint": examples_fingerprint(selected)})
    result = sft.train_on(ctx, examples, [])
    result.metrics.update(metrics)
    result.generated_tokens = generated_tokens(samples)
    return result
