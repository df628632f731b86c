"""A run's RAM-disk scratch from start to end: the path and ownership checks before anything is
computed, the capacity guard before the first step, mirroring after each commit, the flush on
every way out, the clean-up after a successful end, and the bytes it kept off the disk.

Decisions are voicetrain.checkpoint.scratch's pure functions; this is the one stateful owner.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from torch import nn
from torch.optim import Optimizer

from voicetrain.checkpoint.retention import RetentionPolicy
from voicetrain.checkpoint.scratch import (OWNER_FILE, RAM_DISK_HELP, Mirror, ScratchError, available_memory_bytes,
                                           capacity_problem, claim_scratch, estimate_checkpoint_bytes, mirror_due,
                                           mirror_folder, scratch_path_problem)
from voicetrain.checkpoint.store import Checkpoint, CheckpointStore
from voicetrain.config import CheckpointSettings, ScratchSettings

log = logging.getLogger("voicetrain")
SCRATCH_FOLDERS = ("checkpoints", "tb", "features")


class ScratchSpace:
    def __init__(self, settings: ScratchSettings, ckpt: CheckpointSettings, run_dir: Path,
                 persistent: CheckpointStore, persistent_tensorboard: Path):
        self.settings = settings
        self.ckpt = ckpt
        self.run_dir = run_dir
        self.folder = Path(settings.dir) if settings.dir else None
        self.persistent = persistent
        self.persistent_tensorboard = persistent_tensorboard
        self.store: CheckpointStore | None = None
        self.mirror: Mirror | None = None
        self.saves = 0
        self.pending_final = False

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def check_path(self, is_main: bool) -> None:
        """Before anything is computed: a missing, unwritable, misplaced or foreign scratch path is
        a clear error. The main process then marks the folder as this run's."""
        if self.folder is None:
            return
        problem = scratch_path_problem(self.folder, self.run_dir)
        if problem is not None:
            raise ScratchError(f"{problem}.\n{RAM_DISK_HELP}")
        if is_main:
            claim_scratch(self.folder, self.run_dir)

    def enable(self, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer], several_nodes: bool) -> None:
        """Turns scratch on after the capacity guard, before the first step."""
        if self.folder is None or "checkpoints" not in self.settings.include:
            return
        if several_nodes:
            log.warning("scratch is off: this run spans several nodes and not every rank can see %s", self.folder)
            return
        estimate = estimate_checkpoint_bytes(modules, optimizers)
        problem = capacity_problem(estimate, self.settings.keep_last, shutil.disk_usage(self.folder).free,
                                   available_memory_bytes())
        if problem is not None:
            if self.settings.on_insufficient == "fallback":
                log.warning("scratch is off (scratch.on_insufficient=fallback): %s", problem)
                return
            raise ScratchError(problem)
        self.store = CheckpointStore(self.folder / "checkpoints", on_commit=self.after_commit)
        logs = (self.tensorboard, self.persistent_tensorboard) if self.mirrors_tensorboard else None
        self.mirror = Mirror(self.persistent, logs)
        log.info("scratch: checkpoints are committed to %s and mirrored to %s every %d saves", self.store.root,
                 self.persistent.root, self.settings.persist_every)

    @property
    def mirrors_tensorboard(self) -> bool:
        return self.folder is not None and "tensorboard" in self.settings.include

    @property
    def tensorboard(self) -> Path:
        assert self.folder is not None
        return self.folder / "tb"

    def feature_cache(self) -> Path | None:
        """Where the feature store lives when scratch.include has `features`."""
        return self.folder / "features" if self.folder is not None and "features" in self.settings.include else None

    def note_save(self, final: bool) -> None:
        self.saves += 1
        self.pending_final = final

    def after_commit(self, committed: Checkpoint) -> None:
        assert self.mirror is not None and self.store is not None
        if mirror_due(self.saves, committed.step, self.settings.persist_every, self.ckpt.keep_every,
                      self.pending_final):
            self.mirror.submit(committed)
        policy = RetentionPolicy(keep_last=self.settings.keep_last, keep_every=None, keep_best=0,
                                 monitor=self.ckpt.monitor, mode=self.ckpt.mode)
        # Never prune the checkpoint the mirror is still copying.
        protected = {committed.step} | ({self.mirror.in_flight} if self.mirror.in_flight is not None else set())
        self.store.prune(policy, protected, announce=False)

    def busy(self) -> bool:
        return (self.store is not None and self.store.busy()) or (self.mirror is not None and self.mirror.busy())

    def raise_if_failed(self) -> None:
        if self.store is not None:
            self.store.raise_if_failed()
        if self.mirror is not None:
            self.mirror.raise_if_failed()

    def finish(self, success: bool) -> None:
        """Main process, every way out: the newest scratch checkpoint reaches persistent storage;
        after a successful end, this run's scratch folders are removed."""
        if self.store is not None and self.mirror is not None:
            self.flush()
        if success and self.store is not None and self.settings.remove_on_success:
            assert self.folder is not None
            for name in SCRATCH_FOLDERS:
                shutil.rmtree(self.folder / name, ignore_errors=True)
            (self.folder / OWNER_FILE).unlink(missing_ok=True)
            if self.folder.is_dir() and not any(self.folder.iterdir()):
                os.rmdir(self.folder)

    def flush(self) -> None:
        assert self.store is not None and self.mirror is not None
        self.mirror.wait()
        newest_scratch = self.store.newest()
        newest_persistent = self.persistent.newest()
        if newest_scratch is not None and (newest_persistent is None or newest_scratch.step > newest_persistent.step):
            log.info("flushing %s from scratch to %s", newest_scratch.path.name, self.persistent.root)
            self.mirror.submit(newest_scratch)
            self.mirror.wait()
        elif self.mirror.log_folders is not None:
            self.mirror.log_bytes += mirror_folder(*self.mirror.log_folders)

    # ----- what scratch saved the disk (for the summary and the benchmark) -----
    def bytes_without_scratch(self) -> int:
        """What the run directory would have received without scratch: every checkpoint saved."""
        mirrored = self.mirror.checkpoint_bytes if self.mirror is not None else 0
        scratch_bytes = self.store.bytes_committed if self.store is not None else 0
        return scratch_bytes + self.persistent.bytes_committed - mirrored

    def bytes_to_persistent(self) -> int:
        logs = self.mirror.log_bytes if self.mirror is not None else 0
        return self.persistent.bytes_committed + logs
