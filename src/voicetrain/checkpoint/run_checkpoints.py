"""A run's checkpoints as the loop sees them: where a save goes (the run directory, or scratch
with mirroring), retention after each commit, resume with fallback, and the final flush.

The trainer calls `save`, `resume`, `raise_if_failed` and `finish`; the on-disk layout stays in
`checkpoint`, the policies in `retention`, `resume` and `scratch`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import OmegaConf
from torch import nn
from torch.optim import Optimizer

from voicetrain.checkpoint.store import Checkpoint, CheckpointError, CheckpointStore, ram_snapshot_root, verify
from voicetrain.config import Settings, settings_to_dict
from voicetrain.paths import RunPaths
from voicetrain.distributed import any_rank, from_main
from voicetrain.checkpoint.resume import ResumeError, ResumePlan, config_drift, load_first_good, plan_resume
from voicetrain.checkpoint.retention import CheckpointRecord, RetentionPolicy, plan
from voicetrain.checkpoint.scratch import (
    RAM_DISK_HELP,
    Mirror,
    ScratchError,
    available_memory_bytes,
    capacity_problem,
    estimate_checkpoint_bytes,
    mirror_due,
    scratch_path_problem,
)
from voicetrain.checkpoint.snapshot import snapshot_supported

log = logging.getLogger("voicetrain")


def spans_several_nodes(accelerator: Accelerator) -> bool:
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return accelerator.num_processes > local


def scratch_folder(settings: Settings) -> Path | None:
    return Path(settings.scratch.dir) if settings.scratch.dir else None


class RunCheckpoints:
    def __init__(self, settings: Settings, paths: RunPaths, accelerator: Accelerator):
        self.settings = settings
        self.paths = paths
        self.accelerator = accelerator
        self.persistent = CheckpointStore(paths.checkpoints, on_commit=self.after_persistent_commit)
        self.scratch: CheckpointStore | None = None
        self.mirror: Mirror | None = None
        self.resumed_step: int | None = None
        self.saves = 0
        self.pending_final = False
        self.blocked_seconds = 0.0
        self.last_save_time = time.monotonic()
        self.async_save = self.decide_async_save()

    # ----- set-up -----
    def decide_async_save(self) -> bool:
        if not self.settings.ckpt.async_save:
            return False
        reasons = []
        if self.accelerator.num_processes > 1:
            reasons.append("it runs with one process only for now")
        elif not snapshot_supported(self.accelerator) and ram_snapshot_root() is None:
            # Only the fallback snapshot (e.g. with a gradient scaler) is written to a RAM disk.
            reasons.append("no RAM-backed /dev/shm exists for the snapshot")
        if reasons:
            log.warning("ckpt.async_save=true cannot be honoured (%s): saving synchronously", "; ".join(reasons))
            return False
        return True

    def check_scratch_path(self) -> None:
        """Before anything is computed: a missing or unwritable scratch path is a clear error."""
        folder = scratch_folder(self.settings)
        if folder is None:
            return
        problem = scratch_path_problem(folder)
        if problem is not None:
            raise ScratchError(f"{problem}.\n{RAM_DISK_HELP}")

    def enable_scratch(self, modules: dict[str, nn.Module], optimizers: dict[str, Optimizer]) -> None:
        """Turns scratch on after the capacity guard, before the first step."""
        folder = scratch_folder(self.settings)
        if folder is None or "checkpoints" not in self.settings.scratch.include:
            return
        if spans_several_nodes(self.accelerator):
            log.warning("scratch is off: this run spans several nodes and not every rank can see %s", folder)
            return
        estimate = estimate_checkpoint_bytes(modules, optimizers)
        problem = capacity_problem(estimate, self.settings.scratch.keep_last, shutil.disk_usage(folder).free,
                                   available_memory_bytes())
        if problem is not None:
            if self.settings.scratch.on_insufficient == "fallback":
                log.warning("scratch is off (scratch.on_insufficient=fallback): %s", problem)
                return
            raise ScratchError(problem)
        self.scratch = CheckpointStore(folder / "checkpoints", on_commit=self.after_scratch_commit)
        logs = (folder / "tb", self.paths.tensorboard) if "tensorboard" in self.settings.scratch.include else None
        self.mirror = Mirror(self.persistent, logs)
        if self.async_save:
            log.info("ckpt.async_save: saves go to the RAM disk and are mirrored in the background already")
            self.async_save = False
        log.info("scratch: checkpoints are committed to %s and mirrored to %s every %d saves",
                 self.scratch.root, self.persistent.root, self.settings.scratch.persist_every)

    @property
    def primary(self) -> CheckpointStore:
        return self.scratch or self.persistent

    # ----- resume -----
    def committed(self) -> list[Checkpoint]:
        """Committed checkpoints of this run, oldest first; for the same step the scratch copy
        comes last so it is tried first (it is the faster read), the persistent one as fallback."""
        found = [(checkpoint.step, 0, checkpoint) for checkpoint in self.persistent.list()]
        if self.scratch is not None:
            found += [(checkpoint.step, 1, checkpoint) for checkpoint in self.scratch.list()]
        return [checkpoint for _, _, checkpoint in sorted(found, key=lambda item: item[:2])]

    def resume(self, modules: dict[str, nn.Module]) -> Checkpoint | None:
        """Restores the state the run starts from; returns the checkpoint it came from."""
        if self.accelerator.is_main_process:
            for store in filter(None, (self.persistent, self.scratch)):
                for path in store.remove_staging():
                    log.info("removed an interrupted save: %s", path)
        self.accelerator.wait_for_everyone()
        # The main process reads the disk and decides; every rank follows the same decision.
        decision = from_main(self.accelerator, self.decide_resume())
        if isinstance(decision, ResumeError):
            raise decision
        own = list(decision.candidates) if decision.kind == "full" else self.committed()
        log.info("%s", decision.message)
        if decision.kind == "fresh":
            if own and self.accelerator.is_main_process:
                log.warning("resume.overwrite=true: deleting %d checkpoint(s) of %s", len(own), self.paths.run_dir)
                for checkpoint in own:
                    CheckpointStore(checkpoint.path.parent).delete(checkpoint)
                # The old curves would overlap the new run's from step 0.
                shutil.rmtree(self.paths.tensorboard, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            return None
        if decision.kind == "weights":
            self.finetune(modules, Path(str(decision.weights_path)))
            return None
        # Before loading: a changed model would otherwise fail to load and look like damage.
        self.check_drift(decision.candidates[0])
        checkpoint = load_first_good(self.persistent, self.accelerator, list(decision.candidates),
                                     agree=lambda ok: not any_rank(self.accelerator, [not ok])[0],
                                     problems_of=lambda candidate: from_main(self.accelerator, verify(candidate)))
        self.resumed_step = checkpoint.step
        return checkpoint

    def decide_resume(self) -> ResumePlan | ResumeError:
        settings = self.settings
        path = settings.resume.path
        try:
            return plan_resume(settings.resume.mode, self.committed(), self.paths.run_dir, path,
                               CheckpointStore.read(Path(path)) if path else None, settings.resume.overwrite)
        except ResumeError as error:
            return error

    def check_drift(self, checkpoint: Checkpoint) -> None:
        saved_path = checkpoint.path / "config.yaml"
        if not saved_path.is_file():
            return
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
        differences = config_drift(saved, settings_to_dict(self.settings))
        if not differences:
            return
        listing = "\n  ".join(differences)
        if self.settings.resume.allow_config_change:
            log.warning("resuming with changed model/data settings (resume.allow_config_change=true):\n  %s", listing)
            return
        raise ResumeError(
            f"the model, data or feature settings differ from those of {checkpoint.path}:\n  {listing}\n"
            "Restore them, start a new run with run.name=..., fine-tune from it with +resume=finetune "
            f"resume.path={checkpoint.path}, or accept the change with resume.allow_config_change=true"
        )

    @staticmethod
    def finetune(modules: dict[str, nn.Module], path: Path) -> None:
        from voicetrain.checkpoint.finetune import apply_weights, read_weights

        report = apply_weights(modules, read_weights(path, list(modules)))
        for line in report.lines():
            log.info("fine-tune: %s", line)

    # ----- saving -----
    def save(self, step: int, manifest_fields: dict[str, Any], extra_files: dict[str, str],
             final: bool = False, force_sync: bool = False) -> None:
        started = time.perf_counter()
        self.saves += 1
        self.pending_final = final
        store = self.primary
        try:
            if self.async_save and not force_sync:
                store.save_async(self.accelerator, step, manifest_fields, extra_files)
            else:
                store.save(self.accelerator, step, manifest_fields, extra_files)
        except CheckpointError as error:
            if store is not self.scratch or not error.out_of_space:
                raise
            # The RAM disk filled up: this save goes straight to the run directory, losing nothing.
            log.warning("scratch is full (%s); saving step %d to %s instead", error, step, self.persistent.root)
            self.persistent.save(self.accelerator, step, manifest_fields, extra_files)
        self.blocked_seconds += time.perf_counter() - started
        self.last_save_time = time.monotonic()

    def save_due_by_time(self) -> bool:
        minutes = self.settings.ckpt.every_n_minutes
        return minutes is not None and time.monotonic() - self.last_save_time >= 60 * minutes

    def after_scratch_commit(self, committed: Checkpoint) -> None:
        assert self.mirror is not None and self.scratch is not None
        if mirror_due(self.saves, committed.step, self.settings.scratch.persist_every, self.settings.ckpt.keep_every,
                      self.pending_final):
            self.mirror.submit(committed)
        policy = RetentionPolicy(keep_last=self.settings.scratch.keep_last, keep_every=None, keep_best=0)
        # Never prune the checkpoint the mirror is still copying.
        protected = {committed.step} | ({self.mirror.in_flight} if self.mirror.in_flight is not None else set())
        self.prune(self.scratch, policy, protected, announce=False)

    def after_persistent_commit(self, committed: Checkpoint) -> None:
        ckpt = self.settings.ckpt
        policy = RetentionPolicy(ckpt.keep_last, ckpt.keep_every, ckpt.keep_best, ckpt.monitor, ckpt.mode)
        protected = {committed.step}
        if ckpt.protect_resumed and self.resumed_step is not None:
            protected.add(self.resumed_step)
        self.prune(self.persistent, policy, protected)

    @property
    def last_saved(self) -> Checkpoint | None:
        saved = [store.last_committed for store in (self.persistent, self.scratch)
                 if store is not None and store.last_committed is not None]
        return max(saved, key=lambda checkpoint: checkpoint.step) if saved else None

    def bytes_without_scratch(self) -> int:
        """What the run directory would have received without scratch: every checkpoint saved."""
        mirrored = self.mirror.checkpoint_bytes if self.mirror is not None else 0
        scratch_bytes = self.scratch.bytes_committed if self.scratch is not None else 0
        return scratch_bytes + self.persistent.bytes_committed - mirrored

    def bytes_to_persistent(self) -> int:
        logs = self.mirror.log_bytes if self.mirror is not None else 0
        return self.persistent.bytes_committed + logs

    @staticmethod
    def prune(store: CheckpointStore, policy: RetentionPolicy, protected: set[int], announce: bool = True) -> None:
        existing = store.list()
        doomed = set(plan([CheckpointRecord(item.step, item.metrics) for item in existing], policy, protected))
        for checkpoint in existing:
            if checkpoint.step in doomed:
                store.delete(checkpoint)
                # Scratch turns over every few saves by design; only persistent deletions are news.
                log.log(logging.INFO if announce else logging.DEBUG, "retention: deleted %s", checkpoint.path)

    # ----- background work and the way out -----
    def raise_if_failed(self) -> None:
        self.persistent.raise_if_failed()
        if self.scratch is not None:
            self.scratch.raise_if_failed()
        if self.mirror is not None:
            self.mirror.raise_if_failed()

    def busy(self) -> bool:
        return self.primary.busy() or (self.mirror is not None and self.mirror.busy())

    def finish(self, success: bool) -> None:
        """Every way out: finish the save in flight and put the newest scratch checkpoint on
        persistent storage; after a successful end, remove what scratch holds for this run."""
        if self.busy():
            log.info("waiting for the checkpoint save in progress")
        if not self.accelerator.is_main_process:
            # Mirroring, flushing and removing scratch are the main process's (one writer).
            self.primary.wait()
            return
        try:
            self.primary.wait()
        finally:
            if self.scratch is not None and self.mirror is not None:
                self.flush_scratch()
        if success and self.scratch is not None and self.settings.scratch.remove_on_success:
            folder = scratch_folder(self.settings)
            for name in ("checkpoints", "tb", "features"):
                shutil.rmtree(folder / name, ignore_errors=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def flush_scratch(self) -> None:
        assert self.scratch is not None and self.mirror is not None
        self.mirror.wait()
        newest_scratch = self.scratch.newest()
        newest_persistent = self.persistent.newest()
        if newest_scratch is not None and (newest_persistent is None or newest_scratch.step > newest_persistent.step):
            log.info("flushing %s from scratch to %s", newest_scratch.path.name, self.persistent.root)
            self.mirror.submit(newest_scratch)
            self.mirror.wait()
        elif self.mirror.log_folders is not None:
            from voicetrain.checkpoint.scratch import mirror_folder

            self.mirror.log_bytes += mirror_folder(*self.mirror.log_folders)
