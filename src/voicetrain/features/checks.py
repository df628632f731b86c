"""The checks the built-in extractors share: on the wave they are given, and on the values of their
settings. Settings errors name `ClassName.field=value` and the fix; the config layer replaces the
class name with the key the user wrote (features.f0.f0_max=...).
"""

from __future__ import annotations

import numbers

import numpy as np


def positive_integer(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{owner}.{name}={value!r} must be a positive whole number.")


def number_in_range(owner: str, name: str, value: object, low: float, high: float, fix: str) -> None:
    """`value` is a real number with low <= value <= high; `fix` says what to set instead."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= float(value) <= high:
        raise ValueError(f"{owner}.{name}={value!r} must be a number from {low} to {high}; {fix}.")


def one_of(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{owner}.{name}={value!r} must be one of {listed}.")


def check_wave(owner: str, wave: np.ndarray, sample_rate: int, expected_rate: int, minimum_samples: int) -> np.ndarray:
    """The wave as contiguous float32 [samples], after checking what every extractor assumes: mono,
    at the shared sample rate, finite, and at least `minimum_samples` long. `owner` names the
    extractor in the errors."""
    array = np.asarray(wave)
    if array.ndim != 1:
        raise ValueError(f"{owner}.extract needs a mono wave shaped [samples], got shape {array.shape}; mix the "
                         f"channels down first (voicetrain.audio.load_audio does).")
    if sample_rate != expected_rate:
        raise ValueError(f"{owner}.extract was given a wave at {sample_rate} Hz but was built for "
                         f"features.sample_rate={expected_rate}; resample the wave first (load_audio does).")
    if array.shape[0] < minimum_samples:
        raise ValueError(f"{owner} needs at least {minimum_samples} samples at {expected_rate} Hz, got "
                         f"{array.shape[0]}; drop clips this short or pad them.")
    samples = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"{owner}.extract was given a wave with NaN or infinite samples; check the audio file.")
    return samples
