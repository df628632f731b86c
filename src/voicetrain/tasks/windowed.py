"""The streaming hook of recipes whose layers read frames ahead and whose output is made from a
log-mel (`vc` through a vocoder or Griffin-Lim, the vocoder): each block converts a window (left
context, the block, the lookahead) whole, its log-mel frames each computed once (FrameStore), its
network's instance normalisations on running statistics (RunningInstanceNorm), and for
`--backend onnx` the network through ONNX Runtime with those statistics as inputs and outputs of
the graph (`PooledNormGraph`).

A step is `analyse` (samples -> log-mel [C, frames]), `network` (the module with the layers and the
normalisations, called on `network_inputs(log-mel)`), and `finish` (its output -> wave, at least the
window's length: a vocoder, Griffin-Lim, or nothing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from voicetrain.chunking import Moments
from voicetrain.tasks.base import StreamingNeeds, StreamingStep
from voicetrain.tasks.streaming import FrameStore, RunningInstanceNorm, convolution_reach


@dataclass
class WindowState:
    """What a windowed stream carries between blocks: the running normalisation statistics and the
    log-mel frames computed so far."""

    counted_until: int = 0  # absolute frames before this one are in the statistics
    moments: list[Moments] = field(default_factory=list)
    mel: FrameStore = field(default_factory=FrameStore)


def new_frames(state_counted_until: int, first_frame: int, final_frame: int) -> slice:
    """The frames of a window (as positions in it) to add to running statistics: those not yet
    counted, at or after the stream's first sample, before `final_frame` (absolute)."""
    return slice(max(state_counted_until, first_frame, 0) - first_frame, max(final_frame - first_frame, 0))


class Bound(nn.Module):
    """`module` with its trailing inputs fixed (a stream's speaker): forward(*inputs) = module(*inputs, *fixed)."""

    def __init__(self, module: nn.Module, *fixed: torch.Tensor):
        super().__init__()
        self.module = module
        self.fixed = fixed

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs, *self.fixed)


class _Statistics:
    """The running statistics a PooledNormGraph's layers read during one forward, and their sums of new frames."""

    counts: torch.Tensor
    totals: torch.Tensor
    squares: torch.Tensor
    new: torch.Tensor
    new_totals: list[torch.Tensor]
    new_squares: list[torch.Tensor]


class _PooledNorm(nn.Module):
    """An InstanceNorm1d normalising by the history in `statistics` (after adding the frames marked new)
    pooled with its whole input: RunningInstanceNorm's arithmetic, as graph operations."""

    def __init__(self, layer: nn.InstanceNorm1d, index: int, width: int, statistics: _Statistics):
        super().__init__()
        self.layer = layer
        self.index = index
        self.width = width
        self.statistics = statistics

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        statistics, channels = self.statistics, hidden.shape[1]
        mask = statistics.new.to(hidden.dtype)
        new_total = (hidden * mask).sum(dim=(0, 2))
        new_squares = (hidden.square() * mask).sum(dim=(0, 2))
        padding = (0, self.width - channels)
        statistics.new_totals.append(nn.functional.pad(new_total, padding))
        statistics.new_squares.append(nn.functional.pad(new_squares, padding))
        count = statistics.counts[self.index] + mask.sum() * hidden.shape[0] + hidden.shape[0] * hidden.shape[2]
        total = statistics.totals[self.index, :channels] + new_total + hidden.sum(dim=(0, 2))
        squares = statistics.squares[self.index, :channels] + new_squares + hidden.square().sum(dim=(0, 2))
        mean = total / count
        variance = torch.clamp(squares / count - mean.square(), min=0.0)
        normalised = (hidden - mean[:, None]) * torch.rsqrt(variance + self.layer.eps)[:, None]
        if self.layer.affine:
            normalised = normalised * self.layer.weight[:, None] + self.layer.bias[:, None]
        return normalised


