"""Retention: which committed checkpoints to delete. Pure policy; no torch, no filesystem.

The decision is a function of what is on disk (steps and their recorded metrics) and the
policy, never of process memory, so a restarted process prunes exactly as the first would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None  # newest N; None keeps every checkpoint
    keep_every: int | None  # steps that are multiples of this are milestones, kept forever
    keep_best: int  # best N by `monitor`
    monitor: str
    mode: str  # "min" or "max"


def is_milestone(step: int, keep_every: int | None) -> bool:
    return keep_every is not None and step > 0 and step % keep_every == 0


def best_steps(records: list[CheckpointRecord], policy: RetentionPolicy) -> set[int]:
    if policy.keep_best <= 0:
        return set()
    scored = [
        record for record in records
        if isinstance(record.metrics.get(policy.monitor), (int, float)) and math.isfinite(record.metrics[policy.monitor])
    ]
    sign = 1.0 if policy.mode == "min" else -1.0
    # Ties go to the newer checkpoint, so the choice is stable as training continues.
    ranked = sorted(scored, key=lambda record: (sign * record.metrics[policy.monitor], -record.step))
    return {record.step for record in ranked[: policy.keep_best]}


def steps_to_keep(records: Iterable[CheckpointRecord], policy: RetentionPolicy,
                  protected: Iterable[int] = ()) -> set[int]:
    records = sorted(records, key=lambda record: record.step)
    if not records:
        return set()
    steps = [record.step for record in records]
    keep = {steps[-1]}  # the newest committed checkpoint, always
    keep |= set(steps) if policy.keep_last is None else set(steps[-policy.keep_last:])
    keep |= {step for step in steps if is_milestone(step, policy.keep_every)}
    keep |= best_steps(records, policy)
    keep |= set(protected) & set(steps)
    return keep


def plan(records: Iterable[CheckpointRecord], policy: RetentionPolicy, protected: Iterable[int] = ()) -> list[int]:
    """Steps of the checkpoints to delete, oldest first. `protected` holds steps that must stay
    whatever the policy says (e.g. the checkpoint this run resumed from)."""
    records = list(records)
    keep = steps_to_keep(records, policy, protected)
    return sorted(record.step for record in records if record.step not in keep)
