"""Length-grouped batches resume exactly: the order is a function of (seed, epoch), not of torch's
global RNG state, which the Trainer restores from the checkpoint before a resumed epoch starts."""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from workbench.batch_order import EpochSeededLengthGroupedSampler

LENGTHS = [5, 40, 12, 33, 7, 21, 19, 2, 38, 11, 25, 30, 9, 16, 27, 3] * 4


def test_transformers_sampler_follows_the_global_rng_which_resume_replaces():
    plain = LengthGroupedSampler(4, lengths=LENGTHS)
    torch.manual_seed(0)
    fresh = list(plain)
    torch.manual_seed(123)  # what a resumed run holds: the checkpoint's RNG state
    assert list(plain) != fresh


def test_epoch_seeded_order_ignores_the_global_rng_and_changes_per_epoch():
    epoch = [0]
    sampler = EpochSeededLengthGroupedSampler(LENGTHS, 4, seed=7, epoch=lambda: epoch[0])
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(123)
    assert list(sampler) == first and sorted(first) == list(range(len(LENGTHS)))
    epoch[0] = 1
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    assert list(EpochSeededLengthGroupedSampler(LENGTHS, 4, seed=8, epoch=lambda: 0)) != first
    # still length-grouped: the first batch holds the longest sequence
    assert max(LENGTHS) in [LENGTHS[i] for i in first[:4]]
