"""Multi-resolution STFT distance: the waveform-domain distance of Parallel WaveGAN and most GAN vocoders.

At each resolution (FFT size, hop, window length; Hann window, centred frames with reflect padding) the distance
is spectral convergence `||S_ref| - |S_cand||_F / ||S_ref||_F` plus the mean absolute difference of the natural
log magnitudes; the result is the mean over resolutions. It compares the waves sample for sample, so they must
share a time line (copy synthesis, a conversion against its target rendered on the same frames); it is not
aligned like an MCD.
"""

from __future__ import annotations

import numpy as np

# (FFT size, hop, window length): the three resolutions of Parallel WaveGAN's auxiliary loss.
DEFAULT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))
# Floor under the power before the square root and the log, as in Parallel WaveGAN: silence stays finite.
POWER_FLOOR = 1e-7


def stft_magnitude(wave: np.ndarray, fft_size: int, hop: int, window_length: int) -> np.ndarray:
    """Magnitude STFT `[fft_size // 2 + 1, frames]` with a Hann window of `window_length` centred in the FFT."""
    # Imported here: librosa is slow to import and only the STFT needs it.
    import librosa

    spectrum = librosa.stft(np.asarray(wave, dtype=np.float64), n_fft=fft_size, hop_length=hop,
                            win_length=window_length, window="hann", center=True, pad_mode="reflect")
    return np.sqrt(np.maximum(np.abs(spectrum) ** 2, POWER_FLOOR))


def multi_resolution_stft_distance(
    reference: np.ndarray, candidate: np.ndarray,
    resolutions: tuple[tuple[int, int, int], ...] = DEFAULT_RESOLUTIONS,
) -> float:
    """Mean over `resolutions` of spectral convergence + log-magnitude L1 between two mono waves (see module).

    0.0 for identical waves; not exactly symmetric, since spectral convergence divides by the reference's norm.
    When the lengths differ, the longer wave is cut to the shorter one.
    """
    reference_wave = np.asarray(reference, dtype=np.float64)
    candidate_wave = np.asarray(candidate, dtype=np.float64)
    if reference_wave.ndim != 1 or candidate_wave.ndim != 1:
        raise ValueError(f"multi_resolution_stft_distance expects two mono waves shaped [samples], got shapes "
                         f"{reference_wave.shape} and {candidate_wave.shape}.")
    length = min(reference_wave.size, candidate_wave.size)
    shortest_usable = max(fft_size for fft_size, _, _ in resolutions) // 2 + 1
    if length < shortest_usable:
        raise ValueError(
            f"multi_resolution_stft_distance needs at least {shortest_usable} samples (half the largest FFT size "
            f"plus one), got {length}; pass shorter resolutions or longer waves."
        )
    if not np.any(reference_wave[:length]):
        raise ValueError("multi_resolution_stft_distance: the reference is silent; spectral convergence is undefined.")
    distances = []
    for fft_size, hop, window_length in resolutions:
        reference_magnitude = stft_magnitude(reference_wave[:length], fft_size, hop, window_length)
        candidate_magnitude = stft_magnitude(candidate_wave[:length], fft_size, hop, window_length)
        convergence = np.linalg.norm(reference_magnitude - candidate_magnitude) / np.linalg.norm(reference_magnitude)
        log_distance = np.mean(np.abs(np.log(reference_magnitude) - np.log(candidate_magnitude)))
        distances.append(convergence + log_distance)
    return float(np.mean(distances))
