"""Frame grids: moving a per-frame track onto the shared hop, and filling its gaps.

A track computed at another frame rate (pyworld's frame period, swift-f0's 16 ms, HuBERT's 20 ms)
is placed on the time axis by its period and the centre of its first frame, then read at the
centres of the target frames (frame j of the shared grid is centred on sample j * hop_length, as
a centred STFT's is). Reading past either end holds the edge value, so a tracker that stops a
frame early never leaves a hole.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TrackKind = Literal["linear", "nearest"]


def resample_track(values: np.ndarray, target_frames: int, *, source_period: float, target_period: float,
                   source_offset: float = 0.0, kind: TrackKind = "linear") -> np.ndarray:
    """`values` ([frames] or [channels, frames], frame i centred at `source_offset + i *
    source_period`) read at the target centres `j * target_period` for j < `target_frames`:
    linearly interpolated (continuous values such as F0 in Hz or hidden states) or from the nearest
    source frame (flags such as voiced/unvoiced, which must stay 0 or 1). Times are in any one unit
    (seconds, or samples at one rate). Returns float64 (linear) or the input dtype (nearest)."""
    track = np.asarray(values)
    if track.ndim not in (1, 2) or track.shape[-1] == 0:
        raise ValueError(f"resample_track needs values shaped [frames] or [channels, frames] with at least one "
                         f"frame, got shape {track.shape}; the tracker returned nothing for this wave.")
    if target_frames < 0 or source_period <= 0 or target_period <= 0:
        raise ValueError(f"resample_track: target_frames={target_frames} must be >= 0 and source_period="
                         f"{source_period}, target_period={target_period} must be positive.")
    # Target centres in units of source frames: position p lies between source frames floor(p) and
    # floor(p) + 1.
    positions = (np.arange(target_frames) * target_period - source_offset) / source_period
    last = track.shape[-1] - 1
    if kind == "nearest":
        # floor(p + 0.5) rounds halves up the same way on every machine (np.round rounds to even).
        nearest = np.clip(np.floor(positions + 0.5), 0, last).astype(np.int64)
        return track[..., nearest]
    if kind != "linear":
        raise ValueError(f"resample_track kind={kind!r}: expected 'linear' or 'nearest'.")
    clamped = np.clip(positions, 0.0, float(last))
    lower = np.floor(clamped).astype(np.int64)
    upper = np.minimum(lower + 1, last)
    weight = clamped - lower
    as_float = track.astype(np.float64, copy=False)
    return as_float[..., lower] * (1.0 - weight) + as_float[..., upper] * weight


def fill_gaps(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """A copy of the 1-D `values` where frames not `present` are linearly interpolated from the
    nearest present frames on either side (held flat before the first and after the last); all
    zeros when no frame is present, since there is nothing to continue."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if values.shape != present.shape or values.ndim != 1:
        raise ValueError(f"fill_gaps needs two 1-D arrays of one length, got {values.shape} and {present.shape}.")
    if not present.any():
        return np.zeros_like(values)
    frames = np.arange(values.shape[0])
    return np.interp(frames, frames[present], values[present])
