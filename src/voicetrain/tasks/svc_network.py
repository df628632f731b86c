"""The svc recipe's settings (the keys of conf/task/svc.yaml) and network (`task=svc`,
voicetrain.tasks.svc; the task imports both from here): a content encoder over the input
features, a speaker embedding, and a source-filter generator that follows the given F0, with the
training set's statistics in buffers so an export needs no dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from voicetrain.config import limits
from voicetrain.tasks.layers.generators import SourceFilterGenerator
from voicetrain.tasks.transpose import LOG_F0_FLOOR_HZ
from voicetrain.tasks.vc_network import ContentBlock


@dataclass
class SingingVoiceConversionSettings:
    """The keys of conf/task/svc.yaml (which holds their values: the one source of defaults)."""

    content: Literal["mel", "content"]  # what the content encoder reads: the log-mel or features.content
    hidden_channels: int = limits(minimum=1)
    bottleneck_channels: int = limits(minimum=1)
    encoder_layers: int = limits(minimum=1)
    kernel_size: int = limits(minimum=1)
    speaker_channels: int = limits(minimum=1)
    generator_channels: int = limits(minimum=1)
    generator_intermediate_channels: int = limits(minimum=1)
    generator_layers: int = limits(minimum=1)
    filter_bins: int = limits(minimum=3)  # bands of each learned filter, 0 Hz to Nyquist
    segment_frames: int = limits(minimum=1)  # training crop length in frames
    stft_resolutions: list[list[int]] = limits()  # (n_fft, hop, window) of each MR-STFT loss resolution
    mel_weight: float = limits(minimum=0)  # weight of the log-mel L1 next to the MR-STFT loss (0: off)
    validation_pairs: int = limits(minimum=0)  # held-out parallel conversions scored per validation
    validation_utterances: int = limits(minimum=0)  # held-out reconstructions scored by val/mrstft
    # Convolutions that read no future frame (streaming with no lookahead in the layers).
    causal: bool

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"SingingVoiceConversionSettings.kernel_size={self.kernel_size!r}: must be odd "
                             "(same-length convolutions), e.g. 5")
        for resolution in self.stft_resolutions:
            if len(resolution) != 3 or resolution[2] > resolution[0] or min(resolution) < 1:
                raise ValueError(f"SingingVoiceConversionSettings.stft_resolutions entry {resolution!r}: give "
                                 "[n_fft, hop, window] with window <= n_fft, e.g. [1024, 256, 1024]")



# The noise filter starts almost closed (exp_sigmoid(-3) ~ 2e-3): at exp_sigmoid(0) ~ 0.4 white noise
# would be ten times louder than the pulse train, and an untrained model would sound unvoiced.
NOISE_FILTER_INITIAL_BIAS = -3.0


class SourceFilterConversionModel(nn.Module):
    """forward(features [B, C, F], f0 [B, F] Hz, voiced [B, F], loudness [B, F] dB, speaker [B],
    noise [B, F, hop]) -> wave [B, F * hop] in `speaker`'s voice, at F0 wherever voiced."""

    def __init__(self, settings: SingingVoiceConversionSettings, input_channels: int, n_speakers: int,
                 sample_rate: int, hop_length: int, statistics: dict[str, dict[str, Any]], input_feature: str):
        super().__init__()
        # Statistics live in buffers so exports carry them and inference needs no dataset.
        inputs = statistics[input_feature]
        self.register_buffer("input_mean", torch.tensor(inputs["mean"], dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("input_std", torch.tensor(inputs["std"], dtype=torch.float32).view(1, -1, 1))
        for name, feature in (("log_f0", "f0"), ("loudness", "loudness")):
            self.register_buffer(f"{name}_mean", torch.tensor(float(statistics[feature]["mean"][0])))
            self.register_buffer(f"{name}_std", torch.tensor(float(statistics[feature]["std"][0])))
        hidden = settings.hidden_channels
        self.encoder_input = nn.Conv1d(input_channels, hidden, 1)
        self.encoder = nn.ModuleList(ContentBlock(hidden, settings.kernel_size, settings.causal)
                                     for _ in range(settings.encoder_layers))
        self.bottleneck = nn.Conv1d(hidden, settings.bottleneck_channels, 1)
        self.speakers = nn.Embedding(n_speakers, settings.speaker_channels)
        self.generator = SourceFilterGenerator(
            settings.bottleneck_channels + 3, sample_rate, hop_length, settings.generator_channels,
            settings.generator_intermediate_channels, settings.generator_layers, settings.filter_bins,
            settings.speaker_channels, causal=settings.causal)
        with torch.no_grad():
            self.generator.filters.bias[settings.filter_bins:].fill_(NOISE_FILTER_INITIAL_BIAS)

    def content(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder_input((features - self.input_mean) / self.input_std)
        for block in self.encoder:
            hidden = block(hidden)
        return self.bottleneck(hidden)

    def controls(self, f0: torch.Tensor, voiced: torch.Tensor, loudness: torch.Tensor) -> torch.Tensor:
        """[B, 3, F]: normalised log-F0 (0 where unvoiced), the voiced flag, normalised loudness."""
        log_f0 = (torch.log(f0.clamp(min=LOG_F0_FLOOR_HZ)) - self.log_f0_mean) / self.log_f0_std
        return torch.stack([log_f0 * voiced, voiced, (loudness - self.loudness_mean) / self.loudness_std], dim=1)

    def forward(self, features: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor, loudness: torch.Tensor,
                speaker: torch.Tensor, noise: torch.Tensor, initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        # A tracker set to `unvoiced: interpolate` leaves F0 on unvoiced frames: the flag decides.
        voiced = (voiced > 0.5).to(f0.dtype)
        frames = torch.cat([self.content(features), self.controls(f0, voiced, loudness)], dim=1)
        return self.generator(frames, f0 * voiced, noise.flatten(1), self.speakers(speaker), initial_phase)
