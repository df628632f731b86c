"""The F0 extractor: fundamental frequency with a voiced/unvoiced flag, from a classical tracker
(WORLD's harvest, or dio refined by stonemask, through pyworld) or a neural one whose weights ship
inside its wheel (swift-f0, an ONNX model run by onnxruntime on the CPU).

Output [2, frames] float32 on the shared frame grid: row 0 the F0 in Hz, row 1 the voiced flag
(0 or 1). On unvoiced frames row 0 holds 0 (`unvoiced: zero`, what RVC and so-vits-svc feed
their models) or a contour continued linearly from the voiced frames around them
(`unvoiced: interpolate`, for models that want F0 everywhere, e.g. DDSP's oscillators); an
utterance with no voiced frame is all zeros either way. Each tracker runs at its own frame rate and
is moved onto the shared grid with `resample_track`: linear for the F0, nearest for the flag.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from voicetrain.features.base import FeatureExtractor, frame_count, package_version
from voicetrain.features.checks import check_wave, number_in_range, one_of
from voicetrain.features.frames import fill_gaps, resample_track

METHODS = ("harvest", "dio", "swift")
UNVOICED_FILLS = ("zero", "interpolate")
# The band swift-f0's model scores (swift_f0.FMIN, swift_f0.FMAX; a test checks they still agree).
SWIFT_RANGE = (46.875, 2093.75)
# The distribution whose version changes each method's numbers (part of the cache key).
DISTRIBUTIONS = {"harvest": "pyworld-prebuilt", "dio": "pyworld-prebuilt", "swift": "swift-f0"}


@dataclass(frozen=True)
class PitchSettings:
    """method: harvest (WORLD's most robust, slow), dio (+ stonemask; fast, more octave errors) or
    swift (neural, fast). f0_min/f0_max: the search band in Hz. unvoiced: what row 0 holds on
    unvoiced frames, zero or interpolate. voicing_threshold: swift's confidence at or above which a
    frame is voiced (0.5 is the model's calibration); null for harvest and dio, which decide
    voicing themselves."""

    method: Literal["harvest", "dio", "swift"]
    f0_min: float
    f0_max: float
    unvoiced: Literal["zero", "interpolate"]
    voicing_threshold: float | None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        one_of(owner, "method", self.method, METHODS)
        one_of(owner, "unvoiced", self.unvoiced, UNVOICED_FILLS)
        low, high = SWIFT_RANGE if self.method == "swift" else (1.0, float("inf"))
        number_in_range(owner, "f0_min", self.f0_min, low, high, f"method={self.method} searches from {low} Hz up")
        number_in_range(owner, "f0_max", self.f0_max, low, high, f"method={self.method} searches up to {high} Hz")
        if float(self.f0_max) <= float(self.f0_min):
            raise ValueError(f"{owner}.f0_max={self.f0_max!r} must be above f0_min={self.f0_min!r}; e.g. f0_min=50, "
                             f"f0_max=1100 covers speech and singing.")
        if self.method == "swift":
            if self.voicing_threshold is None:
                raise ValueError(f"{owner}.voicing_threshold=None: method=swift needs a confidence threshold; set "
                                 f"0.5 (the model's calibration).")
            number_in_range(owner, "voicing_threshold", self.voicing_threshold, 0.0, 1.0, "0.5 is the default")
        elif self.voicing_threshold is not None:
            raise ValueError(f"{owner}.voicing_threshold={self.voicing_threshold!r} applies to method=swift only; "
                             f"{self.method} decides voicing itself: set it to null.")


@dataclass(frozen=True)
class Track:
    """A tracker's output on its own grid: frame i is centred at `offset + i * period` seconds."""

    f0: np.ndarray  # Hz, [frames]; any value on unvoiced frames
    voiced: np.ndarray  # bool, [frames]
    period: float
    offset: float


def world_track(wave: np.ndarray, sample_rate: int, method: str, f0_min: float, f0_max: float,
                period: float) -> Track:
    """harvest, or dio refined by stonemask, asked for frames every `period` seconds (frame i
    centred at i * period); pyworld marks unvoiced frames with F0 0."""
    import pyworld  # Imported here: only this method needs it.

    samples = np.ascontiguousarray(wave, dtype=np.float64)
    frame_period = 1000.0 * period
    if method == "harvest":
        f0, times = pyworld.harvest(samples, sample_rate, f0_floor=f0_min, f0_ceil=f0_max, frame_period=frame_period)
    else:
        coarse, times = pyworld.dio(samples, sample_rate, f0_floor=f0_min, f0_ceil=f0_max, frame_period=frame_period)
        f0 = pyworld.stonemask(samples, coarse, times, sample_rate)
    return Track(f0=f0, voiced=f0 > 0, period=period, offset=0.0)


@functools.lru_cache(maxsize=1)
def _swift_detector() -> Any:
    import swift_f0  # Imported here: only this method needs onnxruntime.

    # One intra-op thread, whatever the machine: the same numbers in every process (the store runs
    # one single-threaded process per core), and no pool spinning on cores other workers need.
    return swift_f0.SwiftF0(threads=1, spin=False)


def swift_track(wave: np.ndarray, sample_rate: int, f0_min: float, f0_max: float, threshold: float) -> Track:
    """swift-f0: a frame every 16 ms (256 samples at the 16 kHz it runs at; it resamples other
    rates itself with soxr)."""
    import swift_f0

    result = _swift_detector().detect(wave, sample_rate, fmin=f0_min, fmax=f0_max)
    # The library's own timestamps place its frames (the centre of frame 0 is sample 0 today).
    return Track(f0=result.pitch_hz, voiced=result.confidence >= threshold, period=swift_f0.FRAME_PERIOD,
                 offset=float(result.timestamps[0]))


def on_grid(track: Track, frames: int, frame_period: float, unvoiced: str) -> np.ndarray:
    """[2, frames] float32: the track's F0 and voiced flag read at the centres j * frame_period.
    Gaps are filled before interpolating, so a voiced frame next to an unvoiced one never mixes in
    the unvoiced frame's meaningless value."""
    contour = fill_gaps(track.f0, track.voiced)
    f0 = resample_track(contour, frames, source_period=track.period, target_period=frame_period,
                        source_offset=track.offset, kind="linear")
    voiced = resample_track(track.voiced, frames, source_period=track.period, target_period=frame_period,
                            source_offset=track.offset, kind="nearest")
    if unvoiced == "zero":
        f0 = np.where(voiced, f0, 0.0)
    return np.stack([f0, voiced.astype(np.float64)]).astype(np.float32)


class Pitch(FeatureExtractor):
    """[2, frames]: F0 in Hz, voiced flag. Statistics: log-F0 over voiced frames only."""

    Settings = PitchSettings

    def __init__(self, settings: PitchSettings, sample_rate: int, hop_length: int):
        super().__init__(settings, sample_rate, hop_length)
        nyquist = sample_rate / 2
        if float(settings.f0_max) >= nyquist:
            raise ValueError(f"PitchSettings.f0_max={settings.f0_max!r} must be below half features.sample_rate "
                             f"({nyquist} Hz); lower f0_max.")
        self.distribution = DISTRIBUTIONS[settings.method]

    def extract(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        samples = check_wave("Pitch", wave, sample_rate, self.sample_rate, minimum_samples=1)
        settings = self.settings
        frame_period = self.hop_length / self.sample_rate
        if settings.method == "swift":
            track = swift_track(samples, sample_rate, settings.f0_min, settings.f0_max, settings.voicing_threshold)
        else:
            # Asked for the shared frame period, pyworld's grid already is the target grid, so the
            # resampling below only pads or trims the last frame.
            track = world_track(samples, sample_rate, settings.method, settings.f0_min, settings.f0_max,
                                frame_period)
        return on_grid(track, frame_count(samples.shape[0], self.hop_length), frame_period, settings.unvoiced)

    def channels(self) -> int:
        return 2

    def statistics(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """count, sum and sum of squares of the natural log of F0 over voiced frames: enough for a
        speaker's log-F0 mean and standard deviation (mean_and_std), to shift pitch between
        speakers."""
        f0, voiced = np.asarray(array, dtype=np.float64)
        log_f0 = np.log(f0[(voiced > 0.5) & (f0 > 0)])
        return {"count": np.array([log_f0.size], dtype=np.float64), "sum": np.array([log_f0.sum()]),
                "sum_squares": np.array([np.square(log_f0).sum()])}

    def identity(self) -> dict[str, Any]:
        # The package that computes the numbers depends on the method, so it cannot be the class's.
        return {**super().identity(), "package": self.distribution,
                "package_version": package_version(self.distribution)}
