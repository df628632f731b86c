"""What the user sees while training: the progress bar, TensorBoard curves, audio and images.

Only the main process creates a `Reporter` that writes; other ranks get a silent one. Losses
are summed as tensors between log steps so the loop does not force a device sync every step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

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


class Reporter:
    def __init__(self, tensorboard_dir: Path | None, max_steps: int, start_step: int, sample_rate: int,
                 show_progress: bool):
        self.sample_rate = sample_rate
        self.writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops points a crashed launch logged after its last checkpoint (steps
            # after start_step; start_step itself was logged before that checkpoint was saved),
            # so the curves have no duplicated steps after a resume.
            self.writer = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step > 0 else None)
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not show_progress, unit="step",
                        dynamic_ncols=True, mininterval=0.5, desc="train")

    def advance(self) -> None:
        self.bar.update(1)

    def log_training(self, step: int, losses: dict[str, float], scalars: dict[str, float]) -> None:
        if losses:
            self.bar.set_postfix({name: f"{value:.4f}" for name, value in losses.items()}, refresh=False)
        if self.writer is None:
            return
        for name, value in {**{f"train/{key}": value for key, value in losses.items()}, **scalars}.items():
            self.writer.add_scalar(name, value, step)

    def log_validation(self, step: int, result: ValidationResult) -> None:
        summary = ", ".join(f"{name}={value:.3f}" for name, value in sorted(result.metrics.items()))
        log.info("validation at step %d: %s", step, summary)
        if self.writer is None:
            return
        for name, value in result.metrics.items():
            self.writer.add_scalar(name, value, step)
        for name, wave in result.audio.items():
            self.writer.add_audio(name, wave.float().clamp(-1, 1).unsqueeze(0), step, sample_rate=self.sample_rate)
        for name, image in result.images.items():
            self.writer.add_image(name, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Idempotent: called before the final mirror of logs on scratch and again on the way out."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
