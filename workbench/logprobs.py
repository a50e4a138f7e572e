"""Per-token log-probabilities of responses given prompts: one batch layout for PPO and evaluation.

A batch is [left-padded prompt | right-padded response], so every response starts at the same
column and the position ids match what generation used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.batching import left_pad, length_sorted_batches


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


def response_logprobs(logits: Any, batch: dict[str, Any], temperature: float = 1.0) -> Any:
    """log pi(response token | everything before it), (B, R); logits divided by `temperature` first."""
    import torch

    p = batch["prompt_width"]
    r = batch["response_mask"].shape[1]
    step_logits = logits[:, p - 1 : p - 1 + r].float()  # position t predicts token t + 1
    if temperature != 1.0:
        step_logits = step_logits / temperature
    targets = batch["input_ids"][:, p : p + r]
    return torch.log_softmax(step_logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 8,
    temperature: float = 1.0,
) -> list[list[float]]:
    """For each (prompt, response): the log-probability of every response token under `model` (no grad)."""
    import torch

    device = next(model.parameters()).device
    out: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for rows in length_sorted_batches([len(p) + len(r) for p, r in zip(prompts, responses)], batch_size):
            batch = rollout_tensors([prompts[i] for i in rows], [responses[i] for i in rows], pad_id, device)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
            ).logits
            lp = response_logprobs(logits, batch, temperature).cpu()  # (B, R)
            for k, i in enumerate(rows):
                out[i] = lp[k, : len(responses[i])].tolist()
    model.train(was_training)
    return out
