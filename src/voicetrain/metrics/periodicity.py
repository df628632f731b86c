"""Periodicity and voicing for copy synthesis (CARGAN / BigVGAN's columns): periodicity RMSE and V/UV F1.

Both waves are tracked by one pitch tracker, swift-f0 (its ONNX model ships in its wheel, a frame every 16 ms at
16 kHz): its per-frame confidence is the periodicity (0 aperiodic, 1 perfectly periodic; CARGAN uses CREPE's in
the same role), and a frame is voiced when the confidence reaches `VOICING_THRESHOLD` (the pitch feature's
default). Periodicity RMSE is the root mean square difference of the two confidence tracks; V/UV F1 is the F1
score of the candidate's voiced frames against the reference's. The waves must share a time line (copy synthesis).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

VOICING_THRESHOLD = 0.5


@dataclass(frozen=True)
class PeriodicityErrors:
    periodicity_rmse: float
    voicing_f1: float  # NaN when neither track has a voiced frame
    frames: int


def voicing_f1(reference_voiced: np.ndarray, candidate_voiced: np.ndarray) -> float:
    """F1 of the candidate's voiced frames against the reference's (1.0: the same decisions everywhere).

    NaN when neither track has a voiced frame (nothing to find); 0.0 when only one of them has.
    """
    reference = np.asarray(reference_voiced, dtype=bool)
    candidate = np.asarray(candidate_voiced, dtype=bool)
    if reference.ndim != 1 or reference.shape != candidate.shape or reference.size == 0:
        raise ValueError(f"voicing_f1 expects two non-empty 1-d voicing tracks of the same length, got shapes "
                         f"{reference.shape} and {candidate.shape}.")
    true_positives = int(np.sum(reference & candidate))
    flagged = int(np.sum(candidate)) + int(np.sum(reference))
    if flagged == 0:
        return float("nan")
    return 2.0 * true_positives / flagged


def periodicity_rmse(reference_periodicity: np.ndarray, candidate_periodicity: np.ndarray) -> float:
    """Root mean square difference of two periodicity tracks (values in [0, 1], frame for frame)."""
    reference = np.asarray(reference_periodicity, dtype=np.float64)
    candidate = np.asarray(candidate_periodicity, dtype=np.float64)
    if reference.ndim != 1 or reference.shape != candidate.shape or reference.size == 0:
        raise ValueError(f"periodicity_rmse expects two non-empty 1-d tracks of the same length, got shapes "
                         f"{reference.shape} and {candidate.shape}.")
    return float(np.sqrt(np.mean((reference - candidate) ** 2)))


@functools.lru_cache(maxsize=1)
def _detector() -> Any:
    import swift_f0  # Imported here: only this tracker needs onnxruntime.

    return swift_f0.SwiftF0(threads=1, spin=False)


def periodicity(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """swift-f0's confidence per 16 ms frame of a mono wave: its periodicity track."""
    samples = np.asarray(wave, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"periodicity expects a non-empty mono wave shaped [samples], got shape {samples.shape}.")
    return np.asarray(_detector().detect(samples, sample_rate).confidence, dtype=np.float64)


def periodicity_errors(reference_wave: np.ndarray, candidate_wave: np.ndarray, sample_rate: int) -> PeriodicityErrors:
    """Periodicity RMSE and V/UV F1 of a candidate against its reference; when the lengths differ the longer
    track is cut to the shorter one and `frames` says how many frames were compared."""
    reference = periodicity(reference_wave, sample_rate)
    candidate = periodicity(candidate_wave, sample_rate)
    frames = min(reference.size, candidate.size)
    reference, candidate = reference[:frames], candidate[:frames]
    return PeriodicityErrors(periodicity_rmse(reference, candidate),
                             voicing_f1(reference >= VOICING_THRESHOLD, candidate >= VOICING_THRESHOLD), frames)
