"""The streaming engine: blocks of input in, blocks of output out, with a task's StreamingStep.

The engine keeps the last window of input (left context, the samples to make, the lookahead and
the analysis delay; a fixed size, so memory does not grow with the stream), hands it to the step
with its position in the stream, joins the step's output with SOLA and returns one block. The
step keeps its own state (pitch-train phase, running normalisation statistics, noise).

The output is the input delayed by `timing.latency - timing.block` samples (the block's own wait
happens before a block reaches the engine): output sample j belongs to input sample j - delay.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from voicetrain.stream.latency import StreamTiming, whole_hops
from voicetrain.stream.sola import SolaJoiner
from voicetrain.tasks.base import StreamingStep


@dataclass(frozen=True)
class WindowLayout:
    """Where a step's output lies in the window it sees, all in samples."""

    left_context: int  # so that the window is whole hops and starts on the frame grid
    output: int  # timing.output_samples
    right: int  # lookahead + analysis delay

    @property
    def window(self) -> int:
        return self.left_context + self.output + self.right


def window_layout(timing: StreamTiming, left_context: int) -> WindowLayout:
    """The layout of a step's window: `left_context` rounded up so that the whole window is a whole
    number of hops (it then starts on a frame centre, as the offline analysis does, since the stream's
    blocks are whole hops)."""
    output = timing.output_samples
    right = timing.lookahead + timing.analysis_delay
    left = whole_hops(left_context + output + right, timing.hop_length) - output - right
    return WindowLayout(left, output, right)


@dataclass
class ComputeRecord:
    """Per-block compute times in seconds (the report's p50 and p99)."""

    seconds: list[float] = field(default_factory=list)


class StreamEngine:
    """`process(block)` -> one output block of the same length; `flush()` -> the rest of the input's output."""

    def __init__(self, step: StreamingStep, timing: StreamTiming):
        self.step = step
        self.timing = timing
        self.layout = window_layout(timing, step.needs.left_context)
        self.history = np.zeros(self.layout.window, dtype=np.float32)
        self.received = 0
        self.joiner = SolaJoiner(timing.block, timing.crossfade, timing.search)
        self.state: Any = step.start()
        self.compute = ComputeRecord()

    def warm_up(self) -> None:
        """The first blocks of a silent stream, through a window past the first sample, on a state then
        thrown away (the first call loads and plans kernels, ~1 s, and a step that computes only new frames
        computes its first ones once the window is full): the compute record holds the stream's own blocks."""
        output = slice(self.layout.left_context, self.layout.left_context + self.layout.output)
        state = self.step.start()
        blocks = -(-self.layout.window // self.timing.block) + 2
        with torch.inference_mode():
            for index in range(1, blocks + 1):
                _, state = self.step.step(torch.zeros(self.layout.window), index * self.timing.block - self.layout.window,
                                          output, state)

    @property
    def delay(self) -> int:
        """Samples from an input sample to its output sample once both are in the engine."""
        return self.timing.latency - self.timing.block

    def process(self, block: np.ndarray) -> np.ndarray:
        if block.shape[0] != self.timing.block:
            raise ValueError(f"StreamEngine.process: a block of {block.shape[0]} samples; expected "
                             f"{self.timing.block}")
        started = time.perf_counter()
        self.history = np.concatenate([self.history[block.shape[0]:], block.astype(np.float32, copy=False)])
        self.received += block.shape[0]
        window_start = self.received - self.layout.window
        output = slice(self.layout.left_context, self.layout.left_context + self.layout.output)
        with torch.inference_mode():
            piece, self.state = self.step.step(torch.from_numpy(self.history.copy()), window_start, output,
                                               self.state)
        joined = self.joiner.join(np.asarray(piece, dtype=np.float32).reshape(-1))
        self.compute.seconds.append(time.perf_counter() - started)
        return joined

    def flush_blocks(self) -> int:
        """Blocks of silence to feed after the input so that all of it comes out."""
        return -(-self.delay // self.timing.block)


def stream_array(engine: StreamEngine, wave: np.ndarray) -> np.ndarray:
    """A whole wave through the engine block by block (the last block zero-padded, then the flush):
    the output as a live stream would play it, `engine.delay` samples late, up to the input's end."""
    block = engine.timing.block
    blocks = -(-wave.shape[0] // block) + engine.flush_blocks()
    padded = np.zeros(blocks * block, dtype=np.float32)
    padded[:wave.shape[0]] = wave
    output = np.concatenate([engine.process(padded[index * block:(index + 1) * block]) for index in range(blocks)])
    return output[:wave.shape[0] + engine.delay]


@contextlib.contextmanager
def steady_collection() -> Iterator[None]:
    """The interpreter's cyclic garbage collector off a live stream's path: the objects alive at the
    start (torch's, the model's: some 300 000) are collected once and frozen, so a collection during
    the stream walks only what the stream itself made. Measured: a full collection over all of them
    takes over 100 ms here, several blocks' worth, and the stream's p99 is where such pauses land.
    Unfrozen on the way out."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
