"""The training loop: the only place that calls `accelerator.prepare`.

Reads top to bottom: build everything from validated settings, decide where to start, then
loop over optimizer steps, validating, saving and reporting at their intervals, and export at
the end. Checkpoint layout, resume decisions and export live in their own modules.
"""

from __future__ import annotations

import dataclasses
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

from voicetrain.checkpoint.store import TASK_CONTEXT_FILE, Checkpoint, folder_bytes
from voicetrain.config import ConfigError, Settings, import_target, settings_to_dict
from voicetrain.data.dataset import TrainingExamples
from voicetrain.data.prepare import PreparedData, prepare_data
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.export.artifact import ExportError, ExportResult, periodic_export_dir
from voicetrain.export.writer import write_export
from voicetrain.config import OptimSettings
from voicetrain.run.optimizers import build_optimizer, build_scheduler, learning_rate_factor
from voicetrain.paths import RunPaths
from voicetrain.checkpoint.loop_state import TrainingProgress
from voicetrain.run.reporting import IntervalMeter, Reporter
from voicetrain.distributed import any_rank, from_main
from voicetrain.checkpoint.run_checkpoints import RunCheckpoints
from voicetrain.run.signals import GracefulStop, StopRequested
from voicetrain.tasks.base import StepContext, Task, TaskContext, ValidationData

log = logging.getLogger("voicetrain")


@dataclass
class TrainingSummary:
    run_dir: Path
    start_step: int
    final_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    export: ExportResult | None = None
    already_finished: bool = False
    saving: RunCheckpoints | None = None  # byte counts for the summary


@dataclass
class Optimization:
    """The optimizers and schedules of a run, and the step function handed to the task."""

    accelerator: Accelerator
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    parameters: dict[str, list[nn.Parameter]]
    grad_clip: float | None
    max_steps: int
    gradient_norms: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply_settings(self, settings: OptimSettings, step: int) -> None:
        """After loading a checkpoint: the optimizer settings on the command line win over the
        saved ones (optim may change on resume). Unchanged settings leave the state bit-exact."""
        for name, optimizer in self.optimizers.items():
            scheduler = self.schedulers[name]
            if any(base != settings.lr for base in scheduler.base_lrs):
                log.info("optim.lr changed to %g on resume (was %s) for %s", settings.lr,
                         ", ".join(f"{base:g}" for base in scheduler.base_lrs), name)
            scheduler.base_lrs = [settings.lr for _ in scheduler.base_lrs]
            factor = learning_rate_factor(step, settings, self.max_steps)
            for group in optimizer.param_groups:
                group["initial_lr"] = settings.lr
                group["lr"] = settings.lr * factor
                group["betas"] = (settings.betas[0], settings.betas[1])
                group["weight_decay"] = settings.weight_decay
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        if name not in self.optimizers:
            raise KeyError(f"optimize({name!r}): the task built optimizers {sorted(self.optimizers)}")
        optimizer = self.optimizers[name]
        self.accelerator.backward(loss)
        # Under gradient accumulation the prepared optimizer skips step/zero_grad until the
        # last micro-batch; clipping and the schedule must follow the same rhythm.
        if self.accelerator.sync_gradients:
            if self.grad_clip is not None:
                self.gradient_norms[name] = self.accelerator.clip_grad_norm_(self.parameters[name], self.grad_clip)
            optimizer.step()
            if not self.accelerator.optimizer_step_was_skipped:
                self.schedulers[name].step()
            optimizer.zero_grad(set_to_none=True)


def build_accelerator(settings: Settings) -> Accelerator:
    # Under torchrun on a machine without a GPU, Accelerate forms a gloo process group only when
    # told to use the CPU; otherwise every rank would train alone, each believing it is rank 0.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=settings.trainer.precision,
        gradient_accumulation_steps=settings.trainer.grad_accum_steps,
        cpu=settings.trainer.cpu or (several and not torch.cuda.is_available()),
    )


