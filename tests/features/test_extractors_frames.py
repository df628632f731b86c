"""Tests for voicetrain.features.frames: moving a track between frame grids, filling its gaps."""

from __future__ import annotations

import numpy as np
import pytest

from voicetrain.features.frames import fill_gaps, resample_track


def test_the_same_grid_is_unchanged_and_a_short_track_holds_its_last_frame() -> None:
    values = np.array([[1.0, 2.0, 4.0], [0.0, -1.0, 3.0]])
    same = resample_track(values, 3, source_period=0.016, target_period=0.016)
    assert np.array_equal(same, values)
    longer = resample_track(values, 5, source_period=0.016, target_period=0.016)
    assert longer.tolist() == [[1.0, 2.0, 4.0, 4.0, 4.0], [0.0, -1.0, 3.0, 3.0, 3.0]]


def test_linear_reads_a_straight_line_exactly_at_the_target_times() -> None:
    # value = 3 + 2 * time, sampled every 20 ms from 10 ms on; read every 16 ms.
    source_times = 0.010 + 0.020 * np.arange(50)
    line = 3.0 + 2.0 * source_times
    read = resample_track(line, 60, source_period=0.020, target_period=0.016, source_offset=0.010)
    target_times = 0.016 * np.arange(60)
    inside = (target_times >= source_times[0]) & (target_times <= source_times[-1])
    assert np.allclose(read[inside], 3.0 + 2.0 * target_times[inside])
    # Before the first source centre the first value holds.
    assert np.all(read[~inside & (target_times < 0.010)] == line[0])


def test_nearest_keeps_flags_binary_and_picks_the_closest_frame() -> None:
    flags = np.array([0, 1, 1, 0, 1], dtype=np.int8)
    read = resample_track(flags, 9, source_period=2.0, target_period=1.0, kind="nearest")
    assert read.dtype == np.int8
    # Target j at time j lies on source frame j / 2; halves round up.
    assert read.tolist() == [0, 1, 1, 1, 1, 0, 0, 1, 1]


def test_resample_track_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        resample_track(np.zeros(0), 3, source_period=1.0, target_period=1.0)
    with pytest.raises(ValueError, match="kind='cubic'"):
        resample_track(np.zeros(3), 3, source_period=1.0, target_period=1.0, kind="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source_period=0"):
        resample_track(np.zeros(3), 3, source_period=0, target_period=1.0)


def test_fill_gaps_continues_the_contour_between_and_beyond_present_frames() -> None:
    values = np.array([0.0, 100.0, 0.0, 0.0, 160.0, 0.0])
    present = values > 0
    assert fill_gaps(values, present).tolist() == [100.0, 100.0, 120.0, 140.0, 160.0, 160.0]
    assert fill_gaps(values, np.zeros(6, dtype=bool)).tolist() == [0.0] * 6
