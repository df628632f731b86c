"""What the recipes' streaming hooks (`Task.streaming`) share: how far a network of convolutions
reaches, running normalisation statistics, and the state a source-filter step carries between
blocks (the pulse train's phase per frame, the noise per frame, the source's pitch range).

Running statistics stand in for whole-utterance instance normalisation: each InstanceNorm1d of a
module normalises with the mean and variance of every frame it has seen so far in the stream (each
frame counted once, the first time it is final) together with the current window's frames, so a
live stream converges on what offline inference computes over the whole input, without ever seeing
the future, and its first blocks (mostly silence) do not decide the statistics later layers see.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from voicetrain.chunking import NOISE_BLOCK_FRAMES, Moments
from voicetrain.tasks.transpose import PITCH_STD_FLOOR, PitchRange


def convolution_reach(module: nn.Module) -> tuple[int, int]:
    """Frames (left, right) that the chain of convolutions inside `module` reaches beyond an output
    frame: each Conv1d of kernel k and padding p reaches k - 1 - p frames back and p ahead (a
    causal convolution, padded on the left by its own forward, has padding 0: it reaches k - 1
    back and none ahead). Summed over the convolutions, the reach of a chain of them (an upper
    bound where branches run side by side); dilations multiply."""
    left = right = 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv1d):
            span = layer.dilation[0] * (layer.kernel_size[0] - 1)
            padding = int(getattr(layer, "causal_padding", layer.padding[0]))
            ahead = 0 if getattr(layer, "causal_padding", None) is not None else padding
            left += span - ahead
            right += ahead
    return left, right


class RunningInstanceNorm:
    """`run(moments, new_frames, forward)`: the module's InstanceNorm1d layers normalise with the
    running statistics in `moments` (after adding the frames `new_frames` of their input) pooled with
    their whole input's. Before any frame has been added (the stream's first blocks, all before its
    first sample) a layer uses its input's own statistics, as InstanceNorm1d does."""

    def __init__(self, module: nn.Module):
        self.norms = [layer for layer in module.modules() if isinstance(layer, nn.InstanceNorm1d)]

    def run(self, moments_of: list[Moments], new_frames: slice, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`forward()` with the layers normalising by `moments_of` (one per layer, in module order,
        kept in the stream's state), after adding `new_frames` of each layer's input to them."""
        while len(moments_of) < len(self.norms):
            moments_of.append(Moments())
        index = {layer: position for position, layer in enumerate(self.norms)}

        def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            hidden = inputs[0]
            moments = moments_of[index[layer]]
            moments.add(hidden[..., new_frames])
            if moments.count == 0:
                return output
            # With the window's own frames on top: while the stream is young (its first frames mostly
            # silence) they dominate, so later layers never accumulate inputs normalised by a handful of
            # frames; once the history is long it dominates.
            blended = Moments(moments.count, moments.total, moments.squares)
            blended.add(hidden)
            mean, variance = blended.statistics()
            scale = torch.rsqrt(variance + layer.eps).to(hidden.dtype)
            normalised = (hidden - mean.to(hidden.dtype)[:, None]) * scale[:, None]
            if layer.affine:
                normalised = normalised * layer.weight[:, None] + layer.bias[:, None]
            return normalised

        handles = [layer.register_forward_hook(hook) for layer in self.norms]
        try:
            return forward()
        finally:
            for handle in handles:
                handle.remove()


def frame_advances(f0: torch.Tensor, sample_rate: int, hop_length: int) -> np.ndarray:
    """Cycles a pulse train advances over each frame of f0 [frames] Hz (sounding F0, 0 unvoiced)
    with F0 interpolated linearly towards the next frame (voicetrain.chunking.phase_advance, per
    frame); the last frame holds its value. Float64."""
    values = f0.double().numpy()
    following = np.concatenate([values[1:], values[-1:]])
    return (hop_length * values + (following - values) * ((hop_length - 1) / 2)) / sample_rate


@dataclass
class FrameStore:
    """A centred frame-level feature of a stream (frame j reads the samples j * hop - radius ..
    j * hop + radius: a log-mel, a loudness), each frame computed once, with its whole analysis window,
    the first time a window holds it: `frames(extract, window, window_start, hop, radius)` -> the
    feature [C, window // hop] of the window's frames. Frames whose analysis window reaches past the
    samples received (the newest radius / hop) come from the window's mirrored edge, as an offline
    pass computes an input's last frames, and are computed again next block with their real samples."""

    start: int = 0  # absolute frame of values[:, 0]
    values: np.ndarray | None = None  # [C, frames] final frames start .. start + frames - 1

    def frames(self, extract: Callable[[np.ndarray], np.ndarray], window: np.ndarray, window_start: int, hop: int,
               radius: int) -> np.ndarray:
        first, count = window_start // hop, window.shape[0] // hop  # the window starts on the frame grid
        final_until = (window_start + window.shape[0] - radius) // hop + 1  # frames before it have whole windows
        margin = -(-radius // hop)  # frames at a window's left edge that read past it
        stored_until = self.start + (0 if self.values is None else self.values.shape[1])
        if self.values is not None and self.start <= first and stored_until >= first + margin:
            # The stored frames reach into the window: the rest from the samples their windows cover.
            fresh_from = stored_until
            analysed = extract(window[(fresh_from - margin) * hop - window_start:])
            computed = analysed[:, margin:margin + first + count - fresh_from]
            keep_from = fresh_from
        else:
            # The stream's start: the window's own analysis, whose first frames read its mirrored edge.
            fresh_from, computed = first, extract(window)[:, :count]
            keep_from = first + margin
        final = computed[:, keep_from - fresh_from:max(final_until - fresh_from, keep_from - fresh_from)]
        earlier = self.values[:, first - self.start:fresh_from - self.start] if fresh_from > first else None
        if self.values is not None and stored_until == keep_from:
            self.values = np.concatenate([self.values, final], axis=1)
        else:
            self.start, self.values = keep_from, final
        if self.start < first:  # frames before this window are never asked for again
            self.values, self.start = self.values[:, first - self.start:], first
        return computed if earlier is None else np.concatenate([earlier, computed], axis=1)


@dataclass
class SourceState:
    """What a source-filter stream carries from block to block, keyed by absolute frame index."""

    phases: dict[int, float] = field(default_factory=dict)  # pulse-train phase (cycles) at a frame's centre
    noise_blocks: dict[int, torch.Tensor] = field(default_factory=dict)  # block of frames -> [frames, hop] noise
    counted_until: int = 0  # frames before this one are in the running statistics
    moments: list[Moments] = field(default_factory=list)  # running statistics of each InstanceNorm1d
    log_f0: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # count, sum, sum of squares (voiced)
    mel: FrameStore = field(default_factory=FrameStore)  # the log-mel's frames computed so far
    loudness: FrameStore = field(default_factory=FrameStore)
    pitch: FrameStore = field(default_factory=FrameStore)  # F0 and voicing (centred svc)

    def window_phase(self, first_frame: int, reference_frame: int, advances: np.ndarray) -> float:
        """The phase at a window's first frame such that the pulse train is at the phase remembered
        for `reference_frame` (the first frame the window makes output for, remembered by the
        previous step from frames it saw with full context) when it gets there. A window's first
        frames are computed without their left context (a tracker's F0 at the edge is off), so the
        phase is anchored inside the window rather than at its edge."""
        if reference_frame not in self.phases:
            return 0.0
        return float((self.phases[reference_frame] - advances[:reference_frame - first_frame].sum()) % 1.0)

    def remember_phases(self, first_frame: int, start_phase: float, advances: np.ndarray, reference_frame: int,
                        until: int) -> None:
        """Phases at the frames reference_frame + 1 .. until (absolute) of the window starting at
        first_frame with `start_phase`; entries before reference_frame are dropped."""
        phases = (start_phase + np.cumsum(advances[:max(until - first_frame, 0)])) % 1.0
        for frame in range(max(reference_frame, first_frame) + 1, until + 1):
            self.phases[frame] = float(phases[frame - first_frame - 1])
        for frame in [frame for frame in self.phases if frame < reference_frame]:
            del self.phases[frame]

    def noise_for(self, first_frame: int, frames: int, hop_length: int, seed: int) -> torch.Tensor:
        """Noise [frames, hop] for absolute frames [first_frame, first_frame + frames), the rows offline
        inference draws for those frames (`voicetrain.chunking.positional_noise`: block b of
        NOISE_BLOCK_FRAMES frames from seed + b, whose first rows are those of an input's one draw);
        zeros before the stream's first frame. At most two blocks are kept."""
        rows = []
        for frame in range(first_frame, first_frame + frames):
            if frame < 0:
                rows.append(torch.zeros(1, hop_length))
                continue
            block = frame // NOISE_BLOCK_FRAMES
            if block not in self.noise_blocks:
                generator = torch.Generator().manual_seed(seed + block)
                self.noise_blocks[block] = torch.randn(NOISE_BLOCK_FRAMES, hop_length, generator=generator)
                for old in [key for key in self.noise_blocks if key < block - 1]:
                    del self.noise_blocks[old]
            offset = frame % NOISE_BLOCK_FRAMES
            rows.append(self.noise_blocks[block][offset:offset + 1])
        return torch.cat(rows)

    def add_pitch(self, f0: torch.Tensor, voiced: torch.Tensor) -> None:
        log_f0 = torch.log(f0[(voiced > 0.5) & (f0 > 0)].double())
        self.log_f0[0] += log_f0.numel()
        self.log_f0[1] += float(log_f0.sum())
        self.log_f0[2] += float(log_f0.square().sum())

    def pitch_range(self) -> PitchRange | None:
        """The source's log-F0 range over the voiced frames so far (--transpose auto), None before any."""
        count, total, squares = self.log_f0
        if count < 1:
            return None
        mean = total / count
        std = math.sqrt(max(squares / count - mean * mean, 0.0)) if count > 1 else 0.0
        return PitchRange(mean, max(std, PITCH_STD_FLOOR))
