"""The evaluation's scorers on inputs with a known answer, on the bundled corpus's real speech: the WER/CER
normaliser, WER and CER of perfect and empty hypotheses, pocketsphinx on a recording, PESQ of a signal with
itself, SECS of one speaker against itself and another, DNSMOS of clean against noise-corrupted speech, V/UV F1 of
a known voicing track, periodicity of a tone and of noise, F0 error against an asked F0, length ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voicetrain.audio_files import load_audio
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.evaluate.scoring import asked_f0_errors, length_ratio, mean_embedding, speaker_similarity_to
from voicetrain.metrics.asr import transcribe
from voicetrain.metrics.intelligibility import character_error_rate, edit_distance, scoring_text, word_error_rate
from voicetrain.metrics.periodicity import periodicity, periodicity_errors, periodicity_rmse, voicing_f1
from voicetrain.metrics.quality import dnsmos, pesq_wideband
from voicetrain.metrics.speaker import speaker_embedding

RATE = 16000


def recording(speaker: str, sentence: str) -> np.ndarray:
    return load_audio(BUNDLED_CORPUS / speaker / f"{sentence}.flac", RATE)


def harmonic_tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    """A voice-like periodic signal: ten harmonics of `f0` falling off as 1/k (a pure sine is not voice-like to
    the trackers)."""
    time = np.arange(int(RATE * seconds)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * harmonic * time) / harmonic for harmonic in range(1, 11))
    return (0.5 * wave / np.max(np.abs(wave))).astype(np.float32)


def noisy(wave: np.ndarray, level: float = 0.05) -> np.ndarray:
    return np.clip(wave + level * np.random.default_rng(0).standard_normal(wave.size), -1.0, 1.0).astype(np.float32)


# --- text ---------------------------------------------------------------------------------------


def test_the_normaliser_spells_numbers_like_the_transcripts_and_drops_case_and_punctuation() -> None:
    assert scoring_text("It's the 21st: Dr. Smith paid $5, 'quoted' in 1999!") == \
        "it's the twenty first doctor smith paid five dollars quoted in nineteen ninety nine"
    assert scoring_text("  Fifty-five  BONDS... ") == "fifty five bonds"
    assert scoring_text("55 bonds") == scoring_text("fifty-five bonds")


def test_wer_and_cer_of_perfect_empty_and_wrong_hypotheses() -> None:
    sentence = "The girl at the booth sold 50 bonds."
    assert word_error_rate(sentence, "the girl at the booth sold fifty bonds") == 0.0
    assert character_error_rate(sentence, "THE GIRL AT THE BOOTH SOLD FIFTY BONDS") == 0.0
    assert word_error_rate(sentence, "") == 1.0
    assert character_error_rate(sentence, "") == 1.0
    assert word_error_rate(sentence, "the guy at the booth sold fifty bonds") == pytest.approx(1 / 8)
    assert word_error_rate("one two", "one two three four") == 1.0  # two insertions over two words
    assert edit_distance(list("kitten"), list("sitting")) == 3
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("?!", "anything")


def test_pocketsphinx_hears_a_bundled_recording() -> None:
    hypothesis = transcribe(recording("rms", "h01_10"), RATE)
    assert word_error_rate("A large size in stockings is hard to sell.", hypothesis) < 0.5, hypothesis


# --- quality ------------------------------------------------------------------------------------


def test_pesq_of_a_signal_with_itself_is_the_maximum_and_noise_lowers_it() -> None:
    clean = recording("slt", "h01_09")
    assert pesq_wideband(clean, clean, RATE) == pytest.approx(4.64, abs=0.01)
    assert pesq_wideband(clean, noisy(clean), RATE) < 2.0
    # At another sample rate both sides are resampled to 16 kHz first.
    clean_24k = load_audio(BUNDLED_CORPUS / "slt" / "h01_09.flac", 24000)
    assert pesq_wideband(clean_24k, clean_24k, 24000) == pytest.approx(4.64, abs=0.01)


def test_dnsmos_rates_clean_speech_above_noise_corrupted_speech() -> None:
    clean = recording("awb", "h02_10")
    clean_scores, noisy_scores = dnsmos(clean, RATE), dnsmos(noisy(clean), RATE)
    assert clean_scores.overall > noisy_scores.overall + 0.5, (clean_scores, noisy_scores)
    assert clean_scores.background > noisy_scores.background + 0.5, (clean_scores, noisy_scores)
    for value in (clean_scores.signal, clean_scores.background, clean_scores.overall):
        assert 1.0 <= value <= 5.0


# --- speaker ------------------------------------------------------------------------------------


def test_secs_of_a_speaker_against_itself_beats_another_speaker() -> None:
    reference = mean_embedding([speaker_embedding(recording("slt", sentence), RATE)
                                for sentence in ("h01_01", "h01_02", "h01_03")])
    same = speaker_similarity_to(recording("slt", "h02_10"), RATE, reference)
    other = speaker_similarity_to(recording("awb", "h02_10"), RATE, reference)
    assert same > other + 0.1, (same, other)
    assert math.isnan(speaker_similarity_to(np.zeros(RATE, dtype=np.float32), RATE, reference))


# --- pitch, voicing, length ---------------------------------------------------------------------


def test_voicing_f1_of_a_known_voicing_track() -> None:
    reference = np.array([1, 1, 0, 0, 1, 1], dtype=bool)
    assert voicing_f1(reference, reference) == 1.0
    # 3 of the 4 voiced frames found, 1 false alarm: precision 3/4, recall 3/4.
    assert voicing_f1(reference, np.array([1, 0, 1, 0, 1, 1], dtype=bool)) == pytest.approx(0.75)
    assert voicing_f1(reference, np.zeros(6, dtype=bool)) == 0.0
    assert math.isnan(voicing_f1(np.zeros(6, dtype=bool), np.zeros(6, dtype=bool)))
    assert periodicity_rmse(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == pytest.approx(math.sqrt(0.5))


def test_periodicity_of_a_tone_noise_and_a_recording_against_itself() -> None:
    tone = harmonic_tone(150.0)
    noise = (0.1 * np.random.default_rng(1).standard_normal(RATE)).astype(np.float32)
    assert np.median(periodicity(tone, RATE)) > 0.8
    assert np.median(periodicity(noise, RATE)) < 0.3
    speech = recording("kal16", "h03_09")
    same = periodicity_errors(speech, speech, RATE)
    assert same.periodicity_rmse == 0.0 and same.voicing_f1 == 1.0 and same.frames > 100
    assert periodicity_errors(speech, noisy(speech, 0.3), RATE).voicing_f1 < 0.9


def test_f0_error_against_the_asked_f0() -> None:
    hop = 160
    tone = harmonic_tone(150.0)
    frames = RATE // hop + 1
    # DIO is exact in the steady part; its first and last frames bend, which keeps the RMSE a little above 0.
    rmse, voicing_error = asked_f0_errors(tone, RATE, np.full(frames, 150.0), hop)
    assert rmse < 25.0 and voicing_error < 0.1
    semitone_up = 150.0 * 2 ** (1 / 12)
    rmse, _ = asked_f0_errors(tone, RATE, np.full(frames, semitone_up), hop)
    assert rmse == pytest.approx(100.0, abs=25.0)


def test_length_ratio() -> None:
    assert length_ratio(24000, 16000) == 1.5
    with pytest.raises(ValueError):
        length_ratio(1, 0)
