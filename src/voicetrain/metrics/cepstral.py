"""Mel-cepstral distortion (MCD) with DTW: the shared distance, and its log-mel variant (`val/logmel_mcd`).

`aligned_cepstral_distance` is the core both MCDs use: DTW over cepstral frames, then the customary dB constant.
The paper-comparable MCD on WORLD mel-cepstra is in `voicetrain.metrics.world`.

Log-mel convention and caveat: the inputs are voicetrain log-mels (natural log of the *magnitude* mel spectrogram,
`[n_mels, frames]`, see `voicetrain.audio`). The cepstrum here is the orthonormal DCT-II of that log-mel, so the
MCD values are on a different scale from papers that compute MCD on mel-generalized cepstra from WORLD/SPTK
(different spectral envelope, frequency warping and log base) and must not be compared with them. What the number
is good for is a comparison inside one setup: MCD(converted, target) next to MCD(source, target) on the same
sentences says how much closer the conversion got to the target speaker.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

# The customary MCD constant: converts the cepstral euclidean distance to decibels.
DECIBEL_FACTOR = 10.0 / math.log(10.0)


def mel_cepstrum(log_mel: np.ndarray, coefficients: int = 13) -> np.ndarray:
    """Cepstral coefficients 1..coefficients of a log-mel: `[n_mels, frames] -> [coefficients, frames]`.

    DCT-II over the mel axis scaled to cepstral coefficients (the orthonormal DCT divided by sqrt(2 n_mels));
    c0 (overall energy) is dropped so that loudness differences do not count.
    """
    values = np.asarray(log_mel, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"mel_cepstrum expects a log-mel shaped [n_mels, frames], got shape {values.shape}.")
    n_mels = values.shape[0]
    if not 1 <= coefficients <= n_mels - 1:
        raise ValueError(
            f"mel_cepstrum coefficients={coefficients} must be between 1 and n_mels - 1 = {n_mels - 1} "
            f"(c0 is dropped); lower it."
        )
    cepstrum = scipy.fft.dct(values, type=2, axis=0, norm="ortho") / math.sqrt(2.0 * n_mels)
    return cepstrum[1 : coefficients + 1]


def mel_cepstral_distortion(
    reference_log_mel: np.ndarray, candidate_log_mel: np.ndarray, coefficients: int = 13
) -> float:
    """MCD in dB between two log-mels `[n_mels, frames]`: `aligned_cepstral_distance` of their `mel_cepstrum`.

    Reported as `val/logmel_mcd`. See the module docstring for why values are not comparable with WORLD/SPTK-based
    MCD in papers.
    """
    reference = np.asarray(reference_log_mel, dtype=np.float64)
    candidate = np.asarray(candidate_log_mel, dtype=np.float64)
    if reference.ndim != 2 or candidate.ndim != 2:
        raise ValueError(
            f"mel_cepstral_distortion expects two log-mels shaped [n_mels, frames], got reference shape "
            f"{reference.shape} and candidate shape {candidate.shape}."
        )
    if reference.shape[0] != candidate.shape[0]:
        raise ValueError(
            f"mel_cepstral_distortion needs the same n_mels on both sides, got reference shape {reference.shape} "
            f"and candidate shape {candidate.shape}; compute both with the same MelSettings."
        )
    if reference.shape[1] == 0 or candidate.shape[1] == 0:
        raise ValueError(
            f"mel_cepstral_distortion needs at least one frame on each side, got reference shape {reference.shape} "
            f"and candidate shape {candidate.shape}."
        )
    return aligned_cepstral_distance(mel_cepstrum(reference, coefficients), mel_cepstrum(candidate, coefficients))


def aligned_cepstral_distance(reference_cepstrum: np.ndarray, candidate_cepstrum: np.ndarray) -> float:
    """MCD in dB between two cepstral sequences `[coefficients, frames]` (c0 already excluded) after DTW.

    The frames are aligned with `librosa.sequence.dtw` on the euclidean distance between cepstral frames, and the
    result is the mean over the warping path of `(10 / ln 10) * sqrt(2 * sum_k (c_ref_k - c_cand_k) ** 2)`.
    Identical inputs give 0.0. Because the path length depends on both sides the value is only nearly symmetric.
    DTW needs `frames_ref * frames_cand` memory, which is fine for utterance-length inputs.
    """
    # Imported here: librosa is slow to import and only DTW needs it.
    import librosa

    _, warping_path = librosa.sequence.dtw(X=reference_cepstrum, Y=candidate_cepstrum, metric="euclidean")
    difference = reference_cepstrum[:, warping_path[:, 0]] - candidate_cepstrum[:, warping_path[:, 1]]
    per_frame = DECIBEL_FACTOR * np.sqrt(2.0 * np.sum(difference**2, axis=0))
    return float(np.mean(per_frame))
