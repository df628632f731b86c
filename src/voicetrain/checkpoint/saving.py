"""When and where a save goes: synchronously or in the background, to scratch or to the run
directory, and retention after every commit.

The loop calls `save` (and `due_by_time`, `raise_if_failed`, `finish`); the layout of a
checkpoint is voicetrain.checkpoint.training_state's, the commit protocol the store's, the RAM disk
voicetrain.checkpoint.scratch_space's.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from voicetrain.checkpoint.retention import RetentionPolicy
from voicetrain.checkpoint.scratch_space import ScratchSpace
from voicetrain.checkpoint.store import Checkpoint, CheckpointError, CheckpointStore
from voicetrain.checkpoint.training_state import (SnapshotBuffers, TrainingObjects, capture, write_rank_files,
                                                  write_shared_files)
from voicetrain.config import CheckpointSettings
from voicetrain.durable import atomic_write_text

log = logging.getLogger("voicetrain")


def retention_policy(ckpt: CheckpointSettings) -> RetentionPolicy:
    return RetentionPolicy(ckpt.keep_last, ckpt.keep_every, ckpt.keep_best, ckpt.monitor, ckpt.mode)


class Saver:
    """Saves the training state into the run's checkpoint store (or scratch first)."""

    def __init__(self, objects: TrainingObjects, persistent: CheckpointStore, ckpt: CheckpointSettings,
                 scratch: ScratchSpace | None = None):
        self.objects = objects
        self.persistent = persistent
        self.ckpt = ckpt
        self.scratch = scratch
        self.async_save = ckpt.async_save
        if self.async_save and scratch is not None and scratch.enabled:
            log.info("ckpt.async_save: saves go to the RAM disk and are mirrored in the background already")
            self.async_save = False
        self.buffers = SnapshotBuffers()  # reused by every asynchronous save of this run
        self.resumed_step: int | None = None
        self.blocked_seconds = 0.0
        self.last_save_time = time.monotonic()
        self.persistent.on_commit = self.after_persistent_commit

    @property
    def primary(self) -> CheckpointStore:
        return self.scratch.store if self.scratch is not None and self.scratch.enabled else self.persistent

    def save(self, step: int, manifest_fields: dict[str, Any], extra_files: dict[str, str], final: bool = False,
             force_sync: bool = False) -> None:
        """Every rank calls this at the same step. Each rank writes its own RNG file into the
        staging folder now; the main process writes the rest and commits, in the background when
        ckpt.async_save is on (from buffers copied now, so later steps cannot change it)."""
        started = time.perf_counter()
        if self.scratch is not None:
            self.scratch.note_save(final)
        store = self.primary
        try:
            self.save_into(store, step, manifest_fields, extra_files, background=self.async_save and not force_sync)
        except CheckpointError as error:
            if store is self.persistent or not error.out_of_space:
                raise
            # The RAM disk filled up: this save goes straight to the run directory, losing nothing.
            log.warning("scratch is full (%s); saving step %d to %s instead", error, step, self.persistent.root)
            self.save_into(self.persistent, step, manifest_fields, extra_files, background=False)
        self.blocked_seconds += time.perf_counter() - started
        self.last_save_time = time.monotonic()

    def save_into(self, store: CheckpointStore, step: int, manifest_fields: dict[str, Any],
                  extra_files: dict[str, str], background: bool) -> None:
        accelerator = self.objects.accelerator
        store.wait()  # one save in flight: the buffers and the staging folder are free again
        if accelerator.is_main_process:
            store.prepare(step)
        accelerator.wait_for_everyone()
        snapshot = capture(self.objects, self.buffers if background else None)
        staging = store.staging_path(step)
        write_rank_files(snapshot, staging, accelerator.process_index)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            previous = store.last_committed.bytes if store.last_committed is not None else 0

            def fill(folder: Any) -> None:
                write_shared_files(snapshot, folder)
                for name, text in extra_files.items():
                    atomic_write_text(folder / name, text)

            if background:
                store.commit_in_background(step, fill, manifest_fields, needed_bytes=previous)
            else:
                store.commit(step, fill, manifest_fields, needed_bytes=previous)
        accelerator.wait_for_everyone()

    def due_by_time(self) -> bool:
        minutes = self.ckpt.every_n_minutes
        return minutes is not None and time.monotonic() - self.last_save_time >= 60 * minutes

    def after_persistent_commit(self, committed: Checkpoint) -> None:
        protected = {committed.step}
        if self.ckpt.protect_resumed and self.resumed_step is not None:
            protected.add(self.resumed_step)
        self.persistent.prune(retention_policy(self.ckpt), protected)

    @property
    def last_saved(self) -> Checkpoint | None:
        stores = [self.persistent] + ([self.scratch.store] if self.scratch is not None and self.scratch.enabled else [])
        saved = [store.last_committed for store in stores if store.last_committed is not None]
        return max(saved, key=lambda checkpoint: checkpoint.step) if saved else None

    def raise_if_failed(self) -> None:
        self.persistent.raise_if_failed()
        if self.scratch is not None:
            self.scratch.raise_if_failed()

    def busy(self) -> bool:
        return self.primary.busy() or (self.scratch is not None and self.scratch.busy())

    def finish(self, success: bool) -> None:
        """Every way out: finish the save in flight and put the newest scratch checkpoint on
        persistent storage; after a successful end, remove what scratch holds for this run."""
        if self.busy():
            log.info("waiting for the checkpoint save in progress")
        try:
            self.primary.wait()
        finally:
            if self.scratch is not None and self.objects.accelerator.is_main_process:
                self.scratch.finish(success)
