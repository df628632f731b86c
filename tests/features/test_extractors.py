"""What every built-in extractor promises the store: exactly the mel's frame count (the waveform:
every sample), the same numbers whatever the thread count, settings with no defaults of their own;
and the log-mel and waveform extractors' own contracts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from extractor_helpers import MEL, every_extractor, glide, save_tiny_hubert
from voicetrain.audio import MelSettings, MelSpectrogram
from voicetrain.audio_files import load_audio
from voicetrain.data import read_bundled_corpus
from voicetrain.features.base import FeatureExtractor, frame_count
from voicetrain.features.content import ContentSettings
from voicetrain.features.loudness import LoudnessSettings
from voicetrain.features.mel import LogMel, LogMelSettings
from voicetrain.features.pitch import PitchSettings
from voicetrain.features.wave import Waveform, WaveformSettings

HOP = 256


@pytest.fixture(scope="module")
def hubert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hubert(tmp_path_factory.mktemp("hubert"))


def awkward_wave(samples: int, sample_rate: int) -> np.ndarray:
    """`samples` samples of a gliding tone over noise: voiced and unvoiced parts for the trackers."""
    tone, _ = glide(sample_rate, seconds=0.5, silence=0.05)
    noise = 0.01 * np.random.default_rng(samples).standard_normal(samples)
    return (np.resize(tone, samples) + noise).astype(np.float32)


@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_every_extractor_returns_the_mel_frame_count(sample_rate: int, hubert: Path) -> None:
    extractors = every_extractor(sample_rate, HOP, hubert)
    # Just above n_fft // 2 (the shortest wave the mel accepts), not a multiple of the hop, longer.
    for samples in (MEL.n_fft // 2 + 1, 1000, sample_rate + 37):
        wave = awkward_wave(samples, sample_rate)
        expected = frame_count(samples, HOP)
        for name, extractor in extractors.items():
            array = extractor.extract(wave, sample_rate)
            assert array.dtype == np.float32, name
            if extractor.frame_level:
                assert array.shape == (extractor.channels(), expected), (name, samples)
            else:
                assert array.shape == (samples,), (name, samples)
            assert np.all(np.isfinite(array)), name


def test_every_extractor_gives_the_same_numbers_on_one_or_two_threads(hubert: Path) -> None:
    wave, _ = glide(16000, seconds=0.6, silence=0.1)
    extractors = every_extractor(16000, HOP, hubert)
    previous = torch.get_num_threads()
    results: dict[int, dict[str, np.ndarray]] = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = {name: extractor.extract(wave, 16000) for name, extractor in extractors.items()}
            # An extractor that pins its own thread count must hand the process's setting back.
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)
    for name in extractors:
        assert np.array_equal(results[1][name], results[2][name]), name


def test_settings_carry_no_defaults() -> None:
    # The YAML is the one source of defaults: a value missing from it must be an error, not a
    # second default hidden in the code.
    for schema in (LogMelSettings, WaveformSettings, PitchSettings, LoudnessSettings, ContentSettings):
        defaulted = [field.name for field in dataclasses.fields(schema)
                     if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING]
        assert defaulted == [], schema.__name__


def test_log_mel_is_todays_front_end_on_bundled_audio() -> None:
    utterance = read_bundled_corpus()[0]
    today = MelSettings(sample_rate=16000, n_fft=1024, hop_length=HOP, win_length=1024, n_mels=80, fmin=0.0,
                        fmax=8000.0)
    wave = load_audio(utterance.path, today.sample_rate)
    with torch.no_grad():
        expected = MelSpectrogram(today)(torch.from_numpy(wave)).numpy()
    extractor = LogMel(MEL, today.sample_rate, HOP)
    assert np.array_equal(extractor.extract(wave, today.sample_rate), expected)
    assert extractor.channels() == 80


def test_log_mel_settings_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"LogMelSettings\.win_length=2048"):
        LogMelSettings(n_fft=1024, win_length=2048, n_mels=80, fmin=0.0, fmax=8000.0)
    with pytest.raises(ValueError, match=r"LogMelSettings\.n_mels=0"):
        LogMelSettings(n_fft=1024, win_length=1024, n_mels=0, fmin=0.0, fmax=8000.0)
    with pytest.raises(ValueError, match=r"LogMelSettings\.fmax=100"):
        LogMelSettings(n_fft=1024, win_length=1024, n_mels=80, fmin=200.0, fmax=100.0)
    # Only the shared sample rate tells that 8 kHz is above Nyquist.
    with pytest.raises(ValueError, match=r"LogMelSettings\.fmax=8000\.0 is above the Nyquist"):
        LogMel(MEL, 11025, HOP)
    with pytest.raises(ValueError, match=r"features\.hop_length=0"):
        LogMel(MEL, 16000, 0)


def test_log_mel_rejects_a_wave_at_another_rate() -> None:
    extractor = LogMel(MEL, 16000, HOP)
    with pytest.raises(ValueError, match="features.sample_rate=16000"):
        extractor.extract(np.zeros(4000, np.float32), 22050)
    with pytest.raises(ValueError, match="at least 513 samples"):
        extractor.extract(np.zeros(512, np.float32), 16000)


def test_waveform_is_the_wave_itself() -> None:
    wave = load_audio(read_bundled_corpus()[1].path, 16000)
    extractor: FeatureExtractor = Waveform(WaveformSettings(), 16000, HOP)
    array = extractor.extract(wave, 16000)
    assert np.array_equal(array, wave)
    assert array is not wave  # the caller's buffer is never handed to the store
    assert (extractor.frame_level, extractor.storage_dtype, extractor.channels()) == (False, "int16", 1)
    # Full scale is the most 16-bit PCM holds.
    loud = extractor.extract(np.array([1.5, -2.0, 0.25], np.float32), 16000)
    assert loud.tolist() == [1.0, -1.0, 0.25]
    assert extractor.statistics(array) == {}
