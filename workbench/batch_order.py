"""Length-grouped training batches that resume exactly.

transformers' `LengthGroupedSampler` draws its permutation from torch's global generator when the
epoch's iteration starts. On `--resume` the Trainer restores the checkpoint's RNG state before that,
so the resumed epoch is drawn from a different state than the uninterrupted run's, and skipping the
batches already trained skips the wrong ones. Here the permutation is a function of (seed, epoch)
only: every process draws the same one, and a resumed run continues the uninterrupted run's order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


class EpochSeededLengthGroupedSampler(Sampler[int]):
    """transformers' length grouping (shuffled mega-batches, each sorted by length, longest batch first),
    with its generator seeded by `seed + epoch`."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, epoch: Callable[[], int]):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch())
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class ResumableLengthGrouping:
    """Trainer mixin: `train_sampling_strategy: group_by_length` through EpochSeededLengthGroupedSampler."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = super()._get_train_sampler(train_dataset)  # type: ignore[misc]
        if not isinstance(sampler, LengthGroupedSampler):
            return sampler
        args = self.args  # type: ignore[attr-defined]
        seed = args.data_seed if args.data_seed is not None else args.seed
        return EpochSeededLengthGroupedSampler(sampler.lengths, sampler.batch_size, seed, self._sampling_epoch)

    def _sampling_epoch(self) -> int:
        """The epoch being iterated: the Trainer's progress (e.g. 1.25 on a resume in the second epoch), floored."""
        return int(math.floor((self.state.epoch or 0.0) + 1e-9))  # type: ignore[attr-defined]
