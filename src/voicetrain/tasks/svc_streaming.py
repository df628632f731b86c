"""The streaming hook of a centred `task=svc` model (`SingingVoiceConversionTask.streaming`; a
causal one reading the log-mel streams through voicetrain.tasks.svc_incremental): one block at a
time, with the state a live stream needs instead of the whole input.

Each step takes the log-mel, loudness and F0 frames of its window from FrameStores (each frame
computed once, with its whole analysis window: for swift-f0, 2815 samples either way; a pretrained
encoder's content is computed over the window), runs the model over the window's frames and keeps
the samples the stream asked for. Between blocks it carries the pulse train's phase at every
recent frame (so the pulses continue where the last block left them), the noise of every frame in
view (so two windows agree where they overlap), the content encoder's running normalisation
statistics (instead of the whole input's) and, for `--transpose auto`, the source's running pitch range.

Needs: the left context covers the convolutions' reach back, the analysis windows and swift-f0's
receptive field (2815 samples); the lookahead is the convolutions' reach ahead plus one frame (the
synthesis interpolates towards the next frame); the analysis delay is half the widest analysis
window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from voicetrain.tasks.base import InferenceError, StreamingNeeds, StreamingStep
from voicetrain.tasks.streaming import (FrameStore, RunningInstanceNorm, SourceState, convolution_reach,
                                         frame_advances)
from voicetrain.tasks.transpose import map_pitch

PITCH_TRACKER_REACH = 2815  # swift-f0's receptive field either side, in samples at 16 kHz (swift_f0.core)


def analysis_radius(extractors: list[Any]) -> int:
    return max(int(getattr(extractor.settings, "n_fft", 0)) // 2 for extractor in extractors)


class SourceFilterStreamingStep(StreamingStep):
    def __init__(self, task: Any, model: nn.Module, speaker: str, transpose: float | str | None, noise_seed: int):
        self.task = task
        self.model = model
        context = task.context
        self.sample_rate, self.hop = context.sample_rate, context.hop_length
        self.features = task.extractor(task.input_feature)
        self.loudness = task.extractor("loudness")
        self.pitch = task.extractor("f0")
        self.speaker = torch.tensor([task.speaker_index[speaker]])
        self.transpose = transpose
        self.target_pitch = task.speaker_pitch(speaker) if transpose == "auto" else None
        if transpose not in (None, "auto") and not isinstance(transpose, (int, float)):
            raise InferenceError(f"transpose={transpose!r}: give a number of semitones (e.g. 12, -5, 0) or auto")
        self.factor = 2.0 ** (float(transpose or 0.0) / 12.0) if transpose != "auto" else 1.0
        back, ahead = convolution_reach(model)
        radius = analysis_radius([self.features, self.loudness])
        hop = self.hop
        self.needs = StreamingNeeds(left_context=max((back + 1) * hop + radius, PITCH_TRACKER_REACH),
                                    lookahead=(ahead + 1) * hop, analysis_delay=-(-radius // hop) * hop)
        self.norms = RunningInstanceNorm(model)
        self.runner: Callable[..., torch.Tensor] | None = None  # ONNX Runtime's generator (--backend onnx)
        self.noise_seed = noise_seed

    def start(self) -> SourceState:
        return SourceState()

    def step(self, window: torch.Tensor, window_start: int, output: slice, state: SourceState
             ) -> tuple[torch.Tensor, SourceState]:
        hop, rate = self.hop, self.sample_rate
        frames = window.shape[0] // hop
        first_frame = window_start // hop
        samples = window.numpy()
        features = torch.from_numpy(self.analysed(self.features, state.mel, samples, window_start)[:, :frames]).float()
        loudness = torch.from_numpy(self.analysed(self.loudness, state.loudness, samples, window_start)[0, :frames])
        # F0 frames too, once settled: swift-f0's frame reads PITCH_TRACKER_REACH samples either way.
        pitch = state.pitch.frames(lambda part: self.pitch.extract(part, rate), samples, window_start, hop,
                                   -(-PITCH_TRACKER_REACH // hop) * hop)
        f0, voiced = torch.from_numpy(np.ascontiguousarray(pitch[:, :frames])).float()
        final_frame = first_frame + output.stop // hop  # frames before this one are final in this window
        new = slice(max(state.counted_until, first_frame, 0) - first_frame, max(final_frame - first_frame, 0))
        target = self.target_f0(f0, voiced, state, new)
        sounding = target * (voiced > 0.5).float()
        noise = state.noise_for(first_frame, frames, hop, self.noise_seed)
        advances = frame_advances(sounding, rate, hop)
        reference_frame = first_frame + output.start // hop
        start_phase = state.window_phase(first_frame, reference_frame, advances)
        phase = torch.tensor([start_phase])
        inputs = [tensor.unsqueeze(0) for tensor in (features, target, voiced, loudness)]
        wave = self.norms.run(state.moments, new, lambda: self.run_model(*inputs, noise.unsqueeze(0), phase))
        state.remember_phases(first_frame, start_phase, advances, reference_frame, final_frame)
        state.counted_until = max(state.counted_until, final_frame)
        return wave[0, output], state

    def analysed(self, extractor: Any, store: FrameStore, samples: np.ndarray, window_start: int) -> np.ndarray:
        """A window's frames of a centred feature (the log-mel, the loudness), each computed once with its
        whole analysis window (FrameStore); another feature (a pretrained encoder's content, whose frames
        read far more than a window) from the window each block."""
        radius = int(getattr(extractor.settings, "n_fft", 0)) // 2
        if radius == 0:
            return extractor.extract(samples, self.sample_rate)
        return store.frames(lambda part: extractor.extract(part, self.sample_rate), samples, window_start, self.hop,
                            -(-radius // self.hop) * self.hop)

    def run_model(self, features: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, loudness: torch.Tensor,
                  noise: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """The model's forward; with ONNX Runtime (`use_runner`) the generator runs there and the
        content encoder, whose normalisations take the stream's running statistics, in PyTorch."""
        if self.runner is None:
            return self.model(features, f0, voiced, loudness, self.speaker, noise, phase)
        flag = (voiced > 0.5).to(f0.dtype)
        frames = torch.cat([self.model.content(features), self.model.controls(f0, flag, loudness)], dim=1)
        return self.runner(frames, f0 * flag, noise.flatten(1), self.model.speakers(self.speaker), phase)

    def onnx_module(self) -> tuple[nn.Module, tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]:
        """The generator (frames, sounding F0, noise, speaker vector, initial phase -> wave) with example
        inputs, input names and dynamic axes, for `--backend onnx`."""
        generator = self.model.generator
        frames = 40
        channels = generator.backbone.embed.in_channels
        generator_inputs = (torch.randn(1, channels, frames), 100.0 + 100.0 * torch.rand(1, frames),
                            torch.randn(1, frames * self.hop), self.model.speakers(self.speaker), torch.tensor([0.25]))
        names = ["frames", "f0", "noise", "condition", "initial_phase"]
        dynamic = {"frames": {2: "frames"}, "f0": {1: "frames"}, "noise": {1: "samples"}, "output": {1: "samples"}}
        return generator, generator_inputs, names, dynamic

    def use_runner(self, runner: Callable[..., torch.Tensor]) -> None:
        self.runner = runner

    def target_f0(self, f0: torch.Tensor, voiced: torch.Tensor, state: SourceState, new: slice) -> torch.Tensor:
        is_voiced = (voiced > 0.5) & (f0 > 0)
        if self.target_pitch is None:
            return torch.where(is_voiced, f0 * self.factor, torch.zeros_like(f0))
        state.add_pitch(f0[new], voiced[new])
        source = state.pitch_range()
        if source is None:  # no voiced frame yet: nothing to map from, and nothing voiced to map
            return torch.where(is_voiced, f0, torch.zeros_like(f0))
        return map_pitch(f0, voiced, source, self.target_pitch)
