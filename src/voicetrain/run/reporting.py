"""What the user sees while training: the progress bar, a log line per `trainer.log_every` steps,
and curves, audio and images in the trackers that the `logger` group chooses
(voicetrain.run.trackers; TensorBoard by default).

The log line (step, losses, learning rates, steps/s) goes to train.log always, and to the console
when there is no progress bar (`trainer.progress=false`): a launch without a terminal is not
silent between its first step and its last validation. With the bar the console shows the same
losses in the bar's postfix instead.

Only the main process starts trackers; other ranks log nothing. Losses are summed as tensors
between log steps so the loop does not force a device sync every step.

Tags (every tracker gets the same), as TensorBoard needs them, one kind per tag (its loader keeps one kind per tag and drops the others):
scalars as named (`train/...`, `val/...`, `lr/...`, `perf/...`, `grad_norm/...`), audio under
`audio/` and images under `mel/`, followed by the task's preview names (`audio/<pair>/converted`,
`mel/<pair>`). The recordings a preview is compared with are written once, at the run's first
validation, under the same `audio/<pair>/` group.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from voicetrain.run.trackers import TrackerStart, VoiceTracker, flat_parameters
from voicetrain.tasks.base import ValidationResult

log = logging.getLogger("voicetrain")


class IntervalMeter:
    """Sums per-step values between log steps; `.item()` happens once per interval."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.micro_batches = 0
        self.steps = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], data_wait_seconds: float) -> None:
        for name, value in losses.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.micro_batches += 1
        self.data_wait += data_wait_seconds

    def pending(self) -> dict[str, float]:
        """Mean losses of the interval so far, without resetting it (a device sync: call rarely)."""
        return {name: float(total) / max(self.micro_batches, 1) for name, total in self.sums.items()}

    def step_done(self) -> None:
        self.steps += 1

    def read_and_reset(self) -> tuple[dict[str, float], float, float]:
        """Returns (mean losses per micro-batch, optimizer steps per second, fraction of the
        time spent waiting for data)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        means = self.pending()
        rates = (self.steps / elapsed, self.data_wait / elapsed)
        self.__init__()
        return means, *rates


AUDIO_GROUP = "audio"
IMAGE_GROUP = "mel"
def training_line(step: int, max_steps: int, losses: dict[str, float], learning_rates: dict[str, float],
                  steps_per_second: float) -> str:
    """`step 25/1500: mel/l1=0.4321 lr=3.00e-04 2.41 steps/s` (one lr per optimizer, named when several)."""
    parts = [f"{name}={value:.4f}" for name, value in losses.items()]
    if len(learning_rates) == 1:
        parts += [f"lr={rate:.2e}" for rate in learning_rates.values()]
    else:
        parts += [f"lr/{name}={rate:.2e}" for name, rate in learning_rates.items()]
    return f"step {step}/{max_steps}: {' '.join(parts)} {steps_per_second:.2f} steps/s"


def log_to_files_only(message: str) -> None:
    """`message` at INFO to the root logger's file handlers (train.log), not the console: the
    progress bar already shows it there."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def preview_tags(result: ValidationResult, first_of_run: bool) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The audio and images of one validation by TensorBoard tag; the reference recordings only at
    the run's first validation (they do not change with training)."""
    audio = {**result.reference_audio, **result.audio} if first_of_run else result.audio
    return ({f"{AUDIO_GROUP}/{name}": wave for name, wave in audio.items()},
            {f"{IMAGE_GROUP}/{name}": image for name, image in result.images.items()})


class Reporter:
    """The progress bar and the run's trackers (voicetrain.run.trackers), started here through
    Accelerate's `init_trackers` on the main process; the other ranks log nothing."""

    def __init__(self, accelerator: Accelerator, start: TrackerStart, config: dict[str, Any], max_steps: int,
                 sample_rate: int, show_progress: bool):
        self.accelerator = accelerator
        self.sample_rate = sample_rate
        self.max_steps = max_steps
        self.show_progress = show_progress
        self.closed: set[int] = set()
        if accelerator.is_main_process:
            for tracker in accelerator.log_with:
                tracker.begin(start)
            accelerator.init_trackers(start.run_name, config=flat_parameters(config))
        self.bar = tqdm(total=max_steps, initial=start.start_step, disable=not show_progress, unit="step",
                        dynamic_ncols=True, mininterval=0.5, desc="train")

    @property
    def trackers(self) -> list[VoiceTracker]:
        """The started trackers (none on other ranks)."""
        return [tracker for tracker in self.accelerator.trackers if id(tracker) not in self.closed]

    def tracker_runs(self) -> dict[str, str]:
        """Tracker name -> the id of its run, saved in checkpoints so that a resumed launch continues it."""
        return {tracker.name: tracker.run_id for tracker in self.trackers if tracker.run_id is not None}

    def advance(self) -> None:
        self.bar.update(1)

    def log_training(self, step: int, losses: dict[str, float], scalars: dict[str, float]) -> None:
        if losses:
            self.bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()}, refresh=False)
        learning_rates = {name[len("lr/"):]: value for name, value in scalars.items() if name.startswith("lr/")}
        line = training_line(step, self.max_steps, losses, learning_rates, scalars.get("perf/steps_per_second", 0.0))
        if self.show_progress:
            log_to_files_only(line)
        else:
            log.info(line)
        self.accelerator.log({**{f"train/{key}": value for key, value in losses.items()}, **scalars}, step=step)

    def log_validation(self, step: int, result: ValidationResult, first_of_run: bool) -> None:
        summary = ", ".join(f"{name}={value:.3f}" for name, value in sorted(result.metrics.items()))
        log.info("validation at step %d: %s", step, summary)
        self.accelerator.log(dict(result.metrics), step=step)
        audio, images = preview_tags(result, first_of_run)
        for tracker in self.trackers:
            if audio:
                tracker.log_audio(audio, self.sample_rate, step)
            if images:
                tracker.log_mel_images(images, step)

    def checkpoint_committed(self, step: int | None) -> None:
        """Trackers that hold points until a checkpoint covers them publish up to `step`."""
        if step is not None:
            for tracker in self.trackers:
                tracker.publish_through(step)

    def close_files(self) -> None:
        """Closes the trackers that write into the run folder (TensorBoard, CSV), so that scratch can
        mirror complete files; the held ones wait for the last checkpoint (`close`)."""
        for tracker in self.trackers:
            if not tracker.holds_points:
                tracker.finish()
                self.closed.add(id(tracker))

    def close(self, committed_step: int | None) -> None:
        """Every way out: publishes what the newest committed checkpoint covers, finishes every
        tracker (points after that checkpoint are dropped: the resumed launch logs them again) and
        the progress bar. Idempotent."""
        self.bar.close()
        self.checkpoint_committed(committed_step)
        for tracker in self.trackers:
            tracker.finish()
            self.closed.add(id(tracker))
