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


def response_logprobs(logits: Any, batch: dict[str, Any], temperature: float = 1.0, chunk_rows: int = 4) -> Any:
    """log pi(response token | everything before it), (B, R); logits divided by `temperature` first.

    `logits` may be the whole sequence's (B, P + R, V) or only its last R + 1 positions (a forward with
    `logits_to_keep=R + 1`): both end at the same column. Computed as logit - logsumexp a few rows at a
    time, so no (B, R, V) float32 log-softmax is ever alive beside the logits (a 49k vocabulary: 0.2 MB
    per token).
    """
    import torch

    r = batch["response_mask"].shape[1]
    start = logits.shape[1] - (r + 1)  # position t predicts token t + 1
    targets = batch["input_ids"][:, -r:] if r else batch["input_ids"][:, :0]
    out = []
    for lo in range(0, logits.shape[0], chunk_rows):
        step = logits[lo : lo + chunk_rows, start : start + r].float()  # (b, R, V)
        if temperature != 1.0:
            step = step / temperature
        picked = step.gather(-1, targets[lo : lo + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(step, dim=-1))
    return torch.cat(out) if out else logits.new_zeros((0, r))


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
            logits = model(  # only the positions that predict response tokens get logits
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                logits_to_keep=batch["response_mask"].shape[1] + 1,
            ).logits
            lp = response_logprobs(logits, batch, temperature).cpu()  # (B, R)
            for k, i in enumerate(rows):
                out[i] = lp[k, : len(responses[i])].tolist()
    model.train(was_training)
    return out
