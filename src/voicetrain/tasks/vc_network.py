"""The vc recipe's settings (the keys of conf/task/vc.yaml) and network (`task=vc`,
voicetrain.tasks.vc; the task imports both from here): a content encoder whose blocks end in
instance normalisation (removing the per-channel statistics that carry a speaker's timbre), a narrow
bottleneck, and a decoder that gets the speaker back through adaptive instance normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from voicetrain.config import limits
from voicetrain.tasks.layers.causal import convolution
from voicetrain.tasks.layers.statistics import register_mel_statistics



@dataclass
class VoiceConversionSettings:
    """The keys of conf/task/vc.yaml (which holds their values: the one source of defaults)."""

    hidden_channels: int = limits(minimum=1)
    bottleneck_channels: int = limits(minimum=1)
    speaker_channels: int = limits(minimum=1)
    encoder_layers: int = limits(minimum=1)
    decoder_layers: int = limits(minimum=1)
    kernel_size: int = limits(minimum=1)
    segment_frames: int = limits(minimum=1)  # training crop length in mel frames
    validation_pairs: int = limits(minimum=1)  # held-out (source, target) conversions scored per validation

    def __post_init__(self) -> None:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"VoiceConversionSettings.kernel_size={self.kernel_size!r}: must be odd (same-length "
                             "convolutions), e.g. 5")



class ContentBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, causal: bool = False):
        super().__init__()
        self.convolution = convolution(channels, channels, kernel_size, causal)
        self.normalization = nn.InstanceNorm1d(channels, affine=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # Normalising after the residual sum, not inside the branch, so speaker statistics carried
        # by the skip path are removed too.
        return self.normalization(hidden + functional.gelu(self.convolution(hidden)))


class AdaptiveBlock(nn.Module):
    def __init__(self, channels: int, speaker_channels: int, kernel_size: int):
        super().__init__()
        self.convolution = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.normalization = nn.InstanceNorm1d(channels, affine=False)
        self.style = nn.Linear(speaker_channels, 2 * channels)

    def forward(self, hidden: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(speaker).unsqueeze(-1).chunk(2, dim=1)
        branch = self.normalization(self.convolution(hidden)) * (1 + scale) + shift
        return hidden + functional.gelu(branch)


class VoiceConversionModel(nn.Module):
    """forward(log_mel [B, n_mels, T], speaker [B]) -> log_mel [B, n_mels, T] spoken by `speaker`."""

    def __init__(self, settings: VoiceConversionSettings, n_mels: int, n_speakers: int,
                 mel_mean: list[float], mel_std: list[float]):
        super().__init__()
        hidden = settings.hidden_channels
        register_mel_statistics(self, mel_mean, mel_std)
        self.encoder_input = nn.Conv1d(n_mels, hidden, 1)
        self.encoder = nn.ModuleList(ContentBlock(hidden, settings.kernel_size) for _ in range(settings.encoder_layers))
        self.bottleneck = nn.Conv1d(hidden, settings.bottleneck_channels, 1)
        self.speakers = nn.Embedding(n_speakers, settings.speaker_channels)
        self.decoder_input = nn.Conv1d(settings.bottleneck_channels, hidden, 1)
        self.decoder = nn.ModuleList(
            AdaptiveBlock(hidden, settings.speaker_channels, settings.kernel_size) for _ in range(settings.decoder_layers)
        )
        self.decoder_output = nn.Conv1d(hidden, n_mels, 1)

    def content(self, normalized_mel: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder_input(normalized_mel)
        for block in self.encoder:
            hidden = block(hidden)
        return self.bottleneck(hidden)

    def decode(self, content: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        style = self.speakers(speaker)
        hidden = self.decoder_input(content)
        for block in self.decoder:
            hidden = block(hidden, style)
        return self.decoder_output(hidden)

    def forward(self, log_mel: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        normalized = (log_mel - self.mel_mean) / self.mel_std
        return self.decode(self.content(normalized), speaker) * self.mel_std + self.mel_mean
