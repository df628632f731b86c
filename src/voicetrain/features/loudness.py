"""The loudness extractor: the level of each frame in dB relative to a full-scale RMS of 1, either
A-weighted (the ear's sensitivity: DDSP's loudness feature) or plain RMS, on the mel's framing
(Hann windows of n_fft samples centred on sample j * hop_length, reflect-padded at the edges).

Both are calibrated to read the same on a 1 kHz sine, where the A-weighting is 0 dB: the mean
square of the windowed frame (divided by the window's mean square), from the time samples for RMS
and by Parseval from the weighted power spectrum for A-weighting. A sine of amplitude a reads
20 log10(a / sqrt(2)) dB, so a full-scale 1 kHz sine reads about -3 dB; silence reads floor_db.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from voicetrain.features.base import FeatureExtractor
from voicetrain.features.checks import check_wave, number_in_range, one_of, positive_integer

METHODS = ("a_weighted", "rms")
# Bump when the computation below changes (not its settings): it is part of the cache key.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LoudnessSettings:
    """method: a_weighted or rms. n_fft: the Hann window in samples (the mel's n_fft keeps the two
    on one framing). floor_db: the level of silence; quieter frames read this."""

    method: Literal["a_weighted", "rms"]
    n_fft: int
    floor_db: float

    def __post_init__(self) -> None:
        owner = type(self).__name__
        one_of(owner, "method", self.method, METHODS)
        positive_integer(owner, "n_fft", self.n_fft)
        number_in_range(owner, "floor_db", self.floor_db, -300.0, 0.0, "-100 is below 16-bit PCM's noise")


def centred_frames(wave: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """[frames, n_fft] views of the reflect-padded wave, frame j centred on sample j * hop_length
    (torch.stft's center=True framing, so the count is samples // hop_length + 1)."""
    padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]


@functools.lru_cache(maxsize=8)
def spectrum_weights(n_fft: int, sample_rate: int, method: str) -> np.ndarray:
    """Per-bin power weights of a one-sided spectrum such that the weighted sum equals the windowed
    frame's mean square times n_fft (Parseval): 2 for the bins a two-sided spectrum counts twice, 1
    for DC and Nyquist, times the A-weighting as a power ratio."""
    # Imported here: librosa is slow to import and only this function needs it.
    import librosa

    bins = n_fft // 2 + 1
    weights = np.full(bins, 2.0)
    weights[0] = 1.0
    if n_fft % 2 == 0:
        weights[-1] = 1.0
    if method == "a_weighted":
        frequencies = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
        # The A-curve is -inf dB at 0 Hz: DC carries no weight.
        weights[0] = 0.0
        weights[1:] *= 10.0 ** (librosa.A_weighting(frequencies[1:], min_db=None) / 10.0)
    return weights


def frame_levels(wave: np.ndarray, sample_rate: int, hop_length: int, settings: LoudnessSettings) -> np.ndarray:
    """[frames] level in dB of each centred Hann-windowed frame, floored at settings.floor_db."""
    window = np.hanning(settings.n_fft + 1)[:-1]  # periodic, as torch.hann_window
    frames = centred_frames(wave, settings.n_fft, hop_length) * window
    window_power = np.square(window).sum()
    if settings.method == "rms":
        mean_square = np.square(frames).sum(axis=1) / window_power
    else:
        power = np.square(np.abs(np.fft.rfft(frames, axis=1)))
        mean_square = power @ spectrum_weights(settings.n_fft, sample_rate, settings.method) / (
            settings.n_fft * window_power)
    floor_power = 10.0 ** (settings.floor_db / 10.0)
    return 10.0 * np.log10(np.maximum(mean_square, floor_power))


class Loudness(FeatureExtractor):
    """[1, frames] float32 level in dB (A-weighted or RMS), floored at floor_db."""

    Settings = LoudnessSettings

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        samples = check_wave("Loudness", wave, sample_rate, self.sample_rate, self.settings.n_fft // 2 + 1)
        return frame_levels(samples, sample_rate, self.hop_length, self.settings)[None, :].astype(np.float32)

    def channels(self) -> int:
        return 1

    def identity(self) -> dict[str, Any]:
        # voicetrain's own computation (numpy's FFT, librosa's A-curve formula): keyed by its version.
        return {**super().identity(), "format_version": FORMAT_VERSION}
