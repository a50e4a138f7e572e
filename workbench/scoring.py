"""Batched reward-model scoring: token sequences in, one scalar per sequence out.

Used by reward-model evaluation and export statistics, rejection sampling, PPO and the shared
evaluation. Sequences are sorted by length into batches so that padding stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score_sequences(model: Any, sequences: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 16) -> list[float]:
    """Reward of each token sequence under a one-label sequence-classification model (no grad)."""
    import torch

    device = next(model.parameters()).device
    scores: list[float] = [0.0] * len(sequences)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            width = max(len(sequences[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, : len(sequences[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (batch, 1)
            for row, i in enumerate(batch):
                scores[i] = float(logits[row, 0])
    model.train(was_training)
    return scores
