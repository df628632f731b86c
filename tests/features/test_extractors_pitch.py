"""Tests for voicetrain.features.pitch on a tone of known F0 and on the bundled recordings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import swift_f0

from extractor_helpers import DIO, HARVEST, SWIFT, glide
from voicetrain.audio_files import load_audio
from voicetrain.data import read_bundled_corpus
from voicetrain.features.base import mean_and_std
from voicetrain.features.pitch import SWIFT_RANGE, Pitch, PitchSettings

HOP = 256
# Frames whose centre is this close to the tone's start or end see both tone and silence.
EDGE_SECONDS = 0.03


def tracked_glide(settings: PitchSettings, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(extracted [2, frames], true F0 at each frame centre)."""
    wave, truth = glide(sample_rate)
    array = Pitch(settings, sample_rate, HOP).extract(wave, sample_rate)
    centres = np.arange(array.shape[1]) * HOP
    return array, truth[np.minimum(centres, truth.shape[0] - 1)]


def tone_regions(truth: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the frames well inside the tone and well inside the silence."""
    margin = int(EDGE_SECONDS * sample_rate / HOP) + 1
    tone = truth > 0
    grown = np.convolve(tone, np.ones(2 * margin + 1), mode="same") > 0
    shrunk = np.convolve(~tone, np.ones(2 * margin + 1), mode="same") == 0
    return shrunk, ~grown


@pytest.mark.parametrize("settings", [HARVEST, DIO, SWIFT], ids=["harvest", "dio", "swift"])
@pytest.mark.parametrize("sample_rate", [16000, 22050])
def test_a_gliding_tone_is_tracked_within_two_percent(settings: PitchSettings, sample_rate: int) -> None:
    array, truth = tracked_glide(settings, sample_rate)
    inside, silence = tone_regions(truth, sample_rate)
    f0, voiced = array
    assert set(np.unique(voiced)) <= {0.0, 1.0}
    assert voiced[inside].mean() >= 0.95
    assert not voiced[silence].any()
    assert np.all(f0[silence] == 0.0)  # unvoiced: zero
    tracked = inside & (voiced == 1)
    assert np.max(np.abs(f0[tracked] / truth[tracked] - 1)) < 0.02


def test_interpolate_continues_the_contour_over_unvoiced_frames() -> None:
    settings = dataclasses.replace(SWIFT, unvoiced="interpolate")
    array, truth = tracked_glide(settings, 16000)
    f0, voiced = array
    zeroed, _ = tracked_glide(SWIFT, 16000)
    # Same voicing and same F0 where voiced; the silence holds the nearest voiced value.
    assert np.array_equal(voiced, zeroed[1])
    assert np.array_equal(f0[voiced == 1], zeroed[0][voiced == 1])
    voiced_frames = np.flatnonzero(voiced)
    assert np.all(f0[: voiced_frames[0]] == f0[voiced_frames[0]])
    assert np.all(f0[voiced_frames[-1]:] == f0[voiced_frames[-1]])
    assert abs(f0[0] / 120.0 - 1) < 0.02 and abs(f0[-1] / 240.0 - 1) < 0.02


def test_statistics_are_log_f0_of_voiced_frames_only() -> None:
    extractor = Pitch(SWIFT, 16000, HOP)
    array, _ = tracked_glide(SWIFT, 16000)
    statistics = extractor.statistics(array)
    voiced_log = np.log(array[0][array[1] == 1].astype(np.float64))
    assert statistics["count"].tolist() == [voiced_log.size]
    mean, std = mean_and_std(statistics)
    assert np.allclose(mean, [voiced_log.mean()]) and np.allclose(std, [voiced_log.std(ddof=1)])
    # The glide spends equal time in every ratio from 120 to 240 Hz: its mean log-F0 is halfway.
    assert abs(mean[0] - np.log(120.0 * np.sqrt(2.0))) < 0.02


def bundled_speech(count_per_speaker: int = 1) -> list[np.ndarray]:
    """One utterance of each of the four bundled speakers (two male, two female), at 16 kHz."""
    chosen: dict[str, list[np.ndarray]] = {}
    for utterance in read_bundled_corpus():
        picked = chosen.setdefault(utterance.speaker, [])
        if len(picked) < count_per_speaker:
            picked.append(load_audio(utterance.path, 16000))
    return [wave for waves in chosen.values() for wave in waves]


def cents_apart(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """|1200 log2(first / second)| on the frames both call voiced (rows 0: F0, rows 1: flag)."""
    frames = min(first.shape[1], second.shape[1])
    both = (first[1, :frames] == 1) & (second[1, :frames] == 1) & (second[0, :frames] > 0)
    return np.abs(1200.0 * np.log2(first[0, :frames][both] / second[0, :frames][both]))


def test_the_classical_and_the_neural_tracker_agree_on_real_speech() -> None:
    # Two trackers of unrelated design (WORLD's harvest, the swift-f0 network) agree to a median
    # of 7-9 cents on each bundled speaker. A one-frame misalignment of either raises it to 19-37
    # cents, an octave error to 1200 and a wrong sample rate to hundreds: 15 cents catches those.
    harvest, swift = Pitch(HARVEST, 16000, HOP), Pitch(SWIFT, 16000, HOP)
    cents = np.concatenate([cents_apart(harvest.extract(wave, 16000), swift.extract(wave, 16000))
                            for wave in bundled_speech()])
    assert cents.size > 200
    assert np.median(cents) < 15.0


@pytest.mark.slow  # librosa.pyin compiles with numba on first use: about a minute on a busy machine.
@pytest.mark.parametrize("settings", [HARVEST, SWIFT], ids=["harvest", "swift"])
def test_trackers_agree_with_pyin_on_real_speech(settings: PitchSettings) -> None:
    import librosa

    # Measured medians against pYIN: 12-21 cents (harvest), 7-15 cents (swift) per speaker. pYIN
    # decodes on a 10-cent grid and smooths differently, so 50 cents (a quarter tone) allows for
    # method differences while an octave error (1200), a wrong rate (hundreds) or a misaligned
    # grid still fails.
    extractor = Pitch(settings, 16000, HOP)
    cents = []
    for wave in bundled_speech():
        f0, voiced, _ = librosa.pyin(wave, fmin=50, fmax=600, sr=16000, frame_length=1024, hop_length=HOP)
        reference = np.stack([np.nan_to_num(f0), voiced.astype(np.float64)])
        cents.append(cents_apart(extractor.extract(wave, 16000), reference))
    assert np.median(np.concatenate(cents)) < 50.0


def test_swift_range_is_the_models() -> None:
    assert SWIFT_RANGE == (swift_f0.FMIN, swift_f0.FMAX)


def test_settings_errors_name_the_key_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"PitchSettings\.voicing_threshold=0\.3 applies to method=swift only"):
        dataclasses.replace(HARVEST, voicing_threshold=0.3)
    with pytest.raises(ValueError, match=r"PitchSettings\.voicing_threshold=None: method=swift needs"):
        dataclasses.replace(SWIFT, voicing_threshold=None)
    with pytest.raises(ValueError, match=r"PitchSettings\.f0_min=30\.0 must be a number from 46\.875"):
        dataclasses.replace(SWIFT, f0_min=30.0)
    with pytest.raises(ValueError, match=r"PitchSettings\.f0_max=40\.0 must be above f0_min=50\.0"):
        dataclasses.replace(HARVEST, f0_max=40.0)
    with pytest.raises(ValueError, match=r"PitchSettings\.method='crepe' must be one of 'harvest', 'dio', 'swift'"):
        dataclasses.replace(HARVEST, method="crepe")
    with pytest.raises(ValueError, match=r"PitchSettings\.f0_max=1100\.0 must be below half features\.sample_rate"):
        Pitch(HARVEST, 2000, HOP)


def test_the_cache_key_names_the_package_that_computed_the_numbers() -> None:
    harvest = Pitch(HARVEST, 16000, HOP).identity()
    swift = Pitch(SWIFT, 16000, HOP).identity()
    assert harvest["package"] == "pyworld-prebuilt" and harvest["package_version"]
    assert swift["package"] == "swift-f0" and swift["package_version"] == swift_f0.__version__
