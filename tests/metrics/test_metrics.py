"""Tests for voicetrain.metrics: log-mel and WORLD mel-cepstral distortion, F0 errors, the multi-resolution STFT
distance and speaker similarity, on synthetic signals of known content and on the bundled corpus."""

from __future__ import annotations

import io
import itertools
import sys

import numpy as np
import pytest
import scipy.signal
import soundfile
import torch
from hypothesis import given, settings
from hypothesis import strategies as strategies
from hypothesis.extra.numpy import arrays

from voicetrain.audio import MelSpectrogram
from voicetrain.data import BUNDLED_CORPUS
from voicetrain.metrics import (
    NoSpeechError,
    all_pass_constant,
    f0_errors,
    f0_rmse_cents,
    mel_cepstral_distortion,
    mel_cepstrum,
    multi_resolution_stft_distance,
    speaker_embedding,
    speaker_similarity,
    voicing_decision_error,
    world_mcd,
)
from voicetrain.metrics import speaker as speaker_module
from voicetrain.metrics.world import envelope_to_mel_cepstrum, frequency_warp

from helpers import standard_mel

SAMPLE_RATE = 16000
SPEAKERS = ("awb", "kal16", "rms", "slt")


def bundled_wave(speaker: str, sentence_id: str) -> np.ndarray:
    wave, sample_rate = soundfile.read(BUNDLED_CORPUS / speaker / f"{sentence_id}.flac", dtype="float64")
    assert sample_rate == SAMPLE_RATE
    return wave


def with_noise(wave: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=wave.size)
    noise *= np.sqrt(np.mean(wave**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return wave + noise


def vorbis_round_trip(wave: np.ndarray, quality: float = 0.9) -> np.ndarray:
    """The wave encoded to Ogg Vorbis at high quality and decoded again: the same recording, re-encoded."""
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, SAMPLE_RATE, format="OGG", subtype="VORBIS", compression_level=1 - quality)
    buffer.seek(0)
    return soundfile.read(buffer, dtype="float64")[0]


def harmonic_glide(start_hz: float, seconds: float = 1.0, octaves: float = 1.0) -> np.ndarray:
    """A five-harmonic tone whose F0 rises exponentially from start_hz by `octaves`."""
    time = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    frequency = start_hz * 2 ** (octaves * time / seconds)
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    return sum(0.3 / order * np.sin(order * phase) for order in range(1, 6))


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


# --- WORLD mel-cepstral distortion ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample_rate, customary",
    # SPTK's table of all-pass constants that approximate the mel scale.
    [(8000, 0.31), (16000, 0.42), (22050, 0.45), (32000, 0.50), (44100, 0.53), (48000, 0.55)],
)
def test_all_pass_constant_matches_the_customary_values(sample_rate: int, customary: float) -> None:
    assert all_pass_constant(sample_rate) == pytest.approx(customary, abs=0.015)


def test_frequency_warp_without_warping_keeps_the_leading_coefficients() -> None:
    cepstrum = np.random.default_rng(2).normal(size=(3, 30))
    np.testing.assert_allclose(frequency_warp(cepstrum, 12, 0.0), cepstrum[:, :13], atol=1e-12)


def test_frequency_warp_moves_the_spectrum_onto_the_all_pass_axis() -> None:
    # The defining property: sum_m c(m) z^-m == sum_m mc(m) zw^-m, with zw^-1 = (z^-1 - alpha) / (1 - alpha z^-1).
    rng = np.random.default_rng(3)
    cepstrum = rng.normal(size=20) * 0.8 ** np.arange(20)
    alpha = 0.42
    warped = frequency_warp(cepstrum[None], 80, alpha)[0]
    inverse_z = np.exp(-1j * np.linspace(0.0, np.pi, 64))
    inverse_warped_z = (inverse_z - alpha) / (1 - alpha * inverse_z)
    original_spectrum = np.polynomial.polynomial.polyval(inverse_z, cepstrum)
    warped_spectrum = np.polynomial.polynomial.polyval(inverse_warped_z, warped)
    np.testing.assert_allclose(warped_spectrum, original_spectrum, atol=1e-8)


