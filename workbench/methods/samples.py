"""The samples a method draws from its model: `num_samples` responses per training prompt, then their scores, as
resumable stages under OUTPUT_DIR/samples/ (rejection sampling selects from them, pairs pairs them).

Each stage writes its artifact and a `.done` marker; a rerun skips finished stages and continues an unfinished one
where it stopped (generation by batch, scoring by line), so no prompt is lost or duplicated. The samples are
fingerprinted by what they depend on: samples made with other settings are never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.data.pipeline import read_jsonl, write_jsonl
from workbench.data.schema import stable_hash
from workbench.models import load_causal_lm
from workbench.sampling.generation import Completion, GenerationStats, batches_of, generate
from workbench.scoring import reward_source
from workbench.selection import Candidate, Group, pair_row

if TYPE_CHECKING:
    from workbench.context import RunContext

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


def stage_generate(ctx: RunContext, samples: Path, prefix: str) -> dict[str, float]:
    """generations.jsonl: num_samples completions per training prompt; the generation metrics under `prefix`/."""
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
    return {
        f"{prefix}/generation_tokens_per_second": stats.tokens_per_second,
        f"{prefix}/generated_tokens": float(stats.new_tokens),
    }


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
# Grouped by prompt


def group_by_prompt(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["prompt_index"], []).append(r)
    return [sorted(groups[k], key=lambda r: r["sample"]) for k in sorted(groups)]


def as_groups(grouped: list[list[dict[str, Any]]]) -> list[Group]:
    return [Group(g[0]["prompt"], [Candidate(r["completion"], r["score"], r["finished"]) for r in g]) for g in grouped]


def pair_rows(grouped: list[list[dict[str, Any]]], groups: list[Group], made: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """The pairs of `selection.select_pairs` as preference rows, each with its prompt's id."""
    return [{"prompt_id": grouped[g][0]["prompt_id"], **pair_row(groups[g], c, r)} for g, c, r in made]


def generated_tokens(samples: Path) -> int:
    """Tokens sampled for generations.jsonl (each finished completion also sampled its EOS)."""
    return sum(r["num_tokens"] + bool(r["finished"]) for r in read_jsonl(samples / "generations.jsonl"))


def draw_samples(ctx: RunContext, prefix: str) -> tuple[Path, dict[str, float]]:
    """(samples/, generation metrics under `prefix`/): every training prompt's responses generated and scored, on
    every process, resuming whatever an earlier run of the same settings left."""
    samples = prepare_samples_dir(ctx)
    metrics = stage_generate(ctx, samples, prefix)
    stage_score(ctx, samples)
    ctx_wait()
    return samples, metrics
