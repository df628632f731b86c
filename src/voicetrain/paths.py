"""Where a run's files live: one place that turns the run directory into named paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf


class RunPaths:
    """The named parts of a run folder (see DESIGN "Files of a run")."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        self.export = self.run_dir / "export"
        self.tensorboard = self.run_dir / "tb"
        self.log_file = self.run_dir / "train.log"
        self.hydra_record = self.run_dir / ".hydra"


def default_scratch_folder(base: str, run_root: str, run_name: str) -> str:
    """`base/<run.name>-<digest of the resolved run folder>`: two runs of one name under different
    run.roots (or working directories) never share a scratch folder. The `${voicetrain_scratch_folder:...}`
    resolver of conf/scratch/ramdisk.yaml."""
    resolved = str((Path(run_root) / run_name).resolve())
    return str(Path(base) / f"{run_name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}")


OmegaConf.register_new_resolver("voicetrain_scratch_folder", default_scratch_folder, replace=True)
