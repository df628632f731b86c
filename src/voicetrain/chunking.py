"""Inference of long inputs in overlapping chunks, so that memory does not grow with the input.

Every recipe's `infer` (vc, svc, the vocoder) and `voicetrain.audio.griffin_lim` cut a long input
into chunks planned here; all positions are frames of the shared hop. A chunk *owns* the frames
[start, end), which overlap the next chunk's by `overlap` frames, and the model *sees* the frames
[context_start, context_end), `context` frames more on either side (clipped to the input), so that
every owned frame is computed with the receptive field it has in one pass over the whole input.
Owned outputs are summed with complementary raised-cosine weights over each overlap (`fade`), so
the joins crossfade and the weights sum to one at every frame. An input no longer than one chunk
is one chunk with no context and weight one: computed exactly as before chunking existed.

Two things a chunk cannot know from its own frames, both computed here in streaming passes:
- instance normalisation's statistics, which are the whole input's per channel
  (`whole_input_instance_norm`: one pass per normalisation layer, each from the previous ones'
  fixed statistics);
- the phase of a pulse train at the chunk's first frame (`phase_advance` of the frames before).
Randomness (a generator's noise) is keyed to frame positions (`positional_noise`), so overlapping
chunks draw the same noise where they overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

DEFAULT_CHUNK_SECONDS = 30.0  # ~2000 frames at 16 kHz / hop 256: tens of MB of activations per chunk
OVERLAP_SECONDS = 0.25  # crossfade at each join
CONTEXT_SECONDS = 1.0  # frames a chunk sees beyond what it owns (receptive fields, pitch trackers)
NOISE_BLOCK_FRAMES = 4096  # noise is drawn per block of frames from its own seed (see positional_noise)


@dataclass(frozen=True)
class Span:
    """One chunk: it owns the frames [start, end) and is computed from [context_start, context_end)."""

    start: int
    end: int
    context_start: int
    context_end: int

    @property
    def owned(self) -> slice:
        """The owned frames as positions within the computed ones."""
        return slice(self.start - self.context_start, self.end - self.context_start)


@dataclass(frozen=True)
class ChunkPlan:
    """How an input of `frames` frames is cut: chunks of `chunk` frames that overlap by `overlap`
    frames and see `context` frames beyond on either side."""

    frames: int
    chunk: int
    overlap: int
    context: int

    def __post_init__(self) -> None:
        if self.chunk < 1 or self.frames < 1:
            raise ValueError(f"ChunkPlan: chunk={self.chunk} and frames={self.frames} must be >= 1")
        if self.overlap < 0 or self.context < 0 or 2 * self.overlap > self.chunk:
            raise ValueError(f"ChunkPlan: overlap={self.overlap} and context={self.context} must be >= 0 and the "
                             f"overlap at most half the chunk ({self.chunk}); use a longer chunk")

    @property
    def spans(self) -> list[Span]:
        if self.frames <= self.chunk:
            return [Span(0, self.frames, 0, self.frames)]
        step = self.chunk - self.overlap
        spans = []
        start = 0
        while True:
            end = min(start + self.chunk, self.frames)
            spans.append(Span(start, end, max(start - self.context, 0), min(end + self.context, self.frames)))
            if end == self.frames:
                return spans
            start += step
            if self.frames - start <= self.overlap:
                # The last chunk would lie inside the overlap: the previous one stretches to the end.
                last = spans.pop()
                spans.append(Span(last.start, self.frames, last.context_start, self.frames))
                return spans

    def fade(self, span: Span, scale: int = 1) -> torch.Tensor:
        """Weights [(end - start) * scale] of a span's owned output (`scale` samples per frame): a
        raised-cosine rise over the overlap with the previous span, a fall over the next's."""
        length = (span.end - span.start) * scale
        weights = torch.ones(length, dtype=torch.float64)
        ramp_length = self.overlap * scale
        if ramp_length == 0 or self.frames <= self.chunk:
            return weights
        # Evaluated at sample centres, so a rise and the matching fall sum to exactly one.
        rise = torch.sin((torch.arange(ramp_length, dtype=torch.float64) + 0.5) * (math.pi / 2 / ramp_length)) ** 2
        if span.start > 0:
            weights[:ramp_length] = rise
        if span.end < self.frames:
            weights[length - ramp_length:] = 1.0 - rise
        return weights


def frames_of(seconds: float, sample_rate: int, hop_length: int) -> int:
    return max(1, round(seconds * sample_rate / hop_length))


