"""The step-indexed sampler: resuming is O(1) and exact, ranks split the same stream."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from voicetrain.data.sampler import StepBatchSampler


def take(sampler: StepBatchSampler, count: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), count))


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), batch=st.integers(1, 8), seed=st.integers(0, 2**31), skip=st.integers(0, 30))
def test_resuming_at_a_sample_equals_skipping_batches(size: int, batch: int, seed: int, skip: int) -> None:
    uninterrupted = take(StepBatchSampler(size, batch, seed), skip + 5)
    resumed = take(StepBatchSampler(size, batch, seed, start_sample=skip * batch), 5)
    assert resumed == uninterrupted[skip:]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 30), batch=st.integers(1, 6), world=st.integers(1, 4), seed=st.integers(0, 1000))
def test_ranks_split_the_single_process_stream(size: int, batch: int, world: int, seed: int) -> None:
    single = take(StepBatchSampler(size, batch * world, seed), 6)
    ranks = [take(StepBatchSampler(size, batch, seed, rank=rank, world_size=world), 6) for rank in range(world)]
    for number in range(6):
        assert [element for rank in ranks for element in rank[number]] == single[number]


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    size = 12
    stream = [element for micro_batch in take(StepBatchSampler(size, 4, seed=7), 6) for element in micro_batch]
    first, second = [index for index, _ in stream[:size]], [index for index, _ in stream[size:]]
    assert sorted(first) == sorted(second) == list(range(size))
    assert first != second
    assert len({example_seed for _, example_seed in stream}) == len(stream), "every example gets its own seed"


def test_large_skips_cost_nothing() -> None:
    # A position a billion samples in is computed directly, without iterating the past.
    sampler = StepBatchSampler(96, 16, seed=1, start_sample=10**9)
    assert len(next(iter(sampler))) == 16
