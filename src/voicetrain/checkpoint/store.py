"""The checkpoint store: the only code that knows the on-disk layout of checkpoints.

    checkpoints/step_00001200/   a committed checkpoint: Accelerate's state files, config.yaml,
                                 and manifest.json (written last)
    checkpoints/.tmp-step_*/     staging; never listed, removed at start-up

Commit protocol: write everything under a staging name in the same directory, fsync every
file, write the manifest last, rename into place, fsync the parent. A checkpoint is therefore
listed only when complete, and "newest" is decided by the step recorded in the manifest, not by
modification times or digits in a name.

Asynchronous saves take a snapshot on the training thread (so it can never see later updates)
and commit it from a background thread. The snapshot is a copy into reused in-memory buffers
(voicetrain.checkpoint.snapshot) where that covers the run's state, otherwise Accelerate's `save_state`
into a RAM-backed folder. At most one save is in flight; a failed background write is raised on
the training thread at the next check.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

import voicetrain
from voicetrain.checkpoint.background import BackgroundJob
from voicetrain.durable import (MANIFEST, STAGING_PREFIX, folder_bytes, fsync_path, fsync_tree, read_manifest,
                                write_json_durably)
from voicetrain.checkpoint.snapshot import Snapshot, SnapshotBuffers, snapshot_supported, write_snapshot

log = logging.getLogger(__name__)

STEP_DIGITS = 8
# Beside the state files of every checkpoint, written by the loop: the validated settings and the
# TaskContext (speakers, feature statistics), so re-exporting needs neither the dataset nor a pass over it.
CONFIG_FILE = "config.yaml"
TASK_CONTEXT_FILE = "task_context.json"
RAM_DIRECTORY = Path("/dev/shm")
LOW_SPACE_BYTES = 1 << 20  # a failed save with less free space than this is reported as a full disk


class CheckpointError(RuntimeError):
    def __init__(self, message: str, out_of_space: bool = False):
        super().__init__(message)
        self.out_of_space = out_of_space  # lets a caller retry elsewhere (scratch falls back to disk)


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


def verify(checkpoint: Checkpoint) -> list[str]:
    """Problems found without loading: files listed in the manifest that are missing or whose
    size differs (a truncated or overwritten file)."""
    problems = []
    for name, size in checkpoint.manifest.get("files", {}).items():
        path = checkpoint.path / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{path} has {path.stat().st_size} bytes, the manifest says {size}")
    return problems


def model_weight_files(directory: Path) -> list[Path]:
    """Accelerate's per-model weight files, in the order the models were prepared."""
    numbered = sorted(directory.glob("model_*.safetensors"), key=lambda path: int(path.stem.split("_")[1]))
    first = directory / "model.safetensors"
    return ([first] if first.is_file() else []) + numbered


def out_of_space(error: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of disk. torch.save reports a full disk as a bare
    RuntimeError ("unexpected pos") and safetensors as a SafetensorError, neither with an errno,
    so the message and the free space left decide too. Call it before removing the staging folder."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error).lower()
    if "no space left" in text or "os error 28" in text:
        return True
    try:
        return shutil.disk_usage(directory).free < LOW_SPACE_BYTES
    except OSError:
        return False


def explain_os_error(error: BaseException, directory: Path) -> str:
    if out_of_space(error, directory):
        return (f"no space left on the device holding {directory} while saving a checkpoint; earlier checkpoints are "
                "intact. Free space, lower ckpt.keep_last, or use +ckpt=save_last_only, then run the same command "
                "again to continue")
    return f"saving a checkpoint into {directory} failed: {type(error).__name__}: {error}"


def copy_files(source: Path, destination: Path, skip: str | None = None) -> None:
    """Copies every file under `source` into `destination`, keeping relative paths."""
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != skip:
            target = destination / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)


def save_failure(error: BaseException, directory: Path) -> CheckpointError:
    """A CheckpointError explaining `error`; call it before removing the staging folder."""
    return CheckpointError(explain_os_error(error, directory), out_of_space=out_of_space(error, directory))


def explain_background_failure(failure: BaseException) -> CheckpointError:
    return CheckpointError(f"background checkpoint save failed: {failure}",
                           getattr(failure, "out_of_space", False))


def ram_snapshot_root() -> Path | None:
    """Where async saves serialise their snapshot; None when no RAM-backed directory exists."""
    if RAM_DIRECTORY.is_dir() and os.access(RAM_DIRECTORY, os.W_OK):
        return RAM_DIRECTORY / f"voicetrain-snapshots-{os.getuid()}"
    return None


