"""Retention is a pure function of what is on disk: `plan(records, policy, protected)`.

Unit examples pin the presets down; hypothesis checks the invariants over random histories
(random step sets, metrics missing or NaN, every kind of policy, random protected steps), and a
simulated training run that prunes after every commit (as the trainer does, in any number of
processes) ends where one plan over the whole history ends."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from voicetrain.checkpoint.retention import (
    CheckpointRecord,
    RetentionPolicy,
    best_steps,
    is_milestone,
    plan,
    steps_to_keep,
)

from helpers import compose_config

MONITOR = "val/mcd"
# The shipped default policy, read from conf/config.yaml (the one source of defaults).
DEFAULT_CKPT = compose_config().ckpt


def default_policy(**changes: object) -> RetentionPolicy:
    """The default policy of conf/config.yaml with `changes` applied."""
    fields = {"keep_last": DEFAULT_CKPT.keep_last, "keep_every": DEFAULT_CKPT.keep_every,
              "keep_best": DEFAULT_CKPT.keep_best, "monitor": DEFAULT_CKPT.monitor, "mode": DEFAULT_CKPT.mode}
    return RetentionPolicy(**{**fields, **changes})


def records_of(steps: list[int], metrics: dict[int, float] | None = None) -> list[CheckpointRecord]:
    metrics = metrics or {}
    return [CheckpointRecord(step, {MONITOR: metrics[step]} if step in metrics else {}) for step in steps]


def kept(records: list[CheckpointRecord], policy: RetentionPolicy, protected: set[int] = frozenset()) -> set[int]:
    doomed = set(plan(records, policy, protected))
    return {record.step for record in records} - doomed


# ----- examples -----

def test_default_keeps_the_newest_three() -> None:
    assert plan(records_of([2, 4, 6, 8, 10]), default_policy()) == [2, 4]


def test_save_last_only_keeps_exactly_the_newest() -> None:
    assert plan(records_of([10, 20, 30]), default_policy(keep_last=1)) == [10, 20]


def test_keep_last_none_keeps_everything() -> None:
    assert plan(records_of(list(range(1, 50))), default_policy(keep_last=None)) == []


def test_milestones_are_kept_forever() -> None:
    policy = default_policy(keep_last=2, keep_every=8)
    assert kept(records_of(list(range(2, 21, 2))), policy) == {8, 16, 18, 20}


def test_step_zero_is_no_milestone() -> None:
    assert not is_milestone(0, 8)
    assert is_milestone(16, 8) and not is_milestone(12, 8) and not is_milestone(16, None)


def test_best_k_min_and_max() -> None:
    metrics = {1: 5.0, 2: 3.0, 3: 4.0, 4: 6.0, 5: 7.0}
    records = records_of([1, 2, 3, 4, 5], metrics)
    assert kept(records, default_policy(keep_last=1, keep_best=2, mode="min")) == {2, 3, 5}
    assert kept(records, default_policy(keep_last=1, keep_best=2, mode="max")) == {4, 5}


def test_best_k_ties_go_to_the_newer_checkpoint() -> None:
    records = records_of([1, 2, 3, 4], {1: 1.0, 2: 1.0, 3: 1.0, 4: 9.0})
    assert best_steps(records, default_policy(keep_best=2)) == {2, 3}


def test_unscored_checkpoints_are_never_best() -> None:
    records = [CheckpointRecord(1, {}), CheckpointRecord(2, {MONITOR: math.nan}),
               CheckpointRecord(3, {MONITOR: math.inf}),
               CheckpointRecord(4, {"other": 0.0}), CheckpointRecord(5, {MONITOR: 2.0}), CheckpointRecord(6, {})]
    assert best_steps(records, default_policy(keep_best=3)) == {5}
    assert kept(records, default_policy(keep_last=1, keep_best=3)) == {5, 6}


def test_protected_step_stays_and_unknown_protected_steps_are_ignored() -> None:
    records = records_of([2, 4, 6, 8])
    assert plan(records, default_policy(keep_last=1), protected={4, 99}) == [2, 6]


def test_no_checkpoints_nothing_to_delete() -> None:
    assert plan([], default_policy()) == []
    assert steps_to_keep([], default_policy()) == set()


def test_plan_returns_oldest_first() -> None:
    assert plan(records_of([9, 3, 7, 1, 5]), default_policy(keep_last=1)) == [1, 3, 5, 7]


# ----- strategies -----

metric_values = st.one_of(
    st.floats(min_value=-100, max_value=100, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.0]),  # a small pool makes ties common
    st.just(math.nan),
    st.just(math.inf),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=st.one_of(st.none(), st.integers(1, 6)),
    keep_every=st.one_of(st.none(), st.integers(1, 25)),
    keep_best=st.integers(0, 5),
    monitor=st.just(MONITOR),
    mode=st.sampled_from(["min", "max"]),
)


@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointRecord]:
    steps = draw(st.lists(st.integers(0, 300), unique=True, max_size=30))
    records = []
    for step in steps:
        kind = draw(st.sampled_from(["scored", "scored", "missing", "other-key"]))
        if kind == "scored":
            metrics = {MONITOR: draw(metric_values), "val/other": draw(metric_values)}
        elif kind == "other-key":
            metrics = {"val/other": draw(metric_values)}
        else:
            metrics = {}
        records.append(CheckpointRecord(step, metrics))
    return records


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[CheckpointRecord], RetentionPolicy, set[int]]:
    records = draw(histories())
    steps = [record.step for record in records]
    protected = set(draw(st.lists(st.sampled_from(steps), max_size=4))) if steps else set()
    protected |= set(draw(st.lists(st.integers(0, 400), max_size=2)))  # steps not on disk are harmless
    return records, draw(policies), protected


# ----- an independent statement of the policy -----

def expected_best(records: list[CheckpointRecord], policy: RetentionPolicy) -> set[int]:
    if policy.keep_best <= 0:
        return set()
    scored = [(record.metrics[MONITOR], record.step) for record in records
              if isinstance(record.metrics.get(MONITOR), float) and math.isfinite(record.metrics[MONITOR])]
    better = (lambda value: value) if policy.mode == "min" else (lambda value: -value)
    # Best first; among equal values the newer (larger step) first.
    scored.sort(key=lambda item: (better(item[0]), -item[1]))
    return {step for _, step in scored[: policy.keep_best]}


def expected_keep(records: list[CheckpointRecord], policy: RetentionPolicy, protected: set[int]) -> set[int]:
    steps = sorted(record.step for record in records)
    if not steps:
        return set()
    newest = set(steps) if policy.keep_last is None else set(steps[len(steps) - min(policy.keep_last, len(steps)):])
    milestones = {step for step in steps if policy.keep_every and step > 0 and step % policy.keep_every == 0}
    return {steps[-1]} | newest | milestones | expected_best(records, policy) | (protected & set(steps))


# ----- properties -----

@settings(max_examples=400, deadline=None)
@given(cases())
def test_plan_invariants(case: tuple[list[CheckpointRecord], RetentionPolicy, set[int]]) -> None:
    records, policy, protected = case
    steps = [record.step for record in records]
    doomed = plan(records, policy, protected)
    survivors = set(steps) - set(doomed)

    # A subset of the input, sorted, without duplicates.
    assert set(doomed) <= set(steps)
    assert doomed == sorted(doomed)
    assert len(doomed) == len(set(doomed))
    if steps:
        assert max(steps) in survivors, "the newest checkpoint was deleted"
    assert not (protected & set(doomed)), "a protected checkpoint was deleted"
    for step in doomed:
        assert not is_milestone(step, policy.keep_every), f"milestone {step} was deleted"
    if policy.keep_last is None:
        assert doomed == []
    else:
        newest = sorted(steps)[-policy.keep_last:] if steps else []
        assert set(newest) <= survivors, "one of the newest keep_last was deleted"
    assert expected_best(records, policy) <= survivors, "a best-K checkpoint was deleted"
    # Exactly those: everything no rule keeps is deleted.
    assert survivors == expected_keep(records, policy, protected)


@settings(max_examples=300, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_plan_is_deterministic_order_free_and_idempotent(
        case: tuple[list[CheckpointRecord], RetentionPolicy, set[int]], shuffler: random.Random) -> None:
    records, policy, protected = case
    doomed = plan(records, policy, protected)
    assert plan(records, policy, protected) == doomed
    shuffled = list(records)
    shuffler.shuffle(shuffled)
    assert plan(shuffled, policy, protected) == doomed, "the order of the listing changed the decision"
    assert plan(reversed(records), policy, protected) == doomed  # any iterable, not only lists
    remaining = [record for record in records if record.step not in set(doomed)]
    assert plan(remaining, policy, protected) == [], "pruning the kept set again deleted more"


def prune_after_every_commit(history: list[CheckpointRecord], policy: RetentionPolicy,
                             restarts: set[int]) -> set[int]:
    """The trainer's way: after each commit, list what is on disk and delete `plan(...)` with the
    new checkpoint protected. `restarts` marks commits after which the process "dies": nothing
    but the disk survives, which changes nothing because plan reads only the disk."""
    on_disk: dict[int, CheckpointRecord] = {}
    for index, record in enumerate(sorted(history, key=lambda item: item.step)):
        on_disk[record.step] = record
        for step in plan(list(on_disk.values()), policy, protected={record.step}):
            del on_disk[step]
        if index in restarts:
            on_disk = {step: CheckpointRecord(item.step, dict(item.metrics)) for step, item in on_disk.items()}
    return set(on_disk)


@settings(max_examples=300, deadline=None)
@given(histories(), policies, st.sets(st.integers(0, 30)))
def test_incremental_pruning_ends_like_one_plan_over_the_history(
        history: list[CheckpointRecord], policy: RetentionPolicy, restarts: set[int]) -> None:
    """True for keep_last, keep_every and best-K alike. For best-K because the ranking is a total
    order (value, then newer step): a checkpoint among the best K of the whole history is among
    the best K of every subset that contains it, so no earlier prune can delete it, and the last
    prune sees every survivor of the whole history's plan. The newest keep_last likewise are the
    newest of every on-disk set that contains them. (With a protected *resumed* step the
    intermediate states differ, but that only keeps more for a while.)"""
    incremental = prune_after_every_commit(history, policy, restarts)
    newest = max((record.step for record in history), default=None)
    batch = kept(history, policy, {newest} if newest is not None else set())
    assert incremental == batch


@settings(max_examples=200, deadline=None)
@given(histories(), policies, st.integers(0, 29))
def test_a_resumed_step_protected_for_one_launch_is_pruned_by_the_next(
        history: list[CheckpointRecord], policy: RetentionPolicy, resume_index: int) -> None:
    """Launch 1 commits part of the history; launch 2 resumes from launch 1's newest and protects
    it while committing the rest; launch 3 (nothing protected but its own newest) prunes to what
    one plan over the whole history keeps, plus nothing else."""
    ordered = sorted(history, key=lambda item: item.step)
    if len(ordered) < 2:
        return
    split = 1 + resume_index % (len(ordered) - 1)
    on_disk: dict[int, CheckpointRecord] = {}
    for record in ordered[:split]:
        on_disk[record.step] = record
        for step in plan(list(on_disk.values()), policy, protected={record.step}):
            del on_disk[step]
    resumed = ordered[split - 1].step
    for record in ordered[split:]:
        on_disk[record.step] = record
        for step in plan(list(on_disk.values()), policy, protected={record.step, resumed}):
            del on_disk[step]
        assert resumed in on_disk, "the checkpoint this launch resumed from was deleted"
    newest = ordered[-1].step
    for step in plan(list(on_disk.values()), policy, protected={newest}):
        del on_disk[step]
    assert set(on_disk) == kept(history, policy, {newest})
