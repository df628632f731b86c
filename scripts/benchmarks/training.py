"""Benchmarks of training itself: the loop's overhead over plain PyTorch (loop_overhead), the
export's size against the checkpoint's (export_size), and what 300 TTS steps buy (tts_mcd)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import NEVER, NO_VALIDATION, compose_settings, per_round, spread_text, synchronize
from voicetrain.config import Settings
from voicetrain.data.dataset import TrainingExamples
from voicetrain.data.prepare import PreparedData
from voicetrain.data.sampler import StepBatchSampler
from voicetrain.run.optimizers import build_optimizer, build_scheduler
from voicetrain.run.trainer import Trainer
from voicetrain.tasks.base import Task, TaskContext, ValidationData, example_maker

# --- loop overhead ------------------------------------------------------------------------


class PlainLoop:
    """The baseline: the same model, data pipeline (the same feature store, read lazily), loss,
    clipping, optimizer and schedule, written as the bare PyTorch loop a user would write, with
    no logging at all."""

    def __init__(self, settings: Settings, data: PreparedData, task_class: type[Task], device: torch.device):
        task = task_class(settings.task, TaskContext.of_run(settings.features, data))
        self.model = task.build_modules()["model"].to(device).train()
        self.optimizer = build_optimizer(list(self.model.parameters()), settings.optim)
        self.scheduler = build_scheduler(self.optimizer, settings.optim, settings.trainer.max_steps)
        self.grad_clip = settings.trainer.grad_clip
        self.device = device
        sampler = StepBatchSampler(len(data.train_utterances), settings.trainer.batch_size, settings.trainer.seed)
        examples = TrainingExamples(data.train_utterances, data.train_features, example_maker(task))
        loader = DataLoader(examples, batch_sampler=sampler, collate_fn=task.collate,
                            num_workers=settings.trainer.num_workers, pin_memory=device.type == "cuda")
        self.batches = iter(loader)

    def step(self) -> None:
        batch = {key: value.to(self.device, non_blocking=True) for key, value in next(self.batches).items()}
        mel, mask = batch["mel"], batch["mask"]
        reconstruction = self.model(mel, batch["speaker"])
        # The VC recipe's loss: masked L1 in normalised units.
        error = ((reconstruction - mel).abs() / self.model.mel_std).mean(dim=1)
        loss = (error * mask).sum() / mask.sum().clamp(min=1.0)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, steps: int) -> float:
        """Runs `steps` steps; returns their wall time in seconds."""
        synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - started


class MeasurementDone(Exception):
    """Raised from inside the training loop once the last round is measured: training stops there,
    without the validation, save and export of a normal last step."""


@dataclass
class Interleaver:
    """Called at the start of each voicetrain training step. After the warm-up it alternates:
    a round of N voicetrain steps, then N plain steps run from inside that same call, and so on.

    A voicetrain round spans N whole iterations of the real loop (data, step, bookkeeping,
    logging), from the start of one training step to the start of the step N later. Unless
    given, N is chosen from the warm-up speed so the measured rounds take about `budget_seconds`."""

    plain: Callable[[int], float]
    device: torch.device
    warmup_steps: int
    rounds: int
    budget_seconds: float
    steps_per_round: int | None = None
    voicetrain_seconds: list[float] = field(default_factory=list)
    plain_seconds: list[float] = field(default_factory=list)
    last_step: int = -1
    next_boundary: int = 0
    round_started: float = 0.0
    measuring_since: float = 0.0

    def before_step(self, step: int) -> None:
        if step == self.last_step:  # another micro-batch of the same step (gradient accumulation)
            return
        self.last_step = step
        if step != self.next_boundary:
            return
        synchronize(self.device)
        now = time.perf_counter()
        if step == 0:
            self.next_boundary = self.warmup_steps
        elif step == self.warmup_steps:
            self.end_warmup(now - self.round_started)
        else:
            self.end_round(now - self.round_started)
        self.round_started = time.perf_counter()

    def end_warmup(self, voicetrain_seconds: float) -> None:
        plain_seconds = self.plain(self.warmup_steps)
        if self.steps_per_round is None:
            seconds_per_step = (voicetrain_seconds + plain_seconds) / (2 * self.warmup_steps)
            fitting = int(self.budget_seconds / (2 * self.rounds * seconds_per_step))
            self.steps_per_round = min(max(fitting, 3), 100)
        self.next_boundary = self.warmup_steps + self.steps_per_round
        self.measuring_since = time.perf_counter()

    def end_round(self, voicetrain_seconds: float) -> None:
        self.voicetrain_seconds.append(voicetrain_seconds)
        self.plain_seconds.append(self.plain(self.steps_per_round))
        done = len(self.voicetrain_seconds)
        # Past the time budget (the machine got slower than the warm-up said), three rounds
        # still give a median.
        out_of_time = time.perf_counter() - self.measuring_since > self.budget_seconds and done >= 3
        if done == self.rounds or out_of_time:
            raise MeasurementDone
        self.next_boundary += self.steps_per_round


class MeasuredTrainer(Trainer):
    """voicetrain's real Trainer, unchanged except that each training step first calls the
    interleaver (one Python call per step, which counts against voicetrain)."""

    interleaver: Interleaver

    def setup(self) -> None:
        super().setup()
        training_step = self.task.training_step

        def measured_step(batch, modules, step):
            self.interleaver.before_step(step.step)
            return training_step(batch, modules, step)

        self.task.training_step = measured_step


def loop_overhead(options: argparse.Namespace) -> None:
    """voicetrain steps/s ÷ a plain PyTorch loop's steps/s: same model, data, optimizer, batch."""
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        # A long run whose validation, saving and export intervals lie beyond the measured steps
        # (MeasurementDone ends it early), so the schedule and loop are those of a real run.
        settings = compose_settings(Path(run_root), options.cache_dir, "trainer.max_steps=1000000",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}", "trainer.progress=false")
        trainer = MeasuredTrainer(settings)
        device = trainer.accelerator.device
        plain: PlainLoop | None = None

        def plain_round(steps: int) -> float:
            nonlocal plain
            if plain is None:
                # Built once the trainer has prepared its data: the same features, split and statistics.
                plain = PlainLoop(settings, trainer.data, type(trainer.task), device)
            return plain.run(steps)

        interleaver = Interleaver(plain_round, device, options.warmup, options.rounds, options.seconds,
                                  options.steps_per_round)
        trainer.interleaver = interleaver
        try:
            trainer.train()
        except MeasurementDone:
            pass
    steps = interleaver.steps_per_round
    voicetrain_rates = [steps / seconds for seconds in interleaver.voicetrain_seconds]
    plain_rates = [steps / seconds for seconds in interleaver.plain_seconds]
    voicetrain_rate, plain_rate = statistics.median(voicetrain_rates), statistics.median(plain_rates)
    print(f"loop overhead: voicetrain {voicetrain_rate:.1f} steps/s / plain PyTorch {plain_rate:.1f} steps/s = "
          f"{voicetrain_rate / plain_rate:.2f} (goal >= 0.97)")
    print(f"  per-round ratios {spread_text(per_round(voicetrain_rates, plain_rates))}")
    print(f"  {len(voicetrain_rates)} alternating rounds of {steps} steps after {options.warmup} warm-up steps "
          f"each, batch {settings.trainer.batch_size}, on {device}; voicetrain with its default logging "
          f"(TensorBoard every trainer.log_every={settings.trainer.log_every} steps) and the progress bar off; "
          "the plain loop logs nothing")