class CheckpointStore:
    def __init__(self, root: Path, on_commit: Callable[[Checkpoint], None] | None = None):
        self.root = root
        self.on_commit = on_commit  # e.g. retention; runs on the main process after each commit
        self.background = BackgroundJob(explain_background_failure)
        self.buffers = SnapshotBuffers()  # reused by every asynchronous save of this store
        self.last_committed: Checkpoint | None = None
        self.bytes_committed = 0  # bytes of every checkpoint committed into this store by this process

    # ----- listing -----
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
            found.append(self.read(path))
        return sorted((checkpoint for checkpoint in found if checkpoint is not None), key=lambda item: item.step)

    @staticmethod
    def read(path: Path) -> Checkpoint | None:
        manifest = read_manifest(path)
        step = None if manifest is None else manifest.get("step")
        if not isinstance(step, int) or isinstance(step, bool):  # JSON true would pass as step 1
            return None
        return Checkpoint(path, manifest["step"], manifest)

    def newest(self) -> Checkpoint | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    def delete(self, checkpoint: Checkpoint) -> None:
        # Rename to a staging name first: a crash mid-delete leaves a folder that is never
        # listed and is cleaned at start-up, not a half-deleted "committed" checkpoint.
        doomed = self.root / f"{STAGING_PREFIX}deleting-{checkpoint.path.name}"
        os.replace(checkpoint.path, doomed)
        fsync_path(self.root)
        shutil.rmtree(doomed)

    # ----- saving -----
    def save(self, accelerator: Accelerator, step: int, manifest_fields: dict[str, Any],
             extra_files: dict[str, str]) -> Checkpoint | None:
        """Saves the full training state synchronously (every rank takes part) and commits it."""
        self.wait()
        staging = self.staging_path(step)
        started = time.perf_counter()
        if accelerator.is_main_process:
            self.prepare_folder(staging)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(staging))
        except Exception as error:  # a full disk surfaces as OSError, RuntimeError or SafetensorError
            failure = save_failure(error, self.root)
            shutil.rmtree(staging, ignore_errors=True)
            raise failure from error
        accelerator.wait_for_everyone()
        checkpoint = None
        if accelerator.is_main_process:
            checkpoint = self.commit(staging, step, manifest_fields, extra_files, started)
        accelerator.wait_for_everyone()
        return checkpoint

    def save_async(self, accelerator: Accelerator, step: int, manifest_fields: dict[str, Any],
                   extra_files: dict[str, str]) -> float:
        """Snapshots the state into RAM now and commits it in the background. Single process
        only (the caller falls back to `save` otherwise). Returns the seconds spent waiting for
        the previous save to finish."""
        waited = time.perf_counter()
        self.wait()
        waited = time.perf_counter() - waited
        started = time.perf_counter()
        if snapshot_supported(accelerator):
            # Fast path: copy into reused in-memory buffers now, write in Accelerate's layout later.
            rng_folder = Path(tempfile.mkdtemp(prefix=f"rng-{checkpoint_name(step)}-"))
            snapshot = self.buffers.capture(accelerator, rng_folder)
            self.background.start(f"voicetrain-save-{step}", self.commit_memory_snapshot, snapshot, step,
                                  manifest_fields, extra_files, started, accelerator.process_index)
            return waited
        snapshot_root = ram_snapshot_root()
        if snapshot_root is None:
            raise CheckpointError("ckpt.async_save=true needs a RAM-backed /dev/shm; set ckpt.async_save=false")
        snapshot = Path(tempfile.mkdtemp(prefix=f"{checkpoint_name(step)}-", dir=self.ensure(snapshot_root)))
        try:
            accelerator.save_state(str(snapshot))
        except Exception as error:  # a full RAM disk surfaces as OSError, RuntimeError or SafetensorError
            shutil.rmtree(snapshot, ignore_errors=True)
            raise CheckpointError(f"async snapshot into {snapshot} failed ({error}); the RAM disk may be full: "
                                  "set ckpt.async_save=false") from error
        self.background.start(f"voicetrain-save-{step}", self.commit_snapshot, snapshot, step, manifest_fields,
                              extra_files, started)
        return waited

    def commit_memory_snapshot(self, snapshot: Snapshot, step: int, manifest_fields: dict[str, Any],
                               extra_files: dict[str, str], started: float, process_index: int) -> None:
        try:
            self.stage_and_commit(step, lambda staging: write_snapshot(snapshot, staging, process_index),
                                  manifest_fields, extra_files, started)
        finally:
            shutil.rmtree(snapshot.rng_folder, ignore_errors=True)

    def commit_snapshot(self, snapshot: Path, step: int, manifest_fields: dict[str, Any],
                        extra_files: dict[str, str], started: float) -> None:
        try:
            self.stage_and_commit(step, lambda staging: copy_files(snapshot, staging), manifest_fields,
                                  extra_files, started)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    def stage_and_commit(self, step: int, fill: Callable[[Path], None], manifest_fields: dict[str, Any],
                         extra_files: dict[str, str], started: float) -> Checkpoint:
        """Fills a fresh staging folder and commits it; a failure is explained (a full disk named
        as such, with the fix) before the staging folder is removed."""
        staging = self.staging_path(step)
        try:
            self.prepare_folder(staging)
            fill(staging)
            return self.commit(staging, step, manifest_fields, extra_files, started)
        except Exception as error:
            failure = error if isinstance(error, CheckpointError) else save_failure(error, self.root)
            shutil.rmtree(staging, ignore_errors=True)
            raise failure from error

    def commit(self, staging: Path, step: int, manifest_fields: dict[str, Any], extra_files: dict[str, str],
               started: float) -> Checkpoint:
        try:
            for name, text in extra_files.items():
                (staging / name).write_text(text)
            fsync_tree(staging)
            files = {str(path.relative_to(staging)): path.stat().st_size
                     for path in sorted(staging.rglob("*")) if path.is_file()}
            manifest = {
                "step": step,
                "files": files,
                "voicetrain_version": voicetrain.__version__,
                "created_unix": time.time(),
                "save_seconds": round(time.perf_counter() - started, 3),
                **manifest_fields,
            }
            checkpoint = self.publish(staging, step, manifest)
        except OSError as error:
            failure = save_failure(error, self.root)
            shutil.rmtree(staging, ignore_errors=True)
            raise failure from error
        return self.record(checkpoint)

    def import_checkpoint(self, source: Checkpoint) -> Checkpoint:
        """Copies a committed checkpoint from another store (e.g. scratch) into this one with the
        same protocol: staged on this filesystem, fsynced, manifest last, renamed, parent fsynced.
        Staging beside the destination, never in $TMPDIR, keeps the rename atomic."""
        staging = self.staging_path(source.step)
        try:
            self.prepare_folder(staging)
            copy_files(source.path, staging, skip=MANIFEST)
            fsync_tree(staging)
            checkpoint = self.publish(staging, source.step, source.manifest)
        except Exception as error:
            failure = save_failure(error, self.root)
            shutil.rmtree(staging, ignore_errors=True)
            raise failure from error
        return self.record(checkpoint)

    def publish(self, staging: Path, step: int, manifest: dict[str, Any]) -> Checkpoint:
        """The last part of the commit protocol, for a staging folder whose files are fsynced:
        manifest last, rename into place, fsync the parent."""
        final = self.root / checkpoint_name(step)
        write_json_durably(staging / MANIFEST, manifest)
        fsync_path(staging)
        if final.exists():
            # The same step saved again (a re-run after a crash right after this save): replace
            # it only now that the new copy is complete.
            self.delete(Checkpoint(final, step, {}))
        os.replace(staging, final)
        fsync_path(self.root)
        return Checkpoint(final, step, manifest)

    def record(self, checkpoint: Checkpoint) -> Checkpoint:
        """After a commit: remember it, count its bytes, and run on_commit (e.g. retention)."""
        self.last_committed = checkpoint
        self.bytes_committed += sum(checkpoint.manifest.get("files", {}).values())
        if self.on_commit is not None:
            self.on_commit(checkpoint)
        return checkpoint

    def staging_path(self, step: int) -> Path:
        # The same name on every rank, so per-rank files land in one folder.
        return self.root / f"{STAGING_PREFIX}{checkpoint_name(step)}"

    def prepare_folder(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)

    @staticmethod
    def ensure(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    # ----- background work -----
    def busy(self) -> bool:
        return self.background.busy()

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed; raises if it failed."""
        self.background.wait()

    def raise_if_failed(self) -> None:
        self.background.raise_if_failed()

    def load(self, accelerator: Accelerator, checkpoint: Checkpoint) -> None:
        accelerator.load_state(str(checkpoint.path))
