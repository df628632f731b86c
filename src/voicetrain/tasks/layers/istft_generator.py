"""An F0-driven iSTFT generator (Vocos's ConvNeXt backbone and iSTFT head, with HiFTNet's idea of a
harmonic source): log-mel + F0 + noise -> wave, the vocoder recipe's default head.

A pure Vocos head must learn each bin's phase from the log-mel; on a CPU budget of a few thousand
steps it does not, and its output is buzzy or rough where the voice is low. Here the phase comes
from the signal: a band-limited pulse train at F0 (`synthesis.combtooth`) and the given noise are
taken to the STFT domain, mixed per bin with learned gains (and a learned phase for the pulses),
and the output takes that mix's phase with a magnitude the head predicts per bin, as a residual
over the log-mel's pseudo-inverse (where Griffin-Lim starts, and why Griffin-Lim's magnitudes are
hard to beat in few steps). One inverse STFT turns it into the wave. Harmonics sit at k x F0 from
the first step (voiced frames stay voiced, low voices included), and the magnitudes are right from
the first step too.

Both transforms are fixed-basis convolutions (`fourier.ConvSTFT`, `fourier.ConvISTFT`), so the
exported graph has no DFT op. Length rule: F frames make exactly F * hop samples, frame i centred
on sample i * hop (as `generators.SourceFilterGenerator`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from voicetrain.tasks.layers.fourier import ConvISTFT, ConvSTFT
from voicetrain.tasks.layers.generators import LOG_MAGNITUDE_CEILING, ConvNeXtBackbone
from voicetrain.tasks.layers.synthesis import combtooth

PITCH_CHANNELS = 2  # log-F0 (0 where unvoiced) and the voiced flag, appended to the input features
REFERENCE_LOG_HZ = math.log(150.0)  # centres the log-F0 channel on a speaking voice
PHASOR_FLOOR = 1e-8  # added to |mix|^2: unit noise at 1/128 has |STFT| ~0.15, pulses ~4 at a harmonic


def pitch_channels(f0: torch.Tensor) -> torch.Tensor:
    """F0 [B, F] Hz (<= 0 unvoiced) -> [B, 2, F]: log(F0 / 150 Hz) where voiced (0 elsewhere), voiced flag."""
    voiced = (f0 > 0).to(f0.dtype)
    log_f0 = (torch.log(torch.where(f0 > 0, f0, torch.ones_like(f0))) - REFERENCE_LOG_HZ) * voiced
    return torch.stack([log_f0, voiced], dim=1)


class HarmonicISTFTGenerator(nn.Module):
    """Features [B, C, F] + F0 [B, F] (Hz, <= 0 unvoiced) + noise [B, F * hop] -> wave [B, F * hop].

    Per frame and STFT bin the head predicts the output's log-magnitude (added to
    `prior_log_magnitude` when one is given: the log-mel's pseudo-inverse, Griffin-Lim's starting
    point, so training starts from the right magnitudes and learns the detail) and how the phase is
    made: the pulses' spectrum, rotated by a learned phase and weighted by a learned gain, plus the
    noise's spectrum times its own gain; the output takes that mix's phase. Where a bin's pulses
    outweigh its noise the bin is harmonic, elsewhere noisy: a voicing decision per bin.

    `noise_gain` scales the noise before its STFT: unit noise is ~20 dB louder than unit pulses at a
    speaking F0, so 1/128 starts it under the harmonics (as `SourceFilterGenerator`).
    """

    def __init__(self, input_channels: int, sample_rate: int, hop_length: int, n_fft: int = 1024, dim: int = 128,
                 intermediate_dim: int = 384, layers: int = 4, noise_gain: float = 1 / 128) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.noise_gain = noise_gain
        self.bins = n_fft // 2 + 1
        self.backbone = ConvNeXtBackbone(input_channels + PITCH_CHANNELS, dim, intermediate_dim, layers)
        # Per bin: the output's log-magnitude (a residual over the prior), the pulses' log-gain and
        # phase (radians), the noise's log-gain.
        self.head = nn.Linear(dim, 4 * self.bins)
        with torch.no_grad():  # start at the prior's magnitude and the pulses' own phase
            self.head.weight[:self.bins].zero_()
            self.head.bias[:self.bins].zero_()
            self.head.weight[2 * self.bins:3 * self.bins].mul_(0.1)
            self.head.bias[2 * self.bins:3 * self.bins].zero_()
        self.stft = ConvSTFT(n_fft, hop_length)
        self.istft = ConvISTFT(n_fft, hop_length)

    def forward(self, features: torch.Tensor, f0: torch.Tensor, noise: torch.Tensor,
                initial_phase: torch.Tensor | None = None,
                prior_log_magnitude: torch.Tensor | None = None) -> torch.Tensor:
        """`initial_phase` [B] cycles: the pulse train's phase at sample 0 (see voicetrain.chunking).
        `prior_log_magnitude` [B, bins, F]: a first guess of the output's log-magnitude."""
        frames = features.shape[-1]
        hidden = self.backbone(torch.cat([features, pitch_channels(f0).to(features.dtype)], dim=1))
        log_magnitude, log_pulse, phase, log_noise = (
            self.head(hidden.transpose(1, 2)).transpose(1, 2).chunk(4, dim=1))
        if prior_log_magnitude is not None:
            log_magnitude = log_magnitude + prior_log_magnitude
        magnitude = torch.exp(torch.clamp(log_magnitude, max=LOG_MAGNITUDE_CEILING))
        pulse_gain = torch.exp(torch.clamp(log_pulse, max=LOG_MAGNITUDE_CEILING))
        noise_gain = torch.exp(torch.clamp(log_noise, max=LOG_MAGNITUDE_CEILING))
        pulses = combtooth(f0, self.sample_rate, self.hop_length, initial_phase).to(features.dtype)
        # F * hop samples give F + 1 centred frames; the last one is past the output. (Two calls, not
        # one on a doubled batch: splitting a dynamic batch axis again trips the ONNX exporter.)
        pulse_real, pulse_imaginary = (part[..., :frames] for part in self.stft(pulses))
        noise_real, noise_imaginary = (part[..., :frames] for part in
                                       self.stft(noise.to(features.dtype) * self.noise_gain))
        response_real, response_imaginary = pulse_gain * torch.cos(phase), pulse_gain * torch.sin(phase)
        mix_real = pulse_real * response_real - pulse_imaginary * response_imaginary + noise_gain * noise_real
        mix_imaginary = pulse_real * response_imaginary + pulse_imaginary * response_real + noise_gain * noise_imaginary
        # The mix's unit phasor; PHASOR_FLOOR keeps its gradient bounded where the mix is silent.
        scale = magnitude * torch.rsqrt(mix_real.square() + mix_imaginary.square() + PHASOR_FLOOR)
        return self.istft(mix_real * scale, mix_imaginary * scale)
