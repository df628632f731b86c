"""The incremental streaming step of a causal `task=svc` model (`task.causal=true`): each block
computes its new frames only, and nothing computed before is computed again.

Per block, the frames whose analysis windows the stream now holds whole (frame j once sample
j * hop + n_fft / 2 has arrived) are new. Their log-mel and loudness come from the run's own
extractors on just the samples those windows cover; their F0 from swift-f0 on the samples from 1024
before them to the newest one, mirrored on past it (an offline pass sees the real right context, up
to 2815 samples of it). The content encoder and the generator's backbone run on the
new frames only, each causal convolution reading its cached left input (voicetrain.tasks.layers.cached)
and each instance normalisation the running statistics of every frame so far. The synthesiser
carries the pulse train's phase, the last hop of its two sources and the overlap-add's tail: frame
j's filtered segment reaches `filter_delay` samples before its window, so the wave is final up to
(newest frame) * hop - filter_delay. That makes the step's lookahead the filter's delay (63 samples
for 65 bands) plus half the analysis window, instead of a whole frame.

The pulse train over frame j interpolates F0 towards frame j + 1, which is taken from the tracker
before its own mel window is whole (provisional; the next block uses its settled value), so the
stream waits for no extra frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from voicetrain.chunking import Moments
from voicetrain.tasks.base import StreamingNeeds
from voicetrain.tasks.layers.cached import BackboneStep, causal_layers, causal_step, empty_cache
from voicetrain.tasks.layers.generators import LOG_MAGNITUDE_CEILING
from voicetrain.tasks.layers.spectral import overlap_add
from voicetrain.tasks.layers.synthesis import combtooth, filter_delay, filtered_segments
from voicetrain.tasks.streaming import SourceState, frame_advances
from voicetrain.tasks.svc_streaming import SourceFilterStreamingStep, analysis_radius

# swift-f0 reaches 2815 samples either way, but the newest frames a stream needs have no right context
# to speak of: 1024 samples of left context (its own window's half) track them as well as 2815 do on the
# bundled corpus (streamed vs offline MR-STFT 0.591 against 0.587), at 1 ms less per block.
PITCH_LEFT_CONTEXT = 1024
PITCH_EDGE_REFLECTION = 512  # samples of mirrored input after the newest (256 and 1024 measured worse)


@dataclass
class IncrementalState:
    """What the incremental step keeps between blocks; frames are absolute (frame 0 centred on the
    stream's first sample)."""

    next_frame: int = 0  # the first frame not computed yet
    source: SourceState = field(default_factory=SourceState)  # noise per frame, running pitch range
    encoder_caches: list[torch.Tensor] = field(default_factory=list)  # content encoder's causal convolutions
    moments: list[Moments] = field(default_factory=list)  # running statistics of each content block's norm
    backbone_caches: torch.Tensor | None = None  # the generator backbone's, stacked (FrameMagnitudes)
    phase: float = 0.0  # the pulse train's phase (cycles) at the start of frame next_frame
    harmonic_tail: torch.Tensor | None = None  # the last hop of each source before frame next_frame
    noise_tail: torch.Tensor | None = None
    wave: np.ndarray = field(default_factory=lambda: np.zeros(0))  # overlap-added output from wave_start
    wave_start: int = 0  # absolute sample of wave[0]


class IncrementalSourceFilterStep(SourceFilterStreamingStep):
    """The streaming hook of a causal svc model reading the log-mel (see the module docstring)."""

    def __init__(self, task: Any, model: nn.Module, speaker: str, transpose: float | str | None, noise_seed: int):
        super().__init__(task, model, speaker, transpose, noise_seed)
        hop = self.hop
        radius = analysis_radius([self.features, self.loudness])
        self.radius_frames = -(-radius // hop)  # frames of left context the analysis windows need
        self.pitch_frames = -(-PITCH_LEFT_CONTEXT // hop)
        self.delay = filter_delay(model.generator.filters.out_features // 2)
        self.needs = StreamingNeeds(left_context=(max(self.pitch_frames, self.radius_frames) + 2) * hop,
                                    lookahead=self.delay, analysis_delay=self.radius_frames * hop)
        self.backbone = BackboneStep(model.generator.backbone)
        self.magnitudes = FrameMagnitudes(self.backbone, model.generator.filters)
        self.encoder_layers = causal_layers(model.encoder)
        with torch.no_grad():
            self.condition = model.speakers(self.speaker)

    def start(self) -> IncrementalState:
        return IncrementalState(encoder_caches=[empty_cache(layer) for layer in self.encoder_layers],
                                moments=[Moments() for _ in self.encoder_layers],
                                backbone_caches=self.magnitudes.initial_caches(),
                                harmonic_tail=torch.zeros(1, self.hop), noise_tail=torch.zeros(1, self.hop))

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: IncrementalState
             ) -> tuple[torch.Tensor, IncrementalState]:
        received = window_start + window.shape[0]
        newest = (received - self.needs.analysis_delay) // self.hop  # the last frame whose windows are whole
        if newest >= state.next_frame:
            self.compute_frames(window.numpy(), window_start, newest, state)
        return self.wave_for(window_start + output.start, window_start + output.stop, state), state

    def compute_frames(self, samples: np.ndarray, window_start: int, newest: int, state: IncrementalState) -> None:
        hop, rate = self.hop, self.sample_rate
        first = state.next_frame
        count = newest + 1 - first

        def since(frame: int) -> np.ndarray:  # the window's samples from frame's centre to the newest
            return samples[frame * hop - window_start:]

        analysis = since(first - self.radius_frames)
        features = torch.from_numpy(self.features.extract(analysis, rate)[:, self.radius_frames:][:, :count]).float()
        loudness = torch.from_numpy(self.loudness.extract(analysis, rate)[0, self.radius_frames:][:count]).float()
        # One frame beyond the newest: the pulse train over the newest interpolates towards it.
        # The tracker's right context is what has arrived, mirrored: at a bare edge it reads the end of
        # the input as an onset and its newest frames swing (measured: twice the distance to offline).
        tracked = np.pad(since(first - self.pitch_frames), (0, PITCH_EDGE_REFLECTION), mode="reflect")
        pitch = self.pitch.extract(tracked, rate)[:, self.pitch_frames:][:, :count + 1]
        f0, voiced = torch.from_numpy(np.ascontiguousarray(pitch)).float()
        target = self.target_f0(f0, voiced, state.source, slice(0, count))
        sounding = target * (voiced > 0.5).float()
        responses = self.responses(features, sounding[:count], voiced[:count], loudness, state)
        self.synthesise(first, sounding, responses, state)
        state.next_frame = newest + 1

    def responses(self, features: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, loudness: torch.Tensor,
                  state: IncrementalState) -> torch.Tensor:
        """[1, n, 2 * bins] filter magnitudes of the new frames (harmonic bands, then noise bands)."""
        model = self.model
        flag = (voiced > 0.5).to(f0.dtype)
        content = self.content(features.unsqueeze(0), state)
        frames = torch.cat([content, model.controls(f0.unsqueeze(0), flag.unsqueeze(0), loudness.unsqueeze(0))], 1)
        run = self.runner if self.runner is not None else self.magnitudes
        magnitudes, state.backbone_caches = run(frames, self.condition, state.backbone_caches)
        return magnitudes

    def onnx_module(self) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]:
        """The generator's backbone and filters on new frames, the caches in and out (`FrameMagnitudes`),
        with example inputs, input names and dynamic axes, for `--backend onnx`."""
        frames = 3
        channels = self.model.generator.backbone.embed.in_channels
        inputs = (torch.randn(1, channels, frames), self.condition, torch.randn_like(self.magnitudes.initial_caches()))
        names = ["frames", "condition", "caches"]
        return self.magnitudes, inputs, names, {"frames": {2: "frames"}, "output": {1: "frames"}}

    def content(self, features: torch.Tensor, state: IncrementalState) -> torch.Tensor:
        """The content encoder on the new frames [1, C, n]: causal convolutions from their caches, and each
        instance normalisation by the running statistics of every frame so far, these included."""
        model = self.model
        hidden = model.encoder_input((features - model.input_mean) / model.input_std)
        for index, block in enumerate(model.encoder):
            mixed, state.encoder_caches[index] = causal_step(block.convolution, hidden, state.encoder_caches[index])
            hidden = hidden + functional.gelu(mixed)
            moments = state.moments[index]
            moments.add(hidden)
            mean, variance = moments.statistics()
            scale = torch.rsqrt(variance.float() + block.normalization.eps)
            hidden = (hidden - mean.float()[:, None]) * scale[:, None]
        return model.bottleneck(hidden)

    def synthesise(self, first: int, sounding: torch.Tensor, responses: torch.Tensor, state: IncrementalState) -> None:
        """Adds the filtered segments of frames first .. first + n - 1 to the overlap-add. `sounding` [n + 1]
        Hz: the pulse train over frame j interpolates from sounding[j] to sounding[j + 1]."""
        hop, generator = self.hop, self.model.generator
        count = responses.shape[1]
        pulses = combtooth(sounding.unsqueeze(0), self.sample_rate, hop, torch.tensor([state.phase]))[:, :count * hop]
        state.phase = float((state.phase + frame_advances(sounding, self.sample_rate, hop)[:count].sum()) % 1.0)
        noise = state.source.noise_for(first, count, hop, self.noise_seed).reshape(1, -1) * generator.noise_gain
        # Both sources in one batch of two: one set of products instead of two.
        segments = torch.cat([segments_of(pulses, state.harmonic_tail, hop), segments_of(noise, state.noise_tail, hop)])
        filtered = filtered_segments(segments, torch.cat(responses.chunk(2, dim=-1)), hop).sum(0, keepdim=True)
        state.harmonic_tail, state.noise_tail = pulses[:, -hop:], noise[:, -hop:]
        # Segment j (frames first ..) lands on the samples from (j - 1) * hop - delay on.
        begin = (first - 1) * hop - self.delay
        placed = overlap_add(filtered, hop)[0].double().numpy()
        if state.wave.shape[0] == 0:
            state.wave, state.wave_start = np.zeros(0), begin
        grown = np.zeros(begin + placed.shape[0] - state.wave_start)
        grown[:state.wave.shape[0]] = state.wave
        grown[begin - state.wave_start:] += placed
        state.wave = grown

    def wave_for(self, start: int, stop: int, state: IncrementalState) -> torch.Tensor:
        """The output samples [start, stop) (absolute): zeros before the first frame's; the older samples
        of the overlap-add are dropped once asked for."""
        final = (state.next_frame - 1) * self.hop - self.delay  # samples before this one are final
        if stop > final:
            raise RuntimeError(f"the incremental svc step was asked for samples up to {stop}, but only those before "
                               f"{final} are final: the stream's lookahead is shorter than this step's needs")
        result = np.zeros(stop - start, dtype=np.float32)
        lower, upper = max(start, state.wave_start), min(stop, state.wave_start + state.wave.shape[0])
        if upper > lower:
            result[lower - start:upper - start] = state.wave[lower - state.wave_start:upper - state.wave_start]
        drop = max(0, start - state.wave_start)
        state.wave, state.wave_start = state.wave[drop:], state.wave_start + drop
        return torch.from_numpy(result)


def segments_of(signal: torch.Tensor, tail: torch.Tensor, hop: int) -> torch.Tensor:
    """[1, n, 2 * hop]: segment j holds the hop before frame j's and frame j's own (`tail` is the hop
    before the first frame's) of a source whose new frames are `signal` [1, n * hop]."""
    joined = torch.cat([tail, signal], dim=-1).reshape(1, -1, hop)
    return torch.cat([joined[:, :-1], joined[:, 1:]], dim=-1)


class FrameMagnitudes(nn.Module):
    """forward(frames [1, C, n], condition [1, S], caches [1, sum of the layers' channels, taps - 1]) ->
    (magnitudes [1, n, 2 * bins], caches): the generator's backbone on new frames from its causal
    convolutions' caches (stacked on the channel axis: one state tensor in and out), then its filter
    magnitudes (harmonic bands, then noise bands). One graph for `--backend onnx`."""

    def __init__(self, backbone: BackboneStep, filters: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.filters = filters
        self.channels = [cache.shape[1] for cache in backbone.initial_caches()]

    def initial_caches(self) -> torch.Tensor:
        return torch.cat(self.backbone.initial_caches(), dim=1)

    def forward(self, frames: torch.Tensor, condition: torch.Tensor,
                caches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, *new_caches = self.backbone(frames, condition, *caches.split(self.channels, dim=1))
        magnitudes = torch.exp(torch.clamp(self.filters(hidden.transpose(1, 2)), max=LOG_MAGNITUDE_CEILING))
        return magnitudes, torch.cat(new_caches, dim=1)
