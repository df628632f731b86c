"""Validation during training: the task's metrics, previews for TensorBoard, the best-metric tracker.

Runs on the main process with the modules unwrapped and in eval mode, under a forked RNG so that
validating never changes what training draws next (bit-exact resume); the other ranks wait. A
`ckpt.monitor` that best-K retention ranks by but validation does not report stops every rank at
the first validation (with trainer.validate_at_start, before the first step).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn

from voicetrain.checkpoint.loop_state import LoopState
from voicetrain.config import ConfigError, Settings
from voicetrain.data.prepare import PreparedData
from voicetrain.distributed import from_main
from voicetrain.run.reporting import Reporter
from voicetrain.run.validation_scorers import score_previews
from voicetrain.tasks.base import Task, ValidationData


def validate(task: Task, modules: dict[str, nn.Module], data: PreparedData, settings: Settings,
             loop_state: LoopState, reporter: Reporter, accelerator: Accelerator) -> None:
    """`modules` unwrapped. Every rank calls this; the main process validates."""
    if not data.val_utterances:
        return
    ckpt, problem = settings.ckpt, None
    if accelerator.is_main_process:
        for module in modules.values():
            module.eval()
        # Validation must not consume the training RNG, or resumed runs would diverge.
        with torch.random.fork_rng(devices=[]):
            result = task.validate(modules, ValidationData(data.val_utterances, data.val_features),
                                   settings.trainer.audio_previews)
            result.metrics.update(score_previews(task, result, data, settings.trainer))
        for module in modules.values():
            module.train()
        first_of_run = not loop_state.last_metrics  # no validation before, in this launch or a resumed one
        loop_state.record_validation(result.metrics, ckpt.monitor, ckpt.mode)
        reporter.log_validation(loop_state.step, result, first_of_run)
        problem = ckpt.monitor_problem(list(result.metrics))
    if ckpt.keep_best > 0:
        # Only the main process validates; every rank must stop together.
        problem = from_main(accelerator, problem)
        if problem is not None:
            raise ConfigError([problem])
    accelerator.wait_for_everyone()
