"""Where a run's files live: one place that turns the run directory into named paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def export(self) -> Path:
        return self.run_dir / "export"

    @property
    def tensorboard(self) -> Path:
        return self.run_dir / "tb"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "train.log"

    @property
    def hydra_config(self) -> Path:
        return self.run_dir / ".hydra" / "config.yaml"
