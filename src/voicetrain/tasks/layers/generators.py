"""Frame-rate networks that make waveforms, small enough to train on a CPU: a ConvNeXt backbone
(Vocos), optionally conditioned on a vector such as a speaker embedding; an iSTFT head; and two
generators built from them, `VocosGenerator` (log-mel -> wave) and `SourceFilterGenerator`
(features + F0 -> wave through a filtered pulse train and filtered noise, DDSP-SVC's "CombSub").

Output length rule for both: `frames` input frames make exactly `frames * hop` samples, frame i
centred on sample i * hop, so the frames [a, b) of a crop match the samples [a * hop, b * hop).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from voicetrain.tasks.layers.causal import convolution
from voicetrain.tasks.layers.spectral import istft
from voicetrain.tasks.layers.synthesis import combtooth, time_varying_filter

LOG_MAGNITUDE_CEILING = math.log(100.0)  # Vocos's clip: a wild early step cannot overflow exp


class ConditionalLayerNorm(nn.Module):
    """LayerNorm over the last axis whose scale and shift come from a condition vector when
    `condition_dim` > 0 (adaptive LayerNorm), or are learned constants otherwise."""

    def __init__(self, dim: int, condition_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim, elementwise_affine=condition_dim == 0)
        self.modulation = nn.Linear(condition_dim, 2 * dim) if condition_dim else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.modulation is None:
            return x
        if condition is None:
            raise ValueError("this layer was built with condition_dim > 0; pass a condition [B, condition_dim]")
        scale, shift = self.modulation(condition).unsqueeze(1).chunk(2, dim=-1)
        return x * (1 + scale) + shift


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (kernel 7) -> norm -> pointwise expand -> GELU -> pointwise -> layer scale,
    residual: [B, dim, F] -> [B, dim, F]."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float = 1e-2, condition_dim: int = 0,
                 causal: bool = False) -> None:
        super().__init__()
        self.depthwise = convolution(dim, dim, 7, causal, groups=dim)
        self.norm = ConditionalLayerNorm(dim, condition_dim)
        self.expand = nn.Linear(dim, intermediate_dim)
        self.project = nn.Linear(intermediate_dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        y = self.depthwise(x).transpose(1, 2)
        y = self.project(nn.functional.gelu(self.expand(self.norm(y, condition))))
        return x + (self.scale * y).transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    """Input conv (kernel 7) then ConvNeXt blocks at frame rate: [B, C_in, F] -> [B, dim, F]."""

    def __init__(self, input_channels: int, dim: int = 128, intermediate_dim: int = 384, layers: int = 4,
                 condition_dim: int = 0, causal: bool = False) -> None:
        super().__init__()
        self.embed = convolution(input_channels, dim, 7, causal)
        self.first_norm = ConditionalLayerNorm(dim, condition_dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, intermediate_dim, 1 / layers, condition_dim, causal)
                                    for _ in range(layers))
        self.last_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        x = self.first_norm(self.embed(x).transpose(1, 2), condition).transpose(1, 2)
        for block in self.blocks:
            x = block(x, condition)
        return self.last_norm(x.transpose(1, 2)).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Frame features [B, dim, F] -> log-magnitude and phase per bin -> `istft` -> wave [B, F * hop]."""

    window: torch.Tensor

    def __init__(self, dim: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.bins = n_fft // 2 + 1
        self.project = nn.Linear(dim, 2 * self.bins)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_magnitude, phase = self.project(x.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(torch.clamp(log_magnitude, max=LOG_MAGNITUDE_CEILING))
        return istft(magnitude, phase, self.hop_length, self.window)


class VocosGenerator(nn.Module):
    """Log-mel [B, n_mels, F] -> wave [B, F * hop]: a ConvNeXt backbone and an iSTFT head."""

    def __init__(self, n_mels: int, hop_length: int, n_fft: int = 1024, dim: int = 128, intermediate_dim: int = 384,
                 layers: int = 4) -> None:
        super().__init__()
        self.backbone = ConvNeXtBackbone(n_mels, dim, intermediate_dim, layers)
        self.head = ISTFTHead(dim, n_fft, hop_length)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(log_mel))


class SourceFilterGenerator(nn.Module):
    """Features [B, C, F] + F0 [B, F] (Hz, <= 0 unvoiced) + noise [B, F * hop] -> wave [B, F * hop].

    A ConvNeXt backbone predicts, per frame, a log-magnitude response for the harmonic part and one
    for the noise part (`filter_bins` bands from 0 Hz to Nyquist). The harmonic part is a
    band-limited pulse train at F0 (`combtooth`) through the first, the noise part the given noise
    through the second, both by `time_varying_filter`'s windowed overlap-add. F0 decides the pitch
    outright, so voiced frames stay voiced from the first step, and transposition is a
    multiplication of F0. `noise_gain` sets the starting balance: unit pulses at ~130 Hz carry about
    0.09 RMS and unit noise 1, so the default 1/128 starts the noise ~20 dB under the harmonics,
    DDSP-SVC's choice (without it the noise branch, louder from the start, takes over the voice).
    `condition_dim` > 0 adds a conditioning vector (e.g. a speaker embedding) to every norm.
    """

    def __init__(self, input_channels: int, sample_rate: int, hop_length: int, dim: int = 128,
                 intermediate_dim: int = 384, layers: int = 4, filter_bins: int = 65, condition_dim: int = 0,
                 noise_gain: float = 1 / 128, causal: bool = False) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.noise_gain = noise_gain
        self.backbone = ConvNeXtBackbone(input_channels, dim, intermediate_dim, layers, condition_dim, causal)
        self.filters = nn.Linear(dim, 2 * filter_bins)

    def forward(self, features: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor,
                condition: torch.Tensor | None = None, initial_phase: torch.Tensor | None = None) -> torch.Tensor:
        """`initial_phase` [B] cycles: the pulse train's phase at sample 0 (a chunk of a longer
        input starts where the previous one left off; see voicetrain.chunking)."""
        hidden = self.backbone(features, condition).transpose(1, 2)
        log_responses = torch.clamp(self.filters(hidden), max=LOG_MAGNITUDE_CEILING)
        harmonic_response, noise_response = torch.exp(log_responses).chunk(2, dim=-1)
        pulses = combtooth(f0, self.sample_rate, self.hop_length, initial_phase)
        harmonic = time_varying_filter(pulses, harmonic_response, self.hop_length)
        return harmonic + time_varying_filter(noise * self.noise_gain, noise_response, self.hop_length)
