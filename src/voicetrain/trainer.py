"""The training loop: the only place that calls `accelerator.prepare`.

Reads top to bottom: build everything from validated settings, decide where to start, then
loop over optimizer steps, validating, saving and reporting at their intervals, and export at
the end. Checkpoint layout, resume decisions and export live in their own modules.
"""

from __future__ import annotations

import logging
import math
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

from voicetrain.checkpoint import Checkpoint, CheckpointStore, directory_bytes, ram_snapshot_root
from voicetrain.config import Settings, import_target, settings_to_dict
from voicetrain.data.dataset import TrainingExamples
from voicetrain.data.prepare import PreparedData, prepare_data
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.export import (TASK_CONTEXT_FILE, ExportError, ExportResult, context_json, periodic_export_dir,
                               write_export)
from voicetrain.optim import build_optimizer, build_scheduler
from voicetrain.paths import RunPaths
from voicetrain.progress import TrainingProgress
from voicetrain.reporting import IntervalMeter, Reporter
from voicetrain.resume import ResumeError, config_drift, load_first_good, plan_resume
from voicetrain.retention import CheckpointRecord, RetentionPolicy, plan
from voicetrain.signals import GracefulStop, StopRequested
from voicetrain.task import StepContext, Task, TaskContext, ValidationData

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


