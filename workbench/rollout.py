"""generate -> score -> log-probs: the one code path for online methods (PPO today; RS and eval can share it).

Log-probabilities, entropies and KLs are computed from the same processed logits that sampling used
(logits / temperature). Sampling settings whose processed distribution the learner cannot
reproduce exactly under a changing policy (top_k, top_p truncation) are refused for training
rather than silently ignored. Each completion keeps the EOS id that ended it, so a model with
several EOS ids is trained on the token it actually sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.config import GenerationConfig
from workbench.errors import WorkbenchError
from workbench.generation import Completion, GenerationStats, generate
from workbench.logprobs import rollout_tensors


def refuse_unmodelled_sampling(cfg: GenerationConfig, method: str) -> None:
    """An on-policy learner needs log pi(token) of the distribution sampled; truncated sampling has none it can train."""
    if cfg.temperature <= 0:
        raise WorkbenchError(f"{method} samples its own training data: set `generation.temperature` > 0 (1.0 is usual)")
    if cfg.top_k:
        raise WorkbenchError(
            f"{method} cannot train on top-k sampling (its log-probs would be -inf outside the top k); set `generation.top_k: 0`"
        )
    if cfg.top_p < 1.0:
        raise WorkbenchError(
            f"{method} cannot train on nucleus sampling (its log-probs would be -inf outside the nucleus); set `generation.top_p: 1.0`"
        )


@dataclass
class Samples:
    """Completions in (prompt, sample) order with their decoded texts and rewards."""

    completions: list[Completion]
    texts: list[str]
    scores: list[float]
    seconds: dict[str, float]
    tokens_per_second: float


def sample_and_score(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    prompts: Sequence[Any],
    cfg: GenerationConfig,
    seed: int,
    score: Callable[..., list[float]],
    num_samples: int = 1,
) -> Samples:
    """`num_samples` completions per prompt, scored by `score(prompts, texts)` (one reward per completion)."""
    import time

    stats = GenerationStats()
    t0 = time.perf_counter()
    made = generate(model, tokenizer, prompt_ids, cfg, seed, num_samples=num_samples, stats=stats)
    made.sort(key=lambda c: (c.prompt_index, c.sample))
    t1 = time.perf_counter()
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in made]
    scores = score([prompts[c.prompt_index] for c in made], texts)
    t2 = time.perf_counter()
    return Samples(made, texts, scores, {"generate": t1 - t0, "score": t2 - t1}, stats.tokens_per_second)


def completion_batch(
    prompt_ids: Sequence[Sequence[int]], completions: Sequence[Completion], pad_id: int, device: Any
) -> dict[str, Any]:
    """[prompt | sampled response, its own EOS included] tensors for the completions (see logprobs.rollout_tensors)."""
    return rollout_tensors(
        [prompt_ids[c.prompt_index] for c in completions], [c.sampled_ids for c in completions], pad_id, device
    )


def response_logits(logits: Any, batch: dict[str, Any], temperature: float) -> Any:
    """The processed logits each response token was sampled from: logits / temperature, (B, R, V) float32."""
    p = batch["prompt_width"]
    return logits[:, p - 1 : p - 1 + batch["response_mask"].shape[1]].float() / temperature


def logprobs_and_entropy(logits: Any, batch: dict[str, Any], temperature: float, with_entropy: bool = True) -> tuple[Any, Any]:
    """log pi_T(response token) and the entropy of pi_T at each response position, both (B, R)."""
    import torch

    from workbench.losses import entropy_from_logits

    z = response_logits(logits, batch, temperature)
    p = batch["prompt_width"]
    targets = batch["input_ids"][:, p : p + z.shape[1]]
    logprobs = torch.log_softmax(z, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logprobs, (entropy_from_logits(z) if with_entropy else None)
