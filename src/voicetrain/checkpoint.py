"""The checkpoint store: the only code that knows the on-disk layout of checkpoints.

    checkpoints/step_00001200/   a committed checkpoint: Accelerate's state files + manifest.json
    checkpoints/.tmp-step_*/     staging; never listed, removed at start-up

Commit protocol: write everything under a staging name in the same directory, fsync every
file, write the manifest last, rename into place, fsync the parent. A checkpoint is therefore
listed only when complete, and "newest" is decided by the step recorded in the manifest, not by
modification times.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

import voicetrain

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STAGING_PREFIX = ".tmp-"
STEP_DIGITS = 8


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})


def checkpoint_name(step: int) -> str:
    # Zero-padded so a plain sort of the names is a numeric sort.
    return f"step_{step:0{STEP_DIGITS}d}"


def fsync_path(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        fsync_path(path)
    fsync_path(root)


def directory_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def write_json_durably(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class CheckpointStore:
    def __init__(self, root: Path):
        self.root = root

    def remove_staging(self) -> list[Path]:
        """Deletes leftovers of interrupted saves; call once at start-up on the main process."""
        removed = []
        if self.root.is_dir():
            for path in sorted(self.root.glob(f"{STAGING_PREFIX}*")):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def list(self) -> list[Checkpoint]:
        """Committed checkpoints, oldest first, ordered by the step in their manifest."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if path.name.startswith(STAGING_PREFIX) or not path.is_dir():
                continue
            manifest = read_manifest(path)
            if manifest is None or not isinstance(manifest.get("step"), int):
                continue
            found.append(Checkpoint(path, manifest["step"], manifest))
        return sorted(found, key=lambda checkpoint: checkpoint.step)

    def newest(self) -> Checkpoint | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def save(self, accelerator: Accelerator, step: int, manifest_fields: dict[str, Any],
             extra_files: dict[str, str]) -> Checkpoint:
        """Saves the full training state (every rank takes part) and commits it atomically."""
        final = self.root / checkpoint_name(step)
        # The staging name is the same on every rank, so per-rank files land in one folder.
        staging = self.root / f"{STAGING_PREFIX}{checkpoint_name(step)}"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        started = time.perf_counter()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            for name, text in extra_files.items():
                (staging / name).write_text(text)
            fsync_tree(staging)
            files = {
                str(path.relative_to(staging)): path.stat().st_size for path in sorted(staging.rglob("*")) if path.is_file()
            }
            manifest = {
                "step": step,
                "files": files,
                "voicetrain_version": voicetrain.__version__,
                "created_unix": time.time(),
                "save_seconds": round(time.perf_counter() - started, 3),
                **manifest_fields,
            }
            write_json_durably(staging / MANIFEST, manifest)
            fsync_path(staging)
            if final.exists():
                # Same step saved again (e.g. a re-run of a finished step): replace it only now
                # that the new copy is complete.
                shutil.rmtree(final)
            os.replace(staging, final)
            fsync_path(self.root)
        accelerator.wait_for_everyone()
        manifest = read_manifest(final)
        if manifest is None:
            raise CheckpointError(f"checkpoint {final} has no readable {MANIFEST} after commit")
        return Checkpoint(final, step, manifest)

    def load(self, accelerator: Accelerator, checkpoint: Checkpoint) -> None:
        accelerator.load_state(str(checkpoint.path))
