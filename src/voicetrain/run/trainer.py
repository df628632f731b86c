"""The training loop: the only place that calls `accelerator.prepare`.

Reads top to bottom: build everything from validated settings, decide where to start, then
loop over optimizer steps, validating, saving and reporting at their intervals, and export at
the end. What a checkpoint holds, where it goes and how a run resumes live in checkpoint/; the
inference export in export/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from tqdm.contrib.logging import logging_redirect_tqdm

from voicetrain.checkpoint.loop_state import LoopState
from voicetrain.checkpoint.resuming import Resumer
from voicetrain.checkpoint.saving import Saver
from voicetrain.checkpoint.scratch_space import ScratchSpace
from voicetrain.checkpoint.store import CONFIG_FILE, TASK_CONTEXT_FILE, Checkpoint, CheckpointStore
from voicetrain.checkpoint.training_state import TrainingObjects
from voicetrain.config import Settings, settings_to_dict
from voicetrain.schema import import_target
from voicetrain.data.dataset import TrainingExamples
from voicetrain.data.prepare import PreparedData, prepare_data
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.distributed import any_rank, spans_several_nodes
from voicetrain.export.artifact import ExportError, ExportResult, export_problem, periodic_export_dir
from voicetrain.export.writer import write_export
from voicetrain.paths import RunPaths
from voicetrain.run.lock import RunLock
from voicetrain.run.optimizers import (Optimizers, apply_overrides, build_optimizer, build_scheduler,
                                       configured_groups)
from voicetrain.run.reporting import IntervalMeter, Reporter
from voicetrain.run.trackers import TrackerStart, build_trackers
from voicetrain.run.signals import GracefulStop, StopRequested, continue_hint
from voicetrain.run.validation import validate
from voicetrain.tasks.base import StepContext, Task, TaskContext, check_data, example_maker

log = logging.getLogger("voicetrain")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite; raised before anything is saved from that state."""


@dataclass
class TrainingSummary:
    run_dir: Path
    start_step: int
    final_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    export: ExportResult | None = None
    already_finished: bool = False
    scratch: ScratchSpace | None = None  # byte counts for the summary


def build_accelerator(settings: Settings) -> Accelerator:
    # Under torchrun on a machine without a GPU, Accelerate forms a gloo process group only when
    # told to use the CPU; otherwise every rank would train alone, each believing it is rank 0.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=settings.trainer.precision,
        gradient_accumulation_steps=settings.trainer.grad_accum_steps,
        cpu=settings.trainer.cpu or (several and not torch.cuda.is_available()),
        # Built on every rank (no side effects); Accelerate starts them on the main process only.
        log_with=build_trackers(settings.logger) or None,
    )


def task_for_run(settings: Settings, data: PreparedData) -> Task:
    task_class = import_target(settings.task_target)
    context = TaskContext.of_run(settings.features, data)
    log.info("Instantiating task <%s>", settings.task_target)
    return task_class(settings.task, context)


def move_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def due(step: int, every: int | None, max_steps: int) -> bool:
    return step == max_steps or (every is not None and step % every == 0)


def validation_due(step: int, val_every: int, max_steps: int, validate_at_end: bool) -> bool:
    """Every `val_every` steps, and at the last step unless trainer.validate_at_end=false (a short
    test launch, or a run whose last validation happened at a multiple of val_every anyway)."""
    return step % val_every == 0 or (validate_at_end and step == max_steps)


def non_finite(losses: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in losses.items() if not math.isfinite(value)}


