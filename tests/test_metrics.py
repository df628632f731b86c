"""Tests for voicetrain.metrics: mel cepstra and DTW-aligned mel-cepstral distortion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as strategies
from hypothesis.extra.numpy import arrays

from voicetrain.audio import MelSpectrogram
from voicetrain.metrics import mel_cepstral_distortion, mel_cepstrum

from helpers import standard_mel


def log_mel_of_tone(frequency: float, seconds: float = 0.5) -> np.ndarray:
    time = np.arange(int(16000 * seconds)) / 16000
    # A slow vibrato so that frames differ over time and DTW has something to align.
    phase = 2 * np.pi * frequency * time + 3 * np.sin(2 * np.pi * 3 * time)
    wave = sum(0.3 / order * np.sin(order * phase) for order in range(1, 5))
    return MelSpectrogram(standard_mel())(torch.from_numpy(np.asarray(wave, dtype=np.float32))).numpy()


def test_mel_cepstrum_shape_and_definition() -> None:
    # Build a log-mel from known cepstral coefficients with the cosine expansion the MCD constant
    # assumes, log_mel[m] = c0 + 2 * sum_k c_k cos(pi k (m + 1/2) / N), and get them back.
    n_mels, frames = 80, 12
    coefficients = np.random.default_rng(0).normal(size=(13, frames))
    bins = np.arange(n_mels)[:, None]
    log_mel = np.full((n_mels, frames), -4.0)
    for k in range(1, 14):
        log_mel += 2 * coefficients[k - 1] * np.cos(np.pi * k * (bins + 0.5) / n_mels)
    cepstrum = mel_cepstrum(log_mel, coefficients=13)
    assert cepstrum.shape == (13, frames)
    np.testing.assert_allclose(cepstrum, coefficients, atol=1e-9)


def test_mel_cepstrum_ignores_overall_level() -> None:
    # A gain change adds a constant to every log-mel bin, which only moves c0 - and c0 is dropped.
    log_mel = np.random.default_rng(1).normal(size=(80, 5))
    np.testing.assert_allclose(mel_cepstrum(log_mel + 2.5), mel_cepstrum(log_mel), atol=1e-9)


def test_mel_cepstrum_rejects_bad_coefficients() -> None:
    with pytest.raises(ValueError, match="coefficients=80"):
        mel_cepstrum(np.zeros((80, 3)), coefficients=80)


def test_identical_inputs_give_zero() -> None:
    log_mel = log_mel_of_tone(220.0)
    assert mel_cepstral_distortion(log_mel, log_mel.copy()) == 0.0


def test_time_stretched_copy_is_near_zero_thanks_to_dtw() -> None:
    log_mel = log_mel_of_tone(220.0)
    stretched = np.repeat(log_mel, 2, axis=1)
    assert mel_cepstral_distortion(log_mel, stretched) < 0.1
    assert mel_cepstral_distortion(stretched, log_mel) < 0.1


def test_different_signals_are_apart_and_nearly_symmetric() -> None:
    low = log_mel_of_tone(150.0)
    high = log_mel_of_tone(900.0)
    forward = mel_cepstral_distortion(low, high)
    backward = mel_cepstral_distortion(high, low)
    assert forward > 1.0
    assert backward == pytest.approx(forward, rel=0.25)


def test_closer_candidate_scores_lower() -> None:
    target = log_mel_of_tone(200.0)
    near = log_mel_of_tone(210.0)
    far = log_mel_of_tone(1200.0)
    assert mel_cepstral_distortion(target, near) < mel_cepstral_distortion(target, far)


@pytest.mark.parametrize(
    "reference_shape, candidate_shape",
    [((80, 10), (64, 10)), ((80, 0), (80, 10)), ((80, 10), (80, 0)), ((80,), (80, 10))],
)
def test_bad_shapes_raise_naming_them(reference_shape: tuple, candidate_shape: tuple) -> None:
    with pytest.raises(ValueError) as error:
        mel_cepstral_distortion(np.zeros(reference_shape), np.zeros(candidate_shape))
    assert str(reference_shape) in str(error.value)
    assert str(candidate_shape) in str(error.value)


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float64, strategies.tuples(strategies.just(20), strategies.integers(1, 12)),
           elements=strategies.floats(-11.0, 3.0)),
    arrays(np.float64, strategies.tuples(strategies.just(20), strategies.integers(1, 12)),
           elements=strategies.floats(-11.0, 3.0)),
)
def test_distortion_is_finite_non_negative_and_zero_on_self(reference: np.ndarray, candidate: np.ndarray) -> None:
    value = mel_cepstral_distortion(reference, candidate, coefficients=8)
    assert np.isfinite(value)
    assert value >= 0.0
    assert mel_cepstral_distortion(reference, reference, coefficients=8) == 0.0