def build_task(settings: Settings, data: PreparedData) -> Task:
    task_class = import_target(settings.task_target)
    context = TaskContext(settings.features, data.speakers, data.mel_mean, data.mel_std)
    log.info("Instantiating task <%s>", settings.task_target)
    return task_class(settings.task, context)


def move_to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def due(step: int, every: int | None, max_steps: int) -> bool:
    return step == max_steps or (every is not None and step % every == 0)


class Trainer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.paths = RunPaths(settings.run_dir)
        self.accelerator = build_accelerator(settings)
        self.checkpoints = RunCheckpoints(settings, self.paths, self.accelerator)
        self.progress = TrainingProgress()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def setup(self) -> None:
        settings, accelerator = self.settings, self.accelerator
        set_seed(settings.trainer.seed)
        self.checkpoints.check_scratch_path()
        data_settings = settings.data
        if settings.scratch.dir and "features" in settings.scratch.include:
            data_settings = dataclasses.replace(data_settings, cache_dir=str(Path(settings.scratch.dir) / "features"))
        with accelerator.main_process_first():
            # The main process fills the feature cache; the others then read it.
            self.data = prepare_data(data_settings, settings.features, progress=self.is_main)
        if self.data.skipped:
            log.warning("skipped %d unreadable audio file(s) (data.skip_bad_files=true)", len(self.data.skipped))
        self.task = build_task(settings, self.data)
        self.task.check_data(self.data.train_utterances + self.data.val_utterances,
                             self.data.train_mels + self.data.val_mels)
        modules = self.task.build_modules()
        optimizers = self.task.build_optimizers(modules, lambda parameters: build_optimizer(parameters, settings.optim))
        schedulers = {name: build_scheduler(optimizer, settings.optim, settings.trainer.max_steps)
                      for name, optimizer in optimizers.items()}
        parameters = {name: [parameter for group in optimizer.param_groups for parameter in group["params"]]
                      for name, optimizer in optimizers.items()}
        self.checkpoints.enable_scratch(modules, optimizers)
        prepared = accelerator.prepare(*modules.values(), *optimizers.values())
        self.modules = dict(zip(modules, prepared[: len(modules)]))
        prepared_optimizers = dict(zip(optimizers, prepared[len(modules):]))
        # Schedules are stepped by us once per optimizer step (Accelerate's prepared scheduler
        # would step once per process), and saved with the checkpoint through registration.
        accelerator.register_for_checkpointing(self.progress, *schedulers.values())
        self.optimization = Optimization(accelerator, prepared_optimizers, schedulers, parameters,
                                         settings.trainer.grad_clip, settings.trainer.max_steps)

    def training_loader(self) -> DataLoader:
        trainer = self.settings.trainer
        sampler = StepBatchSampler(
            dataset_size=len(self.data.train_utterances),
            batch_size=trainer.batch_size,
            seed=trainer.seed,
            start_sample=self.progress.samples_seen,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )
        dataset = TrainingExamples(self.data.train_utterances, self.data.train_mels, self.task)
        # A private generator: creating the iterator (worker seeds) must not consume the global
        # RNG, or a resumed run would draw different dropout masks than an uninterrupted one.
        generator = torch.Generator().manual_seed(trainer.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.task.collate,
                          num_workers=trainer.num_workers, pin_memory=self.accelerator.device.type == "cuda",
                          persistent_workers=trainer.num_workers > 0, generator=generator)

    def unwrapped_modules(self) -> dict[str, nn.Module]:
        return {name: self.accelerator.unwrap_model(module) for name, module in self.modules.items()}

    def validate(self, reporter: Reporter) -> None:
        if not self.data.val_utterances:
            return
        ckpt, problem = self.settings.ckpt, None
        if self.is_main:
            modules = self.unwrapped_modules()
            for module in modules.values():
                module.eval()
            # Validation must not consume the training RNG, or resumed runs would diverge.
            with torch.random.fork_rng(devices=[]):
                result = self.task.validate(modules, ValidationData(self.data.val_utterances, self.data.val_mels),
                                            self.settings.trainer.audio_previews)
            for module in modules.values():
                module.train()
            first_of_run = not self.progress.last_metrics  # no validation before, in this launch or a resumed one
            self.progress.record_validation(result.metrics, ckpt.monitor, ckpt.mode)
            reporter.log_validation(self.progress.step, result, first_of_run)
            problem = ckpt.monitor_problem(list(result.metrics))
        if ckpt.keep_best > 0:
            # Only the main process validates; every rank must stop together.
            problem = from_main(self.accelerator, problem)
            if problem is not None:
                raise ConfigError([problem])
        self.accelerator.wait_for_everyone()

    def save(self, force_sync: bool = False) -> None:
        """Every save goes through here; where it lands and what is pruned is RunCheckpoints' job."""
        settings = self.settings
        composed = OmegaConf.to_yaml(OmegaConf.create(settings_to_dict(settings)))
        manifest = {
            "epoch": self.samples_epoch(),
            "samples_seen": self.progress.samples_seen,
            "metrics": self.progress.last_metrics,
            "world_size": self.accelerator.num_processes,
        }
        extra_files = {"config.yaml": composed, TASK_CONTEXT_FILE: json.dumps(self.task.context.to_dict(), indent=2)}
        final = self.progress.step >= settings.trainer.max_steps
        self.checkpoints.save(self.progress.step, manifest, extra_files, final, force_sync)

    def samples_epoch(self) -> int:
        return self.progress.samples_seen // max(len(self.data.train_utterances), 1)

    def export(self, checkpoint: Checkpoint | None, periodic: bool = False) -> ExportResult | None:
        """The final export into export/, or a periodic one (export.every_n_steps) into
        exports/step_*/. A periodic export that fails verification is logged and training goes on."""
        settings, step = self.settings.export, self.progress.step
        if not settings.enabled or not self.is_main:
            return None
        destination = periodic_export_dir(self.paths.run_dir, step) if periodic else self.paths.export
        if periodic and checkpoint is not None and checkpoint.step != step:
            checkpoint = None  # no checkpoint at this step: the export's source is the live model
        try:
            result = write_export(self.task, self.unwrapped_modules(), destination, settings.dtype, step,
                                  str(checkpoint.path) if checkpoint else None, self.progress.last_metrics,
                                  settings.formats)
        except ExportError as error:
            if periodic:
                log.error("periodic export at step %d failed, training goes on: %s", step, error)
                return None
            saved = f"{checkpoint.path} is committed" if checkpoint else "no checkpoint was written"
            raise ExportError(f"{error}\n(training itself finished and {saved}; once fixed, re-export with "
                              f"`python -m voicetrain.export {self.paths.run_dir}`)") from error
        log.info("exported %s (%s, %s, %.1f MB, max error vs trained %.2e)", result.path, settings.dtype,
                 "+".join(settings.formats), result.bytes / 1e6, result.max_error)
        return result

    def train(self) -> TrainingSummary:
        settings = self.settings
        self.setup()
        resumed_from = self.checkpoints.resume(self.unwrapped_modules())
        if resumed_from is not None:
            self.optimization.apply_settings(self.settings.optim, self.progress.step)
        start_step, max_steps = self.progress.step, settings.trainer.max_steps
        summary = TrainingSummary(self.paths.run_dir, start_step, start_step, self.progress.last_metrics,
                                  checkpoint=resumed_from)
        if start_step >= max_steps:
            log.info("run %s already finished at step %d (trainer.max_steps=%d); raise trainer.max_steps to "
                     "train further", settings.run.name, start_step, max_steps)
            summary.already_finished = True
            return summary
        effective_batch = settings.trainer.batch_size * settings.trainer.grad_accum_steps * self.accelerator.num_processes
        log.info("training %s: steps %d -> %d on %s x%d, effective batch %d, %d training utterances, %d speakers",
                 settings.task_target.rsplit(".", 1)[-1], start_step, max_steps, self.accelerator.device.type,
                 self.accelerator.num_processes, effective_batch, len(self.data.train_utterances),
                 len(self.data.speakers))
        tensorboard = self.paths.tensorboard
        if self.checkpoints.mirror is not None and self.checkpoints.mirror.log_folders is not None:
            tensorboard = self.checkpoints.mirror.log_folders[0]  # on scratch, mirrored with checkpoints
        reporter = Reporter(tensorboard if self.is_main else None, max_steps, start_step,
                            settings.features.sample_rate, settings.trainer.progress and self.is_main)
        success = False
        try:
            with logging_redirect_tqdm(), GracefulStop() as stop:
                self.loop(reporter, stop, start_step, max_steps, effective_batch)
                reporter.close()
                # Never leave a background save half-done, and put scratch's newest on disk.
                self.checkpoints.finish(success=True)
                success = True
                summary.checkpoint = self.checkpoints.last_saved or resumed_from
                summary.export = self.export(summary.checkpoint)
        finally:
            reporter.close()
            if not success:
                self.checkpoints.finish(success=False)
        summary.final_step, summary.metrics = self.progress.step, self.progress.last_metrics
        summary.saving = self.checkpoints
        return summary

    def loop(self, reporter: Reporter, stop: GracefulStop, start_step: int, max_steps: int,
             effective_batch: int) -> None:
        settings, accelerator = self.settings, self.accelerator
        modules = self.modules
        for module in modules.values():
            module.train()
        if settings.trainer.validate_at_start and start_step == 0:
            self.validate(reporter)  # every curve starts at the untrained model; a wrong ckpt.monitor stops here
        batches = iter(self.training_loader())
        meter = IntervalMeter()
        for step in range(start_step, max_steps):
            self.checkpoints.raise_if_failed()  # a failed background save stops the run here, loudly
            step_context = StepContext(step, self.optimization.optimize)
            for _ in range(settings.trainer.grad_accum_steps):
                waited = time.perf_counter()
                batch = next(batches)
                wait_seconds = time.perf_counter() - waited
                with accelerator.accumulate(*modules.values()):
                    losses = self.task.training_step(move_to_device(batch, accelerator.device), modules, step_context)
                meter.add(losses, wait_seconds)
            meter.step_done()
            if step == start_step:
                log.info("first step of this launch done")  # benchmarks time launch-to-first-step by it
            self.progress.step = step + 1
            self.progress.samples_seen += effective_batch
            reporter.advance()
            done = self.progress.step
            if done % settings.trainer.log_every == 0 or done == max_steps:
                self.log_interval(reporter, meter, done)
            if due(done, settings.trainer.val_every, max_steps):
                self.validate(reporter)
            # Combined over ranks: a signal or the clock seen by one process stops or saves all.
            save_now, stop_now = any_rank(accelerator, [self.save_due(done, max_steps), stop.received is not None])
            if save_now:
                self.save()
            # Periodic exports (export.every_n_steps): small verified models in exports/step_*/.
            if settings.export.every_n_steps is not None and done % settings.export.every_n_steps == 0:
                self.export(self.checkpoints.last_saved, periodic=True)
            if stop_now:
                if not save_now:
                    self.save(force_sync=True)
                raise StopRequested(stop.received or signal.SIGTERM, done)

    def save_due(self, step: int, max_steps: int) -> bool:
        return due(step, self.settings.ckpt.every_n_steps, max_steps) or self.checkpoints.save_due_by_time()

    def log_interval(self, reporter: Reporter, meter: IntervalMeter, step: int) -> None:
        losses, steps_per_second, data_wait = meter.read_and_reset()
        scalars = {"perf/steps_per_second": steps_per_second, "perf/data_wait_fraction": data_wait}
        for name, scheduler in self.optimization.schedulers.items():
            scalars[f"lr/{name}"] = scheduler.get_last_lr()[0]
        for name, norm in self.optimization.gradient_norms.items():
            scalars[f"grad_norm/{name}"] = float(norm)
        if any(not math.isfinite(value) for value in losses.values()):
            log.warning("non-finite loss at step %d: %s", step, losses)
        reporter.log_training(step, losses, scalars)


def checkpoint_size(checkpoint: Checkpoint | None) -> int:
    return folder_bytes(checkpoint.path) if checkpoint is not None else 0
