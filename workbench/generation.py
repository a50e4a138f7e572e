"""Batched generation from prompt token ids, shared by rejection sampling, PPO and evaluation.

Prompts are sorted by length into batches, left-padded, and sampled with the KV cache; each
completion is cut at its first EOS. Each batch draws from its own seed (seed + batch number), so
a resumed run that skips finished batches produces exactly what an uninterrupted run would.
Under several processes each one generates its shard of batches and every process receives all.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.batching import left_pad, length_sorted_batches
from workbench.config import GenerationConfig
from workbench.errors import WorkbenchError


@dataclass(frozen=True)
class Completion:
    prompt_index: int
    sample: int
    token_ids: list[int]  # up to, not including, the first EOS
    finished: bool  # ended with EOS (False: hit max_new_tokens)


@dataclass
class GenerationStats:
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def cut_at_eos(ids: Sequence[int], eos_ids: set[int], pad_id: int) -> tuple[list[int], bool]:
    """Tokens before the first EOS (trailing padding dropped) and whether an EOS was reached."""
    out: list[int] = []
    for token in ids:
        if token in eos_ids:
            return out, True
        out.append(token)
    while out and out[-1] == pad_id and pad_id not in eos_ids:
        out.pop()
    return out, False


def eos_ids_of(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sampling_kwargs(cfg: GenerationConfig, num_samples: int) -> dict[str, Any]:
    sample = cfg.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens,
        "do_sample": sample,
        "num_return_sequences": num_samples,
        "use_cache": True,
    }
    if sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    elif num_samples > 1:
        raise WorkbenchError(
            "`generation.temperature: 0` (greedy) gives one completion per prompt; set num_samples: 1 or a temperature > 0"
        )
    return kwargs


def generate_batch(
    model: Any, tokenizer: Any, prompts: list[list[int]], cfg: GenerationConfig, num_samples: int, seed: int
) -> list[list[tuple[list[int], bool]]]:
    """For each prompt, `num_samples` (tokens, finished) completions."""
    import torch

    pad_id = tokenizer.pad_token_id
    ids, mask = left_pad(prompts, pad_id)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=torch.tensor(mask, device=device),
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids_of(model, tokenizer)),
            **sampling_kwargs(cfg, num_samples),
        )
    new = out[:, len(ids[0]) :].tolist()  # (batch * num_samples, new tokens)
    eos = eos_ids_of(model, tokenizer)
    flat = [cut_at_eos(row, eos, pad_id) for row in new]
    return [flat[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    seed: int,
    num_samples: int | None = None,
    done_batches: set[int] | None = None,
    on_batch: Callable[[int, list[Completion]], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    stats: GenerationStats | None = None,
) -> list[Completion]:
    """Completions for this process's share of the batches (batch b belongs to rank b % world_size).

    `done_batches` are skipped (already on disk); `on_batch(b, completions)` is called after each batch.
    """
    if cfg.backend == "vllm":
        require_vllm()
    n = num_samples or cfg.num_samples
    batches = length_sorted_batches([len(p) for p in prompts], cfg.batch_size)
    was_training = model.training
    model.eval()
    results: list[Completion] = []
    for b, batch in enumerate(batches):
        if b % world_size != rank or (done_batches and b in done_batches):
            continue
        t0 = time.perf_counter()
        outputs = generate_batch(model, tokenizer, [list(prompts[i]) for i in batch], cfg, n, seed + b)
        made = [
            Completion(i, s, tokens, finished)
            for i, samples in zip(batch, outputs)
            for s, (tokens, finished) in enumerate(samples)
        ]
        if stats is not None:
            stats.seconds += time.perf_counter() - t0
            stats.new_tokens += sum(len(c.token_ids) + c.finished for c in made)
        results.extend(made)
        if on_batch is not None:
            on_batch(b, made)
    model.train(was_training)
    return results


def batches_of(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The batches `generate` uses, for callers that track progress by batch."""
    return length_sorted_batches([len(p) for p in prompts], batch_size)


def gather_completions(local: list[Completion]) -> list[Completion]:
    """Every process's completions on every process, ordered by (prompt, sample)."""
    from accelerate.utils import gather_object

    from workbench.launch import world_size

    merged = gather_object(local) if world_size() > 1 else local
    return sorted(merged, key=lambda c: (c.prompt_index, c.sample))


def require_vllm() -> None:
    """The vLLM backend is refused clearly: missing package, or (this version) not yet supported."""
    if importlib.util.find_spec("vllm") is None:
        raise WorkbenchError(
            "`generation.backend: vllm` needs vLLM: pip install 'workbench[vllm]' (on a CUDA machine), or use backend: transformers"
        )
    raise WorkbenchError(
        "`generation.backend: vllm` is not supported by this version of the workbench; use backend: transformers"
    )