def test_envelope_to_mel_cepstrum_recovers_the_cepstrum_of_a_known_envelope() -> None:
    # SPTK's convention: log |H(w)| = sum_m c(m) cos(m w), and the envelope is the power |H(w)|^2.
    cepstrum = np.array([0.5, 1.2, -0.6, 0.3, -0.1, 0.05])
    omega = np.linspace(0.0, np.pi, 513)
    log_magnitude = np.cos(np.outer(omega, np.arange(6))) @ cepstrum
    envelope = np.exp(2 * log_magnitude)[None]
    recovered = envelope_to_mel_cepstrum(envelope, order=8, alpha=0.0)[0]
    np.testing.assert_allclose(recovered, np.concatenate([cepstrum, np.zeros(3)]), atol=1e-9)


def test_world_mcd_of_identical_waves_is_zero() -> None:
    wave = bundled_wave("slt", "h01_01")
    assert world_mcd(wave, wave.copy(), SAMPLE_RATE) == 0.0


def test_world_mcd_grows_with_noise_and_with_spectral_tilt() -> None:
    wave = bundled_wave("rms", "h02_05")
    noisy = [world_mcd(wave, with_noise(wave, snr), SAMPLE_RATE) for snr in (40.0, 25.0, 10.0)]
    assert 0.0 < noisy[0] < noisy[1] < noisy[2]
    tilted = [world_mcd(wave, scipy.signal.lfilter([1.0, -slope], [1.0], wave), SAMPLE_RATE)
              for slope in (0.3, 0.6, 0.9)]
    assert 0.0 < tilted[0] < tilted[1] < tilted[2]


@pytest.mark.parametrize("sentence_id", ["h01_01", "h03_09"])
def test_other_speakers_are_further_than_the_reference_re_encoded(sentence_id: str) -> None:
    reference = bundled_wave("slt", sentence_id)
    re_encoded = world_mcd(reference, vorbis_round_trip(reference), SAMPLE_RATE)
    others = [world_mcd(reference, bundled_wave(speaker, sentence_id), SAMPLE_RATE)
              for speaker in SPEAKERS if speaker != "slt"]
    assert 0.0 < re_encoded < min(others)


def test_world_mcd_between_speakers_lands_in_the_range_papers_report() -> None:
    # Papers report roughly 5-10 dB between different speakers reading the same sentence; these four synthetic
    # voices measure about 8-12 dB.
    values = [world_mcd(bundled_wave(first, "h02_05"), bundled_wave(second, "h02_05"), SAMPLE_RATE)
              for first, second in itertools.combinations(SPEAKERS, 2)]
    assert all(5.0 < value < 13.0 for value in values), values
    assert 6.0 < float(np.mean(values)) < 12.0, values


