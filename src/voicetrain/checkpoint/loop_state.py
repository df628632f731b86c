"""The loop's own counters and best-metric tracker: the small piece of loop state every checkpoint
saves (as loop_state.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoopState:
    step: int = 0  # optimizer steps completed
    samples_seen: int = 0  # training examples consumed, over all processes (re-derives data position)
    last_metrics: dict[str, float] = field(default_factory=dict)  # from the newest validation
    best_metric: float | None = None  # best value of ckpt.monitor so far
    best_step: int | None = None
    tracker_runs: dict[str, str] = field(default_factory=dict)  # tracker name -> its run id (MLflow, W&B)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def record_validation(self, metrics: dict[str, float], monitor: str, mode: str) -> bool:
        """Stores the metrics; returns True when `monitor` improved on the best so far."""
        self.last_metrics = dict(metrics)
        value = metrics.get(monitor)
        if value is None:
            return False
        improved = self.best_metric is None or (value < self.best_metric if mode == "min" else value > self.best_metric)
        if improved:
            self.best_metric, self.best_step = value, self.step
        return improved
