"""Levels: loudness normalisation with a peak ceiling, and the checks that leave a clip out.

Loudness is ITU-R BS.1770 integrated loudness (pyloudnorm). A clip is brought to
`loudness.target_lufs` by a gain; peaks the gain would push above `loudness.peak_db` are held
down by a limiter whose gain never exceeds what each sample needs (a minimum filter followed by a
moving average of the same width), and the gain is corrected until the limited clip measures
within LOUDNESS_TOLERANCE_LU of the target. A clip is left out, with the reason, when it is too
short, clipped (a run of CLIPPED_RUN_SAMPLES samples at full scale), silent (its loudest 50 ms
below SILENT_DBFS), or cannot reach the target under the ceiling.
"""

from __future__ import annotations

import numpy as np
import pyloudnorm
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from voicetrain.preprocess.slicer import block_levels_db, reference_level_db

CLIPPED_LEVEL = 0.999  # of full scale; 16-bit full scale reads back as 32767/32768
CLIPPED_RUN_SAMPLES = 3
SILENT_DBFS = -60.0
LIMITER_SECONDS = 0.005
LOUDNESS_TOLERANCE_LU = 0.05  # the aim; a clip further than ACCEPTED_ERROR_LU from the target is left out
ACCEPTED_ERROR_LU = 0.5
GAIN_ROUNDS = 8
# Room for rounding to 16 bits, so the written file still holds the ceiling.
QUANTISATION_MARGIN = 2 / 32768


def clipped_positions(wave: np.ndarray) -> np.ndarray:
    """Sample index of the start of every run of at least CLIPPED_RUN_SAMPLES samples at full scale."""
    at_full_scale = np.abs(wave) >= CLIPPED_LEVEL
    if CLIPPED_RUN_SAMPLES > 1:
        window = np.ones(CLIPPED_RUN_SAMPLES, dtype=np.int32)
        full_runs = np.convolve(at_full_scale.astype(np.int32), window, mode="valid") == CLIPPED_RUN_SAMPLES
    else:
        full_runs = at_full_scale
    starts = np.flatnonzero(full_runs)
    return starts[np.concatenate([[True], np.diff(starts) > 1])] if len(starts) else starts


def is_silent(wave: np.ndarray, sample_rate: int) -> bool:
    return reference_level_db(block_levels_db(wave, sample_rate)) < SILENT_DBFS


def measure_lufs(wave: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (-inf for a clip whose every 400 ms block is below -70 LUFS)."""
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(wave.astype(np.float64)))


def peak_dbfs(wave: np.ndarray) -> float:
    return float(20 * np.log10(max(float(np.max(np.abs(wave))), 1e-10)))


def limit_peaks(wave: np.ndarray, ceiling: float, sample_rate: int) -> np.ndarray:
    """`wave` with every peak above `ceiling` held down by a smooth gain (5 ms) that never falls
    below what a sample needs: a moving average of a minimum filter of the same width is at most
    the minimum of the samples it covers."""
    magnitude = np.abs(wave)
    if magnitude.max() <= ceiling:
        return wave
    needed = np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12))
    width = 2 * round(LIMITER_SECONDS * sample_rate / 2) + 1
    gain = uniform_filter1d(minimum_filter1d(needed, width, mode="nearest"), width, mode="nearest")
    # The bound holds exactly in arithmetic; the clip only removes floating-point rounding above it.
    return np.clip(wave * gain, -ceiling, ceiling)


def normalise(wave: np.ndarray, sample_rate: int, target_lufs: float, peak_db: float) -> tuple[np.ndarray, float]:
    """The clip at `target_lufs` with peaks at most `peak_db` dBFS, and its measured loudness."""
    ceiling = 10 ** (peak_db / 20) - QUANTISATION_MARGIN
    samples = wave.astype(np.float64)
    gain_db = target_lufs - measure_lufs(samples, sample_rate)
    for _ in range(GAIN_ROUNDS):
        result = limit_peaks(samples * 10 ** (gain_db / 20), ceiling, sample_rate)
        loudness = measure_lufs(result, sample_rate)
        if abs(loudness - target_lufs) <= LOUDNESS_TOLERANCE_LU:
            break
        gain_db += target_lufs - loudness
    return result.astype(np.float32), loudness


def problem(wave: np.ndarray, sample_rate: int, min_seconds: float, clipped: bool) -> str | None:
    """Why a clip (before normalisation) is left out, or None to keep it."""
    seconds = len(wave) / sample_rate
    if seconds < min_seconds:
        return f"too short: {seconds:.2f} s < slice.min_seconds={min_seconds:g}"
    if clipped:
        return f"clipped: {CLIPPED_RUN_SAMPLES} or more samples in a row at full scale"
    if is_silent(wave, sample_rate) or not np.isfinite(measure_lufs(wave, sample_rate)):
        return f"silent: nothing above {SILENT_DBFS:g} dBFS"
    return None


def loudness_problem(loudness: float, target_lufs: float, peak_db: float) -> str | None:
    if abs(loudness - target_lufs) <= ACCEPTED_ERROR_LU:
        return None
    return (f"cannot reach loudness.target_lufs={target_lufs:g} under loudness.peak_db={peak_db:g} (reached "
            f"{loudness:.1f} LUFS): too few loud parts for its peaks; lower the target or raise the ceiling")