@dataclass
class Optimization:
    """The optimizers and schedules of a run, and the step function handed to the task."""

    accelerator: Accelerator
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    parameters: dict[str, list[nn.Parameter]]
    grad_clip: float | None
    gradient_norms: dict[str, torch.Tensor] = field(default_factory=dict)

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
    return Accelerator(
        mixed_precision=settings.trainer.precision,
        gradient_accumulation_steps=settings.trainer.grad_accum_steps,
        cpu=settings.trainer.cpu,
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
        self.store = CheckpointStore(self.paths.checkpoints, on_commit=self.apply_retention)
        self.progress = TrainingProgress()
        self.resumed_step: int | None = None
        self.async_save = self.decide_async_save()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def setup(self) -> None:
        settings, accelerator = self.settings, self.accelerator
        set_seed(settings.trainer.seed)
        with accelerator.main_process_first():
            # The main process fills the feature cache; the others then read it.
            self.data = prepare_data(settings.data, settings.features, progress=self.is_main)
        if self.data.skipped:
            log.warning("skipped %d unreadable audio file(s) (data.skip_bad_files=true)", len(self.data.skipped))
        self.task = build_task(settings, self.data)
        modules = self.task.build_modules()
        optimizers = self.task.build_optimizers(modules, lambda parameters: build_optimizer(parameters, settings.optim))
        schedulers = {name: build_scheduler(optimizer, settings.optim, settings.trainer.max_steps)
                      for name, optimizer in optimizers.items()}
        parameters = {name: [parameter for group in optimizer.param_groups for parameter in group["params"]]
                      for name, optimizer in optimizers.items()}
        prepared = accelerator.prepare(*modules.values(), *optimizers.values())
        self.modules = dict(zip(modules, prepared[: len(modules)]))
        prepared_optimizers = dict(zip(optimizers, prepared[len(modules):]))
        # Schedules are stepped by us once per optimizer step (Accelerate's prepared scheduler
        # would step once per process), and saved with the checkpoint through registration.
        accelerator.register_for_checkpointing(self.progress, *schedulers.values())
        self.optimization = Optimization(accelerator, prepared_optimizers, schedulers, parameters,
                                         settings.trainer.grad_clip)

    def training_loader(self) -> DataLoader:
        trainer = self.settings.trainer
        sampler = StepBatchSampler(
            dataset_size=len(self.data.train_utterances),
            batch_size=trainer.batch_size,
            seed=trainer.seed,
            start_micro_batch=self.progress.step * trainer.grad_accum_steps,
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

    def decide_async_save(self) -> bool:
        if not self.settings.ckpt.async_save:
            return False
        reasons = []
        if self.accelerator.num_processes > 1:
            reasons.append("it runs with one process only for now")
        if ram_snapshot_root() is None:
            reasons.append("no RAM-backed /dev/shm exists for the snapshot")
        if reasons:
            log.warning("ckpt.async_save=true cannot be honoured (%s): saving synchronously", "; ".join(reasons))
            return False
        return True

    def resume(self) -> Checkpoint | None:
        """Restores the state the run starts from; returns the checkpoint it came from."""
        settings = self.settings
        if self.is_main:
            for path in self.store.remove_staging():
                log.info("removed an interrupted save: %s", path)
        self.accelerator.wait_for_everyone()
        own = self.store.list()
        path_checkpoint = CheckpointStore.read(Path(settings.resume.path)) if settings.resume.path else None
        decision = plan_resume(settings.resume.mode, own, self.paths.run_dir, settings.resume.path, path_checkpoint,
                            settings.resume.overwrite)
        log.info("%s", decision.message)
        if decision.kind == "fresh":
            if own and self.is_main:
                log.warning("resume.overwrite=true: deleting %d checkpoint(s) of %s", len(own), self.paths.run_dir)
                for checkpoint in own:
                    self.store.delete(checkpoint)
            self.accelerator.wait_for_everyone()
            return None
        if decision.kind == "weights":
            self.finetune(Path(str(decision.weights_path)))
            return None
        checkpoint = load_first_good(self.store, self.accelerator, list(decision.candidates))
        self.check_drift(checkpoint)
        self.resumed_step = checkpoint.step
        return checkpoint

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

    def finetune(self, path: Path) -> None:
        from voicetrain.finetune import apply_weights, read_weights

        modules = self.unwrapped_modules()
        report = apply_weights(modules, read_weights(path, list(modules)))
        for line in report.lines():
            log.info("fine-tune: %s", line)

    def apply_retention(self, committed: Checkpoint) -> None:
        """Runs on the main process after each commit (on the writer thread for async saves)."""
        ckpt = self.settings.ckpt
        policy = RetentionPolicy(ckpt.keep_last, ckpt.keep_every, ckpt.keep_best, ckpt.monitor, ckpt.mode)
        existing = self.store.list()
        protected = {committed.step}
        if ckpt.protect_resumed and self.resumed_step is not None:
            protected.add(self.resumed_step)
        doomed = set(plan([CheckpointRecord(item.step, item.metrics) for item in existing], policy, protected))
        for checkpoint in existing:
            if checkpoint.step in doomed:
                self.store.delete(checkpoint)
                log.info("retention: deleted %s", checkpoint.path.name)

    def unwrapped_modules(self) -> dict[str, nn.Module]:
        return {name: self.accelerator.unwrap_model(module) for name, module in self.modules.items()}

    def validate(self, reporter: Reporter) -> None:
        if not self.data.val_utterances:
            return
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
            self.progress.record_validation(result.metrics, self.settings.ckpt.monitor, self.settings.ckpt.mode)
            reporter.log_validation(self.progress.step, result)
        self.accelerator.wait_for_everyone()

    def save(self, force_sync: bool = False) -> None:
        settings = self.settings
        composed = OmegaConf.to_yaml(OmegaConf.create(settings_to_dict(settings)))
        manifest = {
            "epoch": self.samples_epoch(),
            "samples_seen": self.progress.samples_seen,
            "metrics": self.progress.last_metrics,
            "world_size": self.accelerator.num_processes,
        }
        extra_files = {"config.yaml": composed, TASK_CONTEXT_FILE: context_json(self.task.context)}
        started = time.perf_counter()
        if self.async_save and not force_sync:
            self.store.save_async(self.accelerator, self.progress.step, manifest, extra_files)
        else:
            self.store.save(self.accelerator, self.progress.step, manifest, extra_files)
        self.blocked_seconds += time.perf_counter() - started
        self.last_save_time = time.monotonic()

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
        resumed_from = self.resume()
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
        reporter = Reporter(self.paths.tensorboard if self.is_main else None, max_steps, start_step,
                            settings.features.sample_rate, settings.trainer.progress and self.is_main)
        try:
            with logging_redirect_tqdm(), GracefulStop() as stop:
                self.loop(reporter, stop, start_step, max_steps, effective_batch)
                self.store.wait()
                summary.checkpoint = self.store.last_committed or resumed_from
                summary.export = self.export(summary.checkpoint)
        finally:
            # Never leave a background save half-done: finish it (or surface its error) first.
            if self.store.busy():
                log.info("waiting for the checkpoint save in progress")
            self.store.wait()
            reporter.close()
        summary.final_step, summary.metrics = self.progress.step, self.progress.last_metrics
        return summary

    def loop(self, reporter: Reporter, stop: GracefulStop, start_step: int, max_steps: int,
             effective_batch: int) -> None:
        settings, accelerator = self.settings, self.accelerator
        modules = self.modules
        for module in modules.values():
            module.train()
        batches = iter(self.training_loader())
        meter = IntervalMeter()
        self.blocked_seconds = 0.0
        self.last_save_time = time.monotonic()
        for step in range(start_step, max_steps):
            self.store.raise_if_failed()  # a failed background save stops the run here, loudly
            step_context = StepContext(step, self.optimization.optimize)
            for _ in range(settings.trainer.grad_accum_steps):
                waited = time.perf_counter()
                batch = next(batches)
                wait_seconds = time.perf_counter() - waited
                with accelerator.accumulate(*modules.values()):
                    losses = self.task.training_step(move_to_device(batch, accelerator.device), modules, step_context)
                meter.add(losses, wait_seconds)
            meter.step_done()
            self.progress.step = step + 1
            self.progress.samples_seen += effective_batch
            reporter.advance()
            done = self.progress.step
            if done % settings.trainer.log_every == 0 or done == max_steps:
                self.log_interval(reporter, meter, done)
            if due(done, settings.trainer.val_every, max_steps):
                self.validate(reporter)
            if self.save_due(done, max_steps):
                self.save()
            # Periodic exports (export.every_n_steps): small verified models in exports/step_*/.
            if settings.export.every_n_steps is not None and done % settings.export.every_n_steps == 0:
                self.export(self.store.last_committed, periodic=True)
            if stop.received is not None:
                if self.store.last_committed is None or self.store.last_committed.step != done:
                    self.save(force_sync=True)
                self.store.wait()
                raise StopRequested(stop.received, done)

    def save_due(self, step: int, max_steps: int) -> bool:
        ckpt = self.settings.ckpt
        if due(step, ckpt.every_n_steps, max_steps):
            return True
        return ckpt.every_n_minutes is not None and time.monotonic() - self.last_save_time >= 60 * ckpt.every_n_minutes

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
    return directory_bytes(checkpoint.path) if checkpoint is not None else 0