# --- export size --------------------------------------------------------------------------


def export_size(options: argparse.Namespace) -> None:
    """Export size ÷ training-checkpoint size for the default recipe (AdamW), and the exported
    model's max error against the trained one, in each export dtype. Sizes do not depend on the
    number of steps, so a short run measures them; the error after 20 steps is indicative only."""
    from voicetrain.durable import folder_bytes
    from voicetrain.export.writer import RELATIVE_TOLERANCE, write_export

    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        settings = compose_settings(Path(run_root), options.cache_dir, "trainer.max_steps=20",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}",
                                    "trainer.audio_previews=0", "trainer.progress=false")
        trainer = Trainer(settings)
        summary = trainer.train()
        checkpoint = summary.checkpoint.path
        checkpoint_bytes = folder_bytes(checkpoint)
        print(f"export size: checkpoint {checkpoint.name} {checkpoint_bytes / 1e6:.2f} MB (weights, "
              f"{settings.optim.name} moments, RNG and loop state)")
        for dtype in ("fp16", "fp32", "bf16"):
            result = summary.export if dtype == settings.export.dtype else write_export(
                trainer.task, trainer.unwrapped_modules(), Path(run_root) / f"export-{dtype}", dtype,
                summary.final_step, str(checkpoint), {})
            ratio = result.bytes / checkpoint_bytes
            goal = " (goal <= 1/6)" if dtype == "fp16" else ""
            print(f"  {dtype}: export {result.bytes / 1e6:.2f} MB / checkpoint = {ratio:.4f} = 1/{1 / ratio:.3f}"
                  f"{goal}; max error vs trained {result.max_error:.2e} (relative {result.relative_error:.1e}, "
                  f"tolerance {RELATIVE_TOLERANCE[dtype]:.0e})")


# --- TTS quality ---------------------------------------------------------------------------

TTS_STEPS = 300  # a few minutes on 2 CPU cores; enough for the alignment to form
# val/mcd: WORLD mel-cepstra of the Griffin-Lim-vocoded synthesis (as papers compute it);
# val/logmel_mcd: cepstra of the log-mels themselves (what val/mcd was before).
TTS_MCDS = ("val/mcd", "val/logmel_mcd")
TTS_OTHERS = ("val/logmel_mcd_teacher_forced", "val/length_ratio")


def tts_mcd(options: argparse.Namespace) -> None:
    """Validation MCD of the TTS recipe (task=tts) after TTS_STEPS steps next to the same model
    untrained (its step-0 weights: same seed), on the bundled corpus's held-out sentences: each
    is synthesised from its text with its speaker's voice and compared with the recording."""
    with tempfile.TemporaryDirectory(prefix="voicetrain-bench-") as run_root:
        settings = compose_settings(Path(run_root), options.cache_dir, "task=tts", f"trainer.max_steps={TTS_STEPS}",
                                    *NO_VALIDATION, f"ckpt.every_n_steps={NEVER}",
                                    "trainer.audio_previews=0", "trainer.progress=false", "export.enabled=false")
        untrained = Trainer(settings)
        untrained.setup()
        modules = untrained.unwrapped_modules()
        for module in modules.values():
            module.eval()
        data = ValidationData(untrained.data.val_utterances, untrained.data.val_features)
        before = untrained.task.validate(modules, data, 0).metrics
        started = time.perf_counter()
        after = Trainer(settings).train().metrics  # the last step always validates
        seconds = time.perf_counter() - started
    for name in TTS_MCDS:
        print(f"tts mcd: {name} trained {after[name]:.2f} dB after {TTS_STEPS} steps / untrained "
              f"{before[name]:.2f} dB = {after[name] / before[name]:.2f} (lower is better)")
    for name in TTS_OTHERS:
        print(f"  {name}: trained {after[name]:.3f}, untrained {before[name]:.3f}")
    print(f"  {len(data.utterances)} held-out utterances, batch {settings.trainer.batch_size}, "
          f"{seconds / TTS_STEPS:.2f} s per step including the final validation and save")
