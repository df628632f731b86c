"""The generic streaming path for a task without a streaming hook (a fork's): every block reruns the
task's own `infer` on a sliding window of context around it and keeps the samples it owns.

It needs nothing of the task but `infer`, so any task that converts audio streams, but each block
costs a whole window's compute (FALLBACK_LEFT_SECONDS of history and the lookahead, recomputed every
time), the window's statistics stand in for the utterance's (instance norms, pitch ranges) and
nothing carries over between blocks (a pulse train's phase restarts: SOLA hides the joins). A task
that implements `Task.streaming` keeps state instead and is several times cheaper per block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from voicetrain.tasks.base import InferenceOutput, InferenceRequest, StreamingNeeds, StreamingStep, Task

FALLBACK_LEFT_SECONDS = 1.0  # history each window carries: receptive fields and trackers fit in it
FALLBACK_LOOKAHEAD_SECONDS = 0.1  # unknown reach to the right: a guess; --lookahead-ms sets more


class SlidingWindowStep(StreamingStep):
    """`task.infer` on each window, cut to the output slice."""

    def __init__(self, task: Task, modules: dict[str, nn.Module], request: InferenceRequest):
        self.task = task
        self.modules = modules
        self.request = request
        rate, hop = task.context.sample_rate, task.context.hop_length
        lookahead = -(-round(FALLBACK_LOOKAHEAD_SECONDS * rate) // hop) * hop
        self.needs = StreamingNeeds(round(FALLBACK_LEFT_SECONDS * rate), lookahead, 0)

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: Any) -> tuple[torch.Tensor, Any]:
        result = self.task.infer(self.modules, dataclasses.replace(self.request, audio=window))
        wave = result.wave if isinstance(result, InferenceOutput) else result
        wave = wave.reshape(-1)
        if wave.shape[0] < output.stop:  # a task may return fewer samples than it was given
            wave = torch.nn.functional.pad(wave, (0, output.stop - wave.shape[0]))
        return wave[output], state


def streaming_step(task: Task, modules: dict[str, nn.Module], request: InferenceRequest) -> tuple[StreamingStep, bool]:
    """The task's own streaming step, or the sliding-window fallback; the flag says which (True: the task's)."""
    own = task.streaming(modules, request)
    if own is not None:
        return own, True
    return SlidingWindowStep(task, modules, request), False
