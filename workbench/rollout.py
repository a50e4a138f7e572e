"""generate -> score -> log-probs: the one code path for online methods (PPO today; RS and eval can share it).

Log-probabilities, entropies and KLs are computed from the same processed logits that sampling used
(logits / temperature). Sampling settings whose processed distribution the log-probs do not
model (greedy, top_k, top_p truncation) are refused here, once, for training and for evaluation
rather than silently ignored. Each completion keeps the EOS id that ended it, so a model with
several EOS ids is trained on the token it actually sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workbench.config import GenerationConfig
from workbench.errors import RecipeError
from workbench.generation import Completion, GenerationStats, generate
from workbench.logprobs import response_logprobs, rollout_tensors


def refuse_unmodelled_sampling(cfg: GenerationConfig, who: str, key: str = "generation", source: str = "recipe") -> None:
    """Raise, listing every setting of method_checks.unmodelled_sampling_problems: the one refusal for every sampling
    path that needs log-probs (PPO's rollouts, the shared evaluation)."""
    from workbench.method_checks import unmodelled_sampling_problems

    problems = unmodelled_sampling_problems(cfg, who, key)
    if problems:
        raise RecipeError(source, problems)


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


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Forward kwargs that make logits only at the R + 1 last positions, the ones that predict response tokens.

    Prompt positions never get a (vocabulary-wide) logit row: on a 49k vocabulary that is 0.2 MB per token
    in float32, and on the tiny model the LM head is about half of a forward's FLOPs.
    """
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
        "logits_to_keep": batch["response_mask"].shape[1] + 1,
    }


def response_entropy(logits: Any, batch: dict[str, Any], temperature: float, chunk_rows: int = 4) -> Any:
    """Entropy of pi_T at each response position, (B, R), a few rows at a time (aligned like logprobs.response_logprobs)."""
    import torch

    from workbench.losses import entropy_from_logits

    r = batch["response_mask"].shape[1]
    start = logits.shape[1] - (r + 1)  # whole-sequence logits or only the kept R + 1 positions
    out = []
    for lo in range(0, logits.shape[0], chunk_rows):
        z = logits[lo : lo + chunk_rows, start : start + r].float()  # (b, R, V)
        out.append(entropy_from_logits(z / temperature if temperature != 1.0 else z))
    return torch.cat(out) if out else logits.new_zeros((0, r))


def logprobs_and_entropy(logits: Any, batch: dict[str, Any], temperature: float, with_entropy: bool = True) -> tuple[Any, Any]:
    """log pi_T(response token) and the entropy of pi_T at each response position, both (B, R).

    pi_T = softmax(logits / temperature), the distribution sampling used. `logits` are the whole sequence's
    or only the last R + 1 positions' (`model_inputs`); no (B, R, V) log-softmax is materialized.
    """
    logprobs = response_logprobs(logits, batch, temperature)
    return logprobs, (response_entropy(logits, batch, temperature) if with_entropy else None)