class Trainer:
    def __init__(self, settings: Settings, overrides: list[str] | None = None, lock: RunLock | None = None):
        self.settings = settings
        self.overrides = overrides  # the command line, recorded in every checkpoint
        self.lock = lock  # held by the caller (the CLI takes it before Hydra's record is written)
        self.paths = RunPaths(settings.run_dir)
        self.accelerator = build_accelerator(settings)
        self.loop_state = LoopState()
        self.persistent = CheckpointStore(self.paths.checkpoints, keep_last=settings.ckpt.keep_last)
        self.scratch = ScratchSpace(settings.scratch, settings.ckpt, self.paths.run_dir, self.persistent,
                                    self.paths.tensorboard)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def setup(self) -> None:
        settings, accelerator = self.settings, self.accelerator
        set_seed(settings.trainer.seed)
        self.scratch.check_path(self.is_main)
        cache = self.scratch.feature_cache() or Path(settings.data.cache_dir)
        with accelerator.main_process_first():
            # The main process fills the feature cache; the others then read it.
            self.data = prepare_data(settings.data, settings.features, cache,
                                     progress=self.is_main and settings.trainer.progress,
                                     workers=settings.data.feature_workers)
        if self.data.skipped:
            log.warning("skipped %d unreadable audio file(s) (data.skip_bad_files=true)", len(self.data.skipped))
        self.task = task_for_run(settings, self.data)
        check_data(self.task, self.data.train_utterances + self.data.val_utterances, self.data.all_features)
        modules = self.task.build_modules()
        optimizers = self.task.build_optimizers(modules, lambda parameters: build_optimizer(parameters, settings.optim))
        apply_overrides(optimizers, settings.optim)
        configured = {name: configured_groups(optimizer) for name, optimizer in optimizers.items()}
        schedulers = {name: build_scheduler(optimizer, settings.optim, settings.trainer.max_steps)
                      for name, optimizer in optimizers.items()}
        parameters = {name: [parameter for group in optimizer.param_groups for parameter in group["params"]]
                      for name, optimizer in optimizers.items()}
        self.scratch.enable(modules, optimizers, spans_several_nodes(accelerator))
        # Schedules are stepped by us once per optimizer step (Accelerate's prepared scheduler
        # would step once per process) and saved by checkpoint.training_state, so they stay out of prepare.
        prepared = accelerator.prepare(*modules.values(), *optimizers.values())
        self.modules = dict(zip(modules, prepared[: len(modules)]))
        prepared_optimizers = dict(zip(optimizers, prepared[len(modules):]))
        self.objects = TrainingObjects(accelerator, self.modules, prepared_optimizers, schedulers, self.loop_state)
        self.saver = Saver(self.objects, self.persistent, settings.ckpt, self.scratch)
        self.optimizers = Optimizers(accelerator, prepared_optimizers, schedulers, parameters, configured,
                                     settings.optim, settings.trainer.grad_clip, settings.trainer.max_steps)

    def training_loader(self) -> DataLoader:
        trainer = self.settings.trainer
        sampler = StepBatchSampler(
            dataset_size=len(self.data.train_utterances),
            batch_size=trainer.batch_size,
            seed=trainer.seed,
            start_sample=self.loop_state.samples_seen,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        dataset = TrainingExamples(self.data.train_utterances, self.data.train_features, example_maker(self.task))
        # A private generator: creating the iterator (worker seeds) must not consume the global
        # RNG, or a resumed run would draw different dropout masks than an uninterrupted one.
        generator = torch.Generator().manual_seed(trainer.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.task.collate,
                          num_workers=trainer.num_workers, pin_memory=self.accelerator.device.type == "cuda",
                          persistent_workers=trainer.num_workers > 0, generator=generator)

    def unwrapped_modules(self) -> dict[str, nn.Module]:
        return {name: self.accelerator.unwrap_model(module) for name, module in self.modules.items()}

    def save(self, force_sync: bool = False) -> None:
        """Every save goes through here; where it lands and what is pruned is the Saver's job."""
        settings, state = self.settings, self.loop_state
        composed = OmegaConf.to_yaml(OmegaConf.create(settings_to_dict(settings)))
        manifest = {
            "epoch": state.samples_seen // max(len(self.data.train_utterances), 1),
            "samples_seen": state.samples_seen,
            "metrics": state.last_metrics,
            "world_size": self.accelerator.num_processes,
            "overrides": self.overrides,
        }
        extra_files = {CONFIG_FILE: composed, TASK_CONTEXT_FILE: json.dumps(self.task.context.to_dict(), indent=2)}
        final = state.step >= settings.trainer.max_steps
        self.saver.save(state.step, manifest, extra_files, final, force_sync)

    def export(self, checkpoint: Checkpoint | None, periodic: bool = False) -> ExportResult | None:
        """The final export into export/, or a periodic one (export.every_n_steps) into
        exports/step_*/. A periodic export that fails verification is logged and training goes on."""
        settings, step = self.settings.export, self.loop_state.step
        if not settings.enabled or not self.is_main:
            return None
        destination = periodic_export_dir(self.paths.run_dir, step) if periodic else self.paths.export
        if periodic and checkpoint is not None and checkpoint.step != step:
            checkpoint = None  # no checkpoint at this step: the export's source is the live model
        try:
            result = write_export(self.task, self.unwrapped_modules(), destination, settings.dtype, step,
                                  str(checkpoint.path) if checkpoint else None, self.loop_state.last_metrics,
                                  settings.formats, settings.vocoder)
        except ExportError as error:
            if periodic:
                log.error("periodic export at step %d failed, training goes on: %s", step, error)
                return None
            saved = f"{checkpoint.path} is committed" if checkpoint else "no checkpoint was written"
            raise ExportError(f"{error}\n(training itself finished and {saved}; once fixed, run the same command "
                              f"again, or re-export with `python -m voicetrain.export {self.paths.run_dir}`)") from error
        log.info("exported %s (%s, %s, %.1f MB, max error vs trained %.2e)", result.path, settings.dtype,
                 "+".join(settings.formats), result.bytes / 1e6, result.max_error)
        return result

    def train(self) -> TrainingSummary:
        lock = self.lock
        if lock is None and self.is_main:
            lock = RunLock(self.paths.run_dir).acquire()
        try:
            return self.train_locked()
        finally:
            if self.lock is None and lock is not None:
                lock.release()

    def train_locked(self) -> TrainingSummary:
        settings = self.settings
        self.setup()
        resumer = Resumer(settings.resume, self.paths.run_dir,
                          [self.persistent] + ([self.scratch.store] if self.scratch.enabled else []),
                          settings_to_dict(settings), self.task.context.speakers, self.overrides)
        resumed_from = resumer.resume(self.objects, self.paths.tensorboard)
        if resumed_from is not None:
            self.saver.resumed_step = resumed_from.step
            self.optimizers.reapply_configured(self.loop_state.step)
        start_step, max_steps = self.loop_state.step, settings.trainer.max_steps
        summary = TrainingSummary(self.paths.run_dir, start_step, start_step, self.loop_state.last_metrics,
                                  checkpoint=resumed_from, scratch=self.scratch)
        if start_step >= max_steps:
            return self.finished(summary, resumed_from)
        effective_batch = settings.trainer.batch_size * settings.trainer.grad_accum_steps * self.accelerator.num_processes
        log.info("training %s: steps %d -> %d on %s x%d, effective batch %d, %d training utterances, %d speakers",
                 settings.task_target.rsplit(".", 1)[-1], start_step, max_steps, self.accelerator.device.type,
                 self.accelerator.num_processes, effective_batch, len(self.data.train_utterances),
                 len(self.data.speakers))
        tensorboard = self.scratch.tensorboard if self.scratch.enabled and self.scratch.mirrors_tensorboard \
            else self.paths.tensorboard
        start = TrackerStart(settings.run.name, self.paths.run_dir, tensorboard, start_step,
                             dict(self.loop_state.tracker_runs))
        reporter = Reporter(self.accelerator, start, settings_to_dict(settings), max_steps,
                            settings.features.sample_rate, settings.trainer.progress and self.is_main)
        # From the first checkpoint on, a resumed launch continues these tracker runs.
        self.loop_state.tracker_runs = reporter.tracker_runs() if self.is_main else {}
        success = False
        try:
            with logging_redirect_tqdm(), GracefulStop() as stop:
                self.loop(reporter, stop, start_step, max_steps, effective_batch)
                reporter.close_files()
                # Never leave a background save half-done, and put scratch's newest on disk.
                self.saver.finish(success=True)
                success = True
                summary.checkpoint = self.saver.last_saved or resumed_from
                reporter.close(self.committed_step())
                summary.export = self.export(summary.checkpoint)
        finally:
            reporter.close_files()
            try:
                if not success:
                    self.saver.finish(success=False)
            finally:
                reporter.close(self.committed_step())
        summary.final_step, summary.metrics = self.loop_state.step, self.loop_state.last_metrics
        return summary

    def finished(self, summary: TrainingSummary, checkpoint: Checkpoint | None) -> TrainingSummary:
        """A run at trainer.max_steps is finished only when its export matches its newest
        checkpoint; a missing, incomplete or stale export is written now."""
        summary.already_finished = True
        problem = export_problem(self.paths.export, checkpoint.step if checkpoint else 0) \
            if self.settings.export.enabled else None
        if problem is None:
            log.info("run %s already finished at step %d (trainer.max_steps=%d); raise trainer.max_steps to train "
                     "further", self.settings.run.name, summary.start_step, self.settings.trainer.max_steps)
            return summary
        log.warning("run %s finished training at step %d but %s: writing the export now", self.settings.run.name,
                    summary.start_step, problem)
        summary.export = self.export(checkpoint)
        return summary

    def loop(self, reporter: Reporter, stop: GracefulStop, start_step: int, max_steps: int,
             effective_batch: int) -> None:
        settings, accelerator = self.settings, self.accelerator
        modules = self.modules
        for module in modules.values():
            module.train()
        if settings.trainer.validate_at_start and start_step == 0:
            # Every curve starts at the untrained model, and a ckpt.monitor validation does not
            # report stops the run here, before the first step.
            validate(self.task, self.unwrapped_modules(), self.data, settings, self.loop_state, reporter, accelerator)
        batches = iter(self.training_loader())
        meter = IntervalMeter()
        for step in range(start_step, max_steps):
            self.saver.raise_if_failed()  # a failed background save stops the run here, loudly
            step_context = StepContext(step, self.optimizers.optimize)
            for _ in range(settings.trainer.grad_accum_steps):
                waited = time.perf_counter()
                batch = next(batches)
                wait_seconds = time.perf_counter() - waited
                with accelerator.accumulate(*modules.values()):
                    losses = self.task.training_step(move_to_device(batch, accelerator.device), modules, step_context)
                meter.add(losses, wait_seconds)
            self.optimizers.finish_step()
            meter.step_done()
            if step == start_step:
                log.info("first step of this launch done")  # benchmarks time launch-to-first-step by it
            self.loop_state.step = step + 1
            self.loop_state.samples_seen += effective_batch
            reporter.advance()
            done = self.loop_state.step
            if done % settings.trainer.log_every == 0 or done == max_steps:
                self.log_interval(reporter, meter, done)
            if validation_due(done, settings.trainer.val_every, max_steps, settings.trainer.validate_at_end):
                validate(self.task, self.unwrapped_modules(), self.data, settings, self.loop_state, reporter,
                         accelerator)
            # Combined over ranks: a signal or the clock seen by one process stops or saves all.
            save_now, stop_now = any_rank(accelerator, [self.save_due(done, max_steps), stop.received is not None])
            if save_now or stop_now:
                self.refuse_non_finite(meter.pending(), done)
            if save_now:
                self.save()
            reporter.checkpoint_committed(self.committed_step())
            # Periodic exports (export.every_n_steps): small verified models in exports/step_*/.
            if settings.export.every_n_steps is not None and done % settings.export.every_n_steps == 0:
                self.export(self.saver.last_saved, periodic=True)
            if stop_now:
                if not save_now:
                    self.save(force_sync=True)
                raise StopRequested(stop.received or signal.SIGTERM, done, continue_hint(settings.resume))

    def committed_step(self) -> int | None:
        """The step of the newest committed checkpoint (what a resumed launch would start from)."""
        saved = self.saver.last_saved
        return saved.step if saved is not None else None

    def save_due(self, step: int, max_steps: int) -> bool:
        return due(step, self.settings.ckpt.every_n_steps, max_steps) or self.saver.due_by_time()

    def refuse_non_finite(self, losses: dict[str, float], step: int) -> None:
        bad = non_finite(losses)
        if bad:
            saved = self.saver.last_saved
            raise NonFiniteLoss(
                f"the loss became non-finite by step {step} ({', '.join(f'{name}={value}' for name, value in bad.items())}); "
                f"nothing after {saved.path.name if saved else 'step 0'} was saved. Lower optim.lr (or set "
                "trainer.grad_clip), check the data, then run the same command again to continue from the last "
                "checkpoint")

    def log_interval(self, reporter: Reporter, meter: IntervalMeter, step: int) -> None:
        losses, steps_per_second, data_wait = meter.read_and_reset()
        self.refuse_non_finite(losses, step)
        scalars = {"perf/steps_per_second": steps_per_second, "perf/data_wait_fraction": data_wait}
        for name, rate in self.optimizers.learning_rates().items():
            scalars[f"lr/{name}"] = rate
        for name, norm in self.optimizers.gradient_norms.items():
            scalars[f"grad_norm/{name}"] = float(norm)
        reporter.log_training(step, losses, scalars)
