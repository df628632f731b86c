"""Tests for voicetrain.audio: settings, file I/O with resampling, the log-mel, Griffin-Lim and mel images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from voicetrain.audio import MelSpectrogram, griffin_lim
from voicetrain.audio_files import AudioReadError, load_audio, save_audio

from helpers import standard_mel


def harmonic_tone(frequency: float, sample_rate: int, seconds: float, harmonics: int = 1) -> np.ndarray:
    time = np.arange(int(round(sample_rate * seconds))) / sample_rate
    wave = sum(0.4 / order * np.sin(2 * np.pi * frequency * order * time) for order in range(1, harmonics + 1))
    return np.asarray(wave, dtype=np.float32)


def dominant_frequency(wave: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sample_rate)[np.argmax(spectrum)])


# --- MelSettings -------------------------------------------------------------------------------------------


def test_cache_key_is_stable_short_hex() -> None:
    key = standard_mel().cache_key()
    assert key == standard_mel().cache_key()
    assert len(key) == 16
    int(key, 16)


@pytest.mark.parametrize(
    "change",
    [
        {"sample_rate": 22050, "fmax": 8000.0},
        {"n_fft": 2048},
        {"hop_length": 128},
        {"win_length": 512},
        {"n_mels": 64},
        {"fmin": 50.0},
        {"fmax": 7600.0},
        {"fmax": None},
    ],
)
def test_cache_key_changes_with_every_field(change: dict) -> None:
    assert dataclasses.replace(standard_mel(), **change).cache_key() != standard_mel().cache_key()


def test_cache_key_ignores_int_versus_float() -> None:
    # A YAML file may give fmin: 0 (int); it means the same features as 0.0.
    as_ints = dataclasses.replace(standard_mel(), fmin=0, fmax=8000)
    assert as_ints.cache_key() == dataclasses.replace(standard_mel(), fmin=0.0, fmax=8000.0).cache_key()


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"win_length": 2048}, "win_length"),
        ({"hop_length": 0}, "hop_length"),
        ({"fmax": 9000.0}, "fmax"),
        ({"fmin": 9000.0, "fmax": None}, "fmin"),
    ],
)
def test_settings_reject_bad_values(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(standard_mel(), **bad)


# --- load_audio / save_audio -------------------------------------------------------------------------------


def test_load_audio_resamples_22050_to_16000(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, harmonic_tone(440.0, 22050, 1.0), 22050)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32
    assert wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    assert np.abs(wave).max() <= 1.0
    assert dominant_frequency(wave, 16000) == pytest.approx(440.0, abs=2.0)


def test_load_audio_keeps_rate_and_mixes_to_mono(tmp_path: Path) -> None:
    tone = harmonic_tone(300.0, 16000, 0.25)
    stereo = np.stack([tone, tone], axis=1)
    path = tmp_path / "stereo.flac"
    soundfile.write(path, stereo, 16000)
    wave = load_audio(path, 16000)
    assert wave.shape == tone.shape
    np.testing.assert_allclose(wave, tone, atol=1e-4)


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    tone = torch.from_numpy(harmonic_tone(500.0, 16000, 0.2))
    for suffix in (".wav", ".flac"):
        path = tmp_path / "nested" / "folder" / f"out{suffix}"
        save_audio(path, tone.unsqueeze(0), 16000)
        info = soundfile.info(str(path))
        assert info.subtype == "PCM_16"
        assert info.samplerate == 16000
        np.testing.assert_allclose(load_audio(path, 16000), tone.numpy(), atol=1e-4)


def test_save_audio_rejects_unknown_suffix_and_multichannel(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.mp3"):
        save_audio(tmp_path / "out.mp3", np.zeros(100), 16000)
    with pytest.raises(ValueError, match="mono"):
        save_audio(tmp_path / "out.wav", np.zeros((2, 100)), 16000)


def test_corrupt_file_raises_naming_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioReadError) as error:
        load_audio(path, 16000)
    assert str(path) in str(error.value)
    assert "skip_bad_files" in str(error.value)


def test_missing_and_empty_files_raise(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioReadError, match="missing.wav"):
        load_audio(missing, 16000)
    zero_bytes = tmp_path / "zero_bytes.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioReadError, match="zero_bytes.wav"):
        load_audio(zero_bytes, 16000)
    no_samples = tmp_path / "no_samples.wav"
    soundfile.write(no_samples, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioReadError, match="0 samples"):
        load_audio(no_samples, 16000)


# --- MelSpectrogram ----------------------------------------------------------------------------------------


def test_mel_spectrogram_shapes_and_batch_consistency() -> None:
    settings = standard_mel()
    extractor = MelSpectrogram(settings)
    wave = torch.from_numpy(harmonic_tone(220.0, 16000, 0.5, harmonics=4))
    single = extractor(wave)
    assert single.shape == (80, len(wave) // 256 + 1)
    assert single.dtype == torch.float32
    assert torch.isfinite(single).all()
    assert single.min() >= np.log(1e-5) - 1e-6
    batch = extractor(torch.stack([wave, wave * 0.5]))
    assert batch.shape == (2, 80, len(wave) // 256 + 1)
    torch.testing.assert_close(batch[0], single)


def test_mel_spectrogram_buffers_are_not_checkpointed() -> None:
    extractor = MelSpectrogram(dataclasses.replace(standard_mel(), n_mels=40))
    assert extractor.mel_basis.shape == (40, 513)
    assert extractor.state_dict() == {}


def test_mel_spectrogram_puts_a_tone_in_the_right_band() -> None:
    settings = standard_mel()
    extractor = MelSpectrogram(settings)
    low = extractor(torch.from_numpy(harmonic_tone(200.0, 16000, 0.5)))
    high = extractor(torch.from_numpy(harmonic_tone(4000.0, 16000, 0.5)))
    assert low.mean(dim=1).argmax() < high.mean(dim=1).argmax()


def test_mel_spectrogram_rejects_too_short_wave() -> None:
    with pytest.raises(ValueError, match="at least 513 samples"):
        MelSpectrogram(standard_mel())(torch.zeros(100))


# --- griffin_lim -------------------------------------------------------------------------------------------


def test_griffin_lim_is_finite_deterministic_and_leaves_global_rng_alone() -> None:
    settings = standard_mel()
    wave = torch.from_numpy(harmonic_tone(440.0, 16000, 0.5))
    log_mel = MelSpectrogram(settings)(wave)
    torch.manual_seed(1234)
    state_before = torch.get_rng_state()
    first = griffin_lim(log_mel, settings, iterations=16)
    assert torch.equal(torch.get_rng_state(), state_before)
    second = griffin_lim(log_mel, settings, iterations=16)
    assert torch.equal(first, second)
    assert first.dim() == 1
    assert torch.isfinite(first).all()
    assert first.abs().max() <= 1.0
    assert abs(len(first) - len(wave)) <= settings.hop_length
    assert dominant_frequency(first.numpy(), 16000) == pytest.approx(440.0, abs=40.0)


def test_griffin_lim_limits_the_peak() -> None:
    settings = standard_mel()
    loud = torch.full((80, 20), 6.0)
    assert griffin_lim(loud, settings, iterations=2).abs().max() <= 1.0


def test_griffin_lim_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="n_mels=80"):
        griffin_lim(torch.zeros(2, 80, 10), standard_mel())
