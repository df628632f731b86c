"""GAN discriminators for waveforms: multi-period (HiFi-GAN) and multi-resolution spectrogram
(UnivNet, Vocos). Each takes waves [B, S] and returns (logits, features): one flattened logit
tensor [B, n] per sub-discriminator and, per sub-discriminator, the list of its intermediate
activations (for feature matching). Channel widths are arguments, so a CPU recipe can run them
small; the defaults are HiFi-GAN's and Vocos's."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils.parametrizations import weight_norm

from voicetrain.tasks.layers.spectral import stft_magnitude

LEAKY_SLOPE = 0.1
Outputs = tuple[list[torch.Tensor], list[list[torch.Tensor]]]


def run_stack(layers: nn.ModuleList, last: nn.Module, signal: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    features = []
    for layer in layers:
        signal = functional.leaky_relu(layer(signal), LEAKY_SLOPE)
        features.append(signal)
    signal = last(signal)
    features.append(signal)
    return signal.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Looks at every `period`-th sample: the wave is folded to [B, 1, S / period, period] and 2-D
    convolutions run along the first axis only."""

    def __init__(self, period: int, channels: Sequence[int] = (32, 128, 512, 1024, 1024), kernel_size: int = 5,
                 stride: int = 3) -> None:
        super().__init__()
        self.period = period
        widths = [1, *channels]
        strides = [stride] * (len(channels) - 1) + [1]
        self.layers = nn.ModuleList(
            weight_norm(nn.Conv2d(inputs, outputs, (kernel_size, 1), (step, 1), padding=(kernel_size // 2, 0)))
            for inputs, outputs, step in zip(widths[:-1], widths[1:], strides))
        self.last = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, samples = wave.shape
        # Right padding by reflection up to a multiple of the period (HiFi-GAN's rule), written
        # as a modulo of the length so it stays symbolic in an exported graph.
        missing = (self.period - samples % self.period) % self.period
        padded = functional.pad(wave.unsqueeze(1), (0, missing), mode="reflect")
        folded = padded.reshape(batch, 1, -1, self.period)
        return run_stack(self.layers, self.last, folded)


class MultiPeriodDiscriminator(nn.Module):
    """One PeriodDiscriminator per period (HiFi-GAN: 2, 3, 5, 7, 11)."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11),
                 channels: Sequence[int] = (32, 128, 512, 1024, 1024), kernel_size: int = 5, stride: int = 3) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(period, channels, kernel_size, stride)
                                            for period in periods)

    def forward(self, wave: torch.Tensor) -> Outputs:
        outputs = [discriminator(wave) for discriminator in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]


class ResolutionDiscriminator(nn.Module):
    """2-D convolutions over a magnitude spectrogram [B, 1, frames, bins], strided along frequency
    (UnivNet's MRD as Vocos writes it)."""

    def __init__(self, resolution: Sequence[int], channels: int = 32, layers: int = 4) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = (int(value) for value in resolution)
        widths = [1] + [channels] * layers
        self.layers = nn.ModuleList(
            weight_norm(nn.Conv2d(inputs, outputs, (3, 9), (1, 1 if index == 0 else 2), padding=(1, 4)))
            for index, (inputs, outputs) in enumerate(zip(widths[:-1], widths[1:])))
        self.layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.last = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        magnitude = stft_magnitude(wave, self.n_fft, self.hop_length, self.win_length)
        spectrogram = magnitude.transpose(1, 2).unsqueeze(1)
        return run_stack(self.layers, self.last, spectrogram)


class MultiResolutionDiscriminator(nn.Module):
    """One ResolutionDiscriminator per (n_fft, hop, window); defaults suit 16 kHz."""

    def __init__(self, resolutions: Sequence[Sequence[int]] = ((1024, 256, 1024), (512, 128, 512), (256, 64, 256)),
                 channels: int = 32, layers: int = 4) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(resolution, channels, layers)
                                            for resolution in resolutions)

    def forward(self, wave: torch.Tensor) -> Outputs:
        outputs = [discriminator(wave) for discriminator in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]
