"""The DDSP/NSF signal processing in voicetrain.tasks.layers.synthesis, checked on synthetic
signals of known content with measurements that do not use the code under test (numpy FFTs,
scipy's analytic signal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import hilbert

from voicetrain.tasks.layers.synthesis import (
    combtooth,
    cumulative_phase,
    frequency_sampling_filters,
    harmonic_oscillator,
    sine_source,
    time_varying_filter,
    upsample,
)

SAMPLE_RATE = 16000
HOP = 256


def spectrum_peak(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> float:
    samples = wave.detach().double().numpy()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)), n=8 * len(samples)))
    return float(np.fft.rfftfreq(8 * len(samples), 1 / sample_rate)[np.argmax(spectrum)])


def band_energy(wave: torch.Tensor, low: float, high: float, sample_rate: int = SAMPLE_RATE) -> float:
    samples = wave.detach().double().numpy()
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequencies = np.fft.rfftfreq(len(samples), 1 / sample_rate)
    return float(spectrum[(frequencies >= low) & (frequencies < high)].sum())


def constant_f0(hertz: float, frames: int = 63, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, frames), hertz)


def first_harmonic_only(frames: int, harmonics: int = 4) -> torch.Tensor:
    amplitudes = torch.zeros(1, frames, harmonics)
    amplitudes[..., 0] = 0.5
    return amplitudes


# --- upsampling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["linear", "hann", "hold"])
def test_upsample_is_frame_value_at_frame_centres_and_holds_the_last_frame(mode: str) -> None:
    frames = torch.tensor([[0.0, 4.0, 2.0, 8.0]])
    samples = upsample(frames, 4, mode)
    assert samples.shape == (1, 16)
    assert torch.equal(samples[0, ::4], frames[0])
    assert torch.equal(samples[0, 12:], torch.full((4,), 8.0))


def test_upsample_linear_interpolates_between_frames_and_keeps_channels() -> None:
    frames = torch.stack([torch.tensor([[0.0, 4.0]]), torch.tensor([[10.0, 10.0]])], dim=-1)  # [1, 2, 2]
    samples = upsample(frames, 4, "linear")
    assert samples.shape == (1, 8, 2)
    assert torch.allclose(samples[0, :4, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert torch.equal(samples[0, :, 1], torch.full((8,), 10.0))


def test_upsample_hann_crossfade_is_smooth_and_monotone_between_frames() -> None:
    samples = upsample(torch.tensor([[0.0, 1.0]]), 64, "hann")[0, :64]
    steps = samples.diff()
    assert bool((steps >= 0).all())
    assert steps[0] < steps[31] and steps[-1] < steps[31]  # slow at both ends, fastest midway


def test_upsample_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="cubic"):
        upsample(torch.zeros(1, 3), 4, "cubic")


# --- phase and the harmonic oscillator -----------------------------------------------------------------


def test_cumulative_phase_stays_accurate_over_a_minute_of_audio() -> None:
    samples = 60 * SAMPLE_RATE // HOP * HOP
    frequency = 440.3 + 30 * torch.sin(torch.arange(samples, dtype=torch.float64) / 5000)
    phase = cumulative_phase(frequency.float()[None], SAMPLE_RATE, HOP)[0].double().numpy()
    steps = frequency.float().double().numpy() / SAMPLE_RATE
    reference = np.concatenate([[0.0], np.cumsum(steps)[:-1]]) % 1.0
    error = np.abs(phase - reference)
    assert np.minimum(error, 1 - error).max() < 1e-3


@pytest.mark.parametrize("hertz", [97.0, 220.0, 1234.0])
def test_harmonic_oscillator_peaks_at_f0(hertz: float) -> None:
    wave = harmonic_oscillator(constant_f0(hertz), first_harmonic_only(63), SAMPLE_RATE, HOP)
    assert wave.shape == (1, 63 * HOP)
    assert spectrum_peak(wave[0]) == pytest.approx(hertz, rel=0.005)


def test_doubling_f0_raises_the_peak_by_an_octave() -> None:
    weights = torch.tensor([1.0, 0.3, 0.2, 0.1, 0.1, 0.1])
    amplitudes = weights * torch.rand(1, 63, 6, generator=torch.Generator().manual_seed(1))
    low = harmonic_oscillator(constant_f0(180.0), amplitudes, SAMPLE_RATE, HOP)
    high = harmonic_oscillator(constant_f0(180.0) * 2, amplitudes, SAMPLE_RATE, HOP)
    assert spectrum_peak(high[0]) / spectrum_peak(low[0]) == pytest.approx(2.0, rel=0.01)


def test_harmonics_at_or_above_nyquist_are_silent() -> None:
    f0 = constant_f0(3000.0)  # harmonics 1, 2 at 3 and 6 kHz; 3 and up at >= 9 kHz, above 8 kHz
    amplitudes = torch.zeros(1, 63, 8)
    amplitudes[..., 2:] = 1.0
    assert harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP).abs().max() == 0
    amplitudes[..., 1] = 1.0
    audible = harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP)
    assert spectrum_peak(audible[0]) == pytest.approx(6000.0, rel=0.005)
    assert band_energy(audible[0], 6500, 8000) < 1e-6 * band_energy(audible[0], 5500, 6500)


def test_unvoiced_frames_are_silent() -> None:
    f0 = constant_f0(200.0, frames=40)
    f0[:, 20:] = 0.0
    wave = harmonic_oscillator(f0, torch.ones(1, 40, 4), SAMPLE_RATE, HOP)[0]
    # Between frames 19 and 20 F0 glides down to 0 Hz; from frame 20 on it is exactly 0.
    assert wave[20 * HOP:].abs().max() == 0
    assert wave[:19 * HOP].abs().max() > 1.0


def test_a_glide_follows_the_f0_track() -> None:
    frames = 125  # two seconds from 100 Hz to 400 Hz
    f0 = torch.linspace(100.0, 400.0, frames)[None]
    wave = harmonic_oscillator(f0, first_harmonic_only(frames, harmonics=1), SAMPLE_RATE, HOP)[0].double().numpy()
    instantaneous = np.diff(np.unwrap(np.angle(hilbert(wave)))) * SAMPLE_RATE / (2 * np.pi)
    expected = np.interp(np.arange(len(wave)) + 0.5, np.arange(frames) * HOP, f0[0].double().numpy())[:-1]
    interior = slice(4 * HOP, (frames - 4) * HOP)  # the analytic signal rings at both ends
    relative = np.abs(instantaneous[interior] - expected[interior]) / expected[interior]
    assert np.median(relative) < 0.002
    assert np.percentile(relative, 99) < 0.02


def test_initial_phase_sets_the_first_sample() -> None:
    initial = torch.tensor([0.25, 0.0])
    wave = harmonic_oscillator(constant_f0(200.0, batch=2), torch.ones(2, 63, 1), SAMPLE_RATE, HOP, initial)
    assert wave[:, 0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


# --- filters and noise ---------------------------------------------------------------------------------


def test_frequency_sampling_filters_have_the_requested_response() -> None:
    bins = 65
    frequencies = torch.linspace(0, 1, bins)
    smooth = 0.2 + 0.8 * torch.exp(-((frequencies - 0.3) / 0.15) ** 2)
    taps = frequency_sampling_filters(smooth[None, None])[0, 0].double().numpy()
    assert len(taps) == 2 * bins - 3 and np.allclose(taps, taps[::-1])
    response = np.abs(np.fft.rfft(taps, n=2 * (bins - 1)))
    assert np.abs(response - smooth.double().numpy()).max() < 0.05


def test_a_flat_response_returns_the_noise() -> None:
    noise = torch.randn(2, 30 * HOP, generator=torch.Generator().manual_seed(0))
    shaped = time_varying_filter(noise, torch.ones(2, 30, 33), HOP)
    assert torch.allclose(shaped, noise, atol=1e-5)


def test_a_low_pass_response_attenuates_the_highs() -> None:
    noise = torch.randn(1, 60 * HOP, generator=torch.Generator().manual_seed(0))
    response = (torch.linspace(0, SAMPLE_RATE / 2, 65) < 2000).float().expand(1, 60, 65)
    shaped = time_varying_filter(noise, response, HOP)[0]
    assert band_energy(shaped, 3000, 8000) < 1e-3 * band_energy(noise[0], 3000, 8000)
    assert band_energy(shaped, 0, 1500) / band_energy(noise[0], 0, 1500) == pytest.approx(1.0, abs=0.1)


def test_combtooth_has_equal_harmonics_up_to_nyquist_and_is_silent_when_unvoiced() -> None:
    f0 = constant_f0(250.0)
    pulses = combtooth(f0, SAMPLE_RATE, HOP)[0]
    spectrum = np.abs(np.fft.rfft(pulses.double().numpy()))
    frequencies = np.fft.rfftfreq(len(pulses), 1 / SAMPLE_RATE)
    harmonics = np.array([spectrum[np.argmin(np.abs(frequencies - 250.0 * k))] for k in range(1, 29)])
    assert harmonics.min() > 0.8 * harmonics.max()
    between = spectrum[np.argmin(np.abs(frequencies - 375.0))]
    assert between < 1e-3 * harmonics.max()
    assert spectrum_peak(combtooth(f0 * 2, SAMPLE_RATE, HOP)[0], SAMPLE_RATE) % 500.0 == pytest.approx(0.0, abs=5)
    f0[:, 30:] = 0.0
    assert combtooth(f0, SAMPLE_RATE, HOP)[0, 31 * HOP:].abs().max() == 0


def test_sine_source_is_a_sine_where_voiced_and_noise_where_unvoiced() -> None:
    f0 = constant_f0(200.0, frames=60)
    f0[:, 30:] = 0.0
    noise = torch.randn(1, 60 * HOP, 2, generator=torch.Generator().manual_seed(0))
    source = sine_source(f0, noise, SAMPLE_RATE, HOP, sine_amplitude=0.1, noise_std=0.003)
    voiced, unvoiced = source[0, 2 * HOP:28 * HOP], source[0, 32 * HOP:]
    assert spectrum_peak(voiced[:, 0]) == pytest.approx(200.0, rel=0.01)
    assert spectrum_peak(voiced[:, 1]) == pytest.approx(400.0, rel=0.01)
    assert float(unvoiced.std()) == pytest.approx(0.1 / 3, rel=0.05)
    assert float(voiced[:, 0].std()) == pytest.approx((0.1 ** 2 / 2 + 0.003 ** 2) ** 0.5, rel=0.02)


# --- gradients and determinism -------------------------------------------------------------------------


def test_gradients_reach_amplitudes_and_filter_responses() -> None:
    amplitudes = torch.rand(1, 20, 5, requires_grad=True)
    response = torch.rand(1, 20, 33, requires_grad=True)
    noise = torch.randn(1, 20 * HOP, generator=torch.Generator().manual_seed(0))
    wave = harmonic_oscillator(constant_f0(300.0, frames=20), amplitudes, SAMPLE_RATE, HOP)
    wave = wave + time_varying_filter(noise, response, HOP)
    wave.square().mean().backward()
    for parameter in (amplitudes, response):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


def test_same_inputs_and_generator_give_bit_identical_outputs() -> None:
    def render() -> torch.Tensor:
        generator = torch.Generator().manual_seed(7)
        f0 = 150 + 50 * torch.rand(2, 30, generator=generator)
        amplitudes = torch.rand(2, 30, 8, generator=generator)
        noise = torch.randn(2, 30 * HOP, generator=generator)
        response = torch.rand(2, 30, 33, generator=generator)
        return (harmonic_oscillator(f0, amplitudes, SAMPLE_RATE, HOP) + time_varying_filter(noise, response, HOP)
                + combtooth(f0, SAMPLE_RATE, HOP))

    assert torch.equal(render(), render())
