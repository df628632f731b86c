"""What the user sees while training: the progress bar, a log line per `trainer.log_every` steps,
TensorBoard curves, audio and images.

The log line (step, losses, learning rates, steps/s) goes to train.log always, and to the console
when there is no progress bar (`trainer.progress=false`): a launch without a terminal is not
silent between its first step and its last validation. With the bar the console shows the same
losses in the bar's postfix instead.

Only the main process creates a `Reporter` that writes; other ranks get a silent one. Losses
are summed as tensors between log steps so the loop does not force a device sync every step.

TensorBoard tags, one kind per tag (its loader keeps one kind per tag and drops the others):
scalars as named (`train/...`, `val/...`, `lr/...`, `perf/...`, `grad_norm/...`), audio under
`audio/` and images under `mel/`, followed by the task's preview names (`audio/<pair>/converted`,
`mel/<pair>`). The recordings a preview is compared with are written once, at the run's first
validation, under the same `audio/<pair>/` group.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.audio import metadata as audio_metadata
from tensorboard.util import tensor_util
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


AUDIO_GROUP = "audio"
IMAGE_GROUP = "mel"
NO_LABEL = b""


def audio_summary(tag: str, wave: torch.Tensor, sample_rate: int) -> Summary:
    """One clip as TensorBoard's audio plugin writes it itself: a 16-bit WAV blob whose metadata
    says WAV. SummaryWriter.add_audio writes the older form, which the default (fast) loader
    serves as application/octet-stream; this one both loaders serve as audio/wav."""
    buffer = io.BytesIO()
    samples = wave.detach().to("cpu", torch.float32).clamp(-1, 1).numpy()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    metadata = audio_metadata.create_summary_metadata(display_name="", description="",
                                                      encoding=audio_metadata.Encoding.Value("WAV"))
    # The plugin's layout: [clips, 2] strings, each clip's encoded audio and its label.
    tensor = tensor_util.make_tensor_proto(np.array([[buffer.getvalue(), NO_LABEL]], dtype=object))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


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
    def __init__(self, tensorboard_dir: Path | None, max_steps: int, start_step: int, sample_rate: int,
                 show_progress: bool):
        self.sample_rate = sample_rate
        self.max_steps = max_steps
        self.show_progress = show_progress
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
        learning_rates = {name[len("lr/"):]: value for name, value in scalars.items() if name.startswith("lr/")}
        line = training_line(step, self.max_steps, losses, learning_rates, scalars.get("perf/steps_per_second", 0.0))
        if self.show_progress:
            log_to_files_only(line)
        else:
            log.info(line)
        if self.writer is None:
            return
        for name, value in {**{f"train/{key}": value for key, value in losses.items()}, **scalars}.items():
            self.writer.add_scalar(name, value, step)

    def log_validation(self, step: int, result: ValidationResult, first_of_run: bool) -> None:
        summary = ", ".join(f"{name}={value:.3f}" for name, value in sorted(result.metrics.items()))
        log.info("validation at step %d: %s", step, summary)
        if self.writer is None:
            return
        for name, value in result.metrics.items():
            self.writer.add_scalar(name, value, step)
        audio, images = preview_tags(result, first_of_run)
        for tag, wave in audio.items():
            self.writer.file_writer.add_summary(audio_summary(tag, wave, self.sample_rate), step)
        for tag, image in images.items():
            self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Idempotent: called before the final mirror of logs on scratch and again on the way out."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
