"""The resumable, step-indexed batch sampler.

The training stream is an endless sequence of epochs, each a seeded permutation of the dataset;
which examples a micro-batch holds is a pure function of (seed, position in the stream, batch
size, world size, dataset size). Resuming at any point therefore costs O(1) (no pass over
already-seen batches), continues mid-epoch in the same order, and needs nothing saved but the
number of samples consumed, which also re-derives the position when the process count changes. Each element also carries a per-example seed
so random crops are reproducible without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Large odd multipliers decorrelate the per-epoch and per-example seeds from the run seed.
EPOCH_SEED_STRIDE = 1_000_003
EXAMPLE_SEED_STRIDE = 2_654_435_761


@dataclass(frozen=True)
class StreamPosition:
    epoch: int
    index_in_epoch: int


def stream_position(sample_number: int, dataset_size: int) -> StreamPosition:
    return StreamPosition(sample_number // dataset_size, sample_number % dataset_size)


def epoch_order(seed: int, epoch: int, dataset_size: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed + EPOCH_SEED_STRIDE * epoch)
    return torch.randperm(dataset_size, generator=generator).tolist()


def example_seed(seed: int, sample_number: int) -> int:
    return (seed * EXAMPLE_SEED_STRIDE + sample_number) % (2**63 - 1)


class StepBatchSampler:
    """Yields, forever, this rank's share of each global micro-batch as (index, example seed) pairs.

    The global micro-batch holds `batch_size * world_size` consecutive samples of the stream;
    rank r takes the r-th slice, so every rank sees different data and the union is the same
    whatever the process count.
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_sample: int = 0,
                 rank: int = 0, world_size: int = 1):
        if dataset_size < 1:
            raise ValueError("the training set is empty: nothing to sample")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_sample = start_sample  # global samples already consumed, over all ranks
        self.rank = rank
        self.world_size = world_size
        self.cached_epoch = -1
        self.cached_order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        if epoch != self.cached_epoch:
            self.cached_order = epoch_order(self.seed, epoch, self.dataset_size)
            self.cached_epoch = epoch
        return self.cached_order

    def micro_batch(self, number: int) -> list[tuple[int, int]]:
        global_size = self.batch_size * self.world_size
        first = self.start_sample + number * global_size + self.rank * self.batch_size
        elements = []
        for sample_number in range(first, first + self.batch_size):
            position = stream_position(sample_number, self.dataset_size)
            index = self.order(position.epoch)[position.index_in_epoch]
            elements.append((index, example_seed(self.seed, sample_number)))
        return elements

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        number = 0
        while True:
            yield self.micro_batch(number)
            number += 1
