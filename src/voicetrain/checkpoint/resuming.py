"""Resuming a run: clean up interrupted saves, decide on the main process (every rank follows),
refuse a changed model or data before loading, fine-tune or load the full state with fallback.

The decisions are voicetrain.checkpoint.resume's pure functions; this module is their one caller
with effects. It returns the checkpoint the run continues from (None for a fresh start).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from voicetrain.checkpoint.finetune import apply_weights, read_weights
from voicetrain.checkpoint.resume import (ResumeError, ResumePlan, config_drift, describe_damaged, load_first_good,
                                          plan_resume)
from voicetrain.checkpoint.store import CONFIG_FILE, Checkpoint, CheckpointStore, is_legacy, verify
from voicetrain.checkpoint.training_state import TrainingObjects, restore
from voicetrain.config import ResumeSettings
from voicetrain.distributed import any_rank, from_main

log = logging.getLogger("voicetrain")

PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth")
CONVERT_COMMAND = "python -m voicetrain.upgrade"  # voicetrain/upgrade.py (an entry point: checkpoint/ cannot import it)


def committed(stores: list[CheckpointStore]) -> list[Checkpoint]:
    """Committed checkpoints of the given stores, oldest first; for the same step a later store's
    copy comes last so it is tried first (scratch: the faster read), the earlier as fallback."""
    found = [(checkpoint.step, order, checkpoint) for order, store in enumerate(stores) for checkpoint in store.list()]
    return [checkpoint for _, _, checkpoint in sorted(found, key=lambda item: item[:2])]


def problems_of(checkpoint: Checkpoint) -> list[str]:
    """Why a committed checkpoint must not be loaded: files that differ from the manifest, files it
    does not list, or a pickle (voicetrain's layout has none, so one can only have been planted)."""
    pickles = [path.name for path in checkpoint.path.rglob("*") if path.suffix in PICKLE_SUFFIXES]
    found = [f"it holds {', '.join(sorted(pickles))}: a pickle where the layout has none"] if pickles else []
    return found + verify(checkpoint)


def refuse_legacy(candidates: tuple[Checkpoint, ...], run_dir: Path) -> None:
    legacy = [checkpoint for checkpoint in candidates if is_legacy(checkpoint)]
    if legacy:
        raise ResumeError(
            f"{legacy[-1].path} was written by an older voicetrain in Accelerate's layout, whose .pkl/.bin files are "
            "pickles that voicetrain no longer loads (a pickle can run code). If you trust these checkpoints, convert "
            f"them once: `{CONVERT_COMMAND} {run_dir} --trust` (it writes the new layout beside each and keeps the "
            "originals), then run this command again"
        )


class Resumer:
    def __init__(self, settings: ResumeSettings, run_dir: Path, stores: list[CheckpointStore],
                 current_config: dict[str, Any], speakers: list[str], overrides: list[str] | None = None):
        self.settings = settings
        self.run_dir = run_dir
        self.stores = stores  # the run directory's store first, then scratch's
        self.current_config = current_config
        self.speakers = speakers
        self.overrides = overrides  # this launch's command line, as checkpoints record it

    def resume(self, objects: TrainingObjects, tensorboard: Path) -> Checkpoint | None:
        """Restores the state the run starts from; returns the checkpoint it came from."""
        accelerator = objects.accelerator
        if accelerator.is_main_process:
            for store in self.stores:
                for path in store.remove_staging():
                    log.info("removed an interrupted save: %s", path)
        accelerator.wait_for_everyone()
        decision = from_main(accelerator, self.decide())
        if isinstance(decision, ResumeError):
            raise decision
        log.info("%s", decision.message)
        if decision.kind == "fresh":
            if accelerator.is_main_process:
                self.overwrite(tensorboard)
            accelerator.wait_for_everyone()
            return None
        if decision.kind == "weights":
            self.finetune(objects, Path(str(decision.weights_path)))
            return None
        refuse_legacy(decision.candidates, self.run_dir)
        # Before loading: a changed model would otherwise fail to load and look like damage.
        self.check_drift(decision.candidates[0])
        rank = accelerator.process_index

        def load(checkpoint: Checkpoint) -> None:
            if not restore(objects, checkpoint.path, rank):
                log.warning("%s has no RNG state for process %d (it was saved by %s process(es)); this process's "
                            "random streams start from trainer.seed", checkpoint.path.name, rank,
                            checkpoint.manifest.get("world_size", "?"))

        return load_first_good(list(decision.candidates), load,
                               problems_of=lambda candidate: from_main(accelerator, problems_of(candidate)),
                               skipped=decision.skipped,
                               agree=lambda ok: not any_rank(accelerator, [not ok])[0])

    def decide(self) -> ResumePlan | ResumeError:
        path = self.settings.path
        try:
            return plan_resume(self.settings.mode, committed(self.stores),
                               [folder for store in self.stores for folder in store.damaged()], self.run_dir, path,
                               CheckpointStore.read(Path(path)) if path else None, self.settings.overwrite,
                               self.overrides)
        except ResumeError as error:
            return error

    def overwrite(self, tensorboard: Path) -> None:
        """resume.overwrite=true: this run's checkpoints (committed or not) and curves go."""
        doomed = committed(self.stores)
        damaged = [folder for store in self.stores for folder in store.damaged()]
        if not doomed and not damaged:
            return
        log.warning("resume.overwrite=true: deleting %d checkpoint folder(s) of %s", len(doomed) + len(damaged),
                    self.run_dir)
        if damaged:
            log.warning("  including folders that were not committed checkpoints:\n  %s", describe_damaged(damaged))
        for checkpoint in doomed:
            CheckpointStore(checkpoint.path.parent).delete(checkpoint)
        for folder in damaged:
            if folder.path.is_symlink():
                folder.path.unlink()  # the link only, never what it points to
            else:
                shutil.rmtree(folder.path)
        # The old curves would overlap the new run's from step 0.
        shutil.rmtree(tensorboard, ignore_errors=True)

    def check_drift(self, checkpoint: Checkpoint) -> None:
        saved_path = checkpoint.path / CONFIG_FILE
        if not saved_path.is_file():
            return
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
        differences = config_drift(saved, self.current_config)
        if not differences:
            return
        listing = "\n  ".join(differences)
        if self.settings.allow_config_change:
            log.warning("resuming with changed model/data settings (resume.allow_config_change=true):\n  %s", listing)
            return
        raise ResumeError(
            f"the model, data or feature settings differ from those of {checkpoint.path}:\n  {listing}\n"
            "Restore them, start a new run with run.name=..., fine-tune from it with +resume=finetune "
            f"resume.path={checkpoint.path}, or accept the change with resume.allow_config_change=true"
        )

    def finetune(self, objects: TrainingObjects, path: Path) -> None:
        modules = {name: objects.accelerator.unwrap_model(module) for name, module in objects.modules.items()}
        report = apply_weights(modules, read_weights(path, list(modules)), self.speakers)
        for line in report.lines():
            log.info("fine-tune: %s", line)
