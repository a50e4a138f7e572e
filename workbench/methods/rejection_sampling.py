"""Rejection sampling (best-of-n), ours: generate -> score -> select -> SFT, as resumable stages.

Each stage writes its artifact under OUTPUT_DIR/samples/ and a `.done` marker; a rerun skips
finished stages and continues an unfinished one where it stopped (generation by batch, scoring
by line), so no prompt is lost or duplicated. Stage inputs are fingerprinted: samples made with
other settings are never reused. Selection and pairs take finished completions only (workbench/selection.py):
a completion cut at the length cap would be fine-tuned with an EOS the model never sampled.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import losses, selection
from workbench.data.formatting import tokenize_sft
from workbench.data.pipeline import read_jsonl, write_jsonl
from workbench.data.schema import stable_hash
from workbench.errors import WorkbenchError
from workbench.method_checks import refuse_method_problems
from workbench.metrics import mean_std
from workbench.models import load_causal_lm
from workbench.sampling.generation import Completion, GenerationStats, batches_of, generate
from workbench.scoring import reward_source
from workbench.selection import Candidate, Group

if TYPE_CHECKING:
    from workbench.context import RunContext, RunResult

log = logging.getLogger("workbench")


# ----------------------------------------------------------------------------------------------
# Files


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()


def stage_fingerprint(ctx: RunContext) -> str:
    """What the samples depend on: data, policy, generation settings, seed."""
    recipe = ctx.recipe
    from dataclasses import asdict

    return stable_hash([ctx.data.report["fingerprints"], recipe.model.name_or_path, asdict(recipe.generation), recipe.seed])[:16]


def prepare_samples_dir(ctx: RunContext) -> Path:
    """samples/, cleared when it holds samples of other settings."""
    samples = ctx.run_dir / "samples"
    marker = samples / "fingerprint"
    wanted = stage_fingerprint(ctx)
    if ctx.is_main:
        if samples.is_dir() and (not marker.is_file() or marker.read_text().strip() != wanted):
            log.warning("samples in %s were made with other settings: starting them over", samples)
            shutil.rmtree(samples)
        samples.mkdir(parents=True, exist_ok=True)
        marker.write_text(wanted + "\n")
    ctx_wait()
    return samples


def ctx_wait() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()


# ----------------------------------------------------------------------------------------------
# Stage 1: generate


def generation_rows(ctx: RunContext, completions: list[Completion]) -> list[dict[str, Any]]:
    rows = ctx.data.train
    return [
        {
            "prompt_id": rows[c.prompt_index]["pair_id"],
            "prompt_index": c.prompt_index,
            "sample": c.sample,
            "prompt": rows[c.prompt_index]["prompt"],
            "completion": ctx.tokenizer.decode(c.token_ids, skip_special_tokens=True),
            "finished": c.finished,
            "num_tokens": len(c.token_ids),
        }
        for c in completions
    ]


def done_batches(part: Path, batches: list[list[int]], n: int) -> set[int]:
    """Batches whose every prompt has all n samples in `part`; the file is rewritten to hold only those."""
    rows = read_jsonl(part)
    have: dict[int, int] = {}
    for r in rows:
        have[r["prompt_index"]] = have.get(r["prompt_index"], 0) + 1
    done = {b for b, batch in enumerate(batches) if all(have.get(i, 0) == n for i in batch)}
    keep = {i for b in done for i in batches[b]}
    write_jsonl(part, [r for r in rows if r["prompt_index"] in keep])
    return done


def stage_generate(ctx: RunContext, samples: Path) -> dict[str, float]:
    """generations.jsonl: num_samples completions per training prompt."""
    final = samples / "generations.jsonl"
    if (samples / "generations.done").is_file():
        return {}
    from accelerate import PartialState

    state = PartialState()
    cfg = ctx.recipe.generation
    prompts = [t.prompt_ids for t in ctx.data.tokenized["train"]]
    batches = batches_of(prompts, cfg.batch_size)
    part = samples / f"generations.part{state.process_index}-of{state.num_processes}.jsonl"
    done = done_batches(part, batches, cfg.num_samples)
    policy = load_causal_lm(ctx.recipe.model, ctx.tokenizer).to(state.device)
    stats = GenerationStats()
    seed = ctx.recipe.seed if cfg.seed is None else cfg.seed
    generate(
        policy,
        ctx.tokenizer,
        prompts,
        cfg,
        seed,
        done_batches=done,
        rank=state.process_index,
        world_size=state.num_processes,
        stats=stats,
        on_batch=lambda b, made: append_jsonl(part, generation_rows(ctx, made)),
    )
    del policy
    state.wait_for_everyone()
    if ctx.is_main:
        rows = [r for p in sorted(samples.glob(f"generations.part*-of{state.num_processes}.jsonl")) for r in read_jsonl(p)]
        rows.sort(key=lambda r: (r["prompt_index"], r["sample"]))
        expected = len(prompts) * cfg.num_samples
        if len(rows) != expected or len({(r["prompt_index"], r["sample"]) for r in rows}) != expected:
            raise RuntimeError(f"generation produced {len(rows)} completions, expected {expected} distinct")
        write_jsonl(final, rows)
        (samples / "generations.done").write_text("ok\n")
        for p in samples.glob("generations.part*"):
            p.unlink()
    state.wait_for_everyone()
    return {"rs/generation_tokens_per_second": stats.tokens_per_second, "rs/generated_tokens": float(stats.new_tokens)}


# ----------------------------------------------------------------------------------------------
# Stage 2: score


def stage_score(ctx: RunContext, samples: Path) -> None:
    """Adds `score` to every line of generations.jsonl (main process; resumable by line)."""
    if (samples / "scored.done").is_file() or not ctx.is_main:
        return
    rows = read_jsonl(samples / "generations.jsonl")
    partial = samples / "scored.partial.jsonl"
    scored = read_jsonl(partial)
    write_jsonl(partial, scored)  # drop a line cut by a kill
    score = reward_source(ctx.recipe.reward_model, ctx.recipe.data.max_length)
    step = ctx.recipe.reward_model.batch_size if ctx.recipe.reward_model else 16
    for start in range(len(scored), len(rows), step):
        chunk = rows[start : start + step]
        values = score([r["prompt"] for r in chunk], [r["completion"] for r in chunk])
        append_jsonl(partial, [{**r, "score": v} for r, v in zip(chunk, values)])
    write_jsonl(samples / "generations.jsonl", read_jsonl(partial))
    partial.unlink()
    (samples / "scored.done").write_text("ok\n")


# ----------------------------------------------------------------------------------------------
# Stage 3: select


def group_by_prompt(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["prompt_index"], []).append(r)
    return [sorted(groups[k], key=lambda r: r["sample"]) for k in sorted(groups)]


def as_groups(grouped: list[list[dict[str, Any]]]) -> list[Group]:
    return [Group(g[0]["prompt"], [Candidate(r["completion"], r["score"], r["finished"]) for r in g]) for g in grouped]


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
        pairs = [{"prompt_id": grouped[g][0]["prompt_id"], **selection.pair_row(groups[g], c, r)} for g, c, r in made]
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


def generated_tokens(samples: Path) -> int:
    """Tokens sampled for generations.jsonl (each finished completion also sampled its EOS)."""
    return sum(r["num_tokens"] + bool(r["finished"]) for r in read_jsonl(samples / "generations.jsonl"))


def examples_fingerprint(rows: list[dict[str, Any]]) -> str:
    """Identifies the exact (prompt, completion) set the fine-tuning stage trained on."""
    return stable_hash(sorted(stable_hash([r["prompt"], r["completion"]]) for r in rows))[:16]


def run(ctx: RunContext) -> RunResult:
    from types import SimpleNamespace

    from workbench.config import train_config_class, train_field_defaults
    from workbench.methods import sft

    refuse_method_problems(ctx.recipe, ctx.world_size)  # before hours of generation, not at the fine-tuning stage
    args = SimpleNamespace(**{**train_field_defaults(train_config_class("rejection_sampling")), **ctx.recipe.train})
    samples = prepare_samples_dir(ctx)
    metrics = stage_generate(ctx, samples)
    stage_score(ctx, samples)
    ctx_wait()
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
