"""Differentiable signal processing for F0-driven synthesis (DDSP and NSF style), as pure torch
functions with no learnable state: frame-rate controls to sample rate, a harmonic oscillator bank,
a band-limited pulse train, frame-wise time-varying filters (filtered noise), and the NSF sine
source.

Conventions shared by every function here:
- F0 is in Hz per frame, shaped [B, frames]; a frame with F0 <= 0 is unvoiced. It enters as a
  tensor, so transposing by k semitones is `f0 * 2 ** (k / 12)` before the call.
- Other controls are per frame, channels last: [B, frames, channels].
- Frame i is centred on sample i * hop (a centred STFT's frame), so `frames` frames drive the
  samples [0, frames * hop): frames [a, b) of a crop make exactly the samples [a * hop, b * hop).
- Phases are in cycles (1 = 2 pi radians).
- Randomness enters only as a tensor the caller passes (`noise`), never from the global RNG: an
  ONNX graph takes the noise as an input, so PyTorch and ONNX Runtime can be compared on one draw.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from voicetrain.tasks.layers.fourier import constant, inverse_real_dft_matrix, periodic_hann, real_dft_matrix
from voicetrain.tasks.layers.spectral import overlap_add

UPSAMPLE_MODES = ("linear", "hann", "hold")


def next_frame_weights(hop_length: int, mode: str, like: torch.Tensor) -> torch.Tensor:
    """Weight [hop] of frame i + 1 at the samples i * hop + k (frame i gets 1 minus it)."""
    position = torch.arange(hop_length, dtype=like.dtype, device=like.device) / hop_length
    if mode == "linear":
        return position
    if mode == "hann":
        # A raised-cosine crossfade: the overlap-add of a periodic Hann window of 2 * hop samples.
        return torch.sin(position * (math.pi / 2)).square()
    if mode == "hold":
        return torch.zeros_like(position)
    raise ValueError(f"upsample mode={mode!r} is not one of {list(UPSAMPLE_MODES)}; pick one of them")


def upsample(controls: torch.Tensor, hop_length: int, mode: str = "linear") -> torch.Tensor:
    """Frame-rate controls [B, F] or [B, F, C] -> sample rate [B, F * hop] or [B, F * hop, C].

    Sample i * hop + k lies between frames i and i + 1, weighted by `mode` ("linear"
    interpolation, a "hann" crossfade, or "hold" frame i); past the last frame it is held.
    """
    flat = controls.dim() == 2
    current = controls.unsqueeze(-1) if flat else controls
    following = torch.cat([current[:, 1:], current[:, -1:]], dim=1)
    weight = next_frame_weights(hop_length, mode, current)[None, None, :, None]
    samples = (current.unsqueeze(2) + (following - current).unsqueeze(2) * weight).flatten(1, 2)
    return samples.squeeze(-1) if flat else samples


def wrap(phase: torch.Tensor) -> torch.Tensor:
    """Phase in cycles brought to [0, 1)."""
    return phase - torch.floor(phase)


def cumulative_phase(frequency: torch.Tensor, sample_rate: int, block_length: int,
                     initial_phase: torch.Tensor | None = None) -> torch.Tensor:
    """Phase in cycles, in [0, 1), of an oscillator at `frequency` Hz per sample [B, S]:
    phase[n] = initial_phase + sum over m < n of frequency[m] / sample_rate.

    S must be a multiple of `block_length`. The sum runs in two levels, both in float64: within
    blocks, then over the block totals, which grow with the length. In float32 the rounding would
    differ between runtimes (ONNX Runtime sums in another order) by ~1e-5 cycle within a block,
    which moves a pulse train's pulses by ~1e-3 sample, ~1% of a learned filter's output; and over
    the totals it would drift the phase of harmonic k by k times ~1e-5 cycle per minute.
    `initial_phase`: [B] cycles.
    """
    batch = frequency.shape[0]
    steps = (frequency.double() / sample_rate).reshape(batch, -1, block_length)
    inclusive = torch.cumsum(steps, dim=-1)
    within = torch.cat([torch.zeros_like(steps[..., :1]), inclusive[..., :-1]], dim=-1)
    totals = wrap(inclusive[..., -1])
    starts = torch.cat([torch.zeros_like(totals[:, :1]), torch.cumsum(totals, dim=1)[:, :-1]], dim=1)
    if initial_phase is not None:
        starts = starts + initial_phase.double().unsqueeze(1)
    return wrap(wrap(starts).unsqueeze(-1) + within).reshape(batch, -1).to(frequency.dtype)


def harmonic_phases(f0: torch.Tensor, count: int, sample_rate: int, hop_length: int,
                    initial_phase: torch.Tensor | None = None,
                    mode: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    """Phases in cycles [B, F * hop, count] of the harmonics k * F0 (k = 1 .. count) of f0 [B, F]
    Hz, and a 0/1 mask of those that sound: below Nyquist, where F0 > 0. F0 is upsampled by
    `mode`; `initial_phase` [B] is the fundamental's, in cycles (harmonic k starts at k times it)."""
    frequency = upsample(f0, hop_length, mode)
    phase = cumulative_phase(frequency, sample_rate, hop_length, initial_phase)
    numbers = torch.arange(1, count + 1, dtype=f0.dtype, device=f0.device)
    audible = (frequency.unsqueeze(-1) * numbers < sample_rate / 2) & (frequency.unsqueeze(-1) > 0)
    return wrap(phase.unsqueeze(-1) * numbers), audible.to(f0.dtype)


