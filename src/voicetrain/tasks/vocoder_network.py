"""The vocoder recipe's settings (the keys of conf/task/vocoder.yaml) and networks (`task=vocoder`,
voicetrain.tasks.vocoder; the task imports both from here): the generator (log-mel +
F0 + noise -> wave), the pitch predictor (log-mel -> F0 and voicing), the inference graph over
both, and the discriminators used in training only.

`MelGenerator` builds the head named by `task.generator`: the iSTFT head starts from the log-mel's
pseudo-inverse magnitudes (rebuilt from the mel settings, not saved), the source-filter one from
the normalised log-mel alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from voicetrain.audio import LOG_FLOOR, mel_filterbank
from voicetrain.config import limits
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.layers.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from voicetrain.tasks.layers.generators import SourceFilterGenerator
from voicetrain.tasks.layers.istft_generator import HarmonicISTFTGenerator
from voicetrain.tasks.layers.pitch import PitchPredictor, f0_from_prediction
from voicetrain.tasks.layers.statistics import register_mel_statistics



@dataclass
class VocoderSettings:
    """The keys of conf/task/vocoder.yaml (which holds their values: the one source of defaults)."""

    generator: Literal["istft", "source_filter"]  # HarmonicISTFTGenerator or SourceFilterGenerator
    generator_channels: int = limits(minimum=1)
    generator_intermediate_channels: int = limits(minimum=1)
    generator_layers: int = limits(minimum=1)
    filter_bins: int = limits(minimum=3)  # source_filter: bands of each learned filter, 0 Hz to Nyquist
    istft_n_fft: int = limits(minimum=2)  # istft: STFT size of the head (>= 2 x hop)
    pitch_channels: int = limits(minimum=1)
    pitch_intermediate_channels: int = limits(minimum=1)
    pitch_layers: int = limits(minimum=1)
    segment_frames: int = limits(minimum=1)  # training crop length in frames
    stft_resolutions: list[list[int]] = limits()  # (n_fft, hop, window) of each MR-STFT loss resolution
    mel_weight: float = limits(minimum=0)  # log-mel L1
    stft_weight: float = limits(minimum=0)  # multi-resolution STFT loss
    pitch_weight: float = limits(minimum=0)  # the predictor's log-F0 L1 and voicing cross-entropy
    adversarial_start_step: int = limits(minimum=0)  # first step with discriminators
    adversarial_weight: float = limits(minimum=0)  # least-squares GAN loss of the generator
    feature_matching_weight: float = limits(minimum=0)
    discriminator_periods: list[int] = limits()  # multi-period discriminator (HiFi-GAN: 2, 3, 5, 7, 11)
    period_channels: list[int] = limits()  # widths of each period discriminator's convolutions
    discriminator_resolutions: list[list[int]] = limits()  # multi-resolution discriminator: [n_fft, hop, window]
    resolution_channels: int = limits(minimum=1)
    validation_utterances: int = limits(minimum=1)  # held-out recordings resynthesised and scored

    def __post_init__(self) -> None:
        for key in ("stft_resolutions", "discriminator_resolutions"):
            for resolution in getattr(self, key):
                if len(resolution) != 3 or resolution[2] > resolution[0] or min(resolution) < 1:
                    raise ValueError(f"VocoderSettings.{key} entry {resolution!r}: give [n_fft, hop, window] with "
                                     "window <= n_fft, e.g. [1024, 256, 1024]")
        if not self.discriminator_periods or min(self.discriminator_periods) < 2:
            raise ValueError(f"VocoderSettings.discriminator_periods={self.discriminator_periods!r}: give periods of "
                             "2 samples or more, e.g. [2, 3, 5, 7, 11]")
        if len(self.period_channels) < 2 or min(self.period_channels) < 1:
            raise ValueError(f"VocoderSettings.period_channels={self.period_channels!r}: give two or more positive "
                             "widths, e.g. [8, 32, 64, 64]")



class MelGenerator(nn.Module):
    """forward(log_mel [B, n_mels, F], f0 [B, F] Hz (0 unvoiced), noise [B, F, hop]) -> wave [B, F * hop]."""

    def __init__(self, settings: VocoderSettings, context: TaskContext):
        super().__init__()
        register_mel_statistics(self, context.mel_mean, context.mel_std)
        channels, rate, hop = len(context.mel_mean), context.sample_rate, context.hop_length
        self.generator: nn.Module
        self.inverse_filterbank: torch.Tensor | None
        self.register_buffer("inverse_filterbank", None, persistent=False)
        if settings.generator == "istft":
            if settings.istft_n_fft != context.features.n_fft or settings.istft_n_fft < 2 * hop:
                raise ValueError(f"task.istft_n_fft={settings.istft_n_fft}: the head starts from the log-mel's "
                                 f"linear magnitudes, so set it to features.mel.n_fft={context.features.n_fft} "
                                 f"(at least twice the hop, {hop} samples)")
            # Not saved: rebuilt from the mel settings, so checkpoints hold learned weights only.
            inverse = torch.linalg.pinv(mel_filterbank(context.features).double()).float()
            self.register_buffer("inverse_filterbank", inverse, persistent=False)
            self.generator = HarmonicISTFTGenerator(channels, rate, hop, settings.istft_n_fft,
                                                    settings.generator_channels,
                                                    settings.generator_intermediate_channels, settings.generator_layers)
        else:
            self.generator = SourceFilterGenerator(channels, rate, hop, settings.generator_channels,
                                                   settings.generator_intermediate_channels,
                                                   settings.generator_layers, settings.filter_bins)

    def forward(self, log_mel: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor,
                initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        features = (log_mel - self.mel_mean) / self.mel_std
        if self.inverse_filterbank is None:
            return self.generator(features, f0, noise.flatten(1), initial_phase=initial_phase)
        # The log-mel's linear magnitudes by the filterbank's pseudo-inverse (Griffin-Lim's), floored
        # at the log-mel's own floor.
        prior = torch.log(torch.clamp(self.inverse_filterbank.to(log_mel.dtype) @ torch.exp(log_mel), min=LOG_FLOOR))
        return self.generator(features, f0, noise.flatten(1), initial_phase=initial_phase,
                              prior_log_magnitude=prior)


class MelPitch(nn.Module):
    """forward(log_mel [B, n_mels, F]) -> (log-F0 [B, F] in log-Hz, voiced logit [B, F])."""

    def __init__(self, settings: VocoderSettings, context: TaskContext):
        super().__init__()
        register_mel_statistics(self, context.mel_mean, context.mel_std)
        self.predictor = PitchPredictor(len(context.mel_mean), settings.pitch_channels,
                                        settings.pitch_intermediate_channels, settings.pitch_layers)

    def forward(self, log_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictor((log_mel - self.mel_mean) / self.mel_std)

    def f0(self, log_mel: torch.Tensor) -> torch.Tensor:
        """The predicted F0 [B, F] in Hz, 0 where unvoiced."""
        return f0_from_prediction(*self(log_mel))


class VocoderGraph(nn.Module):
    """The inference graph over the two inference modules: forward(log_mel, f0, noise) -> wave,
    where F0 below 0 is replaced by the predicted F0 (see the module docstring)."""

    def __init__(self, pitch: MelPitch, generator: MelGenerator):
        super().__init__()
        self.pitch = pitch
        self.generator = generator

    def forward(self, log_mel: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        f0 = torch.where(f0 < 0, self.pitch.f0(log_mel), f0)
        return self.generator(log_mel, f0, noise)


class WaveDiscriminator(nn.Module):
    """Multi-period and multi-resolution discriminators side by side: wave [B, S] -> (one logit
    tensor per sub-discriminator, each one's intermediate activations)."""

    def __init__(self, settings: VocoderSettings):
        super().__init__()
        self.periods = MultiPeriodDiscriminator(settings.discriminator_periods, settings.period_channels)
        self.resolutions = MultiResolutionDiscriminator(settings.discriminator_resolutions,
                                                        settings.resolution_channels)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        period_logits, period_features = self.periods(wave)
        resolution_logits, resolution_features = self.resolutions(wave)
        return period_logits + resolution_logits, period_features + resolution_features


@contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """The module without gradients for its own parameters, as a bare module: the generator's
    adversarial loss must leave nothing in the discriminator's gradients (its optimizer would apply
    them), and a distributed wrapper would wait for gradients that never come."""
    bare = getattr(module, "module", module)  # DistributedDataParallel keeps the model in .module
    for parameter in bare.parameters():
        parameter.requires_grad_(False)
    try:
        yield bare
    finally:
        for parameter in bare.parameters():
            parameter.requires_grad_(True)
