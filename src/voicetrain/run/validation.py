"""Validation during training: the task's metrics, previews for TensorBoard, the best-metric tracker.

Runs on the main process with the modules unwrapped and in eval mode, under a forked RNG so that
validating never changes what training draws next (bit-exact resume); the other ranks wait.
"""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator
from torch import nn

from voicetrain.checkpoint.loop_state import LoopState
from voicetrain.config import Settings
from voicetrain.data.prepare import PreparedData
from voicetrain.run.reporting import Reporter
from voicetrain.tasks.base import Task, ValidationData

log = logging.getLogger("voicetrain")


def validate(task: Task, modules: dict[str, nn.Module], data: PreparedData, settings: Settings,
             loop_state: LoopState, reporter: Reporter, accelerator: Accelerator) -> None:
    """`modules` unwrapped. Every rank calls this; the main process validates."""
    if not data.val_utterances:
        return
    if accelerator.is_main_process:
        for module in modules.values():
            module.eval()
        # Validation must not consume the training RNG, or resumed runs would diverge.
        with torch.random.fork_rng(devices=[]):
            result = task.validate(modules, ValidationData(data.val_utterances, data.val_features),
                                   settings.trainer.audio_previews)
        for module in modules.values():
            module.train()
        ckpt = settings.ckpt
        loop_state.record_validation(result.metrics, ckpt.monitor, ckpt.mode)
        if ckpt.keep_best > 0 and ckpt.monitor not in result.metrics:
            log.warning("ckpt.monitor=%s is not among this task's validation metrics (%s), so ckpt.keep_best=%d "
                        "keeps nothing; set ckpt.monitor to one of them", ckpt.monitor,
                        ", ".join(sorted(result.metrics)), ckpt.keep_best)
        reporter.log_validation(loop_state.step, result)
    accelerator.wait_for_everyone()