def harmonic_oscillator(f0: torch.Tensor, amplitudes: torch.Tensor, sample_rate: int, hop_length: int,
                        initial_phase: torch.Tensor | None = None, mode: str = "linear") -> torch.Tensor:
    """A bank of sines at k * F0 (k = 1 .. H): f0 [B, F] Hz, amplitudes [B, F, H] -> wave [B, F * hop].

    F0 and amplitudes are upsampled by `mode` and the phase accumulates sample by sample, so a
    glide is smooth. A harmonic at or above Nyquist is silent (no aliasing), and so is every
    harmonic where F0 <= 0. `initial_phase` [B] is the fundamental's, in cycles.
    """
    phases, audible = harmonic_phases(f0, amplitudes.shape[-1], sample_rate, hop_length, initial_phase, mode)
    gains = upsample(amplitudes, hop_length, mode) * audible
    return (gains * torch.sin(2 * math.pi * phases)).sum(-1)


def combtooth(f0: torch.Tensor, sample_rate: int, hop_length: int, initial_phase: torch.Tensor | None = None,
              mode: str = "linear") -> torch.Tensor:
    """A band-limited pulse train at F0: f0 [B, F] Hz -> [B, F * hop], silent where F0 <= 0.

    Each period holds one sinc pulse of unit height centred where the phase wraps, sinc(d) with
    d the distance in samples to the nearest wrap, so all harmonics up to about Nyquist are present
    with equal amplitude (the source of DDSP-SVC's "CombSub"; a filter shapes it into a voice).
    """
    frequency = upsample(f0, hop_length, mode)
    phase = cumulative_phase(frequency, sample_rate, hop_length, initial_phase)
    voiced = frequency > 0
    period = sample_rate / torch.where(voiced, frequency, torch.ones_like(frequency))
    distance = (wrap(phase + 0.5) - 0.5) * period
    return torch.sinc(distance) * voiced.to(f0.dtype)


