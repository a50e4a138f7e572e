"""Rejection sampling (best-of-n), ours: generate -> score -> select -> SFT, as resumable stages.

Each stage writes its artifact under OUTPUT_DIR/samples/ and a `.done` marker; a rerun skips
finished stages and continues an unfinished one where it stopped (generation by batch, scoring
by line), so no prompt is lost or duplicated. Stage inputs are fingerprinted: samples made with
other settings are never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench import losses
from workbench.data.formatting import tokenize_sft
from workbench.data.pipeline import read_jsonl, write_jsonl
from workbench.data.schema import stable_hash
from workbench.generation import Completion, GenerationStats, batches_of, generate
from workbench.method_checks import refuse_method_problems
from workbench.metrics import mean_std
from workbench.models import load_causal_lm
from workbench.scoring import reward_source

if TYPE_CHECKING:
    from workbench.runner import RunContext, RunResult

log = logging.getLogger("workbench")
DATA_KIND = "prompt"


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


def select(groups: list[list[dict[str, Any]]], args: Any) -> list[dict[str, Any]]:
    """The completions kept for fine-tuning, by the recipe's selection rule."""
    kept = []
    for group in groups:
        scores = [r["score"] for r in group]
        if args.selection == "best":
            picks = [losses.best_of_n(scores)]
        elif args.selection == "top_k":
            picks = losses.top_k(scores, args.top_k)
        else:
            picks = losses.above_threshold(scores, args.score_threshold)
        kept.extend(group[i] for i in picks)
    return kept


def preference_pairs(groups: list[list[dict[str, Any]]], min_gap: float) -> list[dict[str, Any]]:
    """Best vs worst completion of each prompt, as rows a DPO recipe reads unchanged."""
    out = []
    for group in groups:
        pair = losses.best_worst_pair([r["score"] for r in group], min_gap)
        if pair:
            best, worst = group[pair[0]], group[pair[1]]
            out.append(
                {
                    "prompt": best["prompt"],
                    "chosen": best["completion"],
                    "rejected": worst["completion"],
                    "chosen_score": best["score"],
                    "rejected_score": worst["score"],
                }
            )
    return out


def stage_select(ctx: RunContext, samples: Path, args: Any) -> dict[str, float]:
    rows = read_jsonl(samples / "generations.jsonl")
    groups = group_by_prompt(rows)
    kept = select(groups, args)
    metrics: dict[str, float] = {}
    if ctx.is_main:
        write_jsonl(samples / "selected.jsonl", [{k: r[k] for k in ("prompt_id", "prompt", "completion", "score")} for r in kept])
        if args.write_pairs:
            pairs = preference_pairs(groups, args.min_pair_gap)
            write_jsonl(samples / "pairs.jsonl", pairs)
            metrics["rs/pairs"] = float(len(pairs))
    all_mean, all_std = mean_std([r["score"] for r in rows])
    sel_mean, sel_std = mean_std([r["score"] for r in kept])
    n = ctx.recipe.generation.num_samples
    curve = losses.best_of_n_curve([[r["score"] for r in g] for g in groups], losses.powers_of_two_upto(n))
    metrics.update(
        {
            "rs/reward_all_mean": all_mean,
            "rs/reward_all_std": all_std,
            "rs/reward_selected_mean": sel_mean,
            "rs/reward_selected_std": sel_std,
            "rs/selected": float(len(kept)),
            "rs/finished_share": sum(r["finished"] for r in rows) / len(rows),
            **{f"rs/best_of_{k}": v for k, v in curve.items()},
        }
    )
    return metrics


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
    samples = prepare_samples_dir(ctx)
    metrics = stage_generate(ctx, samples)
    stage_score(ctx, samples)
    ctx_wait()
    args = SimpleNamespace(**{**train_field_defaults(train_config_class("rejection_sampling")), **ctx.recipe.train})
    metrics.update(stage_select(ctx, samples, args))
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