def test_world_mcd_speech_frames_ignore_added_silence() -> None:
    wave = bundled_wave("awb", "h01_03")
    padded = np.concatenate([np.zeros(SAMPLE_RATE // 2), wave, np.zeros(SAMPLE_RATE // 2)])
    speech_only = world_mcd(wave, padded, SAMPLE_RATE)
    every_frame = world_mcd(wave, padded, SAMPLE_RATE, frames="all")
    assert speech_only < every_frame
    assert world_mcd(wave, padded, SAMPLE_RATE, frames="voiced") < every_frame


def test_world_mcd_harvest_and_a_higher_sample_rate_agree_in_scale() -> None:
    import soxr

    first, second = bundled_wave("slt", "h02_05"), bundled_wave("awb", "h02_05")
    with_dio = world_mcd(first, second, SAMPLE_RATE)
    assert world_mcd(first, second, SAMPLE_RATE, f0_method="harvest") == pytest.approx(with_dio, rel=0.1)
    at_24k = world_mcd(soxr.resample(first, SAMPLE_RATE, 24000), soxr.resample(second, SAMPLE_RATE, 24000), 24000)
    assert at_24k == pytest.approx(with_dio, rel=0.25)


def test_world_mcd_errors_name_the_problem() -> None:
    wave = bundled_wave("slt", "h01_01")
    with pytest.raises(ValueError, match="'yin'"):
        world_mcd(wave, wave, SAMPLE_RATE, f0_method="yin")
    with pytest.raises(ValueError, match="'most'"):
        world_mcd(wave, wave, SAMPLE_RATE, frames="most")
    with pytest.raises(ValueError, match="candidate_wave must be a non-empty mono wave"):
        world_mcd(wave, np.zeros(0), SAMPLE_RATE)
    with pytest.raises(ValueError, match="NaN"):
        world_mcd(np.full(1600, np.nan), wave, SAMPLE_RATE)
    noise = np.random.default_rng(4).normal(scale=0.1, size=SAMPLE_RATE // 2)
    with pytest.raises(ValueError, match="candidate_wave has no voiced frames.*frames='all'"):
        world_mcd(wave, noise, SAMPLE_RATE, frames="voiced")


# --- F0 RMSE and voicing error ----------------------------------------------------------------------------


def test_f0_rmse_of_a_glide_against_itself_100_cents_up() -> None:
    glide = 110.0 * 2 ** np.linspace(0.0, 2.0, 400)
    voiced = np.ones(400, dtype=bool)
    assert f0_rmse_cents(glide, glide * 2 ** (100 / 1200), voiced, voiced) == pytest.approx(100.0, abs=1e-9)
    assert f0_rmse_cents(glide, glide, voiced, voiced) == 0.0


def test_f0_rmse_counts_only_frames_voiced_in_both() -> None:
    reference = np.array([100.0, 200.0, 0.0, 400.0, 300.0])
    candidate = np.array([200.0, 200.0, 300.0, 0.0, 600.0])  # one octave up, unchanged, -, -, one octave up
    reference_voiced = reference > 0
    candidate_voiced = candidate > 0
    expected = np.sqrt((1200.0**2 + 0.0 + 1200.0**2) / 3)
    assert f0_rmse_cents(reference, candidate, reference_voiced, candidate_voiced) == pytest.approx(expected)
    nowhere = np.zeros(5, dtype=bool)
    assert np.isnan(f0_rmse_cents(reference, candidate, reference_voiced, nowhere))


def test_voicing_decision_error_on_known_masks() -> None:
    reference = np.array([True, True, False, False, True, False, True, True])
    candidate = np.array([True, False, False, True, True, False, True, False])
    assert voicing_decision_error(reference, candidate) == pytest.approx(3 / 8)
    assert voicing_decision_error(reference, reference) == 0.0
    assert voicing_decision_error(reference, ~reference) == 1.0


def test_f0_metric_errors_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        voicing_decision_error(np.ones(3, dtype=bool), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="empty"):
        voicing_decision_error(np.ones(0, dtype=bool), np.ones(0, dtype=bool))
    voiced = np.ones(2, dtype=bool)
    with pytest.raises(ValueError, match="F0 <= 0"):
        f0_rmse_cents(np.array([100.0, 0.0]), np.array([100.0, 100.0]), voiced, voiced)


def test_f0_errors_track_a_glide_shifted_by_100_cents() -> None:
    errors = f0_errors(harmonic_glide(150.0), harmonic_glide(150.0 * 2 ** (100 / 1200)), SAMPLE_RATE)
    assert errors.rmse_cents == pytest.approx(100.0, abs=5.0)
    assert errors.voicing_error < 0.05
    assert errors.frames == pytest.approx(101, abs=1)


def test_f0_errors_of_a_recording_against_itself_and_an_octave_apart() -> None:
    wave = bundled_wave("kal16", "h01_01")
    same = f0_errors(wave, wave, SAMPLE_RATE)
    assert same.rmse_cents == 0.0 and same.voicing_error == 0.0
    longer = np.concatenate([harmonic_glide(240.0, seconds=0.5), np.zeros(SAMPLE_RATE // 10)])
    shorter = f0_errors(harmonic_glide(120.0, seconds=0.5), longer, SAMPLE_RATE)
    assert shorter.rmse_cents == pytest.approx(1200.0, abs=30.0)
    assert shorter.frames == pytest.approx(51, abs=1)


# --- multi-resolution STFT distance -----------------------------------------------------------------------


def test_mr_stft_distance_is_zero_on_identical_waves_and_nearly_symmetric() -> None:
    first, second = bundled_wave("slt", "h01_02"), bundled_wave("awb", "h01_02")
    assert multi_resolution_stft_distance(first, first.copy()) == 0.0
    noisy = with_noise(first, 20.0)
    assert multi_resolution_stft_distance(noisy, first) == pytest.approx(
        multi_resolution_stft_distance(first, noisy), rel=0.1
    )
    # Spectral convergence divides by the reference's norm, so two voices of different loudness are further
    # apart from the quieter side.
    forward = multi_resolution_stft_distance(first, second)
    backward = multi_resolution_stft_distance(second, first)
    assert forward > 0.5
    assert backward == pytest.approx(forward, rel=0.35)


def test_mr_stft_distance_grows_with_distortion() -> None:
    wave = bundled_wave("rms", "h01_02")
    distances = [multi_resolution_stft_distance(wave, with_noise(wave, snr)) for snr in (40.0, 20.0, 5.0)]
    assert 0.0 < distances[0] < distances[1] < distances[2]
    clipped = [multi_resolution_stft_distance(wave, np.clip(wave, -limit, limit)) for limit in (0.5, 0.2, 0.05)]
    assert 0.0 < clipped[0] < clipped[1] < clipped[2]


def test_mr_stft_distance_compares_the_common_length_and_names_bad_input() -> None:
    wave = bundled_wave("slt", "h01_02")
    assert multi_resolution_stft_distance(wave, np.concatenate([wave, np.zeros(77)])) == 0.0
    with pytest.raises(ValueError, match="at least 1025 samples"):
        multi_resolution_stft_distance(wave[:1000], wave[:1000])
    with pytest.raises(ValueError, match="silent"):
        multi_resolution_stft_distance(np.zeros(4000), wave[:4000])
    with pytest.raises(ValueError, match=r"\(2, 4000\)"):
        multi_resolution_stft_distance(np.zeros((2, 4000)), wave[:4000])


# --- speaker similarity -----------------------------------------------------------------------------------


def test_speaker_similarity_is_higher_within_a_speaker_than_across() -> None:
    speakers, sentences = ("awb", "rms", "slt"), ("h01_04", "h03_06")
    embeddings = {(speaker, sentence): speaker_embedding(bundled_wave(speaker, sentence), SAMPLE_RATE)
                  for speaker in speakers for sentence in sentences}
    within = [float(embeddings[(speaker, sentences[0])] @ embeddings[(speaker, sentences[1])])
              for speaker in speakers]
    across = [float(embeddings[(first, sentence)] @ embeddings[(second, sentence)])
              for sentence in sentences for first, second in itertools.combinations(speakers, 2)]
    assert np.mean(within) > np.mean(across) + 0.1, (within, across)


def test_speaker_similarity_of_a_wave_with_itself_is_one() -> None:
    wave = bundled_wave("kal16", "h02_01")
    assert speaker_similarity(wave, wave.copy(), SAMPLE_RATE) == pytest.approx(1.0, abs=1e-5)


def test_a_wave_without_speech_has_no_embedding_and_says_so() -> None:
    """What an untrained model often says: VC validation leaves such conversions out of
    val/speaker_similarity rather than stopping the run."""
    with pytest.raises(NoSpeechError, match="no speech"):
        speaker_embedding(np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)


def test_speaker_similarity_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    speaker_module._resemblyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # what `import resemblyzer` meets when not installed
    try:
        with pytest.raises(ModuleNotFoundError, match=r"voicetrain\[similarity\]"):
            speaker_similarity(np.ones(1600), np.ones(1600), SAMPLE_RATE)
    finally:
        speaker_module._resemblyzer.cache_clear()
