"""Pitch metrics: F0 RMSE in cents on frames voiced in both tracks, and the voicing decision error.

Both compare two F0 tracks frame by frame on the same time line (a conversion and the F0 it was asked to follow,
a copy synthesis and its recording), without alignment. `f0_errors` tracks both waves with one tracker (WORLD
Harvest) so that the two tracks share its biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicetrain.metrics.world import world_f0

CENTS_PER_OCTAVE = 1200.0
# Harvest's search range: below the lowest speaking voices, above a soprano's top notes.
F0_FLOOR_HZ = 50.0
F0_CEILING_HZ = 1100.0


@dataclass(frozen=True)
class F0Errors:
    """What `f0_errors` measured between a reference and a candidate wave."""

    rmse_cents: float  # NaN when no frame is voiced in both
    voicing_error: float  # fraction of frames whose voiced decision differs
    frames: int  # frames compared


def _same_length_tracks(**tracks: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {name: np.asarray(values) for name, values in tracks.items()}
    shapes = {name: array.shape for name, array in arrays.items()}
    if any(array.ndim != 1 for array in arrays.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"F0 tracks must be 1-d and the same length, frame for frame; got shapes {shapes}.")
    if not next(iter(shapes.values()))[0]:
        raise ValueError("F0 tracks are empty; there is nothing to compare.")
    return arrays


def f0_rmse_cents(
    reference_f0: np.ndarray, candidate_f0: np.ndarray, reference_voiced: np.ndarray, candidate_voiced: np.ndarray
) -> float:
    """Root mean square of `1200 * log2(candidate_f0 / reference_f0)` over the frames voiced in both.

    F0 in Hz per frame; the voiced flags are booleans per frame, and F0 must be positive where they are set.
    Returns NaN when no frame is voiced in both: the error is undefined there, not zero.
    """
    arrays = _same_length_tracks(reference_f0=reference_f0, candidate_f0=candidate_f0,
                                 reference_voiced=reference_voiced, candidate_voiced=candidate_voiced)
    both = arrays["reference_voiced"].astype(bool) & arrays["candidate_voiced"].astype(bool)
    if not np.any(both):
        return float("nan")
    reference = arrays["reference_f0"][both].astype(np.float64)
    candidate = arrays["candidate_f0"][both].astype(np.float64)
    if np.any(reference <= 0.0) or np.any(candidate <= 0.0):
        raise ValueError("f0_rmse_cents: a frame flagged voiced has F0 <= 0 Hz; flag it unvoiced or fix its F0.")
    cents = CENTS_PER_OCTAVE * np.log2(candidate / reference)
    return float(np.sqrt(np.mean(cents**2)))


def voicing_decision_error(reference_voiced: np.ndarray, candidate_voiced: np.ndarray) -> float:
    """The fraction of frames whose voiced/unvoiced decision differs between the two tracks (0 to 1)."""
    arrays = _same_length_tracks(reference_voiced=reference_voiced, candidate_voiced=candidate_voiced)
    return float(np.mean(arrays["reference_voiced"].astype(bool) != arrays["candidate_voiced"].astype(bool)))


def f0_errors(
    reference_wave: np.ndarray, candidate_wave: np.ndarray, sample_rate: int, *,
    frame_period_ms: float = 10.0, f0_floor: float = F0_FLOOR_HZ, f0_ceiling: float = F0_CEILING_HZ,
) -> F0Errors:
    """Track F0 in both waves with WORLD Harvest and compare the tracks with `f0_rmse_cents` and
    `voicing_decision_error`.

    The waves must share a time line; when their lengths differ (a vocoder's output is often a few samples
    longer), the longer track is cut to the shorter one and `frames` says how many frames were compared.
    """
    reference_f0, _ = world_f0(reference_wave, sample_rate, frame_period_ms, "harvest", f0_floor, f0_ceiling)
    candidate_f0, _ = world_f0(candidate_wave, sample_rate, frame_period_ms, "harvest", f0_floor, f0_ceiling)
    frames = min(len(reference_f0), len(candidate_f0))
    reference_f0, candidate_f0 = reference_f0[:frames], candidate_f0[:frames]
    reference_voiced, candidate_voiced = reference_f0 > 0.0, candidate_f0 > 0.0
    return F0Errors(
        rmse_cents=f0_rmse_cents(reference_f0, candidate_f0, reference_voiced, candidate_voiced),
        voicing_error=voicing_decision_error(reference_voiced, candidate_voiced),
        frames=frames,
    )