def frequency_sampling_filters(magnitudes: torch.Tensor) -> torch.Tensor:
    """Linear-phase FIR filters [B, F, 2 * bins - 3] from magnitude responses [B, F, bins] sampled
    evenly from 0 Hz to Nyquist (bins >= 3): the zero-phase impulse response (inverse real FFT),
    centred and tapered by a symmetric Hann window. The delay is bins - 2 samples."""
    bins = magnitudes.shape[-1]
    if bins < 3:
        raise ValueError(f"frequency_sampling_filters needs >= 3 frequency bins, got magnitudes shaped "
                         f"{tuple(magnitudes.shape)}; predict more bands")
    size = 2 * (bins - 1)
    impulse = torch.fft.irfft(torch.complex(magnitudes, torch.zeros_like(magnitudes)), n=size, dim=-1)
    # The last tap (the Nyquist term's lone sample) is dropped so the filter is symmetric.
    centred = torch.cat([impulse[..., size // 2 + 1:], impulse[..., :size // 2]], dim=-1)
    window = torch.hann_window(size - 1, periodic=False, dtype=magnitudes.dtype, device=magnitudes.device)
    return centred * window


@lru_cache(maxsize=16)
def filter_spectrum_matrix(bins: int, size: int) -> np.ndarray:
    """[bins, 2 * (size // 2 + 1)] float64: magnitude responses [.., bins] @ it = the real and imaginary
    parts of the size-point DFT of their `frequency_sampling_filters` (a linear map of the magnitudes,
    so it is that function applied to the identity, here in numpy: a basis must not be traced)."""
    width = 2 * (bins - 1)
    impulses = np.fft.irfft(np.eye(bins), n=width, axis=-1)
    centred = np.concatenate([impulses[:, width // 2 + 1:], impulses[:, :width // 2]], axis=-1)
    filters = centred * np.hanning(width - 1)  # numpy's Hann is the symmetric one
    return filters @ real_dft_matrix(filters.shape[-1], size)


@lru_cache(maxsize=16)
def windowed_dft_matrix(hop_length: int, size: int) -> np.ndarray:
    """[2 * hop, 2 * (size // 2 + 1)]: a segment of 2 * hop samples @ it = the DFT of the segment
    times a periodic Hann window of its length."""
    return periodic_hann(2 * hop_length)[:, None] * real_dft_matrix(2 * hop_length, size)


def filter_delay(bins: int) -> int:
    """Samples by which `frequency_sampling_filters` of `bins` bands delay a signal (half their taps)."""
    return bins - 2


def filtered_segments(segments: torch.Tensor, magnitudes: torch.Tensor, hop_length: int) -> torch.Tensor:
    """Segments [B, N, 2 * hop] of a signal (segment i holds the samples (i - 1) * hop .. (i + 1) * hop of
    it), each times a periodic Hann window of its length and convolved with the
    `frequency_sampling_filters` filter of its magnitude response [B, N, bins] -> [B, N, 2 * hop + taps - 1]:
    the linear convolutions, delay not removed (`time_varying_filter` overlap-adds them, a stream adds
    each block's as it comes). Products of DFTs as matrix products with fixed bases (`fourier`)."""
    bins = magnitudes.shape[-1]
    # A DFT of the linear convolution's full length: no wrap-around, and no larger than it must be.
    length = 2 * hop_length + 2 * bins - 4
    segment_real, segment_imaginary = (segments @ constant(windowed_dft_matrix(hop_length, length),
                                                           segments)).chunk(2, -1)
    filter_real, filter_imaginary = (magnitudes @ constant(filter_spectrum_matrix(bins, length),
                                                           segments)).chunk(2, -1)
    product = torch.cat([segment_real * filter_real - segment_imaginary * filter_imaginary,
                         segment_real * filter_imaginary + segment_imaginary * filter_real], dim=-1)
    return product @ constant(inverse_real_dft_matrix(length, length), segments)


def time_varying_filter(signal: torch.Tensor, magnitudes: torch.Tensor, hop_length: int) -> torch.Tensor:
    """A signal [B, F * hop] (noise for DDSP's filtered noise, a pulse train for a source-filter
    voice) shaped by a magnitude response per frame [B, F, bins] -> [B, F * hop].

    Windowed overlap-add: Hann segments of 2 * hop samples centred on each frame (they sum back to
    the signal) are convolved with that frame's `frequency_sampling_filters` filter, so the response
    crossfades between frames; the filters' delay is removed. A flat response of 1 returns the signal.
    The convolutions are products of DFTs as matrix products with fixed bases (`fourier`): ONNX
    Runtime's DFT op would make the exported graph several times slower than PyTorch.
    """
    batch, frames, bins = magnitudes.shape
    padded = torch.nn.functional.pad(signal, (hop_length, hop_length)).reshape(batch, frames + 2, hop_length)
    segments = torch.cat([padded[:, :-1], padded[:, 1:]], dim=-1)
    responses = torch.cat([magnitudes, magnitudes[:, -1:]], dim=1)
    convolved = filtered_segments(segments, responses, hop_length)
    start = hop_length + filter_delay(bins)
    return overlap_add(convolved, hop_length)[:, start:start + frames * hop_length]


def sine_source(f0: torch.Tensor, noise: torch.Tensor, sample_rate: int, hop_length: int,
                sine_amplitude: float = 0.1, noise_std: float = 0.003,
                initial_phase: torch.Tensor | None = None, mode: str = "linear") -> torch.Tensor:
    """The NSF excitation: sines at k * F0 plus noise, one channel per harmonic.

    f0 [B, F] Hz; noise [B, F * hop, H] standard normal, whose last axis sets the H harmonics.
    Voiced samples (upsampled F0 > 0, below Nyquist for that harmonic) carry a sine of
    `sine_amplitude` plus noise of `noise_std`; elsewhere only noise of sine_amplitude / 3.
    Returns [B, F * hop, H] (a learnable layer usually merges the channels).
    """
    phases, voiced = harmonic_phases(f0, noise.shape[-1], sample_rate, hop_length, initial_phase, mode)
    sines = sine_amplitude * torch.sin(2 * math.pi * phases)
    noise_scale = voiced * noise_std + (1 - voiced) * (sine_amplitude / 3)
    return voiced * sines + noise_scale * noise
