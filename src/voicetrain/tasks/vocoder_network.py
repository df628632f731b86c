"""The vocoder recipe's networks (`task=vocoder`, voicetrain.tasks.vocoder): the generator (log-mel +
F0 + noise -> wave), the pitch predictor (log-mel -> F0 and voicing), the inference graph over
both, and the discriminators used in training only.

`MelGenerator` builds the head named by `task.generator`: the iSTFT head starts from the log-mel's
pseudo-inverse magnitudes (rebuilt from the mel settings, not saved), the source-filter one from
the normalised log-mel alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from voicetrain.audio import LOG_FLOOR, mel_filterbank
from voicetrain.tasks.base import TaskContext
from voicetrain.tasks.layers.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator
from voicetrain.tasks.layers.generators import SourceFilterGenerator
from voicetrain.tasks.layers.istft_generator import HarmonicISTFTGenerator
from voicetrain.tasks.layers.pitch import PitchPredictor, f0_from_prediction
from voicetrain.tasks.layers.statistics import register_mel_statistics

if TYPE_CHECKING:  # the settings live with the task; the task imports this module
    from voicetrain.tasks.vocoder import VocoderSettings


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
