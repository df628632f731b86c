"""Tests for voicetrain.features.loudness on tones of known level."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest
import torch

from extractor_helpers import A_WEIGHTED, RMS, sine
from voicetrain.features.loudness import Loudness, LoudnessSettings

HOP = 256
# Frames whose window reaches into the reflect padding (n_fft // 2 samples at either end).
EDGE_FRAMES = 1024 // 2 // HOP + 1


def level(settings: LoudnessSettings, wave: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    return Loudness(settings, sample_rate, HOP).extract(wave, sample_rate)[0]


@pytest.mark.parametrize("settings", [A_WEIGHTED, RMS], ids=["a_weighted", "rms"])
def test_a_tone_twice_as_loud_reads_six_decibels_more_and_silence_reads_the_floor(settings: LoudnessSettings) -> None:
    quiet = level(settings, sine(16000, 1000.0, 0.1))
    loud = level(settings, sine(16000, 1000.0, 0.2))
    assert np.allclose(loud - quiet, 20 * np.log10(2.0), atol=0.01)
    # Calibrated on a 1 kHz sine (A-weighting 0 dB there): amplitude a reads 20 log10(a / sqrt 2)
    # on the frames clear of the reflect-padded edges.
    interior = slice(EDGE_FRAMES, -EDGE_FRAMES)
    assert np.allclose(quiet[interior], 20 * np.log10(0.1 / np.sqrt(2.0)), atol=0.01)
    assert np.all(level(settings, np.zeros(5000, np.float32)) == settings.floor_db)
    below_floor = level(dataclasses.replace(settings, floor_db=-20.0), sine(16000, 1000.0, 0.01))
    assert np.all(below_floor == -20.0)


def test_a_weighting_follows_the_ear_and_rms_does_not() -> None:
    for frequency in (100.0, 4000.0):
        tone = sine(16000, frequency, 0.1)
        reference = 20 * np.log10(0.1 / np.sqrt(2.0))
        weighted = np.median(level(A_WEIGHTED, tone)) - reference
        assert abs(weighted - librosa.A_weighting(frequency)) < 0.2, frequency
        assert abs(np.median(level(RMS, tone)) - reference) < 0.02


def test_frames_are_the_mels_centred_frames() -> None:
    # An independent computation on torch.stft's centred framing (the mel's): the mean square of
    # each Hann-windowed frame from its one-sided power spectrum (Parseval).
    wave = (np.random.default_rng(3).standard_normal(7001) * 0.1).astype(np.float32)
    n_fft = RMS.n_fft
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spectrum = torch.stft(torch.from_numpy(wave).double(), n_fft, HOP, window=window, center=True,
                          pad_mode="reflect", return_complex=True).abs().square().numpy()
    doubled = np.full(spectrum.shape[0], 2.0)
    doubled[[0, -1]] = 1.0
    mean_square = doubled @ spectrum / (n_fft * window.square().sum().item())
    assert np.allclose(level(RMS, wave), 10 * np.log10(mean_square), atol=1e-4)


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"LoudnessSettings\.method='lufs' must be one of 'a_weighted', 'rms'"):
        dataclasses.replace(RMS, method="lufs")
    with pytest.raises(ValueError, match=r"LoudnessSettings\.floor_db=10\.0 must be a number from -300\.0 to 0\.0"):
        dataclasses.replace(RMS, floor_db=10.0)
    with pytest.raises(ValueError, match=r"LoudnessSettings\.n_fft=0 must be a positive whole number"):
        dataclasses.replace(RMS, n_fft=0)