class PooledNormGraph(nn.Module):
    """A copy of `network` whose InstanceNorm1d layers take the stream's running statistics as inputs:
    forward(*inputs, counts [L], totals [L, C], squares [L, C], new [F]) -> (output, new totals [L, C],
    new squares [L, C]), where `new` marks (1) the frames to add to the statistics, L is the number
    of normalisation layers (in module order) and C the widest one's channels."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = copy.deepcopy(network)
        self.statistics = _Statistics()
        norms = [(name, layer) for name, layer in self.network.named_modules() if isinstance(layer, nn.InstanceNorm1d)]
        self.layers = len(norms)
        self.width = max((layer.num_features for _, layer in norms), default=1)
        for index, (name, layer) in enumerate(norms):
            parent_name, _, child = name.rpartition(".")
            parent = self.network.get_submodule(parent_name) if parent_name else self.network
            setattr(parent, child, _PooledNorm(layer, index, self.width, self.statistics))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *network_inputs, counts, totals, squares, new = inputs
        statistics = self.statistics
        statistics.counts, statistics.totals, statistics.squares, statistics.new = counts, totals, squares, new
        statistics.new_totals, statistics.new_squares = [], []
        output = self.network(*network_inputs)
        return output, torch.stack(statistics.new_totals), torch.stack(statistics.new_squares)


class WindowedStep(StreamingStep):
    """See the module docstring. `input_axes` names the network's inputs and their frame axes (for ONNX)."""

    def __init__(self, analyse: Callable[[np.ndarray], np.ndarray], network: nn.Module,
                 network_inputs: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
                 finish: Callable[[torch.Tensor], torch.Tensor], needs: StreamingNeeds, hop_length: int,
                 input_axes: dict[str, dict[int, str]]):
        self.analyse = analyse
        self.network = network
        self.network_inputs = network_inputs
        self.finish = finish
        self.needs = needs
        self.norms = RunningInstanceNorm(network)
        self.hop_length = hop_length
        self.input_axes = input_axes
        self.runner: Callable[..., Any] | None = None  # ONNX Runtime's network (--backend onnx)

    def start(self) -> WindowState:
        return WindowState()

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: WindowState
             ) -> tuple[torch.Tensor, WindowState]:
        first_frame = window_start // self.hop_length
        final_frame = first_frame + output.stop // self.hop_length
        frames = new_frames(state.counted_until, first_frame, final_frame)
        mel = torch.from_numpy(state.mel.frames(self.analyse, window.numpy(), window_start, self.hop_length,
                                                self.needs.analysis_delay))
        inputs = self.network_inputs(mel)
        if self.runner is None:
            produced = self.norms.run(state.moments, frames, lambda: self.network(*inputs))
        else:
            produced = self.run_onnx(inputs, state, frames, mel.shape[-1])
        wave = self.finish(produced).reshape(-1)
        state.counted_until = max(state.counted_until, final_frame)
        if wave.shape[0] < output.stop:
            wave = torch.nn.functional.pad(wave, (0, output.stop - wave.shape[0]))
        return wave[output], state

    def run_onnx(self, inputs: tuple[torch.Tensor, ...], state: WindowState, frames: slice,
                 count: int) -> torch.Tensor:
        assert self.runner is not None
        layers = len(self.norms.norms)
        if layers == 0:
            return self.runner(*inputs)
        width = max(layer.num_features for layer in self.norms.norms)
        while len(state.moments) < layers:
            state.moments.append(Moments())
        counts, totals, squares = statistics_inputs(state.moments, width)
        new = torch.zeros(count)
        new[frames] = 1.0
        produced, new_totals, new_squares = self.runner(*inputs, counts, totals, squares, new)
        added = frames.stop - frames.start if frames.stop > frames.start else 0
        for moments, layer, total, square in zip(state.moments, self.norms.norms, new_totals, new_squares):
            moments.add_sums(total[:layer.num_features].double(), square[:layer.num_features].double(), added)
        return produced

    def onnx_module(self) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]:
        """The network (with its normalisations' running statistics as inputs where it has any), example
        inputs, input names and dynamic axes, for `--backend onnx`."""
        frames = 40
        mel = torch.from_numpy(self.analyse(np.random.default_rng(0).standard_normal((frames - 1) * self.hop_length)
                                            .astype(np.float32) * 0.1))
        inputs = self.network_inputs(mel)
        names = list(self.input_axes)
        if not self.norms.norms:
            return self.network, inputs, names, self.input_axes
        width = max(layer.num_features for layer in self.norms.norms)
        history = [Moments() for _ in self.norms.norms]
        for moments in history:
            moments.add(torch.randn(1, width, 50))
        counts, totals, squares = statistics_inputs(history, width)
        new = torch.zeros(mel.shape[-1])
        new[10:20] = 1.0
        dynamic = {**self.input_axes, "new": {0: "frames"}}
        return (PooledNormGraph(self.network), (*inputs, counts, totals, squares, new),
                [*names, "counts", "totals", "squares", "new"], dynamic)

    def use_runner(self, runner: Callable[..., Any]) -> None:
        self.runner = runner


def statistics_inputs(history: list[Moments], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Counts [L], totals [L, width] and sums of squares [L, width] (float32, zero-padded) of running statistics."""
    counts = torch.tensor([float(moments.count) for moments in history])
    totals, squares = torch.zeros(len(history), width), torch.zeros(len(history), width)
    for index, moments in enumerate(history):
        if moments.total is not None and moments.squares is not None:
            totals[index, :moments.total.shape[0]] = moments.total.float()
            squares[index, :moments.squares.shape[0]] = moments.squares.float()
    return counts, totals, squares


def mel_needs(model: nn.Module, n_fft: int, hop_length: int, margin_frames: int) -> StreamingNeeds:
    """Needs of a step that computes a log-mel (window n_fft), runs `model` and a synthesis reaching
    `margin_frames` either way."""
    back, ahead = convolution_reach(model)
    radius = -(-(n_fft // 2) // hop_length) * hop_length
    return StreamingNeeds(left_context=(back + margin_frames + 1) * hop_length + radius,
                          lookahead=(ahead + margin_frames) * hop_length, analysis_delay=radius)
