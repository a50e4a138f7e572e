"""Per-token log-probabilities of sampled responses, at the temperature they were sampled with: one batch layout
and one chunked loop for PPO's learner and the evaluation.

A batch is [left-padded prompt | right-padded response], so every response starts at the same column and the
position ids match what generation used. Sampling settings whose distribution is not softmax(logits /
temperature) are refused before sampling (`settings.sampling_problems`), so these are the log-probs of what
was sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workbench.batching import left_pad, length_sorted_batches

if TYPE_CHECKING:
    from workbench.sampling.generation import Completion


def rollout_tensors(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int, device: Any
) -> dict[str, Any]:
    """[left-padded prompt | right-padded response] with masks and the position ids generation used."""
    import torch

    p_ids, p_mask = left_pad(prompts, pad_id)
    width = max(1, max(len(r) for r in responses))
    r_ids = [list(r) + [pad_id] * (width - len(r)) for r in responses]
    r_mask = [[1] * len(r) + [0] * (width - len(r)) for r in responses]
    ids = torch.tensor([a + b for a, b in zip(p_ids, r_ids)], device=device)
    attention = torch.tensor([a + b for a, b in zip(p_mask, r_mask)], device=device)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
        "response_mask": torch.tensor(r_mask, device=device, dtype=torch.float32),  # (B, R)
        "prompt_width": len(p_ids[0]),
    }


def completion_batch(
    prompt_ids: Sequence[Sequence[int]], completions: Sequence[Completion], pad_id: int, device: Any
) -> dict[str, Any]:
    """`rollout_tensors` of the completions: each sampled response with its own EOS included."""
    return rollout_tensors(
        [prompt_ids[c.prompt_index] for c in completions], [c.sampled_ids for c in completions], pad_id, device
    )


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Forward kwargs that make logits only at the R + 1 last positions, the ones that predict response tokens.

    Prompt positions never get a (vocabulary-wide) logit row: on a 49k vocabulary that is 0.2 MB per token
    in float32.
    """
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"],
        "logits_to_keep": batch["response_mask"].shape[1] + 1,
    }


def logprobs_and_entropy(
    logits: Any, batch: dict[str, Any], temperature: float, with_entropy: bool = True, chunk_rows: int = 4
) -> tuple[Any, Any]:
    """log pi_T(response token | everything before it) and the entropy of pi_T at each response position, both (B, R)
    (entropy None without `with_entropy`).

    pi_T = softmax(logits / temperature), the distribution sampling used. `logits` may be the whole sequence's
    (B, P + R, V) or only its last R + 1 positions' (`model_inputs`): both end at the same column. Computed as
    logit - logsumexp a few rows at a time, so no (B, R, V) float32 log-softmax is ever alive beside the logits.
    """
    import torch

    from workbench.losses import entropy_from_logits

    r = batch["response_mask"].shape[1]
    start = logits.shape[1] - (r + 1)  # position t predicts token t + 1
    targets = batch["input_ids"][:, -r:] if r else batch["input_ids"][:, :0]
    logprobs, entropy = [], []
    for lo in range(0, logits.shape[0], chunk_rows):
        step = logits[lo : lo + chunk_rows, start : start + r].float()  # (b, R, V)
        if temperature != 1.0:
            step = step / temperature
        picked = step.gather(-1, targets[lo : lo + chunk_rows].unsqueeze(-1)).squeeze(-1)
        logprobs.append(picked - torch.logsumexp(step, dim=-1))
        if with_entropy:
            entropy.append(entropy_from_logits(step))
    empty = logits.new_zeros((0, r))
    return (
        torch.cat(logprobs) if logprobs else empty,
        (torch.cat(entropy) if entropy else empty) if with_entropy else None,
    )


def response_logprobs(logits: Any, batch: dict[str, Any], temperature: float = 1.0, chunk_rows: int = 4) -> Any:
    """log pi_T(response token | everything before it), (B, R): `logprobs_and_entropy` without the entropy."""
    return logprobs_and_entropy(logits, batch, temperature, with_entropy=False, chunk_rows=chunk_rows)[0]


def token_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    temperature: float = 1.0,
) -> list[list[float]]:
    """For each (prompt, response): the log-probability of every response token under `model` (no grad), through
    the forward and the loop PPO's learner uses."""
    import torch

    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rows in length_sorted_batches([len(p) + len(r) for p, r in zip(prompts, responses)], batch_size):
            batch = rollout_tensors([prompts[i] for i in rows], [responses[i] for i in rows], pad_id, device)
            logits = model(**model_inputs(batch)).logits  # only the positions that predict response tokens
            lp = response_logprobs(logits, batch, temperature).cpu()  # (B, R)
            for k, i in enumerate(rows):
                out[i] = lp[k, : len(responses[i])].tolist()
    model.train(was_training)
    return out
