"""The checkpoint store: a folder of committed checkpoints and the protocol that commits them.

    checkpoints/step_00001200/    a committed checkpoint: the files of voicetrain.checkpoint.
                                  training_state, config.yaml, task_context.json and manifest.json
                                  (written last: every file with its size and SHA-256)
    checkpoints/.tmp-*            staging; never listed, removed at start-up
    checkpoints/step_*.damaged-*  a damaged checkpoint set aside (never listed, never deleted)

A `step_*` that is a symbolic link is damage too: it is never listed, followed, loaded or deleted
through (a planted link could lead retention into any folder).

A checkpoint is committed with voicetrain.durable's protocol, so it is listed only when complete,
and "newest" is the step recorded in its manifest, not a file time. A `step_*` folder whose
manifest is missing or unreadable is not "no checkpoint": it is reported by `damaged()`, and
resume refuses to treat the run as fresh while it exists. Deleting renames to a staging name
first, so an interrupted delete leaves a folder that start-up cleans, never a half-checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import voicetrain
from voicetrain.checkpoint.background import BackgroundJob, BackgroundWork
from voicetrain.checkpoint.retention import CheckpointRecord, RetentionPolicy, plan
from voicetrain.durable import (FILE_MODE, MANIFEST, STAGING_PREFIX, commit_folder, confined_path, file_table,
                                read_manifest, remove_staging, staged, staging_path, verify_folder)

log = logging.getLogger("voicetrain")

STEP_DIGITS = 8
STEP_FOLDER = re.compile(rf"step_(\d{{{STEP_DIGITS},}})")
# Beside the state files of every checkpoint, written by the loop: the validated settings and the
# TaskContext (speakers, feature statistics), so re-exporting needs neither the dataset nor a pass over it.
CONFIG_FILE = "config.yaml"
TASK_CONTEXT_FILE = "task_context.json"
LAYOUT_VERSION = 2  # 1: Accelerate's save_state files (pickles); 2: voicetrain.checkpoint.training_state
LOW_SPACE_BYTES = 1 << 20  # a failed save with less free space than this is reported as a full disk
COPY_BLOCK_BYTES = 1 << 22


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

    @property
    def bytes(self) -> int:
        return sum(entry["bytes"] if isinstance(entry, dict) else entry
                   for entry in self.manifest.get("files", {}).values())


@dataclass(frozen=True)
class DamagedFolder:
    """A `step_*` folder that is not a committed checkpoint (no or an unreadable manifest)."""

    path: Path
    step: int  # from the folder's name
    reason: str


def checkpoint_name(step: int) -> str:
    # Zero-padded so a plain sort of the names is a numeric sort.
    return f"step_{step:0{STEP_DIGITS}d}"


def step_of_folder(path: Path) -> int | None:
    match = STEP_FOLDER.fullmatch(path.name)
    return int(match.group(1)) if match else None


def verify(checkpoint: Checkpoint, check_contents: bool = True) -> list[str]:
    """Problems of a committed checkpoint: a listed file missing, of another size or (with
    `check_contents`) another SHA-256 than the manifest says; a file the manifest does not list."""
    return verify_folder(checkpoint.path, checkpoint.manifest, check_contents)


def legacy_weight_files(directory: Path) -> list[Path]:
    """Weight files of a checkpoint written by voicetrain before layout 2 (Accelerate's save_state):
    `model.safetensors`, `model_1.safetensors`, ... in the order the modules were prepared."""
    numbered = sorted(directory.glob("model_*.safetensors"), key=lambda path: int(path.stem.split("_")[1]))
    first = directory / "model.safetensors"
    return ([first] if first.is_file() else []) + numbered


def is_legacy(checkpoint: Checkpoint) -> bool:
    return checkpoint.manifest.get("layout", 1) < LAYOUT_VERSION


def out_of_space(error: BaseException, directory: Path) -> bool:
    """Whether a failed write ran out of disk. torch and safetensors report a full disk without an
    errno (a RuntimeError, a SafetensorError), so the message and the free space left decide too.
    Call it before removing what the failed write left, or the free space would look fine."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error).lower()
    if "no space left" in text or "os error 28" in text:
        return True
    return free_bytes(directory) < LOW_SPACE_BYTES


def free_bytes(directory: Path) -> int:
    for candidate in (directory, *directory.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return 0


def explain_save_failure(error: BaseException, directory: Path, needed_bytes: int, keep_last: int | None) -> CheckpointError:
    """A CheckpointError that says what happened and what to do; call it before removing staging."""
    if not out_of_space(error, directory):
        return CheckpointError(f"saving a checkpoint into {directory} failed: {type(error).__name__}: {error}")
    held = "every checkpoint" if keep_last is None else f"ckpt.keep_last={keep_last} checkpoint(s)"
    return CheckpointError(
        f"no space left on the device holding {directory} while saving a checkpoint of about "
        f"{needed_bytes / 1e6:.0f} MB ({free_bytes(directory) / 1e6:.0f} MB free once the partial save was removed); "
        f"earlier checkpoints are intact. The run keeps {held} plus the one being written. Free space on that "
        f"device, or keep fewer with +ckpt=save_last_only (it still needs room for two checkpoints while the "
        f"newest is written: about {2 * needed_bytes / 1e6:.0f} MB), then run the same command again to continue",
        out_of_space=True)


def copy_verified(source: Path, destination: Path, expected: dict[str, Any]) -> None:
    """Copies the files a manifest lists, hashing while copying, and fails on any mismatch: a copy
    from scratch (RAM) to disk must not launder damage into a checkpoint with a fresh manifest."""
    for name, entry in expected.items():
        if confined_path(source, name) is None:
            raise CheckpointError(f"{source / MANIFEST} lists {name!r}, which is not a file inside {source}: not "
                                  "copied (damage)")
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(source / name, "rb") as reader, open(target, "wb") as writer:
            for block in iter(lambda: reader.read(COPY_BLOCK_BYTES), b""):
                digest.update(block)
                writer.write(block)
        os.chmod(target, FILE_MODE)
        wanted = entry.get("sha256") if isinstance(entry, dict) else None
        if wanted is not None and digest.hexdigest() != wanted:
            raise CheckpointError(f"{source / name} does not match the SHA-256 in its manifest: not copied")


class CheckpointStore(BackgroundWork):
    def __init__(self, root: Path, on_commit: Callable[[Checkpoint], None] | None = None,
                 keep_last: int | None = None):
        self.root = root
        self.on_commit = on_commit  # e.g. retention; runs on the main process after each commit
        self.keep_last = keep_last  # only for the advice of a disk-full error
        self.background = BackgroundJob(lambda failure: CheckpointError(
            f"background checkpoint save failed: {failure}", getattr(failure, "out_of_space", False)))
        self.last_committed: Checkpoint | None = None
        self.bytes_committed = 0  # bytes of every checkpoint committed into this store by this process

    # ----- reading -----
    def remove_staging(self) -> list[Path]:
        """Deletes leftovers of interrupted saves; call once at start-up on the main process."""
        return remove_staging(self.root)

    def folders(self) -> list[Path]:
        """Every `step_*` entry: folders, and links (which are damage, see `damaged`)."""
        if not self.root.is_dir():
            return []
        return sorted(path for path in self.root.iterdir()
                      if step_of_folder(path) is not None and (path.is_symlink() or path.is_dir()))

    def list(self) -> list[Checkpoint]:
        """Committed checkpoints, oldest first, ordered by the step in their manifest."""
        found = [self.read(path) for path in self.folders() if not path.is_symlink()]
        return sorted((checkpoint for checkpoint in found if checkpoint is not None), key=lambda item: item.step)

    def damaged(self) -> list[DamagedFolder]:
        """`step_*` folders without a readable manifest that names a step, oldest first."""
        found = []
        for path in self.folders():
            if path.is_symlink():
                found.append(DamagedFolder(path, step_of_folder(path) or 0,
                                           f"{path} is a symbolic link (to {os.readlink(path)}), not a checkpoint "
                                           "folder: never followed; remove the link"))
            elif self.read(path) is None:
                reason = (f"{path / MANIFEST} is missing" if not (path / MANIFEST).exists()
                          else f"{path / MANIFEST} is unreadable or names no step")
                found.append(DamagedFolder(path, step_of_folder(path) or 0, reason))
        return found

    @staticmethod
    def read(path: Path) -> Checkpoint | None:
        manifest = read_manifest(path)
        step = None if manifest is None else manifest.get("step")
        if not isinstance(step, int) or isinstance(step, bool):  # JSON true would pass as step 1
            return None
        return Checkpoint(path, step, manifest)

    def newest(self) -> Checkpoint | None:
        checkpoints = self.list()
        return checkpoints[-1] if checkpoints else None

    # ----- removing -----
    def delete(self, checkpoint: Checkpoint) -> None:
        # Rename to a staging name first: a crash mid-delete leaves a folder that is never
        # listed and is cleaned at start-up, not a half-deleted "committed" checkpoint.
        if checkpoint.path.is_symlink():
            raise CheckpointError(f"{checkpoint.path} is a symbolic link: a checkpoint is never deleted through one")
        doomed = self.root / f"{STAGING_PREFIX}deleting-{checkpoint.path.name}"
        os.replace(checkpoint.path, doomed)
        shutil.rmtree(doomed)

    def set_aside(self, path: Path) -> Path:
        """Renames a damaged folder out of the way (kept for the user, never listed or deleted)."""
        target = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        os.replace(path, target)
        log.warning("set aside the damaged %s as %s (a new checkpoint of that step replaces it)", path.name,
                    target.name)
        return target

    def prune(self, policy: RetentionPolicy, protected: set[int], announce: bool = True) -> None:
        """Deletes what retention's pure plan says, after a commit. Only committed checkpoints are
        candidates: a damaged folder is never deleted."""
        existing = self.list()
        doomed = set(plan([CheckpointRecord(item.step, item.metrics) for item in existing], policy, protected))
        for checkpoint in existing:
            if checkpoint.step in doomed:
                self.delete(checkpoint)
                # Scratch turns over every few saves by design; only persistent deletions are news.
                log.log(logging.INFO if announce else logging.DEBUG, "retention: deleted %s", checkpoint.path)

    # ----- committing -----
    def staging_path(self, step: int) -> Path:
        # The same name on every rank, so per-rank files land in one folder.
        return staging_path(self.root / checkpoint_name(step))

    def prepare(self, step: int) -> Path:
        """A fresh, empty staging folder for `step` (main process, before any rank writes)."""
        folder = self.staging_path(step)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def commit(self, step: int, fill: Callable[[Path], None], manifest_fields: dict[str, Any],
               needed_bytes: int = 0) -> Checkpoint:
        """Runs `fill(staging)` for the main process's files (other ranks' files are already in
        the staging folder), then commits: every file with its size and SHA-256 in the manifest,
        written last. A failure is explained (a full disk with the numbers and the fix) before the
        staging folder is removed."""
        started = time.perf_counter()
        final = self.root / checkpoint_name(step)
        explain = lambda error: error if isinstance(error, CheckpointError) else explain_save_failure(  # noqa: E731
            error, self.root, needed_bytes, self.keep_last)
        with staged(final, explain, fresh=False) as staging:
            fill(staging)
            manifest = {
                "step": step,
                "layout": LAYOUT_VERSION,
                "files": file_table(staging),
                "voicetrain_version": voicetrain.__version__,
                "created_unix": time.time(),
                **manifest_fields,
            }
            manifest["save_seconds"] = round(time.perf_counter() - started, 3)
            if final.exists():
                # The same step saved again (a re-run after a fallback or a crash right after this
                # save): an intact copy is replaced, a damaged one set aside, never deleted.
                existing = self.read(final)
                if existing is None or verify(existing):
                    self.set_aside(final)
            commit_folder(staging, final, manifest)
        return self.record(Checkpoint(final, step, manifest))

    def commit_in_background(self, step: int, fill: Callable[[Path], None], manifest_fields: dict[str, Any],
                             needed_bytes: int = 0) -> None:
        """`commit` on a background thread (one in flight); its failure surfaces at the next
        `raise_if_failed` or `wait` on the training thread."""
        self.background.start(f"voicetrain-save-{step}", self.commit, step, fill, manifest_fields, needed_bytes)

    def import_checkpoint(self, source: Checkpoint) -> Checkpoint:
        """Copies a committed checkpoint from another store (e.g. scratch) into this one with the
        same protocol, verifying every byte against the source's manifest while copying. Staging
        beside the destination, never in $TMPDIR, keeps the rename atomic."""
        fields = {key: value for key, value in source.manifest.items() if key not in ("step", "files", "layout")}
        self.prepare(source.step)
        return self.commit(source.step, lambda staging: copy_verified(source.path, staging, source.manifest["files"]),
                           fields, needed_bytes=source.bytes)

    def record(self, checkpoint: Checkpoint) -> Checkpoint:
        """After a commit: remember it, count its bytes, and run on_commit (e.g. retention)."""
        self.last_committed = checkpoint
        self.bytes_committed += checkpoint.bytes
        if self.on_commit is not None:
            self.on_commit(checkpoint)
        return checkpoint