def plan_for(frames: int, sample_rate: int, hop_length: int, chunk_seconds: float | None = None,
             context_frames: int | None = None) -> ChunkPlan:
    """The plan of an input of `frames` frames with chunks of `chunk_seconds` (default
    DEFAULT_CHUNK_SECONDS), OVERLAP_SECONDS of crossfade and at least CONTEXT_SECONDS of context."""
    seconds = DEFAULT_CHUNK_SECONDS if chunk_seconds is None else chunk_seconds
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"chunk_seconds={chunk_seconds!r}: give a positive number of seconds, e.g. "
                         f"{DEFAULT_CHUNK_SECONDS}")
    chunk = frames_of(seconds, sample_rate, hop_length)
    overlap = min(frames_of(OVERLAP_SECONDS, sample_rate, hop_length), chunk // 2)
    context = max(frames_of(CONTEXT_SECONDS, sample_rate, hop_length), context_frames or 0)
    return ChunkPlan(frames, chunk, overlap, context)


class Stitcher:
    """The output of a plan's spans, summed with the plan's crossfade weights into one tensor
    [..., frames * scale] (the only tensor that grows with the input: the result itself)."""

    def __init__(self, plan: ChunkPlan, leading: tuple[int, ...] = (), scale: int = 1,
                 dtype: torch.dtype = torch.float32):
        self.plan = plan
        self.scale = scale
        self.output = torch.zeros(*leading, plan.frames * scale, dtype=dtype)

    def add(self, span: Span, owned: torch.Tensor) -> None:
        """`owned`: the span's output over its owned frames, [..., (end - start) * scale]."""
        if self.plan.frames <= self.plan.chunk:
            self.output.copy_(owned)  # one chunk: its output unchanged, bit for bit
            return
        weights = self.plan.fade(span, self.scale)
        placed = self.output[..., span.start * self.scale:span.end * self.scale]
        placed += (owned.double() * weights).to(self.output.dtype)


def sample_span(span_start: int, span_end: int, hop_length: int, radius: int, samples: int) -> tuple[int, int]:
    """The samples [first, last) a framed analysis (centred frames, windows of `radius` samples
    either side) needs to compute frames [span_start, span_end) as it would on the whole wave of
    `samples` samples; `first` is a multiple of the hop, so frame 0 of the slice is frame
    `first // hop_length` of the whole."""
    reach = -(-radius // hop_length)  # frames of hop within one window radius, rounded up
    first = max(span_start - reach, 0) * hop_length
    last = min((span_end - 1 + reach) * hop_length + 1, samples)
    return first, last


def framed_slice(analyse: Callable[[torch.Tensor], torch.Tensor], wave: torch.Tensor, span_start: int,
                 span_end: int, hop_length: int, radius: int) -> torch.Tensor:
    """Frames [span_start, span_end) of `analyse(wave)` (a centred, framed analysis such as a
    log-mel or a pitch track, [..., frames]) computed from the samples those frames need alone."""
    first, last = sample_span(span_start, span_end, hop_length, radius, wave.shape[-1])
    frames = analyse(wave[..., first:last])
    offset = span_start - first // hop_length
    return frames[..., offset:offset + span_end - span_start]


class FramedExtractor(Protocol):
    """What `frames_of_extractor` needs of a feature extractor (voicetrain.features.base.FeatureExtractor)."""

    settings: Any

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...


def frames_of_extractor(extractor: FramedExtractor, wave: torch.Tensor, sample_rate: int, hop_length: int,
                        chunk_seconds: float | None = None) -> torch.Tensor:
    """An extractor's frames [channels, samples // hop + 1] of a whole wave [samples], extracted in
    chunks of `chunk_seconds` that see CONTEXT_SECONDS (or the extractor's window) beyond each side;
    every frame comes from the first chunk that owns it. Only the result grows with the input (the
    extractor's own intermediates, an STFT say, are a chunk's)."""
    frames = wave.shape[-1] // hop_length + 1
    plan = plan_for(frames, sample_rate, hop_length, chunk_seconds)
    spans = plan.spans
    radius = max(int(getattr(extractor.settings, "n_fft", 0)) // 2, plan.context * hop_length)

    def analyse(piece: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(extractor.extract(piece.numpy(), sample_rate)))

    if len(spans) == 1:
        return analyse(wave)
    pieces = []
    for index, span in enumerate(spans):
        stop = spans[index + 1].start if index + 1 < len(spans) else span.end
        pieces.append(framed_slice(analyse, wave, span.start, stop, hop_length, radius))
    return torch.cat(pieces, dim=-1)


def positional_noise(start: int, end: int, total: int, hop_length: int, seed: int) -> torch.Tensor:
    """Standard normal noise [1, end - start, hop] for frames [start, end) of an input of `total`
    frames. An input of at most NOISE_BLOCK_FRAMES frames draws one tensor [1, total, hop] from
    `seed`, as unchunked inference does; longer ones draw each block of frames from seed + block,
    so the noise at a frame does not depend on how the input was cut."""
    if total <= NOISE_BLOCK_FRAMES:
        return torch.randn(1, total, hop_length, generator=torch.Generator().manual_seed(seed))[:, start:end]
    pieces = []
    for block in range(start // NOISE_BLOCK_FRAMES, (end - 1) // NOISE_BLOCK_FRAMES + 1):
        block_start = block * NOISE_BLOCK_FRAMES
        drawn = torch.randn(1, NOISE_BLOCK_FRAMES, hop_length, generator=torch.Generator().manual_seed(seed + block))
        pieces.append(drawn[:, max(start - block_start, 0):min(end - block_start, NOISE_BLOCK_FRAMES)])
    return torch.cat(pieces, dim=1)


def phase_advance(f0: torch.Tensor, sample_rate: int, hop_length: int) -> float:
    """Cycles a pulse train or oscillator advances over the frames of `f0` [frames + 1] Hz but its
    last (which only sets the slope into the final frame): with F0 upsampled linearly between frame
    centres (`voicetrain.tasks.layers.synthesis.upsample`), frame i contributes
    (hop * f_i + (f_{i+1} - f_i) * (hop - 1) / 2) / sample_rate. Summed in float64."""
    values = f0.double()
    current, following = values[:-1], values[1:]
    total = (hop_length * current + (following - current) * ((hop_length - 1) / 2)).sum() / sample_rate
    return float(total - math.floor(total))


@dataclass
class Moments:
    """Per-channel count, sum and sum of squares (float64) of the frames seen so far: whole-input statistics
    here, running ones in a stream (voicetrain.tasks.streaming)."""

    count: int = 0
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def add(self, hidden: torch.Tensor) -> None:
        """hidden [B, C, frames]."""
        if hidden.shape[-1] == 0:
            return
        values = hidden.double()
        self.add_sums(values.sum(dim=(0, 2)), values.square().sum(dim=(0, 2)), hidden.shape[0] * hidden.shape[2])

    def add_sums(self, total: torch.Tensor, squares: torch.Tensor, count: int) -> None:
        """Frames summed already (by `add`, or by ONNX Runtime's graph): per-channel sums of `count` frames."""
        if count == 0:
            return
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += count

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.total is not None and self.squares is not None and self.count > 0
        mean = self.total / self.count
        variance = (self.squares / self.count - mean.square()).clamp(min=0.0)
        return mean, variance


class _Measured(Exception):
    """Ends a statistics pass once the layer being measured has seen its input."""


class WholeInputStatistics:
    """Makes the InstanceNorm1d layers of a module normalise each chunk with the statistics of the
    whole input (per channel, biased variance, like InstanceNorm1d over the whole utterance).

    `measure(pass_over_chunks)`: for each normalisation layer in the order the module runs them,
    `pass_over_chunks(owned_slice_setter)` runs the module over every chunk; the layers already
    measured normalise with their fixed statistics, the current one accumulates its input's sums
    over the frames the setter names (each frame of the input once), and the pass stops there. Afterwards
    every layer normalises with its fixed statistics until `release`."""

    def __init__(self, module: nn.Module):
        self.norms = [layer for layer in module.modules() if isinstance(layer, nn.InstanceNorm1d)]
        self.fixed: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self.measuring: nn.Module | None = None
        self.moments = Moments()
        self.owned = slice(None)
        self.handles = [layer.register_forward_hook(self.hook) for layer in self.norms]

    def hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        hidden = inputs[0]
        if layer is self.measuring:
            self.moments.add(hidden[..., self.owned])
            raise _Measured
        if layer not in self.fixed:
            # The order of module.modules() was not the order of execution: say so rather than
            # normalise with statistics that do not exist yet.
            raise RuntimeError(f"{type(layer).__name__} ran before the layers measured so far; "
                               "WholeInputStatistics needs the normalisation layers registered in the order they run")
        mean, variance = self.fixed[layer]
        scale = torch.rsqrt(variance + layer.eps).to(hidden.dtype)
        normalised = (hidden - mean.to(hidden.dtype)[:, None]) * scale[:, None]
        if layer.affine:
            normalised = normalised * layer.weight[:, None] + layer.bias[:, None]
        return normalised

    def measure(self, pass_over_chunks: Callable[[Callable[[slice], None]], None]) -> None:
        def set_owned(owned: slice) -> None:
            self.owned = owned

        for layer in self.norms:
            self.measuring, self.moments = layer, Moments()
            pass_over_chunks(set_owned)
            self.fixed[layer] = self.moments.statistics()
        self.measuring = None

    def release(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextmanager
def whole_input_instance_norm(module: nn.Module, run_chunk: Callable[[Span], None],
                              spans: list[Span]) -> Iterator[None]:
    """Within the block, `module`'s instance normalisations use the whole input's statistics,
    measured first by calling `run_chunk(span)` (which runs the module on that span's computed
    frames) over `spans` once per normalisation layer. A single span needs no measuring: its
    statistics are already the whole input's."""
    if len(spans) == 1:
        yield
        return
    statistics = WholeInputStatistics(module)

    def pass_over_chunks(set_owned: Callable[[slice], None]) -> None:
        for index, span in enumerate(spans):
            # Overlapping frames are counted by the first span that owns them only.
            stop = spans[index + 1].start if index + 1 < len(spans) else span.end
            set_owned(slice(span.start - span.context_start, stop - span.context_start))
            try:
                run_chunk(span)
            except _Measured:
                continue

    try:
        statistics.measure(pass_over_chunks)
        yield
    finally:
        statistics.release()

